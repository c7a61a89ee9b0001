//! `score`: loss and perplexity of a model on each line of a text file.
//!
//! Causal models are scored on every next token of `<s> line </s>` (what `transformers` returns
//! for `labels=input_ids`). Masked models are scored on the tokens the training collator would
//! mask (15 %, 80/10/10, never special tokens) with a fixed seed, line `n` masked with the
//! generator for `(seed, n)`, so the figure is reproducible and comparable with `eval_loss`.
//! Blank lines and lines that draw no masked token are reported with nothing scored.

use burn::tensor::backend::Backend;
use flightlm_shared::TokenizerInfo;
use serde::Serialize;

use super::error::HfError;
use super::inference::{log_probability, logits_at};
use super::tokenizer::HfTokenizer;
use crate::config::Objective;
use crate::data::masking::MlmMasking;
use crate::model::Roberta;

/// What is scored and how.
#[derive(Clone, Debug)]
pub struct ScoreSettings {
    pub objective: Objective,
    pub seed: u64,
    pub mlm_probability: f64,
    /// Longest input the model reads; longer lines are cut to this many tokens.
    pub max_tokens: usize,
    /// Report each line's model input and labels, so another implementation can recompute it.
    pub show_inputs: bool,
}

/// What the model read for one line and what it was scored on, in `transformers`' terms: the loss
/// is `model(input_ids, labels=labels).loss` (labels are -100 where nothing is predicted; a
/// causal model's labels are its inputs, shifted inside the model).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScoredInputs {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
}

/// One line's result.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LineScore {
    /// 1-based line number in the file.
    pub line: usize,
    /// Tokens read, special tokens included.
    pub tokens: usize,
    /// Predictions the loss averages over.
    pub scored: usize,
    /// Mean cross-entropy in nats; `None` when nothing was scored.
    pub loss: Option<f64>,
    pub perplexity: Option<f64>,
    /// The line was longer than the model reads and was cut.
    pub truncated: bool,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<ScoredInputs>,
}

/// The whole file: the mean over every scored prediction of every line.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScoreTotal {
    pub lines: usize,
    pub scored: usize,
    pub loss: Option<f64>,
    pub perplexity: Option<f64>,
}

pub fn score_line<B: Backend>(
    model: &Roberta<B>,
    tokenizer: &HfTokenizer,
    special: &TokenizerInfo,
    settings: &ScoreSettings,
    index: usize,
    text: &str,
    device: &B::Device,
) -> Result<(LineScore, f64), HfError> {
    let mut ids = if text.trim().is_empty() {
        Vec::new()
    } else {
        tokenizer.encode(text)?
    };
    let truncated = ids.len() > settings.max_tokens;
    ids.truncate(settings.max_tokens);
    let (inputs, positions, targets) = match settings.objective {
        Objective::Causal => {
            let predicted = ids.len().saturating_sub(1) as u32;
            (
                ids.clone(),
                (0..predicted).collect(),
                ids[1.min(ids.len())..].to_vec(),
            )
        }
        Objective::Mlm => {
            let masking =
                MlmMasking::new(special, settings.mlm_probability).map_err(HfError::Input)?;
            let masked = masking.apply_seeded(&ids, settings.seed, index as u64);
            (masked.inputs, masked.positions, masked.targets)
        }
    };
    let mut total = 0.0;
    if !positions.is_empty() {
        let logits = logits_at(model, &inputs, &positions, device)?;
        let vocab = logits.len() / positions.len();
        for (row, target) in logits.chunks_exact(vocab).zip(&targets) {
            total -= log_probability(row, *target);
        }
    }
    let loss = (!positions.is_empty()).then(|| total / positions.len() as f64);
    let shown = settings.show_inputs.then(|| {
        let labels = match settings.objective {
            Objective::Causal => ids.iter().map(|&id| i64::from(id)).collect(),
            Objective::Mlm => {
                let mut labels = vec![-100; inputs.len()];
                for (&position, &target) in positions.iter().zip(&targets) {
                    labels[position as usize] = i64::from(target);
                }
                labels
            }
        };
        ScoredInputs {
            input_ids: inputs.clone(),
            labels,
        }
    });
    let score = LineScore {
        line: index + 1,
        tokens: ids.len(),
        scored: positions.len(),
        loss,
        perplexity: loss.map(f64::exp),
        truncated,
        inputs: shown,
    };
    Ok((score, total))
}

/// Scores every line of `text`, calling `report` with each line's result, and returns the total.
pub fn score_text<B: Backend>(
    model: &Roberta<B>,
    tokenizer: &HfTokenizer,
    settings: &ScoreSettings,
    text: &str,
    device: &B::Device,
    mut report: impl FnMut(&LineScore) -> Result<(), HfError>,
) -> Result<ScoreTotal, HfError> {
    let special = tokenizer.info()?;
    let (mut lines, mut scored, mut total) = (0, 0, 0.0);
    for (index, line) in text.lines().enumerate() {
        let (score, summed) =
            score_line(model, tokenizer, &special, settings, index, line, device)?;
        report(&score)?;
        lines += 1;
        scored += score.scored;
        total += summed;
    }
    let loss = (scored > 0).then(|| total / scored as f64);
    Ok(ScoreTotal {
        lines,
        scored,
        loss,
        perplexity: loss.map(f64::exp),
    })
}
