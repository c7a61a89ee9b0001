//! Keys, listings and the control plane of remote corpora: objects whose keys hold spaces,
//! `~ [ ] # % { } ^ |` and non-ASCII stream what local files of the same names stream (text,
//! JSON lines, CSV and Parquet, the last two through DataFusion); a 2,500-key prefix is listed in
//! pages and streams what the local directory streams; `add-source` inputs that leave the allowed
//! root (`..`, `%2e%2e`), carry credentials or name a remote URL without a remote root are
//! refused before any request (the test's own HTTP server counts them); and `HF_TOKEN` goes to
//! the hub's host only, never into a log line.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use flightlm_tests::object_servers::ObjectServer;
use flightlm_tests::remote_corpus::{consume, serve, stats, write_parquet, Fixture};
use flightlm_tests::{binary, run_with_timeout, sample_lines, scratch_dir, train_tokenizer};

fn fixture_in(name: &str) -> Fixture {
    let dir = scratch_dir(name);
    let local = dir.join("local");
    std::fs::create_dir_all(&local).unwrap();
    let corpus = dir.join("tokenizer-corpus.txt");
    std::fs::write(&corpus, sample_lines(1500).join("\n") + "\n").unwrap();
    let tokenizer = train_tokenizer(&dir, &corpus, 800);
    Fixture {
        dir,
        local,
        tokenizer,
    }
}

#[test]
fn awkward_keys_stream_what_local_files_of_the_same_names_stream() {
    let fixture = fixture_in("remote-keys");
    let keys = fixture.local.join("awkward");
    std::fs::create_dir_all(keys.join("sub dir [2]")).unwrap();
    let lines = sample_lines(1200);
    let text = |range: std::ops::Range<usize>| lines[range].join("\n") + "\n";
    std::fs::write(keys.join("a b~c.txt"), text(0..150)).unwrap();
    std::fs::write(keys.join("[x] #1 %41.txt"), text(150..300)).unwrap();
    std::fs::write(keys.join("{braces}^caret|pipe.txt"), text(300..450)).unwrap();
    std::fs::write(keys.join("sub dir [2]/é ü 文.txt"), text(450..600)).unwrap();
    std::fs::write(keys.join("%2e%2e.txt"), text(600..700)).unwrap();
    let json: String = lines[700..850]
        .iter()
        .map(|line| serde_json::json!({ "text": line }).to_string() + "\n")
        .collect();
    std::fs::write(keys.join("q#uery %20 {1}.jsonl"), json).unwrap();
    let csv: String = std::iter::once("text\n".to_string())
        .chain(
            lines[850..1000]
                .iter()
                .map(|line| format!("\"{}\"\n", line.replace('"', "\"\""))),
        )
        .collect();
    std::fs::write(keys.join("c s v [1] #%.csv"), csv).unwrap();
    write_parquet(&keys.join("p a r q #1 [a] %2F ü.parquet"), &lines[1000..]);

    let server = ObjectServer::s3(&fixture.local, "corpus");
    let environment = server.s3_environment(&server.endpoint);
    let local = serve(&fixture, &["--input", keys.to_str().unwrap()], &[]);
    let (expected, _) = consume(&local, &fixture.dir.join("local.jsonl"), None, None);
    let remote = serve(&fixture, &["--input", "s3://corpus/awkward"], &environment);
    let (streamed, cursor) = consume(&remote, &fixture.dir.join("remote.jsonl"), Some(40), None);
    assert_eq!(streamed, expected[..40], "the first 40 blocks");
    let (rest, _) = consume(
        &remote,
        &fixture.dir.join("rest.jsonl"),
        None,
        cursor.as_ref(),
    );
    assert_eq!(rest, expected[40..], "the rest, resumed from a cursor");
    assert!(expected.len() > 100, "{} blocks", expected.len());
    let counted = stats(&remote);
    assert_eq!(counted["sources"][0]["files"], 8, "{counted}");
}

