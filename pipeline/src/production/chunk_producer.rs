//! The global block sequence of a stream, chunk by chunk: per-source block producers → seeded
//! mixture → chunk shuffle.
//!
//! Every shard of a stream sees the same chunks; which of a chunk's blocks a reader sends (its
//! shard, what its cursor says it already consumed) is the reader's business (`block_stream`). At
//! the start of a chunk the state is small — where every source's next block begins, how many
//! draws and blocks so far — and every row sent from the chunk carries it, so a consumer can resume
//! after any row: the pipeline restarts each source at its position, redraws the chunk and skips
//! what was consumed.

use std::collections::BTreeMap;
use std::sync::Arc;

use crossbeam_channel::Receiver;
use flightlm_shared::{SourcePosition, StreamState};

use crate::corpus::versions::ReadVersions;
use crate::corpus::{Corpus, Source};
use crate::error::PipelineError;
use crate::production::chunk_hub::ChunkSource;
use crate::production::mixture::{chunk_order, pick_source};
use crate::production::source_blocks::{start_source, SourceBlock, SourceItem, SourceRequest};
use crate::production::stats::ReadCounters;
use crate::production::tokenize::EncodeRules;
use crate::production::weight_schedule::WeightSchedule;

/// One chunk of the global block sequence.
pub struct Chunk {
    /// The serialized `StreamState` at the chunk's start: every row sent from the chunk carries it.
    pub state: Arc<str>,
    /// Sequence number of the chunk's first block.
    pub block_seq: u64,
    /// The chunk's blocks in sending order (shuffled when the corpus shuffles).
    pub blocks: Vec<ChunkBlock>,
    /// Source names, indexed by [`ChunkBlock::source`].
    pub source_names: Vec<Arc<str>>,
    /// The stream ends after this chunk: a source ran out of passes.
    pub last: bool,
    /// The stream's own weights the chunk was drawn with (`None`: the pipeline's).
    pub weights: Option<Arc<BTreeMap<String, f64>>>,
}

pub struct ChunkBlock {
    pub tokens: Vec<u32>,
    /// Offsets in `tokens` where a document begins.
    pub document_starts: Vec<u32>,
    /// The pass over its source the block comes from (the epoch).
    pub pass: u32,
    pub source: usize,
}

/// What a chunk producer reads: the split's rules, the block length and how many passes.
pub struct ChunkRequest {
    pub rules: EncodeRules,
    pub seq_len: usize,
    /// Passes over each source; `None` repeats forever.
    pub passes: Option<u64>,
    /// The stream's own weights from the first chunk after the starting one on (the request's).
    pub weights: Option<BTreeMap<String, f64>>,
    /// `weights` apply from the first chunk starting at this block sequence number or later.
    pub weights_from: Option<u64>,
    /// The run's changes of weights while the stream runs: a chunk waits until every change
    /// that may apply to it is known, and the latest that does draws it.
    pub schedule: Option<Arc<WeightSchedule>>,
}

impl ChunkRequest {
    /// Whether the request's weights draw the chunk that starts at `block_seq`.
    fn weights_apply(&self, block_seq: u64) -> bool {
        self.weights_from.is_none_or(|from| block_seq >= from)
    }
}

/// Draws the chunks of one stream from its sources, starting at a chunk state.
pub struct ChunkProducer {
    corpus: Arc<Corpus>,
    request: ChunkRequest,
    counters: Arc<ReadCounters>,
    fingerprint: String,
    /// Where sources named by the starting state begin.
    start_positions: Vec<SourcePosition>,
    block_seq: u64,
    draws: u64,
    producers: Vec<Producer>,
    /// The stream's own weights for the next chunk; `None` follows the pipeline's.
    own_weights: Option<BTreeMap<String, f64>>,
}

impl ChunkProducer {
    pub fn new(
        corpus: Arc<Corpus>,
        request: ChunkRequest,
        state: StreamState,
        counters: Arc<ReadCounters>,
    ) -> Self {
        // The starting chunk is drawn again as it was first drawn; the request's weights follow.
        let own_weights = state.weights.or_else(|| {
            (request.weights.clone()).filter(|_| request.weights_apply(state.block_seq))
        });
        Self {
            own_weights,
            corpus,
            request,
            counters,
            fingerprint: state.fingerprint,
            start_positions: state.sources,
            block_seq: state.block_seq,
            draws: state.draws,
            producers: Vec::new(),
        }
    }

    /// Starts producers for sources not yet read: at the starting state's position when it names
    /// them, from the start otherwise (a source added while the stream runs).
    fn add_new_sources(&mut self) {
        let split = self.request.rules.filter.split;
        for source in (self.corpus.sources_for(split).into_iter()).skip(self.producers.len()) {
            let start = self
                .start_positions
                .iter()
                .find(|position| position.source == source.name)
                .cloned()
                .unwrap_or_else(|| SourcePosition::start(&source.name));
            let versions = Arc::new(ReadVersions::default());
            let request = SourceRequest {
                rules: self.request.rules.clone(),
                seq_len: self.request.seq_len,
                passes: self.request.passes,
                start,
                counters: self.counters.source_counters(&source.name),
                versions: versions.clone(),
            };
            let items = start_source(&self.corpus, source.clone(), request);
            self.producers.push(Producer {
                name: source.name.as_str().into(),
                source,
                items,
                next: None,
                exhausted: false,
                versions,
            });
        }
    }
}

