//! The `flightlm-trainer` binary's check that the CUDA device can run what the run asks for,
//! before any model is built.

use std::sync::{Arc, Mutex};

use anyhow::anyhow;
use burn::backend::cuda::CudaDevice;
use burn::backend::Cuda;
use burn::tensor::{FloatDType, Tensor};
use flightlm_trainer::Precision;

/// Runs one tiny operation on the CUDA device first: under bf16, casts and a bf16 matrix
/// product (the kernels mixed precision adds). Without a driver or NVRTC, or on a card without
/// bf16, the CUDA backend panics on a worker thread and then on the caller; this turns that into
/// one error line.
pub(crate) fn check_cuda(device: &CudaDevice, precision: Precision) -> anyhow::Result<()> {
    let first_panic = Arc::new(Mutex::new(None::<String>));
    let recorded = Arc::clone(&first_panic);
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Ok(mut slot) = recorded.lock() {
            slot.get_or_insert_with(|| info.payload_as_str().unwrap_or("panic").to_string());
        }
    }));
    let probe = std::panic::catch_unwind(|| {
        let ones = Tensor::<Cuda<f32>, 2>::ones([2, 2], device);
        let (sum, expected) = match precision {
            Precision::F32 => (ones.sum(), 4.0),
            Precision::Bf16 => {
                let half = ones.cast(FloatDType::BF16);
                (half.clone().matmul(half).cast(FloatDType::F32).sum(), 8.0)
            }
        };
        match sum.try_into_scalar() {
            Ok(sum) if sum == expected => Ok(()),
            Ok(sum) => Err(format!("a sum of ones gave {sum} instead of {expected}")),
            Err(error) => Err(error.to_string()),
        }
    });
    std::panic::set_hook(previous_hook);
    let reason = match probe {
        Ok(Ok(())) => return Ok(()),
        Ok(Err(error)) => error,
        Err(_) => first_panic
            .lock()
            .ok()
            .and_then(|slot| slot.clone())
            .unwrap_or_else(|| "unknown failure".into()),
    };
    Err(anyhow!(
        "the CUDA device is not usable for precision {precision:?}: {reason}"
    ))
}
