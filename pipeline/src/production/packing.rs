//! Packs tokenized documents into fixed-length blocks with HF `group_texts` semantics.
//!
//! Every document becomes `<s> ids… </s>`; documents are concatenated and cut into `seq_len`
//! blocks. A block may hold the end of one document and the start of the next; no document is ever
//! truncated. The tokens left over after the last full block wait for the next document (so
//! record-batch boundaries upstream never matter) and are dropped only when the pass ends.

pub struct Packer {
    seq_len: usize,
    bos_id: u32,
    eos_id: u32,
    /// Tokens of the block being filled; always shorter than `seq_len` between calls.
    pending: Vec<u32>,
}

impl Packer {
    pub fn new(seq_len: usize, bos_id: u32, eos_id: u32) -> Self {
        assert!(seq_len >= 2, "a block holds at least `<s>` and `</s>`");
        Packer {
            seq_len,
            bos_id,
            eos_id,
            pending: Vec::with_capacity(seq_len),
        }
    }

    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Tokens waiting for the next block.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Appends one document (ids without special tokens) and writes every block it completes to
    /// `blocks`, row-major. Returns the number of blocks written.
    pub fn push_document(&mut self, ids: &[u32], blocks: &mut Vec<u32>) -> usize {
        self.push_document_from(ids, 0, blocks, |_| {})
    }

    /// Appends the document framed as `<s> ids </s>` from token `skip` on (a resumed stream starts
    /// inside a document), calling `block_started(offset)` whenever a block begins at that offset
    /// of this document, so callers can say where every block starts.
    pub fn push_document_from(
        &mut self,
        ids: &[u32],
        skip: usize,
        blocks: &mut Vec<u32>,
        mut block_started: impl FnMut(usize),
    ) -> usize {
        let before = blocks.len();
        let framed_len = ids.len() + 2;
        let mut offset = skip;
        // Linear in the document length however long it is: whole runs are copied at once.
        while offset < framed_len {
            if self.pending.is_empty() {
                block_started(offset);
            }
            let end = (offset + self.seq_len - self.pending.len()).min(framed_len);
            self.extend_framed(ids, offset, end);
            offset = end;
            if self.pending.len() == self.seq_len {
                blocks.extend_from_slice(&self.pending);
                self.pending.clear();
            }
        }
        (blocks.len() - before) / self.seq_len
    }

    /// Copies tokens `start..end` of `<s> ids </s>` into the pending block.
    fn extend_framed(&mut self, ids: &[u32], start: usize, end: usize) {
        let mut index = start;
        if index == 0 && index < end {
            self.pending.push(self.bos_id);
            index = 1;
        }
        let ids_end = end.min(ids.len() + 1);
        if index < ids_end {
            self.pending.extend_from_slice(&ids[index - 1..ids_end - 1]);
            index = ids_end;
        }
        if index < end {
            self.pending.push(self.eos_id);
        }
    }

