//! The configuration's data-parallel vocabulary: which devices a process trains on, and the two
//! rules that make a step's numbers independent of how many ranks compute it.
//!
//! A step of a data-parallel run trains on `world × batch_size × grad_accum` blocks of the global
//! stream. Two things decide whether its loss and gradients depend on how those blocks are
//! spread over ranks and micro-batches: what MLM masking is keyed by ([`MaskingKey`]) and how
//! token losses are averaged ([`LossAverage`]). Runs started before data-parallel training
//! keyed masks by micro-batch and averaged micro-batch means; their configurations read that
//! way, so they resume exactly as before (on one device).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::{DeviceKind, TrainConfig};
use crate::error::TrainError;

/// What the generator of a block's MLM masks is keyed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum MaskingKey {
    /// `(seed, block_seq)`: a block gets the same masks whichever rank and micro-batch trains it.
    Block,
    /// `(seed, micro-batch index)`: how runs started before data-parallel training masked.
    MicroBatch,
}

impl MaskingKey {
    /// What configurations saved before the key existed used.
    pub fn before_data_parallel() -> Self {
        MaskingKey::MicroBatch
    }
}

/// How a step's token losses become the loss whose gradient the optimizer applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LossAverage {
    /// The sum of every predicted token's loss over all ranks and micro-batches, divided by the
    /// step's number of predicted tokens (transformers >= 4.46 with `num_items_in_batch`).
    Tokens,
    /// The mean of the micro-batches' mean losses: how runs started before data-parallel
    /// training averaged.
    MicroBatches,
}

impl LossAverage {
    /// What configurations saved before the key existed used.
    pub fn before_data_parallel() -> Self {
        LossAverage::MicroBatches
    }
}

/// The devices of one process's ranks, one rank per entry: `cpu:N` for N ranks on the CPU (to
/// test a run's numerics without GPUs), `cuda:0,cuda:1,…` for one rank per GPU. Written in a
/// configuration as that text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceList {
    kind: DeviceKind,
    /// CUDA device indices; for the CPU, `0..N` (all ranks share the one CPU device).
    indices: Vec<usize>,
}

impl DeviceList {
    /// One device of `kind`: what a run without `devices` trains on.
    pub fn single(kind: DeviceKind) -> Self {
        DeviceList {
            kind,
            indices: vec![0],
        }
    }

    pub fn kind(&self) -> DeviceKind {
        self.kind
    }

    /// Ranks in this process.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// The CUDA device index of each local rank (`0..N` on the CPU).
    pub fn indices(&self) -> &[usize] {
        &self.indices
    }
}

impl FromStr for DeviceList {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let invalid = |why: &str| {
            format!("devices `{text}`: {why} (expected cpu:N or cuda:0,cuda:1,…, e.g. cpu:2)")
        };
        let text = text.trim();
        if text == "cpu" || text == "cuda" {
            let kind = if text == "cpu" {
                DeviceKind::Cpu
            } else {
                DeviceKind::Cuda
            };
            return Ok(DeviceList::single(kind));
        }
        if let Some(count) = text.strip_prefix("cpu:") {
            let count: usize = count
                .parse()
                .map_err(|_| invalid("the CPU rank count is not a number"))?;
            if count == 0 {
                return Err(invalid("at least one rank"));
            }
            return Ok(DeviceList {
                kind: DeviceKind::Cpu,
                indices: (0..count).collect(),
            });
        }
        let mut indices = Vec::new();
        for entry in text.split(',') {
            let index = entry
                .trim()
                .strip_prefix("cuda:")
                .ok_or_else(|| invalid("every entry is cuda:INDEX"))?;
            let index: usize = index
                .parse()
                .map_err(|_| invalid("a CUDA device index is not a number"))?;
            if indices.contains(&index) {
                return Err(invalid("a device is listed twice"));
            }
            indices.push(index);
        }
        Ok(DeviceList {
            kind: DeviceKind::Cuda,
            indices,
        })
    }
}

impl fmt::Display for DeviceList {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            DeviceKind::Cpu => write!(formatter, "cpu:{}", self.indices.len()),
            DeviceKind::Cuda => {
                let entries: Vec<String> = self
                    .indices
                    .iter()
                    .map(|index| format!("cuda:{index}"))
                    .collect();
                formatter.write_str(&entries.join(","))
            }
        }
    }
}

