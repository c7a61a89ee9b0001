//! The `tokenizer.json` of an HF model directory, used as transformers' `AutoTokenizer` uses
//! it: the post-processor's special tokens around every text (`<s> … </s>`, `[CLS] … [SEP]`, …),
//! the roles named by a `tokenizer_config.json` beside it, and plain `tokenizers` decoding.

use std::path::{Path, PathBuf};

use flightlm_shared::tokenizer_file::{load_tokenizer_file, DocumentTemplate};
use flightlm_shared::TokenizerInfo;
use tokenizers::Tokenizer;

use super::error::HfError;

pub struct HfTokenizer {
    path: PathBuf,
    inner: Tokenizer,
    info: TokenizerInfo,
}

impl HfTokenizer {
    pub fn load(path: &Path) -> Result<Self, HfError> {
        let (inner, info) =
            load_tokenizer_file(path, &DocumentTemplate::default()).map_err(|error| {
                HfError::Tokenizer {
                    path: error.path,
                    message: error.message,
                }
            })?;
        Ok(HfTokenizer {
            path: path.to_path_buf(),
            inner,
            info,
        })
    }

    /// The tokenizer underneath (its vocabulary, added tokens and decoder).
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
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

    /// Vocabulary size and special ids, described as a pipeline describes its tokenizer.
    pub fn info(&self) -> Result<TokenizerInfo, HfError> {
        Ok(self.info.clone())
    }

    fn error(&self, message: String) -> HfError {
        HfError::Tokenizer {
            path: self.path.clone(),
            message,
        }
    }
}
