//! Our kernels' CUDA C++ source, exactly as CubeCL's CUDA runtime hands it to NVRTC, made
//! without a GPU or a CUDA driver: each kernel's definition is built as the `define()` that
//! `#[cube(launch)]` generates builds it (that one needs a live `ComputeClient`), and compiled
//! by CubeCL's CUDA compiler (`CppCompiler<CudaDialect>`) with the options its runtime sets for
//! an architecture. `tools/ptxas_report.py` compiles the source with NVIDIA's NVRTC and `ptxas
//! -v` (from PyPI) and reads registers, spills and stack per kernel; `tests/cuda_compile.rs`
//! holds every kernel to no spills and at most 48 KiB of shared memory, with no GPU.

use burn_cubecl::cubecl::cuda::{CudaCompiler, CudaRuntime};
use burn_cubecl::cubecl::features::Features;
use burn_cubecl::cubecl::ir::{
    AddressType, DeviceProperties, ElemType, FloatKind, HardwareProperties, MemoryDeviceProperties,
    StorageType, VectorSize,
};
use burn_cubecl::cubecl::prelude::{ExecutionMode, KernelBuilder, KernelDefinition, Runtime};
use burn_cubecl::cubecl::profile::TimingMethod;
use burn_cubecl::cubecl::Compiler;

/// One kernel's CUDA source at the shapes and options it is launched with.
#[derive(Debug, Clone)]
pub struct CudaKernel {
    /// `lstm_step_forward`, `attention_forward_dh64_dropout` …
    pub name: String,
    /// The CUDA C++ given to NVRTC.
    pub source: String,
    /// Threads per block (`__launch_bounds__`).
    pub threads: u32,
    /// Dynamic shared memory per block in bytes (CubeCL puts every shared array there, so
    /// `ptxas` reports none).
    pub shared_bytes: usize,
}

/// A device as `define()` sees it: CubeCL's CUDA expansion of our kernels reads none of it, but
/// the builder wants one. `sm` is the architecture (80, 90).
pub(crate) fn properties(sm: u32) -> DeviceProperties {
    let hardware = HardwareProperties {
        load_width: 128,
        plane_size_min: 32,
        plane_size_max: 32,
        max_bindings: 1024,
        max_shared_memory_size: if sm >= 90 { 232_448 } else { 166_912 },
        max_cube_count: (i32::MAX as u32, u16::MAX as u32, u16::MAX as u32),
        max_units_per_cube: 1024,
        max_cube_dim: (1024, 1024, 64),
        num_streaming_multiprocessors: Some(if sm >= 90 { 132 } else { 108 }),
        num_cpu_cores: None,
        num_tensor_cores: Some(4),
        min_tensor_cores_dim: Some(8),
        max_vector_size: VectorSize::MAX,
    };
    let mut p = DeviceProperties::new(
        Features::default(),
        MemoryDeviceProperties {
            max_page_size: 20 << 30,
            alignment: 512,
        },
        hardware,
        TimingMethod::System,
    );
    p.register_address_type(AddressType::U32);
    p.register_address_type(AddressType::U64);
    p
}

/// A kernel builder set up as the CUDA runtime sets it.
pub(crate) fn builder(props: &DeviceProperties) -> KernelBuilder {
    let mut b = KernelBuilder::default();
    b.runtime_properties(CudaRuntime::target_properties());
    b.device_properties(props);
    b
}

/// The f32 storage type our kernels are launched with.
pub(crate) fn f32_storage() -> StorageType {
    ElemType::Float(FloatKind::F32).into()
}

/// CubeCL's C++ compiler options (`cubecl_cpp::shared::CompilationOptions`).
type Options = <CudaCompiler as Compiler>::CompilationOptions;

/// The options CubeCL's CUDA runtime compiles with on architecture `sm` (`cubecl-cuda`'s
/// device setup: fast math always, grid constants from sm_70, fast tanh from sm_75, clusters
/// and `elect.sync` from sm_90).
fn options(sm: u32) -> Options {
    let mut o = Options {
        warp_size: 32,
        ..Default::default()
    };
    o.supports_features.fast_math = true;
    o.supports_features.grid_constants = sm >= 70;
    o.supports_features.fast_tanh = sm >= 75;
    o.supports_features.clusters = sm >= 90;
    o.supports_features.elect_sync = sm >= 90;
    o
}

/// Compiles a definition to CUDA C++ for `sm`, in the mode our launches use outside tests
/// (`Unchecked`, see [`super::checked_launches`]).
pub(crate) fn compile(name: &str, def: KernelDefinition, sm: u32) -> anyhow::Result<CudaKernel> {
    let threads = def.cube_dim.num_elems();
    let repr = CudaCompiler::default()
        .compile(
            def,
            &options(sm),
            ExecutionMode::Unchecked,
            AddressType::U32.unsigned_type(),
        )
        .map_err(|e| anyhow::anyhow!("CubeCL could not compile {name} to CUDA: {e:?}"))?;
    Ok(CudaKernel {
        name: name.to_string(),
        shared_bytes: repr.shared_memory_size(),
        source: repr.to_string(),
        threads,
    })
}
