//! One optimizer step of one rank: its micro-batches through forward and backward, the step's
//! exchange with the other ranks when there are any, and the update.
//!
//! Alone, a rank divides its gradient sums by its own micro-batch count or predicted tokens
//! (see [`LossAverage`]). In a data-parallel run every rank first reports its step
//! ([`StepReport`]); the gradients are then summed over the ranks and divided by the step's
//! predicted tokens over all ranks, so every rank applies the same update and the step's numbers
//! do not depend on how its blocks were spread over ranks and micro-batches.

use std::time::Instant;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use flightlm_shared::Cursor;

use crate::config::{LossAverage, MaskingKey, TrainConfig};
use crate::data::collate::Collator;
use crate::data::source::{check_blocks, BlockSource};
use crate::error::TrainError;
use crate::mixing::Mixing;
use crate::model::dropout::key_host_masks_by_blocks;
use crate::model::Roberta;
use crate::optim::adamw::{StepReport as UpdateReport, TrainingOptimizer};
use crate::optim::loss::cross_entropy_tokens;
use crate::optim::source_loss::{BatchSourceLoss, SourceLosses};
use crate::parallel::exchange::{
    arithmetic_runs, hash_values, StepReport, StepReports, EMPTY_HASH,
};
use crate::parallel::frame::{Purpose, Round};
use crate::parallel::group::RankGroup;
use crate::parallel::watchdog::{Patience, Watchdog};
use crate::run::eval::read_scalar;
use crate::run::progress::Window;

/// Where a training loop runs: alone, or as one rank of a data-parallel group.
pub struct RankRole<'a, B: AutodiffBackend> {
    /// Global rank, from 0; rank 0 evaluates, logs and writes checkpoints.
    pub rank: usize,
    pub group: Option<&'a RankGroup<B::InnerBackend>>,
    pub watchdog: Option<&'a Watchdog>,
    /// Whether rank 0 writes checkpoints (every rank takes part in checking them).
    pub checkpointing: bool,
}

impl<B: AutodiffBackend> RankRole<'_, B> {
    /// The only rank of a run on one device.
    pub fn alone(checkpointing: bool) -> Self {
        RankRole {
            rank: 0,
            group: None,
            watchdog: None,
            checkpointing,
        }
    }

    pub fn leads(&self) -> bool {
        self.rank == 0
    }

    pub fn world(&self) -> usize {
        self.group.map_or(1, RankGroup::world)
    }

    /// All-gathers `payload` over the group in `round`, the wait watched with `patience`.
    pub fn all_gather(
        &self,
        group: &RankGroup<B::InnerBackend>,
        payload: &[u8],
        round: Round,
        patience: Patience,
    ) -> Result<Vec<Vec<u8>>, TrainError> {
        let _wait = self.watchdog.map(|watchdog| {
            watchdog.wait(self.rank, round.step, round.purpose.describe(), patience)
        });
        group.gather(round, payload)
    }
}

/// What one step did, over every rank.
pub struct StepOutcome<B: AutodiffBackend> {
    pub model: Roberta<B>,
    pub update: UpdateReport<B::InnerBackend>,
    /// Every `block_seq` the step trained on (all ranks'), in order.
    pub blocks: Vec<u64>,
    /// Where the stream continues after the step's last block.
    pub cursor: Option<Cursor>,
    /// Seconds the slowest rank has waited for data so far (this rank's own when alone).
    pub waited_s: f64,
    /// Some rank's process was asked to stop (always false when alone: the loop checks).
    pub stop_requested: bool,
    /// The step's loss sums per source over every rank: read back for data-parallel steps and
    /// for runs that steer their mixture, empty otherwise (the window reads them lazily).
    pub source_losses: SourceLosses,
}

/// What the loop tells a step besides the model and optimizer.
#[derive(Clone, Copy, Debug)]
pub struct StepInputs {
    /// The step, from 0.
    pub step: usize,
    pub lr: f64,
    /// This process was asked to stop (a data-parallel run stops every rank at the same step).
    pub stop_requested: bool,
    /// How long to wait for the others at this step's exchange: long at the first step of a
    /// process (it compiles) and after an evaluation (rank 0 evaluates while the others wait).
    pub patience: Patience,
}

