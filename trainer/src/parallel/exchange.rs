//! What the ranks of a data-parallel run tell each other once per step, before the gradients are
//! summed: how many tokens they predicted (the loss divides by the step's total), their loss
//! sum, which blocks they trained on (rank 0 logs them all), where the stream continues after
//! the step (the last rank holds the step's last block), whether a stop was requested, and
//! whether the rank failed, so that a failure ends every rank at the same point with its cause
//! and the failing rank's number instead of leaving the others waiting.
//!
//! At checkpoints the ranks also compare a hash of their parameters, which identical gradients
//! and identical updates keep bitwise equal.

use flightlm_shared::Cursor;
use serde::{Deserialize, Serialize};

use crate::error::TrainError;
use crate::optim::source_loss::SourceLosses;

/// One rank's account of the step it just computed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// The `block_seq`s trained on, as arithmetic runs `[first, count, stride]` (a shard's
    /// blocks step by the world size).
    pub blocks: Vec<[u64; 3]>,
    /// Positions whose token was predicted (the loss's denominator, summed over ranks).
    pub predicted: u64,
    /// Input tokens read.
    pub input_tokens: u64,
    /// Sum of the predicted positions' cross-entropy. JSON has no NaN or infinity: a sum that
    /// is not finite (a diverged step) travels as null and reads back as NaN, for rank 0 to find.
    #[serde(deserialize_with = "null_is_nan")]
    pub loss_sum: f64,
    /// Seconds this rank's source has kept it waiting so far.
    pub waited_s: f64,
    /// Where the stream continues after this rank's last block of the step.
    pub cursor: Option<Cursor>,
    /// A stop (Ctrl-C, SIGTERM) was requested on this rank's process.
    pub stop: bool,
    /// Why this rank cannot go on; every rank then ends the run with this error.
    pub failure: Option<String>,
    /// This rank's loss sums per source (summed over the ranks like the loss).
    #[serde(default)]
    pub source_losses: SourceLosses,
}

pub(crate) fn null_is_nan<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(deserializer)?.unwrap_or(f64::NAN))
}

/// Every rank's report, indexed by rank.
#[derive(Clone, Debug)]
pub struct StepReports(pub Vec<StepReport>);

impl StepReport {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a StepReport always serializes")
    }
}

