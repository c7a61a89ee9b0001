//! The stages around a rank's loop: prepare (schedule, collator, valid split), start fresh or
//! resume from a checkpoint, and finish (restore the best checkpoint, the closing lines).

use std::path::Path;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::backend::AutodiffBackend;

use crate::config::{DeviceKind, TrainConfig};
use crate::data::collate::Collator;
use crate::data::source::BlockSource;
use crate::error::TrainError;
use crate::model::Roberta;
use crate::optim::adamw::{AdamWSettings, TrainingOptimizer};
use crate::optim::schedule::LrSchedule;
use crate::run::checkpoint::{self, TrainingState, CHECKPOINT_FORMAT};
use crate::run::eval::{evaluate_and_record, read_valid, Evaluation};
use crate::run::metrics::{Metric, MetricsLog};
use crate::run::progress::Window;
use crate::run::step::RankRole;
use crate::run::train::{RunControl, TrainSummary};

use super::{Progress, RankRun};

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
        let collator = Collator::from_train_config(config, &tokenizer);
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
        })
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
