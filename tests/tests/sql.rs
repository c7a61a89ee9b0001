//! `--sql` over each file as the table `corpus`: select a column other than `text` and filter
//! rows; the stream equals one built from the rows the query keeps.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use flightlm_tests::{
    binary, read_dump, run_ok, sample_lines, scratch_dir, train_tokenizer, Pipeline,
};

fn blocks(pipeline: &Pipeline, dump: &Path) -> Vec<Vec<u32>> {
    run_ok(
        Command::new(binary("flightlm-pipeline"))
            .args(["consume", "--pipeline", &pipeline.url, "--epochs", "1"])
            .args(["--seq-len", "48", "--batch-size", "8", "--dump"])
            .arg(dump),
        Duration::from_secs(60),
    );
    read_dump(dump)
}

#[test]
fn sql_selects_and_filters_rows() {
    let dir = scratch_dir("sql");
    let lines = sample_lines(1500);
    let records: Vec<String> = lines
        .iter()
        .enumerate()
        .map(|(id, line)| serde_json::json!({ "id": id, "body": line }).to_string())
        .collect();
    let jsonl = dir.join("articles.jsonl");
    std::fs::write(&jsonl, records.join("\n") + "\n").unwrap();
    let kept: Vec<&String> = lines
        .iter()
        .filter(|line| line.chars().count() > 60)
        .collect();
    assert!(kept.len() > 100 && kept.len() < lines.len());
    let expected_corpus = dir.join("expected.txt");
    let kept_text: Vec<&str> = kept.iter().map(|line| line.as_str()).collect();
    std::fs::write(&expected_corpus, kept_text.join("\n") + "\n").unwrap();
    let tokenizer = train_tokenizer(&dir, &expected_corpus, 600);

    let query = "SELECT body AS text FROM corpus WHERE character_length(body) > 60";
    let filtered = Pipeline::start(
        &[&jsonl],
        &tokenizer,
        &["--valid-fraction", "0", "--sql", query],
    );
    let reference = Pipeline::start(&[&expected_corpus], &tokenizer, &["--valid-fraction", "0"]);
    let got = blocks(&filtered, &dir.join("filtered.jsonl"));
    let expected = blocks(&reference, &dir.join("expected.jsonl"));
    assert!(!expected.is_empty());
    assert_eq!(got, expected);
}
