//! What happens to input the pipeline cannot use: stop with an error naming the file and row
//! (`--on-bad-record error`, the default), or skip it, log it and count it (`skip`).
//!
//! Nothing is dropped silently: every skipped record is counted by kind in the stream's stats, and
//! null or blank texts, which are not documents, are counted as `skipped_rows`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

use crate::error::PipelineError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BadRecordPolicy {
    /// Stop the stream with an error that names the file and row.
    #[default]
    Error,
    /// Skip the record (or the rest of the file), log it and count it.
    Skip,
}

/// The kinds of bad input, as counted in stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadRecordKind {
    InvalidUtf8,
    /// A document longer than `--max-document-bytes`.
    Oversized,
    MalformedJson,
    /// A compressed file that ends early or is corrupt: the rows before the damage are kept.
    TruncatedFile,
    EmptyFile,
    /// A file without a string `text` column (or whatever `--sql` selects).
    MissingColumn,
}

const KINDS: [(BadRecordKind, &str); 6] = [
    (BadRecordKind::InvalidUtf8, "invalid_utf8"),
    (BadRecordKind::Oversized, "oversized_documents"),
    (BadRecordKind::MalformedJson, "malformed_json"),
    (BadRecordKind::TruncatedFile, "truncated_files"),
    (BadRecordKind::EmptyFile, "empty_files"),
    (BadRecordKind::MissingColumn, "files_without_text"),
];

/// The policy and the counters of one stream, shared by its reading threads.
#[derive(Clone, Default)]
pub struct BadRecords {
    pub policy: BadRecordPolicy,
    counts: Arc<[AtomicU64; 6]>,
}

impl std::fmt::Debug for BadRecords {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "BadRecords({:?})", self.policy)
    }
}

impl BadRecords {
    pub fn new(policy: BadRecordPolicy) -> Self {
        BadRecords {
            policy,
            counts: Arc::default(),
        }
    }

    /// Applies the policy to one bad record: the error itself, or `Ok` once logged and counted.
    pub fn handle(&self, kind: BadRecordKind, error: PipelineError) -> Result<(), PipelineError> {
        match self.policy {
            BadRecordPolicy::Error => Err(error),
            BadRecordPolicy::Skip => {
                tracing::warn!("skipped: {error}");
                let index = KINDS.iter().position(|(known, _)| *known == kind);
                if let Some(index) = index {
                    self.counts[index].fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
        }
    }

    pub fn total(&self) -> u64 {
        self.counts
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .sum()
    }

    /// Counts by kind, for the stats action.
    pub fn snapshot(&self) -> Value {
        let mut counts = serde_json::Map::new();
        for (index, (_, name)) in KINDS.iter().enumerate() {
            counts.insert(
                name.to_string(),
                json!(self.counts[index].load(Ordering::Relaxed)),
            );
        }
        Value::Object(counts)
    }
}
