//! Node 0's coordinator: admits the run's ranks, then serves its rounds until every rank has
//! left or one has failed.
//!
//! Admission never blocks the run: each connection's handshake runs on a thread of its own under
//! a deadline (a connection that sends nothing, or too slowly, is shut), at most
//! [`MAX_HANDSHAKES`] at a time, and a connection must prove it holds the token before it can
//! take a rank. The ranks must all have joined within the join deadline, or every rank that
//! did is told which nodes never came. Once the run has started, new connections are closed.
//!
//! A round: every rank sends one frame (its gradients to sum, or a message to gather) with the
//! round's step and purpose; the coordinator reads them in rank order, each bounded by what the
//! round can carry (a gradient round exactly the model's gradients), combines them
//! ([`crate::parallel::rounds::combine`]) and sends the result back to every rank. A rank that
//! reports a failure, leaves, or sends something else ends the run for everyone: the others get
//! an error frame naming it and what happened.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::parallel::access::{Access, Link};
use crate::parallel::frame::{
    f32_bytes, f32_values, read_header, read_payload, write_frame, FrameKind, Purpose,
    HANDSHAKE_FRAME_BYTES,
};
use crate::parallel::handshake::admit;
use crate::parallel::rounds::{combine, Contribution, Outcome, RoundError};

/// Handshakes in progress at once; more connections are closed at once.
pub const MAX_HANDSHAKES: usize = 64;

/// The most one rank may send to a gather round (a step report, a parameter hash, the
/// agreement): far above what they hold, far below what would hurt node 0.
pub const GATHER_FRAME_BYTES: u64 = 16 << 20;

/// What the coordinator of a run must know.
#[derive(Clone, Debug)]
pub struct RunShape {
    pub world: usize,
    /// Ranks per node, to name the nodes that never joined.
    pub ranks_per_node: usize,
    /// The model's parameter count: a gradient round carries exactly this many f32 values per
    /// rank, and no sum round carries more.
    pub gradient_values: usize,
    pub join_timeout: Duration,
    /// How long a connection may take to prove itself
    /// ([`crate::parallel::handshake::HANDSHAKE_TIMEOUT`] in a run).
    pub handshake_timeout: Duration,
}

pub struct Coordinator {
    listener: TcpListener,
    shape: RunShape,
    access: Access,
}

/// The running coordinator, to wait for at the end of the run.
pub struct CoordinatorHandle {
    ended: mpsc::Receiver<()>,
}

impl CoordinatorHandle {
    /// Waits (at most `patience`) until the coordinator has told every rank how the run ended:
    /// node 0 must not exit before its error frames are out.
    pub fn finish(self, patience: Duration) {
        let _ = self.ended.recv_timeout(patience);
    }
}

/// A rank admitted by a handshake thread.
struct Admission {
    rank: usize,
    link: Link,
}

