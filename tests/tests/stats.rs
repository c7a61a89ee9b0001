//! `flightlm-pipeline stats` reports every stream's counters, and they add up to what the
//! consumers received; rows that are not documents are counted, not lost silently.

use std::process::Command;
use std::time::Duration;

use flightlm_tests::{
    binary, last_json_line, run_ok, sample_lines, scratch_dir, train_tokenizer, Pipeline,
};

fn consume(url: &str, split: &str) -> serde_json::Value {
    last_json_line(&run_ok(
        Command::new(binary("flightlm-pipeline"))
            .args(["consume", "--pipeline", url, "--split", split])
            .args(["--seq-len", "24", "--batch-size", "5", "--epochs", "1"]),
        Duration::from_secs(60),
    ))
}

#[test]
fn stats_add_up_to_what_consumers_received() {
    let dir = scratch_dir("stats");
    let mut lines: Vec<String> = sample_lines(400)
        .iter()
        .filter(|text| !text.trim().is_empty())
        .map(|text| serde_json::json!({ "text": text }).to_string())
        .collect();
    // Two rows that are not documents: a null text and a blank one.
    lines.insert(10, r#"{"text": null}"#.to_string());
    lines.insert(20, r#"{"text": "   "}"#.to_string());
    let document_count = lines.len() as u64 - 2;
    let corpus = dir.join("corpus.jsonl");
    std::fs::write(&corpus, lines.join("\n") + "\n").unwrap();
    let tokenizer = train_tokenizer(&dir, &corpus, 500);
    let pipeline = Pipeline::start(&[&corpus], &tokenizer, &["--valid-fraction", "0.1"]);

    let train = consume(&pipeline.url, "train");
    let valid = consume(&pipeline.url, "valid");
    let stats = last_json_line(&run_ok(
        Command::new(binary("flightlm-pipeline")).args(["stats", "--pipeline", &pipeline.url]),
        Duration::from_secs(30),
    ));

    let streams = stats["streams"].as_array().expect("stream list");
    assert_eq!(streams.len(), 2, "{stats}");
    for (stream, consumed, split) in [
        (&streams[0], &train, "train"),
        (&streams[1], &valid, "valid"),
    ] {
        assert_eq!(stream["split"], split);
        assert_eq!(stream["blocks"], consumed["blocks"], "{split}: {stream}");
        assert_eq!(stream["tokens"], consumed["tokens"], "{split}: {stream}");
        assert_eq!(stream["seq_len"], 24);
    }
    let documents =
        streams[0]["documents"].as_u64().unwrap() + streams[1]["documents"].as_u64().unwrap();
    assert_eq!(
        documents, document_count,
        "train and valid documents cover the corpus"
    );
    // Each stream reads every row to choose its split, so each counts both non-documents.
    assert_eq!(streams[0]["skipped_rows"], 2);
    assert_eq!(streams[1]["skipped_rows"], 2);
    assert_eq!(
        stats["tokens"].as_u64(),
        Some(train["tokens"].as_u64().unwrap() + valid["tokens"].as_u64().unwrap())
    );
    assert_eq!(stats["tokenizer"]["mask_id"], 4);
}
