//! End to end: two nodes that would not train the same run are refused before step 1, each with
//! one line naming the rank and what differs: (a) another seed, (b) another `max_steps`, (c) one
//! resumed from a checkpoint the other lacks, (d) another tokenizer.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use flightlm_tests::runs::{
    free_port, losses, node, setup, start_pipeline, the_rank_error, wait_with_deadline, KillOnDrop,
    Setup,
};
use flightlm_tests::{sample_corpus, scratch_dir, train_tokenizer};

fn spawn(mut command: Command) -> KillOnDrop {
    let child: Child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting a node");
    KillOnDrop(child)
}

/// Runs the two nodes; both must fail before any step with the same one line, which must
/// contain `expected`.
fn assert_refused(lead: Command, other: Command, lead_out: &Path, expected: &str) {
    let (mut lead, mut other) = (spawn(lead), spawn(other));
    let mut lines = Vec::new();
    for (child, name) in [(&mut lead.0, "node 0"), (&mut other.0, "node 1")] {
        let (status, stderr) = wait_with_deadline(child, name);
        assert!(!status.success(), "{name} trained: {stderr}");
        lines.push(the_rank_error(&stderr).to_string());
    }
    eprintln!("{}", lines[0]);
    assert_eq!(lines[0], lines[1], "both nodes say the same");
    assert!(
        lines[0].starts_with("error: rank 1: refused before step 1: ")
            && lines[0].contains(expected),
        "{}",
        lines[0]
    );
    let metrics = std::fs::read_to_string(lead_out.join("metrics.jsonl")).unwrap_or_default();
    assert!(
        !metrics.contains(r#""kind":"train""#),
        "no step ran: {metrics}"
    );
}

#[test]
fn nodes_with_another_seed_or_max_steps_are_refused_naming_the_setting() {
    let Setup { dir, pipeline, .. } = setup("dp_agree_settings");
    let url = &pipeline.url;
    let (lead, other) = (dir.join("a-0"), dir.join("a-1"));
    let port = free_port();
    assert_refused(
        node(url, &lead, 8, 0, port, ""),
        node(url, &other, 8, 1, port, "--seed 7"),
        &lead,
        "its seed is 7, rank 0's is 42",
    );
    let (lead, other) = (dir.join("b-0"), dir.join("b-1"));
    let port = free_port();
    assert_refused(
        node(url, &lead, 8, 0, port, ""),
        node(url, &other, 9, 1, port, ""),
        &lead,
        "its max_steps is 9, rank 0's is 8",
    );
}

#[test]
fn a_node_resumed_from_a_checkpoint_the_other_lacks_is_refused() {
    let Setup { dir, pipeline, .. } = setup("dp_agree_resume");
    let url = &pipeline.url;
    let (lead, other) = (dir.join("node-0"), dir.join("node-1"));
    let port = free_port();
    let (mut first, mut second) = (
        spawn(node(url, &lead, 4, 0, port, "")),
        spawn(node(url, &other, 4, 1, port, "")),
    );
    for (child, name) in [(&mut first.0, "node 0"), (&mut second.0, "node 1")] {
        let (status, stderr) = wait_with_deadline(child, name);
        assert!(status.success(), "{name}: {stderr}");
    }
    // Node 0 continues the run from its step-4 checkpoint; node 1 starts afresh.
    let port = free_port();
    let mut resumed = node(url, &lead, 8, 0, port, "");
    resumed.arg("--resume").arg(&lead);
    let fresh = dir.join("node-1-fresh");
    assert_refused(
        resumed,
        node(url, &fresh, 8, 1, port, ""),
        &fresh,
        "it starts after step 0, rank 0 after step 4",
    );
    let last = losses(&lead).into_keys().max();
    assert_eq!(last, Some(4), "no step ran after the refusal");
}

#[test]
fn a_node_reading_another_tokenizer_is_refused() {
    let Setup { dir, pipeline, .. } = setup("dp_agree_tokenizer");
    let other_dir = scratch_dir("dp_agree_tokenizer_other");
    let corpus = sample_corpus(&other_dir, 2000);
    let tokenizer = train_tokenizer(&other_dir, &corpus, 900);
    let other_pipeline = start_pipeline(&corpus, &tokenizer);
    let (lead, other) = (dir.join("node-0"), dir.join("node-1"));
    let port = free_port();
    assert_refused(
        node(&pipeline.url, &lead, 8, 0, port, ""),
        node(&other_pipeline.url, &other, 8, 1, port, ""),
        &lead,
        "its tokenizer is ",
    );
}
