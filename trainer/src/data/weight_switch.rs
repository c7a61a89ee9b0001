//! Changing the train stream's weights without waiting for the pipeline.
//!
//! Opening a stream costs the pipeline a file prefix and a first encoding job per source (tens
//! to hundreds of milliseconds), far more than a small model's step. So a change of weights opens
//! the new stream *beside* the one being read: from the same cursor, with the new weights applying
//! from a chunk boundary some blocks ahead (`weights_from`). Both streams give the same blocks
//! until that boundary, so the loop keeps reading the old one while the new one starts, and takes
//! the new one over as soon as its first batch is there, dropping the batches it already has.
//! Only when the old stream reaches the boundary first does the loop wait.
//!
//! Where the change happens depends only on the cursor and the boundary, never on timing: every
//! rank, an uninterrupted run and a resumed one draw the same blocks.

use flightlm_shared::{StreamRequest, TokenBlocks};

use crossbeam_channel::{Receiver, TryRecvError};

pub type Batches = Receiver<anyhow::Result<TokenBlocks>>;

/// A stream opened beside the one being read, not yet taken over.
pub struct Standby {
    pub train: Batches,
    pub request: StreamRequest,
    /// Batches read from the current stream since the standby's cursor: the standby's first
    /// batches repeat them.
    behind: usize,
    /// Rows of the current stream from a chunk starting at this block or later differ from the
    /// standby's: the loop must take the standby over before reading them.
    limit: u64,
    /// The standby's first batch, once it came.
    first: Option<anyhow::Result<TokenBlocks>>,
}

/// Where the current stream stops giving the standby's blocks: the standby's boundary, or an
/// earlier one the current stream itself was opened with and has not reached (`cursor_chunk`
/// is where the standby starts).
pub fn limit_of(request: &StreamRequest, current: &StreamRequest) -> u64 {
    let cursor_chunk = request
        .cursor
        .as_ref()
        .map_or(0, |cursor| cursor.state.block_seq);
    // Without a boundary the weights apply from the chunk after the cursor's.
    let own = request.weights_from.unwrap_or(cursor_chunk + 1);
    match current.weights_from {
        Some(from) if from > cursor_chunk => own.min(from),
        _ => own,
    }
}

impl Standby {
    pub fn new(train: Batches, request: StreamRequest, limit: u64) -> Self {
        Standby {
            train,
            request,
            behind: 0,
            limit,
            first: None,
        }
    }

    /// Whether the standby can be taken over without waiting.
    pub fn ready(&mut self) -> bool {
        if self.first.is_some() {
            return true;
        }
        match self.train.try_recv() {
            Ok(batch) => {
                self.first = Some(batch);
                true
            }
            Err(TryRecvError::Empty) => false,
            Err(TryRecvError::Disconnected) => {
                self.first = Some(Err(anyhow::anyhow!("the new train stream stopped")));
                true
            }
        }
    }

    /// Takes `batch` of the current stream if all its rows are ones the standby would give too;
    /// gives it back otherwise (the loop must then take the standby over).
    pub fn pass(&mut self, batch: TokenBlocks) -> anyhow::Result<Result<TokenBlocks, ()>> {
        if crosses(&batch, self.limit)? {
            return Ok(Err(()));
        }
        self.behind += 1;
        Ok(Ok(batch))
    }

    /// The standby's stream, its batches that repeat what was read already dropped, and its
    /// next batch (waiting for it).
    pub fn take_over(mut self) -> anyhow::Result<(Batches, StreamRequest, TokenBlocks)> {
        loop {
            let batch = match self.first.take() {
                Some(batch) => batch,
                None => self
                    .train
                    .recv()
                    .map_err(|_| anyhow::anyhow!("the new train stream stopped"))?,
            }?;
            if self.behind == 0 {
                return Ok((self.train, self.request, batch));
            }
            self.behind -= 1;
        }
    }
}

/// Whether a row of `batch` comes from a chunk starting at block `limit` or later.
fn crosses(batch: &TokenBlocks, limit: u64) -> anyhow::Result<bool> {
    for (row, block_seq) in batch.block_seq.iter().enumerate() {
        // A chunk starts at or before its blocks: only rows numbered past the limit may cross.
        if *block_seq >= limit && batch.cursor_after(row)?.state.block_seq >= limit {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flightlm_shared::{Cursor, Split, StreamState};

    fn cursor_in_chunk(block_seq: u64) -> Cursor {
        Cursor {
            state: StreamState {
                fingerprint: "f".into(),
                block_seq,
                draws: block_seq,
                sources: Vec::new(),
                weights: None,
            },
            skip: 3,
        }
    }

    fn request(chunk: Option<u64>, from: Option<u64>) -> StreamRequest {
        StreamRequest::new(Split::Train, 8, 2)
            .with_cursor(chunk.map(cursor_in_chunk))
            .with_weights(Some(Default::default()))
            .with_weights_from(from)
    }

    #[test]
    fn the_limit_is_the_nearest_boundary_not_yet_reached() {
        let current = StreamRequest::new(Split::Train, 8, 2);
        // Its own boundary.
        assert_eq!(limit_of(&request(Some(64), Some(200)), &current), 200);
        // None: the chunk after the cursor's.
        assert_eq!(limit_of(&request(Some(64), None), &current), 65);
        // The current stream's own change ahead comes first.
        let changing = request(Some(0), Some(100));
        assert_eq!(limit_of(&request(Some(64), Some(200)), &changing), 100);
        // ... unless the cursor is past it already.
        assert_eq!(limit_of(&request(Some(128), Some(300)), &changing), 300);
    }
}
