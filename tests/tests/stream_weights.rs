//! Weights that belong to one stream: a consumer asking for its own mixture (and changing it
//! from its cursor) leaves another consumer's blocks exactly as they are alone; a resumed stream
//! keeps the weights its cursor carries whatever the pipeline's are now; weights naming an
//! unknown source are refused; the `source` column's counts equal `stats`, in Rust and Python.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use flightlm_tests::{
    binary, last_json_line, python, read_dump, repo_root, run_ok, run_with_timeout, scratch_dir,
    two_source_corpus, Pipeline,
};

/// Two sources cut from the sample corpus, and a tokenizer for both.
fn two_sources(dir: &Path) -> (Vec<String>, PathBuf) {
    let (mut arguments, tokenizer) = two_source_corpus(dir, 3000);
    arguments.extend(["--valid-fraction", "0", "--shuffle-window", "48"].map(String::from));
    (arguments, tokenizer)
}

/// `consume` of `blocks` train blocks (seq_len 32, batches of 8) into `dump`, with `extra`
/// arguments; its summary.
fn consume(url: &str, blocks: u64, dump: &Path, extra: &[&str]) -> serde_json::Value {
    last_json_line(&run_ok(
        Command::new(binary("flightlm-pipeline"))
            .args(["consume", "--pipeline", url, "--seq-len", "32"])
            .args(["--batch-size", "8", "--epochs", "1000"])
            .args(["--max-blocks", &blocks.to_string(), "--dump"])
            .arg(dump)
            .args(extra),
        Duration::from_secs(120),
    ))
}

fn share(summary: &serde_json::Value, source: &str) -> f64 {
    let counts = &summary["sources"];
    let total: u64 = ["alpha", "beta"]
        .iter()
        .map(|name| counts[name].as_u64().unwrap_or(0))
        .sum();
    counts[source].as_u64().unwrap_or(0) as f64 / total.max(1) as f64
}

fn stats(url: &str) -> serde_json::Value {
    last_json_line(&run_ok(
        Command::new(binary("flightlm-pipeline")).args(["stats", "--pipeline", url]),
        Duration::from_secs(30),
    ))
}

