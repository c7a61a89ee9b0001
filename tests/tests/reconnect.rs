//! The trainer survives its pipeline going away: it reports "pipeline unavailable, retrying",
//! reconnects with backoff when a pipeline is back on the same address, resumes the stream from
//! the last block it received, and finishes the run, having trained on every block of the stream
//! exactly once (`audit-blocks`). The pipeline goes away by SIGKILL, by SIGTERM (which ends its
//! streams cleanly and exits 0), and by a link that resets connections
//! (`flightlm-fault-proxy`). `consume` reconnects the same way.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use flightlm_tests::fault_proxy::FaultProxy;
use flightlm_tests::runs::last_step;
use flightlm_tests::{
    binary, last_json_line, run_ok, sample_corpus, scratch_dir, train_tokenizer, Pipeline,
};

const STEPS: u64 = 150;

fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("127.0.0.1:{}", listener.local_addr().unwrap().port())
}

/// A trainer process reading `url`, its stderr lines collected as they come.
struct Trainer {
    child: Child,
    stderr: Receiver<String>,
    out: PathBuf,
}

impl Trainer {
    fn start(url: &str, out: &Path) -> Trainer {
        let mut child = Command::new(binary("flightlm-trainer"))
            .args(["train", "--pipeline", url, "--preset", "tiny"])
            .args(["--max-steps", &STEPS.to_string(), "--seq-len", "32"])
            .args(["--batch-size", "8", "--grad-accum", "1", "--log-every", "1"])
            .args(["--eval-every", "1000", "--save-every", "1000"])
            .args(["--pipeline-retry-s", "60", "--out"])
            .arg(out)
            // A small HTTP/2 window keeps most of the stream on the pipeline's side, so cutting
            // the connection mid-run really cuts the stream.
            .env("FLIGHTLM_STREAM_WINDOW_BYTES", "16384")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the trainer");
        let stderr = child.stderr.take().unwrap();
        let (lines, received) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        Trainer {
            child,
            stderr: received,
            out: out.to_path_buf(),
        }
    }

