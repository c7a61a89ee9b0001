//! Tests of the stream schema: columns, metadata and the blocks read back from batches.

use super::*;

fn tokenizer() -> TokenizerInfo {
    TokenizerInfo::roberta("abc", 100)
}

#[test]
fn record_batch_round_trip_and_slices() {
    let schema = block_schema(3, &tokenizer());
    let first: Arc<str> = Arc::from(r#"{"fingerprint":"f","block_seq":0,"draws":0,"sources":[]}"#);
    let second: Arc<str> = Arc::from(r#"{"fingerprint":"f","block_seq":2,"draws":2,"sources":[]}"#);
    let mut blocks = TokenBlocks::new(3);
    blocks.push_resumable(&[0, 10, 2], 0, 0, &first, 1);
    blocks.push_resumable(&[0, 11, 2], 1, 0, &first, 2);
    blocks.push_resumable(&[0, 12, 2], 2, 1, &second, 1);
    let batch = blocks.to_record_batch(schema.clone()).unwrap();
    assert_eq!(TokenBlocks::from_record_batch(&batch).unwrap(), blocks);
    let tail = TokenBlocks::from_record_batch(&batch.slice(1, 2)).unwrap();
    assert_eq!(tail.row(0), &[0, 11, 2]);
    assert_eq!(tail.block_seq, vec![1, 2]);
    let cursor = tail.cursor_after(1).unwrap();
    assert_eq!((cursor.state.block_seq, cursor.skip), (2, 1));
    assert_eq!(tail.cursor_after(0).unwrap().skip, 2);
    assert_eq!(tokenizer_from_schema(&schema).unwrap(), tokenizer());
}

#[test]
fn sources_travel_per_row_and_may_be_absent() {
    let schema = block_schema(2, &tokenizer());
    let state: Arc<str> = Arc::from(r#"{"fingerprint":"f","block_seq":0,"draws":0,"sources":[]}"#);
    let mut blocks = TokenBlocks::new(2);
    for (row, source) in ["books", "wiki", "books"].into_iter().enumerate() {
        blocks.push_resumable(&[0, 2], row as u64, 0, &state, row as u32 + 1);
        blocks.sources.push(Arc::from(source));
    }
    let batch = blocks.to_record_batch(schema.clone()).unwrap();
    assert_eq!(TokenBlocks::from_record_batch(&batch).unwrap(), blocks);
    let tail = TokenBlocks::from_record_batch(&batch.slice(1, 2)).unwrap();
    let names: Vec<&str> = tail.sources.iter().map(|s| s.as_ref()).collect();
    assert_eq!(names, ["wiki", "books"]);
    blocks.sources.clear();
    let unknown = blocks.to_record_batch(schema).unwrap();
    assert!(TokenBlocks::from_record_batch(&unknown)
        .unwrap()
        .sources
        .is_empty());
    let without = unknown.project(&[0, 1, 2, 3, 4]).unwrap();
    assert_eq!(TokenBlocks::from_record_batch(&without).unwrap(), blocks);
}

#[test]
fn take_front_splits_rows() {
    let mut blocks = TokenBlocks::new(2);
    for index in 0..5 {
        blocks.push(&[index, index], u64::from(index), 0);
    }
    let front = blocks.take_front(2);
    assert_eq!(front.ids, vec![0, 0, 1, 1]);
    assert_eq!(blocks.block_seq, vec![2, 3, 4]);
}

#[test]
fn document_starts_travel_only_when_asked_for() {
    let state: Arc<str> = Arc::from(r#"{"fingerprint":"f","block_seq":0,"draws":0,"sources":[]}"#);
    let mut blocks = TokenBlocks::new(4).with_document_starts();
    for (row, starts) in [vec![0, 2], vec![], vec![1, 2, 3]].iter().enumerate() {
        blocks.push_resumable(&[7, 7, 7, 7], row as u64, 0, &state, row as u32 + 1);
        blocks.push_starts(starts);
    }
    let mut request = StreamRequest::new(crate::Split::Train, 4, 3);
    let plain = blocks
        .to_record_batch(stream_schema(&request, &tokenizer()))
        .unwrap();
    assert_eq!(
        plain.num_columns(),
        6,
        "off by default: the six columns only"
    );
    assert_eq!(
        TokenBlocks::from_record_batch(&plain)
            .unwrap()
            .document_starts,
        None
    );
    request.document_starts = true;
    let batch = blocks
        .to_record_batch(stream_schema(&request, &tokenizer()))
        .unwrap();
    assert_eq!(batch.schema().field(6).name(), DOCUMENT_STARTS);
    let back = TokenBlocks::from_record_batch(&batch.slice(1, 2)).unwrap();
    assert_eq!(back.document_starts, Some(vec![vec![], vec![1, 2, 3]]));
    let front = blocks.take_front(1);
    assert_eq!(front.document_starts, Some(vec![vec![0, 2]]));
    assert_eq!(blocks.document_starts.as_ref().map(Vec::len), Some(2));
}
