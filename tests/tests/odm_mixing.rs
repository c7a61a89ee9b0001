//! `--mixing odm`: a run steers its own mixture from its sources' losses. Three sources with
//! equal weights, two halves of the sample corpus and one of uniformly random word tokens: with
//! the default reward (learning progress) the noise source ends below its starting weight. A run with one source, or on a stream whose blocks name no source, is
//! refused in one line, before its first step.

use std::path::Path;
use std::process::Command;

use flightlm_tests::runs::{metrics, trainer, TIMEOUT};
use flightlm_tests::{
    binary, run_ok, run_with_timeout, sample_corpus, sample_lines, scratch_dir, train_tokenizer,
    Pipeline,
};

const STEPS: usize = 300;

/// Lines of token ids drawn uniformly from the tokenizer's word tokens (those that begin a
/// word, `Ġ…`), written as their text: a source with nothing to learn, whose loss stays near
/// `ln(vocabulary)`, above natural text's.
fn noise_lines(tokenizer: &Path, count: usize) -> Vec<String> {
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tokenizer).unwrap()).unwrap();
    let words: Vec<String> = file["model"]["vocab"]
        .as_object()
        .expect("a BPE vocabulary")
        .keys()
        .filter_map(|token| token.strip_prefix('\u{120}'))
        .filter(|word| word.chars().all(char::is_alphabetic) && !word.is_empty())
        .map(String::from)
        .collect();
    assert!(words.len() > 100, "{} word tokens", words.len());
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |below: usize| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((state >> 33) % below as u64) as usize
    };
    (0..count)
        .map(|_| {
            (0..16)
                .map(|_| words[next(words.len())].as_str())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn final_weights(out: &Path) -> serde_json::Value {
    metrics(out)
        .iter()
        .rev()
        .find(|line| line["kind"] == "train" && line["step"] == STEPS as u64)
        .map(|line| line["mixing_weights"].clone())
        .expect("the last train line")
}

#[test]
fn the_odm_policy_moves_weight_off_a_source_that_cannot_be_learned() {
    let dir = scratch_dir("odm_mixing");
    let lines = sample_lines(4000);
    let (first, second, noise) = (dir.join("a.txt"), dir.join("b.txt"), dir.join("noise.txt"));
    std::fs::write(&first, lines[..2000].join("\n") + "\n").unwrap();
    std::fs::write(&second, lines[2000..].join("\n") + "\n").unwrap();
    let text = dir.join("text.txt");
    std::fs::write(&text, lines.join("\n") + "\n").unwrap();
    let tokenizer = train_tokenizer(&dir, &text, 800);
    std::fs::write(&noise, noise_lines(&tokenizer, 3000).join("\n") + "\n").unwrap();
    let pipeline = Pipeline::start_with(
        &tokenizer,
        &[
            "--source".to_string(),
            format!("first={}:1", first.display()),
            "--source".to_string(),
            format!("second={}:1", second.display()),
            "--source".to_string(),
            format!("noise={}:1", noise.display()),
            "--valid-fraction".into(),
            "0.02".into(),
        ],
    );
    // The default reward; `--mixing-reward loss` on the same run is measured in the README.
    let out = dir.join("run");
    let flags = format!(
        "train --pipeline {} --objective mlm --preset tiny --seq-len 32 --batch-size 8 \
         --grad-accum 1 --dropout 0 --warmup-steps 2 --max-steps {STEPS} --log-every 10 \
         --eval-every 1000 --eval-blocks 64 --save-every 1000 --mixing odm --mixing-every 10",
        pipeline.url
    );
    run_ok(
        Command::new(binary("flightlm-trainer"))
            .args(flags.split_whitespace())
            .arg("--out")
            .arg(&out),
        TIMEOUT,
    );
    let finals = [final_weights(&out)];
    eprintln!("weights after {STEPS} steps: {}", finals[0]);
    let noise_weight = finals[0]["noise"].as_f64().expect("noise's weight");
    assert!(
        noise_weight < 1.0 / 3.0,
        "with the default reward the noise source ends below its start: {}",
        finals[0]
    );
    let total: f64 = ["first", "second", "noise"]
        .iter()
        .map(|name| finals[0][name].as_f64().unwrap())
        .sum();
    assert!((total - 1.0).abs() < 1e-9, "{}", finals[0]);
}

#[test]
fn odm_is_refused_without_a_mixture_or_without_sources() {
    let dir = scratch_dir("odm_refused");
    let corpus = sample_corpus(&dir, 800);
    let tokenizer = train_tokenizer(&dir, &corpus, 500);
    let pipeline = Pipeline::start(&[&corpus], &tokenizer, &["--valid-fraction", "0.05"]);
    let single = run_with_timeout(
        &mut trainer(&pipeline.url, &dir.join("one"), 4, "--mixing odm"),
        TIMEOUT,
    );
    assert!(!single.status.success());
    let message = String::from_utf8_lossy(&single.stderr);
    let lines: Vec<&str> = message.lines().filter(|l| l.contains("--mixing")).collect();
    assert_eq!(lines.len(), 1, "{message}");
    assert!(
        lines[0].contains("at least two sources") && lines[0].contains("main"),
        "{message}"
    );
    // Refused before its first step.
    let logged = std::fs::read_to_string(dir.join("one").join("metrics.jsonl")).unwrap_or_default();
    assert!(!logged.contains("\"train\""), "{logged}");

    // Generated blocks name no source.
    let unnamed = run_with_timeout(
        Command::new(binary("flightlm-trainer"))
            .args(["bench", "--vocab-size", "256", "--preset", "tiny"])
            .args(["--max-steps", "3", "--seq-len", "16", "--batch-size", "2"])
            .args(["--mixing", "odm", "--out"])
            .arg(dir.join("bench")),
        TIMEOUT,
    );
    assert!(!unnamed.status.success());
    let message = String::from_utf8_lossy(&unnamed.stderr);
    let lines: Vec<&str> = message.lines().filter(|l| l.contains("--mixing")).collect();
    assert_eq!(lines.len(), 1, "{message}");
    assert!(lines[0].contains("`source`"), "{message}");
}
