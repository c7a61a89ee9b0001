//! Every kind of bad input is either a clear error naming the file and line or row
//! (`--on-bad-record error`, the default) or skipped and counted in stats (`skip`); never a crash
//! and never a silent loss.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use flightlm_tests::{
    binary, last_json_line, run_ok, run_with_timeout, sample_lines, scratch_dir, train_tokenizer,
    Pipeline,
};
use parquet::arrow::ArrowWriter;

/// A corpus directory holding one good file and `bad` (name, bytes), and a tokenizer.
fn corpus_with(test: &str, bad_name: &str, bad: &[u8]) -> (PathBuf, PathBuf, PathBuf) {
    let dir = scratch_dir(test);
    let corpus = dir.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let good = corpus.join("a-good.txt");
    std::fs::write(&good, sample_lines(300).join("\n") + "\n").unwrap();
    let tokenizer = train_tokenizer(&dir, &good, 400);
    std::fs::write(corpus.join(bad_name), bad).unwrap();
    (dir, corpus, tokenizer)
}

fn serve_command(corpus: &Path, tokenizer: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(binary("flightlm-pipeline"));
    command
        .args(["serve", "--input"])
        .arg(corpus)
        .arg("--tokenizer")
        .arg(tokenizer)
        .args(["--listen", "127.0.0.1:0", "--valid-fraction", "0"])
        .args(extra);
    command
}

fn consume(pipeline: &Pipeline) -> std::process::Output {
    run_with_timeout(
        Command::new(binary("flightlm-pipeline"))
            .args(["consume", "--pipeline", &pipeline.url, "--epochs", "1"])
            .args(["--seq-len", "32", "--batch-size", "8"]),
        Duration::from_secs(60),
    )
}

/// Under `error`, the stream (or the server's start) fails with a message holding `expected`.
fn assert_error_names(corpus: &Path, tokenizer: &Path, extra: &[&str], expected: &[&str]) {
    let start = run_with_timeout(
        serve_command(corpus, tokenizer, extra).arg("--check-only"),
        Duration::from_secs(60),
    );
    let message = if start.status.success() {
        let pipeline = Pipeline::start(&[corpus], tokenizer, &with_zero_valid(extra));
        let output = consume(&pipeline);
        assert!(!output.status.success(), "the stream should fail");
        String::from_utf8_lossy(&output.stderr).to_string()
    } else {
        String::from_utf8_lossy(&start.stderr).to_string()
    };
    for part in expected {
        assert!(message.contains(part), "`{part}` missing from: {message}");
    }
}

fn with_zero_valid<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut arguments = vec!["--valid-fraction", "0"];
    arguments.extend_from_slice(extra);
    arguments
}

/// Under `skip`, the stream completes and stats count one record of `kind`; returns the stream's
/// stats.
fn assert_skipped_and_counted(corpus: &Path, tokenizer: &Path, extra: &[&str], kind: &str) {
    let mut arguments = with_zero_valid(extra);
    arguments.extend(["--on-bad-record", "skip"]);
    let pipeline = Pipeline::start(&[corpus], tokenizer, &arguments);
    let output = consume(&pipeline);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = last_json_line(&String::from_utf8_lossy(&output.stdout));
    assert!(
        summary["blocks"].as_u64() > Some(0),
        "the good file is served"
    );
    let stats = last_json_line(&run_ok(
        Command::new(binary("flightlm-pipeline")).args(["stats", "--pipeline", &pipeline.url]),
        Duration::from_secs(30),
    ));
    let counted = &stats["streams"][0]["bad_records"][kind];
    assert_eq!(counted, 1, "{kind} in {stats}");
}

#[test]
fn invalid_utf8_is_named_by_line_or_skipped() {
    let (_dir, corpus, tokenizer) = corpus_with(
        "bad-utf8",
        "b-bad.txt",
        b"fine line\nbroken \xff\xfe here\nfine again\n",
    );
    assert_error_names(
        &corpus,
        &tokenizer,
        &[],
        &["b-bad.txt", "line 2", "invalid UTF-8"],
    );
    assert_skipped_and_counted(&corpus, &tokenizer, &[], "invalid_utf8");
}

