//! Reads the `text` column of each corpus file through DataFusion, in a deterministic order.
//!
//! One `SessionContext` with a single target partition: every file is scanned as one ordered
//! stream (no partition interleaving, no work stealing), files in manifest order. Whatever the
//! storage type of `text` (Utf8, LargeUtf8, Utf8View as HF hub Parquet has), batches come out as
//! plain `StringArray`s.

use std::sync::{Arc, Mutex};

use arrow::array::{Array, StringArray};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::dataframe::DataFrame;
use datafusion::datasource::file_format::file_compression_type::FileCompressionType;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::{
    cast, col, CsvReadOptions, ParquetReadOptions, SessionConfig, SessionContext,
};
use futures::StreamExt;

use crate::error::{PipelineError, Result};
use crate::read::bad_records::{BadRecordPolicy, BadRecords};
use crate::read::parquet_resume::open_from_row;
use crate::read::remote::{self, store::RemoteError};
use crate::read::sources::{Compression, CorpusFile, Format};
use crate::read::text_table::{line_table, LineFile};

/// The column every corpus must have.
pub const TEXT_COLUMN: &str = "text";

pub struct CorpusReader {
    context: SessionContext,
    /// The JSON-lines schema of the source's remote objects, inferred from the first one read:
    /// every other object is opened only when the stream reaches it.
    remote_json_schema: Mutex<Option<SchemaRef>>,
    /// User SQL over the table `corpus` (the current file); it must yield a string `text` column.
    sql: Option<String>,
    bad_records: BadRecords,
    max_line_bytes: usize,
}

/// A single-threaded async runtime for a reading thread: DataFusion streams are async, but each
/// reader runs on its own plain thread, off the server's runtime.
pub fn reader_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| PipelineError::Io {
            path: std::path::PathBuf::from("<runtime>"),
            source,
        })
}

/// Lines longer than this are bad records unless a reader is told otherwise.
pub const DEFAULT_MAX_LINE_BYTES: usize = 64 << 20;

/// The table name user SQL reads from.
pub const SQL_TABLE: &str = "corpus";

impl Default for CorpusReader {
    fn default() -> Self {
        Self::new()
    }
}

impl CorpusReader {
    pub fn new() -> Self {
        let config = SessionConfig::new()
            .with_target_partitions(1)
            .with_repartition_file_scans(false)
            .with_batch_size(4096);
        CorpusReader {
            context: SessionContext::new_with_config(config),
            remote_json_schema: Mutex::default(),
            sql: None,
            bad_records: BadRecords::default(),
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
        }
    }

    /// A reader that applies `sql` (over the table `corpus`) to every file.
    pub fn with_sql(sql: Option<String>) -> Self {
        CorpusReader { sql, ..Self::new() }
    }

    /// Applies `bad_records` to line-level problems and bounds line length.
    pub fn with_bad_records(mut self, bad_records: BadRecords, max_line_bytes: usize) -> Self {
        self.bad_records = bad_records;
        self.max_line_bytes = max_line_bytes;
        self
    }

