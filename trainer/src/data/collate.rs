//! Turns a batch of token blocks into model inputs and labels for the configured objective.
//!
//! Both objectives reduce to the same shape of work: corrupted (or plain) input ids, plus a list
//! of flat positions whose hidden states the head must map to a target id. MLM picks ~15 % of the
//! positions (see [`crate::data::masking`]); causal LM predicts token `t + 1` from position `t`, which is
//! HF's in-model label shift written out on the host. With document attention the batch also
//! carries where each row's documents lie, and causal LM does not predict a document's first
//! token from the one before it (as transformers' `DataCollatorWithFlattening` labels it).

use std::sync::Arc;

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use flightlm_shared::{TokenBlocks, TokenizerInfo};

use crate::config::{DeviceKind, MaskingKey, Objective, TrainConfig};
use crate::data::masking::MlmMasking;
use crate::error::TrainError;
use crate::model::{DocumentLayout, DocumentTensors};

#[derive(Clone, Debug, PartialEq)]
pub struct Collator {
    labels: Labels,
    head_rows: usize,
    masking_key: MaskingKey,
    /// Keep attention inside documents (the blocks then carry their document starts).
    document_attention: bool,
}

#[derive(Clone, Debug, PartialEq)]
enum Labels {
    Mlm(MlmMasking),
    Causal,
}

/// One collated batch, still on the host.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LmBatch {
    pub rows: usize,
    pub seq_len: usize,
    /// Row-major `[rows, seq_len]`.
    pub inputs: Vec<u32>,
    /// Flat indices into `[rows * seq_len]` whose hidden state predicts `targets`.
    pub positions: Vec<u32>,
    pub targets: Vec<u32>,
    /// The least number of head rows [`LmBatch::to_tensors`] pads the targets to.
    pub head_rows: usize,
    /// Where each row's documents lie, under document attention.
    pub documents: Option<DocumentLayout>,
    /// The source of each row, when the stream names them (empty otherwise).
    pub sources: Vec<Arc<str>>,
}

/// Predicted positions are padded up to a multiple of this. MLM picks a different number of
/// positions in every batch, and GPU backends compile and autotune kernels per shape; rounding
/// keeps the number of distinct head shapes to a handful at the cost of a few idle rows.
pub const TARGET_BUCKET: usize = 32;

/// Head rows for MLM batches of `tokens` positions: the expected number of masked positions plus
/// six standard deviations, rounded up to [`TARGET_BUCKET`]. Padding every batch to it gives the
/// head one shape for a whole run, where rounding alone gives 4-6, each compiled and autotuned
/// on a GPU when first seen (seconds per shape). The cost is rows of zero weight: the head runs
/// on about 1.25x the positions at 15 % masking of 4096 tokens, under 2 % of a base-preset step.
pub fn steady_head_rows(tokens: usize, probability: f64) -> usize {
    let expected = tokens as f64 * probability;
    let spread = (expected * (1.0 - probability)).sqrt();
    let rows = ((expected + 6.0 * spread).ceil() as usize).min(tokens);
    rows.div_ceil(TARGET_BUCKET) * TARGET_BUCKET
}

/// A collated batch on the device.
#[derive(Clone, Debug)]
pub struct BatchTensors<B: Backend> {
    pub input_ids: Tensor<B, 2, Int>, // [rows, seq]
    pub positions: Tensor<B, 1, Int>, // [padded targets]
    pub targets: Tensor<B, 1, Int>,   // [padded targets]
    /// 1 for real targets, 0 for the padding rows.
    pub weights: Tensor<B, 1>, // [padded targets]
    /// Real (unpadded) targets.
    pub count: usize,
    pub documents: Option<DocumentTensors<B>>,
}

impl Collator {
    /// The collator for `objective`; MLM on a tokenizer without a mask token is refused.
    pub fn new(
        objective: Objective,
        tokenizer: &TokenizerInfo,
        mlm_probability: f64,
    ) -> Result<Self, TrainError> {
        let labels = match objective {
            Objective::Mlm => Labels::Mlm(
                MlmMasking::new(tokenizer, mlm_probability).map_err(TrainError::InvalidConfig)?,
            ),
            Objective::Causal => Labels::Causal,
        };
        Ok(Collator {
            labels,
            head_rows: 0,
            masking_key: MaskingKey::MicroBatch,
            document_attention: false,
        })
    }

