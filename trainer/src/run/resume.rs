//! Resuming a run: finding the checkpoint a `--resume` path names, and deciding which settings
//! may change when a run continues from it.

use std::path::{Path, PathBuf};

use crate::config::layers::{resolve, ConfigLayer};
use crate::config::{LossAverage, MaskingKey, TrainConfig};
use crate::error::TrainError;
use crate::run::checkpoint::{CheckpointStore, CHECKPOINTS_DIR, STATE_FILE};

/// The checkpoint `path` names: a checkpoint directory itself, or a run's output directory (or
/// its `checkpoints/`), whose newest complete checkpoint is taken.
pub fn locate(path: &Path) -> Result<PathBuf, TrainError> {
    if path.join(STATE_FILE).is_file() {
        return Ok(path.to_path_buf());
    }
    let store = if path.file_name().is_some_and(|name| name == CHECKPOINTS_DIR) {
        CheckpointStore::at(path)
    } else {
        CheckpointStore::in_run(path)
    };
    match store.complete()?.pop() {
        Some(newest) => Ok(newest.path),
        None => Err(TrainError::Checkpoint {
            path: path.to_path_buf(),
            message: "holds no complete checkpoint".into(),
        }),
    }
}

/// The output directory of the run a checkpoint directory belongs to.
pub fn run_dir_of(checkpoint: &Path) -> Option<PathBuf> {
    let store = checkpoint.parent()?;
    (store.file_name()? == CHECKPOINTS_DIR)
        .then(|| store.parent().map(Path::to_path_buf))
        .flatten()
}

/// The configuration a checkpoint was saved with.
pub fn read_config(checkpoint: &Path) -> Result<TrainConfig, TrainError> {
    let layer = ConfigLayer::from_toml_file(&checkpoint.join("config.toml"))?;
    resolve(None, &[layer])
}

/// Configuration keys that may differ on resume: they change where and how often things are
/// written, or the hardware, but not which numbers the run computes.
const FREE_ON_RESUME: &[&str] = &[
    "pipeline",
    "device",
    "out_dir",
    "log_every",
    "eval_every",
    "save_every",
    "keep_checkpoints",
    "restore_best",
    "max_steps",
    "devices",
    "nodes",
    "node_rank",
    "coordinator",
    "collective_timeout_s",
    "join_timeout_s",
    "coordinator_token_file",
    "coordinator_tls_ca",
    "coordinator_tls_cert",
    "coordinator_tls_key",
    "autodiff_checkpointing",
];

/// With block-keyed masks and token-averaged losses a step's numbers depend only on its blocks:
/// how they are split into ranks, micro-batches and batches may change as long as the global
/// batch stays the same.
const FREE_WITH_THE_GLOBAL_BATCH: &[&str] = &["batch_size", "grad_accum"];

/// When a resumed run has another world size than the checkpoint's and its batch was not set
/// again, gives it the per-device batch that keeps the checkpoint's global batch (if the new
/// world divides it), so that step `s` still trains on blocks `[s·G, (s+1)·G)`.
pub fn keep_global_batch(saved: &TrainConfig, resumed: &mut TrainConfig) {
    let per_rank = resumed.world_size() * resumed.grad_accum;
    if resumed.world_size() != saved.world_size()
        && world_size_free(saved)
        && saved.global_batch().is_multiple_of(per_rank)
    {
        resumed.batch_size = saved.global_batch() / per_rank;
    }
}

fn world_size_free(config: &TrainConfig) -> bool {
    config.masking_key == MaskingKey::Block && config.loss_average == LossAverage::Tokens
}

