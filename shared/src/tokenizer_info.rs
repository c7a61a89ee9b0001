//! The description of a tokenizer that travels with every stream (schema metadata and
//! `GetFlightInfo`): its hash, vocabulary size, role ids and special ids.

use serde::{Deserialize, Serialize};

/// What a consumer must know about the tokenizer that produced the ids.
///
/// Roles a tokenizer does not have are `None` (JSON `null`): a BERT tokenizer has no `bos`, a
/// GPT-2 one no `pad` or `mask`. How roles are found: [`crate::tokenizer_file`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenizerInfo {
    /// Stable hash of the tokenizer file (hex), so a consumer can check it uses the same one.
    pub hash: String,
    /// Ids are below this (transformers' `len(tokenizer)`: the model's vocabulary plus added tokens).
    pub vocab_size: u32,
    pub pad_id: Option<u32>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub mask_id: Option<u32>,
    pub cls_id: Option<u32>,
    pub sep_id: Option<u32>,
    /// Every special id, ascending: the tokenizer's special added tokens, the role ids and the
    /// document template's. What transformers' `all_special_ids` holds, and what an MLM
    /// collator must never choose.
    pub special_ids: Vec<u32>,
    /// The token put before every document's ids by `serve --add-bos`, if any.
    pub add_bos_id: Option<u32>,
    /// The token put after every document's ids by `serve --add-eos`, if any.
    pub add_eos_id: Option<u32>,
}

impl TokenizerInfo {
    /// Whether `id` is one of [`TokenizerInfo::special_ids`].
    pub fn is_special(&self, id: u32) -> bool {
        self.special_ids.binary_search(&id).is_ok()
    }

    /// The ids of the roles the tokenizer has.
    pub fn role_ids(&self) -> impl Iterator<Item = u32> {
        [
            self.pad_id,
            self.bos_id,
            self.eos_id,
            self.unk_id,
            self.mask_id,
            self.cls_id,
            self.sep_id,
        ]
        .into_iter()
        .flatten()
    }

    /// RoBERTa's layout (`<s>`=0 `<pad>`=1 `</s>`=2 `<unk>`=3 `<mask>`=4), as the tokenizers
    /// `train-tokenizer` makes by default describe themselves; for tests and generated data.
    pub fn roberta(hash: &str, vocab_size: u32) -> Self {
        TokenizerInfo {
            hash: hash.into(),
            vocab_size,
            pad_id: Some(1),
            bos_id: Some(0),
            eos_id: Some(2),
            unk_id: Some(3),
            mask_id: Some(4),
            cls_id: Some(0),
            sep_id: Some(2),
            special_ids: vec![0, 1, 2, 3, 4],
            add_bos_id: None,
            add_eos_id: None,
        }
    }
}
