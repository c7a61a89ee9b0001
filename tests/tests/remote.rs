//! Remote corpora: the same documents as local files, as objects in an S3 bucket (moto, with
//! authentication on), as files on an HTTP server and as a dataset on a (fake) HuggingFace hub,
//! stream the same blocks; a bucket mixture resumes exactly after every cut, on another pipeline
//! process reading the same bucket; bad credentials and missing buckets or keys give one error
//! naming the URL; a link that resets connections costs retries, never blocks; and nothing is
//! written to local disk while streaming.

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use flightlm_tests::fault_proxy::FaultProxy;
use flightlm_tests::object_servers::ObjectServer;
use flightlm_tests::remote_corpus::{
    consume, cut_and_resume, files_under, fixture, serve, stats, write_parquet, Fixture,
};
use flightlm_tests::{binary, run_with_timeout, sample_lines, Pipeline};

#[test]
fn bucket_objects_stream_what_local_files_stream_and_nothing_is_written_locally() {
    let fixture = fixture("remote-bucket");
    let server = ObjectServer::s3(&fixture.local, "corpus");
    let environment = server.s3_environment(&server.endpoint);
    let local_dir = fixture.local.to_string_lossy().to_string();
    let local_parquet = fixture.local.join("news.parquet");
    let cases = [
        (
            local_dir.as_str(),
            "s3://corpus",
            "the bucket as a directory",
        ),
        (local_dir.as_str(), "s3://corpus/", "with a trailing slash"),
        (
            local_parquet.to_str().unwrap(),
            "s3://corpus/*.parquet",
            "a glob",
        ),
    ];
    // The remote pipeline runs in an empty directory with an empty temporary directory.
    let working = fixture.dir.join("working");
    let temporary = fixture.dir.join("tmp");
    for (index, (local, remote, what)) in cases.iter().enumerate() {
        let local_pipeline = serve(&fixture, &["--input", local], &[]);
        let (expected, _) = consume(
            &local_pipeline,
            &fixture.dir.join("local.jsonl"),
            None,
            None,
        );
        std::fs::create_dir_all(&working).unwrap();
        std::fs::create_dir_all(&temporary).unwrap();
        let remote_pipeline =
            Pipeline::start_configured(&fixture.tokenizer, &["--input", remote], |command| {
                command
                    .envs(environment.iter().cloned())
                    .env("TMPDIR", &temporary)
                    .current_dir(&working);
            });
        let dump = fixture.dir.join(format!("remote-{index}.jsonl"));
        let (streamed, _) = consume(&remote_pipeline, &dump, None, None);
        assert!(expected.len() > 100, "{what}: {} blocks", expected.len());
        assert_eq!(
            streamed, expected,
            "{what}: {remote} streams what {local} streams"
        );
        let counted = stats(&remote_pipeline);
        assert!(
            counted["remote"]["requests"].as_u64() > Some(0),
            "{counted}"
        );
        assert_eq!(counted["remote"]["retries"], 0, "{counted}");
        assert!(
            !counted.to_string().contains(&environment[4].1),
            "no secret in stats"
        );
        drop(remote_pipeline);
        let written: Vec<_> = files_under(&working)
            .into_iter()
            .chain(files_under(&temporary))
            .collect();
        assert!(written.is_empty(), "{what}: the pipeline wrote {written:?}");
    }
}

#[test]
fn a_bucket_mixture_resumes_exactly_after_every_cut() {
    let fixture = fixture("remote-resume");
    let server = ObjectServer::s3(&fixture.local, "corpus");
    let environment = server.s3_environment(&server.endpoint);
    let arguments = [
        "--source",
        "books=s3://corpus/books.txt:0.6",
        "--source",
        "news=s3://corpus/news.parquet:0.4",
        "--shuffle-window",
        "16",
        "--seed",
        "7",
    ];
    // Two pipeline processes reading the same bucket, as two hosts would: segments alternate
    // between them, so every cursor taken on one is resumed on the other.
    let pipelines = [
        serve(&fixture, &arguments, &environment),
        serve(&fixture, &arguments, &environment),
    ];
    let (reference, cursor) = cut_and_resume(&fixture, &pipelines, 12);
    assert!(reference.len() > 200, "{} blocks", reference.len());
    let named = cursor.map(|cursor| cursor.to_string()).unwrap_or_default();
    assert!(
        named.contains("s3://corpus/"),
        "cursors name objects by URL: {named}"
    );
}

