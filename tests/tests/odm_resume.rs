//! `--mixing odm` on two CPU ranks (dropout 0), SIGKILLed after a checkpoint and resumed on two
//! ranks and on one: the policy's weights after every update equal the uninterrupted run's (bit
//! for bit on two ranks; within 1e-6 relative on one, whose per-source sums add up in another
//! order), every step draws the same blocks from the same sources, losses agree within 1e-5
//! relative, and `audit-blocks` finds nothing lost or repeated. With an update every 3 steps the
//! checkpoints often hold a change still waiting for its chunk boundary, and the stream is often
//! waiting for the next update at its `until` when the run is killed.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use flightlm_tests::runs::{
    assert_close, assert_exact_audit, assert_same_losses, copy_dir, kill_after_checkpoint, losses,
    metrics, resumed_from, step_blocks, trainer, TIMEOUT,
};
use flightlm_tests::{binary, run_ok, scratch_dir, two_source_corpus, Pipeline};

const STEPS: usize = 60;

/// Per step: the policy's weights after its latest update (none before the first), and the
/// loss of each source's tokens (which sources the step drew).
type Mixing = BTreeMap<u64, (BTreeMap<String, f64>, BTreeMap<String, f64>)>;

fn mixing_by_step(out: &Path) -> Mixing {
    let by_source = |value: &serde_json::Value| -> BTreeMap<String, f64> {
        serde_json::from_value(value.clone()).unwrap_or_default()
    };
    metrics(out)
        .iter()
        .filter(|line| line["kind"] == "train")
        .map(|line| {
            let step = line["step"].as_u64().expect("step");
            let weights = by_source(&line["mixing_weights"]);
            (step, (weights, by_source(&line["loss_by_source"])))
        })
        .collect()
}

#[test]
fn an_odm_run_killed_on_two_ranks_resumes_on_two_and_on_one_with_the_same_trajectory() {
    let dir = scratch_dir("odm_resume");
    let (mut arguments, tokenizer) = two_source_corpus(&dir, 3000);
    // A third source, harder: the same verses with their words in reverse order.
    let reversed: String = std::fs::read_to_string(dir.join("alpha.txt"))
        .expect("alpha.txt")
        .lines()
        .map(|line| line.split_whitespace().rev().collect::<Vec<_>>().join(" ") + "\n")
        .collect();
    let gamma = dir.join("gamma.txt");
    std::fs::write(&gamma, reversed).expect("writing gamma.txt");
    arguments.extend([
        "--source".to_string(),
        format!("gamma={}:1", gamma.display()),
        "--valid-fraction".into(),
        "0.05".into(),
        // Chunks of 8 blocks: weights change at most once per chunk, and an update due while
        // the previous one waits for its chunk waits too, so 64-block chunks would allow only
        // a few changes in this short run.
        "--shuffle-window".into(),
        "8".into(),
    ]);
    let pipeline = Pipeline::start_with(&tokenizer, &arguments);
    let two = "--batch-size 4 --devices cpu:2 --mixing odm --mixing-every 3";

    let reference = dir.join("uninterrupted");
    run_ok(&mut trainer(&pipeline.url, &reference, STEPS, two), TIMEOUT);
    let expected = mixing_by_step(&reference);
    let updates: Vec<_> = expected.values().map(|(weights, _)| weights).collect();
    assert!(
        updates.windows(2).filter(|pair| pair[0] != pair[1]).count() >= 10,
        "the weights move at the updates: {expected:?}"
    );

    let killed = dir.join("killed");
    kill_after_checkpoint(
        &mut trainer(&pipeline.url, &killed, STEPS, two),
        &killed,
        16,
    );
    for (devices, tolerance) in [("cpu:2", 0.0), ("cpu:1", 1e-6)] {
        let out = dir.join(format!("resumed-{devices}").replace(':', "-"));
        copy_dir(&killed, &out);
        run_ok(
            Command::new(binary("flightlm-trainer"))
                .args(["train", "--pipeline", &pipeline.url, "--devices", devices])
                .arg("--resume")
                .arg(&out),
            TIMEOUT,
        );
        let from = resumed_from(&out);
        assert!((16..STEPS as u64).contains(&from), "resumed from {from}");
        assert_same_losses(&losses(&out), &losses(&reference), 1e-5, devices);
        assert_exact_audit(&out, STEPS as u64, devices);
        assert_eq!(step_blocks(&out), step_blocks(&reference), "{devices}");
        let got = mixing_by_step(&out);
        assert_eq!(got.len(), STEPS, "{devices}: a train line per step");
        assert_eq!(got[&(STEPS as u64)].0.len(), 3, "{devices}: {got:?}");
        let mut largest = 0f64;
        for (step, (weights, source_losses)) in &got {
            let (reference_weights, reference_losses) = &expected[step];
            let what = format!("{devices}: step {step}");
            largest = largest.max(assert_close(weights, reference_weights, tolerance, &what));
            assert_close(source_losses, reference_losses, 1e-5, &what);
        }
        eprintln!("{devices}: resumed from step {from}, weights differ by {largest:.1e} at most");
    }
}
