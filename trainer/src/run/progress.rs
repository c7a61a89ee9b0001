//! Progress as a run goes: throughput bookkeeping for the `train` metric lines (tokens per
//! second, the share of time spent waiting for data, the time left), and the one-line summary of
//! each metric that the trainer prints to stderr for people watching it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use flightlm_shared::TokenBlocks;

use crate::error::TrainError;
use crate::optim::source_loss::{BatchSourceLoss, SourceLosses};
use crate::run::metrics::Metric;

/// What happened between two `train` lines.
pub struct Window<B: Backend> {
    pub started: Instant,
    pub waited_at_start: f64,
    /// Seconds spent evaluating or checkpointing inside the window, not counted as training.
    pub excluded: f64,
    pub tokens: usize,
    /// Seconds in the step exchange and gradient all-reduce of a data-parallel run.
    pub collective_s: f64,
    /// Sum of the losses added on the device, kept there so logging costs one read per window.
    pub loss_sum: Option<Tensor<B, 1>>,
    /// Sum of the losses added as host values (the steps of a data-parallel run, whose loss
    /// the ranks' reports already carry).
    pub host_loss_sum: f64,
    pub losses: usize,
    /// Input tokens per source (blocks whose source the stream names), since the last step.
    pub source_tokens: BTreeMap<Arc<str>, u64>,
    /// Per-source loss sums of this rank's micro-batches, still on the device.
    pub pending_source_losses: Vec<BatchSourceLoss<B>>,
    /// Per-source loss sums read back (a data-parallel run's, over every rank).
    pub source_losses: SourceLosses,
}

impl<B: Backend> Window<B> {
    /// A window starting now, after `waited` seconds of waiting for data so far.
    pub fn open(waited: f64) -> Self {
        Window {
            started: Instant::now(),
            waited_at_start: waited,
            excluded: 0.0,
            tokens: 0,
            collective_s: 0.0,
            loss_sum: None,
            host_loss_sum: 0.0,
            losses: 0,
            source_tokens: BTreeMap::new(),
            pending_source_losses: Vec::new(),
            source_losses: SourceLosses::default(),
        }
    }

    /// Reads the pending per-source sums back and returns them (this rank's, since the last
    /// call).
    pub fn read_source_losses(&mut self) -> Result<SourceLosses, TrainError> {
        let mut read = SourceLosses::default();
        for batch in self.pending_source_losses.drain(..) {
            read.add_batch(batch)?;
        }
        Ok(read)
    }

    /// The window's per-source sums, over every rank.
    pub fn take_source_losses(&mut self) -> Result<SourceLosses, TrainError> {
        let mine = self.read_source_losses()?;
        let mut all = std::mem::take(&mut self.source_losses);
        all.merge(&mine);
        Ok(all)
    }

    /// Counts the tokens of `blocks` by the source each block was cut from.
    pub fn count_sources(&mut self, blocks: &TokenBlocks) {
        for source in &blocks.sources {
            *self.source_tokens.entry(source.clone()).or_default() += blocks.seq_len as u64;
        }
    }

    pub fn add_loss(&mut self, loss: Tensor<B, 1>) {
        self.loss_sum = Some(match self.loss_sum.take() {
            Some(sum) => sum + loss,
            None => loss,
        });
        self.losses += 1;
    }

    pub fn add_host_loss(&mut self, loss: f64) {
        self.host_loss_sum += loss;
        self.losses += 1;
    }

    /// Seconds of training in the window.
    pub fn training_seconds(&self) -> f64 {
        (self.started.elapsed().as_secs_f64() - self.excluded).max(1e-9)
    }
}

/// Seconds until `total` steps at the pace this process kept from `first` to `done` steps
/// since `started` (evaluations and checkpoints included, since the rest of the run has them too).
pub fn eta_seconds(started: Instant, first: usize, done: usize, total: usize) -> f64 {
    let steps = done.saturating_sub(first);
    if steps == 0 {
        return 0.0;
    }
    started.elapsed().as_secs_f64() / steps as f64 * total.saturating_sub(done) as f64
}

