//! One post-LayerNorm transformer encoder layer, laid out like HF `RobertaLayer`.
//!
//! ```text
//! attention.self {query, key, value}  -> softmax(q k^T / sqrt(d)) -> dropout -> x v
//! attention.output {dense, LayerNorm} -> dense -> dropout -> + input -> LayerNorm
//! intermediate.dense                  -> GELU (erf)
//! output {dense, LayerNorm}           -> dense -> dropout -> + attention output -> LayerNorm
//! ```
//!
//! burn's `TransformerEncoder` is not used: its feed-forward block has a dropout after the GELU
//! that HF does not have, and keeping the exact HF structure lets weights map one-to-one.
//!
//! Under mixed precision (see [`super::precision`]) the products run in `compute_dtype`; the
//! residual stream between layers, softmax, LayerNorm and GELU stay in f32.

use burn::config::Config;
use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, LayerNorm, LayerNormConfig, Linear};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Tensor};

use super::activation::gelu;
use super::dropout::dropout;
use super::init;
use super::precision::{compute, full, linear};

#[derive(Config, Debug)]
pub struct RobertaLayerConfig {
    pub hidden: usize,
    pub heads: usize,
    pub intermediate: usize,
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
    /// Dropout on the residual branches (HF `hidden_dropout_prob`).
    #[config(default = 0.1)]
    pub dropout: f64,
    /// Dropout on the attention probabilities (HF `attention_probs_dropout_prob`).
    #[config(default = 0.1)]
    pub attention_dropout: f64,
    #[config(default = 0.02)]
    pub initializer_range: f64,
}

/// Multi-head scaled dot-product self-attention (HF `RobertaSelfAttention`).
#[derive(Module, Debug)]
pub struct SelfAttention<B: Backend> {
    pub query: Linear<B>,
    pub key: Linear<B>,
    pub value: Linear<B>,
    pub dropout: Dropout,
    pub heads: usize,
}

/// `LayerNorm(dropout(dense(x)) + residual)`: HF's `RobertaSelfOutput` and `RobertaOutput`.
#[derive(Module, Debug)]
pub struct ResidualOutput<B: Backend> {
    pub dense: Linear<B>,
    pub layer_norm: LayerNorm<B>,
    pub dropout: Dropout,
}

#[derive(Module, Debug)]
pub struct RobertaLayer<B: Backend> {
    pub attention: SelfAttention<B>,
    pub attention_output: ResidualOutput<B>,
    pub intermediate: Linear<B>,
    pub output: ResidualOutput<B>,
}

impl RobertaLayerConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> RobertaLayer<B> {
        let std = self.initializer_range;
        let hidden = self.hidden;
        let residual_output = |d_input: usize| ResidualOutput {
            dense: init::linear(d_input, hidden, std, device),
            layer_norm: LayerNormConfig::new(hidden)
                .with_epsilon(self.layer_norm_eps)
                .init(device),
            dropout: DropoutConfig::new(self.dropout).init(),
        };
        RobertaLayer {
            attention: SelfAttention {
                query: init::linear(hidden, hidden, std, device),
                key: init::linear(hidden, hidden, std, device),
                value: init::linear(hidden, hidden, std, device),
                dropout: DropoutConfig::new(self.attention_dropout).init(),
                heads: self.heads,
            },
            attention_output: residual_output(hidden),
            intermediate: init::linear(hidden, self.intermediate, std, device),
            output: residual_output(self.intermediate),
        }
    }
}

impl<B: Backend> SelfAttention<B> {
    /// `attention_bias` is added to the scores before the softmax: `[1, 1, seq, seq]` with 0
    /// where attending is allowed and a large negative value elsewhere (the causal mask).
    pub fn forward(
        &self,
        hidden: Tensor<B, 3>,
        attention_bias: Option<Tensor<B, 4>>,
        compute_dtype: FloatDType,
    ) -> Tensor<B, 3> {
        let [batch, seq_len, width] = hidden.dims();
        let head_dim = width / self.heads;
        let split_heads = |projected: Tensor<B, 3>| {
            projected
                .reshape([batch, seq_len, self.heads, head_dim])
                .swap_dims(1, 2) // [batch, heads, seq, head_dim]
        };

        // Scaling q instead of the scores is the same math on a tensor seq/head_dim times smaller.
        let scale = 1.0 / (head_dim as f64).sqrt();
        // One cast of the input serves the three projections.
        let hidden = compute(hidden, compute_dtype);
        let project = |layer: &Linear<B>| split_heads(linear(layer, hidden.clone(), compute_dtype));
        let query = project(&self.query).mul_scalar(scale);
        let key = project(&self.key);
        let value = project(&self.value);

        let mut scores = full(query.matmul(key.transpose())); // [batch, heads, seq, seq]
        if let Some(bias) = attention_bias {
            scores = scores + bias;
        }
        let probabilities = dropout(&self.dropout, softmax(scores, 3));
        compute(probabilities, compute_dtype)
            .matmul(value) // [batch, heads, seq, head_dim]
            .swap_dims(1, 2) // [batch, seq, heads, head_dim]
            .reshape([batch, seq_len, width])
    }
}

impl<B: Backend> ResidualOutput<B> {
    /// `hidden` may be in the compute dtype; `residual` and the result are f32.
    pub fn forward(
        &self,
        hidden: Tensor<B, 3>,
        residual: Tensor<B, 3>,
        compute_dtype: FloatDType,
    ) -> Tensor<B, 3> {
        let projected = full(linear(&self.dense, hidden, compute_dtype));
        self.layer_norm
            .forward(dropout(&self.dropout, projected) + residual)
    }
}

impl<B: Backend> RobertaLayer<B> {
    /// `[batch, seq, hidden]` to `[batch, seq, hidden]`.
    pub fn forward(
        &self,
        hidden: Tensor<B, 3>,
        attention_bias: Option<Tensor<B, 4>>,
        compute_dtype: FloatDType,
    ) -> Tensor<B, 3> {
        let attended = self
            .attention
            .forward(hidden.clone(), attention_bias, compute_dtype);
        let attention_output = self
            .attention_output
            .forward(attended, hidden, compute_dtype);
        let intermediate = linear(&self.intermediate, attention_output.clone(), compute_dtype);
        let expanded = gelu(full(intermediate)); // [batch, seq, ffn]
        self.output
            .forward(expanded, attention_output, compute_dtype)
    }
}