    /// Ends a pass over the corpus: the incomplete last block is dropped, as `group_texts` does.
    /// Returns how many tokens were dropped.
    pub fn finish_pass(&mut self) -> usize {
        let dropped = self.pending.len();
        self.pending.clear();
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOS: u32 = 0;
    const EOS: u32 = 2;

    /// The reference: HF `group_texts` over the whole corpus at once.
    fn group_texts(documents: &[Vec<u32>], seq_len: usize) -> Vec<Vec<u32>> {
        let concatenated: Vec<u32> = documents
            .iter()
            .flat_map(|ids| std::iter::once(BOS).chain(ids.iter().copied()).chain([EOS]))
            .collect();
        let total = concatenated.len() / seq_len * seq_len;
        concatenated[..total]
            .chunks(seq_len)
            .map(<[u32]>::to_vec)
            .collect()
    }

    fn documents() -> Vec<Vec<u32>> {
        // Lengths around and far above the block size, and an empty document.
        [3usize, 0, 7, 8, 1, 25, 6, 2, 40, 5]
            .iter()
            .enumerate()
            .map(|(index, &length)| {
                (0..length as u32)
                    .map(|t| 100 * (index as u32 + 1) + t)
                    .collect()
            })
            .collect()
    }

    #[test]
    fn blocks_equal_group_texts_whatever_the_batching() {
        let documents = documents();
        for seq_len in [2, 3, 8, 10, 64] {
            let expected = group_texts(&documents, seq_len);
            // Feed the same documents in upstream batches of every size: carry-over must make
            // the batching invisible.
            for batch_size in 1..=documents.len() {
                let mut packer = Packer::new(seq_len, BOS, EOS);
                let mut blocks = Vec::new();
                for batch in documents.chunks(batch_size) {
                    for document in batch {
                        packer.push_document(document, &mut blocks);
                    }
                }
                let total: usize = documents.iter().map(|ids| ids.len() + 2).sum();
                assert_eq!(packer.finish_pass(), total % seq_len, "seq_len {seq_len}");
                let got: Vec<Vec<u32>> = blocks.chunks(seq_len).map(<[u32]>::to_vec).collect();
                assert_eq!(got, expected, "seq_len {seq_len}, batch {batch_size}");
            }
        }
    }

    #[test]
    fn documents_are_wrapped_and_never_truncated() {
        let mut packer = Packer::new(4, BOS, EOS);
        let mut blocks = Vec::new();
        assert_eq!(packer.push_document(&[10, 11], &mut blocks), 1);
        assert_eq!(blocks, vec![BOS, 10, 11, EOS]);
        // A document longer than several blocks is split across blocks, every token kept.
        let long: Vec<u32> = (20..31).collect();
        assert_eq!(packer.push_document(&long, &mut blocks), 3);
        assert_eq!(
            &blocks[4..],
            &[BOS, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30]
        );
        assert_eq!(packer.pending_len(), 1);
        // Even an empty document keeps its `<s> </s>` pair.
        packer.push_document(&[], &mut blocks);
        assert_eq!(packer.pending_len(), 3);
        packer.push_document(&[], &mut blocks);
        assert_eq!(&blocks[16..], &[EOS, BOS, EOS, BOS]);
        assert_eq!(packer.pending_len(), 1);
    }

    #[test]
    fn remainder_is_dropped_only_at_the_end_of_a_pass() {
        let mut packer = Packer::new(5, BOS, EOS);
        let mut blocks = Vec::new();
        packer.push_document(&[1, 1], &mut blocks);
        assert!(blocks.is_empty());
        assert_eq!(packer.pending_len(), 4);
        packer.push_document(&[3], &mut blocks);
        assert_eq!(blocks, vec![BOS, 1, 1, EOS, BOS]);
        assert_eq!(packer.finish_pass(), 2);
        packer.push_document(&[7, 7, 7], &mut blocks);
        assert_eq!(&blocks[5..], &[BOS, 7, 7, 7, EOS]);
    }

    #[test]
    fn resuming_inside_a_document_continues_the_same_blocks() {
        let documents = documents();
        let seq_len = 8;
        let mut packer = Packer::new(seq_len, BOS, EOS);
        let mut blocks = Vec::new();
        let mut starts = Vec::new();
        for (index, document) in documents.iter().enumerate() {
            packer.push_document_from(document, 0, &mut blocks, |offset| {
                starts.push((index, offset))
            });
        }
        let expected: Vec<&[u32]> = blocks.chunks(seq_len).collect();
        // From every block start, a fresh packer fed the rest of the corpus gives the same blocks.
        for (block, &(document, offset)) in starts.iter().enumerate().take(expected.len()) {
            let mut resumed = Packer::new(seq_len, BOS, EOS);
            let mut rest = Vec::new();
            resumed.push_document_from(&documents[document], offset, &mut rest, |_| {});
            for later in &documents[document + 1..] {
                resumed.push_document(later, &mut rest);
            }
            let got: Vec<&[u32]> = rest.chunks(seq_len).collect();
            assert_eq!(got, expected[block..], "resumed at block {block}");
        }
    }
}
