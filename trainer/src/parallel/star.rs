//! A rank's connection to node 0's coordinator (see [`crate::parallel::coordinator`]): every
//! collective call of a multi-node run is one round through it, over TCP (TLS when configured),
//! through host memory. Per step and rank, the gradients go up once and come back once.
//!
//! A rank that loses the coordinator fails with an error saying so; an error the coordinator
//! sends (another rank failed, left, or disagreed) becomes this rank's error, naming that rank.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::parallel::access::{Access, Link};
use crate::parallel::coordinator::GATHER_FRAME_BYTES;
use crate::parallel::frame::{
    f32_bytes, f32_values, read_header, read_payload, write_frame, FrameKind, Round,
    HANDSHAKE_FRAME_BYTES,
};
use crate::parallel::handshake::join;
use crate::parallel::rounds::RoundError;

/// A rank's connection to the coordinator.
pub struct StarClient {
    rank: usize,
    world: usize,
    link: Link,
}

/// Where and how to reach the coordinator.
pub struct Dial<'a> {
    /// `HOST:PORT`, as configured.
    pub address: &'a str,
    pub access: &'a Access,
    /// How long to wait for node 0's coordinator to answer, and then for every rank to join.
    pub join_timeout: Duration,
}

impl StarClient {
    /// Connects rank `rank` of `world`, retrying until the join timeout (node 0 may start after
    /// the others), and returns once every rank has joined.
    pub fn connect(dial: &Dial<'_>, rank: usize, world: usize) -> Result<Self, RoundError> {
        let Dial {
            address,
            access,
            join_timeout,
        } = *dial;
        let started = Instant::now();
        let stream = loop {
            let addresses = address.to_socket_addrs().map_err(|error| {
                RoundError::of(rank, format!("coordinator `{address}`: {error}"))
            })?;
            let connected = addresses.into_iter().find_map(|socket| {
                TcpStream::connect_timeout(&socket, Duration::from_secs(5)).ok()
            });
            if let Some(stream) = connected {
                break stream;
            }
            if started.elapsed() > join_timeout {
                return Err(RoundError::of(
                    0,
                    format!(
                        "node 0's coordinator at {address} never answered within {} s \
                         (join_timeout_s): node 0 did not start",
                        join_timeout.as_secs()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
        let host = host.trim_start_matches('[').trim_end_matches(']');
        // The coordinator answers by its own join deadline; a little slack for the clocks.
        let patience = join_timeout + Duration::from_secs(10);
        let link = join(stream, (address, host), access, (rank, world), patience)?;
        Ok(StarClient { rank, world, link })
    }

    /// One round: sends this rank's contribution, returns the coordinator's answer.
    fn round(
        &mut self,
        round: Round,
        kind: FrameKind,
        payload: &[u8],
    ) -> Result<Vec<u8>, RoundError> {
        let lost = |_| RoundError::of(self.rank, "lost the coordinator (node 0 stopped)");
        write_frame(&mut self.link, kind, Some(round), payload).map_err(lost)?;
        let header = read_header(&mut self.link)
            .map_err(|_| RoundError::of(self.rank, "lost the coordinator (node 0 stopped)"))?;
        let limit = match header.kind {
            FrameKind::Sum => payload.len() as u64,
            FrameKind::Gather => (GATHER_FRAME_BYTES + 8) * self.world as u64,
            _ => HANDSHAKE_FRAME_BYTES,
        };
        let bytes = read_payload(&mut self.link, &header, limit)
            .map_err(|error| RoundError::of(self.rank, format!("from the coordinator: {error}")))?;
        match header.kind {
            FrameKind::Error => Err(RoundError::from_line(&String::from_utf8_lossy(&bytes))),
            answer if answer == kind && header.round == Some(round) => Ok(bytes),
            answer => Err(RoundError::of(
                self.rank,
                format!("the coordinator answered {round} with a {answer:?} frame"),
            )),
        }
    }

    /// The element-wise sum of every rank's `values`, in rank order.
    pub fn sum(&mut self, round: Round, values: &[f32]) -> Result<Vec<f32>, RoundError> {
        Ok(f32_values(&self.round(
            round,
            FrameKind::Sum,
            &f32_bytes(values),
        )?))
    }

    /// Every rank's `payload`, in rank order.
    pub fn gather(&mut self, round: Round, payload: &[u8]) -> Result<Vec<Vec<u8>>, RoundError> {
        let bytes = self.round(round, FrameKind::Gather, payload)?;
        let mut payloads = Vec::new();
        let mut rest = bytes.as_slice();
        while rest.len() >= 8 {
            let length = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes")) as usize;
            let end = (8 + length).min(rest.len());
            payloads.push(rest[8..end].to_vec());
            rest = &rest[end..];
        }
        Ok(payloads)
    }

    /// Tells the coordinator this rank failed and why, so that every other rank's error says
    /// so; the connection is then closed.
    pub fn fail(mut self, message: &str) {
        let limit = HANDSHAKE_FRAME_BYTES as usize;
        let mut message = message.to_string();
        if message.len() > limit {
            let mut end = limit;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        let _ = write_frame(&mut self.link, FrameKind::Failure, None, message.as_bytes());
    }
}

#[cfg(test)]
#[path = "star_tests.rs"]
mod tests;
