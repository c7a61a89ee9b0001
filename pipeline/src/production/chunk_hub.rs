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
//!
//! Resuming ranks name the chunk of their own next block, and those blocks may straddle a chunk
//! boundary: when a rank of the later chunk connects first, the others start a second hub at the
//! earlier chunk. Once that younger hub makes a chunk an older hub of the job already holds, it
//! stops, and its readers move to the older hub when they reach that chunk: one chunk is made
//! twice, not the rest of the run.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::error::PipelineError;
use crate::production::chunk_producer::Chunk;
use crate::production::stats::ReadCounters;

mod reader;
pub use reader::Reader;

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

/// Where a hub's chunks come from (a [`crate::production::chunk_producer::ChunkProducer`]).
pub trait ChunkSource: Send + 'static {
    /// The next chunk; called again until one comes back with `last` set. `stop` says that
    /// nobody reads the chunks any more (for a source that waits before it draws one).
    fn next_chunk(&mut self, stop: &dyn Fn() -> bool) -> Result<Chunk, PipelineError>;
}

/// What readers of one hub must agree on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubKey {
    pub fingerprint: String,
    pub passes: Option<u64>,
    pub shard_count: u64,
    /// The request's own weights (as text: they decide every chunk after the first).
    pub weights: Option<String>,
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
    end: Option<Result<(), PipelineError>>,
    /// Set when the producer stops because an older hub holds the next chunk: readers that reach
    /// it move there.
    handed_over: Option<(Arc<Hub>, Arc<str>)>,
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

/// The hubs a keyed hub may hand its readers over to (the registry's list).
type Peers = Arc<Mutex<Vec<Weak<Hub>>>>;

/// Orders hubs by age: a hub only hands over to an older one, so two never hand over to each other.
static NEXT_SERIAL: AtomicU64 = AtomicU64::new(0);

pub struct Hub {
    key: Option<HubKey>,
    serial: u64,
    /// The registry's hubs, for keyed hubs.
    peers: Option<Peers>,
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
        peers: Option<Peers>,
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
            serial: NEXT_SERIAL.fetch_add(1, Ordering::Relaxed),
            peers,
            start_entry: entry.clone(),
            counters,
            state: Mutex::new(HubState {
                chunks: VecDeque::new(),
                first: 0,
                readers: vec![(0, 0)],
                moved_off: Vec::new(),
                next_reader_id: 1,
                end: None,
                handed_over: None,
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
            let made = producer.next_chunk(&|| self.lock().closed);
            let mut state = self.lock();
            match made {
                Ok(chunk) => {
                    let last = chunk.last;
                    let first = entry.is_some();
                    let entry = entry.take().unwrap_or_else(|| chunk.state.clone());
                    if !first && !last {
                        drop(state);
                        let older = self.older_hub_holding(&entry);
                        state = self.lock();
                        if let Some(older) = older {
                            // Readers take the chunks before this one here, then move.
                            state.handed_over = Some((older, entry));
                            self.changed.notify_all();
                            return;
                        }
                    }
                    state.chunks.push_back(Held {
                        entry,
                        chunk: Arc::new(chunk),
                    });
                    if last {
                        state.end = Some(Ok(()));
                    }
                }
                Err(error) => state.end = Some(Err(error)),
            }
            self.changed.notify_all();
            if state.end.is_some() {
                return;
            }
        }
    }

    /// An older hub of the same job that holds (or is making, as its first) the chunk `entry`
    /// leads to. Called without this hub's lock: the registry locks its list before any hub.
    fn older_hub_holding(&self, entry: &str) -> Option<Arc<Hub>> {
        let peers = self
            .peers
            .as_ref()?
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        peers
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|hub| hub.serial < self.serial && hub.key == self.key)
            .find(|hub| hub.holds(entry))
    }

    fn holds(&self, entry: &str) -> bool {
        let state = self.lock();
        state.handed_over.is_none() && self.index_of(&state, entry).is_some()
    }

    /// The index of the held chunk that `entry` leads to (the first while it is being made), if
    /// this hub can still be read.
    fn index_of(&self, state: &HubState, entry: &str) -> Option<u64> {
        if state.closed || matches!(state.end, Some(Err(_))) {
            return None;
        }
        if state.first == 0 && state.chunks.is_empty() {
            // The first chunk is still being made: ranks that connect together land here.
            return (*self.start_entry == *entry).then_some(0);
        }
        let position = state.chunks.iter().position(|held| &*held.entry == entry)?;
        Some(state.first + position as u64)
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
        let next = self.index_of(&state, entry)?;
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

/// The hubs sharded streams may join.
pub struct HubRegistry {
    hubs: Peers,
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
            hubs: Arc::default(),
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
            return Hub::start(None, None, entry, make, counters(), self.stall_limit);
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
        let peers = Some(self.hubs.clone());
        let reader = Hub::start(Some(key), peers, entry, make, counters(), self.stall_limit)?;
        hubs.push(Arc::downgrade(&reader.hub));
        Ok(reader)
    }
}

#[cfg(test)]
#[path = "chunk_hub_tests.rs"]
mod tests;
