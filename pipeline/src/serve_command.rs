//! `flightlm-pipeline serve`: its flags, start-up checks, and a shutdown that lets open streams
//! end cleanly (SIGTERM or Ctrl-C) within a bounded grace period.

use flightlm_shared::tokenizer_file::DocumentTemplate;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use flightlm_pipeline::access::{check_listen, read_tls_identity, AuthToken};
use flightlm_pipeline::corpus::setup::{build_corpus, ServeInputs};
use flightlm_pipeline::corpus::versions::ChangedObjectPolicy;
use flightlm_pipeline::observe::serve_observer;
use flightlm_pipeline::observe::status::PipelineStatus;
use flightlm_pipeline::production::stats::StreamRegistry;
use flightlm_pipeline::read::bad_records::BadRecordPolicy;
use flightlm_pipeline::service::flight_server::Access;
use flightlm_pipeline::service::listener::{bind, serve};
use flightlm_shared::metrics_http;

/// How long open streams get to end after a shutdown signal before the process exits anyway
/// (a reader that stopped reading would otherwise hold it forever).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Args)]
pub struct ServeArgs {
    /// Corpus files, directories or globs, served as the source `main`.
    #[arg(long, num_args = 1..)]
    input: Vec<PathBuf>,
    /// A named source of a mixture: NAME=PATH[,PATH…][:WEIGHT], e.g.
    /// `books=data/books/*.parquet:0.7`. Repeat for each source.
    #[arg(long = "source")]
    sources: Vec<String>,
    /// tokenizer.json to encode with: any file the HF `tokenizers` library loads. Its
    /// post-processor decides each document's special tokens; a tokenizer_config.json beside it
    /// names their roles (pad, mask, …) as it does for transformers.
    #[arg(long)]
    tokenizer: PathBuf,
    /// A token put before every document's ids (for tokenizers whose post-processor adds none).
    #[arg(long, value_name = "TOKEN")]
    add_bos: Option<String>,
    /// A token put after every document's ids, e.g. '<|endoftext|>' (the usual causal layout).
    #[arg(long, value_name = "TOKEN")]
    add_eos: Option<String>,
    /// Blocks shuffled together by a seeded, resumable window; 1 keeps corpus order.
    #[arg(long, default_value_t = 1)]
    shuffle_window: usize,
    /// Watch this directory (or remote prefix, `s3://bucket/prefix`) and add files that appear
    /// in it to the source that lists it (or to the first source).
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
    /// File holding the token every client must send (`authorization: Bearer <token>`);
    /// required to listen on a non-loopback address.
    #[arg(long)]
    auth_token_file: Option<PathBuf>,
    /// Listen on a non-loopback address without a token.
    #[arg(long)]
    insecure: bool,
    /// PEM certificate chain to serve TLS with (clients then use https:// and `--tls-ca`).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Streams served at once; more are refused.
    #[arg(long, default_value_t = 64)]
    max_streams: usize,
    /// Directory (or remote prefix, `s3://bucket/prefix`) that sources added at run time
    /// (`add-source`) must lie in; repeatable. Without one, `add-source` is refused.
    #[arg(long = "allow-root")]
    allow_roots: Vec<PathBuf>,
    /// Let `add-source` name any remote URL (s3://, gs://, az://, http(s)://, hf://), with this
    /// pipeline's credentials: only for control clients trusted as much as the pipeline itself.
    #[arg(long)]
    allow_any_url: bool,
    /// How long a remote read or listing retries a transient failure (no connection, reset,
    /// timeout, 5xx, 429) without progress before the stream ends with UNAVAILABLE, for clients
    /// to reconnect and resume.
    #[arg(long, default_value_t = flightlm_pipeline::read::remote::DEFAULT_RETRY_S)]
    remote_retry_s: u64,
    /// A cursor whose position lies in a remote object that has changed since it was taken:
    /// refuse it (naming the object), or read that source again from its start.
    #[arg(long, value_enum, default_value_t = ChangedObjectPolicy::Refuse)]
    on_changed_object: ChangedObjectPolicy,
    /// Address to listen on; port 0 picks a free one (printed on stdout).
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Fraction of documents held out as the `valid` split, chosen by a seeded hash of each
    /// document [default: 0.01, or 0 with --valid-input].
    #[arg(long)]
    valid_fraction: Option<f64>,
    /// A held-out corpus (files, directories or globs) served whole as the `valid` split, e.g.
    /// the validation Parquet of an HF dataset; the train split is then every document of the
    /// other sources.
    #[arg(long, num_args = 1..)]
    valid_input: Vec<PathBuf>,
    /// Seed of the valid-split choice.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Tokenizer threads per stream (default: all cores).
    #[arg(long)]
    workers: Option<usize>,
    /// Serve Prometheus metrics (/metrics) and a live status page (/) over HTTP/1.1: HOST:PORT,
    /// or a port on 127.0.0.1 (0 picks one). Behind the token when there is one; a non-loopback
    /// address needs a token or --insecure, as --listen does.
    #[arg(long)]
    metrics_listen: Option<String>,
}

