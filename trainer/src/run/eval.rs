//! Scoring a model on the valid split: mean cross-entropy over every predicted position, and
//! perplexity as `exp` of it (natural log, as HF reports it).
//!
//! Runs on whatever backend the model lives on; the loop passes the autodiff-free copy
//! (`model.valid()`), which also disables dropout.

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor};
use serde::{Deserialize, Serialize};

use crate::data::collate::LmBatch;
use crate::error::TrainError;
use crate::model::Roberta;
use crate::optim::loss::cross_entropy_sum;

/// Loss over the valid split.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Mean cross-entropy (nats) over all predicted positions of all valid batches.
    pub loss: f64,
    pub perplexity: f64,
    /// Predicted positions scored.
    pub tokens: usize,
}

/// Scores `model` on already collated batches; batches without targets are skipped.
pub fn evaluate<B: Backend>(
    model: &Roberta<B>,
    batches: &[LmBatch],
    device: &B::Device,
) -> Result<Evaluation, TrainError> {
    let mut total: Option<Tensor<B, 1>> = None;
    let mut tokens = 0;
    for batch in batches.iter().filter(|batch| !batch.targets.is_empty()) {
        let tensors = batch.to_tensors::<B>(device);
        let logits = model.forward(tensors.input_ids, tensors.positions);
        let summed = cross_entropy_sum(logits, tensors.targets, tensors.weights);
        total = Some(match total {
            Some(total) => total + summed,
            None => summed,
        });
        tokens += batch.targets.len();
    }
    let Some(total) = total else {
        return Err(TrainError::BadBatch(
            "returned a valid split with nothing to predict; is the pipeline serving a valid fraction?"
                .into(),
        ));
    };
    let loss = read_scalar(total)? / tokens as f64;
    Ok(Evaluation {
        loss,
        perplexity: loss.exp(),
        tokens,
    })
}

pub(crate) fn read_scalar<B: Backend>(tensor: Tensor<B, 1>) -> Result<f64, TrainError> {
    let value = tensor
        .try_into_scalar()
        .map_err(|error| TrainError::Device(error.to_string()))?;
    Ok(value.elem())
}
