//! flightlm trainer: pre-trains RoBERTa-style models in burn on token blocks streamed from a
//! flightlm pipeline.
//!
//! Stages, in the order a block flows through a run:
//! 1. [`data`]: a [`BlockSource`] (the live pipeline with prefetch and reconnect, a generated
//!    corpus, or one text file) yields blocks, and collation masks them (MLM) or shifts them
//!    (causal) into model inputs and labels;
//! 2. [`model`]: the RoBERTa encoder and its heads, in burn, with mixed precision;
//! 3. [`optim`]: the loss on the predicted positions, gradient averaging and global-norm
//!    clipping, the learning-rate schedule, AdamW;
//! 4. [`run`]: the loop that drives the three, evaluates, checkpoints and resumes, and records
//!    metrics, progress, curves and the blocks each step trained on; with several devices, one
//!    loop per rank, joined by [`parallel`] (the collective group, the per-step exchange).
//!
//! [`mixing`] steers the mixture's weights from each source's loss (`--mixing odm`).
//!
//! [`config`] is the one typed configuration every stage reads; [`hf`] moves models to and from
//! HuggingFace's layout; [`generate`] continues text with a trained causal model; [`rng`] is the
//! seeded generator whose sequence we own. The binary is a thin CLI over [`train`]; everything else
//! is here so tests and other front-ends can drive the same loop with any [`BlockSource`].

pub mod config;
pub mod data;
pub mod error;
pub mod generate;
pub mod hf;
pub mod mixing;
pub mod model;
pub mod optim;
pub mod parallel;
pub mod rng;
pub mod run;

pub use config::{DeviceKind, Objective, Precision, Preset, TrainConfig};
pub use data::source::BlockSource;
pub use error::TrainError;
pub use run::eval::{evaluate, Evaluation};
pub use run::train::{train, train_with, RunControl, TrainSummary};

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
