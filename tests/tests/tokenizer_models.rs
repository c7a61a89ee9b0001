//! `train-tokenizer --model wordpiece|unigram` against Python `tokenizers` trained on the same
//! corpus with the same settings: upstream training of both is not reproducible run to run
//! (tokenizers #1794), so they are compared by what is stable — the vocabularies overlap and
//! encode the corpus into nearly as many tokens — and two of flightlm's runs give the same file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use flightlm_tests::{binary, python, repo_root, run_ok, sample_corpus, scratch_dir};

const VOCAB_SIZE: usize = 2000;

fn train(corpus: &Path, model: &str, out: &Path) -> PathBuf {
    run_ok(
        Command::new(binary("flightlm-pipeline"))
            .args(["train-tokenizer", "--model", model, "--input"])
            .arg(corpus)
            .args(["--vocab-size", &VOCAB_SIZE.to_string(), "--out"])
            .arg(out),
        Duration::from_secs(300),
    );
    out.join("tokenizer.json")
}

fn helper(arguments: &[&std::ffi::OsStr]) -> String {
    run_ok(
        Command::new(python())
            .arg(repo_root().join("tests/python/any_tokenizer.py"))
            .args(arguments),
        Duration::from_secs(300),
    )
}

#[test]
fn wordpiece_and_unigram_match_python_and_repeat_byte_for_byte() {
    let dir = scratch_dir("tokenizer-models");
    let corpus = sample_corpus(&dir, 3000);
    for model in ["wordpiece", "unigram"] {
        let first = train(&corpus, model, &dir.join(format!("{model}-1")));
        let second = train(&corpus, model, &dir.join(format!("{model}-2")));
        let bytes = std::fs::read(&first).expect("first file");
        assert!(
            bytes == std::fs::read(&second).expect("second file"),
            "{model}: two trainings of one corpus give the same file"
        );

        let python_file = dir.join(format!("{model}-python.json"));
        helper(&[
            "train".as_ref(),
            model.as_ref(),
            corpus.as_os_str(),
            VOCAB_SIZE.to_string().as_ref(),
            python_file.as_os_str(),
        ]);
        let compared: serde_json::Value = serde_json::from_str(&helper(&[
            "compare".as_ref(),
            first.as_os_str(),
            python_file.as_os_str(),
            corpus.as_os_str(),
        ]))
        .expect("JSON");
        println!("{model}: {compared}");
        let overlap = compared["overlap"].as_f64().expect("overlap");
        assert!(overlap >= 0.98, "{model}: token sets overlap {overlap}");
        let (ours, theirs) = (
            compared["tokens_a"].as_f64().expect("tokens"),
            compared["tokens_b"].as_f64().expect("tokens"),
        );
        let difference = (ours - theirs).abs() / theirs;
        assert!(
            difference <= 0.01,
            "{model}: {ours} tokens against {theirs}"
        );
        assert_eq!(
            compared["vocab_a"], compared["vocab_b"],
            "{model}: vocabulary sizes"
        );
    }
}

#[test]
fn the_trained_files_load_and_describe_their_special_tokens() {
    let dir = scratch_dir("tokenizer-models-roles");
    let corpus = sample_corpus(&dir, 600);
    let wordpiece = train(&corpus, "wordpiece", &dir.join("wordpiece"));
    let text: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&wordpiece).expect("file")).expect("JSON");
    assert_eq!(text["post_processor"]["type"], "BertProcessing");
    assert_eq!(text["model"]["type"], "WordPiece");
    let unigram = train(&corpus, "unigram", &dir.join("unigram"));
    let text: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&unigram).expect("file")).expect("JSON");
    assert_eq!(text["post_processor"]["type"], "TemplateProcessing");
    assert_eq!(text["model"]["type"], "Unigram");
    assert_eq!(text["pre_tokenizer"]["type"], "Metaspace");
    let output = Command::new(binary("flightlm-pipeline"))
        .args([
            "train-tokenizer",
            "--model",
            "unigram",
            "--vocab-size",
            "20",
            "--input",
        ])
        .arg(&corpus)
        .arg("--out")
        .arg(dir.join("tiny"))
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--vocab-size 20 is too small"), "{stderr}");
}
