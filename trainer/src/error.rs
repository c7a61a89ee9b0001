//! The trainer library's error type.

use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum TrainError {
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),

    #[error("cannot write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot encode {what} as JSON: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },

    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },

    // `anyhow::Error` is not a `std::error::Error`, so the chain is flattened into the message.
    #[error("data source failed: {0:#}")]
    Source(anyhow::Error),

    #[error("the data source {0}")]
    BadBatch(String),

    #[error("{0}")]
    Mixing(String),

    #[error("cannot read a value back from the device: {0}")]
    Device(String),

    #[error("the loss is no longer finite at step {step} ({loss}): training diverged")]
    Diverged { step: usize, loss: f64 },

    #[error("the gradient norm is {0}: training diverged")]
    NonFiniteGradients(f64),

    /// One rank of a data-parallel run failed (or lost the others); every rank ends with it.
    #[error("rank {rank}: {message}")]
    Rank { rank: usize, message: String },

    /// Reading or writing a HuggingFace model directory (`--init-from`, exports).
    #[error(transparent)]
    Hf(#[from] crate::hf::HfError),
}

impl TrainError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        TrainError::Io {
            path: path.into(),
            source,
        }
    }
}
