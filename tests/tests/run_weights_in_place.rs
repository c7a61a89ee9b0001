//! `stream-weights` changes a run's open stream in place: a stream opened with a `run` draws
//! nothing from its `weights_until` on until an update moves it, the update's weights draw the
//! chunks from its boundary, and the blocks are those of a stream opened with that change in its
//! request. An update for a chunk already drawn, other weights for a boundary already set, or
//! weights naming a source the pipeline does not serve are refused; a run with no open stream is
//! `Unavailable` (the trainer then opens its stream again).

use std::collections::BTreeMap;
use std::time::Duration;

use flightlm_shared::client::{run_action_with_body, BlockStream, ClientError, PipelineEndpoint};
use flightlm_shared::{Split, StreamRequest, StreamWeights, TokenBlocks};
use flightlm_tests::{scratch_dir, two_source_corpus, Pipeline};

const SEQ_LEN: usize = 32;
const BATCH: usize = 16;
/// Blocks of a chunk without a shuffle window.
const CHUNK: u64 = 64;

fn weights(alpha: f64, beta: f64) -> BTreeMap<String, f64> {
    BTreeMap::from([("alpha".into(), alpha), ("beta".into(), beta)])
}

fn update(run: &str, new: Option<BTreeMap<String, f64>>, from: u64, until: u64) -> Vec<u8> {
    let update = StreamWeights {
        run: run.into(),
        weights: new,
        from,
        until,
    };
    serde_json::to_vec(&update).unwrap()
}

/// Rows as (block_seq, source, ids).
fn rows(batch: &TokenBlocks) -> Vec<(u64, String, Vec<u32>)> {
    (0..batch.rows())
        .map(|row| {
            let source = batch.sources[row].to_string();
            (batch.block_seq[row], source, batch.row(row).to_vec())
        })
        .collect()
}

/// Reads until `count` rows came or nothing comes for a second.
async fn read(stream: &mut BlockStream, count: usize) -> Vec<(u64, String, Vec<u32>)> {
    let mut read = Vec::new();
    while read.len() < count {
        match tokio::time::timeout(Duration::from_secs(1), stream.next()).await {
            Ok(Some(batch)) => read.extend(rows(&batch.expect("a batch"))),
            Ok(None) => panic!("the train stream ended"),
            Err(_) => break,
        }
    }
    read
}

#[test]
fn a_run_changes_its_open_stream_in_place_at_the_boundary_it_names() {
    let dir = scratch_dir("stream-weights");
    let (arguments, tokenizer) = two_source_corpus(&dir, 3000);
    let pipeline = Pipeline::start_with(&tokenizer, &arguments);
    let endpoint = PipelineEndpoint::new(pipeline.url.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let work = async {
        let request = StreamRequest::new(Split::Train, SEQ_LEN, BATCH)
            .with_weights(Some(weights(1.0, 1.0)))
            .with_run(Some("run-a".into()), Some(2 * CHUNK));
        let mut stream = BlockStream::open(&endpoint, &request).await.unwrap();
        // Two chunks, then the stream waits at its `until`.
        let mut steered = read(&mut stream, 10_000).await;
        assert_eq!(
            steered.len() as u64,
            2 * CHUNK,
            "blocks before the first update"
        );

        let action = |body| run_action_with_body(&endpoint, "stream-weights", body);
        action(update(
            "run-a",
            Some(weights(1.0, 0.0)),
            2 * CHUNK,
            4 * CHUNK,
        ))
        .await
        .expect("the update");
        // The same update again (another rank) is fine; other weights for it are not, nor a
        // boundary in a chunk already drawn.
        action(update(
            "run-a",
            Some(weights(1.0, 0.0)),
            2 * CHUNK,
            4 * CHUNK,
        ))
        .await
        .expect("the same update again");
        let conflict = action(update(
            "run-a",
            Some(weights(0.0, 1.0)),
            2 * CHUNK,
            4 * CHUNK,
        ));
        assert!(matches!(conflict.await, Err(ClientError::Refused(_))));
        let late = action(update("run-a", Some(weights(0.0, 1.0)), CHUNK, 4 * CHUNK)).await;
        let late = late.expect_err("a boundary already drawn");
        assert!(late.to_string().contains("already drew"), "{late}");
        let mut unknown_source = weights(1.0, 1.0);
        unknown_source.insert("gamma".into(), 1.0);
        let named = action(update("run-a", Some(unknown_source), 4 * CHUNK, 6 * CHUNK)).await;
        let named = named.expect_err("a source the pipeline does not serve");
        assert!(named.to_string().contains("`gamma`"), "{named}");
        let unknown = action(update("no-such-run", None, 0, CHUNK)).await;
        assert!(
            matches!(unknown, Err(ClientError::Unavailable(_))),
            "{unknown:?}"
        );

        let after = read(&mut stream, 10_000).await;
        assert_eq!(
            after.len() as u64,
            2 * CHUNK,
            "blocks up to the new `until`"
        );
        assert!(after.iter().all(|(_, source, _)| source == "alpha"));
        steered.extend(after);

        // The same change, asked for when the stream opens.
        let fresh = StreamRequest::new(Split::Train, SEQ_LEN, BATCH)
            .with_weights(Some(weights(1.0, 0.0)))
            .with_weights_from(Some(2 * CHUNK));
        let mut stream = BlockStream::open(&endpoint, &fresh).await.unwrap();
        let opened = read(&mut stream, steered.len()).await;
        (steered, opened)
    };
    let (steered, opened) = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(120), work).await })
        .expect("the streams within 2 minutes");
    assert!(steered[..128].iter().any(|(_, source, _)| source == "beta"));
    assert_eq!(steered, opened);
}
