//! Checkpoints: everything a run needs to continue exactly where it stopped, one directory per
//! saved step, `OUT/checkpoints/step-NNNNNNN/`:
//!
//! | file                          | holds                                                       |
//! |-------------------------------|-------------------------------------------------------------|
//! | `model.mpk`                   | the weights (burn's named MessagePack record, f32)          |
//! | `optimizer.mpk`               | AdamW moments and step counts per parameter, both groups    |
//! | `state.json`                  | [`TrainingState`]: step (the schedule's position), the pipeline cursor, evaluations, best checkpoint |
//! | `config.toml`, `config.json`  | the resolved configuration                                  |
//!
//! No random generator state is stored because none is needed: masking draws from
//! `(seed, block_seq)` (`(seed, micro-batch index)` in runs started before data-parallel
//! training) and dropout from `(seed, step, rank)` (see [`crate::rng::rank_dropout_seed`]).
//!
//! A checkpoint is written into a hidden `.partial-…` directory that is renamed into place once
//! every file is on disk, so a run killed in the middle of a save leaves nothing that resuming
//! would pick up.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use burn::module::{AutodiffModule, Module};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::AutodiffBackend;
use flightlm_shared::Cursor;
use serde::{Deserialize, Serialize};

use crate::config::TrainConfig;
use crate::error::TrainError;
use crate::hf::{export_hf, HfRobertaConfig, HF_DIR, TOKENIZER_FILE};
use crate::mixing::MixingState;
use crate::model::Roberta;
use crate::model::RobertaConfig;
use crate::optim::adamw::{OptimizerRecord, TrainingOptimizer};
use crate::run::eval::Evaluation;
use crate::run::metrics::{Metric, MetricsLog};
use flightlm_shared::TokenizerInfo;

/// The subdirectory of a run's output directory that holds its checkpoints.
pub const CHECKPOINTS_DIR: &str = "checkpoints";
const STEP_PREFIX: &str = "step-";
const PARTIAL_PREFIX: &str = ".partial-";
pub(crate) const STATE_FILE: &str = "state.json";
const MODEL_FILE: &str = "model";
const OPTIMIZER_FILE: &str = "optimizer";
/// Bumped whenever the layout or `state.json` changes incompatibly.
pub const CHECKPOINT_FORMAT: u32 = 1;

/// The saved checkpoint with the lowest eval perplexity.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct BestCheckpoint {
    pub step: usize,
    pub eval_perplexity: f64,
}

/// Everything besides tensors that the loop needs to continue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingState {
    pub format: u32,
    /// Optimizer steps completed. The learning rate schedule, the masking streams and the dropout
    /// seeds all continue from this number.
    pub step: usize,
    pub train_tokens: usize,
    pub first_eval: Evaluation,
    pub last_eval: Evaluation,
    /// The evaluation taken at this very step, if any: what the best checkpoint is chosen by.
    pub eval_at_step: Option<Evaluation>,
    /// Lowest eval perplexity of the run so far (any evaluation, saved or not).
    pub best_eval_perplexity: f64,
    /// Best checkpoint so far, this one included.
    pub best_checkpoint: Option<BestCheckpoint>,
    /// The tokenizer the model's vocabulary belongs to.
    pub tokenizer_hash: String,
    /// Where the train stream continues: right after the last block this step consumed.
    pub cursor: Option<Cursor>,
    /// Input tokens trained on per source, for streams that name each block's source (runs on
    /// one device; checkpoints written before this existed have none).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_tokens: BTreeMap<String, u64>,
    /// The odm policy and the losses since its last update (`--mixing odm` runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mixing: Option<MixingState>,
}

/// A complete checkpoint on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SavedCheckpoint {
    pub step: usize,
    pub path: PathBuf,
}

fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::new()
}

fn checkpoint_error(path: &Path, message: impl std::fmt::Display) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// The checkpoints of one run.
#[derive(Clone, Debug)]
pub struct CheckpointStore {
    root: PathBuf,
}

impl CheckpointStore {
    /// The store whose directory is `root` (a run's `checkpoints/`).
    pub fn at(root: &Path) -> Self {
        CheckpointStore {
            root: root.to_path_buf(),
        }
    }

