//! Exact resume on a generated corpus: a run continued from a checkpoint, or after a stop
//! request, logs the same loss at every later step as the run that was never interrupted.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use burn::backend::Autodiff;

use flightlm_shared::{Cursor, TokenBlocks, TokenizerInfo};
use flightlm_trainer::data::source::BlockSource;
use flightlm_trainer::data::synthetic::{SyntheticConfig, SyntheticSource};
use flightlm_trainer::run::checkpoint::{read_state, CheckpointStore};
use flightlm_trainer::run::metrics::{Metric, MetricsLog};
use flightlm_trainer::run::resume::locate;
use flightlm_trainer::CpuBackend;
use flightlm_trainer::{train_with, Preset, RunControl, TrainConfig, TrainSummary};

type TestBackend = Autodiff<CpuBackend>;

/// burn's CPU backend keeps one process-wide generator: seeded runs must not interleave.
fn backend_rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flightlm-resume-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn source_config() -> SyntheticConfig {
    SyntheticConfig {
        words: 64,
        ..SyntheticConfig::new(256, 32, 4)
    }
}

fn config(out: &Path) -> TrainConfig {
    let mut config = TrainConfig::new("memory", out, Preset::Tiny);
    config.model.hidden = 32;
    config.model.intermediate = 64;
    config.seq_len = 32;
    config.batch_size = 4;
    config.grad_accum = 2;
    config.lr = 2e-3;
    config.warmup_steps = 3;
    config.max_steps = 12;
    config.log_every = 1;
    config.eval_every = 2;
    config.save_every = 4;
    config
}

/// Runs `config` and returns the summary and the loss of every step it logged.
fn run(
    config: &TrainConfig,
    source: &mut dyn BlockSource,
    resume: Option<PathBuf>,
    stop: Option<&AtomicBool>,
) -> (TrainSummary<TestBackend>, Vec<(usize, f64)>, Vec<Metric>) {
    let mut metrics = MetricsLog::in_memory();
    let control = RunControl {
        checkpoints: Some(CheckpointStore::in_run(&config.out_dir)),
        resume,
        stop,
        block_log: None,
    };
    let summary =
        train_with::<TestBackend>(config, source, &Default::default(), &mut metrics, control)
            .expect("trains");
    let losses = metrics
        .records()
        .iter()
        .filter_map(|metric| match metric {
            Metric::Train { step, loss, .. } => Some((*step, *loss)),
            _ => None,
        })
        .collect();
    (summary, losses, metrics.records().to_vec())
}

/// The uninterrupted run is not bit-for-bit reproducible on the CPU backend (runs differ by
/// ~1e-7 relative after a few steps, with one thread too: SIMD reductions depend on buffer
/// alignment), so losses are compared within this tolerance.
const LOSS_TOLERANCE: f64 = 1e-5;

fn assert_same_losses(actual: &[(usize, f64)], expected: &[(usize, f64)]) {
    let steps = |losses: &[(usize, f64)]| losses.iter().map(|(step, _)| *step).collect::<Vec<_>>();
    assert_eq!(steps(actual), steps(expected));
    for ((step, actual), (_, expected)) in actual.iter().zip(expected) {
        assert!(
            (actual - expected).abs() <= LOSS_TOLERANCE,
            "step {step}: loss {actual} where the uninterrupted run has {expected}"
        );
    }
}

fn resumed_source(checkpoint: &Path) -> SyntheticSource {
    let cursor = read_state(checkpoint)
        .expect("state")
        .cursor
        .expect("the synthetic source has a cursor");
    SyntheticSource::resume(source_config(), &cursor).expect("resumes the stream")
}

