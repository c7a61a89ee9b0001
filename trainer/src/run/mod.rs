//! A training run: the loop, and everything it writes.
//!
//! [`train`] is the loop: each optimizer step ([`step`]: pull batches, collate, forward and
//! backward, accumulate, exchange with the other ranks, update), then log, evaluate ([`eval`]) and
//! checkpoint, each stage a function of `stages`. [`data_parallel`] runs one such loop per
//! device, each on its shard. [`checkpoint`] writes and reads everything a run needs to continue
//! exactly (weights, optimizer, schedule position, stream cursor); [`resume`] finds the checkpoint
//! a `--resume` names and decides which settings may change. As it goes the run appends
//! [`metrics`] (JSON lines, summarized for people by [`progress`], drawn by [`plot`], written for
//! TensorBoard by [`tensorboard`], served to Prometheus by [`live_metrics`]) and
//! [`block_log`] (which blocks each step trained on, for `audit-blocks`).

pub mod block_log;
pub mod checkpoint;
pub mod data_parallel;
pub mod eval;
pub mod live_metrics;
pub mod metrics;
pub mod plot;
pub mod progress;
pub mod resume;
pub(crate) mod stages;
pub mod step;
pub mod tensorboard;
pub mod train;
