//! GELU with the exact (erf) gradient.
//!
//! burn's `gelu` computes the erf form in the forward pass but differentiates the tanh
//! approximation in the backward pass. HF RoBERTa (`hidden_act="gelu"`) trains with the exact
//! derivative, so the function is written out here and autodiff differentiates `erf` itself
//! (`d/dx erf(x) = 2/sqrt(pi) * exp(-x^2)`); on the CPU backend this is also cheaper, as it needs
//! neither `powf` nor `tanh`.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// `x * (1 + erf(x / sqrt(2))) / 2`
pub fn gelu<B: Backend, const D: usize>(input: Tensor<B, D>) -> Tensor<B, D> {
    let cumulative = input
        .clone()
        .mul_scalar(std::f64::consts::FRAC_1_SQRT_2)
        .erf()
        .add_scalar(1.0);
    input.mul(cumulative).mul_scalar(0.5)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuBackend;
    use burn::backend::Autodiff;
    use burn::tensor::TensorData;

    type TestBackend = Autodiff<CpuBackend>;

    #[test]
    fn value_and_gradient_match_the_exact_gelu() {
        let device = Default::default();
        let points = [-3.0f64, -1.0, -0.5, 0.0, 0.3, 1.0, 2.5];
        let data: Vec<f32> = points.iter().map(|x| *x as f32).collect();
        let input =
            Tensor::<TestBackend, 1>::from_data(TensorData::new(data, [points.len()]), &device)
                .require_grad();
        let output = gelu(input.clone());
        let gradients = output.clone().sum().backward();
        let values: Vec<f32> = output.into_data().to_vec().expect("f32 data");
        let slopes: Vec<f32> = input
            .grad(&gradients)
            .expect("gradient")
            .into_data()
            .to_vec()
            .expect("f32 data");
        let normal_cdf = |x: f64| 0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2));
        let normal_pdf = |x: f64| (-x * x / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
        for (index, x) in points.iter().enumerate() {
            let value = x * normal_cdf(*x);
            let slope = normal_cdf(*x) + x * normal_pdf(*x);
            assert!((f64::from(values[index]) - value).abs() < 1e-5, "gelu({x})");
            assert!(
                (f64::from(slopes[index]) - slope).abs() < 1e-5,
                "gelu'({x})"
            );
        }
    }

    /// Abramowitz-Stegun 7.1.26 is too coarse for 1e-5; integrate the series instead.
    fn erf(x: f64) -> f64 {
        let mut term = x;
        let mut sum = x;
        for n in 1..80 {
            term *= -x * x / n as f64;
            sum += term / (2 * n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }
}
