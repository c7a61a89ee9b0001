//! Reading what a causal model learned: `generate` continues prompts token by token, as
//! transformers' `generate` does, on the CPU or CUDA.
//!
//! In the order a prompt goes through: [`prompts`] turns text (or token ids) into the ids the
//! model reads, framed like the documents it was trained on; [`generation`] runs the loop (the
//! model's key/value cache from [`crate::model::decode`], the context window, the stop rules);
//! [`sampling`] picks each token (greedy, or temperature, top-k and top-p); [`command`] is the
//! subcommand over the three.

pub mod command;
pub mod generation;
pub mod prompts;
pub mod sampling;

pub use command::{generate_command, GenerateArgs};
pub use generation::{generate, GenerateSettings, Generation, ModelLogits, NextLogits, Stop};
pub use sampling::Sampling;
