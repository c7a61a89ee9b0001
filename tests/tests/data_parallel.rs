//! End to end: data-parallel `flightlm-trainer train` processes on CPU ranks, each rank reading
//! its shard of a live pipeline on loopback.
//!
//! A step's numbers depend only on its blocks (MLM and dropout masks are keyed by block): N ranks
//! of batch b log the losses one rank of batch N·b logs; a run with dropout 0.1 killed on 2 ranks
//! resumes on 1 or 3 with the uninterrupted run's losses and `audit-blocks` exact. Runs over
//! several processes and failures: `data_parallel_faults.rs`; refusals before the first step:
//! `data_parallel_agreement.rs`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use flightlm_tests::binary;
use flightlm_tests::run_ok;
use flightlm_tests::runs::{
    assert_exact_audit, copy_dir, kill_after_checkpoint, losses, metrics, resumed_from, setup,
    step_blocks, trainer, Setup, TIMEOUT,
};
use safetensors::SafeTensors;

/// Losses agree to float-summation noise: relative.
const LOSS_TOLERANCE: f64 = 1e-5;
const PARAMETER_TOLERANCE: f32 = 1e-4;

fn assert_same_losses(got: &BTreeMap<u64, f64>, expected: &BTreeMap<u64, f64>, what: &str) {
    flightlm_tests::runs::assert_same_losses(got, expected, LOSS_TOLERANCE, what);
}

/// The exported model's tensors, by name.
fn parameters(out: &Path) -> BTreeMap<String, Vec<f32>> {
    let bytes = std::fs::read(out.join("model/model.safetensors")).expect("exported model");
    let tensors = SafeTensors::deserialize(&bytes).expect("safetensors");
    tensors
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = view
                .data()
                .chunks_exact(4)
                .map(|bytes| f32::from_le_bytes(bytes.try_into().expect("4 bytes")))
                .collect();
            (name, values)
        })
        .collect()
}

#[test]
fn two_cpu_ranks_train_like_one_rank_of_twice_the_batch() {
    let Setup { dir, pipeline, .. } = setup("dp_two_ranks");
    let (one, two) = (dir.join("one"), dir.join("two"));
    run_ok(
        &mut trainer(&pipeline.url, &one, 5, "--batch-size 8"),
        TIMEOUT,
    );
    run_ok(
        &mut trainer(&pipeline.url, &two, 5, "--batch-size 4 --devices cpu:2"),
        TIMEOUT,
    );
    let expected = losses(&one);
    assert_eq!(expected.len(), 5);
    assert_same_losses(&losses(&two), &expected, "cpu:2 x 4 vs 1 x 8");
    // Both trained on blocks [8s, 8s + 8) at step s.
    assert_eq!(step_blocks(&two), step_blocks(&one));

    let (single, parallel) = (parameters(&one), parameters(&two));
    assert_eq!(
        single.keys().collect::<Vec<_>>(),
        parallel.keys().collect::<Vec<_>>()
    );
    let mut largest = 0f32;
    for (name, values) in &single {
        let other = &parallel[name];
        assert_eq!(values.len(), other.len(), "{name}");
        for (a, b) in values.iter().zip(other) {
            largest = largest.max((a - b).abs());
        }
    }
    eprintln!("cpu:2 x 4 vs 1 x 8: parameters differ by up to {largest:.2e}");
    assert!(
        largest < PARAMETER_TOLERANCE,
        "parameters differ by up to {largest}"
    );

    // Every checkpoint of the two-rank run was checked: both ranks held bitwise equal parameters.
    let checkpoints: Vec<serde_json::Value> = metrics(&two)
        .into_iter()
        .filter(|line| line["kind"] == "checkpoint")
        .collect();
    assert_eq!(checkpoints.len(), 2, "steps 4 and 5");
    for line in &checkpoints {
        assert!(line["parameter_hash"].is_string(), "{line}");
    }
    let start = metrics(&two)
        .into_iter()
        .find(|line| line["kind"] == "start")
        .expect("start line");
    assert_eq!(start["world_size"], 2);
}

#[test]
fn a_run_killed_on_two_ranks_resumes_on_one_and_on_three() {
    const STEPS: usize = 40;
    let Setup { dir, pipeline, .. } = setup("dp_resume_world_size");
    let two = "--batch-size 3 --devices cpu:2 --dropout 0.1";
    let reference = dir.join("uninterrupted");
    run_ok(&mut trainer(&pipeline.url, &reference, STEPS, two), TIMEOUT);
    let expected = losses(&reference);
    assert_eq!(expected.len(), STEPS);

    let killed = dir.join("killed");
    kill_after_checkpoint(&mut trainer(&pipeline.url, &killed, STEPS, two), &killed, 4);
    for (devices, batch_size) in [("cpu:1", 6), ("cpu:3", 2)] {
        let out = dir.join(format!("resumed-{devices}").replace(':', "-"));
        copy_dir(&killed, &out);
        let mut resume = Command::new(binary("flightlm-trainer"));
        resume
            .args([
                "train",
                "--pipeline",
                &pipeline.url,
                "--devices",
                devices,
                "--resume",
            ])
            .arg(&out);
        run_ok(&mut resume, TIMEOUT);
        let from = resumed_from(&out);
        assert!(
            (4..STEPS as u64).contains(&from),
            "resumed from step {from}"
        );
        assert_same_losses(&losses(&out), &expected, devices);
        assert_exact_audit(&out, STEPS as u64, devices);
        // The same global batch on the new world size: 6 blocks a step.
        let config = std::fs::read_to_string(out.join("config.toml")).expect("config.toml");
        assert!(
            config.contains(&format!("batch_size = {batch_size}")),
            "{config}"
        );
        assert_eq!(step_blocks(&out), step_blocks(&reference), "{devices}");
    }
}
