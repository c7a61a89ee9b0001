//! Data-parallel training in one process on CPU ranks, over a generated corpus: N ranks of batch
//! b compute what one rank of batch N·b computes, and a rank that fails ends every rank with its
//! error instead of leaving them waiting.
//!
//! burn-collective's group is process-wide state, so these tests run one at a time.

use std::time::{Duration, Instant};

use burn::backend::Autodiff;
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use flightlm_shared::{Cursor, TokenBlocks, TokenizerInfo};
use flightlm_trainer::data::synthetic::{SyntheticConfig, SyntheticSource};
use flightlm_trainer::run::data_parallel::train_data_parallel;
use flightlm_trainer::run::metrics::MetricsLog;
use flightlm_trainer::{
    train, BlockSource, CpuBackend, CpuDevice, Preset, RunControl, TrainConfig, TrainError,
};

type TestBackend = Autodiff<CpuBackend>;

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn config(devices: usize, batch_size: usize) -> TrainConfig {
    let mut config = TrainConfig::new("memory", "unused", Preset::Tiny);
    config.model.hidden = 64;
    config.model.intermediate = 128;
    config.seq_len = 32;
    config.batch_size = batch_size;
    config.grad_accum = 2;
    config.lr = 3e-3;
    config.warmup_steps = 0;
    config.dropout = 0.0;
    config.max_steps = 4;
    config.log_every = 1;
    config.eval_every = 2;
    if devices > 1 {
        config.devices = Some(format!("cpu:{devices}").parse().expect("devices"));
    }
    config
}

fn words(batch_size: usize) -> SyntheticConfig {
    // The same valid split whatever the batch (by default it is four batches).
    SyntheticConfig {
        words: 64,
        valid_blocks: 32,
        ..SyntheticConfig::new(512, 32, batch_size)
    }
}

fn parameters<B: Backend>(model: &impl Module<B>) -> Vec<f32> {
    struct Values(Vec<f32>);
    impl<B: Backend> ModuleVisitor<B> for Values {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.0
                .extend(param.val().into_data().to_vec::<f32>().expect("f32"));
        }
    }
    let mut values = Values(Vec::new());
    model.visit(&mut values);
    values.0
}

#[test]
fn two_ranks_compute_what_one_rank_of_twice_the_batch_computes() {
    let _serial = one_at_a_time();
    let single = config(1, 8);
    let mut source = SyntheticSource::new(words(8));
    let mut single_metrics = MetricsLog::in_memory();
    let alone = train::<TestBackend>(
        &single,
        &mut source,
        &Default::default(),
        &mut single_metrics,
    )
    .expect("one rank trains");

    let parallel = config(2, 4);
    let sources: Vec<Box<dyn BlockSource + Send>> = (0..2)
        .map(|rank| Box::new(SyntheticSource::new(words(4)).sharded(rank, 2)) as _)
        .collect();
    let mut parallel_metrics = MetricsLog::in_memory();
    let together = train_data_parallel::<TestBackend>(
        &parallel,
        sources,
        vec![CpuDevice::default(); 2],
        &mut parallel_metrics,
        RunControl::default(),
    )
    .expect("two ranks train");

    let (expected, got) = (
        single_metrics.train_losses(),
        parallel_metrics.train_losses(),
    );
    assert_eq!(expected.len(), 4);
    for (step, (a, b)) in expected.iter().zip(&got).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 * a.abs(),
            "step {}: {a} vs {b}",
            step + 1
        );
    }
    assert!(expected[3] < expected[0] - 0.05, "it learns: {expected:?}");
    let (a, b) = (alone.last_eval.loss, together.last_eval.loss);
    assert!((a - b).abs() <= 1e-5 * a, "eval loss {a} vs {b}");
    let (a, b) = (
        parameters(&alone.model.valid()),
        parameters(&together.model.valid()),
    );
    let largest = a
        .iter()
        .zip(&b)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(largest < 1e-4, "parameters differ by up to {largest}");
}

