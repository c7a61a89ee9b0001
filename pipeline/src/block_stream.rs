//! One stream of token blocks: per-source block producers → seeded mixture → chunk shuffle →
//! skip/shard → record batches.
//!
//! The stream is cut into chunks of draws (one shuffle window each). At the start of a chunk the
//! state is small — where every source's next block begins, how many draws and blocks so far — and
//! every row sent from the chunk carries it, so a consumer can resume after any row: the pipeline
//! restarts each source at its position, redraws the chunk and skips what was consumed.
//!
//! Each stream owns its threads and bounded channels, so concurrent consumers each get their own
//! backpressure. When the consumer goes away the output channel closes and every stage winds down
//! in turn.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use crossbeam_channel::Receiver;
use flightlm_shared::schema::block_schema;
use flightlm_shared::{SourcePosition, StreamRequest, StreamState, TokenBlocks};

use crate::corpus::{Corpus, Source};
use crate::error::PipelineError;
use crate::mixture::{chunk_order, pick_source};
use crate::source_blocks::{start_source, SourceBlock, SourceCounters, SourceItem, SourceRequest};
use crate::stats::StreamStats;
use crate::tokenize::{EncodeRules, SplitFilter};

/// Record batches waiting for the network: a little slack so encoding overlaps sending.
const BATCHES_IN_FLIGHT: usize = 4;

pub type BatchReceiver = tokio::sync::mpsc::Receiver<Result<RecordBatch, PipelineError>>;

