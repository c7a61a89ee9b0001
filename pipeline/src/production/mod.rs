//! Producing a stream's global block sequence from the corpus, once per job.
//!
//! In the order blocks are made: [`tokenize`] (a worker pool off the async runtime) encodes the
//! documents a reader yields, [`packing`] cuts them into `group_texts` blocks, and
//! [`source_blocks`] runs both per source, labelling every block with the position it starts
//! at. [`chunk_producer`] interleaves the sources by a seeded [`mixture`] draw and shuffles
//! chunks of blocks; [`chunk_hub`] shares that one production among the shards of a job.
//! [`weight_schedule`] holds the weight changes a run sends its open streams.
//! [`stats`] holds the live counters every stage updates, [`served`] their totals since start.

pub mod chunk_hub;
pub mod chunk_producer;
pub mod mixture;
pub mod packing;
pub mod served;
pub mod source_blocks;
pub mod stats;
pub mod tokenize;
pub mod weight_schedule;
