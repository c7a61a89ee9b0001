//! Resuming a run: finding the checkpoint a `--resume` path names, and deciding which settings
//! may change when a run continues from it.

use std::path::{Path, PathBuf};

use crate::config::layers::{resolve, ConfigLayer};
use crate::config::TrainConfig;
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
];

/// Refuses a resumed configuration that would not continue the saved run's computation.
/// `max_steps` may change (to extend a run), which also reshapes the learning rate's decay.
pub fn check_resumable(saved: &TrainConfig, resumed: &TrainConfig) -> Result<(), TrainError> {
    let as_object = |config: &TrainConfig| {
        serde_json::to_value(config)
            .map(|value| value.as_object().cloned().unwrap_or_default())
            .map_err(|source| TrainError::Json {
                what: "the training configuration",
                source,
            })
    };
    let (saved, resumed) = (as_object(saved)?, as_object(resumed)?);
    let changed: Vec<&str> = saved
        .iter()
        .filter(|(key, value)| {
            !FREE_ON_RESUME.contains(&key.as_str()) && resumed.get(*key) != Some(value)
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
}
