//! From a micro-batch's predictions to updated weights.
//!
//! In the order a step uses them: [`loss`] scores the predicted positions (natural-log
//! cross-entropy), [`clipping`] averages the accumulated gradients and clips their global norm,
//! [`schedule`] gives the step's learning rate (warmup, then linear, cosine or constant), and
//! [`adamw`] applies the decoupled-weight-decay update as a `transformers` `Trainer` does.
//! [`source_loss`] splits the loss by the source each block came from.

pub mod adamw;
pub mod clipping;
pub mod loss;
pub mod schedule;
pub mod source_loss;
