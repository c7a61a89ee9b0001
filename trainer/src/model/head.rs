//! The masked-LM head, laid out like HF `RobertaLMHead`.
//!
//! `dense(h, h) -> GELU -> LayerNorm -> decoder`, where the decoder's weight is the word
//! embedding matrix itself (tied, as HF ties `lm_head.decoder.weight` to
//! `embeddings.word_embeddings.weight`) and only its bias (`lm_head.bias`) belongs to the head.
//! The same head serves the causal objective, as in HF `RobertaForCausalLM`.
//!
//! Under mixed precision the two products (dense, decoder) run in the compute dtype; GELU,
//! LayerNorm and the logits the loss reads are f32.

use burn::config::Config;
use burn::module::{Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Tensor};

use super::activation::gelu;
use super::init;
use super::precision::{compute, full, linear};

#[derive(Config, Debug)]
pub struct LmHeadConfig {
    pub hidden: usize,
    pub vocab_size: usize,
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
    #[config(default = 0.02)]
    pub initializer_range: f64,
}

#[derive(Module, Debug)]
pub struct LmHead<B: Backend> {
    pub dense: Linear<B>,
    pub layer_norm: LayerNorm<B>,
    /// The decoder's bias, `[vocab]`; its weight is borrowed from the word embeddings.
    pub bias: Param<Tensor<B, 1>>,
}

impl LmHeadConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> LmHead<B> {
        LmHead {
            dense: init::linear(self.hidden, self.hidden, self.initializer_range, device),
            layer_norm: LayerNormConfig::new(self.hidden)
                .with_epsilon(self.layer_norm_eps)
                .init(device),
            bias: Param::from_tensor(Tensor::zeros([self.vocab_size], device)),
        }
    }
}

impl<B: Backend> LmHead<B> {
    /// Logits `[tokens, vocab]` for the hidden states `[tokens, hidden]` of the positions to
    /// predict, given the word embedding matrix `[vocab, hidden]`. The logits are f32.
    pub fn forward(
        &self,
        hidden: Tensor<B, 2>,
        word_embeddings: Tensor<B, 2>,
        compute_dtype: FloatDType,
    ) -> Tensor<B, 2> {
        let dense = full(linear(&self.dense, hidden, compute_dtype));
        let transformed = self.layer_norm.forward(gelu(dense)); // [tokens, hidden]
        let transformed = compute(transformed, compute_dtype);
        let decoder = compute(word_embeddings, compute_dtype).transpose();
        let logits = full(transformed.matmul(decoder)); // [tokens, vocab]
        logits + self.bias.val().unsqueeze::<2>() // [1, vocab] broadcast
    }
}
