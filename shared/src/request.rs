//! The stream request: what a consumer asks a pipeline for, sent as the Flight `Ticket` bytes.
//!
//! The ticket is UTF-8 JSON so that any language can build it by hand, e.g. from pyarrow:
//! `flight.Ticket(json.dumps({"version": 2, "split": "train", "seq_len": 128, "batch_size": 32}))`.
//! Unknown fields are refused rather than ignored, so a consumer never believes the server honoured
//! an option it does not know.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::cursor::Cursor;

/// The contract version this build speaks. Bumped on any incompatible change.
pub const CONTRACT_VERSION: u32 = 2;

/// Which split of the corpus a stream reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Every document not chosen for `valid`; repeats epoch after epoch unless bounded.
    Train,
    /// A fixed fraction of documents chosen by hash; always a finite stream.
    Valid,
}

impl std::str::FromStr for Split {
    type Err = RequestError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "train" => Ok(Split::Train),
            "valid" => Ok(Split::Valid),
            other => Err(RequestError::Invalid(format!(
                "unknown split `{other}` (expected `train` or `valid`)"
            ))),
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Split::Train => "train",
            Split::Valid => "valid",
        })
    }
}

/// A request for a stream of token blocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamRequest {
    /// Must equal [`CONTRACT_VERSION`].
    pub version: u32,
    pub split: Split,
    /// Tokens per block (row). Blocks are always full: no padding.
    pub seq_len: usize,
    /// Blocks per record batch sent on the wire.
    pub batch_size: usize,
    /// Number of passes over the split; `None` means train repeats until the client stops.
    /// `valid` is always a single pass.
    #[serde(default)]
    pub epochs: Option<u64>,
    /// Which slice of the global block sequence to send: blocks whose `block_seq` is
    /// `index` modulo `count`. The global order does not depend on `count`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
    /// Continue after the block this cursor was taken from, instead of from the start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<Cursor>,
    /// Adds the `document_starts` column: where each block's documents begin.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub document_starts: bool,
    /// This stream's own mixture weights by source name, instead of the pipeline's: `set-weight`
    /// no longer moves it. With a cursor they apply from the first chunk after the cursor's (the
    /// cursor's chunk is drawn again with the weights it was drawn with); without weights a
    /// resumed stream keeps the ones its cursor carries. Sources not named keep the pipeline's
    /// weight at the time the stream first draws from them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<BTreeMap<String, f64>>,
    /// With `weights`: they apply from the first chunk that starts at or after this block
    /// sequence number; chunks before it keep the weights the cursor carries. A trainer that
    /// changes its weights names a boundary some blocks ahead, so a stream opened beside the one
    /// it reads gives the same blocks until there and it can change streams without waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_from: Option<u64>,
    /// Names the run this stream belongs to, for `stream-weights` updates of its weights while it
    /// runs (every stream of the run on this pipeline follows them). Needs `weights`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// With `run`: the stream draws no chunk starting at or after this block sequence number
    /// until a `stream-weights` update moves it on, so an update naming a boundary at or after it
    /// always finds the chunks from there not drawn yet and changes the open stream in place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_until: Option<u64>,
}

/// The body of a `stream-weights` action: a change of the weights of a run's open streams,
/// scheduled ahead of what they drew (docs/protocol.md, *Weights of one stream*).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamWeights {
    /// The `run` the streams were opened with.
    pub run: String,
    /// New weights, from the first chunk starting at or after `from`; `None` only moves `until`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<BTreeMap<String, f64>>,
    #[serde(default)]
    pub from: u64,
    /// The streams may draw chunks starting before this block from now on.
    pub until: u64,
}

impl StreamWeights {
    pub fn validate(&self) -> Result<(), String> {
        if self.run.is_empty() {
            return Err("stream-weights names no run".into());
        }
        if let Some(weights) = &self.weights {
            check_weights(weights)?;
            if self.until < self.from {
                return Err(format!(
                    "until {} comes before the weights' boundary {}",
                    self.until, self.from
                ));
            }
        }
        Ok(())
    }
}

/// One of `count` disjoint slices of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Shard {
    pub fn keeps(&self, block_seq: u64) -> bool {
        block_seq % self.count == self.index
    }
}

