//! Feeds the training loop from a live pipeline over Arrow Flight.
//!
//! A prefetch thread with its own async runtime keeps a few train batches decoded ahead of the
//! loop, so decoding overlaps compute; the loop only waits when the pipeline is slower than
//! training, and that wait is measured. When the pipeline goes away (restart, network fault) the
//! thread reconnects with exponential backoff and continues after the last block it received, so
//! training sees no gap and no repeat. With several replicas of the pipeline
//! (`--pipeline URL1,URL2`, see [`crate::data::replicas`]) it continues on the next one at once.
//! The valid split is a finite stream read on request; the training loop reads it once and keeps
//! it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use crossbeam_channel::{bounded, Receiver, Sender};
use flightlm_shared::backoff::Backoff;
use flightlm_shared::client::{BlockStream, ClientError, PipelineEndpoint};
use flightlm_shared::{Cursor, Split, StreamRequest, TokenBlocks, TokenizerInfo};

use crate::data::replicas::{replica_endpoints, Replicas};
use crate::data::source::{push_up_to, BlockSource};
use crate::data::weight_switch::{limit_of, Batches, Standby};

/// Train batches decoded ahead of the loop.
const PREFETCH_BATCHES: usize = 8;

/// The HTTP/2 stream window of a run that changes its weights: what its prefetch holds, at up to
/// 8 wire bytes per token, and at least 64 KiB. Each change drops a stream, and what the pipeline
/// sent ahead on it (a whole 8 MiB default window: thousands of blocks) was made for nothing.
pub fn switching_stream_window(seq_len: usize, batch_size: usize) -> u32 {
    let prefetched = (PREFETCH_BATCHES * batch_size * seq_len * 8) as u64;
    prefetched.clamp(64 << 10, 8 << 20) as u32
}

/// Train streams reopened after a failure, by every source of this process.
static RECONNECTS: AtomicU64 = AtomicU64::new(0);

/// How many times this process's train streams were reopened after a failure so far.
pub fn reconnects() -> u64 {
    RECONNECTS.load(Ordering::Relaxed)
}

pub struct PipelineSource {
    endpoint: PipelineEndpoint,
    seq_len: usize,
    batch_size: usize,
    /// Whether the streams carry their blocks' document starts.
    document_starts: bool,
    tokenizer: TokenizerInfo,
    train: Batches,
    /// A stream with new weights opened beside `train`, until it takes over (`weight_switch`).
    standby: Option<Standby>,
    waited: Duration,
    retry_for: Duration,
    /// Resumes right after the last row handed to the training loop.
    cursor: Option<Cursor>,
    /// The train stream's request (its shard, columns and weights), for reopening it.
    request: StreamRequest,
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
        let (train, tokenizer) = start_prefetch(endpoint, request.clone(), retry_for)?;
        Ok(PipelineSource {
            request,
            endpoint: endpoint.clone(),
            seq_len,
            batch_size,
            document_starts,
            tokenizer,
            train,
            standby: None,
            waited: Duration::ZERO,
            retry_for,
            cursor: resume,
        })
    }
}

/// Starts a prefetch thread reading `request` and waits for its first batch, which names the
/// tokenizer.
fn start_prefetch(
    endpoint: &PipelineEndpoint,
    request: StreamRequest,
    retry_for: Duration,
) -> anyhow::Result<(Batches, TokenizerInfo)> {
    let (train, tokenizer_receiver) = spawn_prefetch(endpoint, request, retry_for)?;
    let tokenizer = tokenizer_receiver
        .recv()
        .map_err(|_| anyhow!("the train stream ended before its first batch"))??;
    Ok((train, tokenizer))
}

type TokenizerReceiver = Receiver<anyhow::Result<TokenizerInfo>>;

/// Starts a prefetch thread reading `request`; its tokenizer comes with its first batch.
fn spawn_prefetch(
    endpoint: &PipelineEndpoint,
    request: StreamRequest,
    retry_for: Duration,
) -> anyhow::Result<(Batches, TokenizerReceiver)> {
    let (sender, train) = bounded(PREFETCH_BATCHES);
    let (tokenizer_sender, tokenizer_receiver) = bounded(1);
    let fingerprint = request
        .cursor
        .as_ref()
        .map(|cursor| cursor.state.fingerprint.clone());
    let prefetch = Prefetch {
        replicas: Replicas::new(endpoint, fingerprint),
        request,
        retry_for,
        sender,
        tokenizer_sender,
        connected: false,
    };
    std::thread::Builder::new()
        .name("train-prefetch".into())
        .spawn(move || prefetch.run())
        .context("starting the prefetch thread")?;
    Ok((train, tokenizer_receiver))
}

fn gave_up(error: ClientError, endpoint: &PipelineEndpoint, retry_for: Duration) -> anyhow::Error {
    anyhow!(error).context(format!(
        "the pipeline at {} was unavailable for more than {} s (--pipeline-retry-s)",
        endpoint.url,
        retry_for.as_secs()
    ))
}

/// The prefetch thread: reads train batches ahead of the loop, reconnecting when needed.
struct Prefetch {
    replicas: Replicas,
    request: StreamRequest,
    retry_for: Duration,
    sender: Sender<anyhow::Result<TokenBlocks>>,
    tokenizer_sender: Sender<anyhow::Result<TokenizerInfo>>,
    /// The current connection delivered at least one batch.
    connected: bool,
}

/// How one connection ended.
enum StreamEnd {
    /// The training loop went away.
    Stopped,
    /// A finite stream ran out.
    Finished,
    /// Asked to continue on the first replica.
    BackToFirst,
    /// The connection failed; retrying may help.
    Broken(ClientError),
}

