//! JSON lines: the schema is inferred from the first lines, and rows are decoded a batch at a
//! time, so that a malformed line is named by its number (and skipped under `--on-bad-record
//! skip`) instead of failing the whole file as a bulk JSON reader does.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow_json::reader::{infer_json_schema_from_iterator, Decoder, ReaderBuilder};
use serde_json::Value;

use crate::error::PipelineError;
use crate::read::bad_records::BadRecordKind;
use crate::read::lines::{Line, LineReader};
use crate::read::text_table::LineFile;

/// Lines read to infer a file's schema.
const INFERENCE_LINES: usize = 1000;

/// The schema of the first objects of `file` (malformed lines are left to the reading pass).
pub fn infer_schema(file: &LineFile) -> Result<SchemaRef, PipelineError> {
    let mut lines = LineReader::for_file(file)?;
    let mut objects = Vec::new();
    while objects.len() < INFERENCE_LINES {
        match lines.next_line() {
            Ok(Some((_, Line::Bytes(bytes)))) => {
                if let Ok(object @ Value::Object(_)) = serde_json::from_slice(bytes) {
                    objects.push(object);
                }
            }
            Ok(Some((_, Line::TooLong(_)))) => {}
            Ok(None) | Err(_) => break,
        }
    }
    let schema = infer_json_schema_from_iterator(objects.into_iter().map(Ok))?;
    Ok(Arc::new(schema))
}

/// Collects parsed lines and turns them into record batches of the file's schema.
pub struct JsonBatcher<'a> {
    file: &'a LineFile,
    schema: SchemaRef,
    decoder: Decoder,
    /// Line number and object of each row waiting for the next batch.
    pending: Vec<(u64, Value)>,
}

impl<'a> JsonBatcher<'a> {
    pub fn new(file: &'a LineFile, schema: SchemaRef) -> Result<Self, PipelineError> {
        Ok(JsonBatcher {
            file,
            decoder: ReaderBuilder::new(schema.clone()).build_decoder()?,
            schema,
            pending: Vec::new(),
        })
    }

    pub fn rows(&self) -> usize {
        self.pending.len()
    }

    fn malformed(&self, line: u64, message: String) -> Result<(), PipelineError> {
        let error = PipelineError::MalformedJson {
            path: self.file.path.clone(),
            line,
            message,
        };
        self.file
            .bad_records
            .handle(BadRecordKind::MalformedJson, error)
    }

    /// Parses one line; blank lines are not records.
    pub fn push_line(&mut self, line: u64, bytes: &[u8]) -> Result<(), PipelineError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(());
        }
        match serde_json::from_slice::<Value>(bytes) {
            Ok(object @ Value::Object(_)) => {
                self.pending.push((line, object));
                Ok(())
            }
            Ok(_) => self.malformed(line, "not a JSON object".into()),
            Err(error) => self.malformed(line, error.to_string()),
        }
    }

    /// The pending rows as one batch. A row that does not fit the schema (a type that differs
    /// from the first lines) is a malformed record too.
    pub fn finish(&mut self) -> Result<Option<RecordBatch>, PipelineError> {
        if self.pending.is_empty() {
            return Ok(None);
        }
        let objects: Vec<&Value> = self.pending.iter().map(|(_, object)| object).collect();
        if self.decoder.serialize(&objects).is_err() {
            self.decoder = ReaderBuilder::new(self.schema.clone()).build_decoder()?;
            self.drop_unfit_rows()?;
            let objects: Vec<&Value> = self.pending.iter().map(|(_, object)| object).collect();
            self.decoder.serialize(&objects)?;
        }
        self.pending.clear();
        Ok(self.decoder.flush()?)
    }

    /// Finds the rows the schema cannot hold, one at a time, and applies the policy to each.
    fn drop_unfit_rows(&mut self) -> Result<(), PipelineError> {
        let mut kept = Vec::with_capacity(self.pending.len());
        for (line, object) in std::mem::take(&mut self.pending) {
            let mut probe = ReaderBuilder::new(self.schema.clone()).build_decoder()?;
            match probe.serialize(&[&object]) {
                Ok(()) => kept.push((line, object)),
                Err(error) => self.malformed(line, error.to_string())?,
            }
        }
        self.pending = kept;
        Ok(())
    }
}
