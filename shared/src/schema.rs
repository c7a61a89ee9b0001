//! The Arrow schema of a token-block stream and the tokenizer description in its metadata.
//!
//! One row is one block of exactly `seq_len` token ids. Per-row columns (not Flight
//! `app_metadata`, which only rides on the first message of a split batch) carry what a consumer
//! needs to account for each block:
//!
//! | column      | type                               | meaning                                   |
//! |-------------|------------------------------------|-------------------------------------------|
//! | `input_ids` | `FixedSizeList<Int32>[seq_len]`    | the token ids, documents as the tokenizer encodes them |
//! | `block_seq` | `UInt64`                           | position of the block in the stream, from 0 |
//! | `epoch`     | `UInt32`                           | the pass over the split the block is from  |
//! | `resume_state` | `Dictionary<Int32, Utf8>`       | JSON state of the block's chunk (see [`crate::cursor`]) |
//! | `resume_skip`  | `UInt32`                        | blocks of that chunk sent up to and including this one |
//! | `source`    | `Dictionary<Int32, Utf8>`, nullable | the source the block was cut from (null where unknown) |
//! | `document_starts` | `List<Int32>` (on request)   | offsets in the block where a document begins |
//!
//! The cursor after a row is `{"state": <resume_state>, "skip": <resume_skip>}`.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, DictionaryArray, FixedSizeListArray, Int32Array, ListArray, StringArray,
    UInt32Array, UInt64Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use thiserror::Error;

use crate::cursor::Cursor;
use crate::request::StreamRequest;
pub use crate::tokenizer_info::TokenizerInfo;
use crate::CONTRACT_VERSION;

pub const INPUT_IDS: &str = "input_ids";
pub const BLOCK_SEQ: &str = "block_seq";
pub const EPOCH: &str = "epoch";
pub const RESUME_STATE: &str = "resume_state";
pub const RESUME_SKIP: &str = "resume_skip";
pub const DOCUMENT_STARTS: &str = "document_starts";
pub const SOURCE: &str = "source";

/// Schema metadata keys.
pub const META_CONTRACT_VERSION: &str = "flightlm.contract_version";
pub const META_TOKENIZER: &str = "flightlm.tokenizer";

