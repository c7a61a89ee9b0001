//! Packs tokenized documents into fixed-length blocks with HF `group_texts` semantics.
//!
//! Documents arrive as the tokenizer encodes them, special tokens included (`<s> ids </s>`,
//! `[CLS] ids [SEP]`, `ids <|endoftext|>`, …); they are concatenated and cut into `seq_len`
//! blocks. A block may hold the end of one document and the start of the next; no document is ever
//! truncated. The tokens left over after the last full block wait for the next document (so
//! record-batch boundaries upstream never matter) and are dropped only when the pass ends. Each
//! block also says where in it a document begins, for consumers that keep documents apart.

pub struct Packer {
    seq_len: usize,
    /// Tokens of the block being filled; always shorter than `seq_len` between calls.
    pending: Vec<u32>,
    /// Offsets in `pending` where a document begins.
    pending_starts: Vec<u32>,
}

/// Blocks completed by a packer: their tokens row-major, and each one's document starts.
#[derive(Debug, Default)]
pub struct PackedBlocks {
    pub tokens: Vec<u32>,
    pub document_starts: Vec<Vec<u32>>,
}

impl PackedBlocks {
    pub fn clear(&mut self) {
        self.tokens.clear();
        self.document_starts.clear();
    }
}

impl Packer {
    pub fn new(seq_len: usize) -> Self {
        assert!(seq_len >= 1, "a block holds at least one token");
        Packer {
            seq_len,
            pending: Vec::with_capacity(seq_len),
            pending_starts: Vec::new(),
        }
    }

    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Tokens waiting for the next block.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Appends one document (its ids as encoded, special tokens included) and writes every block
    /// it completes to `blocks`. Returns the number of blocks written.
    pub fn push_document(&mut self, ids: &[u32], blocks: &mut PackedBlocks) -> usize {
        self.push_document_from(ids, 0, blocks, |_| {})
    }

    /// Appends the document from token `skip` on (a resumed stream starts inside a document),
    /// calling `block_started(offset)` whenever a block begins at that offset of this document,
    /// so callers can say where every block starts.
    pub fn push_document_from(
        &mut self,
        ids: &[u32],
        skip: usize,
        blocks: &mut PackedBlocks,
        mut block_started: impl FnMut(usize),
    ) -> usize {
        let before = blocks.document_starts.len();
        let mut offset = skip;
        // Linear in the document length however long it is: whole runs are copied at once.
        while offset < ids.len() {
            if self.pending.is_empty() {
                block_started(offset);
            }
            if offset == 0 {
                self.pending_starts.push(self.pending.len() as u32);
            }
            let end = (offset + self.seq_len - self.pending.len()).min(ids.len());
            self.pending.extend_from_slice(&ids[offset..end]);
            offset = end;
            if self.pending.len() == self.seq_len {
                blocks.tokens.extend_from_slice(&self.pending);
                blocks
                    .document_starts
                    .push(std::mem::take(&mut self.pending_starts));
                self.pending.clear();
            }
        }
        blocks.document_starts.len() - before
    }

