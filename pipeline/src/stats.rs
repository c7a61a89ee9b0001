//! Live counters of the streams a pipeline serves, for the `stats` action and
//! `flightlm-pipeline stats`.
//!
//! The packing stage of each stream updates its counters with relaxed atomics (no lock on the hot
//! path); a snapshot reads them into JSON. Finished streams stay listed, up to a bound, so a short
//! stream's totals can still be read after it ends.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use flightlm_shared::StreamRequest;
use serde_json::{json, Value};

/// Finished streams kept for inspection.
const FINISHED_STREAMS_KEPT: usize = 64;

/// Counters of one stream.
pub struct StreamStats {
    pub id: u64,
    pub request: StreamRequest,
    started: Instant,
    pub documents: AtomicU64,
    pub blocks: AtomicU64,
    /// Null or blank rows, which are not documents.
    pub skipped_rows: AtomicU64,
    /// Tokens cut off by the end of a pass (the incomplete last block).
    pub dropped_tokens: AtomicU64,
    /// Record batches encoded and waiting for the network.
    pub queued_batches: AtomicU64,
    pub epoch: AtomicU64,
    pub active: AtomicBool,
}

impl StreamStats {
    fn snapshot(&self) -> Value {
        let seconds = self.started.elapsed().as_secs_f64();
        let blocks = self.blocks.load(Ordering::Relaxed);
        let tokens = blocks * self.request.seq_len as u64;
        json!({
            "id": self.id,
            "split": self.request.split,
            "seq_len": self.request.seq_len,
            "batch_size": self.request.batch_size,
            "epochs": self.request.epochs,
            "active": self.active.load(Ordering::Relaxed),
            "seconds": seconds,
            "epoch": self.epoch.load(Ordering::Relaxed),
            "documents": self.documents.load(Ordering::Relaxed),
            "blocks": blocks,
            "tokens": tokens,
            "tokens_per_s": tokens as f64 / seconds.max(1e-9),
            "queued_batches": self.queued_batches.load(Ordering::Relaxed),
            "skipped_rows": self.skipped_rows.load(Ordering::Relaxed),
            "dropped_tokens": self.dropped_tokens.load(Ordering::Relaxed),
        })
    }
}

/// Every stream this server has opened (the finished ones bounded).
#[derive(Default)]
pub struct StreamRegistry {
    next_id: AtomicU64,
    streams: Mutex<Vec<Arc<StreamStats>>>,
}

impl StreamRegistry {
    /// Registers a new stream and returns its counters.
    pub fn register(&self, request: &StreamRequest) -> Arc<StreamStats> {
        let stats = Arc::new(StreamStats {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            request: request.clone(),
            started: Instant::now(),
            documents: AtomicU64::new(0),
            blocks: AtomicU64::new(0),
            skipped_rows: AtomicU64::new(0),
            dropped_tokens: AtomicU64::new(0),
            queued_batches: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            active: AtomicBool::new(true),
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
                    streams.remove(oldest);
                }
            }
            streams.push(stats.clone());
        }
        stats
    }

    /// JSON of every listed stream and the totals over them.
    pub fn snapshot(&self) -> Value {
        let streams: Vec<Value> = self
            .streams
            .lock()
            .map(|streams| streams.iter().map(|stream| stream.snapshot()).collect())
            .unwrap_or_default();
        let total = |key: &str| -> u64 { streams.iter().filter_map(|s| s[key].as_u64()).sum() };
        json!({
            "active_streams": streams.iter().filter(|s| s["active"] == true).count(),
            "blocks": total("blocks"),
            "tokens": total("tokens"),
            "documents": total("documents"),
            "skipped_rows": total("skipped_rows"),
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
        let first = registry.register(&request);
        first.blocks.store(3, Ordering::Relaxed);
        let second = registry.register(&request);
        second.blocks.store(4, Ordering::Relaxed);
        second.active.store(false, Ordering::Relaxed);
        let snapshot = registry.snapshot();
        assert_eq!(snapshot["blocks"], 7);
        assert_eq!(snapshot["tokens"], 56);
        assert_eq!(snapshot["active_streams"], 1);

        for _ in 0..(FINISHED_STREAMS_KEPT + 10) {
            registry
                .register(&request)
                .active
                .store(false, Ordering::Relaxed);
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
    }
}
