//! Dynamic masked-language-model corruption with HuggingFace's `DataCollatorForLanguageModeling`
//! semantics.
//!
//! Each token that is not special (any of the tokenizer's special ids, as the collator's
//! `all_special_ids`) is chosen with probability `probability`. A chosen token is
//! replaced by `<mask>` 80 % of the time, by a token drawn uniformly from the whole vocabulary
//! 10 % of the time (HF draws from `[0, vocab)`, special ids included), and left unchanged
//! otherwise. The loss is taken only at chosen positions. Masking is a pure function of the ids
//! and a seeded generator, so `(seed, stream)` always reproduces the same corruption.

use flightlm_shared::TokenizerInfo;

use crate::rng::SplitMix64;

/// Share of chosen tokens replaced by `<mask>`.
const MASK_SHARE: f64 = 0.8;
/// Share of chosen tokens replaced by a random token (the rest stay unchanged).
const RANDOM_SHARE: f64 = 0.1;

/// The masking rule for one tokenizer.
#[derive(Clone, Debug, PartialEq)]
pub struct MlmMasking {
    pub probability: f64,
    pub mask_id: u32,
    pub vocab_size: u32,
    /// Indexed by id: whether it is special (never chosen). A table, not a list: tokenizers
    /// with hundreds of special tokens (T5's sentinels, Llama 3's reserved ids) cost the same.
    special: Vec<bool>,
}

/// Corrupted inputs plus what the model must predict where.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MaskedTokens {
    /// The ids fed to the model, same length as the original ids.
    pub inputs: Vec<u32>,
    /// Indices (into the flat ids) of the chosen tokens, ascending.
    pub positions: Vec<u32>,
    /// The original ids at `positions`.
    pub targets: Vec<u32>,
}

impl MlmMasking {
    /// The rule for `tokenizer`; refused, naming the tokenizer, when it has no mask token.
    pub fn new(tokenizer: &TokenizerInfo, probability: f64) -> Result<Self, String> {
        let mask_id = tokenizer.mask_id.ok_or_else(|| {
            format!(
                "masked-LM needs a mask token and tokenizer {} has none (special ids {:?}): \
                 train with --objective causal, or use a tokenizer with `<mask>`/`[MASK]` (or \
                 one a tokenizer_config.json beside it names as mask_token)",
                tokenizer.hash, tokenizer.special_ids
            )
        })?;
        let mut special = vec![false; tokenizer.vocab_size as usize];
        for id in &tokenizer.special_ids {
            if let Some(slot) = special.get_mut(*id as usize) {
                *slot = true;
            }
        }
        Ok(MlmMasking {
            probability,
            mask_id,
            vocab_size: tokenizer.vocab_size,
            special,
        })
    }

    fn is_special(&self, id: u32) -> bool {
        self.special.get(id as usize).copied().unwrap_or(false)
    }

    /// Masks `ids` with the generator for `(seed, stream)`.
    pub fn apply_seeded(&self, ids: &[u32], seed: u64, stream: u64) -> MaskedTokens {
        self.apply(ids, &mut SplitMix64::for_stream(seed, stream))
    }

    /// Masks each `seq_len` block of `ids` with the generator for `(seed, its block_seq)`, so a
    /// block is masked the same whatever batch, micro-batch or rank it is trained in.
    pub fn apply_per_block(
        &self,
        ids: &[u32],
        seq_len: usize,
        block_seq: &[u64],
        seed: u64,
    ) -> MaskedTokens {
        let mut masked = self.empty_for(ids.len());
        for (row, (block, &sequence)) in ids.chunks(seq_len).zip(block_seq).enumerate() {
            let mut rng = SplitMix64::for_stream(seed, sequence);
            self.append(block, &mut rng, (row * seq_len) as u32, &mut masked);
        }
        masked
    }

    pub fn apply(&self, ids: &[u32], rng: &mut SplitMix64) -> MaskedTokens {
        let mut masked = self.empty_for(ids.len());
        self.append(ids, rng, 0, &mut masked);
        masked
    }

    /// Buffers sized for masking `tokens` tokens.
    fn empty_for(&self, tokens: usize) -> MaskedTokens {
        let expected = (tokens as f64 * self.probability * 1.1) as usize + 1;
        MaskedTokens {
            inputs: Vec::with_capacity(tokens),
            positions: Vec::with_capacity(expected),
            targets: Vec::with_capacity(expected),
        }
    }

