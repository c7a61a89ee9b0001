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
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
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

pub type Result<T, E = PipelineError> = std::result::Result<T, E>;
