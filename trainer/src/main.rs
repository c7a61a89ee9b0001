//! `flightlm-trainer`: the command line over the trainer library.
//!
//! `train` reads blocks from a running pipeline; `bench` trains on a generated in-memory corpus
//! to measure the training speed of a preset on this machine without any pipeline;
//! `train-text` trains on one local text file and exports the model. `export`, `fill-mask`,
//! `score` and `generate` work on HuggingFace model directories.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use clap::{Parser, Subcommand};
use flightlm_shared::client::PipelineEndpoint;
use flightlm_trainer::data::source::BlockSource;
use flightlm_trainer::data::synthetic::{SyntheticConfig, SyntheticSource};
use flightlm_trainer::data::text_file::TextFileSource;
use flightlm_trainer::generate::GenerateArgs;
use flightlm_trainer::hf::commands::{ExportArgs, FillMaskArgs, ScoreArgs};
use flightlm_trainer::hf::{export_hf, HfRobertaConfig, HfTokenizer};
use flightlm_trainer::mixing::{Mixing, MixingState};
use flightlm_trainer::model::RobertaConfig;
use flightlm_trainer::run::block_log;
use flightlm_trainer::run::checkpoint::CheckpointStore;
use flightlm_trainer::run::metrics::MetricsLog;
use flightlm_trainer::run::tensorboard::TensorBoardLog;
use flightlm_trainer::{train_with, CpuDevice, RunControl};

mod cli;

use cli::process_setup::{install_replica_handler, keep_freed_memory};
use cli::run_args::{Resolved, RunArgs, ShapeArgs};
use cli::training::{
    local_ranks, observed_live, pipeline_sources, run_metrics, save_pipeline_tokenizer,
    save_tokenizer_roles, serve_live_metrics, train_on, RankSource,
};

type CpuTrainBackend = Autodiff<flightlm_trainer::CpuBackend>;

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
        /// Seconds to keep retrying (with exponential backoff) while the pipeline is unreachable
        /// or its stream breaks, before giving up with an error.
        #[arg(long, default_value_t = 120)]
        pipeline_retry_s: u64,
        /// PEM CA certificate of an https:// pipeline [default: $FLIGHTLM_TLS_CA_FILE, else the
        /// system's roots].
        #[arg(long)]
        tls_ca: Option<PathBuf>,
        /// Serve the run's Prometheus metrics at http://ADDR/metrics: HOST:PORT, or a port on
        /// 127.0.0.1 (0 picks a free one; the address is printed on stderr).
        #[arg(long)]
        metrics_listen: Option<String>,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Train on a generated corpus held in memory, to measure speed.
    Bench {
        /// Vocabulary size of the generated corpus.
        #[arg(long, default_value_t = 8192)]
        vocab_size: u32,
        /// As for `train`.
        #[arg(long)]
        metrics_listen: Option<String>,
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
    /// Draw a run's train/eval loss and perplexity into DIR/curves.png.
    Plot {
        /// The run's output directory (holding metrics.jsonl).
        dir: PathBuf,
    },
    /// Check a run's DIR/blocks.jsonl: every stream block up to the last one trained on exactly
    /// once. Prints the counts as JSON; exits non-zero when a block was lost or repeated.
    AuditBlocks {
        /// The run's output directory.
        dir: PathBuf,
    },
    /// Write a checkpoint's model as a HuggingFace model directory.
    Export(ExportArgs),
    /// Predict the tokens at `<mask>`, printed like transformers' fill-mask pipeline.
    FillMask(FillMaskArgs),
    /// Loss and perplexity of each line of a text file, as JSON lines, then of the whole file.
    Score(ScoreArgs),
    /// Continue prompts with a causal model (greedy, or sampled with temperature, top-k, top-p).
    Generate(GenerateArgs),
}