#[test]
fn empty_files_are_named_or_skipped() {
    let (_dir, corpus, tokenizer) = corpus_with("bad-empty", "b-empty.txt", b"");
    assert_error_names(&corpus, &tokenizer, &[], &["b-empty.txt", "is empty"]);
    assert_skipped_and_counted(&corpus, &tokenizer, &[], "empty_files");
}

#[test]
fn huge_single_lines_are_named_or_skipped() {
    let mut text = b"short line\nanother short line\n".to_vec();
    text.extend(std::iter::repeat_n(b'x', 5000));
    text.extend(b"\nlast line\n");
    let (_dir, corpus, tokenizer) = corpus_with("bad-huge", "b-huge.txt", &text);
    let limit = ["--max-document-bytes", "1000"];
    assert_error_names(
        &corpus,
        &tokenizer,
        &limit,
        &["b-huge.txt", "row 3", "5000 bytes"],
    );
    assert_skipped_and_counted(&corpus, &tokenizer, &limit, "oversized_documents");
}

#[test]
fn truncated_compressed_files_are_named_or_skipped() {
    let text = sample_lines(3000).join("\n") + "\n";
    let compressed = zstd::encode_all(text.as_bytes(), 3).unwrap();
    let cut = &compressed[..compressed.len() / 2];
    let (_dir, corpus, tokenizer) = corpus_with("bad-truncated", "b-cut.txt.zst", cut);
    assert_error_names(&corpus, &tokenizer, &[], &["b-cut.txt.zst", "truncated"]);
    assert_skipped_and_counted(&corpus, &tokenizer, &[], "truncated_files");
}

#[test]
fn malformed_json_lines_are_named_or_skipped() {
    let lines = b"{\"text\": \"first record\"}\n{\"text\": \"unterminated\n{\"text\": \"third\"}\n";
    let (_dir, corpus, tokenizer) = corpus_with("bad-json", "b-bad.jsonl", lines);
    assert_error_names(
        &corpus,
        &tokenizer,
        &[],
        &["b-bad.jsonl", "line 2", "malformed JSON"],
    );
    assert_skipped_and_counted(&corpus, &tokenizer, &[], "malformed_json");
}

#[test]
fn parquet_without_the_text_column_is_named_or_skipped() {
    let schema = Arc::new(Schema::new(vec![Field::new("body", DataType::Utf8, false)]));
    let body: ArrayRef = Arc::new(StringArray::from(vec!["a body", "another"]));
    let batch = RecordBatch::try_new(schema.clone(), vec![body]).unwrap();
    let mut bytes = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut bytes, schema, None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    let (_dir, corpus, tokenizer) = corpus_with("bad-parquet", "b-nocol.parquet", &bytes);
    assert_error_names(
        &corpus,
        &tokenizer,
        &[],
        &["b-nocol.parquet", "no `text` column", "body"],
    );
    assert_skipped_and_counted(&corpus, &tokenizer, &[], "files_without_text");
}

#[test]
fn null_and_blank_texts_are_counted_not_lost() {
    let lines = b"{\"text\": \"a record\"}\n{\"text\": null}\n{\"text\": \"  \"}\n{\"id\": 4}\n";
    let (_dir, corpus, tokenizer) = corpus_with("bad-nulls", "b-nulls.jsonl", lines);
    let pipeline = Pipeline::start(&[&corpus], &tokenizer, &["--valid-fraction", "0"]);
    let output = consume(&pipeline);
    assert!(output.status.success());
    let stats = last_json_line(&run_ok(
        Command::new(binary("flightlm-pipeline")).args(["stats", "--pipeline", &pipeline.url]),
        Duration::from_secs(30),
    ));
    assert_eq!(stats["streams"][0]["skipped_rows"], 3, "{stats}");
    let good_lines = sample_lines(300)
        .iter()
        .filter(|line| !line.trim().is_empty())
        .count();
    assert_eq!(stats["streams"][0]["documents"], good_lines + 1, "{stats}");
}
