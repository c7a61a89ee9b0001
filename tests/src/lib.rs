//! A small harness for end-to-end tests: locate the built binaries, start a pipeline on
//! 127.0.0.1:0, run commands with a deadline, and prepare sample corpora and tokenizers.
//!
//! The binaries are the ones `cargo build --workspace --bins` puts beside this test executable;
//! `scripts/test.sh` builds them before running the tests.

pub mod fault_proxy;
pub mod object_servers;
pub mod remote_corpus;
pub mod runs;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of a workspace binary built in the same profile as the running test.
pub fn binary(name: &str) -> PathBuf {
    let test_executable = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let profile_dir = test_executable
        .parent()
        .and_then(Path::parent)
        .expect("test executable lives in target/<profile>/deps");
    let path = profile_dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// The repository root (this crate lives in `tests/`).
///
/// cargo sets `CARGO_MANIFEST_DIR` when it runs a test, and that value follows the checkout. The
/// compile-time value does not: cargo reuses a build from a shared target dir after the workspace
/// moves (another clone), and the old path would be baked in.
pub fn repo_root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir.parent().expect("workspace root").to_path_buf()
}

/// A fresh directory under the target dir, removed and recreated per test.
pub fn scratch_dir(test_name: &str) -> PathBuf {
    let base = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf))
        .unwrap_or_else(std::env::temp_dir)
        .join("flightlm-e2e")
        .join(test_name);
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).expect("creating scratch dir");
    base
}

/// Runs a command to completion, killing it past `timeout`.
pub fn run_with_timeout(command: &mut Command, timeout: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning command");
    let deadline = Instant::now() + timeout;
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut buffer = Vec::new();
        let _ = stdout.read_to_end(&mut buffer);
        buffer
    });
    let err_reader = std::thread::spawn(move || {
        let mut buffer = Vec::new();
        let _ = stderr.read_to_end(&mut buffer);
        buffer
    });
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for command") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("command {command:?} ran past {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
    }
}

/// Runs a command that must succeed, returning its stdout.
pub fn run_ok(command: &mut Command, timeout: Duration) -> String {
    let output = run_with_timeout(command, timeout);
    assert!(
        output.status.success(),
        "command {command:?} failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 stdout")
}

/// The last line of `text` parsed as JSON.
pub fn last_json_line(text: &str) -> serde_json::Value {
    let line = text.lines().last().unwrap_or_else(|| panic!("no output"));
    serde_json::from_str(line).unwrap_or_else(|error| panic!("`{line}` is not JSON: {error}"))
}

/// A running `flightlm-pipeline serve`, killed on drop.
pub struct Pipeline {
    child: Child,
    pub url: String,
    /// `http://ADDR` of its metrics listener, when started with `--metrics-listen`.
    pub metrics: Option<String>,
}

impl Pipeline {
    /// Starts a server on 127.0.0.1:0 with `extra` arguments and waits until it listens.
    pub fn start(inputs: &[&Path], tokenizer: &Path, extra: &[&str]) -> Pipeline {
        let mut arguments: Vec<std::ffi::OsString> = vec!["--input".into()];
        arguments.extend(inputs.iter().map(|input| input.as_os_str().to_owned()));
        arguments.extend(extra.iter().map(std::ffi::OsString::from));
        Self::start_with(tokenizer, &arguments)
    }

    /// Starts a server with exactly these `serve` arguments (besides tokenizer and address).
    pub fn start_with<A: AsRef<std::ffi::OsStr>>(tokenizer: &Path, arguments: &[A]) -> Pipeline {
        Self::start_configured(tokenizer, arguments, |_| {})
    }

