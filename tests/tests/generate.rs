//! `flightlm-trainer generate` against transformers, and its behaviour at the edges.
//!
//! `tests/fixtures/hf-generate/expected.json` holds what `transformers` 5.24 generates greedily
//! (`generate(do_sample=False)`, PyTorch, CPU) with the causal model of the HF parity fixture:
//! 3 prompts x 32 new tokens (`scripts/hf-generate-fixture.sh` regenerates it). flightlm must emit
//! the same tokens, with its key/value cache and without it; seeded sampling must repeat; a long
//! prompt is cut and says so; bad input gets one clear line.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use flightlm_tests::{binary, repo_root, run_ok, run_with_timeout, scratch_dir};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(120);

fn causal_model() -> PathBuf {
    repo_root().join("tests/fixtures/hf-parity/causal")
}

fn expected() -> Value {
    let path = repo_root().join("tests/fixtures/hf-generate/expected.json");
    let text = std::fs::read_to_string(path).expect("expected.json");
    serde_json::from_str(&text).expect("expected.json is JSON")
}

fn generate(model: &Path, flags: &[&str]) -> Command {
    let mut command = Command::new(binary("flightlm-trainer"));
    command
        .arg("generate")
        .arg("--model")
        .arg(model)
        .args(flags);
    command
}

/// The JSON lines `generate --json` prints, one per prompt.
fn records(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect()
}

fn ids(value: &Value) -> Vec<u64> {
    serde_json::from_value(value.clone()).expect("a list of ids")
}

/// Runs `generate --json` over `prompts` (one per line of a file) with `flags`.
fn generate_prompts(test: &str, prompts: &[&str], flags: &[&str]) -> Vec<Value> {
    let dir = scratch_dir(test);
    let file = dir.join("prompts.txt");
    std::fs::write(&file, prompts.join("\n") + "\n").expect("writes prompts");
    let mut command = generate(&causal_model(), flags);
    command.arg("--prompt-file").arg(&file).arg("--json");
    let got = records(&run_ok(&mut command, TIMEOUT));
    assert_eq!(got.len(), prompts.len(), "a line per prompt");
    got
}

#[test]
fn greedy_generation_matches_transformers_with_and_without_the_cache() {
    let expected = expected();
    let cases = expected["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 3);
    let prompts: Vec<&str> = cases
        .iter()
        .map(|case| case["prompt"].as_str().expect("prompt"))
        .collect();
    let greedy = ["--temperature", "0", "--max-new-tokens", "32"];
    let cached = generate_prompts("generate_greedy_cached", &prompts, &greedy);
    let flags = [&greedy[..], &["--no-cache"]].concat();
    let uncached = generate_prompts("generate_greedy_uncached", &prompts, &flags);
    for ((case, with_cache), without_cache) in cases.iter().zip(&cached).zip(&uncached) {
        let prompt = &case["prompt"];
        assert_eq!(
            ids(&with_cache["input_ids"]),
            ids(&case["input_ids"]),
            "prompt ids of {prompt}"
        );
        assert_eq!(
            ids(&with_cache["output_ids"]),
            ids(&case["output_ids"]),
            "tokens of {prompt}: flightlm (cache) vs transformers"
        );
        assert_eq!(
            ids(&without_cache["output_ids"]),
            ids(&case["output_ids"]),
            "tokens of {prompt}: flightlm (no cache) vs transformers"
        );
        assert_eq!(with_cache["text"], case["text"], "decoded text of {prompt}");
        assert_eq!(with_cache["cache"], true);
        assert_eq!(without_cache["cache"], false);
        assert_eq!(with_cache["new_tokens"], 32);
    }
    // The fixture's positions matter: with transformers' default ones the tokens differ.
    assert!(cases
        .iter()
        .any(|case| case["default_positions_ids"] != case["output_ids"]));
}

#[test]
fn seeded_sampling_repeats_and_the_seed_matters() {
    let prompts = ["And God said", "In the beginning"];
    let sample = |test: &str, seed: &str, extra: &[&str]| -> Vec<Vec<u64>> {
        let flags = [
            &[
                "--temperature",
                "1.0",
                "--top-k",
                "40",
                "--top-p",
                "0.95",
                "--max-new-tokens",
                "24",
                "--seed",
                seed,
            ][..],
            extra,
        ]
        .concat();
        generate_prompts(test, &prompts, &flags)
            .iter()
            .map(|record| ids(&record["output_ids"]))
            .collect()
    };
    let first = sample("generate_seed_a", "5", &[]);
    assert_eq!(first, sample("generate_seed_b", "5", &[]), "same seed");
    assert_eq!(
        first,
        sample("generate_seed_c", "5", &["--no-cache"]),
        "same seed, no cache"
    );
    assert_ne!(first, sample("generate_seed_d", "6", &[]), "another seed");
    assert_ne!(first[0], first[1], "each prompt draws its own stream");
}

#[test]
fn text_output_and_a_checkpoint_directory() {
    // A training checkpoint: the HF directory in `hf/`, the tokenizer in the run's directory.
    let run = scratch_dir("generate_checkpoint");
    let hf = run.join("checkpoints/step-0000100/hf");
    std::fs::create_dir_all(&hf).expect("checkpoint dir");
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(causal_model().join(file), hf.join(file)).expect("copies");
    }
    std::fs::copy(
        causal_model().join("tokenizer.json"),
        run.join("tokenizer.json"),
    )
    .expect("copies");
    let flags = [
        "--prompt",
        "And God said",
        "--temperature",
        "0",
        "--max-new-tokens",
        "32",
    ];
    let stdout = run_ok(
        &mut generate(&run.join("checkpoints/step-0000100"), &flags),
        TIMEOUT,
    );
    let case = &expected()["cases"][0];
    let want = format!("And God said{}", case["text"].as_str().expect("text"));
    assert_eq!(stdout.trim_end(), want, "the text alone on stdout");

    let output = run_with_timeout(&mut generate(&causal_model(), &flags), TIMEOUT);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("32 new tokens in") && stderr.contains("tokens/s"),
        "{stderr}"
    );
}