#[test]
fn a_run_resumed_from_a_checkpoint_logs_the_same_losses() {
    let _rng = backend_rng_lock();
    let first = config(&scratch("uninterrupted"));
    let (summary, losses, records) = run(
        &first,
        &mut SyntheticSource::new(source_config()),
        None,
        None,
    );
    assert_eq!(losses.len(), 12);

    // The uninterrupted run is itself reproducible.
    let again = config(&scratch("again"));
    let (_, losses_again, _) = run(
        &again,
        &mut SyntheticSource::new(source_config()),
        None,
        None,
    );
    assert_same_losses(&losses_again, &losses);

    // Continue from the checkpoint of step 4, as after a kill right after it was written.
    let checkpoint = CheckpointStore::in_run(&first.out_dir).path_of(4);
    let mut resumed_config = config(&scratch("resumed"));
    resumed_config.out_dir = scratch("resumed");
    let (resumed, resumed_losses, _) = run(
        &resumed_config,
        &mut resumed_source(&checkpoint),
        Some(checkpoint),
        None,
    );
    assert_same_losses(&resumed_losses, &losses[4..]);
    assert!((resumed.last_eval.loss - summary.last_eval.loss).abs() <= LOSS_TOLERANCE);
    assert_eq!(resumed.train_tokens, summary.train_tokens);

    // Every evaluation that beat the earlier ones was saved (eval every 2 steps, save every 4),
    // so the best evaluation of the trained steps is the best checkpoint, restored at the end,
    // and the `best` and `done` lines name it alike.
    let mut best_eval: Option<(usize, f64)> = None;
    for metric in &records {
        if let Metric::Eval {
            step,
            eval_perplexity,
            ..
        } = metric
        {
            if *step > 0 && best_eval.is_none_or(|(_, best)| *eval_perplexity < best) {
                best_eval = Some((*step, *eval_perplexity));
            }
        }
    }
    let (best_step, best_perplexity) = best_eval.expect("evaluations after step 0");
    let best = summary.best.expect("a best checkpoint");
    assert_eq!(
        (best.step, best.eval_perplexity),
        (best_step, best_perplexity)
    );
    assert_eq!(summary.restored_best, best.step != 12);
    let best_line = records.iter().find_map(|metric| match metric {
        Metric::Best {
            step,
            eval_perplexity,
            ..
        } => Some((*step, *eval_perplexity)),
        _ => None,
    });
    assert_eq!(best_line, Some((best_step, best_perplexity)));
    let done = records.iter().find_map(|metric| match metric {
        Metric::Done {
            best_eval_perplexity,
            best_step,
            ..
        } => Some((*best_step, *best_eval_perplexity)),
        _ => None,
    });
    assert_eq!(done, Some((Some(best_step), best_perplexity)));
    let kept: Vec<usize> = CheckpointStore::in_run(&first.out_dir)
        .complete()
        .expect("lists")
        .iter()
        .map(|checkpoint| checkpoint.step)
        .collect();
    assert!(kept.contains(&best_step) && kept.contains(&12), "{kept:?}");
    assert!(kept.len() <= 6, "the 5 newest and the best: {kept:?}");
    for dir in [&first.out_dir, &again.out_dir, &resumed_config.out_dir] {
        std::fs::remove_dir_all(dir).ok();
    }
}

/// A source that raises the stop flag once it has handed out `batches` batches.
struct StopAfter<'a> {
    inner: SyntheticSource,
    batches: usize,
    flag: &'a AtomicBool,
}

impl BlockSource for StopAfter<'_> {
    fn tokenizer(&self) -> &TokenizerInfo {
        self.inner.tokenizer()
    }

    fn next_train_batch(&mut self) -> anyhow::Result<TokenBlocks> {
        self.batches = self.batches.saturating_sub(1);
        if self.batches == 0 {
            self.flag.store(true, Ordering::SeqCst);
        }
        self.inner.next_train_batch()
    }

    fn valid_batches(&mut self, max_blocks: Option<usize>) -> anyhow::Result<Vec<TokenBlocks>> {
        self.inner.valid_batches(max_blocks)
    }

    fn seconds_waited(&self) -> f64 {
        self.inner.seconds_waited()
    }

    fn cursor(&self) -> Option<Cursor> {
        self.inner.cursor()
    }
}

#[test]
fn a_stop_request_checkpoints_the_step_and_the_run_continues_exactly() {
    let _rng = backend_rng_lock();
    let uninterrupted = config(&scratch("reference"));
    let (_, losses, _) = run(
        &uninterrupted,
        &mut SyntheticSource::new(source_config()),
        None,
        None,
    );

    let stopped_config = config(&scratch("stopped"));
    let flag = AtomicBool::new(false);
    // The flag goes up in the middle of step 3 (its first micro-batch is batch 5).
    let mut source = StopAfter {
        inner: SyntheticSource::new(source_config()),
        batches: 5,
        flag: &flag,
    };
    let (stopped, stopped_losses, records) = run(&stopped_config, &mut source, None, Some(&flag));
    assert!(stopped.stopped);
    assert_eq!(stopped.steps, 3);
    assert_same_losses(&stopped_losses, &losses[..3]);
    assert!(records
        .iter()
        .any(|metric| matches!(metric, Metric::Stop { step: 3, .. })));
    assert!(!records
        .iter()
        .any(|metric| matches!(metric, Metric::Done { .. })));

    let checkpoint = locate(&stopped_config.out_dir).expect("the stop wrote a checkpoint");
    assert_eq!(
        checkpoint,
        CheckpointStore::in_run(&stopped_config.out_dir).path_of(3)
    );
    let (resumed, resumed_losses, _) = run(
        &stopped_config,
        &mut resumed_source(&checkpoint),
        Some(checkpoint),
        None,
    );
    assert!(!resumed.stopped);
    assert_same_losses(&resumed_losses, &losses[3..]);
    for dir in [&uninterrupted.out_dir, &stopped_config.out_dir] {
        std::fs::remove_dir_all(dir).ok();
    }
}
