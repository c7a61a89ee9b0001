//! One stream of token blocks: reader → tokenizer pool → packer → record batches.
//!
//! Each stream owns its threads and bounded channels, so concurrent consumers each get their own
//! backpressure. When the consumer goes away the output channel closes and every stage winds down
//! in turn: the packer's send fails, it drops the results channel, the workers' sends fail, the
//! reader's job channel closes.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use crossbeam_channel::{bounded, Receiver, Sender};
use flightlm_shared::schema::block_schema;
use flightlm_shared::{Split, StreamRequest, TokenBlocks, TokenizerInfo};
use tokenizers::Tokenizer;

use crate::error::PipelineError;
use crate::packing::Packer;
use crate::reader::CorpusReader;
use crate::sources::CorpusFile;
use crate::stats::StreamStats;
use crate::tokenize::{spawn_workers, Encoded, Job, Reorder, SplitFilter};

/// Record batches waiting for the network: a little slack so encoding overlaps sending.
const BATCHES_IN_FLIGHT: usize = 4;

/// Everything a stream needs to know about the corpus being served.
pub struct Corpus {
    pub manifest: Vec<CorpusFile>,
    pub tokenizer: Arc<Tokenizer>,
    pub tokenizer_path: PathBuf,
    pub tokenizer_info: TokenizerInfo,
    pub valid_fraction: f64,
    pub seed: u64,
    /// Tokenizer threads per stream.
    pub workers: usize,
}

pub type BatchReceiver = tokio::sync::mpsc::Receiver<Result<RecordBatch, PipelineError>>;

/// Starts the stages of one stream and returns the receiving end of its record batches.
pub fn start_stream(
    corpus: Arc<Corpus>,
    request: &StreamRequest,
    stats: Arc<StreamStats>,
) -> BatchReceiver {
    let (batches, receiver) = tokio::sync::mpsc::channel(BATCHES_IN_FLIGHT);
    let in_flight = corpus.workers.max(1) * 2;
    let (jobs, job_receiver) = bounded::<Job>(in_flight);
    let (results, result_receiver) = bounded::<(u64, Encoded)>(in_flight);
    let filter = SplitFilter {
        split: request.split,
        valid_fraction: corpus.valid_fraction,
        seed: corpus.seed,
    };
    spawn_workers(
        corpus.workers,
        corpus.tokenizer.clone(),
        filter,
        job_receiver,
        results,
    );
    let passes = request.epoch_limit();
    let reader_corpus = corpus.clone();
    std::thread::Builder::new()
        .name("corpus-reader".into())
        .spawn(move || read_passes(&reader_corpus, passes, jobs))
        .expect("spawning the reader thread");
    let request = request.clone();
    std::thread::Builder::new()
        .name("packer".into())
        .spawn(move || {
            pack(&corpus, &request, &stats, result_receiver, batches);
            stats.active.store(false, Ordering::Relaxed);
        })
        .expect("spawning the packer thread");
    receiver
}

/// Reads the manifest `passes` times (forever when `None`), handing text batches to the pool.
fn read_passes(corpus: &Corpus, passes: Option<u64>, jobs: Sender<Job>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(source) => {
            let error = PipelineError::Io {
                path: PathBuf::from("<runtime>"),
                source,
            };
            let _ = jobs.send(Job::Failed { sequence: 0, error });
            return;
        }
    };
    runtime.block_on(async {
        let reader = CorpusReader::new();
        let mut sequence = 0u64;
        let mut pass = 0u64;
        while passes.is_none_or(|limit| pass < limit) {
            for file in &corpus.manifest {
                let mut texts = match reader.open(file).await {
                    Ok(texts) => texts,
                    Err(error) => {
                        let _ = jobs.send(Job::Failed { sequence, error });
                        return;
                    }
                };
                while let Some(result) = texts.next().await {
                    let job = match result {
                        Ok(texts) => Job::Texts { sequence, texts },
                        Err(error) => Job::Failed { sequence, error },
                    };
                    let failed = matches!(job, Job::Failed { .. });
                    if jobs.send(job).is_err() || failed {
                        return;
                    }
                    sequence += 1;
                }
            }
            if jobs.send(Job::EndOfPass { sequence }).is_err() {
                return;
            }
            sequence += 1;
            pass += 1;
        }
    });
}

