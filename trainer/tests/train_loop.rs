//! The training loop on a generated corpus: the loss falls, the metric lines come as
//! configured, evaluation is reproducible, malformed batches are refused.

use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
use burn::backend::Autodiff;
use burn::tensor::backend::AutodiffBackend;

use flightlm_trainer::data::synthetic::{SyntheticConfig, SyntheticSource};
use flightlm_trainer::run::metrics::{Metric, MetricsLog};
use flightlm_trainer::CpuBackend;
use flightlm_trainer::{train, Objective, Precision, Preset, TrainConfig, TrainSummary};

type TestBackend = Autodiff<CpuBackend>;

/// burn's CPU backend keeps one process-wide generator: seeded runs must not interleave.
fn backend_rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn tiny_config(max_steps: usize) -> TrainConfig {
    let mut config = TrainConfig::new("memory", "unused", Preset::Tiny);
    config.model.layers = 2;
    config.model.hidden = 64;
    config.model.heads = 2;
    config.model.intermediate = 128;
    config.seq_len = 32;
    config.batch_size = 8;
    config.grad_accum = 2;
    config.lr = 2e-3;
    config.warmup_steps = 5;
    config.max_steps = max_steps;
    config.log_every = 10;
    config.eval_every = 20;
    config
}

/// Trains `config` on a generated corpus of 64 words (vocab 512, blocks of 32, batches of 8).
fn train_on_words(config: &TrainConfig) -> (TrainSummary<TestBackend>, MetricsLog) {
    train_on_words_with::<TestBackend>(config)
}

fn train_on_words_with<B: AutodiffBackend>(config: &TrainConfig) -> (TrainSummary<B>, MetricsLog) {
    let mut source = SyntheticSource::new(SyntheticConfig {
        words: 64,
        ..SyntheticConfig::new(512, 32, 8)
    });
    let mut metrics = MetricsLog::in_memory();
    let summary =
        train::<B>(config, &mut source, &Default::default(), &mut metrics).expect("trains");
    (summary, metrics)
}

#[test]
fn a_few_steps_lower_the_loss_clearly() {
    let _rng = backend_rng_lock();
    let config = tiny_config(40);
    let (summary, metrics) = train_on_words(&config);

    let first = summary.first_eval;
    let last = summary.last_eval;
    assert!(
        (first.loss - (512f64).ln()).abs() < 0.5,
        "an untrained model is close to uniform: {first:?}"
    );
    assert!(
        last.perplexity * 3.0 < first.perplexity,
        "perplexity {} -> {}",
        first.perplexity,
        last.perplexity
    );
    assert_eq!(summary.train_tokens, 40 * 2 * 8 * 32);

    let kinds: Vec<&str> = metrics
        .records()
        .iter()
        .map(|metric| match metric {
            Metric::Start { .. } => "start",
            Metric::Eval { .. } => "eval",
            Metric::Train { .. } => "train",
            Metric::Done { .. } => "done",
            _ => "other",
        })
        .collect();
    assert_eq!(kinds.first(), Some(&"start"));
    assert_eq!(kinds.last(), Some(&"done"));
    assert_eq!(kinds.iter().filter(|kind| **kind == "train").count(), 4);
    // Before the first step, at step 20, at step 40.
    assert_eq!(kinds.iter().filter(|kind| **kind == "eval").count(), 3);
    for metric in metrics.records() {
        if let Metric::Train {
            tokens_per_s,
            data_wait,
            lr,
            ..
        } = metric
        {
            assert!(*tokens_per_s > 0.0);
            assert!((0.0..=1.0).contains(data_wait));
            assert!(*lr <= config.lr);
        }
    }
}

#[test]
fn the_causal_objective_trains_too() {
    let _rng = backend_rng_lock();
    let mut config = tiny_config(20);
    config.objective = Objective::Causal;
    let (summary, _) = train_on_words(&config);
    assert!(
        summary.last_eval.perplexity * 3.0 < summary.first_eval.perplexity,
        "{:?} -> {:?}",
        summary.first_eval,
        summary.last_eval
    );
}

/// bf16 mixed precision, the GPU recipe, runs on the CPU backend as well: the whole loop (both
/// objectives, evaluation, the optimizer on f32 master weights) learns as the f32 run does.
#[test]
fn bf16_mixed_precision_trains_like_f32() {
    let _rng = backend_rng_lock();
    for objective in [Objective::Mlm, Objective::Causal] {
        let mut eval_losses = Vec::new();
        for precision in [Precision::F32, Precision::Bf16] {
            let mut config = tiny_config(20);
            config.objective = objective;
            config.precision = precision;
            config.validate().expect("valid");
            let (summary, _) = train_on_words(&config);
            assert!(
                summary.last_eval.perplexity * 3.0 < summary.first_eval.perplexity,
                "{objective:?} {precision:?}: {:?} -> {:?}",
                summary.first_eval,
                summary.last_eval
            );
            eval_losses.push(summary.last_eval.loss);
        }
        assert!(
            (eval_losses[0] - eval_losses[1]).abs() < 0.05,
            "{objective:?}: f32 and bf16 eval losses {eval_losses:?}"
        );
    }
}

#[test]
fn evaluation_is_reproducible() {
    let _rng = backend_rng_lock();
    let config = tiny_config(1);
    let device = Default::default();
    let run = || {
        let mut source = SyntheticSource::new(SyntheticConfig::new(256, 32, 8));
        let mut metrics = MetricsLog::in_memory();
        train::<TestBackend>(&config, &mut source, &device, &mut metrics)
            .expect("trains")
            .first_eval
    };
    assert_eq!(run(), run());
}

#[test]
fn rejects_blocks_of_the_wrong_length() {
    let _rng = backend_rng_lock();
    let config = tiny_config(1);
    let mut source = SyntheticSource::new(SyntheticConfig::new(256, 16, 8));
    let mut metrics = MetricsLog::in_memory();
    let error = train::<TestBackend>(&config, &mut source, &Default::default(), &mut metrics)
        .expect_err("seq_len mismatch");
    assert!(error.to_string().contains("16 tokens"), "{error}");
}

#[test]
fn balanced_checkpointing_recomputes_the_same_numbers() {
    let _rng = backend_rng_lock();
    let mut config = tiny_config(6);
    config.log_every = 1;
    let (kept, kept_metrics) = train_on_words(&config);
    let (recomputed, recomputed_metrics) =
        train_on_words_with::<Autodiff<CpuBackend, BalancedCheckpointing>>(&config);
    let losses = kept_metrics.train_losses();
    assert_eq!(losses.len(), 6);
    assert_eq!(
        losses,
        recomputed_metrics.train_losses(),
        "the same losses, step for step"
    );
    assert_eq!(kept.last_eval.loss, recomputed.last_eval.loss);
}
