//! `flightlm-trainer`: the command line over the trainer library.
//!
//! `train` reads blocks from a running pipeline; `bench` trains on a generated in-memory corpus
//! to measure the training speed of a preset on this machine without any pipeline;
//! `train-text` trains on one local text file and exports the model. `export`, `fill-mask` and
//! `score` work on HuggingFace model directories.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context};
use burn::backend::cuda::CudaDevice;
use burn::backend::ndarray::NdArrayDevice;
use burn::backend::{Autodiff, Cuda, NdArray};
use burn::module::AutodiffModule;
use burn::tensor::Tensor;
use clap::{Args, Parser, Subcommand};
use flightlm_trainer::data::PipelineSource;
use flightlm_trainer::hf::commands::{ExportArgs, FillMaskArgs, ScoreArgs};
use flightlm_trainer::hf::{export_hf, HfRobertaConfig, HfTokenizer};
use flightlm_trainer::metrics::MetricsLog;
use flightlm_trainer::model::RobertaConfig;
use flightlm_trainer::source::BlockSource;
use flightlm_trainer::synthetic::{SyntheticConfig, SyntheticSource};
use flightlm_trainer::text_file::TextFileSource;
use flightlm_trainer::{train, DeviceKind, Objective, Preset, TrainConfig};

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
        /// The pipeline's Flight endpoint, e.g. http://127.0.0.1:50051.
        #[arg(long)]
        pipeline: String,
        /// Directory for config.json and metrics.jsonl.
        #[arg(long)]
        out: PathBuf,
        /// Start from the weights of this HF model directory (same network as the run's).
        #[arg(long)]
        init_from: Option<PathBuf>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Train on one local text file (a document per line) on the CPU and export the model.
    TrainText {
        #[arg(long)]
        text: PathBuf,
        /// tokenizer.json; shipped with the exported model.
        #[arg(long)]
        tokenizer: PathBuf,
        /// Directory for config.json and metrics.jsonl.
        #[arg(long)]
        out: PathBuf,
        /// HF model directory to write after the last step.
        #[arg(long)]
        export: PathBuf,
        /// Share of the blocks (the last ones) held out for evaluation.
        #[arg(long, default_value_t = 0.05)]
        valid_fraction: f64,
        #[command(flatten)]
        shape: ShapeArgs,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Write a checkpoint's model as a HuggingFace model directory.
    Export(ExportArgs),
    /// Predict the tokens at `<mask>`, printed like transformers' fill-mask pipeline.
    FillMask(FillMaskArgs),
    /// Loss and perplexity of each line of a text file, as JSON lines, then of the whole file.
    Score(ScoreArgs),
    /// Train on a generated corpus held in memory, to measure speed.
    Bench {
        /// Vocabulary size of the generated corpus.
        #[arg(long, default_value_t = 8192)]
        vocab_size: u32,
        /// Also write config.json and metrics.jsonl here.
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        run: RunArgs,
    },
}

/// Settings shared by every command that trains; unset ones keep the seed recipe's value.
#[derive(Args)]
struct RunArgs {
    #[arg(long, value_enum, default_value_t = Objective::Mlm)]
    objective: Objective,
    /// Model size: tiny (2x128), small (4x256), base (12x768), large (24x1024).
    #[arg(long, value_enum, default_value_t = Preset::Base)]
    preset: Preset,
    /// Optimizer steps; the learning rate decays linearly to 0 at the last one.
    #[arg(long)]
    max_steps: usize,
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
    /// Tokens per block [default: 128].
    #[arg(long)]
    seq_len: Option<usize>,
    /// Blocks per micro-batch [default: 32].
    #[arg(long)]
    batch_size: Option<usize>,
    /// Micro-batches averaged into one optimizer step [default: 4].
    #[arg(long)]
    grad_accum: Option<usize>,
    /// Peak learning rate [default: 5e-4].
    #[arg(long)]
    lr: Option<f64>,
    /// Linear warmup steps [default: 1000].
    #[arg(long)]
    warmup_steps: Option<usize>,
    /// AdamW weight decay, not applied to biases and LayerNorm [default: 0.1].
    #[arg(long)]
    weight_decay: Option<f64>,
    /// Global gradient-norm clipping threshold; 0 disables clipping [default: 1.0].
    #[arg(long)]
    max_grad_norm: Option<f64>,
    /// Share of tokens the MLM objective predicts [default: 0.15].
    #[arg(long)]
    mlm_probability: Option<f64>,
    /// Dropout on embeddings, attention and residual branches [default: 0.1].
    #[arg(long)]
    dropout: Option<f64>,
    /// Steps between train metric lines [default: 10].
    #[arg(long)]
    log_every: Option<usize>,
    /// Steps between evaluations on the valid split [default: 500].
    #[arg(long)]
    eval_every: Option<usize>,
    /// Seed for initialization, dropout and masking [default: 42].
    #[arg(long)]
    seed: Option<u64>,
}

