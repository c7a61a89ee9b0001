//! How a rank joins node 0's coordinator, both sides: the coordinator challenges with a nonce,
//! the rank says who it is and signs the nonces with the run's token, the coordinator proves
//! the token back, and once every rank has joined it tells them all to start.
//!
//! Everything before the proof is bounded: a handshake frame carries at most
//! [`HANDSHAKE_FRAME_BYTES`] and the whole handshake must finish within a deadline (the
//! coordinator shuts the socket of a connection that overstays, see `coordinator`).

use std::net::TcpStream;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::parallel::access::{keep_alive, nonce, Access, Link, Token};
use crate::parallel::frame::{read_frame, write_frame, FrameKind, Header, HANDSHAKE_FRAME_BYTES};
use crate::parallel::rounds::RoundError;

/// How long a connection may take from accept to the end of its hello.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

const HELLO_DOMAIN: &[u8] = b"flightlm coordinator hello";
const WELCOME_DOMAIN: &[u8] = b"flightlm coordinator welcome";

#[derive(Serialize, Deserialize)]
struct Hello {
    rank: usize,
    world: usize,
    nonce: String,
    /// Empty without a token.
    mac: String,
}

#[derive(Serialize, Deserialize)]
struct Welcome {
    mac: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok())
        .collect()
}

fn hello_parts<'a>(server: &'a [u8], client: &'a [u8], who: &'a [u8]) -> [&'a [u8]; 4] {
    [HELLO_DOMAIN, server, client, who]
}

fn who(rank: usize, world: usize) -> Vec<u8> {
    format!("rank {rank} of {world}").into_bytes()
}

/// The coordinator's side: admits the connection as a rank of `world`, or says why not (the
/// reason is also sent to the peer when the connection still works).
pub fn admit(
    stream: TcpStream,
    access: &Access,
    world: usize,
    deadline: Duration,
) -> Result<(usize, Link), String> {
    keep_alive(&stream);
    let timeouts = |stream: &TcpStream, timeout: Option<Duration>| {
        let _ = stream.set_read_timeout(timeout);
        let _ = stream.set_write_timeout(timeout);
    };
    timeouts(&stream, Some(deadline));
    let mut link = Link::accepted(stream, access.server_tls.as_ref())
        .map_err(|error| format!("TLS: {error}"))?;
    let server_nonce = nonce().map_err(|error| error.to_string())?;
    write_frame(&mut link, FrameKind::Challenge, None, &server_nonce)
        .map_err(|error| format!("the handshake failed: {error}"))?;
    let refuse = |link: &mut Link, why: String| {
        let _ = write_frame(link, FrameKind::Error, None, why.as_bytes());
        why
    };
    let (header, payload) = match read_frame(&mut link, HANDSHAKE_FRAME_BYTES) {
        Ok(frame) => frame,
        Err(error) => return Err(refuse(&mut link, format!("no hello: {error}"))),
    };
    if header.kind != FrameKind::Hello {
        return Err(refuse(
            &mut link,
            format!("a {:?} frame instead of a hello", header.kind),
        ));
    }
    let Ok(hello) = serde_json::from_slice::<Hello>(&payload) else {
        return Err(refuse(&mut link, "a hello that does not parse".into()));
    };
    let client_nonce = unhex(&hello.nonce).unwrap_or_default();
    let mac = unhex(&hello.mac).unwrap_or_default();
    let claimed = who(hello.rank, hello.world);
    let welcome = match &access.token {
        Some(_) if mac.is_empty() => {
            let why = "unauthenticated: no token (the run needs coordinator_token_file)";
            return Err(refuse(&mut link, why.into()));
        }
        Some(token) => {
            if !token.verifies(&hello_parts(&server_nonce, &client_nonce, &claimed), &mac) {
                return Err(refuse(&mut link, "unauthenticated: wrong token".into()));
            }
            token.sign(&[WELCOME_DOMAIN, &client_nonce, &server_nonce, &claimed])
        }
        None => Vec::new(),
    };
    if hello.world != world {
        let why = format!("world size {}, but the run has {world}", hello.world);
        return Err(refuse(&mut link, why));
    }
    if hello.rank >= world {
        let why = format!("rank {} is not a rank of {world}", hello.rank);
        return Err(refuse(&mut link, why));
    }
    let welcome = serde_json::to_vec(&Welcome { mac: hex(&welcome) }).expect("serializes");
    write_frame(&mut link, FrameKind::Welcome, None, &welcome)
        .map_err(|error| format!("the handshake failed: {error}"))?;
    timeouts(link.socket(), None);
    Ok((hello.rank, link))
}

