//! The stages of one rank's training loop, in the order [`crate::run::train`] runs them: prepare
//! (schedule, collator, valid split), start or resume, then per step: train, record, log,
//! evaluate, checkpoint; and finish (restore the best checkpoint, the closing lines).

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::backend::AutodiffBackend;
use flightlm_shared::{Cursor, TokenizerInfo};

use crate::config::{DeviceKind, TrainConfig};
use crate::data::collate::{Collator, LmBatch};
use crate::data::source::BlockSource;
use crate::error::TrainError;
use crate::mixing::{Mixing, MixingState};
use crate::model::dropout::seed_host_masks;
use crate::model::Roberta;
use crate::optim::adamw::{AdamWSettings, TrainingOptimizer};
use crate::optim::clipping::GradientNorm;
use crate::optim::schedule::LrSchedule;
use crate::parallel::watchdog::Patience;
use crate::rng::rank_dropout_seed;
use crate::run::checkpoint::{self, Saving, TrainingState, CHECKPOINT_FORMAT};
use crate::run::data_parallel::agree_before_first_step;
use crate::run::eval::{evaluate_and_record, read_scalar, read_valid, Evaluation};
use crate::run::metrics::{Metric, MetricsLog};
use crate::run::progress::{eta_seconds, Window};
use crate::run::step::{check_ranks_agree, RankRole, StepInputs, StepOutcome, StepPlan};
use crate::run::train::{RunControl, TrainSummary};

pub(crate) fn stop_requested(control: &RunControl<'_>) -> bool {
    control.stop.is_some_and(|flag| flag.load(Ordering::SeqCst))
}

/// What a rank's run holds fixed from its first step to its last.
pub(crate) struct RankRun<'a, B: AutodiffBackend> {
    config: &'a TrainConfig,
    device: &'a B::Device,
    role: &'a RankRole<'a, B>,
    tokenizer: TokenizerInfo,
    /// The CPU backend's generator is slow enough to show in a CPU step; see `model::dropout`.
    host_masks: bool,
    schedule: LrSchedule,
    collator: Collator,
    /// The valid split, collated once (rank 0 only), and its block count.
    valid: Vec<LmBatch>,
    valid_blocks: usize,
    started: Instant,
}

/// What changes from step to step.
pub(crate) struct Progress<B: AutodiffBackend> {
    optimizer: TrainingOptimizer<B, Roberta<B>>,
    pub(crate) state: TrainingState,
    /// The first step this process runs (0, or the step after a resumed checkpoint).
    first_step: usize,
    loop_started: Instant,
    /// Seconds waited for data so far (the slowest rank's in a data-parallel run).
    waited: f64,
    pub(crate) window: Window<B::InnerBackend>,
}

/// The step just completed, and whether the run was asked to stop after it.
pub(crate) struct CheckpointDue {
    pub(crate) completed: usize,
    pub(crate) stopped: bool,
}

impl<'a, B: AutodiffBackend> RankRun<'a, B> {
    /// Builds the schedule and the collator, and reads the valid split on rank 0.
    pub(crate) fn prepare(
        config: &'a TrainConfig,
        source: &mut dyn BlockSource,
        device: &'a B::Device,
        role: &'a RankRole<'a, B>,
    ) -> Result<Self, TrainError> {
        let started = Instant::now();
        let tokenizer = source.tokenizer().clone();
        let schedule = LrSchedule::new(
            config.lr_schedule,
            config.lr,
            config.warmup_steps,
            config.max_steps,
        );
        let collator = Collator::from_train_config(config, &tokenizer)?;
        let (valid, valid_blocks) = if role.leads() {
            read_valid(config, source, &collator, tokenizer.vocab_size)?
        } else {
            (Vec::new(), 0)
        };
        Ok(RankRun {
            config,
            device,
            role,
            tokenizer,
            host_masks: config.device == DeviceKind::Cpu,
            schedule,
            collator,
            valid,
            valid_blocks,
            started,
        })
    }