impl Coordinator {
    pub fn bind(address: &str, shape: RunShape, access: Access) -> std::io::Result<Self> {
        let listener = TcpListener::bind(address)?;
        listener.set_nonblocking(true)?;
        Ok(Coordinator {
            listener,
            shape,
            access,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves the run on threads of its own; they end when the run ends or fails.
    pub fn spawn(self) -> std::io::Result<CoordinatorHandle> {
        let (ended, ended_receiver) = mpsc::channel();
        std::thread::Builder::new()
            .name("coordinator".into())
            .spawn(move || {
                if let Err(error) = self.serve() {
                    tracing::warn!("coordinator: {error}");
                }
                let _ = ended.send(());
            })?;
        Ok(CoordinatorHandle {
            ended: ended_receiver,
        })
    }

    fn serve(self) -> Result<(), RoundError> {
        let started = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (admitted, admissions) = mpsc::channel();
        let gate = Gate {
            listener: self.listener,
            access: self.access,
            world: self.shape.world,
            handshake_timeout: self.shape.handshake_timeout,
            started: started.clone(),
            stop: stop.clone(),
        };
        std::thread::Builder::new()
            .name("coordinator-accept".into())
            .spawn(move || gate.run(admitted))
            .map_err(|error| RoundError::unattributed(format!("coordinator: {error}")))?;
        let result = self.shape.admit_all(&admissions).and_then(|mut ranks| {
            started.store(true, Ordering::SeqCst);
            let gone = (0..ranks.len())
                .find(|rank| write_frame(&mut ranks[*rank], FrameKind::Start, None, &[]).is_err());
            if let Some(rank) = gone {
                let error = RoundError::of(rank, "left the run as it started");
                for link in &mut ranks {
                    let _ = write_frame(link, FrameKind::Error, None, error.line().as_bytes());
                }
                return Err(error);
            }
            Rounds {
                shape: &self.shape,
                ranks,
            }
            .serve()
        });
        stop.store(true, Ordering::SeqCst);
        result
    }
}

impl RunShape {
    /// Waits for every rank until the join deadline; past it, tells the ranks that came which
    /// nodes did not.
    fn admit_all(&self, admissions: &mpsc::Receiver<Admission>) -> Result<Vec<Link>, RoundError> {
        let deadline = Instant::now() + self.join_timeout;
        let mut ranks: Vec<Option<Link>> = (0..self.world).map(|_| None).collect();
        while ranks.iter().any(Option::is_none) {
            let wait = deadline.saturating_duration_since(Instant::now());
            match admissions.recv_timeout(wait) {
                Ok(Admission { rank, mut link }) => {
                    if ranks[rank].is_some() {
                        let why = format!("rank {rank} has already joined this run");
                        let _ = write_frame(&mut link, FrameKind::Error, None, why.as_bytes());
                        continue;
                    }
                    ranks[rank] = Some(link);
                }
                Err(RecvTimeoutError::Timeout) => {
                    let error = self.never_joined(&ranks);
                    for link in ranks.iter_mut().flatten() {
                        let _ = write_frame(link, FrameKind::Error, None, error.line().as_bytes());
                    }
                    return Err(error);
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(RoundError::unattributed("coordinator: stopped accepting"));
                }
            }
        }
        Ok(ranks.into_iter().flatten().collect())
    }

    /// `rank R: node N never joined …`, naming every absent node and its ranks.
    fn never_joined(&self, ranks: &[Option<Link>]) -> RoundError {
        let per_node = self.ranks_per_node.max(1);
        let absent: Vec<usize> = (0..self.world)
            .filter(|rank| ranks[*rank].is_none())
            .collect();
        let mut nodes: Vec<String> = Vec::new();
        for node in 0..self.world.div_ceil(per_node) {
            let missing: Vec<String> = absent
                .iter()
                .filter(|rank| **rank / per_node == node)
                .map(usize::to_string)
                .collect();
            if !missing.is_empty() {
                let noun = if missing.len() == 1 { "rank" } else { "ranks" };
                nodes.push(format!("node {node} ({noun} {})", missing.join(", ")));
            }
        }
        RoundError::of(
            absent[0],
            format!(
                "{} never joined the run within {} s (join_timeout_s)",
                nodes.join(", "),
                self.join_timeout.as_secs()
            ),
        )
    }
}

/// The listening side: accepts connections and runs their handshakes under a deadline.
struct Gate {
    listener: TcpListener,
    access: Access,
    world: usize,
    handshake_timeout: Duration,
    started: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

/// A handshake in progress: its socket, shut when the deadline passes.
struct Pending {
    id: u64,
    deadline: Instant,
    socket: TcpStream,
}

impl Gate {
    fn run(self, admitted: mpsc::Sender<Admission>) {
        let pending: Arc<Mutex<Vec<Pending>>> = Arc::default();
        let active = Arc::new(AtomicUsize::new(0));
        let mut next_id = 0u64;
        while !self.stop.load(Ordering::SeqCst) {
            let (stream, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                    shut_overdue(&pending);
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                }
                Err(error) => {
                    tracing::warn!("coordinator: accepting a connection: {error}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            if self.started.load(Ordering::SeqCst)
                || active.load(Ordering::SeqCst) >= MAX_HANDSHAKES
            {
                continue; // dropped: closed at once
            }
            let (Ok(()), Ok(socket)) = (stream.set_nonblocking(false), stream.try_clone()) else {
                continue;
            };
            next_id += 1;
            let id = next_id;
            lock(&pending).push(Pending {
                id,
                deadline: Instant::now() + self.handshake_timeout,
                socket,
            });
            active.fetch_add(1, Ordering::SeqCst);
            let (access, world, admitted) = (self.access.clone(), self.world, admitted.clone());
            let timeout = self.handshake_timeout;
            let (pending, in_handshake) = (pending.clone(), active.clone());
            let spawned = std::thread::Builder::new()
                .name("coordinator-handshake".into())
                .spawn(move || {
                    let result = admit(stream, &access, world, timeout);
                    lock(&pending).retain(|entry| entry.id != id);
                    in_handshake.fetch_sub(1, Ordering::SeqCst);
                    match result {
                        Ok((rank, link)) => {
                            let _ = admitted.send(Admission { rank, link });
                        }
                        Err(why) => tracing::warn!("coordinator: refused {peer}: {why}"),
                    }
                });
            if spawned.is_err() {
                active.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Shuts the sockets of handshakes past their deadline: their threads' reads fail at once.
fn shut_overdue(pending: &Mutex<Vec<Pending>>) {
    let now = Instant::now();
    lock(pending).retain(|entry| {
        if entry.deadline > now {
            return true;
        }
        let _ = entry.socket.shutdown(std::net::Shutdown::Both);
        false
    });
}

/// The rounds of a started run.
struct Rounds<'a> {
    shape: &'a RunShape,
    ranks: Vec<Link>,
}

impl Rounds<'_> {
    fn serve(mut self) -> Result<(), RoundError> {
        loop {
            match self.round() {
                Ok(true) => continue,
                Ok(false) => return Ok(()),
                Err(error) => {
                    // Every rank, the one at fault included: it learns why its run ended.
                    for link in &mut self.ranks {
                        let _ = write_frame(link, FrameKind::Error, None, error.line().as_bytes());
                    }
                    return Err(error);
                }
            }
        }
    }

    /// One round; false once every rank has left after a completed round.
    fn round(&mut self) -> Result<bool, RoundError> {
        let gradient_bytes = self.shape.gradient_values as u64 * 4;
        let mut contributions = Vec::with_capacity(self.ranks.len());
        for rank in 0..self.ranks.len() {
            let link = &mut self.ranks[rank];
            let header = match read_header(link) {
                Ok(header) => header,
                Err(_) if rank == 0 && self.all_left() => return Ok(false),
                Err(_) => return Err(RoundError::of(rank, "left the run (its connection closed)")),
            };
            let link = &mut self.ranks[rank];
            let (round, limit) = match (header.kind, header.round) {
                (FrameKind::Failure, _) => {
                    let message = read_payload(link, &header, HANDSHAKE_FRAME_BYTES)
                        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                        .unwrap_or_else(|error| format!("failed (its report: {error})"));
                    return Err(RoundError::of(rank, message));
                }
                (FrameKind::Sum, Some(round)) => (round, gradient_bytes),
                (FrameKind::Gather, Some(round)) => (round, GATHER_FRAME_BYTES),
                (kind, _) => {
                    return Err(RoundError::of(
                        rank,
                        format!("sent a {kind:?} frame in a round"),
                    ))
                }
            };
            if round.purpose == Purpose::Gradients && header.length != gradient_bytes {
                return Err(RoundError::of(
                    rank,
                    format!(
                        "sent {} bytes of gradients in {round}; the model's are {gradient_bytes}",
                        header.length
                    ),
                ));
            }
            let payload = read_payload(link, &header, limit)
                .map_err(|error| RoundError::of(rank, format!("sent {error} in {round}")))?;
            let contribution = match header.kind {
                FrameKind::Sum => Contribution::Sum(f32_values(&payload)),
                _ => Contribution::Gather(payload),
            };
            contributions.push((round, contribution));
        }
        let round = contributions[0].0;
        let kind = match contributions[0].1 {
            Contribution::Sum(_) => FrameKind::Sum,
            Contribution::Gather(_) => FrameKind::Gather,
        };
        let reply = match combine(contributions)? {
            Outcome::Sum(values) => f32_bytes(&values),
            Outcome::Gathered(payloads) => {
                let mut bytes = Vec::new();
                for payload in payloads {
                    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
                    bytes.extend_from_slice(&payload);
                }
                bytes
            }
        };
        for (rank, link) in self.ranks.iter_mut().enumerate() {
            write_frame(link, kind, Some(round), &reply)
                .map_err(|_| RoundError::of(rank, "left the run (its connection closed)"))?;
        }
        Ok(true)
    }

    /// Whether every other rank has closed its connection too (the run is over).
    fn all_left(&mut self) -> bool {
        self.ranks[1..].iter_mut().all(|link| {
            let mut byte = [0u8; 1];
            matches!(std::io::Read::read(link, &mut byte), Ok(0) | Err(_))
        })
    }
}
