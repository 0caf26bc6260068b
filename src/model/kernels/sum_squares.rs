//! `Σ t²` of a tensor in one launch, for gradient clipping's global norm: [`PARTS`] cubes each
//! sum the squares of every `PARTS`-th block of 256 elements and write their sum to one slot
//! of a `[PARTS]` output. The caller adds the outputs of all gradients element-wise (fused) and
//! sums the last `[PARTS]` vector once, so a gradient costs one launch, not a reduction's two.

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};
use burn_cubecl::cubecl::prelude::{CubeCount, CubeDim};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

use super::empty;

/// Partial sums per tensor (cubes per launch).
pub const PARTS: usize = 64;
/// Threads per cube.
const THREADS: usize = 256;

/// A backend with the one-launch `Σ t²`.
pub trait SumSquaresKernels: Backend {
    /// The `[PARTS]` partial sums of the squares of `t` (any shape, f32).
    fn sum_squares_parts(t: FloatTensor<Self>) -> FloatTensor<Self>;
}

mod cube {
    use super::{PARTS, THREADS};
    use crate::model::kernels::reduce::cube_sum;
    use burn_cubecl::cubecl;
    use burn_cubecl::cubecl::prelude::*;

    /// Cube `c` sums `t[e]²` for the elements `e` of the blocks `c, c + PARTS, …` of
    /// [`THREADS`] elements, and writes the sum to `out[c]`.
    #[cube(launch, launch_unchecked)]
    pub(super) fn sum_squares_kernel<F: Float>(
        t: &Tensor<F>,
        out: &mut Tensor<F>,
        len: u32,
        #[define(F)] _dtype: StorageType,
    ) {
        let c = CUBE_POS_X as usize;
        let u = UNIT_POS_X as usize;
        let n = len as usize;
        let mut shared = SharedMemory::<F>::new(THREADS);
        let mut acc = F::new(0.0);
        let mut e = c * THREADS + u;
        while e < n {
            let x = t[e];
            acc += x * x;
            e += comptime!(PARTS * THREADS);
        }
        let total = cube_sum::<F>(acc, &mut shared);
        if u == 0 {
            out[c] = total;
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
    fn sum_squares_parts(t: CubeTensor<R>) -> CubeTensor<R> {
        let t = into_contiguous(t);
        let n: usize = t.meta.shape().iter().product();
        let out = empty(&t, vec![PARTS]);
        let dtype = t.dtype;
        launch!(sum_squares_kernel::<R>(
            &t.client.clone(),
            CubeCount::Static(PARTS as u32, 1, 1),
            CubeDim::new_1d(THREADS as u32),
            t.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            n as u32,
            dtype.into(),
        ));
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
        inputs [t]; outputs [out]; scalars [len: u32]; comptime []);
    Ok(vec![super::cuda_source::compile("sum_squares", def, sm)?])
}

mod fusion {
    //! The op as a custom operation of Burn's `Fusion` stream.

    use super::{SumSquaresKernels, PARTS};
    use crate::model::kernels::fusion_op::{register, take, Kernel};
    use burn::tensor::ops::FloatTensor;
    use burn::tensor::Shape;
    use burn_fusion::{Fusion, FusionBackend};

    #[derive(Clone, Debug)]
    struct Call;

    impl<B: FusionBackend + SumSquaresKernels> Kernel<B> for Call {
        fn run(&self, inputs: Vec<FloatTensor<B>>) -> Vec<FloatTensor<B>> {
            let [t] = take(inputs);
            vec![B::sum_squares_parts(t)]
        }
    }

    impl<B: FusionBackend + SumSquaresKernels> SumSquaresKernels for Fusion<B> {
        fn sum_squares_parts(t: FloatTensor<Self>) -> FloatTensor<Self> {
            let [out] = register::<B, _, 1>("sum_squares", vec![t], [Shape::new([PARTS])], Call);
            out
        }
    }
}

/// The `[PARTS]` partial sums of `t`'s squares (their sum is `Σ t²`).
pub fn parts<B: SumSquaresKernels>(t: Tensor<B, 1>) -> Tensor<B, 1> {
    Tensor::from_primitive(TensorPrimitive::Float(B::sum_squares_parts(
        t.into_primitive().tensor(),
    )))
}