    /// The model, optimizer and state the loop starts from: a checkpoint's, or fresh ones after
    /// the first evaluation.
    pub(crate) fn start_or_resume(
        &self,
        model: Roberta<B>,
        source: &dyn BlockSource,
        control: &RunControl<'_>,
        metrics: &mut MetricsLog,
    ) -> Result<(Roberta<B>, Progress<B>), TrainError> {
        if let (Some(store), true) = (&control.checkpoints, self.role.leads()) {
            store.remove_partial()?;
        }
        let optimizer =
            TrainingOptimizer::<B, Roberta<B>>::new(AdamWSettings::from_train_config(self.config));
        let (model, optimizer, state) = match &control.resume {
            Some(dir) => self.resume(dir, model, optimizer, metrics)?,
            None => {
                let state = self.start(&model, source, metrics)?;
                (model, optimizer, state)
            }
        };
        agree_before_first_step(self.role, self.config, &self.tokenizer, &state, &model)?;
        let waited = source.seconds_waited();
        let progress = Progress {
            optimizer,
            first_step: state.step,
            state,
            loop_started: Instant::now(),
            waited,
            window: Window::open(waited),
        };
        Ok((model, progress))
    }

    fn resume(
        &self,
        dir: &Path,
        model: Roberta<B>,
        optimizer: TrainingOptimizer<B, Roberta<B>>,
        metrics: &mut MetricsLog,
    ) -> Result<Resumed<B>, TrainError> {
        let state = checkpoint::read_state(dir)?;
        if state.tokenizer_hash != self.tokenizer.hash {
            return Err(TrainError::Checkpoint {
                path: dir.to_path_buf(),
                message: format!(
                    "was trained with tokenizer {}, the source serves tokenizer {}",
                    state.tokenizer_hash, self.tokenizer.hash
                ),
            });
        }
        let model = checkpoint::load_model(dir, model, self.device)?;
        let optimizer = checkpoint::load_optimizer(dir, optimizer, self.device)?;
        metrics.record(Metric::Resume {
            step: state.step,
            checkpoint: dir.to_path_buf(),
        })?;
        Ok((model, optimizer, state))
    }

    /// Records the run's start and the first evaluation, before any step.
    fn start(
        &self,
        model: &Roberta<B>,
        source: &dyn BlockSource,
        metrics: &mut MetricsLog,
    ) -> Result<TrainingState, TrainError> {
        let config = self.config;
        metrics.record(Metric::Start {
            objective: config.objective,
            preset: config.preset,
            device: config.device,
            world_size: config.world_size(),
            parameters: model.num_params(),
            vocab_size: self.tokenizer.vocab_size,
            seq_len: config.seq_len,
            batch_size: config.batch_size,
            grad_accum: config.grad_accum,
            max_steps: config.max_steps,
            valid_batches: self.valid.len(),
            valid_blocks: self.valid_blocks,
        })?;
        let first_eval = match self.role.leads() {
            true => evaluate_and_record(model, &self.valid, self.device, 0, metrics)?,
            false => Evaluation::not_taken(),
        };
        Ok(TrainingState {
            format: CHECKPOINT_FORMAT,
            step: 0,
            train_tokens: 0,
            first_eval,
            last_eval: first_eval,
            eval_at_step: Some(first_eval),
            best_eval_perplexity: first_eval.perplexity,
            best_checkpoint: None,
            tokenizer_hash: self.tokenizer.hash.clone(),
            cursor: source.cursor(),
            source_tokens: Default::default(),
            mixing: (config.mixing == Mixing::Odm).then(MixingState::default),
        })
    }

