//! The training run's configuration: one typed value, validated once, saved next to the metrics
//! and inside every checkpoint (as `config.toml`, plus `config.json` for scripts).
//!
//! Defaults follow the seed recipe (RoBERTa pre-training as run with HuggingFace `run_mlm.py`):
//! lr 5e-4, 1000 warmup steps, linear decay, weight decay 0.1, batch 32 x accumulation 4,
//! mlm probability 0.15, dropout 0.1, AdamW betas (0.9, 0.98) and eps 1e-6, eval and checkpoint
//! every 500 steps, keep 5 checkpoints, restore the best one by eval perplexity at the end.
//! [`crate::config::layers`] builds it from a TOML file and command-line flags;
//! the `flightlm-trainer` binary's flags are the last layer.

pub mod layers;
pub mod parallel;
mod zero_is_none;

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::TrainError;
pub use crate::mixing::odm::OdmReward;
pub use crate::mixing::Mixing;
pub use parallel::{DeviceList, LossAverage, MaskingKey};

/// The curve after warmup, named as `transformers`' `lr_scheduler_type`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Linear decay to 0 at the last step (RoBERTa's schedule).
    #[default]
    Linear,
    /// Half a cosine period, from the peak to 0 at the last step.
    Cosine,
    /// The peak learning rate until the last step.
    #[value(name = "constant_with_warmup")]
    ConstantWithWarmup,
}

/// What autodiff keeps between the forward and the backward pass (burn's checkpoint strategies).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum AutodiffCheckpointing {
    /// Every intermediate an operation's backward needs is kept (burn's `NoCheckpointing`).
    #[default]
    None,
    /// Outputs of memory-bound operations (element-wise: GELU's erf, LayerNorm's centring,
    /// softmax's exponentials) are recomputed in the backward pass instead of kept, trading a
    /// little compute for device memory (burn's `BalancedCheckpointing`).
    Balanced,
}

/// What the model learns to predict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Objective {
    /// Masked language modelling: predict 15 % of the tokens, corrupted 80/10/10.
    Mlm,
    /// Causal language modelling: predict each next token, attention only looks back.
    Causal,
}

/// Model sizes, named like the RoBERTa family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    Tiny,
    Small,
    Base,
    Large,
}

/// The encoder's dimensions, as a preset fixes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelShape {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub intermediate: usize,
}

impl Preset {
    pub fn shape(self) -> ModelShape {
        let (layers, hidden, heads, intermediate) = match self {
            Preset::Tiny => (2, 128, 2, 512),
            Preset::Small => (4, 256, 4, 1024),
            Preset::Base => (12, 768, 12, 3072),
            Preset::Large => (24, 1024, 16, 4096),
        };
        ModelShape {
            layers,
            hidden,
            heads,
            intermediate,
        }
    }
}

/// Where the tensors live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

