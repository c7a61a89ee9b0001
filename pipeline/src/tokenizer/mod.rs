//! The tokenizer file a pipeline serves with, and the training of new ones.
//!
//! [`file`](mod@file) loads any `tokenizer.json` for serving (no truncation, no padding) and
//! encodes documents as transformers does; [`training`] trains a byte-level BPE (the default),
//! WordPiece or Unigram tokenizer from the same sources a pipeline reads, the last two through
//! [`subword_training`], which makes their training reproducible.

pub mod file;
pub mod subword_training;
pub mod training;
