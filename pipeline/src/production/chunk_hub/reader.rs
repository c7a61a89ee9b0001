//! A stream's place in a [`Hub`]: takes the chunks in order, and moves to another production
//! when its hub moves it off (it held the others back) or hands over (an older hub of the job
//! holds what comes next).

use std::sync::Arc;

use super::Hub;
use crate::error::PipelineError;
use crate::production::chunk_producer::Chunk;
use crate::production::stats::ReadCounters;

/// One stream's place in a hub; dropping it leaves the hub.
pub struct Reader {
    pub(super) hub: Arc<Hub>,
    pub(super) id: u64,
}

impl Reader {
    pub fn counters(&self) -> Arc<ReadCounters> {
        self.hub.counters.clone()
    }

    /// Waits for this reader's next chunk; `None` once the stream has ended.
    pub fn next_chunk(&mut self) -> Result<Option<Arc<Chunk>>, PipelineError> {
        let mut state = self.hub.lock();
        loop {
            let Some(next) = state
                .readers
                .iter()
                .find(|(id, _)| *id == self.id)
                .map(|(_, next)| *next)
            else {
                drop(state);
                self.continue_alone()?;
                state = self.hub.lock();
                continue;
            };
            if next < state.produced() {
                let chunk = state.chunks[(next - state.first) as usize].chunk.clone();
                if let Some(reader) = state.readers.iter_mut().find(|(id, _)| *id == self.id) {
                    reader.1 = next + 1;
                }
                self.hub.trim(&mut state);
                self.hub.changed.notify_all();
                return Ok(Some(chunk));
            }
            if let Some((older, entry)) = state.handed_over.clone() {
                drop(state);
                self.move_to(&older, entry)?;
                state = self.hub.lock();
                continue;
            }
            match &state.end {
                Some(Ok(())) => return Ok(None),
                Some(Err(error)) => return Err(error.shared_copy()),
                None => state = self.hub.wait(state),
            }
        }
    }
}

impl Reader {
    /// Moves this reader, moved off its hub, onto a production of its own from where it was.
    fn continue_alone(&mut self) -> Result<(), PipelineError> {
        let entry = {
            let state = self.hub.lock();
            let (_, entry) = state
                .moved_off
                .iter()
                .find(|(id, _)| *id == self.id)
                .expect("a reader leaves the readers only when moved off");
            entry.clone()
        };
        *self = self.alone_from(entry)?;
        Ok(())
    }

    /// Moves this reader, whose hub handed over, to the older hub at `entry`; on its own from
    /// there if that hub no longer holds it.
    fn move_to(&mut self, older: &Arc<Hub>, entry: Arc<str>) -> Result<(), PipelineError> {
        let moved = match older.join(&entry) {
            Some(reader) => reader,
            None => self.alone_from(entry)?,
        };
        // The old place is released by dropping it.
        *self = moved;
        Ok(())
    }

    /// A reader of a production of its own, from `entry`, counting into the same counters.
    fn alone_from(&self, entry: Arc<str>) -> Result<Reader, PipelineError> {
        let hub = &self.hub;
        Hub::start(
            None,
            None,
            entry,
            hub.make.clone(),
            hub.counters.clone(),
            hub.stall_limit,
        )
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let mut state = self.hub.lock();
        state.readers.retain(|(id, _)| *id != self.id);
        state.moved_off.retain(|(id, _)| *id != self.id);
        if state.readers.is_empty() {
            state.closed = true;
        } else {
            self.hub.trim(&mut state);
        }
        self.hub.changed.notify_all();
    }
}
