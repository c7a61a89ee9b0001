//! Other trainers read the same stream: the pyarrow.flight example and `python/flightlm_stream.py`
//! decode exactly the blocks the Rust client does, with consecutive sequence numbers, the
//! tokenizer description and exact resumes.

use std::process::Command;
use std::time::Duration;

use flightlm_tests::{
    binary, last_json_line, python, read_dump, repo_root, run_ok, sample_corpus, scratch_dir,
    train_tokenizer, Pipeline,
};

#[test]
fn pyarrow_reads_the_same_blocks_as_the_rust_client() {
    let dir = scratch_dir("python_client");
    let corpus = sample_corpus(&dir, 1200);
    let tokenizer = train_tokenizer(&dir, &corpus, 700);
    let pipeline = Pipeline::start(&[&corpus], &tokenizer, &["--valid-fraction", "0.05"]);

    for split in ["train", "valid"] {
        let rust_dump = dir.join(format!("{split}-rust.blocks"));
        run_ok(
            Command::new(binary("flightlm-pipeline"))
                .args(["consume", "--pipeline", &pipeline.url, "--split", split])
                .args([
                    "--seq-len",
                    "40",
                    "--batch-size",
                    "6",
                    "--epochs",
                    "2",
                    "--dump",
                ])
                .arg(&rust_dump),
            Duration::from_secs(60),
        );
        let python_dump = dir.join(format!("{split}-python.blocks"));
        let stdout = run_ok(
            Command::new(python())
                .arg(repo_root().join("scripts/read_stream.py"))
                .args(["--pipeline", &pipeline.url, "--split", split])
                .args([
                    "--seq-len",
                    "40",
                    "--batch-size",
                    "6",
                    "--epochs",
                    "2",
                    "--dump",
                ])
                .arg(&python_dump),
            Duration::from_secs(120),
        );
        let summary = last_json_line(&stdout);
        let rust = read_dump(&rust_dump);
        assert!(!rust.is_empty());
        assert_eq!(
            read_dump(&python_dump),
            rust,
            "{split}: pyarrow and Rust disagree"
        );
        assert_eq!(summary["blocks"].as_u64(), Some(rust.len() as u64));
        assert_eq!(summary["tokenizer"]["mask_id"], 4);
    }
}

/// A scratch dir and a pipeline serving a small corpus, all of it as `train`, shuffled in windows
/// of `window` blocks.
fn shuffled_pipeline(name: &str, window: &str) -> (std::path::PathBuf, Pipeline) {
    let dir = scratch_dir(name);
    let corpus = sample_corpus(&dir, 1200);
    let tokenizer = train_tokenizer(&dir, &corpus, 700);
    let pipeline = Pipeline::start(
        &[&corpus],
        &tokenizer,
        &["--valid-fraction", "0", "--shuffle-window", window],
    );
    (dir, pipeline)
}

/// A Python reader stops mid-batch, and its cursor resumes the stream exactly, whether the next
/// reader is Python or Rust.
#[test]
fn pyarrow_cursor_resumes_the_stream_exactly() {
    let (dir, pipeline) = shuffled_pipeline("python_cursor", "32");
    let python_read = |name: &str, max_blocks: &str, cursor: Option<&str>| {
        let dump = dir.join(name);
        let mut command = Command::new(python());
        command
            .arg(repo_root().join("scripts/read_stream.py"))
            .args(["--pipeline", &pipeline.url, "--seq-len", "40"])
            .args(["--batch-size", "6", "--max-blocks", max_blocks, "--dump"])
            .arg(&dump);
        if let Some(cursor) = cursor {
            command.args(["--cursor", cursor]);
        }
        let summary = last_json_line(&run_ok(&mut command, Duration::from_secs(120)));
        (read_dump(&dump), summary["cursor"].to_string())
    };
    let (whole, _) = python_read("whole.blocks", "150", None);
    let (first, cursor) = python_read("first.blocks", "61", None);
    let (second, cursor) = python_read("second.blocks", "40", Some(&cursor));
    let rust_dump = dir.join("third.blocks");
    run_ok(
        Command::new(binary("flightlm-pipeline"))
            .args(["consume", "--pipeline", &pipeline.url, "--seq-len", "40"])
            .args([
                "--batch-size",
                "6",
                "--max-blocks",
                "49",
                "--cursor",
                &cursor,
            ])
            .arg("--dump")
            .arg(&rust_dump),
        Duration::from_secs(60),
    );
    let resumed: Vec<Vec<u32>> = first
        .into_iter()
        .chain(second)
        .chain(read_dump(&rust_dump))
        .collect();
    assert_eq!(resumed, whole);
}

