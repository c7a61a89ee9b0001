//! Reads a HuggingFace RoBERTa directory (`config.json` + `model.safetensors`) into flightlm's
//! [`Roberta`], for inference, for `train --init-from`, and for re-exporting.
//!
//! Every parameter of the model must be found under its HF key with HF's shape; every tensor of
//! the file must be used, be the tied decoder (checked equal to what it is tied to), or be a
//! buffer or pooler that carries nothing the model needs. f32, f16, bf16 and f64 tensors are read
//! and computed in f32.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{bf16, f16, Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

use super::config::HfRobertaConfig;
use super::error::HfError;
use super::export::{CONFIG_FILE, WEIGHTS_FILE};
use super::names::{self, ParamPath};
use super::shape::Dimensions;
use crate::model::{Roberta, RobertaConfig};

/// Loads the model of an HF directory on `device`, with the config it was described by.
pub fn load_hf_dir<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> Result<(HfRobertaConfig, Roberta<B>), HfError> {
    let config_path = dir.join(CONFIG_FILE);
    let config = HfRobertaConfig::read(&config_path)?;
    let model = config.to_model(&config_path)?.init(device);
    let model = load_weights(model, &dir.join(WEIGHTS_FILE))?;
    Ok((config, model))
}

/// Starts a run's freshly initialized `model` (built from `run`) from the weights of the HF
/// directory `dir`, after checking that its `config.json` describes the same network.
pub fn warm_start<B: Backend>(
    model: Roberta<B>,
    run: &RobertaConfig,
    dir: &Path,
) -> Result<Roberta<B>, HfError> {
    let config_path = dir.join(CONFIG_FILE);
    let config = HfRobertaConfig::read(&config_path)?;
    let stored = config.to_model(&config_path)?;
    Dimensions::check(
        &Dimensions::of_config(run),
        &Dimensions::of_config(&stored),
        "the run's model",
        &config_path,
    )?;
    load_weights(model, &dir.join(WEIGHTS_FILE))
}

/// Replaces every parameter of `model` by the tensor stored under its HF key in the safetensors
/// file at `path`, keeping parameter ids, devices and whether they require gradients.
pub fn load_weights<B: Backend>(model: Roberta<B>, path: &Path) -> Result<Roberta<B>, HfError> {
    let bytes = std::fs::read(path).map_err(|source| HfError::read(path, source))?;
    let file = SafeTensors::deserialize(&bytes).map_err(|source| HfError::BadSafetensors {
        path: path.to_path_buf(),
        source,
    })?;
    let mut stored = HashMap::new();
    for (name, view) in file.tensors() {
        let values = decode(&view).map_err(|message| HfError::BadTensor {
            path: path.to_path_buf(),
            name: name.clone(),
            message,
        })?;
        stored.insert(
            name,
            StoredTensor {
                shape: view.shape().to_vec(),
                values,
            },
        );
    }
    check_tied_decoder(&stored, path)?;

    let mut loader = Loader {
        file: path.to_path_buf(),
        stored: &stored,
        used: HashSet::new(),
        path: ParamPath::default(),
        problems: Vec::new(),
    };
    let model = model.map(&mut loader);
    if let Some(problem) = loader.problems.into_iter().next() {
        return Err(problem);
    }
    let mut unused: Vec<&String> = stored
        .keys()
        .filter(|name| !loader.used.contains(name.as_str()))
        .filter(|name| !names::is_ignorable(name))
        .filter(|name| {
            ![names::TIED_DECODER_WEIGHT, names::TIED_DECODER_BIAS].contains(&name.as_str())
        })
        .collect();
    unused.sort();
    if let Some(name) = unused.first() {
        return Err(HfError::BadTensor {
            path: path.to_path_buf(),
            name: name.to_string(),
            message: "has no counterpart in a RoBERTa LM model".into(),
        });
    }
    Ok(model)
}

/// A tensor of the file, decoded to f32 in its stored (HF) layout.
struct StoredTensor {
    shape: Vec<usize>,
    values: Vec<f32>,
}