/// Largest accepted values: beyond these a request is a mistake, not a workload.
pub const MAX_SEQ_LEN: usize = 65_536;
pub const MAX_BATCH_SIZE: usize = 65_536;

#[derive(Debug, Error)]
pub enum RequestError {
    #[error("stream request is not valid JSON: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("invalid stream request: {0}")]
    Invalid(String),
}

impl StreamRequest {
    pub fn new(split: Split, seq_len: usize, batch_size: usize) -> Self {
        StreamRequest {
            version: CONTRACT_VERSION,
            split,
            seq_len,
            batch_size,
            epochs: None,
            shard: None,
            cursor: None,
            document_starts: false,
            weights: None,
            weights_from: None,
            run: None,
            weights_until: None,
        }
    }

    /// The stream follows the `stream-weights` updates of `run`, drawing no chunk from `until`
    /// on before one moves it.
    pub fn with_run(mut self, run: Option<String>, until: Option<u64>) -> Self {
        self.run = run;
        self.weights_until = until;
        self
    }

    /// The request's weights apply from the first chunk starting at block `block_seq` or later.
    pub fn with_weights_from(mut self, block_seq: Option<u64>) -> Self {
        self.weights_from = block_seq;
        self
    }

    pub fn with_weights(mut self, weights: Option<BTreeMap<String, f64>>) -> Self {
        self.weights = weights;
        self
    }

    pub fn with_shard(mut self, index: u64, count: u64) -> Self {
        self.shard = Some(Shard { index, count });
        self
    }

    pub fn with_cursor(mut self, cursor: Option<Cursor>) -> Self {
        self.cursor = cursor;
        self
    }

    pub fn with_epochs(mut self, epochs: Option<u64>) -> Self {
        self.epochs = epochs;
        self
    }

    pub fn with_document_starts(mut self, document_starts: bool) -> Self {
        self.document_starts = document_starts;
        self
    }

    /// The bytes of the Flight ticket.
    pub fn to_ticket_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a StreamRequest always serializes")
    }

    /// Parses and validates ticket bytes.
    pub fn from_ticket_bytes(bytes: &[u8]) -> Result<Self, RequestError> {
        let request: StreamRequest = serde_json::from_slice(bytes)?;
        request.validate()?;
        Ok(request)
    }

    pub fn validate(&self) -> Result<(), RequestError> {
        if self.version != CONTRACT_VERSION {
            return Err(RequestError::Invalid(format!(
                "contract version {} is not supported (this server speaks {CONTRACT_VERSION})",
                self.version
            )));
        }
        if self.seq_len < 2 || self.seq_len > MAX_SEQ_LEN {
            return Err(RequestError::Invalid(format!(
                "seq_len {} is out of range 2..={MAX_SEQ_LEN}",
                self.seq_len
            )));
        }
        if self.batch_size == 0 || self.batch_size > MAX_BATCH_SIZE {
            return Err(RequestError::Invalid(format!(
                "batch_size {} is out of range 1..={MAX_BATCH_SIZE}",
                self.batch_size
            )));
        }
        if let Some(shard) = self.shard {
            if shard.count == 0 || shard.index >= shard.count {
                return Err(RequestError::Invalid(format!(
                    "shard index {} is not below shard count {}",
                    shard.index, shard.count
                )));
            }
        }
        if self.epochs == Some(0) {
            return Err(RequestError::Invalid("epochs must be at least 1".into()));
        }
        if let Some(weights) = &self.weights {
            check_weights(weights).map_err(RequestError::Invalid)?;
        }
        if self.weights_from.is_some() && self.weights.is_none() {
            return Err(RequestError::Invalid(
                "weights_from needs weights to apply from there".into(),
            ));
        }
        if self.run.is_some() && self.weights.is_none() {
            return Err(RequestError::Invalid(
                "run needs weights: a run's updates change the stream's own weights".into(),
            ));
        }
        if self.weights_until.is_some() && self.run.is_none() {
            return Err(RequestError::Invalid(
                "weights_until needs a run whose updates move it".into(),
            ));
        }
        Ok(())
    }

    /// How many passes this request reads: valid is always one.
    pub fn epoch_limit(&self) -> Option<u64> {
        match self.split {
            Split::Valid => Some(1),
            Split::Train => self.epochs,
        }
    }
}

