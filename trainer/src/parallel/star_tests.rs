//! The coordinator and its clients on loopback: rounds, departures, refusals and deadlines.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::*;
use crate::parallel::access::Token;
use crate::parallel::coordinator::{Coordinator, RunShape};
use crate::parallel::frame::{FrameKind, Purpose, HEADER_BYTES};

const TOKEN: &str = "0123456789abcdef-run-token";

fn shape(world: usize) -> RunShape {
    RunShape {
        world,
        ranks_per_node: 1,
        gradient_values: 4,
        join_timeout: Duration::from_secs(20),
        handshake_timeout: Duration::from_millis(500),
    }
}

fn with_token() -> Access {
    Access {
        token: Some(Token::from_text(TOKEN)),
        ..Access::default()
    }
}

fn coordinator(shape: RunShape, access: Access) -> String {
    let coordinator = Coordinator::bind("127.0.0.1:0", shape, access).expect("binds");
    let address = coordinator.local_addr().expect("address").to_string();
    coordinator.spawn().expect("starts");
    address
}

fn connect(
    address: &str,
    access: &Access,
    rank: usize,
    world: usize,
) -> Result<StarClient, RoundError> {
    let dial = Dial {
        address,
        access,
        join_timeout: Duration::from_secs(20),
    };
    StarClient::connect(&dial, rank, world)
}

fn round(step: usize) -> Round {
    Round::new(step, Purpose::Other)
}

/// Runs `ranks` clients on threads, each doing `work`, and returns their results by rank.
fn run_ranks<T: Send + 'static>(
    address: &str,
    access: &Access,
    ranks: std::ops::Range<usize>,
    world: usize,
    work: impl Fn(usize, StarClient) -> T + Send + Sync + Clone + 'static,
) -> Vec<std::thread::JoinHandle<T>> {
    ranks
        .map(|rank| {
            let (address, access, work) = (address.to_string(), access.clone(), work.clone());
            std::thread::spawn(move || {
                let client = connect(&address, &access, rank, world).expect("joins");
                work(rank, client)
            })
        })
        .collect()
}

#[test]
fn rounds_sum_and_gather_in_rank_order() {
    let address = coordinator(shape(3), with_token());
    let ranks = run_ranks(&address, &with_token(), 0..3, 3, |rank, mut client| {
        let sum = client.sum(round(0), &[rank as f32, 1.0]).expect("sum");
        let gathered = client
            .gather(round(1), &vec![rank as u8; rank])
            .expect("gather");
        let again = client.sum(round(2), &[0.5]).expect("a second sum");
        (sum, gathered, again)
    });
    for rank in ranks {
        let (sum, gathered, again) = rank.join().expect("rank thread");
        assert_eq!(sum, [3.0, 3.0]);
        assert_eq!(gathered, [vec![], vec![1], vec![2, 2]]);
        assert_eq!(again, [1.5]);
    }
}

#[test]
fn a_rank_that_leaves_ends_the_round_for_the_others_naming_it() {
    let address = coordinator(shape(3), Access::default());
    let leaving = run_ranks(&address, &Access::default(), 2..3, 3, |_, mut client| {
        client.sum(round(0), &[1.0]).expect("the first round");
    });
    let staying = run_ranks(&address, &Access::default(), 0..2, 3, |_, mut client| {
        client.sum(round(0), &[1.0]).expect("the first round");
        client.sum(round(1), &[1.0]).expect_err("rank 2 is gone")
    });
    leaving
        .into_iter()
        .for_each(|thread| thread.join().expect("leaving rank"));
    for rank in staying {
        let error = rank.join().expect("rank thread");
        assert_eq!(error.rank, Some(2), "{}", error.message);
        assert!(error.message.contains("left the run"), "{}", error.message);
    }
}

#[test]
fn a_failure_reported_by_one_rank_reaches_the_others_with_its_cause() {
    let address = coordinator(shape(2), Access::default());
    let failing = run_ranks(&address, &Access::default(), 0..1, 2, |_, mut client| {
        client.gather(round(0), b"report").expect("the first round");
        client.fail("the loss is no longer finite at step 2 (NaN): training diverged");
    });
    let other = run_ranks(&address, &Access::default(), 1..2, 2, |_, mut client| {
        client.gather(round(0), b"report").expect("the first round");
        client
            .gather(round(1), b"report")
            .expect_err("rank 0 failed")
    });
    failing
        .into_iter()
        .for_each(|thread| thread.join().expect("rank 0"));
    let error = other
        .into_iter()
        .next()
        .expect("rank 1")
        .join()
        .expect("rank 1");
    assert_eq!(
        error.line(),
        "rank 0: the loss is no longer finite at step 2 (NaN): training diverged"
    );
}

