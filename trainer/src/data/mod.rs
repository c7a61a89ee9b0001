//! Where a run's token blocks come from, and how a batch of them becomes model inputs.
//!
//! In the order a block is used: a [`source::BlockSource`] hands the loop batches of blocks
//! (with the block sequence numbers and resume cursor they came with): [`pipeline`] reads a
//! live flightlm pipeline over Arrow Flight on a [`prefetch`] thread that reconnects and resumes
//! (on the next of several [`replicas`] when one goes away), [`synthetic`] generates a learnable corpus in memory, and [`text_file`] packs one local
//! text file. [`collate`] turns a batch into inputs, label positions and targets for the
//! objective, drawing MLM corruption through [`masking`] (HF's 80/10/10).

pub mod collate;
pub mod masking;
pub mod pipeline;
pub mod prefetch;
pub mod replicas;
pub mod source;
pub mod synthetic;
pub mod text_file;
