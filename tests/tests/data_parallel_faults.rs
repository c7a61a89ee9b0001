//! End to end: data-parallel runs that span processes or lose a part of themselves. Two
//! `flightlm-trainer` processes joined as two nodes (one CPU rank each) through a coordinator on
//! loopback compute what one process with two ranks computes; a node that dies, or a pipeline
//! that goes away, ends the run with one `error: rank N: …` line within a bounded time, and the
//! run then resumes from its last checkpoint with `audit-blocks` exact.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flightlm_tests::runs::{
    self, assert_exact_audit, free_port, last_checkpoint, losses, setup, start_pipeline,
    step_blocks, the_rank_error, trainer, wait_for_checkpoint, wait_with_deadline, KillOnDrop,
    Setup, TIMEOUT,
};
use flightlm_tests::{binary, run_ok, run_with_timeout};

const LOSS_TOLERANCE: f64 = 1e-5;

fn assert_same_losses(got: &BTreeMap<u64, f64>, expected: &BTreeMap<u64, f64>, what: &str) {
    flightlm_tests::runs::assert_same_losses(got, expected, LOSS_TOLERANCE, what);
}

fn spawn_node(command: &mut Command) -> Child {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting a node")
}

fn node(pipeline: &str, out: &Path, steps: usize, rank: usize, port: u16, extra: &str) -> Child {
    spawn_node(&mut runs::node(pipeline, out, steps, rank, port, extra))
}

#[test]
fn two_nodes_on_loopback_train_like_one_process_with_two_ranks() {
    const STEPS: usize = 20;
    let Setup { dir, pipeline, .. } = setup("dp_two_nodes");
    let reference = dir.join("one-process");
    run_ok(
        &mut trainer(
            &pipeline.url,
            &reference,
            STEPS,
            "--batch-size 4 --devices cpu:2",
        ),
        TIMEOUT,
    );
    let port = free_port();
    let (lead, other) = (dir.join("node-0"), dir.join("node-1"));
    let mut first = KillOnDrop(node(&pipeline.url, &lead, STEPS, 0, port, ""));
    let mut second = KillOnDrop(node(&pipeline.url, &other, STEPS, 1, port, ""));
    let (status, stderr) = wait_with_deadline(&mut first.0, "node 0");
    assert!(status.success(), "node 0: {status}\n{stderr}");
    let (status, stderr) = wait_with_deadline(&mut second.0, "node 1");
    assert!(status.success(), "node 1: {status}\n{stderr}");
    assert_same_losses(&losses(&lead), &losses(&reference), "two nodes vs cpu:2");
    assert_eq!(step_blocks(&lead), step_blocks(&reference));
    // Node 1 writes nothing of the run's: metrics and checkpoints are node 0's.
    assert!(!other.join("metrics.jsonl").exists());
}

#[test]
fn a_dead_node_ends_the_run_naming_a_rank_and_the_run_resumes() {
    const STEPS: usize = 400;
    let Setup { dir, pipeline, .. } = setup("dp_dead_node");
    let port = free_port();
    let (lead, other) = (dir.join("node-0"), dir.join("node-1"));
    let timeout = "--collective-timeout-s 5";
    let mut first = KillOnDrop(node(&pipeline.url, &lead, STEPS, 0, port, timeout));
    let mut second = KillOnDrop(node(&pipeline.url, &other, STEPS, 1, port, timeout));
    wait_for_checkpoint(&lead, 4, &mut first.0);
    second.0.kill().expect("killing node 1");
    let _ = second.0.wait();
    let killed = Instant::now();
    let (status, stderr) = wait_with_deadline(&mut first.0, "node 0 after node 1 died");
    let waited = killed.elapsed();
    assert!(!status.success(), "node 0 fails: {stderr}");
    let error = the_rank_error(&stderr);
    eprintln!("node 0 ended {waited:?} after node 1 died: {error}");
    // The collective timeout (5 s) bounds the wait, with slack for a slow machine.
    assert!(waited < Duration::from_secs(60), "ended after {waited:?}");

    // The run goes on from its last checkpoint on one process with two ranks.
    let steps = (last_checkpoint(&lead) + 8).to_string();
    let mut resume = Command::new(binary("flightlm-trainer"));
    resume
        .args([
            "train",
            "--pipeline",
            &pipeline.url,
            "--devices",
            "cpu:2",
            "--nodes",
            "1",
        ])
        .args(["--node-rank", "0", "--max-steps", &steps, "--resume"])
        .arg(&lead);
    run_ok(&mut resume, TIMEOUT);
    let steps = steps.parse().expect("steps");
    assert_exact_audit(&lead, steps, "resumed");
}

#[test]
fn a_pipeline_that_goes_away_ends_every_rank_and_the_run_resumes() {
    let Setup {
        dir,
        corpus,
        tokenizer,
        pipeline,
    } = setup("dp_pipeline_gone");
    let out = dir.join("run");
    let mut command = trainer(
        &pipeline.url,
        &out,
        2000,
        "--batch-size 4 --devices cpu:2 --pipeline-retry-s 1",
    );
    // A small HTTP/2 window keeps most of the stream on the pipeline's side: with the default
    // one, the whole run's blocks may have arrived before the pipeline goes away.
    command.env("FLIGHTLM_STREAM_WINDOW_BYTES", "16384");
    let mut child = KillOnDrop(
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the trainer"),
    );
    wait_for_checkpoint(&out, 4, &mut child.0);
    drop(pipeline);
    let (status, stderr) = wait_with_deadline(&mut child.0, "the trainer without its pipeline");
    assert!(!status.success(), "{stderr}");
    eprintln!("without its pipeline: {}", the_rank_error(&stderr));

    let restarted = start_pipeline(&corpus, &tokenizer);
    let steps = (last_checkpoint(&out) + 8).to_string();
    let mut resume = Command::new(binary("flightlm-trainer"));
    resume
        .args([
            "train",
            "--pipeline",
            &restarted.url,
            "--max-steps",
            &steps,
            "--resume",
        ])
        .arg(&out);
    let output = run_with_timeout(&mut resume, TIMEOUT);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let steps = steps.parse().expect("steps");
    assert_exact_audit(&out, steps, "resumed");
}

/// Only rank 0 watches the loss: when it diverges there, node 1's error says so, naming rank 0,
/// instead of "rank 0 left".
#[test]
fn a_divergence_found_on_rank_0_is_named_on_every_node() {
    let Setup { dir, pipeline, .. } = setup("dp_divergence_named");
    let port = free_port();
    // A learning rate that overflows the weights within a few steps.
    let explode = "--lr 1e30 --collective-timeout-s 30";
    let mut first = KillOnDrop(node(
        &pipeline.url,
        &dir.join("node-0"),
        40,
        0,
        port,
        explode,
    ));
    let mut second = KillOnDrop(node(
        &pipeline.url,
        &dir.join("node-1"),
        40,
        1,
        port,
        explode,
    ));
    for (child, name) in [(&mut first.0, "node 0"), (&mut second.0, "node 1")] {
        let (status, stderr) = wait_with_deadline(child, name);
        assert!(!status.success(), "{name} diverged: {stderr}");
        let error = the_rank_error(&stderr);
        eprintln!("{name}: {error}");
        assert!(
            error.starts_with("error: rank 0: ") && error.contains("training diverged"),
            "{name}: {error}"
        );
    }
}
