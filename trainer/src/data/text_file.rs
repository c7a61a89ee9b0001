//! A [`BlockSource`] over one plain-text file, tokenized and packed in memory: small reproducible
//! runs (test fixtures, comparisons with HF `Trainer`) without starting a pipeline.
//!
//! Every non-blank line is one document, encoded with `<s> … </s>`; the documents are
//! concatenated and cut into `seq_len` blocks as HF's `group_texts` does (the remainder is
//! dropped). The last `valid_fraction` of the blocks is the valid split; train batches walk the
//! other blocks in file order and start over at the end, so the data order is plain to reproduce.

use std::time::Instant;

use flightlm_shared::{TokenBlocks, TokenizerInfo};

use crate::data::source::{push_up_to, BlockSource};
use crate::hf::{HfError, HfTokenizer};

pub struct TextFileSource {
    tokenizer: TokenizerInfo,
    seq_len: usize,
    batch_size: usize,
    train: Vec<Vec<u32>>,
    valid: Vec<Vec<u32>>,
    next_train: usize,
    /// Blocks handed out so far, as their sequence numbers.
    served: u64,
    waited: f64,
}

impl TextFileSource {
    pub fn new(
        text: &str,
        tokenizer: &HfTokenizer,
        seq_len: usize,
        batch_size: usize,
        valid_fraction: f64,
    ) -> Result<Self, HfError> {
        let mut ids = Vec::new();
        for line in text.lines().filter(|line| !line.trim().is_empty()) {
            ids.extend(tokenizer.encode(line)?);
        }
        let mut blocks: Vec<Vec<u32>> = ids
            .chunks_exact(seq_len.max(1))
            .map(<[u32]>::to_vec)
            .collect();
        let valid_blocks = ((blocks.len() as f64 * valid_fraction).ceil() as usize).max(1);
        if blocks.len() <= valid_blocks {
            return Err(HfError::Input(format!(
                "the text makes {} blocks of {seq_len} tokens, too few for a train and a valid split",
                blocks.len()
            )));
        }
        let valid = blocks.split_off(blocks.len() - valid_blocks);
        Ok(TextFileSource {
            tokenizer: tokenizer.info()?,
            seq_len,
            batch_size,
            train: blocks,
            valid,
            next_train: 0,
            served: 0,
            waited: 0.0,
        })
    }

    /// Train blocks (the valid split excluded).
    pub fn train_blocks(&self) -> &[Vec<u32>] {
        &self.train
    }

    pub fn valid_blocks(&self) -> &[Vec<u32>] {
        &self.valid
    }
}

impl BlockSource for TextFileSource {
    fn tokenizer(&self) -> &TokenizerInfo {
        &self.tokenizer
    }

    fn next_train_batch(&mut self) -> anyhow::Result<TokenBlocks> {
        let started = Instant::now();
        let mut batch = TokenBlocks::new(self.seq_len);
        for _ in 0..self.batch_size {
            batch.push(&self.train[self.next_train], self.served, 0);
            self.next_train = (self.next_train + 1) % self.train.len();
            self.served += 1;
        }
        self.waited += started.elapsed().as_secs_f64();
        Ok(batch)
    }

    fn valid_batches(&mut self, max_blocks: Option<usize>) -> anyhow::Result<Vec<TokenBlocks>> {
        let mut batches = Vec::new();
        for (chunk_index, chunk) in self.valid.chunks(self.batch_size.max(1)).enumerate() {
            let mut batch = TokenBlocks::new(self.seq_len);
            for (row, block) in chunk.iter().enumerate() {
                batch.push(block, (chunk_index * self.batch_size + row) as u64, 0);
            }
            if push_up_to(&mut batches, batch, max_blocks) {
                break;
            }
        }
        Ok(batches)
    }

    fn seconds_waited(&self) -> f64 {
        self.waited
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn tokenizer() -> HfTokenizer {
        // The run-time value follows the checkout when a shared target dir keeps an old build.
        let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
        let path = manifest_dir.join("../tests/fixtures/hf-parity/mlm/tokenizer.json");
        HfTokenizer::load(&path).expect("the fixture tokenizer")
    }

    #[test]
    fn packs_documents_like_group_texts_and_walks_them_in_order() {
        let tokenizer = tokenizer();
        let lines = [
            "In the beginning",
            "",
            "God created the heaven",
            "and the earth.",
        ];
        let mut ids = Vec::new();
        for line in lines.iter().filter(|line| !line.is_empty()) {
            ids.extend(tokenizer.encode(line).expect("encodes"));
        }
        let seq_len = 4;
        let mut source =
            TextFileSource::new(&lines.join("\n"), &tokenizer, seq_len, 2, 0.2).expect("blocks");
        let blocks = ids.len() / seq_len;
        let held_out = (blocks as f64 * 0.2).ceil() as usize;
        assert_eq!(source.train_blocks().len(), blocks - held_out);
        assert_eq!(source.valid_blocks().len(), held_out);
        assert_eq!(source.train_blocks()[0], ids[..seq_len].to_vec());
        assert_eq!(
            source.valid_blocks().last().expect("valid"),
            &ids[(blocks - 1) * seq_len..blocks * seq_len].to_vec()
        );

        let train = source.train_blocks().to_vec();
        let mut seen = Vec::new();
        for _ in 0..train.len() {
            let batch = source.next_train_batch().expect("batch");
            assert_eq!(batch.rows(), 2);
            seen.extend((0..2).map(|row| batch.row(row).to_vec()));
        }
        let expected: Vec<Vec<u32>> = (0..2 * train.len())
            .map(|index| train[index % train.len()].clone())
            .collect();
        assert_eq!(seen, expected, "file order, starting over at the end");
    }

    #[test]
    fn refuses_a_text_too_short_to_split() {
        let error = TextFileSource::new("In the beginning", &tokenizer(), 64, 2, 0.1)
            .err()
            .expect("too short");
        assert!(error.to_string().contains("too few"), "{error}");
    }
}
