//! End to end: a trainer process killed with SIGKILL after a checkpoint, or stopped with SIGINT,
//! and resumed with `--resume` logs the same loss at every step as a run that was never
//! interrupted, reading from a live pipeline (the stream continues at the next block) or from the
//! generated corpus of `bench`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flightlm_tests::runs::{losses, metrics, resumed_from};
use flightlm_tests::{binary, run_ok, sample_corpus, scratch_dir, train_tokenizer, Pipeline};

/// Runs are reproducible to ~1e-7 relative on the CPU backend, not bit for bit.
const LOSS_TOLERANCE: f64 = 1e-5;
const STEPS: usize = 40;
const TIMEOUT: Duration = Duration::from_secs(300);

/// Tiny model, short blocks, a loss line every step and a checkpoint every 4.
fn run_flags(out: &Path) -> Vec<String> {
    let flags = format!(
        "--objective mlm --preset tiny --max-steps {STEPS} --seq-len 32 --batch-size 8 \
         --grad-accum 1 --warmup-steps 4 --log-every 1 --eval-every 8 --save-every 4"
    );
    let mut flags: Vec<String> = flags.split_whitespace().map(String::from).collect();
    flags.push("--out".into());
    flags.push(out.display().to_string());
    flags
}

fn assert_same_losses(resumed: &BTreeMap<u64, f64>, uninterrupted: &BTreeMap<u64, f64>) {
    assert_eq!(
        resumed.keys().collect::<Vec<_>>(),
        uninterrupted.keys().collect::<Vec<_>>(),
        "every step logged exactly once"
    );
    for (step, loss) in resumed {
        let expected = uninterrupted[step];
        assert!(
            (loss - expected).abs() <= LOSS_TOLERANCE,
            "step {step}: resumed loss {loss}, uninterrupted {expected}"
        );
    }
}

/// Starts `command`, waits for its first checkpoint, then sends `signal` (via `kill`); returns
/// once the process has exited, with its exit status.
fn interrupt_after_first_checkpoint(
    command: &mut Command,
    out: &Path,
    signal: &str,
) -> std::process::ExitStatus {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting the trainer");
    let first = out
        .join("checkpoints")
        .join("step-0000004")
        .join("state.json");
    let deadline = Instant::now() + TIMEOUT;
    while !first.exists() {
        if let Some(status) = child.try_wait().expect("polling the trainer") {
            panic!("the trainer exited ({status}) before its first checkpoint");
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint within {TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .expect("running kill");
    assert!(status.success(), "kill {signal} failed");
    let status = child.wait().expect("waiting for the trainer");
    assert!(
        !metrics(out).iter().any(|line| line["kind"] == "done"),
        "the run finished before it could be interrupted; make it longer"
    );
    status
}

fn run_to_end(command: &mut Command) {
    run_ok(command, TIMEOUT);
}

fn trainer(subcommand: &str, source_flags: &[&str]) -> Command {
    let mut command = Command::new(binary("flightlm-trainer"));
    command.arg(subcommand).args(source_flags);
    command
}

/// One uninterrupted run and one interrupted by `signal` then resumed; compares their losses.
fn check_resume(dir: &Path, subcommand: &str, source_flags: &[&str], signal: &str) {
    let reference = dir.join("uninterrupted");
    run_to_end(trainer(subcommand, source_flags).args(run_flags(&reference)));
    let uninterrupted = losses(&reference);
    assert_eq!(uninterrupted.len(), STEPS);

    let out: PathBuf = dir.join("interrupted");
    let status = interrupt_after_first_checkpoint(
        trainer(subcommand, source_flags).args(run_flags(&out)),
        &out,
        signal,
    );
    if signal == "-INT" {
        assert!(status.success(), "Ctrl-C exits 0: {status}");
        let stop = metrics(&out)
            .into_iter()
            .find(|line| line["kind"] == "stop")
            .expect("a stop line");
        let step = stop["step"].as_u64().expect("step");
        let checkpoint = out.join(format!("checkpoints/step-{step:07}/state.json"));
        assert!(checkpoint.exists(), "Ctrl-C checkpoints step {step} first");
    } else {
        assert!(!status.success(), "SIGKILL ends the process: {status}");
    }

    // The resumed run needs no other flag: everything comes from the checkpoint.
    run_to_end(trainer(subcommand, source_flags).arg("--resume").arg(&out));
    let from = resumed_from(&out);
    assert!(
        (4..STEPS as u64).contains(&from),
        "resumed from step {from}"
    );
    assert_same_losses(&losses(&out), &uninterrupted);
    let done = metrics(&out)
        .into_iter()
        .find(|line| line["kind"] == "done")
        .expect("the resumed run finishes");
    assert_eq!(done["steps"].as_u64(), Some(STEPS as u64));
}

#[test]
fn a_killed_run_resumes_from_a_live_pipeline_where_it_stopped() {
    let dir = scratch_dir("resume_pipeline");
    let corpus = sample_corpus(&dir, 2000);
    let tokenizer = train_tokenizer(&dir, &corpus, 1000);
    let pipeline = Pipeline::start(&[&corpus], &tokenizer, &["--valid-fraction", "0.05"]);
    check_resume(&dir, "train", &["--pipeline", &pipeline.url], "-KILL");
}

#[test]
fn bench_runs_resume_after_sigkill_and_after_ctrl_c() {
    let dir = scratch_dir("resume_bench");
    let corpus = ["--vocab-size", "1000"];
    check_resume(&dir.join("kill"), "bench", &corpus, "-KILL");
    check_resume(&dir.join("interrupt"), "bench", &corpus, "-INT");
}
