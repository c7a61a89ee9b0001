//! Where training and evaluation blocks come from, as seen by the training loop.
//!
//! The loop only needs this trait, so it can be driven by a live pipeline ([`crate::data::pipeline`]) in
//! production and by an in-memory source in unit tests.

use flightlm_shared::{Cursor, TokenBlocks, TokenizerInfo};

use crate::config::TrainConfig;
use crate::error::TrainError;
use crate::mixing::WeightChange;

pub trait BlockSource {
    /// The tokenizer behind the ids (vocab size and special ids size the model and the collator).
    fn tokenizer(&self) -> &TokenizerInfo;

    /// The next training batch: exactly the configured number of rows, each `seq_len` ids.
    fn next_train_batch(&mut self) -> anyhow::Result<TokenBlocks>;

    /// The valid split, cut into batches of at most the configured number of rows: its first
    /// `max_blocks` blocks, or all of it with `None`. A source stops reading at the limit.
    fn valid_batches(&mut self, max_blocks: Option<usize>) -> anyhow::Result<Vec<TokenBlocks>>;

    /// Fraction of wall time the loop spent waiting for train batches so far (0..1 not required:
    /// seconds waited are reported and the loop divides by its own elapsed time).
    fn seconds_waited(&self) -> f64;

    /// Where the stream continues after the last train batch returned, for checkpoints; `None`
    /// for sources that cannot resume (generated corpora) or before the first batch.
    fn cursor(&self) -> Option<Cursor> {
        None
    }

    /// The sources the train stream draws its blocks from, as its blocks name them; `None` when
    /// they name none (generated corpora, a pipeline without the `source` column).
    fn mixture_sources(&self) -> Option<Vec<String>> {
        None
    }

    /// Changes the train stream's own mixture weights as `change` says (`mixing`); sources
    /// without a mixture refuse.
    fn set_weights(&mut self, _change: WeightChange) -> anyhow::Result<()> {
        anyhow::bail!("this block source has no mixture whose weights could change")
    }
}

/// Appends `batch` to `batches`, cut so that they hold at most `max_blocks` blocks in all;
/// returns whether the limit is reached (the caller reads no further).
pub(crate) fn push_up_to(
    batches: &mut Vec<TokenBlocks>,
    mut batch: TokenBlocks,
    max_blocks: Option<usize>,
) -> bool {
    let Some(max_blocks) = max_blocks else {
        batches.push(batch);
        return false;
    };
    let held: usize = batches.iter().map(TokenBlocks::rows).sum();
    let room = max_blocks.saturating_sub(held);
    if batch.rows() > room {
        batch = batch.take_front(room);
    }
    let taken = batch.rows();
    if taken > 0 {
        batches.push(batch);
    }
    held + taken >= max_blocks
}

/// Checks that a batch from the source has the shape the run was configured for.
pub(crate) fn check_blocks(
    blocks: &TokenBlocks,
    config: &TrainConfig,
    vocab_size: u32,
) -> Result<(), TrainError> {
    if blocks.seq_len != config.seq_len {
        return Err(TrainError::BadBatch(format!(
            "sent blocks of {} tokens, the run expects {}",
            blocks.seq_len, config.seq_len
        )));
    }
    if blocks.rows() == 0 || blocks.ids.len() != blocks.rows() * blocks.seq_len {
        return Err(TrainError::BadBatch(format!(
            "sent a malformed batch ({} rows, {} ids)",
            blocks.rows(),
            blocks.ids.len()
        )));
    }
    if let Some(id) = blocks.ids.iter().find(|id| **id >= vocab_size) {
        return Err(TrainError::BadBatch(format!(
            "sent token id {id}, outside the tokenizer's vocabulary of {vocab_size}"
        )));
    }
    if config.document_attention {
        check_document_starts(blocks)?;
    }
    Ok(())
}

/// Document attention needs every row's document starts, ascending and inside the block.
fn check_document_starts(blocks: &TokenBlocks) -> Result<(), TrainError> {
    let Some(starts) = &blocks.document_starts else {
        return Err(TrainError::BadBatch(
            "sent blocks without document starts, which --document-attention needs (a \
             pipeline older than contract version 2, or a source that cannot tell)"
                .into(),
        ));
    };
    let ordered = |row: &Vec<u32>| {
        row.windows(2).all(|pair| pair[0] < pair[1])
            && row
                .last()
                .is_none_or(|last| (*last as usize) < blocks.seq_len)
    };
    if starts.len() != blocks.rows() || !starts.iter().all(ordered) {
        return Err(TrainError::BadBatch(format!(
            "sent document starts that do not fit its {} blocks of {} tokens",
            blocks.rows(),
            blocks.seq_len
        )));
    }
    Ok(())
}

/// Checks, before the first step, that the stream's tokenizer can train this objective.
pub(crate) fn check_tokenizer(
    tokenizer: &TokenizerInfo,
    objective: crate::config::Objective,
) -> Result<(), TrainError> {
    let largest = (tokenizer.special_ids.iter().copied())
        .chain(tokenizer.role_ids())
        .max()
        .unwrap_or(0);
    if tokenizer.vocab_size <= largest {
        return Err(TrainError::BadBatch(format!(
            "describes a tokenizer of {} ids whose special ids go up to {largest}",
            tokenizer.vocab_size
        )));
    }
    if objective == crate::config::Objective::Mlm {
        crate::data::masking::MlmMasking::new(tokenizer, 0.15)
            .map_err(TrainError::InvalidConfig)?;
    }
    Ok(())
}
