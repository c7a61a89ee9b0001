//! The learning-rate schedule: linear warmup, then linear decay to 0 at the last step.
//!
//! Same curve as HuggingFace's `get_linear_schedule_with_warmup`, including its indexing: the
//! optimizer step with 0-based index `k` uses `lr(k)`, so the very first update of a run with
//! warmup has a learning rate of 0, exactly as with a `transformers` `Trainer`.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LinearSchedule {
    pub peak_lr: f64,
    pub warmup_steps: usize,
    pub max_steps: usize,
}

impl LinearSchedule {
    pub fn new(peak_lr: f64, warmup_steps: usize, max_steps: usize) -> Self {
        LinearSchedule {
            peak_lr,
            warmup_steps,
            max_steps,
        }
    }

    /// The learning rate of the optimizer step with 0-based index `step`.
    pub fn lr(&self, step: usize) -> f64 {
        let factor = if step < self.warmup_steps {
            step as f64 / self.warmup_steps.max(1) as f64
        } else {
            let remaining = self.max_steps.saturating_sub(step) as f64;
            let decay_steps = self.max_steps.saturating_sub(self.warmup_steps).max(1) as f64;
            (remaining / decay_steps).max(0.0)
        };
        self.peak_lr * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn warms_up_linearly_then_decays_to_zero() {
        let schedule = LinearSchedule::new(1e-3, 10, 110);
        assert!(close(schedule.lr(0), 0.0));
        assert!(close(schedule.lr(5), 0.5e-3));
        assert!(close(schedule.lr(10), 1e-3));
        assert!(close(schedule.lr(60), 0.5e-3));
        assert!(close(schedule.lr(109), 1e-5));
        assert!(close(schedule.lr(110), 0.0));
        assert!(close(schedule.lr(500), 0.0));
    }

    #[test]
    fn is_monotone_in_each_phase() {
        let schedule = LinearSchedule::new(5e-4, 100, 1000);
        let lrs: Vec<f64> = (0..=1000).map(|step| schedule.lr(step)).collect();
        assert!(lrs[..=100].windows(2).all(|pair| pair[0] < pair[1]));
        assert!(lrs[100..].windows(2).all(|pair| pair[0] > pair[1]));
        assert!(lrs.iter().all(|lr| *lr <= 5e-4 + 1e-18));
    }

    #[test]
    fn no_warmup_starts_at_the_peak() {
        let schedule = LinearSchedule::new(2e-4, 0, 4);
        assert!(close(schedule.lr(0), 2e-4));
        assert!(close(schedule.lr(2), 1e-4));
        assert!(close(schedule.lr(4), 0.0));
    }

    #[test]
    fn warmup_longer_than_the_run_never_reaches_the_peak() {
        let schedule = LinearSchedule::new(1.0, 1000, 100);
        assert!(close(schedule.lr(99), 0.099));
    }
}
