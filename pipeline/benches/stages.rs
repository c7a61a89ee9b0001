//! Throughput of the pipeline's stages, one at a time, on the same documents: tokenize, pack,
//! record batches + IPC encode with zstd, decode back into `TokenBlocks`. Every group reports
//! tokens per second.
//!
//! Run with `cargo bench --profile dev --bench stages` (the profile the binaries and scripts use:
//! dependencies optimized, this workspace's crates at opt-level 1). The documents are the first
//! 2 MiB of `data/kjv.txt.zst`, one per line as `serve` reads `.txt`; the tokenizer is trained on
//! the whole file at start-up (under a second), so nothing needs the network or a prepared file.
//! Each stage runs on one thread: the pipeline runs `--workers` tokenizers but one packer, one
//! mixer and one encoder per stream.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, StringArray};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::FlightData;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, SamplingMode, Throughput};
use flightlm_pipeline::production::packing::{PackedBlocks, Packer};
use flightlm_pipeline::production::tokenize::{encode, EncodeRules, Encoded, SplitFilter};
use flightlm_pipeline::read::bad_records::BadRecords;
use flightlm_pipeline::read::sources::CorpusFile;
use flightlm_pipeline::service::listener::flight_data_encoder;
use flightlm_pipeline::tokenizer::file::{load_tokenizer, DocumentEncoder};
use flightlm_pipeline::tokenizer::training::{train_tokenizer, TokenizerTrainingConfig};
use flightlm_shared::schema::block_schema;
use flightlm_shared::tokenizer_file::DocumentTemplate;
use flightlm_shared::{SourcePosition, Split, StreamState, TokenBlocks, TokenizerInfo};
use futures::{executor::block_on, stream, StreamExt, TryStreamExt};

/// The sample corpus. cargo sets `CARGO_MANIFEST_DIR` when it runs a bench, and that value follows
/// the checkout when a shared target dir keeps a build made in another clone.
fn corpus_path() -> String {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string());
    format!("{manifest_dir}/../data/kjv.txt.zst")
}
const CORPUS_BYTES: usize = 2 << 20;
const VOCAB_SIZE: usize = 8192;
const SEQ_LEN: usize = 128;
/// The batch size of the protocol's example ticket.
const BATCH_ROWS: usize = 32;
/// Rows per text batch, as DataFusion hands them to the tokenizer pool.
const READ_BATCH_ROWS: usize = 4096;
/// Rows sharing one resume state when the stream is not shuffled.
const CHUNK_BLOCKS: usize = 64;

/// Everything the stages read, built once: each stage's input is the previous stage's output.
struct Fixture {
    tokenizer: DocumentEncoder,
    info: TokenizerInfo,
    rules: EncodeRules,
    texts: Vec<StringArray>,
    documents: Vec<Vec<u32>>,
    /// Token ids the tokenizer produced.
    ids: u64,

    schema: SchemaRef,
    batches: Vec<TokenBlocks>,
    flight_data: Vec<FlightData>,
}

impl Fixture {
    fn new() -> Self {
        let tokenizer_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("stages-tokenizer");
        let corpus = CorpusFile::classify(Path::new(&corpus_path())).expect("a .txt.zst corpus");
        let config = TokenizerTrainingConfig {
            model: Default::default(),
            vocab_size: VOCAB_SIZE,
            min_frequency: 2,
        };
        let report = train_tokenizer(&[corpus], &config, &tokenizer_dir).expect("training");
        let (tokenizer, info) = load_tokenizer(&report.path, &DocumentTemplate::default())
            .expect("loading the tokenizer");
        // `serve`'s default split, so the per-document split hash is part of the measured work.
        let rules = EncodeRules {
            filter: SplitFilter {
                split: Split::Train,
                valid_fraction: 0.01,
                seed: 0,
                held_out: false,
            },
            max_document_bytes: 64 << 20,
            bad_records: BadRecords::default(),
        };
        let texts = read_texts();
        let documents: Vec<Vec<u32>> = tokenize(&tokenizer, &rules, &texts)
            .into_iter()
            .flatten()
            .map(|(_, ids)| ids)
            .collect();
        let ids: u64 = documents.iter().map(|ids| ids.len() as u64).sum();
        let schema = block_schema(SEQ_LEN, &info);
        let batches = batch_blocks(&pack(&documents));
        let flight_data = encode_batches(&schema, &batches);
        Fixture {
            tokenizer,
            info,
            rules,
            texts,
            documents,
            ids,
            schema,
            batches,
            flight_data,
        }
    }

