//! Loads a `tokenizer.json` for serving and describes it for consumers.
//!
//! Serving must never truncate or pad a document, whatever the file configures, and the ids of
//! RoBERTa's special tokens must exist: the packer wraps every document in `<s> … </s>` and the
//! trainer's collator needs `<mask>` and `<pad>`.

use std::path::Path;

use flightlm_shared::hashing::stable_hash;
use flightlm_shared::TokenizerInfo;
use tokenizers::Tokenizer;

use crate::error::{PipelineError, Result};

pub const BOS: &str = "<s>";
pub const PAD: &str = "<pad>";
pub const EOS: &str = "</s>";
pub const UNK: &str = "<unk>";
pub const MASK: &str = "<mask>";

/// Loads `path`, switches truncation and padding off, and reads its special ids.
pub fn load_tokenizer(path: &Path) -> Result<(Tokenizer, TokenizerInfo)> {
    let tokenizer_error = |message: String| PipelineError::Tokenizer {
        path: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|source| PipelineError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut tokenizer =
        Tokenizer::from_bytes(&bytes).map_err(|error| tokenizer_error(error.to_string()))?;
    tokenizer
        .with_truncation(None)
        .map_err(|error| tokenizer_error(error.to_string()))?;
    tokenizer.with_padding(None);
    let id = |token: &str| {
        tokenizer
            .token_to_id(token)
            .ok_or_else(|| tokenizer_error(format!("has no `{token}` token")))
    };
    let info = TokenizerInfo {
        hash: format!("{:016x}", stable_hash(0, &bytes)),
        vocab_size: tokenizer.get_vocab_size(true) as u32,
        bos_id: id(BOS)?,
        pad_id: id(PAD)?,
        eos_id: id(EOS)?,
        unk_id: id(UNK)?,
        mask_id: id(MASK)?,
    };
    Ok((tokenizer, info))
}