/// What the forward pass computes in. The parameters, their gradients and the optimizer's moments
/// are f32 either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything in f32.
    #[default]
    F32,
    /// Mixed precision: the large matrix products in bf16 (accumulating in f32) on bf16 copies
    /// of the f32 weights; softmax, LayerNorm, GELU and the loss in f32. Meant for CUDA; on the
    /// CPU it runs the same graph, slower than f32.
    Bf16,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub objective: Objective,
    pub preset: Preset,
    /// The encoder's dimensions; filled from `preset` unless set explicitly.
    pub model: ModelShape,
    /// Tokens per block, as requested from the pipeline.
    pub seq_len: usize,
    /// Blocks per micro-batch.
    pub batch_size: usize,
    /// Micro-batches whose gradients are averaged into one optimizer step.
    pub grad_accum: usize,
    /// Peak learning rate, reached at the end of warmup.
    pub lr: f64,
    /// After warmup; configurations saved before the choice existed read as linear.
    #[serde(default)]
    pub lr_schedule: ScheduleKind,
    /// Activation memory against recomputation; the numbers computed are the same either way.
    #[serde(default)]
    pub autodiff_checkpointing: AutodiffCheckpointing,
    pub warmup_steps: usize,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    /// Global gradient-norm clipping threshold; `None` disables clipping (written as 0, since
    /// TOML has no null).
    #[serde(with = "zero_is_none")]
    pub max_grad_norm: Option<f64>,
    /// Optimizer steps to run; the learning rate reaches 0 at this step.
    pub max_steps: usize,
    pub log_every: usize,
    pub eval_every: usize,
    /// Blocks of the valid split that every evaluation scores: its first N, as HF's
    /// `max_eval_samples`. The trainer reads no further, so the valid split of a large corpus
    /// neither delays the first step nor lengthens evaluations; 0 scores the whole split.
    /// Configurations saved before this existed scored the whole split.
    #[serde(default)]
    pub eval_blocks: usize,
    /// Steps between checkpoints (a checkpoint is also written after the last step).
    pub save_every: usize,
    /// Newest checkpoints kept; the best one by eval perplexity is kept in addition.
    pub keep_checkpoints: usize,
    /// Load the best checkpoint's weights at the end of the run.
    pub restore_best: bool,
    pub seed: u64,
    pub mlm_probability: f64,
    /// Dropout on embeddings, attention probabilities and residual branches.
    pub dropout: f64,
    pub device: DeviceKind,
    /// This process's ranks, one per device (`cpu:2`, `cuda:0,cuda:1`); absent: one rank on
    /// `device`. Each rank reads its shard of the stream and gradients are all-reduced per step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<DeviceList>,
    /// Processes of a multi-node run (usually one per host), each with `devices`.
    #[serde(default = "one")]
    pub nodes: usize,
    /// This process's place among the `nodes`, from 0; node 0 starts the coordinator and writes
    /// metrics and checkpoints.
    #[serde(default)]
    pub node_rank: usize,
    /// `HOST:PORT` of the multi-node coordinator, which node 0 starts (listening on exactly this
    /// address) and every rank connects to.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub coordinator: String,
    /// Seconds a rank waits for the others at a step's exchange before the run fails (a rank
    /// or node that died, or hangs).
    #[serde(default = "default_collective_timeout_s")]
    pub collective_timeout_s: u64,
    /// Seconds node 0's coordinator waits for every rank to join (and the others for it) before
    /// the run fails naming the nodes that never came.
    #[serde(default = "default_collective_timeout_s")]
    pub join_timeout_s: u64,
    /// A file holding the multi-node run's shared token (at least 16 characters): every rank
    /// proves it holds it to join, and node 0's coordinator proves it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator_token_file: Option<PathBuf>,
    /// The CA that signed node 0's coordinator certificate: the coordinator's connections then
    /// run over TLS (set on every node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator_tls_ca: Option<PathBuf>,
    /// PEM certificate and key node 0's coordinator serves TLS with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator_tls_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator_tls_key: Option<PathBuf>,
    /// See [`MaskingKey`]; configurations saved before it existed read as `micro_batch`.
    #[serde(default = "MaskingKey::before_data_parallel")]
    pub masking_key: MaskingKey,
    /// See [`LossAverage`]; configurations saved before it existed read as `micro_batches`.
    #[serde(default = "LossAverage::before_data_parallel")]
    pub loss_average: LossAverage,
    /// Configurations saved before mixed precision existed read as f32, which they ran in.
    #[serde(default)]
    pub precision: Precision,
    /// Attention stays inside each document of a packed block and positions restart at each
    /// document (the stream then carries its document starts). Off by default, and for
    /// configurations saved before it existed.
    #[serde(default)]
    pub document_attention: bool,
    /// See [`Mixing`]; static for configurations saved before it existed.
    #[serde(default)]
    pub mixing: Mixing,
    /// Steps between two updates of the odm policy.
    #[serde(default = "default_mixing_every")]
    pub mixing_every: usize,
    #[serde(default = "default_mixing_reward")]
    pub mixing_reward: OdmReward,
    pub out_dir: PathBuf,
    pub pipeline: String,
    /// An HF model directory (`config.json` + `model.safetensors`) whose weights the run starts
    /// from instead of a fresh initialization; its network must be the one the run describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
}

fn default_mixing_every() -> usize {
    10
}

/// Learning progress: the loss reward favours what cannot be learned (README, *Mixtures*).
fn default_mixing_reward() -> OdmReward {
    OdmReward::Progress
}

/// Seed used for the masking of the valid split: fixed, so every evaluation sees the same inputs.
pub const EVAL_MASKING_SEED: u64 = 0x5eed_e7a1;

impl TrainConfig {
    /// The seed recipe for `preset`, reading from `pipeline` and writing into `out_dir`.
    pub fn new(pipeline: impl Into<String>, out_dir: impl Into<PathBuf>, preset: Preset) -> Self {
        TrainConfig {
            objective: Objective::Mlm,
            preset,
            model: preset.shape(),
            seq_len: 128,
            batch_size: 32,
            grad_accum: 4,
            lr: 5e-4,
            lr_schedule: ScheduleKind::Linear,
            autodiff_checkpointing: AutodiffCheckpointing::None,
            warmup_steps: 1000,
            weight_decay: 0.1,
            adam_beta1: 0.9,
            adam_beta2: 0.98,
            adam_epsilon: 1e-6,
            max_grad_norm: Some(1.0),
            max_steps: 10_000,
            log_every: 10,
            eval_every: 500,
            eval_blocks: 4096,
            save_every: 500,
            keep_checkpoints: 5,
            restore_best: true,
            seed: 42,
            mlm_probability: 0.15,
            dropout: 0.1,
            device: DeviceKind::Cpu,
            devices: None,
            nodes: 1,
            node_rank: 0,
            coordinator: String::new(),
            collective_timeout_s: default_collective_timeout_s(),
            join_timeout_s: default_collective_timeout_s(),
            coordinator_token_file: None,
            coordinator_tls_ca: None,
            coordinator_tls_cert: None,
            coordinator_tls_key: None,
            masking_key: MaskingKey::Block,
            loss_average: LossAverage::Tokens,
            precision: Precision::F32,
            document_attention: false,
            mixing: Mixing::Static,
            mixing_every: default_mixing_every(),
            mixing_reward: default_mixing_reward(),
            out_dir: out_dir.into(),
            pipeline: pipeline.into(),
            init_from: None,
        }
    }