    /// As [`Pipeline::start_with`], after `configure` has set the command's environment or
    /// working directory.
    pub fn start_configured<A: AsRef<std::ffi::OsStr>>(
        tokenizer: &Path,
        arguments: &[A],
        configure: impl FnOnce(&mut Command),
    ) -> Pipeline {
        let mut command = Command::new(binary("flightlm-pipeline"));
        configure(&mut command);
        command.arg("serve").args(arguments);
        // Port 0 (a free one) unless the caller chose the address.
        if !arguments
            .iter()
            .any(|argument| argument.as_ref() == "--listen")
        {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        command
            .arg("--tokenizer")
            .arg(tokenizer)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().expect("starting the pipeline");
        let stdout = child.stdout.take().expect("pipeline stdout");
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = sender.send(line);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        let line = receiver
            .recv_timeout(Duration::from_secs(60))
            .expect("pipeline did not report its address within 60 s");
        let announced: serde_json::Value = serde_json::from_str(&line).expect("JSON address line");
        let url = announced["url"].as_str().expect("url field").to_string();
        let metrics = announced["metrics"].as_str().map(String::from);
        Pipeline {
            child,
            url,
            metrics,
        }
    }
}

impl Pipeline {
    /// Sends SIGTERM and waits up to `timeout` for the process to exit, returning its status.
    pub fn terminate(&mut self, timeout: Duration) -> std::process::ExitStatus {
        // SAFETY: kill(2) on the pid of a child this process started and has not reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the pipeline") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the pipeline did not exit within {timeout:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A test CA and a server certificate it signed for 127.0.0.1 and localhost (made with the
/// `openssl` command).
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn tls_files(dir: &Path) -> TlsFiles {
    let openssl = |arguments: &str| {
        run_ok(
            Command::new("openssl")
                .args(arguments.split_whitespace())
                .current_dir(dir),
            Duration::from_secs(60),
        );
    };
    let curve = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    openssl(&format!(
        "req -x509 {curve} -keyout ca.key -out ca.pem -days 2 -subj /CN=flightlm-test-ca"
    ));
    openssl(&format!(
        "req {curve} -keyout server.key -out server.csr -subj /CN=localhost"
    ));
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("writing the extension file");
    openssl(
        "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem \
         -days 2 -extfile san.ext",
    );
    TlsFiles {
        ca: dir.join("ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first `lines` lines of the sample corpus, written as plain text to `dir/sample.txt`.
pub fn sample_corpus(dir: &Path, lines: usize) -> PathBuf {
    let lines = sample_lines(lines);
    let path = dir.join("sample.txt");
    std::fs::write(&path, lines.join("\n") + "\n").expect("writing sample corpus");
    path
}

/// The first `count` lines of the committed sample corpus (`data/kjv.txt.zst`).
pub fn sample_lines(count: usize) -> Vec<String> {
    let file = std::fs::File::open(repo_root().join("data/kjv.txt.zst")).expect("sample corpus");
    let decoder = zstd::stream::read::Decoder::new(file).expect("zstd stream");
    BufReader::new(decoder)
        .lines()
        .take(count)
        .map(|line| line.expect("utf-8 line"))
        .collect()
}

/// Two sources cut from the first `lines` sample lines (`alpha.txt` and `beta.txt` in `dir`, a
/// half each) and a tokenizer (vocabulary 800) trained on both: the `serve` arguments that name
/// them as sources `alpha` and `beta` of weight 1, and the tokenizer's path.
pub fn two_source_corpus(dir: &Path, lines: usize) -> (Vec<String>, PathBuf) {
    let lines = sample_lines(lines);
    let (a, b) = (dir.join("alpha.txt"), dir.join("beta.txt"));
    let half = lines.len() / 2;
    std::fs::write(&a, lines[..half].join("\n") + "\n").expect("writing alpha.txt");
    std::fs::write(&b, lines[half..].join("\n") + "\n").expect("writing beta.txt");
    let both = dir.join("both.txt");
    std::fs::write(&both, lines.join("\n") + "\n").expect("writing both.txt");
    let tokenizer = train_tokenizer(dir, &both, 800);
    let arguments = vec![
        "--source".to_string(),
        format!("alpha={}:1", a.display()),
        "--source".to_string(),
        format!("beta={}:1", b.display()),
    ];
    (arguments, tokenizer)
}

/// Trains a tokenizer on `corpus` into `dir/tokenizer/tokenizer.json`.
pub fn train_tokenizer(dir: &Path, corpus: &Path, vocab_size: usize) -> PathBuf {
    let out = dir.join("tokenizer");
    run_ok(
        Command::new(binary("flightlm-pipeline"))
            .args(["train-tokenizer", "--input"])
            .arg(corpus)
            .args(["--vocab-size", &vocab_size.to_string(), "--out"])
            .arg(&out),
        Duration::from_secs(120),
    );
    out.join("tokenizer.json")
}

/// The Python interpreter with `transformers`, `tokenizers` and `pyarrow` (set by scripts/test.sh).
pub fn python() -> PathBuf {
    std::env::var_os("FLIGHTLM_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// Reads a `consume --dump --document-starts` file: per line, a block's ids and where its
/// documents begin.
pub fn read_dump_with_starts(path: &Path) -> Vec<(Vec<u32>, Vec<u32>)> {
    #[derive(serde::Deserialize)]
    struct Line {
        input_ids: Vec<u32>,
        document_starts: Vec<u32>,
    }
    std::fs::read_to_string(path)
        .expect("dump file")
        .lines()
        .map(|line| {
            let line: Line = serde_json::from_str(line).expect("JSON block with starts");
            (line.input_ids, line.document_starts)
        })
        .collect()
}

/// Reads a `consume --dump` file: one block of ids per line.
pub fn read_dump(path: &Path) -> Vec<Vec<u32>> {
    std::fs::read_to_string(path)
        .expect("dump file")
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON block"))
        .collect()
}