    /// A data frame of `file` projected to one Utf8 `text` column.
    pub async fn text_frame(&self, file: &CorpusFile) -> Result<DataFrame> {
        let path = file.path.to_string_lossy().to_string();
        let query_error = |error: DataFusionError| query_error(file, error);
        let path = match &file.remote {
            Some(object) => {
                // DataFusion finds a URL's store by its scheme and authority; this file is read
                // at the version the manifest lists.
                let root = url::Url::parse(&object.root).map_err(|error| {
                    PipelineError::Control(format!("bad URL {}: {error}", object.root))
                })?;
                let store = remote::store_for(&object.root)?.pinned_to(object)?;
                self.context.register_object_store(&root, Arc::new(store));
                object.datafusion_url()
            }
            None => remote::local_file_url(&file.path).unwrap_or(path),
        };
        let frame = match file.format {
            Format::Text | Format::JsonLines => {
                let remote_json = file.remote.is_some() && file.format == Format::JsonLines;
                let known_schema = match remote_json {
                    true => self.remote_json_schema.lock().ok().and_then(|s| s.clone()),
                    false => None,
                };
                let table = line_table(LineFile {
                    path: file.path.clone(),
                    remote: file.remote.clone(),
                    compression: file.compression,
                    format: file.format,
                    max_line_bytes: self.max_line_bytes,
                    bad_records: self.bad_records.clone(),
                    schema: known_schema,
                    text_only: remote_json && self.sql.is_none(),
                })?;
                if remote_json {
                    if let Ok(mut known) = self.remote_json_schema.lock() {
                        known.get_or_insert_with(|| table.schema());
                    }
                }
                self.context
                    .read_table(Arc::new(table))
                    .map_err(query_error)?
            }
            Format::Csv => {
                let extension = compound_extension(file, ".csv");
                let options = CsvReadOptions::new()
                    .has_header(true)
                    .newlines_in_values(true)
                    .file_extension(&extension)
                    .file_compression_type(compression_type(file.compression));
                self.context
                    .read_csv(path, options)
                    .await
                    .map_err(query_error)?
            }
            Format::Parquet => self
                .context
                .read_parquet(path, ParquetReadOptions::default())
                .await
                .map_err(query_error)?,
        };
        let frame = match &self.sql {
            Some(sql) => {
                // One file at a time keeps the order deterministic and the resume position a row.
                self.context
                    .deregister_table(SQL_TABLE)
                    .map_err(query_error)?;
                self.context
                    .register_table(SQL_TABLE, frame.into_view())
                    .map_err(query_error)?;
                self.context.sql(sql).await.map_err(query_error)?
            }
            None => frame,
        };
        let schema = frame.schema();
        let field = schema
            .field_with_unqualified_name(TEXT_COLUMN)
            .map_err(|_| PipelineError::MissingTextColumn {
                path: file.path.clone(),
                columns: schema
                    .fields()
                    .iter()
                    .map(|field| field.name().as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        match field.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {}
            other => {
                return Err(PipelineError::TextNotString {
                    path: file.path.clone(),
                    data_type: other.to_string(),
                })
            }
        }
        frame
            .select(vec![
                cast(col(TEXT_COLUMN), DataType::Utf8).alias(TEXT_COLUMN)
            ])
            .map_err(query_error)
    }

    /// Opens the ordered stream of `text` batches of `file`.
    pub async fn open(&self, file: &CorpusFile) -> Result<TextBatches> {
        let frame = self.text_frame(file).await?;
        let stream = frame
            .execute_stream()
            .await
            .map_err(|error| query_error(file, error))?;
        Ok(TextBatches {
            file: file.clone(),
            stream,
        })
    }

    /// Opens `file` at or before row `skip_rows`, returning its batches and the row they start
    /// at: a Parquet file (without `--sql`) starts at the row group holding the row, other files
    /// at their first row.
    pub async fn open_at(&self, file: &CorpusFile, skip_rows: u64) -> Result<(TextBatches, u64)> {
        if skip_rows > 0 && file.format == Format::Parquet && self.sql.is_none() {
            if let Some((stream, first_row)) = open_from_row(file, skip_rows).await? {
                let file = file.clone();
                return Ok((TextBatches { file, stream }, first_row));
            }
        }
        Ok((self.open(file).await?, 0))
    }

    /// Checks one source's files up front (exists, parses, has a string `text` column), so a bad
    /// corpus fails at start-up rather than mid-stream: every local file, and the first remote
    /// object (the others are opened when a stream reaches them, so start-up costs the same for
    /// ten objects or ten thousand).
    ///
    /// Under `--on-bad-record skip` a file that fails is only reported here: each stream skips
    /// it and counts it. A store that fails is never skipped.
    pub async fn check(&self, manifest: &[CorpusFile]) -> Result<()> {
        if let Ok(mut known) = self.remote_json_schema.lock() {
            *known = None;
        }
        let first_remote = manifest.iter().position(|file| file.remote.is_some());
        for (index, file) in manifest.iter().enumerate() {
            if file.remote.is_some() && Some(index) != first_remote {
                continue;
            }
            match self.text_frame(file).await {
                Ok(_) => {}
                Err(error)
                    if self.bad_records.policy == BadRecordPolicy::Skip
                        && !error.is_storage_failure() =>
                {
                    tracing::warn!("will be skipped: {error}");
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }
}

/// The `text` batches of one file.
pub struct TextBatches {
    file: CorpusFile,
    stream: SendableRecordBatchStream,
}

impl TextBatches {
    /// The next batch of texts (nulls possible), or `None` at the end of the file.
    pub async fn next(&mut self) -> Option<Result<StringArray>> {
        let batch = match self.stream.next().await? {
            Ok(batch) => batch,
            Err(error) => return Some(Err(query_error(&self.file, error))),
        };
        let column = batch.column(0);
        Some(
            column
                .as_any()
                .downcast_ref::<StringArray>()
                .cloned()
                .ok_or_else(|| PipelineError::TextNotString {
                    path: self.file.path.clone(),
                    data_type: column.data_type().to_string(),
                }),
        )
    }
}

/// DataFusion wraps our own reader errors; unwrap them so the message names file and line once.
fn query_error(file: &CorpusFile, error: DataFusionError) -> PipelineError {
    if let Some(remote) = remote::errors::find::<RemoteError>(&error) {
        return PipelineError::from_remote(remote);
    }
    match error.find_root() {
        DataFusionError::External(inner) => match inner.downcast_ref::<PipelineError>() {
            Some(known) => known.duplicate().unwrap_or_else(|| PipelineError::Query {
                path: file.path.clone(),
                message: known.to_string(),
            }),
            None => PipelineError::Query {
                path: file.path.clone(),
                message: inner.to_string(),
            },
        },
        root => PipelineError::Query {
            path: file.path.clone(),
            message: root.to_string(),
        },
    }
}

/// DataFusion filters listed files by extension, so pass the file's own, e.g. `.jsonl.gz`: from
/// where `stem` (`.json`, `.csv`) starts to the end of the name.
fn compound_extension(file: &CorpusFile, stem: &str) -> String {
    let name = file
        .path
        .file_name()
        .map(|name| name.to_string_lossy().to_string())
        .unwrap_or_default();
    match name.to_ascii_lowercase().rfind(stem) {
        Some(start) => name[start..].to_string(),
        None => stem.to_string(),
    }
}

fn compression_type(compression: Compression) -> FileCompressionType {
    match compression {
        Compression::None => FileCompressionType::UNCOMPRESSED,
        Compression::Gzip => FileCompressionType::GZIP,
        Compression::Zstd => FileCompressionType::ZSTD,
    }
}

/// The documents a text array holds, and how many of its rows were not documents (null or blank),
/// so callers can count what they skip instead of losing it silently.
pub fn documents(texts: &StringArray) -> (Vec<&str>, u64) {
    let mut kept = Vec::with_capacity(texts.len());
    let mut skipped = 0;
    for text in texts.iter() {
        match text {
            Some(text) if !text.trim().is_empty() => kept.push(text),
            _ => skipped += 1,
        }
    }
    (kept, skipped)
}