    /// The most valid blocks an evaluation scores; `None` for the whole split.
    pub fn eval_block_limit(&self) -> Option<usize> {
        (self.eval_blocks > 0).then_some(self.eval_blocks)
    }

    /// This process's ranks: `devices`, or one rank on `device`.
    pub fn local_devices(&self) -> DeviceList {
        self.devices
            .clone()
            .unwrap_or_else(|| DeviceList::single(self.device))
    }

    /// Ranks in the whole run, over every node.
    pub fn world_size(&self) -> usize {
        self.local_devices().len() * self.nodes
    }

    /// Blocks per optimizer step over all ranks: step `s` trains on blocks `[s·G, (s+1)·G)` of
    /// the global stream.
    pub fn global_batch(&self) -> usize {
        self.world_size() * self.batch_size * self.grad_accum
    }

    /// Checks everything that would otherwise fail deep inside the model or the loop.
    pub fn validate(&self) -> Result<(), TrainError> {
        let fail = |message: String| Err(TrainError::InvalidConfig(message));
        let shape = &self.model;
        if shape.layers == 0 || shape.hidden == 0 || shape.heads == 0 || shape.intermediate == 0 {
            return fail(format!("model dimensions must be positive: {shape:?}"));
        }
        if !shape.hidden.is_multiple_of(shape.heads) {
            return fail(format!(
                "hidden size {} is not a multiple of the {} attention heads",
                shape.hidden, shape.heads
            ));
        }
        if self.seq_len < 2 {
            return fail(format!("seq_len must be at least 2, got {}", self.seq_len));
        }
        for (name, value) in [
            ("batch_size", self.batch_size),
            ("grad_accum", self.grad_accum),
            ("max_steps", self.max_steps),
            ("log_every", self.log_every),
            ("eval_every", self.eval_every),
            ("save_every", self.save_every),
            ("keep_checkpoints", self.keep_checkpoints),
            ("mixing_every", self.mixing_every),
        ] {
            if value == 0 {
                return fail(format!("{name} must be at least 1"));
            }
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return fail(format!("lr must be positive, got {}", self.lr));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return fail(format!(
                "weight_decay must be >= 0, got {}",
                self.weight_decay
            ));
        }
        for (name, value) in [
            ("adam_beta1", self.adam_beta1),
            ("adam_beta2", self.adam_beta2),
        ] {
            if !(0.0..1.0).contains(&value) {
                return fail(format!("{name} must be in [0, 1), got {value}"));
            }
        }
        if !(self.adam_epsilon.is_finite() && self.adam_epsilon > 0.0) {
            return fail(format!(
                "adam_epsilon must be positive, got {}",
                self.adam_epsilon
            ));
        }
        if let Some(norm) = self.max_grad_norm {
            if !(norm.is_finite() && norm > 0.0) {
                return fail(format!("max_grad_norm must be positive, got {norm}"));
            }
        }
        if !(self.mlm_probability > 0.0 && self.mlm_probability < 1.0) {
            return fail(format!(
                "mlm_probability must be in (0, 1), got {}",
                self.mlm_probability
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return fail(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        self.validate_parallel()
    }

    /// The configuration as a TOML document that `--config` reads back unchanged.
    pub fn to_toml(&self) -> Result<String, TrainError> {
        toml::to_string_pretty(self)
            .map_err(|error| TrainError::InvalidConfig(format!("cannot write as TOML: {error}")))
    }

    /// Writes the configuration as `DIR/config.toml` and `DIR/config.json`, creating the
    /// directory; returns the path of the TOML file.
    pub fn save(&self, dir: &Path) -> Result<PathBuf, TrainError> {
        fs::create_dir_all(dir).map_err(|source| TrainError::io(dir, source))?;
        let json = serde_json::to_string_pretty(self).map_err(|source| TrainError::Json {
            what: "the training configuration",
            source,
        })?;
        let json_path = dir.join("config.json");
        fs::write(&json_path, json + "\n").map_err(|source| TrainError::io(&json_path, source))?;
        let toml_path = dir.join("config.toml");
        fs::write(&toml_path, self.to_toml()?)
            .map_err(|source| TrainError::io(&toml_path, source))?;
        Ok(toml_path)
    }
}

fn one() -> usize {
    1
}

fn default_collective_timeout_s() -> u64 {
    300
}

#[cfg(test)]
mod tests;
