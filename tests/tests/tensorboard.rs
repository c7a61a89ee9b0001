//! What the trainer shows other tools: TensorBoard (its own `EventAccumulator` and a
//! `tensorboard --logdir` on loopback) reads every scalar of a run that was killed with SIGKILL
//! and resumed, each step once with the resumed value; Prometheus' text parser reads the trainer's
//! `/metrics` while it trains, counters never going down.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flightlm_tests::runs::{metrics, wait_for_checkpoint, wait_with_deadline, KillOnDrop};
use flightlm_tests::{binary, python, repo_root, run_ok, scratch_dir};

const STEPS: usize = 120;

fn bench(out: &Path) -> Command {
    let flags = format!(
        "bench --vocab-size 512 --preset tiny --max-steps {STEPS} --seq-len 32 --batch-size 8 \
         --grad-accum 1 --warmup-steps 4 --log-every 1 --eval-every 6 --save-every 8 \
         --metrics-listen 127.0.0.1:0"
    );
    let mut command = Command::new(binary("flightlm-trainer"));
    command.args(flags.split_whitespace()).arg("--out").arg(out);
    command
}

/// Parsed families of a Prometheus endpoint: `"type:name"` → labels → value.
pub fn scrape(url: &str) -> serde_json::Value {
    let answer = run_ok(
        Command::new(python())
            .arg(repo_root().join("tests/python/observe_check.py"))
            .args(["scrape", url]),
        Duration::from_secs(60),
    );
    serde_json::from_str(answer.trim()).expect("scrape JSON")
}

/// Every counter series of `before` is at most its value in `after`.
pub fn assert_counters_monotone(before: &serde_json::Value, after: &serde_json::Value) {
    for (name, series) in before.as_object().expect("families") {
        if !name.starts_with("counter:") {
            continue;
        }
        for (labels, value) in series.as_object().expect("series") {
            let later = &after[name][labels];
            if later.is_null() {
                continue; // a series that ended (a forgotten stream)
            }
            assert!(
                later.as_f64() >= value.as_f64(),
                "{name}{{{labels}}} went down: {value} -> {later}"
            );
        }
    }
}

fn value(families: &serde_json::Value, name: &str) -> f64 {
    families[name][""]
        .as_f64()
        .unwrap_or_else(|| panic!("no {name} in {families}"))
}

fn last_logged_step(out: &Path) -> u64 {
    metrics(out)
        .iter()
        .filter(|line| line["kind"] == "train")
        .filter_map(|line| line["step"].as_u64())
        .max()
        .unwrap_or(0)
}

