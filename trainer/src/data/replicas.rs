//! Several pipeline processes serving the same corpus, as one source: `--pipeline URL1,URL2,…`.
//!
//! Every pipeline process serving a corpus serves the same blocks from any cursor (the cursor is
//! the whole state of a stream), so when the replica a stream reads from goes away the stream
//! continues on the next replica from its cursor at once, without waiting for the first to come
//! back. A replica is used only if it serves the run's corpus: before a stream opens on it, its
//! `GetFlightInfo` description must name the fingerprint the run reads (the resume cursor's, or
//! the first replica's); one that serves another corpus is refused, named, and not asked again.
//! Replicas are tried in the order given; [`return_to_first_replica`] (SIGUSR1 in the trainer)
//! brings every stream back to the first one at its next batch, e.g. once it has been
//! restarted.

use std::sync::atomic::{AtomicU64, Ordering};

use arrow_flight::FlightDescriptor;
use flightlm_shared::client::{ClientError, PipelineEndpoint};
use flightlm_shared::StreamRequest;

/// Bumped by each request to return to the first replica.
static RETURN_TO_FIRST: AtomicU64 = AtomicU64::new(0);

/// Asks every stream of this process to continue on the first replica at its next batch.
/// Only touches an atomic: safe in a signal handler.
pub fn return_to_first_replica() {
    RETURN_TO_FIRST.fetch_add(1, Ordering::SeqCst);
}

/// The replicas `endpoint`'s URL lists (comma-separated), each with its CA and token.
pub fn replica_endpoints(endpoint: &PipelineEndpoint) -> Vec<PipelineEndpoint> {
    endpoint
        .url
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(|url| PipelineEndpoint {
            url: url.to_string(),
            ..endpoint.clone()
        })
        .collect()
}

/// The replicas of one stream, and which one it reads from.
pub struct Replicas {
    endpoints: Vec<PipelineEndpoint>,
    current: usize,
    /// The corpus fingerprint the stream reads, once known.
    fingerprint: Option<String>,
    /// Why a replica was refused (it serves another corpus).
    refused: Vec<Option<String>>,
    /// Replicas tried since the stream last delivered a batch.
    tried: usize,
    seen_return: u64,
}

impl Replicas {
    /// The replicas of `endpoint`, for a stream of the corpus `fingerprint` when already known
    /// (from a resume cursor).
    pub fn new(endpoint: &PipelineEndpoint, fingerprint: Option<String>) -> Self {
        let endpoints = replica_endpoints(endpoint);
        let refused = vec![None; endpoints.len()];
        Replicas {
            endpoints,
            current: 0,
            fingerprint,
            refused,
            tried: 0,
            seen_return: RETURN_TO_FIRST.load(Ordering::SeqCst),
        }
    }

    pub fn current(&self) -> &PipelineEndpoint {
        &self.endpoints[self.current]
    }

    pub fn several(&self) -> bool {
        self.endpoints.len() > 1
    }

    /// `replica 2 of 3 (URL)`.
    pub fn describe(&self) -> String {
        format!(
            "replica {} of {} ({})",
            self.current + 1,
            self.endpoints.len(),
            self.current().url
        )
    }

    /// Checks that the current replica serves the stream's corpus (with several replicas only:
    /// one pipeline refuses a cursor of another corpus itself). The first answer fixes the
    /// fingerprint when no cursor did.
    pub async fn check(&mut self, request: &StreamRequest) -> Result<(), ClientError> {
        if !self.several() {
            return Ok(());
        }
        let served = fingerprint_of(self.current(), request).await?;
        match &self.fingerprint {
            None => self.fingerprint = Some(served),
            Some(expected) if *expected == served => {}
            Some(expected) => {
                let why = format!(
                    "pipeline {} serves corpus fingerprint {served}, this run reads {expected}: \
                     refused as a replica",
                    self.current().url
                );
                self.refused[self.current] = Some(why.clone());
                return Err(ClientError::Refused(why));
            }
        }
        Ok(())
    }

    /// Whether the current replica was refused (it serves another corpus).
    pub fn current_refused(&self) -> bool {
        self.refused[self.current].is_some()
    }

