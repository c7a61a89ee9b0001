//! The pipeline as its users watch it: headless Chromium renders the live status page of a
//! two-source stream (both sources with weights and shares, a token counter that grows, shares
//! that move after `set-weight`, a screenshot), Prometheus' text parser reads `/metrics`
//! (counters never go down, per-source tokens equal `stats`), and a pipeline with a token
//! shows none of it to a caller without the token.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flightlm_tests::runs::KillOnDrop;
use flightlm_tests::{
    binary, last_json_line, python, repo_root, run_ok, sample_lines, scratch_dir, train_tokenizer,
    two_source_corpus, Pipeline,
};

/// `GET path` from `http://HOST:PORT`; returns the status code and the body.
fn http_get(base: &str, path: &str, authorization: Option<&str>) -> (u16, String) {
    let address = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).expect("connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let auth = authorization
        .map(|value| format!("Authorization: {value}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\n{auth}\r\n"
    )
    .expect("writes");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("reads");
    let status = answer[9..12].parse().expect("status code");
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    (status, body.to_string())
}

fn status_json(base: &str) -> serde_json::Value {
    let (code, body) = http_get(base, "/status.json", None);
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("status JSON")
}

/// Runs headless Chromium with a fresh profile and the given action flags.
fn chromium(dir: &Path, action: &[&str], url: &str) -> String {
    let profile = dir.join(format!("chromium-profile-{}", action.len()));
    let _ = std::fs::remove_dir_all(&profile);
    let output = run_ok(
        Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
            ])
            .args(["--no-first-run", "--disable-background-networking"])
            .args(["--disable-component-update", "--disable-sync"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(["--virtual-time-budget=2500", "--window-size=1280,1000"])
            .args(action)
            .arg(url),
        Duration::from_secs(120),
    );
    let _ = std::fs::remove_dir_all(&profile);
    output
}

/// The attributes of every `<tag … class="class" …>` element of a serialized DOM.
fn elements(dom: &str, needle: &str) -> Vec<BTreeMap<String, String>> {
    dom.match_indices(needle)
        .map(|(start, _)| {
            let tag = &dom[start..start + dom[start..].find('>').expect("closed tag")];
            let mut attributes = BTreeMap::new();
            for part in tag.split("\" ") {
                if let Some((name, value)) = part.split_once("=\"") {
                    let name = name.rsplit(' ').next().unwrap_or(name);
                    attributes.insert(name.to_string(), value.trim_end_matches('"').to_string());
                }
            }
            attributes
        })
        .collect()
}

/// The page's sources (name → attributes) and its token counter, as Chromium rendered them.
fn rendered(dir: &Path, url: &str) -> (BTreeMap<String, BTreeMap<String, String>>, u64) {
    let dom = chromium(dir, &["--dump-dom"], url);
    let sources = elements(&dom, "<tr class=\"source\"")
        .into_iter()
        .map(|attributes| (attributes["data-source"].clone(), attributes))
        .collect();
    let counter = elements(&dom, "<b id=\"tokens-total\"");
    let tokens = counter
        .first()
        .and_then(|attributes| attributes.get("data-value"))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no token counter rendered in {dom}"));
    (sources, tokens)
}

fn share(sources: &BTreeMap<String, BTreeMap<String, String>>, source: &str, key: &str) -> f64 {
    sources[source][key].parse().expect("a number")
}

fn scrape(url: &str, token_file: Option<&Path>) -> serde_json::Value {
    let mut command = Command::new(python());
    command
        .arg(repo_root().join("tests/python/observe_check.py"))
        .args(["scrape", url]);
    if let Some(token_file) = token_file {
        command.arg(token_file);
    }
    serde_json::from_str(run_ok(&mut command, Duration::from_secs(60)).trim()).expect("JSON")
}

fn source_tokens(families: &serde_json::Value, source: &str) -> u64 {
    families["counter:flightlm_pipeline_tokens_total"][format!("source={source}")]
        .as_f64()
        .unwrap_or_else(|| panic!("no tokens of {source}: {families}")) as u64
}

#[test]
fn the_status_page_and_metrics_follow_a_two_source_stream() {
    let dir = scratch_dir("status_page");
    let (mut arguments, tokenizer) = two_source_corpus(&dir, 3000);
    arguments
        .extend(["--valid-fraction", "0", "--metrics-listen", "127.0.0.1:0"].map(String::from));
    let pipeline = Pipeline::start_with(&tokenizer, &arguments);
    let base = pipeline
        .metrics
        .clone()
        .expect("the metrics address is announced");
    let consumer = KillOnDrop(
        Command::new(binary("flightlm-pipeline"))
            .args(["consume", "--pipeline", &pipeline.url, "--seq-len", "64"])
            .args([
                "--batch-size",
                "16",
                "--epochs",
                "1000000",
                "--max-blocks",
                "1000000000",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting a consumer"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while status_json(&base)["history"].as_array().map_or(0, Vec::len) < 3 {
        assert!(Instant::now() < deadline, "no token history within 60 s");
        std::thread::sleep(Duration::from_millis(200));
    }

    let page = format!("{base}/");
    let (sources, tokens_before) = rendered(&dir, &page);
    assert_eq!(
        sources.keys().collect::<Vec<_>>(),
        ["alpha", "beta"],
        "both sources named"
    );
    for name in ["alpha", "beta"] {
        assert_eq!(sources[name]["data-weight"], "1", "{name}: {sources:?}");
        let share = share(&sources, name, "data-share");
        assert!((0.2..0.8).contains(&share), "{name} has share {share}");
    }
    let first_scrape = scrape(&format!("{base}/metrics"), None);
    std::thread::sleep(Duration::from_secs(3));
    let (_, tokens_after) = rendered(&dir, &page);
    assert!(
        tokens_after > tokens_before,
        "the token counter grows: {tokens_before} then {tokens_after}"
    );
    let second_scrape = scrape(&format!("{base}/metrics"), None);
    assert_counters_monotone(&first_scrape, &second_scrape);

    let before = share(&sources, "alpha", "data-recent-share");
    let answer = run_ok(
        Command::new(binary("flightlm-pipeline"))
            .args(["action", "--pipeline", &pipeline.url, "set-weight"])
            .arg(r#"{"source":"alpha","weight":9}"#),
        Duration::from_secs(30),
    );
    assert!(answer.contains("\"weight\":9"), "{answer}");
    // The recent shares are taken over the last ten seconds.
    std::thread::sleep(Duration::from_secs(12));
    let (moved, _) = rendered(&dir, &page);
    let after = share(&moved, "alpha", "data-recent-share");
    let target = share(&moved, "alpha", "data-weight-share");
    assert!((target - 0.9).abs() < 1e-9, "alpha's weight share is 9/10");
    assert!(
        after > before + 0.2 && (after - target).abs() < (before - target).abs(),
        "alpha's recent share moves toward {target}: {before} then {after}"
    );
    let screenshot = dir.join("status-page.png");
    chromium(
        &dir,
        &[&format!("--screenshot={}", screenshot.display())],
        &page,
    );
    let png = std::fs::read(&screenshot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a rendered PNG"
    );
    eprintln!("status page screenshot: {}", screenshot.display());

    // Stopped streams stop counting: stats and /metrics then agree exactly.
    drop(consumer);
    let deadline = Instant::now() + Duration::from_secs(30);
    let stats = loop {
        let stats = last_json_line(&run_ok(
            Command::new(binary("flightlm-pipeline")).args(["stats", "--pipeline", &pipeline.url]),
            Duration::from_secs(30),
        ));
        if stats["active_streams"] == 0 {
            break stats;
        }
        assert!(Instant::now() < deadline, "the stream did not end: {stats}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let families = scrape(&format!("{base}/metrics"), None);
    assert_counters_monotone(&second_scrape, &families);
    for served in stats["served"]["sources"].as_array().expect("served") {
        let name = served["source"].as_str().expect("name");
        let from_streams: u64 = stats["streams"]
            .as_array()
            .expect("streams")
            .iter()
            .flat_map(|stream| stream["sources"].as_array().cloned().unwrap_or_default())
            .filter(|source| source["source"] == name)
            .filter_map(|source| source["tokens"].as_u64())
            .sum();
        assert_eq!(served["tokens"].as_u64(), Some(from_streams), "{name}");
        assert_eq!(source_tokens(&families, name), from_streams, "{name}");
    }
}

fn assert_counters_monotone(before: &serde_json::Value, after: &serde_json::Value) {
    for (name, series) in before.as_object().expect("families") {
        if !name.starts_with("counter:") {
            continue;
        }
        for (labels, value) in series.as_object().expect("series") {
            let later = &after[name][labels];
            if !later.is_null() {
                assert!(
                    later.as_f64() >= value.as_f64(),
                    "{name}{{{labels}}} went down"
                );
            }
        }
    }
}

#[test]
fn with_a_token_the_metrics_listener_answers_only_callers_that_send_it() {
    let dir = scratch_dir("status_page_token");
    let corpus = dir.join("corpus.txt");
    std::fs::write(&corpus, sample_lines(400).join("\n") + "\n").unwrap();
    let tokenizer = train_tokenizer(&dir, &corpus, 500);
    let token = "0123456789abcdef-metrics";
    let token_file = dir.join("token");
    std::fs::write(&token_file, token).unwrap();
    let pipeline = Pipeline::start_configured(
        &tokenizer,
        &[
            OsStr::new("--input"),
            corpus.as_os_str(),
            OsStr::new("--auth-token-file"),
            token_file.as_os_str(),
            OsStr::new("--metrics-listen"),
            OsStr::new("0"),
        ],
        |_| {},
    );
    let base = pipeline.metrics.clone().expect("metrics address");
    assert!(
        base.starts_with("http://127.0.0.1:"),
        "loopback by default: {base}"
    );
    for path in ["/metrics", "/", "/status.json"] {
        let (code, body) = http_get(&base, path, None);
        assert_eq!(code, 401, "{path} without the token: {body}");
        assert!(!body.contains(token));
        let (code, _) = http_get(&base, path, Some("Bearer wrong-token-0123456789"));
        assert_eq!(code, 401, "{path} with a wrong token");
    }
    let (code, page) = http_get(&base, "/", Some(&format!("Bearer {token}")));
    assert_eq!(code, 200);
    assert!(!page.contains(token), "the page never shows the token");
    let (code, status) = http_get(&base, "/status.json", Some(&format!("Bearer {token}")));
    assert_eq!(code, 200);
    assert!(!status.contains(token), "the status never shows the token");
    let families = scrape(&format!("{base}/metrics"), Some(&token_file));
    assert!(
        families["gauge:flightlm_pipeline_open_streams"][""].is_number(),
        "{families}"
    );
}
