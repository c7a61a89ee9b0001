//! `flightlm-pipeline consume`: reads a stream like a trainer would and reports its throughput.
//!
//! The `kcat` of flightlm: it decodes every batch, so its figures include decompression and IPC
//! decoding, and `--dump` writes the blocks for inspection or comparison with a reference. When
//! the pipeline goes away it reconnects with backoff, as the trainer does, and continues after the
//! last block it read.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use flightlm_shared::backoff::Backoff;
use flightlm_shared::client::{BlockStream, ClientError, PipelineEndpoint};
use flightlm_shared::{Cursor, StreamRequest, TokenBlocks};
use serde::Serialize;

use crate::error::{PipelineError, Result};

pub struct ConsumeOptions {
    pub endpoint: PipelineEndpoint,
    pub request: StreamRequest,
    pub max_blocks: Option<u64>,
    pub dump: Option<PathBuf>,
    /// How long one outage of the pipeline may last before `consume` gives up.
    pub retry_for: Duration,
}

/// The one JSON line `consume` ends with.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumeSummary {
    pub blocks: u64,
    pub tokens: u64,
    pub seconds: f64,
    pub tokens_per_s: f64,
    pub first_batch_ms: f64,
    /// Flight message bytes received (zstd-compressed IPC bodies plus headers) per token.
    pub wire_bytes_per_token: f64,
    /// The same blocks as uncompressed Arrow buffers, per token.
    pub uncompressed_bytes_per_token: f64,
    /// Resumes right after the last block read (pass it back with `--cursor`).
    pub cursor: Option<Cursor>,
    /// Connections opened again after the pipeline went away.
    pub reconnections: u64,
    /// Blocks read per source, as the stream's `source` column names them.
    pub sources: BTreeMap<String, u64>,
}

pub async fn consume(options: &ConsumeOptions) -> Result<ConsumeSummary> {
    let started = Instant::now();
    let mut dump = match &options.dump {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(|source| PipelineError::Write {
                path: path.clone(),
                source,
            })?,
        )),
        None => None,
    };
    let mut connection = Connection::new(options);
    let mut first_batch_ms = None;
    let mut blocks = 0u64;
    let mut uncompressed_bytes = 0u64;
    let limit = options.max_blocks.unwrap_or(u64::MAX);
    let mut cursor = options.request.cursor.clone();
    let mut sources = BTreeMap::new();
    while blocks < limit {
        let Some(batch) = connection.next(&cursor).await? else {
            break;
        };
        first_batch_ms.get_or_insert_with(|| started.elapsed().as_secs_f64() * 1e3);
        let take = (batch.rows() as u64).min(limit - blocks) as usize;
        uncompressed_bytes += arrow_bytes(&batch);
        if let Some(writer) = dump.as_mut() {
            for row in 0..take {
                let starts = batch
                    .document_starts
                    .as_ref()
                    .map(|starts| &starts[row][..]);
                write_block(writer, batch.row(row), starts).map_err(|source| {
                    PipelineError::Write {
                        path: options.dump.clone().unwrap_or_default(),
                        source,
                    }
                })?;
            }
        }
        for source in batch.sources.iter().take(take) {
            *sources.entry(source.to_string()).or_insert(0) += 1;
        }
        blocks += take as u64;
        if take > 0 {
            cursor = Some(batch.cursor_after(take - 1)?);
        }
    }
    if let Some(mut writer) = dump {
        writer.flush().map_err(|source| PipelineError::Write {
            path: options.dump.clone().unwrap_or_default(),
            source,
        })?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let tokens = blocks * options.request.seq_len as u64;
    let per_token = |bytes: u64| bytes as f64 / tokens.max(1) as f64;
    Ok(ConsumeSummary {
        blocks,
        tokens,
        seconds,
        tokens_per_s: tokens as f64 / seconds.max(1e-9),
        first_batch_ms: first_batch_ms.unwrap_or(0.0),
        wire_bytes_per_token: per_token(connection.wire_bytes()),
        uncompressed_bytes_per_token: per_token(uncompressed_bytes),
        cursor: if blocks > 0 { cursor } else { None },
        reconnections: connection.reconnections,
        sources,
    })
}

