//! A linear layer's bias add whose backward pass takes the bias gradient (the column sums of
//! the output's gradient) in one launch: a cube of 32 columns × 8 row lanes, each lane summing
//! every eighth row of its column, the 8 partial sums added in shared memory. Burn's autodiff
//! reduces a broadcast add over each broadcast dimension in turn. The forward pass is Burn's
//! own add (fused with what is around it).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Shape, Tensor, TensorPrimitive};
use burn_cubecl::cubecl::prelude::{CubeCount, CubeDim};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

use super::empty;

/// Columns per cube (one warp's lanes).
const COLUMNS: usize = 32;
/// Row lanes per cube.
const ROW_LANES: usize = 8;

/// A backend with the one-launch column sums.
pub trait BiasKernels: Backend {
    /// `Σ_rows t[r, c]` of `t` `[rows, H]`: `[H]`.
    fn column_sums(t: FloatTensor<Self>) -> FloatTensor<Self>;
}

mod cube {
    use super::{COLUMNS, ROW_LANES};
    use burn_cubecl::cubecl;
    use burn_cubecl::cubecl::prelude::*;

    /// A cube owns [`COLUMNS`] columns; lane `s` of [`ROW_LANES`] sums rows `r ≡ s`.
    #[cube(launch, launch_unchecked)]
    pub(super) fn column_sums_kernel<F: Float>(
        t: &Tensor<F>,
        out: &mut Tensor<F>,
        rows: u32,
        width: u32,
        #[define(F)] _dtype: StorageType,
    ) {
        let lane = UNIT_POS_X as usize;
        let s = UNIT_POS_Y as usize;
        let col = CUBE_POS_X as usize * COLUMNS + lane;
        let w = width as usize;
        let mut part = SharedMemory::<F>::new(comptime!(COLUMNS * ROW_LANES));
        let mut acc = F::new(0.0);
        if col < w {
            let mut r = s;
            while r < rows as usize {
                acc += t[r * w + col];
                r += ROW_LANES;
            }
        }
        part[s * COLUMNS + lane] = acc;
        sync_cube();
        if s == 0 && col < w {
            let mut sum = F::new(0.0);
            #[unroll]
            for p in 0..ROW_LANES {
                sum += part[p * COLUMNS + lane];
            }
            out[col] = sum;
        }
    }
}

use cube::*;

fn cube_dim() -> CubeDim {
    CubeDim::new_2d(COLUMNS as u32, ROW_LANES as u32)
}

impl<R, F, I, BT> BiasKernels for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn column_sums(t: CubeTensor<R>) -> CubeTensor<R> {
        let t = into_contiguous(t);
        let (rows, w) = (t.meta.shape()[0], t.meta.shape()[1]);
        let out = empty(&t, vec![w]);
        let dtype = t.dtype;
        launch!(column_sums_kernel::<R>(
            &t.client.clone(),
            CubeCount::Static(w.div_ceil(COLUMNS) as u32, 1, 1),
            cube_dim(),
            t.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            rows as u32,
            w as u32,
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
    let def = cuda_definition!(props, cube_dim(), "column_sums_kernel_f_f32", cube::column_sums_kernel;
        inputs [t]; outputs [out]; scalars [rows: u32, width: u32]; comptime []);
    Ok(vec![super::cuda_source::compile("column_sums", def, sm)?])
}

mod fusion {
    //! The op as a custom operation of Burn's `Fusion` stream.

    use super::BiasKernels;
    use crate::model::kernels::fusion_op::{register, take};
    use burn::tensor::ops::FloatTensor;
    use burn::tensor::{Shape, TensorMetadata};
    use burn_fusion::{Fusion, FusionBackend};

    impl<B: FusionBackend + BiasKernels> BiasKernels for Fusion<B> {
        fn column_sums(t: FloatTensor<Self>) -> FloatTensor<Self> {
            let w = t.shape()[1];
            let run = |inputs: Vec<FloatTensor<B>>| {
                let [t] = take(inputs);
                vec![B::column_sums(t)]
            };
            let [out] = register::<B, _, 1>("column_sums", vec![t], [Shape::new([w])], run);
            out
        }
    }
}

/// `x + bias` (broadcast over the leading dimensions of `x` `[.., H]`), with the bias gradient
/// taken by [`BiasKernels::column_sums`].
pub fn add<B: BiasKernels, const D: usize>(
    x: Tensor<Autodiff<B>, D>,
    bias: Tensor<Autodiff<B>, 1>,
) -> Tensor<Autodiff<B>, D> {
    #[derive(Debug)]
    struct BiasBackward;

    impl<B: BiasKernels> Backward<B, 2> for BiasBackward {
        /// The shape of `x`.
        type State = Vec<usize>;

        fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
            let dims = ops.state;
            let dy = grads.consume::<B>(&ops.node);
            let [node_x, node_bias] = ops.parents;
            if let Some(node) = node_bias {
                let w = dims[dims.len() - 1];
                let rows = dims.iter().product::<usize>() / w.max(1);
                let flat = B::float_reshape(dy.clone(), Shape::new([rows, w]));
                grads.register::<B>(node.id, B::column_sums(flat));
            }
            if let Some(node) = node_x {
                grads.register::<B>(node.id, dy);
            }
        }
    }

    let dims = x.dims();
    let (x, bias) = (x.into_primitive().tensor(), bias.into_primitive().tensor());
    let prep = BiasBackward
        .prepare::<NoCheckpointing>([x.node.clone(), bias.node.clone()])
        .compute_bound()
        .stateful();
    let y: Tensor<B, D> = Tensor::from_primitive(TensorPrimitive::Float(x.primitive))
        + Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(bias.primitive)).unsqueeze();
    let y = y.into_primitive().tensor();
    let out = match prep {
        OpsKind::Tracked(prep) => prep.finish(dims.to_vec(), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}
