//! The training loop: optimizer steps (see [`crate::run::step`]), then log, evaluate, checkpoint.
//!
//! An optimizer step consumes `grad_accum` micro-batches of `batch_size` blocks on each rank:
//! `world × batch_size × grad_accum` blocks of the global stream. The model is evaluated (by
//! rank 0) on the valid split's first `eval_blocks` blocks before the first step, every
//! `eval_every` steps and after the last one; the valid split is masked once with a fixed seed,
//! so every evaluation scores the same predictions and the numbers are comparable across a run
//! and across runs.
//!
//! Every random draw of a step is a function of `(seed, step)` and the data: MLM masks are keyed
//! by block (or, in runs started before data-parallel training, by micro-batch) and the dropout
//! generators are reseeded before each step. A run resumed from a checkpoint, on any number of
//! ranks, therefore computes the steps the uninterrupted run computes.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use burn::tensor::backend::AutodiffBackend;
use flightlm_shared::TokenizerInfo;

use crate::config::TrainConfig;
use crate::data::source::{check_tokenizer, BlockSource};
use crate::error::TrainError;
use crate::mixing::{self, Mixing};
use crate::model::{Roberta, RobertaConfig};
use crate::run::block_log::BlockLog;
use crate::run::checkpoint::{BestCheckpoint, CheckpointStore};
use crate::run::eval::Evaluation;
use crate::run::metrics::{Metric, MetricsLog};
use crate::run::stages::{stop_requested, CheckpointDue, RankRun};
use crate::run::step::RankRole;

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
    control: RunControl<'_>,
) -> Result<TrainSummary<B>, TrainError> {
    config.validate()?;
    let tokenizer = source.tokenizer().clone();
    check_tokenizer(&tokenizer, config.objective)?;
    let model = initial_model::<B>(config, &tokenizer, device)?;
    let role = RankRole::alone(control.checkpoints.is_some());
    train_rank(config, source, device, model, &role, metrics, control)
}

/// The model a run starts from: initialized from the run's seed, or warm-started from
/// `init_from`. A data-parallel run makes it once and gives every rank a copy, so that every rank
/// holds the same parameters under the same ids.
pub(crate) fn initial_model<B: AutodiffBackend>(
    config: &TrainConfig,
    tokenizer: &TokenizerInfo,
    device: &B::Device,
) -> Result<Roberta<B>, TrainError> {
    B::seed(device, config.seed);
    let model_config = RobertaConfig::from_train_config(config, tokenizer);
    let model: Roberta<B> = model_config.init(device);
    match &config.init_from {
        Some(dir) => Ok(crate::hf::warm_start(model, &model_config, dir)?),
        None => Ok(model),
    }
}

/// The loop of one rank (the only one, alone): rank 0 reads the valid split, evaluates, logs and
/// writes checkpoints; every rank trains. Each step goes through the same stages in order.
pub(crate) fn train_rank<B: AutodiffBackend>(
    config: &TrainConfig,
    source: &mut dyn BlockSource,
    device: &B::Device,
    model: Roberta<B>,
    role: &RankRole<'_, B>,
    metrics: &mut MetricsLog,
    mut control: RunControl<'_>,
) -> Result<TrainSummary<B>, TrainError> {
    let run = RankRun::prepare(config, source, device, role)?;
    if config.mixing == Mixing::Odm {
        mixing::check_sources(source.mixture_sources())?;
    }
    let (mut model, mut progress) = run.start_or_resume(model, source, &control, metrics)?;
    let mut stopped = false;
    for step in progress.state.step..config.max_steps {
        let outcome = run.train_step(step, model, &mut progress, source, &control)?;
        model = outcome.model;
        // Read back only where it is logged or a checkpoint may follow: see `clipping`.
        let mut unread_norm = outcome.update.grad_norm;
        let completed = step + 1;
        if let Some(mixing) = progress.state.mixing.as_mut() {
            mixing.add_step(&outcome.source_losses, outcome.cursor.as_ref());
            if completed % config.mixing_every == 0 {
                let settings = mixing::settings(config.mixing_reward);
                let change = mixing.update_due(
                    settings,
                    outcome.cursor.as_ref(),
                    config.global_batch(),
                    config.mixing_every,
                );
                source.set_weights(change).map_err(TrainError::Source)?;
            }
        }
        progress.record_step(
            completed,
            outcome.cursor,
            &outcome.blocks,
            &mut control,
            role,
        )?;
        run.log_if_due(completed, &mut progress, &mut unread_norm, metrics)?;
        let paused = Instant::now();
        run.evaluate_if_due(&model, completed, &mut progress, metrics)?;
        stopped = match role.group {
            Some(_) => outcome.stop_requested,
            None => stop_requested(&control),
        };
        let due = CheckpointDue { completed, stopped };
        run.checkpoint_if_due(
            &model,
            due,
            &mut progress,
            &mut unread_norm,
            &control,
            metrics,
        )?;
        progress.window.excluded += paused.elapsed().as_secs_f64();
        if stopped && completed != config.max_steps {
            metrics.record(Metric::Stop { step: completed })?;
            break;
        }
        stopped = false;
    }
    run.finish(model, progress.state, stopped, &control, metrics)
}
