//! `flightlm-trainer`: the command line over the trainer library.
//!
//! `train` reads blocks from a running pipeline; `bench` trains on a generated in-memory corpus
//! to measure the training speed of a preset on this machine without any pipeline.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context};
use burn::backend::cuda::CudaDevice;
use burn::backend::ndarray::NdArrayDevice;
use burn::backend::{Autodiff, Cuda, NdArray};
use burn::tensor::Tensor;
use clap::{Args, Parser, Subcommand};
use flightlm_trainer::config_layers::{resolve, ConfigLayer};
use flightlm_trainer::data::PipelineSource;
use flightlm_trainer::metrics::MetricsLog;
use flightlm_trainer::source::BlockSource;
use flightlm_trainer::synthetic::{SyntheticConfig, SyntheticSource};
use flightlm_trainer::{train, DeviceKind, Objective, Preset, TrainConfig};
use serde::Serialize;

type CpuBackend = Autodiff<NdArray<f32>>;
type CudaBackend = Autodiff<Cuda<f32>>;

#[derive(Parser)]
#[command(
    name = "flightlm-trainer",
    version,
    about = "Pre-train RoBERTa-style models in burn"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train on token blocks streamed from a flightlm pipeline.
    Train {
        #[command(flatten)]
        run: RunArgs,
    },
    /// Train on a generated corpus held in memory, to measure speed.
    Bench {
        /// Vocabulary size of the generated corpus.
        #[arg(long, default_value_t = 8192)]
        vocab_size: u32,
        #[command(flatten)]
        run: RunArgs,
    },
}

/// Settings shared by every command that trains. Each flag overrides the `--config` file, which
/// overrides the seed recipe; unset flags keep the value from below. The field names are the
/// configuration's keys (see `TrainConfig`), so the set flags form one configuration layer.
#[derive(Args, Serialize)]
struct RunArgs {
    /// TOML file with configuration keys (any field of the saved config.toml).
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// The pipeline's Flight endpoint, e.g. http://127.0.0.1:50051.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pipeline: Option<String>,
    /// Directory for config.toml, metrics.jsonl and checkpoints/.
    #[arg(long)]
    #[serde(rename = "out_dir", skip_serializing_if = "Option::is_none")]
    out: Option<PathBuf>,
    /// [default: mlm]
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    objective: Option<Objective>,
    /// Model size: tiny (2x128), small (4x256), base (12x768), large (24x1024) [default: base].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    preset: Option<Preset>,
    /// Optimizer steps; the learning rate decays linearly to 0 at the last one [default: 10000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_steps: Option<usize>,
    /// [default: cpu]
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<DeviceKind>,
    /// Tokens per block [default: 128].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    seq_len: Option<usize>,
    /// Blocks per micro-batch [default: 32].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    batch_size: Option<usize>,
    /// Micro-batches averaged into one optimizer step [default: 4].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    grad_accum: Option<usize>,
    /// Peak learning rate [default: 5e-4].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    lr: Option<f64>,
    /// Linear warmup steps [default: 1000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    warmup_steps: Option<usize>,
    /// AdamW weight decay, not applied to biases and LayerNorm [default: 0.1].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    weight_decay: Option<f64>,
    /// Global gradient-norm clipping threshold; 0 disables clipping [default: 1.0].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_grad_norm: Option<f64>,
    /// Share of tokens the MLM objective predicts [default: 0.15].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    mlm_probability: Option<f64>,
    /// Dropout on embeddings, attention and residual branches [default: 0.1].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    dropout: Option<f64>,
    /// Steps between train metric lines [default: 10].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    log_every: Option<usize>,
    /// Steps between evaluations on the valid split [default: 500].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_every: Option<usize>,
    /// Steps between checkpoints [default: 500].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    save_every: Option<usize>,
    /// Newest checkpoints kept, besides the best one [default: 5].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    keep_checkpoints: Option<usize>,
    /// Seed for initialization, dropout and masking [default: 42].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
}

