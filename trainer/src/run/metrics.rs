//! Training metrics as JSON lines: appended to `DIR/metrics.jsonl`, and shown as they come.
//!
//! Shown means one line per metric where a person watches: on a terminal, the readable summary
//! on stderr; the JSON lines go to stdout as well when it is not a terminal (a pipe, a file: a
//! script reads them) or when `--json` asks for them, and then a terminal that shows both
//! streams gets the JSON alone.
//!
//! One line per event, tagged by `kind` (`start`, `eval`, `train`, `checkpoint`, `resume`,
//! `stop`, `best`, `done`), flushed as it is written so a run can be followed with `tail -f` and
//! parsed by scripts while it is going. A resumed run keeps the lines up to its checkpoint and
//! appends to them, so the file reads as one run.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{DeviceKind, Objective, Preset};
use crate::error::TrainError;

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Metric {
    Start {
        objective: Objective,
        preset: Preset,
        device: DeviceKind,
        /// Ranks training together (devices over all nodes).
        world_size: usize,
        parameters: usize,
        vocab_size: u32,
        seq_len: usize,
        batch_size: usize,
        grad_accum: usize,
        max_steps: usize,
        valid_batches: usize,
        /// Blocks of the valid split every evaluation scores (at most `eval_blocks`).
        valid_blocks: usize,
    },
    Eval {
        step: usize,
        eval_loss: f64,
        eval_perplexity: f64,
        /// Predicted positions the loss is averaged over.
        eval_tokens: usize,
        eval_seconds: f64,
        /// Mean loss of each source's predicted positions, when the stream names sources.
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        eval_loss_by_source: BTreeMap<String, f64>,
    },
    Train {
        step: usize,
        /// Mean micro-batch loss since the previous `train` line.
        loss: f64,
        perplexity: f64,
        /// Learning rate of the last step in the window.
        lr: f64,
        /// Input tokens per second of training (evaluation time excluded).
        tokens_per_s: f64,
        /// Share of the window's training time spent waiting for data.
        data_wait: f64,
        /// Data-parallel runs: share of rank 0's training time in the step exchange and the
        /// gradient all-reduce (waiting for the other ranks included).
        #[serde(skip_serializing_if = "Option::is_none")]
        collective: Option<f64>,
        /// Global gradient norm of the last step, before clipping.
        #[serde(skip_serializing_if = "Option::is_none")]
        grad_norm: Option<f64>,
        /// Input tokens trained on so far per source, when the stream names each block's source.
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        tokens_by_source: BTreeMap<String, u64>,
        /// Mean loss of each source's predicted positions in the window (token-weighted), when
        /// the stream names sources.
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        loss_by_source: BTreeMap<String, f64>,
        /// The odm policy's weights after its latest update (`--mixing odm`).
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        mixing_weights: BTreeMap<String, f64>,
        elapsed_s: f64,
        /// Seconds until the last step at the pace of this process so far, evaluations included.
        eta_s: f64,
    },
    /// A checkpoint was written.
    Checkpoint {
        step: usize,
        path: PathBuf,
        #[serde(skip_serializing_if = "Option::is_none")]
        eval_perplexity: Option<f64>,
        /// In a data-parallel run, the parameter hash every rank was checked to hold.
        #[serde(skip_serializing_if = "Option::is_none")]
        parameter_hash: Option<String>,
    },
    /// The run continues from a checkpoint; the lines before this one are the earlier run's.
    Resume { step: usize, checkpoint: PathBuf },
    /// A stop request (Ctrl-C, SIGTERM) ended the run after this step and its checkpoint.
    Stop { step: usize },
    /// The checkpoint with the lowest eval perplexity; `restored` when the run ends with its
    /// weights instead of the last step's.
    Best {
        step: usize,
        eval_perplexity: f64,
        restored: bool,
    },
    Done {
        steps: usize,
        first_eval_loss: f64,
        first_eval_perplexity: f64,
        last_eval_loss: f64,
        last_eval_perplexity: f64,
        /// The best checkpoint's perplexity when checkpoints were written (the `best` line's),
        /// else the lowest of every evaluation.
        best_eval_perplexity: f64,
        /// The step of the best checkpoint, when checkpoints were written.
        #[serde(skip_serializing_if = "Option::is_none")]
        best_step: Option<usize>,
        train_tokens: usize,
        elapsed_s: f64,
    },
}

/// Something else that follows a run's metric lines as they are recorded: TensorBoard event
/// files, the Prometheus gauges.
pub trait MetricObserver: Send {
    fn observe(&mut self, metric: &Metric) -> Result<(), TrainError>;
}