/// Checks a stream's weights: each finite and >= 0, at least one positive.
pub fn check_weights(weights: &BTreeMap<String, f64>) -> Result<(), String> {
    for (source, weight) in weights {
        if !weight.is_finite() || *weight < 0.0 {
            return Err(format!(
                "weight {weight} of source `{source}` must be a finite number >= 0"
            ));
        }
    }
    if !weights.is_empty() && weights.values().all(|weight| *weight == 0.0) {
        return Err("the stream's weights are all 0".into());
    }
    Ok(())
}

/// Parses `NAME=WEIGHT,NAME=WEIGHT` (command-line form of a stream's weights).
pub fn parse_weights(text: &str) -> Result<BTreeMap<String, f64>, String> {
    let mut weights = BTreeMap::new();
    for pair in text.split(',').filter(|pair| !pair.trim().is_empty()) {
        let (name, weight) = pair
            .split_once('=')
            .ok_or_else(|| format!("`{pair}` is not NAME=WEIGHT"))?;
        let weight: f64 = weight
            .trim()
            .parse()
            .map_err(|_| format!("`{weight}` (the weight of `{name}`) is not a number"))?;
        weights.insert(name.trim().to_string(), weight);
    }
    check_weights(&weights)?;
    Ok(weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticket_round_trip() {
        let request = StreamRequest::new(Split::Valid, 128, 16).with_epochs(Some(3));
        let parsed = StreamRequest::from_ticket_bytes(&request.to_ticket_bytes()).unwrap();
        assert_eq!(parsed, request);
        assert_eq!(parsed.epoch_limit(), Some(1));
    }

    #[test]
    fn hand_written_json_is_accepted() {
        let parsed = StreamRequest::from_ticket_bytes(
            br#"{"version":2,"split":"train","seq_len":64,"batch_size":8}"#,
        )
        .unwrap();
        assert_eq!(parsed.epochs, None);
        assert_eq!(parsed.epoch_limit(), None);
        assert_eq!(parsed.weights, None);
        let weighted = StreamRequest::from_ticket_bytes(
            br#"{"version":2,"split":"train","seq_len":64,"batch_size":8,"weights":{"a":0.25,"b":3}}"#,
        )
        .unwrap();
        assert_eq!(
            weighted.weights,
            Some(parse_weights("a=0.25, b=3").unwrap())
        );
        assert!(!String::from_utf8(request_bytes_without_weights())
            .unwrap()
            .contains("weights"));
        assert!(parse_weights("a=x").unwrap_err().contains("not a number"));
    }

    fn request_bytes_without_weights() -> Vec<u8> {
        StreamRequest::new(Split::Train, 8, 2).to_ticket_bytes()
    }

    #[test]
    fn bad_requests_are_refused_with_reasons() {
        let cases: [(&[u8], &str); 7] = [
            (
                br#"{"version":2,"split":"train","seq_len":64,"batch_size":8,"weights":{"a":-1}}"#,
                "weight -1 of source `a`",
            ),
            (
                br#"{"version":2,"split":"train","seq_len":64,"batch_size":8,"weights":{"a":0}}"#,
                "all 0",
            ),
            (b"not json", "not valid JSON"),
            (
                br#"{"version":9,"split":"train","seq_len":64,"batch_size":8}"#,
                "version 9",
            ),
            (
                br#"{"version":2,"split":"train","seq_len":1,"batch_size":8}"#,
                "seq_len 1",
            ),
            (
                br#"{"version":2,"split":"test","seq_len":64,"batch_size":8}"#,
                "not valid JSON",
            ),
            (
                br#"{"version":2,"split":"train","seq_len":64,"batch_size":8,"shuffle":true}"#,
                "unknown field",
            ),
        ];
        for (bytes, expected) in cases {
            let message = StreamRequest::from_ticket_bytes(bytes)
                .unwrap_err()
                .to_string();
            assert!(
                message.contains(expected),
                "{message} should mention {expected}"
            );
        }
    }
}
