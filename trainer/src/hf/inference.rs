//! Forward passes for inference: the logits of every position of one sequence, on the host.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::error::HfError;
use crate::model::Roberta;

/// Logits `[positions.len(), vocab]` (row-major) at `positions` of the sequence `ids`.
///
/// Without autodiff dropout is off, so this is the model `transformers` runs in `eval()` mode.
pub fn logits_at<B: Backend>(
    model: &Roberta<B>,
    ids: &[u32],
    positions: &[u32],
    device: &B::Device,
) -> Result<Vec<f32>, HfError> {
    let max_tokens = model.embeddings.position_embeddings.weight.dims()[0]
        .saturating_sub(model.embeddings.position_offset);
    if ids.is_empty() || ids.len() > max_tokens {
        return Err(HfError::Input(format!(
            "the input has {} tokens; the model reads 1 to {max_tokens}",
            ids.len()
        )));
    }
    let input: Vec<i64> = ids.iter().map(|id| i64::from(*id)).collect();
    let input = Tensor::<B, 2, Int>::from_data(TensorData::new(input, [1, ids.len()]), device);
    let picked: Vec<i64> = positions.iter().map(|p| i64::from(*p)).collect();
    let picked = Tensor::<B, 1, Int>::from_data(TensorData::new(picked, [positions.len()]), device);
    model
        .forward(input, picked)
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|error| HfError::Device(format!("{error:?}")))
}

/// Logits of every position of `ids`: `[ids.len(), vocab]`, row-major.
pub fn sequence_logits<B: Backend>(
    model: &Roberta<B>,
    ids: &[u32],
    device: &B::Device,
) -> Result<Vec<f32>, HfError> {
    let positions: Vec<u32> = (0..ids.len() as u32).collect();
    logits_at(model, ids, &positions, device)
}

/// `log p(target)` under the softmax of one row of logits, in f64.
pub fn log_probability(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|l| (*l as f64 - max).exp()).sum();
    logits[target as usize] as f64 - max - sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_probability_is_a_log_softmax() {
        let logits = [1.0f32, 2.0, 3.0];
        let total: f64 = logits.iter().map(|l| (*l as f64).exp()).sum();
        let expected = (3.0f64.exp() / total).ln();
        assert!((log_probability(&logits, 2) - expected).abs() < 1e-12);
    }
}
