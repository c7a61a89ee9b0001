//! HuggingFace `transformers` is the referee for flightlm's model files and inference.
//!
//! `tests/fixtures/hf-parity/` holds a masked and a causal model trained and exported by
//! flightlm, and `expected.json`: what `transformers` 5.24 (PyTorch, CPU) computes with them
//! (`scripts/hf-parity-fixture.sh` regenerates both; CI needs no PyTorch). Here flightlm loads
//! the same directories and must agree: tokenization, logits within 1e-4, the `fill-mask`
//! command's output, causal and masked losses through `score` (the masked one on the very inputs
//! `score --show-inputs` reports), and a re-export that is byte-for-byte the committed tensors.

use std::collections::BTreeMap;

use flightlm_trainer::CpuBackend;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use flightlm_tests::{binary, repo_root, run_ok, scratch_dir};
use flightlm_trainer::hf::{load_hf_dir, sequence_logits, HfTokenizer};
use serde_json::Value;

type Backend = CpuBackend;

const TOLERANCE: f64 = 1e-4;

fn fixture() -> PathBuf {
    repo_root().join("tests/fixtures/hf-parity")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture().join("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("expected.json is JSON")
}

fn number(value: &Value) -> f64 {
    value
        .as_f64()
        .unwrap_or_else(|| panic!("{value} is not a number"))
}

fn assert_close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() <= TOLERANCE,
        "{what}: flightlm {got}, transformers {want}"
    );
}

/// Tokenization and logits of every fixture input, for the model in `kind/`.
fn check_logits(kind: &str) {
    let expected = expected();
    let model_expected = &expected["models"][kind];
    assert_eq!(
        model_expected["loading"]["missing_keys"],
        serde_json::json!([]),
        "transformers loaded every weight"
    );
    let dir = fixture().join(kind);
    let device = Default::default();
    let (config, model) = load_hf_dir::<Backend>(&dir, &device).expect("flightlm loads the export");
    assert_eq!(config.is_decoder, kind == "causal");
    let tokenizer = HfTokenizer::load(&dir.join("tokenizer.json")).expect("tokenizer");

    let inputs = model_expected["inputs"].as_array().expect("inputs");
    assert!(inputs.len() >= 8);
    for input in inputs {
        let text = input["text"].as_str().expect("text");
        let ids = tokenizer.encode(text).expect("encodes");
        let want_ids: Vec<u32> = serde_json::from_value(input["ids"].clone()).expect("ids");
        assert_eq!(ids, want_ids, "tokenization of {text:?}");

        let logits = sequence_logits(&model, &ids, &device).expect("forward");
        let vocab = config.vocab_size;
        assert_eq!(logits.len(), ids.len() * vocab);
        let stride = input["logit_columns"].as_u64().expect("stride") as usize;
        let rows = input["logits"].as_array().expect("logits");
        assert_eq!(rows.len(), ids.len());
        for (position, row) in logits.chunks_exact(vocab).enumerate() {
            let want_row = rows[position].as_array().expect("row");
            let columns: Vec<usize> = (0..vocab).step_by(stride).collect();
            assert_eq!(want_row.len(), columns.len());
            for (column, want) in columns.iter().zip(want_row) {
                assert_close(
                    f64::from(row[*column]),
                    number(want),
                    &format!("{kind} logit [{position}, {column}] of {text:?}"),
                );
            }
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let log_sum_exp = f64::from(max)
                + row
                    .iter()
                    .map(|l| f64::from(l - max).exp())
                    .sum::<f64>()
                    .ln();
            assert_close(
                log_sum_exp,
                number(&input["logsumexp"][position]),
                &format!("{kind} logsumexp at {position} of {text:?}"),
            );
            let argmax = row
                .iter()
                .enumerate()
                .fold(0, |best, (id, l)| if *l > row[best] { id } else { best });
            assert_eq!(
                argmax as u64,
                input["argmax"][position].as_u64().expect("argmax"),
                "{kind} argmax at {position} of {text:?}"
            );
        }
    }
}

#[test]
fn masked_lm_logits_match_transformers() {
    check_logits("mlm");
}

#[test]
fn causal_lm_logits_match_transformers() {
    check_logits("causal");
}

/// Predictions at one mask: same tokens in the same order, same strings, scores within 1e-4.
fn assert_same_predictions(got: &Value, want: &Value, text: &str) {
    let (got, want) = (
        got.as_array().expect("list"),
        want.as_array().expect("list"),
    );
    assert_eq!(got.len(), want.len(), "top-k of {text:?}");
    for (got, want) in got.iter().zip(want) {
        assert_eq!(got["token"], want["token"], "{text:?}: {got} vs {want}");
        assert_eq!(got["token_str"], want["token_str"], "{text:?}");
        assert_eq!(got["sequence"], want["sequence"], "{text:?}");
        assert_close(number(&got["score"]), number(&want["score"]), text);
    }
}

