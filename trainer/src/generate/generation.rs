//! One generation: a prompt's continuation, token by token, until the end token or the token
//! budget.
//!
//! The model reads at most `max_context` tokens (its position table). A prompt longer than
//! `max_context - 1` is cut from the left so that one new token fits; when the context fills up
//! while generating, it is cut to its last `max_context / 2` tokens and read again (one pass over
//! those, then one position per token again), so generation can go on past the table. Both cuts
//! are counted in the result, for the command to announce.

use std::time::Instant;

use burn::tensor::backend::Backend;
use serde::Serialize;

use super::sampling::{next_token, Sampling};
use crate::hf::HfError;
use crate::model::decode::{extend, full_context_logits, KvCache};
use crate::model::Roberta;
use crate::rng::SplitMix64;

/// Where the logits of the next token come from.
pub trait NextLogits {
    /// The logits of the token after `context`, which extends the previous call's context by the
    /// tokens emitted since, unless [`NextLogits::restart`] was called in between.
    fn next_logits(&mut self, context: &[u32]) -> Result<Vec<f32>, HfError>;

    /// The next context does not continue the previous one.
    fn restart(&mut self);
}

/// A model on a device, with (`cached`) or without a key/value cache.
pub struct ModelLogits<'a, B: Backend> {
    model: &'a Roberta<B>,
    device: B::Device,
    first_position: usize,
    cache: Option<KvCache<B>>,
}

impl<'a, B: Backend> ModelLogits<'a, B> {
    /// `first_position` is the position id of a sequence's first token.
    pub fn new(
        model: &'a Roberta<B>,
        first_position: usize,
        cached: bool,
        device: &B::Device,
    ) -> Self {
        ModelLogits {
            model,
            device: device.clone(),
            first_position,
            cache: cached.then(|| KvCache::new(model)),
        }
    }
}

impl<B: Backend> NextLogits for ModelLogits<'_, B> {
    fn next_logits(&mut self, context: &[u32]) -> Result<Vec<f32>, HfError> {
        let logits = match &mut self.cache {
            Some(cache) => {
                let new = &context[cache.len()..];
                extend(self.model, self.first_position, cache, new, &self.device)
            }
            None => full_context_logits(self.model, context, &self.device),
        };
        logits
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(|error| HfError::Device(format!("{error:?}")))
    }

    fn restart(&mut self) {
        if let Some(cache) = &mut self.cache {
            cache.clear();
        }
    }
}

/// What a generation may do.
#[derive(Clone, Debug)]
pub struct GenerateSettings {
    pub max_new_tokens: usize,
    /// The end token cannot be chosen before this many new tokens.
    pub min_new_tokens: usize,
    pub sampling: Sampling,
    /// The token that ends a text (the tokenizer's `</s>`); `None` runs to `max_new_tokens`.
    pub end_token: Option<u32>,
    /// The most tokens the model reads at once (its position table).
    pub max_context: usize,
}

/// Why a generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    EndToken,
    MaxNewTokens,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    /// The prompt as the model read it (after any cut).
    pub prompt: Vec<u32>,
    /// Tokens cut from the left of a prompt longer than the context.
    pub prompt_cut: usize,
    /// The new tokens, the end token included when it stopped the text.
    pub new_tokens: Vec<u32>,
    pub stop: Stop,
    /// Times the context filled up and was cut to its second half.
    pub context_shifts: usize,
    /// Wall time of the whole generation, the prompt's pass included.
    pub seconds: f64,
}

