//! A remote object as a blocking byte stream, for the line-oriented readers: ranges are fetched
//! on a thread of their own one ahead of the reader, so the network and the reader overlap and
//! at most two ranges are held.

use std::io::Read;
use std::sync::mpsc::{sync_channel, Receiver};

use bytes::{Buf, Bytes};

use super::store::{RemoteError, CHUNK_BYTES};
use super::{io_runtime, store_for, RemoteObject};
use crate::error::{PipelineError, Result};

pub struct RemoteRead {
    chunks: Receiver<object_store::Result<Bytes>>,
    current: Bytes,
    /// Bytes still to come: a fetching thread that stops early is an error, not an end of file.
    remaining: u64,
    url: String,
}

/// Opens `object` for reading from its first byte.
pub fn open(object: &RemoteObject) -> Result<RemoteRead> {
    let store = store_for(&object.root)?;
    let key = object.key_path();
    let url = object.url();
    let (sender, chunks) = sync_channel(1);
    std::thread::Builder::new()
        .name("remote-read".into())
        .spawn(move || {
            let size = match io_runtime().block_on(store.pinned_meta(&key)) {
                Ok(meta) => meta.size,
                Err(error) => {
                    let _ = sender.send(Err(error));
                    return;
                }
            };
            let mut start = 0;
            while start < size {
                let end = (start + CHUNK_BYTES).min(size);
                let chunk = io_runtime().block_on(store.fetch(&key, start..end));
                let failed = chunk.is_err();
                if sender.send(chunk).is_err() || failed {
                    return;
                }
                start = end;
            }
        })
        .map_err(|source| PipelineError::Io {
            path: url.clone().into(),
            source,
        })?;
    Ok(RemoteRead {
        chunks,
        current: Bytes::new(),
        remaining: object.size,
        url,
    })
}

impl Read for RemoteRead {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.recv() {
                Ok(Ok(chunk)) => self.current = chunk,
                Ok(Err(error)) => {
                    let message = match super::errors::find::<RemoteError>(&error) {
                        Some(remote) => remote.to_string(),
                        None => format!("{}: {error}", self.url),
                    };
                    return Err(std::io::Error::other(message));
                }
                // The fetching thread ends after the last range.
                Err(_) if self.remaining == 0 => return Ok(0),
                Err(_) => {
                    let message = format!("{}: ended {} bytes early", self.url, self.remaining);
                    return Err(std::io::Error::other(message));
                }
            }
        }
        let count = buffer.len().min(self.current.len());
        buffer[..count].copy_from_slice(&self.current[..count]);
        self.current.advance(count);
        self.remaining = self.remaining.saturating_sub(count as u64);
        Ok(count)
    }
}
