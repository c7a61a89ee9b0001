//! flightlm trainer: pre-trains RoBERTa-style models in burn on token blocks streamed from a
//! flightlm pipeline.
//!
//! The binary is a thin CLI over [`train::train`]; everything else is here so tests and other
//! front-ends can drive the same loop with any [`source::BlockSource`].

pub mod block_log;
pub mod checkpoint;
pub mod clipping;
pub mod collate;
pub mod config;
pub mod config_layers;
pub mod data;
pub mod error;
pub mod eval;
pub mod hf;
pub mod loss;
pub mod masking;
pub mod metrics;
pub mod model;
pub mod optimizer;
pub mod plot;
pub mod progress;
pub mod resume;
pub mod rng;
pub mod schedule;
pub mod source;
pub mod synthetic;
pub mod text_file;
pub mod train;

pub use config::{DeviceKind, Objective, Precision, Preset, TrainConfig};
pub use error::TrainError;
pub use eval::{evaluate, Evaluation};
pub use train::{train, train_with, RunControl, TrainSummary};

/// The CPU backend: burn's Flex. Its matrix products (the `gemm` crate) read transposed operands
/// through their strides instead of copying them and use AVX-512 where the CPU has it; its
/// elementwise kernels are SIMD and it spreads large operations over rayon's threads. On the
/// small preset it trains 1.4x as fast as burn-ndarray, with the same losses.
pub type CpuBackend = burn::backend::Flex;

/// The one device of [`CpuBackend`].
pub type CpuDevice = burn::backend::flex::FlexDevice;

/// Serializes tests that draw from a backend's random generator: burn's CPU backends keep one
/// process-wide generator, so concurrent tests would otherwise perturb each other's seeded runs.
#[cfg(test)]
pub(crate) fn backend_rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
