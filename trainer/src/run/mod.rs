//! A training run: the loop, and everything it writes.
//!
//! [`train`] is the loop: pull a batch, collate, forward and backward, accumulate, step, then log,
//! evaluate ([`eval`]) and checkpoint. [`checkpoint`] writes and reads everything a run needs to
//! continue exactly (weights, optimizer, schedule position, RNG, stream cursor); [`resume`]
//! finds the checkpoint a `--resume` names and decides which settings may change. As it goes the
//! run appends [`metrics`] (JSON lines, summarized for people by [`progress`] and drawn by
//! [`plot`]) and [`block_log`] (which blocks each step trained on, for `audit-blocks`).

pub mod block_log;
pub mod checkpoint;
pub mod eval;
pub mod metrics;
pub mod plot;
pub mod progress;
pub mod resume;
pub mod train;
