//! End to end: who may join a multi-node run. Node 0's coordinator refuses a node without the
//! token or with a wrong one, drops a connection that announces a 16 GiB frame or says nothing,
//! and stays as large as it was, while the real nodes then train; over TLS a node that does not
//! trust node 0's certificate cannot join; a node that never comes is named within
//! `--join-timeout-s`, and so is a node 0 that never starts.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flightlm_tests::runs::{
    free_port, node, peak_rss_kib, setup, the_rank_error, wait_until_listening, wait_with_deadline,
    KillOnDrop, Setup, TIMEOUT,
};
use flightlm_tests::{run_with_timeout, tls_files};

/// The coordinator's handshake deadline (`parallel::handshake::HANDSHAKE_TIMEOUT`).
const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(10);

fn spawn(command: &mut Command) -> Child {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting a node")
}

fn write_token(path: &Path, token: &str) -> String {
    std::fs::write(path, token).expect("token file");
    format!("--coordinator-token-file {}", path.display())
}

/// Runs a node that must be refused; returns its one error line.
fn refused_node(command: &mut Command) -> String {
    let output = run_with_timeout(command, TIMEOUT);
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(!output.status.success(), "joined: {stderr}");
    the_rank_error(&stderr).to_string()
}

/// How a raw connection ends, and after how long.
fn ends_within(mut stream: TcpStream, limit: Duration) -> Duration {
    let started = Instant::now();
    stream.set_read_timeout(Some(limit)).expect("timeout");
    let mut sink = Vec::new();
    match stream.read_to_end(&mut sink) {
        Ok(_) => {}
        Err(error) => assert!(
            error.kind() != std::io::ErrorKind::WouldBlock
                && error.kind() != std::io::ErrorKind::TimedOut,
            "still open after {limit:?}"
        ),
    }
    started.elapsed()
}

