//! Objects that change while the pipeline serves: one put under a watched prefix is listed at the
//! next poll and read by the streams that follow, as a file added to a watched directory is; one
//! replaced while it is read ends the stream with an error naming it, never mixing two versions;
//! a cursor taken before an object was replaced is refused after a restart, naming the object
//! (or, with `--on-changed-object restart-source`, that source starts again), and `--watch`
//! gives new streams the new version.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flightlm_tests::object_servers::ObjectServer;
use flightlm_tests::{
    binary, last_json_line, read_dump, run_ok, sample_lines, scratch_dir, train_tokenizer, Pipeline,
};

fn one_pass(pipeline: &Pipeline, dump: &std::path::Path) -> Vec<Vec<u32>> {
    run_ok(
        Command::new(binary("flightlm-pipeline"))
            .args(["consume", "--pipeline", &pipeline.url, "--epochs", "1"])
            .args(["--seq-len", "64", "--batch-size", "8", "--dump"])
            .arg(dump),
        Duration::from_secs(120),
    );
    read_dump(dump)
}

fn stats(pipeline: &Pipeline) -> serde_json::Value {
    last_json_line(&run_ok(
        Command::new(binary("flightlm-pipeline")).args(["stats", "--pipeline", &pipeline.url]),
        Duration::from_secs(30),
    ))
}

