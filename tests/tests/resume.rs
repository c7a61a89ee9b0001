//! Exact resume: a stream cut at any row and continued from its cursor equals the uninterrupted
//! stream, with a two-source mixture and the shuffle window on; shards partition the stream; a
//! cursor from another stream shape is refused.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use flightlm_tests::{
    binary, last_json_line, read_dump, run_ok, run_with_timeout, sample_lines, scratch_dir,
    train_tokenizer, Pipeline,
};

const SEQ_LEN: &str = "64";
const BATCH: &str = "8";

/// Reads up to `max_blocks` blocks (all when `None`) after `cursor`; returns them and the cursor
/// after the last one.
fn segment(
    pipeline: &Pipeline,
    dump: &Path,
    max_blocks: Option<u64>,
    cursor: Option<&serde_json::Value>,
    extra: &[&str],
) -> (Vec<Vec<u32>>, Option<serde_json::Value>) {
    let mut command = Command::new(binary("flightlm-pipeline"));
    command
        .args(["consume", "--pipeline", &pipeline.url, "--epochs", "2"])
        .args(["--seq-len", SEQ_LEN, "--batch-size", BATCH])
        .args(extra)
        .arg("--dump")
        .arg(dump);
    if let Some(max_blocks) = max_blocks {
        command.args(["--max-blocks", &max_blocks.to_string()]);
    }
    if let Some(cursor) = cursor {
        command.args(["--cursor", &cursor.to_string()]);
    }
    let summary = last_json_line(&run_ok(&mut command, Duration::from_secs(120)));
    let cursor = Some(summary["cursor"].clone()).filter(|cursor| !cursor.is_null());
    (read_dump(dump), cursor)
}

/// Two sources (plain text and JSON lines) mixed 0.7 / 0.3, shuffled in windows of 16 blocks.
fn mixture_pipeline(dir: &Path) -> Pipeline {
    let lines = sample_lines(2400);
    let books = dir.join("books.txt");
    std::fs::write(&books, lines[..1600].join("\n") + "\n").unwrap();
    let wiki = dir.join("wiki.jsonl");
    let records: Vec<String> = lines[1600..]
        .iter()
        .map(|line| serde_json::json!({ "text": line }).to_string())
        .collect();
    std::fs::write(&wiki, records.join("\n") + "\n").unwrap();
    let tokenizer = train_tokenizer(dir, &books, 1000);
    let books_source = format!("books={}:0.7", books.display());
    let wiki_source = format!("wiki={}:0.3", wiki.display());
    Pipeline::start_with(
        &tokenizer,
        &[
            "--source",
            &books_source,
            "--source",
            &wiki_source,
            "--shuffle-window",
            "16",
            "--seed",
            "7",
            "--workers",
            "2",
        ],
    )
}

/// A small deterministic generator for the cut points (no dependency needed).
fn next_random(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *state >> 33
}

#[test]
fn resuming_from_any_cut_point_gives_the_uninterrupted_stream() {
    let dir = scratch_dir("resume-cuts");
    let pipeline = mixture_pipeline(&dir);
    let (reference, _) = segment(&pipeline, &dir.join("reference.jsonl"), None, None, &[]);
    let total = reference.len() as u64;
    assert!(
        total > 400,
        "the reference stream is long enough: {total} blocks"
    );

    // 24 cut points: random ones (most fall mid-batch), plus chunk and batch boundaries.
    let mut state = 2026;
    let mut cuts: Vec<u64> = (0..20)
        .map(|_| 1 + next_random(&mut state) % (total - 1))
        .collect();
    cuts.extend([16, 17, 64, 15]);
    cuts.sort();
    cuts.dedup();
    assert!(cuts.len() >= 20);
    assert!(
        cuts.iter().any(|cut| cut % 8 != 0),
        "some cuts are mid-batch"
    );

    let mut resumed = Vec::new();
    let mut cursor: Option<serde_json::Value> = None;
    let mut consumed = 0;
    for (index, cut) in cuts.iter().chain([&total]).enumerate() {
        let dump = dir.join(format!("segment-{index}.jsonl"));
        let take = cut - consumed;
        let (blocks, next) = segment(&pipeline, &dump, Some(take), cursor.as_ref(), &[]);
        assert_eq!(blocks.len() as u64, take, "segment {index} ends at {cut}");
        resumed.extend(blocks);
        consumed = *cut;
        cursor = next;
    }
    assert_eq!(resumed.len(), reference.len());
    for (index, (got, expected)) in resumed.iter().zip(&reference).enumerate() {
        assert_eq!(got, expected, "block {index} differs after resuming");
    }
    // Past the end of the stream, the cursor resumes to nothing.
    let (rest, _) = segment(
        &pipeline,
        &dir.join("rest.jsonl"),
        None,
        cursor.as_ref(),
        &[],
    );
    assert!(rest.is_empty(), "{} blocks after the end", rest.len());
}

