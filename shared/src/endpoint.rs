//! Where a pipeline is and how a client proves itself to it: the URL, the CA that signs an
//! `https://` pipeline's certificate, and the bearer token sent with every call.
//!
//! Clients name the CA with `--tls-ca` (or `FLIGHTLM_TLS_CA_FILE`) and the token with
//! `FLIGHTLM_AUTH_TOKEN_FILE`, so a token never appears on a command line or in `ps`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use arrow_flight::flight_service_client::FlightServiceClient;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::client::{error_chain, ClientError, MAX_MESSAGE_BYTES};

/// The environment variable naming a file that holds the pipeline's token, for clients of a
/// pipeline started with `--auth-token-file`.
pub const AUTH_TOKEN_FILE_ENV: &str = "FLIGHTLM_AUTH_TOKEN_FILE";

/// The environment variable naming a PEM file with the CA certificate of an `https://` pipeline
/// (the default of the clients' `--tls-ca`).
pub const TLS_CA_FILE_ENV: &str = "FLIGHTLM_TLS_CA_FILE";

/// Overrides the HTTP/2 stream window (bytes a pipeline may send ahead of the reader).
pub const STREAM_WINDOW_ENV: &str = "FLIGHTLM_STREAM_WINDOW_BYTES";

/// A pipeline address with the credentials to use it.
#[derive(Clone, Debug)]
pub struct PipelineEndpoint {
    pub url: String,
    /// PEM CA certificate that must sign an `https://` pipeline's certificate; without one the
    /// system's roots are trusted.
    pub tls_ca: Option<PathBuf>,
    /// File holding the bearer token.
    pub token_file: Option<PathBuf>,
}

impl PipelineEndpoint {
    /// `url` with the CA and token files named by the environment, if any.
    pub fn new(url: impl Into<String>) -> Self {
        PipelineEndpoint {
            url: url.into(),
            tls_ca: std::env::var_os(TLS_CA_FILE_ENV).map(PathBuf::from),
            token_file: std::env::var_os(AUTH_TOKEN_FILE_ENV).map(PathBuf::from),
        }
    }

    /// Uses `ca` (when given) instead of the environment's CA file.
    pub fn with_tls_ca(mut self, ca: Option<PathBuf>) -> Self {
        if ca.is_some() {
            self.tls_ca = ca;
        }
        self
    }

    fn is_tls(&self) -> bool {
        self.url.starts_with("https://")
    }

    /// Connects, failing fast with a readable reason when nothing listens there or the TLS
    /// setup does not match the URL.
    pub async fn connect(&self) -> Result<FlightServiceClient<Channel>, ClientError> {
        let url = &self.url;
        let invalid = |reason: String| ClientError::InvalidUrl {
            url: url.clone(),
            reason,
        };
        let mut endpoint =
            Endpoint::from_shared(url.clone()).map_err(|error| invalid(error_chain(&error)))?;
        if self.is_tls() {
            endpoint = endpoint
                .tls_config(self.tls_config()?)
                .map_err(|error| invalid(error_chain(&error)))?;
        } else if let Some(ca) = &self.tls_ca {
            return Err(invalid(format!(
                "a TLS CA ({}) is set but the URL is not https://",
                ca.display()
            )));
        }
        let window = stream_window_bytes();
        let channel = endpoint
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .initial_connection_window_size(Some(window.saturating_mul(2)))
            .initial_stream_window_size(Some(window))
            .connect()
            .await
            .map_err(|error| {
                let reason = error_chain(&error);
                // rustls: "invalid peer certificate: …". Waiting will not make it trusted.
                if reason.contains("invalid peer certificate") {
                    ClientError::Untrusted {
                        url: url.clone(),
                        reason,
                    }
                } else {
                    ClientError::Unreachable {
                        url: url.clone(),
                        reason,
                    }
                }
            })?;
        Ok(FlightServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES))
    }

    fn tls_config(&self) -> Result<ClientTlsConfig, ClientError> {
        let config = ClientTlsConfig::new();
        match &self.tls_ca {
            Some(path) => Ok(config.ca_certificate(Certificate::from_pem(read_file(path)?))),
            None => Ok(config.with_native_roots()),
        }
    }

    /// Wraps a request with `authorization: Bearer <token>` when a token file is configured.
    pub fn authorized<T>(&self, message: T) -> Result<tonic::Request<T>, ClientError> {
        let mut request = tonic::Request::new(message);
        if let Some(path) = &self.token_file {
            let token = String::from_utf8(read_file(path)?).map_err(|_| {
                ClientError::Refused(format!("the token file {} is not UTF-8", path.display()))
            })?;
            let value = format!("Bearer {}", token.trim()).parse().map_err(|_| {
                ClientError::Refused("the token is not a valid header value".into())
            })?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

impl From<&str> for PipelineEndpoint {
    fn from(url: &str) -> Self {
        PipelineEndpoint::new(url)
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|error| ClientError::Credentials {
        path: path.to_path_buf(),
        reason: error.to_string(),
    })
}

/// 8 MiB by default: enough to keep a high-latency link busy. Smaller values bound how much of a
/// stream is in flight (and so how far a reader has to resume after a connection breaks).
fn stream_window_bytes() -> u32 {
    std::env::var(STREAM_WINDOW_ENV)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(8 * 1024 * 1024)
}
