//! The weight changes of one run's streams, received while they run (`stream-weights`).
//!
//! A trainer that steers its mixture changes its stream's weights every few steps. Opening a
//! new stream for each change costs the pipeline far more than the blocks the trainer reads
//! between two changes: every source starts again (a file prefix, the first encoding jobs),
//! and what the old stream had made ahead is thrown away. So a run's streams follow a schedule
//! instead: they draw chunks only up to `until`, a block the trainer names, and each update
//! names weights from a boundary at or after `until` and moves `until` on. A chunk is drawn
//! only once every change that could apply to it is known, so the blocks a stream gives never
//! depend on when an update arrived: an update is refused only when the chunk it names was
//! already drawn, which a trainer that keeps to its own `until` never asks for.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::Duration;

use flightlm_shared::StreamWeights;

use crate::error::PipelineError;

/// How often a producer waiting for an update checks whether its stream is still read.
const STOP_CHECK: Duration = Duration::from_millis(100);

type Weights = BTreeMap<String, f64>;

#[derive(Default)]
struct ScheduleState {
    /// Changes by the block they apply from (the first chunk starting at or after it).
    changes: BTreeMap<u64, Weights>,
    /// Chunks starting at or after this block wait for an update (`None`: nothing waits).
    until: Option<u64>,
    /// The latest chunk start drawn by any producer of the run.
    drawn: Option<u64>,
}

/// One run's schedule, shared by every production of its streams on this pipeline.
#[derive(Default)]
pub struct WeightSchedule {
    state: Mutex<ScheduleState>,
    changed: Condvar,
}

impl WeightSchedule {
    fn lock(&self) -> MutexGuard<'_, ScheduleState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until the chunk starting at `chunk_start` may be drawn and returns the weights of
    /// the latest change that applies to it, if one does. Fails when `stop` says the stream is
    /// no longer read while it waits.
    pub fn weights_for(
        &self,
        chunk_start: u64,
        stop: &dyn Fn() -> bool,
    ) -> Result<Option<Weights>, PipelineError> {
        let mut state = self.lock();
        while state.until.is_some_and(|until| chunk_start >= until) {
            if stop() {
                return Err(PipelineError::Control(
                    "the stream closed while it waited for weights".into(),
                ));
            }
            state = self
                .changed
                .wait_timeout(state, STOP_CHECK)
                .map(|(state, _)| state)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        state.drawn = Some(state.drawn.map_or(chunk_start, |d| d.max(chunk_start)));
        Ok((state.changes.range(..=chunk_start).next_back()).map(|(_, w)| w.clone()))
    }

    /// Adds a change (or only moves `until` on). The same change again (every rank of a job
    /// sends it) is accepted; a different one for the same boundary, or one for a chunk already
    /// drawn, is refused.
    pub fn update(&self, update: &StreamWeights) -> Result<(), String> {
        let mut state = self.lock();
        if let Some(weights) = &update.weights {
            match state.changes.get(&update.from) {
                Some(known) if known == weights => {}
                Some(_) => {
                    return Err(format!(
                        "run `{}` already has other weights from block {}",
                        update.run, update.from
                    ))
                }
                None => {
                    if let Some(drawn) = state.drawn.filter(|drawn| *drawn >= update.from) {
                        return Err(format!(
                            "run `{}`'s stream already drew the chunk at block {drawn}, at or \
                             after the update's boundary {}: weights change only from a block \
                             at or after the stream's `until`",
                            update.run, update.from
                        ));
                    }
                    state.changes.insert(update.from, weights.clone());
                }
            }
        }
        state.until = Some(state.until.map_or(update.until, |u| u.max(update.until)));
        self.changed.notify_all();
        Ok(())
    }
}

/// The schedules of the runs whose streams are open, by run name.
#[derive(Default)]
pub struct WeightSchedules {
    runs: Mutex<HashMap<String, Weak<WeightSchedule>>>,
}

impl WeightSchedules {
    /// The schedule of `run`, started at `until` for its first stream; a stream opened again
    /// (a reconnection, another rank) moves a running schedule's `until` on when it names a
    /// later one.
    pub fn open(&self, run: &str, until: Option<u64>) -> Arc<WeightSchedule> {
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        runs.retain(|_, schedule| schedule.strong_count() > 0);
        let schedule = match runs.get(run).and_then(Weak::upgrade) {
            Some(schedule) => schedule,
            None => {
                let schedule = Arc::new(WeightSchedule::default());
                runs.insert(run.to_string(), Arc::downgrade(&schedule));
                schedule
            }
        };
        if let Some(until) = until {
            let mut state = schedule.lock();
            state.until = Some(state.until.map_or(until, |u| u.max(until)));
            schedule.changed.notify_all();
        }
        schedule
    }

    /// Applies an update to the run's streams; false when none of them is open here (the
    /// trainer then opens its stream again with the update in its request).
    pub fn update(&self, update: &StreamWeights) -> Result<bool, PipelineError> {
        update.validate().map_err(PipelineError::Control)?;
        let schedule = {
            let runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
            runs.get(&update.run).and_then(Weak::upgrade)
        };
        let Some(schedule) = schedule else {
            return Ok(false);
        };
        schedule.update(update).map_err(PipelineError::Control)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(from: u64, until: u64, weight: f64) -> StreamWeights {
        StreamWeights {
            run: "r".into(),
            weights: Some(BTreeMap::from([("a".into(), weight), ("b".into(), 1.0)])),
            from,
            until,
        }
    }

    #[test]
    fn chunks_wait_for_until_and_take_the_latest_change_before_them() {
        let schedules = WeightSchedules::default();
        let schedule = schedules.open("r", Some(128));
        let never = || false;
        assert_eq!(schedule.weights_for(64, &never).unwrap(), None);
        let waiting = {
            let schedule = schedule.clone();
            std::thread::spawn(move || schedule.weights_for(192, &|| false).unwrap())
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiting.is_finished(), "a chunk past `until` must wait");
        assert!(schedules.update(&change(160, 320, 2.0)).unwrap());
        let weights = waiting.join().unwrap().expect("the change applies");
        assert_eq!(weights["a"], 2.0);
        // The same change again (another rank) is fine; other weights for it are not.
        schedules.update(&change(160, 320, 2.0)).unwrap();
        assert!(schedules.update(&change(160, 320, 3.0)).is_err());
        // A boundary at or before a chunk already drawn is refused.
        let late = schedules.update(&change(150, 400, 3.0)).unwrap_err();
        assert!(late.to_string().contains("already drew"), "{late}");
        // Only moving `until` on.
        let extend = StreamWeights {
            weights: None,
            ..change(0, 480, 0.0)
        };
        schedules.update(&extend).unwrap();
        assert_eq!(schedule.lock().until, Some(480));
    }

    #[test]
    fn a_waiting_chunk_gives_up_once_its_stream_is_gone_and_unknown_runs_are_refused() {
        let schedules = WeightSchedules::default();
        let schedule = schedules.open("r", Some(0));
        assert!(schedule.weights_for(0, &|| true).is_err());
        drop(schedule);
        assert!(!schedules.update(&change(0, 64, 1.0)).unwrap());
    }
}