/// A short human-readable line for `metric`, or `None` for metrics not worth a line.
pub fn describe(metric: &Metric) -> Option<String> {
    match metric {
        Metric::Train {
            step,
            loss,
            perplexity,
            lr,
            tokens_per_s,
            data_wait,
            eta_s,
            ..
        } => Some(format!(
            "step {step:>7}  loss {loss:.4}  ppl {perplexity:>9.2}  lr {lr:.2e}  \
             {tokens_per_s:>8.0} tok/s  data wait {:>5.1}%  eta {}",
            data_wait * 100.0,
            duration(*eta_s)
        )),
        Metric::Eval {
            step,
            eval_loss,
            eval_perplexity,
            ..
        } => Some(format!(
            "eval at step {step}: loss {eval_loss:.4}  perplexity {eval_perplexity:.2}"
        )),
        Metric::Checkpoint { step, path, .. } => {
            Some(format!("checkpoint of step {step} in {}", path.display()))
        }
        Metric::Resume { step, checkpoint } => Some(format!(
            "resuming after step {step} from {}",
            checkpoint.display()
        )),
        Metric::Stop { step } => Some(format!("stopped after step {step}")),
        Metric::Best {
            step,
            eval_perplexity,
            restored,
        } => Some(format!(
            "best checkpoint: step {step}, perplexity {eval_perplexity:.2}{}",
            if *restored {
                " (its weights restored)"
            } else {
                ""
            }
        )),
        Metric::Start {
            objective,
            preset,
            device,
            world_size,
            parameters,
            seq_len,
            batch_size,
            grad_accum,
            max_steps,
            ..
        } => Some(format!(
            "training {} {} ({:.1}M parameters) on {}: {max_steps} steps of {} blocks of \
             {seq_len} tokens",
            lowercase_name(preset),
            lowercase_name(objective),
            *parameters as f64 / 1e6,
            lowercase_name(device),
            world_size * batch_size * grad_accum,
        )),
        Metric::Done {
            steps,
            first_eval_perplexity,
            last_eval_perplexity,
            train_tokens,
            elapsed_s,
            ..
        } => Some(format!(
            "done: {steps} steps, {train_tokens} tokens in {}; eval perplexity \
             {first_eval_perplexity:.2} -> {last_eval_perplexity:.2}",
            duration(*elapsed_s)
        )),
    }
}

/// The name a setting has in the config file (`mlm`, `tiny`, `cpu`).
fn lowercase_name(value: &impl serde::Serialize) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|name| name.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// `3h05m`, `12m30s`, `45s`.
fn duration(seconds: f64) -> String {
    let seconds = seconds.max(0.0).round() as u64;
    match (seconds / 3600, seconds % 3600 / 60, seconds % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_scales_the_pace_so_far() {
        let started = Instant::now() - std::time::Duration::from_secs(10);
        let eta = eta_seconds(started, 100, 110, 150);
        assert!((eta - 40.0).abs() < 0.5, "{eta}");
        assert_eq!(eta_seconds(started, 5, 5, 10), 0.0);
        assert_eq!(eta_seconds(started, 0, 10, 10), 0.0);
    }

    #[test]
    fn a_train_line_has_every_progress_figure() {
        let line = describe(&Metric::Train {
            step: 120,
            loss: 5.25,
            perplexity: 5.25f64.exp(),
            lr: 4e-4,
            tokens_per_s: 12345.0,
            data_wait: 0.003,
            collective: None,
            grad_norm: None,
            tokens_by_source: Default::default(),
            loss_by_source: Default::default(),
            mixing_weights: Default::default(),
            elapsed_s: 60.0,
            eta_s: 3725.0,
        })
        .expect("a line");
        for part in ["step     120", "loss 5.2500", "ppl    190.57", "lr 4.00e-4"] {
            assert!(line.contains(part), "{part} in {line}");
        }
        for part in ["12345 tok/s", "data wait   0.3%", "eta 1h02m"] {
            assert!(line.contains(part), "{part} in {line}");
        }
        assert_eq!(duration(45.2), "45s");
        let start = describe(&Metric::Start {
            objective: crate::config::Objective::Causal,
            preset: crate::config::Preset::Tiny,
            device: crate::config::DeviceKind::Cpu,
            world_size: 1,
            parameters: 3_400_000,
            vocab_size: 8192,
            seq_len: 128,
            batch_size: 16,
            grad_accum: 1,
            max_steps: 600,
            valid_batches: 4,
            valid_blocks: 60,
        })
        .expect("a line");
        assert_eq!(
            start,
            "training tiny causal (3.4M parameters) on cpu: 600 steps of 16 blocks of 128 tokens"
        );
        assert_eq!(duration(750.0), "12m30s");
    }
}
