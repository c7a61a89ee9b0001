//! The collective of a run on several nodes: every rank of every process connects over TCP to a
//! coordinator that node 0 runs, and each collective call is one round through it.
//!
//! A round: every rank sends one frame (its gradients as f32 values to sum, or a message to
//! gather), the coordinator reads them in rank order, sums (in rank order, so every rank gets the
//! same bits) or concatenates them, and sends the result back to every rank. Tensors cross the
//! network through host memory: per step and rank, the gradients go up once and come back once.
//!
//! A rank that leaves mid-run (its process died, or it failed and closed its connection) ends
//! the round for everyone: the coordinator answers the others with an error frame naming it, and
//! closes. A rank that loses the coordinator fails with an error saying so.

use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// What a round does with the ranks' frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoundKind {
    /// Element-wise sum of f32 values.
    Sum = 1,
    /// Every rank's bytes, in rank order.
    Gather = 2,
}

const ERROR_FRAME: u8 = 255;
/// Frames above this are refused (a base-preset gradient is ~500 MB).
const MAX_FRAME_BYTES: u64 = 16 << 30;

/// Why a round failed, with the rank at fault when one is known.
#[derive(Debug)]
pub struct RoundError {
    pub rank: Option<usize>,
    pub message: String,
}

impl RoundError {
    fn of(rank: usize, message: impl Into<String>) -> Self {
        RoundError {
            rank: Some(rank),
            message: message.into(),
        }
    }
}

fn write_frame(stream: &mut impl Write, kind: u8, payload: &[u8]) -> std::io::Result<()> {
    stream.write_all(&[kind])?;
    stream.write_all(&(payload.len() as u64).to_le_bytes())?;
    stream.write_all(payload)?;
    stream.flush()
}

fn read_frame(stream: &mut impl Read) -> std::io::Result<(u8, Vec<u8>)> {
    let mut header = [0u8; 9];
    stream.read_exact(&mut header)?;
    let length = u64::from_le_bytes(header[1..].try_into().expect("8 bytes"));
    if length > MAX_FRAME_BYTES {
        return Err(std::io::Error::other(format!("a frame of {length} bytes")));
    }
    let mut payload = vec![0u8; length as usize];
    stream.read_exact(&mut payload)?;
    Ok((header[0], payload))
}

/// Node 0's side: accepts the run's `world` ranks, then serves rounds until every rank has left.
pub struct Coordinator {
    listener: TcpListener,
    world: usize,
}

impl Coordinator {
    /// Binds `address` (the `coordinator` setting: the address the other nodes will dial).
    pub fn bind(address: &str, world: usize) -> std::io::Result<Self> {
        let listener = TcpListener::bind(address)?;
        Ok(Coordinator { listener, world })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves the run on a thread of its own; it ends when the run ends or fails.
    pub fn spawn(self) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("coordinator".into())
            .spawn(move || {
                if let Err(error) = self.serve() {
                    tracing::warn!("coordinator: {}", error.message);
                }
            })
            .map(drop)
    }

    fn serve(self) -> Result<(), RoundError> {
        let mut ranks: Vec<Option<(BufReader<TcpStream>, BufWriter<TcpStream>)>> =
            (0..self.world).map(|_| None).collect();
        while ranks.iter().any(Option::is_none) {
            let (stream, _) = self.listener.accept().map_err(|error| RoundError {
                rank: None,
                message: format!("accepting a rank: {error}"),
            })?;
            let _ = stream.set_nodelay(true);
            let mut reader = BufReader::new(stream.try_clone().map_err(|error| RoundError {
                rank: None,
                message: error.to_string(),
            })?);
            let Ok((_, hello)) = read_frame(&mut reader) else {
                continue; // not one of ours, or gone before saying who it is
            };
            let (rank, world) = match hello.as_slice() {
                [a, b, c, d, e, f, g, h] => (
                    u32::from_le_bytes([*a, *b, *c, *d]) as usize,
                    u32::from_le_bytes([*e, *f, *g, *h]) as usize,
                ),
                _ => continue,
            };
            let mut writer = BufWriter::new(stream);
            let refusal = if world != self.world {
                Some(format!(
                    "world size {world}, but the run has {}",
                    self.world
                ))
            } else if rank >= self.world || ranks[rank].is_some() {
                Some(format!("rank {rank} is not a free rank of {}", self.world))
            } else {
                None
            };
            if let Some(message) = refusal {
                let _ = write_frame(&mut writer, ERROR_FRAME, message.as_bytes());
                continue;
            }
            ranks[rank] = Some((reader, writer));
        }
        let mut ranks: Vec<(BufReader<TcpStream>, BufWriter<TcpStream>)> =
            ranks.into_iter().flatten().collect();
        loop {
            match self.round(&mut ranks) {
                Ok(true) => continue,
                Ok(false) => return Ok(()),
                Err(error) => {
                    let message = match error.rank {
                        Some(rank) => format!("rank {rank}: {}", error.message),
                        None => error.message.clone(),
                    };
                    for (rank, (_, writer)) in ranks.iter_mut().enumerate() {
                        if Some(rank) != error.rank {
                            let _ = write_frame(writer, ERROR_FRAME, message.as_bytes());
                        }
                    }
                    return Err(RoundError {
                        rank: error.rank,
                        message,
                    });
                }
            }
        }
    }

