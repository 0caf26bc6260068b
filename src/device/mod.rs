//! Backend choice (`cpu` = Burn's flex CPU backend, `cuda[:N]` = Burn's CUDA backend, `wgpu`
//! = Burn's wgpu backend on Vulkan or Metal) and the check that a GPU device really works before
//! any real work starts.

use std::str::FromStr;

mod cuda;

use anyhow::{anyhow, Result};

pub use cuda::{
    cuda_device, cuda_device_count, cuda_reserved_mib, take_cuda_summary, KERNEL_CACHE_ENV,
    PROFILE_ENV,
};

/// Where tensors live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(usize),
    /// Burn's wgpu backend (Vulkan on Linux and Windows, Metal on macOS): AMD, Intel and Apple
    /// GPUs, and Mesa's lavapipe, a Vulkan device on the CPU, where tests run GPU code.
    Wgpu(WgpuAdapter),
}

/// Which adapter `wgpu` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WgpuAdapter {
    /// `wgpu`: the high-performance adapter the system offers (a software one if that is all).
    Default,
    /// `wgpu:N`: the N-th discrete GPU.
    Discrete(usize),
    /// `wgpu:cpu`: a software device (lavapipe).
    Cpu,
}

impl FromStr for Device {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "cpu" => Ok(Device::Cpu),
            "cuda" | "gpu" => Ok(Device::Cuda(0)),
            "wgpu" => Ok(Device::Wgpu(WgpuAdapter::Default)),
            "wgpu:cpu" => Ok(Device::Wgpu(WgpuAdapter::Cpu)),
            other => {
                if let Some(n) = other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
                    Ok(Device::Cuda(n))
                } else if let Some(n) = other.strip_prefix("wgpu:").and_then(|n| n.parse().ok()) {
                    Ok(Device::Wgpu(WgpuAdapter::Discrete(n)))
                } else {
                    Err(anyhow!(
                        "unknown device {other:?}: use cpu, cuda, cuda:N, wgpu, wgpu:N or wgpu:cpu"
                    ))
                }
            }
        }
    }
}

impl Device {
    /// The device with its index dropped (`cuda:3` -> `cuda:0`): what a result depends on.
    /// Folds pinned to different GPUs of one kind compute the same numbers.
    pub fn kind(self) -> Device {
        match self {
            Device::Cuda(_) => Device::Cuda(0),
            Device::Wgpu(WgpuAdapter::Discrete(_)) => Device::Wgpu(WgpuAdapter::Discrete(0)),
            d => d,
        }
    }

    /// Whether batches should keep one shape (padding the last one): on CUDA every new shape
    /// costs kernel compilation and autotuning; the CPU backend gains nothing from padding.
    pub fn wants_fixed_shapes(self) -> bool {
        self != Device::Cpu
    }
}

/// Written as in settings (`cuda:0`, `wgpu`, `cpu`), read with [`Device::from_str`]'s checks.
impl serde::Serialize for Device {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Device {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
            Device::Wgpu(WgpuAdapter::Default) => write!(f, "wgpu"),
            Device::Wgpu(WgpuAdapter::Discrete(i)) => write!(f, "wgpu:{i}"),
            Device::Wgpu(WgpuAdapter::Cpu) => write!(f, "wgpu:cpu"),
        }
    }
}

/// The CUDA backend as this project uses it (fused kernels, f32).
pub type CudaBackend = burn::backend::Cuda<f32, i32>;

/// The wgpu backend as this project uses it (fused kernels, f32; WGSL has no bf16, so f32 only).
pub type WgpuBackend = burn::backend::Wgpu<f32, i32>;

/// Floating-point arithmetic of training and prediction. `bf16-mixed` is `torch.autocast`'s
/// (HF Trainer's `--bf16`): f32 weights, gradients and optimizer state, matrix products in bf16
/// (see [`crate::model::amp`]); `f16-mixed` (`--fp16`) the same in f16 with dynamic loss
/// scaling (see [`crate::train::scaler`]); both run on both backends. `bf16` and `f16` are pure half
/// precision (weights, activations and optimizer state, no f32 master copy) and only run on
/// CUDA. Checkpoints are always written in f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    #[serde(rename = "bf16-mixed")]
    Bf16Mixed,
    #[serde(rename = "f16-mixed")]
    F16Mixed,
    Bf16,
    F16,
}

impl Precision {
    /// The dtype of matrix products under autocast (`bf16-mixed`, `f16-mixed`), else none.
    pub fn autocast(self) -> Option<burn::tensor::FloatDType> {
        match self {
            Precision::Bf16Mixed => Some(burn::tensor::FloatDType::BF16),
            Precision::F16Mixed => Some(burn::tensor::FloatDType::F16),
            _ => None,
        }
    }

    /// Whether training scales the loss (f16's narrow exponent range; see
    /// [`crate::train::scaler`]).
    pub fn loss_scaling(self) -> bool {
        self == Precision::F16Mixed
    }

