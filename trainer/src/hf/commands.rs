//! The HF-facing subcommands of `flightlm-trainer`: `export`, `fill-mask` and `score`.
//! Inference runs on the CPU backend; the binary only parses arguments and reports errors.

use std::io::Write;

use crate::{CpuBackend, CpuDevice};
use std::path::{Path, PathBuf};

use clap::Args;

use super::error::HfError;
use super::export::{export_hf, TOKENIZER_FILE};
use super::fill_mask::fill_mask;
use super::import::load_hf_dir;
use super::score::{score_text, ScoreSettings};
use super::tokenizer::HfTokenizer;
use crate::config::EVAL_MASKING_SEED;

type InferenceBackend = CpuBackend;

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// A checkpoint (or HF) directory: config.json and model.safetensors in HF layout.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The HF model directory to write.
    #[arg(long)]
    pub out: PathBuf,
    /// tokenizer.json to ship with the model [default: the one in the checkpoint directory].
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct FillMaskArgs {
    /// An HF model directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// Text with one or more `<mask>` tokens.
    #[arg(long)]
    pub text: String,
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
}

#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// An HF model directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    pub model: PathBuf,
    /// Text to score, one document per line.
    #[arg(long)]
    pub text_file: PathBuf,
    /// Seed of the MLM masking [default: the trainer's eval masking seed].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Share of tokens an MLM model is scored on.
    #[arg(long, default_value_t = 0.15)]
    pub mlm_probability: f64,
    /// Add each line's `input_ids` and `labels` (transformers' convention, -100 where nothing is
    /// predicted), so the loss can be recomputed elsewhere.
    #[arg(long)]
    pub show_inputs: bool,
}

/// Re-writes a checkpoint's model as an HF directory with its tokenizer.
pub fn export(args: &ExportArgs) -> Result<PathBuf, HfError> {
    let device = CpuDevice::default();
    // A training checkpoint keeps its HF directory in `hf/`.
    let nested = args.checkpoint.join(super::export::HF_DIR);
    let source = if nested.join("config.json").is_file() {
        nested
    } else {
        args.checkpoint.clone()
    };
    let (config, model) = load_hf_dir::<InferenceBackend>(&source, &device)?;
    let tokenizer = match &args.tokenizer {
        Some(path) => path.clone(),
        None => source.join(TOKENIZER_FILE),
    };
    if !tokenizer.is_file() {
        return Err(HfError::Input(format!(
            "{} does not exist; pass --tokenizer with the run's tokenizer.json",
            tokenizer.display()
        )));
    }
    export_hf(&model, &config, Some(&tokenizer), &args.out)
}

/// Prints the fill-mask predictions as one JSON line.
pub fn fill_mask_command(args: &FillMaskArgs, out: &mut dyn Write) -> Result<(), HfError> {
    let device = CpuDevice::default();
    let (config, model) = load_hf_dir::<InferenceBackend>(&args.model, &device)?;
    if config.is_decoder {
        return Err(HfError::Input(format!(
            "{} is a causal model; fill-mask needs a masked-LM model",
            args.model.display()
        )));
    }
    let tokenizer = HfTokenizer::load(&args.model.join(TOKENIZER_FILE))?;
    let predictions = fill_mask(&model, &tokenizer, &args.text, args.top_k, &device)?;
    print_json(out, &predictions)
}

/// Prints one JSON line per line of the file, then one with the file's total.
pub fn score_command(args: &ScoreArgs, out: &mut dyn Write) -> Result<(), HfError> {
    let device = CpuDevice::default();
    let (config, model) = load_hf_dir::<InferenceBackend>(&args.model, &device)?;
    let tokenizer = HfTokenizer::load(&args.model.join(TOKENIZER_FILE))?;
    let text = read_text(&args.text_file)?;
    let settings = ScoreSettings {
        objective: config.objective(),
        seed: args.seed.unwrap_or(EVAL_MASKING_SEED),
        mlm_probability: args.mlm_probability,
        max_tokens: config.max_tokens(),
        show_inputs: args.show_inputs,
    };
    let total = score_text(&model, &tokenizer, &settings, &text, &device, |line| {
        print_json(out, line)
    })?;
    print_json(out, &total)
}

fn read_text(path: &Path) -> Result<String, HfError> {
    std::fs::read_to_string(path).map_err(|source| HfError::read(path, source))
}

fn print_json(out: &mut dyn Write, value: &impl serde::Serialize) -> Result<(), HfError> {
    let line = serde_json::to_string(value).map_err(|error| HfError::Encode {
        what: "the output",
        message: error.to_string(),
    })?;
    writeln!(out, "{line}").map_err(|source| HfError::write("stdout", source))
}
