//! Corpora where they live: `s3://`, `gs://`, `az://` (`abfs[s]://`), `http(s)://` and
//! `hf://datasets/` inputs, read in place.
//!
//! An input URL is checked without a request ([`RemoteInput::parse`]: no credentials, query
//! strings or `..` in it), then listed once into manifest entries ([`listing`]), each naming its
//! object by URL and by version ([`FileVersion`]: size and ETag or version id), which is what
//! cursors and errors use, so a cursor taken on one host resumes on another that reads the same
//! bucket, and never on another version of an object. Every read goes through one
//! [`store::RemoteStore`] per bucket or host ([`stores`] builds them from the environment the
//! cloud tools read), registered with DataFusion so that Parquet is read by ranges; line-oriented
//! files are streamed through [`stream`]. Nothing is written to local disk.

pub mod errors;
pub mod hub;
pub mod listing;
pub mod prefetch;
pub mod redact;
pub mod store;
pub mod stores;
pub mod stream;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use flightlm_shared::FileVersion;
use object_store::path::Path;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

use crate::error::{PipelineError, Result};
use store::{RemoteCounters, RemoteStore};

/// The revision `hf://` paths are read at.
pub const HUB_REVISION: &str = "main";

/// How long a transient failure is retried without progress by default (`--remote-retry-s`).
pub const DEFAULT_RETRY_S: u64 = 120;

const SCHEMES: [&str; 8] = [
    "s3://", "gs://", "az://", "abfs://", "abfss://", "http://", "https://", "hf://",
];

/// Whether an input names a remote corpus rather than a local path.
pub fn is_remote(input: &str) -> bool {
    SCHEMES.iter().any(|scheme| input.starts_with(scheme))
}

/// Whether a scheme's store lists keys (buckets and containers, as opposed to HTTP and the hub).
pub fn is_bucket_scheme(scheme: &str) -> bool {
    matches!(scheme, "s3" | "gs" | "az" | "abfs" | "abfss")
}

/// How long a transient failure is retried without progress before a read gives up.
pub fn retry_for() -> Duration {
    Duration::from_secs(RETRY_S.load(Ordering::Relaxed))
}

/// Sets [`retry_for`] for the process (`serve --remote-retry-s`).
pub fn set_retry_for(seconds: u64) {
    RETRY_S.store(seconds.max(1), Ordering::Relaxed);
}

static RETRY_S: AtomicU64 = AtomicU64::new(DEFAULT_RETRY_S);

/// A remote input split into its store and the key (or key pattern) inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteInput {
    /// `s3://bucket`, `https://host[:port]`, `hf://datasets`.
    pub root: String,
    /// The key, prefix or glob inside the store, without a leading `/`, exactly as stored
    /// (HTTP paths are percent-decoded).
    pub key: String,
}