impl Serialize for DeviceList {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for DeviceList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl TrainConfig {
    /// Whether the run trains as a data-parallel group: several ranks, or one rank listed in
    /// `devices` explicitly (`--devices cuda:0`: the group's code path on one device, to measure
    /// what it costs) in a run whose numbers do not depend on the world size.
    pub fn data_parallel(&self) -> bool {
        self.world_size() > 1
            || (self.devices.is_some()
                && self.masking_key == MaskingKey::Block
                && self.loss_average == LossAverage::Tokens)
    }

    /// The data-parallel part of [`TrainConfig::validate`].
    pub(crate) fn validate_parallel(&self) -> Result<(), TrainError> {
        let fail = |message: String| Err(TrainError::InvalidConfig(message));
        let devices = self.local_devices();
        if devices.kind() != self.device {
            return fail(format!(
                "devices `{devices}` are not on the configured device `{:?}`",
                self.device
            ));
        }
        if self.nodes == 0 || self.node_rank >= self.nodes {
            return fail(format!(
                "node_rank {} is not one of {} nodes",
                self.node_rank, self.nodes
            ));
        }
        if self.nodes > 1 && self.coordinator.is_empty() {
            return fail("a multi-node run needs a coordinator (HOST:PORT)".into());
        }
        if self.collective_timeout_s == 0 || self.join_timeout_s == 0 {
            return fail("collective_timeout_s and join_timeout_s must be at least 1".into());
        }
        let before_data_parallel = self.masking_key == MaskingKey::MicroBatch
            || self.loss_average == LossAverage::MicroBatches;
        if self.world_size() > 1 && before_data_parallel {
            return fail(format!(
                "this run masks by micro-batch or averages micro-batch losses (masking_key = {:?}, \
                 loss_average = {:?}, as runs started before data-parallel training did): it \
                 trains on one device only",
                self.masking_key, self.loss_average
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_lists_parse_and_print_back() {
        let cpu: DeviceList = "cpu:3".parse().expect("cpu ranks");
        assert_eq!((cpu.kind(), cpu.len()), (DeviceKind::Cpu, 3));
        assert_eq!(cpu.to_string(), "cpu:3");
        let cuda: DeviceList = "cuda:0, cuda:2".parse().expect("cuda ranks");
        assert_eq!(cuda.indices(), [0, 2]);
        assert_eq!(cuda.to_string(), "cuda:0,cuda:2");
        assert_eq!(
            "cuda".parse::<DeviceList>(),
            Ok(DeviceList::single(DeviceKind::Cuda))
        );
        for bad in [
            "cpu:0",
            "cpu:x",
            "gpu:0",
            "cuda:0,cuda:0",
            "cuda:0,cpu:1",
            "",
        ] {
            let error = bad.parse::<DeviceList>().expect_err(bad);
            assert!(error.contains("expected cpu:N"), "{error}");
        }
    }

    #[test]
    fn several_ranks_need_the_world_size_independent_rules() {
        use crate::config::Preset;
        let mut config = TrainConfig::new("http://x", "out", Preset::Tiny);
        config.devices = Some("cpu:2".parse().expect("devices"));
        config.validate().expect("two CPU ranks");
        assert_eq!(
            (config.world_size(), config.global_batch()),
            (2, 2 * 32 * 4)
        );
        config.masking_key = MaskingKey::MicroBatch;
        let error = config.validate().expect_err("old masking on two ranks");
        assert!(error.to_string().contains("one device only"), "{error}");
        config.devices = None;
        config.validate().expect("old masking on one device");
        config.devices = Some("cuda:0".parse().expect("devices"));
        assert!(config.validate().is_err(), "cuda devices on a cpu run");
        config.devices = None;
        config.nodes = 2;
        assert!(
            config.validate().is_err(),
            "two nodes without a coordinator"
        );
        config.coordinator = "127.0.0.1:29500".into();
        config.node_rank = 2;
        assert!(config.validate().is_err(), "node_rank outside nodes");
    }
}
