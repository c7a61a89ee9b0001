//! Incremental decoding for causal models: a key/value cache, so that each new token costs one
//! position of work instead of a forward pass over the whole prefix.
//!
//! The training forward ([`Roberta::encode`]) computes every position of a block at once. Here the
//! same weights run on the new tokens only: each layer projects their queries, keys and values,
//! appends the keys and values to the cache, and lets the new queries attend to everything cached.
//! The arithmetic is the training layer's, step by step (the projections through
//! [`super::precision::linear`], the residual blocks through [`ResidualOutput::forward`]), so the
//! cached logits equal those of a full forward pass over the same tokens (tested below).
//!
//! Position ids come from [`position_ids`] alone, so a model whose positions start elsewhere
//! changes one function.

use burn::nn::Linear;
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Int, Tensor, TensorData};

use super::activation::gelu;
use super::precision::{compute, full, linear};
use super::{Roberta, RobertaLayer, MASKED_SCORE};

/// The position ids of `count` tokens that follow `start` tokens of a sequence whose first
/// position id is `first_position` (HF RoBERTa: `pad_token_id + 1`).
pub fn position_ids(first_position: usize, start: usize, count: usize) -> std::ops::Range<usize> {
    first_position + start..first_position + start + count
}

/// Keys and values of every layer for the tokens decoded so far: `[1, heads, len, head_dim]`.
pub struct KvCache<B: Backend> {
    layers: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>,
    len: usize,
}

impl<B: Backend> KvCache<B> {
    /// An empty cache for `model`.
    pub fn new(model: &Roberta<B>) -> Self {
        KvCache {
            layers: vec![None; model.layers.len()],
            len: 0,
        }
    }

    /// Tokens held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets every token (e.g. before decoding a shifted context).
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(|layer| *layer = None);
        self.len = 0;
    }
}

/// Feeds `ids`, the tokens after the `cache.len()` already cached, through `model` and returns
/// the logits `[vocab]` of the token that follows the last of them. `first_position` is the
/// position id of the sequence's first token.
///
/// The caller keeps `cache.len() + ids.len()` within the model's position table.
pub fn extend<B: Backend>(
    model: &Roberta<B>,
    first_position: usize,
    cache: &mut KvCache<B>,
    ids: &[u32],
    device: &B::Device,
) -> Tensor<B, 1> {
    let start = cache.len;
    let count = ids.len();
    let mut hidden = embed(model, first_position, start, ids, device);
    // New token i sits at `start + i` and sees every cached token and the new ones up to itself.
    let bias = (count > 1).then(|| {
        let future = Tensor::<B, 2, Bool>::tril_mask([count, start + count], start as i64, device);
        Tensor::<B, 2>::zeros([count, start + count], device)
            .mask_fill(future, MASKED_SCORE)
            .reshape([1, 1, count, start + count])
    });
    for (layer, cached) in model.layers.iter().zip(cache.layers.iter_mut()) {
        hidden = layer_step(layer, hidden, cached, bias.clone(), model);
    }
    cache.len += count;
    let [_, _, width] = hidden.dims();
    let last = hidden
        .slice([0..1, count - 1..count, 0..width])
        .reshape([1, width]);
    last_logits(model, last)
}

/// The logits `[vocab]` of the token after `ids`, from the training forward pass over all of
/// them (no cache): the reference the cached path must agree with.
pub fn full_context_logits<B: Backend>(
    model: &Roberta<B>,
    ids: &[u32],
    device: &B::Device,
) -> Tensor<B, 1> {
    let count = ids.len();
    let hidden = model.encode(int_row(ids, device));
    let [_, _, width] = hidden.dims();
    let last = hidden
        .slice([0..1, count - 1..count, 0..width])
        .reshape([1, width]);
    last_logits(model, last)
}

fn int_row<B: Backend>(ids: &[u32], device: &B::Device) -> Tensor<B, 2, Int> {
    let values: Vec<i64> = ids.iter().map(|id| i64::from(*id)).collect();
    Tensor::from_data(TensorData::new(values, [1, ids.len()]), device)
}

/// Word + position + token type embeddings of `ids` placed after `start` tokens, normalized.
fn embed<B: Backend>(
    model: &Roberta<B>,
    first_position: usize,
    start: usize,
    ids: &[u32],
    device: &B::Device,
) -> Tensor<B, 3> {
    let embeddings = &model.embeddings;
    let [_, width] = embeddings.word_embeddings.weight.dims();
    let words = embeddings.word_embeddings.forward(int_row(ids, device)); // [1, n, hidden]
    let positions = embeddings
        .position_embeddings
        .weight
        .val()
        .slice([position_ids(first_position, start, ids.len()), 0..width])
        .reshape([1, ids.len(), width]);
    let token_type = embeddings
        .token_type_embeddings
        .weight
        .val()
        .reshape([1, 1, width]);
    embeddings
        .layer_norm
        .forward(words + positions + token_type)
}

