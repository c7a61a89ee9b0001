//! One stream of token blocks as a consumer reads it: the shared chunk sequence (`chunk_hub`,
//! `chunk_producer`) → skip what the cursor says was consumed, keep the request's shard → record
//! batches.
//!
//! Each stream owns its sending thread and bounded channel, so concurrent consumers each get their
//! own backpressure; the shards of one job share the production of the chunks and advance
//! together. When the consumer goes away the output channel closes, the stream leaves its hub, and
//! a hub with no reader left winds its sources down.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use flightlm_shared::schema::stream_schema;
use flightlm_shared::{StreamRequest, StreamState, TokenBlocks};

use crate::corpus::versions::check_versions;
use crate::corpus::Corpus;
use crate::error::PipelineError;
use crate::production::chunk_hub::{ChunkSource, HubKey, HubRegistry, MakeChunks, Reader};
use crate::production::chunk_producer::{ChunkProducer, ChunkRequest};
use crate::production::stats::{ReadCounters, StreamStats};
use crate::production::tokenize::{EncodeRules, SplitFilter};
use crate::production::weight_schedule::WeightSchedules;

/// Record batches waiting for the network: a little slack so encoding overlaps sending.
const BATCHES_IN_FLIGHT: usize = 4;

pub type BatchReceiver = tokio::sync::mpsc::Receiver<Result<RecordBatch, PipelineError>>;

/// A stream whose cursor was checked and whose place in a hub is taken, not yet sending.
pub struct OpenStream {
    reader: Reader,
    request: StreamRequest,
    schema: SchemaRef,
    /// Blocks of the first chunk the consumer already has.
    skip: u64,
}

/// Checks the request's cursor and finds (or starts) the production of its chunks.
pub fn open_stream(
    corpus: &Arc<Corpus>,
    hubs: &HubRegistry,
    schedules: &WeightSchedules,
    request: &StreamRequest,
) -> Result<OpenStream, PipelineError> {
    let fingerprint = corpus.fingerprint(request.split, request.seq_len);
    check_weight_names(corpus, request)?;
    let (state, skip) = match &request.cursor {
        Some(cursor) => {
            check_cursor(corpus, &fingerprint, &cursor.state)?;
            let mut state = cursor.state.clone();
            check_versions(corpus, request.split, &mut state)?;
            if cursor.skip > corpus.chunk_blocks() as u64 {
                return Err(PipelineError::Cursor(format!(
                    "skip {} is beyond a chunk of {} blocks",
                    cursor.skip,
                    corpus.chunk_blocks()
                )));
            }
            (state, cursor.skip)
        }
        None => (
            StreamState {
                fingerprint: fingerprint.clone(),
                block_seq: 0,
                draws: 0,
                sources: Vec::new(),
                weights: None,
            },
            0,
        ),
    };
    let key = request
        .shard
        .filter(|shard| shard.count > 1)
        .map(|shard| HubKey {
            fingerprint,
            passes: request.epoch_limit(),
            shard_count: shard.count,
            // A run's shards share its production, whose weights its updates change.
            weights: request.weights.as_ref().map(|weights| match &request.run {
                Some(run) => format!("run {run}"),
                None => format!("{weights:?} from {:?}", request.weights_from),
            }),
        });
    let schedule = (request.run.as_deref()).map(|run| schedules.open(run, request.weights_until));
    let entry: Arc<str> = serde_json::to_string(&state)
        .expect("a StreamState always serializes")
        .into();
    let make: MakeChunks = {
        let corpus = corpus.clone();
        let (split, seq_len, passes) = (request.split, request.seq_len, request.epoch_limit());
        let (weights, weights_from) = (request.weights.clone(), request.weights_from);
        Arc::new(move |entry: &str, counters: Arc<ReadCounters>| {
            let state: StreamState = serde_json::from_str(entry).map_err(|error| {
                PipelineError::Control(format!("a chunk state does not parse: {error}"))
            })?;
            let rules = EncodeRules {
                filter: SplitFilter {
                    split,
                    valid_fraction: corpus.valid_fraction,
                    seed: corpus.seed,
                    held_out: corpus.has_held_out(),
                },
                max_document_bytes: corpus.max_document_bytes,
                bad_records: counters.bad_records.clone(),
            };
            let chunks = ChunkRequest {
                rules,
                seq_len,
                passes,
                weights: weights.clone(),
                weights_from,
                schedule: schedule.clone(),
            };
            let producer = ChunkProducer::new(corpus.clone(), chunks, state, counters);
            Ok(Box::new(producer) as Box<dyn ChunkSource>)
        })
    };
    let reader = hubs.open(key, entry, make, || ReadCounters::new(corpus.bad_records))?;
    Ok(OpenStream {
        reader,
        request: request.clone(),
        schema: stream_schema(request, &corpus.tokenizer_info),
        skip,
    })
}

impl OpenStream {
    /// The reading counters of the production this stream reads (shared with its job's shards).
    pub fn reading(&self) -> Arc<ReadCounters> {
        self.reader.counters()
    }

