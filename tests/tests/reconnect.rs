//! The trainer survives its pipeline going away: it reports "pipeline unavailable, retrying",
//! reconnects with backoff when a pipeline is back on the same address, resumes the stream from
//! the last block it received, and finishes the run.

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flightlm_tests::{
    binary, last_json_line, run_ok, sample_corpus, scratch_dir, train_tokenizer, Pipeline,
};

fn last_step(metrics: &std::path::Path) -> u64 {
    std::fs::read_to_string(metrics)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["kind"] == "train")
        .filter_map(|line| line["step"].as_u64())
        .max()
        .unwrap_or(0)
}

#[test]
fn training_continues_through_a_pipeline_restart() {
    let dir = scratch_dir("reconnect");
    let corpus = sample_corpus(&dir, 1500);
    let tokenizer = train_tokenizer(&dir, &corpus, 600);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
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

    let out = dir.join("run");
    let mut trainer = Command::new(binary("flightlm-trainer"))
        .args(["train", "--pipeline", &first.url, "--preset", "tiny"])
        .args(["--max-steps", "150", "--seq-len", "32", "--batch-size", "8"])
        .args([
            "--grad-accum",
            "1",
            "--log-every",
            "1",
            "--eval-every",
            "1000",
        ])
        .args(["--save-every", "1000", "--pipeline-retry-s", "60", "--out"])
        .arg(&out)
        // A small HTTP/2 window keeps most of the stream on the pipeline's side, so killing it
        // mid-run really cuts the stream.
        .env("FLIGHTLM_STREAM_WINDOW_BYTES", "16384")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the trainer");
    let stderr = trainer.stderr.take().unwrap();
    let (lines, received) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines.send(line);
        }
    });

    let metrics = out.join("metrics.jsonl");
    let deadline = Instant::now() + Duration::from_secs(120);
    while last_step(&metrics) < 5 {
        assert!(Instant::now() < deadline, "training did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(first); // SIGKILL
    std::thread::sleep(Duration::from_millis(500));
    let second = Pipeline::start_with(&tokenizer, &arguments);

    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = trainer.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = trainer.kill();
            panic!("the trainer did not finish");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let log: Vec<String> = received.try_iter().collect();
    assert!(status.success(), "{}", log.join("\n"));
    assert!(
        log.iter()
            .any(|line| line.contains("pipeline unavailable, retrying")),
        "{}",
        log.join("\n")
    );
    assert_eq!(last_step(&metrics), 150);
    let stats = last_json_line(&run_ok(
        Command::new(binary("flightlm-pipeline")).args(["stats", "--pipeline", &second.url]),
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
