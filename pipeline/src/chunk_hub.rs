//! One production of a stream's chunks, read by every shard of a data-parallel job.
//!
//! A `--shard i/N` stream keeps every N-th block of the global sequence, so finding its blocks
//! means tokenizing and packing the whole corpus: N ranks each reading their own stream cost the
//! pipeline N times the work of one. Instead, sharded streams that ask for the same sequence (same
//! fingerprint, passes and shard count) starting at a chunk a hub still holds become readers of
//! that hub; each reader picks its own blocks out of the shared chunks.
//!
//! The hub runs at most [`CHUNKS_AHEAD`] chunks ahead of its slowest reader (the ranks of a job
//! advance together) and keeps up to [`TOKENS_KEPT`] tokens of chunks behind it, so ranks that
//! connect or reconnect apart still find the chunk their cursor names: the first rank to connect
//! may take a whole HTTP/2 window (8 MiB of compressed blocks, about 5M tokens) before the others
//! arrive. A stream that finds no hub holding its chunk starts its own. Unsharded streams always
//! have a hub of their own that keeps nothing behind: each consumer keeps its own pace.
//!
//! A reader that holds the others back for [`STALL_LIMIT`] while one of them waits for a chunk
//! (a client draining its shards one after the other, say) leaves the hub and continues on a
//! production of its own from the chunk it had reached: slower, never stuck.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::chunk_producer::Chunk;
use crate::error::PipelineError;
use crate::stats::ReadCounters;

/// Chunks a hub may hold beyond what its slowest reader has taken.
pub const CHUNKS_AHEAD: u64 = 2;
/// Tokens of chunks a shared hub keeps behind its slowest reader, for readers that join late
/// (64 MiB of token ids).
pub const TOKENS_KEPT: usize = 16 << 20;
/// How long a reader may hold a hub back while another waits before it is moved off the hub.
pub const STALL_LIMIT: Duration = Duration::from_secs(10);

/// Makes a chunk source that starts at an entry (a serialized starting state), reading into the
/// given counters: how a hub starts, and how a reader moved off it continues.
pub type MakeChunks = Arc<
    dyn Fn(&str, Arc<ReadCounters>) -> Result<Box<dyn ChunkSource>, PipelineError> + Send + Sync,
>;

/// Where a hub's chunks come from (a [`crate::chunk_producer::ChunkProducer`]).
pub trait ChunkSource: Send + 'static {
    /// The next chunk; called again until one comes back with `last` set.
    fn next_chunk(&mut self) -> Result<Chunk, PipelineError>;
}

/// What readers of one hub must agree on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubKey {
    pub fingerprint: String,
    pub passes: Option<u64>,
    pub shard_count: u64,
}

/// A chunk with the starting state that leads to it: its own state, except for a hub's first
/// chunk, which a stream reaches from the state the hub started at (a fresh stream's state names
/// no source positions yet).
struct Held {
    entry: Arc<str>,
    chunk: Arc<Chunk>,
}

impl Held {
    fn tokens(&self) -> usize {
        self.chunk
            .blocks
            .iter()
            .map(|block| block.tokens.len())
            .sum()
    }
}

struct HubState {
    chunks: VecDeque<Held>,
    /// Index of `chunks[0]` in the hub's sequence.
    first: u64,
    /// Reader id and the index of the next chunk it takes.
    readers: Vec<(u64, u64)>,
    /// Readers moved off for holding the others back, with the entry of their next chunk.
    moved_off: Vec<(u64, Arc<str>)>,
    next_reader_id: u64,
    /// Set when the producer stops: `Ok` after the last chunk, the error otherwise.
    end: Option<Result<(), String>>,
    /// No reader is left: the producer stops and nobody joins.
    closed: bool,
}

impl HubState {
    fn produced(&self) -> u64 {
        self.first + self.chunks.len() as u64
    }

    fn slowest(&self) -> Option<u64> {
        self.readers.iter().map(|(_, next)| *next).min()
    }
}

pub struct Hub {
    key: Option<HubKey>,
    /// The state the hub started at: the entry of its first chunk, known before it is made.
    start_entry: Arc<str>,
    /// Tokens kept behind the slowest reader: none for a hub nobody may join.
    tokens_kept: usize,
    stall_limit: Duration,
    make: MakeChunks,
    /// Documents, rows and bad records of this production, shared by its readers' stats.
    pub counters: Arc<ReadCounters>,
    state: Mutex<HubState>,
    changed: Condvar,
}

