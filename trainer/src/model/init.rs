//! Parameter initialization as HuggingFace's `RobertaPreTrainedModel._init_weights` does it.
//!
//! burn's defaults differ (Kaiming-uniform linears with a random bias, N(0, 1) embeddings), and
//! the initial scale matters for how fast a small model starts learning, so every weight of the
//! model is created through these helpers: N(0, `std`) weights, zero biases.

use burn::module::Param;
use burn::nn::{Embedding, Linear};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};

/// A `[rows, columns]` matrix drawn from N(0, std).
pub(crate) fn normal_matrix<B: Backend>(
    rows: usize,
    columns: usize,
    std: f64,
    device: &B::Device,
) -> Tensor<B, 2> {
    Tensor::random([rows, columns], Distribution::Normal(0.0, std), device)
}

/// A linear layer with N(0, std) weights and a zero bias.
///
/// burn stores the weight as `[d_input, d_output]` (HF: `[out, in]`); an export transposes it.
pub(crate) fn linear<B: Backend>(
    d_input: usize,
    d_output: usize,
    std: f64,
    device: &B::Device,
) -> Linear<B> {
    Linear {
        weight: Param::from_tensor(normal_matrix(d_input, d_output, std, device)),
        bias: Some(Param::from_tensor(Tensor::zeros([d_output], device))),
    }
}

/// An embedding table with N(0, std) rows; the `padding_row`, if any, starts at zero as in HF.
pub(crate) fn embedding<B: Backend>(
    rows: usize,
    width: usize,
    std: f64,
    padding_row: Option<usize>,
    device: &B::Device,
) -> Embedding<B> {
    let mut weight = normal_matrix(rows, width, std, device);
    if let Some(row) = padding_row.filter(|row| *row < rows) {
        weight = weight.slice_assign([row..row + 1, 0..width], Tensor::zeros([1, width], device));
    }
    Embedding {
        weight: Param::from_tensor(weight),
    }
}
