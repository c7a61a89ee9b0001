//! The object store every remote read goes through: transient failures retried with backoff and
//! counted, every read tied to the object version the manifest lists, bodies fetched in bounded
//! ranges, listings fetched page by page.
//!
//! The stores underneath are built with their own retries off ([`super::stores`]), so that every
//! retry happens here, where `stats` can count it. A read is cut into ranges of [`CHUNK_BYTES`]:
//! a connection reset mid-body costs one range, not the object, and every range asks for the
//! version the manifest names (`If-Match` with a strong ETag, the version id where the store has
//! one, and the response's ETag and size compared), so that an object replaced after it was
//! listed is an error naming it, never a mix of two versions. The stores only read: writes are
//! refused.

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use flightlm_shared::FileVersion;
use futures::stream::StreamExt;
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectMeta, ObjectStore};

use super::errors::{explain, is_transient, summary};

mod as_object_store;
use super::stores::BuiltStore;
use super::RemoteObject;

/// Bytes per ranged request: large enough that request overhead is small next to tokenizing,
/// small enough that a retry re-reads little.
pub const CHUNK_BYTES: u64 = 8 << 20;

/// The range size reads use: [`CHUNK_BYTES`], or `FLIGHTLM_REMOTE_RANGE_BYTES` (at least 4 KiB),
/// which fault tests lower so that an outage falls in the middle of a small object.
pub fn range_bytes() -> u64 {
    static RANGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *RANGE.get_or_init(|| {
        std::env::var("FLIGHTLM_REMOTE_RANGE_BYTES")
            .ok()
            .and_then(|bytes| bytes.parse::<u64>().ok())
            .map_or(CHUNK_BYTES, |bytes| bytes.max(4096))
    })
}
const FIRST_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);
const MAX_BACKOFF: std::time::Duration = std::time::Duration::from_secs(5);

/// What remote reading did, for `stats` (process-wide: every stream shares the stores).
#[derive(Default)]
pub struct RemoteCounters {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
    pub bytes: AtomicU64,
    /// Pages of bucket listings.
    pub list_pages: AtomicU64,
}

impl RemoteCounters {
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "requests": self.requests.load(Ordering::Relaxed),
            "retries": self.retries.load(Ordering::Relaxed),
            "bytes": self.bytes.load(Ordering::Relaxed),
            "list_pages": self.list_pages.load(Ordering::Relaxed),
        })
    }
}

/// Where a key of this store lives in the store underneath.
#[derive(Debug, Clone)]
pub enum KeyMap {
    /// The same key (buckets, HTTP hosts).
    Same,
    /// `OWNER/NAME/PATH` of `hf://datasets` is `datasets/OWNER/NAME/resolve/REVISION/PATH` on the hub.
    HubResolve { revision: String },
}

impl KeyMap {
    pub(crate) fn inner_key(&self, key: &Path) -> Path {
        match self {
            KeyMap::Same => key.clone(),
            KeyMap::HubResolve { revision } => {
                let mut parts = key.parts();
                let owner_and_name: Vec<_> = parts.by_ref().take(2).collect();
                let resolve = ["resolve".into(), revision.as_str().into()];
                Path::from_iter(
                    std::iter::once("datasets".into())
                        .chain(owner_and_name)
                        .chain(resolve)
                        .chain(parts),
                )
            }
        }
    }
}

/// A read-only store with retries, version-tied and ranged reads (cheap to clone).
#[derive(Clone)]
pub struct RemoteStore {
    inner: Arc<Shared>,
    /// The object this view reads at a known version (what DataFusion is given for one file).
    fixed: Option<Arc<ObjectMeta>>,
}

struct Shared {
    /// `s3://bucket`, `https://host`, `hf://datasets`: what URLs of this store start with.
    root: String,
    store: Arc<dyn ObjectStore>,
    lister: Option<Arc<dyn PaginatedListStore>>,
    keys: KeyMap,
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
#[derive(Debug, Clone, thiserror::Error)]
#[error("{url}: {message}")]
pub struct RemoteError {
    pub url: String,
    pub message: String,
    /// A transient failure that outlasted `--remote-retry-s`: the store may come back.
    pub unavailable: bool,
}

/// The version an object's metadata describes.
pub fn version_of(meta: &ObjectMeta) -> FileVersion {
    FileVersion {
        size: meta.size,
        etag: meta.e_tag.clone(),
        version: meta.version.clone(),
    }
}

impl RemoteStore {
    pub fn new(root: &str, built: BuiltStore, counters: Arc<RemoteCounters>) -> Self {
        RemoteStore {
            inner: Arc::new(Shared {
                root: root.to_string(),
                store: built.store,
                lister: built.lister,
                keys: built.keys,
                counters,
            }),
            fixed: None,
        }
    }

    pub fn root(&self) -> &str {
        &self.inner.root
    }

    pub fn url(&self, key: &str) -> String {
        format!("{}/{}", self.inner.root, key)
    }

    /// This store, with `object` read at the version it was listed with.
    pub fn pinned_to(&self, object: &RemoteObject) -> crate::error::Result<RemoteStore> {
        let meta = ObjectMeta {
            location: object.key_path()?,
            last_modified: Default::default(),
            size: object.version.size,
            e_tag: object.version.etag.clone(),
            version: object.version.version.clone(),
        };
        Ok(RemoteStore {
            inner: self.inner.clone(),
            fixed: Some(Arc::new(meta)),
        })
    }

