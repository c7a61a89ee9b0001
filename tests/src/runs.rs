//! Helpers for tests that train against a live pipeline on loopback and read what a run
//! directory holds: metrics, losses, the block log and its audit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{binary, run_ok, sample_corpus, scratch_dir, train_tokenizer, Pipeline};

/// Deadline of one trainer run or helper command.
pub const TIMEOUT: Duration = Duration::from_secs(300);

pub struct Setup {
    pub dir: PathBuf,
    pub corpus: PathBuf,
    pub tokenizer: PathBuf,
    pub pipeline: Pipeline,
}

pub fn setup(name: &str) -> Setup {
    let dir = scratch_dir(name);
    let corpus = sample_corpus(&dir, 2000);
    let tokenizer = train_tokenizer(&dir, &corpus, 1000);
    let pipeline = start_pipeline(&corpus, &tokenizer);
    Setup {
        dir,
        corpus,
        tokenizer,
        pipeline,
    }
}

pub fn start_pipeline(corpus: &Path, tokenizer: &Path) -> Pipeline {
    Pipeline::start(&[corpus], tokenizer, &["--valid-fraction", "0.05"])
}

/// The step of the newest checkpoint in run directory `out`.
pub fn last_checkpoint(out: &Path) -> usize {
    std::fs::read_dir(out.join("checkpoints"))
        .expect("checkpoints")
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.strip_prefix("step-")?.parse().ok()
        })
        .max()
        .expect("a checkpoint")
}

/// `train` of the tiny preset on 32-token blocks, dropout 0 (unless `extra` sets it), a loss
/// line every step.
pub fn trainer(pipeline: &str, out: &Path, steps: usize, extra: &str) -> Command {
    let dropout = if extra.contains("--dropout") {
        ""
    } else {
        "--dropout 0"
    };
    let flags = format!(
        "train --pipeline {pipeline} --objective mlm --preset tiny --seq-len 32 --grad-accum 1 \
         {dropout} --warmup-steps 2 --max-steps {steps} --log-every 1 --eval-every 1000 \
         --save-every 4 {extra}"
    );
    let mut command = Command::new(binary("flightlm-trainer"));
    command.args(flags.split_whitespace()).arg("--out").arg(out);
    command
}

pub fn metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON metrics line"))
        .collect()
}

pub fn losses(out: &Path) -> BTreeMap<u64, f64> {
    metrics(out)
        .iter()
        .filter(|line| line["kind"] == "train")
        .map(|line| {
            (
                line["step"].as_u64().expect("step"),
                line["loss"].as_f64().expect("loss"),
            )
        })
        .collect()
}

/// Every step logged once, each loss within `tolerance` (relative) of `expected`'s.
pub fn assert_same_losses(
    got: &BTreeMap<u64, f64>,
    expected: &BTreeMap<u64, f64>,
    tolerance: f64,
    what: &str,
) {
    let largest = assert_close(got, expected, tolerance, what);
    eprintln!(
        "{what}: {} losses, largest relative difference {largest:.2e}",
        got.len()
    );
}

/// `got` and `expected` have the same keys, each value within `tolerance` (relative) of
/// `expected`'s; returns the largest relative difference.
pub fn assert_close<K: Ord + std::fmt::Debug>(
    got: &BTreeMap<K, f64>,
    expected: &BTreeMap<K, f64>,
    tolerance: f64,
    what: &str,
) -> f64 {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "{what}: the same keys (every step logged exactly once)"
    );
    let mut largest = 0f64;
    for (key, value) in got {
        let reference = expected[key];
        let relative = (value - reference).abs() / reference.abs();
        assert!(
            relative <= tolerance,
            "{what}: {key:?}: {value} vs {reference}"
        );
        largest = largest.max(relative);
    }
    largest
}

pub fn audit(out: &Path) -> serde_json::Value {
    let audit = run_ok(
        Command::new(binary("flightlm-trainer"))
            .arg("audit-blocks")
            .arg(out),
        TIMEOUT,
    );
    serde_json::from_str(audit.trim()).expect("audit JSON")
}

pub fn step_blocks(out: &Path) -> Vec<String> {
    std::fs::read_to_string(out.join("blocks.jsonl"))
        .expect("blocks.jsonl")
        .lines()
        .map(String::from)
        .collect()
}

/// A child process killed (and reaped) when dropped, so a failing test leaves nothing running.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits up to [`TIMEOUT`] for `child` to exit; returns its status and what it wrote to stderr.
pub fn wait_with_deadline(child: &mut Child, what: &str) -> (std::process::ExitStatus, String) {
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("polling") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not end within {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, reader.join().expect("stderr reader"))
}