#[test]
fn an_object_put_under_a_watched_prefix_reaches_the_pipeline() {
    let dir = scratch_dir("remote-watch");
    let lines = sample_lines(1400);
    let bucket = dir.join("bucket");
    let incoming = bucket.join("incoming");
    std::fs::create_dir_all(&incoming).unwrap();
    std::fs::write(incoming.join("a-first.txt"), lines[..700].join("\n") + "\n").unwrap();
    let added = dir.join("b-added.txt");
    std::fs::write(&added, lines[700..].join("\n") + "\n").unwrap();
    let tokenizer = train_tokenizer(&dir, &incoming.join("a-first.txt"), 1000);
    let server = ObjectServer::s3(&bucket, "corpus");
    let pipeline = Pipeline::start_configured(
        &tokenizer,
        &[
            "--input",
            "s3://corpus/incoming",
            "--watch",
            "s3://corpus/incoming",
            "--watch-interval-ms",
            "100",
            "--valid-fraction",
            "0",
        ],
        |command| {
            command.envs(server.s3_environment(&server.endpoint));
        },
    );
    assert_eq!(stats(&pipeline)["sources"][0]["files"], 1);
    server.upload(&added, "corpus", "incoming/b-added.txt");
    let deadline = Instant::now() + Duration::from_secs(30);
    while stats(&pipeline)["sources"][0]["files"] != 2 {
        assert!(
            Instant::now() < deadline,
            "the new object was not picked up within 30 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let streamed = one_pass(&pipeline, &dir.join("remote.jsonl"));
    let local = dir.join("local");
    std::fs::create_dir_all(&local).unwrap();
    std::fs::copy(incoming.join("a-first.txt"), local.join("a-first.txt")).unwrap();
    std::fs::copy(&added, local.join("b-added.txt")).unwrap();
    let reference = Pipeline::start(&[&local], &tokenizer, &["--valid-fraction", "0"]);
    let expected = one_pass(&reference, &dir.join("local.jsonl"));
    assert_eq!(streamed, expected, "both objects, in name order");
}

#[test]
fn an_object_replaced_while_it_is_read_ends_the_stream_with_an_error_naming_it() {
    let dir = scratch_dir("remote-replaced");
    let lines = sample_lines(1400);
    let bucket = dir.join("bucket");
    std::fs::create_dir_all(&bucket).unwrap();
    std::fs::write(bucket.join("books.txt"), lines[..300].join("\n") + "\n").unwrap();
    let replacement = dir.join("replacement.txt");
    std::fs::write(&replacement, lines[300..].join("\n") + "\n").unwrap();
    let tokenizer = train_tokenizer(&dir, &bucket.join("books.txt"), 1000);
    let server = ObjectServer::s3(&bucket, "corpus");
    let pipeline = Pipeline::start_configured(
        &tokenizer,
        &["--input", "s3://corpus/books.txt", "--valid-fraction", "0"],
        |command| {
            command.envs(server.s3_environment(&server.endpoint));
        },
    );
    // A stream of many passes re-reads the object at every pass.
    let consumer = Command::new(binary("flightlm-pipeline"))
        .args(["consume", "--pipeline", &pipeline.url, "--epochs", "100000"])
        .args([
            "--seq-len",
            "64",
            "--batch-size",
            "8",
            "--max-blocks",
            "100000000",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting a consumer");
    let deadline = Instant::now() + Duration::from_secs(60);
    while stats(&pipeline)["blocks"].as_u64() < Some(100) {
        assert!(Instant::now() < deadline, "no blocks within 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    server.upload(&replacement, "corpus", "books.txt");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sender.send(consumer.wait_with_output());
    });
    let output = receiver
        .recv_timeout(Duration::from_secs(60))
        .expect("the stream did not end within 60 s of the change")
        .expect("consumer output");
    assert!(!output.status.success(), "the stream must fail");
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("the stream ended with: {}", stderr.trim());
    assert!(
        stderr.contains("s3://corpus/books.txt") && stderr.contains("changed while it was read"),
        "{stderr}"
    );
}

/// `consume` of `blocks` blocks (all of one pass when `None`) from `cursor`: its output.
fn consume_from(
    pipeline: &Pipeline,
    dump: &Path,
    blocks: Option<u64>,
    cursor: Option<&serde_json::Value>,
) -> std::process::Output {
    let mut command = Command::new(binary("flightlm-pipeline"));
    command
        .args(["consume", "--pipeline", &pipeline.url, "--epochs", "1"])
        .args(["--seq-len", "64", "--batch-size", "8", "--dump"])
        .arg(dump);
    if let Some(blocks) = blocks {
        command.args(["--max-blocks", &blocks.to_string()]);
    }
    if let Some(cursor) = cursor {
        command.args(["--cursor", &cursor.to_string()]);
    }
    flightlm_tests::run_with_timeout(&mut command, Duration::from_secs(120))
}

#[test]
fn a_cursor_into_a_replaced_object_is_refused_after_a_restart() {
    let dir = scratch_dir("remote-replaced-resume");
    let lines = sample_lines(1400);
    let bucket = dir.join("bucket");
    std::fs::create_dir_all(&bucket).unwrap();
    std::fs::write(bucket.join("books.txt"), lines[..700].join("\n") + "\n").unwrap();
    let replacement = dir.join("replacement.txt");
    std::fs::write(&replacement, lines[700..].join("\n") + "\n").unwrap();
    let tokenizer = train_tokenizer(&dir, &bucket.join("books.txt"), 1000);
    let server = ObjectServer::s3(&bucket, "corpus");
    let start = |extra: &[&str]| {
        let mut arguments = vec!["--input", "s3://corpus", "--valid-fraction", "0"];
        arguments.extend(extra);
        Pipeline::start_configured(&tokenizer, &arguments, |command| {
            command.envs(server.s3_environment(&server.endpoint));
        })
    };
    let first = start(&[]);
    let taken = consume_from(&first, &dir.join("first.jsonl"), Some(30), None);
    assert!(taken.status.success());
    let cursor = last_json_line(&String::from_utf8_lossy(&taken.stdout))["cursor"].clone();
    let position = cursor["state"]["sources"][0].clone();
    assert!(
        position["file_version"]["etag"].is_string(),
        "the cursor names the object's version: {position}"
    );
    let watching = start(&["--watch", "s3://corpus", "--watch-interval-ms", "100"]);
    drop(first);

    server.upload(&replacement, "corpus", "books.txt");
    let restarted = start(&[]);
    let refused = consume_from(&restarted, &dir.join("refused.jsonl"), None, Some(&cursor));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "resumed on another version");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("rror"))
        .collect();
    assert_eq!(errors.len(), 1, "one line: {stderr}");
    assert!(
        errors[0].contains("s3://corpus/books.txt") && errors[0].contains("changed since"),
        "{stderr}"
    );
    eprintln!("refused: {}", errors[0]);

    // The new version from its start, as a stream without a cursor reads it.
    let fresh_output = consume_from(&restarted, &dir.join("fresh.jsonl"), None, None);
    assert!(fresh_output.status.success());
    let fresh = read_dump(&dir.join("fresh.jsonl"));
    let restarting = start(&["--on-changed-object", "restart-source"]);
    let resumed = consume_from(&restarting, &dir.join("resumed.jsonl"), None, Some(&cursor));
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let skip = cursor["skip"].as_u64().unwrap() as usize;
    assert_eq!(
        read_dump(&dir.join("resumed.jsonl")),
        fresh[skip..],
        "the source starts again on the new version"
    );

    // The watching pipeline, started on the old version, serves the new one to new streams.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let output = consume_from(&watching, &dir.join("watched.jsonl"), None, None);
        if output.status.success() && read_dump(&dir.join("watched.jsonl")) == fresh {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "--watch did not take the new version"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
