//! Who may join a multi-node run, and the channel they join through: the coordinator's token and
//! optional TLS, set up the way the pipeline's are.
//!
//! The token is read from `coordinator_token_file` with the pipeline's rule (`--auth-token-file`:
//! the file's trimmed text, at least 16 characters). It never crosses the wire: the coordinator
//! sends a random nonce, a rank answers with an HMAC-SHA256 of the nonces and its rank under
//! the token, and the coordinator answers the rank's nonce likewise, so each side proves it
//! holds the token to the other and a recorded hello cannot be replayed.
//!
//! TLS takes the same PEM files as the pipeline's `--tls-cert`/`--tls-key` (node 0 serves them)
//! and a CA (`coordinator_tls_ca`, on every node) that must have signed node 0's certificate for
//! the host of the `coordinator` address; rustls with ring, as tonic uses for the pipeline.

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};
use rustls::{StreamOwned, DEFAULT_VERSIONS};

use crate::config::TrainConfig;
use crate::error::TrainError;

/// The shortest token accepted, as for the pipeline.
const MIN_TOKEN_CHARS: usize = 16;

pub const NONCE_BYTES: usize = 32;

/// The shared secret of a multi-node run.
#[derive(Clone)]
pub struct Token(hmac::Key);

impl Token {
    pub fn read(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|source| TrainError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let token = text.trim();
        if token.chars().count() < MIN_TOKEN_CHARS {
            return Err(TrainError::InvalidConfig(format!(
                "the coordinator token in {} is shorter than {MIN_TOKEN_CHARS} characters",
                path.display()
            )));
        }
        Ok(Self::from_text(token))
    }

    pub fn from_text(token: &str) -> Self {
        Token(hmac::Key::new(hmac::HMAC_SHA256, token.as_bytes()))
    }

    /// The MAC of `parts`, each length-prefixed so that no two sequences of parts collide.
    pub fn sign(&self, parts: &[&[u8]]) -> Vec<u8> {
        let mut context = hmac::Context::with_key(&self.0);
        for part in parts {
            context.update(&(part.len() as u64).to_le_bytes());
            context.update(part);
        }
        context.sign().as_ref().to_vec()
    }

    /// Whether `mac` is the MAC of `parts` (compared in constant time).
    pub fn verifies(&self, parts: &[&[u8]], mac: &[u8]) -> bool {
        let expected = self.sign(parts);
        // No early exit, so the time taken does not tell how much of a forgery matched.
        expected.len() == mac.len()
            && expected
                .iter()
                .zip(mac)
                .fold(0u8, |difference, (a, b)| difference | (a ^ b))
                == 0
    }
}

/// A fresh random nonce.
pub fn nonce() -> Result<[u8; NONCE_BYTES], TrainError> {
    let mut bytes = [0u8; NONCE_BYTES];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| TrainError::InvalidConfig("no random numbers from the system".into()))?;
    Ok(bytes)
}

/// What a process needs to take part in a multi-node run's access control.
#[derive(Clone, Default)]
pub struct Access {
    pub token: Option<Token>,
    /// Every node: how to check node 0's certificate.
    pub client_tls: Option<Arc<ClientConfig>>,
    /// Node 0: the certificate it serves.
    pub server_tls: Option<Arc<ServerConfig>>,
}

impl Access {
    /// The token and TLS settings `config` names; node 0 (`serves`) also loads its certificate.
    pub fn from_config(config: &TrainConfig, serves: bool) -> Result<Self, TrainError> {
        let token = config
            .coordinator_token_file
            .as_deref()
            .map(Token::read)
            .transpose()?;
        let (cert, key) = (&config.coordinator_tls_cert, &config.coordinator_tls_key);
        let Some(ca) = &config.coordinator_tls_ca else {
            if cert.is_some() || key.is_some() {
                return Err(invalid(
                    "coordinator TLS needs coordinator_tls_ca on every node (the CA that \
                     signed node 0's certificate)"
                        .into(),
                ));
            }
            return Ok(Access {
                token,
                ..Access::default()
            });
        };
        let client_tls = Some(client_config(ca)?);
        let server_tls =
            match (serves, cert, key) {
                (false, _, _) => None,
                (true, Some(cert), Some(key)) => Some(server_config(cert, key)?),
                (true, _, _) => return Err(invalid(
                    "node 0 serves the coordinator over TLS: it needs coordinator_tls_cert and \
                     coordinator_tls_key (PEM, like the pipeline's --tls-cert/--tls-key)"
                        .into(),
                )),
            };
        Ok(Access {
            token,
            client_tls,
            server_tls,
        })
    }
}

