//! Rounds between the CPU ranks of one process, in memory.
//!
//! burn-collective sums the tensors of a process's ranks in the order of their devices, and on
//! the CPU every rank has the same device: the order (and so the bits of every gradient) then
//! follows a hash map's, which changes from run to run. Here the last rank to arrive combines
//! the round in rank order ([`crate::parallel::rounds::combine`], as node 0's coordinator does),
//! so `cpu:N` computes the same bits every time, and the same bits as N nodes of one CPU rank.
//! A rank that fails marks the rounds failed: every rank waiting or arriving later gets its
//! error instead of waiting for it.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use crate::parallel::frame::Round;
use crate::parallel::rounds::{combine, Contribution, Outcome, RoundError};

/// The rounds of one run's ranks in this process.
pub struct LocalRounds {
    world: usize,
    state: Mutex<State>,
    turned: Condvar,
}

struct State {
    /// Rounds completed so far.
    completed: u64,
    arrived: Vec<Option<(Round, Contribution)>>,
    /// The latest round's outcome, until every rank has taken it.
    outcome: Option<Result<Arc<Outcome>, RoundError>>,
    failed: Option<RoundError>,
}

impl LocalRounds {
    pub fn new(world: usize) -> Arc<Self> {
        Arc::new(LocalRounds {
            world,
            state: Mutex::new(State {
                completed: 0,
                arrived: vec![None; world],
                outcome: None,
                failed: None,
            }),
            turned: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes part in the next round as `rank`; returns once every rank has.
    pub fn round(
        &self,
        rank: usize,
        round: Round,
        contribution: Contribution,
    ) -> Result<Arc<Outcome>, RoundError> {
        let mut state = self.lock();
        if let Some(error) = &state.failed {
            return Err(error.clone());
        }
        let round_number = state.completed;
        state.arrived[rank] = Some((round, contribution));
        if state.arrived.iter().all(Option::is_some) {
            let contributions = state.arrived.iter_mut().flat_map(Option::take).collect();
            state.outcome = Some(combine(contributions).map(Arc::new));
            state.completed += 1;
            self.turned.notify_all();
        } else {
            while state.completed == round_number && state.failed.is_none() {
                state = self
                    .turned
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if state.completed == round_number {
                return Err(state.failed.clone().expect("woken by a failure"));
            }
        }
        // The next round cannot complete before this rank has contributed to it.
        state.outcome.clone().expect("the round's outcome")
    }

    /// Ends the rounds: every rank waiting now or arriving later gets `error` (the first
    /// failure reported wins).
    pub fn fail(&self, error: RoundError) {
        let mut state = self.lock();
        if state.failed.is_none() {
            state.failed = Some(error);
        }
        self.turned.notify_all();
    }

    pub fn world(&self) -> usize {
        self.world
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parallel::frame::Purpose;

    #[test]
    fn ranks_meet_round_after_round_and_a_failure_reaches_every_waiter() {
        let rounds = LocalRounds::new(3);
        let threads: Vec<_> = (0..3)
            .map(|rank| {
                let rounds = rounds.clone();
                std::thread::spawn(move || {
                    let mut sums = Vec::new();
                    for step in 0..50 {
                        let round = Round::new(step, Purpose::Gradients);
                        let value = (rank * 100 + step) as f32;
                        let outcome = rounds
                            .round(rank, round, Contribution::Sum(vec![value]))
                            .expect("no failure");
                        match outcome.as_ref() {
                            Outcome::Sum(sum) => sums.push(sum[0]),
                            other => panic!("{other:?}"),
                        }
                    }
                    if rank == 2 {
                        rounds.fail(RoundError::of(2, "the stream broke"));
                        return (sums, None);
                    }
                    let round = Round::new(50, Purpose::StepReport);
                    let error = rounds.round(rank, round, Contribution::Gather(vec![]));
                    (sums, Some(error.expect_err("rank 2 failed")))
                })
            })
            .collect();
        for thread in threads {
            let (sums, error) = thread.join().expect("rank thread");
            let expected: Vec<f32> = (0..50).map(|step| (300 + 3 * step) as f32).collect();
            assert_eq!(sums, expected);
            if let Some(error) = error {
                assert_eq!(error.line(), "rank 2: the stream broke");
            }
        }
    }
}
