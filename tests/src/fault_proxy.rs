//! `flightlm-fault-proxy` in front of a server, for the fault tests: a throttled link whose
//! connections are reset at random moments, and a count of the resets it made; or a link that
//! goes dark (every connection cut, new ones refused) when the test says so.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;

use crate::binary;

/// `flightlm-fault-proxy` in front of a pipeline, with its event lines collected as they come.
pub struct FaultProxy(Child);

impl FaultProxy {
    /// A proxy to `url` capped at `mbit`, resetting connections every `reset_min_s`-`reset_max_s`;
    /// returns it, its URL and its events.
    pub fn start(
        url: &str,
        mbit: &str,
        reset_min_s: &str,
        reset_max_s: &str,
    ) -> (FaultProxy, String, Receiver<String>) {
        Self::spawn(
            url,
            &[
                "--bandwidth-mbit",
                mbit,
                "--reset-min-s",
                reset_min_s,
                "--reset-max-s",
                reset_max_s,
            ],
        )
    }

    /// A proxy to `url` capped at `mbit` that never resets on its own: [`Self::set_dark`]
    /// starts and ends an outage.
    pub fn switchable(url: &str, mbit: &str) -> (FaultProxy, String, Receiver<String>) {
        Self::spawn(url, &["--bandwidth-mbit", mbit, "--control-stdin"])
    }

    /// Cuts every connection and refuses new ones (`true`), or lets them through again.
    pub fn set_dark(&mut self, dark: bool) {
        let stdin = self.0.stdin.as_mut().expect("a switchable proxy");
        writeln!(stdin, "{}", if dark { "dark" } else { "light" }).expect("switching the proxy");
        stdin.flush().expect("switching the proxy");
    }

    fn spawn(url: &str, arguments: &[&str]) -> (FaultProxy, String, Receiver<String>) {
        let upstream = url.trim_start_matches("http://").to_string();
        let mut proxy = Command::new(binary("flightlm-fault-proxy"))
            .args(["--upstream", &upstream, "--latency-ms", "2"])
            .args(arguments)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the proxy");
        let mut events = BufReader::new(proxy.stdout.take().unwrap()).lines();
        let announced: serde_json::Value =
            serde_json::from_str(&events.next().unwrap().unwrap()).unwrap();
        let proxied = format!("http://{}", announced["listening"].as_str().unwrap());
        let (event_lines, received_events) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in events.map_while(Result::ok) {
                let _ = event_lines.send(line);
            }
        });
        (FaultProxy(proxy), proxied, received_events)
    }

    /// Stops the proxy and counts the connections it reset.
    pub fn resets(&mut self, events: &Receiver<String>) -> usize {
        let _ = self.0.kill();
        let _ = self.0.wait();
        events
            .try_iter()
            .filter(|line| line.contains("reset_after_s"))
            .count()
    }
}

/// A failing test must not leave the proxy running (it holds the test runner's output open).
impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
