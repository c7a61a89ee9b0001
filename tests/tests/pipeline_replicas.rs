//! End to end: readers of two pipeline replicas serving the same corpus. A trainer on both URLs
//! whose first replica is SIGKILLed three times in a 200-step run goes on from the second at
//! once, comes back to the first on SIGUSR1, and trains on every block exactly once; the Python
//! reader does the same, and refuses a "replica" serving another corpus by name.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use flightlm_tests::runs::{
    assert_exact_audit, free_port, last_step, metrics, setup, wait_for_step, KillOnDrop, Setup,
    TIMEOUT,
};
use flightlm_tests::{
    binary, python, read_dump, repo_root, run_ok, sample_corpus, scratch_dir, Pipeline,
};

/// How long the first replica stays down after each kill: longer than the longest pause between
/// reconnection attempts (`Backoff`'s 5 s cap), so a trainer that waited for it would pause
/// longer than any retry interval.
const DOWN: Duration = Duration::from_secs(6);

/// The longest pause the trainer's retries make (`flightlm_shared::backoff::MAX_RETRY_DELAY`).
const RETRY_INTERVAL_CAP: f64 = 5.0;

fn replica(corpus: &Path, tokenizer: &Path, port: u16) -> Pipeline {
    let listen = format!("127.0.0.1:{port}");
    Pipeline::start(
        &[corpus],
        tokenizer,
        &["--valid-fraction", "0.05", "--listen", &listen],
    )
}

/// Lines of a child's stderr as they come, echoed to the test's.
fn stderr_lines(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().expect("stderr");
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("  trainer: {line}");
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    receiver
}

/// Waits for a line containing `text`.
fn wait_for_line(lines: &mpsc::Receiver<String>, text: &str) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(text) => return,
            Ok(_) => {}
            Err(error) => panic!("no line with `{text}`: {error}"),
        }
    }
}

#[test]
fn a_trainer_on_two_replicas_survives_three_kills_of_the_first() {
    const STEPS: usize = 200;
    let Setup {
        dir,
        corpus,
        tokenizer,
        pipeline: second,
    } = setup("replicas_trainer");
    let port = free_port();
    let mut first = Some(replica(&corpus, &tokenizer, port));
    let first_url = first.as_ref().expect("started").url.clone();
    let out = dir.join("run");
    let mut command = Command::new(binary("flightlm-trainer"));
    command
        .args([
            "train",
            "--pipeline",
            &format!("{first_url},{}", second.url),
        ])
        // Steps long enough (~0.3 s) that the three kill cycles fit in the run.
        .args(["--objective", "mlm", "--preset", "tiny", "--seq-len", "64"])
        .args(["--batch-size", "64", "--grad-accum", "1", "--dropout", "0"])
        .args(["--warmup-steps", "2", "--max-steps", &STEPS.to_string()])
        .args([
            "--log-every",
            "1",
            "--eval-every",
            "1000",
            "--save-every",
            "50",
        ])
        .args(["--pipeline-retry-s", "60", "--out"])
        .arg(&out)
        // A small window keeps the stream on the pipeline's side: a kill cuts it mid-flight.
        .env("FLIGHTLM_STREAM_WINDOW_BYTES", "16384")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut trainer = KillOnDrop(command.spawn().expect("starting the trainer"));
    let lines = stderr_lines(&mut trainer.0);
    let (mut kills, mut returns) = (Vec::new(), Vec::new());
    for kill in 1..=3u64 {
        wait_for_step(&out, kill * 10, &mut trainer.0);
        kills.push(last_step(&out));
        drop(first.take()); // SIGKILL
        wait_for_line(&lines, "continuing on replica 2 of 2");
        std::thread::sleep(DOWN);
        first = Some(replica(&corpus, &tokenizer, port));
        returns.push(last_step(&out));
        // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
        unsafe {
            libc::kill(trainer.0.id() as libc::pid_t, libc::SIGUSR1);
        }
        wait_for_line(&lines, "back on replica 1 of 2");
    }
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = trainer.0.try_wait().expect("polling") {
            break status;
        }
        assert!(Instant::now() < deadline, "the run did not end");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert_exact_audit(&out, STEPS as u64, "three kills of the first replica");

    // The longest times between two steps after the kills (the stream moves to the second
    // replica) and after the returns (it reopens on the restarted first one).
    let elapsed: Vec<f64> = metrics(&out)
        .iter()
        .filter(|line| line["kind"] == "train")
        .map(|line| line["elapsed_s"].as_f64().expect("elapsed_s"))
        .collect();
    let gap = |step: usize| elapsed[step] - elapsed[step - 1];
    let longest_after = |events: &[u64]| {
        events
            .iter()
            .flat_map(|event| (*event as usize).max(1)..(*event as usize + 30).min(elapsed.len()))
            .map(gap)
            .fold(0.0, f64::max)
    };
    let (after_kills, after_returns) = (longest_after(&kills), longest_after(&returns));
    let mut gaps: Vec<f64> = (1..elapsed.len()).map(gap).collect();
    gaps.sort_by(f64::total_cmp);
    let (median, longest) = (gaps[gaps.len() / 2], gaps[gaps.len() - 1]);
    eprintln!(
        "{} steps, median {median:.3} s between steps; longest {after_kills:.3} s after the \
         kills, {after_returns:.3} s after the returns, {longest:.3} s in all (the first replica \
         stayed down {DOWN:?} three times)",
        elapsed.len()
    );
    assert!(
        longest < RETRY_INTERVAL_CAP,
        "a pause of {longest:.3} s: longer than a retry interval"
    );
}

