//! Feeds the training loop from a live pipeline over Arrow Flight.
//!
//! A prefetch thread ([`crate::data::prefetch`]) keeps a few train batches decoded ahead of the
//! loop; the loop only waits when the pipeline is slower than training, and that wait is
//! measured. When the pipeline goes away (restart, network fault) the thread reconnects with
//! exponential backoff and continues after the last block it received, so training sees no gap
//! and no repeat. With several replicas of the pipeline (`--pipeline URL1,URL2`, see
//! [`crate::data::replicas`]) it continues on the next one at once. The valid split is a finite
//! stream read on request; the training loop reads it once and keeps it. A run that steers its
//! mixture sends each change of weights through the prefetch thread.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use flightlm_shared::backoff::Backoff;
use flightlm_shared::client::{BlockStream, ClientError, PipelineEndpoint};
use flightlm_shared::{Cursor, Split, StreamRequest, StreamWeights, TokenBlocks, TokenizerInfo};
use tokio::sync::mpsc::UnboundedSender;

pub use crate::data::prefetch::reconnects;
use crate::data::prefetch::{gave_up, start_prefetch, Batches};
use crate::data::replicas::replica_endpoints;
use crate::data::source::{push_up_to, BlockSource};
use crate::mixing::WeightChange;

pub struct PipelineSource {
    endpoint: PipelineEndpoint,
    seq_len: usize,
    batch_size: usize,
    /// Whether the streams carry their blocks' document starts.
    document_starts: bool,
    tokenizer: TokenizerInfo,
    /// The sources the stream's first batch named (`BlockSource::mixture_sources`).
    mixture_sources: Option<Vec<String>>,
    train: Batches,
    /// Changes of the stream's weights, for the prefetch thread to pass on.
    weight_changes: UnboundedSender<StreamWeights>,
    waited: Duration,
    retry_for: Duration,
    /// Resumes right after the last row handed to the training loop.
    cursor: Option<Cursor>,
    /// The run whose weight changes the train stream follows (its request's `run`).
    run: Option<String>,
}

impl PipelineSource {
    /// Opens the train stream at `url` (continuing after `resume` when given) and waits for its
    /// first batch, which names the tokenizer. While the pipeline is unreachable or its stream
    /// breaks, the source retries with exponential backoff for up to `retry_for`, continuing
    /// after the last block it received, so nothing is lost or repeated.
    pub fn connect(
        endpoint: &PipelineEndpoint,
        seq_len: usize,
        batch_size: usize,
        resume: Option<Cursor>,
        retry_for: Duration,
    ) -> anyhow::Result<Self> {
        let request =
            StreamRequest::new(Split::Train, seq_len, batch_size).with_cursor(resume.clone());
        Self::connect_request(endpoint, request, retry_for)
    }

    /// [`Self::connect`] with the train stream `request` asks for: a shard `(index, count)` (a
    /// data-parallel rank's: the blocks whose `block_seq` is `index` mod `count`), document
    /// starts. Its cursor may come from any shard or from the unsharded stream: the shard
    /// continues with its first block after that position. The valid split is read with the
    /// same columns.
    pub fn connect_request(
        endpoint: &PipelineEndpoint,
        request: StreamRequest,
        retry_for: Duration,
    ) -> anyhow::Result<Self> {
        let (seq_len, batch_size) = (request.seq_len, request.batch_size);
        let (resume, document_starts) = (request.cursor.clone(), request.document_starts);
        let run = request.run.clone();
        let (train, weight_changes, start) = start_prefetch(endpoint, request, retry_for)?;
        Ok(PipelineSource {
            run,
            mixture_sources: start.mixture_sources,
            weight_changes,
            endpoint: endpoint.clone(),
            seq_len,
            batch_size,
            document_starts,
            tokenizer: start.tokenizer,
            train,
            waited: Duration::ZERO,
            retry_for,
            cursor: resume,
        })
    }
}

impl BlockSource for PipelineSource {
    fn tokenizer(&self) -> &TokenizerInfo {
        &self.tokenizer
    }

    fn mixture_sources(&self) -> Option<Vec<String>> {
        self.mixture_sources.clone()
    }

    fn next_train_batch(&mut self) -> anyhow::Result<TokenBlocks> {
        let started = Instant::now();
        let batch = self
            .train
            .recv()
            .map_err(|_| anyhow!("the train stream stopped"))?;
        self.waited += started.elapsed();
        let batch = batch?;
        if batch.rows() > 0 {
            self.cursor = Some(batch.cursor_after(batch.rows() - 1)?);
        }
        Ok(batch)
    }

    fn cursor(&self) -> Option<Cursor> {
        self.cursor.clone()
    }

    /// Passes the change to the prefetch thread, which sends it to the pipeline: the stream
    /// waits at its `until` for it, so it lands at its boundary however late it arrives.
    fn set_weights(&mut self, change: WeightChange) -> anyhow::Result<()> {
        let run = self.run.clone().ok_or_else(|| {
            anyhow!("the train stream was opened without a run, so its weights cannot change")
        })?;
        let change = StreamWeights {
            run,
            weights: change.weights,
            from: change.from,
            until: change.until,
        };
        self.weight_changes
            .send(change)
            .map_err(|_| anyhow!("the train stream stopped"))
    }

    /// Reads the valid split (up to `max_blocks`), retrying like the train stream while the
    /// pipeline is away; at the limit the stream is dropped, which ends it on the pipeline.
    fn valid_batches(&mut self, max_blocks: Option<usize>) -> anyhow::Result<Vec<TokenBlocks>> {
        let request = StreamRequest::new(Split::Valid, self.seq_len, self.batch_size)
            .with_document_starts(self.document_starts);
        let endpoints = replica_endpoints(&self.endpoint);
        let mut backoff = Backoff::new(self.retry_for);
        // A runtime of its own, dropped with its connection as soon as the read ends: a stream
        // left at `max_blocks` is then cancelled on the pipeline at once, not when the run ends.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the client runtime")?;
        let batches = runtime.block_on(async move {
            let mut replica = 0;
            loop {
                let endpoint = &endpoints[replica];
                let error = match read_up_to(endpoint, &request, max_blocks).await {
                    Ok(batches) => return Ok(batches),
                    Err(error) if error.is_retryable() => error,
                    Err(error) => return Err(anyhow!(error).context("valid stream")),
                };
                // Every replica once, then back off.
                replica = (replica + 1) % endpoints.len();
                if replica != 0 {
                    continue;
                }
                match backoff.next_delay() {
                    Some(delay) => {
                        eprintln!("pipeline unavailable, retrying in {delay:?}: {error}");
                        tokio::time::sleep(delay).await;
                    }
                    None => return Err(gave_up(error, endpoint, backoff.retry_for())),
                }
            }
        });
        drop(runtime);
        let batches = batches?;
        if batches.is_empty() {
            anyhow::bail!("the valid split is empty");
        }
        Ok(batches)
    }

    fn seconds_waited(&self) -> f64 {
        self.waited.as_secs_f64()
    }
}

/// The batches of a finite stream, up to `max_blocks` blocks.
async fn read_up_to(
    endpoint: &PipelineEndpoint,
    request: &StreamRequest,
    max_blocks: Option<usize>,
) -> Result<Vec<TokenBlocks>, ClientError> {
    let mut stream = BlockStream::open(endpoint, request).await?;
    let mut batches = Vec::new();
    while let Some(batch) = stream.next().await {
        if push_up_to(&mut batches, batch?, max_blocks) {
            break;
        }
    }
    Ok(batches)
}
