//! The training loop: pull blocks, collate, forward/backward, accumulate, step, log, evaluate,
//! checkpoint.
//!
//! An optimizer step consumes `grad_accum` micro-batches of `batch_size` blocks. The model is
//! evaluated on the whole valid split before the first step, every `eval_every` steps and after
//! the last one; the valid split is masked once with a fixed seed, so every evaluation scores the
//! same predictions and the numbers are comparable across a run and across runs.
//!
//! Every random draw of a step is a function of `(seed, step)`: masking streams are numbered by
//! micro-batch and the backend generator (dropout) is reseeded before each step. A run resumed
//! from a checkpoint therefore computes exactly the steps the uninterrupted run computes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::AutodiffBackend;
use flightlm_shared::{TokenBlocks, TokenizerInfo};

use crate::config::{DeviceKind, TrainConfig, EVAL_MASKING_SEED};
use crate::data::collate::{Collator, LmBatch};
use crate::data::source::{check_blocks, check_tokenizer, BlockSource};
use crate::error::TrainError;
use crate::hf::HfRobertaConfig;
use crate::model::dropout::seed_host_masks;
use crate::model::{Roberta, RobertaConfig};
use crate::optim::adamw::{AdamWSettings, TrainingOptimizer};
use crate::optim::clipping::GradientNorm;
use crate::optim::loss::cross_entropy_mean;
use crate::optim::schedule::LrSchedule;
use crate::rng::dropout_seed;
use crate::run::block_log::BlockLog;
use crate::run::checkpoint::{
    self, BestCheckpoint, CheckpointStore, TrainingState, CHECKPOINT_FORMAT,
};
use crate::run::eval::{evaluate, read_scalar, Evaluation};
use crate::run::metrics::{Metric, MetricsLog};
use crate::run::progress::{eta_seconds, Window};

/// What a finished (or stopped) run reports.
#[derive(Clone, Debug)]
pub struct TrainSummary<B: AutodiffBackend> {
    /// The final model: the best checkpoint's weights when they were restored.
    pub model: Roberta<B>,
    /// Optimizer steps completed.
    pub steps: usize,
    pub first_eval: Evaluation,
    pub last_eval: Evaluation,
    pub train_tokens: usize,
    /// The run stopped on request before `max_steps`, after writing a checkpoint.
    pub stopped: bool,
    /// The best checkpoint by eval perplexity, if checkpoints were written.
    pub best: Option<BestCheckpoint>,
    /// `model` holds the best checkpoint's weights rather than the last step's.
    pub restored_best: bool,
}

/// How a run is driven besides its configuration.
#[derive(Debug, Default)]
pub struct RunControl<'a> {
    /// Where checkpoints go; without a store none are written and the best cannot be restored.
    pub checkpoints: Option<CheckpointStore>,
    /// A checkpoint directory to continue from instead of a fresh model. The source must already
    /// continue after the checkpoint's cursor.
    pub resume: Option<PathBuf>,
    /// Polled after every step: once set, the run writes a checkpoint and stops.
    pub stop: Option<&'a AtomicBool>,
    /// Where each step's `block_seq`s are logged (opened to continue after a resumed step).
    pub block_log: Option<BlockLog>,
}

/// Trains a fresh model as `config` says, reading blocks from `source` and writing metrics to
/// `metrics`, without checkpoints.
pub fn train<B: AutodiffBackend>(
    config: &TrainConfig,
    source: &mut dyn BlockSource,
    device: &B::Device,
    metrics: &mut MetricsLog,
) -> Result<TrainSummary<B>, TrainError> {
    train_with(config, source, device, metrics, RunControl::default())
}