pub fn run_serve(args: ServeArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let token = args
        .auth_token_file
        .as_deref()
        .map(AuthToken::read)
        .transpose()?;
    check_listen(args.listen, &token, args.insecure)?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(read_tls_identity(cert, key)?),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let inputs = ServeInputs {
        input: args.input,
        sources: args.sources,
        tokenizer: args.tokenizer,
        template: DocumentTemplate {
            add_bos: args.add_bos,
            add_eos: args.add_eos,
        },
        valid_fraction: args.valid_fraction,
        valid_input: args.valid_input,
        seed: args.seed,
        workers: args.workers,
        shuffle_window: args.shuffle_window,
        watch: args.watch,
        watch_interval: Duration::from_millis(args.watch_interval_ms.max(10)),
        sql: args.sql,
        on_bad_record: args.on_bad_record,
        max_document_bytes: args.max_document_bytes,
        allow_roots: args.allow_roots,
        allow_any_url: args.allow_any_url,
        on_changed_object: args.on_changed_object,
    };
    flightlm_pipeline::read::remote::set_retry_for(args.remote_retry_s);
    let corpus = Arc::new(runtime.block_on(build_corpus(inputs))?);
    if args.check_only {
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
    let listen = args.listen;
    let status = PipelineStatus::new(corpus.clone(), Arc::new(StreamRegistry::default()));
    let metrics = match &args.metrics_listen {
        Some(text) => {
            let address = metrics_http::parse_listen(text).map_err(anyhow::Error::msg)?;
            check_listen(address, &token, args.insecure)?;
            let bound = serve_observer(address, status.clone(), token.clone())
                .with_context(|| format!("cannot listen on {address} (--metrics-listen)"))?;
            Some(format!("http://{bound}"))
        }
        None => None,
    };
    runtime.block_on(async move {
        let listener = bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let address = listener.local_addr()?;
        println!(
            "{}",
            serde_json::json!({
                "listening": address.to_string(),
                "url": format!("{scheme}://{address}"),
                "files": corpus.file_count(),
                "sources": corpus.describe_sources(),
                "tokenizer": corpus.tokenizer_info,
                "metrics": metrics,
            })
        );
        let access = Access {
            token,
            max_streams: args.max_streams.max(1),
            tls,
        };
        let (signalled, signal_seen) = tokio::sync::oneshot::channel();
        let shutdown = async move {
            shutdown_signal().await;
            let _ = signalled.send(());
        };
        let grace_over = async move {
            match signal_seen.await {
                Ok(()) => tokio::time::sleep(SHUTDOWN_GRACE).await,
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            served = serve(status, listener, access, shutdown) => served.context("serving"),
            () = grace_over => {
                eprintln!(
                    "streams still open {} s after the shutdown signal; exiting",
                    SHUTDOWN_GRACE.as_secs()
                );
                Ok(())
            }
        }
    })
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
