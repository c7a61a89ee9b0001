//! The object store every remote read goes through: transient failures retried with backoff and
//! counted, each object pinned to the version (ETag) first seen, bodies fetched in bounded ranges.
//!
//! The stores underneath (`object_store`'s S3 and HTTP clients) are built with their own retries
//! off, so that every retry happens here, where `stats` can count it. A read is cut into ranges of
//! [`CHUNK_BYTES`]: a connection reset mid-body costs one range, not the object, and a range is
//! re-requested with `If-Match` so that an object replaced while it is read is an error naming it,
//! never a mix of two versions. The stores only read: writes are refused.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    Attributes, CopyOptions, GetOptions, GetRange, GetResult, GetResultPayload, ListResult,
    MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload,
    PutResult,
};

/// Bytes per ranged request: large enough that request overhead is small next to tokenizing,
/// small enough that a retry re-reads little.
pub const CHUNK_BYTES: u64 = 8 << 20;
/// A transient failure is retried until this much time has passed since the first attempt.
const RETRY_FOR: Duration = Duration::from_secs(120);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What remote reading did, for `stats` (process-wide: every stream shares the stores).
#[derive(Default)]
pub struct RemoteCounters {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub bytes: AtomicU64,
}

impl RemoteCounters {
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "requests": self.requests.load(Ordering::Relaxed),
            "retries": self.retries.load(Ordering::Relaxed),
            "bytes": self.bytes.load(Ordering::Relaxed),
        })
    }
}

/// Where a key of this store lives in the store underneath.
#[derive(Debug, Clone)]
pub enum KeyMap {
    /// The same key (S3 buckets, HTTP hosts).
    Same,
    /// `OWNER/NAME/PATH` of `hf://datasets` is `datasets/OWNER/NAME/resolve/REVISION/PATH` on the hub.
    HubResolve { revision: String },
}

impl KeyMap {
    pub(crate) fn inner_key(&self, key: &Path) -> Path {
        match self {
            KeyMap::Same => key.clone(),
            KeyMap::HubResolve { revision } => {
                let mut parts = key.parts().map(|part| part.as_ref().to_string());
                let owner_and_name: Vec<String> = parts.by_ref().take(2).collect();
                let resolve = ["resolve".to_string(), revision.clone()];
                Path::from_iter(
                    std::iter::once("datasets".to_string())
                        .chain(owner_and_name)
                        .chain(resolve)
                        .chain(parts),
                )
            }
        }
    }
}

/// A read-only store with retries, version pinning and ranged reads (cheap to clone).
#[derive(Clone)]
pub struct RemoteStore {
    inner: Arc<Shared>,
}

struct Shared {
    /// `s3://bucket`, `https://host`, `hf://datasets`: what URLs of this store start with.
    root: String,
    store: Arc<dyn ObjectStore>,
    keys: KeyMap,
    /// The version of every object this process has read, by key.
    pinned: Mutex<HashMap<Path, ObjectMeta>>,
    counters: Arc<RemoteCounters>,
}

impl fmt::Debug for RemoteStore {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "RemoteStore({})", self.inner.root)
    }
}

impl fmt::Display for RemoteStore {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}", self.inner.root)
    }
}

/// A remote failure as a user reads it: the object's URL and what went wrong.
#[derive(Debug, thiserror::Error)]
#[error("{url}: {message}")]
pub struct RemoteError {
    pub url: String,
    pub message: String,
}

impl RemoteStore {
    pub fn new(
        root: &str,
        store: Arc<dyn ObjectStore>,
        keys: KeyMap,
        counters: Arc<RemoteCounters>,
    ) -> Self {
        RemoteStore {
            inner: Arc::new(Shared {
                root: root.to_string(),
                store,
                keys,
                pinned: Mutex::default(),
                counters,
            }),
        }
    }

    pub fn root(&self) -> &str {
        &self.inner.root
    }

    pub fn url(&self, key: &Path) -> String {
        format!("{}/{}", self.inner.root, key)
    }

    /// Every object under `prefix` (a directory), listed again on a transient failure. Listings
    /// are not pinned: they are what changes.
    pub async fn list_all(&self, prefix: Option<&Path>) -> object_store::Result<Vec<ObjectMeta>> {
        let key = prefix.cloned().unwrap_or_default();
        self.with_retries(&key, || self.inner.store.list(prefix).try_collect())
            .await
    }

    /// The object's size and version, asked once per process and kept: later reads must match it.
    pub async fn pinned_meta(&self, key: &Path) -> object_store::Result<ObjectMeta> {
        if let Some(meta) = self.inner.pinned.lock().expect("pins").get(key) {
            return Ok(meta.clone());
        }
        let inner_key = self.inner.keys.inner_key(key);
        let options = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        let mut meta = self
            .with_retries(key, || {
                self.inner.store.get_opts(&inner_key, options.clone())
            })
            .await?
            .meta;
        meta.location = key.clone();
        let mut pinned = self.inner.pinned.lock().expect("pins");
        Ok(pinned.entry(key.clone()).or_insert(meta).clone())
    }

