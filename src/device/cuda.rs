//! CUDA: finding the driver, NVRTC and the toolkit, checking a device, the kernel cache and
//! the profile log.

use anyhow::{anyhow, Result};

use super::{first_line, kernel_count, CudaBackend};

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
    match cuda_toolkit_dir(crate::env::get_os(crate::env::CUDA_PATH), &|p| p.exists()) {
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

/// A GPU as the driver reports it.
struct Gpu {
    name: String,
    /// Compute capability (major, minor).
    capability: (i32, i32),
    /// `cuDriverGetVersion`, e.g. 13000 for CUDA 13.0.
    driver: i32,
}

/// How many CUDA devices the driver shows (honouring `CUDA_VISIBLE_DEVICES`); an error where
/// no driver library loads.
pub fn cuda_device_count() -> Result<usize> {
    use cudarc::driver::result as cu;
    // SAFETY: only tries to dlopen the library.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(anyhow!(
            "no NVIDIA driver library (libcuda.so) can be loaded on this machine"
        ));
    }
    cu::init().map_err(|e| anyhow!("the CUDA driver does not start ({e:?})"))?;
    let n = cu::device::get_count().map_err(|e| anyhow!("counting CUDA devices: {e:?}"))?;
    Ok(usize::try_from(n).unwrap_or(0))
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
pub const KERNEL_CACHE_ENV: &str = crate::env::KERNEL_CACHE.name;

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
    let explicit = crate::env::get_os(crate::env::KERNEL_CACHE);
    let Some(root) = kernel_cache_root(explicit, var("XDG_CACHE_HOME"), var("HOME")) else {
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
    if let Some(file) = crate::env::get_os(crate::env::CUDA_PROFILE) {
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
pub const PROFILE_ENV: &str = crate::env::CUDA_PROFILE.name;

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
}
