//! Tests of the batch schema: round trips, slices, and the optional source column.

use super::*;

fn tokenizer() -> TokenizerInfo {
    TokenizerInfo {
        hash: "abc".into(),
        vocab_size: 100,
        bos_id: 0,
        pad_id: 1,
        eos_id: 2,
        unk_id: 3,
        mask_id: 4,
    }
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
