//! The shards of one job read one production of the corpus: three `--shard i/3` streams opened
//! together are, interleaved, the unsharded stream, and the pipeline's stats show that the three
//! share one reading of the corpus while an unsharded stream has its own.

use std::time::Duration;

use flightlm_shared::client::{run_action, BlockStream, PipelineEndpoint};
use flightlm_shared::{Split, StreamRequest, TokenBlocks};
use flightlm_tests::{sample_corpus, scratch_dir, train_tokenizer, Pipeline};

const SEQ_LEN: usize = 64;
const BATCH: usize = 8;
const SHARDS: u64 = 3;
const BATCHES_PER_SHARD: usize = 30;

async fn open(endpoint: &PipelineEndpoint, shard: Option<u64>) -> BlockStream {
    let mut request = StreamRequest::new(Split::Train, SEQ_LEN, BATCH);
    if let Some(index) = shard {
        request = request.with_shard(index, SHARDS);
    }
    BlockStream::open(endpoint, &request)
        .await
        .expect("opening a stream")
}

async fn next(stream: &mut BlockStream) -> TokenBlocks {
    stream
        .next()
        .await
        .expect("the train stream repeats")
        .expect("a batch")
}

fn rows(batch: &TokenBlocks) -> Vec<(u64, Vec<u32>)> {
    (0..batch.rows())
        .map(|row| (batch.block_seq[row], batch.row(row).to_vec()))
        .collect()
}

#[test]
fn the_shards_of_a_job_share_one_reading_of_the_corpus() {
    let dir = scratch_dir("shard-hub");
    let corpus = sample_corpus(&dir, 3000);
    let tokenizer = train_tokenizer(&dir, &corpus, 1000);
    let pipeline = Pipeline::start(&[&corpus], &tokenizer, &["--shuffle-window", "16"]);
    let endpoint = PipelineEndpoint::new(pipeline.url.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let work = async {
        // Like the ranks of a job: the first is already reading when the others connect.
        let mut shards = vec![open(&endpoint, Some(0)).await];
        let mut blocks = vec![rows(&next(&mut shards[0]).await)];
        for index in 1..SHARDS {
            shards.push(open(&endpoint, Some(index)).await);
            blocks.push(Vec::new());
        }
        for _ in 0..BATCHES_PER_SHARD {
            for (shard, stream) in shards.iter_mut().enumerate() {
                let batch = next(stream).await;
                blocks[shard].extend(rows(&batch));
            }
        }
        let mut whole_stream = open(&endpoint, None).await;
        let mut whole = Vec::new();
        while whole.len() < SHARDS as usize * BATCHES_PER_SHARD * BATCH {
            whole.extend(rows(&next(&mut whole_stream).await));
        }
        let stats = run_action(&endpoint, "stats").await.expect("stats");
        (
            blocks,
            whole,
            serde_json::from_slice::<serde_json::Value>(&stats).unwrap(),
        )
    };
    let (blocks, whole, stats) = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(120), work).await })
        .expect("the streams within 2 minutes");

    for (seq, (block_seq, tokens)) in whole.iter().enumerate() {
        assert_eq!(*block_seq, seq as u64);
        let shard = &blocks[seq % SHARDS as usize];
        let (shard_seq, shard_tokens) = &shard[seq / SHARDS as usize];
        assert_eq!(shard_seq, block_seq, "block {seq}");
        assert_eq!(shard_tokens, tokens, "block {seq}");
    }

    let streams = stats["streams"].as_array().expect("streams");
    let reading_of = |sharded: bool| -> Vec<&serde_json::Value> {
        streams
            .iter()
            .filter(|stream| stream["shard"].is_null() != sharded)
            .map(|stream| &stream["reading"])
            .collect()
    };
    let (sharded, unsharded) = (reading_of(true), reading_of(false));
    assert_eq!(sharded.len(), SHARDS as usize, "{stats:#}");
    assert!(
        sharded.iter().all(|reading| *reading == sharded[0]),
        "the shards share one reading: {stats:#}"
    );
    assert_eq!(unsharded.len(), 1);
    assert_ne!(unsharded[0], sharded[0], "the unsharded stream reads alone");
}