/// Checks the request's cursor and starts the stream; returns the receiving end of its batches.
pub fn start_stream(
    corpus: Arc<Corpus>,
    request: &StreamRequest,
    stats: Arc<StreamStats>,
) -> Result<BatchReceiver, PipelineError> {
    let fingerprint = corpus.fingerprint(request.split, request.seq_len);
    let (state, skip) = match &request.cursor {
        Some(cursor) => {
            check_cursor(&corpus, &fingerprint, &cursor.state)?;
            if cursor.skip > corpus.chunk_blocks() as u64 {
                return Err(PipelineError::Cursor(format!(
                    "skip {} is beyond a chunk of {} blocks",
                    cursor.skip,
                    corpus.chunk_blocks()
                )));
            }
            (cursor.state.clone(), cursor.skip)
        }
        None => (
            StreamState {
                fingerprint,
                block_seq: 0,
                draws: 0,
                sources: Vec::new(),
            },
            0,
        ),
    };
    let rules = EncodeRules {
        filter: SplitFilter {
            split: request.split,
            valid_fraction: corpus.valid_fraction,
            seed: corpus.seed,
        },
        max_document_bytes: corpus.max_document_bytes,
        bad_records: stats.bad_records.clone(),
    };
    let (batches, receiver) = tokio::sync::mpsc::channel(BATCHES_IN_FLIGHT);
    let request = request.clone();
    std::thread::Builder::new()
        .name("mixer".into())
        .spawn(move || {
            let mut mixer = Mixer {
                corpus,
                request,
                rules,
                stats: stats.clone(),
                producers: Vec::new(),
                batches,
            };
            if let Err(error) = mixer.run(state, skip) {
                let _ = mixer.batches.blocking_send(Err(error));
            }
            stats.active.store(false, Ordering::Relaxed);
        })
        .expect("spawning the mixer thread");
    Ok(receiver)
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

/// One source as the mixer sees it: the next block, looked at but not yet taken.
struct Producer {
    source: Arc<Source>,
    items: Receiver<SourceItem>,
    next: Option<SourceBlock>,
    exhausted: bool,
    counters: Arc<SourceCounters>,
}

impl Producer {
    /// Makes sure the next block is known; false once the source has no more blocks.
    fn peek(&mut self) -> Result<bool, PipelineError> {
        if self.next.is_none() && !self.exhausted {
            match self.items.recv() {
                Ok(SourceItem::Block(block)) => self.next = Some(block),
                Ok(SourceItem::Exhausted) => self.exhausted = true,
                Ok(SourceItem::Failed(error)) => return Err(error),
                Err(_) => {
                    return Err(PipelineError::Control(format!(
                        "source `{}` stopped unexpectedly",
                        self.source.name
                    )))
                }
            }
        }
        Ok(self.next.is_some())
    }

    /// Where the next block begins (after the last pass when exhausted).
    fn position(&mut self, passes: Option<u64>) -> Result<SourcePosition, PipelineError> {
        self.peek()?;
        Ok(match &self.next {
            Some(block) => block.start.clone(),
            None => SourcePosition {
                pass: passes.unwrap_or(0),
                ..SourcePosition::start(&self.source.name)
            },
        })
    }
}

struct Mixer {
    corpus: Arc<Corpus>,
    request: StreamRequest,
    rules: EncodeRules,
    stats: Arc<StreamStats>,
    producers: Vec<Producer>,
    batches: tokio::sync::mpsc::Sender<Result<RecordBatch, PipelineError>>,
}

/// Rows waiting to fill a batch, with the source each came from.
struct Pending {
    blocks: TokenBlocks,
    sources: Vec<usize>,
}

impl Mixer {
    fn run(&mut self, state: StreamState, mut skip: u64) -> Result<(), PipelineError> {
        let seq_len = self.request.seq_len;
        let schema = block_schema(seq_len, &self.corpus.tokenizer_info);
        let passes = self.request.epoch_limit();
        let chunk_blocks = self.corpus.chunk_blocks();
        let shuffle = self.corpus.shuffle_window > 1;
        let mut block_seq = state.block_seq;
        let mut draws = state.draws;
        let mut pending = Pending {
            blocks: TokenBlocks::new(seq_len),
            sources: Vec::new(),
        };
        loop {
            self.add_new_sources(&state.sources);
            let mut positions = Vec::with_capacity(self.producers.len());
            for producer in &mut self.producers {
                positions.push(producer.position(passes)?);
            }
            let chunk_state = StreamState {
                fingerprint: state.fingerprint.clone(),
                block_seq,
                draws,
                sources: positions,
            };
            let chunk_state: Arc<str> = serde_json::to_string(&chunk_state)
                .expect("a StreamState always serializes")
                .into();
            let chunk_start = draws;
            let mut chunk = Vec::with_capacity(chunk_blocks);
            let mut ended = false;
            while chunk.len() < chunk_blocks {
                let weights: Vec<f64> = self.producers.iter().map(|p| p.source.weight()).collect();
                let index = pick_source(self.corpus.seed, draws, &weights)
                    .ok_or_else(|| PipelineError::Control("every source has weight 0".into()))?;
                let producer = &mut self.producers[index];
                if !producer.peek()? {
                    // The first source to run out of passes ends the stream.
                    ended = true;
                    break;
                }
                let block = producer.next.take().expect("peeked");
                chunk.push(Some((block, index)));
                draws += 1;
            }
            let order: Vec<usize> = if shuffle {
                chunk_order(self.corpus.seed, chunk_start, chunk.len())
            } else {
                (0..chunk.len()).collect()
            };
            for (sent, position) in order.into_iter().enumerate() {
                let (block, source) = chunk[position].take().expect("each block sent once");
                let seq = block_seq + sent as u64;
                let consumed_before = (sent as u64) < skip;
                let other_shard = self.request.shard.is_some_and(|shard| !shard.keeps(seq));
                if consumed_before || other_shard {
                    continue;
                }
                pending.blocks.push_resumable(
                    &block.tokens,
                    seq,
                    block.start.pass as u32,
                    &chunk_state,
                    sent as u32 + 1,
                );
                pending.sources.push(source);
                while pending.blocks.rows() >= self.request.batch_size {
                    if !self.send(&mut pending, self.request.batch_size, &schema)? {
                        return Ok(());
                    }
                }
            }
            block_seq += chunk.len() as u64;
            skip = 0;
            if ended {
                let rows = pending.blocks.rows();
                if rows > 0 {
                    self.send(&mut pending, rows, &schema)?;
                }
                return Ok(());
            }
        }
    }

    /// Starts producers for sources not yet read by this stream: at the cursor's position when it
    /// names them, from the start otherwise (a source added while the stream runs).
    fn add_new_sources(&mut self, positions: &[SourcePosition]) {
        for source in self.corpus.sources().into_iter().skip(self.producers.len()) {
            let start = positions
                .iter()
                .find(|position| position.source == source.name)
                .cloned()
                .unwrap_or_else(|| SourcePosition::start(&source.name));
            let counters = self.stats.source_counters(&source.name);
            let request = SourceRequest {
                rules: self.rules.clone(),
                seq_len: self.request.seq_len,
                passes: self.request.epoch_limit(),
                start,
                counters: counters.clone(),
            };
            let items = start_source(&self.corpus, source.clone(), request);
            self.producers.push(Producer {
                source,
                items,
                next: None,
                exhausted: false,
                counters,
            });
        }
    }

    /// Sends the first `rows` pending rows; false when the consumer has gone.
    fn send(
        &self,
        pending: &mut Pending,
        rows: usize,
        schema: &arrow::datatypes::SchemaRef,
    ) -> Result<bool, PipelineError> {
        let blocks = pending.blocks.take_front(rows);
        let sources: Vec<usize> = pending.sources.drain(..rows).collect();
        let batch = blocks.to_record_batch(schema.clone())?;
        if self.batches.blocking_send(Ok(batch)).is_err() {
            return Ok(false);
        }
        // Counted once handed to the network stage, so totals match what consumers get.
        self.stats.blocks.fetch_add(rows as u64, Ordering::Relaxed);
        for source in sources {
            self.producers[source]
                .counters
                .blocks
                .fetch_add(1, Ordering::Relaxed);
        }
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
