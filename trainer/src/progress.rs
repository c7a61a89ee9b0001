//! Throughput bookkeeping for the `train` metric lines: tokens per second, the share of time
//! spent waiting for data, and the time left.

use std::time::Instant;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::source::BlockSource;

/// What happened between two `train` lines.
pub struct Window<B: Backend> {
    pub started: Instant,
    pub waited_at_start: f64,
    /// Seconds spent evaluating or checkpointing inside the window, not counted as training.
    pub excluded: f64,
    pub tokens: usize,
    /// Sum of micro-batch losses, kept on the device so logging costs one read per window.
    pub loss_sum: Option<Tensor<B, 1>>,
    pub losses: usize,
}

impl<B: Backend> Window<B> {
    pub fn open(source: &dyn BlockSource) -> Self {
        Window {
            started: Instant::now(),
            waited_at_start: source.seconds_waited(),
            excluded: 0.0,
            tokens: 0,
            loss_sum: None,
            losses: 0,
        }
    }

    pub fn add_loss(&mut self, loss: Tensor<B, 1>) {
        self.loss_sum = Some(match self.loss_sum.take() {
            Some(sum) => sum + loss,
            None => loss,
        });
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
}
