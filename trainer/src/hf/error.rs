//! Errors of the HuggingFace interop: reading and writing model directories that `transformers`
//! loads (`config.json`, `model.safetensors`, `tokenizer.json`).

use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum HfError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path} is not a valid HF config: {source}")]
    BadConfig {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("{path}: {message}")]
    Unsupported { path: PathBuf, message: String },

    #[error("{path} is not a valid safetensors file: {source}")]
    BadSafetensors {
        path: PathBuf,
        #[source]
        source: safetensors::SafeTensorError,
    },

    #[error("{path}: tensor `{name}` {message}")]
    BadTensor {
        path: PathBuf,
        name: String,
        message: String,
    },

    #[error("{path} does not fit the model: {message}")]
    ShapeMismatch { path: PathBuf, message: String },

    #[error("cannot encode {what}: {message}")]
    Encode { what: &'static str, message: String },

    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },

    #[error("{0}")]
    Input(String),

    #[error("cannot read a value back from the device: {0}")]
    Device(String),
}

impl HfError {
    pub(crate) fn read(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        HfError::Read {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn write(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        HfError::Write {
            path: path.into(),
            source,
        }
    }
}
