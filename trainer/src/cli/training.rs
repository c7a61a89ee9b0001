//! How the training commands run a resolved configuration: one source per local rank, the run's
//! metrics and checkpoints on node 0, the loop on the configured backend (one device, or a
//! data-parallel group), and the final export.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use burn::backend::autodiff::checkpoint::strategy::{
    BalancedCheckpointing, CheckpointStrategy, NoCheckpointing,
};
use burn::backend::cuda::CudaDevice;
use burn::backend::{Autodiff, Cuda};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use flightlm_shared::client::PipelineEndpoint;
use flightlm_shared::metrics_http;
use flightlm_shared::{Cursor, Split, StreamRequest};
use flightlm_trainer::config::AutodiffCheckpointing;
use flightlm_trainer::data::pipeline::PipelineSource;
use flightlm_trainer::data::replicas::replica_endpoints;
use flightlm_trainer::hf::{
    export_hf, write_tokenizer_config, HfRobertaConfig, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE,
};
use flightlm_trainer::mixing::StreamMixing;
use flightlm_trainer::model::{Roberta, RobertaConfig};
use flightlm_trainer::run::block_log::BlockLog;
use flightlm_trainer::run::checkpoint::{CheckpointStore, TrainingState};
use flightlm_trainer::run::data_parallel::train_data_parallel;
use flightlm_trainer::run::live_metrics::{serve_metrics, RunMetrics};
use flightlm_trainer::run::metrics::MetricsLog;
use flightlm_trainer::run::tensorboard::TensorBoardLog;
use flightlm_trainer::{
    train_with, BlockSource, CpuDevice, DeviceKind, RunControl, TrainConfig, TrainSummary,
};

use crate::cli::cuda_check::check_cuda;
use crate::cli::kernel_cache::{use_kernel_caches, KERNEL_CACHE_ENV};
use crate::cli::process_setup::{install_stop_handler, STOP_REQUESTED};

type CpuBackend = flightlm_trainer::CpuBackend;
type CudaBackend = Cuda<f32>;

/// A training source that a rank's thread can own.
pub(crate) type RankSource = Box<dyn BlockSource + Send>;

/// The global ranks of this process's devices.
pub(crate) fn local_ranks(config: &TrainConfig) -> std::ops::Range<usize> {
    let local = config.local_devices().len();
    config.node_rank * local..(config.node_rank + 1) * local
}

/// One pipeline stream per local rank: the whole train stream on one device, else each rank's
/// shard, all continuing after `cursor`, with the run's own `weights` when it steers them.
pub(crate) fn pipeline_sources(
    config: &TrainConfig,
    pipeline: &PipelineEndpoint,
    cursor: Option<Cursor>,
    mixing: Option<StreamMixing>,
    retry_for: Duration,
) -> anyhow::Result<Vec<RankSource>> {
    let world = config.world_size();
    // The name every rank of this process gives its stream, so that the pipeline changes their
    // shared production once for all of them.
    let run = mixing
        .as_ref()
        .map(|_| format!("{:016x}", rand::random::<u64>()));
    local_ranks(config)
        .map(|rank| {
            let mut request = StreamRequest::new(Split::Train, config.seq_len, config.batch_size)
                .with_cursor(cursor.clone())
                .with_document_starts(config.document_attention);
            if let Some(mixing) = &mixing {
                request = request
                    .with_weights(Some(mixing.weights.clone()))
                    .with_weights_from(mixing.from)
                    .with_run(run.clone(), Some(mixing.until));
            }
            if world > 1 {
                request = request.with_shard(rank as u64, world as u64);
            }
            let source = PipelineSource::connect_request(pipeline, request, retry_for)
                .with_context(|| {
                    format!(
                        "rank {rank}: connecting to the pipeline at {}",
                        pipeline.url
                    )
                })?;
            Ok(Box::new(source) as RankSource)
        })
        .collect()
}

/// The run's metrics: written to `OUT/metrics.jsonl` (appended after a resumed checkpoint's
/// step) and TensorBoard event files in `OUT` by node 0, kept in memory on the other nodes of a
/// multi-node run; handed to `live` (the Prometheus gauges) when it is served.
pub(crate) fn run_metrics(
    config: &TrainConfig,
    out: &Path,
    resume: &Option<(PathBuf, TrainingState)>,
    live: Option<RunMetrics>,
) -> anyhow::Result<MetricsLog> {
    let metrics = if config.node_rank != 0 {
        MetricsLog::in_memory()
    } else {
        let (metrics, events) = match resume {
            Some((_, state)) => (
                MetricsLog::resume(out, state.step, true)?,
                TensorBoardLog::resume(out, state.step)?,
            ),
            None => (MetricsLog::create(out, true)?, TensorBoardLog::create(out)?),
        };
        metrics.observed_by(Box::new(events))
    };
    Ok(observed_live(metrics, live))
}

