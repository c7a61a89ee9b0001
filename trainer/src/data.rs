//! Feeds the training loop from a live pipeline over Arrow Flight.
//!
//! A prefetch thread with its own async runtime keeps a few train batches decoded ahead of the
//! loop, so decoding overlaps compute; the loop only waits when the pipeline is slower than
//! training, and that wait is measured. The valid split is a finite stream read on request; the
//! training loop reads it once and keeps it.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use crossbeam_channel::{bounded, Receiver};
use flightlm_shared::client::BlockStream;
use flightlm_shared::{Cursor, Split, StreamRequest, TokenBlocks, TokenizerInfo};

use crate::source::BlockSource;

/// Train batches decoded ahead of the loop.
const PREFETCH_BATCHES: usize = 8;

pub struct PipelineSource {
    url: String,
    seq_len: usize,
    batch_size: usize,
    tokenizer: TokenizerInfo,
    train: Receiver<anyhow::Result<TokenBlocks>>,
    runtime: tokio::runtime::Runtime,
    waited: Duration,
    /// Resumes right after the last row handed to the training loop.
    cursor: Option<Cursor>,
}

impl PipelineSource {
    /// Opens the train stream at `url` (continuing after `resume` when given) and waits for its
    /// first batch, which names the tokenizer.
    pub fn connect(
        url: &str,
        seq_len: usize,
        batch_size: usize,
        resume: Option<Cursor>,
    ) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the client runtime")?;
        let (sender, train) = bounded(PREFETCH_BATCHES);
        let (tokenizer_sender, tokenizer_receiver) = bounded(1);
        let request =
            StreamRequest::new(Split::Train, seq_len, batch_size).with_cursor(resume.clone());
        let thread_url = url.to_string();
        std::thread::Builder::new()
            .name("train-prefetch".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = tokenizer_sender.send(Err(anyhow!(error)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let mut stream = match BlockStream::open(&thread_url, &request).await {
                        Ok(stream) => stream,
                        Err(error) => {
                            let _ = tokenizer_sender.send(Err(anyhow!(error)));
                            return;
                        }
                    };
                    let mut rows = TokenBlocks::new(request.seq_len);
                    let mut announced = false;
                    while let Some(batch) = stream.next().await {
                        let batch = match batch {
                            Ok(batch) => batch,
                            Err(error) => {
                                let error = anyhow!(error).context("train stream");
                                if announced {
                                    let _ = sender.send(Err(error));
                                } else {
                                    let _ = tokenizer_sender.send(Err(error));
                                }
                                return;
                            }
                        };
                        if !announced {
                            if let Some(tokenizer) = stream.tokenizer() {
                                let _ = tokenizer_sender.send(Ok(tokenizer.clone()));
                                announced = true;
                            }
                        }
                        rows.append(&batch);
                        while rows.rows() >= request.batch_size {
                            if sender
                                .send(Ok(rows.take_front(request.batch_size)))
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                    let _ = sender.send(Err(anyhow!("the train stream ended")));
                });
            })
            .context("starting the prefetch thread")?;
        let tokenizer = tokenizer_receiver
            .recv()
            .map_err(|_| anyhow!("the train stream ended before its first batch"))??;
        Ok(PipelineSource {
            url: url.to_string(),
            seq_len,
            batch_size,
            tokenizer,
            train,
            runtime,
            waited: Duration::ZERO,
            cursor: resume,
        })
    }
}

impl BlockSource for PipelineSource {
    fn tokenizer(&self) -> &TokenizerInfo {
        &self.tokenizer
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

    fn valid_batches(&mut self) -> anyhow::Result<Vec<TokenBlocks>> {
        let request = StreamRequest::new(Split::Valid, self.seq_len, self.batch_size);
        let url = self.url.clone();
        self.runtime.block_on(async move {
            let mut stream = BlockStream::open(&url, &request).await?;
            let mut batches = Vec::new();
            while let Some(batch) = stream.next().await {
                batches.push(batch.context("valid stream")?);
            }
            if batches.is_empty() {
                anyhow::bail!("the valid split is empty");
            }
            Ok(batches)
        })
    }

    fn seconds_waited(&self) -> f64 {
        self.waited.as_secs_f64()
    }
}
