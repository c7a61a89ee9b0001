//! A store that goes away is not bad data: the bucket behind `flightlm-fault-proxy` goes dark for
//! three times `--remote-retry-s` in the middle of an object, under `--on-bad-record skip`. The
//! pipeline retries, gives up with UNAVAILABLE, the trainer prints its retry line and reconnects
//! until the bucket is back, and the run trains on exactly the blocks (and so the losses) of a run
//! that never lost the bucket, with nothing skipped or counted as a bad record.

use std::process::Stdio;
use std::time::Duration;

use flightlm_tests::fault_proxy::FaultProxy;
use flightlm_tests::object_servers::ObjectServer;
use flightlm_tests::runs::{
    assert_exact_audit, assert_same_losses, last_step, losses, trainer, wait_with_deadline,
    KillOnDrop, TIMEOUT,
};
use flightlm_tests::{binary, Pipeline};
use flightlm_tests::{last_json_line, run_ok, sample_lines, scratch_dir, train_tokenizer};

const STEPS: usize = 40;
const RETRY_S: u64 = 2;

#[test]
fn a_bucket_that_goes_dark_mid_object_costs_retries_never_data() {
    let dir = scratch_dir("remote-outage");
    let bucket = dir.join("bucket");
    std::fs::create_dir_all(&bucket).unwrap();
    let lines = sample_lines(2000);
    std::fs::write(bucket.join("books.txt"), lines.join("\n") + "\n").unwrap();
    let tokenizer = train_tokenizer(&dir, &bucket.join("books.txt"), 600);
    let server = ObjectServer::s3(&bucket, "corpus");
    let retry_s = RETRY_S.to_string();
    let arguments = [
        "--input",
        "s3://corpus/books.txt",
        "--on-bad-record",
        "skip",
        "--remote-retry-s",
        &retry_s,
    ];
    // Small ranges, read as the stream needs them: the object is still being read when the
    // bucket goes dark.
    let start = |endpoint: &str| {
        Pipeline::start_configured(&tokenizer, &arguments, |command| {
            command
                .envs(server.s3_environment(endpoint))
                .env("FLIGHTLM_REMOTE_RANGE_BYTES", "16384");
        })
    };

    let direct = start(&server.endpoint);
    let reference = dir.join("direct");
    run_ok(&mut trainer(&direct.url, &reference, STEPS, ""), TIMEOUT);

    // A slow link (about 60 KB/s): the object (about 200 KB) is still being read a second after
    // the trainer's stream opened it.
    let (mut proxy, proxied, events) = FaultProxy::switchable(&server.endpoint, "0.5");
    let pipeline = start(&proxied);
    let out = dir.join("outage");
    let _ = events.try_iter().count();
    let mut child = KillOnDrop(
        trainer(&pipeline.url, &out, STEPS, "--pipeline-retry-s 120")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the trainer"),
    );
    let opened = events
        .iter()
        .find(|line| line.contains("opened"))
        .expect("the stream opened the object");
    eprintln!("reading began: {opened}");
    std::thread::sleep(Duration::from_secs(1));
    let dark_at = last_step(&out);
    proxy.set_dark(true);
    std::thread::sleep(Duration::from_secs(3 * RETRY_S));
    proxy.set_dark(false);
    let (status, stderr) = wait_with_deadline(&mut child.0, "the trainer");
    assert!(status.success(), "{stderr}");
    assert!(
        dark_at < STEPS as u64 / 2,
        "the outage began at step {dark_at}"
    );
    let retry_line = stderr
        .lines()
        .find(|line| line.contains("pipeline unavailable, retrying"))
        .unwrap_or_else(|| panic!("no retry line: {stderr}"));
    eprintln!("the trainer printed: {retry_line}");
    assert!(
        retry_line.contains("s3://corpus/books.txt") && retry_line.contains("--remote-retry-s"),
        "{retry_line}"
    );
    assert_exact_audit(&out, STEPS as u64, "through the outage");
    assert_same_losses(&losses(&out), &losses(&reference), 1e-6, "outage vs direct");

    let counted = last_json_line(&run_ok(
        std::process::Command::new(binary("flightlm-pipeline")).args([
            "stats",
            "--pipeline",
            &pipeline.url,
        ]),
        Duration::from_secs(30),
    ));
    eprintln!("stats after the outage: {}", counted["remote"]);
    assert_eq!(counted["skipped_rows"], 0, "{counted}");
    assert_eq!(counted["bad_records"], 0, "{counted}");
    assert!(counted["remote"]["retries"].as_u64() > Some(0), "{counted}");
}
