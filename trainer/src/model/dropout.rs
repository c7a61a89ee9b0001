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
//! uninterrupted run draws.

use std::cell::RefCell;

use burn::nn::Dropout;
use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Tensor, TensorData};

use crate::rng::SplitMix64;

thread_local! {
    /// `Some` while this thread draws masks on the host.
    static HOST_GENERATOR: RefCell<Option<SplitMix64>> = const { RefCell::new(None) };
}

/// From now on, draw this thread's masks on the host from a generator seeded with `seed`, or
/// (`None`) with the backend's generator.
pub fn seed_host_masks(seed: Option<u64>) {
    HOST_GENERATOR.with(|generator| *generator.borrow_mut() = seed.map(SplitMix64::new));
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
            .map(|generator| scaled_mask(generator, shape.num_elements(), layer.prob))
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
