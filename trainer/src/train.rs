//! The training loop: pull blocks, collate, forward/backward, accumulate, step, log, evaluate.
//!
//! An optimizer step consumes `grad_accum` micro-batches of `batch_size` blocks. The model is
//! evaluated on the whole valid split before the first step, every `eval_every` steps and after
//! the last one; the valid split is masked once with a fixed seed, so every evaluation scores the
//! same predictions and the numbers are comparable across a run and across runs.

use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use flightlm_shared::{TokenBlocks, TokenizerInfo};

use crate::collate::{Collator, LmBatch};
use crate::config::{TrainConfig, EVAL_MASKING_SEED};
use crate::error::TrainError;
use crate::eval::{evaluate, read_scalar, Evaluation};
use crate::loss::cross_entropy_mean;
use crate::metrics::{Metric, MetricsLog};
use crate::model::{Roberta, RobertaConfig};
use crate::optimizer::{AdamWSettings, TrainingOptimizer};
use crate::schedule::LinearSchedule;
use crate::source::BlockSource;

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct TrainSummary<B: AutodiffBackend> {
    pub model: Roberta<B>,
    pub steps: usize,
    pub first_eval: Evaluation,
    pub last_eval: Evaluation,
    pub train_tokens: usize,
}

/// Checks that a batch from the source has the shape the run was configured for.
fn check_blocks(
    blocks: &TokenBlocks,
    config: &TrainConfig,
    vocab_size: u32,
) -> Result<(), TrainError> {
    if blocks.seq_len != config.seq_len {
        return Err(TrainError::BadBatch(format!(
            "sent blocks of {} tokens, the run expects {}",
            blocks.seq_len, config.seq_len
        )));
    }
    if blocks.rows() == 0 || blocks.ids.len() != blocks.rows() * blocks.seq_len {
        return Err(TrainError::BadBatch(format!(
            "sent a malformed batch ({} rows, {} ids)",
            blocks.rows(),
            blocks.ids.len()
        )));
    }
    if let Some(id) = blocks.ids.iter().find(|id| **id >= vocab_size) {
        return Err(TrainError::BadBatch(format!(
            "sent token id {id}, outside the tokenizer's vocabulary of {vocab_size}"
        )));
    }
    Ok(())
}

fn check_tokenizer(tokenizer: &TokenizerInfo) -> Result<(), TrainError> {
    let largest_special = tokenizer.special_ids().into_iter().max().unwrap_or(0);
    if tokenizer.vocab_size <= largest_special {
        return Err(TrainError::BadBatch(format!(
            "describes a tokenizer of {} ids whose special ids go up to {largest_special}",
            tokenizer.vocab_size
        )));
    }
    Ok(())
}

/// Throughput bookkeeping between two `train` lines.
struct Window<B: Backend> {
    started: Instant,
    waited_at_start: f64,
    /// Seconds spent evaluating inside the window, not counted as training time.
    excluded: f64,
    tokens: usize,
    /// Sum of micro-batch losses, kept on the device so logging costs one read per window.
    loss_sum: Option<Tensor<B, 1>>,
    losses: usize,
}

impl<B: Backend> Window<B> {
    fn open(source: &dyn BlockSource) -> Self {
        Window {
            started: Instant::now(),
            waited_at_start: source.seconds_waited(),
            excluded: 0.0,
            tokens: 0,
            loss_sum: None,
            losses: 0,
        }
    }
}

