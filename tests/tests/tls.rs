//! TLS: a pipeline started with `--tls-cert/--tls-key` serves https:// only; clients (Rust and
//! pyarrow) trust it through `--tls-ca` (or `FLIGHTLM_TLS_CA_FILE`) and refuse it without the
//! right CA; the token check still applies inside TLS; bad certificate files stop the server at
//! start-up.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use flightlm_tests::{
    binary, last_json_line, python, repo_root, run_with_timeout, sample_corpus, scratch_dir,
    tls_files, train_tokenizer, Pipeline,
};

const TOKEN: &str = "tls-token-0123456789abcdef";

fn consume(url: &str, tls_ca: Option<&Path>, token_file: Option<&Path>) -> Output {
    let mut command = Command::new(binary("flightlm-pipeline"));
    command
        .args(["consume", "--pipeline", url, "--seq-len", "32"])
        .args(["--batch-size", "8", "--max-blocks", "16"])
        .env_remove("FLIGHTLM_AUTH_TOKEN_FILE")
        .env_remove("FLIGHTLM_TLS_CA_FILE");
    if let Some(ca) = tls_ca {
        command.arg("--tls-ca").arg(ca);
    }
    if let Some(token_file) = token_file {
        command.env("FLIGHTLM_AUTH_TOKEN_FILE", token_file);
    }
    run_with_timeout(&mut command, Duration::from_secs(60))
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

#[test]
fn tls_streams_need_the_right_ca_and_still_the_token() {
    let dir = scratch_dir("tls");
    let corpus = sample_corpus(&dir, 600);
    let tokenizer = train_tokenizer(&dir, &corpus, 500);
    let tls = tls_files(&dir);
    let token_file = dir.join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let path = |path: &Path| path.to_str().expect("UTF-8 path").to_string();
    let arguments = [
        "--input".to_string(),
        path(&corpus),
        "--tls-cert".into(),
        path(&tls.cert),
        "--tls-key".into(),
        path(&tls.key),
        "--auth-token-file".into(),
        path(&token_file),
    ];
    let pipeline = Pipeline::start_with(&tokenizer, &arguments);
    assert!(
        pipeline.url.starts_with("https://127.0.0.1:"),
        "{}",
        pipeline.url
    );

    let output = consume(&pipeline.url, Some(&tls.ca), Some(&token_file));
    assert!(output.status.success(), "{}", stderr(&output));
    let summary = last_json_line(&String::from_utf8_lossy(&output.stdout));
    assert_eq!(summary["blocks"], 16);

    // The CA may also come from the environment, as for the trainer.
    let mut command = Command::new(binary("flightlm-pipeline"));
    command
        .args(["action", "--pipeline", &pipeline.url, "health"])
        .env("FLIGHTLM_TLS_CA_FILE", &tls.ca)
        .env("FLIGHTLM_AUTH_TOKEN_FILE", &token_file);
    let output = run_with_timeout(&mut command, Duration::from_secs(30));
    assert!(output.status.success(), "{}", stderr(&output));

    // pyarrow reads the same stream over TLS, authenticated by the Flight handshake.
    let output = run_with_timeout(
        Command::new(python())
            .arg(repo_root().join("scripts/read_stream.py"))
            .args(["--pipeline", &pipeline.url])
            .args(["--seq-len", "32", "--batch-size", "8", "--max-blocks", "16"])
            .arg("--tls-ca")
            .arg(&tls.ca)
            .arg("--token-file")
            .arg(&token_file),
        Duration::from_secs(60),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let summary = last_json_line(&String::from_utf8_lossy(&output.stdout));
    assert_eq!(summary["blocks"], 16);

    // Inside TLS the token is still checked.
    let output = consume(&pipeline.url, Some(&tls.ca), None);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("Unauthenticated"),
        "{}",
        stderr(&output)
    );

    // Without the CA the server's certificate is not trusted (the system roots do not sign it).
    let output = consume(&pipeline.url, None, Some(&token_file));
    assert!(!output.status.success());
    assert!(
        stderr(&output).to_lowercase().contains("certificate"),
        "{}",
        stderr(&output)
    );

    // A CA that did not sign it is refused as well.
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let other_ca = tls_files(&other).ca;
    let output = consume(&pipeline.url, Some(&other_ca), Some(&token_file));
    assert!(!output.status.success());
    assert!(
        stderr(&output).to_lowercase().contains("certificate"),
        "{}",
        stderr(&output)
    );

    // Plain HTTP/2 to a TLS port gets no stream.
    let plain = pipeline.url.replacen("https://", "http://", 1);
    let output = consume(&plain, None, Some(&token_file));
    assert!(!output.status.success(), "{}", stderr(&output));

    // A CA with a plain URL is a configuration mistake, named as such.
    let output = consume(&plain, Some(&tls.ca), Some(&token_file));
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("not https://"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn bad_certificate_files_stop_the_server_at_start() {
    let dir = scratch_dir("tls-bad-files");
    let corpus = sample_corpus(&dir, 200);
    let tokenizer = train_tokenizer(&dir, &corpus, 400);
    let tls = tls_files(&dir);
    let serve = |cert: &Path, key: &Path| {
        run_with_timeout(
            Command::new(binary("flightlm-pipeline"))
                .args(["serve", "--listen", "127.0.0.1:0", "--input"])
                .arg(&corpus)
                .arg("--tokenizer")
                .arg(&tokenizer)
                .arg("--tls-cert")
                .arg(cert)
                .arg("--tls-key")
                .arg(key),
            Duration::from_secs(60),
        )
    };
    // Certificate and key swapped.
    let output = serve(&tls.key, &tls.cert);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("server.key does not hold a PEM certificate"),
        "{}",
        stderr(&output)
    );
    let output = serve(&tls.cert, &dir.join("missing.key"));
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("missing.key"),
        "{}",
        stderr(&output)
    );
    // A certificate without its key is refused by the command line itself.
    let output = run_with_timeout(
        Command::new(binary("flightlm-pipeline"))
            .args(["serve", "--input"])
            .arg(&corpus)
            .arg("--tokenizer")
            .arg(&tokenizer)
            .arg("--tls-cert")
            .arg(&tls.cert),
        Duration::from_secs(30),
    );
    assert!(!output.status.success());
    assert!(stderr(&output).contains("--tls-key"), "{}", stderr(&output));
}
