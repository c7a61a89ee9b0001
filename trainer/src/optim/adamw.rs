//! AdamW as a `transformers` `Trainer` applies it: gradients averaged over the accumulated
//! micro-batches (or over the step's predicted tokens), clipped by their global norm, then one
//! decoupled-weight-decay Adam update.
//!
//! Three things burn does differently by default, and why this wrapper exists:
//! - `GradientsAccumulator` sums micro-batch gradients; HF averages them (it divides each
//!   micro-batch loss by the accumulation count, or every token loss by the step's token count
//!   since transformers 4.46). We divide once, at the step.
//! - `GradientClippingConfig::Norm` clips every tensor by its own norm; `clip_grad_norm_` scales
//!   all gradients by one factor computed from the norm of their concatenation.
//! - burn's AdamW decays every parameter; HF's `Trainer` exempts biases and LayerNorm weights.
//!   Those are exactly the rank-1 parameters, so two AdamW instances share the step: one with
//!   weight decay for matrices, one without for vectors.

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsAccumulator, GradientsParams, Optimizer};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;

use crate::config::TrainConfig;
use crate::error::TrainError;
use crate::optim::clipping::{average_and_clip, GradientNorm};

/// AdamW hyper-parameters (PyTorch semantics: `eps` is added to `sqrt(v_hat)`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWSettings {
    pub beta1: f64,
    pub beta2: f64,
    pub epsilon: f64,
    pub weight_decay: f64,
    pub max_grad_norm: Option<f64>,
}

impl AdamWSettings {
    pub fn from_train_config(config: &TrainConfig) -> Self {
        AdamWSettings {
            beta1: config.adam_beta1,
            beta2: config.adam_beta2,
            epsilon: config.adam_epsilon,
            weight_decay: config.weight_decay,
            max_grad_norm: config.max_grad_norm,
        }
    }

    fn adamw(&self, weight_decay: f64) -> AdamWConfig {
        AdamWConfig::new()
            .with_beta_1(self.beta1 as f32)
            .with_beta_2(self.beta2 as f32)
            .with_epsilon(self.epsilon as f32)
            .with_weight_decay(weight_decay as f32)
    }
}

pub struct TrainingOptimizer<B: AutodiffBackend, M: AutodiffModule<B>> {
    decayed: OptimizerAdaptor<AdamW, M, B>,
    not_decayed: OptimizerAdaptor<AdamW, M, B>,
    accumulator: GradientsAccumulator<M>,
    micro_batches: usize,
    max_grad_norm: Option<f64>,
}

/// The AdamW state of both parameter groups (moments and step count per parameter, keyed by the
/// parameter's id), for checkpoints: `(decayed, not decayed)`.
pub type OptimizerRecord<B, M> = (AdamWRecord<B, M>, AdamWRecord<B, M>);

type AdamWRecord<B, M> = <OptimizerAdaptor<AdamW, M, B> as Optimizer<M, B>>::Record;

/// What one optimizer step did.
#[derive(Clone, Debug)]
pub struct StepReport<B: Backend> {
    /// Global L2 norm of the averaged gradients before clipping; computed only when clipping.
    pub grad_norm: Option<GradientNorm<B>>,
}

impl<B: AutodiffBackend, M: AutodiffModule<B>> TrainingOptimizer<B, M> {
    pub fn new(settings: AdamWSettings) -> Self {
        TrainingOptimizer {
            decayed: settings.adamw(settings.weight_decay).init(),
            not_decayed: settings.adamw(0.0).init(),
            accumulator: GradientsAccumulator::new(),
            micro_batches: 0,
            max_grad_norm: settings.max_grad_norm,
        }
    }

    /// Adds the gradients of one micro-batch's loss.
    pub fn accumulate(&mut self, model: &M, gradients: B::Gradients) {
        let gradients = GradientsParams::from_grads(gradients, model);
        self.accumulator.accumulate(model, gradients);
        self.micro_batches += 1;
    }

    /// The optimizer's state between steps. Gradients still being accumulated are not part of
    /// it: checkpoints are taken right after a step, when there are none.
    pub fn to_record(&self) -> OptimizerRecord<B, M> {
        (self.decayed.to_record(), self.not_decayed.to_record())
    }

    /// Continues from a state [`Self::to_record`] returned.
    pub fn load_record(self, record: OptimizerRecord<B, M>) -> Self {
        let (decayed, not_decayed) = record;
        TrainingOptimizer {
            decayed: self.decayed.load_record(decayed),
            not_decayed: self.not_decayed.load_record(not_decayed),
            ..self
        }
    }

    /// Micro-batches accumulated since the last step.
    pub fn pending(&self) -> usize {
        self.micro_batches
    }

    /// Averages, clips and applies the accumulated gradients with learning rate `lr`, each
    /// micro-batch's gradient being that of its mean loss. Without accumulated gradients the
    /// model is returned unchanged.
    pub fn step(&mut self, lr: f64, model: M) -> (M, StepReport<B::InnerBackend>) {
        let micro_batches = std::mem::take(&mut self.micro_batches);
        let gradients = self.accumulator.grads();
        if micro_batches == 0 {
            return (model, StepReport { grad_norm: None });
        }
        self.apply(lr, model, gradients, micro_batches as f64)
    }

