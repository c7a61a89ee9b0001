//! Feeds the training loop from a live pipeline over Arrow Flight.
//!
//! A prefetch thread with its own async runtime keeps a few train batches decoded ahead of the
//! loop, so decoding overlaps compute; the loop only waits when the pipeline is slower than
//! training, and that wait is measured. When the pipeline goes away (restart, network fault) the
//! thread reconnects with exponential backoff and continues after the last block it received, so
//! training sees no gap and no repeat. With several replicas of the pipeline
//! (`--pipeline URL1,URL2`, see [`crate::data::replicas`]) it continues on the next one at once.
//! The valid split is a finite stream read on request; the training loop reads it once and keeps
//! it. A run that steers its mixture sends each change of weights through the prefetch thread,
//! which passes it to the pipeline serving its stream (`stream-weights`) and opens the stream
//! again with the change in its request when that pipeline does not know the run (a restart).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use crossbeam_channel::{bounded, Receiver, Sender};
use flightlm_shared::backoff::Backoff;
use flightlm_shared::client::{run_action_with_body, BlockStream, ClientError, PipelineEndpoint};
use flightlm_shared::{Cursor, Split, StreamRequest, StreamWeights, TokenBlocks, TokenizerInfo};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::data::replicas::{replica_endpoints, Replicas};
use crate::data::source::{push_up_to, BlockSource};
use crate::mixing::WeightChange;

/// Train batches decoded ahead of the loop.
const PREFETCH_BATCHES: usize = 8;

/// The pipeline action that changes a run's stream weights while its streams run.
const STREAM_WEIGHTS_ACTION: &str = "stream-weights";

type Batches = Receiver<anyhow::Result<TokenBlocks>>;

/// What the train stream's first batch tells before training starts.
struct StreamStart {
    tokenizer: TokenizerInfo,
    mixture_sources: Option<Vec<String>>,
}

/// The sources a stream draws from, as its first batch names them: every source its own weights
/// name (a stream with weights of its own names all it reads), else those of the batch's rows;
/// `None` when the blocks name no source.
fn mixture_sources(batch: &TokenBlocks) -> Option<Vec<String>> {
    if batch.sources.is_empty() {
        return None;
    }
    let own = (batch.rows() > 0)
        .then(|| batch.cursor_after(0).ok())
        .flatten()
        .and_then(|cursor| cursor.state.weights);
    let mut names: Vec<String> = match own {
        Some(weights) => weights.into_keys().collect(),
        None => batch.sources.iter().map(|name| name.to_string()).collect(),
    };
    names.sort();
    names.dedup();
    Some(names)
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

/// Starts a prefetch thread reading `request` and waits for its first batch, which names the
/// tokenizer; returns its batches and where to send it changes of the stream's weights.
fn start_prefetch(
    endpoint: &PipelineEndpoint,
    request: StreamRequest,
    retry_for: Duration,
) -> anyhow::Result<(Batches, UnboundedSender<StreamWeights>, StreamStart)> {
    let (sender, train) = bounded(PREFETCH_BATCHES);
    let (tokenizer_sender, tokenizer_receiver) = bounded(1);
    let (weight_changes, changes) = unbounded_channel();
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
        changes,
        connected: false,
    };
    std::thread::Builder::new()
        .name("train-prefetch".into())
        .spawn(move || prefetch.run())
        .context("starting the prefetch thread")?;
    let tokenizer = tokenizer_receiver
        .recv()
        .map_err(|_| anyhow!("the train stream ended before its first batch"))??;
    Ok((train, weight_changes, tokenizer))
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
    tokenizer_sender: Sender<anyhow::Result<StreamStart>>,
    /// Changes of the stream's weights from the training loop.
    changes: UnboundedReceiver<StreamWeights>,
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
        loop {
            let batch = tokio::select! {
                batch = stream.next() => batch,
                Some(change) = self.changes.recv() => {
                    if let Err(error) = self.change_weights(change).await {
                        return StreamEnd::Broken(error);
                    }
                    continue;
                }
            };
            let Some(batch) = batch else {
                return StreamEnd::Finished;
            };
            let batch = match batch {
                Ok(batch) => batch,
                Err(error) => return StreamEnd::Broken(error),
            };
            self.connected = true;
            self.replicas.delivered();
            if !*announced {
                if let Some(tokenizer) = stream.tokenizer() {
                    let start = StreamStart {
                        tokenizer: tokenizer.clone(),
                        mixture_sources: mixture_sources(&batch),
                    };
                    let _ = self.tokenizer_sender.send(Ok(start));
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
    }

    /// Takes a change of weights into the request (what a reconnection asks for) and passes it
    /// to the pipeline serving the stream. A pipeline that has no stream of the run answers
    /// `Unavailable`, which opens the stream again, with the change in its request.
    async fn change_weights(&mut self, change: StreamWeights) -> Result<(), ClientError> {
        if let Some(weights) = &change.weights {
            self.request.weights = Some(weights.clone());
            self.request.weights_from = Some(change.from);
        }
        self.request.weights_until = Some(change.until);
        let body = serde_json::to_vec(&change).expect("a StreamWeights always serializes");
        run_action_with_body(self.replicas.current(), STREAM_WEIGHTS_ACTION, body).await?;
        Ok(())
    }

    fn fail(&self, error: anyhow::Error, announced: bool) {
        if announced {
            let _ = self.sender.send(Err(error));
        } else {
            let _ = self.tokenizer_sender.send(Err(error));
        }
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
