//! A small seeded random number generator whose sequence we own.
//!
//! Data-side randomness (masking) must be reproducible from `(seed, stream)` across crate
//! upgrades and platforms, so a resumed run masks exactly like the original one. `rand`'s `StdRng`
//! explicitly reserves the right to change its algorithm; SplitMix64 is fixed, fast, and good
//! enough for Bernoulli draws.

const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// Keeps the dropout seeds of a run apart from its masking streams, which use the same seed.
const DROPOUT_DOMAIN: u64 = 0xd40_9077;

/// The seed of the backend generator (dropout) for the optimizer step with 0-based index `step`.
///
/// The backend generator is reseeded before every step rather than once per run: its state
/// cannot be read back to store in a checkpoint, and a generator that depends only on
/// `(seed, step)` makes a resumed run draw exactly the dropout masks the uninterrupted run draws.
pub fn dropout_seed(seed: u64, step: usize) -> u64 {
    SplitMix64::for_stream(seed ^ DROPOUT_DOMAIN, step as u64).next_u64()
}

/// The dropout seed of rank `rank` of a data-parallel run at `step`: rank 0's is
/// [`dropout_seed`], so a run on one device draws what it always drew, and every other rank's
/// masks are independent of it.
pub fn rank_dropout_seed(seed: u64, step: usize, rank: usize) -> u64 {
    let seed = dropout_seed(seed, step);
    if rank == 0 {
        seed
    } else {
        SplitMix64::for_stream(seed, rank as u64).next_u64()
    }
}

/// The seed of block `block_seq`'s dropout masks in a run of `seed`: the masks a block gets
/// then depend on the block alone (and the dropout site), not on the step, rank or micro-batch
/// that trains it, as the MLM masks of block-keyed runs do.
pub fn block_dropout_seed(seed: u64, block_seq: u64) -> u64 {
    SplitMix64::for_stream(seed ^ DROPOUT_DOMAIN, block_seq).next_u64()
}

/// SplitMix64 (Steele, Lea, Flood 2014).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SplitMix64 {
    state: u64,
}

/// The SplitMix64 output function: a bijective 64-bit mixer.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// An independent-looking generator for one `stream` (e.g. a step number) of a `seed`.
    /// Mixing both keeps nearby seeds and nearby streams from producing overlapping sequences.
    pub fn for_stream(seed: u64, stream: u64) -> Self {
        SplitMix64::new(mix(seed ^ mix(stream.wrapping_add(GOLDEN_GAMMA))))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GOLDEN_GAMMA);
        mix(self.state)
    }

    /// Uniform in [0, 1) with 53 bits of precision.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [0, bound) by widening multiplication; the bias (< bound / 2^64) is negligible.
    pub fn below(&mut self, bound: u32) -> u32 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence_and_streams_differ() {
        let a: Vec<u64> = {
            let mut rng = SplitMix64::for_stream(7, 3);
            (0..8).map(|_| rng.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut rng = SplitMix64::for_stream(7, 3);
            (0..8).map(|_| rng.next_u64()).collect()
        };
        let c: Vec<u64> = {
            let mut rng = SplitMix64::for_stream(7, 4);
            (0..8).map(|_| rng.next_u64()).collect()
        };
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn draws_stay_in_range() {
        let mut rng = SplitMix64::new(1);
        for _ in 0..10_000 {
            let x = rng.next_f64();
            assert!((0.0..1.0).contains(&x));
            assert!(rng.below(10) < 10);
        }
    }
}