#[test]
fn fill_mask_prints_what_the_transformers_pipeline_returns() {
    let expected = expected();
    let cases = expected["models"]["mlm"]["fill_mask"]
        .as_array()
        .expect("fill_mask cases");
    assert!(
        cases.iter().any(|case| case["output"][0].is_array()),
        "a case with several masks"
    );
    for case in cases {
        let text = case["text"].as_str().expect("text");
        let stdout = run_ok(
            Command::new(binary("flightlm-trainer"))
                .args(["fill-mask", "--model"])
                .arg(fixture().join("mlm"))
                .args(["--text", text, "--top-k"])
                .arg(case["top_k"].to_string()),
            Duration::from_secs(60),
        );
        let got: Value = serde_json::from_str(stdout.trim()).expect("fill-mask prints JSON");
        let want = &case["output"];
        if want[0].is_array() {
            let masks = want.as_array().expect("per mask");
            assert_eq!(got.as_array().map(Vec::len), Some(masks.len()), "{text:?}");
            for (index, want) in masks.iter().enumerate() {
                assert_same_predictions(&got[index], want, text);
            }
        } else {
            assert_same_predictions(&got, want, text);
        }
    }
}

/// Runs `score` on the fixture model `kind` over the cases' texts (one per line) and returns its
/// JSON lines: one per text, then the total.
fn score_cases(kind: &str, cases: &[Value], flags: &[&str]) -> Vec<Value> {
    let dir = scratch_dir(&format!("hf_parity_score_{kind}"));
    let texts: Vec<&str> = cases
        .iter()
        .map(|case| case["text"].as_str().expect("text"))
        .collect();
    let file = dir.join("lines.txt");
    std::fs::write(&file, texts.join("\n") + "\n").expect("writes lines");
    let stdout = run_ok(
        Command::new(binary("flightlm-trainer"))
            .arg("score")
            .args(flags)
            .arg("--model")
            .arg(fixture().join(kind))
            .arg("--text-file")
            .arg(&file),
        Duration::from_secs(60),
    );
    let records: Vec<Value> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON line"))
        .collect();
    assert_eq!(
        records.len(),
        texts.len() + 1,
        "a line per text and a total"
    );
    records
}

#[test]
fn score_reports_the_causal_loss_transformers_computes() {
    let expected = expected();
    let losses = expected["models"]["causal"]["causal_losses"]
        .as_array()
        .expect("causal losses");
    let records = score_cases("causal", losses, &[]);
    for (record, case) in records.iter().zip(losses) {
        let loss = number(&record["loss"]);
        assert_close(
            loss,
            number(&case["loss"]),
            &format!("loss of {}", case["text"]),
        );
        assert_close(
            number(&record["perplexity"]).ln(),
            loss,
            "perplexity = exp(loss)",
        );
        assert_eq!(
            record["scored"].as_u64(),
            record["tokens"].as_u64().map(|tokens| tokens - 1),
            "every next token"
        );
    }
}

#[test]
fn score_reports_the_masked_loss_transformers_computes() {
    let expected = expected();
    let cases = expected["models"]["mlm"]["mlm_scores"]
        .as_array()
        .expect("MLM scores");
    let records = score_cases("mlm", cases, &["--show-inputs"]);
    for (record, case) in records.iter().zip(cases) {
        // The masking is seeded: the same inputs and labels transformers was given.
        assert_eq!(record["input_ids"], case["input_ids"], "{}", case["text"]);
        assert_eq!(record["labels"], case["labels"], "{}", case["text"]);
        let scored = case["labels"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|label| label.as_i64() != Some(-100))
            .count();
        assert_eq!(record["scored"].as_u64(), Some(scored as u64));
        assert_close(
            number(&record["loss"]),
            number(&case["loss"]),
            &format!("masked loss of {}", case["text"]),
        );
    }
}

/// A stored tensor: dtype, shape and raw bytes.
type StoredTensor = (String, Vec<usize>, Vec<u8>);

/// The tensors of a safetensors file by name, and its metadata.
fn tensors(path: &Path) -> (BTreeMap<String, StoredTensor>, Value) {
    let bytes = std::fs::read(path).expect("safetensors file");
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).expect("header");
    let file = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let tensors = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let dtype = format!("{:?}", view.dtype());
            (name, (dtype, view.shape().to_vec(), view.data().to_vec()))
        })
        .collect();
    let extra = serde_json::to_value(metadata.metadata()).expect("metadata");
    (tensors, extra)
}

#[test]
fn export_of_a_loaded_model_reproduces_the_committed_files() {
    let out = scratch_dir("hf_parity_export");
    for kind in ["mlm", "causal"] {
        let source = fixture().join(kind);
        let target = out.join(kind);
        run_ok(
            Command::new(binary("flightlm-trainer"))
                .args(["export", "--checkpoint"])
                .arg(&source)
                .arg("--out")
                .arg(&target),
            Duration::from_secs(60),
        );
        let (committed, committed_metadata) = tensors(&source.join("model.safetensors"));
        let (exported, exported_metadata) = tensors(&target.join("model.safetensors"));
        assert_eq!(exported_metadata, serde_json::json!({"format": "pt"}));
        assert_eq!(committed_metadata, exported_metadata);
        assert_eq!(
            committed.keys().collect::<Vec<_>>(),
            exported.keys().collect::<Vec<_>>(),
            "{kind}: tensor names"
        );
        for (name, tensor) in &committed {
            assert_eq!(tensor.0, "F32", "{kind}: {name} is f32");
            assert!(
                exported[name] == *tensor,
                "{kind}: {name} differs after the round trip"
            );
        }
        for file in ["config.json", "tokenizer.json"] {
            let read = |dir: &Path| -> Value {
                serde_json::from_str(&std::fs::read_to_string(dir.join(file)).expect(file))
                    .expect("JSON")
            };
            assert_eq!(read(&source), read(&target), "{kind}: {file}");
        }
    }
}
