//! `flightlm-fault-proxy`: a TCP proxy that makes a good link look like a bad one, for tests and
//! scripts that put it between a trainer and a pipeline.
//!
//! Every byte is delayed by `--latency-ms` (one way), each direction is throttled to
//! `--bandwidth-mbit`, and every connection is reset after a random lifetime drawn (seeded)
//! between `--reset-min-s` and `--reset-max-s`. It prints `{"listening": ADDR}` first, then one
//! JSON line per connection event, so a script can count the resets it survived. With
//! `--control-stdin`, the line `dark` on its standard input resets every open connection and
//! refuses new ones (an outage) until the line `light`.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "flightlm-fault-proxy",
    about = "A TCP proxy that injects latency, throttling and resets"
)]
struct Args {
    /// Address to accept clients on; port 0 picks a free one.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Address every client connection is forwarded to.
    #[arg(long)]
    upstream: SocketAddr,
    /// One-way delay added to every byte, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Bandwidth of each direction of each connection, in megabits per second (0: unthrottled).
    #[arg(long, default_value_t = 0.0)]
    bandwidth_mbit: f64,
    /// Shortest lifetime of a connection before it is reset (0 with --reset-max-s 0: never).
    #[arg(long, default_value_t = 0.0)]
    reset_min_s: f64,
    #[arg(long, default_value_t = 0.0)]
    reset_max_s: f64,
    /// Seed of the reset moments.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Read `dark` / `light` lines from standard input to start and end an outage.
    #[arg(long)]
    control_stdin: bool,
}

/// The outage switch and the connections it cuts.
#[derive(Default)]
struct Outage {
    dark: AtomicBool,
    open: Mutex<Vec<TcpStream>>,
}

impl Outage {
    fn is_dark(&self) -> bool {
        self.dark.load(Ordering::SeqCst)
    }

    /// Follows `dark` / `light` lines until standard input closes.
    fn follow_stdin(self: Arc<Self>) {
        std::thread::spawn(move || {
            for line in std::io::stdin().lines().map_while(Result::ok) {
                match line.trim() {
                    "dark" => {
                        self.dark.store(true, Ordering::SeqCst);
                        let open = std::mem::take(&mut *self.open.lock().expect("open"));
                        for stream in &open {
                            reset(stream);
                        }
                        event(serde_json::json!({ "dark": true, "reset": open.len() }));
                    }
                    "light" => {
                        self.dark.store(false, Ordering::SeqCst);
                        event(serde_json::json!({ "dark": false }));
                    }
                    _ => {}
                }
            }
        });
    }
}

/// A small seeded generator (splitmix64): reset moments reproducible from `--seed`.
struct Moments(u64);

impl Moments {
    /// Uniform in [0, 1).
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) as f64 / (u64::MAX as f64 + 1.0)
    }
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen)?;
    println!(
        "{}",
        serde_json::json!({ "listening": listener.local_addr()?.to_string() })
    );
    let mut moments = Moments(args.seed);
    let outage = Arc::new(Outage::default());
    if args.control_stdin {
        outage.clone().follow_stdin();
    }
    let link = Link {
        latency: Duration::from_millis(args.latency_ms),
        bytes_per_second: args.bandwidth_mbit * 1e6 / 8.0,
    };
    for (number, client) in listener.incoming().enumerate() {
        let Ok(client) = client else { continue };
        if outage.is_dark() {
            reset(&client);
            event(serde_json::json!({ "connection": number, "refused_dark": true }));
            continue;
        }
        let lifetime = (args.reset_max_s > 0.0).then(|| {
            let span = (args.reset_max_s - args.reset_min_s).max(0.0);
            Duration::from_secs_f64(args.reset_min_s + span * moments.next())
        });
        let upstream = match TcpStream::connect_timeout(&args.upstream, Duration::from_secs(5)) {
            Ok(upstream) => upstream,
            Err(error) => {
                event(
                    serde_json::json!({ "connection": number, "upstream_error": error.to_string() }),
                );
                continue; // dropping `client` closes it: the client sees a refused connection
            }
        };
        event(serde_json::json!({ "connection": number, "opened": true }));
        if let Ok(mut open) = outage.open.lock() {
            open.retain(|stream| stream.peer_addr().is_ok());
            for stream in [&client, &upstream] {
                if let Ok(clone) = stream.try_clone() {
                    open.push(clone);
                }
            }
        }
        if let Err(error) = forward(number, client, upstream, link, lifetime) {
            event(serde_json::json!({ "connection": number, "error": error.to_string() }));
        }
    }
    Ok(())
}

fn event(value: serde_json::Value) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{value}");
    let _ = stdout.flush();
}

#[derive(Clone, Copy)]
struct Link {
    latency: Duration,
    bytes_per_second: f64,
}

/// Pumps both directions on their own threads; a watchdog resets the pair when its lifetime ends.
fn forward(
    number: usize,
    client: TcpStream,
    upstream: TcpStream,
    link: Link,
    lifetime: Option<Duration>,
) -> std::io::Result<()> {
    client.set_nodelay(true)?;
    upstream.set_nodelay(true)?;
    let closed = Arc::new(AtomicBool::new(false));
    pump(
        client.try_clone()?,
        upstream.try_clone()?,
        link,
        closed.clone(),
    )?;
    pump(
        upstream.try_clone()?,
        client.try_clone()?,
        link,
        closed.clone(),
    )?;
    let Some(lifetime) = lifetime else {
        return Ok(());
    };
    std::thread::Builder::new()
        .name(format!("reset-{number}"))
        .spawn(move || {
            let deadline = Instant::now() + lifetime;
            while Instant::now() < deadline {
                if closed.load(Ordering::SeqCst) {
                    return; // the endpoints closed it themselves
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            reset(&client);
            reset(&upstream);
            event(serde_json::json!({
                "connection": number,
                "reset_after_s": lifetime.as_secs_f64(),
            }));
        })?;
    Ok(())
}

/// Aborts a connection with a TCP reset rather than an orderly close.
fn reset(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket this process owns, with a correctly sized `linger`.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    let _ = stream.shutdown(Shutdown::Both);
}

/// Copies `from` to `to` through a delay line: a reader stamps each chunk with its arrival, a
/// writer sends it `latency` later at no more than the link's bandwidth.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    link: Link,
    closed: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let (sender, receiver) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::Builder::new()
        .name("proxy-read".into())
        .spawn(move || {
            let mut buffer = vec![0u8; 16 * 1024];
            while let Ok(read) = from.read(&mut buffer) {
                if read == 0
                    || sender
                        .send((Instant::now(), buffer[..read].to_vec()))
                        .is_err()
                {
                    break;
                }
            }
        })?;
    std::thread::Builder::new()
        .name("proxy-write".into())
        .spawn(move || {
            let mut link_free_at = Instant::now();
            for (arrived, chunk) in receiver {
                let due = (arrived + link.latency).max(link_free_at);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                if to.write_all(&chunk).is_err() {
                    break;
                }
                if link.bytes_per_second > 0.0 {
                    let busy = Duration::from_secs_f64(chunk.len() as f64 / link.bytes_per_second);
                    link_free_at = due + busy;
                }
            }
            // The other side is done: pass the close on so both endpoints see it.
            let _ = to.shutdown(Shutdown::Write);
            closed.store(true, Ordering::SeqCst);
        })?;
    Ok(())
}
