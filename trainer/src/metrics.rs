//! Training metrics as JSON lines: appended to `DIR/metrics.jsonl` and echoed to stdout.
//!
//! One line per event, tagged by `kind` (`start`, `eval`, `train`, `done`), flushed as it is
//! written so a run can be followed with `tail -f` and parsed by scripts while it is going.

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
        parameters: usize,
        vocab_size: u32,
        seq_len: usize,
        batch_size: usize,
        grad_accum: usize,
        max_steps: usize,
        valid_batches: usize,
    },
    Eval {
        step: usize,
        eval_loss: f64,
        eval_perplexity: f64,
        /// Predicted positions the loss is averaged over.
        eval_tokens: usize,
        eval_seconds: f64,
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
        /// Global gradient norm of the last step, before clipping.
        #[serde(skip_serializing_if = "Option::is_none")]
        grad_norm: Option<f64>,
        elapsed_s: f64,
    },
    Done {
        steps: usize,
        first_eval_loss: f64,
        first_eval_perplexity: f64,
        last_eval_loss: f64,
        last_eval_perplexity: f64,
        best_eval_perplexity: f64,
        train_tokens: usize,
        elapsed_s: f64,
    },
}

/// Where metrics go: a file (optional), stdout (optional), and memory (always, for callers).
pub struct MetricsLog {
    file: Option<(PathBuf, BufWriter<File>)>,
    echo: bool,
    records: Vec<Metric>,
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
            records: Vec::new(),
        })
    }

    /// Keeps records in memory only.
    pub fn in_memory() -> Self {
        MetricsLog {
            file: None,
            echo: false,
            records: Vec::new(),
        }
    }

    /// Also prints each line to stdout (or stops doing so).
    pub fn with_echo(mut self, echo: bool) -> Self {
        self.echo = echo;
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
        }
        if self.echo {
            let mut stdout = std::io::stdout().lock();
            // A closed stdout (e.g. piped into `head`) must not stop training.
            let _ = writeln!(stdout, "{line}").and_then(|()| stdout.flush());
        }
        self.records.push(metric);
        Ok(())
    }

    pub fn records(&self) -> &[Metric] {
        &self.records
    }
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
        })
        .expect("records");
        let text = std::fs::read_to_string(dir.join("metrics.jsonl")).expect("reads");
        let value: serde_json::Value = serde_json::from_str(text.trim()).expect("one JSON line");
        assert_eq!(value["kind"], "eval");
        assert_eq!(value["step"], 0);
        assert_eq!(log.records().len(), 1);
        std::fs::remove_dir_all(&dir).ok();
    }
}