#[test]
fn a_long_prompt_is_cut_from_the_left_and_said_so() {
    // The fixture model reads 64 positions.
    let long = "And God said, Let there be light: and there was light. ".repeat(8);
    let flags = [
        "--prompt",
        long.as_str(),
        "--temperature",
        "0",
        "--max-new-tokens",
        "40",
        "--min-new-tokens",
        "40",
        "--json",
    ];
    let output = run_with_timeout(&mut generate(&causal_model(), &flags), TIMEOUT);
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("were cut") && stderr.contains("the model reads 64"),
        "{stderr}"
    );
    assert!(
        stderr.contains("filled the model's 64 positions"),
        "{stderr}"
    );
    let record = &records(&String::from_utf8_lossy(&output.stdout))[0];
    assert_eq!(record["input_ids"].as_array().map(Vec::len), Some(63));
    assert!(record["prompt_cut"].as_u64().expect("prompt_cut") > 0);
    assert!(record["context_shifts"].as_u64().expect("shifts") >= 1);
    assert_eq!(record["new_tokens"], 40);

    // The uncached path reads the same contexts, so it emits the same tokens.
    let uncached = [&flags[..], &["--no-cache"]].concat();
    let stdout = run_ok(&mut generate(&causal_model(), &uncached), TIMEOUT);
    assert_eq!(records(&stdout)[0]["output_ids"], record["output_ids"]);
}

/// Runs a `generate` that must fail and returns its one error line.
fn refused(model: &Path, flags: &[&str]) -> String {
    let output = run_with_timeout(&mut generate(model, flags), TIMEOUT);
    assert!(!output.status.success(), "{flags:?} should fail");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one line, got:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    lines[0].to_string()
}

#[test]
fn bad_input_is_refused_in_one_line() {
    let mlm = repo_root().join("tests/fixtures/hf-parity/mlm");
    let message = refused(&mlm, &["--prompt", "And God said"]);
    assert!(
        message.contains("masked-LM") && message.contains("--objective causal"),
        "{message}"
    );

    let message = refused(&causal_model(), &["--prompt", "", "--no-start-token"]);
    assert!(message.contains("the prompt is empty"), "{message}");

    let dir = scratch_dir("generate_bad_ids");
    let ids_file = dir.join("ids.jsonl");
    std::fs::write(&ids_file, "[0, 45, 82]\n[0, 45, 9999]\n").expect("writes ids");
    let message = refused(
        &causal_model(),
        &["--ids-file", ids_file.to_str().expect("utf-8 path")],
    );
    assert!(
        message.contains("ids.jsonl line 2")
            && message.contains("9999")
            && message.contains("vocabulary of 800"),
        "{message}"
    );

    for top_p in ["0", "1.5", "-0.1"] {
        let message = refused(&causal_model(), &["--prompt", "And", "--top-p", top_p]);
        assert!(
            message.contains(&format!("--top-p {top_p}")) && message.contains("(0, 1]"),
            "{message}"
        );
    }

    // An empty prompt with the start token is an unconditional sample, not an error.
    let stdout = run_ok(
        &mut generate(
            &causal_model(),
            &["--prompt", "", "--max-new-tokens", "4", "--json"],
        ),
        TIMEOUT,
    );
    assert_eq!(ids(&records(&stdout)[0]["input_ids"]), vec![0]);
}