/// Trains a fresh model as `config` says, reading blocks from `source` and writing metrics to
/// `metrics`. Returns the trained model and the first and last evaluations.
pub fn train<B: AutodiffBackend>(
    config: &TrainConfig,
    source: &mut dyn BlockSource,
    device: &B::Device,
    metrics: &mut MetricsLog,
) -> Result<TrainSummary<B>, TrainError> {
    config.validate()?;
    let tokenizer = source.tokenizer().clone();
    check_tokenizer(&tokenizer)?;
    let run_started = Instant::now();

    B::seed(device, config.seed);
    let model_config = RobertaConfig::from_train_config(config, &tokenizer);
    let mut model: Roberta<B> = model_config.init(device);
    if let Some(dir) = &config.init_from {
        model = crate::hf::warm_start(model, &model_config, dir)?;
    }
    let mut optimizer =
        TrainingOptimizer::<B, Roberta<B>>::new(AdamWSettings::from_train_config(config));
    let schedule = LinearSchedule::new(config.lr, config.warmup_steps, config.max_steps);
    let collator = Collator::new(config.objective, &tokenizer, config.mlm_probability);

    let valid_blocks = source.valid_batches().map_err(TrainError::Source)?;
    let mut valid = Vec::with_capacity(valid_blocks.len());
    for (index, blocks) in valid_blocks.iter().enumerate() {
        check_blocks(blocks, config, tokenizer.vocab_size)?;
        valid.push(collator.collate(blocks, EVAL_MASKING_SEED, index as u64));
    }
    drop(valid_blocks);

    metrics.record(Metric::Start {
        objective: config.objective,
        preset: config.preset,
        device: config.device,
        parameters: model.num_params(),
        vocab_size: tokenizer.vocab_size,
        seq_len: config.seq_len,
        batch_size: config.batch_size,
        grad_accum: config.grad_accum,
        max_steps: config.max_steps,
        valid_batches: valid.len(),
    })?;
    let first_eval = evaluate_and_record(&model, &valid, device, 0, metrics)?;
    let mut last_eval = first_eval;
    let mut best_perplexity = first_eval.perplexity;

    let mut train_tokens = 0;
    let mut window = Window::<B::InnerBackend>::open(source);
    for step in 0..config.max_steps {
        for micro_batch in 0..config.grad_accum {
            let blocks = source.next_train_batch().map_err(TrainError::Source)?;
            check_blocks(&blocks, config, tokenizer.vocab_size)?;
            let stream = (step * config.grad_accum + micro_batch) as u64;
            let batch = collator.collate(&blocks, config.seed, stream);
            window.tokens += batch.input_tokens();
            train_tokens += batch.input_tokens();
            if batch.targets.is_empty() {
                continue; // nothing chosen to predict: contributes no gradient, as in HF
            }
            let tensors = batch.to_tensors::<B>(device);
            let logits = model.forward(tensors.input_ids, tensors.positions);
            let loss = cross_entropy_mean(logits, tensors.targets, tensors.weights, tensors.count);
            let gradients = loss.backward();
            optimizer.accumulate(&model, gradients);
            let loss = loss.inner();
            window.loss_sum = Some(match window.loss_sum.take() {
                Some(sum) => sum + loss,
                None => loss,
            });
            window.losses += 1;
        }
        let lr = schedule.lr(step);
        let (updated, report) = optimizer.step(lr, model)?;
        model = updated;
        let completed = step + 1;
        let last = completed == config.max_steps;

        if completed % config.log_every == 0 || last {
            let seconds = (window.started.elapsed().as_secs_f64() - window.excluded).max(1e-9);
            let loss = match window.loss_sum.take() {
                Some(sum) => read_scalar(sum)? / window.losses as f64,
                None => f64::NAN,
            };
            if !loss.is_finite() && window.losses > 0 {
                return Err(TrainError::Diverged {
                    step: completed,
                    loss,
                });
            }
            let waited = source.seconds_waited() - window.waited_at_start;
            metrics.record(Metric::Train {
                step: completed,
                loss,
                perplexity: loss.exp(),
                lr,
                tokens_per_s: window.tokens as f64 / seconds,
                data_wait: (waited / seconds).clamp(0.0, 1.0),
                grad_norm: report.grad_norm,
                elapsed_s: run_started.elapsed().as_secs_f64(),
            })?;
            window = Window::open(source);
        }
        if completed % config.eval_every == 0 || last {
            let started = Instant::now();
            last_eval = evaluate_and_record(&model, &valid, device, completed, metrics)?;
            best_perplexity = best_perplexity.min(last_eval.perplexity);
            window.excluded += started.elapsed().as_secs_f64();
        }
    }

    metrics.record(Metric::Done {
        steps: config.max_steps,
        first_eval_loss: first_eval.loss,
        first_eval_perplexity: first_eval.perplexity,
        last_eval_loss: last_eval.loss,
        last_eval_perplexity: last_eval.perplexity,
        best_eval_perplexity: best_perplexity,
        train_tokens,
        elapsed_s: run_started.elapsed().as_secs_f64(),
    })?;
    Ok(TrainSummary {
        model,
        steps: config.max_steps,
        first_eval,
        last_eval,
        train_tokens,
    })
}