/// Trains as `config` and `control` say: from scratch or from a checkpoint, writing checkpoints
/// when given a store, stopping early when asked to.
pub fn train_with<B: AutodiffBackend>(
    config: &TrainConfig,
    source: &mut dyn BlockSource,
    device: &B::Device,
    metrics: &mut MetricsLog,
    mut control: RunControl<'_>,
) -> Result<TrainSummary<B>, TrainError> {
    config.validate()?;
    let tokenizer = source.tokenizer().clone();
    check_tokenizer(&tokenizer)?;
    let run_started = Instant::now();

    B::seed(device, config.seed);
    // The CPU backend's generator is slow enough to show in a CPU step; see `model::dropout`.
    let host_masks = config.device == DeviceKind::Cpu;
    let model_config = RobertaConfig::from_train_config(config, &tokenizer);
    let mut model: Roberta<B> = model_config.init(device);
    if let Some(dir) = &config.init_from {
        model = crate::hf::warm_start(model, &model_config, dir)?;
    }
    let optimizer =
        TrainingOptimizer::<B, Roberta<B>>::new(AdamWSettings::from_train_config(config));
    let schedule = LrSchedule::new(
        config.lr_schedule,
        config.lr,
        config.warmup_steps,
        config.max_steps,
    );
    let collator = Collator::from_train_config(config, &tokenizer);

    let valid_blocks = source
        .valid_batches(config.eval_block_limit())
        .map_err(TrainError::Source)?;
    let mut valid = Vec::with_capacity(valid_blocks.len());
    for (index, blocks) in valid_blocks.iter().enumerate() {
        check_blocks(blocks, config, tokenizer.vocab_size)?;
        valid.push(collator.collate(blocks, EVAL_MASKING_SEED, index as u64));
    }
    let valid_blocks_read = valid_blocks.iter().map(TokenBlocks::rows).sum();
    drop(valid_blocks);

    if let Some(store) = &control.checkpoints {
        store.remove_partial()?;
    }
    let (mut model, mut optimizer, mut state) = match &control.resume {
        Some(dir) => {
            let state = checkpoint::read_state(dir)?;
            if state.tokenizer_hash != tokenizer.hash {
                return Err(TrainError::Checkpoint {
                    path: dir.clone(),
                    message: format!(
                        "was trained with tokenizer {}, the source serves tokenizer {}",
                        state.tokenizer_hash, tokenizer.hash
                    ),
                });
            }
            let model = checkpoint::load_model(dir, model, device)?;
            let optimizer = checkpoint::load_optimizer(dir, optimizer, device)?;
            metrics.record(Metric::Resume {
                step: state.step,
                checkpoint: dir.clone(),
            })?;
            (model, optimizer, state)
        }
        None => {
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
                valid_blocks: valid_blocks_read,
            })?;
            let first_eval = evaluate_and_record(&model, &valid, device, 0, metrics)?;
            let state = TrainingState {
                format: CHECKPOINT_FORMAT,
                step: 0,
                train_tokens: 0,
                first_eval,
                last_eval: first_eval,
                eval_at_step: Some(first_eval),
                best_eval_perplexity: first_eval.perplexity,
                best_checkpoint: None,
                tokenizer_hash: tokenizer.hash.clone(),
                cursor: source.cursor(),
            };
            (model, optimizer, state)
        }
    };

    let loop_started = Instant::now();
    let first_step = state.step;
    let mut stopped = false;
    let mut window = Window::<B::InnerBackend>::open(source);
    let mut step_blocks = Vec::new();
    for step in state.step..config.max_steps {
        let step_seed = dropout_seed(config.seed, step);
        B::seed(device, step_seed);
        seed_host_masks(host_masks.then_some(step_seed));
        step_blocks.clear();
        for micro_batch in 0..config.grad_accum {
            let blocks = source.next_train_batch().map_err(TrainError::Source)?;
            check_blocks(&blocks, config, tokenizer.vocab_size)?;
            step_blocks.extend_from_slice(&blocks.block_seq);
            let stream = (step * config.grad_accum + micro_batch) as u64;
            let batch = collator.collate(&blocks, config.seed, stream);
            window.tokens += batch.input_tokens();
            state.train_tokens += batch.input_tokens();
            if batch.targets.is_empty() {
                continue; // nothing chosen to predict: contributes no gradient, as in HF
            }
            let tensors = batch.to_tensors::<B>(device);
            let logits = model.forward(tensors.input_ids, tensors.positions);
            let loss = cross_entropy_mean(logits, tensors.targets, tensors.weights, tensors.count);
            let gradients = loss.backward();
            optimizer.accumulate(&model, gradients);
            window.add_loss(loss.inner());
        }
        let lr = schedule.lr(step);
        let (updated, report) = optimizer.step(lr, model);
        model = updated;
        // Read back only where it is logged or a checkpoint may follow: see `clipping`.
        let mut unread_norm = report.grad_norm;
        let completed = step + 1;
        state.step = completed;
        state.cursor = source.cursor();
        if let Some(log) = &mut control.block_log {
            log.record(completed, &step_blocks)?;
        }
        let last = completed == config.max_steps;

        if completed % config.log_every == 0 || last {
            let seconds = window.training_seconds();
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
                grad_norm: GradientNorm::read_pending(&mut unread_norm)?,
                elapsed_s: run_started.elapsed().as_secs_f64(),
                eta_s: eta_seconds(loop_started, first_step, completed, config.max_steps),
            })?;
            window = Window::open(source);
        }
        let paused = Instant::now();
        state.eval_at_step = None;
        if completed % config.eval_every == 0 || last {
            let evaluation = evaluate_and_record(&model, &valid, device, completed, metrics)?;
            state.last_eval = evaluation;
            state.eval_at_step = Some(evaluation);
            state.best_eval_perplexity = state.best_eval_perplexity.min(evaluation.perplexity);
        }
        stopped = control.stop.is_some_and(|flag| flag.load(Ordering::SeqCst));
        if let Some(store) = &control.checkpoints {
            if completed % config.save_every == 0 || last || stopped {
                GradientNorm::read_pending(&mut unread_norm)?;
                save_checkpoint(
                    store, &model, &optimizer, &mut state, config, &tokenizer, metrics,
                )?;
            }
        }
        window.excluded += paused.elapsed().as_secs_f64();
        if stopped && !last {
            metrics.record(Metric::Stop { step: completed })?;
            break;
        }
        stopped = false;
    }

    let mut restored_best = false;
    if !stopped {
        if let (Some(store), Some(best)) = (&control.checkpoints, state.best_checkpoint) {
            if config.restore_best && best.step != state.step {
                model = checkpoint::load_model(&store.path_of(best.step), model, device)?;
                restored_best = true;
            }
            metrics.record(Metric::Best {
                step: best.step,
                eval_perplexity: best.eval_perplexity,
                restored: restored_best,
            })?;
        }
        metrics.record(Metric::Done {
            steps: state.step,
            first_eval_loss: state.first_eval.loss,
            first_eval_perplexity: state.first_eval.perplexity,
            last_eval_loss: state.last_eval.loss,
            last_eval_perplexity: state.last_eval.perplexity,
            best_eval_perplexity: state.best_eval_perplexity,
            train_tokens: state.train_tokens,
            elapsed_s: run_started.elapsed().as_secs_f64(),
        })?;
    }
    Ok(TrainSummary {
        model,
        steps: state.step,
        first_eval: state.first_eval,
        last_eval: state.last_eval,
        train_tokens: state.train_tokens,
        stopped,
        best: state.best_checkpoint,
        restored_best,
    })
}