#[test]
fn ranks_in_different_rounds_or_with_wrong_gradients_are_named() {
    let address = coordinator(shape(2), Access::default());
    let ranks = run_ranks(&address, &Access::default(), 0..2, 2, |rank, mut client| {
        let purpose = [Purpose::StepReport, Purpose::ParameterCheck][rank];
        client
            .gather(Round::new(4, purpose), b"")
            .expect_err("different rounds")
    });
    for rank in ranks {
        let error = rank.join().expect("rank thread");
        assert_eq!(error.rank, Some(1));
        assert!(
            error.message.contains("the parameter check of step 5"),
            "{}",
            error.message
        );
    }
    let address = coordinator(shape(2), Access::default());
    let ranks = run_ranks(&address, &Access::default(), 0..2, 2, |rank, mut client| {
        let values = vec![1.0; 4 + rank];
        client
            .sum(Round::new(0, Purpose::Gradients), &values)
            .expect_err("too long")
    });
    let errors: Vec<RoundError> = ranks
        .into_iter()
        .map(|rank| rank.join().expect("rank"))
        .collect();
    assert!(
        errors[0]
            .line()
            .starts_with("rank 1: sent 20 bytes of gradients"),
        "{}",
        errors[0].line()
    );
}

/// Reads what the coordinator answers a raw connection: its error frame's text, or how the
/// connection ended, within `deadline`.
fn answer_of(mut stream: TcpStream, deadline: Duration) -> (String, Duration) {
    let started = Instant::now();
    stream.set_read_timeout(Some(deadline)).expect("timeout");
    let mut bytes = Vec::new();
    let ended = match stream.read_to_end(&mut bytes) {
        Ok(_) => "closed".to_string(),
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => "still open".into(),
        Err(error) => error.to_string(),
    };
    let text = String::from_utf8_lossy(&bytes).to_string();
    (format!("{text} [{ended}]"), started.elapsed())
}

#[test]
fn strangers_are_refused_or_dropped_and_the_real_ranks_still_run() {
    let address = coordinator(shape(2), with_token());
    // Sends nothing at all: shut at the handshake deadline.
    let silent = TcpStream::connect(&address).expect("connects");
    // Announces a 16 GiB hello, then streams bytes: refused from the header alone.
    let mut greedy = TcpStream::connect(&address).expect("connects");
    let mut header = vec![FrameKind::Hello as u8, 0];
    header.extend_from_slice(&0u64.to_le_bytes());
    header.extend_from_slice(&(16u64 << 30).to_le_bytes());
    assert_eq!(header.len(), HEADER_BYTES);
    greedy.write_all(&header).expect("header");
    let _ = greedy.write_all(&vec![0u8; 1 << 20]);
    let without = connect(&address, &Access::default(), 1, 2)
        .err()
        .expect("refused");
    assert!(
        without.message.contains("unauthenticated: no token"),
        "{}",
        without.line()
    );
    let wrong = Access {
        token: Some(Token::from_text("0123456789abcdef-wrong")),
        ..Access::default()
    };
    let error = connect(&address, &wrong, 1, 2).err().expect("refused");
    assert!(
        error.message.contains("unauthenticated: wrong token"),
        "{}",
        error.line()
    );

    // Its error frame may be lost to the reset that closing on unread bytes sends.
    let (answer, waited) = answer_of(greedy, Duration::from_secs(5));
    assert!(!answer.contains("still open"), "{answer}");
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    let (answer, waited) = answer_of(silent, Duration::from_secs(5));
    assert!(!answer.contains("still open"), "{answer}");
    assert!(waited < Duration::from_secs(2), "dropped after {waited:?}");

    let ranks = run_ranks(&address, &with_token(), 0..2, 2, |rank, mut client| {
        client
            .sum(round(0), &[rank as f32])
            .expect("the run goes on")
    });
    for rank in ranks {
        assert_eq!(rank.join().expect("rank"), [1.0]);
    }
    // Once the run has started, nobody else gets in.
    let late = TcpStream::connect(&address).expect("connects");
    let (answer, _) = answer_of(late, Duration::from_secs(5));
    assert!(!answer.contains("still open"), "{answer}");
}

#[test]
fn a_node_that_never_joins_is_named_within_the_join_timeout() {
    let shape = RunShape {
        ranks_per_node: 2,
        join_timeout: Duration::from_secs(1),
        ..shape(4)
    };
    let address = coordinator(shape, Access::default());
    let started = Instant::now();
    let ranks: Vec<_> = (0..2)
        .map(|rank| {
            let address = address.clone();
            std::thread::spawn(move || connect(&address, &Access::default(), rank, 4).err())
        })
        .collect();
    for rank in ranks {
        let error = rank.join().expect("rank").expect("no run without node 1");
        assert_eq!(
            error.line(),
            "rank 2: node 1 (ranks 2, 3) never joined the run within 1 s (join_timeout_s)"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    let dial = Dial {
        address: "127.0.0.1:9",
        access: &Access::default(),
        join_timeout: Duration::from_millis(300),
    };
    let error = StarClient::connect(&dial, 1, 2)
        .err()
        .expect("nobody there");
    assert!(
        error.line().starts_with("rank 0: node 0's coordinator"),
        "{}",
        error.line()
    );
}

#[test]
fn a_rank_of_another_world_size_is_refused() {
    let address = coordinator(shape(2), Access::default());
    let error = connect(&address, &Access::default(), 0, 5)
        .err()
        .expect("refused");
    assert!(error.message.contains("world size 5"), "{}", error.line());
}