#[test]
fn strangers_are_refused_and_node_0_stays_as_large_while_the_real_nodes_train() {
    let Setup { dir, pipeline, .. } = setup("coordinator_strangers");
    let port = free_port();
    let token = write_token(&dir.join("token"), "coordinator-token-0123456789");
    let wrong = write_token(&dir.join("wrong"), "another-token-0123456789");
    let lead_dir = dir.join("node-0");
    let mut lead = KillOnDrop(spawn(&mut node(
        &pipeline.url,
        &lead_dir,
        6,
        0,
        port,
        &token,
    )));
    wait_until_listening(port, &mut lead.0);
    std::thread::sleep(Duration::from_secs(1));
    let before = peak_rss_kib(lead.0.id());

    let other = dir.join("node-1");
    let error = refused_node(&mut node(&pipeline.url, &other, 6, 1, port, ""));
    assert!(error.contains("unauthenticated: no token"), "{error}");
    let error = refused_node(&mut node(&pipeline.url, &other, 6, 1, port, &wrong));
    assert!(error.contains("unauthenticated: wrong token"), "{error}");

    // A header announcing a 16 GiB hello, then 64 MiB: dropped after the header.
    let mut greedy = TcpStream::connect(("127.0.0.1", port)).expect("connects");
    let silent = TcpStream::connect(("127.0.0.1", port)).expect("connects");
    let mut header = vec![11u8, 0];
    header.extend_from_slice(&0u64.to_le_bytes());
    header.extend_from_slice(&(16u64 << 30).to_le_bytes());
    greedy.write_all(&header).expect("header");
    let junk = vec![0x5au8; 1 << 20];
    for _ in 0..64 {
        if greedy.write_all(&junk).is_err() {
            break; // closed on us, as it should be
        }
    }
    let waited = ends_within(greedy, HANDSHAKE_DEADLINE + Duration::from_secs(5));
    eprintln!("the 16 GiB announcement was dropped after {waited:?}");
    let waited = ends_within(silent, HANDSHAKE_DEADLINE + Duration::from_secs(5));
    eprintln!("the silent connection was dropped after {waited:?}");
    assert!(
        waited <= HANDSHAKE_DEADLINE + Duration::from_secs(2),
        "{waited:?}"
    );
    let after = peak_rss_kib(lead.0.id());
    eprintln!("node 0 peak RSS: {before} KiB before the strangers, {after} KiB after");
    assert!(
        after < before + 8 * 1024,
        "node 0 grew from {before} to {after} KiB"
    );

    // The real node 1 joins and the run trains to its end.
    let mut second = KillOnDrop(spawn(&mut node(&pipeline.url, &other, 6, 1, port, &token)));
    let (status, stderr) = wait_with_deadline(&mut second.0, "node 1");
    assert!(status.success(), "node 1: {stderr}");
    let (status, stderr) = wait_with_deadline(&mut lead.0, "node 0");
    assert!(status.success(), "node 0: {stderr}");
    let metrics = std::fs::read_to_string(lead_dir.join("metrics.jsonl")).expect("metrics");
    assert!(metrics.contains(r#""kind":"done""#), "{metrics}");
}

#[test]
fn over_tls_a_node_that_does_not_trust_node_0_cannot_join() {
    let Setup { dir, pipeline, .. } = setup("coordinator_tls");
    let tls = tls_files(&dir);
    let port = free_port();
    let token = write_token(&dir.join("token"), "coordinator-token-0123456789");
    let ca = format!("--coordinator-tls-ca {}", tls.ca.display());
    let served = format!(
        "{token} {ca} --coordinator-tls-cert {} --coordinator-tls-key {}",
        tls.cert.display(),
        tls.key.display()
    );
    let lead_dir = dir.join("node-0");
    let mut lead = KillOnDrop(spawn(&mut node(
        &pipeline.url,
        &lead_dir,
        4,
        0,
        port,
        &served,
    )));
    wait_until_listening(port, &mut lead.0);
    let other = dir.join("node-1");
    // The token alone, in the clear: the TLS coordinator never sees a hello.
    let error = refused_node(&mut node(&pipeline.url, &other, 4, 1, port, &token));
    assert!(error.contains("while joining"), "{error}");
    let mut second = KillOnDrop(spawn(&mut node(
        &pipeline.url,
        &other,
        4,
        1,
        port,
        &format!("{token} {ca}"),
    )));
    for (child, name) in [(&mut second.0, "node 1"), (&mut lead.0, "node 0")] {
        let (status, stderr) = wait_with_deadline(child, name);
        assert!(status.success(), "{name} over TLS: {stderr}");
    }
}

#[test]
fn a_node_that_never_joins_is_named_within_the_join_timeout() {
    let Setup { dir, pipeline, .. } = setup("coordinator_join_timeout");
    let port = free_port();
    let mut lead = KillOnDrop(spawn(&mut node(
        &pipeline.url,
        &dir.join("node-0"),
        4,
        0,
        port,
        "--join-timeout-s 5",
    )));
    wait_until_listening(port, &mut lead.0);
    let listening = Instant::now();
    let (status, stderr) = wait_with_deadline(&mut lead.0, "node 0 alone");
    let waited = listening.elapsed();
    assert!(!status.success(), "{stderr}");
    let error = the_rank_error(&stderr);
    eprintln!("node 0 gave up {waited:?} after listening: {error}");
    assert_eq!(
        error,
        "error: rank 1: node 1 (rank 1) never joined the run within 5 s (join_timeout_s)"
    );
    assert!(waited < Duration::from_secs(5 + 3), "{waited:?}");

    // And a node 1 whose node 0 never starts.
    let started = Instant::now();
    let error = refused_node(&mut node(
        &pipeline.url,
        &dir.join("node-1"),
        4,
        1,
        free_port(),
        "--join-timeout-s 3",
    ));
    assert!(
        error.starts_with("error: rank 0: node 0's coordinator at 127.0.0.1:")
            && error.contains("never answered within 3 s"),
        "{error}"
    );
    assert!(started.elapsed() < TIMEOUT);
}
