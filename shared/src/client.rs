//! A reference Rust client: open a token-block stream and decode it batch by batch.
//!
//! Used by `flightlm-pipeline consume` and by the trainer; other languages follow
//! `docs/protocol.md` instead (see `scripts/read_stream.py`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::Ticket;
use futures::{StreamExt, TryStreamExt};
use thiserror::Error;
use tonic::transport::{Channel, Endpoint};

use crate::request::StreamRequest;
use crate::schema::{tokenizer_from_schema, SchemaError, TokenBlocks, TokenizerInfo};

/// Largest message the client accepts: well above one zstd batch of the largest sane request.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("invalid pipeline URL `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("cannot reach pipeline at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("pipeline refused the request: {0}")]
    Refused(String),
    #[error("stream from pipeline broke: {0}")]
    Stream(String),
    #[error(transparent)]
    Schema(#[from] SchemaError),
}

/// The whole `source()` chain of an error on one line: tonic's own message is only "transport error".
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// The environment variable naming a file that holds the pipeline's token, for clients of a
/// pipeline started with `--auth-token-file`.
pub const AUTH_TOKEN_FILE_ENV: &str = "FLIGHTLM_AUTH_TOKEN_FILE";

/// Wraps a request with `authorization: Bearer <token>` when a token file is configured.
fn authorized<T>(message: T) -> Result<tonic::Request<T>, ClientError> {
    let mut request = tonic::Request::new(message);
    if let Some(path) = std::env::var_os(AUTH_TOKEN_FILE_ENV) {
        let token = std::fs::read_to_string(&path).map_err(|error| {
            ClientError::Refused(format!(
                "cannot read the token file {} ({AUTH_TOKEN_FILE_ENV}): {error}",
                std::path::Path::new(&path).display()
            ))
        })?;
        let value = format!("Bearer {}", token.trim())
            .parse()
            .map_err(|_| ClientError::Refused("the token is not a valid header value".into()))?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(request)
}

/// Overrides the HTTP/2 stream window (bytes a pipeline may send ahead of the reader).
pub const STREAM_WINDOW_ENV: &str = "FLIGHTLM_STREAM_WINDOW_BYTES";

/// 8 MiB by default: enough to keep a high-latency link busy. Smaller values bound how much of a
/// stream is in flight (and so how far a reader has to resume after a connection breaks).
fn stream_window_bytes() -> u32 {
    std::env::var(STREAM_WINDOW_ENV)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(8 * 1024 * 1024)
}

/// Connects to a pipeline, failing fast with a readable reason when nothing listens there.
pub async fn connect(url: &str) -> Result<FlightServiceClient<Channel>, ClientError> {
    let endpoint =
        Endpoint::from_shared(url.to_string()).map_err(|error| ClientError::InvalidUrl {
            url: url.to_string(),
            reason: error_chain(&error),
        })?;
    let window = stream_window_bytes();
    let channel = endpoint
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        .initial_connection_window_size(Some(window.saturating_mul(2)))
        .initial_stream_window_size(Some(window))
        .connect()
        .await
        .map_err(|error| ClientError::Unreachable {
            url: url.to_string(),
            reason: error_chain(&error),
        })?;
    Ok(FlightServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES))
}

/// Runs a Flight action (`health`, `stats`) and returns the body of its first result.
pub async fn run_action(url: &str, name: &str) -> Result<Vec<u8>, ClientError> {
    run_action_with_body(url, name, Vec::new()).await
}

/// Runs a Flight action with a (JSON) body, e.g. `add-source`, and returns its first result.
pub async fn run_action_with_body(
    url: &str,
    name: &str,
    body: Vec<u8>,
) -> Result<Vec<u8>, ClientError> {
    let mut client = connect(url).await?;
    let action = arrow_flight::Action {
        r#type: name.to_string(),
        body: body.into(),
    };
    let mut results = client
        .do_action(authorized(action)?)
        .await
        .map_err(refused)?
        .into_inner();
    match results.next().await {
        Some(Ok(result)) => Ok(result.body.to_vec()),
        Some(Err(status)) => Err(refused(status)),
        None => Err(ClientError::Stream(format!(
            "action `{name}` returned nothing"
        ))),
    }
}

/// An open stream of token blocks.
pub struct BlockStream {
    batches: FlightRecordBatchStream,
    tokenizer: Option<TokenizerInfo>,
    wire_bytes: Arc<AtomicU64>,
}

impl BlockStream {
    /// Sends `request` to the pipeline at `url` and returns the stream of its answer.
    pub async fn open(url: &str, request: &StreamRequest) -> Result<Self, ClientError> {
        let mut client = connect(url).await?;
        let ticket = Ticket::new(request.to_ticket_bytes());
        let response = client.do_get(authorized(ticket)?).await.map_err(refused)?;
        let wire_bytes = Arc::new(AtomicU64::new(0));
        let counter = wire_bytes.clone();
        let flight_data = response
            .into_inner()
            .inspect_ok(move |data| {
                let bytes = data.data_header.len() + data.data_body.len() + data.app_metadata.len();
                counter.fetch_add(bytes as u64, Ordering::Relaxed);
            })
            .map_err(|status| arrow_flight::error::FlightError::Tonic(Box::new(status)));
        Ok(BlockStream {
            batches: FlightRecordBatchStream::new_from_flight_data(flight_data),
            tokenizer: None,
            wire_bytes,
        })
    }

    /// Bytes of Flight messages (IPC headers and compressed bodies) received so far.
    pub fn wire_bytes(&self) -> u64 {
        self.wire_bytes.load(Ordering::Relaxed)
    }

    /// The tokenizer that produced the ids; known once the first batch has arrived.
    pub fn tokenizer(&self) -> Option<&TokenizerInfo> {
        self.tokenizer.as_ref()
    }

    /// The next batch, or `None` at the end of a finite stream.
    pub async fn next(&mut self) -> Option<Result<TokenBlocks, ClientError>> {
        let batch = match self.batches.next().await? {
            Ok(batch) => batch,
            Err(error) => return Some(Err(stream_error(error))),
        };
        if self.tokenizer.is_none() {
            match tokenizer_from_schema(batch.schema().as_ref()) {
                Ok(tokenizer) => self.tokenizer = Some(tokenizer),
                Err(error) => return Some(Err(error.into())),
            }
        }
        Some(TokenBlocks::from_record_batch(&batch).map_err(ClientError::from))
    }
}

/// A refusal with its gRPC code, e.g. `Unauthenticated: missing or wrong token`.
fn refused(status: tonic::Status) -> ClientError {
    ClientError::Refused(format!("{:?}: {}", status.code(), status.message()))
}

fn stream_error(error: arrow_flight::error::FlightError) -> ClientError {
    match error {
        arrow_flight::error::FlightError::Tonic(status) => {
            ClientError::Stream(status.message().to_string())
        }
        other => ClientError::Stream(error_chain(&other)),
    }
}