    /// Starts sending; returns the receiving end of the stream's batches.
    pub fn start(self, stats: Arc<StreamStats>) -> BatchReceiver {
        let (batches, receiver) = tokio::sync::mpsc::channel(BATCHES_IN_FLIGHT);
        std::thread::Builder::new()
            .name("stream".into())
            .spawn(move || {
                let mut sender = Sender {
                    stats: stats.clone(),
                    batches,
                    schema: self.schema.clone(),
                };
                let mut stream = self;
                if let Err(error) = sender.run(&mut stream.reader, &stream.request, stream.skip) {
                    let _ = sender.batches.blocking_send(Err(error));
                }
                stats.finish();
            })
            .expect("spawning the stream thread");
        receiver
    }
}

fn check_cursor(
    corpus: &Corpus,
    fingerprint: &str,
    state: &StreamState,
) -> Result<(), PipelineError> {
    if state.fingerprint != fingerprint {
        return Err(PipelineError::Cursor(format!(
            "it belongs to corpus fingerprint {}, this pipeline serves {fingerprint} for this split \
             and seq_len (sources, SQL, tokenizer, seed, shuffle window and seq_len must all match)",
            state.fingerprint
        )));
    }
    if !state.draws.is_multiple_of(corpus.chunk_blocks() as u64) {
        return Err(PipelineError::Cursor(format!(
            "draw count {} does not start a chunk of {} blocks",
            state.draws,
            corpus.chunk_blocks()
        )));
    }
    for position in &state.sources {
        if corpus.source(&position.source).is_none() {
            return Err(PipelineError::Cursor(format!(
                "source `{}` is not served here",
                position.source
            )));
        }
    }
    Ok(())
}

/// Refuses weights (the request's or its cursor's) that name a source the split does not read.
fn check_weight_names(corpus: &Corpus, request: &StreamRequest) -> Result<(), PipelineError> {
    let served: Vec<String> = corpus
        .sources_for(request.split)
        .iter()
        .map(|source| source.name.clone())
        .collect();
    let cursor_weights = request
        .cursor
        .as_ref()
        .and_then(|c| c.state.weights.as_ref());
    for weights in request.weights.iter().chain(cursor_weights) {
        if let Some(unknown) = weights.keys().find(|name| !served.contains(name)) {
            return Err(PipelineError::Request(format!(
                "the stream's weights name source `{unknown}`, which the {} split does not \
                 read (sources: {})",
                request.split,
                served.join(", ")
            )));
        }
    }
    Ok(())
}

/// The sending side of one stream.
struct Sender {
    stats: Arc<StreamStats>,
    batches: tokio::sync::mpsc::Sender<Result<RecordBatch, PipelineError>>,
    schema: SchemaRef,
}

/// Rows waiting to fill a batch, with the source each came from.
struct Pending {
    blocks: TokenBlocks,
    sources: Vec<Arc<str>>,
}

impl Sender {
    fn run(
        &mut self,
        reader: &mut Reader,
        request: &StreamRequest,
        mut skip: u64,
    ) -> Result<(), PipelineError> {
        let blocks = TokenBlocks::new(request.seq_len);
        let mut pending = Pending {
            blocks: if request.document_starts {
                blocks.with_document_starts()
            } else {
                blocks
            },
            sources: Vec::new(),
        };
        while let Some(chunk) = reader.next_chunk()? {
            if let Some(weights) = &chunk.weights {
                self.stats.set_weights(weights.clone());
            }
            for (sent, block) in chunk.blocks.iter().enumerate() {
                let seq = chunk.block_seq + sent as u64;
                let consumed_before = (sent as u64) < skip;
                let other_shard = request.shard.is_some_and(|shard| !shard.keeps(seq));
                if consumed_before || other_shard {
                    continue;
                }
                pending.blocks.push_resumable(
                    &block.tokens,
                    seq,
                    block.pass,
                    &chunk.state,
                    sent as u32 + 1,
                );
                pending.blocks.push_starts(&block.document_starts);
                pending
                    .sources
                    .push(chunk.source_names[block.source].clone());
                while pending.blocks.rows() >= request.batch_size {
                    if !self.send(&mut pending, request.batch_size)? {
                        return Ok(());
                    }
                }
            }
            skip = 0;
            if chunk.last {
                break;
            }
        }
        let rows = pending.blocks.rows();
        if rows > 0 {
            self.send(&mut pending, rows)?;
        }
        Ok(())
    }

    /// Sends the first `rows` pending rows; false when the consumer has gone.
    fn send(&self, pending: &mut Pending, rows: usize) -> Result<bool, PipelineError> {
        let mut blocks = pending.blocks.take_front(rows);
        blocks.sources = pending.sources.drain(..rows).collect();
        let batch = blocks.to_record_batch(self.schema.clone())?;
        if self.batches.blocking_send(Ok(batch)).is_err() {
            return Ok(false);
        }
        // Counted once handed to the network stage, so totals match what consumers get.
        self.stats.blocks.fetch_add(rows as u64, Ordering::Relaxed);
        self.stats.count_sent(&blocks.sources);
        if let Some(last) = blocks.epoch.last() {
            self.stats.epoch.store(u64::from(*last), Ordering::Relaxed);
        }
        let queued = self.batches.max_capacity() - self.batches.capacity();
        self.stats
            .queued_batches
            .store(queued as u64, Ordering::Relaxed);
        Ok(true)
    }
}
