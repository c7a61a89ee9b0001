//! The HuggingFace hub as `huggingface_hub` reads it: the tree API lists a dataset repository's
//! files (`/api/datasets/OWNER/NAME/tree/REVISION/PATH?recursive=true`, paged by `Link` headers),
//! and `/datasets/OWNER/NAME/resolve/REVISION/PATH` serves their contents. `HF_ENDPOINT` overrides
//! the host and `HF_TOKEN` is sent as a bearer token when set: only to that host (a `next` page
//! elsewhere is refused, and redirects to another host drop it) and never printed.

use std::sync::atomic::Ordering;

use object_store::{HeaderMap, HeaderValue};
use serde::Deserialize;

use crate::error::{PipelineError, Result};

const DEFAULT_ENDPOINT: &str = "https://huggingface.co";
/// Pages of a tree listing followed at most (the hub sends 1000 entries a page).
const MAX_PAGES: usize = 10_000;

/// The hub's address: `HF_ENDPOINT`, or huggingface.co.
pub fn endpoint() -> String {
    std::env::var("HF_ENDPOINT")
        .ok()
        .filter(|endpoint| !endpoint.is_empty())
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_string())
        .trim_end_matches('/')
        .to_string()
}

/// The headers of every hub request: the token, when there is one.
pub fn headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(token) = std::env::var("HF_TOKEN")
        .ok()
        .filter(|token| !token.is_empty())
    {
        if let Ok(mut value) = HeaderValue::from_str(&format!("Bearer {token}")) {
            value.set_sensitive(true);
            headers.insert("authorization", value);
        }
    }
    headers
}

#[derive(Deserialize)]
struct TreeEntry {
    #[serde(rename = "type")]
    kind: String,
    path: String,
    #[serde(default)]
    size: u64,
    #[serde(default)]
    oid: Option<String>,
    #[serde(default)]
    lfs: Option<LfsEntry>,
}

#[derive(Deserialize)]
struct LfsEntry {
    oid: String,
}

/// A file of a dataset repository: its path in the repository, its size and its object id (the
/// LFS sha256, or the git blob id), which changes whenever the file does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubFile {
    pub path: String,
    pub size: u64,
    pub oid: Option<String>,
}

/// Every file under `directory` (the whole repository when empty) of dataset `repo` (`OWNER/NAME`).
pub async fn list_files(repo: &str, revision: &str, directory: &str) -> Result<Vec<HubFile>> {
    let base = endpoint();
    let client = reqwest::Client::builder()
        .default_headers(headers())
        .connect_timeout(std::time::Duration::from_secs(10))
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .map_err(|error| PipelineError::Control(format!("hub client: {error}")))?;
    // As huggingface_hub asks: no trailing `/` for the repository's root.
    let path = if directory.is_empty() {
        String::new()
    } else {
        format!("/{directory}")
    };
    let mut next = Some(format!(
        "{base}/api/datasets/{repo}/tree/{revision}{path}?recursive=true&expand=false"
    ));
    let url_of_input = format!("hf://datasets/{repo}/{directory}");
    let failed = |message: String| PipelineError::Remote {
        url: url_of_input.trim_end_matches('/').to_string(),
        message,
    };
    let mut files = Vec::new();
    for _ in 0..MAX_PAGES {
        let Some(url) = next.take() else { break };
        let response = get_with_retries(&client, &url)
            .await
            .map_err(|message| failed(format!("listing the repository: {message}")))?;
        super::counters().list_pages.fetch_add(1, Ordering::Relaxed);
        next = next_page(response.headers());
        if let Some(page) = &next {
            if !same_origin(page, &base) {
                return Err(failed(format!(
                    "the listing's next page is on another host ({}), not {base}: refused, so \
                     HF_TOKEN goes to the hub only",
                    origin(page).unwrap_or_else(|| "unparsable".into())
                )));
            }
        }
        let body = response
            .bytes()
            .await
            .map_err(|error| failed(format!("reading the repository listing: {error}")))?;
        let entries: Vec<TreeEntry> = serde_json::from_slice(&body)
            .map_err(|error| failed(format!("reading the repository listing: {error}")))?;
        files.extend(
            entries
                .into_iter()
                .filter(|entry| entry.kind == "file")
                .map(|entry| HubFile {
                    path: entry.path,
                    size: entry.size,
                    oid: entry.lfs.map(|lfs| lfs.oid).or(entry.oid),
                }),
        );
    }
    Ok(files)
}

