//! Live corpora: files added to a watched directory and sources added by an action reach a
//! running stream without restarting anything, and per-source counts add up to what was served.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flightlm_tests::{
    binary, last_json_line, read_dump, run_ok, sample_lines, scratch_dir, train_tokenizer, Pipeline,
};

const BOS: u32 = 0;
const EOS: u32 = 2;

/// Whole documents (`<s> … </s>`) found in a block stream.
fn documents(blocks: &[Vec<u32>]) -> Vec<Vec<u32>> {
    let mut documents = Vec::new();
    let mut current: Option<Vec<u32>> = None;
    for &token in blocks.iter().flatten() {
        match token {
            BOS => current = Some(vec![BOS]),
            EOS => documents.extend(current.take().map(|mut document| {
                document.push(EOS);
                document
            })),
            other => {
                if let Some(document) = current.as_mut() {
                    document.push(other);
                }
            }
        }
    }
    documents
}

fn action(pipeline: &Pipeline, name: &str, body: &str) -> serde_json::Value {
    last_json_line(&run_ok(
        Command::new(binary("flightlm-pipeline")).args([
            "action",
            "--pipeline",
            &pipeline.url,
            name,
            body,
        ]),
        Duration::from_secs(30),
    ))
}

/// A consumer reading `blocks` blocks (bounded) into `dump`, in the background.
fn start_consumer(pipeline: &Pipeline, dump: &Path, blocks: u64) -> Child {
    Command::new(binary("flightlm-pipeline"))
        .args(["consume", "--pipeline", &pipeline.url, "--epochs", "100000"])
        .args(["--seq-len", "64", "--batch-size", "8"])
        .args(["--max-blocks", &blocks.to_string(), "--dump"])
        .arg(dump)
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting a consumer")
}

/// Reads `max_blocks` blocks of a long train stream (after `cursor`) and returns the summary.
fn read_blocks(pipeline: &Pipeline, max_blocks: u64, cursor: Option<&str>) -> serde_json::Value {
    let mut command = Command::new(binary("flightlm-pipeline"));
    command
        .args(["consume", "--pipeline", &pipeline.url, "--epochs", "100000"])
        .args(["--seq-len", "64", "--batch-size", "8"])
        .args(["--max-blocks", &max_blocks.to_string()]);
    if let Some(cursor) = cursor {
        command.args(["--cursor", cursor]);
    }
    last_json_line(&run_ok(&mut command, Duration::from_secs(60)))
}

/// Waits (bounded) until the pipeline has sent at least one block on an active stream.
fn wait_until_streaming(pipeline: &Pipeline) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        let stats = action(pipeline, "stats", "");
        if stats["active_streams"].as_u64() > Some(0) && stats["blocks"].as_u64() > Some(0) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no stream started within 60 s");
}

fn finish(consumer: Child) -> serde_json::Value {
    let output = consumer.wait_with_output().expect("consumer output");
    assert!(output.status.success(), "consumer failed");
    last_json_line(&String::from_utf8_lossy(&output.stdout))
}

/// The documents of `file` as a pipeline of its own serves them.
fn documents_of(file: &Path, tokenizer: &Path, dump: &Path) -> Vec<Vec<u32>> {
    let reference = Pipeline::start(&[file], tokenizer, &["--valid-fraction", "0"]);
    run_ok(
        Command::new(binary("flightlm-pipeline"))
            .args(["consume", "--pipeline", &reference.url, "--epochs", "1"])
            .args(["--seq-len", "64", "--batch-size", "8", "--dump"])
            .arg(dump),
        Duration::from_secs(60),
    );
    documents(&read_dump(dump))
}

/// Every stream's per-source tokens sum to the tokens it served.
fn assert_sources_add_up(stats: &serde_json::Value) {
    for stream in stats["streams"].as_array().expect("streams") {
        let by_source: u64 = stream["sources"]
            .as_array()
            .expect("per-source counts")
            .iter()
            .map(|source| source["tokens"].as_u64().unwrap())
            .sum();
        assert_eq!(by_source, stream["tokens"].as_u64().unwrap(), "{stream}");
    }
}

