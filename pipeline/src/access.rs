//! Who may use a pipeline and what it may read: the bearer-token check on every call, the rule
//! that a non-loopback listener needs a token (or an explicit `--insecure`), the TLS identity
//! served with `--tls-cert`/`--tls-key`, and the confinement of sources added at run time to
//! `--allow-root` directories.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine;
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use crate::error::{PipelineError, Result};
use crate::read::remote;
use crate::read::sources::CorpusFile;

pub const AUTHORIZATION: &str = "authorization";

/// The shared secret clients must present, read from `--auth-token-file`.
#[derive(Clone)]
pub struct AuthToken(Arc<str>);

impl AuthToken {
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| PipelineError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let token = text.trim();
        if token.len() < 16 {
            return Err(PipelineError::Control(format!(
                "the token in {} is shorter than 16 characters",
                path.display()
            )));
        }
        Ok(AuthToken(token.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `metadata` carries this token: `Bearer <token>`, or HTTP Basic with the token as
    /// password (what Flight clients send to `Handshake`, e.g. pyarrow's
    /// `authenticate_basic_token`).
    pub fn admits(&self, metadata: &MetadataMap) -> bool {
        metadata
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| self.admits_header(value))
    }

    /// Whether an `authorization` header value carries this token (as [`AuthToken::admits`]).
    pub fn admits_header(&self, value: &str) -> bool {
        if let Some(token) = value.strip_prefix("Bearer ") {
            return constant_time_eq(token.as_bytes(), self.0.as_bytes());
        }
        if let Some(encoded) = value.strip_prefix("Basic ") {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .unwrap_or_default();
            let password = decoded
                .iter()
                .position(|byte| *byte == b':')
                .map_or(&[][..], |colon| &decoded[colon + 1..]);
            return constant_time_eq(password, self.0.as_bytes());
        }
        false
    }
}

/// Compares without an early exit, so response time does not reveal how much of a guess matched.
fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    if left.len() != right.len() {
        return false;
    }
    left.iter()
        .zip(right)
        .fold(0u8, |difference, (a, b)| difference | (a ^ b))
        == 0
}

/// The per-call check: every request must carry the token when one is set.
pub fn check_call(token: &Option<AuthToken>, request: Request<()>) -> Result<Request<()>, Status> {
    match token {
        Some(token) if !token.admits(request.metadata()) => Err(Status::unauthenticated(
            "missing or wrong token: send `authorization: Bearer <token>`",
        )),
        _ => Ok(request),
    }
}