    /// Applies the accumulated gradients after `combine` has made them the step's whole
    /// gradient sum (over the ranks of a data-parallel run; every rank calls it, even one that
    /// accumulated nothing), divided by `divisor`: the step's predicted tokens when each
    /// micro-batch's gradient is that of its loss sum. A step with nothing to divide by leaves
    /// the model unchanged.
    pub fn step_with<F>(
        &mut self,
        lr: f64,
        model: M,
        divisor: f64,
        combine: F,
    ) -> Result<(M, StepReport<B::InnerBackend>), TrainError>
    where
        F: FnOnce(&M, GradientsParams) -> Result<GradientsParams, TrainError>,
    {
        self.micro_batches = 0;
        let gradients = combine(&model, self.accumulator.grads())?;
        if divisor <= 0.0 {
            return Ok((model, StepReport { grad_norm: None }));
        }
        Ok(self.apply(lr, model, gradients, divisor))
    }

    fn apply(
        &mut self,
        lr: f64,
        model: M,
        mut gradients: GradientsParams,
        divisor: f64,
    ) -> (M, StepReport<B::InnerBackend>) {
        let grad_norm =
            average_and_clip::<B, M>(&model, &mut gradients, divisor, self.max_grad_norm);
        let mut vectors = SplitVectors {
            gradients: &mut gradients,
            vectors: GradientsParams::new(),
        };
        model.visit(&mut vectors);
        let vectors = vectors.vectors;
        let model = self.decayed.step(lr, model, gradients);
        let model = self.not_decayed.step(lr, model, vectors);
        (model, StepReport { grad_norm })
    }
}

/// Moves the gradients of rank-1 parameters (biases, LayerNorm scales and shifts) aside.
struct SplitVectors<'a> {
    gradients: &'a mut GradientsParams,
    vectors: GradientsParams,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SplitVectors<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if D != 1 {
            return;
        }
        if let Some(gradient) = self.gradients.remove::<B::InnerBackend, D>(param.id) {
            self.vectors
                .register::<B::InnerBackend, D>(param.id, gradient);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuBackend;
    use burn::backend::Autodiff;
    use burn::nn::{Linear, LinearConfig};
    use burn::tensor::TensorData;

    type TestBackend = Autodiff<CpuBackend>;

    fn settings(max_grad_norm: Option<f64>) -> AdamWSettings {
        AdamWSettings {
            beta1: 0.9,
            beta2: 0.98,
            epsilon: 1e-6,
            weight_decay: 0.0,
            max_grad_norm,
        }
    }

    fn values(tensor: Tensor<CpuBackend, 2>) -> Vec<f32> {
        tensor.into_data().to_vec().expect("f32 data")
    }

    /// Loss whose gradient with respect to every weight is `scale` (sum of weights times scale).
    fn gradients(
        model: &Linear<TestBackend>,
        scale: f32,
    ) -> <TestBackend as AutodiffBackend>::Gradients {
        model.weight.val().sum().mul_scalar(scale).backward()
    }

    #[test]
    fn accumulation_averages_and_clipping_uses_the_global_norm() {
        let _rng = crate::backend_rng_lock();
        let device = Default::default();
        let model: Linear<TestBackend> = LinearConfig::new(2, 2).init(&device);
        let mut optimizer =
            TrainingOptimizer::<TestBackend, Linear<TestBackend>>::new(settings(Some(1000.0)));
        optimizer.accumulate(&model, gradients(&model, 1.0));
        optimizer.accumulate(&model, gradients(&model, 3.0));
        assert_eq!(optimizer.pending(), 2);
        let (_, report) = optimizer.step(0.0, model);
        // Averaged gradient is 2 for each of the 4 weights (the bias gets none): norm 4.
        let norm = report.grad_norm.expect("clipping computes the norm");
        let norm = norm.read().expect("finite");
        assert!((norm - 4.0).abs() < 1e-5, "{norm}");
        assert_eq!(optimizer.pending(), 0);
    }

    #[test]
    fn weight_decay_spares_vectors() {
        let _rng = crate::backend_rng_lock();
        let device = Default::default();
        let mut model: Linear<TestBackend> = LinearConfig::new(2, 2).init(&device);
        model.weight = Param::from_tensor(Tensor::from_data(
            TensorData::new(vec![1.0f32; 4], [2, 2]),
            &device,
        ));
        model.bias = Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(vec![1.0f32; 2], [2]),
            &device,
        )));
        let mut settings = settings(None);
        settings.weight_decay = 0.5;
        let mut optimizer = TrainingOptimizer::<TestBackend, Linear<TestBackend>>::new(settings);
        // Zero gradients for every parameter: only weight decay can move them.
        let input = Tensor::<TestBackend, 2>::zeros([1, 2], &device);
        let loss = model.forward(input).sum().mul_scalar(0.0);
        optimizer.accumulate(&model, loss.backward());
        let (model, _) = optimizer.step(0.1, model);
        let model = model.valid();
        assert!(values(model.weight.val())
            .iter()
            .all(|v| (v - 0.95).abs() < 1e-6));
        let bias: Vec<f32> = model
            .bias
            .expect("bias")
            .val()
            .into_data()
            .to_vec()
            .expect("f32 data");
        assert!(bias.iter().all(|v| (v - 1.0).abs() < 1e-6));
    }
}
