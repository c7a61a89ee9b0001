//! The contract between a flightlm pipeline and the trainers that read from it.
//!
//! Everything a consumer needs to speak to a pipeline lives here: the stream request that travels
//! as a Flight ticket ([`request`]), the Arrow schema of the token-block batches and the tokenizer
//! description carried in its metadata ([`schema`]), stable hashing used for fingerprints and the
//! train/valid split ([`hashing`]), the resume cursor ([`cursor`]), a reference Rust client
//! ([`client`]) with its connection settings ([`endpoint`]: URL, TLS CA, token) and reconnection
//! backoff ([`backoff`]); how a `tokenizer.json` is described ([`tokenizer_file`]); and the
//! HTTP/1.1 listener both processes serve their metrics on ([`metrics_http`]). The same contract
//! is documented for other languages in
//! `docs/protocol.md`.

pub mod backoff;
pub mod client;
pub mod cursor;
pub mod endpoint;
pub mod hashing;
pub mod metrics_http;
pub mod request;
pub mod schema;
pub mod tokenizer_file;
pub mod tokenizer_info;

pub use cursor::{Cursor, FileVersion, SourcePosition, StreamState};
pub use request::{Shard, Split, StreamRequest, StreamWeights, CONTRACT_VERSION};
pub use schema::{TokenBlocks, TokenizerInfo};
