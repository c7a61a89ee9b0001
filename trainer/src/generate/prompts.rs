//! The prompts `generate` continues, as token ids, and the tokens that frame a text.
//!
//! A text prompt is read the way the model saw documents in training: the pipeline packs each
//! document as the tokenizer's post-processor frames it (`<s> text </s>` for RoBERTa), so a
//! prompt is the start token(s) followed by the text's own tokens, and the end token (`</s>`)
//! is what ends a generated text. Both are found from the tokenizer itself, by encoding a probe
//! text with and without its special tokens, so any tokenizer's framing is used.
//!
//! Prompts given as ids (`--ids-file`, one JSON array per line) are read as they are, as
//! transformers' `generate(input_ids)` reads them, after checking every id is in the vocabulary.

use std::path::Path;

use crate::hf::{HfError, HfTokenizer};

/// The special tokens a tokenizer puts before and after a text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Framing {
    pub start: Vec<u32>,
    /// The last token put after a text: where a generated text ends.
    pub end: Option<u32>,
}

/// One prompt: where it came from (for messages), its text and its ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prompt {
    pub origin: String,
    pub text: String,
    pub ids: Vec<u32>,
}

impl Framing {
    pub fn of(tokenizer: &HfTokenizer) -> Result<Self, HfError> {
        const PROBE: &str = "a b";
        let framed = tokenizer.encode(PROBE)?;
        let plain = tokenizer.encode_text_only(PROBE)?;
        let at = (0..=framed.len().saturating_sub(plain.len()))
            .find(|at| framed[*at..].starts_with(&plain))
            .ok_or_else(|| {
                HfError::Input(format!(
                    "the tokenizer frames {PROBE:?} as {framed:?}, which does not contain its \
                     plain encoding {plain:?}"
                ))
            })?;
        Ok(Framing {
            start: framed[..at].to_vec(),
            end: framed[at + plain.len()..].last().copied(),
        })
    }
}

/// A text prompt: the start tokens (unless `add_start` is false) and the text's tokens.
pub fn text_prompt(
    tokenizer: &HfTokenizer,
    framing: &Framing,
    text: &str,
    add_start: bool,
    origin: String,
) -> Result<Prompt, HfError> {
    let mut ids = if add_start {
        framing.start.clone()
    } else {
        Vec::new()
    };
    ids.extend(tokenizer.encode_text_only(text)?);
    if ids.is_empty() {
        let why = if add_start {
            "the tokenizer has no start token to begin from"
        } else {
            "--no-start-token leaves nothing to begin from"
        };
        return Err(HfError::Input(format!(
            "{origin}: the prompt is empty and {why}; give some text"
        )));
    }
    Ok(Prompt {
        origin,
        text: text.to_string(),
        ids,
    })
}

/// The non-blank lines of a prompt file.
pub fn read_prompt_lines(path: &Path) -> Result<Vec<(usize, String)>, HfError> {
    let text = std::fs::read_to_string(path).map_err(|source| HfError::read(path, source))?;
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| (index + 1, line.to_string()))
        .collect())
}

/// The prompts of an ids file: one JSON array of token ids per non-blank line, each id below
/// `vocab_size`. The text of each is its decoding, for display.
pub fn read_ids_file(
    path: &Path,
    vocab_size: usize,
    tokenizer: &HfTokenizer,
) -> Result<Vec<Prompt>, HfError> {
    let mut prompts = Vec::new();
    for (line_number, line) in read_prompt_lines(path)? {
        let origin = format!("{} line {line_number}", path.display());
        let ids: Vec<i64> = serde_json::from_str(&line).map_err(|error| {
            HfError::Input(format!("{origin}: not a JSON array of token ids ({error})"))
        })?;
        if ids.is_empty() {
            return Err(HfError::Input(format!(
                "{origin}: the prompt has no token ids"
            )));
        }
        if let Some(bad) = ids.iter().find(|id| !(0..vocab_size as i64).contains(*id)) {
            return Err(HfError::Input(format!(
                "{origin}: token id {bad} is not in the model's vocabulary of {vocab_size} \
                 (ids 0 to {})",
                vocab_size - 1
            )));
        }
        let ids: Vec<u32> = ids.into_iter().map(|id| id as u32).collect();
        prompts.push(Prompt {
            origin,
            text: tokenizer.decode(&ids, true)?,
            ids,
        });
    }
    Ok(prompts)
}
