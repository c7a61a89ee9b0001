//! Loads a `tokenizer.json` for serving and encodes documents exactly as transformers'
//! `tokenizer(text)` does.
//!
//! Any file the `tokenizers` crate loads serves: BPE, WordPiece, Unigram or WordLevel, with any
//! normalizer and pre-tokenizer. The tokenizer's own post-processor decides the special tokens of
//! a document (`<s> … </s>`, `[CLS] … [SEP]`, `… </s>` or none), and the document template of
//! `serve --add-bos/--add-eos` wraps the result (the causal layout `ids… <|endoftext|>` for
//! tokenizers whose post-processor adds nothing). Truncation and padding stored in the file are
//! switched off, as transformers switches them off: a document is never cut or padded.
//!
//! Every post-processor the crate ships adds a fixed prefix and suffix to a single sequence. That
//! is checked on probe texts when the file is loaded; documents are then encoded without
//! post-processing and framed, which skips building a second `Encoding` per document. A
//! post-processor that fails the check runs on every document.

use std::path::Path;

use flightlm_shared::tokenizer_file::{load_tokenizer_file, DocumentTemplate};
use flightlm_shared::TokenizerInfo;
use tokenizers::Tokenizer;

use crate::error::{PipelineError, Result};

pub const BOS: &str = "<s>";
pub const PAD: &str = "<pad>";
pub const EOS: &str = "</s>";
pub const UNK: &str = "<unk>";
pub const MASK: &str = "<mask>";

/// Texts the post-processor's framing is checked on: a word, a sentence, nothing.
const PROBES: [&str; 3] = ["a", "Hello, world! 12 34 — ünïcödé", ""];

/// Encodes documents into the ids a stream packs.
pub struct DocumentEncoder {
    tokenizer: Tokenizer,
    /// Ids before and after the tokenizer's own encoding (the template's `--add-bos/--add-eos`).
    outer_prefix: Vec<u32>,
    outer_suffix: Vec<u32>,
    /// What the post-processor adds, when it is a fixed frame; `None` runs it on every document.
    frame: Option<(Vec<u32>, Vec<u32>)>,
}

/// Loads `path` with `template` and describes it; a file that does not load, or a template token
/// missing from its vocabulary, is refused naming it.
pub fn load_tokenizer(
    path: &Path,
    template: &DocumentTemplate,
) -> Result<(DocumentEncoder, TokenizerInfo)> {
    let (tokenizer, info) =
        load_tokenizer_file(path, template).map_err(|error| PipelineError::Tokenizer {
            path: error.path,
            message: error.message,
        })?;
    let frame = fixed_frame(&tokenizer);
    let encoder = DocumentEncoder {
        tokenizer,
        outer_prefix: info.add_bos_id.into_iter().collect(),
        outer_suffix: info.add_eos_id.into_iter().collect(),
        frame,
    };
    Ok((encoder, info))
}

impl DocumentEncoder {
    /// The ids of one document: its special tokens included, never truncated.
    pub fn encode(&self, text: &str) -> std::result::Result<Vec<u32>, tokenizers::Error> {
        let mut ids = Vec::new();
        ids.extend_from_slice(&self.outer_prefix);
        match &self.frame {
            Some((prefix, suffix)) => {
                let encoding = self.tokenizer.encode_fast(text, false)?;
                ids.reserve(prefix.len() + encoding.len() + suffix.len() + self.outer_suffix.len());
                ids.extend_from_slice(prefix);
                ids.extend_from_slice(encoding.get_ids());
                ids.extend_from_slice(suffix);
            }
            None => {
                let encoding = self.tokenizer.encode_fast(text, true)?;
                ids.extend_from_slice(encoding.get_ids());
            }
        }
        ids.extend_from_slice(&self.outer_suffix);
        Ok(ids)
    }

    /// The tokenizer underneath, for callers that need its vocabulary.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
}

/// The prefix and suffix the post-processor adds, if it adds the same ones around every probe.
fn fixed_frame(tokenizer: &Tokenizer) -> Option<(Vec<u32>, Vec<u32>)> {
    let encode = |text: &str, special: bool| {
        tokenizer
            .encode_fast(text, special)
            .ok()
            .map(|encoding| encoding.get_ids().to_vec())
    };
    let mut frame: Option<(Vec<u32>, Vec<u32>)> = None;
    for probe in PROBES {
        let (plain, framed) = (encode(probe, false)?, encode(probe, true)?);
        let found = match &frame {
            Some((prefix, suffix)) => {
                let expected = [prefix.as_slice(), &plain, suffix].concat();
                (expected == framed).then(|| (prefix.clone(), suffix.clone()))
            }
            None => split_frame(&plain, &framed),
        };
        frame = Some(found?);
    }
    frame
}

/// `framed` as `prefix + plain + suffix`, taking the first place `plain` occurs.
fn split_frame(plain: &[u32], framed: &[u32]) -> Option<(Vec<u32>, Vec<u32>)> {
    let start = (0..=framed.len().checked_sub(plain.len())?)
        .find(|start| &framed[*start..start + plain.len()] == plain)?;
    let end = start + plain.len();
    Some((framed[..start].to_vec(), framed[end..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_around_the_plain_ids() {
        assert_eq!(
            split_frame(&[5, 6], &[0, 5, 6, 2]),
            Some((vec![0], vec![2]))
        );
        assert_eq!(
            split_frame(&[], &[101, 102]),
            Some((vec![], vec![101, 102]))
        );
        assert_eq!(split_frame(&[5, 6], &[5, 9, 6]), None);
    }
}
