//! Access rules: a token is required from every client when set (wrong or missing: refused as
//! Unauthenticated, also for pyarrow's handshake), a non-loopback listener needs a token or
//! --insecure, streams are capped, requests are size-limited, and sources added at run time stay
//! inside --allow-root.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use flightlm_tests::{
    binary, last_json_line, python, run_with_timeout, sample_corpus, scratch_dir, train_tokenizer,
    Pipeline,
};

const TOKEN: &str = "s3cret-token-0123456789";

fn consume(pipeline: &Pipeline, token_file: Option<&Path>) -> Output {
    let mut command = Command::new(binary("flightlm-pipeline"));
    command
        .args(["consume", "--pipeline", &pipeline.url, "--seq-len", "32"])
        .args(["--batch-size", "8", "--max-blocks", "16"])
        .env_remove("FLIGHTLM_AUTH_TOKEN_FILE");
    if let Some(token_file) = token_file {
        command.env("FLIGHTLM_AUTH_TOKEN_FILE", token_file);
    }
    run_with_timeout(&mut command, Duration::from_secs(60))
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

/// pyarrow: handshake with the token as a Basic password, then read with the bearer it returns.
const PYARROW_WITH_TOKEN: &str = r#"
import json, sys
import pyarrow.flight as flight
client = flight.connect(sys.argv[1].replace("http://", "grpc://", 1))
try:
    header = client.authenticate_basic_token("trainer", sys.argv[2])
except flight.FlightUnauthenticatedError:
    print("unauthenticated")
    sys.exit(0)
options = flight.FlightCallOptions(headers=[header])
request = {"version": 2, "split": "train", "seq_len": 32, "batch_size": 8}
reader = client.do_get(flight.Ticket(json.dumps(request)), options)
print(reader.read_chunk().data.num_rows)
"#;

#[test]
fn tokens_are_required_and_checked() {
    let dir = scratch_dir("access-token");
    let corpus = sample_corpus(&dir, 600);
    let tokenizer = train_tokenizer(&dir, &corpus, 500);
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let wrong_file = dir.join("wrong");
    std::fs::write(&wrong_file, "not-the-token-0123456789").unwrap();
    let token_argument = token_file.to_str().unwrap().to_string();
    let pipeline = Pipeline::start(
        &[&corpus],
        &tokenizer,
        &[
            "--valid-fraction",
            "0",
            "--auth-token-file",
            &token_argument,
        ],
    );

    let missing = consume(&pipeline, None);
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("Unauthenticated"),
        "{}",
        stderr(&missing)
    );
    let wrong = consume(&pipeline, Some(&wrong_file));
    assert!(!wrong.status.success());
    assert!(
        stderr(&wrong).contains("Unauthenticated"),
        "{}",
        stderr(&wrong)
    );
    let right = consume(&pipeline, Some(&token_file));
    assert!(right.status.success(), "{}", stderr(&right));
    let summary = last_json_line(&String::from_utf8_lossy(&right.stdout));
    assert_eq!(summary["blocks"], 16);

    for (token, expected) in [(TOKEN, "8"), ("guess-guess-guess-guess", "unauthenticated")] {
        let output = run_with_timeout(
            Command::new(python()).args(["-c", PYARROW_WITH_TOKEN, &pipeline.url, token]),
            Duration::from_secs(60),
        );
        let printed = String::from_utf8_lossy(&output.stdout).trim().to_string();
        assert_eq!(printed, expected, "{}", stderr(&output));
    }
}

#[test]
fn non_loopback_listeners_need_a_token_or_insecure() {
    let dir = scratch_dir("access-listen");
    let corpus = sample_corpus(&dir, 200);
    let tokenizer = train_tokenizer(&dir, &corpus, 400);
    // Refused before anything is bound.
    let output = run_with_timeout(
        Command::new(binary("flightlm-pipeline"))
            .args(["serve", "--input"])
            .arg(&corpus)
            .arg("--tokenizer")
            .arg(&tokenizer)
            .args(["--listen", "0.0.0.0:0"]),
        Duration::from_secs(60),
    );
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(
        message.contains("refusing to listen on 0.0.0.0:0") && message.contains("--insecure"),
        "{message}"
    );
}