    /// One page of the objects whose key starts with `prefix` (a plain string, not a directory)
    /// and the token of the next page; a page that fails transiently is asked for again, not the
    /// whole listing.
    pub async fn list_page(
        &self,
        prefix: &str,
        page_token: Option<String>,
    ) -> object_store::Result<(Vec<ObjectMeta>, Option<String>)> {
        let Some(lister) = self.inner.lister.clone() else {
            return Err(object_store::Error::NotSupported {
                source: format!("{} cannot be listed", self.root()).into(),
            });
        };
        let options = PaginatedListOptions {
            page_token,
            ..PaginatedListOptions::default()
        };
        let listed_prefix = (!prefix.is_empty()).then_some(prefix);
        let page = self
            .with_retries(prefix, || {
                lister.list_paginated(listed_prefix, options.clone())
            })
            .await?;
        self.inner
            .counters
            .list_pages
            .fetch_add(1, Ordering::Relaxed);
        let next = page.page_token.filter(|token| !token.is_empty());
        Ok((page.result.objects, next))
    }

    /// The object's size and version, asked now.
    pub async fn head(&self, key: &Path) -> object_store::Result<ObjectMeta> {
        let inner_key = self.inner.keys.inner_key(key);
        let options = GetOptions {
            head: true,
            ..GetOptions::default()
        };
        let mut meta = self
            .with_retries(key.as_ref(), || {
                self.inner.store.get_opts(&inner_key, options.clone())
            })
            .await?
            .meta;
        meta.location = key.clone();
        Ok(meta)
    }

    /// Bytes `range` of the object at `version`. A transient failure re-requests only what is
    /// still missing, so a link that resets every few seconds still makes progress; one that
    /// makes none for `--remote-retry-s` gives up with an error marked unavailable.
    pub async fn fetch(
        &self,
        key: &Path,
        version: &FileVersion,
        range: Range<u64>,
    ) -> object_store::Result<Bytes> {
        let mut received = BytesMut::with_capacity((range.end - range.start) as usize);
        let mut since = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        let retry_for = super::retry_for();
        while range.start + (received.len() as u64) < range.end {
            let before = received.len();
            let from = range.start + before as u64;
            self.inner.counters.requests.fetch_add(1, Ordering::Relaxed);
            let result = self
                .read_into(key, version, from..range.end, &mut received)
                .await;
            let error = match result {
                Ok(()) if received.len() > before => continue,
                // A 2xx answer with no body: wait as for any transient failure, never spin.
                Ok(()) => object_store::Error::Generic {
                    store: "remote",
                    source: Box::new(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the server sent no bytes",
                    )),
                },
                Err(error) => error,
            };
            if received.len() > before {
                since = Instant::now();
                backoff = FIRST_BACKOFF;
            }
            let transient = is_transient(&error);
            if !transient || since.elapsed() + backoff > retry_for {
                return Err(explain(&self.url(key.as_ref()), error, transient));
            }
            tracing::warn!(
                "retrying {} from byte {}: {}",
                self.url(key.as_ref()),
                range.start + received.len() as u64,
                summary(&error)
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
        version: &FileVersion,
        range: Range<u64>,
        received: &mut BytesMut,
    ) -> object_store::Result<()> {
        // If-Match compares strongly: a weak ETag never matches, so it is checked on the answer.
        let strong_etag = version.etag.clone().filter(|etag| !etag.starts_with("W/"));
        // The hub's version is a git object id, not something its file server takes.
        let version_id = match self.inner.keys {
            KeyMap::Same => version.version.clone(),
            KeyMap::HubResolve { .. } => None,
        };
        let options = GetOptions {
            if_match: strong_etag,
            version: version_id,
            range: Some(GetRange::Bounded(range)),
            ..GetOptions::default()
        };
        let inner_key = self.inner.keys.inner_key(key);
        let result = self.inner.store.get_opts(&inner_key, options).await?;
        // A server that ignores If-Match still names the version it sent.
        let sent = FileVersion {
            version: result.meta.version.clone().or(version.version.clone()),
            ..version_of(&result.meta)
        };
        if !version.same_as(&sent) {
            return Err(self.changed(key, version, &sent));
        }
        let mut body = result.into_stream();
        while let Some(chunk) = body.next().await {
            received.extend_from_slice(&chunk?);
        }
        Ok(())
    }

    fn changed(&self, key: &Path, listed: &FileVersion, now: &FileVersion) -> object_store::Error {
        object_store::Error::Precondition {
            path: key.to_string(),
            source: Box::new(RemoteError {
                url: self.url(key.as_ref()),
                message: format!(
                    "the object changed after it was listed (listed: {listed}; now: {now})"
                ),
                unavailable: false,
            }),
        }
    }

    /// Runs `attempt` until it succeeds, fails permanently, or transient failures outlast
    /// `--remote-retry-s`; every retry is counted. Failures are rewritten to name the URL.
    async fn with_retries<T, F, Fut>(&self, key: &str, mut attempt: F) -> object_store::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = object_store::Result<T>>,
    {
        let start = Instant::now();
        let mut backoff = FIRST_BACKOFF;
        let retry_for = super::retry_for();
        loop {
            self.inner.counters.requests.fetch_add(1, Ordering::Relaxed);
            let error = match attempt().await {
                Ok(value) => return Ok(value),
                Err(error) => error,
            };
            let transient = is_transient(&error);
            if !transient || start.elapsed() + backoff > retry_for {
                return Err(explain(&self.url(key), error, transient));
            }
            tracing::warn!("retrying {}: {}", self.url(key), summary(&error));
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

    /// The metadata reads of `location` use: the fixed version, or the store's answer now.
    async fn meta_of(&self, location: &Path) -> object_store::Result<ObjectMeta> {
        match &self.fixed {
            Some(meta) if meta.location == *location => Ok(meta.as_ref().clone()),
            _ => self.head(location).await,
        }
    }
}