impl StepReports {
    /// Decodes every rank's payload.
    pub fn decode(payloads: &[Vec<u8>], reader: usize) -> Result<Self, TrainError> {
        payloads
            .iter()
            .enumerate()
            .map(|(rank, payload)| {
                serde_json::from_slice(payload).map_err(|error| TrainError::Rank {
                    rank: reader,
                    message: format!("the step report of rank {rank} does not parse: {error}"),
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(StepReports)
    }

    /// The first failure reported, as the error of the rank that reported it.
    pub fn failure(&self) -> Option<TrainError> {
        self.0.iter().enumerate().find_map(|(rank, report)| {
            report.failure.as_ref().map(|message| TrainError::Rank {
                rank,
                message: message.clone(),
            })
        })
    }

    pub fn predicted(&self) -> u64 {
        self.0.iter().map(|report| report.predicted).sum()
    }

    pub fn input_tokens(&self) -> u64 {
        self.0.iter().map(|report| report.input_tokens).sum()
    }

    pub fn loss_sum(&self) -> f64 {
        self.0.iter().map(|report| report.loss_sum).sum()
    }

    /// The slowest rank's wait: the step waits for it.
    pub fn waited_s(&self) -> f64 {
        self.0
            .iter()
            .map(|report| report.waited_s)
            .fold(0.0, f64::max)
    }

    pub fn stop(&self) -> bool {
        self.0.iter().any(|report| report.stop)
    }

    /// Where the stream continues after the step: after its last block, which the last rank
    /// trained on.
    pub fn cursor(&self) -> Option<Cursor> {
        self.0.last().and_then(|report| report.cursor.clone())
    }

    /// Every rank's blocks of the step, in `block_seq` order.
    pub fn blocks(&self) -> Vec<u64> {
        let mut blocks: Vec<u64> = self
            .0
            .iter()
            .flat_map(|report| expand_runs(&report.blocks))
            .collect();
        blocks.sort_unstable();
        blocks
    }
}

/// `block_seqs` as arithmetic runs `[first, count, stride]`.
pub fn arithmetic_runs(block_seqs: &[u64]) -> Vec<[u64; 3]> {
    let mut runs: Vec<[u64; 3]> = Vec::new();
    for &seq in block_seqs {
        if let Some(run) = runs.last_mut() {
            let [first, count, stride] = *run;
            if count == 1 && seq > first {
                *run = [first, 2, seq - first];
                continue;
            }
            if count > 1 && first.checked_add(count * stride) == Some(seq) {
                run[1] += 1;
                continue;
            }
        }
        runs.push([seq, 1, 1]);
    }
    runs
}

fn expand_runs(runs: &[[u64; 3]]) -> impl Iterator<Item = u64> + '_ {
    runs.iter()
        .flat_map(|&[first, count, stride]| (0..count).map(move |index| first + index * stride))
}

/// A cheap hash of parameter values (FNV-1a over their bits), to check that ranks hold the same
/// model.
pub fn hash_values(hash: u64, values: &[f32]) -> u64 {
    values.iter().fold(hash, |hash, value| {
        value
            .to_bits()
            .to_le_bytes()
            .iter()
            .fold(hash, |hash, byte| {
                (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
            })
    })
}

/// FNV-1a's offset basis: the hash of no values.
pub const EMPTY_HASH: u64 = 0xcbf2_9ce4_8422_2325;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_travel_as_arithmetic_runs() {
        let shard: Vec<u64> = (0..8).map(|index| 1 + index * 3).collect();
        assert_eq!(arithmetic_runs(&shard), [[1, 8, 3]]);
        let mixed = [5, 6, 7, 20, 40, 41];
        let runs = arithmetic_runs(&mixed);
        assert_eq!(expand_runs(&runs).collect::<Vec<_>>(), mixed);
        assert_eq!(arithmetic_runs(&[9]), [[9, 1, 1]]);
        assert!(arithmetic_runs(&[]).is_empty());
        // A repeat or a step backwards starts a new run rather than losing a block.
        let odd = [4, 4, 2, 3];
        assert_eq!(expand_runs(&arithmetic_runs(&odd)).collect::<Vec<_>>(), odd);
    }

    #[test]
    fn reports_combine_into_the_step() {
        let rank = |first: u64, predicted, stop| StepReport {
            blocks: arithmetic_runs(&[first, first + 2]),
            predicted,
            input_tokens: 256,
            loss_sum: predicted as f64 * 2.0,
            waited_s: first as f64,
            stop,
            ..StepReport::default()
        };
        let payloads = vec![rank(0, 30, false).encode(), rank(1, 10, true).encode()];
        let reports = StepReports::decode(&payloads, 0).expect("decodes");
        assert_eq!(reports.blocks(), [0, 1, 2, 3]);
        assert_eq!((reports.predicted(), reports.input_tokens()), (40, 512));
        assert_eq!(reports.loss_sum(), 80.0);
        assert_eq!(reports.waited_s(), 1.0);
        assert!(reports.stop());
        assert!(reports.failure().is_none());
        let failing = StepReport {
            failure: Some("the pipeline is gone".into()),
            ..StepReport::default()
        };
        let reports = StepReports::decode(&[rank(0, 1, false).encode(), failing.encode()], 0)
            .expect("decodes");
        let error = reports.failure().expect("a failure").to_string();
        assert!(error.starts_with("rank 1: the pipeline is gone"), "{error}");
        let diverged = StepReport {
            loss_sum: f64::NAN,
            ..StepReport::default()
        };
        let reports = StepReports::decode(&[diverged.encode()], 0).expect("a NaN travels");
        assert!(reports.loss_sum().is_nan());
    }

    #[test]
    fn the_hash_sees_every_bit() {
        let a = hash_values(EMPTY_HASH, &[1.0, 2.0]);
        assert_eq!(a, hash_values(EMPTY_HASH, &[1.0, 2.0]));
        assert_ne!(
            a,
            hash_values(EMPTY_HASH, &[1.0, f32::from_bits(2.0f32.to_bits() ^ 1)])
        );
        assert_ne!(a, hash_values(EMPTY_HASH, &[2.0, 1.0]));
    }
}