fn invalid(message: String) -> TrainError {
    TrainError::InvalidConfig(format!("coordinator: {message}"))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read_pem(path: &Path, expected: &str, what: &str) -> Result<Vec<u8>, TrainError> {
    let bytes = std::fs::read(path).map_err(|source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    if !text.contains("-----BEGIN ") || !text.contains(expected) {
        return Err(invalid(format!(
            "{} does not hold a PEM {what}",
            path.display()
        )));
    }
    Ok(bytes)
}

fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, TrainError> {
    let pem = read_pem(path, "CERTIFICATE-----", what)?;
    CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid(format!("{}: {error}", path.display())))
}

fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TrainError> {
    let chain = certificates(cert, "certificate (coordinator_tls_cert)")?;
    let key_pem = read_pem(key, "PRIVATE KEY-----", "private key (coordinator_tls_key)")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|error| invalid(format!("{}: {error}", key.display())))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(DEFAULT_VERSIONS)
        .map_err(|error| invalid(error.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|error| invalid(format!("{}: {error}", cert.display())))?;
    Ok(Arc::new(config))
}

fn client_config(ca: &Path) -> Result<Arc<ClientConfig>, TrainError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates(ca, "CA certificate (coordinator_tls_ca)")? {
        roots
            .add(certificate)
            .map_err(|error| invalid(format!("{}: {error}", ca.display())))?;
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(DEFAULT_VERSIONS)
        .map_err(|error| invalid(error.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// One connection between a rank and the coordinator, in the clear or over TLS.
pub enum Link {
    Plain {
        reader: BufReader<TcpStream>,
        writer: BufWriter<TcpStream>,
    },
    Served(Box<StreamOwned<ServerConnection, TcpStream>>),
    Dialed(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Link {
    /// The coordinator's side of an accepted connection (the TLS handshake happens at the
    /// first read, under the socket's timeouts).
    pub fn accepted(stream: TcpStream, tls: Option<&Arc<ServerConfig>>) -> std::io::Result<Self> {
        match tls {
            None => Self::plain(stream),
            Some(config) => {
                let connection =
                    ServerConnection::new(config.clone()).map_err(std::io::Error::other)?;
                Ok(Link::Served(Box::new(StreamOwned::new(connection, stream))))
            }
        }
    }

    /// A rank's side of a connection to the coordinator at `host`.
    pub fn dialed(
        stream: TcpStream,
        tls: Option<&Arc<ClientConfig>>,
        host: &str,
    ) -> std::io::Result<Self> {
        match tls {
            None => Self::plain(stream),
            Some(config) => {
                let name = ServerName::try_from(host.to_string()).map_err(|_| {
                    std::io::Error::other(format!("`{host}` is not a host name for TLS"))
                })?;
                let connection =
                    ClientConnection::new(config.clone(), name).map_err(std::io::Error::other)?;
                Ok(Link::Dialed(Box::new(StreamOwned::new(connection, stream))))
            }
        }
    }

    fn plain(stream: TcpStream) -> std::io::Result<Self> {
        Ok(Link::Plain {
            reader: BufReader::new(stream.try_clone()?),
            writer: BufWriter::new(stream),
        })
    }

    pub fn socket(&self) -> &TcpStream {
        match self {
            Link::Plain { writer, .. } => writer.get_ref(),
            Link::Served(stream) => stream.get_ref(),
            Link::Dialed(stream) => stream.get_ref(),
        }
    }
}

impl Read for Link {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Link::Plain { reader, .. } => reader.read(buffer),
            Link::Served(stream) => stream.read(buffer),
            Link::Dialed(stream) => stream.read(buffer),
        }
    }
}

impl Write for Link {
    fn write(&mut self, buffer: &[u8]) -> std::io::Result<usize> {
        match self {
            Link::Plain { writer, .. } => writer.write(buffer),
            Link::Served(stream) => stream.write(buffer),
            Link::Dialed(stream) => stream.write(buffer),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Link::Plain { writer, .. } => writer.flush(),
            Link::Served(stream) => stream.flush(),
            Link::Dialed(stream) => stream.flush(),
        }
    }
}

/// TCP keepalive on a coordinator connection, so a peer whose host vanished is noticed by the
/// kernel rather than only by the watchdog.
pub fn keep_alive(stream: &TcpStream) {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(30))
        .with_interval(std::time::Duration::from_secs(10));
    // Best effort: without keepalive the watchdog still bounds every wait.
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive);
    let _ = stream.set_nodelay(true);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_need_the_token_and_the_same_parts() {
        let token = Token::from_text("0123456789abcdef-secret");
        let mac = token.sign(&[b"nonce", b"rank 1"]);
        assert!(token.verifies(&[b"nonce", b"rank 1"], &mac));
        assert!(!token.verifies(&[b"nonce", b"rank 2"], &mac));
        assert!(!token.verifies(&[b"nonc", b"erank 1"], &mac));
        let other = Token::from_text("0123456789abcdef-other");
        assert!(!other.verifies(&[b"nonce", b"rank 1"], &mac));
        assert!(!token.verifies(&[b"nonce", b"rank 1"], &[]));
        assert_ne!(nonce().expect("random"), nonce().expect("random"));
    }

    #[test]
    fn short_tokens_are_refused_like_the_pipeline_s() {
        let dir = std::env::temp_dir().join(format!("flightlm-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("token");
        std::fs::write(&path, "short\n").expect("writes");
        let error = Token::read(&path).err().expect("too short");
        assert!(error.to_string().contains("shorter than 16"), "{error}");
        std::fs::write(&path, "  0123456789abcdef \n").expect("writes");
        let token = Token::read(&path).expect("long enough");
        let mac = token.sign(&[b"x"]);
        assert!(Token::from_text("0123456789abcdef").verifies(&[b"x"], &mac));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
