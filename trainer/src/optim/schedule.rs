//! The learning-rate schedule: linear warmup, then linear decay to 0 at the last step, half a
//! cosine down to 0, or the peak to the end.
//!
//! The same curves as `transformers`' `get_linear_schedule_with_warmup`,
//! `get_cosine_schedule_with_warmup` and `get_constant_schedule_with_warmup` (its
//! `lr_scheduler_type` names), including their indexing: the optimizer step with 0-based index
//! `k` uses `lr(k)`, so the very first update of a run with warmup has a learning rate of 0,
//! exactly as with a `transformers` `Trainer`.

use serde::{Deserialize, Serialize};

use crate::config::ScheduleKind;

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub kind: ScheduleKind,
    pub peak_lr: f64,
    pub warmup_steps: usize,
    pub max_steps: usize,
}

impl LrSchedule {
    pub fn new(kind: ScheduleKind, peak_lr: f64, warmup_steps: usize, max_steps: usize) -> Self {
        LrSchedule {
            kind,
            peak_lr,
            warmup_steps,
            max_steps,
        }
    }

    /// The learning rate of the optimizer step with 0-based index `step`.
    pub fn lr(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.peak_lr * step as f64 / self.warmup_steps.max(1) as f64;
        }
        let decay_steps = self.max_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        // Past `max_steps` (a resumed run given fewer steps) the curve stays at its end.
        let progress = ((step - self.warmup_steps) as f64 / decay_steps).min(1.0);
        let factor = match self.kind {
            ScheduleKind::Linear => 1.0 - progress,
            ScheduleKind::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
            ScheduleKind::ConstantWithWarmup => 1.0,
        };
        self.peak_lr * factor.max(0.0)
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
        let schedule = LrSchedule::new(ScheduleKind::Linear, 1e-3, 10, 110);
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
        let schedule = LrSchedule::new(ScheduleKind::Linear, 5e-4, 100, 1000);
        let lrs: Vec<f64> = (0..=1000).map(|step| schedule.lr(step)).collect();
        assert!(lrs[..=100].windows(2).all(|pair| pair[0] < pair[1]));
        assert!(lrs[100..].windows(2).all(|pair| pair[0] > pair[1]));
        assert!(lrs.iter().all(|lr| *lr <= 5e-4 + 1e-18));
    }

    #[test]
    fn no_warmup_starts_at_the_peak() {
        let schedule = LrSchedule::new(ScheduleKind::Linear, 2e-4, 0, 4);
        assert!(close(schedule.lr(0), 2e-4));
        assert!(close(schedule.lr(2), 1e-4));
        assert!(close(schedule.lr(4), 0.0));
    }

    #[test]
    fn warmup_longer_than_the_run_never_reaches_the_peak() {
        let schedule = LrSchedule::new(ScheduleKind::Linear, 1.0, 1000, 100);
        assert!(close(schedule.lr(99), 0.099));
    }

    #[test]
    fn cosine_falls_from_the_peak_to_zero_along_half_a_period() {
        let schedule = LrSchedule::new(ScheduleKind::Cosine, 1e-3, 10, 110);
        assert!(close(schedule.lr(5), 0.5e-3), "warmup is linear");
        assert!(close(schedule.lr(10), 1e-3));
        // progress 1/4: 0.5 (1 + cos(pi / 4))
        assert!(close(schedule.lr(35), 1e-3 * 0.5 * (1.0 + 0.5f64.sqrt())));
        assert!(close(schedule.lr(60), 0.5e-3));
        for offset in 0..=100 {
            // Point symmetry about the middle of the decay.
            let sum = schedule.lr(10 + offset) + schedule.lr(110 - offset);
            assert!(close(sum, 1e-3), "offset {offset}");
        }
        assert!(close(schedule.lr(110), 0.0));
        assert!(
            close(schedule.lr(200), 0.0),
            "it does not rise again after the end"
        );
    }

    #[test]
    fn constant_with_warmup_holds_the_peak() {
        let schedule = LrSchedule::new(ScheduleKind::ConstantWithWarmup, 3e-4, 4, 50);
        assert!(close(schedule.lr(2), 1.5e-4));
        assert!((4..=60).all(|step| close(schedule.lr(step), 3e-4)));
    }
}