/// Where metrics go: a file (optional), stdout (optional), observers, and memory (always, for
/// callers).
pub struct MetricsLog {
    file: Option<(PathBuf, BufWriter<File>)>,
    echo: bool,
    /// JSON lines on stdout even when it is a terminal.
    json: bool,
    records: Vec<Metric>,
    observers: Vec<Box<dyn MetricObserver>>,
}

/// What an echoed metric prints: its JSON line on stdout, its summary on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EchoPlan {
    pub json_on_stdout: bool,
    pub summary_on_stderr: bool,
}

impl EchoPlan {
    /// JSON on stdout when asked or when stdout is not a terminal; the summary on stderr unless
    /// the JSON already reaches the terminal stderr shows.
    pub fn choose(json_asked: bool, stdout_is_terminal: bool, stderr_is_terminal: bool) -> Self {
        let json_on_stdout = json_asked || !stdout_is_terminal;
        EchoPlan {
            json_on_stdout,
            summary_on_stderr: !(json_on_stdout && stdout_is_terminal && stderr_is_terminal),
        }
    }

    fn for_this_process(json_asked: bool) -> Self {
        use std::io::IsTerminal;
        Self::choose(
            json_asked,
            std::io::stdout().is_terminal(),
            std::io::stderr().is_terminal(),
        )
    }
}

impl MetricsLog {
    /// Starts `DIR/metrics.jsonl` afresh, creating the directory; `echo` also prints each line.
    /// (A fresh run replaces the previous run's lines; resuming will want to append instead.)
    pub fn create(dir: &Path, echo: bool) -> Result<Self, TrainError> {
        fs::create_dir_all(dir).map_err(|source| TrainError::io(dir, source))?;
        let path = dir.join("metrics.jsonl");
        let file = File::create(&path).map_err(|source| TrainError::io(&path, source))?;
        Ok(MetricsLog {
            file: Some((path, BufWriter::new(file))),
            echo,
            json: false,
            records: Vec::new(),
            observers: Vec::new(),
        })
    }

    /// Continues `DIR/metrics.jsonl` for a run resumed after `step`: the lines of steps after
    /// it (written by the interrupted run after its last checkpoint) and its end-of-run lines
    /// are dropped, and new lines are appended.
    pub fn resume(dir: &Path, step: usize, echo: bool) -> Result<Self, TrainError> {
        fs::create_dir_all(dir).map_err(|source| TrainError::io(dir, source))?;
        let path = dir.join("metrics.jsonl");
        let previous = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(TrainError::io(&path, source)),
        };
        let kept: String = previous
            .lines()
            .filter(|line| keeps_line_before(line, step))
            .flat_map(|line| [line, "\n"])
            .collect();
        let file = replace_then_append(&path, &kept)?;
        Ok(MetricsLog {
            file: Some((path, BufWriter::new(file))),
            echo,
            json: false,
            records: Vec::new(),
            observers: Vec::new(),
        })
    }

    /// Keeps records in memory only.
    pub fn in_memory() -> Self {
        MetricsLog {
            file: None,
            echo: false,
            json: false,
            records: Vec::new(),
            observers: Vec::new(),
        }
    }

    /// Also shows each metric as it comes (or stops doing so): see [`EchoPlan`].
    pub fn with_echo(mut self, echo: bool) -> Self {
        self.echo = echo;
        self
    }

    /// Also hands every record to `observer`.
    pub fn observed_by(mut self, observer: Box<dyn MetricObserver>) -> Self {
        self.observers.push(observer);
        self
    }

    /// Echoed metrics print their JSON lines on stdout even when it is a terminal (`--json`).
    pub fn with_json(mut self, json: bool) -> Self {
        self.json = json;
        self
    }

    pub fn record(&mut self, metric: Metric) -> Result<(), TrainError> {
        let line = serde_json::to_string(&metric).map_err(|source| TrainError::Json {
            what: "a metrics record",
            source,
        })?;
        if let Some((path, writer)) = &mut self.file {
            writeln!(writer, "{line}")
                .and_then(|()| writer.flush())
                .map_err(|source| TrainError::io(path.as_path(), source))?;
            if matches!(metric, Metric::Eval { .. }) {
                // The curves are a convenience: failing to draw them must not stop training.
                if let Some(dir) = path.parent() {
                    if let Err(error) = crate::run::plot::plot_run(dir) {
                        tracing::warn!("cannot draw the training curves: {error}");
                    }
                }
            }
        }
        if self.echo {
            let plan = EchoPlan::for_this_process(self.json);
            if plan.json_on_stdout {
                let mut stdout = std::io::stdout().lock();
                // A closed stdout (e.g. piped into `head`) must not stop training.
                let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
            }
            if plan.summary_on_stderr {
                if let Some(summary) = crate::run::progress::describe(&metric) {
                    eprintln!("{summary}");
                }
            }
        }
        for observer in &mut self.observers {
            observer.observe(&metric)?;
        }
        self.records.push(metric);
        Ok(())
    }

    pub fn records(&self) -> &[Metric] {
        &self.records
    }

    /// The loss of every `train` line kept in memory, in order.
    pub fn train_losses(&self) -> Vec<f64> {
        self.records
            .iter()
            .filter_map(|metric| match metric {
                Metric::Train { loss, .. } => Some(*loss),
                _ => None,
            })
            .collect()
    }
}