/// Restores order, packs documents into blocks and cuts blocks into record batches.
fn pack(
    corpus: &Corpus,
    request: &StreamRequest,
    stats: &StreamStats,
    results: Receiver<(u64, Encoded)>,
    batches: tokio::sync::mpsc::Sender<Result<RecordBatch, PipelineError>>,
) {
    let seq_len = request.seq_len;
    let schema = block_schema(seq_len, &corpus.tokenizer_info);
    let send = |blocks: TokenBlocks| match blocks.to_record_batch(schema.clone()) {
        Ok(batch) => {
            let rows = batch.num_rows() as u64;
            let sent = batches.blocking_send(Ok(batch)).is_ok();
            if sent {
                // Counted once handed to the network stage, so totals match what consumers get.
                stats.blocks.fetch_add(rows, Ordering::Relaxed);
            }
            let queued = batches.max_capacity() - batches.capacity();
            stats.queued_batches.store(queued as u64, Ordering::Relaxed);
            sent
        }
        Err(error) => {
            let _ = batches.blocking_send(Err(error.into()));
            false
        }
    };
    let fail = |error: PipelineError| {
        let _ = batches.blocking_send(Err(error));
    };
    let info = &corpus.tokenizer_info;
    let mut packer = Packer::new(seq_len, info.bos_id, info.eos_id);
    let mut reorder = Reorder::default();
    let mut pending = TokenBlocks::new(seq_len);
    let mut packed = Vec::new();
    let mut block_seq = 0u64;
    let mut epoch = 0u32;
    let mut pass = PassCounts::default();
    for (sequence, encoded) in results {
        for item in reorder.accept(sequence, encoded) {
            match item {
                Encoded::Documents { documents, skipped } => {
                    pass.skipped += skipped;
                    pass.documents += documents.len() as u64;
                    stats.skipped_rows.fetch_add(skipped, Ordering::Relaxed);
                    stats
                        .documents
                        .fetch_add(documents.len() as u64, Ordering::Relaxed);
                    for document in &documents {
                        pass.tokens += document.len() as u64 + 2;
                        packer.push_document(document, &mut packed);
                    }
                    for block in packed.chunks(seq_len) {
                        pending.push(block, block_seq, epoch);
                        block_seq += 1;
                        pass.blocks += 1;
                    }
                    packed.clear();
                    while pending.rows() >= request.batch_size {
                        if !send(pending.take_front(request.batch_size)) {
                            return;
                        }
                    }
                }
                Encoded::EndOfPass => {
                    let dropped = packer.finish_pass();
                    stats
                        .dropped_tokens
                        .fetch_add(dropped as u64, Ordering::Relaxed);
                    tracing::info!(
                        split = %request.split, seq_len, epoch, documents = pass.documents,
                        tokens = pass.tokens, blocks = pass.blocks, dropped_tokens = dropped,
                        skipped_rows = pass.skipped, "pass finished"
                    );
                    if pass.blocks == 0 {
                        fail(empty_split_error(request, corpus));
                        return;
                    }
                    pass = PassCounts::default();
                    epoch += 1;
                    stats.epoch.store(u64::from(epoch), Ordering::Relaxed);
                    if request.epoch_limit() == Some(u64::from(epoch)) {
                        if pending.rows() > 0 {
                            send(pending.take_front(pending.rows()));
                        }
                        return;
                    }
                }
                Encoded::Failed(error) => {
                    fail(error);
                    return;
                }
            }
        }
    }
}

#[derive(Default)]
struct PassCounts {
    documents: u64,
    tokens: u64,
    blocks: u64,
    skipped: u64,
}

fn empty_split_error(request: &StreamRequest, corpus: &Corpus) -> PipelineError {
    let hint = match request.split {
        Split::Valid if corpus.valid_fraction <= 0.0 => {
            " (the pipeline was started with --valid-fraction 0)".to_string()
        }
        _ => format!(" (valid fraction {})", corpus.valid_fraction),
    };
    PipelineError::EmptySplit(format!(
        "the {} split holds fewer tokens than one block of {}{hint}",
        request.split, request.seq_len
    ))
}
