//! Checkpoints on disk: a saved model and optimizer continue exactly as the originals would,
//! and the store lists, prunes and resumes only complete checkpoints.

use std::fs;
use std::path::{Path, PathBuf};

use burn::backend::Autodiff;

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use flightlm_trainer::model::{Roberta, RobertaConfig};
use flightlm_trainer::optim::adamw::{AdamWSettings, TrainingOptimizer};
use flightlm_trainer::run::checkpoint::{
    load_model, load_optimizer, read_state, BestCheckpoint, CheckpointStore, TrainingState,
    CHECKPOINT_FORMAT,
};
use flightlm_trainer::CpuBackend;
use flightlm_trainer::{Evaluation, Preset, TrainConfig};

type TestBackend = Autodiff<CpuBackend>;
type TestOptimizer = TrainingOptimizer<TestBackend, Roberta<TestBackend>>;

/// burn's CPU backend keeps one process-wide generator: seeded runs must not interleave.
fn backend_rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A checkpoint directory with only its state file, enough to be listed as complete.
fn write_state(dir: &Path, step: usize) {
    let text = serde_json::to_string(&state(step)).expect("JSON");
    fs::write(dir.join("state.json"), text).expect("writes the state");
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flightlm-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    dir
}

fn evaluation(perplexity: f64) -> Evaluation {
    Evaluation {
        loss: perplexity.ln(),
        perplexity,
        tokens: 10,
    }
}

fn state(step: usize) -> TrainingState {
    TrainingState {
        format: CHECKPOINT_FORMAT,
        step,
        train_tokens: 64 * step,
        first_eval: evaluation(60.0),
        last_eval: evaluation(20.0),
        eval_at_step: Some(evaluation(20.0)),
        best_eval_perplexity: 20.0,
        best_checkpoint: Some(BestCheckpoint {
            step,
            eval_perplexity: 20.0,
        }),
        tokenizer_hash: "tok".into(),
        cursor: None,
        source_tokens: [("books".to_string(), 64 * step as u64)].into(),
        mixing: None,
    }
}

/// One optimizer step on a fixed batch, with dropout drawn from a fixed seed.
fn step(
    model: Roberta<TestBackend>,
    mut optimizer: TestOptimizer,
) -> (Roberta<TestBackend>, TestOptimizer) {
    let device = Default::default();
    TestBackend::seed(&device, 5);
    let ids: Vec<i64> = (0..16).map(|i| 5 + (i * 7) % 50).collect();
    let input_ids = Tensor::<TestBackend, 2, Int>::from_data(TensorData::new(ids, [2, 8]), &device);
    let positions =
        Tensor::<TestBackend, 1, Int>::from_data(TensorData::new(vec![1i64, 6, 11], [3]), &device);
    let loss = model.forward(input_ids, positions).powi_scalar(2).mean();
    optimizer.accumulate(&model, loss.backward());
    let (model, _) = optimizer.step(1e-2, model);
    (model, optimizer)
}

struct Weights(Vec<Vec<f32>>);

impl<B: Backend> ModuleVisitor<B> for Weights {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.0
            .push(param.val().into_data().to_vec().expect("f32 data"));
    }
}

fn weights(model: &Roberta<TestBackend>) -> Vec<Vec<f32>> {
    let mut visitor = Weights(Vec::new());
    model.visit(&mut visitor);
    visitor.0
}

#[test]
fn a_restored_checkpoint_continues_exactly() {
    let _rng = backend_rng_lock();
    let device = Default::default();
    let dir = scratch("checkpoint-round-trip");
    let config = TrainConfig::new("memory", &dir, Preset::Tiny);
    let settings = AdamWSettings::from_train_config(&config);
    let shape = RobertaConfig::new(64, 16, 1, 2, 32, 18).with_pad_id(Some(1));
    TestBackend::seed(&device, 1);
    let (model, optimizer) = step(shape.init(&device), TestOptimizer::new(settings));

    let store = CheckpointStore::in_run(&dir);
    let saved = state(1);
    let tokenizer = flightlm_shared::TokenizerInfo::roberta("test", 64);
    let hf_config = flightlm_trainer::hf::HfRobertaConfig::from_model(&shape, &tokenizer);
    let path = store
        .save(&model, &optimizer, &saved, &config, &hf_config)
        .expect("saves");
    assert!(path.join("hf/config.json").is_file() && path.join("hf/model.safetensors").is_file());
    assert_eq!(path, store.path_of(1));
    assert_eq!(read_state(&path).expect("reads"), saved);
    assert!(path.join("config.toml").is_file() && path.join("config.json").is_file());

    TestBackend::seed(&device, 2);
    let fresh: Roberta<TestBackend> = shape.init(&device);
    assert_ne!(weights(&fresh), weights(&model));
    let loaded = load_model(&path, fresh, &device).expect("loads the model");
    assert_eq!(weights(&loaded), weights(&model));
    let loaded_optimizer =
        load_optimizer(&path, TestOptimizer::new(settings), &device).expect("loads");

    // The moments matter: a fresh optimizer would take a different second step.
    let (continued, _) = step(model.clone(), optimizer);
    let (resumed, _) = step(loaded, loaded_optimizer);
    let (restarted, _) = step(model, TestOptimizer::new(settings));
    assert_eq!(weights(&resumed), weights(&continued));
    assert_ne!(weights(&restarted), weights(&continued));
    fs::remove_dir_all(&dir).ok();
}

#[test]
fn keeps_the_newest_and_the_best_and_ignores_partial_saves() {
    let dir = scratch("checkpoint-prune");
    let store = CheckpointStore::in_run(&dir);
    for step in [2, 4, 6, 8, 10] {
        let path = store.path_of(step);
        fs::create_dir_all(&path).expect("dir");
        write_state(&path, step);
    }
    let partial = store.root().join(".partial-step-0000012");
    fs::create_dir_all(&partial).expect("dir");
    write_state(&partial, 12);
    let no_state = store.path_of(14);
    fs::create_dir_all(&no_state).expect("dir");

    let steps = |store: &CheckpointStore| -> Vec<usize> {
        store
            .complete()
            .expect("lists")
            .iter()
            .map(|c| c.step)
            .collect()
    };
    assert_eq!(steps(&store), [2, 4, 6, 8, 10]);
    let removed = store.prune(2, Some(4)).expect("prunes");
    assert_eq!(removed, [store.path_of(2), store.path_of(6)]);
    assert_eq!(steps(&store), [4, 8, 10]);

    store.remove_partial().expect("cleans");
    assert!(!partial.exists());
    assert_eq!(
        flightlm_trainer::run::resume::locate(&dir).expect("newest"),
        store.path_of(10)
    );
    assert_eq!(
        flightlm_trainer::run::resume::locate(&store.path_of(4)).expect("itself"),
        store.path_of(4)
    );
    assert!(flightlm_trainer::run::resume::locate(&dir.join("nothing")).is_err());
    fs::remove_dir_all(&dir).ok();
}