fn main() -> ExitCode {
    keep_freed_memory();
    install_replica_handler();
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

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Train {
            pipeline_retry_s,
            tls_ca,
            metrics_listen,
            run,
        } => {
            let Resolved { config, resume } = run.resolve()?;
            if config.pipeline.is_empty() {
                bail!(
                    "no pipeline to read from: pass --pipeline URL or set `pipeline` in --config"
                );
            }
            if config.out_dir.as_os_str().is_empty() {
                bail!("no output directory: pass --out DIR or set `out_dir` in --config");
            }
            let out = config.out_dir.clone();
            let pipeline = PipelineEndpoint::new(config.pipeline.clone()).with_tls_ca(tls_ca);
            if config.node_rank == 0 {
                config.save(&out)?;
                save_pipeline_tokenizer(&pipeline, &out);
            }
            let cursor = resume.as_ref().and_then(|(_, state)| state.cursor.clone());
            let retry_for = std::time::Duration::from_secs(pipeline_retry_s);
            let live = serve_live_metrics(metrics_listen.as_deref())?;
            // An odm run's stream has weights of its own from its start (see `mixing`).
            let mixing = (config.mixing == Mixing::Odm).then(|| {
                let (step, state) = match &resume {
                    Some((_, state)) => (state.step, state.mixing.clone().unwrap_or_default()),
                    None => (0, MixingState::default()),
                };
                let global_batch = config.global_batch();
                state.stream_mixing(step, cursor.as_ref(), global_batch, config.mixing_every)
            });
            let sources = pipeline_sources(&config, &pipeline, cursor, mixing, retry_for)?;
            if let (0, Some(source)) = (config.node_rank, sources.first()) {
                save_tokenizer_roles(&out, source.tokenizer(), config.seq_len);
            }
            let mut metrics = run_metrics(&config, &out, &resume, live)?.with_json(run.json);
            let checkpoints = Some(CheckpointStore::in_run(&out));
            train_on(&config, sources, &mut metrics, checkpoints, resume)
        }
        Command::Bench {
            vocab_size,
            metrics_listen,
            run,
        } => {
            let live = serve_live_metrics(metrics_listen.as_deref())?;
            let Resolved { mut config, resume } = run.resolve()?;
            config.pipeline = "synthetic".into();
            let synthetic = SyntheticConfig::new(vocab_size, config.seq_len, config.batch_size);
            let cursor = resume.as_ref().and_then(|(_, state)| state.cursor.as_ref());
            let world = config.world_size();
            let sources = local_ranks(&config)
                .map(|rank| {
                    let source = match cursor {
                        Some(cursor) => SyntheticSource::resume(synthetic.clone(), cursor)?,
                        None => SyntheticSource::new(synthetic.clone()),
                    };
                    Ok(Box::new(source.sharded(rank, world)) as RankSource)
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let out = config.out_dir.clone();
            let (metrics, checkpoints) = if out.as_os_str().is_empty() {
                let metrics = MetricsLog::in_memory().with_echo(true);
                (observed_live(metrics, live), None)
            } else {
                if config.node_rank == 0 {
                    config.save(&out)?;
                }
                let metrics = run_metrics(&config, &out, &resume, live)?;
                (metrics, Some(CheckpointStore::in_run(&out)))
            };
            let mut metrics = metrics.with_json(run.json);
            train_on(&config, sources, &mut metrics, checkpoints, resume)
        }
        Command::TrainText {
            text,
            tokenizer,
            export,
            valid_fraction,
            shape,
            run,
        } => {
            let Resolved { mut config, .. } = run.resolve()?;
            if config.out_dir.as_os_str().is_empty() {
                bail!("no output directory: pass --out DIR or set `out_dir` in --config");
            }
            config.pipeline = "text-file".into();
            shape.apply(&mut config);
            config.validate()?;
            if config.world_size() > 1 {
                bail!("train-text trains on one device; use `train` from a pipeline for --devices");
            }
            let out = config.out_dir.clone();
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
            let events = TensorBoardLog::create(&out)?;
            let mut metrics = MetricsLog::create(&out, true)?
                .observed_by(Box::new(events))
                .with_json(run.json);
            let control = RunControl::default();
            let summary = train_with::<CpuTrainBackend>(
                &config,
                &mut source,
                &CpuDevice::default(),
                &mut metrics,
                control,
            )?;
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
        Command::Plot { dir } => {
            let path = flightlm_trainer::run::plot::plot_run(&dir)?;
            println!("{}", serde_json::json!({ "plot": path }));
            Ok(())
        }
        Command::AuditBlocks { dir } => {
            let lines = block_log::read(&dir.join(block_log::BLOCK_LOG_FILE))?;
            let audit = block_log::BlockAudit::of(&lines);
            println!("{}", serde_json::to_string(&audit)?);
            if audit.steps == 0 {
                bail!(
                    "{} has no steps",
                    dir.join(block_log::BLOCK_LOG_FILE).display()
                );
            }
            if !audit.is_exact() {
                bail!("{} blocks lost and {} repeated", audit.lost, audit.repeated);
            }
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
        Command::Generate(args) => cli::generate::generate_on_device(&args),
    }
}