/// `serve` must fail at start with one error line naming the URL and the reason.
fn start_error(fixture: &Fixture, input: &str, environment: &[(String, String)]) -> String {
    let output = run_with_timeout(
        Command::new(binary("flightlm-pipeline"))
            .args(["serve", "--listen", "127.0.0.1:0", "--input", input])
            .arg("--tokenizer")
            .arg(&fixture.tokenizer)
            .envs(environment.iter().cloned()),
        Duration::from_secs(120),
    );
    assert!(!output.status.success(), "{input} must be refused");
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("rror"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line: {stderr}");
    errors[0].to_string()
}

#[test]
fn bad_credentials_and_missing_buckets_or_keys_name_the_url() {
    let fixture = fixture("remote-errors");
    let server = ObjectServer::s3(&fixture.local, "corpus");
    let good = server.s3_environment(&server.endpoint);
    let wrong = server.s3_environment_with(&server.endpoint, "AKIAWRONGKEY0000", "wrong-secret");
    let error = start_error(&fixture, "s3://corpus/books.txt", &wrong);
    assert!(
        error.contains("s3://corpus/books.txt") && error.contains("403"),
        "{error}"
    );
    assert!(!error.contains("wrong-secret"), "{error}");
    let error = start_error(&fixture, "s3://no-such-bucket/books.txt", &good);
    assert!(
        error.contains("s3://no-such-bucket") && error.contains("NoSuchBucket"),
        "{error}"
    );
    let error = start_error(&fixture, "s3://corpus/missing.txt", &good);
    assert!(
        error.contains("s3://corpus/missing.txt") && error.contains("not found"),
        "{error}"
    );
}

#[test]
fn http_files_and_the_hub_stream_what_local_files_stream() {
    let fixture = fixture("remote-http");
    let served = fixture.dir.join("served");
    let repository = served.join("hub/flightlm/sample");
    std::fs::create_dir_all(repository.join("data")).unwrap();
    std::fs::copy(
        fixture.local.join("news.parquet"),
        served.join("news.parquet"),
    )
    .unwrap();
    let wiki = zstd::decode_all(&std::fs::read(fixture.local.join("wiki.jsonl.zst")).unwrap()[..])
        .unwrap();
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(&wiki).unwrap();
    std::fs::write(served.join("wiki.jsonl.gz"), gzip.finish().unwrap()).unwrap();
    let lines = sample_lines(2000);
    for (index, part) in lines.chunks(700).enumerate() {
        write_parquet(
            &repository.join(format!("data/train-{index:05}.parquet")),
            part,
        );
    }
    std::fs::write(repository.join("README.md"), "# sample\n").unwrap();
    let server = ObjectServer::http(&served);
    let hub = [("HF_ENDPOINT".to_string(), server.endpoint.clone())];
    let files = format!("{}/files", server.endpoint);
    let cases = [
        (served.join("news.parquet"), format!("{files}/news.parquet")),
        (
            served.join("wiki.jsonl.gz"),
            format!("{files}/wiki.jsonl.gz"),
        ),
        (
            repository.clone(),
            "hf://datasets/flightlm/sample".to_string(),
        ),
        (
            repository.join("data/train-00001.parquet"),
            "hf://datasets/flightlm/sample/data/train-00001.parquet".to_string(),
        ),
        (
            repository.join("data"),
            "hf://datasets/flightlm/sample/data/*.parquet".to_string(),
        ),
    ];
    for (index, (local, remote)) in cases.iter().enumerate() {
        let local_pipeline = serve(&fixture, &["--input", local.to_str().unwrap()], &[]);
        let (expected, _) = consume(
            &local_pipeline,
            &fixture.dir.join("local.jsonl"),
            None,
            None,
        );
        let remote_pipeline = serve(&fixture, &["--input", remote], &hub);
        let dump = fixture.dir.join(format!("remote-{index}.jsonl"));
        let (streamed, _) = consume(&remote_pipeline, &dump, None, None);
        assert!(expected.len() > 50, "{remote}: {} blocks", expected.len());
        assert_eq!(
            streamed,
            expected,
            "{remote} streams what {} streams",
            local.display()
        );
    }
}

#[test]
fn a_bucket_behind_a_resetting_link_streams_the_right_blocks() {
    let fixture = fixture("remote-faults");
    let server = ObjectServer::s3(&fixture.local, "corpus");
    let direct = serve(
        &fixture,
        &["--input", "s3://corpus"],
        &server.s3_environment(&server.endpoint),
    );
    let (expected, _) = consume(&direct, &fixture.dir.join("direct.jsonl"), None, None);
    // About 0.5 Mbit/s with connections reset every 0.3-1 s: each object takes several
    // connections.
    let (mut proxy, proxied, events) = FaultProxy::start(&server.endpoint, "0.5", "0.3", "1.0");
    let pipeline = serve(
        &fixture,
        &["--input", "s3://corpus"],
        &server.s3_environment(&proxied),
    );
    let (streamed, _) = consume(&pipeline, &fixture.dir.join("proxied.jsonl"), None, None);
    assert_eq!(streamed, expected, "the same blocks, none lost or repeated");
    let counted = stats(&pipeline);
    let retries = counted["remote"]["retries"].as_u64().unwrap_or(0);
    let resets = proxy.resets(&events);
    eprintln!(
        "{resets} connections reset, {retries} retries: {}",
        counted["remote"]
    );
    assert!(resets >= 2, "the proxy reset connections mid-stream");
    assert!(retries >= 1, "stats counts the retries: {counted}");
}
