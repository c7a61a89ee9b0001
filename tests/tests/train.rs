//! End to end: a real pipeline process and a real trainer process on loopback train a few steps
//! and write train and eval metrics.

use std::process::Command;
use std::time::Duration;

use flightlm_tests::{binary, run_ok, sample_corpus, scratch_dir, train_tokenizer, Pipeline};

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
