//! An in-memory [`BlockSource`] over a generated corpus with a learnable structure.
//!
//! Documents are random concatenations of a fixed set of short "phrases", each a fixed random
//! sequence of token ids. A masked token is therefore predictable from its neighbours inside the
//! phrase, so a model that learns anything at all shows a falling loss within a few dozen steps.
//! Used by unit tests and by the `bench` command, which measures training speed without a
//! pipeline. Its cursor is the number of blocks handed out; resuming regenerates and skips them,
//! which is O(blocks) but cheap for generated data.

use std::time::{Duration, Instant};

use anyhow::bail;
use flightlm_shared::{Cursor, StreamState, TokenBlocks, TokenizerInfo};

use crate::data::source::{push_up_to, BlockSource};
use crate::rng::SplitMix64;

/// The first id that is not a special token (RoBERTa's specials are 0..=4).
const FIRST_WORD_ID: u32 = 5;

#[derive(Clone, Debug)]
pub struct SyntheticConfig {
    pub vocab_size: u32,
    pub seq_len: usize,
    pub batch_size: usize,
    pub phrases: usize,
    pub phrase_len: usize,
    /// Distinct word ids the phrases draw from (at most `vocab_size - 5`); fewer words make the
    /// unigram distribution easy to learn, which the first steps of any model do.
    pub words: u32,
    pub phrases_per_document: usize,
    /// Blocks in the valid split.
    pub valid_blocks: usize,
    pub seed: u64,
    /// Artificial wait before each train batch, to exercise the data-wait metric.
    pub delay: Duration,
}

impl SyntheticConfig {
    pub fn new(vocab_size: u32, seq_len: usize, batch_size: usize) -> Self {
        SyntheticConfig {
            vocab_size,
            seq_len,
            batch_size,
            phrases: 64,
            phrase_len: 8,
            words: 256,
            phrases_per_document: 12,
            valid_blocks: 4 * batch_size,
            seed: 7,
            delay: Duration::ZERO,
        }
    }
}

pub struct SyntheticSource {
    config: SyntheticConfig,
    /// `(index, count)`: train batches hold the blocks whose `block_seq` is `index` mod `count`.
    shard: (u64, u64),
    tokenizer: TokenizerInfo,
    phrases: Vec<Vec<u32>>,
    train: Stream,
    valid: Vec<TokenBlocks>,
    waited: Duration,
}

/// An endless token stream packed into blocks, like the pipeline's `group_texts` packing.
struct Stream {
    rng: SplitMix64,
    pending: Vec<u32>,
    next_block: u64,
}

impl SyntheticSource {
    pub fn new(config: SyntheticConfig) -> Self {
        let mut rng = SplitMix64::for_stream(config.seed, 0);
        let words = config
            .words
            .min(config.vocab_size.saturating_sub(FIRST_WORD_ID))
            .max(1);
        let phrases = (0..config.phrases.max(1))
            .map(|_| {
                (0..config.phrase_len)
                    .map(|_| FIRST_WORD_ID + rng.below(words))
                    .collect()
            })
            .collect();
        let tokenizer =
            TokenizerInfo::roberta(&format!("synthetic-{}", config.seed), config.vocab_size);
        let mut source = SyntheticSource {
            shard: (0, 1),
            train: Stream::new(SplitMix64::for_stream(config.seed, 1)),
            valid: Vec::new(),
            waited: Duration::ZERO,
            tokenizer,
            phrases,
            config,
        };
        let mut valid_stream = Stream::new(SplitMix64::for_stream(source.config.seed, 2));
        let mut remaining = source.config.valid_blocks;
        while remaining > 0 {
            let rows = remaining.min(source.config.batch_size);
            source
                .valid
                .push(valid_stream.blocks(rows, &source.config, &source.phrases));
            remaining -= rows;
        }
        source
    }
}

impl SyntheticSource {
    /// Keeps shard `index` of `count` of the train stream (as a pipeline's `--shard`): batches
    /// of the blocks whose `block_seq` is `index` mod `count`, generated after the cursor's
    /// position like the whole stream. The valid split stays whole.
    pub fn sharded(mut self, index: usize, count: usize) -> Self {
        self.shard = (index as u64, count.max(1) as u64);
        self
    }

    /// A source whose train stream continues after `cursor`, taken from a source with the same
    /// configuration.
    pub fn resume(config: SyntheticConfig, cursor: &Cursor) -> anyhow::Result<Self> {
        let mut source = SyntheticSource::new(config);
        let fingerprint = source.fingerprint();
        if cursor.state.fingerprint != fingerprint {
            bail!(
                "the cursor belongs to stream {}, this source generates {fingerprint}",
                cursor.state.fingerprint
            );
        }
        let skip = cursor.state.block_seq + cursor.skip;
        while source.train.next_block < skip {
            source.train.blocks(1, &source.config, &source.phrases);
        }
        Ok(source)
    }

    /// Names the generated stream: everything that decides its blocks.
    fn fingerprint(&self) -> String {
        let config = &self.config;
        format!(
            "synthetic:seed={}:vocab={}:seq_len={}:phrases={}x{}:words={}:per_document={}",
            config.seed,
            config.vocab_size,
            config.seq_len,
            config.phrases,
            config.phrase_len,
            config.words,
            config.phrases_per_document
        )
    }
}

impl Stream {
    fn new(rng: SplitMix64) -> Self {
        Stream {
            rng,
            pending: Vec::new(),
            next_block: 0,
        }
    }

