//! Seeded, stateless choices: which source gives the next block, and the order of a shuffled chunk.
//!
//! Both are pure functions of (seed, counter), so the only state a cursor must carry is the
//! counter: draw `n` picks the same source and chunk `k` gets the same permutation in every run.

use flightlm_shared::hashing::splitmix64;

/// Separates the mixture's random stream from the shuffle's under the same user seed.
const MIXTURE_STREAM: u64 = 0x6d69_7874_7572_6521;
const SHUFFLE_STREAM: u64 = 0x7368_7566_666c_6521;

/// A uniform number in [0, 1) for draw `index` of `stream`.
fn unit(seed: u64, stream: u64, index: u64) -> f64 {
    let bits = splitmix64(splitmix64(seed ^ stream).wrapping_add(index));
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// The source of draw `draw` under `weights` (non-negative; at least one positive), or `None`
/// when every weight is zero.
pub fn pick_source(seed: u64, draw: u64, weights: &[f64]) -> Option<usize> {
    let total: f64 = weights.iter().filter(|weight| **weight > 0.0).sum();
    if total <= 0.0 {
        return None;
    }
    if weights.len() == 1 {
        return Some(0);
    }
    let target = unit(seed, MIXTURE_STREAM, draw) * total;
    let mut cumulative = 0.0;
    let mut last_positive = None;
    for (index, weight) in weights.iter().enumerate() {
        if *weight <= 0.0 {
            continue;
        }
        cumulative += weight;
        last_positive = Some(index);
        if target < cumulative {
            return Some(index);
        }
    }
    last_positive
}

/// The order in which the `length` blocks of the chunk starting at draw `chunk_start` are sent
/// (a seeded Fisher-Yates shuffle).
pub fn chunk_order(seed: u64, chunk_start: u64, length: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..length).collect();
    let mut state = splitmix64(splitmix64(seed ^ SHUFFLE_STREAM).wrapping_add(chunk_start));
    for last in (1..length).rev() {
        state = splitmix64(state);
        let chosen = (state % (last as u64 + 1)) as usize;
        order.swap(last, chosen);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_follow_the_weights_and_repeat_exactly() {
        let weights = [0.7, 0.3];
        let draws = 100_000;
        let first = (0..draws)
            .filter(|draw| pick_source(9, *draw, &weights) == Some(0))
            .count();
        let share = first as f64 / draws as f64;
        assert!((share - 0.7).abs() < 0.01, "share {share}");
        for draw in 0..1000 {
            assert_eq!(
                pick_source(9, draw, &weights),
                pick_source(9, draw, &weights)
            );
        }
        assert_eq!(pick_source(1, 5, &[0.0, 2.0]), Some(1));
        assert_eq!(pick_source(1, 5, &[0.0, 0.0]), None);
    }

    #[test]
    fn chunk_order_is_a_seeded_permutation() {
        let order = chunk_order(3, 128, 64);
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, (0..64).collect::<Vec<_>>());
        assert_ne!(order, sorted, "a 64-block chunk is almost surely moved");
        assert_eq!(order, chunk_order(3, 128, 64));
        assert_ne!(order, chunk_order(3, 192, 64));
        assert_eq!(chunk_order(3, 0, 1), vec![0]);
    }
}
