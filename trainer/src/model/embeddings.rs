//! RoBERTa's input embeddings: word + position + token type, then LayerNorm and dropout.
//!
//! Layout and position numbering follow HF `RobertaEmbeddings`: position ids start at
//! `padding_idx + 1` (2 for RoBERTa's `<pad>`=1, so `max_positions = seq_len + 2`; 1 for BERT's
//! `[PAD]`=0; 0 for a tokenizer without a pad token, exported as `pad_token_id = -1`), and there
//! is a single token type. Blocks from the pipeline never contain padding, so every position of a
//! block is real and the position ids of a sequence of length `S` are simply
//! `offset..S + offset` — or, with document attention, restart at `offset` at every document.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Embedding, LayerNorm, LayerNormConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use super::dropout::dropout;
use super::init;

/// The first position id HF RoBERTa assigns to a real token (`padding_idx + 1`) with RoBERTa's
/// own tokenizer (`<pad>` = 1).
pub const FIRST_POSITION_ID: usize = 2;

/// The first position id HF RoBERTa assigns to a real token when the pad id is `pad_id`:
/// `pad_id + 1`, or 0 without a pad token (`pad_token_id = -1` in an export).
pub fn position_offset(pad_id: Option<usize>) -> usize {
    pad_id.map_or(0, |pad| pad + 1)
}

#[derive(Config, Debug)]
pub struct RobertaEmbeddingsConfig {
    pub vocab_size: usize,
    pub hidden: usize,
    /// Rows of the position table, `seq_len + position_offset(pad_id)` for blocks of `seq_len`.
    pub max_positions: usize,
    /// The pad id, if the tokenizer has one: its word vector and the position row before the
    /// first position start at zero, as in HF, and positions start after it.
    pub pad_id: Option<usize>,
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
    #[config(default = 0.1)]
    pub dropout: f64,
    #[config(default = 0.02)]
    pub initializer_range: f64,
}

#[derive(Module, Debug)]
pub struct RobertaEmbeddings<B: Backend> {
    pub word_embeddings: Embedding<B>,
    pub position_embeddings: Embedding<B>,
    pub token_type_embeddings: Embedding<B>,
    pub layer_norm: LayerNorm<B>,
    pub dropout: Dropout,
    /// The position id of a sequence's first token (see [`position_offset`]).
    pub position_offset: usize,
}

impl RobertaEmbeddingsConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> RobertaEmbeddings<B> {
        let std = self.initializer_range;
        // HF's position table uses the same padding_idx, the row before the first position.
        let position_offset = position_offset(self.pad_id);
        let position_padding = position_offset.checked_sub(1);
        RobertaEmbeddings {
            word_embeddings: init::embedding(
                self.vocab_size,
                self.hidden,
                std,
                self.pad_id,
                device,
            ),
            position_embeddings: init::embedding(
                self.max_positions,
                self.hidden,
                std,
                position_padding,
                device,
            ),
            token_type_embeddings: init::embedding(1, self.hidden, std, None, device),
            layer_norm: LayerNormConfig::new(self.hidden)
                .with_epsilon(self.layer_norm_eps)
                .init(device),
            dropout: DropoutConfig::new(self.dropout).init(),
            position_offset,
        }
    }
}

impl<B: Backend> RobertaEmbeddings<B> {
    /// Embeds `input_ids` `[batch, seq]`; `seq + position_offset` must not exceed
    /// `max_positions`.
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [_, seq_len] = input_ids.dims();
        let [_, hidden] = self.word_embeddings.weight.dims();
        // Every block is unpadded, so the position lookup is a fixed slice; slicing avoids a
        // gather (and its scatter in the backward pass) per step.
        let offset = self.position_offset;
        let positions = self
            .position_embeddings
            .weight
            .val()
            .slice([offset..offset + seq_len, 0..hidden])
            .reshape([1, seq_len, hidden]); // [1, seq, hidden]
        self.embed(input_ids, positions)
    }

    /// Embeds `input_ids` `[batch, seq]` at `positions` `[batch, seq]`, each counted from a
    /// sequence's first token (document attention restarts them at every document).
    pub fn forward_at(
        &self,
        input_ids: Tensor<B, 2, Int>,
        positions: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
        let position_ids = positions.add_scalar(self.position_offset as i64);
        let positions = self.position_embeddings.forward(position_ids); // [batch, seq, hidden]
        self.embed(input_ids, positions)
    }

    /// Word + position + token type, LayerNorm, dropout.
    fn embed(&self, input_ids: Tensor<B, 2, Int>, positions: Tensor<B, 3>) -> Tensor<B, 3> {
        let [_, hidden] = self.word_embeddings.weight.dims();
        let words = self.word_embeddings.forward(input_ids); // [batch, seq, hidden]
        let token_type = self
            .token_type_embeddings
            .weight
            .val()
            .reshape([1, 1, hidden]); // [1, 1, hidden]

        let embeddings = words + positions + token_type; // [batch, seq, hidden]
        dropout(&self.dropout, self.layer_norm.forward(embeddings))
    }
}
