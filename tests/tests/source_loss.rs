//! The loss of each source: a trainer reading a two-source mixture writes every source's
//! training loss in each `train` line and its eval loss on the valid split in each `eval` line,
//! and TensorBoard shows them as tags of their own; with one source the source's loss is the
//! run's loss.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use flightlm_tests::runs::{metrics, trainer, TIMEOUT};
use flightlm_tests::{
    python, repo_root, run_ok, sample_corpus, scratch_dir, train_tokenizer, two_source_corpus,
    Pipeline,
};

fn by_source(line: &serde_json::Value, field: &str) -> Vec<(String, f64)> {
    line[field]
        .as_object()
        .unwrap_or_else(|| panic!("no {field} in {line}"))
        .iter()
        .map(|(name, value)| (name.clone(), value.as_f64().expect("a number")))
        .collect()
}

fn lines<'a>(all: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    all.iter().filter(|line| line["kind"] == kind).collect()
}

fn train(url: &str, out: &Path) {
    run_ok(
        &mut trainer(url, out, 6, "--batch-size 8 --eval-blocks 64"),
        TIMEOUT,
    );
}

#[test]
fn each_source_has_its_training_and_eval_loss_in_metrics_and_tensorboard() {
    let dir = scratch_dir("source_loss");
    let (mut arguments, tokenizer) = two_source_corpus(&dir, 2000);
    arguments.extend(["--valid-fraction", "0.05"].map(String::from));
    let pipeline = Pipeline::start_with(&tokenizer, &arguments);
    let out = dir.join("run");
    train(&pipeline.url, &out);
    let all = metrics(&out);
    let steps = lines(&all, "train");
    assert_eq!(steps.len(), 6);
    for line in &steps {
        let losses = by_source(line, "loss_by_source");
        let names: Vec<&str> = losses.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(names, ["alpha", "beta"], "{line}");
        // The step's loss is the token-weighted mean of its sources' losses.
        let (low, high) = range(&losses);
        let loss = line["loss"].as_f64().unwrap();
        assert!(
            low > 0.0 && low - 1e-9 <= loss && loss <= high + 1e-9,
            "{line}"
        );
    }
    let evals = lines(&all, "eval");
    assert_eq!(evals.len(), 2, "before the first step and after the last");
    for line in &evals {
        let losses = by_source(line, "eval_loss_by_source");
        assert_eq!(losses.len(), 2, "{line}");
        let loss = line["eval_loss"].as_f64().unwrap();
        let (low, high) = range(&losses);
        assert!(low - 1e-9 <= loss && loss <= high + 1e-9, "{line}");
    }

    let answer = run_ok(
        Command::new(python())
            .arg(repo_root().join("tests/python/observe_check.py"))
            .arg("tensorboard")
            .arg(&out),
        Duration::from_secs(240),
    );
    let checked: serde_json::Value = serde_json::from_str(answer.trim()).expect("JSON");
    let tags: Vec<&str> = checked["tags"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|tag| tag.as_str())
        .collect();
    for tag in [
        "train/loss_by_source/alpha",
        "train/loss_by_source/beta",
        "eval/loss_by_source/alpha",
        "eval/loss_by_source/beta",
    ] {
        assert!(tags.contains(&tag), "{tag} in {tags:?}");
    }
}

#[test]
fn with_one_source_its_loss_is_the_runs_loss() {
    let dir = scratch_dir("source_loss_one");
    let corpus = sample_corpus(&dir, 1500);
    let tokenizer = train_tokenizer(&dir, &corpus, 800);
    let pipeline = Pipeline::start(&[&corpus], &tokenizer, &["--valid-fraction", "0.05"]);
    let out = dir.join("run");
    train(&pipeline.url, &out);
    let all = metrics(&out);
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-5 * b.abs();
    let steps = lines(&all, "train");
    assert_eq!(steps.len(), 6);
    for line in steps {
        let main = line["loss_by_source"]["main"]
            .as_f64()
            .expect("main's loss");
        assert!(close(main, line["loss"].as_f64().unwrap()), "{line}");
    }
    for line in lines(&all, "eval") {
        let main = line["eval_loss_by_source"]["main"].as_f64().expect("main");
        assert!(close(main, line["eval_loss"].as_f64().unwrap()), "{line}");
    }
}

/// The lowest and the highest of the sources' losses.
fn range(losses: &[(String, f64)]) -> (f64, f64) {
    let values = losses.iter().map(|(_, loss)| *loss);
    let low = values.clone().fold(f64::MAX, f64::min);
    (low, values.fold(f64::MIN, f64::max))
}
