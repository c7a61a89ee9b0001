//! Serving blocks over Arrow Flight.
//!
//! [`flight_server`] answers `do_get` (and the control actions) with the record batches of a
//! [`block_stream`]: one consumer's view of the shared production, which skips what its resume
//! cursor says was consumed and keeps the blocks of its shard; [`listener`] binds the port, sets
//! TLS, windows and message limits, and drains open streams at shutdown.

pub mod block_stream;
pub mod flight_server;
pub mod listener;
