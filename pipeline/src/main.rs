//! `flightlm-pipeline`: train a tokenizer, serve token blocks, or consume a stream.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use flightlm_pipeline::block_stream::Corpus;
use flightlm_pipeline::consume::{consume, ConsumeOptions};
use flightlm_pipeline::flight_server::{bind, serve, STATS_ACTION};
use flightlm_pipeline::reader::CorpusReader;
use flightlm_pipeline::sources::resolve_inputs;
use flightlm_pipeline::tokenizer_file::load_tokenizer;
use flightlm_pipeline::tokenizer_training::{train_tokenizer, TokenizerTrainingConfig};
use flightlm_shared::client::run_action;
use flightlm_shared::{Split, StreamRequest};

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
        #[arg(long, required = true, num_args = 1..)]
        input: Vec<PathBuf>,
        /// tokenizer.json to encode with.
        #[arg(long)]
        tokenizer: PathBuf,
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
        /// Write one JSON array of token ids per block, one block per line.
        #[arg(long)]
        dump: Option<PathBuf>,
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
            tokenizer,
            listen,
            valid_fraction,
            seed,
            workers,
        } => {
            if !(0.0..1.0).contains(&valid_fraction) {
                bail!("--valid-fraction {valid_fraction} must be in [0, 1)");
            }
            let manifest = resolve_inputs(&input)?;
            runtime.block_on(CorpusReader::new().check(&manifest))?;
            let (loaded, tokenizer_info) = load_tokenizer(&tokenizer)?;
            let workers = workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
                .max(1);
            let corpus = Arc::new(Corpus {
                manifest,
                tokenizer: Arc::new(loaded),
                tokenizer_path: tokenizer,
                tokenizer_info,
                valid_fraction,
                seed,
                workers,
            });
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
                        "files": corpus.manifest.len(),
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
            dump,
        } => {
            let request = StreamRequest::new(split, seq_len, batch_size).with_epochs(Some(epochs));
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
