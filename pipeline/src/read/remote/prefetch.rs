//! The first range of the object a reader reaches next, fetched while it reads the current one:
//! a corpus of many small objects then waits for one request per object less, and a reader never
//! waits on both a request and a tokenizer at an object boundary.
//!
//! At most [`MAX_PREFETCHED`] ranges are held for the process, the oldest dropped first, and a
//! range is used only by a read of the same object at the same version.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::task::JoinHandle;

use super::store::range_bytes;
use super::{io_runtime, store_for, RemoteObject};

/// Ranges held at once, over every stream (each at most one range).
const MAX_PREFETCHED: usize = 16;

type Fetch = JoinHandle<object_store::Result<Bytes>>;

static PREFETCHED: Mutex<VecDeque<(String, Fetch)>> = Mutex::new(VecDeque::new());

fn identity(object: &RemoteObject) -> String {
    format!("{} {}", object.url(), object.version)
}

/// Starts fetching the first range of `object`, unless it is already on its way.
pub fn prefetch(object: &RemoteObject) {
    let identity = identity(object);
    let Ok(mut prefetched) = PREFETCHED.lock() else {
        return;
    };
    if prefetched.iter().any(|(known, _)| *known == identity) {
        return;
    }
    let (Ok(store), Ok(key)) = (store_for(&object.root), object.key_path()) else {
        return;
    };
    let version = object.version.clone();
    let end = version.size.min(range_bytes()).min(1 << 20);
    let fetch = io_runtime().spawn(async move { store.fetch(&key, &version, 0..end).await });
    prefetched.push_back((identity, fetch));
    while prefetched.len() > MAX_PREFETCHED {
        if let Some((_, dropped)) = prefetched.pop_front() {
            dropped.abort();
        }
    }
}

/// The prefetched first range of `object`, if one was started: `(end, bytes)`.
pub fn take(object: &RemoteObject) -> Option<Fetch> {
    let identity = identity(object);
    let mut prefetched = PREFETCHED.lock().ok()?;
    let index = prefetched
        .iter()
        .position(|(known, _)| *known == identity)?;
    prefetched.remove(index).map(|(_, fetch)| fetch)
}