#[test]
fn streams_are_capped() {
    let dir = scratch_dir("access-streams");
    let corpus = sample_corpus(&dir, 600);
    let tokenizer = train_tokenizer(&dir, &corpus, 500);
    let pipeline = Pipeline::start(
        &[&corpus],
        &tokenizer,
        &["--valid-fraction", "0", "--max-streams", "1"],
    );
    // One stream held open by a reader that stops after its first batch.
    let mut holder = Command::new(python())
        .args([
            "-c",
            "import json,sys,time\nimport pyarrow.flight as f\n\
             c=f.connect(sys.argv[1].replace('http://','grpc://',1))\n\
             r=c.do_get(f.Ticket(json.dumps({'version':2,'split':'train','seq_len':32,'batch_size':4})))\n\
             r.read_chunk()\nprint('holding',flush=True)\ntime.sleep(60)",
            &pipeline.url,
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "holding");
    let refused = consume(&pipeline, None);
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("ResourceExhausted")
            && stderr(&refused).contains("--max-streams"),
        "{}",
        stderr(&refused)
    );
}

/// A 2 MiB action body and a ticket asking for more than the largest batch: both refused with
/// reasons, and the pipeline keeps serving.
const PYARROW_OVERSIZED: &str = r#"
import json, sys
import pyarrow.flight as flight
client = flight.connect(sys.argv[1].replace("http://", "grpc://", 1))
try:
    list(client.do_action(flight.Action("add-source", b"x" * (2 << 20))))
    print("accepted")
except Exception as error:
    print("refused:", str(error).splitlines()[0])
request = {"version": 2, "split": "train", "seq_len": 512, "batch_size": 10 ** 9}
try:
    client.do_get(flight.Ticket(json.dumps(request))).read_chunk()
    print("accepted")
except Exception as error:
    print("refused:", str(error).splitlines()[0])
"#;

#[test]
fn requests_are_size_limited() {
    let dir = scratch_dir("access-sizes");
    let corpus = sample_corpus(&dir, 300);
    let tokenizer = train_tokenizer(&dir, &corpus, 400);
    let pipeline = Pipeline::start(&[&corpus], &tokenizer, &[]);
    let output = run_with_timeout(
        Command::new(python()).args(["-c", PYARROW_OVERSIZED, &pipeline.url]),
        Duration::from_secs(60),
    );
    let answers = String::from_utf8_lossy(&output.stdout).to_string();
    let lines: Vec<&str> = answers.lines().collect();
    assert_eq!(lines.len(), 2, "{answers}\n{}", stderr(&output));
    assert!(
        lines[0].starts_with("refused:") && lines[0].contains("too large"),
        "{answers}"
    );
    assert!(
        lines[1].starts_with("refused:") && lines[1].contains("batch_size"),
        "{answers}"
    );
    let health = consume(&pipeline, None);
    assert!(health.status.success(), "{}", stderr(&health));
}

fn add_source(pipeline: &Pipeline, input: &Path) -> Output {
    let body = serde_json::json!({ "name": "extra", "inputs": [input], "weight": 1.0 });
    run_with_timeout(
        Command::new(binary("flightlm-pipeline")).args([
            "action",
            "--pipeline",
            &pipeline.url,
            "add-source",
            &body.to_string(),
        ]),
        Duration::from_secs(60),
    )
}

#[test]
fn added_sources_stay_inside_the_allowed_roots() {
    let dir = scratch_dir("access-roots");
    let corpus = sample_corpus(&dir, 300);
    let tokenizer = train_tokenizer(&dir, &corpus, 400);
    let root = dir.join("allowed");
    std::fs::create_dir_all(&root).unwrap();
    let outside = dir.join("outside.txt");
    std::fs::write(&outside, "a secret line\n").unwrap();
    let link = root.join("escape.txt");
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let inside = root.join("inside.txt");
    std::fs::write(&inside, "an allowed line\n").unwrap();

    let closed = Pipeline::start(&[&corpus], &tokenizer, &[]);
    let refused = add_source(&closed, &inside);
    assert!(
        stderr(&refused).contains("--allow-root"),
        "{}",
        stderr(&refused)
    );

    let root_argument = root.to_str().unwrap().to_string();
    let pipeline = Pipeline::start(&[&corpus], &tokenizer, &["--allow-root", &root_argument]);
    for attempt in [root.join("../outside.txt"), link.clone(), outside.clone()] {
        let output = add_source(&pipeline, &attempt);
        assert!(!output.status.success(), "{attempt:?} was accepted");
        assert!(
            stderr(&output).contains("outside the allowed roots"),
            "{}",
            stderr(&output)
        );
    }
    let accepted = add_source(&pipeline, &inside);
    assert!(accepted.status.success(), "{}", stderr(&accepted));
}