/// One encoder layer over the new tokens `[1, n, hidden]`, attending through the layer's cache.
fn layer_step<B: Backend>(
    layer: &RobertaLayer<B>,
    hidden: Tensor<B, 3>,
    cached: &mut Option<(Tensor<B, 4>, Tensor<B, 4>)>,
    bias: Option<Tensor<B, 4>>,
    model: &Roberta<B>,
) -> Tensor<B, 3> {
    let dtype = model.compute_dtype;
    let attention = &layer.attention;
    let [batch, count, width] = hidden.dims();
    let heads = attention.heads;
    let head_dim = width / heads;
    let input = compute(hidden.clone(), dtype);
    let project = |weights: &Linear<B>| {
        linear(weights, input.clone(), dtype)
            .reshape([batch, count, heads, head_dim])
            .swap_dims(1, 2) // [1, heads, n, head_dim]
    };
    let query = project(&attention.query).mul_scalar(1.0 / (head_dim as f64).sqrt());
    let (mut keys, mut values) = (project(&attention.key), project(&attention.value));
    if let Some((past_keys, past_values)) = cached.take() {
        keys = Tensor::cat(vec![past_keys, keys], 2);
        values = Tensor::cat(vec![past_values, values], 2);
    }
    *cached = Some((keys.clone(), values.clone()));

    let mut scores = full(query.matmul(keys.transpose())); // [1, heads, n, cached + n]
    if let Some(bias) = bias {
        scores = scores + bias;
    }
    let attended = compute(softmax(scores, 3), dtype)
        .matmul(values)
        .swap_dims(1, 2)
        .reshape([batch, count, width]);
    let attention_output = layer.attention_output.forward(attended, hidden, dtype);
    let intermediate = linear(&layer.intermediate, attention_output.clone(), dtype);
    layer
        .output
        .forward(gelu(full(intermediate)), attention_output, dtype)
}

fn last_logits<B: Backend>(model: &Roberta<B>, last: Tensor<B, 2>) -> Tensor<B, 1> {
    let word_embeddings = model.embeddings.word_embeddings.weight.val();
    let logits = model
        .lm_head
        .forward(last, word_embeddings, model.compute_dtype); // [1, vocab]
    let [_, vocab] = logits.dims();
    logits.reshape([vocab])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{RobertaConfig, FIRST_POSITION_ID};
    use crate::CpuBackend;

    type TestBackend = CpuBackend;

    fn values(tensor: Tensor<TestBackend, 1>) -> Vec<f32> {
        tensor.into_data().to_vec().expect("f32 data")
    }

    fn largest_difference(a: &[f32], b: &[f32]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn cached_logits_equal_a_full_forward_pass() {
        let _rng = crate::backend_rng_lock();
        let device = Default::default();
        let model = RobertaConfig::new(60, 32, 2, 4, 64, 20)
            .with_pad_id(Some(1))
            .with_causal(true)
            .with_dropout(0.0)
            .with_attention_dropout(0.0)
            .init::<TestBackend>(&device);
        let ids: Vec<u32> = vec![0, 17, 5, 42, 42, 9, 33, 58, 7, 21, 3, 12];
        let mut cache = KvCache::new(&model);
        // A prefill of several tokens, then one token at a time, then two at once.
        let mut fed = 0;
        for chunk in [4usize, 1, 1, 1, 2, 1, 2] {
            let logits = values(extend(
                &model,
                FIRST_POSITION_ID,
                &mut cache,
                &ids[fed..fed + chunk],
                &device,
            ));
            fed += chunk;
            assert_eq!(cache.len(), fed);
            let reference = values(full_context_logits(&model, &ids[..fed], &device));
            assert_eq!(logits.len(), 60);
            let difference = largest_difference(&logits, &reference);
            assert!(difference < 1e-4, "after {fed} tokens: {difference}");
        }
        cache.clear();
        assert!(cache.is_empty());
        let again = values(extend(
            &model,
            FIRST_POSITION_ID,
            &mut cache,
            &ids[..3],
            &device,
        ));
        let reference = values(full_context_logits(&model, &ids[..3], &device));
        assert!(largest_difference(&again, &reference) < 1e-4);
    }

    #[test]
    fn positions_continue_after_the_cached_tokens() {
        assert_eq!(position_ids(2, 0, 3), 2..5);
        assert_eq!(position_ids(2, 7, 1), 9..10);
    }
}
