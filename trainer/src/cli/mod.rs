//! The `flightlm-trainer` binary's own modules (not part of the library: they report errors with
//! `anyhow`, as binaries do).
//!
//! [`run_args`] holds the flags every training command shares and resolves them into one
//! `TrainConfig` (seed recipe < `--config` file < flags, over a resumed checkpoint's
//! configuration); [`training`] builds one source per local rank and runs the loop on the
//! configured backend (one device, or a data-parallel group); [`process_setup`] installs the stop
//! handler and the allocator tuning before a run; on CUDA, [`kernel_cache`] points cubecl's caches
//! at one directory and [`cuda_check`] checks the device can run what the run asks for before any
//! model is built. [`generate`] runs `generate` on the CPU or CUDA.

pub(crate) mod cuda_check;
pub(crate) mod generate;
pub(crate) mod kernel_cache;
pub(crate) mod process_setup;
pub(crate) mod run_args;
pub(crate) mod training;
