//! flightlm-pipeline: reads corpora with DataFusion, tokenizes with HF `tokenizers`, packs token
//! blocks with `group_texts` semantics and serves them over Arrow Flight.
//!
//! Stages, in the order data flows: [`corpus`] (named sources, each a live sorted file list, set up
//! by [`corpus_setup`] and changed by [`control`]) → [`reader`] / [`text_table`] / [`json_lines`]
//! (DataFusion, bad records per [`bad_records`]) → [`tokenize`] (worker pool) → [`packing`] in
//! [`source_blocks`] (one producer per source) → [`chunk_producer`] (seeded [`mixture`], chunk
//! shuffle), shared by the shards of a job through [`chunk_hub`] → [`block_stream`] (resume cursor,
//! shard; counted in [`stats`]) → [`flight_server`]. [`tokenizer_training`] trains
//! the tokenizer from the same sources, and [`consume`] is the command-line client.

pub mod access;
pub mod bad_records;
pub mod block_stream;
pub mod chunk_hub;
pub mod chunk_producer;
pub mod consume;
pub mod control;
pub mod corpus;
pub mod corpus_setup;
pub mod error;
pub mod flight_server;
pub mod json_lines;
pub mod lines;
pub mod mixture;
pub mod packing;
pub mod reader;
pub mod source_blocks;
pub mod sources;
pub mod stats;
pub mod text_table;
pub mod tokenize;
pub mod tokenizer_file;
pub mod tokenizer_training;

pub use error::{PipelineError, Result};
