//! RoBERTa's input embeddings: word + position + token type, then LayerNorm and dropout.
//!
//! Layout and position numbering follow HF `RobertaEmbeddings`: position ids start at
//! `padding_idx + 1 = 2` (so `max_positions = seq_len + 2`), and there is a single token type.
//! Blocks from the pipeline never contain padding, so every position of a block is real and the
//! position ids of a sequence of length `S` are simply `2..S + 2`.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Embedding, LayerNorm, LayerNormConfig};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use super::dropout::dropout;
use super::init;

/// The first position id HF RoBERTa assigns to a real token (`padding_idx + 1`).
pub const FIRST_POSITION_ID: usize = 2;

#[derive(Config, Debug)]
pub struct RobertaEmbeddingsConfig {
    pub vocab_size: usize,
    pub hidden: usize,
    /// Rows of the position table, `seq_len + FIRST_POSITION_ID` for blocks of `seq_len`.
    pub max_positions: usize,
    /// The `<pad>` id: its word vector and position row 1 start at zero, as in HF.
    pub pad_id: usize,
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
}

impl RobertaEmbeddingsConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> RobertaEmbeddings<B> {
        let std = self.initializer_range;
        // HF's position table uses padding_idx = 1 as well (`FIRST_POSITION_ID - 1`).
        let position_padding = Some(FIRST_POSITION_ID - 1);
        RobertaEmbeddings {
            word_embeddings: init::embedding(
                self.vocab_size,
                self.hidden,
                std,
                Some(self.pad_id),
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
        }
    }
}

impl<B: Backend> RobertaEmbeddings<B> {
    /// Embeds `input_ids` `[batch, seq]`; `seq + 2` must not exceed `max_positions`.
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [_, seq_len] = input_ids.dims();
        let [_, hidden] = self.word_embeddings.weight.dims();
        let words = self.word_embeddings.forward(input_ids); // [batch, seq, hidden]

        // Every block is unpadded, so the position and token-type lookups are fixed slices;
        // slicing avoids a gather (and its scatter in the backward pass) per step.
        let positions = self
            .position_embeddings
            .weight
            .val()
            .slice([FIRST_POSITION_ID..FIRST_POSITION_ID + seq_len, 0..hidden])
            .reshape([1, seq_len, hidden]); // [1, seq, hidden]
        let token_type = self
            .token_type_embeddings
            .weight
            .val()
            .reshape([1, 1, hidden]); // [1, 1, hidden]

        let embeddings = words + positions + token_type; // [batch, seq, hidden]
        dropout(&self.dropout, self.layer_norm.forward(embeddings))
    }
}