/// Waits until checkpoint `step` of run directory `out` is complete, failing if `child` exits
/// first or [`TIMEOUT`] passes.
pub fn wait_for_checkpoint(out: &Path, step: usize, child: &mut Child) {
    let checkpoint = out.join(format!("checkpoints/step-{step:07}/state.json"));
    let deadline = Instant::now() + TIMEOUT;
    while !checkpoint.exists() {
        if let Some(status) = child.try_wait().expect("polling the trainer") {
            panic!("the trainer exited ({status}) before checkpoint {step}");
        }
        assert!(
            Instant::now() < deadline,
            "no checkpoint {step} within {TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The one `error:` line of a failed run's stderr, which must name a rank.
pub fn the_rank_error(stderr: &str) -> &str {
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    assert!(errors[0].starts_with("error: rank "), "{stderr}");
    errors[0]
}

/// `audit-blocks` of `out` finds `steps` steps, no block lost and none repeated.
pub fn assert_exact_audit(out: &Path, steps: u64, what: &str) {
    let audit = audit(out);
    assert_eq!(audit["lost"], 0, "{what}: {audit}");
    assert_eq!(audit["repeated"], 0, "{what}: {audit}");
    assert_eq!(audit["steps"], steps, "{what}: {audit}");
}

/// The step the resumed run in `out` continued from, as its metrics say (exactly one resume).
pub fn resumed_from(out: &Path) -> u64 {
    let resumes: Vec<u64> = metrics(out)
        .iter()
        .filter(|line| line["kind"] == "resume")
        .map(|line| line["step"].as_u64().expect("step"))
        .collect();
    assert_eq!(resumes.len(), 1, "one resume line");
    resumes[0]
}

/// A free port on 127.0.0.1 (for a coordinator or a pipeline restarted on the same address).
pub fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    probe.local_addr().expect("address").port()
}

/// [`trainer`] as node `rank` of a two-node run (one CPU rank each, 4 blocks a step) whose
/// coordinator listens on 127.0.0.1:`port`, with `extra` flags.
pub fn node(
    pipeline: &str,
    out: &Path,
    steps: usize,
    rank: usize,
    port: u16,
    extra: &str,
) -> Command {
    let extra = format!(
        "--batch-size 4 --devices cpu:1 --nodes 2 --node-rank {rank} \
         --coordinator 127.0.0.1:{port} {extra}"
    );
    trainer(pipeline, out, steps, &extra)
}

/// Waits until something listens on 127.0.0.1:`port` (node 0's coordinator), failing if
/// `child` exits first. The probe connections send nothing: the coordinator drops them.
pub fn wait_until_listening(port: u16, child: &mut Child) {
    let deadline = Instant::now() + TIMEOUT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait().expect("polling") {
            panic!("exited ({status}) before listening on {port}");
        }
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The peak resident memory of process `pid` so far (`VmHWM`), in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// Starts `command`, waits for checkpoint `step`, SIGKILLs it; the run must not have finished.
pub fn kill_after_checkpoint(command: &mut Command, out: &Path, step: usize) {
    let mut child = KillOnDrop(
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting the trainer"),
    );
    let child = &mut child.0;
    wait_for_checkpoint(out, step, child);
    let _ = child.kill();
    let status = child.wait().expect("waiting for the trainer");
    assert!(!status.success(), "SIGKILL ends the process: {status}");
    assert!(
        !metrics(out).iter().any(|line| line["kind"] == "done"),
        "the run finished before it could be killed; make it longer"
    );
}

pub fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp");
    assert!(status.success(), "copying {}", from.display());
}

/// The newest step of a `train` line in run directory `out`'s metrics (0 before the first, or
/// while the file is being started).
pub fn last_step(out: &Path) -> u64 {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["kind"] == "train")
        .filter_map(|line| line["step"].as_u64())
        .max()
        .unwrap_or(0)
}

/// Waits until the trainer `child` writing to `out` logged `step`; panics if it exits first or
/// takes longer than [`TIMEOUT`].
pub fn wait_for_step(out: &Path, step: u64, child: &mut Child) {
    let deadline = Instant::now() + TIMEOUT;
    while last_step(out) < step {
        if let Some(status) = child.try_wait().expect("polling the trainer") {
            panic!("the trainer exited ({status}) before step {step}");
        }
        assert!(Instant::now() < deadline, "no step {step}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
