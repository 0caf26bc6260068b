//! `Σ t²` over a list of tensors (gradient clipping's global norm) in a few launches: each
//! launch reads up to [`GROUP`] tensors (a CubeCL sequence of tensors); [`PARTS`] cubes each sum
//! the squares of every `PARTS`-th block of 256 elements of every tensor of the group and add
//! their sum to one slot of a `[PARTS]` output, which the caller sums once. roberta-base's 199
//! gradients take 13 launches, not 199.

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};
use burn_cubecl::cubecl::prelude::{CubeCount, CubeDim, SequenceArg};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

use super::empty;

/// Partial sums (cubes per launch).
pub const PARTS: usize = 64;
/// The most tensors one launch reads (fewer where the device binds fewer buffers).
pub const GROUP: usize = 16;
/// Threads per cube.
const THREADS: usize = 256;

/// A backend with the few-launch `Σ t²` over many tensors.
pub trait SumSquaresKernels: Backend {
    /// The `[PARTS]` partial sums of the squares of all of `ts` (any shapes, f32, at least one).
    fn sum_squares_parts(ts: Vec<FloatTensor<Self>>) -> FloatTensor<Self>;
}

mod cube {
    use super::{PARTS, THREADS};
    use crate::model::kernels::reduce::cube_sum;
    use burn_cubecl::cubecl;
    use burn_cubecl::cubecl::prelude::*;

    /// Cube `c` sums `t[e]²` over the tensors `t` of `ts` and the elements `e` of their blocks
    /// `c, c + PARTS, …` of [`THREADS`] elements, and writes the sum to `out[c]`, or adds it
    /// to `out[c]` when `accumulate` (a later group of the same list).
    #[cube(launch, launch_unchecked)]
    pub(super) fn sum_squares_kernel<F: Float>(
        ts: &Sequence<Tensor<F>>,
        out: &mut Tensor<F>,
        #[comptime] accumulate: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        let c = CUBE_POS_X as usize;
        let u = UNIT_POS_X as usize;
        let mut shared = SharedMemory::<F>::new(THREADS);
        let mut acc = F::new(0.0);
        let count = ts.len().comptime();
        #[unroll]
        for i in 0..count {
            let t = &ts[i];
            let n = t.len();
            let mut e = c * THREADS + u;
            while e < n {
                let x = t[e];
                acc += x * x;
                e += comptime!(PARTS * THREADS);
            }
        }
        let total = cube_sum::<F>(acc, &mut shared);
        if u == 0 {
            if accumulate {
                out[c] += total;
            } else {
                out[c] = total;
            }
        }
    }
}

use cube::*;

impl<R, F, I, BT> SumSquaresKernels for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn sum_squares_parts(ts: Vec<CubeTensor<R>>) -> CubeTensor<R> {
        let first = &ts[0];
        let client = first.client.clone();
        let out = empty(first, vec![PARTS]);
        let dtype = first.dtype;
        // Each tensor is a binding, and so is the output; keep a few for the metadata.
        let bindings = client.properties().hardware.max_bindings as usize;
        let group = GROUP.min(bindings.saturating_sub(4)).max(1);
        let ts: Vec<_> = ts.into_iter().map(into_contiguous).collect();
        for (i, chunk) in ts.chunks(group).enumerate() {
            let seq: SequenceArg<R, _> =
                chunk.iter().map(|t| t.clone().into_tensor_arg()).collect();
            launch!(sum_squares_kernel::<R>(
                &client,
                CubeCount::Static(PARTS as u32, 1, 1),
                CubeDim::new_1d(THREADS as u32),
                seq,
                out.clone().into_tensor_arg(),
                i > 0,
                dtype.into(),
            ));
        }
        out
    }
}

/// The kernel as CUDA C++ for architecture `sm` (see [`super::cuda_source`]).
pub(crate) fn cuda_kernels(
    props: &burn_cubecl::cubecl::ir::DeviceProperties,
    sm: u32,
) -> anyhow::Result<Vec<super::cuda_source::CudaKernel>> {
    let dim = CubeDim::new_1d(THREADS as u32);
    let def = cuda_definition!(props, dim, "sum_squares_kernel_f_f32", cube::sum_squares_kernel;
        inputs []; sequences [ts: GROUP]; outputs [out]; scalars []; comptime [true]);
    Ok(vec![super::cuda_source::compile("sum_squares", def, sm)?])
}

mod fusion {
    //! The op as a custom operation of Burn's `Fusion` stream.

    use super::{SumSquaresKernels, PARTS};
    use crate::model::kernels::fusion_op::register;
    use burn::tensor::ops::FloatTensor;
    use burn::tensor::Shape;
    use burn_fusion::{Fusion, FusionBackend};

    impl<B: FusionBackend + SumSquaresKernels> SumSquaresKernels for Fusion<B> {
        fn sum_squares_parts(ts: Vec<FloatTensor<Self>>) -> FloatTensor<Self> {
            let run = |inputs| vec![B::sum_squares_parts(inputs)];
            let [out] = register::<B, _, 1>("sum_squares", ts, [Shape::new([PARTS])], run);
            out
        }
    }
}

/// The `[PARTS]` partial sums of the squares of all of `ts` (their sum is `Σ_t Σ t²`); `ts`
/// must not be empty.
pub fn parts<B: SumSquaresKernels>(ts: Vec<Tensor<B, 1>>) -> Tensor<B, 1> {
    let ts = ts
        .into_iter()
        .map(|t| t.into_primitive().tensor())
        .collect();
    Tensor::from_primitive(TensorPrimitive::Float(B::sum_squares_parts(ts)))
}