/// Continues `prompt` (not empty) with tokens from `logits`, drawing with `rng`.
pub fn generate(
    logits: &mut dyn NextLogits,
    prompt: &[u32],
    settings: &GenerateSettings,
    rng: &mut SplitMix64,
) -> Result<Generation, HfError> {
    let max_context = settings.max_context;
    if prompt.is_empty() {
        return Err(HfError::Input("the prompt has no tokens".into()));
    }
    if max_context < 2 {
        return Err(HfError::Input(format!(
            "the model reads {max_context} token(s) at most; generating needs at least 2"
        )));
    }
    let started = Instant::now();
    let prompt_cut = prompt.len().saturating_sub(max_context - 1);
    let prompt = prompt[prompt_cut..].to_vec();
    let mut context = prompt.clone();
    let mut new_tokens = Vec::new();
    let mut context_shifts = 0;
    let mut stop = Stop::MaxNewTokens;
    logits.restart();
    while new_tokens.len() < settings.max_new_tokens {
        if context.len() >= max_context {
            context.drain(..context.len() - max_context / 2);
            logits.restart();
            context_shifts += 1;
        }
        let mut row = logits.next_logits(&context)?;
        if let Some(end) = settings.end_token {
            if new_tokens.len() < settings.min_new_tokens {
                if let Some(logit) = row.get_mut(end as usize) {
                    *logit = f32::NEG_INFINITY;
                }
            }
        }
        let token = next_token(&row, &settings.sampling, rng);
        new_tokens.push(token);
        context.push(token);
        if Some(token) == settings.end_token {
            stop = Stop::EndToken;
            break;
        }
    }
    Ok(Generation {
        prompt,
        prompt_cut,
        new_tokens,
        stop,
        context_shifts,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Predicts `(last token + 1) % vocab` with certainty, and records what it was asked.
    struct Counting {
        vocab: usize,
        contexts: Vec<Vec<u32>>,
        restarts: usize,
    }

    impl NextLogits for Counting {
        fn next_logits(&mut self, context: &[u32]) -> Result<Vec<f32>, HfError> {
            self.contexts.push(context.to_vec());
            let mut row = vec![0.0; self.vocab];
            let next = (*context.last().expect("a context") as usize + 1) % self.vocab;
            row[next] = 10.0;
            Ok(row)
        }

        fn restart(&mut self) {
            self.restarts += 1;
        }
    }

    fn counting() -> Counting {
        Counting {
            vocab: 10,
            contexts: Vec::new(),
            restarts: 0,
        }
    }

    fn settings(
        max_new_tokens: usize,
        end_token: Option<u32>,
        max_context: usize,
    ) -> GenerateSettings {
        GenerateSettings {
            max_new_tokens,
            min_new_tokens: 0,
            sampling: Sampling::greedy(),
            end_token,
            max_context,
        }
    }

    #[test]
    fn stops_at_the_end_token_and_keeps_it() {
        let mut rng = SplitMix64::new(0);
        let done = generate(&mut counting(), &[3], &settings(20, Some(6), 64), &mut rng)
            .expect("generates");
        assert_eq!(done.new_tokens, vec![4, 5, 6]);
        assert_eq!(done.stop, Stop::EndToken);
        let capped = generate(&mut counting(), &[3], &settings(2, Some(6), 64), &mut rng)
            .expect("generates");
        assert_eq!(capped.new_tokens, vec![4, 5]);
        assert_eq!(capped.stop, Stop::MaxNewTokens);
    }

    #[test]
    fn min_new_tokens_holds_the_end_token_back() {
        let mut rng = SplitMix64::new(0);
        let mut with_minimum = settings(20, Some(6), 64);
        with_minimum.min_new_tokens = 5;
        let done = generate(&mut counting(), &[3], &with_minimum, &mut rng).expect("generates");
        // At the third token the end token is barred; the next best (id 0, a zero logit) wins.
        assert_eq!(done.new_tokens[..3], [4, 5, 0]);
        assert!(done.new_tokens.len() > 5);
    }

    #[test]
    fn a_long_prompt_is_cut_from_the_left_and_a_full_context_shifts() {
        let mut rng = SplitMix64::new(0);
        let mut source = counting();
        let prompt: Vec<u32> = (0..12).map(|i| i % 10).collect();
        let done =
            generate(&mut source, &prompt, &settings(6, None, 8), &mut rng).expect("generates");
        assert_eq!(done.prompt_cut, 5);
        assert_eq!(done.prompt, prompt[5..].to_vec());
        assert_eq!(source.contexts[0].len(), 7);
        // 7 + 1 fills the 8 positions: the context restarts from its last 4 tokens.
        assert_eq!(source.contexts[1].len(), 4);
        // ... and again four tokens later.
        assert_eq!(source.contexts[5].len(), 4);
        assert_eq!(done.context_shifts, 2);
        assert_eq!(source.restarts, 3, "once at the start, once per shift");
        assert!(source.contexts.iter().all(|context| context.len() <= 8));
        assert_eq!(done.new_tokens, vec![2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn an_empty_prompt_is_refused() {
        let mut rng = SplitMix64::new(0);
        assert!(generate(&mut counting(), &[], &settings(2, None, 8), &mut rng).is_err());
    }
}
