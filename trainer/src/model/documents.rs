//! Document attention: packed blocks hold several documents, and with `--document-attention`
//! each token attends only to tokens of its own document, at positions that restart at every
//! document (Llama 3's document masking; transformers' `DataCollatorWithFlattening`).
//!
//! A block that starts inside a document treats that document's tail as a document of its own.
//! The result for each document equals running it alone, whatever else shares its block.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::MASKED_SCORE;

/// Where the documents of each row lie, built on the host from the rows' document starts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DocumentLayout {
    pub rows: usize,
    pub seq_len: usize,
    /// Row-major `[rows, seq_len]`: the index of each token's document within its row.
    pub segments: Vec<u32>,
    /// Row-major `[rows, seq_len]`: each token's position within its document, from 0.
    pub positions: Vec<u32>,
}

impl DocumentLayout {
    /// The layout of `rows` rows of `seq_len` tokens whose documents begin at `starts` (per row,
    /// ascending offsets; a row always begins a segment at 0).
    pub fn from_starts(seq_len: usize, starts: &[Vec<u32>]) -> Self {
        let mut layout = DocumentLayout {
            rows: starts.len(),
            seq_len,
            segments: Vec::with_capacity(starts.len() * seq_len),
            positions: Vec::with_capacity(starts.len() * seq_len),
        };
        for row_starts in starts {
            let mut next = row_starts.iter().copied().peekable();
            let (mut segment, mut begin) = (0u32, 0u32);
            for offset in 0..seq_len as u32 {
                if next.peek() == Some(&offset) {
                    next.next();
                    if offset > 0 {
                        segment += 1;
                        begin = offset;
                    }
                }
                layout.segments.push(segment);
                layout.positions.push(offset - begin);
            }
        }
        layout
    }

    /// Whether flat index `index` (into `[rows * seq_len]`) begins a document inside its row.
    pub fn begins_document(&self, index: usize) -> bool {
        !index.is_multiple_of(self.seq_len) && self.positions[index] == 0
    }

    pub fn to_tensors<B: Backend>(&self, device: &B::Device) -> DocumentTensors<B> {
        let tensor = |values: &[u32]| {
            let values: Vec<i32> = values.iter().map(|value| *value as i32).collect();
            Tensor::from_data(TensorData::new(values, [self.rows, self.seq_len]), device)
        };
        DocumentTensors {
            segments: tensor(&self.segments),
            positions: tensor(&self.positions),
        }
    }
}

/// A [`DocumentLayout`] on the device.
#[derive(Clone, Debug)]
pub struct DocumentTensors<B: Backend> {
    pub segments: Tensor<B, 2, Int>,  // [batch, seq]
    pub positions: Tensor<B, 2, Int>, // [batch, seq]
}

impl<B: Backend> DocumentTensors<B> {
    /// `[batch, 1, seq, seq]`: 0 where query and key lie in the same document, `MASKED_SCORE`
    /// elsewhere; added to the causal bias when there is one.
    pub fn attention_bias(&self, causal: Option<Tensor<B, 4>>) -> Tensor<B, 4> {
        let [batch, seq_len] = self.segments.dims();
        let queries = self
            .segments
            .clone()
            .reshape([batch, seq_len, 1])
            .expand([batch, seq_len, seq_len]);
        let keys = self
            .segments
            .clone()
            .reshape([batch, 1, seq_len])
            .expand([batch, seq_len, seq_len]);
        let other_document = queries.not_equal(keys).float(); // [batch, seq, seq]
        let bias = other_document
            .mul_scalar(MASKED_SCORE)
            .reshape([batch, 1, seq_len, seq_len]);
        match causal {
            Some(causal) => bias + causal,
            None => bias,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RobertaConfig;
    use crate::CpuBackend;

    /// Every position's logits of `ids` `[1, len]`, without or with `documents`.
    fn logits(
        model: &crate::model::Roberta<CpuBackend>,
        ids: &[u32],
        documents: Option<&DocumentLayout>,
    ) -> Vec<f32> {
        let device = Default::default();
        let values: Vec<i64> = ids.iter().map(|id| i64::from(*id)).collect();
        let input = Tensor::from_data(TensorData::new(values, [1, ids.len()]), &device);
        let all: Vec<i64> = (0..ids.len() as i64).collect();
        let positions = Tensor::from_data(TensorData::new(all, [ids.len()]), &device);
        let documents = documents.map(|layout| layout.to_tensors(&device));
        model
            .forward_documents(input, positions, documents)
            .into_data()
            .to_vec()
            .expect("f32 logits")
    }

    /// Three documents packed in one block give each the logits it has alone.
    #[test]
    fn each_document_of_a_block_is_computed_as_if_alone() {
        let _rng = crate::backend_rng_lock();
        let documents: [&[u32]; 3] = [
            &[0, 11, 12, 13, 2],
            &[0, 21, 22, 23, 24, 25, 2],
            &[0, 31, 2],
        ];
        let block: Vec<u32> = documents.concat();
        let layout = DocumentLayout::from_starts(block.len(), &[vec![0, 5, 12]]);
        for causal in [false, true] {
            let model = RobertaConfig::new(40, 16, 2, 2, 32, 20)
                .with_pad_id(Some(1))
                .with_causal(causal)
                .with_dropout(0.0)
                .with_attention_dropout(0.0)
                .init::<CpuBackend>(&Default::default());
            let packed = logits(&model, &block, Some(&layout));
            let mut offset = 0;
            for document in documents {
                let alone = logits(&model, document, None);
                let vocab = 40;
                let inside = &packed[offset * vocab..(offset + document.len()) * vocab];
                let largest = inside
                    .iter()
                    .zip(&alone)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(
                    largest < 1e-4,
                    "causal {causal}: document at {offset} moved {largest}"
                );
                offset += document.len();
            }
            // Without the layout, documents see each other.
            let plain = logits(&model, &block, None);
            let moved = plain[5 * 40..12 * 40]
                .iter()
                .zip(&packed[5 * 40..12 * 40])
                .any(|(a, b)| (a - b).abs() > 1e-3);
            assert!(
                moved,
                "causal {causal}: the second document must see the first"
            );
        }
    }

    #[test]
    fn segments_and_positions_restart_at_each_document() {
        let layout = DocumentLayout::from_starts(6, &[vec![0, 2, 5], vec![], vec![3]]);
        assert_eq!(
            layout.segments,
            [[0, 0, 1, 1, 1, 2], [0; 6], [0, 0, 0, 1, 1, 1]].concat()
        );
        assert_eq!(
            layout.positions,
            [[0, 1, 0, 1, 2, 0], [0, 1, 2, 3, 4, 5], [0, 1, 2, 0, 1, 2]].concat()
        );
        assert!(layout.begins_document(2) && layout.begins_document(15));
        assert!(
            !layout.begins_document(0) && !layout.begins_document(6) && !layout.begins_document(3)
        );
    }
}
