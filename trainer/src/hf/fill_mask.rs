//! `fill-mask`: the most likely tokens at each `<mask>` of a text, shaped like the output of
//! `transformers.pipeline("fill-mask")`.
//!
//! As the pipeline does: probabilities are the softmax over the whole vocabulary at the mask;
//! `token_str` decodes the token alone (special tokens kept); `sequence` decodes the input with
//! the mask replaced and padding removed, skipping special tokens when there is one mask and
//! keeping them (so the other masks stay visible) when there are several. One mask gives a list
//! of predictions, several give one list per mask.

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::error::HfError;
use super::inference::logits_at;
use super::tokenizer::HfTokenizer;
use crate::model::Roberta;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MaskPrediction {
    pub score: f64,
    pub token: u32,
    pub token_str: String,
    pub sequence: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FillMaskOutput {
    OneMask(Vec<MaskPrediction>),
    SeveralMasks(Vec<Vec<MaskPrediction>>),
}

pub fn fill_mask<B: Backend>(
    model: &Roberta<B>,
    tokenizer: &HfTokenizer,
    text: &str,
    top_k: usize,
    device: &B::Device,
) -> Result<FillMaskOutput, HfError> {
    let special = tokenizer.info()?;
    let mask_id = special
        .mask_id
        .ok_or_else(|| HfError::Input("the model's tokenizer has no mask token to fill".into()))?;
    let ids = tokenizer.encode(text)?;
    let masks: Vec<u32> = (0..ids.len() as u32)
        .filter(|index| ids[*index as usize] == mask_id)
        .collect();
    if masks.is_empty() {
        let mask = tokenizer.decode(&[mask_id], false)?;
        return Err(HfError::Input(format!(
            "no mask token ({mask}) found in the input {text:?}"
        )));
    }
    let logits = logits_at(model, &ids, &masks, device)?;
    let vocab = logits.len() / masks.len();
    let one_mask = masks.len() == 1;
    let mut per_mask = Vec::with_capacity(masks.len());
    for (row, mask) in logits.chunks_exact(vocab).zip(&masks) {
        let mut predictions = Vec::with_capacity(top_k);
        for (token, score) in top_probabilities(row, top_k) {
            let mut filled: Vec<u32> = ids.clone();
            filled[*mask as usize] = token;
            filled.retain(|id| Some(*id) != special.pad_id);
            predictions.push(MaskPrediction {
                score,
                token,
                token_str: tokenizer.decode(&[token], false)?,
                sequence: tokenizer.decode(&filled, one_mask)?,
            });
        }
        per_mask.push(predictions);
    }
    Ok(if one_mask {
        FillMaskOutput::OneMask(per_mask.remove(0))
    } else {
        FillMaskOutput::SeveralMasks(per_mask)
    })
}

/// The `k` most probable tokens of a row of logits with their softmax probabilities, most
/// probable first (ties: lower id first).
fn top_probabilities(logits: &[f32], k: usize) -> Vec<(u32, f64)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let total: f64 = logits.iter().map(|l| (*l as f64 - max).exp()).sum();
    let mut ranked: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(token, logit)| (token as u32, (*logit as f64 - max).exp() / total))
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked.truncate(k);
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_by_probability_and_normalizes() {
        let top = top_probabilities(&[0.0, 2.0, 1.0, 2.0], 3);
        let ids: Vec<u32> = top.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, vec![1, 3, 2]);
        let total = 1.0 + 2.0 * 2f64.exp() + 1f64.exp();
        assert!((top[0].1 - 2f64.exp() / total).abs() < 1e-12);
    }

    #[test]
    fn one_mask_serializes_as_a_flat_list() {
        let prediction = MaskPrediction {
            score: 0.5,
            token: 7,
            token_str: " x".into(),
            sequence: "a x".into(),
        };
        let one = serde_json::to_value(FillMaskOutput::OneMask(vec![prediction.clone()]))
            .expect("encodes");
        assert_eq!(one[0]["token_str"], " x");
        let several = serde_json::to_value(FillMaskOutput::SeveralMasks(vec![vec![prediction]]))
            .expect("encodes");
        assert_eq!(several[0][0]["token"], 7);
    }
}