#[test]
fn tensorboard_reads_a_killed_and_resumed_run_and_prometheus_its_progress() {
    let dir = scratch_dir("tensorboard");
    let out = dir.join("run");
    let mut child = KillOnDrop(
        bench(&out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the trainer"),
    );
    let stderr = child.0.stderr.take().expect("stderr");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("metrics at ") {
                let _ = sender.send(url.to_string());
            }
        }
    });
    let url = receiver
        .recv_timeout(Duration::from_secs(120))
        .expect("the trainer announces its metrics address");

    wait_for_checkpoint(&out, 8, &mut child.0);
    let first = scrape(&url);
    // Let the run log a few steps past its checkpoint, then kill it: those lines and points
    // are what the resumed run must replace.
    let deadline = Instant::now() + Duration::from_secs(120);
    while last_logged_step(&out) < 11 {
        assert!(Instant::now() < deadline, "no step 11 within 120 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    let second = scrape(&url);
    assert_counters_monotone(&first, &second);
    assert!(
        value(&second, "gauge:flightlm_trainer_step") >= 8.0,
        "{second}"
    );
    assert!(value(&second, "counter:flightlm_trainer_checkpoints_total") >= 1.0);
    assert!(value(&second, "counter:flightlm_trainer_evaluations_total") >= 2.0);
    assert!(value(&second, "gauge:flightlm_trainer_tokens_per_second") > 0.0);
    assert!(value(&second, "gauge:flightlm_trainer_loss").is_finite());
    assert_eq!(
        value(
            &second,
            "counter:flightlm_trainer_pipeline_reconnects_total"
        ),
        0.0
    );
    let killed = Command::new("kill")
        .args(["-KILL", &child.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let _ = child.0.wait();
    let killed_at = last_logged_step(&out);
    assert!(killed_at < STEPS as u64, "the run ended before the kill");

    // From checkpoint 8 whatever was saved after it, so the steps written twice are known.
    let mut resumed = bench(&out);
    resumed
        .arg("--resume")
        .arg(out.join("checkpoints/step-0000008"));
    let mut resumed = resumed
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("resuming");
    let (status, stderr) = wait_with_deadline(&mut resumed, "the resumed run");
    assert!(status.success(), "{stderr}");

    let report = run_ok(
        Command::new(python())
            .arg(repo_root().join("tests/python/observe_check.py"))
            .arg("tensorboard")
            .arg(&out),
        Duration::from_secs(240),
    );
    let report: serde_json::Value =
        serde_json::from_str(report.lines().next_back().expect("a report")).expect("JSON report");
    eprintln!("tensorboard: {report}");
    assert_eq!(report["event_files"].as_array().map(Vec::len), Some(2));
    for tag in [
        "train/loss",
        "train/lr",
        "train/grad_norm",
        "eval/perplexity",
    ] {
        assert!(
            report["tags"]
                .as_array()
                .expect("tags")
                .contains(&tag.into()),
            "{tag}: {report}"
        );
    }
    let rewritten: Vec<u64> = report["steps_written_twice"]
        .as_array()
        .expect("steps")
        .iter()
        .filter_map(serde_json::Value::as_u64)
        .collect();
    assert!(
        (9..killed_at).all(|step| rewritten.contains(&step)),
        "the killed session wrote steps 9..{killed_at} past checkpoint 8, and the resumed one \
         wrote them again: {report}"
    );
}

#[test]
fn a_run_on_two_sources_counts_its_tokens_per_source() {
    let dir = scratch_dir("tensorboard_sources");
    let lines = flightlm_tests::sample_lines(2000);
    let (a, b) = (dir.join("a.txt"), dir.join("b.txt"));
    std::fs::write(&a, lines[..1000].join("\n") + "\n").unwrap();
    std::fs::write(&b, lines[1000..].join("\n") + "\n").unwrap();
    let tokenizer = flightlm_tests::train_tokenizer(&dir, &a, 600);
    let pipeline = flightlm_tests::Pipeline::start_with(
        &tokenizer,
        &[
            "--source".to_string(),
            format!("alpha={}:3", a.display()),
            "--source".to_string(),
            format!("beta={}:1", b.display()),
            "--valid-fraction".into(),
            "0.05".into(),
        ],
    );
    let out = dir.join("run");
    run_ok(
        &mut flightlm_tests::runs::trainer(&pipeline.url, &out, 12, "--batch-size 8"),
        flightlm_tests::runs::TIMEOUT,
    );
    let last = metrics(&out)
        .into_iter()
        .rev()
        .find(|line| line["kind"] == "train")
        .expect("train lines");
    let by_source = last["tokens_by_source"]
        .as_object()
        .expect("tokens per source");
    let alpha = by_source["alpha"].as_u64().expect("alpha");
    let beta = by_source["beta"].as_u64().expect("beta");
    assert_eq!(
        alpha + beta,
        12 * 8 * 32,
        "every trained token has its source: {last}"
    );
    assert!(alpha > beta, "alpha weighs 3, beta 1: {last}");
    let report = run_ok(
        Command::new(python())
            .arg(repo_root().join("tests/python/observe_check.py"))
            .arg("tensorboard")
            .arg(&out),
        Duration::from_secs(240),
    );
    let report: serde_json::Value =
        serde_json::from_str(report.lines().next_back().expect("a report")).expect("JSON report");
    let tags = report["tags"].as_array().expect("tags");
    for tag in [
        "train/tokens_by_source/alpha",
        "train/tokens_by_source/beta",
    ] {
        assert!(tags.contains(&tag.into()), "{tag}: {report}");
    }
}
