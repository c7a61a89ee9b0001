//! The tokenizer worker pool: encodes batches of documents on plain threads, off the async runtime.
//!
//! Jobs carry a sequence number so the single packing stage can restore corpus order whatever
//! order the workers finish in; the block sequence therefore never depends on thread timing.
//! Channels are bounded, so a slow consumer stalls the workers and the reader instead of growing
//! memory.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, StringArray};
use crossbeam_channel::{Receiver, Sender};
use flightlm_shared::hashing::is_valid_document;
use flightlm_shared::Split;

use crate::error::PipelineError;
use crate::read::bad_records::{BadRecordKind, BadRecords};
use crate::tokenizer::file::DocumentEncoder;

/// Which documents of the corpus a stream keeps.
#[derive(Debug, Clone, Copy)]
pub struct SplitFilter {
    pub split: Split,
    pub valid_fraction: f64,
    pub seed: u64,
    /// The valid split is a corpus of its own: each split keeps every document it reads.
    pub held_out: bool,
}

impl SplitFilter {
    pub fn keeps(&self, text: &str) -> bool {
        if self.held_out {
            return true;
        }
        let valid = is_valid_document(self.seed, text, self.valid_fraction);
        valid == (self.split == Split::Valid)
    }
}

/// Work handed to the pool, in corpus order.
pub enum Job {
    Texts {
        sequence: u64,
        /// The file the texts come from, by name, and the row of its first text.
        file: Arc<str>,
        first_row: u64,
        texts: StringArray,
    },
    /// Passes through the pool untouched so the packer sees it in order.
    EndOfPass {
        sequence: u64,
    },
    Failed {
        sequence: u64,
        error: PipelineError,
    },
}

impl Job {
    fn sequence(&self) -> u64 {
        match self {
            Job::Texts { sequence, .. }
            | Job::EndOfPass { sequence }
            | Job::Failed { sequence, .. } => *sequence,
        }
    }
}

/// What the pool hands to the packer.
pub enum Encoded {
    Documents {
        file: Arc<str>,
        /// Row in `file` and token ids (special tokens included) of each kept document.
        documents: Vec<(u64, Vec<u32>)>,
        /// Null or blank rows, which are not documents.
        skipped: u64,
    },
    EndOfPass,
    Failed(PipelineError),
}

/// How the pool decides which rows are documents to encode.
#[derive(Clone)]
pub struct EncodeRules {
    pub filter: SplitFilter,
    /// Longer documents are bad records (memory stays bounded whatever the input).
    pub max_document_bytes: usize,
    pub bad_records: BadRecords,
}

/// Starts `workers` threads; they exit when `jobs` closes or the packer goes away.
pub fn spawn_workers(
    workers: usize,
    tokenizer: Arc<DocumentEncoder>,
    rules: EncodeRules,
    jobs: Receiver<Job>,
    results: Sender<(u64, Encoded)>,
) {
    for index in 0..workers.max(1) {
        let tokenizer = tokenizer.clone();
        let rules = rules.clone();
        let jobs = jobs.clone();
        let results = results.clone();
        std::thread::Builder::new()
            .name(format!("tokenizer-{index}"))
            .spawn(move || {
                for job in jobs {
                    let sequence = job.sequence();
                    let encoded = match job {
                        Job::Texts {
                            file,
                            first_row,
                            texts,
                            ..
                        } => encode(&tokenizer, &rules, file, first_row, &texts),
                        Job::EndOfPass { .. } => Encoded::EndOfPass,
                        Job::Failed { error, .. } => Encoded::Failed(error),
                    };
                    if results.send((sequence, encoded)).is_err() {
                        return;
                    }
                }
            })
            .expect("spawning a tokenizer thread");
    }
}

/// Encodes one batch of texts exactly as a pool worker does (blank rows skipped, oversized and
/// other-split documents filtered); public so the stage can be benchmarked on its own.
pub fn encode(
    tokenizer: &DocumentEncoder,
    rules: &EncodeRules,
    file: Arc<str>,
    first_row: u64,
    texts: &StringArray,
) -> Encoded {
    let mut documents = Vec::with_capacity(texts.len());
    let mut skipped = 0;
    for (index, text) in texts.iter().enumerate() {
        let row = first_row + index as u64;
        let text = match text {
            Some(text) if !text.trim().is_empty() => text,
            _ => {
                skipped += 1;
                continue;
            }
        };
        if text.len() > rules.max_document_bytes {
            let error = PipelineError::Oversized {
                path: PathBuf::from(file.as_ref()),
                row,
                bytes: text.len(),
                limit: rules.max_document_bytes,
            };
            match rules.bad_records.handle(BadRecordKind::Oversized, error) {
                Ok(()) => continue,
                Err(error) => return Encoded::Failed(error),
            }
        }
        if !rules.filter.keeps(text) {
            continue;
        }
        match tokenizer.encode(text) {
            Ok(ids) => documents.push((row, ids)),
            Err(error) => return Encoded::Failed(PipelineError::Encode(error.to_string())),
        }
    }
    Encoded::Documents {
        file,
        documents,
        skipped,
    }
}

/// Restores sequence order over results that arrive in any order.
#[derive(Default)]
pub struct Reorder {
    next: u64,
    waiting: BTreeMap<u64, Encoded>,
}

impl Reorder {
    /// Accepts one result and returns every result now ready, in order.
    pub fn accept(&mut self, sequence: u64, encoded: Encoded) -> Vec<Encoded> {
        self.waiting.insert(sequence, encoded);
        let mut ready = Vec::new();
        while let Some(encoded) = self.waiting.remove(&self.next) {
            ready.push(encoded);
            self.next += 1;
        }
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reorder_releases_in_sequence() {
        let mut reorder = Reorder::default();
        assert!(reorder.accept(1, Encoded::EndOfPass).is_empty());
        assert!(reorder.accept(2, Encoded::EndOfPass).is_empty());
        assert_eq!(reorder.accept(0, Encoded::EndOfPass).len(), 3);
        assert_eq!(reorder.accept(3, Encoded::EndOfPass).len(), 1);
    }

    #[test]
    fn split_filter_partitions_documents() {
        let train = SplitFilter {
            split: Split::Train,
            valid_fraction: 0.3,
            seed: 1,
            held_out: false,
        };
        let valid = SplitFilter {
            split: Split::Valid,
            ..train
        };
        for index in 0..1000 {
            let text = format!("doc {index}");
            assert_ne!(train.keeps(&text), valid.keeps(&text), "{text}");
        }
        // With a held-out valid corpus each split reads a corpus of its own, whole.
        for filter in [train, valid] {
            let filter = SplitFilter {
                held_out: true,
                valid_fraction: 0.0,
                ..filter
            };
            assert!((0..1000).all(|index| filter.keeps(&format!("doc {index}"))));
        }
    }
}