/// A successful response to GET `url`; connection failures, 5xx and 429 are retried with backoff
/// (and counted) for up to `--remote-retry-s`, other statuses fail at once.
async fn get_with_retries(
    client: &reqwest::Client,
    url: &str,
) -> std::result::Result<reqwest::Response, String> {
    let start = std::time::Instant::now();
    let mut backoff = std::time::Duration::from_millis(100);
    loop {
        super::counters().requests.fetch_add(1, Ordering::Relaxed);
        let failure = match client.get(url).send().await {
            Ok(response) if response.status().is_success() => return Ok(response),
            Ok(response) => {
                let status = response.status();
                if !(status.is_server_error() || status.as_u16() == 429) {
                    return Err(format!("HTTP {status}"));
                }
                format!("HTTP {status}")
            }
            Err(error) => {
                let mut message = error.to_string();
                let mut source = std::error::Error::source(&error);
                while let Some(cause) = source {
                    message = format!("{message}: {cause}");
                    source = cause.source();
                }
                super::redact::redact_urls(&message)
            }
        };
        if start.elapsed() + backoff > super::retry_for() {
            return Err(format!(
                "still failing after retrying for {} s (--remote-retry-s): {failure}",
                super::retry_for().as_secs()
            ));
        }
        tracing::warn!(
            "retrying the hub listing {}: {}",
            super::redact::redact_urls(url),
            super::redact::redact_urls(&failure)
        );
        super::counters().retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
    }
}

/// `scheme://host:port` of `url`, with the port made explicit.
fn origin(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    Some(format!(
        "{}://{}:{}",
        parsed.scheme(),
        parsed.host_str()?,
        parsed.port_or_known_default()?
    ))
}

/// Whether `url` is on the hub's own scheme, host and port.
fn same_origin(url: &str, hub: &str) -> bool {
    origin(url).is_some_and(|page| Some(page) == origin(hub))
}

/// The `rel="next"` address of a `Link` header.
fn next_page(headers: &reqwest::header::HeaderMap) -> Option<String> {
    let link = headers.get("link")?.to_str().ok()?;
    link.split(',').find_map(|part| {
        let (target, parameters) = part.split_once(';')?;
        parameters.contains("rel=\"next\"").then(|| {
            target
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_headers_name_the_next_page() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            "link",
            "<https://hub/api/datasets/a/b/tree/main?cursor=xyz>; rel=\"next\""
                .parse()
                .unwrap(),
        );
        assert_eq!(
            next_page(&headers).as_deref(),
            Some("https://hub/api/datasets/a/b/tree/main?cursor=xyz")
        );
        assert_eq!(next_page(&reqwest::header::HeaderMap::new()), None);
    }

    #[test]
    fn next_pages_must_stay_on_the_hub() {
        let hub = "https://huggingface.co";
        assert!(same_origin("https://huggingface.co/api/x?cursor=1", hub));
        assert!(same_origin("https://huggingface.co:443/api/x", hub));
        assert!(!same_origin("http://huggingface.co/api/x", hub));
        assert!(!same_origin("https://huggingface.co.evil/api/x", hub));
        assert!(!same_origin("https://evil@other/api/x", hub));
        assert!(same_origin("http://127.0.0.1:80/a", "http://127.0.0.1"));
        assert!(!same_origin("http://127.0.0.1:81/a", "http://127.0.0.1:80"));
    }
}