    /// Whether the weights themselves are half precision (CUDA only).
    pub fn is_pure_half(self) -> bool {
        matches!(self, Precision::Bf16 | Precision::F16)
    }
}

impl FromStr for Precision {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "f32" | "fp32" => Ok(Precision::F32),
            "bf16-mixed" | "amp" => Ok(Precision::Bf16Mixed),
            "f16-mixed" | "fp16-mixed" => Ok(Precision::F16Mixed),
            "bf16" => Ok(Precision::Bf16),
            "f16" | "fp16" => Ok(Precision::F16),
            other => Err(anyhow!(
                "unknown precision {other:?}: use f32, bf16-mixed, f16-mixed, bf16 or f16"
            )),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Bf16Mixed => "bf16-mixed",
            Precision::F16Mixed => "f16-mixed",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        })
    }
}

/// Creates the wgpu device for `adapter` and runs one tiny kernel; no adapter (no Vulkan driver,
/// no GPU) becomes a one-line error (CubeCL's wgpu runtime panics instead).
pub fn wgpu_device(adapter: WgpuAdapter) -> Result<burn::backend::wgpu::WgpuDevice> {
    use burn::backend::wgpu::WgpuDevice;
    use burn::tensor::Tensor;
    let device = match adapter {
        WgpuAdapter::Default => WgpuDevice::DefaultDevice,
        WgpuAdapter::Discrete(n) => WgpuDevice::DiscreteGpu(n),
        WgpuAdapter::Cpu => WgpuDevice::Cpu,
    };
    let name = Device::Wgpu(adapter);
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let config = std::panic::catch_unwind(|| {
        use burn::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
        if CubeClRuntimeConfig::storage().lock().is_none() {
            let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
            kernel_count::apply(&mut config);
            CubeClRuntimeConfig::set(config);
        }
    });
    if let Err(panic) = config {
        std::panic::set_hook(previous);
        return Err(anyhow!(
            "CubeCL's configuration (cubecl.toml / burn.toml / CUBECL_* variables) cannot be read: {}",
            first_line(&panic)
        ));
    }
    let probe = std::panic::catch_unwind(|| {
        let t: Tensor<WgpuBackend, 1> = Tensor::ones([4], &device);
        t.sum().into_scalar()
    });
    std::panic::set_hook(previous);
    match probe {
        Ok(4.0) => Ok(device),
        Ok(_) => Err(anyhow!("{name} computed a wrong result in a self-test")),
        Err(panic) => Err(anyhow!(
            "--device {name}: no usable wgpu adapter ({}); install a Vulkan driver (on Debian: mesa-vulkan-drivers and libvulkan1, which include lavapipe, a Vulkan device on the CPU), or use --device cpu (train.device = \"cpu\")",
            first_line(&panic)
        )),
    }
}

/// MiB of device memory Burn's allocator holds (reserved pages) on a GPU device for the calling
/// thread's stream; `None` on the CPU or where it cannot be asked.
pub fn reserved_mib(device: Device) -> Option<f64> {
    use burn::cubecl::Runtime;
    match device {
        Device::Cpu => None,
        Device::Cuda(index) => cuda_reserved_mib(index),
        Device::Wgpu(a) => {
            let dev = wgpu_device(a).ok()?;
            let client = burn::backend::wgpu::WgpuRuntime::client(&dev);
            let usage = client.memory_usage().ok()?;
            Some(usage.bytes_reserved as f64 / (1024.0 * 1024.0))
        }
    }
}

/// Counts the kernels CubeCL launches and compiles, from CubeCL's own execution: its profiling
/// logger at the `minimal` level reports every launch (`Executing <kernel>`, no timing, launches
/// stay asynchronous) and its compilation logger every kernel compiled (`[Compiling kernel]`),
/// here forwarded to the `log` crate and counted by a logger of ours. [`kernel_count::enable`]
/// must run before the first GPU device is made (`bench` does); the records are delivered by
/// CubeCL's logging thread, so [`kernel_count::settled`] waits for the counts to stop moving.
pub mod kernel_count {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    static ENABLED: AtomicBool = AtomicBool::new(false);
    static LAUNCHES: AtomicU64 = AtomicU64::new(0);
    static COMPILED: AtomicU64 = AtomicU64::new(0);

    struct Counter;

    impl log::Log for Counter {
        fn enabled(&self, meta: &log::Metadata) -> bool {
            meta.target().starts_with("cubecl")
        }

        fn log(&self, record: &log::Record) {
            if !self.enabled(record.metadata()) {
                return;
            }
            let msg = record.args().to_string();
            if msg.starts_with("Executing ") {
                LAUNCHES.fetch_add(1, Ordering::Relaxed);
            } else if msg.starts_with("[Compiling kernel]") {
                COMPILED.fetch_add(1, Ordering::Relaxed);
            }
        }

        fn flush(&self) {}
    }

