//! Writes a model as a HuggingFace directory: `config.json`, `model.safetensors` and, when given,
//! `tokenizer.json` with the `tokenizer_config.json` that names its special tokens, loadable with
//! `AutoModelForMaskedLM` / `AutoModelForCausalLM` (`RobertaForMaskedLM` / `RobertaForCausalLM`)
//! and `AutoTokenizer.from_pretrained`, whatever the tokenizer (RoBERTa's, BERT's WordPiece,
//! GPT-2's byte-level BPE, a Unigram).
//!
//! The safetensors file holds f32 tensors under HF's keys, linear weights transposed to torch's
//! `[out, in]`, and the metadata `{"format": "pt"}` that `transformers` checks. The tied decoder
//! (`lm_head.decoder.weight`/`.bias`) is left out, as `save_pretrained` leaves it out:
//! `transformers` ties it to the word embeddings and `lm_head.bias` when it loads.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use safetensors::{Dtype, View};

use super::config::HfRobertaConfig;
use super::error::HfError;
use super::names::ParamPath;
use super::tokenizer::HfTokenizer;
use super::tokenizer_config::{write_tokenizer_config, TOKENIZER_CONFIG_FILE};
use crate::model::Roberta;

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// A checkpoint's model as an HF directory (config.json, model.safetensors, tokenizer.json),
/// inside the checkpoint's own directory.
pub const HF_DIR: &str = "hf";

/// Writes `model` with its `config` into `out` (created if missing), copying `tokenizer_json`
/// beside them when given, with a `tokenizer_config.json` whose roles are those of the file (a
/// `tokenizer_config.json` beside it names them, as a run directory's does). Returns the
/// directory.
pub fn export_hf<B: Backend>(
    model: &Roberta<B>,
    config: &HfRobertaConfig,
    tokenizer_json: Option<&Path>,
    out: &Path,
) -> Result<PathBuf, HfError> {
    super::shape::check_model_fits_config(model, config, &out.join(CONFIG_FILE))?;
    std::fs::create_dir_all(out).map_err(|source| HfError::write(out, source))?;
    config.write(&out.join(CONFIG_FILE))?;
    write_weights(model, &out.join(WEIGHTS_FILE))?;
    if let Some(tokenizer) = tokenizer_json {
        let described = HfTokenizer::load(tokenizer)?;
        let target = out.join(TOKENIZER_FILE);
        std::fs::copy(tokenizer, &target).map_err(|source| HfError::read(tokenizer, source))?;
        write_tokenizer_config(
            described.inner(),
            &described.info()?,
            config.max_tokens(),
            &out.join(TOKENIZER_CONFIG_FILE),
        )?;
    }
    Ok(out.to_path_buf())
}

/// Writes only `model.safetensors` (what a checkpoint needs besides its own state).
pub fn write_weights<B: Backend>(model: &Roberta<B>, path: &Path) -> Result<(), HfError> {
    let tensors = hf_tensors(model)?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(tensors, Some(metadata), path).map_err(|source| {
        HfError::BadSafetensors {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Every parameter of `model` under its HF key, as HF lays it out.
pub fn hf_tensors<B: Backend>(model: &Roberta<B>) -> Result<Vec<(String, HostTensor)>, HfError> {
    let mut collector = Collector::default();
    model.visit(&mut collector);
    if let Some(problem) = collector.problems.first() {
        return Err(HfError::Encode {
            what: "the model",
            message: problem.clone(),
        });
    }
    Ok(collector.tensors)
}

/// An f32 tensor copied to the host, ready for safetensors.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

impl View for HostTensor {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        // safetensors is little-endian by definition.
        Cow::Owned(
            self.values
                .iter()
                .flat_map(|value| value.to_le_bytes())
                .collect(),
        )
    }

    fn data_len(&self) -> usize {
        self.values.len() * std::mem::size_of::<f32>()
    }
}

#[derive(Default)]
struct Collector {
    path: ParamPath,
    tensors: Vec<(String, HostTensor)>,
    /// What went wrong, per parameter (a visitor cannot return errors).
    problems: Vec<String>,
}

impl<B: Backend> ModuleVisitor<B> for Collector {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some(hf) = self.path.current() else {
            let name = self.path.burn_name();
            self.problems
                .push(format!("parameter `{name}` has no HuggingFace name"));
            return;
        };
        let mut tensor = param.val();
        if hf.transposed {
            tensor = tensor.transpose();
        }
        let shape = tensor.dims().to_vec();
        match tensor.into_data().convert::<f32>().into_vec::<f32>() {
            Ok(values) => self.tensors.push((hf.name, HostTensor { shape, values })),
            Err(error) => self
                .problems
                .push(format!("parameter `{}` cannot be read: {error:?}", hf.name)),
        }
    }
}
