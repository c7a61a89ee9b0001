//! One source's blocks, each labelled with the position where it starts.
//!
//! A reader thread walks the source's files in name order from a position (pass, file, row), the
//! tokenizer pool encodes, and a packing thread cuts `group_texts` blocks. Every block carries the
//! document row and token offset it begins at, which is what a cursor stores: resuming re-reads
//! one file prefix and re-encodes one document, never the blocks before it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow::array::Array;
use crossbeam_channel::{bounded, Receiver, Sender};
use flightlm_shared::SourcePosition;

use crate::corpus::versions::ReadVersions;
use crate::corpus::{Corpus, Source};
use crate::error::PipelineError;
use crate::production::packing::{PackedBlocks, Packer};
use crate::production::tokenize::{spawn_workers, EncodeRules, Encoded, Job, Reorder};
use crate::read::bad_records::{BadRecordKind, BadRecords};
use crate::read::reader::{reader_runtime, CorpusReader};
use crate::read::remote;
use crate::read::sources::{CorpusFile, Format};

/// Blocks a source prepares ahead of the mixer.
const BLOCKS_AHEAD: usize = 64;
/// An encoding job holds texts of about this many blocks (at 4 bytes per token), at most a read
/// batch. The pool and the packer hold a few jobs ahead of the mixer, so a stream that is opened
/// and soon closed again (a trainer changing its weights) costs the pipeline a few blocks' worth
/// of encoding per source, not a read batch's, and its first block waits for one small job.
const JOB_BLOCKS: u64 = 16;
const BYTES_PER_TOKEN: u64 = 4;

pub struct SourceBlock {
    pub tokens: Vec<u32>,
    /// Offsets in `tokens` where a document begins.
    pub document_starts: Vec<u32>,
    pub start: SourcePosition,
}

pub enum SourceItem {
    Block(SourceBlock),
    /// The source finished the passes it was asked for.
    Exhausted,
    Failed(PipelineError),
}

/// Counters of one source within one stream.
#[derive(Default)]
pub struct SourceCounters {
    pub documents: AtomicU64,
    pub skipped_rows: AtomicU64,
    pub dropped_tokens: AtomicU64,
}

/// What one source stream reads and from where.
pub struct SourceRequest {
    pub rules: EncodeRules,
    pub seq_len: usize,
    /// Passes to read; `None` repeats forever.
    pub passes: Option<u64>,
    pub start: SourcePosition,
    pub counters: Arc<SourceCounters>,
    /// Where the reader records the version of each remote file it opens.
    pub versions: Arc<ReadVersions>,
}

/// Starts the threads of one source and returns its blocks in order.
pub fn start_source(
    corpus: &Arc<Corpus>,
    source: Arc<Source>,
    request: SourceRequest,
) -> Receiver<SourceItem> {
    let (blocks, receiver) = bounded(BLOCKS_AHEAD);
    let in_flight = corpus.workers * 2;
    let (jobs, job_receiver) = bounded::<Job>(in_flight);
    let (results, result_receiver) = bounded::<(u64, Encoded)>(in_flight);
    spawn_workers(
        corpus.workers,
        corpus.tokenizer.clone(),
        request.rules.clone(),
        job_receiver,
        results,
    );
    let reader_corpus = corpus.clone();
    let reader_source = source.clone();
    let start = request.start.clone();
    let passes = request.passes;
    let job_bytes = request.seq_len as u64 * JOB_BLOCKS * BYTES_PER_TOKEN;
    let bad_records = request.rules.bad_records.clone();
    let versions = request.versions.clone();
    std::thread::Builder::new()
        .name(format!("read-{}", source.name))
        .spawn(move || {
            read_source(
                &reader_corpus,
                &reader_source,
                (&start, passes, job_bytes),
                bad_records,
                &versions,
                jobs,
            )
        })
        .expect("spawning a reader thread");
    std::thread::Builder::new()
        .name(format!("pack-{}", source.name))
        .spawn(move || {
            let packer = Packer::new(request.seq_len);
            if let Err(error) =
                pack_source(packer, &source.name, &request, result_receiver, &blocks)
            {
                let _ = blocks.send(SourceItem::Failed(error));
            }
        })
        .expect("spawning a packing thread");
    receiver
}

