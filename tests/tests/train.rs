//! End to end: a real pipeline process and a real trainer process on loopback train a few steps
//! and write train and eval metrics; `--eval-blocks` bounds the valid split they read.

use std::process::Command;
use std::time::Duration;

use flightlm_tests::{
    binary, last_json_line, run_ok, sample_corpus, scratch_dir, train_tokenizer, Pipeline,
};

#[test]
fn trainer_trains_from_a_live_pipeline() {
    let dir = scratch_dir("train");
    let corpus = sample_corpus(&dir, 2000);
    let tokenizer = train_tokenizer(&dir, &corpus, 1000);
    let pipeline = Pipeline::start(&[&corpus], &tokenizer, &["--valid-fraction", "0.05"]);
    let out = dir.join("run");
    let stdout = run_ok(
        Command::new(binary("flightlm-trainer"))
            .args([
                "train",
                "--pipeline",
                &pipeline.url,
                "--objective",
                "mlm",
                "--preset",
                "tiny",
            ])
            .args(["--max-steps", "6", "--seq-len", "32", "--batch-size", "8"])
            .args([
                "--log-every",
                "2",
                "--eval-every",
                "3",
                "--warmup-steps",
                "2",
            ])
            .arg("--out")
            .arg(&out),
        Duration::from_secs(300),
    );
    assert!(stdout.contains("eval_perplexity"), "{stdout}");

    let metrics: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON metrics line"))
        .collect();
    let evals: Vec<&serde_json::Value> = metrics
        .iter()
        .filter(|m| m.get("eval_loss").is_some())
        .collect();
    let trains: Vec<&serde_json::Value> = metrics
        .iter()
        .filter(|m| m.get("loss").is_some() && m.get("lr").is_some())
        .collect();
    assert_eq!(
        evals.first().and_then(|m| m["step"].as_u64()),
        Some(0),
        "eval before the first step"
    );
    assert!(
        evals.iter().any(|m| m["step"].as_u64() == Some(6)),
        "eval at the end: {evals:?}"
    );
    assert_eq!(
        trains.len(),
        3,
        "a train line every 2 of 6 steps: {trains:?}"
    );
    for line in evals {
        let loss = line["eval_loss"].as_f64().unwrap();
        let perplexity = line["eval_perplexity"].as_f64().unwrap();
        assert!(loss.is_finite() && loss > 0.0);
        assert!(
            (perplexity - loss.exp()).abs() / perplexity < 1e-3,
            "perplexity = exp(loss)"
        );
    }
    for line in trains {
        assert!(line["tokens_per_s"].as_f64().unwrap() > 0.0);
        assert!(line["loss"].as_f64().unwrap().is_finite());
    }
    for name in ["config.json", "config.toml"] {
        assert!(
            out.join(name).exists(),
            "the resolved config is saved with the run as {name}"
        );
    }
}

/// The start line of a one-step run evaluating `eval_blocks` valid blocks (0: all of them).
fn start_line(pipeline: &Pipeline, out: &std::path::Path, eval_blocks: usize) -> serde_json::Value {
    let stdout = run_ok(
        Command::new(binary("flightlm-trainer"))
            .args(["train", "--pipeline", &pipeline.url, "--preset", "tiny"])
            .args(["--max-steps", "1", "--seq-len", "32", "--batch-size", "4"])
            .args(["--eval-blocks", &eval_blocks.to_string()])
            .arg("--out")
            .arg(out),
        Duration::from_secs(300),
    );
    let line = stdout.lines().next().unwrap_or_default();
    let start: serde_json::Value = serde_json::from_str(line).expect("JSON start line");
    assert_eq!(start["kind"], "start", "{stdout}");
    start
}

#[test]
fn eval_blocks_bounds_the_valid_split_the_trainer_reads() {
    let dir = scratch_dir("train-eval-blocks");
    let corpus = sample_corpus(&dir, 2000);
    let tokenizer = train_tokenizer(&dir, &corpus, 1000);
    let pipeline = Pipeline::start(&[&corpus], &tokenizer, &["--valid-fraction", "0.05"]);
    let summary = last_json_line(&run_ok(
        Command::new(binary("flightlm-pipeline"))
            .args(["consume", "--pipeline", &pipeline.url, "--split", "valid"])
            .args(["--seq-len", "32", "--batch-size", "4"]),
        Duration::from_secs(120),
    ));
    let whole_split = summary["blocks"].as_u64().expect("blocks") as usize;
    assert!(whole_split > 5, "{summary}");

    let whole = start_line(&pipeline, &dir.join("whole"), 0);
    assert_eq!(whole["valid_blocks"], whole_split, "{whole}");
    assert_eq!(whole["valid_batches"], whole_split.div_ceil(4), "{whole}");
    // 5 blocks: one full batch of 4 and the first row of the next.
    let first = start_line(&pipeline, &dir.join("first-5"), 5);
    assert_eq!(first["valid_blocks"], 5, "{first}");
    assert_eq!(first["valid_batches"], 2, "{first}");
}