impl Prefetch {
    fn run(mut self) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => {
                let _ = self.tokenizer_sender.send(Err(anyhow!(error)));
                return;
            }
        };
        runtime.block_on(async move {
            let mut rows = TokenBlocks::new(self.request.seq_len);
            let mut announced = false;
            let mut backoff = Backoff::new(self.retry_for);
            loop {
                self.connected = false;
                let error = match self.stream_once(&mut rows, &mut announced).await {
                    StreamEnd::Stopped => return,
                    StreamEnd::Finished => {
                        let _ = self.sender.send(Err(anyhow!("the train stream ended")));
                        return;
                    }
                    StreamEnd::BackToFirst => {
                        eprintln!("pipeline: back on {}, as asked", self.replicas.describe());
                        continue;
                    }
                    StreamEnd::Broken(error) => error,
                };
                if self.connected {
                    // The pipeline was back for a while: a new outage gets the full budget.
                    backoff.reset();
                }
                let refused_replica = self.replicas.current_refused();
                if !error.is_retryable() && !refused_replica {
                    self.fail(anyhow!(error).context("train stream"), announced);
                    return;
                }
                if self.replicas.several() {
                    let from = self.replicas.describe();
                    let at_once = self.replicas.fail_over();
                    if let Some(why) = self.replicas.none_left() {
                        self.fail(
                            anyhow!("no pipeline replica serves this run: {why}"),
                            announced,
                        );
                        return;
                    }
                    eprintln!(
                        "pipeline: {from} failed ({error}); continuing on {}",
                        self.replicas.describe()
                    );
                    if at_once {
                        continue;
                    }
                }
                match backoff.next_delay() {
                    Some(delay) => {
                        eprintln!("pipeline unavailable, retrying in {delay:?}: {error}");
                        tokio::time::sleep(delay).await;
                        RECONNECTS.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        let endpoint = self.replicas.current();
                        self.fail(gave_up(error, endpoint, self.retry_for), announced);
                        return;
                    }
                }
            }
        });
    }

    /// Reads one connection's stream until it ends or fails; every batch moves the request's
    /// cursor past its rows, so a new connection continues right after them.
    async fn stream_once(&mut self, rows: &mut TokenBlocks, announced: &mut bool) -> StreamEnd {
        if let Err(error) = self.replicas.check(&self.request).await {
            return StreamEnd::Broken(error);
        }
        let mut stream = match BlockStream::open(self.replicas.current(), &self.request).await {
            Ok(stream) => stream,
            Err(error) => return StreamEnd::Broken(error),
        };
        while let Some(batch) = stream.next().await {
            let batch = match batch {
                Ok(batch) => batch,
                Err(error) => return StreamEnd::Broken(error),
            };
            self.connected = true;
            self.replicas.delivered();
            if !*announced {
                if let Some(tokenizer) = stream.tokenizer() {
                    let _ = self.tokenizer_sender.send(Ok(tokenizer.clone()));
                    *announced = true;
                }
            }
            if batch.rows() > 0 {
                match batch.cursor_after(batch.rows() - 1) {
                    Ok(cursor) => self.request.cursor = Some(cursor),
                    Err(error) => return StreamEnd::Broken(ClientError::Schema(error)),
                }
            }
            rows.append(&batch);
            while rows.rows() >= self.request.batch_size {
                if self
                    .sender
                    .send(Ok(rows.take_front(self.request.batch_size)))
                    .is_err()
                {
                    return StreamEnd::Stopped;
                }
            }
            if self.replicas.asked_back() {
                return StreamEnd::BackToFirst;
            }
        }
        StreamEnd::Finished
    }

    fn fail(&self, error: anyhow::Error, announced: bool) {
        if announced {
            let _ = self.sender.send(Err(error));
        } else {
            let _ = self.tokenizer_sender.send(Err(error));
        }
    }
}

impl PipelineSource {
    /// The next batch of the current stream, or of the standby once it takes over.
    fn next_from_streams(&mut self) -> anyhow::Result<TokenBlocks> {
        let Some(standby) = self.standby.as_mut() else {
            return self
                .train
                .recv()
                .map_err(|_| anyhow!("the train stream stopped"))?;
        };
        if !standby.ready() {
            let batch = self
                .train
                .recv()
                .map_err(|_| anyhow!("the train stream stopped"))??;
            if let Ok(batch) = standby.pass(batch)? {
                return Ok(batch);
            }
        }
        let standby = self.standby.take().expect("a standby");
        let (train, request, batch) = standby.take_over()?;
        self.train = train;
        self.request = request;
        Ok(batch)
    }
}

impl BlockSource for PipelineSource {
    fn tokenizer(&self) -> &TokenizerInfo {
        &self.tokenizer
    }

    fn next_train_batch(&mut self) -> anyhow::Result<TokenBlocks> {
        let started = Instant::now();
        let batch = self.next_from_streams();
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

    /// Opens the train stream again at `cursor` with `weights` from block `from`, beside the
    /// current one, which the loop reads until the new one has its first batch (see
    /// `weight_switch`). A standby not yet taken over is replaced.
    fn set_weights(
        &mut self,
        cursor: Option<Cursor>,
        weights: BTreeMap<String, f64>,
        from: Option<u64>,
    ) -> anyhow::Result<()> {
        let request = self
            .request
            .clone()
            .with_cursor(cursor.clone())
            .with_weights(Some(weights))
            .with_weights_from(from);
        // The current stream is what the loop reads up to the new boundary: a standby replaced
        // before it took over never served a block.
        let limit = limit_of(&request, &self.request);
        let (train, _) = spawn_prefetch(&self.endpoint, request.clone(), self.retry_for)?;
        self.standby = Some(Standby::new(train, request, limit));
        Ok(())
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