/// Whether a metrics line belongs to the part of a run up to and including `step`.
/// Atomically replaces the log at `path` with `kept` (through a temporary file and a rename, so a
/// kill cannot leave it half written) and opens it for appending.
pub(crate) fn replace_then_append(path: &Path, kept: &str) -> Result<File, TrainError> {
    let mut rewritten = path.as_os_str().to_owned();
    rewritten.push(".resume");
    let rewritten = PathBuf::from(rewritten);
    fs::write(&rewritten, kept).map_err(|source| TrainError::io(&rewritten, source))?;
    fs::rename(&rewritten, path).map_err(|source| TrainError::io(path, source))?;
    fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|source| TrainError::io(path, source))
}

fn keeps_line_before(line: &str, step: usize) -> bool {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
        return false; // a line cut short by a kill
    };
    let ends_run = matches!(value["kind"].as_str(), Some("done" | "best"));
    let after = value["step"].as_u64().is_some_and(|at| at > step as u64);
    !ends_run && !after
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_tagged_json_lines() {
        let dir = std::env::temp_dir().join(format!("flightlm-metrics-{}", std::process::id()));
        let mut log = MetricsLog::create(&dir, false).expect("creates");
        log.record(Metric::Eval {
            step: 0,
            eval_loss: 2.0,
            eval_perplexity: 2f64.exp(),
            eval_tokens: 10,
            eval_seconds: 0.5,
            eval_loss_by_source: Default::default(),
        })
        .expect("records");
        let text = std::fs::read_to_string(dir.join("metrics.jsonl")).expect("reads");
        let value: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON line");
        assert_eq!(value["kind"], "eval");
        assert_eq!(value["step"], 0);
        assert_eq!(log.records().len(), 1);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn one_line_per_metric_where_a_person_watches() {
        // A terminal and no --json: the summary alone.
        let watched = EchoPlan::choose(false, true, true);
        assert!(!watched.json_on_stdout && watched.summary_on_stderr);
        // stdout piped (a script), stderr on the terminal: JSON for the script, summary for
        // the person.
        let piped = EchoPlan::choose(false, false, true);
        assert!(piped.json_on_stdout && piped.summary_on_stderr);
        let both_piped = EchoPlan::choose(false, false, false);
        assert!(both_piped.json_on_stdout && both_piped.summary_on_stderr);
        // --json on a terminal: the JSON alone, not both.
        let asked = EchoPlan::choose(true, true, true);
        assert!(asked.json_on_stdout && !asked.summary_on_stderr);
        // --json with stderr sent elsewhere keeps the summary there.
        let asked_logged = EchoPlan::choose(true, true, false);
        assert!(asked_logged.json_on_stdout && asked_logged.summary_on_stderr);
    }

    #[test]
    fn resuming_drops_the_lines_after_the_checkpoint() {
        let dir =
            std::env::temp_dir().join(format!("flightlm-metrics-resume-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let lines = [
            r#"{"kind":"start","seq_len":8}"#,
            r#"{"kind":"train","step":4,"loss":1.0}"#,
            r#"{"kind":"checkpoint","step":4,"path":"x"}"#,
            r#"{"kind":"train","step":5,"loss":1.0}"#,
            r#"{"kind":"done","steps":5}"#,
            r#"{"kind":"train","st"#,
        ];
        std::fs::write(dir.join("metrics.jsonl"), lines.join("\n")).expect("writes");
        let mut log = MetricsLog::resume(&dir, 4, false).expect("resumes");
        log.record(Metric::Resume {
            step: 4,
            checkpoint: "x".into(),
        })
        .expect("records");
        let text = std::fs::read_to_string(dir.join("metrics.jsonl")).expect("reads");
        let kinds: Vec<String> = text
            .lines()
            .map(|line| {
                serde_json::from_str::<serde_json::Value>(line).expect("JSON")["kind"].to_string()
            })
            .collect();
        assert_eq!(
            kinds,
            [r#""start""#, r#""train""#, r#""checkpoint""#, r#""resume""#]
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