    /// One round; false once every rank has left after a completed round.
    fn round(
        &self,
        ranks: &mut [(BufReader<TcpStream>, BufWriter<TcpStream>)],
    ) -> Result<bool, RoundError> {
        let mut frames = Vec::with_capacity(ranks.len());
        for (rank, (reader, _)) in ranks.iter_mut().enumerate() {
            match read_frame(reader) {
                Ok(frame) => frames.push(frame),
                Err(_) if rank == 0 && frames.is_empty() && self.all_left(ranks) => {
                    return Ok(false)
                }
                Err(_) => return Err(RoundError::of(rank, "left the run (its connection closed)")),
            }
        }
        let kind = frames[0].0;
        if let Some(rank) = frames.iter().position(|(other, _)| *other != kind) {
            return Err(RoundError::of(
                rank,
                "made another collective call than rank 0",
            ));
        }
        let reply = if kind == RoundKind::Sum as u8 {
            let length = frames[0].1.len();
            if let Some(rank) = frames.iter().position(|(_, bytes)| bytes.len() != length) {
                return Err(RoundError::of(
                    rank,
                    "sent a tensor of another size than rank 0",
                ));
            }
            let mut sum: Vec<f32> = f32_values(&frames[0].1);
            for (_, bytes) in &frames[1..] {
                for (total, value) in sum.iter_mut().zip(f32_values(bytes)) {
                    *total += value;
                }
            }
            sum.iter().flat_map(|value| value.to_le_bytes()).collect()
        } else {
            let mut gathered = Vec::new();
            for (_, bytes) in &frames {
                gathered.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
                gathered.extend_from_slice(bytes);
            }
            gathered
        };
        for (rank, (_, writer)) in ranks.iter_mut().enumerate() {
            write_frame(writer, kind, &reply)
                .map_err(|_| RoundError::of(rank, "left the run (its connection closed)"))?;
        }
        Ok(true)
    }

    /// Whether every rank has closed its connection (the run is over).
    fn all_left(&self, ranks: &mut [(BufReader<TcpStream>, BufWriter<TcpStream>)]) -> bool {
        ranks[1..].iter_mut().all(|(reader, _)| {
            let mut byte = [0u8; 1];
            matches!(reader.read(&mut byte), Ok(0) | Err(_))
        })
    }
}

fn f32_values(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|chunk| f32::from_le_bytes(chunk.try_into().expect("4 bytes")))
        .collect()
}

/// A rank's connection to the coordinator.
pub struct StarClient {
    rank: usize,
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
}

