//! A source added with `add-source` while a `--mixing odm` run trains joins the run's policy with
//! the weight it was added with as its prior, and the run draws from it.

use std::process::{Command, Stdio};
use std::time::Duration;

use flightlm_tests::runs::{metrics, trainer, wait_for_checkpoint, wait_with_deadline, KillOnDrop};
use flightlm_tests::{binary, run_ok, scratch_dir, two_source_corpus, Pipeline};

#[test]
fn a_source_added_during_an_odm_run_joins_its_policy_with_its_weight_as_prior() {
    let dir = scratch_dir("odm_new_source");
    let (mut arguments, tokenizer) = two_source_corpus(&dir, 3000);
    let gamma = dir.join("gamma.txt");
    let reversed: String = std::fs::read_to_string(dir.join("beta.txt"))
        .expect("beta.txt")
        .lines()
        .map(|line| line.split_whitespace().rev().collect::<Vec<_>>().join(" ") + "\n")
        .collect();
    std::fs::write(&gamma, reversed).expect("writing gamma.txt");
    arguments.extend(["--allow-root".to_string(), dir.display().to_string()]);
    let pipeline = Pipeline::start_with(&tokenizer, &arguments);

    let out = dir.join("run");
    let mut run = KillOnDrop(
        trainer(
            &pipeline.url,
            &out,
            120,
            "--batch-size 8 --mixing odm --mixing-every 2",
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the trainer"),
    );
    wait_for_checkpoint(&out, 12, &mut run.0);
    let body = serde_json::json!({ "name": "gamma", "inputs": [gamma], "weight": 2.0 });
    run_ok(
        Command::new(binary("flightlm-pipeline"))
            .args(["action", "--pipeline", &pipeline.url, "add-source"])
            .arg(body.to_string()),
        Duration::from_secs(30),
    );
    let (status, stderr) = wait_with_deadline(&mut run.0, "the odm trainer");
    assert!(status.success(), "{stderr}");

    let lines = metrics(&out);
    let train: Vec<&serde_json::Value> = lines.iter().filter(|l| l["kind"] == "train").collect();
    let joined = train
        .iter()
        .position(|line| line["mixing_weights"].get("gamma").is_some())
        .expect("gamma joins the policy");
    let step = train[joined]["step"].as_u64().expect("step");
    assert!(
        step > 12,
        "gamma joined at step {step}, before it was added"
    );
    let drawn = train[joined..]
        .iter()
        .filter(|line| line["loss_by_source"].get("gamma").is_some())
        .count();
    assert!(drawn > 10, "steps that drew gamma after it joined: {drawn}");

    let last = std::fs::read_dir(out.join("checkpoints"))
        .expect("checkpoints")
        .map(|entry| entry.expect("entry").path())
        .max()
        .expect("a checkpoint");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(last.join("state.json")).unwrap()).unwrap();
    let priors: Vec<(String, f64)> = state["mixing"]["policy"]["arms"]
        .as_array()
        .expect("the policy's arms")
        .iter()
        .map(|arm| {
            (
                arm["source"].as_str().unwrap().to_string(),
                arm["prior"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        priors,
        [
            ("alpha".into(), 1.0),
            ("beta".into(), 1.0),
            ("gamma".into(), 2.0)
        ],
        "the new source's prior is the weight it was added with"
    );
}
