//! Dropout with masks drawn on the host for the CPU backend.
//!
//! burn's CPU backends draw a random tensor one element at a time, through ChaCha and `rand`'s
//! distributions, on one thread: with burn-ndarray that was about a tenth of a CPU training step
//! of the small preset (perf), as much as every softmax and LayerNorm together; Flex draws the
//! same way. Here a SplitMix64 stream gives two draws per
//! 64-bit word, and the mask holds `0` or `1 / keep` so the step multiplies once instead of twice.
//!
//! On a GPU the backend's own generator stays: a host mask would have to cross to the device on
//! every layer. The host generator belongs to the thread that trains (each rank of a
//! data-parallel run has its own), and the training loop reseeds it or the backend's before
//! every step (see [`crate::rng::dropout_seed`]), so a resumed run draws the masks the
//! uninterrupted run draws. In block-keyed runs the step then keys the host masks by block
//! ([`key_host_masks_by_blocks`]): row `b` of every dropout's input is block `b` of the
//! micro-batch, and its mask is drawn from `(seed, block_seq, site)`, the site being the
//! dropout's place in the forward pass (the embeddings' first, then each layer's in order). A
//! block then gets the same masks whichever rank, micro-batch or world size trains it, so a run
//! resumed on another number of ranks continues the same computation with dropout on. With the
//! backend's generator (CUDA) the masks follow `(seed, step, rank)`: a resume on the same world
//! size repeats them, one on another world size draws others.

use std::cell::RefCell;

use burn::nn::Dropout;
use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Tensor, TensorData};

use crate::rng::{block_dropout_seed, SplitMix64};

/// Where this thread's host masks come from.
enum HostMasks {
    /// One stream for the whole step.
    Step(SplitMix64),
    /// Per row: `(seed, block_seq)` of the row's block, and the count of dropouts applied since
    /// the micro-batch was keyed.
    Blocks { seeds: Vec<u64>, site: u64 },
}

thread_local! {
    /// `Some` while this thread draws masks on the host.
    static HOST_GENERATOR: RefCell<Option<HostMasks>> = const { RefCell::new(None) };
}

/// From now on, draw this thread's masks on the host from a generator seeded with `seed`, or
/// (`None`) with the backend's generator.
pub fn seed_host_masks(seed: Option<u64>) {
    HOST_GENERATOR.with(|generator| {
        *generator.borrow_mut() = seed.map(|seed| HostMasks::Step(SplitMix64::new(seed)))
    });
}

/// When this thread draws masks on the host, keys the next forward pass's masks by the blocks
/// of its micro-batch, in row order. Without host masks (CUDA) it changes nothing.
pub fn key_host_masks_by_blocks(seed: u64, block_seqs: &[u64]) {
    HOST_GENERATOR.with(|generator| {
        let mut generator = generator.borrow_mut();
        if generator.is_some() {
            let seeds = block_seqs
                .iter()
                .map(|block| block_dropout_seed(seed, *block))
                .collect();
            *generator = Some(HostMasks::Blocks { seeds, site: 0 });
        }
    });
}

impl HostMasks {
    /// The mask of an input of `shape`.
    fn draw(&mut self, dims: &[usize], elements: usize, prob: f64) -> Vec<f32> {
        match self {
            HostMasks::Step(generator) => scaled_mask(generator, elements, prob),
            HostMasks::Blocks { seeds, site } => {
                let this_site = *site;
                *site += 1;
                let rows = dims.first().copied().unwrap_or(1);
                if rows != seeds.len() || rows == 0 {
                    // Not one row per block: one stream for the tensor, keyed by its first block.
                    let first = seeds.first().copied().unwrap_or(0);
                    let generator = &mut SplitMix64::for_stream(first, this_site);
                    return scaled_mask(generator, elements, prob);
                }
                let per_row = elements / rows;
                let mut mask = Vec::with_capacity(elements);
                for seed in seeds.iter() {
                    let generator = &mut SplitMix64::for_stream(*seed, this_site);
                    mask.extend(scaled_mask(generator, per_row, prob));
                }
                mask
            }
        }
    }
}

/// `layer.forward(input)`, with the mask drawn on the host when [`seed_host_masks`] says so.
/// Like burn's, it is the identity outside of training (no autodiff) and at probability 0.
pub fn dropout<B: Backend, const D: usize>(layer: &Dropout, input: Tensor<B, D>) -> Tensor<B, D> {
    let device = input.device();
    if layer.prob == 0.0 || !B::ad_enabled(&device) {
        return input;
    }
    let shape = input.shape();
    let mask = HOST_GENERATOR.with(|generator| {
        generator
            .borrow_mut()
            .as_mut()
            .map(|masks| masks.draw(&shape, shape.num_elements(), layer.prob))
    });
    let Some(mask) = mask else {
        return layer.forward(input);
    };
    let dtype = FloatDType::from(input.dtype());
    input * Tensor::<B, D>::from_data(TensorData::new(mask, shape), &device).cast(dtype)
}