impl RemoteInput {
    /// Parses and checks an input without any request: credentials, query strings and `.`/`..`
    /// segments (percent-encoded or not) are refused, so an input can be confined by its text.
    pub fn parse(input: &str) -> Result<RemoteInput> {
        let bad = |why: &str| {
            PipelineError::Control(format!(
                "bad remote input `{}`: {why}",
                redact::redact_urls(input)
            ))
        };
        let (scheme, rest) = input.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let (authority, key) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() {
            return Err(bad("no bucket or host"));
        }
        if authority.contains('@') {
            return Err(bad(&format!(
                "credentials in a URL are refused (they would reach logs and cursors); {}",
                credential_hint(scheme)
            )));
        }
        let http = matches!(scheme, "http" | "https");
        match scheme {
            _ if http || is_bucket_scheme(scheme) => {}
            "hf" if authority == "datasets" => {
                if key.split('/').filter(|part| !part.is_empty()).count() < 2 {
                    return Err(bad("expected hf://datasets/OWNER/NAME[/PATH]"));
                }
            }
            "hf" => return Err(bad("only hf://datasets/OWNER/NAME[/PATH] is supported")),
            _ => return Err(bad("unknown scheme")),
        }
        if (http || scheme == "hf") && key.contains(['?', '#']) {
            return Err(bad(
                "query strings and fragments are refused (a signature in one would reach logs \
                 and cursors)",
            ));
        }
        let key = if http {
            percent_decode_str(key)
                .decode_utf8()
                .map_err(|_| bad("the path is not UTF-8 once percent-decoded"))?
                .into_owned()
        } else {
            key.to_string()
        };
        let key = key.trim_end_matches('/').to_string();
        for segment in key.split('/') {
            let decoded = percent_decode_str(segment).decode_utf8_lossy();
            if decoded == "." || decoded == ".." {
                return Err(bad("`.` and `..` segments are refused"));
            }
            if segment.chars().any(|c| c.is_control()) {
                return Err(bad("control characters are refused"));
            }
        }
        if http && (key.is_empty() || key.contains(['*', '[']) || key.ends_with('/')) {
            return Err(bad("HTTP inputs name single files (no listing over HTTP)"));
        }
        Ok(RemoteInput {
            root: format!("{scheme}://{authority}"),
            key,
        })
    }

    /// The input as a URL, normalized (what confinement compares).
    pub fn url(&self) -> String {
        if self.key.is_empty() {
            self.root.clone()
        } else {
            format!("{}/{}", self.root, self.key)
        }
    }
}

/// Where the credentials of a scheme's store come from instead of the URL.
fn credential_hint(scheme: &str) -> &'static str {
    match scheme {
        "s3" => "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY instead",
        "gs" => "set GOOGLE_APPLICATION_CREDENTIALS (or GOOGLE_SERVICE_ACCOUNT_KEY) instead",
        "az" | "abfs" | "abfss" => {
            "set AZURE_STORAGE_ACCOUNT_NAME and AZURE_STORAGE_ACCOUNT_KEY instead"
        }
        "hf" => "set HF_TOKEN instead",
        _ => "serve the file without credentials, or read it from a bucket (AWS_ACCESS_KEY_ID …)",
    }
}

/// One remote object of a manifest, at the version it was listed with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteObject {
    pub root: String,
    pub key: String,
    pub version: FileVersion,
}

/// Path segments are percent-encoded whole for DataFusion, which decodes a URL's path once.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');

impl RemoteObject {
    pub fn url(&self) -> String {
        format!("{}/{}", self.root, self.key)
    }

    pub fn size(&self) -> u64 {
        self.version.size
    }

    /// The key as the store names it: every character kept, none re-encoded.
    pub fn key_path(&self) -> Result<Path> {
        key_path(&self.root, &self.key)
    }

    /// The URL DataFusion is given for this object: each segment percent-encoded, so that its
    /// URL parsing (which resolves dot segments and cuts at `?` and `#`) yields the key itself.
    pub fn datafusion_url(&self) -> String {
        format!("{}/{}", self.root, encode_segments(&self.key))
    }

    pub fn from_meta(root: &str, key: String, meta: &object_store::ObjectMeta) -> Self {
        RemoteObject {
            root: root.to_string(),
            key,
            version: FileVersion {
                size: meta.size,
                etag: meta.e_tag.clone(),
                version: meta.version.clone(),
            },
        }
    }
}

