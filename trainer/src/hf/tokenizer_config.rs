//! `tokenizer_config.json`: what `AutoTokenizer` needs beside `tokenizer.json` to know a
//! tokenizer's special tokens by role (pad, mask, bos, …) and its longest input.
//!
//! The class is `PreTrainedTokenizerFast`, which transformers 4.x and 5.x both load, never a
//! model-specific one (`BertTokenizerFast` would lowercase a cased normalizer again). Roles are
//! the ones the stream described, so the exported tokenizer agrees with what the model was
//! trained on; special tokens without a role go in `additional_special_tokens`.

use std::path::Path;

use flightlm_shared::TokenizerInfo;
use serde_json::{Map, Value};
use tokenizers::Tokenizer;

use super::error::HfError;

pub use flightlm_shared::tokenizer_file::TOKENIZER_CONFIG_FILE;

/// The config for `tokenizer` with the roles of `info`, for inputs up to `model_max_length`.
pub fn tokenizer_config(
    tokenizer: &Tokenizer,
    info: &TokenizerInfo,
    model_max_length: usize,
) -> Value {
    let mut config = Map::new();
    config.insert(
        "tokenizer_class".into(),
        Value::from("PreTrainedTokenizerFast"),
    );
    config.insert("model_max_length".into(), Value::from(model_max_length));
    let roles = [
        ("bos_token", info.bos_id),
        ("eos_token", info.eos_id),
        ("unk_token", info.unk_id),
        ("sep_token", info.sep_id),
        ("pad_token", info.pad_id),
        ("cls_token", info.cls_id),
        ("mask_token", info.mask_id),
    ];
    for (key, id) in roles {
        if let Some(token) = id.and_then(|id| tokenizer.id_to_token(id)) {
            config.insert(key.into(), Value::from(token));
        }
    }
    let role_ids: Vec<u32> = info.role_ids().collect();
    let additional: Vec<Value> = (info.special_ids.iter())
        .filter(|id| !role_ids.contains(id))
        .filter_map(|id| tokenizer.id_to_token(*id))
        .map(Value::from)
        .collect();
    if !additional.is_empty() {
        config.insert("additional_special_tokens".into(), Value::Array(additional));
    }
    Value::Object(config)
}

/// Writes [`tokenizer_config`] into `path`.
pub fn write_tokenizer_config(
    tokenizer: &Tokenizer,
    info: &TokenizerInfo,
    model_max_length: usize,
    path: &Path,
) -> Result<(), HfError> {
    let config = tokenizer_config(tokenizer, info, model_max_length);
    let text = serde_json::to_string_pretty(&config).map_err(|error| HfError::Encode {
        what: "tokenizer_config.json",
        message: error.to_string(),
    })?;
    std::fs::write(path, text + "\n").map_err(|source| HfError::write(path, source))
}