#[derive(Debug, Error)]
pub enum SchemaError {
    #[error("batch schema is missing `{0}` metadata: is this a flightlm pipeline?")]
    MissingMetadata(&'static str),
    #[error("pipeline speaks contract version {0}, this client speaks {CONTRACT_VERSION}")]
    VersionMismatch(String),
    #[error("bad tokenizer metadata: {0}")]
    BadTokenizer(#[from] serde_json::Error),
    #[error("batch column `{0}` is missing or has the wrong type")]
    BadColumn(&'static str),
    #[error("a row's resume state is not a valid cursor: {0}")]
    BadResumeState(serde_json::Error),
    #[error("these blocks carry no resume state")]
    NoResumeState,
    #[error("arrow error: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

/// The schema of the stream `request` asks for: [`block_schema`], plus the columns it asks for.
pub fn stream_schema(request: &StreamRequest, tokenizer: &TokenizerInfo) -> SchemaRef {
    let schema = block_schema(request.seq_len, tokenizer);
    if !request.document_starts {
        return schema;
    }
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(document_starts_field());
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

fn document_starts_field() -> Field {
    let item = Arc::new(Field::new("item", DataType::Int32, false));
    Field::new(DOCUMENT_STARTS, DataType::List(item), false)
}

/// The schema of a stream of `seq_len`-token blocks (the columns every stream has).
pub fn block_schema(seq_len: usize, tokenizer: &TokenizerInfo) -> SchemaRef {
    let item = Arc::new(Field::new("item", DataType::Int32, false));
    let fields = vec![
        Field::new(
            INPUT_IDS,
            DataType::FixedSizeList(item, seq_len as i32),
            false,
        ),
        Field::new(BLOCK_SEQ, DataType::UInt64, false),
        Field::new(EPOCH, DataType::UInt32, false),
        Field::new(
            RESUME_STATE,
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            false,
        ),
        Field::new(RESUME_SKIP, DataType::UInt32, false),
        // Last and optional: readers that predate it, and batches without it, still work.
        Field::new(
            SOURCE,
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            true,
        ),
    ];
    let metadata = HashMap::from([
        (
            META_CONTRACT_VERSION.to_string(),
            CONTRACT_VERSION.to_string(),
        ),
        (
            META_TOKENIZER.to_string(),
            serde_json::to_string(tokenizer).expect("TokenizerInfo always serializes"),
        ),
    ]);
    Arc::new(Schema::new_with_metadata(fields, metadata))
}

/// Reads the tokenizer description from a stream's schema, checking the contract version.
pub fn tokenizer_from_schema(schema: &Schema) -> Result<TokenizerInfo, SchemaError> {
    let metadata = schema.metadata();
    let version = metadata
        .get(META_CONTRACT_VERSION)
        .ok_or(SchemaError::MissingMetadata(META_CONTRACT_VERSION))?;
    if version != &CONTRACT_VERSION.to_string() {
        return Err(SchemaError::VersionMismatch(version.clone()));
    }
    let tokenizer = metadata
        .get(META_TOKENIZER)
        .ok_or(SchemaError::MissingMetadata(META_TOKENIZER))?;
    Ok(serde_json::from_str(tokenizer)?)
}

/// A batch of blocks decoded into plain vectors.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenBlocks {
    pub seq_len: usize,
    /// Row-major `[rows, seq_len]`.
    pub ids: Vec<u32>,
    pub block_seq: Vec<u64>,
    pub epoch: Vec<u32>,
    /// Per row: the JSON state of its chunk and the chunk blocks sent up to it. Empty for blocks
    /// that do not come from a pipeline (generated corpora).
    pub resume: Vec<(Arc<str>, u32)>,
    /// Per row, ascending: the offsets where a document's first token lies. `None` when the
    /// stream was not asked for them; a block inside one long document has an empty list.
    pub document_starts: Option<Vec<Vec<u32>>>,
    /// Per row: the source the block was cut from. Empty where unknown (generated corpora, a
    /// pipeline that does not send the column).
    pub sources: Vec<Arc<str>>,
}

impl TokenBlocks {
    pub fn new(seq_len: usize) -> Self {
        TokenBlocks {
            seq_len,
            ..Default::default()
        }
    }

    pub fn rows(&self) -> usize {
        self.block_seq.len()
    }

    pub fn row(&self, index: usize) -> &[u32] {
        &self.ids[index * self.seq_len..(index + 1) * self.seq_len]
    }

    pub fn push(&mut self, block: &[u32], block_seq: u64, epoch: u32) {
        debug_assert_eq!(block.len(), self.seq_len);
        self.ids.extend_from_slice(block);
        self.block_seq.push(block_seq);
        self.epoch.push(epoch);
    }

    /// Adds a row together with what a consumer needs to resume right after it.
    pub fn push_resumable(
        &mut self,
        block: &[u32],
        block_seq: u64,
        epoch: u32,
        state: &Arc<str>,
        skip: u32,
    ) {
        self.push(block, block_seq, epoch);
        self.resume.push((state.clone(), skip));
    }

    /// The cursor that resumes right after `row`.
    pub fn cursor_after(&self, row: usize) -> Result<Cursor, SchemaError> {
        let (state, skip) = self.resume.get(row).ok_or(SchemaError::NoResumeState)?;
        Cursor::from_row(state, u64::from(*skip)).map_err(SchemaError::BadResumeState)
    }

    /// A value whose rows carry document starts ([`TokenBlocks::push_starts`] adds them).
    pub fn with_document_starts(mut self) -> Self {
        self.document_starts = Some(Vec::new());
        self
    }

    /// Records where documents begin in the row added last (a no-op unless the value carries
    /// document starts).
    pub fn push_starts(&mut self, starts: &[u32]) {
        if let Some(rows) = &mut self.document_starts {
            rows.push(starts.to_vec());
        }
    }

    /// Moves the first `count` rows out into a new value.
    pub fn take_front(&mut self, count: usize) -> TokenBlocks {
        let count = count.min(self.rows());
        let rest_ids = self.ids.split_off(count * self.seq_len);
        let rest_seq = self.block_seq.split_off(count);
        let rest_epoch = self.epoch.split_off(count);
        let rest_resume = self.resume.split_off(count.min(self.resume.len()));
        let front_starts = self.document_starts.as_mut().map(|starts| {
            let rest = starts.split_off(count.min(starts.len()));
            std::mem::replace(starts, rest)
        });
        let rest_sources = self.sources.split_off(count.min(self.sources.len()));
        TokenBlocks {
            seq_len: self.seq_len,
            ids: std::mem::replace(&mut self.ids, rest_ids),
            block_seq: std::mem::replace(&mut self.block_seq, rest_seq),
            epoch: std::mem::replace(&mut self.epoch, rest_epoch),
            resume: std::mem::replace(&mut self.resume, rest_resume),
            document_starts: front_starts,
            sources: std::mem::replace(&mut self.sources, rest_sources),
        }
    }

    pub fn append(&mut self, other: &TokenBlocks) {
        debug_assert_eq!(other.seq_len, self.seq_len);
        self.ids.extend_from_slice(&other.ids);
        self.block_seq.extend_from_slice(&other.block_seq);
        self.epoch.extend_from_slice(&other.epoch);
        self.resume.extend_from_slice(&other.resume);
        match (&mut self.document_starts, &other.document_starts) {
            (Some(starts), Some(more)) => starts.extend_from_slice(more),
            (None, Some(more)) if self.block_seq.len() == more.len() => {
                self.document_starts = Some(more.clone())
            }
            _ => {}
        }
        self.sources.extend_from_slice(&other.sources);
    }

    pub fn to_record_batch(&self, schema: SchemaRef) -> Result<RecordBatch, SchemaError> {
        let values: Int32Array = self.ids.iter().map(|id| *id as i32).collect();
        let item = Arc::new(Field::new("item", DataType::Int32, false));
        let input_ids =
            FixedSizeListArray::try_new(item, self.seq_len as i32, Arc::new(values), None)?;
        if self.resume.len() != self.rows() {
            return Err(SchemaError::NoResumeState);
        }
        // Rows of one chunk share their state: one dictionary entry per run of equal states.
        let mut states: Vec<&str> = Vec::new();
        let mut keys = Vec::with_capacity(self.rows());
        for (state, _) in &self.resume {
            if states.last() != Some(&state.as_ref()) {
                states.push(state);
            }
            keys.push(states.len() as i32 - 1);
        }
        let resume_state = DictionaryArray::<Int32Type>::try_new(
            Int32Array::from(keys),
            Arc::new(StringArray::from(states)),
        )?;
        let resume_skip: UInt32Array = self.resume.iter().map(|(_, skip)| *skip).collect();
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(input_ids),
            Arc::new(UInt64Array::from(self.block_seq.clone())),
            Arc::new(UInt32Array::from(self.epoch.clone())),
            Arc::new(resume_state),
            Arc::new(resume_skip),
            Arc::new(self.source_column()?),
        ];
        if schema.column_with_name(DOCUMENT_STARTS).is_some() {
            columns.push(Arc::new(self.document_starts_array()?));
        }
        Ok(RecordBatch::try_new(schema, columns)?)
    }

    fn document_starts_array(&self) -> Result<ListArray, SchemaError> {
        let rows = self
            .document_starts
            .as_ref()
            .filter(|rows| rows.len() == self.rows())
            .ok_or(SchemaError::BadColumn(DOCUMENT_STARTS))?;
        let values: Int32Array = rows.iter().flatten().map(|start| *start as i32).collect();
        let offsets = OffsetBuffer::from_lengths(rows.iter().map(Vec::len));
        let item = Arc::new(Field::new("item", DataType::Int32, false));
        Ok(ListArray::try_new(item, offsets, Arc::new(values), None)?)
    }

    /// The `source` column: one dictionary entry per source, null rows where it is unknown.
    fn source_column(&self) -> Result<DictionaryArray<Int32Type>, SchemaError> {
        let mut names: Vec<&str> = Vec::new();
        let keys: Int32Array = if self.sources.len() == self.rows() {
            self.sources
                .iter()
                .map(|source| {
                    let key = match names.iter().position(|name| *name == source.as_ref()) {
                        Some(key) => key,
                        None => {
                            names.push(source);
                            names.len() - 1
                        }
                    };
                    Some(key as i32)
                })
                .collect()
        } else {
            (0..self.rows()).map(|_| None).collect()
        };
        Ok(DictionaryArray::try_new(
            keys,
            Arc::new(StringArray::from(names)),
        )?)
    }

    /// Per row, the source of a batch's `source` column; empty when the batch has none.
    fn sources_of(batch: &RecordBatch) -> Result<Vec<Arc<str>>, SchemaError> {
        let Some(column) = batch.column_by_name(SOURCE) else {
            return Ok(Vec::new());
        };
        let sources = column
            .as_any()
            .downcast_ref::<DictionaryArray<Int32Type>>()
            .ok_or(SchemaError::BadColumn(SOURCE))?;
        if sources.null_count() > 0 {
            return Ok(Vec::new());
        }
        let names = sources
            .values()
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or(SchemaError::BadColumn(SOURCE))?;
        let names: Vec<Arc<str>> = names.iter().map(|v| v.unwrap_or("").into()).collect();
        sources
            .keys()
            .values()
            .iter()
            .map(|key| {
                names
                    .get(*key as usize)
                    .cloned()
                    .ok_or(SchemaError::BadColumn(SOURCE))
            })
            .collect()
    }

    pub fn from_record_batch(batch: &RecordBatch) -> Result<Self, SchemaError> {
        let input_ids = batch
            .column_by_name(INPUT_IDS)
            .and_then(|column| column.as_any().downcast_ref::<FixedSizeListArray>())
            .ok_or(SchemaError::BadColumn(INPUT_IDS))?;
        let seq_len = input_ids.value_length() as usize;
        // `values()` ignores the slice offset of a sliced list, so slice explicitly.
        let values = input_ids
            .values()
            .slice(input_ids.offset() * seq_len, input_ids.len() * seq_len);
        let values = values
            .as_any()
            .downcast_ref::<Int32Array>()
            .ok_or(SchemaError::BadColumn(INPUT_IDS))?;
        let block_seq = batch
            .column_by_name(BLOCK_SEQ)
            .and_then(|column| column.as_any().downcast_ref::<UInt64Array>())
            .ok_or(SchemaError::BadColumn(BLOCK_SEQ))?;
        let epoch = batch
            .column_by_name(EPOCH)
            .and_then(|column| column.as_any().downcast_ref::<UInt32Array>())
            .ok_or(SchemaError::BadColumn(EPOCH))?;
        let resume_state = batch
            .column_by_name(RESUME_STATE)
            .and_then(|column| column.as_any().downcast_ref::<DictionaryArray<Int32Type>>())
            .ok_or(SchemaError::BadColumn(RESUME_STATE))?;
        let state_values = resume_state
            .values()
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or(SchemaError::BadColumn(RESUME_STATE))?;
        let shared_states: Vec<Arc<str>> = state_values
            .iter()
            .map(|v| v.unwrap_or("").into())
            .collect();
        let resume_skip = batch
            .column_by_name(RESUME_SKIP)
            .and_then(|column| column.as_any().downcast_ref::<UInt32Array>())
            .ok_or(SchemaError::BadColumn(RESUME_SKIP))?;
        let resume = resume_state
            .keys()
            .values()
            .iter()
            .zip(resume_skip.values())
            .map(|(key, skip)| {
                let state = shared_states
                    .get(*key as usize)
                    .ok_or(SchemaError::BadColumn(RESUME_STATE))?;
                Ok((state.clone(), *skip))
            })
            .collect::<Result<Vec<_>, SchemaError>>()?;
        let document_starts = match batch.column_by_name(DOCUMENT_STARTS) {
            None => None,
            Some(column) => Some(document_starts_rows(column)?),
        };
        Ok(TokenBlocks {
            seq_len,
            ids: values.values().iter().map(|id| *id as u32).collect(),
            block_seq: block_seq.values().to_vec(),
            epoch: epoch.values().to_vec(),
            resume,
            document_starts,
            sources: Self::sources_of(batch)?,
        })
    }
}

/// The rows of a `document_starts` column.
fn document_starts_rows(column: &ArrayRef) -> Result<Vec<Vec<u32>>, SchemaError> {
    let list = column
        .as_any()
        .downcast_ref::<ListArray>()
        .ok_or(SchemaError::BadColumn(DOCUMENT_STARTS))?;
    (0..list.len())
        .map(|row| {
            let starts = list.value(row);
            let starts = starts
                .as_any()
                .downcast_ref::<Int32Array>()
                .ok_or(SchemaError::BadColumn(DOCUMENT_STARTS))?;
            Ok(starts.values().iter().map(|start| *start as u32).collect())
        })
        .collect()
}

#[cfg(test)]
#[path = "schema_tests.rs"]
mod tests;