    /// Ends a pass over the corpus: the incomplete last block is dropped, as `group_texts` does.
    /// Returns how many tokens were dropped.
    pub fn finish_pass(&mut self) -> usize {
        let dropped = self.pending.len();
        self.pending.clear();
        self.pending_starts.clear();
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOS: u32 = 0;
    const EOS: u32 = 2;

    /// Documents as a RoBERTa tokenizer encodes them: `<s> ids </s>`.
    fn framed(ids: &[u32]) -> Vec<u32> {
        std::iter::once(BOS)
            .chain(ids.iter().copied())
            .chain([EOS])
            .collect()
    }

    /// The reference: HF `group_texts` over the whole corpus at once.
    fn group_texts(documents: &[Vec<u32>], seq_len: usize) -> Vec<Vec<u32>> {
        let concatenated: Vec<u32> = documents.iter().flatten().copied().collect();
        let total = concatenated.len() / seq_len * seq_len;
        concatenated[..total]
            .chunks(seq_len)
            .map(<[u32]>::to_vec)
            .collect()
    }

    /// Per block of `group_texts`, the offsets where a document begins.
    fn reference_starts(documents: &[Vec<u32>], seq_len: usize) -> Vec<Vec<u32>> {
        let total: usize = documents.iter().map(Vec::len).sum();
        let mut starts = vec![Vec::new(); total / seq_len];
        let mut position = 0;
        for document in documents {
            if !document.is_empty() && position / seq_len < starts.len() {
                starts[position / seq_len].push((position % seq_len) as u32);
            }
            position += document.len();
        }
        starts
    }

    fn documents() -> Vec<Vec<u32>> {
        // Lengths around and far above the block size, an empty document (`<s></s>` only) and
        // one a tokenizer without a post-processor gives for a text it cannot encode (no ids).
        let mut documents: Vec<Vec<u32>> = [3usize, 0, 7, 8, 1, 25, 6, 2, 40, 5]
            .iter()
            .enumerate()
            .map(|(index, &length)| {
                let ids: Vec<u32> = (0..length as u32)
                    .map(|t| 100 * (index as u32 + 1) + t)
                    .collect();
                framed(&ids)
            })
            .collect();
        documents.insert(4, Vec::new());
        documents
    }

    fn pack(documents: &[Vec<u32>], seq_len: usize, batch_size: usize) -> (PackedBlocks, usize) {
        let mut packer = Packer::new(seq_len);
        let mut blocks = PackedBlocks::default();
        for batch in documents.chunks(batch_size) {
            for document in batch {
                packer.push_document(document, &mut blocks);
            }
        }
        (blocks, packer.finish_pass())
    }

    #[test]
    fn blocks_equal_group_texts_whatever_the_batching() {
        let documents = documents();
        for seq_len in [2, 3, 8, 10, 64] {
            let expected = group_texts(&documents, seq_len);
            // Feed the same documents in upstream batches of every size: carry-over must make
            // the batching invisible.
            for batch_size in 1..=documents.len() {
                let (blocks, dropped) = pack(&documents, seq_len, batch_size);
                let total: usize = documents.iter().map(Vec::len).sum();
                assert_eq!(dropped, total % seq_len, "seq_len {seq_len}");
                let got: Vec<Vec<u32>> =
                    blocks.tokens.chunks(seq_len).map(<[u32]>::to_vec).collect();
                assert_eq!(got, expected, "seq_len {seq_len}, batch {batch_size}");
                assert_eq!(
                    blocks.document_starts,
                    reference_starts(&documents, seq_len),
                    "seq_len {seq_len}, batch {batch_size}"
                );
            }
        }
    }

    #[test]
    fn documents_are_never_truncated() {
        let mut packer = Packer::new(4);
        let mut blocks = PackedBlocks::default();
        assert_eq!(packer.push_document(&framed(&[10, 11]), &mut blocks), 1);
        assert_eq!(blocks.tokens, vec![BOS, 10, 11, EOS]);
        assert_eq!(blocks.document_starts, vec![vec![0]]);
        // A document longer than several blocks is split across blocks, every token kept.
        let long: Vec<u32> = (20..31).collect();
        assert_eq!(packer.push_document(&framed(&long), &mut blocks), 3);
        assert_eq!(
            &blocks.tokens[4..],
            &[BOS, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30]
        );
        assert_eq!(&blocks.document_starts[1..], &[vec![0], vec![], vec![]]);
        assert_eq!(packer.pending_len(), 1);
        // An empty text keeps the special tokens its tokenizer gives it.
        packer.push_document(&framed(&[]), &mut blocks);
        assert_eq!(packer.pending_len(), 3);
        packer.push_document(&framed(&[]), &mut blocks);
        assert_eq!(&blocks.tokens[16..], &[EOS, BOS, EOS, BOS]);
        assert_eq!(blocks.document_starts[4], vec![1, 3]);
        assert_eq!(packer.pending_len(), 1);
    }

    #[test]
    fn remainder_is_dropped_only_at_the_end_of_a_pass() {
        let mut packer = Packer::new(5);
        let mut blocks = PackedBlocks::default();
        packer.push_document(&framed(&[1, 1]), &mut blocks);
        assert!(blocks.tokens.is_empty());
        assert_eq!(packer.pending_len(), 4);
        packer.push_document(&framed(&[3]), &mut blocks);
        assert_eq!(blocks.tokens, vec![BOS, 1, 1, EOS, BOS]);
        assert_eq!(packer.finish_pass(), 2);
        packer.push_document(&framed(&[7, 7, 7]), &mut blocks);
        assert_eq!(&blocks.tokens[5..], &[BOS, 7, 7, 7, EOS]);
        assert_eq!(blocks.document_starts, vec![vec![0, 4], vec![0]]);
    }

    #[test]
    fn resuming_inside_a_document_continues_the_same_blocks() {
        let documents = documents();
        let seq_len = 8;
        let mut packer = Packer::new(seq_len);
        let mut blocks = PackedBlocks::default();
        let mut starts = Vec::new();
        for (index, document) in documents.iter().enumerate() {
            packer.push_document_from(document, 0, &mut blocks, |offset| {
                starts.push((index, offset))
            });
        }
        let expected: Vec<&[u32]> = blocks.tokens.chunks(seq_len).collect();
        // From every block start, a fresh packer fed the rest of the corpus gives the same blocks.
        for (block, &(document, offset)) in starts.iter().enumerate().take(expected.len()) {
            let mut resumed = Packer::new(seq_len);
            let mut rest = PackedBlocks::default();
            resumed.push_document_from(&documents[document], offset, &mut rest, |_| {});
            for later in &documents[document + 1..] {
                resumed.push_document(later, &mut rest);
            }
            let got: Vec<&[u32]> = rest.tokens.chunks(seq_len).collect();
            assert_eq!(got, expected[block..], "resumed at block {block}");
            assert_eq!(
                rest.document_starts,
                blocks.document_starts[block..],
                "resumed at block {block}"
            );
        }
    }
}
