//! Every supported corpus format yields the same blocks for the same documents: plain and
//! zstd-compressed text, JSONL and CSV, and Parquet with `text` stored as Utf8, LargeUtf8 or Utf8View
//! (as HF hub downloads have).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, Int64Array, LargeStringArray, StringArray, StringViewArray};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use flightlm_tests::{
    binary, read_dump, run_ok, sample_corpus, sample_lines, scratch_dir, train_tokenizer, Pipeline,
};
use parquet::arrow::ArrowWriter;

fn write_parquet(path: &Path, text: ArrayRef) {
    let rows = text.len() as i64;
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("text", text.data_type().clone(), false),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![Arc::new(Int64Array::from_iter_values(0..rows)), text],
    )
    .unwrap();
    let mut writer =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), schema, None).unwrap();
    // Several row groups, so order across groups is exercised too.
    for start in (0..batch.num_rows()).step_by(97) {
        let length = 97.min(batch.num_rows() - start);
        writer.write(&batch.slice(start, length)).unwrap();
        writer.flush().unwrap();
    }
    writer.close().unwrap();
}

fn blocks_of(input: &Path, tokenizer: &Path, dir: &Path, name: &str) -> Vec<Vec<u32>> {
    let pipeline = Pipeline::start(&[input], tokenizer, &["--valid-fraction", "0"]);
    let dump = dir.join(format!("{name}.blocks"));
    run_ok(
        Command::new(binary("flightlm-pipeline"))
            .args(["consume", "--pipeline", &pipeline.url])
            .args([
                "--seq-len",
                "48",
                "--batch-size",
                "5",
                "--epochs",
                "1",
                "--dump",
            ])
            .arg(&dump),
        Duration::from_secs(60),
    );
    read_dump(&dump)
}

#[test]
fn all_formats_give_identical_blocks() {
    let dir = scratch_dir("formats");
    let text = sample_corpus(&dir, 600);
    let tokenizer = train_tokenizer(&dir, &text, 500);
    let lines = sample_lines(600);
    let documents: Vec<&str> = lines
        .iter()
        .map(String::as_str)
        .filter(|l| !l.trim().is_empty())
        .collect();

    let zstd_text = dir.join("sample.txt.zst");
    let compressed = zstd::encode_all(std::fs::read(&text).unwrap().as_slice(), 3).unwrap();
    std::fs::write(&zstd_text, compressed).unwrap();

    let jsonl = dir.join("sample.jsonl");
    let json_lines: Vec<String> = documents
        .iter()
        .enumerate()
        .map(|(id, text)| serde_json::json!({"id": id, "text": text}).to_string())
        .collect();
    std::fs::write(&jsonl, json_lines.join("\n") + "\n").unwrap();
    let jsonl_zstd = dir.join("sample.jsonl.zst");
    std::fs::write(
        &jsonl_zstd,
        zstd::encode_all(std::fs::read(&jsonl).unwrap().as_slice(), 3).unwrap(),
    )
    .unwrap();

    // CSV with a header and RFC 4180 quoting (the verses hold commas and colons).
    let csv = dir.join("sample.csv");
    let rows: Vec<String> = documents
        .iter()
        .enumerate()
        .map(|(id, text)| format!("{id},\"{}\"", text.replace('"', "\"\"")))
        .collect();
    std::fs::write(&csv, format!("id,text\n{}\n", rows.join("\n"))).unwrap();
    let csv_zstd = dir.join("sample.csv.zst");
    std::fs::write(
        &csv_zstd,
        zstd::encode_all(std::fs::read(&csv).unwrap().as_slice(), 3).unwrap(),
    )
    .unwrap();

    let utf8 = dir.join("utf8.parquet");
    write_parquet(&utf8, Arc::new(StringArray::from(documents.clone())));
    let large = dir.join("large.parquet");
    write_parquet(&large, Arc::new(LargeStringArray::from(documents.clone())));
    let view = dir.join("view.parquet");
    write_parquet(&view, Arc::new(StringViewArray::from(documents.clone())));

    let reference = blocks_of(&text, &tokenizer, &dir, "txt");
    assert!(reference.len() > 50);
    let variants: [(&str, PathBuf); 8] = [
        ("txt.zst", zstd_text),
        ("jsonl", jsonl),
        ("jsonl.zst", jsonl_zstd),
        ("csv", csv),
        ("csv.zst", csv_zstd),
        ("parquet-utf8", utf8),
        ("parquet-large", large),
        ("parquet-view", view),
    ];
    for (name, path) in variants {
        assert_eq!(
            blocks_of(&path, &tokenizer, &dir, name),
            reference,
            "{name}"
        );
    }
}
