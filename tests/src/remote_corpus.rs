//! The corpus the remote-corpus tests serve from every kind of store, and what they do with a
//! pipeline serving it: read one pass (or a cut of it), read its `stats`, and cut a stream at
//! several points, resuming each cut on the next of several pipeline processes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::StringArray;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;

use crate::{
    binary, last_json_line, read_dump, run_ok, sample_lines, scratch_dir, train_tokenizer, Pipeline,
};

/// The corpus as local files: `books.txt`, `wiki.jsonl.zst`, `news.parquet` (row groups of 100),
/// plus a hidden file and a non-corpus file that listings skip; and its tokenizer.
pub struct Fixture {
    pub dir: PathBuf,
    pub local: PathBuf,
    pub tokenizer: PathBuf,
}

pub fn fixture(name: &str) -> Fixture {
    let dir = scratch_dir(name);
    let local = dir.join("local");
    std::fs::create_dir_all(&local).unwrap();
    let lines = sample_lines(2000);
    std::fs::write(local.join("books.txt"), lines[..800].join("\n") + "\n").unwrap();
    let wiki: String = lines[800..1400]
        .iter()
        .map(|line| serde_json::json!({ "text": line }).to_string() + "\n")
        .collect();
    let compressed = zstd::encode_all(wiki.as_bytes(), 3).unwrap();
    std::fs::write(local.join("wiki.jsonl.zst"), compressed).unwrap();
    write_parquet(&local.join("news.parquet"), &lines[1400..]);
    std::fs::write(local.join(".draft.txt"), "never read\n").unwrap();
    std::fs::write(local.join("notes.md"), "not a corpus\n").unwrap();
    let tokenizer = train_tokenizer(&dir, &local.join("books.txt"), 1000);
    Fixture {
        dir,
        local,
        tokenizer,
    }
}

pub fn write_parquet(path: &Path, lines: &[String]) {
    let schema = Arc::new(Schema::new(vec![Field::new("text", DataType::Utf8, false)]));
    let file = std::fs::File::create(path).unwrap();
    let properties = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(100))
        .build();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(file, schema.clone(), Some(properties)).unwrap();
    let texts = StringArray::from_iter_values(lines.iter());
    writer
        .write(&RecordBatch::try_new(schema, vec![Arc::new(texts)]).unwrap())
        .unwrap();
    writer.close().unwrap();
}

/// Every block of one pass (or up to `max_blocks` after `cursor`), and the cursor after them.
pub fn consume(
    pipeline: &Pipeline,
    dump: &Path,
    max_blocks: Option<u64>,
    cursor: Option<&serde_json::Value>,
) -> (Vec<Vec<u32>>, Option<serde_json::Value>) {
    let mut command = Command::new(binary("flightlm-pipeline"));
    command
        .args(["consume", "--pipeline", &pipeline.url, "--epochs", "1"])
        .args(["--seq-len", "64", "--batch-size", "8", "--dump"])
        .arg(dump);
    if let Some(max_blocks) = max_blocks {
        command.args(["--max-blocks", &max_blocks.to_string()]);
    }
    if let Some(cursor) = cursor {
        command.args(["--cursor", &cursor.to_string()]);
    }
    let summary = last_json_line(&run_ok(&mut command, Duration::from_secs(180)));
    let cursor = Some(summary["cursor"].clone()).filter(|cursor| !cursor.is_null());
    (read_dump(dump), cursor)
}

pub fn stats(pipeline: &Pipeline) -> serde_json::Value {
    last_json_line(&run_ok(
        Command::new(binary("flightlm-pipeline")).args(["stats", "--pipeline", &pipeline.url]),
        Duration::from_secs(30),
    ))
}

pub fn serve(fixture: &Fixture, arguments: &[&str], environment: &[(String, String)]) -> Pipeline {
    Pipeline::start_configured(&fixture.tokenizer, arguments, |command| {
        command.envs(environment.iter().cloned());
    })
}

pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_under(&path));
        }
        found.push(path);
    }
    found
}

/// The blocks of one whole pass through `pipelines[0]`, and the same pass read in `cuts + 1`
/// segments (most cuts mid-batch), each resumed from the previous one's cursor on the next
/// pipeline in turn; asserts they are equal and returns the blocks and the last cursor.
pub fn cut_and_resume(
    fixture: &Fixture,
    pipelines: &[Pipeline],
    cuts: u64,
) -> (Vec<Vec<u32>>, Option<serde_json::Value>) {
    let (reference, _) = consume(
        &pipelines[0],
        &fixture.dir.join("reference.jsonl"),
        None,
        None,
    );
    let total = reference.len() as u64;
    assert!(total > cuts * 2, "{total} blocks for {cuts} cuts");
    let points: Vec<u64> = (1..=cuts)
        .map(|index| index * total / (cuts + 1) + index % 5)
        .collect();
    let mut resumed = Vec::new();
    let mut cursor: Option<serde_json::Value> = None;
    let mut consumed = 0;
    for (index, cut) in points.iter().chain([&total]).enumerate() {
        let dump = fixture.dir.join(format!("segment-{index}.jsonl"));
        let pipeline = &pipelines[index % pipelines.len()];
        let (blocks, next) = consume(pipeline, &dump, Some(cut - consumed), cursor.as_ref());
        assert_eq!(blocks.len() as u64, cut - consumed, "segment {index}");
        resumed.extend(blocks);
        consumed = *cut;
        cursor = next;
    }
    assert_eq!(
        resumed, reference,
        "the cut stream equals the uninterrupted one"
    );
    (reference, cursor)
}
