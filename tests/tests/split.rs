//! The valid split is a deterministic, hash-chosen fraction of documents that never appears in
//! train, and train plus valid cover the corpus; or, with `--valid-input`, a held-out corpus of
//! its own.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use flightlm_tests::{
    binary, read_dump, run_ok, sample_corpus, scratch_dir, train_tokenizer, Pipeline,
};

const BOS: u32 = 0;
const EOS: u32 = 2;

fn consume(pipeline: &Pipeline, split: &str, dump: &Path) -> Vec<Vec<u32>> {
    run_ok(
        Command::new(binary("flightlm-pipeline"))
            .args(["consume", "--pipeline", &pipeline.url, "--split", split])
            .args([
                "--seq-len",
                "32",
                "--batch-size",
                "16",
                "--epochs",
                "1",
                "--dump",
            ])
            .arg(dump),
        Duration::from_secs(60),
    );
    read_dump(dump)
}

/// Recovers whole documents (`<s> … </s>`) from a block stream; the partial ones at the ends are
/// left out.
fn documents(blocks: &[Vec<u32>]) -> Vec<Vec<u32>> {
    let mut documents = Vec::new();
    let mut current: Option<Vec<u32>> = None;
    for &token in blocks.iter().flatten() {
        match token {
            BOS => current = Some(Vec::new()),
            EOS => documents.extend(current.take()),
            other => {
                if let Some(document) = current.as_mut() {
                    document.push(other);
                }
            }
        }
    }
    documents
}

#[test]
fn valid_and_train_are_disjoint_and_cover_the_corpus() {
    let dir = scratch_dir("split");
    let corpus = sample_corpus(&dir, 3000);
    let total_documents = std::fs::read_to_string(&corpus)
        .unwrap()
        .lines()
        .filter(|line| !line.trim().is_empty())
        .count();
    let tokenizer = train_tokenizer(&dir, &corpus, 800);
    let pipeline = Pipeline::start(
        &[&corpus],
        &tokenizer,
        &["--valid-fraction", "0.1", "--seed", "3"],
    );

    let train = documents(&consume(&pipeline, "train", &dir.join("train.blocks")));
    let valid_blocks = consume(&pipeline, "valid", &dir.join("valid.blocks"));
    let valid = documents(&valid_blocks);
    assert_eq!(
        consume(&pipeline, "valid", &dir.join("valid-again.blocks")),
        valid_blocks,
        "the valid split is the same on every read"
    );

    let train_set: HashSet<&Vec<u32>> = train.iter().collect();
    let shared: Vec<_> = valid.iter().filter(|doc| train_set.contains(doc)).collect();
    assert!(
        shared.is_empty(),
        "{} valid documents also in train",
        shared.len()
    );

    let seen = train.len() + valid.len();
    // At most the one document cut by each stream's dropped remainder is missing.
    assert!(
        seen + 2 >= total_documents && seen <= total_documents,
        "train {} + valid {} vs {total_documents} documents",
        train.len(),
        valid.len()
    );
    let fraction = valid.len() as f64 / total_documents as f64;
    assert!(
        (0.07..0.13).contains(&fraction),
        "valid fraction {fraction}"
    );
}

#[test]
fn valid_split_is_refused_when_disabled() {
    let dir = scratch_dir("split_disabled");
    let corpus = sample_corpus(&dir, 300);
    let tokenizer = train_tokenizer(&dir, &corpus, 400);
    let pipeline = Pipeline::start(&[&corpus], &tokenizer, &["--valid-fraction", "0"]);
    let output = flightlm_tests::run_with_timeout(
        Command::new(binary("flightlm-pipeline"))
            .args(["consume", "--pipeline", &pipeline.url, "--split", "valid"])
            .args(["--seq-len", "32", "--batch-size", "4"]),
        Duration::from_secs(60),
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("serves no valid split"), "{stderr}");
}

/// `--valid-input`: the valid split is a corpus of its own, read whole (here JSONL, as an HF
/// dataset's validation file would be), and the train split is every document of `--input`.
#[test]
fn a_held_out_corpus_is_the_valid_split() {
    let dir = scratch_dir("split_held_out");
    let lines = flightlm_tests::sample_lines(1500);
    let (train_lines, valid_lines) = lines.split_at(1200);
    let train_file = dir.join("train.txt");
    std::fs::write(&train_file, train_lines.join("\n") + "\n").unwrap();
    let valid_file = dir.join("validation.jsonl");
    let jsonl: Vec<String> = valid_lines
        .iter()
        .map(|line| serde_json::json!({ "text": line }).to_string())
        .collect();
    std::fs::write(&valid_file, jsonl.join("\n") + "\n").unwrap();
    let tokenizer = train_tokenizer(&dir, &train_file, 600);

    let held_out = Pipeline::start_with(
        &tokenizer,
        &[
            "--input".as_ref(),
            train_file.as_os_str(),
            "--valid-input".as_ref(),
            valid_file.as_os_str(),
        ],
    );
    let valid = consume(&held_out, "valid", &dir.join("valid.blocks"));
    let train = consume(&held_out, "train", &dir.join("train.blocks"));

    // The same files served alone, without any split, give the same blocks.
    let valid_alone = Pipeline::start(&[&valid_file], &tokenizer, &["--valid-fraction", "0"]);
    let train_alone = Pipeline::start(&[&train_file], &tokenizer, &["--valid-fraction", "0"]);
    assert!(!valid.is_empty() && !train.is_empty());
    assert_eq!(
        valid,
        consume(&valid_alone, "train", &dir.join("valid-alone.blocks")),
        "the valid split is the held-out corpus, whole"
    );
    assert_eq!(
        train,
        consume(&train_alone, "train", &dir.join("train-alone.blocks")),
        "the train split is every document of --input"
    );

    let output = flightlm_tests::run_with_timeout(
        Command::new(binary("flightlm-pipeline"))
            .args(["serve", "--input"])
            .arg(&train_file)
            .arg("--valid-input")
            .arg(&valid_file)
            .args(["--valid-fraction", "0.1", "--tokenizer"])
            .arg(&tokenizer)
            .args(["--listen", "127.0.0.1:0"]),
        Duration::from_secs(60),
    );
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("exclude each other"), "{stderr}");
}