impl StarClient {
    /// Connects rank `rank` of `world` to `coordinator`, retrying until `patience` has passed
    /// (node 0 may start after the others).
    pub fn connect(
        coordinator: &str,
        rank: usize,
        world: usize,
        patience: Duration,
    ) -> Result<Self, RoundError> {
        let started = Instant::now();
        let stream = loop {
            let addresses = coordinator.to_socket_addrs().map_err(|error| {
                RoundError::of(rank, format!("coordinator `{coordinator}`: {error}"))
            })?;
            let connected = addresses
                .into_iter()
                .find_map(|address| TcpStream::connect(address).ok());
            if let Some(stream) = connected {
                break stream;
            }
            if started.elapsed() > patience {
                return Err(RoundError::of(
                    rank,
                    format!(
                        "no coordinator at {coordinator} after {} s",
                        patience.as_secs()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let _ = stream.set_nodelay(true);
        let io = |error: std::io::Error| RoundError::of(rank, error.to_string());
        let mut writer = BufWriter::new(stream.try_clone().map_err(io)?);
        let mut hello = (rank as u32).to_le_bytes().to_vec();
        hello.extend_from_slice(&(world as u32).to_le_bytes());
        write_frame(&mut writer, 0, &hello).map_err(io)?;
        Ok(StarClient {
            rank,
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// One round: sends `payload`, returns the coordinator's answer.
    fn round(&mut self, kind: RoundKind, payload: &[u8]) -> Result<Vec<u8>, RoundError> {
        let lost = |_| RoundError::of(self.rank, "lost the coordinator (node 0 stopped)");
        write_frame(&mut self.writer, kind as u8, payload).map_err(lost)?;
        let (answer, bytes) = read_frame(&mut self.reader).map_err(lost)?;
        if answer == ERROR_FRAME {
            let message = String::from_utf8_lossy(&bytes).into_owned();
            let named = message.strip_prefix("rank ").and_then(|rest| {
                let (rank, why) = rest.split_once(": ")?;
                Some((rank.parse().ok()?, why.to_string()))
            });
            return Err(match named {
                Some((rank, message)) => RoundError::of(rank, message),
                None => RoundError::of(self.rank, message),
            });
        }
        Ok(bytes)
    }

    /// The element-wise sum of every rank's `values`.
    pub fn sum(&mut self, values: &[f32]) -> Result<Vec<f32>, RoundError> {
        let bytes: Vec<u8> = values
            .iter()
            .flat_map(|value| value.to_le_bytes())
            .collect();
        Ok(f32_values(&self.round(RoundKind::Sum, &bytes)?))
    }

    /// Every rank's `payload`, in rank order.
    pub fn gather(&mut self, payload: &[u8]) -> Result<Vec<Vec<u8>>, RoundError> {
        let bytes = self.round(RoundKind::Gather, payload)?;
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn coordinator(world: usize) -> String {
        let coordinator = Coordinator::bind("127.0.0.1:0", world).expect("binds");
        let address = coordinator.local_addr().expect("address").to_string();
        coordinator.spawn().expect("starts");
        address
    }

    fn client(address: &str, rank: usize, world: usize) -> StarClient {
        StarClient::connect(address, rank, world, Duration::from_secs(10)).expect("connects")
    }

    #[test]
    fn rounds_sum_and_gather_in_rank_order() {
        let address = coordinator(3);
        let ranks: Vec<_> = (0..3)
            .map(|rank| {
                let address = address.clone();
                std::thread::spawn(move || {
                    let mut client = client(&address, rank, 3);
                    let sum = client.sum(&[rank as f32, 1.0]).expect("sum");
                    let gathered = client.gather(&vec![rank as u8; rank]).expect("gather");
                    let again = client.sum(&[0.5]).expect("a second sum");
                    (sum, gathered, again)
                })
            })
            .collect();
        for rank in ranks {
            let (sum, gathered, again) = rank.join().expect("rank thread");
            assert_eq!(sum, [3.0, 3.0]);
            assert_eq!(gathered, [vec![], vec![1], vec![2, 2]]);
            assert_eq!(again, [1.5]);
        }
    }

    #[test]
    fn a_rank_that_leaves_ends_the_round_for_the_others_naming_it() {
        let address = coordinator(3);
        let leaving = {
            let address = address.clone();
            std::thread::spawn(move || {
                let mut client = client(&address, 2, 3);
                client.sum(&[1.0]).expect("the first round");
                // Gone before the second round.
            })
        };
        let staying: Vec<_> = (0..2)
            .map(|rank| {
                let address = address.clone();
                std::thread::spawn(move || {
                    let mut client = client(&address, rank, 3);
                    client.sum(&[1.0]).expect("the first round");
                    client.sum(&[1.0]).expect_err("rank 2 is gone")
                })
            })
            .collect();
        leaving.join().expect("leaving rank");
        for rank in staying {
            let error = rank.join().expect("rank thread");
            assert_eq!(error.rank, Some(2), "{}", error.message);
            assert!(error.message.contains("left the run"), "{}", error.message);
        }
    }

    #[test]
    fn a_rank_of_another_world_size_is_refused() {
        let address = coordinator(2);
        let mut stranger = client(&address, 0, 5);
        let error = stranger.sum(&[1.0]).expect_err("refused");
        assert!(error.message.contains("world size 5"), "{}", error.message);
    }
}
