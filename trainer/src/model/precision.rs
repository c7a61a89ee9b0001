//! Mixed precision by hand: burn has no autocast, so the model says where each tensor's dtype
//! changes.
//!
//! The parameters stay in the backend's float type (f32, the "master weights"), and so do their
//! gradients and the optimizer's moments. In bf16 mode the large matrix products (the linear
//! layers, the attention scores and context, the tied decoder projection) take bf16 copies of
//! their weights and inputs; the cubecl matmul accumulates bf16 products in f32. Everything whose
//! accuracy depends on small differences of large sums runs on f32 copies: softmax, LayerNorm,
//! GELU, the residual stream and the loss. burn-autodiff differentiates a cast by casting the
//! gradient back to the input's dtype, so every parameter receives an f32 gradient.
//!
//! In f32 mode every cast below is a no-op (`Tensor::cast` returns its input unchanged when the
//! dtype already matches), so the computation is exactly the one without these helpers.

use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{Element, FloatDType, Tensor};

use crate::config::Precision;

impl Precision {
    /// The dtype the large matrix products run in.
    pub fn compute_dtype(self) -> FloatDType {
        match self {
            Precision::F32 => FloatDType::F32,
            Precision::Bf16 => FloatDType::BF16,
        }
    }
}

/// `tensor` in the compute dtype, as an operand of a matrix product.
pub fn compute<B: Backend, const D: usize>(
    tensor: Tensor<B, D>,
    compute_dtype: FloatDType,
) -> Tensor<B, D> {
    tensor.cast(compute_dtype)
}

/// `tensor` in the parameters' dtype (f32), before softmax, LayerNorm, GELU, a residual sum or
/// the loss.
pub fn full<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Tensor<B, D> {
    tensor.cast(FloatDType::from(B::FloatElem::dtype()))
}