    /// Seeds the step's random draws and runs optimizer step `step` (see [`crate::run::step`]).
    pub(crate) fn train_step(
        &self,
        step: usize,
        model: Roberta<B>,
        progress: &mut Progress<B>,
        source: &mut dyn BlockSource,
        control: &RunControl<'_>,
    ) -> Result<StepOutcome<B>, TrainError> {
        let step_seed = rank_dropout_seed(self.config.seed, step, self.role.rank);
        B::seed(self.device, step_seed);
        seed_host_masks(self.host_masks.then_some(step_seed));
        let inputs = StepInputs {
            step,
            lr: self.schedule.lr(step),
            stop_requested: stop_requested(control),
            patience: Patience::at_step(self.config, step, progress.first_step),
        };
        let plan = StepPlan {
            config: self.config,
            collator: &self.collator,
            vocab_size: self.tokenizer.vocab_size,
            device: self.device,
            role: self.role,
        };
        let tokens_before = progress.window.tokens;
        let outcome = plan.run(
            inputs,
            model,
            &mut progress.optimizer,
            source,
            &mut progress.window,
        )?;
        progress.waited = outcome.waited_s;
        progress.state.train_tokens += progress.window.tokens - tokens_before;
        for (source, tokens) in std::mem::take(&mut progress.window.source_tokens) {
            *progress
                .state
                .source_tokens
                .entry(source.to_string())
                .or_default() += tokens;
        }
        Ok(outcome)
    }

    /// Writes the `train` line of the window that ends at `completed`, on rank 0 every
    /// `log_every` steps and after the last, and opens the next window.
    pub(crate) fn log_if_due(
        &self,
        completed: usize,
        progress: &mut Progress<B>,
        unread_norm: &mut Option<GradientNorm<B::InnerBackend>>,
        metrics: &mut MetricsLog,
    ) -> Result<(), TrainError> {
        let config = self.config;
        let last = completed == config.max_steps;
        if !(self.role.leads() && (completed.is_multiple_of(config.log_every) || last)) {
            return Ok(());
        }
        let window = &mut progress.window;
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
        let first_step = progress.first_step;
        metrics.record(Metric::Train {
            step: completed,
            loss,
            perplexity: loss.exp(),
            lr: self.schedule.lr(completed - 1),
            tokens_per_s: window.tokens as f64 / seconds,
            data_wait: ((progress.waited - window.waited_at_start) / seconds).clamp(0.0, 1.0),
            collective: self
                .role
                .group
                .map(|_| (window.collective_s / seconds).clamp(0.0, 1.0)),
            grad_norm: GradientNorm::read_pending(unread_norm)?,
            tokens_by_source: progress.state.source_tokens.clone(),
            loss_by_source: window.take_source_losses()?.means(),
            mixing_weights: progress
                .state
                .mixing
                .as_ref()
                .and_then(|mixing| mixing.policy.as_ref())
                .map(|policy| policy.weights())
                .unwrap_or_default(),
            elapsed_s: self.started.elapsed().as_secs_f64(),
            eta_s: eta_seconds(
                progress.loop_started,
                first_step,
                completed,
                config.max_steps,
            ),
        })?;
        progress.window = Window::open(progress.waited);
        Ok(())
    }

    /// Evaluates on rank 0 every `eval_every` steps and after the last.
    pub(crate) fn evaluate_if_due(
        &self,
        model: &Roberta<B>,
        completed: usize,
        progress: &mut Progress<B>,
        metrics: &mut MetricsLog,
    ) -> Result<(), TrainError> {
        let state = &mut progress.state;
        state.eval_at_step = None;
        let last = completed == self.config.max_steps;
        if self.role.leads() && (completed.is_multiple_of(self.config.eval_every) || last) {
            let evaluation =
                evaluate_and_record(model, &self.valid, self.device, completed, metrics)?;
            state.last_eval = evaluation;
            state.eval_at_step = Some(evaluation);
            state.best_eval_perplexity = state.best_eval_perplexity.min(evaluation.perplexity);
        }
        Ok(())
    }