#[test]
fn a_stream_with_its_own_weights_moves_no_other_stream_and_resumes_with_them() {
    let dir = scratch_dir("stream_weights");
    let (arguments, tokenizer) = two_sources(&dir);
    let pipeline = Pipeline::start_with(&tokenizer, &arguments);
    let url = pipeline.url.clone();

    let solo = consume(&url, 600, &dir.join("solo.blocks"), &[]);
    assert!((0.35..0.65).contains(&share(&solo, "alpha")), "{solo}");

    // While the static stream runs again, the weighted one reads 300 blocks mostly of alpha,
    // then changes its weights from its cursor and reads 300 mostly of beta.
    let static_again = {
        let (url, dump) = (url.clone(), dir.join("static.blocks"));
        std::thread::spawn(move || consume(&url, 600, &dump, &[]))
    };
    let first = consume(
        &url,
        300,
        &dir.join("first.blocks"),
        &["--weights", "alpha=0.9,beta=0.1"],
    );
    let cursor = first["cursor"].to_string();
    let second = consume(
        &url,
        300,
        &dir.join("second.blocks"),
        &["--weights", "alpha=0.1,beta=0.9", "--cursor", &cursor],
    );
    static_again.join().expect("the static stream");
    assert!(share(&first, "alpha") > 0.8, "{first}");
    assert!(share(&second, "beta") > 0.75, "{second}");
    assert_eq!(
        read_dump(&dir.join("static.blocks")),
        read_dump(&dir.join("solo.blocks")),
        "a stream without weights of its own gets the blocks it gets alone"
    );
    let listed = stats(&url);
    let weighted: Vec<&serde_json::Value> = listed["streams"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|stream| !stream["weights"].is_null())
        .collect();
    assert_eq!(weighted.len(), 2, "{listed}");
    assert_eq!(weighted[1]["weights"]["beta"], 0.9, "{listed}");

    // The pipeline's weights move; a stream resumed from a weighted cursor keeps its own.
    let whole = consume(
        &url,
        500,
        &dir.join("whole.blocks"),
        &["--weights", "alpha=0.9,beta=0.1"],
    );
    run_ok(
        Command::new(binary("flightlm-pipeline"))
            .args(["action", "--pipeline", &url, "set-weight"])
            .arg(r#"{"source":"alpha","weight":0.01}"#),
        Duration::from_secs(30),
    );
    let resumed = consume(
        &url,
        200,
        &dir.join("resumed.blocks"),
        &["--cursor", &cursor],
    );
    let mut joined = read_dump(&dir.join("first.blocks"));
    joined.extend(read_dump(&dir.join("resumed.blocks")));
    assert_eq!(
        joined,
        read_dump(&dir.join("whole.blocks")),
        "the resumed stream continues with its cursor's weights: {whole} {resumed}"
    );
    let after = consume(&url, 300, &dir.join("after.blocks"), &[]);
    assert!(
        share(&after, "beta") > 0.9,
        "set-weight moves streams without weights of their own: {after}"
    );

    let refused = run_with_timeout(
        Command::new(binary("flightlm-pipeline"))
            .args(["consume", "--pipeline", &url, "--seq-len", "32"])
            .args(["--batch-size", "8", "--max-blocks", "8"])
            .args(["--weights", "alpha=1,gamma=2", "--retry-s", "0"]),
        Duration::from_secs(30),
    );
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    let errors: Vec<&str> = message.lines().filter(|l| l.contains("gamma")).collect();
    assert_eq!(errors.len(), 1, "{message}");
    assert!(
        errors[0].contains("source `gamma`") && errors[0].contains("alpha, beta"),
        "{message}"
    );
}

#[test]
fn the_source_column_counts_what_stats_counts_in_rust_and_python() {
    let dir = scratch_dir("stream_weights_sources");
    let (arguments, tokenizer) = two_sources(&dir);
    let pipeline = Pipeline::start_with(&tokenizer, &arguments);
    // One whole pass (the stream ends when the first source finishes it), so every block the
    // pipeline sent was read.
    let summary = last_json_line(&run_ok(
        Command::new(binary("flightlm-pipeline"))
            .args(["consume", "--pipeline", &pipeline.url, "--seq-len", "32"])
            .args(["--batch-size", "8", "--epochs", "1"]),
        Duration::from_secs(120),
    ));
    let listed = stats(&pipeline.url);
    let stream_counts = blocks_by_source(&listed["streams"][0]["sources"]);
    let served = blocks_by_source(&listed["served"]["sources"]);
    let column: BTreeMap<String, u64> = serde_json::from_value(summary["sources"].clone()).unwrap();
    assert_eq!(column.len(), 2, "{summary}");
    assert_eq!(column, stream_counts, "{listed}");
    assert_eq!(column, served, "{listed}");

    let script = format!(
        r#"
import collections, json, sys
sys.path.insert(0, {python_dir:?})
from flightlm_stream import BlockReader
counts = collections.Counter()
reader = BlockReader(sys.argv[1], seq_len=32, batch_size=8, epochs=1)
for _ in reader:
    counts[reader.source] += 1
only_beta = BlockReader(sys.argv[1], seq_len=32, batch_size=8, weights={{"alpha": 0, "beta": 1}})
beta = collections.Counter()
for index, _ in zip(range(100), only_beta):
    beta[only_beta.source] += 1
print(json.dumps({{"counts": counts, "beta": beta}}))
"#,
        python_dir = repo_root().join("python").display().to_string()
    );
    let answer = last_json_line(&run_ok(
        Command::new(python()).args(["-c", &script, &pipeline.url]),
        Duration::from_secs(120),
    ));
    let python_counts: BTreeMap<String, u64> =
        serde_json::from_value(answer["counts"].clone()).unwrap();
    assert_eq!(python_counts, column, "{answer}");
    assert_eq!(answer["beta"], serde_json::json!({"beta": 100}), "{answer}");
}

/// A `stats` list of sources as source → blocks.
fn blocks_by_source(sources: &serde_json::Value) -> BTreeMap<String, u64> {
    sources
        .as_array()
        .expect("a list of sources")
        .iter()
        .map(|source| {
            let name = source["source"].as_str().unwrap().to_string();
            (name, source["blocks"].as_u64().unwrap())
        })
        .collect()
}
