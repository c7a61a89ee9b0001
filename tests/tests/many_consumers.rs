//! Concurrent consumers with different seq_len, split and shard each get their own stream and
//! backpressure: a client that stops reading does not slow the others.

use std::process::{Command, Stdio};
use std::time::Duration;

use flightlm_tests::{
    binary, last_json_line, python, run_ok, sample_corpus, scratch_dir, train_tokenizer, Pipeline,
};

/// Opens a stream from Python, reads one batch, then stops reading (bounded: 60 s).
const STALLED_READER: &str = r#"
import json, sys, time
import pyarrow.flight as flight
client = flight.connect(sys.argv[1].replace("http://", "grpc://", 1))
request = {"version": 2, "split": "train", "seq_len": 32, "batch_size": 4}
reader = client.do_get(flight.Ticket(json.dumps(request)))
reader.read_chunk()
print("reading stopped", flush=True)
time.sleep(60)
"#;

#[test]
fn a_stalled_client_does_not_slow_the_others() {
    let dir = scratch_dir("many-consumers");
    let corpus = sample_corpus(&dir, 4000);
    let tokenizer = train_tokenizer(&dir, &corpus, 800);
    let pipeline = Pipeline::start(&[&corpus], &tokenizer, &["--valid-fraction", "0.05"]);

    let mut stalled = Command::new(python())
        .args(["-c", STALLED_READER, &pipeline.url])
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the stalled reader");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(stalled.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "reading stopped");

    // While it holds its stream open, three different streams run to their end (a shared stage
    // would block behind the stalled one and the bounded run below would time out).
    let readers: Vec<_> = [
        ["--seq-len", "128", "--split", "train", "--shard", "0/2"],
        ["--seq-len", "64", "--split", "train", "--shard", "1/2"],
        ["--seq-len", "48", "--split", "valid", "--shard", "0/1"],
    ]
    .into_iter()
    .map(|arguments| {
        let url = pipeline.url.clone();
        std::thread::spawn(move || {
            last_json_line(&run_ok(
                Command::new(binary("flightlm-pipeline"))
                    .args(["consume", "--pipeline", &url, "--batch-size", "16"])
                    .args(["--epochs", "2"])
                    .args(arguments),
                Duration::from_secs(90),
            ))
        })
    })
    .collect();
    for reader in readers {
        let summary = reader.join().expect("a reader thread");
        assert!(summary["blocks"].as_u64() > Some(0), "{summary}");
    }

    let stats = last_json_line(&run_ok(
        Command::new(binary("flightlm-pipeline")).args(["stats", "--pipeline", &pipeline.url]),
        Duration::from_secs(30),
    ));
    let streams = stats["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 4, "{stats}");
    assert_eq!(
        stats["active_streams"], 1,
        "only the stalled stream is open: {stats}"
    );
    let _ = stalled.kill();
    let _ = stalled.wait();
}
