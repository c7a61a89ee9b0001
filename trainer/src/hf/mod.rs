//! HuggingFace interop: models go out as directories that `transformers` loads
//! (`RobertaForMaskedLM` / `RobertaForCausalLM` + the tokenizer) and come back in the same form,
//! for inference (`fill-mask`, `score`) and for starting a run from existing weights.
//!
//! A checkpoint's model weights use the same layout (`model.safetensors` under HF keys, with the
//! `config.json` that describes them), so any checkpoint is also an HF model directory.

pub mod commands;
mod config;
mod error;
mod export;
mod fill_mask;
mod import;
mod inference;
mod names;
mod score;
mod shape;
mod tokenizer;
mod tokenizer_config;

pub use config::{HfRobertaConfig, CAUSAL_LM_ARCHITECTURE, MASKED_LM_ARCHITECTURE};
pub use error::HfError;
pub use export::{
    export_hf, hf_tensors, write_weights, HostTensor, CONFIG_FILE, HF_DIR, TOKENIZER_FILE,
    WEIGHTS_FILE,
};
pub use fill_mask::{fill_mask, FillMaskOutput, MaskPrediction};
pub use import::{load_hf_dir, load_weights, warm_start};
pub use inference::{logits_at, sequence_logits};
pub use score::{score_text, LineScore, ScoreSettings, ScoreTotal};
pub use tokenizer::HfTokenizer;
pub use tokenizer_config::{tokenizer_config, write_tokenizer_config, TOKENIZER_CONFIG_FILE};

#[cfg(test)]
mod tests;