    /// The collator a training run asks for. MLM on a GPU pads to [`steady_head_rows`], so the
    /// head keeps one shape (a GPU compiles and autotunes each new one); on the CPU padding rows
    /// would only cost time.
    pub fn from_train_config(
        config: &TrainConfig,
        tokenizer: &TokenizerInfo,
    ) -> Result<Self, TrainError> {
        let collator = Collator::new(config.objective, tokenizer, config.mlm_probability)?
            .with_masking_key(config.masking_key)
            .with_document_attention(config.document_attention);
        Ok(match (config.device, config.objective) {
            (DeviceKind::Cuda, Objective::Mlm) => collator.with_head_rows(steady_head_rows(
                config.batch_size * config.seq_len,
                config.mlm_probability,
            )),
            _ => collator,
        })
    }

    /// Keeps attention inside documents; the blocks must carry their document starts.
    pub fn with_document_attention(mut self, document_attention: bool) -> Self {
        self.document_attention = document_attention;
        self
    }

    /// Keys MLM masks by `key` (by `(seed, stream)`, the micro-batch, unless told otherwise).
    pub fn with_masking_key(mut self, key: MaskingKey) -> Self {
        self.masking_key = key;
        self
    }

    /// Pads every batch's targets to at least `rows` (see [`steady_head_rows`]).
    pub fn with_head_rows(mut self, rows: usize) -> Self {
        self.head_rows = rows;
        self
    }

    /// Collates `blocks`; MLM masking draws from the generator for `(seed, stream)`, or with
    /// [`MaskingKey::Block`] from one generator per block, `(seed, block_seq)`.
    pub fn collate(&self, blocks: &TokenBlocks, seed: u64, stream: u64) -> LmBatch {
        let rows = blocks.rows();
        let seq_len = blocks.seq_len;
        let documents = self
            .document_attention
            .then_some(blocks.document_starts.as_ref())
            .flatten()
            .map(|starts| DocumentLayout::from_starts(seq_len, starts));
        match &self.labels {
            Labels::Mlm(masking) => {
                let masked = match self.masking_key {
                    MaskingKey::MicroBatch => masking.apply_seeded(&blocks.ids, seed, stream),
                    MaskingKey::Block => {
                        masking.apply_per_block(&blocks.ids, seq_len, &blocks.block_seq, seed)
                    }
                };
                LmBatch {
                    rows,
                    seq_len,
                    inputs: masked.inputs,
                    positions: masked.positions,
                    targets: masked.targets,
                    head_rows: self.head_rows,
                    documents,
                    sources: blocks.sources.clone(),
                }
            }
            Labels::Causal => {
                let predicted = rows * seq_len.saturating_sub(1);
                let mut positions = Vec::with_capacity(predicted);
                let mut targets = Vec::with_capacity(predicted);
                for row in 0..rows {
                    for column in 0..seq_len.saturating_sub(1) {
                        let index = row * seq_len + column;
                        let next_begins_a_document = documents
                            .as_ref()
                            .is_some_and(|layout| layout.begins_document(index + 1));
                        if next_begins_a_document {
                            continue;
                        }
                        positions.push(index as u32);
                        targets.push(blocks.ids[index + 1]);
                    }
                }
                LmBatch {
                    rows,
                    seq_len,
                    inputs: blocks.ids.clone(),
                    positions,
                    targets,
                    head_rows: self.head_rows,
                    documents,
                    sources: blocks.sources.clone(),
                }
            }
        }
    }
}

impl LmBatch {
    /// Input tokens the model reads (what throughput is measured in).
    pub fn input_tokens(&self) -> usize {
        self.rows * self.seq_len
    }

