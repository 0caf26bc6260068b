//! Backend choice (`cpu` = Burn's flex CPU backend, `cuda[:N]` = Burn's CUDA backend, `wgpu`
//! = Burn's wgpu backend on Vulkan or Metal) and the check that a GPU device really works before
//! any real work starts.

use std::str::FromStr;

use anyhow::{anyhow, Result};

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

/// Evaluates `$body` with the type `$B` bound to the backend for (`$device`, `$precision`) and
/// `$d` to a reference to its device, under autocast for the mixed precisions; pure half
/// precision is CUDA only. The evaluation-time attention is the caller's to choose
/// ([`crate::model::amp::with_fused_attention`]).
/// The body returns a `Result`.
#[macro_export]
macro_rules! with_backend {
    ($device:expr, $precision:expr, |$B:ident, $d:ident| $body:expr) => {{
        use $crate::device::{Device, Precision};
        let precision: Precision = $precision;
        let device: Device = $device;
        let autocast = precision.autocast();
        $crate::model::amp::autocast(autocast, || match (device, precision) {
            (Device::Cpu, p) if p.is_pure_half() => Err(anyhow::anyhow!(
                "precision {p} needs a CUDA device (the CPU backend keeps f32 weights; bf16-mixed runs there)"
            )),
            (Device::Cpu, _) => {
                type $B = burn::backend::Flex;
                let cpu = burn::backend::flex::FlexDevice;
                let $d = &cpu;
                $crate::model::amp::with_host_backend(true, || $body)
            }
            (Device::Wgpu(a), p) => {
                if p != Precision::F32 {
                    return Err(anyhow::anyhow!(
                        "precision {p} is not supported on {device} (f32 only: WGSL has no bf16): use train.precision = \"f32\", or a CUDA device"
                    ));
                }
                let dev = $crate::device::wgpu_device(a)?;
                let $d = &dev;
                type $B = $crate::device::WgpuBackend;
                $body
            }
            (Device::Cuda(i), p) => {
                let dev = $crate::device::cuda_device(i)?;
                let $d = &dev;
                match p {
                    Precision::F32 | Precision::Bf16Mixed | Precision::F16Mixed => {
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
        })
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
    let gpu = cuda_gpu(index).map_err(|e| anyhow!("--device cuda:{index}: {e}; {fallback}"))?;
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let cache = std::panic::catch_unwind(|| configure_kernel_cache(&gpu));
    let probe = std::panic::catch_unwind(|| {
        let device = burn::backend::cuda::CudaDevice { index };
        let t: Tensor<CudaBackend, 1> = Tensor::ones([4], &device);
        let sum = t.sum().into_scalar();
        (device, sum)
    });
    std::panic::set_hook(previous);
    let cache = match cache {
        Ok(cache) => cache,
        Err(panic) => {
            return Err(anyhow!(
                "CubeCL's configuration (cubecl.toml / burn.toml / CUBECL_* variables) cannot be read: {}",
                first_line(&panic)
            ))
        }
    };
    CUDA_SUMMARY.get_or_init(|| {
        let cache = match &cache {
            KernelCache::At(dir) => format!("compiled kernels and autotune results are kept in {} ({KERNEL_CACHE_ENV}=off to disable)", dir.display()),
            KernelCache::Off => format!("the on-disk kernel cache is off ({KERNEL_CACHE_ENV})"),
            KernelCache::UserConfig => "CubeCL's own configuration decides where kernels are cached".into(),
            KernelCache::Unwritable(dir) => format!(
                "kernels are not cached: {} cannot be written (set {KERNEL_CACHE_ENV} to a writable folder)",
                dir.display()
            ),
        };
        format!(
            "cuda:{index} is {} (compute capability {}.{}): kernels are compiled{} on first use, so the first steps of a new shape are slow; {cache}",
            gpu.name,
            gpu.capability.0,
            gpu.capability.1,
            if cfg!(feature = "autotune") { " and autotuned" } else { "" }
        )
    });
    match probe {
        Ok((device, 4.0)) => Ok(device),
        Ok(_) => Err(anyhow!(
            "cuda:{index} computed a wrong result in a self-test"
        )),
        Err(panic) => Err(anyhow!(
            "CUDA device {index} is not usable here ({}); {fallback}",
            first_line(&panic)
        )),
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
        if std::env::var_os(super::PROFILE_ENV).is_some() {
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

/// MiB of GPU memory Burn's allocator holds (reserved pages) on CUDA device `index` for the
/// calling thread's stream; `None` where it cannot be asked.
pub fn cuda_reserved_mib(index: usize) -> Option<f64> {
    use burn::cubecl::Runtime;
    let client =
        burn::cubecl::cuda::CudaRuntime::client(&burn::backend::cuda::CudaDevice { index });
    let usage = client.memory_usage().ok()?;
    Some(usage.bytes_reserved as f64 / (1024.0 * 1024.0))
}

/// What [`cuda_device`] found, once per process: the GPU, its compute capability and where
/// kernels are cached; `None` before the first CUDA device or once taken. Stages print it.
pub fn take_cuda_summary() -> Option<String> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static TAKEN: AtomicBool = AtomicBool::new(false);
    let summary = CUDA_SUMMARY.get()?;
    (!TAKEN.swap(true, Ordering::Relaxed)).then(|| summary.clone())
}

static CUDA_SUMMARY: std::sync::OnceLock<String> = std::sync::OnceLock::new();

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

/// A GPU as the driver reports it.
struct Gpu {
    name: String,
    /// Compute capability (major, minor).
    capability: (i32, i32),
    /// `cuDriverGetVersion`, e.g. 13000 for CUDA 13.0.
    driver: i32,
}

/// Asks the driver for GPU `index` (a missing index names how many there are).
fn cuda_gpu(index: usize) -> std::result::Result<Gpu, String> {
    use cudarc::driver::result as cu;
    use cudarc::driver::sys::CUdevice_attribute as A;
    cu::init().map_err(|e| format!("the CUDA driver does not start ({e:?})"))?;
    let count = cu::device::get_count().map_err(|e| format!("no CUDA devices ({e:?})"))?;
    let ordinal = i32::try_from(index).unwrap_or(i32::MAX);
    if ordinal >= count {
        return Err(format!("there is no CUDA device {index} ({count} found)"));
    }
    let dev = cu::device::get(ordinal).map_err(|e| format!("{e:?}"))?;
    let name = cu::device::get_name(dev).unwrap_or_else(|_| "an unnamed GPU".into());
    // SAFETY: `dev` came from `device::get`.
    let attr = |a| unsafe { cu::device::get_attribute(dev, a) }.unwrap_or(0);
    let capability = (
        attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
        attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR),
    );
    let mut driver = 0;
    // SAFETY: writes one int; the driver library is loaded (init succeeded).
    unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver) };
    Ok(Gpu {
        name,
        capability,
        driver,
    })
}

/// Environment variable naming the kernel cache folder (`off` disables it).
pub const KERNEL_CACHE_ENV: &str = "PIPELINE_KERNEL_CACHE";

/// Where CubeCL keeps compiled kernels and autotune results for this process.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KernelCache {
    At(std::path::PathBuf),
    Off,
    /// A cubecl.toml (or CubeCL configuration set before) is in charge.
    UserConfig,
    /// The folder cannot be written: no cache.
    Unwritable(std::path::PathBuf),
}

/// The kernel cache's root: `$PIPELINE_KERNEL_CACHE` (`off`, `0`, `none` or empty: no cache),
/// else `$XDG_CACHE_HOME/pipeline/kernels`, else `$HOME/.cache/pipeline/kernels`.
fn kernel_cache_root(
    explicit: Option<std::ffi::OsString>,
    xdg_cache: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    let nonempty = |v: Option<std::ffi::OsString>| v.filter(|v| !v.is_empty());
    if let Some(v) = explicit {
        return match v.to_str().map(str::trim) {
            Some("" | "off" | "0" | "none" | "false") => None,
            _ => Some(PathBuf::from(v)),
        };
    }
    nonempty(xdg_cache)
        .map(PathBuf::from)
        .or_else(|| nonempty(home).map(|h| PathBuf::from(h).join(".cache")))
        .map(|c| c.join("pipeline").join("kernels"))
}

/// The folder for one GPU kind: PTX is compiled for the compute capability and loaded by the
/// driver, and CubeCL's cache keys name neither.
fn kernel_cache_dir(root: &std::path::Path, gpu: &Gpu) -> std::path::PathBuf {
    root.join(format!(
        "sm{}{}-driver{}",
        gpu.capability.0, gpu.capability.1, gpu.driver
    ))
}

/// Turns on CubeCL's on-disk caches of compiled kernels (PTX; off by default in CubeCL) and of
/// autotune results, in the kernel cache folder, unless a `cubecl.toml` already chose: without
/// them every process compiles and autotunes every kernel again (minutes on a GPU). Must run
/// before CubeCL first reads its configuration; panics where a cubecl.toml is malformed.
fn configure_kernel_cache(gpu: &Gpu) -> KernelCache {
    use burn::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig};
    if CubeClRuntimeConfig::storage().lock().is_some() {
        return KernelCache::UserConfig;
    }
    let var = |k: &str| std::env::var_os(k);
    let Some(root) = kernel_cache_root(var(KERNEL_CACHE_ENV), var("XDG_CACHE_HOME"), var("HOME"))
    else {
        return KernelCache::Off;
    };
    let dir = kernel_cache_dir(&root, gpu);
    // CubeCL panics on a cache folder it cannot write; without one it just compiles again.
    let probe = dir.join(".writable");
    if std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&probe, b""))
        .is_err()
    {
        return KernelCache::Unwritable(dir);
    }
    let _ = std::fs::remove_file(probe);
    let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
    let chosen = apply_kernel_cache(&mut config, &dir);
    if let Some(file) = var(PROFILE_ENV) {
        apply_profile_log(&mut config, file.into());
    }
    kernel_count::apply(&mut config);
    CubeClRuntimeConfig::set(config);
    if chosen {
        KernelCache::At(dir)
    } else {
        KernelCache::UserConfig
    }
}