    fn wait_for_step(&self, step: u64) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while last_step(&self.out) < step {
            assert!(
                Instant::now() < deadline,
                "training did not reach step {step}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for a successful exit and checks the run: every step, every block exactly once,
    /// and at least one reconnection. Returns the stderr lines.
    fn finish(mut self) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(240);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the trainer did not finish");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let log: Vec<String> = self.stderr.try_iter().collect();
        assert!(status.success(), "{}", log.join("\n"));
        assert!(
            log.iter()
                .any(|line| line.contains("pipeline unavailable, retrying")),
            "{}",
            log.join("\n")
        );
        assert_eq!(last_step(&self.out), STEPS);
        let audit = last_json_line(&run_ok(
            Command::new(binary("flightlm-trainer"))
                .arg("audit-blocks")
                .arg(&self.out),
            Duration::from_secs(30),
        ));
        assert_eq!(audit["steps"], STEPS, "{audit}");
        assert_eq!(audit["rows"], STEPS * 8, "{audit}");
        assert_eq!(
            (audit["lost"].as_u64(), audit["repeated"].as_u64()),
            (Some(0), Some(0))
        );
        log
    }
}

#[test]
fn training_continues_through_pipeline_restarts() {
    let dir = scratch_dir("reconnect");
    let corpus = sample_corpus(&dir, 1500);
    let tokenizer = train_tokenizer(&dir, &corpus, 600);
    let listen = free_address();
    let corpus_argument = corpus.to_str().unwrap().to_string();
    let arguments = [
        "--input",
        &corpus_argument,
        "--listen",
        &listen,
        "--shuffle-window",
        "32",
    ];
    let first = Pipeline::start_with(&tokenizer, &arguments);
    let trainer = Trainer::start(&first.url, &dir.join("run"));

    trainer.wait_for_step(5);
    drop(first); // SIGKILL
    std::thread::sleep(Duration::from_millis(500));
    let mut second = Pipeline::start_with(&tokenizer, &arguments);

    trainer.wait_for_step(40);
    let status = second.terminate(Duration::from_secs(15));
    assert!(
        status.success(),
        "SIGTERM ends the pipeline cleanly: {status}"
    );
    let third = Pipeline::start_with(&tokenizer, &arguments);

    let log = trainer.finish();
    assert!(
        log.iter().any(|line| line.contains("shutting down")),
        "the SIGTERMed pipeline told the trainer why its stream ended: {}",
        log.join("\n")
    );
    let stats = last_json_line(&run_ok(
        Command::new(binary("flightlm-pipeline")).args(["stats", "--pipeline", &third.url]),
        Duration::from_secs(30),
    ));
    let resumed = stats["streams"]
        .as_array()
        .unwrap()
        .iter()
        .any(|stream| stream["split"] == "train" && stream["resumed"] == true);
    assert!(
        resumed,
        "the trainer resumed its stream from a cursor: {stats}"
    );
}

#[test]
fn training_continues_through_a_link_that_resets_connections() {
    let dir = scratch_dir("reconnect-faulty-link");
    let corpus = sample_corpus(&dir, 1500);
    let tokenizer = train_tokenizer(&dir, &corpus, 600);
    let pipeline = Pipeline::start(&[&corpus], &tokenizer, &["--shuffle-window", "32"]);
    let (mut proxy, proxied, received_events) =
        FaultProxy::start(&pipeline.url, "50", "0.5", "1.5");
    let trainer = Trainer::start(&proxied, &dir.join("run"));
    trainer.finish();
    assert!(
        proxy.resets(&received_events) >= 1,
        "the proxy reset at least one connection mid-run"
    );
}

/// `consume` reconnects too: through a link that resets connections it reads exactly the blocks
/// it reads without one.
#[test]
fn consume_reads_through_a_link_that_resets_connections() {
    let dir = scratch_dir("reconnect-consume");
    let corpus = sample_corpus(&dir, 4000);
    let tokenizer = train_tokenizer(&dir, &corpus, 600);
    let pipeline = Pipeline::start(&[&corpus], &tokenizer, &["--shuffle-window", "32"]);
    let consume = |url: &str, dump: &Path| {
        last_json_line(&run_ok(
            Command::new(binary("flightlm-pipeline"))
                .args(["consume", "--pipeline", url, "--seq-len", "32"])
                .args(["--batch-size", "8", "--epochs", "1", "--retry-s", "30"])
                .arg("--dump")
                .arg(dump)
                .env("FLIGHTLM_STREAM_WINDOW_BYTES", "16384"),
            Duration::from_secs(120),
        ))
    };
    let direct = consume(&pipeline.url, &dir.join("direct.blocks"));
    assert_eq!(direct["reconnections"], 0);

    let (mut proxy, proxied, events) = FaultProxy::start(&pipeline.url, "1", "0.2", "0.4");
    let through_resets = consume(&proxied, &dir.join("proxied.blocks"));
    assert!(proxy.resets(&events) >= 1, "the proxy reset connections");
    assert!(
        through_resets["reconnections"].as_u64().unwrap() >= 1,
        "{through_resets}"
    );
    assert_eq!(through_resets["blocks"], direct["blocks"]);
    assert_eq!(
        flightlm_tests::read_dump(&dir.join("proxied.blocks")),
        flightlm_tests::read_dump(&dir.join("direct.blocks")),
        "the same blocks, none lost or repeated"
    );
}

/// The Python reader (`python/flightlm_stream.py`) through the same link: resets reconnect it
/// and it yields exactly the blocks `consume` reads directly.
#[test]
fn the_python_reader_reads_through_a_link_that_resets_connections() {
    let dir = scratch_dir("reconnect-python");
    let corpus = sample_corpus(&dir, 4000);
    let tokenizer = train_tokenizer(&dir, &corpus, 600);
    let pipeline = Pipeline::start(&[&corpus], &tokenizer, &["--shuffle-window", "32"]);
    let direct = dir.join("direct.blocks");
    run_ok(
        Command::new(binary("flightlm-pipeline"))
            .args(["consume", "--pipeline", &pipeline.url, "--seq-len", "32"])
            .args(["--batch-size", "8", "--epochs", "1", "--dump"])
            .arg(&direct),
        Duration::from_secs(120),
    );
    let (mut proxy, proxied, events) = FaultProxy::start(&pipeline.url, "1", "0.2", "0.4");
    let through_resets = dir.join("proxied.blocks");
    let summary = last_json_line(&run_ok(
        Command::new(flightlm_tests::python())
            .arg(flightlm_tests::repo_root().join("scripts/read_stream.py"))
            .args([
                "--pipeline",
                &proxied,
                "--seq-len",
                "32",
                "--batch-size",
                "8",
            ])
            .args(["--epochs", "1", "--retry-s", "30", "--dump"])
            .arg(&through_resets),
        Duration::from_secs(120),
    ));
    assert!(proxy.resets(&events) >= 1, "the proxy reset connections");
    assert!(summary["reconnections"].as_u64().unwrap() >= 1, "{summary}");
    assert_eq!(
        flightlm_tests::read_dump(&through_resets),
        flightlm_tests::read_dump(&direct),
        "the same blocks, none lost or repeated"
    );
}
