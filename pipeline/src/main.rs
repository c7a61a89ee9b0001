//! `flightlm-pipeline`: train a tokenizer, serve token blocks, or consume a stream.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use flightlm_pipeline::bad_records::BadRecordPolicy;
use flightlm_pipeline::consume::{consume, ConsumeOptions};
use flightlm_pipeline::corpus_setup::{build_corpus, ServeInputs};
use flightlm_pipeline::flight_server::{bind, serve, STATS_ACTION};
use flightlm_pipeline::reader::CorpusReader;
use flightlm_pipeline::sources::resolve_inputs;
use flightlm_pipeline::tokenizer_training::{train_tokenizer, TokenizerTrainingConfig};
use flightlm_shared::client::{run_action, run_action_with_body};
use flightlm_shared::{Cursor, Split, StreamRequest};

#[derive(Parser)]
#[command(
    name = "flightlm-pipeline",
    version,
    about = "Tokenize corpora and stream token blocks over Arrow Flight"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a byte-level BPE tokenizer with RoBERTa's special tokens.
    TrainTokenizer {
        /// Corpus files or directories (.txt, .jsonl, .parquet; .gz/.zst).
        #[arg(long, required = true, num_args = 1..)]
        input: Vec<PathBuf>,
        #[arg(long, default_value_t = 50265)]
        vocab_size: usize,
        #[arg(long, default_value_t = 2)]
        min_frequency: u64,
        /// Directory to write tokenizer.json into.
        #[arg(long)]
        out: PathBuf,
    },
    /// Serve token blocks over Arrow Flight.
    Serve {
        /// Corpus files, directories or globs, served as the source `main`.
        #[arg(long, num_args = 1..)]
        input: Vec<PathBuf>,
        /// A named source of a mixture: NAME=PATH[,PATH…][:WEIGHT], e.g.
        /// `books=data/books/*.parquet:0.7`. Repeat for each source.
        #[arg(long = "source")]
        sources: Vec<String>,
        /// tokenizer.json to encode with.
        #[arg(long)]
        tokenizer: PathBuf,
        /// Blocks shuffled together by a seeded, resumable window; 1 keeps corpus order.
        #[arg(long, default_value_t = 1)]
        shuffle_window: usize,
        /// Watch this directory and add files that appear in it to the source that lists it
        /// (or to the first source).
        #[arg(long)]
        watch: Option<PathBuf>,
        /// How often the watched directory is listed.
        #[arg(long, default_value_t = 1000)]
        watch_interval_ms: u64,
        /// SQL over the table `corpus` (each file in turn) that yields a string `text` column,
        /// e.g. "SELECT body AS text FROM corpus WHERE length(body) > 20".
        #[arg(long)]
        sql: Option<String>,
        /// What to do with input that cannot be used: stop with an error, or skip and count it.
        #[arg(long, value_enum, default_value_t = BadRecordPolicy::Error)]
        on_bad_record: BadRecordPolicy,
        /// Documents longer than this are bad records.
        #[arg(long, default_value_t = 64 << 20)]
        max_document_bytes: usize,
        /// Check the corpus and the tokenizer, print the summary line, and exit.
        #[arg(long)]
        check_only: bool,
        /// Address to listen on; port 0 picks a free one (printed on stdout).
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: SocketAddr,
        /// Fraction of documents held out as the `valid` split.
        #[arg(long, default_value_t = 0.01)]
        valid_fraction: f64,
        /// Seed of the valid-split choice.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Tokenizer threads per stream (default: all cores).
        #[arg(long)]
        workers: Option<usize>,
    },
    /// Read a stream, decode every batch and print a JSON summary line.
    Consume {
        /// e.g. http://127.0.0.1:50051
        #[arg(long)]
        pipeline: String,
        #[arg(long)]
        seq_len: usize,
        #[arg(long)]
        batch_size: usize,
        #[arg(long, default_value = "train")]
        split: Split,
        #[arg(long, default_value_t = 1)]
        epochs: u64,
        #[arg(long)]
        max_blocks: Option<u64>,
        /// Continue after this cursor (JSON, as a previous summary printed it).
        #[arg(long)]
        cursor: Option<String>,
        /// Read one shard of the stream: INDEX/COUNT, e.g. 0/2.
        #[arg(long)]
        shard: Option<String>,
        /// Write one JSON array of token ids per block, one block per line.
        #[arg(long)]
        dump: Option<PathBuf>,
    },
    /// Run a Flight action on a running pipeline and print its JSON answer, e.g.
    /// `action add-source '{"name":"wiki","inputs":["wiki/"],"weight":0.3}'`,
    /// `action set-weight '{"source":"wiki","weight":0.5}'`, `action sources`.
    Action {
        #[arg(long)]
        pipeline: String,
        /// health, stats, sources, add-source or set-weight.
        name: String,
        /// The action's JSON body.
        #[arg(default_value = "")]
        body: String,
    },
    /// Print a running pipeline's counters (per stream: blocks, tokens, tokens/s, queue depth).
    Stats {
        #[arg(long)]
        pipeline: String,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Command::TrainTokenizer {
            input,
            vocab_size,
            min_frequency,
            out,
        } => {
            if vocab_size < 256 + 5 {
                bail!("--vocab-size {vocab_size} is too small: byte-level BPE needs at least 261");
            }
            let manifest = resolve_inputs(&input)?;
            runtime.block_on(CorpusReader::new().check(&manifest))?;
            let config = TokenizerTrainingConfig {
                vocab_size,
                min_frequency,
            };
            let report = train_tokenizer(&manifest, &config, &out)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Serve {
            input,
            sources,
            tokenizer,
            listen,
            valid_fraction,
            seed,
            workers,
            shuffle_window,
            watch,
            watch_interval_ms,
            sql,
            on_bad_record,
            max_document_bytes,
            check_only,
        } => {
            let inputs = ServeInputs {
                input,
                sources,
                tokenizer,
                valid_fraction,
                seed,
                workers,
                shuffle_window,
                watch,
                watch_interval: std::time::Duration::from_millis(watch_interval_ms.max(10)),
                sql,
                on_bad_record,
                max_document_bytes,
            };
            let corpus = Arc::new(runtime.block_on(build_corpus(inputs))?);
            if check_only {
                println!(
                    "{}",
                    serde_json::json!({
                        "files": corpus.file_count(),
                        "sources": corpus.describe_sources(),
                        "tokenizer": corpus.tokenizer_info,
                    })
                );
                return Ok(());
            }
            runtime.block_on(async move {
                let listener = bind(listen)
                    .await
                    .with_context(|| format!("cannot listen on {listen}"))?;
                let address = listener.local_addr()?;
                println!(
                    "{}",
                    serde_json::json!({
                        "listening": address.to_string(),
                        "url": format!("http://{address}"),
                        "files": corpus.file_count(),
                        "sources": corpus.describe_sources(),
                        "tokenizer": corpus.tokenizer_info,
                    })
                );
                serve(corpus, listener, shutdown_signal())
                    .await
                    .context("serving")
            })
        }
        Command::Consume {
            pipeline,
            seq_len,
            batch_size,
            split,
            epochs,
            max_blocks,
            cursor,
            shard,
            dump,
        } => {
            let cursor = cursor
                .map(|text| Cursor::from_json(&text))
                .transpose()
                .context("--cursor is not a cursor")?;
            let request = StreamRequest::new(split, seq_len, batch_size)
                .with_epochs(Some(epochs))
                .with_cursor(cursor);
            let request = match shard {
                Some(text) => {
                    let (index, count) = text
                        .split_once('/')
                        .and_then(|(i, n)| Some((i.parse().ok()?, n.parse().ok()?)))
                        .with_context(|| format!("--shard `{text}` is not INDEX/COUNT"))?;
                    request.with_shard(index, count)
                }
                None => request,
            };
            request.validate()?;
            let options = ConsumeOptions {
                url: pipeline,
                request,
                max_blocks,
                dump,
            };
            let summary = runtime.block_on(consume(&options))?;
            println!("{}", serde_json::to_string(&summary)?);
            Ok(())
        }
        Command::Action {
            pipeline,
            name,
            body,
        } => {
            let answer =
                runtime.block_on(run_action_with_body(&pipeline, &name, body.into_bytes()))?;
            println!("{}", String::from_utf8_lossy(&answer));
            Ok(())
        }
        Command::Stats { pipeline } => {
            let body = runtime.block_on(run_action(&pipeline, STATS_ACTION))?;
            println!("{}", String::from_utf8_lossy(&body));
            Ok(())
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM, so streams end cleanly instead of being cut.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