/// Evaluates without autodiff (and so without dropout) and records the result.
fn evaluate_and_record<B: AutodiffBackend>(
    model: &Roberta<B>,
    valid: &[LmBatch],
    device: &B::Device,
    step: usize,
    metrics: &mut MetricsLog,
) -> Result<Evaluation, TrainError> {
    let started = Instant::now();
    let evaluation = evaluate(&model.valid(), valid, device)?;
    metrics.record(Metric::Eval {
        step,
        eval_loss: evaluation.loss,
        eval_perplexity: evaluation.perplexity,
        eval_tokens: evaluation.tokens,
        eval_seconds: started.elapsed().as_secs_f64(),
    })?;
    Ok(evaluation)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;
    use crate::synthetic::{SyntheticConfig, SyntheticSource};
    use burn::backend::{Autodiff, NdArray};

    type TestBackend = Autodiff<NdArray<f32>>;

    fn tiny_config(max_steps: usize) -> TrainConfig {
        let mut config = TrainConfig::new("memory", "unused", Preset::Tiny);
        config.model.layers = 2;
        config.model.hidden = 64;
        config.model.heads = 2;
        config.model.intermediate = 128;
        config.seq_len = 32;
        config.batch_size = 8;
        config.grad_accum = 2;
        config.lr = 2e-3;
        config.warmup_steps = 5;
        config.max_steps = max_steps;
        config.log_every = 10;
        config.eval_every = 20;
        config
    }

    #[test]
    fn a_few_steps_lower_the_loss_clearly() {
        let _rng = crate::backend_rng_lock();
        let config = tiny_config(40);
        let mut source = SyntheticSource::new(SyntheticConfig {
            words: 64,
            ..SyntheticConfig::new(512, 32, 8)
        });
        let mut metrics = MetricsLog::in_memory();
        let device = Default::default();
        let summary =
            train::<TestBackend>(&config, &mut source, &device, &mut metrics).expect("trains");

        let first = summary.first_eval;
        let last = summary.last_eval;
        assert!(
            (first.loss - (512f64).ln()).abs() < 0.5,
            "an untrained model is close to uniform: {first:?}"
        );
        assert!(
            last.perplexity * 3.0 < first.perplexity,
            "perplexity {} -> {}",
            first.perplexity,
            last.perplexity
        );
        assert_eq!(summary.train_tokens, 40 * 2 * 8 * 32);

        let kinds: Vec<&str> = metrics
            .records()
            .iter()
            .map(|metric| match metric {
                Metric::Start { .. } => "start",
                Metric::Eval { .. } => "eval",
                Metric::Train { .. } => "train",
                Metric::Done { .. } => "done",
            })
            .collect();
        assert_eq!(kinds.first(), Some(&"start"));
        assert_eq!(kinds.last(), Some(&"done"));
        assert_eq!(kinds.iter().filter(|kind| **kind == "train").count(), 4);
        // Before the first step, at step 20, at step 40.
        assert_eq!(kinds.iter().filter(|kind| **kind == "eval").count(), 3);
        for metric in metrics.records() {
            if let Metric::Train {
                tokens_per_s,
                data_wait,
                lr,
                ..
            } = metric
            {
                assert!(*tokens_per_s > 0.0);
                assert!((0.0..=1.0).contains(data_wait));
                assert!(*lr <= config.lr);
            }
        }
    }

    #[test]
    fn the_causal_objective_trains_too() {
        let _rng = crate::backend_rng_lock();
        let mut config = tiny_config(20);
        config.objective = crate::config::Objective::Causal;
        let mut source = SyntheticSource::new(SyntheticConfig {
            words: 64,
            ..SyntheticConfig::new(512, 32, 8)
        });
        let mut metrics = MetricsLog::in_memory();
        let summary = train::<TestBackend>(&config, &mut source, &Default::default(), &mut metrics)
            .expect("trains");
        assert!(
            summary.last_eval.perplexity * 3.0 < summary.first_eval.perplexity,
            "{:?} -> {:?}",
            summary.first_eval,
            summary.last_eval
        );
    }

    #[test]
    fn evaluation_is_reproducible() {
        let _rng = crate::backend_rng_lock();
        let config = tiny_config(1);
        let device = Default::default();
        let run = || {
            let mut source = SyntheticSource::new(SyntheticConfig::new(256, 32, 8));
            let mut metrics = MetricsLog::in_memory();
            train::<TestBackend>(&config, &mut source, &device, &mut metrics)
                .expect("trains")
                .first_eval
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn rejects_blocks_of_the_wrong_length() {
        let _rng = crate::backend_rng_lock();
        let config = tiny_config(1);
        let mut source = SyntheticSource::new(SyntheticConfig::new(256, 16, 8));
        let mut metrics = MetricsLog::in_memory();
        let error = train::<TestBackend>(&config, &mut source, &Default::default(), &mut metrics)
            .expect_err("seq_len mismatch");
        assert!(error.to_string().contains("16 tokens"), "{error}");
    }
}
