//! The `tokenizer.json` of an HF model directory, used as `transformers`' `RobertaTokenizer`
//! uses it: `<s> … </s>` around every text, and plain `tokenizers` decoding (`transformers`
//! skips its WordPiece space clean-up for BPE tokenizers).

use std::path::{Path, PathBuf};

use flightlm_shared::TokenizerInfo;
use tokenizers::Tokenizer;

use super::error::HfError;

/// RoBERTa's special tokens, by the names a RoBERTa tokenizer gives them.
const BOS: &str = "<s>";
const PAD: &str = "<pad>";
const EOS: &str = "</s>";
const UNK: &str = "<unk>";
const MASK: &str = "<mask>";

pub struct HfTokenizer {
    path: PathBuf,
    inner: Tokenizer,
}

impl HfTokenizer {
    pub fn load(path: &Path) -> Result<Self, HfError> {
        let inner = Tokenizer::from_file(path).map_err(|error| HfError::Tokenizer {
            path: path.to_path_buf(),
            message: error.to_string(),
        })?;
        Ok(HfTokenizer {
            path: path.to_path_buf(),
            inner,
        })
    }

    /// The ids of `text` with the special tokens the post-processor adds.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, HfError> {
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|error| self.error(format!("cannot encode {text:?}: {error}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The ids of `text` alone, without the tokens the post-processor puts around it.
    pub fn encode_text_only(&self, text: &str) -> Result<Vec<u32>, HfError> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|error| self.error(format!("cannot encode {text:?}: {error}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, HfError> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|error| self.error(format!("cannot decode {ids:?}: {error}")))
    }

    /// Vocabulary size and special ids, as the trainer's collators need them.
    pub fn info(&self) -> Result<TokenizerInfo, HfError> {
        let id = |token: &str| {
            self.inner
                .token_to_id(token)
                .ok_or_else(|| self.error(format!("has no `{token}` token")))
        };
        Ok(TokenizerInfo {
            hash: String::new(),
            vocab_size: self.inner.get_vocab_size(true) as u32,
            bos_id: id(BOS)?,
            pad_id: id(PAD)?,
            eos_id: id(EOS)?,
            unk_id: id(UNK)?,
            mask_id: id(MASK)?,
        })
    }

    fn error(&self, message: String) -> HfError {
        HfError::Tokenizer {
            path: self.path.clone(),
            message,
        }
    }
}