/// Refuses a resumed configuration that would not continue the saved run's computation.
/// `max_steps` may change (to extend a run), which also reshapes the learning rate's decay; the
/// devices may change, and with them the per-device batch, if the global batch stays the same.
pub fn check_resumable(saved: &TrainConfig, resumed: &TrainConfig) -> Result<(), TrainError> {
    let as_object = |config: &TrainConfig| {
        serde_json::to_value(config)
            .map(|value| value.as_object().cloned().unwrap_or_default())
            .map_err(|source| TrainError::Json {
                what: "the training configuration",
                source,
            })
    };
    if saved.global_batch() != resumed.global_batch() {
        return Err(TrainError::InvalidConfig(format!(
            "resuming cannot change the global batch (world size x batch_size x grad_accum) \
             from {} x {} x {} = {} to {} x {} x {} = {}: choose batch_size and grad_accum so \
             that the new world size keeps it",
            saved.world_size(),
            saved.batch_size,
            saved.grad_accum,
            saved.global_batch(),
            resumed.world_size(),
            resumed.batch_size,
            resumed.grad_accum,
            resumed.global_batch()
        )));
    }
    let batch_free = world_size_free(saved);
    let (saved, resumed) = (as_object(saved)?, as_object(resumed)?);
    let changed: Vec<&str> = saved
        .iter()
        .filter(|(key, value)| {
            let free = FREE_ON_RESUME.contains(&key.as_str())
                || (batch_free && FREE_WITH_THE_GLOBAL_BATCH.contains(&key.as_str()));
            !free && resumed.get(*key) != Some(value)
        })
        .map(|(key, _)| key.as_str())
        .collect();
    if changed.is_empty() {
        Ok(())
    } else {
        Err(TrainError::InvalidConfig(format!(
            "resuming cannot change {}: the checkpoint's run used other values",
            changed.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Preset;

    #[test]
    fn only_settings_that_keep_the_computation_may_change() {
        let saved = TrainConfig::new("http://a:1", "run", Preset::Tiny);
        let mut resumed = saved.clone();
        resumed.pipeline = "http://b:2".into();
        resumed.max_steps *= 2;
        resumed.save_every = 7;
        check_resumable(&saved, &resumed).expect("compatible");
        resumed.lr *= 2.0;
        resumed.seed += 1;
        let error = check_resumable(&saved, &resumed).expect_err("changes the math");
        let message = error.to_string();
        assert!(
            message.contains("lr") && message.contains("seed"),
            "{message}"
        );
    }

    #[test]
    fn a_checkpoint_knows_its_run() {
        let checkpoint = Path::new("/runs/a/checkpoints/step-0000010");
        assert_eq!(run_dir_of(checkpoint), Some(PathBuf::from("/runs/a")));
        assert_eq!(run_dir_of(Path::new("/elsewhere/step-1")), None);
    }

    #[test]
    fn another_world_size_keeps_the_global_batch() {
        let mut saved = TrainConfig::new("http://a:1", "run", Preset::Tiny);
        saved.devices = Some("cpu:2".parse().expect("devices"));
        saved.batch_size = 3;
        saved.grad_accum = 2;
        for (devices, batch_size) in [("cpu:1", 6), ("cpu:3", 2), ("cpu:6", 1)] {
            let mut resumed = saved.clone();
            resumed.devices = Some(devices.parse().expect("devices"));
            keep_global_batch(&saved, &mut resumed);
            assert_eq!(resumed.batch_size, batch_size, "{devices}");
            check_resumable(&saved, &resumed).expect("same global batch");
        }
        let mut resumed = saved.clone();
        resumed.devices = Some("cpu:4".parse().expect("devices"));
        keep_global_batch(&saved, &mut resumed);
        let error = check_resumable(&saved, &resumed).expect_err("12 blocks over 4 x 2");
        assert!(error.to_string().contains("batch_size"), "{error}");
        // Runs that mask by micro-batch keep their batch shape.
        let mut old = saved.clone();
        old.devices = None;
        old.masking_key = MaskingKey::MicroBatch;
        let mut resumed = old.clone();
        resumed.batch_size = 1;
        resumed.grad_accum = 6;
        assert!(check_resumable(&old, &resumed).is_err());
    }
}