    fn blocks(
        &mut self,
        rows: usize,
        config: &SyntheticConfig,
        phrases: &[Vec<u32>],
    ) -> TokenBlocks {
        let mut blocks = TokenBlocks::new(config.seq_len);
        while blocks.rows() < rows {
            while self.pending.len() < config.seq_len {
                self.pending.push(0);
                for _ in 0..config.phrases_per_document {
                    let phrase = &phrases[self.rng.below(phrases.len() as u32) as usize];
                    self.pending.extend_from_slice(phrase);
                }
                self.pending.push(2);
            }
            let rest = self.pending.split_off(config.seq_len);
            blocks.push(&self.pending, self.next_block, 0);
            self.pending = rest;
            self.next_block += 1;
        }
        blocks
    }
}

impl BlockSource for SyntheticSource {
    fn tokenizer(&self) -> &TokenizerInfo {
        &self.tokenizer
    }

    fn next_train_batch(&mut self) -> anyhow::Result<TokenBlocks> {
        if !self.config.delay.is_zero() {
            let started = Instant::now();
            std::thread::sleep(self.config.delay);
            self.waited += started.elapsed();
        }
        let (index, count) = self.shard;
        let mut batch = TokenBlocks::new(self.config.seq_len);
        while batch.rows() < self.config.batch_size {
            // Generate up to this shard's next block and no further, so the cursor (the next
            // block of the whole stream) is right after the last block handed out.
            let next = self.train.next_block;
            let skip = (index + count - next % count) % count;
            for _ in 0..skip {
                self.train.blocks(1, &self.config, &self.phrases);
            }
            batch.append(&self.train.blocks(1, &self.config, &self.phrases));
        }
        Ok(batch)
    }

    fn valid_batches(&mut self, max_blocks: Option<usize>) -> anyhow::Result<Vec<TokenBlocks>> {
        let mut batches = Vec::new();
        for batch in &self.valid {
            if push_up_to(&mut batches, batch.clone(), max_blocks) {
                break;
            }
        }
        Ok(batches)
    }

    fn seconds_waited(&self) -> f64 {
        self.waited.as_secs_f64()
    }

    fn cursor(&self) -> Option<Cursor> {
        Some(Cursor {
            state: StreamState {
                fingerprint: self.fingerprint(),
                block_seq: self.train.next_block,
                draws: self.train.next_block,
                sources: Vec::new(),
                weights: None,
            },
            skip: 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn produces_full_blocks_and_a_fixed_valid_split() {
        let mut source = SyntheticSource::new(SyntheticConfig::new(100, 16, 4));
        let batch = source.next_train_batch().expect("batch");
        assert_eq!(batch.rows(), 4);
        assert_eq!(batch.ids.len(), 64);
        assert_eq!(batch.block_seq, vec![0, 1, 2, 3]);
        assert!(batch.ids.iter().all(|id| *id < 100));
        let valid = source.valid_batches(None).expect("valid");
        assert_eq!(valid.iter().map(TokenBlocks::rows).sum::<usize>(), 16);
        assert_eq!(valid, source.valid_batches(None).expect("valid"));
        // A limit keeps the first blocks, cutting a batch where it falls.
        let first = source.valid_batches(Some(6)).expect("valid");
        assert_eq!(
            first.iter().map(TokenBlocks::rows).collect::<Vec<_>>(),
            [4, 2]
        );
        let seqs = |batches: &[TokenBlocks]| -> Vec<u64> {
            batches
                .iter()
                .flat_map(|batch| batch.block_seq.clone())
                .collect()
        };
        assert_eq!(seqs(&first), seqs(&valid)[..6]);
        assert_eq!(
            seqs(&source.valid_batches(Some(4)).expect("valid")),
            seqs(&valid)[..4]
        );
    }

    #[test]
    fn resumes_after_the_cursor() {
        let config = SyntheticConfig::new(100, 16, 4);
        let mut source = SyntheticSource::new(config.clone());
        source.next_train_batch().expect("batch");
        let cursor = source.cursor().expect("a cursor");
        let expected = source.next_train_batch().expect("batch");
        let mut resumed = SyntheticSource::resume(config.clone(), &cursor).expect("resumes");
        assert_eq!(resumed.next_train_batch().expect("batch"), expected);

        let other = SyntheticConfig { seed: 8, ..config };
        assert!(SyntheticSource::resume(other, &cursor).is_err());
    }

    #[test]
    fn shards_interleave_into_the_whole_stream() {
        let config = SyntheticConfig::new(100, 16, 3);
        let mut whole = SyntheticSource::new(config.clone());
        let expected: Vec<TokenBlocks> = (0..2)
            .map(|_| whole.next_train_batch().expect("batch"))
            .collect();
        let mut first = SyntheticSource::new(config.clone()).sharded(0, 2);
        let mut second = SyntheticSource::new(config.clone()).sharded(1, 2);
        let mut shards = TokenBlocks::new(16);
        for source in [&mut first, &mut second] {
            let batch = source.next_train_batch().expect("batch");
            assert_eq!(batch.rows(), 3);
            shards.append(&batch);
        }
        let mut rows: Vec<(u64, Vec<u32>)> = (0..shards.rows())
            .map(|row| (shards.block_seq[row], shards.row(row).to_vec()))
            .collect();
        rows.sort();
        let mut all = expected[0].clone();
        all.append(&expected[1]);
        let whole_rows: Vec<(u64, Vec<u32>)> = (0..6)
            .map(|row| (all.block_seq[row], all.row(row).to_vec()))
            .collect();
        assert_eq!(rows, whole_rows);
        // Shard 1's cursor is right after block 5: the whole stream resumes with block 6.
        let resumed = SyntheticSource::resume(config, &second.cursor().expect("cursor"))
            .expect("resumes")
            .next_train_batch()
            .expect("batch");
        assert_eq!(resumed.block_seq, [6, 7, 8]);
    }
}
