//! Tests of `chunk_hub` with a counting chunk source in place of a corpus.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::production::chunk_producer::ChunkBlock;
use crate::read::bad_records::BadRecordPolicy;

/// Chunks `s0`, `s1`, … of two 4-token blocks, up to `s5` (the last); fails at `fail_at`.
struct Counting {
    made: Arc<AtomicU64>,
    next: u64,
    fail_at: Option<u64>,
}

impl ChunkSource for Counting {
    fn next_chunk(&mut self, _stop: &dyn Fn() -> bool) -> Result<Chunk, PipelineError> {
        self.made.fetch_add(1, Ordering::SeqCst);
        let index = self.next;
        self.next += 1;
        if self.fail_at == Some(index) {
            return Err(PipelineError::Control(format!("chunk {index} broke")));
        }
        Ok(Chunk {
            state: format!("s{index}").into(),
            block_seq: index * 2,
            blocks: (0..2)
                .map(|_| ChunkBlock {
                    tokens: vec![index as u32; 4],
                    document_starts: Vec::new(),
                    pass: 0,
                    source: 0,
                })
                .collect(),
            source_names: vec!["main".into()],
            last: index == 5,
            weights: None,
        })
    }
}

/// Counting sources that start at their entry (`start` is `s0`) and count into `made`.
fn counting(made: &Arc<AtomicU64>, fail_at: Option<u64>) -> MakeChunks {
    let made = made.clone();
    Arc::new(move |entry: &str, _counters: Arc<ReadCounters>| {
        let next = match entry {
            "start" => 0,
            state => state.trim_start_matches('s').parse().unwrap(),
        };
        let source = Counting {
            made: made.clone(),
            next,
            fail_at,
        };
        Ok(Box::new(source) as Box<dyn ChunkSource>)
    })
}

fn key(shard_count: u64) -> Option<HubKey> {
    Some(HubKey {
        fingerprint: "f".into(),
        passes: Some(1),
        shard_count,
        weights: None,
    })
}

/// Opens a reader at `entry`; `started` counts the hubs started.
fn open(
    registry: &HubRegistry,
    key: Option<HubKey>,
    entry: &str,
    made: &Arc<AtomicU64>,
    started: &AtomicU64,
) -> Reader {
    let counters = || {
        started.fetch_add(1, Ordering::SeqCst);
        ReadCounters::new(BadRecordPolicy::Error)
    };
    registry
        .open(key, entry.into(), counting(made, None), counters)
        .expect("opening a reader")
}

/// Every chunk left for `reader`, to the end.
fn drain(reader: &mut Reader) -> Vec<String> {
    let mut states = Vec::new();
    while let Some(chunk) = reader.next_chunk().unwrap() {
        states.push(chunk.state.to_string());
    }
    states
}

fn states(chunks: &[Arc<Chunk>]) -> Vec<String> {
    chunks.iter().map(|chunk| chunk.state.to_string()).collect()
}

#[test]
fn readers_that_start_together_share_one_production() {
    let registry = HubRegistry::default();
    let (made, started) = (Arc::new(AtomicU64::new(0)), AtomicU64::new(0));
    let mut first = open(&registry, key(2), "start", &made, &started);
    let mut second = open(&registry, key(2), "start", &made, &started);
    let (mut seen_first, mut seen_second) = (Vec::new(), Vec::new());
    while let Some(chunk) = first.next_chunk().unwrap() {
        seen_first.push(chunk);
        seen_second.push(second.next_chunk().unwrap().expect("the same chunks"));
    }
    assert!(second.next_chunk().unwrap().is_none());
    assert_eq!(states(&seen_first), ["s0", "s1", "s2", "s3", "s4", "s5"]);
    assert_eq!(states(&seen_first), states(&seen_second));
    assert_eq!(started.load(Ordering::SeqCst), 1, "one production");
    assert_eq!(made.load(Ordering::SeqCst), 6, "each chunk made once");
    assert!(
        Arc::ptr_eq(&first.counters(), &second.counters()),
        "one set of counters"
    );
}

#[test]
fn the_producer_stays_within_reach_of_the_slowest_reader() {
    let registry = HubRegistry::default();
    let (made, started) = (Arc::new(AtomicU64::new(0)), AtomicU64::new(0));
    let mut fast = open(&registry, key(2), "start", &made, &started);
    let _slow = open(&registry, key(2), "start", &made, &started);
    fast.next_chunk().unwrap().unwrap();
    fast.next_chunk().unwrap().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        made.load(Ordering::SeqCst),
        CHUNKS_AHEAD,
        "the slow reader has taken nothing"
    );
}