/// A rank's side, on a connected `stream`: joins as `rank` of `world` and waits for the start
/// of the run (up to `patience`: the coordinator answers by its own join deadline).
pub fn join(
    stream: TcpStream,
    (address, host): (&str, &str),
    access: &Access,
    (rank, world): (usize, usize),
    patience: Duration,
) -> Result<Link, RoundError> {
    let failed =
        |why: String| RoundError::of(rank, format!("joining the coordinator at {address}: {why}"));
    keep_alive(&stream);
    let _ = stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT));
    let mut link = Link::dialed(stream, access.client_tls.as_ref(), host)
        .map_err(|error| failed(error.to_string()))?;
    let server_nonce = expect(&mut link, FrameKind::Challenge, rank, address)?;
    let client_nonce = nonce().map_err(|error| failed(error.to_string()))?;
    let claimed = who(rank, world);
    let mac = access
        .token
        .as_ref()
        .map(|token| token.sign(&hello_parts(&server_nonce, &client_nonce, &claimed)))
        .unwrap_or_default();
    let hello = Hello {
        rank,
        world,
        nonce: hex(&client_nonce),
        mac: hex(&mac),
    };
    let hello = serde_json::to_vec(&hello).expect("serializes");
    write_frame(&mut link, FrameKind::Hello, None, &hello)
        .map_err(|error| failed(error.to_string()))?;
    let welcome = expect(&mut link, FrameKind::Welcome, rank, address)?;
    if let Some(token) = &access.token {
        let proof = serde_json::from_slice::<Welcome>(&welcome)
            .ok()
            .and_then(|welcome| unhex(&welcome.mac))
            .unwrap_or_default();
        if !proves(token, &proof, (&client_nonce, &server_nonce, &claimed)) {
            return Err(failed(
                "the coordinator did not prove it holds the run's token (is \
                 coordinator_token_file the same on node 0?)"
                    .into(),
            ));
        }
    }
    let _ = link.socket().set_read_timeout(Some(patience));
    expect(&mut link, FrameKind::Start, rank, address)?;
    let _ = link.socket().set_read_timeout(None);
    let _ = link.socket().set_write_timeout(None);
    Ok(link)
}

fn proves(token: &Token, proof: &[u8], (client, server, claimed): (&[u8], &[u8], &[u8])) -> bool {
    token.verifies(&[WELCOME_DOMAIN, client, server, claimed], proof)
}

/// The payload of the next frame, which must be of `kind`; an error frame becomes its error.
fn expect(
    link: &mut Link,
    kind: FrameKind,
    rank: usize,
    address: &str,
) -> Result<Vec<u8>, RoundError> {
    match read_frame(link, HANDSHAKE_FRAME_BYTES) {
        Ok((Header { kind: got, .. }, payload)) if got == kind => Ok(payload),
        Ok((
            Header {
                kind: FrameKind::Error,
                ..
            },
            payload,
        )) => Err(RoundError::from_line(&String::from_utf8_lossy(&payload))),
        Ok((header, _)) => Err(RoundError::of(
            rank,
            format!(
                "the coordinator at {address} sent a {:?} frame, not a {kind:?}",
                header.kind
            ),
        )),
        Err(error) => Err(RoundError::of(
            rank,
            format!(
                "the coordinator at {address} closed or stalled the connection while joining \
                 ({error}; TLS on one side only, or node 0 stopped?)"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_junk() {
        assert_eq!(unhex(&hex(&[0, 15, 255])), Some(vec![0, 15, 255]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
    }
}
