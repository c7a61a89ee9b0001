//! RoBERTa in burn, with HuggingFace's parameter layout so that an export to
//! `RobertaForMaskedLM` / `RobertaForCausalLM` is a matter of renaming (and transposing linear
//! weights, which burn stores as `[in, out]`):
//!
//! | here                                   | transformers                                  |
//! |----------------------------------------|-----------------------------------------------|
//! | `embeddings.*`                         | `roberta.embeddings.*` (`layer_norm` = `LayerNorm`) |
//! | `layers.N.attention.{query,key,value}` | `roberta.encoder.layer.N.attention.self.*`    |
//! | `layers.N.attention_output.*`          | `roberta.encoder.layer.N.attention.output.*`  |
//! | `layers.N.intermediate`                | `roberta.encoder.layer.N.intermediate.dense`  |
//! | `layers.N.output.*`                    | `roberta.encoder.layer.N.output.*`            |
//! | `lm_head.{dense,layer_norm,bias}`      | `lm_head.{dense,layer_norm,bias}` (decoder tied) |
//!
//! The head runs only on the positions that carry a label (about 15 % of them for MLM): the
//! encoder output is flattened to `[batch * seq, hidden]` and those rows are selected first,
//! which makes the vocabulary projection, the softmax and their gradients several times cheaper.
//!
//! `precision = "bf16"` runs the matrix products in bf16 over f32 parameters: see [`precision`].

mod activation;
pub mod decode;
pub mod documents;
pub mod dropout;
mod embeddings;
mod head;
mod init;
mod layer;
pub mod precision;

pub use activation::gelu;
pub use documents::{DocumentLayout, DocumentTensors};
pub use embeddings::{
    position_offset, RobertaEmbeddings, RobertaEmbeddingsConfig, FIRST_POSITION_ID,
};
pub use head::{LmHead, LmHeadConfig};
pub use layer::{ResidualOutput, RobertaLayer, RobertaLayerConfig, SelfAttention};

use burn::config::Config;
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, FloatDType, Int, Tensor};
use flightlm_shared::TokenizerInfo;

use crate::config::{Objective, Precision, TrainConfig};

/// What is added to masked-out attention scores; finite so a fully masked row cannot turn into
/// NaN, and far below any real score.
pub(crate) const MASKED_SCORE: f64 = -1e9;

#[derive(Config, Debug)]
pub struct RobertaConfig {
    pub vocab_size: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    /// HF `max_position_embeddings`: the longest sequence plus [`position_offset`]`(pad_id)`.
    pub max_positions: usize,
    /// The tokenizer's pad id, if it has one (HF's `pad_token_id`; see [`position_offset`]).
    pub pad_id: Option<usize>,
    /// Causal attention (HF `is_decoder=True`) instead of bidirectional.
    #[config(default = false)]
    pub causal: bool,
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
    #[config(default = 0.1)]
    pub dropout: f64,
    #[config(default = 0.1)]
    pub attention_dropout: f64,
    #[config(default = 0.02)]
    pub initializer_range: f64,
    /// How the forward pass computes; the parameters are f32 either way.
    #[config(default = "Precision::F32")]
    pub precision: Precision,
}

#[derive(Module, Debug)]
pub struct Roberta<B: Backend> {
    pub embeddings: RobertaEmbeddings<B>,
    pub layers: Vec<RobertaLayer<B>>,
    pub lm_head: LmHead<B>,
    pub causal: bool,
    /// The dtype of the matrix products (f32, or bf16 under mixed precision). Not a parameter:
    /// a checkpoint loaded into this model computes in the precision the run asks for.
    pub compute_dtype: FloatDType,
}