fn decode(view: &safetensors::tensor::TensorView<'_>) -> Result<Vec<f32>, String> {
    let bytes = view.data();
    let values = match view.dtype() {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|chunk| f16::from_le_bytes([chunk[0], chunk[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|chunk| bf16::from_le_bytes([chunk[0], chunk[1]]).to_f32())
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|chunk| {
                let mut word = [0u8; 8];
                word.copy_from_slice(chunk);
                f64::from_le_bytes(word) as f32
            })
            .collect(),
        other => return Err(format!("has dtype {other:?}; only float tensors are read")),
    };
    Ok(values)
}

/// A file that does carry the decoder must carry exactly what it is tied to: flightlm has no
/// separate decoder, and silently dropping a different one would change the model.
fn check_tied_decoder(stored: &HashMap<String, StoredTensor>, path: &Path) -> Result<(), HfError> {
    for (decoder, tied_to) in [
        (names::TIED_DECODER_WEIGHT, names::WORD_EMBEDDINGS),
        (names::TIED_DECODER_BIAS, names::HEAD_BIAS),
    ] {
        let (Some(decoder_tensor), Some(tied_tensor)) = (stored.get(decoder), stored.get(tied_to))
        else {
            continue;
        };
        let same = decoder_tensor.shape == tied_tensor.shape
            && decoder_tensor.values == tied_tensor.values;
        if !same {
            return Err(HfError::BadTensor {
                path: path.to_path_buf(),
                name: decoder.to_string(),
                message: format!("differs from `{tied_to}`; flightlm models tie the decoder"),
            });
        }
    }
    Ok(())
}

struct Loader<'a> {
    file: PathBuf,
    stored: &'a HashMap<String, StoredTensor>,
    used: HashSet<String>,
    path: ParamPath,
    /// What went wrong, per parameter (a mapper cannot return errors).
    problems: Vec<HfError>,
}

impl Loader<'_> {
    /// The stored tensor for the current parameter, in burn's layout for `burn_shape`.
    fn load<B: Backend, const D: usize>(
        &mut self,
        burn_shape: [usize; D],
        device: &B::Device,
    ) -> Result<Tensor<B, D>, HfError> {
        let Some(hf) = self.path.current() else {
            return Err(HfError::BadTensor {
                path: self.file.clone(),
                name: self.path.burn_name(),
                message: "is a model parameter without a HuggingFace name".into(),
            });
        };
        let bad = |message: String| HfError::BadTensor {
            path: self.file.clone(),
            name: hf.name.clone(),
            message,
        };
        let Some(stored) = self.stored.get(&hf.name) else {
            return Err(bad("is missing".into()));
        };
        let mut expected: Vec<usize> = burn_shape.to_vec();
        if hf.transposed {
            expected.reverse();
        }
        if stored.shape != expected {
            return Err(bad(format!(
                "has shape {:?}, the model needs {expected:?}",
                stored.shape
            )));
        }
        let values = if hf.transposed {
            transpose(&stored.values, stored.shape[0], stored.shape[1])
        } else {
            stored.values.clone()
        };
        self.used.insert(hf.name);
        Ok(Tensor::from_data(
            TensorData::new(values, burn_shape),
            device,
        ))
    }
}

/// `[rows, columns]` row-major to `[columns, rows]` row-major.
fn transpose(values: &[f32], rows: usize, columns: usize) -> Vec<f32> {
    let mut out = vec![0.0; values.len()];
    for row in 0..rows {
        for column in 0..columns {
            out[column * rows + row] = values[row * columns + column];
        }
    }
    out
}

impl<B: Backend> ModuleMapper<B> for Loader<'_> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let value = match self.load::<B, D>(tensor.dims(), &tensor.device()) {
            Ok(loaded) if tensor.is_require_grad() => loaded.require_grad(),
            Ok(loaded) => loaded,
            Err(problem) => {
                self.problems.push(problem);
                tensor
            }
        };
        Param::from_mapped_value(id, value, mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transposes_row_major_matrices() {
        // [[1, 2, 3], [4, 5, 6]] -> [[1, 4], [2, 5], [3, 6]]
        let out = transpose(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3);
        assert_eq!(out, vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    }
}
