//! The train stream's prefetch thread: reads batches ahead of the training loop on an async
//! runtime of its own, so decoding overlaps compute, reconnects with backoff (continuing after
//! the last block it received) when the pipeline goes away, and passes the run's changes of
//! weights to the pipeline serving the stream (`stream-weights`), opening the stream again with
//! the change in its request when that pipeline does not know the run (a restart).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{anyhow, Context};
use crossbeam_channel::{bounded, Receiver, Sender};
use flightlm_shared::backoff::Backoff;
use flightlm_shared::client::{run_action_with_body, BlockStream, ClientError, PipelineEndpoint};
use flightlm_shared::{StreamRequest, StreamWeights, TokenBlocks, TokenizerInfo};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

use crate::data::replicas::Replicas;

/// Train batches decoded ahead of the loop.
const PREFETCH_BATCHES: usize = 8;

/// The pipeline action that changes a run's stream weights while its streams run.
const STREAM_WEIGHTS_ACTION: &str = "stream-weights";

pub type Batches = Receiver<anyhow::Result<TokenBlocks>>;

/// What the train stream's first batch tells before training starts.
pub struct StreamStart {
    pub tokenizer: TokenizerInfo,
    pub mixture_sources: Option<Vec<String>>,
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

/// Starts a prefetch thread reading `request` and waits for its first batch, which names the
/// tokenizer; returns its batches and where to send it changes of the stream's weights.
pub fn start_prefetch(
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

pub fn gave_up(
    error: ClientError,
    endpoint: &PipelineEndpoint,
    retry_for: Duration,
) -> anyhow::Error {
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
