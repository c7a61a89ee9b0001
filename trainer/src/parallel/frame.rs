//! The coordinator's wire format: every message between a rank and node 0's coordinator is one
//! frame, an 18-byte header (kind, purpose, step, payload length) and the payload.
//!
//! The step and purpose travel with every round, so two ranks that make different collective
//! calls (one saving a checkpoint while the other exchanges its step report) are told apart by
//! what they are doing, not by the bytes they send. A frame's length is checked against what
//! its place in the conversation can carry before anything is allocated: a header announcing
//! 16 GiB costs the reader nothing but the header.

use std::fmt;
use std::io::{Read, Write};

/// What a frame is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// Rank → coordinator: element-wise sum of f32 values.
    Sum = 1,
    /// Rank → coordinator: every rank's bytes, in rank order.
    Gather = 2,
    /// Coordinator → rank, first: a random nonce the rank's hello must sign.
    Challenge = 10,
    /// Rank → coordinator: who it is, and the proof that it holds the token.
    Hello = 11,
    /// Coordinator → rank: admitted, with the coordinator's own proof.
    Welcome = 12,
    /// Coordinator → every rank: the whole world has joined, the rounds begin.
    Start = 13,
    /// Rank → coordinator: this rank failed, with why; the coordinator tells every other rank.
    Failure = 254,
    /// Coordinator → rank: the run (or this connection) ends, with why.
    Error = 255,
}

impl FrameKind {
    fn from_byte(byte: u8) -> Option<Self> {
        use FrameKind::*;
        [
            Sum, Gather, Challenge, Hello, Welcome, Start, Failure, Error,
        ]
        .into_iter()
        .find(|kind| *kind as u8 == byte)
    }
}

/// Why the ranks meet in a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Purpose {
    /// Before the first step: settings, start step, cursor and parameters compared.
    Agreement = 1,
    /// Every step: token counts, losses, blocks, cursor, stop requests, failures.
    StepReport = 2,
    /// Every step: the gradients summed.
    Gradients = 3,
    /// At a checkpoint: the parameter hashes compared.
    ParameterCheck = 4,
    /// Rounds outside a training run (the transports' own tests).
    Other = 5,
}

impl Purpose {
    fn from_byte(byte: u8) -> Option<Self> {
        use Purpose::*;
        [Agreement, StepReport, Gradients, ParameterCheck, Other]
            .into_iter()
            .find(|purpose| *purpose as u8 == byte)
    }

    /// The round as the watchdog and error messages name it.
    pub fn describe(self) -> &'static str {
        match self {
            Purpose::Agreement => "the agreement before the first step",
            Purpose::StepReport => "the step exchange",
            Purpose::Gradients => "the gradient all-reduce",
            Purpose::ParameterCheck => "the parameter check",
            Purpose::Other => "a round",
        }
    }
}

/// Which collective call a rank is making: its purpose at a step (0-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Round {
    pub step: usize,
    pub purpose: Purpose,
}

impl Round {
    pub fn new(step: usize, purpose: Purpose) -> Self {
        Round { step, purpose }
    }
}

impl fmt::Display for Round {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            formatter,
            "{} of step {}",
            self.purpose.describe(),
            self.step + 1
        )
    }
}

/// A frame's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: FrameKind,
    /// `None` outside rounds (the handshake, failures, errors).
    pub round: Option<Round>,
    pub length: u64,
}

pub const HEADER_BYTES: usize = 18;

/// Largest frame before a connection has proven it holds the token (a hello, an error).
pub const HANDSHAKE_FRAME_BYTES: u64 = 64 << 10;

/// Why a frame could not be read.
#[derive(Debug)]
pub enum FrameError {
    Io(std::io::Error),
    /// The header is not one of ours.
    Malformed(String),
    /// The header announces more than the frame's place allows.
    TooLong {
        length: u64,
        limit: u64,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Io(error) => write!(formatter, "{error}"),
            FrameError::Malformed(why) => write!(formatter, "a malformed frame ({why})"),
            FrameError::TooLong { length, limit } => write!(
                formatter,
                "a frame of {length} bytes, more than the {limit} bytes it may carry"
            ),
        }
    }
}