#[test]
fn a_file_added_to_a_watched_directory_reaches_the_running_stream() {
    let dir = scratch_dir("live-watch");
    let lines = sample_lines(1400);
    let watched = dir.join("incoming");
    std::fs::create_dir_all(&watched).unwrap();
    let first = watched.join("a-first.txt");
    std::fs::write(&first, lines[..700].join("\n") + "\n").unwrap();
    let tokenizer = train_tokenizer(&dir, &first, 1000);
    let pipeline = Pipeline::start(
        &[&watched],
        &tokenizer,
        &[
            "--watch",
            watched.to_str().unwrap(),
            "--watch-interval-ms",
            "100",
            "--valid-fraction",
            "0",
        ],
    );
    let dump = dir.join("stream.jsonl");
    let consumer = start_consumer(&pipeline, &dump, 60_000);
    wait_until_streaming(&pipeline);
    // Written under a hidden name and renamed, as a producer of corpus files should.
    let added = watched.join("b-added.txt");
    let hidden = watched.join(".b-added.txt");
    std::fs::write(&hidden, lines[700..].join("\n") + "\n").unwrap();
    std::fs::rename(&hidden, &added).unwrap();
    let summary = finish(consumer);
    assert_eq!(summary["blocks"], 60_000);

    let streamed = documents(&read_dump(&dump));
    let new_documents = documents_of(&added, &tokenizer, &dir.join("added.jsonl"));
    assert!(!new_documents.is_empty());
    let found = new_documents
        .iter()
        .filter(|document| streamed.contains(document))
        .count();
    assert_eq!(
        found,
        new_documents.len(),
        "every document of the added file was streamed"
    );
    let stats = action(&pipeline, "stats", "");
    assert_eq!(stats["sources"][0]["files"], 2);
    assert_sources_add_up(&stats);
}

#[test]
fn a_source_added_by_action_joins_the_mixture_and_cursors_stay_valid() {
    let dir = scratch_dir("live-add-source");
    let lines = sample_lines(1400);
    let base = dir.join("base.txt");
    std::fs::write(&base, lines[..700].join("\n") + "\n").unwrap();
    let extra = dir.join("extra.jsonl");
    let records: Vec<String> = lines[700..]
        .iter()
        .map(|line| serde_json::json!({ "text": line }).to_string())
        .collect();
    std::fs::write(&extra, records.join("\n") + "\n").unwrap();
    let tokenizer = train_tokenizer(&dir, &base, 1000);
    let root = dir.to_str().unwrap().to_string();
    let pipeline = Pipeline::start(
        &[&base],
        &tokenizer,
        &["--valid-fraction", "0", "--allow-root", &root],
    );

    // A cursor from before the change.
    let before = read_blocks(&pipeline, 100, None);
    let consumer = start_consumer(&pipeline, &dir.join("stream.jsonl"), 40_000);
    wait_until_streaming(&pipeline);
    let body = serde_json::json!({ "name": "extra", "inputs": [extra], "weight": 1.0 });
    let sources = action(&pipeline, "add-source", &body.to_string());
    assert_eq!(sources.as_array().unwrap().len(), 2, "{sources}");
    finish(consumer);

    let stats = action(&pipeline, "stats", "");
    let running = &stats["streams"][1];
    let extra_blocks = running["sources"][1]["blocks"].as_u64().unwrap_or(0);
    assert_eq!(running["sources"][1]["source"], "extra");
    assert!(
        extra_blocks > 0,
        "the running stream received the new source: {running}"
    );
    assert_sources_add_up(&stats);

    // The old cursor resumes (the new source joins from its start), and so does a new one.
    let cursor = before["cursor"].to_string();
    let resumed = read_blocks(&pipeline, 200, Some(&cursor));
    assert_eq!(resumed["blocks"], 200);
    let after = resumed["cursor"].to_string();
    assert!(after.contains("\"extra\""), "{after}");
    let again = read_blocks(&pipeline, 50, Some(&after));
    assert_eq!(again["blocks"], 50);
}
