//! What a round computes from the ranks' contributions, whichever transport carried them (the
//! coordinator of a multi-node run, or the in-process rounds of CPU ranks in one process).
//!
//! Every rank must be making the same call (kind, step and purpose) as rank 0, or the round
//! fails naming the first rank that is not. Sums are taken in rank order, one rank after the
//! other, so every rank gets the same bits and a run gets the same bits every time, however the
//! ranks' threads or processes are scheduled.

use std::fmt;

use crate::parallel::frame::Round;

/// Why a round failed, with the rank at fault when one is known.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundError {
    pub rank: Option<usize>,
    pub message: String,
}

impl RoundError {
    pub fn of(rank: usize, message: impl Into<String>) -> Self {
        RoundError {
            rank: Some(rank),
            message: message.into(),
        }
    }

    pub fn unattributed(message: impl Into<String>) -> Self {
        RoundError {
            rank: None,
            message: message.into(),
        }
    }

    /// `rank R: message`, the form every rank's error line takes.
    pub fn line(&self) -> String {
        match self.rank {
            Some(rank) => format!("rank {rank}: {}", self.message),
            None => self.message.clone(),
        }
    }

    /// Reads back [`RoundError::line`].
    pub fn from_line(line: &str) -> Self {
        let named = line.strip_prefix("rank ").and_then(|rest| {
            let (rank, why) = rest.split_once(": ")?;
            Some(RoundError::of(rank.parse().ok()?, why))
        });
        named.unwrap_or_else(|| RoundError::unattributed(line))
    }
}

impl fmt::Display for RoundError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.line())
    }
}

/// One rank's part of a round.
#[derive(Clone, Debug, PartialEq)]
pub enum Contribution {
    /// Values to sum element-wise.
    Sum(Vec<f32>),
    /// Bytes to gather.
    Gather(Vec<u8>),
}

/// What every rank gets back.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    Sum(Vec<f32>),
    /// Every rank's bytes, indexed by rank.
    Gathered(Vec<Vec<u8>>),
}

impl Contribution {
    fn kind(&self) -> &'static str {
        match self {
            Contribution::Sum(_) => "a sum",
            Contribution::Gather(_) => "a gather",
        }
    }
}

/// Combines the contributions of ranks `0..N` (in that order) to `round`s.
pub fn combine(contributions: Vec<(Round, Contribution)>) -> Result<Outcome, RoundError> {
    let Some((lead_round, lead)) = contributions.first() else {
        return Ok(Outcome::Gathered(Vec::new()));
    };
    let (lead_round, lead_kind) = (*lead_round, lead.kind());
    for (rank, (round, contribution)) in contributions.iter().enumerate().skip(1) {
        if *round != lead_round || contribution.kind() != lead_kind {
            return Err(RoundError::of(
                rank,
                format!(
                    "is in {round} ({}) while rank 0 is in {lead_round} ({lead_kind}): the ranks \
                     run different steps or settings",
                    contribution.kind()
                ),
            ));
        }
    }
    let mut contributions = contributions
        .into_iter()
        .map(|(_, contribution)| contribution);
    match contributions.next() {
        Some(Contribution::Sum(mut total)) => {
            for (rank, contribution) in contributions.enumerate() {
                let Contribution::Sum(values) = contribution else {
                    unreachable!("kinds checked above")
                };
                if values.len() != total.len() {
                    return Err(RoundError::of(
                        rank + 1,
                        format!(
                            "sent {} values to sum in {lead_round}, rank 0 sent {}",
                            values.len(),
                            total.len()
                        ),
                    ));
                }
                for (sum, value) in total.iter_mut().zip(values) {
                    *sum += value;
                }
            }
            Ok(Outcome::Sum(total))
        }
        Some(Contribution::Gather(first)) => {
            let mut gathered = vec![first];
            gathered.extend(contributions.map(|contribution| match contribution {
                Contribution::Gather(bytes) => bytes,
                Contribution::Sum(_) => unreachable!("kinds checked above"),
            }));
            Ok(Outcome::Gathered(gathered))
        }
        None => unreachable!("not empty"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parallel::frame::Purpose;

    #[test]
    fn sums_go_in_rank_order_and_gathers_keep_it() {
        let round = Round::new(3, Purpose::Gradients);
        // 1e8 + 1 - 1e8 in f32: rank order decides the bits.
        let values = [1e8f32, 1.0, -1e8];
        let summed = combine(
            values
                .iter()
                .map(|value| (round, Contribution::Sum(vec![*value, 2.0])))
                .collect(),
        )
        .expect("sums");
        assert_eq!(summed, Outcome::Sum(vec![(1e8f32 + 1.0) - 1e8, 6.0]));
        let round = Round::new(3, Purpose::StepReport);
        let gathered = combine(vec![
            (round, Contribution::Gather(vec![0])),
            (round, Contribution::Gather(vec![])),
        ])
        .expect("gathers");
        assert_eq!(gathered, Outcome::Gathered(vec![vec![0], vec![]]));
    }

    #[test]
    fn a_rank_in_another_round_is_named_with_both_rounds() {
        let error = combine(vec![
            (
                Round::new(4, Purpose::StepReport),
                Contribution::Gather(vec![]),
            ),
            (
                Round::new(3, Purpose::ParameterCheck),
                Contribution::Gather(vec![]),
            ),
        ])
        .expect_err("different rounds");
        assert_eq!(error.rank, Some(1));
        assert!(
            error.message.contains("the parameter check of step 4")
                && error.message.contains("the step exchange of step 5"),
            "{}",
            error.message
        );
        let round = Round::new(0, Purpose::Gradients);
        let error = combine(vec![
            (round, Contribution::Sum(vec![1.0])),
            (round, Contribution::Sum(vec![1.0, 2.0])),
        ])
        .expect_err("different sizes");
        assert_eq!(
            error.line(),
            "rank 1: sent 2 values to sum in the gradient all-reduce of step 1, rank 0 sent 1"
        );
        assert_eq!(RoundError::from_line(&error.line()), error);
    }
}
