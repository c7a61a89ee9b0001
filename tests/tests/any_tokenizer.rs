//! The pipeline serves any tokenizer the HF `tokenizers` library loads. Four tokenizers built by
//! Python `tokenizers` on the sample corpus — WordPiece with a BERT template, byte-level BPE whose
//! template appends `<|endoftext|>`, Unigram with Metaspace and T5's `… </s>`, and a GPT-2-style
//! file without a template served with `--add-eos` — stream exactly the blocks
//! `PreTrainedTokenizerFast(tokenizer_file=…)` + `group_texts` give, with the document starts
//! they imply; the stream names each one's special tokens; MLM over a WordPiece stream never
//! masks one; bad tokenizer input is refused in one line and nothing is served.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use flightlm_shared::{TokenBlocks, TokenizerInfo};
use flightlm_tests::{
    binary, python, read_dump, read_dump_with_starts, repo_root, run_ok, run_with_timeout,
    sample_corpus, scratch_dir, Pipeline,
};
use flightlm_trainer::config::{MaskingKey, Objective};
use flightlm_trainer::data::collate::Collator;

const EOT: &str = "<|endoftext|>";

/// The four tokenizers and the `serve` arguments each is served with.
const CASES: [(&str, &[&str]); 4] = [
    ("wordpiece", &[]),
    ("bpe_eot", &[]),
    ("unigram", &[]),
    ("gpt2", &["--add-eos", EOT]),
];

fn helper() -> PathBuf {
    repo_root().join("tests/python/any_tokenizer.py")
}

/// A corpus of `lines` lines and the four tokenizers trained on it by Python `tokenizers`.
fn built(test: &str, lines: usize) -> (PathBuf, PathBuf) {
    let dir = scratch_dir(test);
    let corpus = sample_corpus(&dir, lines);
    run_ok(
        Command::new(python())
            .arg(helper())
            .arg("build")
            .arg(&dir)
            .arg(&corpus),
        Duration::from_secs(300),
    );
    (dir, corpus)
}

/// What transformers + `group_texts` make of the corpus: blocks, their document starts, and the
/// tokenizer's special ids.
struct Reference {
    blocks: Vec<Vec<u32>>,
    starts: Vec<Vec<u32>>,
    special_ids: Vec<u32>,
}

fn reference(tokenizer: &Path, corpus: &Path, seq_len: usize, eos: Option<&str>) -> Reference {
    let mut command = Command::new(python());
    command
        .arg(helper())
        .arg("reference")
        .arg(tokenizer)
        .arg(corpus)
        .arg(seq_len.to_string());
    command.args(eos);
    let output: serde_json::Value =
        serde_json::from_str(&run_ok(&mut command, Duration::from_secs(300))).expect("JSON");
    fn field<T: serde::de::DeserializeOwned>(output: &serde_json::Value, name: &str) -> T {
        serde_json::from_value(output[name].clone()).expect(name)
    }
    Reference {
        blocks: field(&output, "blocks"),
        starts: field(&output, "starts"),
        special_ids: field(&output, "special_ids"),
    }
}

/// One pass over the train split, dumped; with `--document-starts` when `starts` is set.
fn consume(pipeline: &Pipeline, dir: &Path, seq_len: usize, starts: bool) -> PathBuf {
    let dump = dir.join(format!("blocks-{seq_len}-{starts}.jsonl"));
    let mut command = Command::new(binary("flightlm-pipeline"));
    command
        .args(["consume", "--pipeline", &pipeline.url, "--epochs", "1"])
        .args(["--seq-len", &seq_len.to_string(), "--batch-size", "16"])
        .arg("--dump")
        .arg(&dump);
    if starts {
        command.arg("--document-starts");
    }
    run_ok(&mut command, Duration::from_secs(120));
    dump
}

/// The tokenizer description a pipeline announces.
fn described(pipeline: &Pipeline) -> TokenizerInfo {
    let health: serde_json::Value = serde_json::from_str(&run_ok(
        Command::new(binary("flightlm-pipeline")).args([
            "action",
            "--pipeline",
            &pipeline.url,
            "health",
        ]),
        Duration::from_secs(30),
    ))
    .expect("health JSON");
    serde_json::from_value(health["tokenizer"].clone()).expect("a tokenizer description")
}