/// `path` with each `/`-separated segment percent-encoded whole.
pub fn encode_segments(path: &str) -> String {
    path.split('/')
        .map(|segment| utf8_percent_encode(segment, SEGMENT).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

/// The `file://` URL DataFusion is given for a local file: as for remote keys, a name with `[`,
/// `#`, `%` or `?` stays itself (a plain path would be read as a glob or cut).
pub fn local_file_url(path: &std::path::Path) -> Option<String> {
    let absolute = std::path::absolute(path).ok()?;
    let text = absolute.to_str()?;
    Some(format!(
        "file:///{}",
        encode_segments(text.trim_start_matches('/'))
    ))
}

/// `key` as an object_store path that keeps it byte for byte.
pub fn key_path(root: &str, key: &str) -> Result<Path> {
    Path::parse(key).map_err(|error| PipelineError::Remote {
        url: format!("{root}/{key}"),
        message: format!("not a key this pipeline can read: {error}"),
    })
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
    (counters.requests.load(Ordering::Relaxed) > 0).then(|| counters.snapshot())
}

/// The store of `root` (`s3://bucket`, `https://host`, `hf://datasets`), built once per process.
pub fn store_for(root: &str) -> Result<RemoteStore> {
    static STORES: OnceLock<Mutex<HashMap<String, RemoteStore>>> = OnceLock::new();
    let mut stores = STORES.get_or_init(Mutex::default).lock().expect("stores");
    if let Some(store) = stores.get(root) {
        return Ok(store.clone());
    }
    let built = stores::build(root).map_err(|error| {
        PipelineError::Control(format!(
            "cannot read from {root}: {}",
            redact::redact_urls(&error.to_string())
        ))
    })?;
    let store = RemoteStore::new(root, built, counters().clone());
    stores.insert(root.to_string(), store.clone());
    Ok(store)
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
        let input = RemoteInput::parse("http://127.0.0.1:8000/a/b%20c.jsonl.gz").unwrap();
        assert_eq!(input.root, "http://127.0.0.1:8000");
        assert_eq!(input.key, "a/b c.jsonl.gz");
        assert_eq!(RemoteInput::parse("gs://b/x").unwrap().root, "gs://b");
        assert_eq!(RemoteInput::parse("az://c/x").unwrap().root, "az://c");
        assert!(RemoteInput::parse("hf://models/x/y").is_err());
        assert!(RemoteInput::parse("hf://datasets/only-owner").is_err());
        assert!(RemoteInput::parse("https://host/data/*.parquet").is_err());
        assert!(RemoteInput::parse("s3:///key").is_err());
    }

    #[test]
    fn credentials_queries_and_dot_segments_are_refused_without_a_request() {
        let error = RemoteInput::parse("https://user:secret@host/a.txt")
            .unwrap_err()
            .to_string();
        assert!(!error.contains("secret"), "{error}");
        assert!(error.contains("credentials"), "{error}");
        let error = RemoteInput::parse("s3://key:secret@bucket/a.txt")
            .unwrap_err()
            .to_string();
        assert!(error.contains("AWS_ACCESS_KEY_ID") && !error.contains("secret@"));
        let error = RemoteInput::parse("https://host/a.txt?X-Amz-Signature=abc")
            .unwrap_err()
            .to_string();
        assert!(!error.contains("abc"), "{error}");
        for input in [
            "s3://corpus/public/../private/a.txt",
            "s3://corpus/public/%2e%2e/private/a.txt",
            "http://127.0.0.1:1/files/public/%2E%2E/secret.txt",
            "s3://corpus/./a.txt",
        ] {
            assert!(RemoteInput::parse(input).is_err(), "{input}");
        }
    }

    #[test]
    fn awkward_keys_survive_datafusion_urls_and_paths() {
        for key in [
            "dir/a b~[1]#2%41{x}^y|z.parquet",
            "dir/é ü 文.csv",
            "dir/%2e%2e.parquet",
            "q?uery.parquet",
        ] {
            let object = RemoteObject {
                root: "s3://bucket".into(),
                key: key.into(),
                version: FileVersion {
                    size: 1,
                    etag: None,
                    version: None,
                },
            };
            assert_eq!(object.key_path().unwrap().as_ref(), key);
            let url = url::Url::parse(&object.datafusion_url()).unwrap();
            let path = Path::from_url_path(url.path()).unwrap();
            assert_eq!(path.as_ref(), key, "{}", object.datafusion_url());
        }
    }
}