/// The inputs of a step that stay the same for the whole run.
pub struct StepPlan<'a, B: AutodiffBackend> {
    pub config: &'a TrainConfig,
    pub collator: &'a Collator,
    pub vocab_size: u32,
    pub device: &'a B::Device,
    pub role: &'a RankRole<'a, B>,
}

impl<B: AutodiffBackend> StepPlan<'_, B> {
    /// Trains optimizer step `inputs.step` on this rank's next `grad_accum` micro-batches.
    pub fn run(
        &self,
        inputs: StepInputs,
        model: Roberta<B>,
        optimizer: &mut TrainingOptimizer<B, Roberta<B>>,
        source: &mut dyn BlockSource,
        window: &mut Window<B::InnerBackend>,
    ) -> Result<StepOutcome<B>, TrainError> {
        let StepInputs {
            step,
            lr,
            stop_requested,
            patience,
        } = inputs;
        let config = self.config;
        let sums = config.loss_average == LossAverage::Tokens;
        let mut blocks_read = Vec::new();
        let mut predicted = 0u64;
        let mut input_tokens = 0u64;
        let mut loss_total: Option<Tensor<B::InnerBackend, 1>> = None;
        let mut failure = None;
        for micro_batch in 0..config.grad_accum {
            let blocks = source.next_train_batch().map_err(TrainError::Source);
            let blocks = blocks
                .and_then(|blocks| check_blocks(&blocks, config, self.vocab_size).map(|()| blocks));
            let blocks = match blocks {
                Ok(blocks) => blocks,
                // Reported to the other ranks, which then stop at the same point.
                Err(error) if self.role.group.is_some() => {
                    failure = Some(error.to_string());
                    break;
                }
                Err(error) => return Err(error),
            };
            blocks_read.extend_from_slice(&blocks.block_seq);
            if self.role.group.is_none() {
                // A data-parallel step's report does not carry sources (yet): rank 0 alone
                // would count a share of them.
                window.count_sources(&blocks);
            }
            let stream = (step * config.grad_accum + micro_batch) as u64;
            let batch = self.collator.collate(&blocks, config.seed, stream);
            if config.masking_key == MaskingKey::Block {
                // Like the MLM masks: a block's dropout whichever rank and micro-batch trains it.
                key_host_masks_by_blocks(config.seed, &blocks.block_seq);
            }
            input_tokens += batch.input_tokens() as u64;
            if batch.targets.is_empty() {
                continue; // nothing chosen to predict: contributes no gradient, as in HF
            }
            predicted += batch.targets.len() as u64;
            let tensors = batch.to_tensors::<B>(self.device);
            let logits =
                model.forward_documents(tensors.input_ids, tensors.positions, tensors.documents);
            let token_losses = cross_entropy_tokens(logits, tensors.targets, tensors.weights);
            let by_source = BatchSourceLoss::of(token_losses.clone().inner(), &batch);
            window.pending_source_losses.extend(by_source);
            let loss = if sums {
                token_losses.sum()
            } else {
                // As `cross_entropy_mean`: the micro-batch's mean over its real targets.
                token_losses.sum().div_scalar(tensors.count.max(1) as f64)
            };
            let gradients = loss.backward();
            optimizer.accumulate(&model, gradients);
            let loss = loss.inner();
            if sums {
                loss_total = Some(match loss_total.take() {
                    Some(total) => total + loss,
                    None => loss,
                });
            } else {
                window.add_loss(loss);
            }
        }
        window.tokens += input_tokens as usize;
        let Some(group) = self.role.group else {
            return self.finish_alone(
                model,
                optimizer,
                source,
                window,
                lr,
                (predicted, loss_total),
                blocks_read,
            );
        };

        let report = StepReport {
            blocks: arithmetic_runs(&blocks_read),
            predicted,
            input_tokens,
            loss_sum: loss_total.map(read_scalar).transpose()?.unwrap_or(0.0),
            waited_s: source.seconds_waited(),
            cursor: (self.role.rank + 1 == self.role.world())
                .then(|| source.cursor())
                .flatten(),
            stop: stop_requested,
            failure,
            source_losses: window.read_source_losses()?,
        };
        let exchange_started = Instant::now();
        let round = Round::new(step, Purpose::StepReport);
        let payloads = self
            .role
            .all_gather(group, &report.encode(), round, patience)?;
        let reports = StepReports::decode(&payloads, self.role.rank)?;
        if let Some(error) = reports.failure() {
            return Err(error);
        }
        window.tokens += (reports.input_tokens() - input_tokens) as usize;
        let mut source_losses = SourceLosses::default();
        for report in &reports.0 {
            source_losses.merge(&report.source_losses);
        }
        window.source_losses.merge(&source_losses);
        let predicted = reports.predicted();
        if predicted > 0 {
            window.add_host_loss(reports.loss_sum() / predicted as f64);
        }
        let (model, update) = {
            let _wait = self.role.watchdog.map(|watchdog| {
                let what = Purpose::Gradients.describe();
                watchdog.wait(self.role.rank, step, what, Patience::Normal)
            });
            optimizer.step_with(lr, model, predicted as f64, |model, gradients| {
                let summed = group.sum_gradients::<B, _>(step, model, gradients);
                window.collective_s += exchange_started.elapsed().as_secs_f64();
                summed
            })?
        };
        Ok(StepOutcome {
            model,
            update,
            blocks: reports.blocks(),
            cursor: reports.cursor(),
            waited_s: reports.waited_s(),
            stop_requested: reports.stop(),
            source_losses,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_alone(
        &self,
        model: Roberta<B>,
        optimizer: &mut TrainingOptimizer<B, Roberta<B>>,
        source: &dyn BlockSource,
        window: &mut Window<B::InnerBackend>,
        lr: f64,
        (predicted, loss_total): (u64, Option<Tensor<B::InnerBackend, 1>>),
        blocks: Vec<u64>,
    ) -> Result<StepOutcome<B>, TrainError> {
        let source_losses = match self.config.mixing {
            Mixing::Static => SourceLosses::default(),
            Mixing::Odm => {
                let read = window.read_source_losses()?;
                window.source_losses.merge(&read);
                read
            }
        };
        let (model, update) = match self.config.loss_average {
            LossAverage::MicroBatches => optimizer.step(lr, model),
            LossAverage::Tokens => {
                if let Some(total) = loss_total {
                    window.add_loss(total.div_scalar(predicted as f64));
                }
                optimizer
                    .step_with(lr, model, predicted as f64, |_, gradients| Ok(gradients))
                    .expect("combining a rank's own gradients cannot fail")
            }
        };
        Ok(StepOutcome {
            model,
            update,
            blocks,
            cursor: source.cursor(),
            waited_s: source.seconds_waited(),
            stop_requested: false,
            source_losses,
        })
    }
}

/// At a checkpoint of a data-parallel run, every rank's parameters hash the same, or the run
/// fails naming the first rank that differs from rank 0.
/// `patience` is long when rank 0 has just evaluated.
pub(crate) fn check_ranks_agree<B: AutodiffBackend>(
    role: &RankRole<'_, B>,
    model: &Roberta<B>,
    step: usize,
    patience: Patience,
) -> Result<Option<u64>, TrainError> {
    let Some(group) = role.group else {
        return Ok(None);
    };
    let hash = parameter_hash(model)?;
    let round = Round::new(step, Purpose::ParameterCheck);
    let payloads = role.all_gather(group, &hash.to_le_bytes(), round, patience)?;
    let hashes: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    match hashes.iter().position(|other| *other != hashes[0]) {
        None => Ok(Some(hash)),
        Some(rank) => Err(TrainError::Rank {
            rank,
            message: format!(
                "its parameters differ from rank 0's after step {} (hash {:02x?} vs {:02x?})",
                step + 1,
                hashes[rank],
                hashes[0]
            ),
        }),
    }
}

/// A model's parameters, hashed: equal on every rank of a run, or a rank has drifted.
pub(crate) fn parameter_hash<B: AutodiffBackend>(model: &Roberta<B>) -> Result<u64, TrainError> {
    let mut hasher = ParameterHasher {
        hash: EMPTY_HASH,
        error: None,
    };
    model.visit(&mut hasher);
    match hasher.error {
        Some(error) => Err(error),
        None => Ok(hasher.hash),
    }
}

struct ParameterHasher {
    hash: u64,
    error: Option<TrainError>,
}

impl<B: Backend> ModuleVisitor<B> for ParameterHasher {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        match param.val().into_data().convert::<f32>().to_vec::<f32>() {
            Ok(values) => self.hash = hash_values(self.hash, &values),
            Err(error) => self.error = Some(TrainError::Device(format!("{error:?}"))),
        }
    }
}
