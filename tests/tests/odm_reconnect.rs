//! An odm run whose pipeline is SIGKILLed and started again twice on the same address: the
//! trainer reconnects with its latest change of weights and `until` in the request (the new
//! pipeline knows nothing of the run; an update sent while it is away opens the stream again),
//! and the run is the uninterrupted run's, step for step: the same blocks, the same weights after
//! every update and the same losses, bit for bit, with nothing lost or repeated.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use flightlm_tests::runs::{
    assert_close, assert_exact_audit, losses, metrics, step_blocks, trainer, wait_for_step,
    wait_with_deadline, KillOnDrop, TIMEOUT,
};
use flightlm_tests::{run_ok, scratch_dir, two_source_corpus, Pipeline};

const STEPS: usize = 60;

fn weights_by_step(out: &Path) -> Vec<String> {
    metrics(out)
        .iter()
        .filter(|line| line["kind"] == "train")
        .map(|line| line["mixing_weights"].to_string())
        .collect()
}

#[test]
fn an_odm_run_continues_its_trajectory_through_pipeline_restarts() {
    let dir = scratch_dir("odm_reconnect");
    let (mut arguments, tokenizer) = two_source_corpus(&dir, 3000);
    // Chunks of 8 blocks, so that the weights change often in a short run.
    arguments.extend(["--shuffle-window", "8", "--valid-fraction", "0.05"].map(String::from));
    let flags = "--batch-size 8 --mixing odm --mixing-every 3 --pipeline-retry-s 60";

    let reference = dir.join("uninterrupted");
    {
        let pipeline = Pipeline::start_with(&tokenizer, &arguments);
        run_ok(
            &mut trainer(&pipeline.url, &reference, STEPS, flags),
            TIMEOUT,
        );
    }

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = listener.local_addr().unwrap().to_string();
    drop(listener);
    arguments.extend(["--listen".to_string(), listen]);
    let first = Pipeline::start_with(&tokenizer, &arguments);
    let out = dir.join("restarted");
    let mut run = KillOnDrop(
        trainer(&first.url, &out, STEPS, flags)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the trainer"),
    );
    wait_for_step(&out, 10, &mut run.0);
    drop(first); // SIGKILL
    std::thread::sleep(Duration::from_millis(300));
    let second = Pipeline::start_with(&tokenizer, &arguments);
    wait_for_step(&out, 35, &mut run.0);
    drop(second);
    std::thread::sleep(Duration::from_millis(300));
    let _third = Pipeline::start_with(&tokenizer, &arguments);
    let (status, stderr) = wait_with_deadline(&mut run.0, "the odm trainer");
    assert!(status.success(), "{stderr}");
    assert!(
        stderr.matches("pipeline unavailable, retrying").count() >= 2,
        "{stderr}"
    );

    assert_eq!(step_blocks(&out), step_blocks(&reference));
    let weights = weights_by_step(&reference);
    let changes = weights.windows(2).filter(|pair| pair[0] != pair[1]).count();
    assert!(changes >= 10, "the weights changed {changes} times");
    assert_eq!(weights_by_step(&out), weights);
    assert_close(&losses(&out), &losses(&reference), 0.0, "losses");
    assert_exact_audit(&out, STEPS as u64, "restarted");
}
