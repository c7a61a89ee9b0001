//! A bound on how long a rank waits for the others.
//!
//! A collective call blocks until every rank has made it. A rank that failed in this process
//! releases the others (see [`crate::parallel::group::abandon`]), but a rank on another host that
//! died or hangs cannot: the survivors would wait forever inside burn-collective, which has no
//! timeout of its own. The watchdog ends such a process instead, after `timeout`, with one line
//! naming the rank that waited, the step and what it waited in; the run then resumes from its
//! last checkpoint.
//!
//! Some waits are long by design: the other ranks wait for rank 0 while it evaluates or writes a
//! checkpoint, and every rank's first step compiles (on a GPU, minutes before burn's kernels are
//! cached). Those waits are [`Patience::Long`]: ten times the timeout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::config::TrainConfig;

/// Watches the waits of one process's ranks.
pub struct Watchdog {
    shared: Arc<Shared>,
}

struct Shared {
    timeout: Duration,
    waits: Mutex<HashMap<usize, Wait>>,
    finished: AtomicBool,
}

#[derive(Clone, Copy)]
struct Wait {
    since: Instant,
    limit: Duration,
    step: usize,
    what: &'static str,
}

/// How long a wait may last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Patience {
    /// The timeout: the others are computing a step like this rank's.
    Normal,
    /// Ten times the timeout: the others may be evaluating or compiling their first step.
    Long,
}

impl Patience {
    /// The patience of step `step`'s exchange (0-based) in a run whose process started at
    /// `first_step`: long when rank 0 has just evaluated or written a checkpoint while the
    /// others waited, or when the step is the process's first (it compiles).
    pub fn at_step(config: &TrainConfig, step: usize, first_step: usize) -> Self {
        let after_pause =
            step.is_multiple_of(config.eval_every) || step.is_multiple_of(config.save_every);
        if step == first_step || after_pause {
            Patience::Long
        } else {
            Patience::Normal
        }
    }
}

/// The factor of [`Patience::Long`].
pub const LONG_WAIT_FACTOR: u32 = 10;

/// A rank's wait in progress; dropping it ends the wait.
pub struct WaitGuard<'a> {
    shared: &'a Shared,
    rank: usize,
}

impl Watchdog {
    /// Starts watching: a rank waiting longer than `timeout` ends the process with exit code 1.
    pub fn start(timeout: Duration) -> Self {
        let shared = Arc::new(Shared {
            timeout,
            waits: Mutex::new(HashMap::new()),
            finished: AtomicBool::new(false),
        });
        let watched = shared.clone();
        let poll = (timeout / 20).clamp(Duration::from_millis(50), Duration::from_secs(1));
        std::thread::Builder::new()
            .name("collective-watchdog".into())
            .spawn(move || {
                while !watched.finished.load(Ordering::SeqCst) {
                    std::thread::sleep(poll);
                    if let Some(message) = watched.overdue() {
                        eprintln!("error: {message}");
                        std::process::exit(1);
                    }
                }
            })
            .expect("starting the watchdog thread");
        Watchdog { shared }
    }

    /// Marks `rank` as waiting for the others in `what` at `step` until the guard drops.
    pub fn wait(
        &self,
        rank: usize,
        step: usize,
        what: &'static str,
        patience: Patience,
    ) -> WaitGuard<'_> {
        let limit = match patience {
            Patience::Normal => self.shared.timeout,
            Patience::Long => self.shared.timeout * LONG_WAIT_FACTOR,
        };
        let wait = Wait {
            since: Instant::now(),
            limit,
            step,
            what,
        };
        self.shared.lock().insert(rank, wait);
        WaitGuard {
            shared: &self.shared,
            rank,
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<usize, Wait>> {
        self.waits.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The error of the first rank that has waited longer than the timeout.
    fn overdue(&self) -> Option<String> {
        let waits = self.lock();
        let (rank, wait) = waits
            .iter()
            .filter(|(_, wait)| wait.since.elapsed() > wait.limit)
            .min_by_key(|(rank, _)| **rank)?;
        Some(format!(
            "rank {rank}: no answer from the other ranks for {} s in {} of step {} (a rank or \
             node stopped or hangs; collective_timeout_s); resume from the last checkpoint",
            wait.limit.as_secs(),
            wait.what,
            wait.step + 1
        ))
    }
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.shared.lock().remove(&self.rank);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.shared.finished.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;

    #[test]
    fn the_steps_after_an_evaluation_or_a_checkpoint_wait_long() {
        let mut config = TrainConfig::new("http://x", "out", Preset::Tiny);
        config.eval_every = 10;
        config.save_every = 4;
        let long: Vec<usize> = (0..13)
            .filter(|step| Patience::at_step(&config, *step, 0) == Patience::Long)
            .collect();
        assert_eq!(long, [0, 4, 8, 10, 12]);
        assert_eq!(
            Patience::at_step(&config, 5, 5),
            Patience::Long,
            "a resumed first step"
        );
    }

    #[test]
    fn only_waits_past_the_timeout_are_overdue() {
        let shared = Shared {
            timeout: Duration::from_millis(30),
            waits: Mutex::new(HashMap::new()),
            finished: AtomicBool::new(false),
        };
        let now = Instant::now();
        shared.lock().insert(
            3,
            Wait {
                since: now,
                limit: shared.timeout,
                step: 9,
                what: "the step exchange",
            },
        );
        shared.lock().insert(
            1,
            Wait {
                since: now,
                limit: shared.timeout * LONG_WAIT_FACTOR,
                step: 0,
                what: "the step exchange",
            },
        );
        assert!(shared.overdue().is_none());
        std::thread::sleep(Duration::from_millis(40));
        let message = shared.overdue().expect("overdue");
        assert!(
            message.starts_with("rank 3: no answer") && message.contains("of step 10"),
            "{message}"
        );
        drop(WaitGuard {
            shared: &shared,
            rank: 3,
        });
        assert!(shared.overdue().is_none());
    }
}