/// `metrics`, also followed by the Prometheus gauges when they are served.
pub(crate) fn observed_live(metrics: MetricsLog, live: Option<RunMetrics>) -> MetricsLog {
    match live {
        Some(live) => metrics.observed_by(Box::new(live)),
        None => metrics,
    }
}

/// Serves the run's Prometheus metrics on `--metrics-listen`, when given.
pub(crate) fn serve_live_metrics(listen: Option<&str>) -> anyhow::Result<Option<RunMetrics>> {
    let Some(listen) = listen else {
        return Ok(None);
    };
    let address = metrics_http::parse_listen(listen).map_err(anyhow::Error::msg)?;
    let metrics = RunMetrics::new();
    let bound = serve_metrics(address, metrics.clone())
        .with_context(|| format!("cannot listen on {address} (--metrics-listen)"))?;
    eprintln!("metrics at http://{bound}/metrics");
    Ok(Some(metrics))
}

/// Trains on `sources` (one per local rank) as `config` says, then exports the final model.
pub(crate) fn train_on(
    config: &TrainConfig,
    mut sources: Vec<RankSource>,
    metrics: &mut MetricsLog,
    checkpoints: Option<CheckpointStore>,
    resume: Option<(PathBuf, TrainingState)>,
) -> anyhow::Result<()> {
    install_stop_handler();
    let lead = config.node_rank == 0;
    let block_log = match (&checkpoints, &resume) {
        (Some(_), Some((_, state))) if lead => Some(BlockLog::resume(&config.out_dir, state.step)?),
        (Some(_), None) if lead => Some(BlockLog::create(&config.out_dir)?),
        _ => None,
    };
    let control = RunControl {
        checkpoints,
        resume: resume.map(|(checkpoint, _)| checkpoint),
        stop: Some(&STOP_REQUESTED),
        block_log,
    };
    let tokenizer_source = sources.first().map(|source| source.tokenizer().clone());
    let devices = config.local_devices();
    let (steps, stopped) = match config.device {
        DeviceKind::Cpu => {
            let cpus = vec![CpuDevice::default(); devices.len()];
            let run = Run {
                config,
                lead,
                tokenizer: &tokenizer_source,
            };
            run.with_checkpointing::<CpuBackend>(&mut sources, cpus, metrics, control)?
        }
        DeviceKind::Cuda => {
            if let Some(dir) = use_kernel_caches() {
                eprintln!("kernel caches in {} (${KERNEL_CACHE_ENV})", dir.display());
            }
            let gpus: Vec<CudaDevice> = devices
                .indices()
                .iter()
                .map(|i| CudaDevice::new(*i))
                .collect();
            for gpu in &gpus {
                check_cuda(gpu, config.precision)?;
            }
            let run = Run {
                config,
                lead,
                tokenizer: &tokenizer_source,
            };
            run.with_checkpointing::<CudaBackend>(&mut sources, gpus, metrics, control)?
        }
    };
    if stopped && lead {
        eprintln!(
            "stopped after step {steps}; continue with --resume {}",
            config.out_dir.display()
        );
    }
    Ok(())
}

/// What a finished run needs besides its backend.
struct Run<'a> {
    config: &'a TrainConfig,
    lead: bool,
    tokenizer: &'a Option<flightlm_shared::TokenizerInfo>,
}

impl Run<'_> {
    /// Trains on backend `B` under the configured autodiff checkpointing and exports the result;
    /// returns the steps run and whether the run was stopped.
    fn with_checkpointing<B: burn::tensor::backend::Backend>(
        &self,
        sources: &mut Vec<RankSource>,
        devices: Vec<B::Device>,
        metrics: &mut MetricsLog,
        control: RunControl<'_>,
    ) -> anyhow::Result<(usize, bool)> {
        match self.config.autodiff_checkpointing {
            AutodiffCheckpointing::None => {
                self.train::<B, NoCheckpointing>(sources, devices, metrics, control)
            }
            AutodiffCheckpointing::Balanced => {
                self.train::<B, BalancedCheckpointing>(sources, devices, metrics, control)
            }
        }
    }

    fn train<B: burn::tensor::backend::Backend, C: CheckpointStrategy>(
        &self,
        sources: &mut Vec<RankSource>,
        devices: Vec<B::Device>,
        metrics: &mut MetricsLog,
        control: RunControl<'_>,
    ) -> anyhow::Result<(usize, bool)> {
        let summary = run_on::<Autodiff<B, C>>(self.config, sources, devices, metrics, control)?;
        finish(self.config, self.lead, self.tokenizer, &summary)
    }
}

