//! flightlm-pipeline: reads corpora with DataFusion, tokenizes with HF `tokenizers`, packs token
//! blocks with `group_texts` semantics and serves them over Arrow Flight.
//!
//! Stages, in the order data flows: [`sources`] (manifest) → [`reader`] / [`text_table`]
//! (DataFusion) → [`tokenize`] (worker pool) → [`packing`] → [`block_stream`] (one stream per
//! request, counted in [`stats`]) → [`flight_server`]. [`tokenizer_training`] trains the tokenizer from the same
//! sources, and [`consume`] is the command-line client.

pub mod block_stream;
pub mod consume;
pub mod error;
pub mod flight_server;
pub mod packing;
pub mod reader;
pub mod sources;
pub mod stats;
pub mod text_table;
pub mod tokenize;
pub mod tokenizer_file;
pub mod tokenizer_training;

pub use error::{PipelineError, Result};
