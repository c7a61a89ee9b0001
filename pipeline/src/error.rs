//! The pipeline library's error type: every failure names the file, row or field it is about.

use std::path::PathBuf;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum PipelineError {
    #[error("input not found: {0}")]
    InputNotFound(PathBuf),
    #[error("directory {0} has no readable corpus (expected .txt, .jsonl, .csv or .parquet files, optionally .gz/.zst)")]
    EmptyDirectory(PathBuf),
    #[error(
        "unsupported corpus file {0} (expected .txt, .jsonl, .csv or .parquet, optionally .gz/.zst)"
    )]
    UnsupportedFile(PathBuf),
    #[error("file {path} has no `text` column (columns: {columns})")]
    MissingTextColumn { path: PathBuf, columns: String },
    #[error("file {path}: column `text` has type {data_type}, expected a string")]
    TextNotString { path: PathBuf, data_type: String },
    #[error("file {path}, line {line}: invalid UTF-8")]
    InvalidUtf8 { path: PathBuf, line: u64 },
    #[error(
        "file {path}, row {row}: document of {bytes} bytes exceeds --max-document-bytes {limit}"
    )]
    Oversized {
        path: PathBuf,
        row: u64,
        bytes: usize,
        limit: usize,
    },
    #[error("file {path}, line {line}: malformed JSON: {message}")]
    MalformedJson {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error("file {0} is empty")]
    EmptyFile(PathBuf),
    #[error("file {path}: damaged or truncated after row {rows}: {message}")]
    Truncated {
        path: PathBuf,
        rows: u64,
        message: String,
    },
    #[error("cursor refused: {0}")]
    Cursor(String),
    /// A stream request the corpus cannot honour (weights naming a source it does not serve).
    #[error("{0}")]
    Request(String),
    #[error("{0}")]
    Control(String),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read {url}: {message}")]
    Remote { url: String, message: String },
    /// A remote store that stayed unreachable (or kept failing transiently) for
    /// `--remote-retry-s`: a client should reconnect and resume later.
    #[error("cannot read {url}: {message}")]
    RemoteUnavailable { url: String, message: String },
    #[error("reading {path}: {message}")]
    Query { path: PathBuf, message: String },
    #[error("tokenizer {path}: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error("tokenizing failed: {0}")]
    Encode(String),
    #[error("the corpus has no documents")]
    NoDocuments,
    #[error("{0}")]
    EmptySplit(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("arrow error: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error(transparent)]
    Client(#[from] flightlm_shared::client::ClientError),
    #[error(transparent)]
    Schema(#[from] flightlm_shared::schema::SchemaError),
}

impl PipelineError {
    /// A remote failure as the pipeline reports it: unavailable (retry later) or permanent.
    pub fn from_remote(error: &crate::read::remote::store::RemoteError) -> PipelineError {
        let (url, message) = (error.url.clone(), error.message.clone());
        if error.unavailable {
            PipelineError::RemoteUnavailable { url, message }
        } else {
            PipelineError::Remote { url, message }
        }
    }

    /// Whether the failure is one of reading storage (a remote store that failed), as opposed
    /// to a bad record: `--on-bad-record skip` never skips these.
    pub fn is_storage_failure(&self) -> bool {
        matches!(
            self,
            PipelineError::Remote { .. } | PipelineError::RemoteUnavailable { .. }
        )
    }

    /// A copy that keeps the kind of the errors clients act on (unavailable, cursor refused,
    /// remote failures) and the message of every other, for the readers of a shared production.
    pub fn shared_copy(&self) -> PipelineError {
        match self {
            PipelineError::Cursor(message) => PipelineError::Cursor(message.clone()),
            PipelineError::Remote { url, message } => PipelineError::Remote {
                url: url.clone(),
                message: message.clone(),
            },
            PipelineError::RemoteUnavailable { url, message } => PipelineError::RemoteUnavailable {
                url: url.clone(),
                message: message.clone(),
            },
            other => other
                .duplicate()
                .unwrap_or_else(|| PipelineError::Control(other.to_string())),
        }
    }

    /// A copy of the errors that line readers send through DataFusion, so they come out with
    /// their file and line intact (and their kind, which decides what `skip` does).
    pub fn duplicate(&self) -> Option<PipelineError> {
        Some(match self {
            PipelineError::InvalidUtf8 { path, line } => PipelineError::InvalidUtf8 {
                path: path.clone(),
                line: *line,
            },
            PipelineError::MalformedJson {
                path,
                line,
                message,
            } => PipelineError::MalformedJson {
                path: path.clone(),
                line: *line,
                message: message.clone(),
            },
            PipelineError::Oversized {
                path,
                row,
                bytes,
                limit,
            } => PipelineError::Oversized {
                path: path.clone(),
                row: *row,
                bytes: *bytes,
                limit: *limit,
            },
            PipelineError::Truncated {
                path,
                rows,
                message,
            } => PipelineError::Truncated {
                path: path.clone(),
                rows: *rows,
                message: message.clone(),
            },
            PipelineError::Remote { .. } | PipelineError::RemoteUnavailable { .. } => {
                self.shared_copy()
            }
            _ => return None,
        })
    }
}

pub type Result<T, E = PipelineError> = std::result::Result<T, E>;