/// Environment variable naming a file for CubeCL's kernel profile: every kernel is timed on the
/// GPU (launches are serialised, so steps get slower) and each synchronisation (every `bench`
/// step) appends a table of kernels with their count and total GPU time.
pub const PROFILE_ENV: &str = "PIPELINE_CUDA_PROFILE";

/// Turns on CubeCL's kernel profiling summary (its `basic` level), written to `file`.
fn apply_profile_log(
    config: &mut burn::cubecl::config::CubeClRuntimeConfig,
    file: std::path::PathBuf,
) {
    use burn::cubecl::config::profiling::ProfilingLogLevel;
    config.profiling.logger.level = ProfilingLogLevel::Basic;
    config.profiling.logger.file = Some(file);
}

/// Points CubeCL's PTX cache (where unset) and autotune cache (where left at its default,
/// the `target` folder) at `dir`; whether any was set.
fn apply_kernel_cache(
    config: &mut burn::cubecl::config::CubeClRuntimeConfig,
    dir: &std::path::Path,
) -> bool {
    use burn::cubecl::config::cache::CacheConfig;
    let mut chosen = false;
    if config.compilation.cache.is_none() {
        config.compilation.cache = Some(CacheConfig::File(dir.to_path_buf()));
        chosen = true;
    }
    if matches!(config.autotune.cache, CacheConfig::Target) {
        config.autotune.cache = CacheConfig::File(dir.to_path_buf());
        chosen = true;
    }
    chosen
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
    fn kernel_cache_root_follows_the_variable_then_xdg_then_home() {
        use std::path::PathBuf;
        let os = |s: &str| Some(std::ffi::OsString::from(s));
        let root = kernel_cache_root;
        assert_eq!(
            root(os("/k"), os("/x"), os("/h")),
            Some(PathBuf::from("/k"))
        );
        for off in ["off", "0", "none", "", " off "] {
            assert_eq!(root(os(off), os("/x"), os("/h")), None, "{off:?}");
        }
        assert_eq!(
            root(None, os("/x"), os("/h")),
            Some(PathBuf::from("/x/pipeline/kernels"))
        );
        assert_eq!(
            root(None, os(""), os("/h")),
            Some(PathBuf::from("/h/.cache/pipeline/kernels"))
        );
        assert_eq!(root(None, None, None), None);
        let gpu = Gpu {
            name: "NVIDIA H100 80GB HBM3".into(),
            capability: (9, 0),
            driver: 13000,
        };
        assert_eq!(
            kernel_cache_dir(std::path::Path::new("/k"), &gpu),
            PathBuf::from("/k/sm90-driver13000")
        );
    }

    #[test]
    fn kernel_cache_fills_only_what_cubecl_toml_left_at_defaults() {
        use burn::cubecl::config::cache::CacheConfig;
        use burn::cubecl::config::CubeClRuntimeConfig;
        let dir = std::path::Path::new("/cache/sm90");
        let file = |c: &Option<CacheConfig>| match c {
            Some(CacheConfig::File(p)) => Some(p.clone()),
            _ => None,
        };
        let mut defaults = CubeClRuntimeConfig::default();
        assert!(
            defaults.compilation.cache.is_none(),
            "CubeCL's PTX cache is off by default"
        );
        assert!(apply_kernel_cache(&mut defaults, dir));
        assert_eq!(file(&defaults.compilation.cache), Some(dir.to_path_buf()));
        assert_eq!(
            file(&Some(defaults.autotune.cache.clone())),
            Some(dir.to_path_buf())
        );
        let mut user = CubeClRuntimeConfig::default();
        user.compilation.cache = Some(CacheConfig::Local);
        user.autotune.cache = CacheConfig::Global;
        assert!(!apply_kernel_cache(&mut user, dir));
        assert!(matches!(user.compilation.cache, Some(CacheConfig::Local)));
        assert!(matches!(user.autotune.cache, CacheConfig::Global));
    }

    #[test]
    fn profile_log_turns_on_cubecls_kernel_summary_into_the_file() {
        use burn::cubecl::config::profiling::ProfilingLogLevel;
        use burn::cubecl::config::CubeClRuntimeConfig;
        let mut c = CubeClRuntimeConfig::default();
        assert!(matches!(
            c.profiling.logger.level,
            ProfilingLogLevel::Disabled
        ));
        apply_profile_log(&mut c, "/tmp/p.txt".into());
        assert!(matches!(c.profiling.logger.level, ProfilingLogLevel::Basic));
        assert_eq!(c.profiling.logger.file, Some("/tmp/p.txt".into()));
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
