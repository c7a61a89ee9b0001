//! Reads a `tokenizer.json` the way a stream describes it: its special tokens by role, every
//! special id, its vocabulary size and hash.
//!
//! A `tokenizer.json` does not say which token plays which role. transformers takes the roles from
//! `tokenizer_config.json` (`AutoTokenizer`) or is told them; a bare
//! `PreTrainedTokenizerFast(tokenizer_file=…)` knows none. So do the same here, in this order:
//! a `tokenizer_config.json` beside the file, then the post-processor (`BertProcessing` and
//! `RobertaProcessing` name their CLS and SEP), then the usual names of each role
//! (`[MASK]`, `<mask>`, `<|endoftext|>`, …), and finally the document template of
//! `serve --add-bos/--add-eos`. The pipeline and the trainer both describe files with it, so the
//! two sides always agree.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::Value;
use thiserror::Error;
use tokenizers::Tokenizer;

use crate::hashing::stable_hash;
use crate::schema::TokenizerInfo;

/// transformers' own file of named special tokens, read when it sits beside `tokenizer.json`.
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";

#[derive(Debug, Error)]
#[error("tokenizer {path}: {message}")]
pub struct TokenizerFileError {
    pub path: PathBuf,
    pub message: String,
}

/// Tokens added around every document beyond what the tokenizer's post-processor adds: the
/// usual causal layout `ids… <|endoftext|>` for tokenizers whose post-processor adds nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DocumentTemplate {
    pub add_bos: Option<String>,
    pub add_eos: Option<String>,
}

/// The roles transformers names, with the usual spellings of each in the families we know
/// (RoBERTa/BART, BERT, GPT-2, Llama, T5, XLNet), most specific first.
const ROLE_NAMES: [(Role, &[&str]); 7] = [
    (Role::Pad, &["<pad>", "[PAD]", "<|pad|>", "<|padding|>"]),
    (
        Role::Bos,
        &[
            "<s>",
            "<|begin_of_text|>",
            "<|startoftext|>",
            "<bos>",
            "<|endoftext|>",
        ],
    ),
    (
        Role::Eos,
        &["</s>", "<|endoftext|>", "<|end_of_text|>", "<eos>"],
    ),
    (Role::Unk, &["<unk>", "[UNK]", "<|unk|>"]),
    (Role::Mask, &["<mask>", "[MASK]", "<|mask|>"]),
    (Role::Cls, &["[CLS]", "<cls>"]),
    (Role::Sep, &["[SEP]", "<sep>"]),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Pad,
    Bos,
    Eos,
    Unk,
    Mask,
    Cls,
    Sep,
}

impl Role {
    /// The key of the role in `tokenizer_config.json`.
    fn config_key(self) -> &'static str {
        match self {
            Role::Pad => "pad_token",
            Role::Bos => "bos_token",
            Role::Eos => "eos_token",
            Role::Unk => "unk_token",
            Role::Mask => "mask_token",
            Role::Cls => "cls_token",
            Role::Sep => "sep_token",
        }
    }

    fn slot(self, info: &mut TokenizerInfo) -> &mut Option<u32> {
        match self {
            Role::Pad => &mut info.pad_id,
            Role::Bos => &mut info.bos_id,
            Role::Eos => &mut info.eos_id,
            Role::Unk => &mut info.unk_id,
            Role::Mask => &mut info.mask_id,
            Role::Cls => &mut info.cls_id,
            Role::Sep => &mut info.sep_id,
        }
    }
}

/// Loads `path` with truncation and padding switched off (transformers ignores both when it
/// tokenizes, and a pipeline must never cut or pad a document) and describes it.
pub fn load_tokenizer_file(
    path: &Path,
    template: &DocumentTemplate,
) -> Result<(Tokenizer, TokenizerInfo), TokenizerFileError> {
    let error = |message: String| TokenizerFileError {
        path: path.to_path_buf(),
        message,
    };
    let bytes = std::fs::read(path).map_err(|source| error(format!("cannot read: {source}")))?;
    let mut tokenizer = Tokenizer::from_bytes(&bytes)
        .map_err(|source| error(format!("does not load in `tokenizers`: {source}")))?;
    tokenizer
        .with_truncation(None)
        .map_err(|source| error(source.to_string()))?;
    tokenizer.with_padding(None);
    let config = read_tokenizer_config(path).map_err(error)?;
    let info = describe(&tokenizer, &bytes, config.as_ref(), template).map_err(error)?;
    Ok((tokenizer, info))
}