    /// The store of the run writing into `out_dir`.
    pub fn in_run(out_dir: &Path) -> Self {
        CheckpointStore {
            root: out_dir.join(CHECKPOINTS_DIR),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory the checkpoint of `step` has (or would have).
    pub fn path_of(&self, step: usize) -> PathBuf {
        self.root.join(format!("{STEP_PREFIX}{step:07}"))
    }

    /// Complete checkpoints, oldest first. Leftovers of interrupted saves are not listed.
    pub fn complete(&self) -> Result<Vec<SavedCheckpoint>, TrainError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(TrainError::io(&self.root, error)),
        };
        let mut saved = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| TrainError::io(&self.root, source))?;
            let name = entry.file_name();
            let Some(step) = name
                .to_str()
                .and_then(|name| name.strip_prefix(STEP_PREFIX))
                .and_then(|digits| digits.parse::<usize>().ok())
            else {
                continue;
            };
            let path = entry.path();
            if path.join(STATE_FILE).is_file() {
                saved.push(SavedCheckpoint { step, path });
            }
        }
        saved.sort_by_key(|checkpoint| checkpoint.step);
        Ok(saved)
    }

    /// Writes a checkpoint for `state.step` and returns its directory. An existing checkpoint of
    /// the same step (left by a run resumed from an earlier one) is replaced.
    pub fn save<B: AutodiffBackend>(
        &self,
        model: &Roberta<B>,
        optimizer: &TrainingOptimizer<B, Roberta<B>>,
        state: &TrainingState,
        config: &TrainConfig,
        hf_config: &HfRobertaConfig,
    ) -> Result<PathBuf, TrainError> {
        let target = self.path_of(state.step);
        let name = target
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let partial = self.root.join(format!("{PARTIAL_PREFIX}{name}"));
        if partial.exists() {
            fs::remove_dir_all(&partial).map_err(|source| TrainError::io(&partial, source))?;
        }
        fs::create_dir_all(&partial).map_err(|source| TrainError::io(&partial, source))?;

        model
            .clone()
            .save_file(partial.join(MODEL_FILE), &recorder())
            .map_err(|error| checkpoint_error(&partial, error))?;
        Recorder::<B>::record(
            &recorder(),
            optimizer.to_record(),
            partial.join(OPTIMIZER_FILE),
        )
        .map_err(|error| checkpoint_error(&partial, error))?;
        config.save(&partial)?;
        // The same weights as an HF model directory, so any checkpoint works with `export`,
        // `fill-mask`, `score` and `--init-from` (and loads in transformers as it is).
        let run_tokenizer = self
            .root
            .parent()
            .map(|run| run.join(TOKENIZER_FILE))
            .filter(|path| path.is_file());
        export_hf(
            &model.valid(),
            hf_config,
            run_tokenizer.as_deref(),
            &partial.join(HF_DIR),
        )?;
        // The state goes last: a directory with `state.json` is complete even without the rename.
        write_json(&partial.join(STATE_FILE), state)?;
        sync_dir_contents(&partial)?;

        if target.exists() {
            let stale = self.root.join(format!("{PARTIAL_PREFIX}replaced-{name}"));
            fs::rename(&target, &stale).map_err(|source| TrainError::io(&target, source))?;
            fs::remove_dir_all(&stale).map_err(|source| TrainError::io(&stale, source))?;
        }
        fs::rename(&partial, &target).map_err(|source| TrainError::io(&target, source))?;
        sync_dir(&self.root)?;
        Ok(target)
    }

    /// Deletes all but the newest `keep` checkpoints and `best`; returns what it deleted.
    pub fn prune(&self, keep: usize, best: Option<usize>) -> Result<Vec<PathBuf>, TrainError> {
        let saved = self.complete()?;
        let newest_kept = saved.len().saturating_sub(keep);
        let mut removed = Vec::new();
        for checkpoint in &saved[..newest_kept] {
            if Some(checkpoint.step) == best {
                continue;
            }
            fs::remove_dir_all(&checkpoint.path)
                .map_err(|source| TrainError::io(&checkpoint.path, source))?;
            removed.push(checkpoint.path.clone());
        }
        Ok(removed)
    }

    /// Removes what interrupted saves left behind.
    pub fn remove_partial(&self) -> Result<(), TrainError> {
        let Ok(entries) = fs::read_dir(&self.root) else {
            return Ok(());
        };
        for entry in entries.flatten() {
            let is_partial = entry
                .file_name()
                .to_str()
                .is_some_and(|name| name.starts_with(PARTIAL_PREFIX));
            if is_partial {
                let path = entry.path();
                fs::remove_dir_all(&path).map_err(|source| TrainError::io(&path, source))?;
            }
        }
        Ok(())
    }
}

