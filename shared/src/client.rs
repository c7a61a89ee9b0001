//! A reference Rust client: open a token-block stream and decode it batch by batch.
//!
//! Used by `flightlm-pipeline consume` and by the trainer; other languages follow
//! `docs/protocol.md` instead (see `scripts/read_stream.py`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::Ticket;
use futures::{StreamExt, TryStreamExt};
use thiserror::Error;

pub use crate::endpoint::{
    PipelineEndpoint, AUTH_TOKEN_FILE_ENV, STREAM_WINDOW_ENV, TLS_CA_FILE_ENV,
};
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
    #[error("cannot trust the pipeline's certificate at {url}: {reason}")]
    Untrusted { url: String, reason: String },
    #[error("pipeline refused the request: {0}")]
    Refused(String),
    #[error("pipeline unavailable: {0}")]
    Unavailable(String),
    #[error("cannot read {path}: {reason}")]
    Credentials {
        path: std::path::PathBuf,
        reason: String,
    },
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

/// Runs a Flight action (`health`, `stats`) and returns the body of its first result.
pub async fn run_action(endpoint: &PipelineEndpoint, name: &str) -> Result<Vec<u8>, ClientError> {
    run_action_with_body(endpoint, name, Vec::new()).await
}

/// Runs a Flight action with a (JSON) body, e.g. `add-source`, and returns its first result.
pub async fn run_action_with_body(
    endpoint: &PipelineEndpoint,
    name: &str,
    body: Vec<u8>,
) -> Result<Vec<u8>, ClientError> {
    let mut client = endpoint.connect().await?;
    let action = arrow_flight::Action {
        r#type: name.to_string(),
        body: body.into(),
    };
    let mut results = client
        .do_action(endpoint.authorized(action)?)
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
    /// Sends `request` to the pipeline at `endpoint` and returns the stream of its answer.
    pub async fn open(
        endpoint: &PipelineEndpoint,
        request: &StreamRequest,
    ) -> Result<Self, ClientError> {
        let mut client = endpoint.connect().await?;
        let ticket = Ticket::new(request.to_ticket_bytes());
        let response = client
            .do_get(endpoint.authorized(ticket)?)
            .await
            .map_err(refused)?;
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

impl ClientError {
    /// Whether trying again later may succeed: the pipeline was down, going down or cut off,
    /// as opposed to refusing what was asked.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ClientError::Unreachable { .. } | ClientError::Unavailable(_) | ClientError::Stream(_)
        )
    }
}

/// A refusal with its gRPC code, e.g. `Unauthenticated: missing or wrong token`.
fn refused(status: tonic::Status) -> ClientError {
    let message = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        tonic::Code::Unavailable => ClientError::Unavailable(message),
        // The pipeline never answers Unknown: tonic reports a connection that broke during the
        // call (a replica killed as it answered) as `Unknown: transport error`.
        tonic::Code::Unknown => ClientError::Stream(message),
        _ => ClientError::Refused(message),
    }
}

/// A stream that broke mid-way: the pipeline ending it for good (its corpus failed, or it refused
/// the client) is a refusal; a shutdown is `Unavailable`; anything else is the connection.
fn stream_error(error: arrow_flight::error::FlightError) -> ClientError {
    use tonic::Code;
    match error {
        arrow_flight::error::FlightError::Tonic(status) => match status.code() {
            Code::FailedPrecondition
            | Code::InvalidArgument
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::DataLoss => refused(*status),
            Code::Unavailable => ClientError::Unavailable(status.message().to_string()),
            _ => ClientError::Stream(status.message().to_string()),
        },
        other => ClientError::Stream(error_chain(&other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_cut_by_the_connection_is_retried_and_a_refusal_is_not() {
        assert!(refused(tonic::Status::unknown("transport error")).is_retryable());
        assert!(refused(tonic::Status::unavailable("shutting down")).is_retryable());
        assert!(!refused(tonic::Status::unauthenticated("wrong token")).is_retryable());
        assert!(!refused(tonic::Status::invalid_argument("seq_len 0")).is_retryable());
    }
}