    /// Bytes `range` of the object at its pinned version. A transient failure re-requests only
    /// what is still missing, so a link that resets every few seconds still makes progress.
    pub async fn fetch(&self, key: &Path, range: Range<u64>) -> object_store::Result<Bytes> {
        let meta = self.pinned_meta(key).await?;
        let mut received = BytesMut::with_capacity((range.end - range.start) as usize);
        let mut since = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        while range.start + (received.len() as u64) < range.end {
            let before = received.len();
            let from = range.start + before as u64;
            self.inner.counters.requests.fetch_add(1, Ordering::Relaxed);
            let Err(error) = self
                .read_into(key, &meta, from..range.end, &mut received)
                .await
            else {
                continue;
            };
            if received.len() > before {
                since = Instant::now();
                backoff = FIRST_BACKOFF;
            }
            let transient = super::errors::is_transient(&error);
            if !transient || since.elapsed() + backoff > RETRY_FOR {
                return Err(super::errors::explain(&self.url(key), error, transient));
            }
            tracing::warn!(
                "retrying {} from byte {}: {error}",
                self.url(key),
                range.start + received.len() as u64
            );
            self.inner.counters.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        self.inner
            .counters
            .bytes
            .fetch_add(received.len() as u64, Ordering::Relaxed);
        Ok(received.freeze())
    }

    /// One request for `range`, appending what arrives to `received` even when it fails midway.
    async fn read_into(
        &self,
        key: &Path,
        meta: &ObjectMeta,
        range: Range<u64>,
        received: &mut BytesMut,
    ) -> object_store::Result<()> {
        let options = GetOptions {
            if_match: meta.e_tag.clone(),
            range: Some(GetRange::Bounded(range)),
            ..GetOptions::default()
        };
        let inner_key = self.inner.keys.inner_key(key);
        let result = self.inner.store.get_opts(&inner_key, options).await?;
        // A server that ignores If-Match still names the version it sent.
        if let (Some(pinned), Some(sent)) = (&meta.e_tag, &result.meta.e_tag) {
            if pinned != sent {
                return Err(self.changed(key, pinned, sent));
            }
        }
        let mut body = result.into_stream();
        while let Some(chunk) = body.next().await {
            received.extend_from_slice(&chunk?);
        }
        Ok(())
    }

    fn changed(&self, key: &Path, pinned: &str, now: &str) -> object_store::Error {
        object_store::Error::Precondition {
            path: key.to_string(),
            source: Box::new(RemoteError {
                url: self.url(key),
                message: format!(
                    "the object changed while it was read (version {pinned}, now {now})"
                ),
            }),
        }
    }

    /// Runs `attempt` until it succeeds, fails permanently, or transient failures outlast
    /// [`RETRY_FOR`]; every retry is counted. Permanent failures are rewritten to name the URL.
    async fn with_retries<T, F, Fut>(&self, key: &Path, mut attempt: F) -> object_store::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = object_store::Result<T>>,
    {
        let start = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        loop {
            self.inner.counters.requests.fetch_add(1, Ordering::Relaxed);
            let error = match attempt().await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            let transient = super::errors::is_transient(&error);
            if !transient || start.elapsed() + backoff > RETRY_FOR {
                return Err(super::errors::explain(&self.url(key), error, transient));
            }
            tracing::warn!("retrying {}: {error}", self.url(key));
            self.inner.counters.retries.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn refuse(&self, operation: &str) -> object_store::Error {
        object_store::Error::NotSupported {
            source: format!(
                "{operation} on {}: remote corpora are read-only",
                self.root()
            )
            .into(),
        }
    }
}

/// The ranges of `range`, [`CHUNK_BYTES`] at most each, fetched one after another.
fn chunks(
    store: RemoteStore,
    key: Path,
    range: Range<u64>,
) -> BoxStream<'static, object_store::Result<Bytes>> {
    let starts = (range.start..range.end).step_by(CHUNK_BYTES as usize);
    stream::iter(starts)
        .then(move |start| {
            let store = store.clone();
            let key = key.clone();
            let end = (start + CHUNK_BYTES).min(range.end);
            async move { store.fetch(&key, start..end).await }
        })
        .boxed()
}

#[async_trait]
impl ObjectStore for RemoteStore {
    async fn put_opts(
        &self,
        _: &Path,
        _: PutPayload,
        _: PutOptions,
    ) -> object_store::Result<PutResult> {
        Err(self.refuse("put"))
    }

    async fn put_multipart_opts(
        &self,
        _: &Path,
        _: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        Err(self.refuse("put"))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let meta = self.pinned_meta(location).await?;
        let range = match &options.range {
            Some(range) => {
                range
                    .as_range(meta.size)
                    .map_err(|error| object_store::Error::Generic {
                        store: "remote",
                        source: Box::new(error),
                    })?
            }
            None => 0..meta.size,
        };
        let payload = if options.head {
            stream::empty().boxed()
        } else {
            chunks(self.clone(), location.clone(), range.clone())
        };
        Ok(GetResult {
            payload: GetResultPayload::Stream(payload),
            meta,
            range,
            attributes: Attributes::default(),
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let error = self.refuse("delete").to_string();
        locations
            .map(move |_| {
                Err(object_store::Error::NotSupported {
                    source: error.clone().into(),
                })
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.store.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.store.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, _: &Path, _: &Path, _: CopyOptions) -> object_store::Result<()> {
        Err(self.refuse("copy"))
    }
}
