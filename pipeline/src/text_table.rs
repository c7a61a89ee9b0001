//! A DataFusion table over a plain-text corpus file: one document per non-empty line.
//!
//! DataFusion ships no line-per-row format, and the CSV workaround silently skips or fails on lines
//! we want to report precisely. This partition stream reads the (optionally gzip/zstd-compressed)
//! file on its own thread, so blocking I/O and decompression never run on the async runtime, and
//! names the file and line of any invalid UTF-8.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
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
use crate::sources::Compression;

/// Lines per record batch: large enough to amortize per-batch costs downstream, small enough that a
/// few batches in flight stay a few MiB.
const LINES_PER_BATCH: usize = 4096;
/// Batches buffered between the reading thread and DataFusion.
const BATCHES_IN_FLIGHT: usize = 2;

/// The schema of a text table: one non-null `text` column.
pub fn text_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, false)]))
}

/// Builds a single-partition table reading `path`.
pub fn text_table(
    path: PathBuf,
    compression: Compression,
) -> datafusion::error::Result<StreamingTable> {
    let partition = TextLinesPartition {
        path,
        compression,
        schema: text_schema(),
    };
    StreamingTable::try_new(text_schema(), vec![Arc::new(partition)])
}

#[derive(Debug)]
struct TextLinesPartition {
    path: PathBuf,
    compression: Compression,
    schema: SchemaRef,
}

impl PartitionStream for TextLinesPartition {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _context: Arc<TaskContext>) -> SendableRecordBatchStream {
        let (sender, receiver) = tokio::sync::mpsc::channel(BATCHES_IN_FLIGHT);
        let path = self.path.clone();
        let compression = self.compression;
        let schema = self.schema.clone();
        std::thread::Builder::new()
            .name("text-reader".into())
            .spawn(move || {
                let result = read_lines(&path, compression, &schema, |batch| {
                    sender.blocking_send(Ok(batch)).is_ok()
                });
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

/// Opens `path` with the decompressor its extension asks for.
pub fn open_decompressed(
    path: &PathBuf,
    compression: Compression,
) -> Result<Box<dyn Read + Send>, PipelineError> {
    let io_error = |source| PipelineError::Io {
        path: path.clone(),
        source,
    };
    let file = File::open(path).map_err(io_error)?;
    Ok(match compression {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(file).map_err(io_error)?),
    })
}

/// Reads non-empty lines into batches, handing each to `emit`; stops early when `emit` says so.
fn read_lines(
    path: &PathBuf,
    compression: Compression,
    schema: &SchemaRef,
    mut emit: impl FnMut(RecordBatch) -> bool,
) -> Result<(), PipelineError> {
    let mut reader = BufReader::with_capacity(1 << 20, open_decompressed(path, compression)?);
    let mut line = Vec::new();
    let mut line_number = 0u64;
    let mut builder = StringBuilder::new();
    let mut rows = 0usize;
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(|source| PipelineError::Io {
                path: path.clone(),
                source,
            })?;
        if read == 0 {
            break;
        }
        line_number += 1;
        let text = std::str::from_utf8(&line).map_err(|_| PipelineError::InvalidUtf8 {
            path: path.clone(),
            line: line_number,
        })?;
        let text = text.trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() {
            continue;
        }
        builder.append_value(text);
        rows += 1;
        if rows == LINES_PER_BATCH {
            if !emit(finish(&mut builder, schema)?) {
                return Ok(());
            }
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