#[test]
fn shards_partition_the_stream_and_foreign_cursors_are_refused() {
    let dir = scratch_dir("resume-shards");
    let pipeline = mixture_pipeline(&dir);
    let (whole, cursor) = segment(&pipeline, &dir.join("whole.jsonl"), Some(90), None, &[]);
    let (even, _) = segment(
        &pipeline,
        &dir.join("even.jsonl"),
        Some(45),
        None,
        &["--shard", "0/2"],
    );
    let (odd, _) = segment(
        &pipeline,
        &dir.join("odd.jsonl"),
        Some(45),
        None,
        &["--shard", "1/2"],
    );
    for (index, block) in whole.iter().enumerate() {
        let shard = if index % 2 == 0 { &even } else { &odd };
        assert_eq!(&shard[index / 2], block, "block {index}");
    }

    let cursor = cursor.expect("a cursor after 90 blocks");
    let output = run_with_timeout(
        Command::new(binary("flightlm-pipeline"))
            .args(["consume", "--pipeline", &pipeline.url, "--seq-len", "32"])
            .args(["--batch-size", "4", "--cursor", &cursor.to_string()]),
        Duration::from_secs(60),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("cursor refused") && stderr.contains("fingerprint"),
        "{stderr}"
    );
}

#[test]
fn hostile_cursors_are_refused_and_the_server_keeps_serving() {
    let dir = scratch_dir("resume-hostile");
    let pipeline = mixture_pipeline(&dir);
    let (_, cursor) = segment(&pipeline, &dir.join("first.jsonl"), Some(40), None, &[]);
    let cursor = cursor.expect("a cursor");
    type Edit = fn(&mut serde_json::Value);
    let edits: [(&str, Edit, &str); 6] = [
        (
            "unknown source",
            |c| c["state"]["sources"][0]["source"] = "nope".into(),
            "not served here",
        ),
        (
            "foreign file",
            |c| c["state"]["sources"][0]["file"] = "/etc/passwd".into(),
            "has no file",
        ),
        (
            "token past the document",
            |c| c["state"]["sources"][0]["token"] = 1_000_000_000u64.into(),
            "past the end",
        ),
        (
            "row past the file",
            |c| c["state"]["sources"][0]["row"] = 1_000_000_000u64.into(),
            "did the file change",
        ),
        (
            "skip past the chunk",
            |c| c["skip"] = 1_000_000_000_000u64.into(),
            "beyond a chunk",
        ),
        (
            "draws off a chunk",
            |c| c["state"]["draws"] = 3.into(),
            "does not start a chunk",
        ),
    ];
    for (name, edit, expected) in edits {
        let mut hostile = cursor.clone();
        edit(&mut hostile);
        let output = run_with_timeout(
            Command::new(binary("flightlm-pipeline"))
                .args(["consume", "--pipeline", &pipeline.url, "--epochs", "2"])
                .args([
                    "--seq-len",
                    SEQ_LEN,
                    "--batch-size",
                    BATCH,
                    "--max-blocks",
                    "8",
                ])
                .args(["--cursor", &hostile.to_string()]),
            Duration::from_secs(60),
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{name} was accepted");
        assert!(stderr.contains(expected), "{name}: {stderr}");
    }
    let (blocks, _) = segment(
        &pipeline,
        &dir.join("after.jsonl"),
        Some(8),
        Some(&cursor),
        &[],
    );
    assert_eq!(blocks.len(), 8, "the server still serves");
}