    fn block_tokens(&self) -> u64 {
        self.batches
            .iter()
            .map(|blocks| blocks.ids.len() as u64)
            .sum()
    }

    fn describe(&self) {
        let text_bytes: usize = self
            .texts
            .iter()
            .map(|texts| texts.value_data().len())
            .sum();
        let wire_bytes: usize = self
            .flight_data
            .iter()
            .map(|data| data.data_header.len() + data.data_body.len())
            .sum();
        let block_tokens = self.block_tokens();
        println!(
            "stages: {:.1} MiB of text, {} documents, {} ids (special tokens included), {} blocks of {SEQ_LEN} \
             in {} batches of {BATCH_ROWS}; IPC+zstd {:.2} bytes/token ({:.2} MiB); vocab {}",
            text_bytes as f64 / (1 << 20) as f64,
            self.documents.len(),
            self.ids,
            block_tokens / SEQ_LEN as u64,
            self.batches.len(),
            wire_bytes as f64 / block_tokens as f64,
            wire_bytes as f64 / (1 << 20) as f64,
            self.info.vocab_size,
        );
    }
}

/// The corpus's first lines up to `CORPUS_BYTES`, in text batches as the reader produces them.
fn read_texts() -> Vec<StringArray> {
    let file = std::fs::File::open(corpus_path()).expect("the sample corpus");
    let lines = BufReader::new(zstd::stream::read::Decoder::new(file).expect("zstd"));
    let mut bytes = 0;
    let lines: Vec<String> = lines
        .lines()
        .map(|line| line.expect("utf-8"))
        .take_while(|line| {
            bytes += line.len() + 1;
            bytes <= CORPUS_BYTES
        })
        .collect();
    lines
        .chunks(READ_BATCH_ROWS)
        .map(StringArray::from_iter_values)
        .collect()
}

fn tokenize(
    tokenizer: &DocumentEncoder,
    rules: &EncodeRules,
    texts: &[StringArray],
) -> Vec<Vec<(u64, Vec<u32>)>> {
    let file: Arc<str> = Arc::from(corpus_path());
    let mut first_row = 0;
    texts
        .iter()
        .map(|batch| {
            let encoded = encode(tokenizer, rules, file.clone(), first_row, batch);
            first_row += batch.len() as u64;
            match encoded {
                Encoded::Documents { documents, .. } => documents,
                _ => panic!("the sample corpus encodes"),
            }
        })
        .collect()
}

/// Packs as the packing thread does, recording where each block starts; returns the blocks.
fn pack(documents: &[Vec<u32>]) -> Vec<u32> {
    let mut packer = Packer::new(SEQ_LEN);
    let mut blocks = PackedBlocks::default();
    let mut starts = Vec::new();
    for (row, ids) in documents.iter().enumerate() {
        packer.push_document_from(ids, 0, &mut blocks, |offset| starts.push((row, offset)));
    }
    packer.finish_pass();
    std::hint::black_box(starts);
    blocks.tokens
}

/// Batches of resumable rows as the mixer builds them, one resume state per chunk of blocks.
fn batch_blocks(blocks: &[u32]) -> Vec<TokenBlocks> {
    let mut batches = Vec::new();
    let mut current = TokenBlocks::new(SEQ_LEN);
    let mut state: Arc<str> = Arc::from("");
    for (index, block) in blocks.chunks_exact(SEQ_LEN).enumerate() {
        if index % CHUNK_BLOCKS == 0 {
            state = chunk_state(index);
        }
        let skip = (index % CHUNK_BLOCKS) as u32 + 1;
        current.push_resumable(block, index as u64, 0, &state, skip);
        if current.rows() == BATCH_ROWS {
            batches.push(std::mem::replace(&mut current, TokenBlocks::new(SEQ_LEN)));
        }
    }
    if current.rows() > 0 {
        batches.push(current);
    }
    batches
}

