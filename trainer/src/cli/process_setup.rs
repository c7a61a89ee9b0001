//! Process-wide setup of the `flightlm-trainer` binary: the Ctrl-C/SIGTERM stop flag and the
//! allocator tuning that CPU training needs.

use std::sync::atomic::{AtomicBool, Ordering};

/// Raised by SIGINT (Ctrl-C) or SIGTERM; the loop then checkpoints the current step and stops.
/// SIGUSR1 asks the pipeline streams to continue on the first of `--pipeline`'s replicas.
pub(crate) static STOP_REQUESTED: AtomicBool = AtomicBool::new(false);

#[cfg(all(target_os = "linux", target_env = "gnu"))]
extern "C" fn request_stop(signal: libc::c_int) {
    STOP_REQUESTED.store(true, Ordering::SeqCst);
    // SAFETY: `signal` is async-signal-safe. Restoring the default action makes a second
    // Ctrl-C end the process at once, for when the current step never finishes.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
extern "C" fn request_first_replica(_signal: libc::c_int) {
    flightlm_trainer::data::replicas::return_to_first_replica();
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn install_stop_handler() {
    let handler = request_stop as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic and calls `signal`, both async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// SIGUSR1: back to the first pipeline replica. Installed first thing, so that the signal never
/// ends a process that is still starting (its default action).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn install_replica_handler() {
    let first = request_first_replica as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only increments an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGUSR1, first);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn install_replica_handler() {}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn install_stop_handler() {}

/// Every CPU training step allocates and frees the same few dozen multi-megabyte tensors.
/// glibc serves blocks above 128 KiB with fresh `mmap`s and trims the heap top eagerly, so each
/// step would page-fault all of that memory in again (measured: ~15 % of a tiny-preset step).
/// Keeping freed memory in the heap makes the next step reuse it. The threshold cannot go above
/// 32 MiB, and a causal step has larger blocks (the tiny preset's logits: 16 x 128 x 8192 f32,
/// 64 MiB, and their gradient), so mmap is turned off altogether (measured: 60 causal tiny-preset
/// steps spent 21-25 s in the kernel with it, 0.7 s without, for 41-50 s of user time).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub(crate) fn keep_freed_memory() {
    const MMAP_THRESHOLD: libc::c_int = 32 << 20; // glibc's upper bound for this tunable
    const TRIM_THRESHOLD: libc::c_int = 1 << 30;
    const TOP_PAD: libc::c_int = 64 << 20;
    // SAFETY: `mallopt` only sets allocator tunables; it runs first in `main`, before any other
    // thread exists. A rejected value leaves glibc's default in place, which is harmless.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        libc::mallopt(libc::M_TOP_PAD, TOP_PAD);
        libc::mallopt(libc::M_MMAP_MAX, 0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub(crate) fn keep_freed_memory() {}
