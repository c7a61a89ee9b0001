//! Bad input and unreachable services give one clear line on stderr and a non-zero exit.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use flightlm_tests::{binary, run_with_timeout, sample_corpus, scratch_dir, train_tokenizer};

/// Runs a command that must fail and returns its one-line error.
fn failure(command: &mut Command) -> String {
    let output = run_with_timeout(command, Duration::from_secs(60));
    assert!(!output.status.success(), "{command:?} should fail");
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_string();
    let error_lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error")).collect();
    assert_eq!(
        error_lines.len(),
        1,
        "expected one error line, got:\n{stderr}"
    );
    assert!(
        error_lines[0].len() < 400,
        "error line too long: {}",
        error_lines[0]
    );
    error_lines[0].to_string()
}

fn serve(input: &Path, tokenizer: &Path) -> Command {
    let mut command = Command::new(binary("flightlm-pipeline"));
    command
        .args(["serve", "--input"])
        .arg(input)
        .arg("--tokenizer")
        .arg(tokenizer)
        .args(["--listen", "127.0.0.1:0"]);
    command
}

#[test]
fn bad_inputs_are_named_in_one_line() {
    let dir = scratch_dir("cli_errors");
    let corpus = sample_corpus(&dir, 200);
    let tokenizer = train_tokenizer(&dir, &corpus, 400);

    let missing = dir.join("nope.txt");
    let message = failure(&mut serve(&missing, &tokenizer));
    assert!(
        message.contains("input not found") && message.contains("nope.txt"),
        "{message}"
    );

    let empty_dir = dir.join("empty");
    std::fs::create_dir_all(&empty_dir).unwrap();
    std::fs::write(empty_dir.join("notes.md"), "not a corpus").unwrap();
    let message = failure(&mut serve(&empty_dir, &tokenizer));
    assert!(
        message.contains("no readable corpus") && message.contains("empty"),
        "{message}"
    );

    let no_text = dir.join("articles.jsonl");
    std::fs::write(
        &no_text,
        "{\"body\": \"a\", \"id\": 1}\n{\"body\": \"b\", \"id\": 2}\n",
    )
    .unwrap();
    let message = failure(&mut serve(&no_text, &tokenizer));
    assert!(
        message.contains("articles.jsonl")
            && message.contains("no `text` column")
            && message.contains("body"),
        "{message}"
    );

    // The tokenizer trainer reads through the same source layer and fails the same way.
    let message = failure(
        Command::new(binary("flightlm-pipeline"))
            .args(["train-tokenizer", "--vocab-size", "300", "--input"])
            .arg(&no_text)
            .arg("--out")
            .arg(dir.join("unused")),
    );
    assert!(message.contains("no `text` column"), "{message}");
}

#[test]
fn unreachable_pipeline_is_a_clear_error() {
    // Port 1 on loopback: nothing listens there.
    let url = "http://127.0.0.1:1";
    let message = failure(Command::new(binary("flightlm-pipeline")).args([
        "consume",
        "--pipeline",
        url,
        "--seq-len",
        "16",
        "--batch-size",
        "2",
        "--retry-s",
        "1",
    ]));
    // Like the trainer, consume retries for the given time, then gives up with one clear line.
    assert!(
        message.contains("unavailable for more than 1 s")
            && message.contains("cannot reach pipeline at http://127.0.0.1:1"),
        "{message}"
    );

    let out = scratch_dir("unreachable_trainer");
    let message = failure(
        Command::new(binary("flightlm-trainer"))
            .args([
                "train",
                "--pipeline",
                url,
                "--objective",
                "mlm",
                "--preset",
                "tiny",
            ])
            .args(["--max-steps", "1", "--pipeline-retry-s", "2", "--out"])
            .arg(&out),
    );
    // The trainer retries for the given time, then gives up with one clear line.
    assert!(
        message.contains("unavailable for more than 2 s")
            && message.contains("cannot reach pipeline at http://127.0.0.1:1"),
        "{message}"
    );
}