#[test]
fn every_tokenizer_streams_what_transformers_and_group_texts_give() {
    let (dir, corpus) = built("any-tokenizer", 1500);
    for (name, serve_arguments) in CASES {
        let tokenizer = dir.join(format!("{name}.json"));
        let mut extra = vec!["--valid-fraction", "0"];
        extra.extend_from_slice(serve_arguments);
        let pipeline = Pipeline::start(&[&corpus], &tokenizer, &extra);
        let eos = serve_arguments.last().copied();
        for seq_len in [128, 512] {
            let expected = reference(&tokenizer, &corpus, seq_len, eos);
            assert!(
                expected.blocks.len() > 40,
                "{name}: too few blocks to mean much"
            );
            let streamed = read_dump_with_starts(&consume(&pipeline, &dir, seq_len, true));
            assert_eq!(
                streamed.len(),
                expected.blocks.len(),
                "{name} at {seq_len}: blocks"
            );
            for (index, ((ids, starts), (want_ids, want_starts))) in streamed
                .iter()
                .zip(expected.blocks.iter().zip(&expected.starts))
                .enumerate()
            {
                assert_eq!(ids, want_ids, "{name} at {seq_len}: block {index}");
                assert_eq!(
                    starts, want_starts,
                    "{name} at {seq_len}: starts of {index}"
                );
            }
            // Without the request the same blocks come, as the five columns alone.
            let plain = read_dump(&consume(&pipeline, &dir, seq_len, false));
            assert_eq!(plain, expected.blocks, "{name} at {seq_len} without starts");
        }
        let info = described(&pipeline);
        let expected = reference(&tokenizer, &corpus, 128, None);
        assert_eq!(
            info.special_ids, expected.special_ids,
            "{name}: special ids"
        );
        let roles = (
            info.pad_id,
            info.mask_id,
            info.cls_id,
            info.sep_id,
            info.eos_id,
        );
        match name {
            "wordpiece" => assert_eq!(roles, (Some(0), Some(4), Some(2), Some(3), None)),
            "unigram" => assert_eq!(roles, (Some(0), Some(3), None, None, Some(1))),
            _ => assert_eq!(roles, (None, None, None, None, Some(0)), "{name}"),
        }
        let added = if name == "gpt2" { Some(0) } else { None };
        assert_eq!(info.add_eos_id, added, "{name}: the template is described");
    }
}

#[test]
fn mlm_over_a_wordpiece_stream_never_masks_a_special_token() {
    let (dir, corpus) = built("any-tokenizer-mlm", 4500);
    let pipeline = Pipeline::start(&[&corpus], &dir.join("wordpiece.json"), &[]);
    let info = described(&pipeline);
    let ids: Vec<u32> = read_dump(&consume(&pipeline, &dir, 128, false))
        .into_iter()
        .flatten()
        .collect();
    let mut blocks = TokenBlocks::new(128);
    for (row, block) in ids.chunks(128).enumerate() {
        blocks.push(block, row as u64, 0);
    }
    assert!(blocks.rows() >= 1000, "{} blocks", blocks.rows());
    let collator = Collator::new(Objective::Mlm, &info, 0.15)
        .expect("WordPiece has [MASK]")
        .with_masking_key(MaskingKey::Block);
    let batch = collator.collate(&blocks, 42, 0);
    let specials_in_blocks = ids.iter().filter(|id| info.is_special(**id)).count();
    assert!(
        specials_in_blocks > 2000,
        "[CLS] and [SEP] around every document"
    );
    for position in &batch.positions {
        let id = ids[*position as usize];
        assert!(!info.is_special(id), "special id {id} chosen at {position}");
    }
    let eligible = ids.len() - specials_in_blocks;
    let share = batch.positions.len() as f64 / eligible as f64;
    eprintln!(
        "MLM on WordPiece: {} blocks, {specials_in_blocks} special positions (none chosen), \
         {} of {eligible} others chosen ({share:.4})",
        blocks.rows(),
        batch.positions.len()
    );
    assert!((share - 0.15).abs() <= 0.01, "chosen share {share}");
}

/// Runs `serve` with `arguments`, which must fail at start with one line naming `expected`.
fn refused(corpus: &Path, tokenizer: &Path, arguments: &[&str], expected: &str) {
    let output = run_with_timeout(
        Command::new(binary("flightlm-pipeline"))
            .args(["serve", "--listen", "127.0.0.1:0", "--input"])
            .arg(corpus)
            .arg("--tokenizer")
            .arg(tokenizer)
            .args(arguments),
        Duration::from_secs(60),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "refused: {stderr}");
    assert!(!stdout.contains("listening"), "nothing served: {stdout}");
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    assert_eq!(lines.len(), 1, "one line: {stderr}");
    assert!(
        lines[0].contains(expected),
        "{} should name {expected}",
        lines[0]
    );
}