#[test]
fn late_readers_join_at_a_held_chunk_or_start_their_own() {
    let registry = HubRegistry::default();
    let (made, started) = (Arc::new(AtomicU64::new(0)), AtomicU64::new(0));
    let mut first = open(&registry, key(2), "start", &made, &started);
    first.next_chunk().unwrap().unwrap();
    first.next_chunk().unwrap().unwrap();
    let mut late = open(&registry, key(2), "s1", &made, &started);
    assert_eq!(started.load(Ordering::SeqCst), 1, "s1 is held: joined");
    assert_eq!(&*late.next_chunk().unwrap().unwrap().state, "s1");

    let other_count = open(&registry, key(3), "s1", &made, &started);
    assert_eq!(started.load(Ordering::SeqCst), 2, "another shard count");
    let not_made = open(&registry, key(2), "s5", &made, &started);
    assert_eq!(started.load(Ordering::SeqCst), 3, "s5 is not held yet");
    let unkeyed = open(&registry, None, "start", &made, &started);
    assert_eq!(
        started.load(Ordering::SeqCst),
        4,
        "unsharded streams never share"
    );
    drop((other_count, not_made, unkeyed));
}

#[test]
fn a_hub_without_readers_stops_and_takes_nobody() {
    let registry = HubRegistry::default();
    let (made, started) = (Arc::new(AtomicU64::new(0)), AtomicU64::new(0));
    let mut only = open(&registry, key(2), "start", &made, &started);
    only.next_chunk().unwrap().unwrap();
    drop(only);
    std::thread::sleep(Duration::from_millis(200));
    let after = made.load(Ordering::SeqCst);
    assert!(after <= 1 + CHUNKS_AHEAD, "{after} chunks made");
    let again = open(&registry, key(2), "start", &made, &started);
    assert_eq!(
        started.load(Ordering::SeqCst),
        2,
        "a closed hub is not joined"
    );
    drop(again);
}

/// A counting source that makes nothing until `go` says so.
struct Gated {
    counting: Counting,
    go: Option<std::sync::mpsc::Receiver<()>>,
}

impl ChunkSource for Gated {
    fn next_chunk(&mut self, _stop: &dyn Fn() -> bool) -> Result<Chunk, PipelineError> {
        if let Some(go) = self.go.take() {
            let _ = go.recv();
        }
        self.counting.next_chunk(_stop)
    }
}

#[test]
fn a_failed_production_reaches_every_reader() {
    let registry = HubRegistry::default();
    let made = Arc::new(AtomicU64::new(0));
    let counters = || ReadCounters::new(BadRecordPolicy::Error);
    // The production fails only after the second shard has joined it.
    let (go, gate) = std::sync::mpsc::channel();
    let gate = std::sync::Mutex::new(Some(gate));
    let failing_made = made.clone();
    let make_gated: MakeChunks = Arc::new(move |_entry: &str, _counters| {
        let counting = Counting {
            made: failing_made.clone(),
            next: 0,
            fail_at: Some(1),
        };
        let go = gate.lock().unwrap().take();
        Ok(Box::new(Gated { counting, go }) as Box<dyn ChunkSource>)
    });
    let mut first = registry
        .open(key(2), "start".into(), make_gated, counters)
        .unwrap();
    let mut second = registry
        .open(key(2), "start".into(), counting(&made, None), || {
            unreachable!("joins")
        })
        .unwrap();
    go.send(()).unwrap();
    for reader in [&mut first, &mut second] {
        assert_eq!(&*reader.next_chunk().unwrap().unwrap().state, "s0");
        let error = reader.next_chunk().err().expect("the failure");
        assert!(error.to_string().contains("chunk 1 broke"), "{error}");
    }
}

#[test]
fn a_reader_that_holds_the_others_back_continues_alone() {
    let registry = HubRegistry::with_stall_limit(Duration::from_millis(100));
    let (made, started) = (Arc::new(AtomicU64::new(0)), AtomicU64::new(0));
    let mut fast = open(&registry, key(2), "start", &made, &started);
    let mut slow = open(&registry, key(2), "start", &made, &started);
    let all = ["s0", "s1", "s2", "s3", "s4", "s5"];
    assert_eq!(drain(&mut fast), all, "the fast reader is not stuck");
    assert_eq!(made.load(Ordering::SeqCst), 6);
    assert_eq!(drain(&mut slow), all, "the slow reader misses nothing");
    assert_eq!(
        made.load(Ordering::SeqCst),
        12,
        "on a production of its own"
    );
    assert_eq!(started.load(Ordering::SeqCst), 1, "with the same counters");
}

#[test]
fn a_younger_hub_hands_its_readers_over_to_an_older_one() {
    // Resuming ranks: the rank whose next block is in chunk 1 connects first and starts a hub
    // there; the rank still in chunk 0 starts another, which makes chunk 0 and then finds chunk 1
    // held by the first hub.
    let registry = HubRegistry::default();
    let (made, started) = (Arc::new(AtomicU64::new(0)), AtomicU64::new(0));
    let mut later = open(&registry, key(2), "s1", &made, &started);
    let mut earlier = open(&registry, key(2), "start", &made, &started);
    let earlier_reader = std::thread::spawn(move || drain(&mut earlier));
    assert_eq!(drain(&mut later), ["s1", "s2", "s3", "s4", "s5"]);
    assert_eq!(
        earlier_reader.join().unwrap(),
        ["s0", "s1", "s2", "s3", "s4", "s5"],
        "every chunk, in order, across the move"
    );
    assert_eq!(started.load(Ordering::SeqCst), 2);
    // The first hub makes s1..s5; the second s0 and s1, then hands over.
    assert_eq!(made.load(Ordering::SeqCst), 7, "one chunk made twice");
}