impl RobertaConfig {
    /// The model a training run asks for, sized by the tokenizer it reads.
    pub fn from_train_config(config: &TrainConfig, tokenizer: &TokenizerInfo) -> Self {
        let shape = config.model;
        let pad_id = tokenizer.pad_id.map(|pad| pad as usize);
        RobertaConfig::new(
            tokenizer.vocab_size as usize,
            shape.hidden,
            shape.layers,
            shape.heads,
            shape.intermediate,
            config.seq_len + position_offset(pad_id),
        )
        .with_pad_id(pad_id)
        .with_causal(config.objective == Objective::Causal)
        .with_dropout(config.dropout)
        .with_attention_dropout(config.dropout)
        .with_precision(config.precision)
    }

    pub fn init<B: Backend>(&self, device: &B::Device) -> Roberta<B> {
        let embeddings =
            RobertaEmbeddingsConfig::new(self.vocab_size, self.hidden, self.max_positions)
                .with_pad_id(self.pad_id)
                .with_layer_norm_eps(self.layer_norm_eps)
                .with_dropout(self.dropout)
                .with_initializer_range(self.initializer_range)
                .init(device);
        let layer = RobertaLayerConfig::new(self.hidden, self.heads, self.intermediate)
            .with_layer_norm_eps(self.layer_norm_eps)
            .with_dropout(self.dropout)
            .with_attention_dropout(self.attention_dropout)
            .with_initializer_range(self.initializer_range);
        let layers = (0..self.layers).map(|_| layer.init(device)).collect();
        let lm_head = LmHeadConfig::new(self.hidden, self.vocab_size)
            .with_layer_norm_eps(self.layer_norm_eps)
            .with_initializer_range(self.initializer_range)
            .init(device);
        Roberta {
            embeddings,
            layers,
            lm_head,
            causal: self.causal,
            compute_dtype: self.precision.compute_dtype(),
        }
    }
}

impl<B: Backend> Roberta<B> {
    /// The encoder's output for `input_ids` `[batch, seq]`: `[batch, seq, hidden]`.
    pub fn encode(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.encode_documents(input_ids, None)
    }

    /// [`Roberta::encode`], with attention kept inside each document and positions restarted at
    /// each one when `documents` is given.
    pub fn encode_documents(
        &self,
        input_ids: Tensor<B, 2, Int>,
        documents: Option<DocumentTensors<B>>,
    ) -> Tensor<B, 3> {
        let [_, seq_len] = input_ids.dims();
        let device = input_ids.device();
        let causal = self.causal.then(|| causal_bias::<B>(seq_len, &device));
        let (mut hidden, attention_bias) = match documents {
            None => (self.embeddings.forward(input_ids), causal),
            Some(documents) => (
                self.embeddings
                    .forward_at(input_ids, documents.positions.clone()),
                Some(documents.attention_bias(causal)),
            ),
        };
        for layer in &self.layers {
            hidden = layer.forward(hidden, attention_bias.clone(), self.compute_dtype);
        }
        hidden
    }

    /// Logits `[targets, vocab]` at `positions`, flat indices into `[batch * seq]`.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        positions: Tensor<B, 1, Int>,
    ) -> Tensor<B, 2> {
        self.forward_documents(input_ids, positions, None)
    }

    /// [`Roberta::forward`] with [`Roberta::encode_documents`]' document attention.
    pub fn forward_documents(
        &self,
        input_ids: Tensor<B, 2, Int>,
        positions: Tensor<B, 1, Int>,
        documents: Option<DocumentTensors<B>>,
    ) -> Tensor<B, 2> {
        let [batch, seq_len] = input_ids.dims();
        let hidden = self.encode_documents(input_ids, documents);
        let [_, _, width] = hidden.dims();
        let selected = hidden
            .reshape([batch * seq_len, width])
            .select(0, positions); // [targets, hidden]
        let word_embeddings = self.embeddings.word_embeddings.weight.val();
        self.lm_head
            .forward(selected, word_embeddings, self.compute_dtype)
    }
}