#[test]
fn bad_tokenizer_input_is_refused_in_one_line() {
    let (dir, corpus) = built("any-tokenizer-bad", 300);
    let garbage = dir.join("garbage.json");
    std::fs::write(&garbage, r#"{"model": {"type": "Nothing"}}"#).expect("write");
    refused(
        &corpus,
        &garbage,
        &[],
        "garbage.json: does not load in `tokenizers`",
    );
    let gpt2 = dir.join("gpt2.json");
    refused(
        &corpus,
        &gpt2,
        &["--add-eos", "<|end|>"],
        "--add-eos token `<|end|>` is not in the vocabulary",
    );

    // MLM on a tokenizer without a mask token: the trainer stops before its first step.
    let pipeline = Pipeline::start(
        &[&corpus],
        &gpt2,
        &["--add-eos", EOT, "--valid-fraction", "0.1"],
    );
    let out = dir.join("mlm-run");
    let output = run_with_timeout(
        Command::new(binary("flightlm-trainer"))
            .args(["train", "--pipeline", &pipeline.url, "--objective", "mlm"])
            .args(["--preset", "tiny", "--max-steps", "2", "--seq-len", "32"])
            .arg("--out")
            .arg(&out),
        Duration::from_secs(120),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].contains("masked-LM needs a mask token"),
        "{stderr}"
    );
    let checkpoints = std::fs::read_dir(out.join("checkpoints")).map_or(0, Iterator::count);
    assert_eq!(checkpoints, 0, "no step was trained");
}

#[test]
fn causal_lm_trains_on_a_gpt2_style_tokenizer_and_exports_it() {
    let (dir, corpus) = built("any-tokenizer-causal", 1500);
    let tokenizer = dir.join("bpe_eot.json");
    let pipeline = Pipeline::start(&[&corpus], &tokenizer, &["--valid-fraction", "0.05"]);
    let out = dir.join("run");
    run_ok(
        Command::new(binary("flightlm-trainer"))
            .args([
                "train",
                "--pipeline",
                &pipeline.url,
                "--objective",
                "causal",
            ])
            .args(["--preset", "tiny", "--max-steps", "50", "--seq-len", "64"])
            .args([
                "--batch-size",
                "8",
                "--grad-accum",
                "1",
                "--warmup-steps",
                "5",
            ])
            .args(["--lr", "2e-3", "--eval-every", "25", "--log-every", "25"])
            .arg("--out")
            .arg(&out),
        Duration::from_secs(600),
    );
    let evals: Vec<f64> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .expect("metrics")
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|line| line["eval_loss"].as_f64())
        .collect();
    eprintln!("causal on GPT-2-style BPE: eval loss at steps 0, 25, 50: {evals:?}");
    assert_eq!(
        evals.len(),
        3,
        "evaluations at steps 0, 25 and 50: {evals:?}"
    );
    assert!(
        evals.windows(2).all(|pair| pair[1] < pair[0]),
        "the eval loss falls: {evals:?}"
    );
    // The export names the tokenizer's special tokens for AutoTokenizer, which encodes every
    // document as the stream did, and its config has no pad token (positions from 0).
    let model = out.join("model");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).expect("config"))
            .expect("JSON");
    assert_eq!(config["pad_token_id"], -1);
    assert_eq!(config["eos_token_id"], 0);
    assert_eq!(config["max_position_embeddings"], 64);
    let check = run_ok(
        Command::new(python())
            .arg("-c")
            .arg(
                "import sys\n\
                 from transformers import AutoTokenizer, PreTrainedTokenizerFast\n\
                 auto = AutoTokenizer.from_pretrained(sys.argv[1])\n\
                 plain = PreTrainedTokenizerFast(tokenizer_file=sys.argv[2])\n\
                 lines = [l.strip() for l in open(sys.argv[3]) if l.strip()][:200]\n\
                 assert auto(lines)['input_ids'] == plain(lines)['input_ids']\n\
                 print(auto.eos_token, auto.pad_token, auto.model_max_length)\n",
            )
            .arg(&model)
            .arg(&tokenizer)
            .arg(&corpus),
        Duration::from_secs(120),
    );
    assert_eq!(check.trim(), "<|endoftext|> None 64");
}