    /// Uploads the batch, padding the targets to a multiple of [`TARGET_BUCKET`] (and to at
    /// least `head_rows`) with zero-weight copies of position 0.
    pub fn to_tensors<B: Backend>(&self, device: &B::Device) -> BatchTensors<B> {
        let count = self.targets.len();
        let padded = (count.div_ceil(TARGET_BUCKET) * TARGET_BUCKET).max(self.head_rows);
        let padded_i32 = |values: &[u32]| {
            let mut out: Vec<i32> = values.iter().map(|value| *value as i32).collect();
            out.resize(padded, 0);
            out
        };
        let mut weights = vec![1.0f32; count];
        weights.resize(padded, 0.0);
        let inputs: Vec<i32> = self.inputs.iter().map(|value| *value as i32).collect();
        BatchTensors {
            input_ids: Tensor::from_data(
                TensorData::new(inputs, [self.rows, self.seq_len]),
                device,
            ),
            positions: Tensor::from_data(
                TensorData::new(padded_i32(&self.positions), [padded]),
                device,
            ),
            targets: Tensor::from_data(
                TensorData::new(padded_i32(&self.targets), [padded]),
                device,
            ),
            weights: Tensor::from_data(TensorData::new(weights, [padded]), device),
            count,
            documents: self
                .documents
                .as_ref()
                .map(|layout| layout.to_tensors(device)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> TokenizerInfo {
        TokenizerInfo::roberta("test", 100)
    }

    fn blocks() -> TokenBlocks {
        let mut blocks = TokenBlocks::new(4);
        blocks.push(&[0, 10, 11, 2], 0, 0);
        blocks.push(&[0, 20, 21, 22], 1, 0);
        blocks
    }

    #[test]
    fn causal_predicts_the_next_token_within_each_row() {
        let batch = Collator::new(Objective::Causal, &tokenizer(), 0.15)
            .unwrap()
            .collate(&blocks(), 0, 0);
        assert_eq!(batch.inputs, blocks().ids);
        assert_eq!(batch.positions, vec![0, 1, 2, 4, 5, 6]);
        assert_eq!(batch.targets, vec![10, 11, 2, 20, 21, 22]);
    }

    #[test]
    fn mlm_targets_are_the_original_ids() {
        let collator = Collator::new(Objective::Mlm, &tokenizer(), 0.5).unwrap();
        let batch = collator.collate(&blocks(), 3, 1);
        assert_eq!(batch.input_tokens(), 8);
        for (position, target) in batch.positions.iter().zip(&batch.targets) {
            assert_eq!(blocks().ids[*position as usize], *target);
        }
    }

    /// Seeded MLM batches of 32 x 128 tokens all fit the steady head, so a run sees one shape.
    #[test]
    fn mlm_batches_fit_the_steady_head() {
        let rows = steady_head_rows(32 * 128, 0.15);
        assert_eq!(
            rows, 768,
            "614 expected + 6 x 22.9, rounded up to the bucket"
        );
        let collator = Collator::new(Objective::Mlm, &tokenizer(), 0.15)
            .unwrap()
            .with_head_rows(rows);
        let mut blocks = TokenBlocks::new(128);
        for row in 0..32u32 {
            let ids: Vec<u32> = (0..128).map(|column| 5 + (row * 7 + column) % 90).collect();
            blocks.push(&ids, u64::from(row), 0);
        }
        for stream in 0..200 {
            let batch = collator.collate(&blocks, 1, stream);
            assert!(batch.targets.len() > 500 && batch.targets.len() < rows);
            let tensors = batch.to_tensors::<crate::CpuBackend>(&Default::default());
            assert_eq!(tensors.positions.dims(), [rows]);
            assert_eq!(tensors.count, batch.targets.len());
        }
        assert_eq!(
            steady_head_rows(10, 0.5),
            TARGET_BUCKET,
            "never above the tokens, rounded"
        );
    }

    #[test]
    fn only_mlm_on_a_gpu_pads_to_the_steady_head() {
        use crate::config::Preset;
        let mut config = TrainConfig::new("http://x", "out", Preset::Tiny);
        let steady = steady_head_rows(config.batch_size * config.seq_len, config.mlm_probability);
        let head_rows = |config: &TrainConfig| {
            Collator::from_train_config(config, &tokenizer())
                .unwrap()
                .collate(&blocks(), 0, 0)
                .head_rows
        };
        assert_eq!(head_rows(&config), 0, "CPU");
        config.device = DeviceKind::Cuda;
        assert_eq!(head_rows(&config), steady, "MLM on a GPU");
        config.objective = Objective::Causal;
        assert_eq!(head_rows(&config), 0, "causal has a fixed count");
    }

    #[test]
    fn document_attention_keeps_causal_targets_inside_documents() {
        let mut blocks = TokenBlocks::new(4).with_document_starts();
        blocks.push(&[0, 10, 2, 0], 0, 0);
        blocks.push_starts(&[0, 3]);
        blocks.push(&[20, 21, 2, 0], 1, 0);
        blocks.push_starts(&[3]);
        let collator = Collator::new(Objective::Causal, &tokenizer(), 0.15)
            .unwrap()
            .with_document_attention(true);
        let batch = collator.collate(&blocks, 0, 0);
        // `</s>` → `<s>` of the next document is not predicted; a row's first token never is.
        assert_eq!(batch.positions, vec![0, 1, 4, 5]);
        assert_eq!(batch.targets, vec![10, 2, 21, 2]);
        let layout = batch.documents.expect("a layout");
        assert_eq!(layout.positions, vec![0, 1, 2, 0, 0, 1, 2, 0]);
        let off = Collator::new(Objective::Causal, &tokenizer(), 0.15)
            .unwrap()
            .collate(&blocks, 0, 0);
        assert_eq!(off.positions.len(), 6);
        assert_eq!(off.documents, None);
    }

    #[test]
    fn mlm_needs_a_mask_token() {
        let mut tokenizer = tokenizer();
        tokenizer.mask_id = None;
        let error = Collator::new(Objective::Mlm, &tokenizer, 0.15).unwrap_err();
        assert!(error.to_string().contains("needs a mask token"), "{error}");
        assert!(Collator::new(Objective::Causal, &tokenizer, 0.15).is_ok());
    }

    #[test]
    fn targets_are_padded_to_the_bucket_with_zero_weights() {
        let batch = Collator::new(Objective::Causal, &tokenizer(), 0.15)
            .unwrap()
            .collate(&blocks(), 0, 0);
        let tensors = batch.to_tensors::<crate::CpuBackend>(&Default::default());
        assert_eq!(tensors.count, 6);
        assert_eq!(tensors.positions.dims(), [TARGET_BUCKET]);
        let weights: Vec<f32> = tensors.weights.into_data().to_vec().expect("f32 data");
        assert_eq!(weights.iter().sum::<f32>(), 6.0);
        assert!(weights[6..].iter().all(|weight| *weight == 0.0));
    }

    /// A block keyed by its `block_seq` is masked the same in any batch, at any position.
    #[test]
    fn block_keyed_masks_do_not_depend_on_the_batch() {
        let collator = Collator::new(Objective::Mlm, &tokenizer(), 0.3)
            .unwrap()
            .with_masking_key(MaskingKey::Block);
        let block = |sequence: u64| -> Vec<u32> {
            (0..64)
                .map(|column| 5 + (sequence as u32 * 13 + column) % 90)
                .collect()
        };
        let batch_of = |sequences: &[u64]| {
            let mut blocks = TokenBlocks::new(64);
            for sequence in sequences {
                blocks.push(&block(*sequence), *sequence, 0);
            }
            blocks
        };
        let together = collator.collate(&batch_of(&[10, 11, 12, 13]), 5, 0);
        let first = collator.collate(&batch_of(&[12, 10]), 5, 7);
        let second = collator.collate(&batch_of(&[13, 11]), 5, 8);
        let masked_row = |batch: &LmBatch, row: usize| -> (Vec<u32>, Vec<u32>) {
            let inputs = batch.inputs[row * 64..(row + 1) * 64].to_vec();
            let range = (row * 64) as u32..((row + 1) * 64) as u32;
            let targets = batch
                .positions
                .iter()
                .zip(&batch.targets)
                .filter(|(position, _)| range.contains(position))
                .map(|(position, target)| (position - range.start) * 1000 + target)
                .collect();
            (inputs, targets)
        };
        assert_eq!(masked_row(&together, 0), masked_row(&first, 1), "block 10");
        assert_eq!(masked_row(&together, 1), masked_row(&second, 1), "block 11");
        assert_eq!(masked_row(&together, 2), masked_row(&first, 0), "block 12");
        assert_eq!(masked_row(&together, 3), masked_row(&second, 0), "block 13");
        assert_ne!(masked_row(&together, 0), masked_row(&together, 1));
        let micro = Collator::new(Objective::Mlm, &tokenizer(), 0.3).unwrap();
        assert_ne!(
            micro.collate(&batch_of(&[12, 10]), 5, 7).inputs[..64],
            first.inputs[..64],
            "micro-batch keying draws other masks"
        );
    }
}