/// `[1, 1, seq, seq]`: 0 on and below the diagonal, `MASKED_SCORE` above (future positions).
fn causal_bias<B: Backend>(seq_len: usize, device: &B::Device) -> Tensor<B, 4> {
    // burn's `tril_mask` is true outside the lower triangle, i.e. exactly at future positions.
    let future = Tensor::<B, 2, Bool>::tril_mask([seq_len, seq_len], 0, device);
    Tensor::<B, 2>::zeros([seq_len, seq_len], device)
        .mask_fill(future, MASKED_SCORE)
        .reshape([1, 1, seq_len, seq_len])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuBackend;
    use burn::tensor::TensorData;

    type TestBackend = CpuBackend;

    fn config(causal: bool) -> RobertaConfig {
        RobertaConfig::new(50, 16, 2, 2, 32, 10)
            .with_pad_id(Some(1))
            .with_causal(causal)
            .with_dropout(0.0)
            .with_attention_dropout(0.0)
    }

    fn ids(batch: usize, seq_len: usize) -> Tensor<TestBackend, 2, Int> {
        let values: Vec<i64> = (0..batch * seq_len).map(|i| 5 + (i % 40) as i64).collect();
        Tensor::from_data(
            TensorData::new(values, [batch, seq_len]),
            &Default::default(),
        )
    }

    #[test]
    fn shapes_follow_the_selected_positions() {
        let _rng = crate::backend_rng_lock();
        let device = Default::default();
        let model = config(false).init::<TestBackend>(&device);
        let hidden = model.encode(ids(3, 8));
        assert_eq!(hidden.dims(), [3, 8, 16]);
        let positions = Tensor::from_data(TensorData::new(vec![0i64, 9, 23], [3]), &device);
        let logits = model.forward(ids(3, 8), positions);
        assert_eq!(logits.dims(), [3, 50]);
        assert_eq!(model.embeddings.position_embeddings.weight.dims(), [10, 16]);
    }

    #[test]
    fn initialization_follows_hf() {
        let _rng = crate::backend_rng_lock();
        let device = Default::default();
        let model = config(false).init::<TestBackend>(&device);
        let words = model.embeddings.word_embeddings.weight.val();
        let pad_row: Vec<f32> = words
            .clone()
            .slice([1..2, 0..16])
            .into_data()
            .to_vec()
            .expect("f32 data");
        assert!(pad_row.iter().all(|value| *value == 0.0));
        let values: Vec<f32> = words.into_data().to_vec().expect("f32 data");
        let variance = values.iter().map(|v| v * v).sum::<f32>() / values.len() as f32;
        assert!(
            (variance.sqrt() - 0.02).abs() < 0.004,
            "std {}",
            variance.sqrt()
        );
        let bias: Vec<f32> = model.layers[0]
            .attention
            .query
            .bias
            .as_ref()
            .expect("bias")
            .val()
            .into_data()
            .to_vec()
            .expect("f32 data");
        assert!(bias.iter().all(|value| *value == 0.0));
    }

    /// Largest change of the first 7 positions' outputs when only the 8th input token changes.
    fn prefix_change(causal: bool) -> f32 {
        let device = Default::default();
        let model = config(causal).init::<TestBackend>(&device);
        let mut ids: Vec<i64> = (0..8).map(|i| 5 + i).collect();
        let original =
            Tensor::<TestBackend, 2, Int>::from_data(TensorData::new(ids.clone(), [1, 8]), &device);
        ids[7] = 44;
        let changed = Tensor::from_data(TensorData::new(ids, [1, 8]), &device);
        let prefix = |ids| -> Vec<f32> {
            model
                .encode(ids)
                .slice([0..1, 0..7, 0..16])
                .into_data()
                .to_vec()
                .expect("f32 data")
        };
        let (before, after) = (prefix(original), prefix(changed));
        before
            .iter()
            .zip(&after)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max)
    }

    #[test]
    fn causal_attention_ignores_the_future() {
        let _rng = crate::backend_rng_lock();
        assert!(
            prefix_change(true) < 1e-5,
            "causal: earlier positions moved"
        );
        assert!(
            prefix_change(false) > 1e-4,
            "bidirectional: earlier positions see the change"
        );
    }
}
