//! Line-by-line reading of (optionally compressed) corpus files with a bound on line length, shared
//! by the text and JSON-lines tables.
//!
//! A line longer than the bound is reported with its number and size but never held in memory, so
//! one pathological line cannot exhaust the pipeline. A read error (a damaged or truncated
//! compressed stream) ends the file; the caller keeps what came before it.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use crate::error::PipelineError;
use crate::read::remote::{self, RemoteObject};
use crate::read::sources::Compression;
use crate::read::text_table::LineFile;

/// Opens `path` (or the remote object it names) with the decompressor its extension asks for.
pub fn open_decompressed(
    path: &Path,
    remote: Option<&RemoteObject>,
    compression: Compression,
) -> Result<Box<dyn Read + Send>, PipelineError> {
    let io_error = |source| PipelineError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file: Box<dyn Read + Send> = match remote {
        Some(object) => Box::new(remote::stream::open(object)?),
        None => Box::new(File::open(path).map_err(io_error)?),
    };
    Ok(match compression {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(file).map_err(io_error)?),
    })
}

/// One line of a file, without its line ending.
pub enum Line<'a> {
    Bytes(&'a [u8]),
    /// Longer than the bound: only its size is known.
    TooLong(usize),
}

pub struct LineReader {
    reader: BufReader<Box<dyn Read + Send>>,
    max_bytes: usize,
    line: Vec<u8>,
    /// 1-based number of the last line returned.
    pub number: u64,
}

impl LineReader {
    pub fn open(
        path: &Path,
        remote: Option<&RemoteObject>,
        compression: Compression,
        max_bytes: usize,
    ) -> Result<Self, PipelineError> {
        let input = open_decompressed(path, remote, compression)?;
        Ok(LineReader {
            reader: BufReader::with_capacity(1 << 20, input),
            max_bytes,
            line: Vec::new(),
            number: 0,
        })
    }

    /// Opens the file (local or remote) a line table reads.
    pub fn for_file(file: &LineFile) -> Result<Self, PipelineError> {
        Self::open(
            &file.path,
            file.remote.as_ref(),
            file.compression,
            file.max_line_bytes,
        )
    }

    /// The next line and its 1-based number, `None` at the end of the file.
    pub fn next_line(&mut self) -> std::io::Result<Option<(u64, Line<'_>)>> {
        self.line.clear();
        let mut total = 0usize;
        let mut seen_any = false;
        loop {
            let buffer = self.reader.fill_buf()?;
            if buffer.is_empty() {
                break;
            }
            seen_any = true;
            let (chunk, done) = match buffer.iter().position(|byte| *byte == b'\n') {
                Some(end) => (&buffer[..end], true),
                None => (buffer, false),
            };
            let consumed = chunk.len() + usize::from(done);
            total += chunk.len();
            if total <= self.max_bytes {
                self.line.extend_from_slice(chunk);
            }
            self.reader.consume(consumed);
            if done {
                break;
            }
        }
        if !seen_any {
            return Ok(None);
        }
        self.number += 1;
        if total > self.max_bytes {
            self.line.clear();
            return Ok(Some((self.number, Line::TooLong(total))));
        }
        if self.line.last() == Some(&b'\r') {
            self.line.pop();
        }
        Ok(Some((self.number, Line::Bytes(&self.line))))
    }
}
