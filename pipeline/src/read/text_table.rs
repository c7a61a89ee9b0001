//! DataFusion tables over line-oriented corpus files: plain text (one document per non-empty
//! line) and JSON lines (one object per line, schema inferred from the first lines).
//!
//! DataFusion ships no line-per-row format, and its JSON reader fails a whole file on one bad
//! line without naming it. These partition streams read the (optionally gzip/zstd-compressed) file
//! on their own thread, so blocking I/O and decompression never run on the async runtime, and
//! apply the bad-record policy line by line: invalid UTF-8, malformed JSON and over-long lines are
//! errors naming file and line, or skipped and counted.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::StringBuilder;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use tokio_stream::wrappers::ReceiverStream;

use crate::error::PipelineError;
use crate::read::bad_records::{BadRecordKind, BadRecords};
use crate::read::json_lines::{infer_schema, JsonBatcher};
use crate::read::lines::{Line, LineReader};
use crate::read::remote::store::RemoteError;
use crate::read::remote::RemoteObject;
use crate::read::sources::{Compression, Format};

/// Lines per record batch: large enough to amortize per-batch costs downstream, small enough that a
/// few batches in flight stay a few MiB.
const LINES_PER_BATCH: usize = 4096;
/// Batches buffered between the reading thread and DataFusion.
const BATCHES_IN_FLIGHT: usize = 2;

/// How a line table reads its file.
#[derive(Debug, Clone)]
pub struct LineFile {
    pub path: PathBuf,
    pub remote: Option<RemoteObject>,
    pub compression: Compression,
    pub format: Format,
    pub max_line_bytes: usize,
    pub bad_records: BadRecords,
    /// A JSON-lines schema already known for this file's source (none: inferred from the file).
    pub schema: Option<SchemaRef>,
    /// Decode only the `text` field of JSON lines (when nothing else is queried), so that other
    /// fields of a source's objects need not share one type.
    pub text_only: bool,
}

/// The schema of a text table: one non-null `text` column.
pub fn text_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, false)]))
}

/// Builds a single-partition table over a `.txt` or `.jsonl` file (compressed or not).
pub fn line_table(file: LineFile) -> Result<StreamingTable, PipelineError> {
    let schema = match (file.format, &file.schema) {
        (Format::JsonLines, Some(known)) => known.clone(),
        (Format::JsonLines, None) => {
            let inferred = infer_schema(&file)?;
            match inferred.field_with_name("text") {
                Ok(text) if file.text_only => Arc::new(Schema::new(vec![text.clone()])),
                _ => inferred,
            }
        }
        _ => text_schema(),
    };
    if schema.fields().is_empty() {
        return Err(PipelineError::EmptyFile(file.path.clone()));
    }
    let partition = LinesPartition {
        file,
        schema: schema.clone(),
    };
    StreamingTable::try_new(schema, vec![Arc::new(partition)])
        .map_err(|error| PipelineError::Control(error.to_string()))
}

#[derive(Debug)]
struct LinesPartition {
    file: LineFile,
    schema: SchemaRef,
}

impl PartitionStream for LinesPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _context: Arc<TaskContext>) -> SendableRecordBatchStream {
        let (sender, receiver) = tokio::sync::mpsc::channel(BATCHES_IN_FLIGHT);
        let file = self.file.clone();
        let schema = self.schema.clone();
        std::thread::Builder::new()
            .name("line-reader".into())
            .spawn(move || {
                let emit = |batch| sender.blocking_send(Ok(batch)).is_ok();
                let result = match file.format {
                    Format::JsonLines => read_json_lines(&file, &schema, emit),
                    _ => read_text_lines(&file, &schema, emit),
                };
                if let Err(error) = result {
                    let _ = sender.blocking_send(Err(DataFusionError::External(Box::new(error))));
                }
            })
            .expect("spawning a reader thread");
        Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            ReceiverStream::new(receiver),
        ))
    }
}

