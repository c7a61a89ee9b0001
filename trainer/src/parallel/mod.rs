//! Data-parallel training: one rank per device, each reading its shard of the global block
//! stream, gradients summed over ranks once per optimizer step.
//!
//! The pieces, in the order a step uses them: [`group`] is a rank's membership of the run's
//! collective group (burn-collective: the gradient all-reduce and an all-gather of small
//! messages); [`exchange`] is what the ranks tell each other per step (token counts, losses,
//! blocks, the cursor, stop requests, failures) and the parameter hash compared at checkpoints;
//! [`watchdog`] bounds how long a rank waits for the others; [`nodes`] links the processes of a
//! run on several hosts through the coordinator of [`star`]. The loop that drives them is
//! `run::data_parallel`.

pub mod exchange;
pub mod group;
pub mod nodes;
pub mod star;
pub mod watchdog;