/// `layer(input)` computed in the compute dtype (weight, bias and input cast to it); the output
/// stays in the compute dtype, so a following product can use it without a round trip.
///
/// The input is flattened to `[rows, in]` first. burn's `linear` broadcasts the weight over the
/// leading dimensions instead, and its backward pass then computes the weight gradient as one
/// `[in, out]` product per batch entry and sums them: a batch-sized stack of weight-shaped
/// tensors per layer and small products, where one `[in, rows] x [rows, out]` product does the
/// same sum (as PyTorch does).
pub fn linear<B: Backend, const D: usize>(
    layer: &Linear<B>,
    input: Tensor<B, D>,
    compute_dtype: FloatDType,
) -> Tensor<B, D> {
    let weight = compute(layer.weight.val(), compute_dtype);
    let bias = layer
        .bias
        .as_ref()
        .map(|bias| compute(bias.val(), compute_dtype));
    let mut dims = input.dims();
    let [_, outputs] = weight.dims();
    let rows = dims[..D - 1].iter().product::<usize>();
    let flat: Tensor<B, 2> = compute(input, compute_dtype).reshape([rows, dims[D - 1]]);
    dims[D - 1] = outputs;
    burn::tensor::module::linear(flat, weight, bias).reshape(dims) // [.., out]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuBackend;
    use burn::backend::Autodiff;
    use burn::tensor::{DType, TensorData};

    type TestBackend = Autodiff<CpuBackend>;

    fn layer(device: &crate::CpuDevice) -> Linear<TestBackend> {
        let weight = TensorData::new(vec![0.5f32, -1.0, 2.0, 0.25, 1.5, -0.75], [3, 2]);
        Linear {
            weight: burn::module::Param::from_tensor(Tensor::from_data(weight, device)),
            bias: Some(burn::module::Param::from_tensor(Tensor::from_data(
                TensorData::new(vec![0.1f32, -0.2], [2]),
                device,
            ))),
        }
    }

    /// f64 as the compute dtype loses nothing in the casts, so the values must equal f32's while
    /// the casts, their gradients and the dtypes that reach the parameters are those of bf16.
    #[test]
    fn gradients_reach_the_f32_parameters_through_the_casts() {
        let device = Default::default();
        let layer = layer(&device);
        let input = Tensor::<TestBackend, 2>::from_data(
            TensorData::new(vec![1.0f32, 2.0, -1.0, 0.5, 0.0, 3.0], [2, 3]),
            &device,
        );
        let mixed = linear(&layer, input.clone(), FloatDType::F64);
        assert_eq!(mixed.dtype(), DType::F64);
        let mixed = full(mixed);
        assert_eq!(mixed.dtype(), DType::F32);
        let reference = layer.forward(input);
        let mixed_values: Vec<f32> = mixed.clone().into_data().to_vec().expect("f32 data");
        let reference_values: Vec<f32> = reference.clone().into_data().to_vec().expect("f32");
        for (a, b) in mixed_values.iter().zip(&reference_values) {
            assert!(
                (a - b).abs() < 1e-6,
                "{mixed_values:?} vs {reference_values:?}"
            );
        }

        let mixed_gradients = mixed.powi_scalar(2).sum().backward();
        let reference_gradients = reference.powi_scalar(2).sum().backward();
        let weight_gradient = layer.weight.grad(&mixed_gradients).expect("gradient");
        assert_eq!(weight_gradient.dtype(), DType::F32);
        let expected = layer.weight.grad(&reference_gradients).expect("gradient");
        weight_gradient
            .into_data()
            .assert_approx_eq::<f32>(&expected.into_data(), Default::default());
        let bias_gradient = layer.bias.as_ref().expect("bias").grad(&mixed_gradients);
        assert_eq!(bias_gradient.expect("gradient").dtype(), DType::F32);
    }

    /// The flattened product gives burn's batched result and the same gradients.
    #[test]
    fn a_batched_input_matches_the_broadcast_linear() {
        let device = Default::default();
        let layer = layer(&device);
        let values: Vec<f32> = (0..12).map(|i| (i as f32 * 0.37).sin()).collect();
        let input =
            Tensor::<TestBackend, 3>::from_data(TensorData::new(values, [2, 2, 3]), &device)
                .require_grad();
        let flattened = linear(&layer, input.clone(), FloatDType::F32);
        let reference = layer.forward(input.clone());
        assert_eq!(flattened.dims(), [2, 2, 2]);
        flattened
            .clone()
            .into_data()
            .assert_approx_eq::<f32>(&reference.clone().into_data(), Default::default());
        let flat_gradients = flattened.powi_scalar(2).sum().backward();
        let reference_gradients = reference.powi_scalar(2).sum().backward();
        let gradient_of =
            |gradients: &<TestBackend as burn::tensor::backend::AutodiffBackend>::Gradients| {
                (
                    layer
                        .weight
                        .grad(gradients)
                        .expect("weight gradient")
                        .into_data(),
                    input.grad(gradients).expect("input gradient").into_data(),
                )
            };
        let (weight, input_gradient) = gradient_of(&flat_gradients);
        let (expected_weight, expected_input) = gradient_of(&reference_gradients);
        weight.assert_approx_eq::<f32>(&expected_weight, Default::default());
        input_gradient.assert_approx_eq::<f32>(&expected_input, Default::default());
    }

    #[test]
    fn f32_mode_does_not_cast() {
        let device = Default::default();
        let tensor = Tensor::<CpuBackend, 1>::ones([3], &device);
        let same = compute(tensor.clone(), Precision::F32.compute_dtype());
        assert_eq!(same.dtype(), DType::F32);
        assert_eq!(full(same).into_data(), tensor.into_data());
    }

    /// The CPU backend (Flex) has bf16 tensors: its products convert bf16 operands to f32,
    /// accumulate in f32 and round the result to bf16, as a CUDA bf16 matmul does.
    #[test]
    fn the_cpu_backend_has_bf16() {
        let device = Default::default();
        assert!(CpuBackend::supports_dtype(&device, DType::BF16));
        let tensor = Tensor::<CpuBackend, 2>::from_floats([[1.0, 1.0 / 3.0]], &device);
        let product = compute(tensor.clone(), FloatDType::BF16)
            .matmul(compute(tensor.transpose(), FloatDType::BF16));
        assert_eq!(product.dtype(), DType::BF16);
        let value: f32 = full(product).into_scalar();
        // 1/3 in bf16 is 0.333984375, so 1 + its square, rounded to bf16 (8 bits of mantissa).
        assert_eq!(value, 1.109375);
    }

    /// A few optimizer steps of a tiny model whose products run in a different dtype than its
    /// parameters: a missing cast would panic here (the CPU backend refuses operands of two
    /// dtypes, where a CUDA matmul would read one as the other), and a gradient or an optimizer
    /// moment in the wrong dtype would panic in the update. In f64 the mixed model must follow
    /// the f32 one step for step (nothing is lost in the casts); in bf16, within bf16's
    /// precision.
    #[test]
    fn mixed_precision_training_follows_f32() {
        use crate::model::{Roberta, RobertaConfig};
        use crate::optim::adamw::{AdamWSettings, TrainingOptimizer};
        use crate::optim::loss::cross_entropy_mean;
        use burn::tensor::Int;

        let _rng = crate::backend_rng_lock();
        let device = Default::default();
        TestBackend::seed(&device, 7);
        for causal in [false, true] {
            let f32_model: Roberta<TestBackend> = RobertaConfig::new(50, 16, 2, 2, 32, 10)
                .with_pad_id(Some(1))
                .with_causal(causal)
                .with_dropout(0.0)
                .with_attention_dropout(0.0)
                .init(&device);
            assert_eq!(f32_model.compute_dtype, FloatDType::F32);
            let f32_losses = train_steps(f32_model.clone(), &device);
            assert!(
                f32_losses.last() < f32_losses.first(),
                "learns: {f32_losses:?}"
            );
            for (compute_dtype, tolerance) in [(FloatDType::F64, 1e-4), (FloatDType::BF16, 2e-2)] {
                let mut mixed_model = f32_model.clone();
                mixed_model.compute_dtype = compute_dtype;
                let mixed_losses = train_steps(mixed_model, &device);
                for (f32_loss, mixed_loss) in f32_losses.iter().zip(&mixed_losses) {
                    assert!(mixed_loss.is_finite());
                    assert!(
                        (f32_loss - mixed_loss).abs() < tolerance,
                        "{compute_dtype:?}: {f32_losses:?} vs {mixed_losses:?}"
                    );
                }
            }
        }

        fn train_steps(mut model: Roberta<TestBackend>, device: &crate::CpuDevice) -> Vec<f32> {
            let ids: Vec<i64> = (0..16).map(|i| 5 + (i * 7 % 40) as i64).collect();
            let targets: Vec<i64> = ids.iter().map(|id| (id * 3) % 50).collect();
            let input_ids =
                Tensor::<TestBackend, 2, Int>::from_data(TensorData::new(ids, [2, 8]), device);
            let positions = Tensor::<TestBackend, 1, Int>::arange(0..16, device);
            let targets =
                Tensor::<TestBackend, 1, Int>::from_data(TensorData::new(targets, [16]), device);
            let weights = Tensor::<TestBackend, 1>::ones([16], device);
            let settings = AdamWSettings {
                beta1: 0.9,
                beta2: 0.98,
                epsilon: 1e-6,
                weight_decay: 0.1,
                max_grad_norm: Some(1.0),
            };
            let mut optimizer =
                TrainingOptimizer::<TestBackend, Roberta<TestBackend>>::new(settings);
            let mut losses = Vec::new();
            for _ in 0..6 {
                let logits = model.forward(input_ids.clone(), positions.clone());
                assert_eq!(logits.dtype(), DType::F32, "the loss reads f32 logits");
                let loss = cross_entropy_mean(logits, targets.clone(), weights.clone(), 16);
                losses.push(loss.clone().into_scalar());
                optimizer.accumulate(&model, loss.backward());
                model = optimizer.step(1e-2, model).0;
            }
            let query = &model.layers[0].attention.query;
            assert_eq!(query.weight.val().dtype(), DType::F32, "master weights");
            losses
        }
    }
}
