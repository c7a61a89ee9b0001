//! The `flightlm-trainer` flags shared by every training command, and how they resolve into one
//! `TrainConfig`: seed recipe < `--config` file < flags, over the checkpoint's configuration
//! when resuming.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use flightlm_trainer::config::layers::{resolve, ConfigLayer};
use flightlm_trainer::config::DeviceList;
use flightlm_trainer::config::{AutodiffCheckpointing, ScheduleKind};
use flightlm_trainer::mixing::odm::OdmReward;
use flightlm_trainer::mixing::Mixing;
use flightlm_trainer::run::checkpoint::{read_state, TrainingState};
use flightlm_trainer::run::resume::{
    check_resumable, keep_global_batch, locate, read_config, run_dir_of,
};
use flightlm_trainer::{DeviceKind, Objective, Precision, Preset, TrainConfig};
use serde::Serialize;

/// Overrides of the preset's model dimensions.
#[derive(Args)]
pub(crate) struct ShapeArgs {
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
    pub(crate) fn apply(&self, config: &mut TrainConfig) {
        let shape = &mut config.model;
        shape.layers = self.layers.unwrap_or(shape.layers);
        shape.hidden = self.hidden.unwrap_or(shape.hidden);
        shape.heads = self.heads.unwrap_or(shape.heads);
        shape.intermediate = self.intermediate.unwrap_or(shape.intermediate);
    }
}

/// Settings shared by every command that trains. Each flag overrides the `--config` file, which
/// overrides the seed recipe; unset flags keep the value from below. The field names are the
/// configuration's keys (see `TrainConfig`), so the set flags form one configuration layer.
#[derive(Args, Serialize)]
pub(crate) struct RunArgs {
    /// TOML file with configuration keys (any field of the saved config.toml).
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Continue a run exactly where it stopped: its output directory (the newest complete
    /// checkpoint is taken) or one checkpoint directory. Settings come from the checkpoint;
    /// flags may change only where and how often things are written, the device, the pipeline
    /// address and max_steps.
    #[arg(long)]
    #[serde(skip)]
    resume: Option<PathBuf>,
    /// The pipeline's Flight endpoint, e.g. http://127.0.0.1:50051; several replicas serving the
    /// same corpus as URL1,URL2,… (a stream moves to the next when one goes away; SIGUSR1 brings
    /// it back to the first).
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
    /// Optimizer steps; a linear or cosine schedule reaches 0 at the last one [default: 10000].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_steps: Option<usize>,
    /// [default: cpu]
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<DeviceKind>,
    /// Data parallel: this process's ranks, one per device: cpu:N (N ranks on the CPU) or
    /// cuda:0,cuda:1,… Each rank reads its shard of the stream; gradients are summed per step.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    devices: Option<DeviceList>,
    /// Processes of a multi-node run, each with --devices [default: 1].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    nodes: Option<usize>,
    /// This process's place among --nodes, from 0; node 0 starts the coordinator [default: 0].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    node_rank: Option<usize>,
    /// HOST:PORT of the multi-node coordinator: node 0 listens there, every rank connects.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    coordinator: Option<String>,
    /// Seconds a rank waits for the others before the run fails [default: 300].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    collective_timeout_s: Option<u64>,
    /// Seconds node 0 waits for every node to join (and the others for node 0) before the run
    /// fails naming the absent nodes [default: 300].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    join_timeout_s: Option<u64>,
    /// File with the multi-node run's shared token (16+ characters; required when the
    /// coordinator listens beyond loopback): ranks prove they hold it to join.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    coordinator_token_file: Option<PathBuf>,
    /// PEM CA that signed node 0's coordinator certificate: the coordinator runs over TLS
    /// (every node).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    coordinator_tls_ca: Option<PathBuf>,
    /// PEM certificate node 0's coordinator serves (with --coordinator-tls-key).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    coordinator_tls_cert: Option<PathBuf>,
    /// PEM private key of --coordinator-tls-cert.
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    coordinator_tls_key: Option<PathBuf>,
    /// bf16: mixed precision, bf16 matrix products over f32 weights [default: f32]. On the CPU, bf16 checks the numerics of a GPU run but is slower than f32.
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    precision: Option<Precision>,
    /// Keep attention inside each document of a block, with positions restarting at each
    /// document (`--document-attention` alone turns it on) [default: false].
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    document_attention: Option<bool>,
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
    /// The learning rate after warmup, as transformers' lr_scheduler_type [default: linear].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    lr_schedule: Option<ScheduleKind>,
    /// Keep every activation for the backward pass (none) or recompute element-wise ones
    /// (balanced), to save device memory [default: none].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    autodiff_checkpointing: Option<AutodiffCheckpointing>,
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
    /// Blocks of the valid split each evaluation scores (its first N); 0 scores all of it
    /// [default: 4096].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_blocks: Option<usize>,
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
    /// Mixture weights: the pipeline's (static) or steered by the online data mixing policy
    /// from each source's training loss (odm) [default: static].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    mixing: Option<Mixing>,
    /// Steps between two updates of the odm policy [default: 10].
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    mixing_every: Option<usize>,
    /// What the odm policy rewards: the relative fall of a source's (smoothed) loss over its last 8
    /// updates (progress) or its loss, as the paper does (loss) [default: progress].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    mixing_reward: Option<OdmReward>,
    /// Start from the weights of this HF model directory (same network as the run's).
    #[arg(long)]
    #[serde(skip_serializing_if = "Option::is_none")]
    init_from: Option<PathBuf>,
    /// Print each metric's JSON line on stdout even on a terminal (it always goes to
    /// OUT/metrics.jsonl, and to stdout when stdout is not a terminal).
    #[arg(long)]
    #[serde(skip)]
    pub(crate) json: bool,
}

impl RunArgs {
    /// `--devices` names the device kind too (`--devices cuda:0,cuda:1` trains on CUDA).
    fn follow_devices(&self, config: &mut TrainConfig) {
        if let (Some(devices), None) = (&self.devices, self.device) {
            config.device = devices.kind();
        }
    }
}

/// A run's resolved configuration, and the checkpoint it continues from.
pub(crate) struct Resolved {
    pub(crate) config: TrainConfig,
    pub(crate) resume: Option<(PathBuf, TrainingState)>,
}

impl RunArgs {
    /// The configuration these flags and their `--config` file describe, over the resumed
    /// checkpoint's configuration when there is one.
    pub(crate) fn resolve(&self) -> anyhow::Result<Resolved> {
        let mut layers = Vec::new();
        if let Some(path) = &self.config {
            layers.push(ConfigLayer::from_toml_file(path)?);
        }
        layers.push(ConfigLayer::from_serialize("command-line flags", self)?);
        let Some(resume) = &self.resume else {
            let mut config = resolve(None, &layers)?;
            self.follow_devices(&mut config);
            return Ok(Resolved {
                config,
                resume: None,
            });
        };
        let checkpoint = locate(resume)?;
        let saved = read_config(&checkpoint)?;
        let mut base = saved.clone();
        // The run's directory is where the checkpoint is now, even if it was moved.
        if let Some(run_dir) = run_dir_of(&checkpoint) {
            base.out_dir = run_dir;
        }
        let mut config = resolve(Some(&base), &layers)?;
        self.follow_devices(&mut config);
        if self.batch_size.is_none() && self.grad_accum.is_none() {
            keep_global_batch(&saved, &mut config);
        }
        check_resumable(&saved, &config)
            .with_context(|| format!("resuming from {}", checkpoint.display()))?;
        let state = read_state(&checkpoint)?;
        Ok(Resolved {
            config,
            resume: Some((checkpoint, state)),
        })
    }
}
