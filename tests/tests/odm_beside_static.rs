//! Two trainers on one pipeline: one steers its own mixture (`--mixing odm`), the other keeps
//! the pipeline's weights. The static run gets exactly the blocks it gets alone (same block
//! numbers and bit-identical losses at every step) while the odm run moves its weights and opens
//! its stream again at each change.

use std::process::Stdio;

use flightlm_tests::runs::{
    losses, metrics, step_blocks, trainer, wait_with_deadline, KillOnDrop, TIMEOUT,
};
use flightlm_tests::{run_ok, scratch_dir, two_source_corpus, Pipeline};

#[test]
fn a_static_run_beside_an_odm_run_gets_the_blocks_it_gets_alone() {
    let dir = scratch_dir("odm_beside_static");
    let (arguments, tokenizer) = two_source_corpus(&dir, 3000);
    let pipeline = Pipeline::start_with(&tokenizer, &arguments);
    let statics = "--batch-size 8";

    let alone = dir.join("alone");
    run_ok(&mut trainer(&pipeline.url, &alone, 40, statics), TIMEOUT);

    let odm = dir.join("odm");
    let mut steering = KillOnDrop(
        trainer(
            &pipeline.url,
            &odm,
            80,
            "--batch-size 8 --mixing odm --mixing-every 2",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the odm trainer"),
    );
    let beside = dir.join("beside");
    run_ok(&mut trainer(&pipeline.url, &beside, 40, statics), TIMEOUT);
    let (status, stderr) = wait_with_deadline(&mut steering.0, "the odm trainer");
    assert!(status.success(), "{stderr}");

    assert_eq!(step_blocks(&beside), step_blocks(&alone));
    assert_eq!(losses(&beside), losses(&alone), "bit-identical losses");
    let changes = metrics(&odm)
        .iter()
        .filter(|line| line["kind"] == "train")
        .map(|line| line["mixing_weights"].to_string())
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|pair| pair[0] != pair[1])
        .count();
    // Weights change at most once per 64-block chunk: an update due while the previous one has
    // not reached its chunk waits (`MixingState::update_due`), so 640 blocks give about 10.
    assert!(
        changes >= 8,
        "the odm run changed its weights {changes} times"
    );
}
