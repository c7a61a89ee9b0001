//! Data-parallel training: one rank per device, each reading its shard of the global block
//! stream, gradients summed over ranks once per optimizer step.
//!
//! The pieces, in the order a run uses them: [`group`] is a rank's membership of the run's
//! collective group (the gradient sum and an all-gather of small messages), over one of three
//! transports: burn-collective between CUDA devices of one process, [`local`] rounds between CPU
//! ranks of one process, and [`star`] connections to node 0's [`coordinator`] between nodes
//! ([`nodes`] links them; [`access`] and [`handshake`] decide who may join; [`frame`] is the
//! wire format; [`rounds`] combines a round's contributions in rank order for both of the last
//! two). Before the first step the ranks compare their [`agreement`]; [`exchange`] is what they
//! tell each other per step (token counts, losses, blocks, the cursor, stop requests, failures)
//! and the parameter hash compared at checkpoints; [`watchdog`] bounds how long a rank waits
//! for the others. The loop that drives them is `run::data_parallel`.

pub mod access;
pub mod agreement;
pub mod coordinator;
pub mod exchange;
pub mod frame;
pub mod group;
pub mod handshake;
pub mod local;
pub mod nodes;
pub mod rounds;
pub mod star;
pub mod watchdog;