impl RunArgs {
    /// The configuration these flags and their `--config` file describe.
    fn config(&self) -> anyhow::Result<TrainConfig> {
        let mut layers = Vec::new();
        if let Some(path) = &self.config {
            layers.push(ConfigLayer::from_toml_file(path)?);
        }
        layers.push(ConfigLayer::from_serialize("command-line flags", self)?);
        Ok(resolve(None, &layers)?)
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
    // Logs go to stderr: stdout carries only the JSON metric lines.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Every CPU training step allocates and frees the same few dozen multi-megabyte tensors.
/// glibc serves blocks above 128 KiB with fresh `mmap`s and trims the heap top eagerly, so each
/// step would page-fault all of that memory in again (measured: ~15 % of a tiny-preset step).
/// Keeping freed memory in the heap makes the next step reuse it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    const MMAP_THRESHOLD: libc::c_int = 32 << 20; // glibc's upper bound for this tunable
    const TRIM_THRESHOLD: libc::c_int = 1 << 30;
    const TOP_PAD: libc::c_int = 64 << 20;
    // SAFETY: `mallopt` only sets allocator tunables; it runs first in `main`, before any other
    // thread exists. A rejected value leaves glibc's default in place, which is harmless.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        libc::mallopt(libc::M_TOP_PAD, TOP_PAD);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train { run } => {
            let config = run.config()?;
            if config.pipeline.is_empty() {
                bail!(
                    "no pipeline to read from: pass --pipeline URL or set `pipeline` in --config"
                );
            }
            if config.out_dir.as_os_str().is_empty() {
                bail!("no output directory: pass --out DIR or set `out_dir` in --config");
            }
            let (pipeline, out) = (config.pipeline.clone(), config.out_dir.clone());
            config.save(&out)?;
            let mut source =
                PipelineSource::connect(&pipeline, config.seq_len, config.batch_size, None)
                    .with_context(|| format!("connecting to the pipeline at {pipeline}"))?;
            let mut metrics = MetricsLog::create(&out, true)?;
            train_on(&config, &mut source, &mut metrics)
        }
        Command::Bench { vocab_size, run } => {
            let mut config = run.config()?;
            config.pipeline = "synthetic".into();
            let mut metrics = if config.out_dir.as_os_str().is_empty() {
                MetricsLog::in_memory().with_echo(true)
            } else {
                config.save(&config.out_dir)?;
                MetricsLog::create(&config.out_dir, true)?
            };
            let mut source = SyntheticSource::new(SyntheticConfig::new(
                vocab_size,
                config.seq_len,
                config.batch_size,
            ));
            train_on(&config, &mut source, &mut metrics)
        }
    }
}

fn train_on(
    config: &TrainConfig,
    source: &mut dyn BlockSource,
    metrics: &mut MetricsLog,
) -> anyhow::Result<()> {
    match config.device {
        DeviceKind::Cpu => {
            train::<CpuBackend>(config, source, &NdArrayDevice::Cpu, metrics)?;
        }
        DeviceKind::Cuda => {
            let device = CudaDevice::default();
            check_cuda(&device)?;
            train::<CudaBackend>(config, source, &device, metrics)?;
        }
    }
    Ok(())
}

/// Runs one tiny operation on the CUDA device first. Without a driver or NVRTC the CUDA
/// backend panics on a worker thread and then on the caller; this turns that into one error line.
fn check_cuda(device: &CudaDevice) -> anyhow::Result<()> {
    let first_panic = Arc::new(Mutex::new(None::<String>));
    let recorded = Arc::clone(&first_panic);
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Ok(mut slot) = recorded.lock() {
            slot.get_or_insert_with(|| info.payload_as_str().unwrap_or("panic").to_string());
        }
    }));
    let probe = std::panic::catch_unwind(|| {
        Tensor::<Cuda<f32>, 1>::ones([1], device)
            .sum()
            .try_into_scalar()
            .map(|_| ())
            .map_err(|error| error.to_string())
    });
    std::panic::set_hook(previous_hook);
    let reason = match probe {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(error)) => error,
        Err(_) => first_panic
            .lock()
            .ok()
            .and_then(|slot| slot.clone())
            .unwrap_or_else(|| "unknown failure".into()),
    };
    Err(anyhow!("the CUDA device is not usable: {reason}"))
}