pub fn read_state(checkpoint: &Path) -> Result<TrainingState, TrainError> {
    let path = checkpoint.join(STATE_FILE);
    let text = fs::read_to_string(&path).map_err(|source| TrainError::io(&path, source))?;
    let state: TrainingState =
        serde_json::from_str(&text).map_err(|error| checkpoint_error(&path, error))?;
    if state.format != CHECKPOINT_FORMAT {
        return Err(checkpoint_error(
            &path,
            format!(
                "has checkpoint format {}, this trainer reads {CHECKPOINT_FORMAT}",
                state.format
            ),
        ));
    }
    Ok(state)
}

/// `model` (freshly built to the checkpoint's configuration) with the checkpoint's weights.
pub fn load_model<B: AutodiffBackend>(
    checkpoint: &Path,
    model: Roberta<B>,
    device: &B::Device,
) -> Result<Roberta<B>, TrainError> {
    model
        .load_file(checkpoint.join(MODEL_FILE), &recorder(), device)
        .map_err(|error| checkpoint_error(checkpoint, error))
}

/// `optimizer` with the checkpoint's AdamW state. The state is keyed by parameter id, which the
/// model's record carries, so it must be loaded alongside [`load_model`].
pub fn load_optimizer<B: AutodiffBackend>(
    checkpoint: &Path,
    optimizer: TrainingOptimizer<B, Roberta<B>>,
    device: &B::Device,
) -> Result<TrainingOptimizer<B, Roberta<B>>, TrainError> {
    let record: OptimizerRecord<B, Roberta<B>> =
        Recorder::<B>::load(&recorder(), checkpoint.join(OPTIMIZER_FILE), device)
            .map_err(|error| checkpoint_error(checkpoint, error))?;
    Ok(optimizer.load_record(record))
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(value).map_err(|source| TrainError::Json {
        what: "the checkpoint state",
        source,
    })?;
    fs::write(path, text + "\n").map_err(|source| TrainError::io(path, source))
}

/// Flushes every file of `dir` and the directory itself to disk before it is renamed into
/// place, so the rename never publishes files whose data a crash could still lose.
fn sync_dir_contents(dir: &Path) -> Result<(), TrainError> {
    for entry in fs::read_dir(dir).map_err(|source| TrainError::io(dir, source))? {
        let path = entry.map_err(|source| TrainError::io(dir, source))?.path();
        fs::File::open(&path)
            .and_then(|file| file.sync_all())
            .map_err(|source| TrainError::io(&path, source))?;
    }
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), TrainError> {
    fs::File::open(dir)
        .and_then(|file| file.sync_all())
        .map_err(|source| TrainError::io(dir, source))
}
/// Where and how a run writes its checkpoints.
pub(crate) struct Saving<'a> {
    pub(crate) store: &'a CheckpointStore,
    pub(crate) config: &'a TrainConfig,
    pub(crate) tokenizer: &'a TokenizerInfo,
    /// The parameter hash every rank of a data-parallel run holds.
    pub(crate) agreed_hash: Option<u64>,
}

impl Saving<'_> {
    /// Writes the checkpoint of `state.step`, first making it the best one if its evaluation
    /// is the lowest so far, then prunes old checkpoints.
    pub(crate) fn save<B: AutodiffBackend>(
        &self,
        model: &Roberta<B>,
        optimizer: &TrainingOptimizer<B, Roberta<B>>,
        state: &mut TrainingState,
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
            &RobertaConfig::from_train_config(self.config, self.tokenizer),
            self.tokenizer,
        );
        let path = self
            .store
            .save(model, optimizer, state, self.config, &hf_config)?;
        self.store.prune(
            self.config.keep_checkpoints,
            state.best_checkpoint.map(|best| best.step),
        )?;
        metrics.record(Metric::Checkpoint {
            step: state.step,
            path,
            eval_perplexity: state.eval_at_step.map(|evaluation| evaluation.perplexity),
            parameter_hash: self.agreed_hash.map(|hash| format!("{hash:016x}")),
        })
    }
}
