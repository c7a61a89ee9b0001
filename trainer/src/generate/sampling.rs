//! How the next token is chosen from a row of logits, as transformers' `generate` chooses it:
//! greedy (`temperature = 0`, `do_sample=False`), or a draw after the temperature, top-k and
//! top-p warpers, applied in that order (transformers' `TemperatureLogitsWarper`,
//! `TopKLogitsWarper`, `TopPLogitsWarper`).
//!
//! - top-k keeps every token whose logit is at least the k-th largest (ties at the edge stay);
//!   0 keeps all.
//! - top-p keeps the most probable tokens, in order, until their mass reaches `top_p`: a token
//!   stays when the tokens ranked above it hold less than `top_p`, so the one that crosses the
//!   line is kept and at least one token always is.
//!
//! Draws come from a [`SplitMix64`] the caller seeds, so a seed repeats a sample exactly.

use crate::hf::HfError;
use crate::rng::SplitMix64;

/// How to pick each token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// 0 picks the most likely token (greedy); above 0 divides the logits before the draw.
    pub temperature: f64,
    /// Keep the `top_k` most likely tokens (0: no limit).
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`, in (0, 1].
    pub top_p: f64,
}

impl Sampling {
    pub fn greedy() -> Self {
        Sampling {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Refuses settings transformers refuses too, naming the flag.
    pub fn validate(&self) -> Result<(), HfError> {
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(HfError::Input(format!(
                "--top-p {} is outside (0, 1]: it is the probability mass the kept tokens reach",
                self.top_p
            )));
        }
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(HfError::Input(format!(
                "--temperature {} must be 0 (greedy) or positive",
                self.temperature
            )));
        }
        Ok(())
    }
}

/// The token to emit after `logits`: the most likely one (lowest id on ties, as `argmax`) when
/// greedy, else a draw from [`candidates`].
pub fn next_token(logits: &[f32], sampling: &Sampling, rng: &mut SplitMix64) -> u32 {
    if sampling.is_greedy() {
        return argmax(logits);
    }
    let kept = candidates(logits, sampling);
    let mut left = rng.next_f64();
    for (token, probability) in &kept {
        left -= probability;
        if left < 0.0 {
            return *token;
        }
    }
    // Rounding can leave a sliver of mass after the last token; it belongs to the last one.
    kept.last().map_or(0, |(token, _)| *token)
}

/// The tokens a draw may pick, with their probabilities after the warpers (summing to 1), most
/// probable first (lower id first on ties).
pub fn candidates(logits: &[f32], sampling: &Sampling) -> Vec<(u32, f64)> {
    let temperature = if sampling.is_greedy() {
        1.0
    } else {
        sampling.temperature
    };
    let mut ranked: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .filter(|(_, logit)| logit.is_finite())
        .map(|(token, logit)| (token as u32, f64::from(*logit) / temperature))
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if sampling.top_k > 0 && sampling.top_k < ranked.len() {
        let edge = ranked[sampling.top_k - 1].1;
        ranked.retain(|(_, scaled)| *scaled >= edge);
    }
    let Some(&(_, max)) = ranked.first() else {
        return Vec::new();
    };
    let total: f64 = ranked.iter().map(|(_, scaled)| (scaled - max).exp()).sum();
    let mut kept = Vec::with_capacity(ranked.len());
    let mut above = 0.0;
    for (token, scaled) in ranked {
        if above >= sampling.top_p {
            break;
        }
        let probability = (scaled - max).exp() / total;
        kept.push((token, probability));
        above += probability;
    }
    let mass: f64 = kept.iter().map(|(_, probability)| probability).sum();
    for (_, probability) in &mut kept {
        *probability /= mass;
    }
    kept
}

/// Index of the largest logit; the first one on ties.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (index, logit) in logits.iter().enumerate() {
        if *logit > logits[best] {
            best = index;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Logits whose softmax is exactly `[0.5, 0.2, 0.15, 0.1, 0.05]` (shuffled across ids).
    fn known_distribution() -> (Vec<f32>, [u32; 5]) {
        let by_rank = [3u32, 0, 4, 1, 2]; // the id of the most likely token first
        let probabilities = [0.5f64, 0.2, 0.15, 0.1, 0.05];
        let mut logits = vec![0.0f32; 5];
        for (id, probability) in by_rank.iter().zip(probabilities) {
            logits[*id as usize] = probability.ln() as f32;
        }
        (logits, by_rank)
    }

    fn sampling(temperature: f64, top_k: usize, top_p: f64) -> Sampling {
        Sampling {
            temperature,
            top_k,
            top_p,
        }
    }

    /// The set of tokens 4,000 seeded draws produce.
    fn drawn(logits: &[f32], sampling: &Sampling) -> BTreeSet<u32> {
        let mut rng = SplitMix64::new(11);
        (0..4000)
            .map(|_| next_token(logits, sampling, &mut rng))
            .collect()
    }

    #[test]
    fn top_k_and_top_p_keep_exactly_the_allowed_tokens() {
        let (logits, by_rank) = known_distribution();
        let allowed =
            |ranks: usize| -> BTreeSet<u32> { by_rank[..ranks].iter().copied().collect() };
        let cases = [
            (sampling(1.0, 0, 1.0), 5),
            (sampling(1.0, 1, 1.0), 1),
            (sampling(1.0, 3, 1.0), 3),
            // Above the two most likely: 0.5 and 0.7; the third crosses 0.75 and stays.
            (sampling(1.0, 0, 0.75), 3),
            (sampling(1.0, 0, 0.45), 1),
            (sampling(1.0, 0, 0.9), 4),
            (sampling(1.0, 0, 1e-9), 1),
            // Both: top-k cuts to 4, then top-p's mass is taken among those four (renormalized:
            // 0.526, 0.737, 0.895), so 0.8 keeps three.
            (sampling(1.0, 4, 0.8), 3),
        ];
        for (settings, ranks) in cases {
            let kept: BTreeSet<u32> = candidates(&logits, &settings)
                .iter()
                .map(|(token, _)| *token)
                .collect();
            assert_eq!(kept, allowed(ranks), "{settings:?}");
            assert_eq!(drawn(&logits, &settings), allowed(ranks), "{settings:?}");
        }
    }

    #[test]
    fn kept_probabilities_are_renormalized_and_ordered() {
        let (logits, by_rank) = known_distribution();
        let kept = candidates(&logits, &sampling(1.0, 0, 0.75));
        let expected = [0.5 / 0.85, 0.2 / 0.85, 0.15 / 0.85];
        for ((token, probability), (id, want)) in kept.iter().zip(by_rank.iter().zip(expected)) {
            assert_eq!(token, id);
            assert!((probability - want).abs() < 1e-6, "{probability} vs {want}");
        }
    }

    #[test]
    fn draws_follow_the_probabilities() {
        let (logits, by_rank) = known_distribution();
        let mut rng = SplitMix64::new(5);
        let draws = 20_000;
        let mut counts = [0usize; 5];
        for _ in 0..draws {
            counts[next_token(&logits, &sampling(1.0, 0, 1.0), &mut rng) as usize] += 1;
        }
        for (id, want) in by_rank.iter().zip([0.5, 0.2, 0.15, 0.1, 0.05]) {
            let share = counts[*id as usize] as f64 / draws as f64;
            assert!(
                (share - want).abs() < 0.015,
                "token {id}: {share} vs {want}"
            );
        }
    }

    #[test]
    fn temperature_sharpens_and_zero_is_greedy() {
        let (logits, by_rank) = known_distribution();
        let cool = candidates(&logits, &sampling(0.5, 0, 1.0));
        // p^(1/0.5) renormalized: 0.25 / (0.25 + 0.04 + 0.0225 + 0.01 + 0.0025).
        assert!((cool[0].1 - 0.25 / 0.325).abs() < 1e-6, "{cool:?}");
        let mut rng = SplitMix64::new(1);
        for _ in 0..100 {
            assert_eq!(
                next_token(&logits, &Sampling::greedy(), &mut rng),
                by_rank[0]
            );
        }
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1, "first of equal logits");
    }

    #[test]
    fn a_seed_repeats_its_draws() {
        let (logits, _) = known_distribution();
        let settings = sampling(1.3, 4, 0.95);
        let draw = |seed| -> Vec<u32> {
            let mut rng = SplitMix64::new(seed);
            (0..64)
                .map(|_| next_token(&logits, &settings, &mut rng))
                .collect()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }

    #[test]
    fn top_p_outside_the_unit_interval_is_refused() {
        for top_p in [0.0, -0.5, 1.5, f64::NAN] {
            let message = sampling(1.0, 0, top_p)
                .validate()
                .expect_err("refused")
                .to_string();
            assert!(
                message.contains("--top-p") && message.contains("(0, 1]"),
                "{message}"
            );
        }
        assert!(sampling(1.0, 0, 1.0).validate().is_ok());
        assert!(sampling(-1.0, 0, 1.0).validate().is_err());
    }
}
