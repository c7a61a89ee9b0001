//! Token-level cross-entropy on the positions the model was asked to predict.
//!
//! Natural-log cross-entropy, so perplexity is `exp(loss)` as in HF. There are no ignored
//! targets: the head only ever sees the positions that carry a label.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

/// Weighted sum over tokens of `-log p(target)`, as a one-element tensor.
///
/// `weights` is 1 for real targets and 0 for padding rows (see
/// [`crate::data::collate::TARGET_BUCKET`]). Written as `logsumexp(logits) - logits[target]` rather
/// than through `log_softmax`: the full `[tokens, vocab]` log-probabilities are never
/// materialized, which saves a pass over the largest tensor of the step in both directions.
pub fn cross_entropy_sum<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
    weights: Tensor<B, 1>,
) -> Tensor<B, 1> {
    cross_entropy_tokens(logits, targets, weights).sum()
}

/// `-log p(target)` of every token, times its weight: `[tokens]` (what
/// [`cross_entropy_sum`] sums; the per-source losses group it by source).
pub fn cross_entropy_tokens<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
    weights: Tensor<B, 1>,
) -> Tensor<B, 1> {
    let [tokens] = targets.dims();
    // The shift only keeps exp() in range; it cancels out, so no gradient flows through it.
    let shift = logits.clone().detach().max_dim(1); // [tokens, 1]
    let log_sum_exp = (logits.clone() - shift.clone()).exp().sum_dim(1).log() + shift; // [tokens, 1]
    let picked = logits.gather(1, targets.reshape([tokens, 1])); // [tokens, 1]
    ((log_sum_exp - picked) * weights.reshape([tokens, 1])).reshape([tokens])
}

/// Mean of `-log p(target)` over the `count` real targets, as a one-element tensor.
pub fn cross_entropy_mean<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
    weights: Tensor<B, 1>,
    count: usize,
) -> Tensor<B, 1> {
    cross_entropy_sum(logits, targets, weights).div_scalar(count.max(1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuBackend;
    use burn::tensor::TensorData;

    type TestBackend = CpuBackend;

    #[test]
    fn matches_a_hand_computed_value() {
        let device = Default::default();
        let logits = Tensor::<TestBackend, 2>::from_data(
            TensorData::new(vec![0.0f32, 0.0, 0.0, 1.0, 2.0, 3.0], [2, 3]),
            &device,
        );
        let targets =
            Tensor::<TestBackend, 1, Int>::from_data(TensorData::new(vec![1i64, 2], [2]), &device);
        let uniform = (3.0f64).ln();
        let softmax_top = -(3.0f64 - (1.0f64.exp() + 2.0f64.exp() + 3.0f64.exp()).ln());
        let expected = (uniform + softmax_top) / 2.0;
        let weights = Tensor::<TestBackend, 1>::ones([2], &device);
        let mean: f32 = cross_entropy_mean(logits, targets, weights, 2).into_scalar();
        assert!(
            (f64::from(mean) - expected).abs() < 1e-5,
            "{mean} vs {expected}"
        );
    }

    #[test]
    fn gradient_is_softmax_minus_one_hot() {
        type AutodiffBackend = burn::backend::Autodiff<TestBackend>;
        let device = Default::default();
        let logits = Tensor::<AutodiffBackend, 2>::from_data(
            TensorData::new(vec![1000.0f32, 1001.0, 1002.0], [1, 3]),
            &device,
        )
        .require_grad();
        let targets =
            Tensor::<AutodiffBackend, 1, Int>::from_data(TensorData::new(vec![0i64], [1]), &device);
        let weights = Tensor::<AutodiffBackend, 1>::ones([1], &device);
        let loss = cross_entropy_sum(logits.clone(), targets, weights);
        let gradients = loss.backward();
        let slopes: Vec<f32> = logits
            .grad(&gradients)
            .expect("gradient")
            .into_data()
            .to_vec()
            .expect("f32 data");
        let total = 1.0 + 1f64.exp() + 2f64.exp();
        let expected = [1.0 / total - 1.0, 1f64.exp() / total, 2f64.exp() / total];
        for (slope, expected) in slopes.iter().zip(expected) {
            assert!((f64::from(*slope) - expected).abs() < 1e-5, "{slopes:?}");
        }
    }

    #[test]
    fn zero_weight_rows_do_not_count() {
        let device = Default::default();
        let logits = Tensor::<TestBackend, 2>::from_data(
            TensorData::new(vec![0.0f32, 0.0, 5.0, -5.0], [2, 2]),
            &device,
        );
        let targets =
            Tensor::<TestBackend, 1, Int>::from_data(TensorData::new(vec![0i64, 1], [2]), &device);
        let weights =
            Tensor::<TestBackend, 1>::from_data(TensorData::new(vec![1.0f32, 0.0], [2]), &device);
        let sum: f32 = cross_entropy_sum(logits, targets, weights).into_scalar();
        assert!((f64::from(sum) - 2f64.ln()).abs() < 1e-6, "{sum}");
    }
}