/// A state of the size a one-source stream carries.
fn chunk_state(block_seq: usize) -> Arc<str> {
    let state = StreamState {
        fingerprint: "5eed5eed5eed5eed".into(),
        block_seq: block_seq as u64,
        draws: block_seq as u64,
        sources: vec![SourcePosition {
            source: "main".into(),
            pass: 0,
            file: Some(corpus_path()),
            row: block_seq as u64 * 3,
            token: 17,
            file_version: None,
        }],
        weights: None,
    };
    serde_json::to_string(&state).expect("serializes").into()
}

/// Record batches and the Flight messages `do_get` sends for them.
fn encode_batches(schema: &SchemaRef, batches: &[TokenBlocks]) -> Vec<FlightData> {
    ipc_encode(schema, record_batches(schema, batches))
}

fn record_batches(schema: &SchemaRef, batches: &[TokenBlocks]) -> Vec<RecordBatch> {
    batches
        .iter()
        .map(|blocks| {
            blocks
                .to_record_batch(schema.clone())
                .expect("valid blocks")
        })
        .collect()
}

fn ipc_encode(schema: &SchemaRef, records: Vec<RecordBatch>) -> Vec<FlightData> {
    let messages =
        flight_data_encoder(schema.clone()).build(stream::iter(records.into_iter().map(Ok)));
    block_on(messages.try_collect()).expect("encodes")
}

/// The client's path: Flight messages to record batches to `TokenBlocks`.
fn decode(flight_data: Vec<FlightData>) -> Vec<TokenBlocks> {
    let messages = stream::iter(flight_data.into_iter().map(Ok));
    let batches = FlightRecordBatchStream::new_from_flight_data(messages);
    block_on(
        batches
            .map(|batch| TokenBlocks::from_record_batch(&batch.expect("decodes")).expect("blocks"))
            .collect(),
    )
}

fn stages(c: &mut Criterion) {
    let fixture = Fixture::new();
    fixture.describe();
    let decoded: Vec<TokenBlocks> = decode(fixture.flight_data.clone());
    assert_eq!(decoded, fixture.batches, "the round trip is lossless");

    let mut group = c.benchmark_group("tokenize");
    // Half a second an iteration: flat sampling keeps ten samples within the measurement time.
    group.sampling_mode(SamplingMode::Flat);
    group.measurement_time(Duration::from_secs(6));
    group.throughput(Throughput::Elements(fixture.ids));
    group.bench_function("kjv_2MiB", |b| {
        b.iter(|| tokenize(&fixture.tokenizer, &fixture.rules, &fixture.texts))
    });
    group.finish();

    let mut group = c.benchmark_group("pack");
    group.throughput(Throughput::Elements(fixture.ids));
    group.bench_function("seq_len_128", |b| b.iter(|| pack(&fixture.documents)));
    group.finish();

    let mut group = c.benchmark_group("encode");
    group.throughput(Throughput::Elements(fixture.block_tokens()));
    group.bench_function("record_batch_ipc_zstd", |b| {
        b.iter(|| encode_batches(&fixture.schema, &fixture.batches))
    });
    // The same without building the record batches, to tell the two costs apart.
    let records = record_batches(&fixture.schema, &fixture.batches);
    group.bench_function("ipc_zstd", |b| {
        b.iter_batched(
            || records.clone(),
            |records| ipc_encode(&fixture.schema, records),
            BatchSize::LargeInput,
        )
    });
    group.finish();

    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(fixture.block_tokens()));
    group.bench_function("ipc_zstd_token_blocks", |b| {
        // Owned messages, as they come off the network.
        b.iter_batched(
            || fixture.flight_data.clone(),
            decode,
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group! {
    name = benches;
    // Ten samples and short windows: a whole run stays around a minute on two cores.
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .without_plots();
    targets = stages
}
criterion_main!(benches);
