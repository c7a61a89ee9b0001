//! HuggingFace is the referee: the tokenizer flightlm trains loads in `transformers`, encodes to
//! the ids flightlm streams, decodes back to the text, and flightlm's blocks equal `group_texts`.

use std::process::Command;
use std::time::Duration;

use flightlm_tests::{
    binary, python, read_dump, repo_root, run_ok, sample_corpus, scratch_dir, train_tokenizer,
    Pipeline,
};

#[test]
fn streamed_blocks_equal_transformers_tokenizer_and_group_texts() {
    let dir = scratch_dir("hf_reference");
    let corpus = sample_corpus(&dir, 1500);
    let tokenizer = train_tokenizer(&dir, &corpus, 1000);
    let seq_len = 64;

    // Every document in the train split, one pass: the whole corpus in corpus order.
    let pipeline = Pipeline::start(&[&corpus], &tokenizer, &["--valid-fraction", "0"]);
    let dump = dir.join("blocks.jsonl");
    run_ok(
        Command::new(binary("flightlm-pipeline"))
            .args(["consume", "--pipeline", &pipeline.url])
            .args(["--seq-len", &seq_len.to_string(), "--batch-size", "7"])
            .args(["--epochs", "1", "--dump"])
            .arg(&dump),
        Duration::from_secs(60),
    );
    let streamed = read_dump(&dump);

    let output = run_ok(
        Command::new(python())
            .arg(repo_root().join("tests/python/hf_reference.py"))
            .arg(&tokenizer)
            .arg(&corpus)
            .arg(seq_len.to_string()),
        Duration::from_secs(120),
    );
    let reference: serde_json::Value = serde_json::from_str(&output).expect("reference JSON");
    let special = &reference["special_ids"];
    for (name, id) in [("bos", 0), ("pad", 1), ("eos", 2), ("unk", 3), ("mask", 4)] {
        assert_eq!(special[name], id, "special token {name}");
    }
    assert_eq!(
        reference["round_trip_failures"],
        serde_json::json!([]),
        "decode(encode(text)) must give the text back"
    );
    let expected: Vec<Vec<u32>> =
        serde_json::from_value(reference["blocks"].clone()).expect("reference blocks");
    assert!(expected.len() > 100, "corpus too small to mean much");
    assert_eq!(streamed.len(), expected.len(), "block count");
    for (index, (got, want)) in streamed.iter().zip(&expected).enumerate() {
        assert_eq!(
            got, want,
            "block {index} differs from transformers + group_texts"
        );
    }
    assert_eq!(streamed[0][0], 0, "the stream starts with <s>");
}
