//! The loss of each source's predicted positions: what the mixture's sources cost the model.
//!
//! A batch's per-token losses are grouped by the source of the block each position lies in
//! (`TokenBlocks.sources`, from the stream's `source` column) with one small matrix product on
//! the device, so the step reads nothing back; the sums reach the host when a metric line (or a
//! data-parallel step report) needs them. A source's loss is the mean over its predicted
//! positions (token-weighted, whatever `loss_average` the step uses).

use std::collections::BTreeMap;
use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::data::collate::LmBatch;
use crate::error::TrainError;
use crate::run::eval::read_floats;

/// One batch's loss sums per source, still on the device.
pub struct BatchSourceLoss<B: Backend> {
    names: Vec<Arc<str>>,
    /// `[names]`: the summed cross-entropy of each source's positions.
    sums: Tensor<B, 1>,
    counts: Vec<u64>,
}

impl<B: Backend> BatchSourceLoss<B> {
    /// Groups `token_losses` (`[padded targets]`, as the loss computes them for `batch`) by
    /// source; `None` when the batch's blocks name no source or nothing was predicted.
    pub fn of(token_losses: Tensor<B, 1>, batch: &LmBatch) -> Option<Self> {
        if batch.sources.len() != batch.rows || batch.targets.is_empty() {
            return None;
        }
        let mut names: Vec<Arc<str>> = Vec::new();
        let row_source: Vec<usize> = batch
            .sources
            .iter()
            .map(|name| match names.iter().position(|known| known == name) {
                Some(index) => index,
                None => {
                    names.push(name.clone());
                    names.len() - 1
                }
            })
            .collect();
        let [padded] = token_losses.dims();
        let width = names.len();
        let mut membership = vec![0.0f32; padded * width];
        let mut counts = vec![0u64; width];
        for (target, position) in batch.positions.iter().enumerate() {
            let source = row_source[*position as usize / batch.seq_len];
            membership[target * width + source] = 1.0;
            counts[source] += 1;
        }
        let device = token_losses.device();
        let membership =
            Tensor::<B, 2>::from_data(TensorData::new(membership, [padded, width]), &device);
        let sums = token_losses
            .reshape([1, padded])
            .matmul(membership)
            .reshape([width]);
        Some(BatchSourceLoss {
            names,
            sums,
            counts,
        })
    }
}

/// Loss sum and predicted positions of one source.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceLoss {
    /// A sum that is not finite (a diverged step) travels as null, as the step's loss does.
    #[serde(deserialize_with = "crate::parallel::exchange::null_is_nan")]
    pub sum: f64,
    pub count: u64,
}

/// Per-source sums on the host, by source name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceLosses(pub BTreeMap<String, SourceLoss>);

impl SourceLosses {
    /// Reads a batch's sums from the device and adds them.
    pub fn add_batch<B: Backend>(&mut self, batch: BatchSourceLoss<B>) -> Result<(), TrainError> {
        let sums = read_floats(batch.sums)?;
        for ((name, sum), count) in batch.names.iter().zip(sums).zip(batch.counts) {
            let entry = self.0.entry(name.to_string()).or_default();
            entry.sum += sum;
            entry.count += count;
        }
        Ok(())
    }

    /// Adds another set of sums (another rank's, say).
    pub fn merge(&mut self, other: &SourceLosses) {
        for (name, loss) in &other.0 {
            let entry = self.0.entry(name.clone()).or_default();
            entry.sum += loss.sum;
            entry.count += loss.count;
        }
    }

    /// The mean loss of every source with predicted positions.
    pub fn means(&self) -> BTreeMap<String, f64> {
        self.0
            .iter()
            .filter(|(_, loss)| loss.count > 0)
            .map(|(name, loss)| (name.clone(), loss.sum / loss.count as f64))
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuBackend;

    #[test]
    fn groups_token_losses_by_the_source_of_their_row() {
        let device = Default::default();
        let batch = LmBatch {
            rows: 3,
            seq_len: 4,
            positions: vec![1, 5, 6, 9],
            targets: vec![7, 7, 7, 7],
            sources: vec!["a".into(), "b".into(), "a".into()],
            ..LmBatch::default()
        };
        // Two zero-weight padding positions after the four real ones.
        let losses = Tensor::<CpuBackend, 1>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 4.0, 8.0, 0.0, 0.0], [6]),
            &device,
        );
        let grouped = BatchSourceLoss::of(losses, &batch).expect("sources named");
        let mut totals = SourceLosses::default();
        totals.add_batch(grouped).unwrap();
        assert_eq!(totals.0["a"], SourceLoss { sum: 9.0, count: 2 });
        assert_eq!(totals.0["b"], SourceLoss { sum: 6.0, count: 2 });
        assert_eq!(totals.means()["a"], 4.5);
        let mut merged = totals.clone();
        merged.merge(&totals);
        assert_eq!(
            merged.0["b"],
            SourceLoss {
                sum: 12.0,
                count: 4
            }
        );

        let unnamed = LmBatch {
            sources: Vec::new(),
            ..batch
        };
        let losses = Tensor::<CpuBackend, 1>::zeros([6], &device);
        assert!(BatchSourceLoss::of(losses, &unnamed).is_none());
    }
}
