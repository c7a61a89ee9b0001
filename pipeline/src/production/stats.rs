//! Live counters of the streams a pipeline serves, for the `stats` action and
//! `flightlm-pipeline stats`.
//!
//! The packing stage of each stream updates its counters with relaxed atomics (no lock on the hot
//! path); a snapshot reads them into JSON. Finished streams stay listed, up to a bound, so a short
//! stream's totals can still be read after it ends.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use flightlm_shared::StreamRequest;
use serde_json::{json, Value};

use crate::production::served::Served;
use crate::production::source_blocks::SourceCounters;
use crate::read::bad_records::{BadRecordPolicy, BadRecords};

/// Finished streams kept for inspection.
const FINISHED_STREAMS_KEPT: usize = 64;

/// What reading a stream's sources counts: documents, skipped rows, dropped tokens and bad
/// records. The shards of one job that read one production (`chunk_hub`) share one of these.
pub struct ReadCounters {
    /// Identifies the production, so totals count shared reading once.
    pub id: u64,
    /// Per source, in the order reading started.
    sources: Mutex<Vec<(String, Arc<SourceCounters>)>>,
    pub bad_records: BadRecords,
}

impl ReadCounters {
    pub fn new(policy: BadRecordPolicy) -> Arc<Self> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Arc::new(Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            sources: Mutex::default(),
            bad_records: BadRecords::new(policy),
        })
    }

    /// The counters of source `name`, created on first use.
    pub fn source_counters(&self, name: &str) -> Arc<SourceCounters> {
        let Ok(mut sources) = self.sources.lock() else {
            return Arc::default();
        };
        if let Some((_, counters)) = sources.iter().find(|(known, _)| known == name) {
            return counters.clone();
        }
        let counters = Arc::new(SourceCounters::default());
        sources.push((name.to_string(), counters.clone()));
        counters
    }

    fn sources(&self) -> Vec<(String, Arc<SourceCounters>)> {
        self.sources.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Counters of one stream.
pub struct StreamStats {
    pub id: u64,
    pub request: StreamRequest,
    started: Instant,
    pub blocks: AtomicU64,
    /// Blocks this stream sent, per source.
    sent: Mutex<Vec<(Arc<str>, u64)>>,
    pub reading: Arc<ReadCounters>,
    /// Record batches encoded and waiting for the network.
    pub queued_batches: AtomicU64,
    pub epoch: AtomicU64,
    pub active: AtomicBool,
    /// Nanoseconds from `started` to the end of the stream; 0 while it runs.
    ended_after_ns: AtomicU64,
    /// The consumer's address, as the server saw it.
    client: Option<String>,
    /// The stream's own weights of the latest chunk it read (`None`: the pipeline's).
    weights: Mutex<Option<Arc<BTreeMap<String, f64>>>>,
}

impl StreamStats {
    /// Marks the stream ended; its `seconds`, and so its tokens/s, stop there.
    pub fn finish(&self) {
        let nanos = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.ended_after_ns.store(nanos.max(1), Ordering::Relaxed);
        self.active.store(false, Ordering::Relaxed);
    }

    /// Records the stream's own weights, as of the chunk it reads now.
    pub fn set_weights(&self, weights: Arc<BTreeMap<String, f64>>) {
        if let Ok(mut current) = self.weights.lock() {
            *current = Some(weights);
        }
    }

    /// Counts the blocks of one sent batch by the source each came from (one lock per batch).
    pub fn count_sent(&self, sources: &[Arc<str>]) {
        let Ok(mut sent) = self.sent.lock() else {
            return;
        };
        for source in sources {
            match sent.iter_mut().find(|(name, _)| name == source) {
                Some((_, count)) => *count += 1,
                None => sent.push((source.clone(), 1)),
            }
        }
    }

    fn snapshot(&self) -> Value {
        let seconds = match self.ended_after_ns.load(Ordering::Relaxed) {
            0 => self.started.elapsed().as_secs_f64(),
            ended => ended as f64 * 1e-9,
        };
        let blocks = self.blocks.load(Ordering::Relaxed);
        let seq_len = self.request.seq_len as u64;
        let tokens = blocks * seq_len;
        let sent = self.sent.lock().map(|s| s.clone()).unwrap_or_default();
        let sources: Vec<Value> = self
            .reading
            .sources()
            .iter()
            .map(|(name, counters)| {
                let blocks = sent
                    .iter()
                    .find(|(source, _)| &**source == name)
                    .map_or(0, |(_, blocks)| *blocks);
                json!({
                    "source": name,
                    "documents": counters.documents.load(Ordering::Relaxed),
                    "blocks": blocks,
                    "tokens": blocks * seq_len,
                    "tokens_per_s": (blocks * seq_len) as f64 / seconds.max(1e-9),
                    "skipped_rows": counters.skipped_rows.load(Ordering::Relaxed),
                    "dropped_tokens": counters.dropped_tokens.load(Ordering::Relaxed),
                })
            })
            .collect();
        let sum = |key: &str| -> u64 { sources.iter().filter_map(|s| s[key].as_u64()).sum() };
        json!({
            "id": self.id,
            "split": self.request.split,
            "seq_len": self.request.seq_len,
            "batch_size": self.request.batch_size,
            "epochs": self.request.epochs,
            "active": self.active.load(Ordering::Relaxed),
            "seconds": seconds,
            "epoch": self.epoch.load(Ordering::Relaxed),
            "shard": self.request.shard,
            "client": self.client,
            "resumed": self.request.cursor.is_some(),
            "reading": self.reading.id,
            "documents": sum("documents"),
            "blocks": blocks,
            "tokens": tokens,
            "tokens_per_s": tokens as f64 / seconds.max(1e-9),
            "queued_batches": self.queued_batches.load(Ordering::Relaxed),
            "skipped_rows": sum("skipped_rows"),
            "dropped_tokens": sum("dropped_tokens"),
            "bad_records": self.reading.bad_records.snapshot(),
            "sources": sources,
            "weights": self.weights.lock().ok().and_then(|weights| weights.clone()),
        })
    }
}

/// Every stream this server has opened (the finished ones bounded).
#[derive(Default)]
pub struct StreamRegistry {
    next_id: AtomicU64,
    streams: Mutex<Vec<Arc<StreamStats>>>,
    /// What the finished streams no longer listed had served.
    retired: Mutex<Served>,
}

impl StreamRegistry {
    /// Registers a new stream and returns its counters.
    pub fn register(
        &self,
        request: &StreamRequest,
        reading: Arc<ReadCounters>,
        client: Option<std::net::SocketAddr>,
    ) -> Arc<StreamStats> {
        let stats = Arc::new(StreamStats {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            request: request.clone(),
            started: Instant::now(),
            blocks: AtomicU64::new(0),
            sent: Mutex::default(),
            reading,
            queued_batches: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            active: AtomicBool::new(true),
            ended_after_ns: AtomicU64::new(0),
            client: client.map(|address| address.to_string()),
            weights: Mutex::default(),
        });
        if let Ok(mut streams) = self.streams.lock() {
            let finished = streams
                .iter()
                .filter(|stream| !stream.active.load(Ordering::Relaxed))
                .count();
            if finished >= FINISHED_STREAMS_KEPT {
                if let Some(oldest) = streams
                    .iter()
                    .position(|stream| !stream.active.load(Ordering::Relaxed))
                {
                    let forgotten = streams.remove(oldest);
                    self.retire(&forgotten, &streams);
                }
            }
            streams.push(stats.clone());
        }
        stats
    }

    /// Streams still sending.
    pub fn active_count(&self) -> usize {
        self.streams.lock().map_or(0, |streams| {
            streams
                .iter()
                .filter(|stream| stream.active.load(Ordering::Relaxed))
                .count()
        })
    }

    /// Moves what a forgotten stream served into the retired totals; its production's reading
    /// counters once no listed stream shares them.
    fn retire(&self, forgotten: &StreamStats, listed: &[Arc<StreamStats>]) {
        let snapshot = forgotten.snapshot();
        let Ok(mut retired) = self.retired.lock() else {
            return;
        };
        retired.add_sent(&snapshot);
        if !listed.iter().any(|s| s.reading.id == forgotten.reading.id) {
            retired.add_reading(&snapshot);
        }
    }

    /// What every stream opened so far has served, per source.
    pub fn served(&self) -> Served {
        self.snapshot_and_served().1
    }

    fn snapshot_and_served(&self) -> (Vec<Value>, Served) {
        let Ok(streams) = self.streams.lock() else {
            return Default::default();
        };
        let snapshots: Vec<Value> = streams.iter().map(|stream| stream.snapshot()).collect();
        let served = match self.retired.lock() {
            Ok(retired) => retired.with_streams(&snapshots),
            Err(_) => Served::default(),
        };
        (snapshots, served)
    }

    /// JSON of every listed stream and the totals over them; `served` sums every stream
    /// opened so far, listed or not.
    pub fn snapshot(&self) -> Value {
        let (streams, served) = self.snapshot_and_served();
        let total = |key: &str| -> u64 { streams.iter().filter_map(|s| s[key].as_u64()).sum() };
        // Shards reading one production share its reading counters: count each production once.
        let mut readings: Vec<&Value> = Vec::new();
        for stream in &streams {
            if !readings
                .iter()
                .any(|seen| seen["reading"] == stream["reading"])
            {
                readings.push(stream);
            }
        }
        let reading_total =
            |key: &str| -> u64 { readings.iter().filter_map(|s| s[key].as_u64()).sum() };
        let bad_records: u64 = readings
            .iter()
            .filter_map(|s| s["bad_records"].as_object())
            .flat_map(|counts| counts.values().filter_map(Value::as_u64))
            .sum();
        json!({
            "active_streams": streams.iter().filter(|s| s["active"] == true).count(),
            "blocks": total("blocks"),
            "tokens": total("tokens"),
            "documents": reading_total("documents"),
            "skipped_rows": reading_total("skipped_rows"),
            "bad_records": bad_records,
            "served": served,
            "streams": streams,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flightlm_shared::Split;

    #[test]
    fn snapshot_sums_streams_and_bounds_finished_ones() {
        let registry = StreamRegistry::default();
        let request = StreamRequest::new(Split::Train, 8, 2);
        let shared = ReadCounters::new(BadRecordPolicy::Error);
        shared
            .source_counters("main")
            .documents
            .store(5, Ordering::Relaxed);
        let first = registry.register(&request, shared.clone(), None);
        first.blocks.store(3, Ordering::Relaxed);
        first.count_sent(&vec![Arc::from("main"); 3]);
        let second = registry.register(&request, shared, None);
        second.blocks.store(4, Ordering::Relaxed);
        second.count_sent(&vec![Arc::from("main"); 4]);
        second.finish();
        let snapshot = registry.snapshot();
        assert_eq!(snapshot["blocks"], 7);
        assert_eq!(snapshot["tokens"], 56);
        assert_eq!(snapshot["active_streams"], 1);
        assert_eq!(
            snapshot["documents"], 5,
            "two shards of one reading count its documents once"
        );
        assert_eq!(snapshot["streams"][1]["documents"], 5);
        std::thread::sleep(std::time::Duration::from_millis(20));
        let later = registry.snapshot();
        assert_eq!(
            later["streams"][1]["seconds"], snapshot["streams"][1]["seconds"],
            "a finished stream's time stops"
        );
        assert!(
            later["streams"][0]["seconds"].as_f64() > snapshot["streams"][0]["seconds"].as_f64()
        );

        for _ in 0..(FINISHED_STREAMS_KEPT + 10) {
            registry
                .register(&request, ReadCounters::new(BadRecordPolicy::Error), None)
                .finish();
        }
        let listed = registry.snapshot()["streams"].as_array().unwrap().len();
        assert!(
            listed <= FINISHED_STREAMS_KEPT + 2,
            "{listed} streams listed"
        );
        assert_eq!(
            registry.snapshot()["streams"][0]["id"],
            0,
            "active streams stay listed"
        );
        let served = registry.served();
        assert_eq!(
            served.sources[0].tokens, 56,
            "forgotten streams still count"
        );
        assert_eq!(served.sources[0].documents, 5);
    }
}
