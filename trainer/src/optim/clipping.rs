//! Averaging of accumulated gradients and `torch.nn.utils.clip_grad_norm_`'s global-norm
//! clipping, computed on the device.
//!
//! The norm and the clip factor stay tensors: reading the norm back every step would make the
//! host wait for the backward pass before it can queue the optimizer's kernels, a sync per step
//! that PyTorch's `clip_grad_norm_` does not have either. The trainer reads the norm only where
//! it logs or saves (see [`GradientNorm::read`]).

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};

use crate::error::TrainError;

/// Global L2 norm of one step's averaged gradients, before clipping, still on the device.
#[derive(Clone, Debug)]
pub struct GradientNorm<B: Backend>(Tensor<B, 1>);

impl<B: Backend> GradientNorm<B> {
    /// Reads the norm back (one device sync). A non-finite norm is an error: a NaN gradient
    /// turns every later step's norm into NaN too, so a check at each log and checkpoint stops
    /// the run before a damaged model is saved.
    pub fn read(self) -> Result<f64, TrainError> {
        let norm: f64 = self
            .0
            .try_into_scalar()
            .map_err(|error| TrainError::Device(error.to_string()))?
            .elem();
        if norm.is_finite() {
            Ok(norm)
        } else {
            Err(TrainError::NonFiniteGradients(norm))
        }
    }

    /// Reads a norm not read yet, leaving `None` behind, so a step's norm is read at most once.
    pub fn read_pending(pending: &mut Option<Self>) -> Result<Option<f64>, TrainError> {
        pending.take().map(Self::read).transpose()
    }
}

/// Divides the summed gradients by `divisor` (the micro-batch count when each micro-batch loss
/// is a mean, the step's predicted tokens when it is a sum) and, with `max_norm`, scales them
/// all by `min(1, max_norm / (norm + 1e-6))` as `clip_grad_norm_` does. Returns the norm of the
/// averaged gradients when clipping.
pub fn average_and_clip<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    gradients: &mut GradientsParams,
    divisor: f64,
    max_norm: Option<f64>,
) -> Option<GradientNorm<B::InnerBackend>> {
    let average = 1.0 / divisor;
    let norm = max_norm
        .and_then(|_| global_norm::<B, M>(model, gradients))
        .map(|norm| norm.mul_scalar(average));
    let factor = match (&norm, max_norm) {
        (Some(norm), Some(max_norm)) => {
            let clip = norm.clone().add_scalar(1e-6).recip().mul_scalar(max_norm);
            Factor::Device(clip.clamp_max(1.0).mul_scalar(average))
        }
        _ if divisor != 1.0 => Factor::Host(average),
        _ => return None,
    };
    model.visit(&mut ScaleGradients { gradients, factor });
    norm.map(GradientNorm)
}

/// L2 norm of all gradients together, as a one-element tensor.
fn global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    model: &M,
    gradients: &GradientsParams,
) -> Option<Tensor<B::InnerBackend, 1>> {
    let mut visitor = SquaredNorm::<B> {
        gradients,
        total: None,
    };
    model.visit(&mut visitor);
    visitor.total.map(Tensor::sqrt)
}

struct SquaredNorm<'a, B: AutodiffBackend> {
    gradients: &'a GradientsParams,
    total: Option<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(gradient) = self.gradients.get::<B::InnerBackend, D>(param.id) {
            let squared = gradient.square().sum();
            self.total = Some(match self.total.take() {
                Some(total) => total + squared,
                None => squared,
            });
        }
    }
}

enum Factor<B: Backend> {
    Host(f64),
    Device(Tensor<B, 1>),
}

struct ScaleGradients<'a, B: Backend> {
    gradients: &'a mut GradientsParams,
    factor: Factor<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for ScaleGradients<'_, B::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(gradient) = self.gradients.remove::<B::InnerBackend, D>(param.id) {
            let scaled = match &self.factor {
                Factor::Host(factor) => gradient.mul_scalar(*factor),
                Factor::Device(factor) => gradient * factor.clone().reshape([1; D]),
            };
            self.gradients
                .register::<B::InnerBackend, D>(param.id, scaled);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuBackend;
    use burn::backend::Autodiff;
    use burn::nn::{Linear, LinearConfig};

    type TestBackend = Autodiff<CpuBackend>;

    /// The gradients of `sum(weight) * 2` (each weight's gradient is 2; the bias gets none)
    /// summed over two micro-batches.
    fn summed_gradients(model: &Linear<TestBackend>) -> GradientsParams {
        let once = model.weight.val().sum().mul_scalar(2.0).backward();
        let mut gradients = GradientsParams::from_grads(once, model);
        let weight = gradients
            .remove::<CpuBackend, 2>(model.weight.id)
            .expect("weight gradient");
        gradients.register::<CpuBackend, 2>(model.weight.id, weight.mul_scalar(2.0));
        gradients
    }

    fn weight_gradient(model: &Linear<TestBackend>, gradients: &GradientsParams) -> Vec<f32> {
        let gradient = gradients
            .get::<CpuBackend, 2>(model.weight.id)
            .expect("weight gradient");
        gradient.into_data().to_vec().expect("f32 data")
    }

    fn clipped(max_norm: Option<f64>) -> (Vec<f32>, Option<f64>) {
        let device = Default::default();
        let model: Linear<TestBackend> = LinearConfig::new(2, 2).init(&device);
        let mut gradients = summed_gradients(&model);
        let norm = average_and_clip::<TestBackend, _>(&model, &mut gradients, 2.0, max_norm);
        let norm = norm.map(|norm| norm.read().expect("finite"));
        (weight_gradient(&model, &gradients), norm)
    }

    #[test]
    fn averages_and_leaves_gradients_under_the_limit_alone() {
        // Averaged gradient 2 on each of 4 weights: norm 4.
        let (gradient, norm) = clipped(Some(1000.0));
        assert!((norm.expect("clipping computes the norm") - 4.0).abs() < 1e-5);
        assert!(
            gradient.iter().all(|value| (value - 2.0).abs() < 1e-6),
            "{gradient:?}"
        );
        let (gradient, norm) = clipped(None);
        assert_eq!(norm, None);
        assert!(
            gradient.iter().all(|value| (value - 2.0).abs() < 1e-6),
            "{gradient:?}"
        );
    }

    #[test]
    fn scales_gradients_over_the_limit_to_it() {
        let (gradient, norm) = clipped(Some(1.0));
        assert!((norm.expect("norm") - 4.0).abs() < 1e-5);
        let expected = 2.0 * 1.0 / (4.0 + 1e-6);
        assert!(
            gradient
                .iter()
                .all(|value| (f64::from(*value) - expected).abs() < 1e-6),
            "{gradient:?}"
        );
        let total: f64 = gradient.iter().map(|value| f64::from(*value).powi(2)).sum();
        assert!(
            (total.sqrt() - 1.0).abs() < 1e-5,
            "clipped to norm 1: {total}"
        );
    }

    #[test]
    fn a_non_finite_norm_is_an_error_when_read() {
        let device = Default::default();
        let norm = GradientNorm(Tensor::<CpuBackend, 1>::from_floats([f32::NAN], &device));
        assert!(
            matches!(norm.read(), Err(TrainError::NonFiniteGradients(value)) if value.is_nan())
        );
    }
}