impl Hub {
    /// Starts producing from `entry` (the serialized starting state) with one reader at the start.
    fn start(
        key: Option<HubKey>,
        entry: Arc<str>,
        make: MakeChunks,
        counters: Arc<ReadCounters>,
        stall_limit: Duration,
    ) -> Result<Reader, PipelineError> {
        let mut producer = make(&entry, counters.clone())?;
        let hub = Arc::new(Hub {
            tokens_kept: if key.is_some() { TOKENS_KEPT } else { 0 },
            stall_limit,
            make,
            key,
            start_entry: entry.clone(),
            counters,
            state: Mutex::new(HubState {
                chunks: VecDeque::new(),
                first: 0,
                readers: vec![(0, 0)],
                moved_off: Vec::new(),
                next_reader_id: 1,
                end: None,
                closed: false,
            }),
            changed: Condvar::new(),
        });
        let producing = hub.clone();
        std::thread::Builder::new()
            .name("mixer".into())
            .spawn(move || producing.produce(producer.as_mut()))
            .expect("spawning the mixer thread");
        Ok(Reader { hub, id: 0 })
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        // A panicking reader must not take the other shards down with it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wait<'a>(&self, state: MutexGuard<'a, HubState>) -> MutexGuard<'a, HubState> {
        self.changed
            .wait(state)
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn produce(&self, producer: &mut dyn ChunkSource) {
        let mut entry = Some(self.start_entry.clone());
        loop {
            if !self.wait_for_room() {
                return;
            }
            let made = producer.next_chunk();
            let mut state = self.lock();
            match made {
                Ok(chunk) => {
                    let last = chunk.last;
                    let entry = entry.take().unwrap_or_else(|| chunk.state.clone());
                    state.chunks.push_back(Held {
                        entry,
                        chunk: Arc::new(chunk),
                    });
                    if last {
                        state.end = Some(Ok(()));
                    }
                }
                Err(error) => state.end = Some(Err(error.to_string())),
            }
            self.changed.notify_all();
            if state.end.is_some() {
                return;
            }
        }
    }

    /// Waits until the slowest reader is within [`CHUNKS_AHEAD`]; false once the hub is closed.
    /// Readers holding back another that waits for a chunk are moved off after the stall limit.
    fn wait_for_room(&self) -> bool {
        let mut state = self.lock();
        let mut stalled_since: Option<Instant> = None;
        loop {
            if state.closed {
                return false;
            }
            let Some(slowest) = state.slowest() else {
                return false;
            };
            let produced = state.produced();
            if produced < slowest + CHUNKS_AHEAD {
                return true;
            }
            let someone_waits = state.readers.iter().any(|(_, next)| *next >= produced);
            if !someone_waits {
                stalled_since = None;
                state = self.wait(state);
                continue;
            }
            let since = *stalled_since.get_or_insert_with(Instant::now);
            let left = self.stall_limit.saturating_sub(since.elapsed());
            if left.is_zero() {
                Self::move_off_slowest(&mut state, slowest);
                stalled_since = None;
                self.changed.notify_all();
                continue;
            }
            state = self
                .changed
                .wait_timeout(state, left)
                .map(|(state, _)| state)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
    }

    fn move_off_slowest(state: &mut HubState, slowest: u64) {
        let entry = state.chunks[(slowest - state.first) as usize].entry.clone();
        let (stuck, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut state.readers)
            .into_iter()
            .partition(|(_, next)| *next == slowest);
        tracing::warn!(
            readers = stuck.len(),
            "shard streams held the others back; they continue on their own production"
        );
        state
            .moved_off
            .extend(stuck.iter().map(|(id, _)| (*id, entry.clone())));
        state.readers = kept;
    }

    /// Adds a reader at the held chunk that `entry` leads to, if the hub still holds it.
    fn join(self: &Arc<Self>, entry: &str) -> Option<Reader> {
        let mut state = self.lock();
        if state.closed || matches!(state.end, Some(Err(_))) {
            return None;
        }
        let next = if state.first == 0 && state.chunks.is_empty() {
            // The first chunk is still being made: ranks that connect together land here.
            (*self.start_entry == *entry).then_some(0)?
        } else {
            let position = state.chunks.iter().position(|held| &*held.entry == entry)?;
            state.first + position as u64
        };
        let id = state.next_reader_id;
        state.next_reader_id += 1;
        state.readers.push((id, next));
        Some(Reader {
            hub: self.clone(),
            id,
        })
    }

    /// Drops the oldest chunks behind the slowest reader while more than `tokens_kept` tokens are.
    fn trim(&self, state: &mut HubState) {
        let slowest = state.slowest().unwrap_or(state.produced());
        let behind = (slowest.saturating_sub(state.first) as usize).min(state.chunks.len());
        let mut tokens_behind: usize = state.chunks.iter().take(behind).map(Held::tokens).sum();
        while state.first < slowest && tokens_behind > self.tokens_kept {
            let Some(oldest) = state.chunks.pop_front() else {
                break;
            };
            tokens_behind -= oldest.tokens();
            state.first += 1;
        }
    }
}

/// One stream's place in a hub; dropping it leaves the hub.
pub struct Reader {
    hub: Arc<Hub>,
    id: u64,
}

impl Reader {
    pub fn counters(&self) -> Arc<ReadCounters> {
        self.hub.counters.clone()
    }

    /// Waits for this reader's next chunk; `None` once the stream has ended.
    pub fn next_chunk(&mut self) -> Result<Option<Arc<Chunk>>, PipelineError> {
        let mut state = self.hub.lock();
        loop {
            let Some(next) = state
                .readers
                .iter()
                .find(|(id, _)| *id == self.id)
                .map(|(_, next)| *next)
            else {
                drop(state);
                self.continue_alone()?;
                state = self.hub.lock();
                continue;
            };
            if next < state.produced() {
                let chunk = state.chunks[(next - state.first) as usize].chunk.clone();
                if let Some(reader) = state.readers.iter_mut().find(|(id, _)| *id == self.id) {
                    reader.1 = next + 1;
                }
                self.hub.trim(&mut state);
                self.hub.changed.notify_all();
                return Ok(Some(chunk));
            }
            match &state.end {
                Some(Ok(())) => return Ok(None),
                Some(Err(message)) => return Err(PipelineError::Control(message.clone())),
                None => state = self.hub.wait(state),
            }
        }
    }
}

impl Reader {
    /// Moves this reader, moved off its hub, onto a production of its own from where it was.
    fn continue_alone(&mut self) -> Result<(), PipelineError> {
        let entry = {
            let state = self.hub.lock();
            let (_, entry) = state
                .moved_off
                .iter()
                .find(|(id, _)| *id == self.id)
                .expect("a reader leaves the readers only when moved off");
            entry.clone()
        };
        let hub = &self.hub;
        let alone = Hub::start(
            None,
            entry,
            hub.make.clone(),
            hub.counters.clone(),
            hub.stall_limit,
        )?;
        // The old place is released by dropping it.
        *self = alone;
        Ok(())
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let mut state = self.hub.lock();
        state.readers.retain(|(id, _)| *id != self.id);
        state.moved_off.retain(|(id, _)| *id != self.id);
        if state.readers.is_empty() {
            state.closed = true;
        } else {
            self.hub.trim(&mut state);
        }
        self.hub.changed.notify_all();
    }
}

/// The hubs sharded streams may join.
pub struct HubRegistry {
    hubs: Mutex<Vec<Weak<Hub>>>,
    stall_limit: Duration,
}

impl Default for HubRegistry {
    fn default() -> Self {
        Self::with_stall_limit(STALL_LIMIT)
    }
}

impl HubRegistry {
    pub fn with_stall_limit(stall_limit: Duration) -> Self {
        Self {
            hubs: Mutex::default(),
            stall_limit,
        }
    }

    /// A reader of the chunks that start at `entry`: a place in a running hub with the same key
    /// that still holds them, or a new hub that `make` starts, reading into `counters()`. Streams
    /// without a key always get a hub of their own.
    pub fn open(
        &self,
        key: Option<HubKey>,
        entry: Arc<str>,
        make: MakeChunks,
        counters: impl FnOnce() -> Arc<ReadCounters>,
    ) -> Result<Reader, PipelineError> {
        let Some(key) = key else {
            return Hub::start(None, entry, make, counters(), self.stall_limit);
        };
        let mut hubs = self.hubs.lock().unwrap_or_else(|p| p.into_inner());
        hubs.retain(|hub| hub.strong_count() > 0);
        for hub in hubs.iter().filter_map(Weak::upgrade) {
            if hub.key.as_ref() == Some(&key) {
                if let Some(reader) = hub.join(&entry) {
                    return Ok(reader);
                }
            }
        }
        let reader = Hub::start(Some(key), entry, make, counters(), self.stall_limit)?;
        hubs.push(Arc::downgrade(&reader.hub));
        Ok(reader)
    }
}

#[cfg(test)]
#[path = "chunk_hub_tests.rs"]
mod tests;
