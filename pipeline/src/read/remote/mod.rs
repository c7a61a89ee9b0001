//! Corpora where they live: `s3://`, `http(s)://` and `hf://datasets/` inputs, read in place.
//!
//! An input URL is listed once into manifest entries ([`listing`]); each entry names its object by
//! URL, which is what cursors and errors use, so a cursor taken on one host resumes on another
//! that reads the same bucket. Every read goes through one [`store::RemoteStore`] per bucket or
//! host, built from the environment the AWS and HuggingFace tools read, and registered with
//! DataFusion so that Parquet is read by ranges; line-oriented files are streamed through
//! [`stream`]. Nothing is written to local disk.

pub mod errors;
pub mod hub;
pub mod listing;
pub mod store;
pub mod stream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::client::SpawnedReqwestConnector;
use object_store::http::HttpBuilder;
use object_store::path::Path;
use object_store::{ClientOptions, ObjectStore, RetryConfig};

use crate::error::{PipelineError, Result};
use store::{KeyMap, RemoteCounters, RemoteStore};

/// The revision `hf://` paths are read at.
pub const HUB_REVISION: &str = "main";

/// Whether an input names a remote corpus rather than a local path.
pub fn is_remote(input: &str) -> bool {
    ["s3://", "http://", "https://", "hf://"]
        .iter()
        .any(|scheme| input.starts_with(scheme))
}

/// A remote input split into its store and the key (or key pattern) inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteInput {
    /// `s3://bucket`, `https://host[:port]`, `hf://datasets`.
    pub root: String,
    /// The key, prefix or glob inside the store, without a leading `/`.
    pub key: String,
}

impl RemoteInput {
    pub fn parse(input: &str) -> Result<RemoteInput> {
        let bad = |why: &str| PipelineError::Control(format!("bad remote input `{input}`: {why}"));
        let (scheme, rest) = input.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let (authority, key) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() {
            return Err(bad("no bucket or host"));
        }
        match scheme {
            "s3" | "http" | "https" => {}
            "hf" if authority == "datasets" => {
                if key.split('/').filter(|part| !part.is_empty()).count() < 2 {
                    return Err(bad("expected hf://datasets/OWNER/NAME[/PATH]"));
                }
            }
            "hf" => return Err(bad("only hf://datasets/OWNER/NAME[/PATH] is supported")),
            _ => return Err(bad("unknown scheme")),
        }
        if matches!(scheme, "http" | "https") && (key.is_empty() || key.contains(['*', '?', '['])) {
            return Err(bad("HTTP inputs name single files (no listing over HTTP)"));
        }
        Ok(RemoteInput {
            root: format!("{scheme}://{authority}"),
            key: key.trim_end_matches('/').to_string(),
        })
    }
}

/// One remote object of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteObject {
    pub root: String,
    pub key: String,
    pub size: u64,
}

impl RemoteObject {
    pub fn url(&self) -> String {
        format!("{}/{}", self.root, self.key)
    }

    pub fn key_path(&self) -> Path {
        Path::from(self.key.as_str())
    }
}

/// Remote I/O runs on this runtime: object_store's connections live on the runtime that opened
/// them, while the readers run on short-lived runtimes of their own.
pub fn io_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("remote-io")
            .enable_all()
            .build()
            .expect("starting the remote I/O runtime")
    })
}

/// Runs `future` to completion from any thread, async or not.
pub fn block_on<F>(future: F) -> F::Output
where
    F: std::future::Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| io_runtime().block_on(future))
            .join()
            .expect("remote I/O thread")
    })
}

/// What every remote store of this process counts.
pub fn counters() -> &'static Arc<RemoteCounters> {
    static COUNTERS: OnceLock<Arc<RemoteCounters>> = OnceLock::new();
    COUNTERS.get_or_init(Arc::default)
}

/// `stats` of remote reading, `None` when nothing remote was read.
pub fn stats() -> Option<serde_json::Value> {
    let counters = counters();
    (counters.requests.load(std::sync::atomic::Ordering::Relaxed) > 0).then(|| counters.snapshot())
}

/// The store of `root` (`s3://bucket`, `https://host`, `hf://datasets`), built once per process.
pub fn store_for(root: &str) -> Result<RemoteStore> {
    static STORES: OnceLock<Mutex<HashMap<String, RemoteStore>>> = OnceLock::new();
    let mut stores = STORES.get_or_init(Mutex::default).lock().expect("stores");
    if let Some(store) = stores.get(root) {
        return Ok(store.clone());
    }
    let (inner, keys) = build_store(root)
        .map_err(|error| PipelineError::Control(format!("cannot read from {root}: {error}")))?;
    let store = RemoteStore::new(root, inner, keys, counters().clone());
    stores.insert(root.to_string(), store.clone());
    Ok(store)
}

/// Retries happen in [`RemoteStore`], where they are counted.
fn no_retries() -> RetryConfig {
    RetryConfig {
        max_retries: 0,
        ..RetryConfig::default()
    }
}

fn client_options(allow_http: bool) -> ClientOptions {
    ClientOptions::new()
        .with_allow_http(allow_http)
        .with_connect_timeout(Duration::from_secs(10))
        .with_timeout(Duration::from_secs(60))
}

fn build_store(root: &str) -> object_store::Result<(Arc<dyn ObjectStore>, KeyMap)> {
    let connector = || SpawnedReqwestConnector::new(io_runtime().handle().clone());
    if let Some(bucket) = root.strip_prefix("s3://") {
        // AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION,
        // AWS_ENDPOINT_URL, AWS_ALLOW_HTTP, as the AWS tools read them.
        let store = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(no_retries())
            .with_http_connector(connector())
            .build()?;
        return Ok((Arc::new(store), KeyMap::Same));
    }
    let (url, keys, headers) = if root == "hf://datasets" {
        let revision = HUB_REVISION.to_string();
        (
            hub::endpoint(),
            KeyMap::HubResolve { revision },
            hub::headers(),
        )
    } else {
        (root.to_string(), KeyMap::Same, Default::default())
    };
    let store = HttpBuilder::new()
        .with_url(url.clone())
        .with_client_options(
            client_options(url.starts_with("http://")).with_default_headers(headers),
        )
        .with_retry(no_retries())
        .with_http_connector(connector())
        .build()?;
    Ok((Arc::new(store), keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_split_into_store_and_key() {
        let input = RemoteInput::parse("s3://corpus/books/2024/").unwrap();
        assert_eq!(input.root, "s3://corpus");
        assert_eq!(input.key, "books/2024");
        let input = RemoteInput::parse("hf://datasets/Sree1994/blm_strict_small").unwrap();
        assert_eq!(input.root, "hf://datasets");
        assert_eq!(input.key, "Sree1994/blm_strict_small");
        let input = RemoteInput::parse("http://127.0.0.1:8000/a/b.jsonl.gz").unwrap();
        assert_eq!(input.root, "http://127.0.0.1:8000");
        assert!(RemoteInput::parse("hf://models/x/y").is_err());
        assert!(RemoteInput::parse("hf://datasets/only-owner").is_err());
        assert!(RemoteInput::parse("https://host/data/*.parquet").is_err());
        assert!(RemoteInput::parse("s3:///key").is_err());
    }

    #[test]
    fn hub_keys_map_to_resolve_urls() {
        let keys = KeyMap::HubResolve {
            revision: "main".into(),
        };
        let key = Path::from("Owner/name/data/train-00000.parquet");
        assert_eq!(
            keys.inner_key(&key).as_ref(),
            "datasets/Owner/name/resolve/main/data/train-00000.parquet"
        );
    }
}