/// The stream over as many connections as it takes: a broken one is opened again at the cursor
/// after the last block read.
struct Connection<'a> {
    options: &'a ConsumeOptions,
    stream: Option<BlockStream>,
    backoff: Backoff,
    /// Wire bytes of the connections before the current one.
    earlier_wire_bytes: u64,
    reconnections: u64,
}

impl<'a> Connection<'a> {
    fn new(options: &'a ConsumeOptions) -> Self {
        Connection {
            options,
            stream: None,
            backoff: Backoff::new(options.retry_for),
            earlier_wire_bytes: 0,
            reconnections: 0,
        }
    }

    /// The next batch, or `None` at the end of the stream; `cursor` is where a new connection
    /// starts.
    async fn next(&mut self, cursor: &Option<Cursor>) -> Result<Option<TokenBlocks>> {
        loop {
            let error = match self.stream.as_mut() {
                None => {
                    let mut request = self.options.request.clone();
                    request.cursor = cursor.clone();
                    match BlockStream::open(&self.options.endpoint, &request).await {
                        Ok(stream) => {
                            self.stream = Some(stream);
                            continue;
                        }
                        Err(error) => error,
                    }
                }
                Some(stream) => match stream.next().await {
                    None => return Ok(None),
                    Some(Ok(batch)) => {
                        self.backoff.reset();
                        return Ok(Some(batch));
                    }
                    Some(Err(error)) => error,
                },
            };
            self.wait_to_retry(error).await?;
        }
    }

    /// Drops the broken connection and waits before the next attempt, or gives up.
    async fn wait_to_retry(&mut self, error: ClientError) -> Result<()> {
        if let Some(stream) = self.stream.take() {
            self.earlier_wire_bytes += stream.wire_bytes();
        }
        if !error.is_retryable() {
            return Err(error.into());
        }
        let Some(delay) = self.backoff.next_delay() else {
            return Err(PipelineError::Control(format!(
                "the pipeline at {} was unavailable for more than {} s (--retry-s): {error}",
                self.options.endpoint.url,
                self.options.retry_for.as_secs()
            )));
        };
        eprintln!("pipeline unavailable, retrying in {delay:?}: {error}");
        tokio::time::sleep(delay).await;
        self.reconnections += 1;
        Ok(())
    }

    fn wire_bytes(&self) -> u64 {
        self.earlier_wire_bytes + self.stream.as_ref().map_or(0, BlockStream::wire_bytes)
    }
}

/// Buffer bytes of a batch in Arrow's layout: 4 per id, 8 per `block_seq`, 4 per `epoch`.
fn arrow_bytes(batch: &flightlm_shared::TokenBlocks) -> u64 {
    (batch.ids.len() * 4 + batch.rows() * (8 + 4)) as u64
}

/// One dump line: the block's ids, or with its document starts an object holding both.
fn write_block(
    writer: &mut impl Write,
    block: &[u32],
    document_starts: Option<&[u32]>,
) -> std::io::Result<()> {
    match document_starts {
        None => write_ids(writer, block)?,
        Some(starts) => {
            writer.write_all(br#"{"input_ids":"#)?;
            write_ids(writer, block)?;
            writer.write_all(br#","document_starts":"#)?;
            write_ids(writer, starts)?;
            writer.write_all(b"}")?;
        }
    }
    writer.write_all(b"\n")
}

fn write_ids(writer: &mut impl Write, ids: &[u32]) -> std::io::Result<()> {
    writer.write_all(b"[")?;
    for (index, id) in ids.iter().enumerate() {
        if index > 0 {
            writer.write_all(b",")?;
        }
        write!(writer, "{id}")?;
    }
    writer.write_all(b"]")
}