    /// Masks `ids` onto the end of `masked`, their positions counted from `offset`.
    fn append(&self, ids: &[u32], rng: &mut SplitMix64, offset: u32, masked: &mut MaskedTokens) {
        for (index, &id) in ids.iter().enumerate() {
            // Specials consume no draws, so the choice of the other tokens does not depend on
            // where the document boundaries fall.
            if self.is_special(id) || rng.next_f64() >= self.probability {
                masked.inputs.push(id);
                continue;
            }
            masked.positions.push(offset + index as u32);
            masked.targets.push(id);
            let action = rng.next_f64();
            let input = if action < MASK_SHARE {
                self.mask_id
            } else if action < MASK_SHARE + RANDOM_SHARE {
                rng.below(self.vocab_size)
            } else {
                id
            };
            masked.inputs.push(input);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer(vocab_size: u32) -> TokenizerInfo {
        TokenizerInfo::roberta("test", vocab_size)
    }

    /// 200k ids in `[5, vocab)` with a `<s>`/`</s>` pair every 50 tokens and some `<unk>`s.
    fn corpus(vocab_size: u32) -> Vec<u32> {
        let mut rng = SplitMix64::new(99);
        (0..200_000)
            .map(|index| match index % 50 {
                0 => 0,
                49 => 2,
                17 => 3,
                _ => 5 + rng.below(vocab_size - 5),
            })
            .collect()
    }

    #[test]
    fn rates_match_the_collator() {
        let info = tokenizer(8192);
        let masking = MlmMasking::new(&info, 0.15).unwrap();
        let ids = corpus(info.vocab_size);
        let masked = masking.apply_seeded(&ids, 1, 0);

        let eligible = ids.iter().filter(|id| **id > 4).count();
        let chosen = masked.positions.len();
        let rate = chosen as f64 / eligible as f64;
        assert!((rate - 0.15).abs() < 0.005, "chosen rate {rate}");

        let (mut to_mask, mut unchanged, mut random) = (0usize, 0usize, 0usize);
        for (&position, &target) in masked.positions.iter().zip(&masked.targets) {
            let position = position as usize;
            assert_eq!(ids[position], target, "targets are the original ids");
            match masked.inputs[position] {
                4 => to_mask += 1,
                input if input == target => unchanged += 1,
                _ => random += 1,
            }
        }
        // A random draw can land on the original id (1 in 8192): that counts as unchanged here.
        let share = |count: usize| count as f64 / chosen as f64;
        assert!(
            (share(to_mask) - 0.8).abs() < 0.01,
            "mask {}",
            share(to_mask)
        );
        assert!(
            (share(random) - 0.1).abs() < 0.01,
            "random {}",
            share(random)
        );
        assert!(
            (share(unchanged) - 0.1).abs() < 0.01,
            "same {}",
            share(unchanged)
        );
    }

    #[test]
    fn special_tokens_are_never_chosen_or_changed() {
        let info = tokenizer(8192);
        let masking = MlmMasking::new(&info, 0.15).unwrap();
        let ids = corpus(info.vocab_size);
        let masked = masking.apply_seeded(&ids, 5, 7);
        assert_eq!(masked.inputs.len(), ids.len());
        for (index, &id) in ids.iter().enumerate() {
            if id <= 4 {
                assert_eq!(masked.inputs[index], id);
            }
        }
        assert!(masked.targets.iter().all(|id| *id > 4));
        let chosen: std::collections::HashSet<u32> = masked.positions.iter().copied().collect();
        for (index, (&input, &id)) in masked.inputs.iter().zip(&ids).enumerate() {
            if input != id {
                assert!(chosen.contains(&(index as u32)), "only chosen ids change");
            }
        }
        assert!(masked.positions.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn random_replacements_cover_the_whole_vocabulary() {
        let info = tokenizer(16);
        let masking = MlmMasking::new(&info, 0.5).unwrap();
        let ids: Vec<u32> = (0..100_000).map(|index| 5 + (index % 11)).collect();
        let masked = masking.apply_seeded(&ids, 3, 0);
        let mut seen = [false; 16];
        for &input in &masked.inputs {
            seen[input as usize] = true;
        }
        assert!(seen.iter().all(|seen| *seen), "HF draws from [0, vocab)");
    }

    #[test]
    fn deterministic_for_a_seed_and_different_across_seeds_and_streams() {
        let info = tokenizer(8192);
        let masking = MlmMasking::new(&info, 0.15).unwrap();
        let ids = corpus(info.vocab_size);
        let first = masking.apply_seeded(&ids[..4096], 11, 2);
        assert_eq!(first, masking.apply_seeded(&ids[..4096], 11, 2));
        assert_ne!(first, masking.apply_seeded(&ids[..4096], 12, 2));
        assert_ne!(first, masking.apply_seeded(&ids[..4096], 11, 3));
    }
}