/// The request lines the test's HTTP server logged.
fn logged(log: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn add_source(url: &str, input: &str) -> Output {
    let body = serde_json::json!({ "name": "extra", "inputs": [input] });
    run_with_timeout(
        Command::new(binary("flightlm-pipeline")).args([
            "action",
            "--pipeline",
            url,
            "add-source",
            &body.to_string(),
        ]),
        Duration::from_secs(60),
    )
}

#[test]
fn added_remote_sources_are_confined_before_any_request() {
    let fixture = fixture_in("remote-confined");
    let served = fixture.dir.join("served");
    std::fs::create_dir_all(served.join("public")).unwrap();
    std::fs::write(served.join("public/a.txt"), sample_lines(300).join("\n")).unwrap();
    std::fs::write(served.join("secret.txt"), "a secret line\n").unwrap();
    let log = fixture.dir.join("requests.jsonl");
    let server = ObjectServer::http_logged(&served, &log, None);
    let corpus = fixture.dir.join("tokenizer-corpus.txt");
    let corpus = corpus.to_str().unwrap();
    let public = format!("{}/files/public", server.endpoint);
    let rooted = serve(&fixture, &["--input", corpus, "--allow-root", &public], &[]);
    let unrooted = serve(&fixture, &["--input", corpus], &[]);
    let host = server.endpoint.trim_start_matches("http://");
    let refused = [
        (&rooted, format!("{public}/../secret.txt"), "`..`"),
        (&rooted, format!("{public}/%2e%2e/secret.txt"), "`..`"),
        (&rooted, format!("{public}/%2E%2E/secret.txt"), "`..`"),
        (&rooted, format!("{public}-private/a.txt"), "outside"),
        (
            &rooted,
            format!("http://user:pw1234@{host}/files/public/a.txt"),
            "credentials",
        ),
        (
            &rooted,
            format!("{public}/a.txt?X-Amz-Signature=s1234"),
            "query",
        ),
        (&rooted, "s3://corpus/public/../secret.txt".into(), "`..`"),
        (&unrooted, format!("{public}/a.txt"), "--allow-root"),
    ];
    for (pipeline, input, why) in &refused {
        let output = add_source(&pipeline.url, input);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{input} was accepted");
        assert!(stderr.contains(why), "{input}: {stderr}");
        assert!(
            !stderr.contains("pw1234") && !stderr.contains("s1234"),
            "{stderr}"
        );
    }
    assert_eq!(
        logged(&log),
        Vec::<serde_json::Value>::new(),
        "no request was sent"
    );
    let accepted = add_source(&rooted.url, &format!("{public}/a.txt"));
    assert!(
        accepted.status.success(),
        "{}",
        String::from_utf8_lossy(&accepted.stderr)
    );
    assert!(!logged(&log).is_empty(), "the allowed input was read");
    let any = serve(&fixture, &["--input", corpus, "--allow-any-url"], &[]);
    let accepted = add_source(&any.url, &format!("{}/files/secret.txt", server.endpoint));
    assert!(accepted.status.success(), "--allow-any-url lets any URL in");
}

#[test]
fn the_hub_token_goes_to_the_hub_only_and_into_no_log_line() {
    let fixture = fixture_in("remote-hub-token");
    let served = fixture.dir.join("served");
    let repository = served.join("hub/flightlm/sample/data");
    std::fs::create_dir_all(&repository).unwrap();
    for (index, part) in sample_lines(1500).chunks(300).enumerate() {
        std::fs::write(
            repository.join(format!("part-{index}.txt")),
            part.join("\n"),
        )
        .unwrap();
    }
    let elsewhere_log = fixture.dir.join("elsewhere.jsonl");
    let elsewhere = ObjectServer::http_logged(&served, &elsewhere_log, None);
    let hub_log = fixture.dir.join("hub.jsonl");
    let token = "hf_0123456789secrettoken";
    let serve_check = |hub: &ObjectServer| {
        run_with_timeout(
            Command::new(binary("flightlm-pipeline"))
                .args(["serve", "--check-only", "--listen", "127.0.0.1:0"])
                .args(["--input", "hf://datasets/flightlm/sample"])
                .arg("--tokenizer")
                .arg(&fixture.tokenizer)
                .env("HF_ENDPOINT", &hub.endpoint)
                .env("HF_TOKEN", token)
                .env("RUST_LOG", "debug"),
            Duration::from_secs(120),
        )
    };
    // A hub whose listing pages continue on another server.
    let redirecting = ObjectServer::http_logged(&served, &hub_log, Some(&elsewhere.endpoint));
    let output = serve_check(&redirecting);
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(!output.status.success(), "a next page elsewhere is refused");
    assert!(stderr.contains("another host"), "{stderr}");
    assert!(!stderr.contains(token), "the token in a log line: {stderr}");
    assert!(
        logged(&elsewhere_log).is_empty(),
        "nothing went to the other host"
    );
    let sent: Vec<_> = logged(&hub_log);
    assert!(!sent.is_empty());
    let bearer = format!("Bearer {token}");
    assert!(sent
        .iter()
        .all(|line| line["authorization"] == bearer.as_str()));

    drop(redirecting);
    let hub = ObjectServer::http_logged(&served, &hub_log, None);
    let output = serve_check(&hub);
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains(token), "the token in a log line: {stderr}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("\"files\":5"));
}

#[test]
fn a_prefix_of_2500_keys_is_listed_in_pages_and_streams_what_the_directory_streams() {
    let fixture = fixture_in("remote-listing-pages");
    let shards = fixture.local.join("shards");
    std::fs::create_dir_all(&shards).unwrap();
    let lines = sample_lines(2500);
    for (index, line) in lines.iter().enumerate() {
        let text = format!("{index}: {line}\n");
        std::fs::write(shards.join(format!("{index:05}.txt")), text).unwrap();
    }
    let server = ObjectServer::s3(&fixture.local, "corpus");
    let environment = server.s3_environment(&server.endpoint);
    let remote = serve(&fixture, &["--input", "s3://corpus/shards"], &environment);
    let deadline = Instant::now() + Duration::from_secs(60);
    let counted = loop {
        let counted = stats(&remote);
        if counted["sources"][0]["files"] == 2500 {
            break counted;
        }
        assert!(Instant::now() < deadline, "not all listed: {counted}");
        std::thread::sleep(Duration::from_millis(100));
    };
    // S3 answers 1,000 keys a page: three pages, and no request per object before reading.
    assert_eq!(counted["remote"]["list_pages"], 3, "{counted}");
    let local = serve(&fixture, &["--input", shards.to_str().unwrap()], &[]);
    let (expected, _) = consume(&local, &fixture.dir.join("local.jsonl"), None, None);
    let (streamed, _) = consume(&remote, &fixture.dir.join("remote.jsonl"), None, None);
    assert_eq!(streamed.len(), expected.len());
    assert!(
        streamed == expected,
        "2,500 objects stream what 2,500 files stream"
    );
}
