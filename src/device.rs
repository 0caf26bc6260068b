//! Backend choice (`cpu` = Burn's flex CPU backend, `cuda[:N]` = Burn's CUDA backend) and the
//! check that a CUDA device really works before any real work starts.

use std::str::FromStr;

use anyhow::{anyhow, Result};

/// Where tensors live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(usize),
}

impl FromStr for Device {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| anyhow!("unknown device {other:?}: use cpu, cuda or cuda:N")),
        }
    }
}

impl Device {
    /// Whether batches should keep one shape (padding the last one): on CUDA every new shape
    /// costs kernel compilation and autotuning; the CPU backend gains nothing from padding.
    pub fn wants_fixed_shapes(self) -> bool {
        self != Device::Cpu
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

/// The CUDA backend as this project uses it (fused kernels, f32).
pub type CudaBackend = burn::backend::Cuda<f32, i32>;

/// Floating-point type of weights, activations, gradients and optimizer state. `bf16` and `f16`
/// are pure half precision (no f32 master copy) and only run on CUDA; checkpoints are always
/// written in f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    F16,
}

impl FromStr for Precision {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "f32" | "fp32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            "f16" | "fp16" => Ok(Precision::F16),
            other => Err(anyhow!("unknown precision {other:?}: use f32, bf16 or f16")),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        })
    }
}

/// Evaluates `$body` with the type `$B` bound to the backend for (`$device`, `$precision`) and
/// `$d` to a reference to its device; CPU is f32 only. The body returns a `Result`.
#[macro_export]
macro_rules! with_backend {
    ($device:expr, $precision:expr, |$B:ident, $d:ident| $body:expr) => {{
        use $crate::device::{Device, Precision};
        match ($device, $precision) {
            (Device::Cpu, Precision::F32) => {
                type $B = burn::backend::Flex;
                let cpu = burn::backend::flex::FlexDevice;
                let $d = &cpu;
                $body
            }
            (Device::Cpu, p) => Err(anyhow::anyhow!(
                "precision {p} needs a CUDA device (the CPU backend computes in f32)"
            )),
            (Device::Cuda(i), p) => {
                let dev = $crate::device::cuda_device(i)?;
                let $d = &dev;
                match p {
                    Precision::F32 => {
                        type $B = burn::backend::Cuda<f32, i32>;
                        $body
                    }
                    Precision::Bf16 => {
                        type $B = burn::backend::Cuda<burn::tensor::bf16, i32>;
                        $body
                    }
                    Precision::F16 => {
                        type $B = burn::backend::Cuda<burn::tensor::f16, i32>;
                        $body
                    }
                }
            }
        }
    }};
}

/// Creates CUDA device `index` and runs one tiny kernel; a missing driver, NVRTC, CUDA headers
/// or device becomes a one-line error (Burn's CUDA runtime panics instead), so callers can fail
/// cleanly.
pub fn cuda_device(index: usize) -> Result<burn::backend::cuda::CudaDevice> {
    use burn::tensor::Tensor;
    let fallback = "use --device cpu (train.device = \"cpu\") instead";
    // SAFETY: only tries to dlopen the libraries, as Burn's CUDA runtime does at its first use.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(anyhow!(
            "--device cuda:{index}: no NVIDIA driver library (libcuda.so) can be loaded on this machine; {fallback}"
        ));
    }
    // SAFETY: as above.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err(anyhow!(
            "--device cuda:{index}: NVRTC (libnvrtc.so, from the CUDA toolkit) cannot be loaded: install the toolkit or add its lib64 folder to LD_LIBRARY_PATH; or {fallback}"
        ));
    }
    match cuda_toolkit_dir(std::env::var_os("CUDA_PATH"), &|p| p.exists()) {
        Some(dir) if dir.join("include").join("cuda.h").exists() => {}
        Some(dir) => {
            return Err(anyhow!(
                "--device cuda:{index}: the CUDA headers are missing ({} does not exist; kernels are compiled at run time and need them): set CUDA_PATH to the CUDA toolkit folder, or {fallback}",
                dir.join("include").join("cuda.h").display()
            ))
        }
        None => {
            return Err(anyhow!(
                "--device cuda:{index}: no CUDA toolkit folder (CUDA_PATH unset; none of /usr/local/cuda, /opt/cuda, /usr/bin/nvcc exists); its headers are needed to compile kernels: set CUDA_PATH, or {fallback}"
            ))
        }
    }
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let probe = std::panic::catch_unwind(|| {
        let device = burn::backend::cuda::CudaDevice { index };
        let t: Tensor<CudaBackend, 1> = Tensor::ones([4], &device);
        let sum = t.sum().into_scalar();
        (device, sum)
    });
    std::panic::set_hook(previous);
    match probe {
        Ok((device, 4.0)) => Ok(device),
        Ok(_) => Err(anyhow!(
            "cuda:{index} computed a wrong result in a self-test"
        )),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown error".into());
            let first = msg.lines().next().unwrap_or("").trim().to_string();
            Err(anyhow!(
                "CUDA device {index} is not usable here ({first}); {fallback}"
            ))
        }
    }
}

/// The CUDA toolkit folder Burn's CUDA runtime will use for kernel headers, found the way it
/// looks (`CUDA_PATH`, then `/usr/local/cuda`, `/opt/cuda`, then `/usr` when `/usr/bin/nvcc`
/// exists); `exists` is the file test (injectable for tests).
fn cuda_toolkit_dir(
    cuda_path: Option<std::ffi::OsString>,
    exists: &dyn Fn(&std::path::Path) -> bool,
) -> Option<std::path::PathBuf> {
    use std::path::{Path, PathBuf};
    if let Some(p) = cuda_path {
        return Some(PathBuf::from(p));
    }
    if exists(Path::new("/usr/local/cuda")) {
        Some("/usr/local/cuda".into())
    } else if exists(Path::new("/opt/cuda")) {
        Some("/opt/cuda".into())
    } else if exists(Path::new("/usr/bin/nvcc")) {
        Some("/usr".into())
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
        assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
        assert_eq!("cuda:3".parse::<Device>().unwrap(), Device::Cuda(3));
        assert!("tpu".parse::<Device>().is_err());
    }

    #[test]
    fn finds_the_cuda_toolkit_as_burns_runtime_does() {
        use std::path::{Path, PathBuf};
        let none = |_: &Path| false;
        assert_eq!(
            cuda_toolkit_dir(Some("/x/cuda".into()), &none),
            Some(PathBuf::from("/x/cuda"))
        );
        assert_eq!(cuda_toolkit_dir(None, &none), None);
        let opt = |p: &Path| p == Path::new("/opt/cuda");
        assert_eq!(cuda_toolkit_dir(None, &opt), Some("/opt/cuda".into()));
        let nvcc = |p: &Path| p == Path::new("/usr/bin/nvcc");
        assert_eq!(cuda_toolkit_dir(None, &nvcc), Some("/usr".into()));
    }

    #[test]
    fn parses_precisions_and_cpu_is_f32_only() {
        assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::Bf16);
        assert_eq!("fp16".parse::<Precision>().unwrap(), Precision::F16);
        assert!("f8".parse::<Precision>().is_err());
        let run = || -> Result<()> {
            crate::with_backend!(Device::Cpu, Precision::Bf16, |B, _d| {
                let _ = std::marker::PhantomData::<B>;
                Ok(())
            })
        };
        let r = run();
        assert!(r.unwrap_err().to_string().contains("needs a CUDA device"));
    }
}
