//! `flightlm-pipeline`: train a tokenizer, serve token blocks, or consume a stream.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::ValueEnum;
use clap::{Args, Parser, Subcommand};
use flightlm_pipeline::consume::{consume, ConsumeOptions};
use flightlm_pipeline::read::reader::CorpusReader;
use flightlm_pipeline::read::sources::resolve_inputs;
use flightlm_pipeline::service::flight_server::STATS_ACTION;
use flightlm_pipeline::tokenizer::training::{
    train_tokenizer, TokenizerModel, TokenizerTrainingConfig,
};
use flightlm_shared::client::{run_action, run_action_with_body, PipelineEndpoint};
use flightlm_shared::request::parse_weights;
use flightlm_shared::{Cursor, Split, StreamRequest};

mod serve_command;
use serve_command::{run_serve, ServeArgs};

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

// Parsed once per process: boxing the large variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Train a tokenizer: byte-level BPE with RoBERTa's special tokens (the default), WordPiece
    /// with BERT's, or Unigram with T5's.
    TrainTokenizer {
        /// Corpus files or directories (.txt, .jsonl, .parquet; .gz/.zst).
        #[arg(long, required = true, num_args = 1..)]
        input: Vec<PathBuf>,
        /// The tokenizer model, with Python `tokenizers`' layout for it (ByteLevelBPETokenizer
        /// with RoBERTa's special tokens, BertWordPieceTokenizer, SentencePieceUnigramTokenizer
        /// with T5's `… </s>`).
        #[arg(long, value_enum, default_value_t = TokenizerModel::Bpe)]
        model: TokenizerModel,
        /// Vocabulary size [default: 50265 for bpe, 30000 for wordpiece, 8000 for unigram].
        #[arg(long)]
        vocab_size: Option<usize>,
        #[arg(long, default_value_t = 2)]
        min_frequency: u64,
        /// Directory to write tokenizer.json into.
        #[arg(long)]
        out: PathBuf,
    },
    /// Serve token blocks over Arrow Flight.
    Serve(ServeArgs),
    /// Read a stream, decode every batch and print a JSON summary line.
    Consume {
        #[command(flatten)]
        pipeline: PipelineArgs,
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
        /// Ask for each block's document starts; the dump then holds one
        /// {"input_ids": [...], "document_starts": [...]} object per line.
        #[arg(long)]
        document_starts: bool,
        /// The stream's own mixture weights, NAME=WEIGHT,NAME=WEIGHT (`set-weight` then no
        /// longer moves it); with --cursor they apply from the chunk after the cursor's.
        #[arg(long, value_parser = parse_weights)]
        weights: Option<BTreeMap<String, f64>>,
        /// Seconds to keep reconnecting (with exponential backoff) while the pipeline is
        /// unreachable or its stream breaks; 0 fails at once.
        #[arg(long, default_value_t = 60)]
        retry_s: u64,
    },
    /// Run a Flight action on a running pipeline and print its JSON answer, e.g.
    /// `action add-source '{"name":"wiki","inputs":["wiki/"],"weight":0.3}'`,
    /// `action set-weight '{"source":"wiki","weight":0.5}'`, `action sources`.
    Action {
        #[command(flatten)]
        pipeline: PipelineArgs,
        /// health, stats, sources, add-source or set-weight.
        name: String,
        /// The action's JSON body.
        #[arg(default_value = "")]
        body: String,
    },
    /// Print a running pipeline's counters (per stream: blocks, tokens, tokens/s, queue depth).
    Stats {
        #[command(flatten)]
        pipeline: PipelineArgs,
    },
}

/// Which pipeline a client subcommand talks to.
#[derive(Args)]
struct PipelineArgs {
    /// e.g. http://127.0.0.1:50051, or https://… for a pipeline serving TLS.
    #[arg(long)]
    pipeline: String,
    /// PEM CA certificate of an https:// pipeline [default: $FLIGHTLM_TLS_CA_FILE, else the
    /// system's roots]. The token, if any, is read from $FLIGHTLM_AUTH_TOKEN_FILE.
    #[arg(long)]
    tls_ca: Option<PathBuf>,
}

impl PipelineArgs {
    fn endpoint(self) -> PipelineEndpoint {
        PipelineEndpoint::new(self.pipeline).with_tls_ca(self.tls_ca)
    }
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
            model,
            vocab_size,
            min_frequency,
            out,
        } => {
            let vocab_size = vocab_size.unwrap_or(match model {
                TokenizerModel::Bpe => 50265,
                TokenizerModel::Wordpiece => 30000,
                TokenizerModel::Unigram => 8000,
            });
            if vocab_size < model.min_vocab_size() {
                bail!(
                    "--vocab-size {vocab_size} is too small: {} needs at least {}",
                    model
                        .to_possible_value()
                        .map_or("this model".into(), |v| v.get_name().to_string()),
                    model.min_vocab_size()
                );
            }
            let manifest = resolve_inputs(&input)?;
            runtime.block_on(CorpusReader::new().check(&manifest))?;
            let config = TokenizerTrainingConfig {
                model,
                vocab_size,
                min_frequency,
            };
            let report = train_tokenizer(&manifest, &config, &out)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Serve(args) => run_serve(args, &runtime),
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
            document_starts,
            weights,
            retry_s,
        } => {
            let cursor = cursor
                .map(|text| Cursor::from_json(&text))
                .transpose()
                .context("--cursor is not a cursor")?;
            let request = StreamRequest::new(split, seq_len, batch_size)
                .with_epochs(Some(epochs))
                .with_cursor(cursor)
                .with_document_starts(document_starts)
                .with_weights(weights);
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
                endpoint: pipeline.endpoint(),
                request,
                max_blocks,
                dump,
                retry_for: Duration::from_secs(retry_s),
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
            let answer = runtime.block_on(run_action_with_body(
                &pipeline.endpoint(),
                &name,
                body.into_bytes(),
            ))?;
            println!("{}", String::from_utf8_lossy(&answer));
            Ok(())
        }
        Command::Stats { pipeline } => {
            let body = runtime.block_on(run_action(&pipeline.endpoint(), STATS_ACTION))?;
            println!("{}", String::from_utf8_lossy(&body));
            Ok(())
        }
    }
}
