//! Where training and evaluation blocks come from, as seen by the training loop.
//!
//! The loop only needs this trait, so it can be driven by a live pipeline ([`crate::data`]) in
//! production and by an in-memory source in unit tests.

use flightlm_shared::{Cursor, TokenBlocks, TokenizerInfo};

pub trait BlockSource {
    /// The tokenizer behind the ids (vocab size and special ids size the model and the collator).
    fn tokenizer(&self) -> &TokenizerInfo;

    /// The next training batch: exactly the configured number of rows, each `seq_len` ids.
    fn next_train_batch(&mut self) -> anyhow::Result<TokenBlocks>;

    /// The whole valid split, cut into batches of at most the configured number of rows.
    fn valid_batches(&mut self) -> anyhow::Result<Vec<TokenBlocks>>;

    /// Fraction of wall time the loop spent waiting for train batches so far (0..1 not required:
    /// seconds waited are reported and the loop divides by its own elapsed time).
    fn seconds_waited(&self) -> f64;

    /// Where the stream continues after the last train batch returned, for checkpoints; `None`
    /// for sources that cannot resume (generated corpora) or before the first batch.
    fn cursor(&self) -> Option<Cursor> {
        None
    }
}