/// A source that fails after handing out `batches` batches.
struct FailingAfter {
    inner: SyntheticSource,
    batches: usize,
}

impl BlockSource for FailingAfter {
    fn tokenizer(&self) -> &TokenizerInfo {
        self.inner.tokenizer()
    }

    fn next_train_batch(&mut self) -> anyhow::Result<TokenBlocks> {
        if self.batches == 0 {
            anyhow::bail!("the stream broke");
        }
        self.batches -= 1;
        self.inner.next_train_batch()
    }

    fn valid_batches(&mut self, max_blocks: Option<usize>) -> anyhow::Result<Vec<TokenBlocks>> {
        self.inner.valid_batches(max_blocks)
    }

    fn seconds_waited(&self) -> f64 {
        0.0
    }

    fn cursor(&self) -> Option<Cursor> {
        self.inner.cursor()
    }
}

#[test]
fn a_failing_rank_ends_every_rank_with_its_error() {
    let _serial = one_at_a_time();
    let parallel = config(3, 4);
    let sources: Vec<Box<dyn BlockSource + Send>> = (0..3)
        .map(|rank| {
            let inner = SyntheticSource::new(words(4)).sharded(rank, 3);
            let batches = if rank == 1 { 3 } else { usize::MAX };
            Box::new(FailingAfter { inner, batches }) as _
        })
        .collect();
    let started = Instant::now();
    let run = train_data_parallel::<TestBackend>(
        &parallel,
        sources,
        vec![CpuDevice::default(); 3],
        &mut MetricsLog::in_memory(),
        RunControl::default(),
    );
    let Err(error) = run else {
        panic!("the run trained although rank 1's source failed");
    };
    assert!(
        matches!(&error, TrainError::Rank { rank: 1, .. }),
        "{error}"
    );
    let message = error.to_string();
    assert!(
        message.starts_with("rank 1: data source failed: the stream broke"),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(60));

    // The group is usable again: the next run in this process trains.
    let sources: Vec<Box<dyn BlockSource + Send>> = (0..2)
        .map(|rank| Box::new(SyntheticSource::new(words(4)).sharded(rank, 2)) as _)
        .collect();
    train_data_parallel::<TestBackend>(
        &config(2, 4),
        sources,
        vec![CpuDevice::default(); 2],
        &mut MetricsLog::in_memory(),
        RunControl::default(),
    )
    .expect("a later run trains");
}

/// Four CPU ranks share one device: their gradients are summed in rank order, so two runs give
/// the same bits, with dropout on (its masks are keyed by block).
#[test]
fn four_cpu_ranks_give_the_same_bits_every_time() {
    let _serial = one_at_a_time();
    let run = || {
        let mut parallel = config(4, 2);
        parallel.dropout = 0.1;
        let sources: Vec<Box<dyn BlockSource + Send>> = (0..4)
            .map(|rank| Box::new(SyntheticSource::new(words(2)).sharded(rank, 4)) as _)
            .collect();
        let mut metrics = MetricsLog::in_memory();
        let summary = train_data_parallel::<TestBackend>(
            &parallel,
            sources,
            vec![CpuDevice::default(); 4],
            &mut metrics,
            RunControl::default(),
        )
        .expect("four ranks train");
        (metrics.train_losses(), parameters(&summary.model.valid()))
    };
    let (first_losses, first_parameters) = run();
    let (second_losses, second_parameters) = run();
    assert_eq!(first_losses.len(), 4);
    let bits = |values: &[f64]| {
        values
            .iter()
            .map(|value| value.to_bits())
            .collect::<Vec<_>>()
    };
    assert_eq!(bits(&first_losses), bits(&second_losses), "losses");
    let differing = first_parameters
        .iter()
        .zip(&second_parameters)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    assert_eq!(differing, 0, "of {} parameters", first_parameters.len());
}