/// Sends the texts of the source's files, pass after pass, from `start`.
fn read_source(
    corpus: &Corpus,
    source: &Source,
    (start, passes, job_bytes): (&SourcePosition, Option<u64>, u64),
    bad_records: BadRecords,
    versions: &ReadVersions,
    jobs: Sender<Job>,
) {
    let runtime = match reader_runtime() {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = jobs.send(Job::Failed { sequence: 0, error });
            return;
        }
    };
    let mut sequence = 0u64;
    let result = runtime.block_on(async {
        let reader = CorpusReader::with_sql(corpus.sql.clone())
            .with_bad_records(bad_records.clone(), corpus.max_document_bytes);
        let mut pass = start.pass;
        let mut first = match &start.file {
            Some(name) => Some(source.listed_file(name)?.ok_or_else(|| {
                PipelineError::Cursor(format!(
                    "source `{}` has no file `{name}` any more",
                    source.name
                ))
            })?),
            None => source.next_file(None)?,
        };
        let mut skip_rows = start.row;
        while passes.is_none_or(|limit| pass < limit) {
            let mut current = match first.take() {
                Some(file) => Some(file),
                None => source.next_file(None)?,
            };
            while let Some(file) = current {
                let name: Arc<str> = file.name().into();
                versions.record(pass, &file);
                prefetch_line_files(source, &name);
                let open = read_file(
                    &reader,
                    &file,
                    &name,
                    (skip_rows, job_bytes),
                    &mut sequence,
                    &jobs,
                );
                match open.await {
                    Ok(FileOutcome::Stopped) => return Ok(()),
                    Ok(FileOutcome::Read) => {}
                    // A store that failed is not a bad record: never skipped.
                    Err((_, error)) if error.is_storage_failure() => return Err(error),
                    Err((kind, error)) => bad_records.handle(kind, error)?,
                }
                skip_rows = 0;
                current = source.next_file(Some(&name))?;
            }
            if jobs.send(Job::EndOfPass { sequence }).is_err() {
                return Ok(());
            }
            sequence += 1;
            pass += 1;
        }
        Ok(())
    });
    if let Err(error) = result {
        let _ = jobs.send(Job::Failed { sequence, error });
    }
}

/// Objects fetched ahead of the reader: up to this many, and only while they are small.
const PREFETCH_OBJECTS: usize = 4;
const PREFETCH_BYTES: u64 = 1 << 20;

/// Starts fetching the next remote text or JSON-lines objects while this one is read: the next
/// one's first range, and the few after it when they are small, so that a corpus of many small
/// objects does not wait for one request at a time (Parquet and CSV are read by DataFusion, by
/// ranges, when reached).
fn prefetch_line_files(source: &Source, current: &str) {
    let mut previous = current.to_string();
    let mut bytes = 0;
    for _ in 0..PREFETCH_OBJECTS {
        let Some(file) = source.file_after(Some(&previous)) else {
            return;
        };
        let (Some(object), Format::Text | Format::JsonLines) = (&file.remote, file.format) else {
            return;
        };
        remote::prefetch::prefetch(object);
        bytes += object.size();
        if bytes > PREFETCH_BYTES {
            return;
        }
        previous = file.name();
    }
}

enum FileOutcome {
    Read,
    /// The consumer went away.
    Stopped,
}

/// Sends the rows of one file from `skip_rows` on. Errors come with their bad-record kind.
async fn read_file(
    reader: &CorpusReader,
    file: &CorpusFile,
    name: &Arc<str>,
    (skip_rows, job_bytes): (u64, u64),
    sequence: &mut u64,
    jobs: &Sender<Job>,
) -> Result<FileOutcome, (BadRecordKind, PipelineError)> {
    let (mut texts, first_row) = reader.open_at(file, skip_rows).await.map_err(|error| {
        let kind = match error {
            PipelineError::MissingTextColumn { .. } | PipelineError::TextNotString { .. } => {
                BadRecordKind::MissingColumn
            }
            _ => BadRecordKind::TruncatedFile,
        };
        (kind, error)
    })?;
    let mut row = first_row;
    while let Some(batch) = texts.next().await {
        let batch = batch.map_err(|error| classify_read_error(file, row, error))?;
        let length = batch.len() as u64;
        if row + length <= skip_rows {
            row += length;
            continue;
        }
        let skip = skip_rows.saturating_sub(row);
        // Jobs of about `job_bytes` each (see `JOB_BLOCKS`).
        let offsets = batch.value_offsets();
        let bytes = (offsets[length as usize] - offsets[skip as usize]).max(1) as u64;
        let job_rows = (job_bytes * (length - skip) / bytes).max(1);
        let mut offset = skip;
        while offset < length {
            let rows = (length - offset).min(job_rows);
            let job = Job::Texts {
                sequence: *sequence,
                file: name.clone(),
                first_row: row + offset,
                texts: batch.slice(offset as usize, rows as usize),
            };
            if jobs.send(job).is_err() {
                return Ok(FileOutcome::Stopped);
            }
            *sequence += 1;
            offset += rows;
        }
        row += length;
    }
    if row == 0 {
        return Err((
            BadRecordKind::EmptyFile,
            PipelineError::EmptyFile(file.path.clone()),
        ));
    }
    Ok(FileOutcome::Read)
}