    /// Turns counting on for this process (before any GPU device exists); false when another
    /// logger was installed first or CubeCL's kernel profile (`PIPELINE_CUDA_PROFILE`) is on.
    pub fn enable() -> bool {
        if crate::env::get_os(crate::env::CUDA_PROFILE).is_some() {
            return false;
        }
        static COUNTER: Counter = Counter;
        if log::set_logger(&COUNTER).is_err() && !ENABLED.load(Ordering::Relaxed) {
            return false;
        }
        log::set_max_level(log::LevelFilter::Info);
        ENABLED.store(true, Ordering::Relaxed);
        true
    }

    /// Whether counting is on.
    pub fn enabled() -> bool {
        ENABLED.load(Ordering::Relaxed)
    }

    /// Sets CubeCL's launch and compilation loggers to report to the `log` crate (when counting
    /// is on and no profile or user setting already uses them).
    pub(super) fn apply(config: &mut burn::cubecl::config::CubeClRuntimeConfig) {
        use burn::cubecl::config::compilation::CompilationLogLevel;
        use burn::cubecl::config::profiling::ProfilingLogLevel;
        use cubecl_common::config::logger::LogCrateLevel;
        if !enabled() {
            return;
        }
        if matches!(config.profiling.logger.level, ProfilingLogLevel::Disabled) {
            config.profiling.logger.level = ProfilingLogLevel::Minimal;
            config.profiling.logger.log = Some(LogCrateLevel::Info);
        }
        if matches!(
            config.compilation.logger.level,
            CompilationLogLevel::Disabled
        ) {
            config.compilation.logger.level = CompilationLogLevel::Basic;
            config.compilation.logger.log = Some(LogCrateLevel::Info);
        }
    }

    /// (launches, compilations) so far, once CubeCL's logging thread has caught up: the counts
    /// have not moved for 50 ms (at most 5 s).
    pub fn settled() -> (u64, u64) {
        let read = || {
            (
                LAUNCHES.load(Ordering::Relaxed),
                COMPILED.load(Ordering::Relaxed),
            )
        };
        let start = std::time::Instant::now();
        let mut last = read();
        loop {
            std::thread::sleep(std::time::Duration::from_millis(50));
            let now = read();
            if now == last || start.elapsed().as_secs() >= 5 {
                return now;
            }
            last = now;
        }
    }
}

/// The largest single buffer a device allows, where that is smaller than its memory: on wgpu
/// the adapter's `max_storage_buffer_binding_size` (128 MiB on lavapipe); `None` elsewhere.
pub fn max_buffer_bytes(device: Device) -> Option<u64> {
    use burn::cubecl::Runtime;
    match device {
        Device::Wgpu(a) => {
            let dev = wgpu_device(a).ok()?;
            let client = burn::backend::wgpu::WgpuRuntime::client(&dev);
            Some(client.properties().memory.max_page_size)
        }
        Device::Cpu | Device::Cuda(_) => None,
    }
}

/// The first line of a caught panic's message.
fn first_line(panic: &Box<dyn std::any::Any + Send>) -> String {
    let msg = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown error".into());
    msg.lines().next().unwrap_or("").trim().to_string()
}

/// The memory a device has in all: the machine's RAM for the CPU (`MemTotal`), the GPU's for
/// CUDA; `None` where it cannot be asked (no driver, no `/proc`).
pub fn memory_bytes(device: Device) -> Option<u64> {
    match device {
        Device::Cpu => {
            let info = std::fs::read_to_string("/proc/meminfo").ok()?;
            let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        }
        Device::Wgpu(_) => None,
        Device::Cuda(index) => {
            use cudarc::driver::result as cu;
            // SAFETY: only tries to dlopen the driver library (loading it panics where absent).
            if !unsafe { cudarc::driver::sys::is_culib_present() } {
                return None;
            }
            cu::init().ok()?;
            let dev = cu::device::get(i32::try_from(index).ok()?).ok()?;
            // SAFETY: `dev` came from `device::get` after a successful init.
            unsafe { cu::device::total_mem(dev) }.ok().map(|n| n as u64)
        }
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
        for (text, d) in [
            ("wgpu", Device::Wgpu(WgpuAdapter::Default)),
            ("wgpu:1", Device::Wgpu(WgpuAdapter::Discrete(1))),
            ("wgpu:cpu", Device::Wgpu(WgpuAdapter::Cpu)),
        ] {
            assert_eq!(text.parse::<Device>().unwrap(), d);
            assert_eq!(d.to_string(), text);
        }
        assert!("wgpu:x".parse::<Device>().is_err());
    }

    #[test]
    fn parses_precisions_and_cpu_is_f32_only() {
        assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::Bf16);
        assert_eq!("fp16".parse::<Precision>().unwrap(), Precision::F16);
        assert_eq!(
            "bf16-mixed".parse::<Precision>().unwrap(),
            Precision::Bf16Mixed
        );
        assert_eq!(Precision::Bf16Mixed.to_string(), "bf16-mixed");
        assert_eq!(
            Precision::Bf16Mixed.autocast(),
            Some(burn::tensor::FloatDType::BF16)
        );
        assert_eq!(Precision::Bf16.autocast(), None);
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
