//! Exports of models trained on tokenizers other than RoBERTa's load in `transformers` with
//! `AutoTokenizer` and `AutoModelForMaskedLM` / `AutoModelForCausalLM`, and compute what flightlm
//! computes.
//!
//! `tests/fixtures/any-tokenizer/` holds a masked-LM trained by flightlm on a BERT-style WordPiece
//! tokenizer and a causal LM on a GPT-2-style byte-level BPE (`… <|endoftext|>`), as `train`
//! exported them, and `expected.json`: what transformers 5.24 (PyTorch, CPU) loaded and computed
//! (`scripts/hf-any-tokenizer-fixture.sh` regenerates both; CI needs no PyTorch). Here flightlm
//! loads the same directories and must agree: the special tokens by role, the ids of every text,
//! and every position's logits within 1e-4.

use std::path::PathBuf;

use flightlm_tests::repo_root;
use flightlm_trainer::hf::{load_hf_dir, sequence_logits, HfTokenizer};
use flightlm_trainer::CpuBackend;
use serde_json::Value;

const TOLERANCE: f32 = 1e-4;

fn fixture() -> PathBuf {
    repo_root().join("tests/fixtures/any-tokenizer")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(fixture().join("expected.json")).expect("expected.json");
    serde_json::from_str(&text).expect("JSON")
}

/// The special token `transformers` names for `role`, as flightlm's description of the export
/// names it.
fn role(tokenizer: &HfTokenizer, id: Option<u32>) -> Value {
    id.and_then(|id| tokenizer.inner().id_to_token(id))
        .map_or(Value::Null, Value::from)
}

fn check(name: &str, architecture: &str, causal: bool) {
    let expected = &expected()["models"][name];
    assert_eq!(expected["architecture"], architecture);
    let dir = fixture().join(name);
    let device = Default::default();
    let (config, model) = load_hf_dir::<CpuBackend>(&dir, &device).expect("flightlm loads it");
    assert_eq!(config.is_decoder, causal);
    let tokenizer = HfTokenizer::load(&dir.join("tokenizer.json")).expect("tokenizer");
    let info = tokenizer.info().expect("described");
    let roles = &expected["special_tokens"];
    for (key, id) in [
        ("bos_token", info.bos_id),
        ("eos_token", info.eos_id),
        ("unk_token", info.unk_id),
        ("sep_token", info.sep_id),
        ("pad_token", info.pad_id),
        ("cls_token", info.cls_id),
        ("mask_token", info.mask_id),
    ] {
        assert_eq!(role(&tokenizer, id), roles[key], "{name}: {key}");
    }
    let vocab = config.vocab_size;
    for input in expected["inputs"].as_array().expect("inputs") {
        let text = input["text"].as_str().expect("text");
        let ids = tokenizer.encode(text).expect("encodes");
        let want: Vec<u32> = serde_json::from_value(input["ids"].clone()).expect("ids");
        assert_eq!(ids, want, "{name}: ids of {text:?}");
        let logits = sequence_logits(&model, &ids, &device).expect("forward");
        let stride = input["logit_columns"].as_u64().expect("stride") as usize;
        let rows = input["logits"].as_array().expect("rows");
        for (position, (row, want_row)) in logits.chunks_exact(vocab).zip(rows).enumerate() {
            let want_row: Vec<f32> = serde_json::from_value(want_row.clone()).expect("row");
            for (column, want) in (0..vocab).step_by(stride).zip(want_row) {
                let got = row[column];
                assert!(
                    (got - want).abs() <= TOLERANCE,
                    "{name}: {text:?} position {position} column {column}: {got} vs {want}"
                );
            }
        }
    }
}

#[test]
fn a_wordpiece_masked_lm_export_computes_what_transformers_computes() {
    check("wordpiece-mlm", "RobertaForMaskedLM", false);
}

#[test]
fn a_gpt2_style_causal_export_computes_what_transformers_computes() {
    check("bpe-causal", "RobertaForCausalLM", true);
}