/// Two Python readers, as two DDP ranks, read `--shard 0/2` and `--shard 1/2` at once: together
/// they are the unsharded stream, block for block.
#[test]
fn pyarrow_ranks_read_their_shards_of_one_stream() {
    let (dir, pipeline) = shuffled_pipeline("python_shards", "16");
    let stream_args = ["--seq-len", "40", "--batch-size", "6", "--epochs", "1"];
    let whole_dump = dir.join("whole.blocks");
    run_ok(
        Command::new(binary("flightlm-pipeline"))
            .args(["consume", "--pipeline", &pipeline.url])
            .args(stream_args)
            .arg("--dump")
            .arg(&whole_dump),
        Duration::from_secs(60),
    );
    let ranks: Vec<_> = (0..2)
        .map(|rank| {
            let dump = dir.join(format!("rank-{rank}.blocks"));
            let mut command = Command::new(python());
            command
                .arg(repo_root().join("scripts/read_stream.py"))
                .args(["--pipeline", &pipeline.url, "--shard", &format!("{rank}/2")])
                .args(stream_args)
                .arg("--dump")
                .arg(&dump);
            let reader = std::thread::spawn(move || run_ok(&mut command, Duration::from_secs(120)));
            (reader, dump)
        })
        .collect();
    let shards: Vec<Vec<Vec<u32>>> = ranks
        .into_iter()
        .map(|(reader, dump)| {
            reader.join().expect("the reader thread");
            read_dump(&dump)
        })
        .collect();
    let whole = read_dump(&whole_dump);
    assert!(whole.len() > 100, "{} blocks", whole.len());
    assert_eq!(shards[0].len() + shards[1].len(), whole.len());
    for (seq, block) in whole.iter().enumerate() {
        assert_eq!(&shards[seq % 2][seq / 2], block, "block {seq}");
    }
}

/// `BlockReader` row by row, in four legs each resumed from the last one's `state_dict()`
/// (taken mid-batch; the second and third read ahead of what they keep and save the position
/// of the last block kept, the third from two batches back): together they are the stream
/// `consume` reads.
#[test]
fn block_reader_state_resumes_between_rows() {
    let (dir, pipeline) = shuffled_pipeline("python_block_reader", "32");
    let whole_dump = dir.join("whole.blocks");
    run_ok(
        Command::new(binary("flightlm-pipeline"))
            .args(["consume", "--pipeline", &pipeline.url, "--seq-len", "40"])
            .args(["--batch-size", "6", "--max-blocks", "100", "--dump"])
            .arg(&whole_dump),
        Duration::from_secs(60),
    );
    let output = run_ok(
        Command::new(python())
            .arg(repo_root().join("tests/python/block_reader_state.py"))
            .args([&pipeline.url, "40", "6", "23", "30:25", "20:9", "43"]),
        Duration::from_secs(120),
    );
    let read: serde_json::Value = serde_json::from_str(&output).expect("JSON");
    let blocks: Vec<Vec<u32>> = serde_json::from_value(read["blocks"].clone()).expect("blocks");
    assert_eq!(blocks, read_dump(&whole_dump));
    assert_eq!(read["state"]["split"], "train");
}