/// Writes the checkpoint of `state.step`, first making it the best one if its evaluation is
/// the lowest so far, then prunes old checkpoints.
fn save_checkpoint<B: AutodiffBackend>(
    store: &CheckpointStore,
    model: &Roberta<B>,
    optimizer: &TrainingOptimizer<B, Roberta<B>>,
    state: &mut TrainingState,
    config: &TrainConfig,
    tokenizer: &TokenizerInfo,
    metrics: &mut MetricsLog,
) -> Result<(), TrainError> {
    if let Some(evaluation) = state.eval_at_step {
        let improves = state
            .best_checkpoint
            .is_none_or(|best| evaluation.perplexity < best.eval_perplexity);
        if improves {
            state.best_checkpoint = Some(BestCheckpoint {
                step: state.step,
                eval_perplexity: evaluation.perplexity,
            });
        }
    }
    let hf_config = HfRobertaConfig::from_model(
        &RobertaConfig::from_train_config(config, tokenizer),
        tokenizer,
    );
    let path = store.save(model, optimizer, state, config, &hf_config)?;
    store.prune(
        config.keep_checkpoints,
        state.best_checkpoint.map(|best| best.step),
    )?;
    metrics.record(Metric::Checkpoint {
        step: state.step,
        path,
        eval_perplexity: state.eval_at_step.map(|evaluation| evaluation.perplexity),
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