/// A failure after some rows were read: invalid UTF-8 and malformed JSON name their line; anything
/// else (a damaged or cut compressed stream) ends the file.
fn classify_read_error(
    file: &CorpusFile,
    rows: u64,
    error: PipelineError,
) -> (BadRecordKind, PipelineError) {
    match error {
        PipelineError::InvalidUtf8 { .. } => (BadRecordKind::InvalidUtf8, error),
        PipelineError::MalformedJson { .. } => (BadRecordKind::MalformedJson, error),
        PipelineError::Oversized { .. } => (BadRecordKind::Oversized, error),
        PipelineError::Truncated { .. } => (BadRecordKind::TruncatedFile, error),
        storage if storage.is_storage_failure() => (BadRecordKind::TruncatedFile, storage),
        other => (
            BadRecordKind::TruncatedFile,
            PipelineError::Truncated {
                path: file.path.clone(),
                rows,
                message: other.to_string(),
            },
        ),
    }
}

/// Restores order, packs, and labels each block with where it starts.
fn pack_source(
    mut packer: Packer,
    source_name: &str,
    request: &SourceRequest,
    results: Receiver<(u64, Encoded)>,
    blocks: &Sender<SourceItem>,
) -> Result<(), PipelineError> {
    let seq_len = request.seq_len;
    let counters = &request.counters;
    let mut reorder = Reorder::default();
    let mut packed = PackedBlocks::default();
    let mut starts = VecDeque::new();
    let mut pass = request.start.pass;
    let mut blocks_this_pass = 0u64;
    // A resumed source must begin exactly at the document the cursor names.
    let mut expected_start = request
        .start
        .file
        .clone()
        .map(|file| (file, request.start.row));
    for (sequence, encoded) in results {
        for item in reorder.accept(sequence, encoded) {
            match item {
                Encoded::Documents {
                    file,
                    documents,
                    skipped,
                } => {
                    counters.skipped_rows.fetch_add(skipped, Ordering::Relaxed);
                    counters
                        .documents
                        .fetch_add(documents.len() as u64, Ordering::Relaxed);
                    for (row, ids) in &documents {
                        let mut skip = 0;
                        if let Some((expected_file, expected_row)) = expected_start.take() {
                            if expected_file != *file || expected_row != *row {
                                return Err(PipelineError::Cursor(format!(
                                    "source `{source_name}`: the cursor's block starts at row \
                                     {expected_row} of {expected_file}, but the next document is \
                                     row {row} of {file} (did the file change?)"
                                )));
                            }
                            skip = request.start.token as usize;
                            if skip >= ids.len() {
                                return Err(PipelineError::Cursor(format!(
                                    "source `{source_name}`: token {skip} is past the end of row \
                                     {row} of {file}"
                                )));
                            }
                        }
                        packer.push_document_from(ids, skip, &mut packed, |offset| {
                            starts.push_back(SourcePosition {
                                source: source_name.to_string(),
                                pass,
                                file: Some(file.to_string()),
                                row: *row,
                                token: offset as u64,
                                file_version: None,
                            })
                        });
                        let document_starts = packed.document_starts.drain(..);
                        for (tokens, document_starts) in
                            packed.tokens.chunks(seq_len).zip(document_starts)
                        {
                            let start = starts.pop_front().expect("every block has a start");
                            let block = SourceBlock {
                                tokens: tokens.to_vec(),
                                document_starts,
                                start,
                            };
                            if blocks.send(SourceItem::Block(block)).is_err() {
                                return Ok(());
                            }
                            blocks_this_pass += 1;
                        }
                        packed.clear();
                    }
                }
                Encoded::EndOfPass => {
                    if let Some((file, row)) = expected_start.take() {
                        return Err(PipelineError::Cursor(format!(
                            "source `{source_name}`: the cursor's block starts at row {row} of \
                             {file}, but the pass ends before it (did the file change?)"
                        )));
                    }
                    let dropped = packer.finish_pass();
                    starts.clear();
                    counters
                        .dropped_tokens
                        .fetch_add(dropped as u64, Ordering::Relaxed);
                    if blocks_this_pass == 0 {
                        return Err(PipelineError::EmptySplit(format!(
                            "source `{source_name}` holds fewer tokens than one block of \
                             {seq_len} in this split"
                        )));
                    }
                    pass += 1;
                    blocks_this_pass = 0;
                }
                Encoded::Failed(error) => return Err(error),
            }
        }
    }
    let _ = blocks.send(SourceItem::Exhausted);
    Ok(())
}
