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
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use burn::module::Module;
use burn::tensor::backend::AutodiffBackend;
use flightlm_shared::TokenizerInfo;

use crate::config::{DeviceKind, TrainConfig};
use crate::data::collate::Collator;
use crate::data::source::{check_tokenizer, BlockSource};
use crate::error::TrainError;
use crate::model::dropout::seed_host_masks;
use crate::model::{Roberta, RobertaConfig};
use crate::optim::adamw::{AdamWSettings, TrainingOptimizer};
use crate::optim::clipping::GradientNorm;
use crate::optim::schedule::LrSchedule;
use crate::parallel::watchdog::Patience;
use crate::rng::rank_dropout_seed;
use crate::run::block_log::BlockLog;
use crate::run::checkpoint::{
    self, BestCheckpoint, CheckpointStore, Saving, TrainingState, CHECKPOINT_FORMAT,
};
use crate::run::data_parallel::agree_before_first_step;
use crate::run::eval::{evaluate_and_record, read_scalar, read_valid, Evaluation};
use crate::run::metrics::{Metric, MetricsLog};
use crate::run::progress::{eta_seconds, Window};
use crate::run::step::{check_ranks_agree, RankRole, StepInputs, StepPlan};

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
    check_tokenizer(&tokenizer)?;
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
/// writes checkpoints; every rank trains.
pub(crate) fn train_rank<B: AutodiffBackend>(
    config: &TrainConfig,
    source: &mut dyn BlockSource,
    device: &B::Device,
    model: Roberta<B>,
    role: &RankRole<'_, B>,
    metrics: &mut MetricsLog,
    mut control: RunControl<'_>,
) -> Result<TrainSummary<B>, TrainError> {
    let tokenizer = source.tokenizer().clone();
    let run_started = Instant::now();
    // The CPU backend's generator is slow enough to show in a CPU step; see `model::dropout`.
    let host_masks = config.device == DeviceKind::Cpu;
    let optimizer =
        TrainingOptimizer::<B, Roberta<B>>::new(AdamWSettings::from_train_config(config));
    let schedule = LrSchedule::new(
        config.lr_schedule,
        config.lr,
        config.warmup_steps,
        config.max_steps,
    );
    let collator = Collator::from_train_config(config, &tokenizer);
    let (valid, valid_blocks_read) = if role.leads() {
        read_valid(config, source, &collator, tokenizer.vocab_size)?
    } else {
        (Vec::new(), 0)
    };

    if let (Some(store), true) = (&control.checkpoints, role.leads()) {
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
                world_size: config.world_size(),
                parameters: model.num_params(),
                vocab_size: tokenizer.vocab_size,
                seq_len: config.seq_len,
                batch_size: config.batch_size,
                grad_accum: config.grad_accum,
                max_steps: config.max_steps,
                valid_batches: valid.len(),
                valid_blocks: valid_blocks_read,
            })?;
            let first_eval = match role.leads() {
                true => evaluate_and_record(&model, &valid, device, 0, metrics)?,
                false => Evaluation::not_taken(),
            };
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
    agree_before_first_step(role, config, &tokenizer, &state, &model)?;

    let plan = StepPlan {
        config,
        collator: &collator,
        vocab_size: tokenizer.vocab_size,
        device,
        role,
    };
    let loop_started = Instant::now();
    let first_step = state.step;
    let mut stopped = false;
    let mut waited = source.seconds_waited();
    let mut window = Window::<B::InnerBackend>::open(waited);
    for step in state.step..config.max_steps {
        let step_seed = rank_dropout_seed(config.seed, step, role.rank);
        B::seed(device, step_seed);
        seed_host_masks(host_masks.then_some(step_seed));
        let stop_requested = control.stop.is_some_and(|flag| flag.load(Ordering::SeqCst));
        let lr = schedule.lr(step);
        let tokens_before = window.tokens;
        let inputs = StepInputs {
            step,
            lr,
            stop_requested,
            patience: Patience::at_step(config, step, first_step),
        };
        let outcome = plan.run(inputs, model, &mut optimizer, source, &mut window)?;
        model = outcome.model;
        waited = outcome.waited_s;
        state.train_tokens += window.tokens - tokens_before;
        // Read back only where it is logged or a checkpoint may follow: see `clipping`.
        let mut unread_norm = outcome.update.grad_norm;
        let completed = step + 1;
        state.step = completed;
        state.cursor = outcome.cursor;
        if let (Some(log), true) = (&mut control.block_log, role.leads()) {
            log.record(completed, &outcome.blocks)?;
        }
        let last = completed == config.max_steps;

        if role.leads() && (completed % config.log_every == 0 || last) {
            let seconds = window.training_seconds();
            let device_loss = window.loss_sum.take().map(read_scalar).transpose()?;
            let loss = match window.losses {
                0 => f64::NAN,
                losses => (device_loss.unwrap_or(0.0) + window.host_loss_sum) / losses as f64,
            };
            if !loss.is_finite() && window.losses > 0 {
                return Err(TrainError::Diverged {
                    step: completed,
                    loss,
                });
            }
            metrics.record(Metric::Train {
                step: completed,
                loss,
                perplexity: loss.exp(),
                lr,
                tokens_per_s: window.tokens as f64 / seconds,
                data_wait: ((waited - window.waited_at_start) / seconds).clamp(0.0, 1.0),
                collective: role
                    .group
                    .map(|_| (window.collective_s / seconds).clamp(0.0, 1.0)),
                grad_norm: GradientNorm::read_pending(&mut unread_norm)?,
                elapsed_s: run_started.elapsed().as_secs_f64(),
                eta_s: eta_seconds(loop_started, first_step, completed, config.max_steps),
            })?;
            window = Window::open(waited);
        }
        let paused = Instant::now();
        state.eval_at_step = None;
        if role.leads() && (completed % config.eval_every == 0 || last) {
            let evaluation = evaluate_and_record(&model, &valid, device, completed, metrics)?;
            state.last_eval = evaluation;
            state.eval_at_step = Some(evaluation);
            state.best_eval_perplexity = state.best_eval_perplexity.min(evaluation.perplexity);
        }
        stopped = match role.group {
            Some(_) => outcome.stop_requested,
            None => control.stop.is_some_and(|flag| flag.load(Ordering::SeqCst)),
        };
        if role.checkpointing && (completed % config.save_every == 0 || last || stopped) {
            GradientNorm::read_pending(&mut unread_norm)?;
            let evaluated = state.eval_at_step.is_some() || completed % config.eval_every == 0;
            let patience = if evaluated || last {
                Patience::Long
            } else {
                Patience::Normal
            };
            let agreed = check_ranks_agree(role, &model, step, patience)?;
            if let (Some(store), true) = (&control.checkpoints, role.leads()) {
                let saving = Saving {
                    store,
                    config,
                    tokenizer: &tokenizer,
                    agreed_hash: agreed,
                };
                saving.save(&model, &optimizer, &mut state, metrics)?;
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
    if !stopped && role.leads() {
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