/// Overrides of the preset's model dimensions.
#[derive(Args)]
struct ShapeArgs {
    #[arg(long)]
    layers: Option<usize>,
    #[arg(long)]
    hidden: Option<usize>,
    #[arg(long)]
    heads: Option<usize>,
    #[arg(long)]
    intermediate: Option<usize>,
}

impl ShapeArgs {
    fn apply(&self, config: &mut TrainConfig) {
        let shape = &mut config.model;
        shape.layers = self.layers.unwrap_or(shape.layers);
        shape.hidden = self.hidden.unwrap_or(shape.hidden);
        shape.heads = self.heads.unwrap_or(shape.heads);
        shape.intermediate = self.intermediate.unwrap_or(shape.intermediate);
    }
}

impl RunArgs {
    fn config(&self, pipeline: &str, out: PathBuf) -> TrainConfig {
        let mut config = TrainConfig::new(pipeline, out, self.preset);
        config.objective = self.objective;
        config.max_steps = self.max_steps;
        config.device = self.device;
        let set = |target: &mut usize, value: Option<usize>| *target = value.unwrap_or(*target);
        set(&mut config.seq_len, self.seq_len);
        set(&mut config.batch_size, self.batch_size);
        set(&mut config.grad_accum, self.grad_accum);
        set(&mut config.warmup_steps, self.warmup_steps);
        set(&mut config.log_every, self.log_every);
        set(&mut config.eval_every, self.eval_every);
        config.lr = self.lr.unwrap_or(config.lr);
        config.weight_decay = self.weight_decay.unwrap_or(config.weight_decay);
        config.mlm_probability = self.mlm_probability.unwrap_or(config.mlm_probability);
        config.dropout = self.dropout.unwrap_or(config.dropout);
        config.seed = self.seed.unwrap_or(config.seed);
        if let Some(norm) = self.max_grad_norm {
            config.max_grad_norm = (norm > 0.0).then_some(norm);
        }
        config
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
        Command::Train {
            pipeline,
            out,
            init_from,
            run,
        } => {
            let mut config = run.config(&pipeline, out.clone());
            config.init_from = init_from;
            config.validate()?;
            config.save(&out)?;
            let mut source = PipelineSource::connect(&pipeline, config.seq_len, config.batch_size)
                .with_context(|| format!("connecting to the pipeline at {pipeline}"))?;
            let mut metrics = MetricsLog::create(&out, true)?;
            train_on(&config, &mut source, &mut metrics)
        }
        Command::Bench {
            vocab_size,
            out,
            run,
        } => {
            let config = run.config("synthetic", out.clone().unwrap_or_default());
            config.validate()?;
            let mut metrics = match &out {
                Some(out) => {
                    config.save(out)?;
                    MetricsLog::create(out, true)?
                }
                None => MetricsLog::in_memory().with_echo(true),
            };
            let mut source = SyntheticSource::new(SyntheticConfig::new(
                vocab_size,
                config.seq_len,
                config.batch_size,
            ));
            train_on(&config, &mut source, &mut metrics)
        }
        Command::TrainText {
            text,
            tokenizer,
            out,
            export,
            valid_fraction,
            shape,
            run,
        } => {
            let mut config = run.config("text-file", out.clone());
            shape.apply(&mut config);
            config.validate()?;
            config.save(&out)?;
            let text = std::fs::read_to_string(&text)
                .with_context(|| format!("reading {}", text.display()))?;
            let hf_tokenizer = HfTokenizer::load(&tokenizer)?;
            let mut source = TextFileSource::new(
                &text,
                &hf_tokenizer,
                config.seq_len,
                config.batch_size,
                valid_fraction,
            )?;
            let mut metrics = MetricsLog::create(&out, true)?;
            let summary =
                train::<CpuBackend>(&config, &mut source, &NdArrayDevice::Cpu, &mut metrics)?;
            let info = source.tokenizer().clone();
            let model_config = RobertaConfig::from_train_config(&config, &info);
            let hf_config = HfRobertaConfig::from_model(&model_config, &info);
            export_hf(
                &summary.model.valid(),
                &hf_config,
                Some(&tokenizer),
                &export,
            )?;
            Ok(())
        }
        Command::Export(args) => {
            let out = flightlm_trainer::hf::commands::export(&args)?;
            println!("{}", serde_json::json!({ "exported": out }));
            Ok(())
        }
        Command::FillMask(args) => {
            flightlm_trainer::hf::commands::fill_mask_command(&args, &mut std::io::stdout())?;
            Ok(())
        }
        Command::Score(args) => {
            flightlm_trainer::hf::commands::score_command(&args, &mut std::io::stdout())?;
            Ok(())
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