/// Describes a loaded tokenizer whose file holds `bytes` (the hash), with the named tokens of
/// `config` (a `tokenizer_config.json`) when there is one.
pub fn describe(
    tokenizer: &Tokenizer,
    bytes: &[u8],
    config: Option<&Value>,
    template: &DocumentTemplate,
) -> Result<TokenizerInfo, String> {
    let id_of = |token: &str, what: &str| {
        tokenizer
            .token_to_id(token)
            .ok_or_else(|| format!("{what} `{token}` is not in the vocabulary"))
    };
    let add_bos_id = template
        .add_bos
        .as_deref()
        .map(|token| id_of(token, "--add-bos token"))
        .transpose()?;
    let add_eos_id = template
        .add_eos
        .as_deref()
        .map(|token| id_of(token, "--add-eos token"))
        .transpose()?;
    let mut info = TokenizerInfo {
        hash: format!("{:016x}", stable_hash(0, bytes)),
        vocab_size: tokenizer.get_vocab_size(true) as u32,
        pad_id: None,
        bos_id: None,
        eos_id: None,
        unk_id: None,
        mask_id: None,
        cls_id: None,
        sep_id: None,
        special_ids: Vec::new(),
        add_bos_id,
        add_eos_id,
    };
    let mut special: BTreeSet<u32> = tokenizer
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, token)| token.special)
        .map(|(id, _)| id)
        .collect();
    special.extend(add_bos_id.into_iter().chain(add_eos_id));
    if let Some(config) = config {
        for (role, _) in ROLE_NAMES {
            if let Some(token) = config.get(role.config_key()).and_then(token_content) {
                *role.slot(&mut info) = Some(id_of(token, role.config_key())?);
            }
        }
        let additional = config
            .get("additional_special_tokens")
            .and_then(Value::as_array);
        for token in additional.into_iter().flatten().filter_map(token_content) {
            special.insert(id_of(token, "additional special token")?);
        }
    }
    let processor = tokenizer
        .get_post_processor()
        .and_then(|processor| serde_json::to_value(processor).ok());
    if let Some(processor) = processor {
        let (cls, sep) = processor_cls_sep(&processor);
        info.cls_id = info.cls_id.or(cls);
        info.sep_id = info.sep_id.or(sep);
    }
    for (role, names) in ROLE_NAMES {
        let slot = role.slot(&mut info);
        if slot.is_none() {
            *slot = names.iter().find_map(|name| tokenizer.token_to_id(name));
        }
    }
    info.bos_id = info.bos_id.or(add_bos_id);
    info.eos_id = info.eos_id.or(add_eos_id);
    special.extend(info.role_ids());
    info.special_ids = special.into_iter().collect();
    Ok(info)
}

/// The `tokenizer_config.json` beside `path`, when there is one.
fn read_tokenizer_config(path: &Path) -> Result<Option<Value>, String> {
    let config = path.with_file_name(TOKENIZER_CONFIG_FILE);
    if !config.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&config)
        .map_err(|error| format!("cannot read {}: {error}", config.display()))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|error| format!("{} is not JSON: {error}", config.display()))
}

/// A special token in `tokenizer_config.json`: a string, or an `AddedToken` object.
fn token_content(value: &Value) -> Option<&str> {
    value
        .as_str()
        .or_else(|| value.get("content").and_then(Value::as_str))
}

/// The CLS and SEP ids a `BertProcessing`/`RobertaProcessing` post-processor (possibly inside a
/// `Sequence`) adds.
fn processor_cls_sep(processor: &Value) -> (Option<u32>, Option<u32>) {
    let id = |field: &str| {
        processor
            .get(field)
            .and_then(|pair| pair.get(1))
            .and_then(Value::as_u64)
            .map(|id| id as u32)
    };
    match processor.get("type").and_then(Value::as_str) {
        Some("BertProcessing" | "RobertaProcessing") => (id("cls"), id("sep")),
        Some("Sequence") => processor
            .get("processors")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(processor_cls_sep)
            .fold((None, None), |found, next| {
                (found.0.or(next.0), found.1.or(next.1))
            }),
        _ => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::AddedToken;

    fn word_level(tokens: &[&str], special: &[&str]) -> Tokenizer {
        let vocab = tokens
            .iter()
            .enumerate()
            .map(|(id, token)| (token.to_string(), id as u32))
            .collect();
        let model = WordLevel::builder()
            .vocab(vocab)
            .unk_token("[UNK]".into())
            .build()
            .unwrap();
        let mut tokenizer = Tokenizer::new(model);
        let special: Vec<AddedToken> = special
            .iter()
            .map(|token| AddedToken::from(token.to_string(), true))
            .collect();
        tokenizer.add_special_tokens(&special);
        tokenizer
    }

    #[test]
    fn roles_come_from_the_usual_names() {
        let tokenizer = word_level(
            &["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello"],
            &["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
        );
        let info = describe(&tokenizer, b"x", None, &DocumentTemplate::default()).unwrap();
        assert_eq!(
            (
                info.pad_id,
                info.unk_id,
                info.cls_id,
                info.sep_id,
                info.mask_id
            ),
            (Some(0), Some(1), Some(2), Some(3), Some(4))
        );
        assert_eq!((info.bos_id, info.eos_id), (None, None));
        assert_eq!(info.special_ids, vec![0, 1, 2, 3, 4]);
        assert_eq!(info.vocab_size, 6);
    }

    #[test]
    fn the_config_and_the_template_name_roles_and_unknown_tokens_are_refused() {
        let tokenizer = word_level(&["[UNK]", "<|endoftext|>", "<x>", "a"], &["<|endoftext|>"]);
        let template = DocumentTemplate {
            add_bos: None,
            add_eos: Some("<|endoftext|>".into()),
        };
        let config = serde_json::json!({"mask_token": {"content": "<x>"}});
        let info = describe(&tokenizer, b"x", Some(&config), &template).unwrap();
        assert_eq!(
            (info.eos_id, info.add_eos_id, info.mask_id),
            (Some(1), Some(1), Some(2))
        );
        assert_eq!(info.special_ids, vec![0, 1, 2], "role ids count as special");
        let missing = DocumentTemplate {
            add_bos: Some("<s>".into()),
            add_eos: None,
        };
        let message = describe(&tokenizer, b"x", None, &missing).unwrap_err();
        assert!(message.contains("--add-bos token `<s>`"), "{message}");
    }
}
