//! flightlm-pipeline: reads corpora with DataFusion, tokenizes with HF `tokenizers`, packs token
//! blocks with `group_texts` semantics and serves them over Arrow Flight.
//!
//! Stages, in the order data flows:
//! 1. [`corpus`]: named sources, each a live sorted file list ([`corpus::setup`] builds it from
//!    `serve`'s arguments, [`corpus::control`] changes it while streams run);
//! 2. [`read`]: DataFusion scans of each file in manifest order, bad records handled as the
//!    policy says;
//! 3. [`production`]: tokenizer pool → packer per source → seeded mixture and chunk shuffle, one
//!    production shared by the shards of a job, with live counters;
//! 4. [`service`]: each consumer's block stream (resume cursor, shard) over Arrow Flight;
//! 5. [`observe`]: Prometheus metrics and a live status page of all of the above.
//!
//! Beside them: [`tokenizer`] (the served tokenizer file, and training new ones), [`access`]
//! (tokens, TLS, where added sources may live), [`consume`] (the command-line client) and
//! [`error`].

pub mod access;
pub mod consume;
pub mod corpus;
pub mod error;
pub mod observe;
pub mod production;
pub mod read;
pub mod service;
pub mod tokenizer;

pub use error::{PipelineError, Result};
