//! The tokenizer file a pipeline serves with, and the training of new ones.
//!
//! [`file`](mod@file) loads a `tokenizer.json` for serving (no truncation, no padding, RoBERTa's
//! special ids present) and describes it to consumers; [`training`] trains a byte-level BPE tokenizer
//! from the same sources a pipeline reads.

pub mod file;
pub mod training;