    /// The stream delivered a batch from the current replica.
    pub fn delivered(&mut self) {
        self.tried = 0;
    }

    /// Moves to the next replica not refused. Returns false when every replica has been tried
    /// since the last batch (time to back off) or none is left.
    pub fn fail_over(&mut self) -> bool {
        self.tried += 1;
        let count = self.endpoints.len();
        for step in 1..=count {
            let next = (self.current + step) % count;
            if self.refused[next].is_none() {
                self.current = next;
                break;
            }
        }
        if self.tried >= self.usable() {
            self.tried = 0;
            return false;
        }
        true
    }

    fn usable(&self) -> usize {
        self.refused.iter().filter(|why| why.is_none()).count()
    }

    /// Whether every replica has been refused, and why.
    pub fn none_left(&self) -> Option<String> {
        (self.usable() == 0).then(|| {
            let reasons: Vec<&str> = self.refused.iter().flatten().map(String::as_str).collect();
            reasons.join("; ")
        })
    }

    /// Whether a return to the first replica was asked for since the last look, while the
    /// stream reads from another; the stream then moves there.
    pub fn asked_back(&mut self) -> bool {
        let asked = RETURN_TO_FIRST.load(Ordering::SeqCst);
        if asked == self.seen_return {
            return false;
        }
        self.seen_return = asked;
        if self.current == 0 || self.refused[0].is_some() {
            return false;
        }
        self.current = 0;
        self.tried = 0;
        true
    }
}

/// The corpus fingerprint `endpoint` serves for `request`'s split and block length.
async fn fingerprint_of(
    endpoint: &PipelineEndpoint,
    request: &StreamRequest,
) -> Result<String, ClientError> {
    let mut client = endpoint.connect().await?;
    let mut describe = request.clone();
    describe.cursor = None;
    let descriptor = FlightDescriptor::new_cmd(describe.to_ticket_bytes());
    let info = client
        .get_flight_info(endpoint.authorized(descriptor)?)
        .await
        .map_err(|status| {
            let message = format!("{:?}: {}", status.code(), status.message());
            match status.code() {
                tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
                    ClientError::Unavailable(message)
                }
                _ => ClientError::Refused(message),
            }
        })?
        .into_inner();
    let description: serde_json::Value = serde_json::from_slice(&info.app_metadata)
        .map_err(|error| ClientError::Refused(format!("its stream description: {error}")))?;
    description["fingerprint"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| ClientError::Refused("its stream description has no fingerprint".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_fail_over_in_order_and_come_back_when_asked() {
        let endpoint = PipelineEndpoint {
            url: "http://a:1, http://b:2,http://c:3".into(),
            tls_ca: None,
            token_file: Some("token".into()),
        };
        let endpoints = replica_endpoints(&endpoint);
        assert_eq!(endpoints.len(), 3);
        assert_eq!(endpoints[1].url, "http://b:2");
        assert_eq!(endpoints[2].token_file, endpoint.token_file);

        let mut replicas = Replicas::new(&endpoint, None);
        assert_eq!(replicas.describe(), "replica 1 of 3 (http://a:1)");
        assert!(replicas.fail_over(), "b next");
        assert!(replicas.fail_over(), "c next");
        assert!(!replicas.fail_over(), "all three tried: back off");
        assert_eq!(replicas.current().url, "http://a:1");
        assert!(replicas.fail_over());
        replicas.delivered();
        assert!(!replicas.asked_back(), "nobody asked");
        return_to_first_replica();
        assert!(replicas.asked_back());
        assert_eq!(replicas.current().url, "http://a:1");
        assert!(!replicas.asked_back(), "once per request");

        replicas.refused[1] = Some("b serves another corpus".into());
        assert!(replicas.fail_over());
        assert_eq!(replicas.current().url, "http://c:3", "b is skipped");
        assert!(replicas.none_left().is_none());
        replicas.refused = vec![Some("x".into()), Some("y".into()), Some("z".into())];
        assert_eq!(replicas.none_left().as_deref(), Some("x; y; z"));
    }
}
