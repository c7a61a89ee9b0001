//! A remote object as a blocking byte stream, for the line-oriented readers: ranges are fetched
//! on a thread of their own one ahead of the reader, so the network and the reader overlap and
//! at most two ranges are held. The first range may already be on its way ([`super::prefetch`]).

use std::io::Read;
use std::sync::mpsc::{sync_channel, Receiver};

use bytes::{Buf, Bytes};

use super::store::{range_bytes, RemoteError};
use super::{io_runtime, prefetch, store_for, RemoteObject};
use crate::error::{PipelineError, Result};

/// The first range of a read (then 2×, 4×, … up to the full range size).
const FIRST_RANGE_BYTES: u64 = 1 << 20;

pub struct RemoteRead {
    chunks: Receiver<object_store::Result<Bytes>>,
    current: Bytes,
    /// Bytes still to come: a fetching thread that stops early is an error, not an end of file.
    remaining: u64,
    url: String,
}

/// Opens `object` for reading from its first byte, at the version it was listed with.
pub fn open(object: &RemoteObject) -> Result<RemoteRead> {
    let store = store_for(&object.root)?;
    let key = object.key_path()?;
    let url = object.url();
    let version = object.version.clone();
    let size = version.size;
    let prefetched = prefetch::take(object);
    let (sender, chunks) = sync_channel(1);
    std::thread::Builder::new()
        .name("remote-read".into())
        .spawn(move || {
            let mut start = 0;
            if let Some(fetch) = prefetched {
                let first = io_runtime().block_on(fetch);
                if let Ok(Ok(chunk)) = first {
                    start = chunk.len() as u64;
                    if sender.send(Ok(chunk)).is_err() {
                        return;
                    }
                }
            }
            // Ranges start small and double up to the full range size, so a reader that needs
            // only the first lines (a schema inference, a first batch) does not pull 16 MiB.
            let mut range = FIRST_RANGE_BYTES.min(range_bytes());
            while start < size {
                let end = (start + range).min(size);
                range = (range * 2).min(range_bytes());
                let chunk = io_runtime().block_on(store.fetch(&key, &version, start..end));
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
        remaining: size,
        url,
    })
}

impl Read for RemoteRead {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.recv() {
                Ok(Ok(chunk)) => self.current = chunk,
                // The typed failure travels inside the I/O error, so the readers above can tell
                // a store that failed from a file that is damaged.
                Ok(Err(error)) => {
                    let remote = match super::errors::find::<RemoteError>(&error) {
                        Some(remote) => remote.clone(),
                        None => RemoteError {
                            url: self.url.clone(),
                            message: super::errors::summary(&error),
                            unavailable: false,
                        },
                    };
                    return Err(std::io::Error::other(remote));
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