    /// Every `save_every` steps, after the last, when stopping, and at every evaluation that
    /// beats the best checkpoint (so the best evaluation always has a checkpoint to restore, as
    /// transformers' `load_best_model_at_end` requires of its save steps): every rank checks that
    /// the ranks agree, and rank 0 writes the checkpoint. Only rank 0 knows an evaluation's
    /// result, so in a data-parallel run every rank joins the check at every evaluation.
    pub(crate) fn checkpoint_if_due(
        &self,
        model: &Roberta<B>,
        due: CheckpointDue,
        progress: &mut Progress<B>,
        unread_norm: &mut Option<GradientNorm<B::InnerBackend>>,
        control: &RunControl<'_>,
        metrics: &mut MetricsLog,
    ) -> Result<(), TrainError> {
        let (config, completed) = (self.config, due.completed);
        let last = completed == config.max_steps;
        let save_due = completed % config.save_every == 0 || last || due.stopped;
        let evaluated_step = completed % config.eval_every == 0 || last;
        let state = &progress.state;
        let new_best = state.eval_at_step.is_some_and(|evaluation| {
            state
                .best_checkpoint
                .is_none_or(|best| evaluation.perplexity < best.eval_perplexity)
        });
        let checks = save_due || new_best || (evaluated_step && self.role.group.is_some());
        if !(self.role.checkpointing && checks) {
            return Ok(());
        }
        GradientNorm::read_pending(unread_norm)?;
        let evaluated = state.eval_at_step.is_some() || evaluated_step;
        let patience = if evaluated || last {
            Patience::Long
        } else {
            Patience::Normal
        };
        let agreed = check_ranks_agree(self.role, model, completed - 1, patience)?;
        let saves = save_due || new_best;
        if let (Some(store), true, true) = (&control.checkpoints, self.role.leads(), saves) {
            let saving = Saving {
                store,
                config,
                tokenizer: &self.tokenizer,
                agreed_hash: agreed,
            };
            saving.save(model, &progress.optimizer, &mut progress.state, metrics)?;
        }
        Ok(())
    }

    /// Restores the best checkpoint's weights when asked to, writes the closing lines on rank 0,
    /// and sums the run up.
    pub(crate) fn finish(
        &self,
        mut model: Roberta<B>,
        state: TrainingState,
        stopped: bool,
        control: &RunControl<'_>,
        metrics: &mut MetricsLog,
    ) -> Result<TrainSummary<B>, TrainError> {
        let mut restored_best = false;
        if !stopped && self.role.leads() {
            if let (Some(store), Some(best)) = (&control.checkpoints, state.best_checkpoint) {
                if self.config.restore_best && best.step != state.step {
                    model = checkpoint::load_model(&store.path_of(best.step), model, self.device)?;
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
                // With checkpoints, the best is the best checkpoint: every evaluation that
                // improved on it was saved (the evaluation before step 1 has none).
                best_eval_perplexity: state
                    .best_checkpoint
                    .map_or(state.best_eval_perplexity, |best| best.eval_perplexity),
                best_step: state.best_checkpoint.map(|best| best.step),
                train_tokens: state.train_tokens,
                elapsed_s: self.started.elapsed().as_secs_f64(),
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
}

/// A checkpoint's model, optimizer and state.
type Resumed<B> = (Roberta<B>, TrainingOptimizer<B, Roberta<B>>, TrainingState);

impl<B: AutodiffBackend> Progress<B> {
    /// Moves the state past step `completed` and logs the blocks it trained on (rank 0).
    pub(crate) fn record_step(
        &mut self,
        completed: usize,
        cursor: Option<Cursor>,
        blocks: &[u64],
        control: &mut RunControl<'_>,
        role: &RankRole<'_, B>,
    ) -> Result<(), TrainError> {
        self.state.step = completed;
        self.state.cursor = cursor;
        if let (Some(log), true) = (&mut control.block_log, role.leads()) {
            log.record(completed, blocks)?;
        }
        Ok(())
    }
}