/// Reads the PEM certificate chain and private key to serve TLS with, checking each file holds
/// what it should so a mix-up fails at start-up rather than at the first client's handshake.
pub fn read_tls_identity(cert: &Path, key: &Path) -> Result<tonic::transport::Identity> {
    let read = |path: &Path, expected: &str, what: &str| -> Result<Vec<u8>> {
        let bytes = std::fs::read(path).map_err(|source| PipelineError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let text = String::from_utf8_lossy(&bytes);
        if !text.contains("-----BEGIN ") || !text.contains(expected) {
            return Err(PipelineError::Control(format!(
                "{} does not hold a PEM {what}",
                path.display()
            )));
        }
        Ok(bytes)
    };
    let cert = read(cert, "CERTIFICATE-----", "certificate (--tls-cert)")?;
    let key = read(key, "PRIVATE KEY-----", "private key (--tls-key)")?;
    Ok(tonic::transport::Identity::from_pem(cert, key))
}

/// A listener reachable from other hosts must authenticate callers unless told otherwise.
pub fn check_listen(listen: SocketAddr, token: &Option<AuthToken>, insecure: bool) -> Result<()> {
    if listen.ip().is_loopback() || token.is_some() || insecure {
        return Ok(());
    }
    Err(PipelineError::Control(format!(
        "refusing to listen on {listen} without --auth-token-file (or --insecure to serve anyone \
         who can reach it)"
    )))
}

/// Directories that sources added at run time must lie in, resolved once (symlinks included);
/// a remote root (`s3://bucket/prefix`, `hf://datasets/OWNER/NAME`) is kept as written.
pub fn allowed_roots(roots: &[PathBuf]) -> Result<Vec<PathBuf>> {
    roots
        .iter()
        .map(|root| {
            if remote::is_remote(&root.to_string_lossy()) {
                return Ok(root.clone());
            }
            std::fs::canonicalize(root).map_err(|_| PipelineError::InputNotFound(root.clone()))
        })
        .collect()
}

/// The remote roots among `roots`, normalized as inputs are (`s3://corpus/books/` → `s3://corpus/books`).
fn remote_roots(roots: &[PathBuf]) -> Vec<String> {
    roots
        .iter()
        .filter_map(|root| root.to_str())
        .filter(|root| remote::is_remote(root))
        .filter_map(|root| remote::RemoteInput::parse(root).ok())
        .map(|root| root.url())
        .collect()
}

/// Whether a remote URL (or the literal part of a glob) lies under a remote root, at a `/`
/// boundary: everything a glob can match must lie under it too.
fn under_remote_root(url: &str, glob: bool, root: &str) -> bool {
    let inside = url
        .strip_prefix(root)
        .is_some_and(|rest| rest.starts_with('/'));
    inside || (!glob && url == root)
}

/// Checks the inputs of an `add-source` by their text alone, before any of them is listed or
/// read, so a caller cannot make the pipeline send requests outside the allowed roots (nor use
/// its credentials to probe): a remote input must parse (no credentials, query strings or `..`)
/// and lie under a remote `--allow-root`, unless `allow_any_url`; local inputs need an
/// `--allow-root` directory and are checked again once resolved ([`confine`]).
pub fn confine_inputs(inputs: &[String], roots: &[PathBuf], allow_any_url: bool) -> Result<()> {
    let remote_roots = remote_roots(roots);
    for input in inputs {
        if !remote::is_remote(input) {
            if roots.is_empty() {
                return Err(disabled());
            }
            continue;
        }
        let parsed = remote::RemoteInput::parse(input)?;
        if allow_any_url {
            continue;
        }
        if remote_roots.is_empty() {
            return Err(PipelineError::Control(format!(
                "{} is refused: remote sources may be added only under a remote --allow-root \
                 (or anywhere with --allow-any-url)",
                parsed.url()
            )));
        }
        let glob = parsed.key.contains(['*', '?', '[']);
        let url = parsed.url();
        let literal = &url[..url.find(['*', '?', '[']).unwrap_or(url.len())];
        if !remote_roots
            .iter()
            .any(|root| under_remote_root(literal, glob, root))
        {
            return Err(PipelineError::Control(format!(
                "{url} is outside the allowed roots"
            )));
        }
    }
    Ok(())
}

fn disabled() -> PipelineError {
    PipelineError::Control(
        "adding sources is disabled: start the pipeline with --allow-root DIR (or a remote \
         prefix; --allow-any-url for any remote input)"
            .into(),
    )
}

/// Refuses any file whose real path (after `..` and symlinks) is outside every allowed root, and
/// any remote file outside the remote roots (unless `allow_any_url`).
pub fn confine(files: &[CorpusFile], roots: &[PathBuf], allow_any_url: bool) -> Result<()> {
    if roots.is_empty() && !allow_any_url {
        return Err(disabled());
    }
    let remote_roots = remote_roots(roots);
    for file in files {
        if let Some(object) = &file.remote {
            let url = object.url();
            if !allow_any_url
                && !remote_roots
                    .iter()
                    .any(|root| under_remote_root(&url, false, root))
            {
                return Err(PipelineError::Control(format!(
                    "{url} is outside the allowed roots"
                )));
            }
            continue;
        }
        if roots.is_empty() {
            return Err(disabled());
        }
        let real = std::fs::canonicalize(&file.path)
            .map_err(|_| PipelineError::InputNotFound(file.path.clone()))?;
        if !roots.iter().any(|root| real.starts_with(root)) {
            return Err(PipelineError::Control(format!(
                "{} is outside the allowed roots",
                file.path.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_inputs_are_confined_by_their_text() {
        let roots = vec![PathBuf::from("s3://corpus/books/")];
        let confined = |input: &str| confine_inputs(&[input.to_string()], &roots, false);
        assert!(confined("s3://corpus/books/a.txt").is_ok());
        assert!(confined("s3://corpus/books").is_ok());
        assert!(confined("s3://corpus/books/*.txt").is_ok());
        assert!(
            confined("s3://corpus/books*").is_err(),
            "a glob past the root"
        );
        assert!(confined("s3://corpus/books-private/a.txt").is_err());
        assert!(confined("s3://other/books/a.txt").is_err());
        assert!(confined("s3://corpus/books/../private/a.txt").is_err());
        assert!(confined("s3://corpus/books/%2e%2e/private/a.txt").is_err());
        let local_only = vec![PathBuf::from("/srv/corpus")];
        let error = confine_inputs(&["s3://corpus/a.txt".into()], &local_only, false)
            .unwrap_err()
            .to_string();
        assert!(error.contains("--allow-any-url"), "{error}");
        assert!(confine_inputs(&["s3://corpus/a.txt".into()], &[], true).is_ok());
        assert!(confine_inputs(&["s3://corpus/a.txt".into()], &[], false).is_err());
        assert!(confine_inputs(&["/srv/a.txt".into()], &[], true).is_err());
    }

    fn metadata(value: &str) -> MetadataMap {
        let mut metadata = MetadataMap::new();
        metadata.insert(AUTHORIZATION, value.parse().unwrap());
        metadata
    }

    #[test]
    fn tokens_are_checked_as_bearer_or_basic_password() {
        let token = AuthToken("0123456789abcdef".into());
        assert!(token.admits(&metadata("Bearer 0123456789abcdef")));
        assert!(!token.admits(&metadata("Bearer 0123456789abcdeX")));
        assert!(!token.admits(&metadata("Bearer ")));
        let basic = base64::engine::general_purpose::STANDARD.encode("user:0123456789abcdef");
        assert!(token.admits(&metadata(&format!("Basic {basic}"))));
        let wrong = base64::engine::general_purpose::STANDARD.encode("user:guess");
        assert!(!token.admits(&metadata(&format!("Basic {wrong}"))));
        assert!(!token.admits(&MetadataMap::new()));
    }

    #[test]
    fn only_loopback_listens_without_a_token() {
        let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
        assert!(check_listen(loopback, &None, false).is_ok());
        let error = check_listen(any, &None, false).unwrap_err().to_string();
        assert!(error.contains("--auth-token-file"), "{error}");
        assert!(check_listen(any, &None, true).is_ok());
        let token = Some(AuthToken("0123456789abcdef".into()));
        assert!(check_listen(any, &token, false).is_ok());
    }
}
