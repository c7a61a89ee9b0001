//! `flightlm-pipeline consume`: reads a stream like a trainer would and reports its throughput.
//!
//! The `kcat` of flightlm: it decodes every batch, so its figures include decompression and IPC
//! decoding, and `--dump` writes the blocks for inspection or comparison with a reference.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use flightlm_shared::client::{BlockStream, PipelineEndpoint};
use flightlm_shared::{Cursor, StreamRequest};
use serde::Serialize;

use crate::error::{PipelineError, Result};

pub struct ConsumeOptions {
    pub endpoint: PipelineEndpoint,
    pub request: StreamRequest,
    pub max_blocks: Option<u64>,
    pub dump: Option<PathBuf>,
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
    let mut stream = BlockStream::open(&options.endpoint, &options.request).await?;
    let mut first_batch_ms = None;
    let mut blocks = 0u64;
    let mut uncompressed_bytes = 0u64;
    let limit = options.max_blocks.unwrap_or(u64::MAX);
    let mut cursor = None;
    while blocks < limit {
        let Some(batch) = stream.next().await else {
            break;
        };
        let batch = batch?;
        first_batch_ms.get_or_insert_with(|| started.elapsed().as_secs_f64() * 1e3);
        let take = (batch.rows() as u64).min(limit - blocks) as usize;
        uncompressed_bytes += arrow_bytes(&batch);
        if let Some(writer) = dump.as_mut() {
            for row in 0..take {
                write_block(writer, batch.row(row)).map_err(|source| PipelineError::Write {
                    path: options.dump.clone().unwrap_or_default(),
                    source,
                })?;
            }
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
        wire_bytes_per_token: per_token(stream.wire_bytes()),
        uncompressed_bytes_per_token: per_token(uncompressed_bytes),
        cursor,
    })
}

/// Buffer bytes of a batch in Arrow's layout: 4 per id, 8 per `block_seq`, 4 per `epoch`.
fn arrow_bytes(batch: &flightlm_shared::TokenBlocks) -> u64 {
    (batch.ids.len() * 4 + batch.rows() * (8 + 4)) as u64
}

fn write_block(writer: &mut impl Write, block: &[u32]) -> std::io::Result<()> {
    writer.write_all(b"[")?;
    for (index, id) in block.iter().enumerate() {
        if index > 0 {
            writer.write_all(b",")?;
        }
        write!(writer, "{id}")?;
    }
    writer.write_all(b"]\n")
}