/// One device: the plain loop; a data-parallel group: one rank per device.
fn run_on<B: AutodiffBackend>(
    config: &TrainConfig,
    sources: &mut Vec<RankSource>,
    devices: Vec<B::Device>,
    metrics: &mut MetricsLog,
    control: RunControl<'_>,
) -> anyhow::Result<TrainSummary<B>> {
    if !config.data_parallel() {
        let source = sources.first_mut().context("no source")?;
        return Ok(train_with::<B>(
            config,
            source.as_mut(),
            &devices[0],
            metrics,
            control,
        )?);
    }
    let sources = std::mem::take(sources);
    Ok(train_data_parallel::<B>(
        config, sources, devices, metrics, control,
    )?)
}

fn finish<B: AutodiffBackend>(
    config: &TrainConfig,
    lead: bool,
    tokenizer: &Option<flightlm_shared::TokenizerInfo>,
    summary: &TrainSummary<B>,
) -> anyhow::Result<(usize, bool)> {
    if lead && !summary.stopped {
        if let Some(tokenizer) = tokenizer {
            export_final(config, tokenizer, &summary.model)?;
        }
    }
    Ok((summary.steps, summary.stopped))
}

/// Keeps the pipeline's tokenizer.json in the run directory, so checkpoints and the final model
/// ship with it. A pipeline that cannot send it only costs that convenience.
pub(crate) fn save_pipeline_tokenizer(pipeline: &PipelineEndpoint, out: &Path) {
    let replicas = replica_endpoints(pipeline);
    let pipeline = replicas.first().unwrap_or(pipeline);
    let fetched = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| {
            runtime
                .block_on(flightlm_shared::client::run_action(pipeline, "tokenizer"))
                .map_err(anyhow::Error::from)
        })
        .and_then(|bytes| {
            std::fs::write(out.join(TOKENIZER_FILE), bytes).map_err(anyhow::Error::from)
        });
    if let Err(error) = fetched {
        tracing::warn!("the pipeline's tokenizer.json is not saved with the run: {error:#}");
    }
}

/// Writes `OUT/tokenizer_config.json` beside the pipeline's tokenizer.json with the roles the
/// stream described (the pipeline may have read them from a tokenizer_config.json of its own),
/// so every export names the same special tokens the model was trained with.
pub(crate) fn save_tokenizer_roles(
    out: &Path,
    info: &flightlm_shared::TokenizerInfo,
    seq_len: usize,
) {
    let path = out.join(TOKENIZER_FILE);
    if !path.is_file() {
        return;
    }
    let written = tokenizers::Tokenizer::from_file(&path)
        .map_err(|error| anyhow::anyhow!("{error}"))
        .and_then(|tokenizer| {
            write_tokenizer_config(&tokenizer, info, seq_len, &out.join(TOKENIZER_CONFIG_FILE))
                .map_err(anyhow::Error::from)
        });
    if let Err(error) = written {
        tracing::warn!("the tokenizer's roles are not saved with the run: {error:#}");
    }
}

/// Writes the final (best, when restored) model as an HF directory `OUT/model`.
fn export_final<B: AutodiffBackend>(
    config: &TrainConfig,
    info: &flightlm_shared::TokenizerInfo,
    model: &Roberta<B>,
) -> anyhow::Result<()> {
    if config.out_dir.as_os_str().is_empty() {
        return Ok(());
    }
    let hf_config =
        HfRobertaConfig::from_model(&RobertaConfig::from_train_config(config, info), info);
    let tokenizer = config.out_dir.join(TOKENIZER_FILE);
    let out = config.out_dir.join("model");
    export_hf(
        &model.valid(),
        &hf_config,
        tokenizer.is_file().then_some(tokenizer.as_path()),
        &out,
    )?;
    eprintln!("model written to {}", out.display());
    Ok(())
}