#[test]
fn the_python_reader_fails_over_comes_back_and_refuses_another_corpus() {
    let Setup {
        dir,
        corpus,
        tokenizer,
        pipeline: second,
    } = setup("replicas_python");
    let port = free_port();
    let mut first = Some(replica(&corpus, &tokenizer, port));
    let first_url = first.as_ref().expect("started").url.clone();
    let other_dir = scratch_dir("replicas_python_other");
    let other_corpus = sample_corpus(&other_dir, 1500);
    let other = Pipeline::start(&[&other_corpus], &tokenizer, &["--valid-fraction", "0.05"]);

    let mut reader = KillOnDrop(
        Command::new(python())
            .arg(repo_root().join("tests/python/replica_reader.py"))
            .arg(format!("{first_url},{}", second.url))
            .args(["40", "6", "300", &other.url])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the reader"),
    );
    let mut stdin = reader.0.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(reader.0.stdout.take().expect("stdout")).lines();
    let mut next_line = || -> serde_json::Value {
        let line = stdout.next().expect("a line").expect("UTF-8");
        serde_json::from_str(&line).expect("JSON line")
    };
    assert_eq!(next_line()["url"], first_url.as_str());
    drop(first.take()); // SIGKILL
    writeln!(stdin, "go").expect("stdin");
    let leg = next_line();
    assert_eq!(leg["url"], second.url.as_str(), "{leg}");
    first = Some(replica(&corpus, &tokenizer, port));
    writeln!(stdin, "back").expect("stdin");
    let leg = next_line();
    assert_eq!(leg["url"], first_url.as_str(), "back on the first: {leg}");
    let leg = next_line();
    assert_eq!(
        leg["url"],
        first_url.as_str(),
        "the other corpus refused: {leg}"
    );
    let result = next_line();
    let refused = result["refused"].to_string();
    assert!(
        refused.contains(&other.url) && refused.contains("refused as a replica"),
        "{refused}"
    );

    let blocks: Vec<Vec<u32>> = serde_json::from_value(result["blocks"].clone()).expect("blocks");
    let dump = dir.join("whole.blocks");
    run_ok(
        Command::new(binary("flightlm-pipeline"))
            .args(["consume", "--pipeline", &first_url, "--seq-len", "40"])
            .args(["--batch-size", "6", "--epochs", "100"])
            .args(["--max-blocks", &blocks.len().to_string()])
            .arg("--dump")
            .arg(&dump),
        Duration::from_secs(120),
    );
    assert_eq!(
        blocks,
        read_dump(&dump),
        "no block lost or repeated over the moves"
    );
    drop(first);
}