/// `elements` values, each `1 / (1 - prob)` with probability `1 - prob` and `0` otherwise.
fn scaled_mask(generator: &mut SplitMix64, elements: usize, prob: f64) -> Vec<f32> {
    let keep = 1.0 - prob;
    // A 32-bit draw below `threshold` keeps its element: P = threshold / 2^32 = keep.
    let threshold = (keep * 4_294_967_296.0).round() as u64;
    let scale = (1.0 / keep) as f32;
    let value = |draw: u32| {
        if u64::from(draw) < threshold {
            scale
        } else {
            0.0
        }
    };
    let mut mask = Vec::with_capacity(elements + 1);
    while mask.len() < elements {
        let word = generator.next_u64();
        mask.push(value(word as u32));
        mask.push(value((word >> 32) as u32));
    }
    mask.truncate(elements);
    mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CpuBackend;
    use burn::backend::Autodiff;
    use burn::nn::DropoutConfig;

    type TestBackend = Autodiff<CpuBackend>;

    #[test]
    fn masks_keep_the_expected_share_and_rescale() {
        let mut generator = SplitMix64::new(3);
        let mask = scaled_mask(&mut generator, 100_001, 0.1);
        assert_eq!(mask.len(), 100_001);
        let kept = mask.iter().filter(|value| **value != 0.0).count() as f64;
        // 0.9 of 100,001 with a binomial standard deviation of about 95.
        assert!((kept - 90_000.9).abs() < 600.0, "kept {kept}");
        let scale = 1.0f32 / 0.9;
        assert!(mask.iter().all(|value| *value == 0.0 || *value == scale));
        let mean = mask.iter().map(|value| f64::from(*value)).sum::<f64>() / 100_001.0;
        assert!((mean - 1.0).abs() < 0.01, "mean {mean}");
    }

    #[test]
    fn the_same_seed_draws_the_same_masks() {
        let draw = |seed| scaled_mask(&mut SplitMix64::new(seed), 1000, 0.5);
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn block_keyed_masks_follow_the_block_not_its_row_step_or_batch() {
        let device = Default::default();
        let layer = DropoutConfig::new(0.5).init();
        let ones = || Tensor::<TestBackend, 3>::ones([2, 4, 8], &device).require_grad();
        let masks = |step_seed: u64, blocks: &[u64]| {
            seed_host_masks(Some(step_seed));
            key_host_masks_by_blocks(9, blocks);
            let sites: Vec<Vec<f32>> = (0..2)
                .map(|_| dropout(&layer, ones()).into_data().to_vec().expect("f32"))
                .collect();
            seed_host_masks(None);
            sites
        };
        let a = masks(1, &[3, 5]);
        let b = masks(2, &[5, 3]);
        for site in 0..2 {
            assert_eq!(a[site][..32], b[site][32..], "block 3 at site {site}");
            assert_eq!(a[site][32..], b[site][..32], "block 5 at site {site}");
        }
        assert_ne!(a[0], a[1], "each dropout site draws its own masks");
        assert_ne!(a[0][..32], a[0][32..], "each block its own");
        // Without host masks (the backend's generator) keying changes nothing.
        key_host_masks_by_blocks(9, &[3]);
        HOST_GENERATOR.with(|generator| assert!(generator.borrow().is_none()));
    }

    /// The one test that touches the process-wide generator; it holds the backend lock, which
    /// every test drawing random numbers takes.
    #[test]
    fn host_masks_drop_in_training_only_and_pass_gradients_through_the_mask() {
        let _rng = crate::backend_rng_lock();
        let device = Default::default();
        let layer = DropoutConfig::new(0.25).init();
        let input = Tensor::<TestBackend, 2>::ones([64, 64], &device).require_grad();

        seed_host_masks(Some(11));
        let output = dropout(&layer, input.clone());
        seed_host_masks(Some(11));
        let again = dropout(&layer, input.clone());
        let evaluated = dropout(&layer, input.clone().inner());
        seed_host_masks(None);

        let values: Vec<f32> = output.clone().into_data().to_vec().expect("f32 data");
        let expected = scaled_mask(&mut SplitMix64::new(11), 64 * 64, 0.25);
        assert_eq!(values, expected, "ones times the mask");
        assert_eq!(
            again.into_data(),
            output.clone().into_data(),
            "reseeding repeats"
        );
        let identity: Vec<f32> = evaluated.into_data().to_vec().expect("f32 data");
        assert!(
            identity.iter().all(|value| *value == 1.0),
            "no dropout in eval"
        );

        let gradients = output.sum().backward();
        let slopes: Vec<f32> = input
            .grad(&gradients)
            .expect("gradient")
            .into_data()
            .to_vec()
            .expect("f32 data");
        assert_eq!(slopes, expected, "the gradient is the mask");
    }
}
