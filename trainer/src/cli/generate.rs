//! `flightlm-trainer generate` on the device it asks for: the CPU backend, or CUDA after the
//! device check (with the kernel caches every CUDA command uses).

use burn::backend::cuda::CudaDevice;
use burn::backend::Cuda;
use flightlm_trainer::generate::{generate_command, GenerateArgs};
use flightlm_trainer::{CpuBackend, CpuDevice, DeviceKind, Precision};

use crate::cli::cuda_check::check_cuda;
use crate::cli::kernel_cache::{use_kernel_caches, KERNEL_CACHE_ENV};

pub(crate) fn generate_on_device(args: &GenerateArgs) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match args.device {
        DeviceKind::Cpu => {
            generate_command::<CpuBackend>(args, &CpuDevice::default(), &mut stdout)?;
        }
        DeviceKind::Cuda => {
            if let Some(dir) = use_kernel_caches() {
                eprintln!("kernel caches in {} (${KERNEL_CACHE_ENV})", dir.display());
            }
            let gpu = CudaDevice::new(0);
            check_cuda(&gpu, Precision::F32)?;
            generate_command::<Cuda<f32>>(args, &gpu, &mut stdout)?;
        }
    }
    Ok(())
}
