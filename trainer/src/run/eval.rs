//! Scoring a model on the valid split: mean cross-entropy over every predicted position, and
//! perplexity as `exp` of it (natural log, as HF reports it).
//!
//! Runs on whatever backend the model lives on; the loop passes the autodiff-free copy
//! (`model.valid()`), which also disables dropout.

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor};
use serde::{Deserialize, Serialize};

use std::time::Instant;

use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use flightlm_shared::TokenBlocks;

use crate::config::{TrainConfig, EVAL_MASKING_SEED};
use crate::data::collate::{Collator, LmBatch};
use crate::data::source::{check_blocks, BlockSource};
use crate::error::TrainError;
use crate::model::Roberta;
use crate::optim::loss::cross_entropy_tokens;
use crate::optim::source_loss::{BatchSourceLoss, SourceLosses};
use crate::run::metrics::{Metric, MetricsLog};

/// Loss over the valid split.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Mean cross-entropy (nats) over all predicted positions of all valid batches.
    pub loss: f64,
    pub perplexity: f64,
    /// Predicted positions scored.
    pub tokens: usize,
}

impl Evaluation {
    /// What a rank that does not evaluate (every rank but 0 of a data-parallel run) holds.
    pub fn not_taken() -> Self {
        Evaluation {
            loss: f64::NAN,
            perplexity: f64::NAN,
            tokens: 0,
        }
    }
}

/// Scores `model` on already collated batches; batches without targets are skipped. Also
/// gives the loss sums of each source the batches' blocks name.
pub fn evaluate<B: Backend>(
    model: &Roberta<B>,
    batches: &[LmBatch],
    device: &B::Device,
) -> Result<(Evaluation, SourceLosses), TrainError> {
    let mut total: Option<Tensor<B, 1>> = None;
    let mut tokens = 0;
    let mut by_source = Vec::new();
    for batch in batches.iter().filter(|batch| !batch.targets.is_empty()) {
        let tensors = batch.to_tensors::<B>(device);
        let logits =
            model.forward_documents(tensors.input_ids, tensors.positions, tensors.documents);
        let token_losses = cross_entropy_tokens(logits, tensors.targets, tensors.weights);
        by_source.extend(BatchSourceLoss::of(token_losses.clone(), batch));
        let summed = token_losses.sum();
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
    let mut sources = SourceLosses::default();
    for batch in by_source {
        sources.add_batch(batch)?;
    }
    let evaluation = Evaluation {
        loss,
        perplexity: loss.exp(),
        tokens,
    };
    Ok((evaluation, sources))
}

/// The valid split, collated once with the evaluation seed, and its block count.
pub(crate) fn read_valid(
    config: &TrainConfig,
    source: &mut dyn BlockSource,
    collator: &Collator,
    vocab_size: u32,
) -> Result<(Vec<LmBatch>, usize), TrainError> {
    let valid_blocks = source
        .valid_batches(config.eval_block_limit())
        .map_err(TrainError::Source)?;
    let mut valid = Vec::with_capacity(valid_blocks.len());
    for (index, blocks) in valid_blocks.iter().enumerate() {
        check_blocks(blocks, config, vocab_size)?;
        valid.push(collator.collate(blocks, EVAL_MASKING_SEED, index as u64));
    }
    Ok((valid, valid_blocks.iter().map(TokenBlocks::rows).sum()))
}

/// Evaluates without autodiff (and so without dropout) and records the result.
pub(crate) fn evaluate_and_record<B: AutodiffBackend>(
    model: &Roberta<B>,
    valid: &[LmBatch],
    device: &B::Device,
    step: usize,
    metrics: &mut MetricsLog,
) -> Result<Evaluation, TrainError> {
    let started = Instant::now();
    let (evaluation, sources) = evaluate(&model.valid(), valid, device)?;
    metrics.record(Metric::Eval {
        step,
        eval_loss: evaluation.loss,
        eval_perplexity: evaluation.perplexity,
        eval_tokens: evaluation.tokens,
        eval_seconds: started.elapsed().as_secs_f64(),
        eval_loss_by_source: sources.means(),
    })?;
    Ok(evaluation)
}

/// The values of a small tensor, as f64.
pub(crate) fn read_floats<B: Backend>(tensor: Tensor<B, 1>) -> Result<Vec<f64>, TrainError> {
    let data = tensor.into_data().convert::<f64>();
    data.to_vec::<f64>()
        .map_err(|error| TrainError::Device(format!("{error:?}")))
}

pub(crate) fn read_scalar<B: Backend>(tensor: Tensor<B, 1>) -> Result<f64, TrainError> {
    let value = tensor
        .try_into_scalar()
        .map_err(|error| TrainError::Device(error.to_string()))?;
    Ok(value.elem())
}