impl From<std::io::Error> for FrameError {
    fn from(error: std::io::Error) -> Self {
        FrameError::Io(error)
    }
}

pub fn write_frame(
    stream: &mut impl Write,
    kind: FrameKind,
    round: Option<Round>,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut header = [0u8; HEADER_BYTES];
    header[0] = kind as u8;
    if let Some(round) = round {
        header[1] = round.purpose as u8;
        header[2..10].copy_from_slice(&(round.step as u64).to_le_bytes());
    }
    header[10..].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    stream.write_all(&header)?;
    stream.write_all(payload)?;
    stream.flush()
}

pub fn read_header(stream: &mut impl Read) -> Result<Header, FrameError> {
    let mut bytes = [0u8; HEADER_BYTES];
    stream.read_exact(&mut bytes)?;
    let kind = FrameKind::from_byte(bytes[0])
        .ok_or_else(|| FrameError::Malformed(format!("kind {}", bytes[0])))?;
    let step = u64::from_le_bytes(bytes[2..10].try_into().expect("8 bytes"));
    let round = match bytes[1] {
        0 => None,
        byte => {
            let purpose = Purpose::from_byte(byte)
                .ok_or_else(|| FrameError::Malformed(format!("purpose {byte}")))?;
            let step =
                usize::try_from(step).map_err(|_| FrameError::Malformed(format!("step {step}")))?;
            Some(Round { step, purpose })
        }
    };
    let length = u64::from_le_bytes(bytes[10..].try_into().expect("8 bytes"));
    Ok(Header {
        kind,
        round,
        length,
    })
}

/// The payload `header` announces, refused unread when it is longer than `limit`.
pub fn read_payload(
    stream: &mut impl Read,
    header: &Header,
    limit: u64,
) -> Result<Vec<u8>, FrameError> {
    if header.length > limit {
        return Err(FrameError::TooLong {
            length: header.length,
            limit,
        });
    }
    let mut payload = vec![0u8; header.length as usize];
    stream.read_exact(&mut payload)?;
    Ok(payload)
}

/// A whole frame of at most `limit` payload bytes.
pub fn read_frame(stream: &mut impl Read, limit: u64) -> Result<(Header, Vec<u8>), FrameError> {
    let header = read_header(stream)?;
    let payload = read_payload(stream, &header, limit)?;
    Ok((header, payload))
}

pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect()
}

pub fn f32_values(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|chunk| f32::from_le_bytes(chunk.try_into().expect("4 bytes")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_with_their_step_and_purpose() {
        let mut wire = Vec::new();
        let round = Round::new(41, Purpose::ParameterCheck);
        write_frame(&mut wire, FrameKind::Gather, Some(round), b"hash").expect("writes");
        write_frame(&mut wire, FrameKind::Hello, None, b"").expect("writes");
        let mut reader = wire.as_slice();
        let (header, payload) = read_frame(&mut reader, 16).expect("reads");
        assert_eq!(
            (header.kind, header.round, payload.as_slice()),
            (FrameKind::Gather, Some(round), &b"hash"[..])
        );
        assert_eq!(round.to_string(), "the parameter check of step 42");
        let (header, _) = read_frame(&mut reader, 16).expect("reads");
        assert_eq!((header.kind, header.round), (FrameKind::Hello, None));
    }

    #[test]
    fn a_long_announcement_is_refused_before_anything_is_allocated() {
        let mut wire = vec![FrameKind::Hello as u8, 0];
        wire.extend_from_slice(&0u64.to_le_bytes());
        wire.extend_from_slice(&(16u64 << 30).to_le_bytes());
        let error = read_frame(&mut wire.as_slice(), HANDSHAKE_FRAME_BYTES).expect_err("refused");
        assert!(
            matches!(error, FrameError::TooLong { length, .. } if length == 16 << 30),
            "{error}"
        );
        let mut junk = vec![7u8; HEADER_BYTES];
        junk[1] = 0;
        let error = read_frame(&mut junk.as_slice(), 16).expect_err("not ours");
        assert!(error.to_string().contains("malformed"), "{error}");
    }
}