/// Reports a line the policy may skip; `Err` stops the file.
fn bad_line(
    file: &LineFile,
    kind: BadRecordKind,
    error: PipelineError,
) -> Result<(), PipelineError> {
    file.bad_records.handle(kind, error)
}

fn too_long(file: &LineFile, line: u64, bytes: usize) -> Result<(), PipelineError> {
    let error = PipelineError::Oversized {
        path: file.path.clone(),
        row: line,
        bytes,
        limit: file.max_line_bytes,
    };
    bad_line(file, BadRecordKind::Oversized, error)
}

/// A read that failed: the store failing (never a bad record), or the file damaged.
fn read_error(file: &LineFile, rows: u64, source: std::io::Error) -> PipelineError {
    let remote = source
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<RemoteError>());
    if let Some(remote) = remote {
        return PipelineError::from_remote(remote);
    }
    PipelineError::Truncated {
        path: file.path.clone(),
        rows,
        message: source.to_string(),
    }
}

/// Reads non-empty lines into batches, handing each to `emit`; stops early when `emit` says so.
fn read_text_lines(
    file: &LineFile,
    schema: &SchemaRef,
    mut emit: impl FnMut(RecordBatch) -> bool,
) -> Result<(), PipelineError> {
    let mut lines = LineReader::for_file(file)?;
    let mut builder = StringBuilder::new();
    let mut rows = 0usize;
    let mut total_rows = 0u64;
    loop {
        let (number, line) = match lines.next_line() {
            Ok(Some((number, line))) => (number, line),
            Ok(None) => break,
            Err(source) => {
                // Keep what was read before the damage, then report it.
                if rows > 0 {
                    emit(finish(&mut builder, schema)?);
                }
                return Err(read_error(file, total_rows + rows as u64, source));
            }
        };
        let text = match line {
            Line::TooLong(bytes) => {
                too_long(file, number, bytes)?;
                continue;
            }
            Line::Bytes(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => text,
                Err(_) => {
                    let error = PipelineError::InvalidUtf8 {
                        path: file.path.clone(),
                        line: number,
                    };
                    bad_line(file, BadRecordKind::InvalidUtf8, error)?;
                    continue;
                }
            },
        };
        if text.trim().is_empty() {
            continue;
        }
        builder.append_value(text);
        rows += 1;
        if rows == LINES_PER_BATCH {
            if !emit(finish(&mut builder, schema)?) {
                return Ok(());
            }
            total_rows += rows as u64;
            rows = 0;
        }
    }
    if rows > 0 {
        emit(finish(&mut builder, schema)?);
    }
    Ok(())
}

fn finish(builder: &mut StringBuilder, schema: &SchemaRef) -> Result<RecordBatch, PipelineError> {
    Ok(RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(builder.finish())],
    )?)
}

/// Reads JSON objects, one per non-empty line, into batches of the inferred schema.
fn read_json_lines(
    file: &LineFile,
    schema: &SchemaRef,
    mut emit: impl FnMut(RecordBatch) -> bool,
) -> Result<(), PipelineError> {
    let mut lines = LineReader::for_file(file)?;
    let mut batcher = JsonBatcher::new(file, schema.clone())?;
    let mut total_rows = 0u64;
    loop {
        let (number, line) = match lines.next_line() {
            Ok(Some((number, line))) => (number, line),
            Ok(None) => break,
            Err(source) => {
                if let Some(batch) = batcher.finish()? {
                    emit(batch);
                }
                return Err(read_error(file, total_rows + batcher.rows() as u64, source));
            }
        };
        match line {
            Line::TooLong(bytes) => too_long(file, number, bytes)?,
            Line::Bytes(bytes) => batcher.push_line(number, bytes)?,
        }
        if batcher.rows() == LINES_PER_BATCH {
            total_rows += batcher.rows() as u64;
            if let Some(batch) = batcher.finish()? {
                if !emit(batch) {
                    return Ok(());
                }
            }
        }
    }
    if let Some(batch) = batcher.finish()? {
        emit(batch);
    }
    Ok(())
}