impl ChunkSource for ChunkProducer {
    fn next_chunk(&mut self, stop: &dyn Fn() -> bool) -> Result<Chunk, PipelineError> {
        if let Some(schedule) = &self.request.schedule {
            if let Some(weights) = schedule.weights_for(self.block_seq, stop)? {
                self.own_weights = Some(weights);
            }
        }
        self.add_new_sources();
        let passes = self.request.passes;
        let mut positions = Vec::with_capacity(self.producers.len());
        for producer in &mut self.producers {
            positions.push(producer.position(passes)?);
        }
        let own_weights = self.fill_own_weights();
        let state = StreamState {
            fingerprint: self.fingerprint.clone(),
            block_seq: self.block_seq,
            draws: self.draws,
            sources: positions,
            weights: own_weights.as_deref().cloned(),
        };
        let state: Arc<str> = serde_json::to_string(&state)
            .expect("a StreamState always serializes")
            .into();
        let chunk_blocks = self.corpus.chunk_blocks();
        let chunk_start = self.draws;
        let mut drawn = Vec::with_capacity(chunk_blocks);
        let mut last = false;
        let fixed_weights: Option<Vec<f64>> = own_weights.as_ref().map(|own| {
            let weight_of = |producer: &Producer| own.get(&*producer.name).copied();
            self.producers
                .iter()
                .map(|producer| weight_of(producer).unwrap_or(0.0))
                .collect()
        });
        while drawn.len() < chunk_blocks {
            let weights: Vec<f64> = match &fixed_weights {
                Some(weights) => weights.clone(),
                None => self.producers.iter().map(|p| p.source.weight()).collect(),
            };
            let index = pick_source(self.corpus.seed, self.draws, &weights)
                .ok_or_else(|| PipelineError::Control("every source has weight 0".into()))?;
            let producer = &mut self.producers[index];
            if !producer.peek()? {
                // The first source to run out of passes ends the stream.
                last = true;
                break;
            }
            let block = producer.next.take().expect("peeked");
            drawn.push(Some(ChunkBlock {
                tokens: block.tokens,
                document_starts: block.document_starts,
                pass: block.start.pass as u32,
                source: index,
            }));
            self.draws += 1;
        }
        let order: Vec<usize> = if self.corpus.shuffle_window > 1 {
            chunk_order(self.corpus.seed, chunk_start, drawn.len())
        } else {
            (0..drawn.len()).collect()
        };
        let blocks: Vec<ChunkBlock> = order
            .into_iter()
            .map(|position| drawn[position].take().expect("each block sent once"))
            .collect();
        let chunk = Chunk {
            state,
            block_seq: self.block_seq,
            source_names: self.producers.iter().map(|p| p.name.clone()).collect(),
            blocks,
            last,
            weights: own_weights,
        };
        self.block_seq += chunk.blocks.len() as u64;
        if let Some(target) = &self.request.weights {
            if self.request.weights_apply(self.block_seq) {
                self.own_weights = Some(target.clone());
            }
        }
        Ok(chunk)
    }
}

impl ChunkProducer {
    /// The stream's own weights for the chunk about to be drawn, every source it reads named: a
    /// source the weights do not name (added while the stream runs, say) enters with the
    /// pipeline's weight for it, and keeps that weight in the stream's cursors and later chunks.
    fn fill_own_weights(&mut self) -> Option<Arc<BTreeMap<String, f64>>> {
        let own = self.own_weights.as_mut()?;
        for producer in &self.producers {
            let weight = *own
                .entry(producer.name.to_string())
                .or_insert_with(|| producer.source.weight());
            if let Some(target) = self.request.weights.as_mut() {
                target.entry(producer.name.to_string()).or_insert(weight);
            }
        }
        Some(Arc::new(own.clone()))
    }
}

/// One source as the mixer sees it: the next block, looked at but not yet taken.
struct Producer {
    name: Arc<str>,
    source: Arc<Source>,
    items: Receiver<SourceItem>,
    next: Option<SourceBlock>,
    exhausted: bool,
    /// The versions of the remote files the source's reader opened.
    versions: Arc<ReadVersions>,
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

    /// Where the next block begins (after the last pass when exhausted), with the version of
    /// the remote object it begins in.
    fn position(&mut self, passes: Option<u64>) -> Result<SourcePosition, PipelineError> {
        self.peek()?;
        Ok(match &self.next {
            Some(block) => self.versions.label(block.start.clone()),
            None => SourcePosition {
                pass: passes.unwrap_or(0),
                ..SourcePosition::start(&self.source.name)
            },
        })
    }
}
