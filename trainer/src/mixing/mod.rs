//! Steering the mixture while the model trains: `--mixing static|odm`.
//!
//! With `odm` the run opens its train stream with weights of its own and a run name
//! (docs/protocol.md, *Weights of one stream*), and every `mixing_every` steps hands the
//! sources' losses since the last update to the [`odm`] policy. Its new weights apply from the
//! first chunk starting [`LOOKAHEAD_STEPS`] steps' blocks past the step's cursor. The stream
//! draws nothing past the block where the next update's weights will apply (`until`) before that
//! update comes, so the pipeline changes the open stream in place, every rank's shard changes at
//! the same block, and where a change lands never depends on timing: a resumed run (whose
//! checkpoint holds the policy and the boundary) continues the same trajectory.

pub mod odm;

use std::collections::BTreeMap;

use flightlm_shared::Cursor;
use serde::{Deserialize, Serialize};

use crate::error::TrainError;
use crate::optim::source_loss::SourceLosses;
use odm::{OdmPolicy, OdmReward, OdmSettings};

/// How the run's mixture weights are chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Mixing {
    /// The pipeline's weights (`--source NAME=…:WEIGHT`, `set-weight`), unchanged by the run.
    #[default]
    Static,
    /// The online data mixing policy, from the pipeline's weights as priors.
    Odm,
}

/// The mixing state a checkpoint holds: the policy, once it exists, and the loss sums of the
/// steps since its last update.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MixingState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<OdmPolicy>,
    #[serde(default)]
    pub pending: SourceLosses,
    /// The block from whose chunk on the policy's latest weights apply, until the stream
    /// reaches that chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_from: Option<u64>,
}

/// Steps between an update of the policy and the block its weights apply from (rounded up to the
/// next chunk by the pipeline): what the run can read while the update reaches the pipeline.
pub const LOOKAHEAD_STEPS: u64 = 2;

/// A change of the run's stream weights that an update sends: `weights` (none when only `until`
/// moves) from the first chunk starting at or after block `from`; the stream may draw chunks
/// starting before `until` from then on.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightChange {
    pub weights: Option<BTreeMap<String, f64>>,
    pub from: u64,
    pub until: u64,
}

/// Blocks consumed by every rank together up to `cursor`.
fn consumed(cursor: Option<&Cursor>) -> u64 {
    cursor.map_or(0, |cursor| cursor.state.block_seq + cursor.skip)
}

/// What an odm run's train stream is opened with: the weights, the block they apply from (while
/// the stream has not reached it), and where it waits for the next update.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamMixing {
    pub weights: BTreeMap<String, f64>,
    pub from: Option<u64>,
    pub until: u64,
}

impl MixingState {
    /// The stream of a run at `step` (after `cursor`): the policy's weights, or (before its
    /// first update) an empty set, which makes the stream's weights its own with the pipeline's
    /// as their values; the boundary of the latest update; and the block the next update's
    /// weights will apply from, where the stream waits for it.
    pub fn stream_mixing(
        &self,
        step: usize,
        cursor: Option<&Cursor>,
        global_batch: usize,
        every: usize,
    ) -> StreamMixing {
        let weights = self
            .policy
            .as_ref()
            .map(OdmPolicy::weights)
            .unwrap_or_default();
        let next_update = (step / every + 1) * every;
        let steps_ahead = (next_update - step) as u64 + LOOKAHEAD_STEPS;
        StreamMixing {
            weights,
            from: self.weights_from,
            until: consumed(cursor) + steps_ahead * global_batch as u64,
        }
    }

    /// The update due after the step that ended at `cursor`: new weights from the policy, from
    /// [`LOOKAHEAD_STEPS`] past the cursor. While the previous weights wait for their chunk (a
    /// pipeline shuffling chunks longer than an update's blocks), the policy waits too and only
    /// `until` moves on, so a stream never holds more than one change not yet reached.
    pub fn update_due(
        &mut self,
        settings: OdmSettings,
        cursor: Option<&Cursor>,
        global_batch: usize,
        every: usize,
    ) -> WeightChange {
        let at = consumed(cursor);
        let blocks = |steps: u64| steps * global_batch as u64;
        let until = at + blocks(every as u64 + LOOKAHEAD_STEPS);
        if let Some(from) = self.weights_from {
            return WeightChange {
                weights: None,
                from,
                until,
            };
        }
        let weights = self.update(settings, cursor);
        let from = at + blocks(LOOKAHEAD_STEPS);
        self.weights_from = Some(from);
        WeightChange {
            weights: Some(weights),
            from,
            until,
        }
    }

    /// Adds a step's per-source loss sums (over every rank).
    pub fn add_step(&mut self, losses: &SourceLosses, cursor: Option<&Cursor>) {
        self.pending.merge(losses);
        // Once the stream reads the chunk the latest weights apply from, they are the cursor's.
        let reached = |from: &mut u64| cursor.is_some_and(|cursor| cursor.state.block_seq >= *from);
        if self.weights_from.as_mut().is_some_and(reached) {
            self.weights_from = None;
        }
    }

    /// Updates the policy with the pending losses and returns its weights. The policy starts
    /// from the weights the cursor's chunk was drawn with (the pipeline's, for a fresh run), and
    /// a source it has not seen joins with the weight the stream gave it.
    pub fn update(
        &mut self,
        settings: OdmSettings,
        cursor: Option<&Cursor>,
    ) -> BTreeMap<String, f64> {
        let drawn_with = cursor
            .and_then(|cursor| cursor.state.weights.clone())
            .unwrap_or_default();
        let policy = self
            .policy
            .get_or_insert_with(|| OdmPolicy::new(&drawn_with, settings));
        for (source, prior) in &drawn_with {
            policy.join(source, *prior);
        }
        let losses = std::mem::take(&mut self.pending).means();
        policy.update(&losses)
    }
}

/// Checks, before the first step, that the train stream is a mixture whose blocks name their
/// sources (`BlockSource::mixture_sources`).
pub fn check_sources(sources: Option<Vec<String>>) -> Result<(), TrainError> {
    let Some(sources) = sources else {
        return Err(TrainError::Mixing(
            "--mixing odm needs a stream whose blocks name their source (a `source` column); \
             this pipeline's stream has none"
                .into(),
        ));
    };
    if sources.len() < 2 {
        return Err(TrainError::Mixing(format!(
            "--mixing odm needs a mixture of at least two sources; the pipeline's train split \
             has {} ({})",
            sources.len(),
            sources.join(", ")
        )));
    }
    Ok(())
}

/// The policy's settings for a run.
pub fn settings(reward: OdmReward) -> OdmSettings {
    OdmSettings {
        reward,
        smoothing: 0.9,
        floor: 0.1,
        window: 8,
    }
}
