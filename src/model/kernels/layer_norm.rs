//! Fused layer norm over the last dimension, forward and backward: one launch forward, two
//! backward, where Burn's decomposition (`B::layer_norm`'s default: mean, centre, mean of
//! squares, square root, divide, scale, shift, and their autodiff nodes) launched about six
//! forward and twenty backward on the GPU backends.
//!
//! The arithmetic is the decomposition's, in f32: `μ = mean(x)`, `c = x − μ`,
//! `σ = √(mean(c²) + ε)`, `y = c / σ · γ + β` (two passes over the row, as PyTorch's and Burn's
//! reference). Backward, with `x̂ = c / σ` and `g = dy · γ`:
//! `dx = (g − mean(g) − x̂ · mean(g · x̂)) / σ`, `dγ = Σ_rows dy · x̂`, `dβ = Σ_rows dy`.
//!
//! Layout (contiguous f32): `x`, `y`, `dy`, `dx` `[rows, H]`; `γ`, `β` `[H]`; the row
//! statistics `(μ, σ)` `[rows, 2]`, kept by the forward pass for the backward pass.
//!
//! Forward and the `dx` kernel: a cube of [`ROW_THREADS`] threads per row, reducing through
//! shared memory. `dγ`/`dβ`: a cube of 32 columns × 8 row lanes, each lane summing every eighth
//! row for its column (neighbouring lanes read neighbouring addresses), the 8 partial sums
//! added in shared memory.

use crate::model::kernels::empty;
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

/// Threads per row in the row kernels.
pub const ROW_THREADS: usize = 256;
/// Columns per cube of the `dγ`/`dβ` kernel (one warp's lanes).
const COLUMNS: usize = 32;
/// Row lanes per cube of the `dγ`/`dβ` kernel.
const ROW_LANES: usize = 8;
/// Cubes along x before a second grid dimension is used (wgpu's limit per dimension).
const MAX_CUBES_X: usize = 65_535;

/// A backend with the fused layer norm (see the module documentation).
pub trait LayerNormKernels: Backend {
    /// `(y, stats)` for `x` `[rows, H]`.
    fn layer_norm_forward(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        eps: f32,
    ) -> [FloatTensor<Self>; 2];

    /// `(dx, dγ, dβ)` from the output's gradient `dy` `[rows, H]`.
    fn layer_norm_backward(
        dy: FloatTensor<Self>,
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        stats: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 3];
}

/// The CubeCL kernels (kept apart: CubeCL's `Tensor` is not Burn's).
mod cube {
    use super::{COLUMNS, ROW_LANES, ROW_THREADS};
    use crate::model::kernels::reduce::cube_sum;
    use burn_cubecl::cubecl;
    use burn_cubecl::cubecl::prelude::*;

    /// The row this cube owns (cubes may run along x and y).
    #[cube]
    fn row_of_cube() -> usize {
        CUBE_POS_Y as usize * CUBE_COUNT_X as usize + CUBE_POS_X as usize
    }

    /// One row a cube: `y`, and the row's `(μ, σ)` into `stats`.
    #[cube(launch, launch_unchecked)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn layer_norm_forward_kernel<F: Float>(
        x: &Tensor<F>,
        gamma: &Tensor<F>,
        beta: &Tensor<F>,
        y: &mut Tensor<F>,
        stats: &mut Tensor<F>,
        rows: u32,
        width: u32,
        eps: f32,
        #[define(F)] _dtype: StorageType,
    ) {
        let row = row_of_cube();
        if row >= rows as usize {
            terminate!();
        }
        let w = width as usize;
        let base = row * w;
        let t = UNIT_POS_X as usize;
        let n = F::cast_from(width);
        let mut shared = SharedMemory::<F>::new(ROW_THREADS);
        let mut s = F::new(0.0);
        let mut e = t;
        while e < w {
            s += x[base + e];
            e += ROW_THREADS;
        }
        let mean = cube_sum::<F>(s, &mut shared) / n;
        let mut q = F::new(0.0);
        e = t;
        while e < w {
            let c = x[base + e] - mean;
            q += c * c;
            e += ROW_THREADS;
        }
        let var = cube_sum::<F>(q, &mut shared) / n;
        let sigma = F::sqrt(var + F::cast_from(eps));
        e = t;
        while e < w {
            y[base + e] = (x[base + e] - mean) / sigma * gamma[e] + beta[e];
            e += ROW_THREADS;
        }
        if t == 0 {
            stats[row * 2] = mean;
            stats[row * 2 + 1] = sigma;
        }
    }

    /// One row a cube: `dx`.
    #[cube(launch, launch_unchecked)]
    pub(super) fn layer_norm_dx_kernel<F: Float>(
        dy: &Tensor<F>,
        x: &Tensor<F>,
        gamma: &Tensor<F>,
        stats: &Tensor<F>,
        dx: &mut Tensor<F>,
        rows: u32,
        width: u32,
        #[define(F)] _dtype: StorageType,
    ) {
        let row = row_of_cube();
        if row >= rows as usize {
            terminate!();
        }
        let w = width as usize;
        let base = row * w;
        let t = UNIT_POS_X as usize;
        let n = F::cast_from(width);
        let mean = stats[row * 2];
        let sigma = stats[row * 2 + 1];
        let mut shared = SharedMemory::<F>::new(ROW_THREADS);
        let mut sg = F::new(0.0);
        let mut sgx = F::new(0.0);
        let mut e = t;
        while e < w {
            let g = dy[base + e] * gamma[e];
            sg += g;
            sgx += g * ((x[base + e] - mean) / sigma);
            e += ROW_THREADS;
        }
        let mean_g = cube_sum::<F>(sg, &mut shared) / n;
        let mean_gx = cube_sum::<F>(sgx, &mut shared) / n;
        e = t;
        while e < w {
            let g = dy[base + e] * gamma[e];
            let xh = (x[base + e] - mean) / sigma;
            dx[base + e] = (g - mean_g - xh * mean_gx) / sigma;
            e += ROW_THREADS;
        }
    }

    /// `dγ` and `dβ`: a cube owns [`COLUMNS`] columns; lane `s` of [`ROW_LANES`] sums rows
    /// `r ≡ s mod ROW_LANES`.
    #[cube(launch, launch_unchecked)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn layer_norm_params_kernel<F: Float>(
        dy: &Tensor<F>,
        x: &Tensor<F>,
        stats: &Tensor<F>,
        dgamma: &mut Tensor<F>,
        dbeta: &mut Tensor<F>,
        rows: u32,
        width: u32,
        #[define(F)] _dtype: StorageType,
    ) {
        let lane = UNIT_POS_X as usize;
        let s = UNIT_POS_Y as usize;
        let col = CUBE_POS_X as usize * COLUMNS + lane;
        let w = width as usize;
        // One shared array (γ's partial sums, then β's): separate arrays are laid out in an
        // order that changes from process to process (see the attention kernels).
        let mut part = SharedMemory::<F>::new(comptime!(2 * COLUMNS * ROW_LANES));
        let pb = comptime!(COLUMNS * ROW_LANES);
        let mut ag = F::new(0.0);
        let mut ab = F::new(0.0);
        if col < w {
            let mut r = s;
            while r < rows as usize {
                let d = dy[r * w + col];
                ag += d * ((x[r * w + col] - stats[r * 2]) / stats[r * 2 + 1]);
                ab += d;
                r += ROW_LANES;
            }
        }
        part[s * COLUMNS + lane] = ag;
        part[pb + s * COLUMNS + lane] = ab;
        sync_cube();
        if s == 0 && col < w {
            let mut g = F::new(0.0);
            let mut b = F::new(0.0);
            #[unroll]
            for p in 0..ROW_LANES {
                g += part[p * COLUMNS + lane];
                b += part[pb + p * COLUMNS + lane];
            }
            dgamma[col] = g;
            dbeta[col] = b;
        }
    }
}

use cube::*;

/// `[rows, H]` of a 2-D tensor.
fn dims2<R: CubeRuntime>(t: &CubeTensor<R>) -> (usize, usize) {
    let s = t.meta.shape();
    (s[0], s[1])
}

/// One cube of [`ROW_THREADS`] per row, along x then y.
fn row_grid(rows: usize) -> (CubeCount, CubeDim) {
    let x = rows.clamp(1, MAX_CUBES_X);
    (
        CubeCount::Static(x as u32, rows.div_ceil(x).max(1) as u32, 1),
        CubeDim::new_1d(ROW_THREADS as u32),
    )
}

/// The cube of the row kernels and of the `dγ`/`dβ` kernel (for the CUDA compiler check).
pub(crate) fn cube_dims() -> (CubeDim, CubeDim) {
    (
        CubeDim::new_1d(ROW_THREADS as u32),
        CubeDim::new_2d(COLUMNS as u32, ROW_LANES as u32),
    )
}

impl<R, F, I, BT> LayerNormKernels for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn layer_norm_forward(
        x: CubeTensor<R>,
        gamma: CubeTensor<R>,
        beta: CubeTensor<R>,
        eps: f32,
    ) -> [CubeTensor<R>; 2] {
        let (x, gamma, beta) = (
            into_contiguous(x),
            into_contiguous(gamma),
            into_contiguous(beta),
        );
        let (rows, w) = dims2(&x);
        let y = empty(&x, vec![rows, w]);
        let stats = empty(&x, vec![rows, 2]);
        let (count, dim) = row_grid(rows);
        let dtype = x.dtype;
        launch!(layer_norm_forward_kernel::<R>(
            &x.client.clone(),
            count,
            dim,
            x.into_tensor_arg(),
            gamma.into_tensor_arg(),
            beta.into_tensor_arg(),
            y.clone().into_tensor_arg(),
            stats.clone().into_tensor_arg(),
            rows as u32,
            w as u32,
            eps,
            dtype.into(),
        ));
        [y, stats]
    }

    fn layer_norm_backward(
        dy: CubeTensor<R>,
        x: CubeTensor<R>,
        gamma: CubeTensor<R>,
        stats: CubeTensor<R>,
    ) -> [CubeTensor<R>; 3] {
        let (dy, x) = (into_contiguous(dy), into_contiguous(x));
        let (gamma, stats) = (into_contiguous(gamma), into_contiguous(stats));
        let (rows, w) = dims2(&x);
        let dx = empty(&x, vec![rows, w]);
        let dgamma = empty(&x, vec![w]);
        let dbeta = empty(&x, vec![w]);
        let client = x.client.clone();
        let dtype = x.dtype;
        let (count, dim) = row_grid(rows);
        launch!(layer_norm_dx_kernel::<R>(
            &client,
            count,
            dim,
            dy.clone().into_tensor_arg(),
            x.clone().into_tensor_arg(),
            gamma.into_tensor_arg(),
            stats.clone().into_tensor_arg(),
            dx.clone().into_tensor_arg(),
            rows as u32,
            w as u32,
            dtype.into(),
        ));
        let count = CubeCount::Static(w.div_ceil(COLUMNS) as u32, 1, 1);
        launch!(layer_norm_params_kernel::<R>(
            &client,
            count,
            cube_dims().1,
            dy.into_tensor_arg(),
            x.into_tensor_arg(),
            stats.into_tensor_arg(),
            dgamma.clone().into_tensor_arg(),
            dbeta.clone().into_tensor_arg(),
            rows as u32,
            w as u32,
            dtype.into(),
        ));
        [dx, dgamma, dbeta]
    }
}

/// The three kernels as CUDA C++ for architecture `sm` (see [`super::cuda_source`]).
pub(crate) fn cuda_kernels(
    props: &burn_cubecl::cubecl::ir::DeviceProperties,
    sm: u32,
) -> anyhow::Result<Vec<super::cuda_source::CudaKernel>> {
    let (row, params) = cube_dims();
    let forward = cuda_definition!(props, row, "layer_norm_forward_kernel_f_f32", cube::layer_norm_forward_kernel;
        inputs [x, gamma, beta]; outputs [y, stats];
        scalars [rows: u32, width: u32, eps: f32]; comptime []);
    let dx = cuda_definition!(props, row, "layer_norm_dx_kernel_f_f32", cube::layer_norm_dx_kernel;
        inputs [dy, x, gamma, stats]; outputs [dx];
        scalars [rows: u32, width: u32]; comptime []);
    let grads = cuda_definition!(props, params, "layer_norm_params_kernel_f_f32", cube::layer_norm_params_kernel;
        inputs [dy, x, stats]; outputs [dgamma, dbeta];
        scalars [rows: u32, width: u32]; comptime []);
    Ok(vec![
        super::cuda_source::compile("layer_norm_forward", forward, sm)?,
        super::cuda_source::compile("layer_norm_dx", dx, sm)?,
        super::cuda_source::compile("layer_norm_params", grads, sm)?,
    ])
}

mod fusion {
    //! The ops as custom operations of Burn's `Fusion` stream.

    use super::LayerNormKernels;
    use crate::model::kernels::fusion_op::{register, take};
    use burn::tensor::ops::FloatTensor;
    use burn::tensor::{Shape, TensorMetadata};
    use burn_fusion::{Fusion, FusionBackend};

    impl<B: FusionBackend + LayerNormKernels> LayerNormKernels for Fusion<B> {
        fn layer_norm_forward(
            x: FloatTensor<Self>,
            gamma: FloatTensor<Self>,
            beta: FloatTensor<Self>,
            eps: f32,
        ) -> [FloatTensor<Self>; 2] {
            let shape = x.shape();
            let stats = Shape::new([shape[0], 2]);
            register::<B, _, 2>(
                "layer_norm_forward",
                vec![x, gamma, beta],
                [shape, stats],
                move |inputs: Vec<FloatTensor<B>>| {
                    let [x, gamma, beta] = take(inputs);
                    B::layer_norm_forward(x, gamma, beta, eps).into()
                },
            )
        }

        fn layer_norm_backward(
            dy: FloatTensor<Self>,
            x: FloatTensor<Self>,
            gamma: FloatTensor<Self>,
            stats: FloatTensor<Self>,
        ) -> [FloatTensor<Self>; 3] {
            let shape = x.shape();
            let width = gamma.shape();
            register::<B, _, 3>(
                "layer_norm_backward",
                vec![dy, x, gamma, stats],
                [shape, width.clone(), width],
                |inputs: Vec<FloatTensor<B>>| {
                    let [dy, x, gamma, stats] = take(inputs);
                    B::layer_norm_backward(dy, x, gamma, stats).into()
                },
            )
        }
    }
}

fn float<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// `[.., H]` -> `[rows, H]` primitive.
fn rows_of<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    let dims = t.dims();
    let w = dims[D - 1];
    let rows = dims.iter().product::<usize>() / w.max(1);
    t.reshape([rows, w]).into_primitive().tensor()
}

/// The layer norm without autodiff (prediction): `x` `[.., H]`, `γ`, `β` `[H]`.
pub fn forward<B: LayerNormKernels, const D: usize>(
    x: Tensor<B, D>,
    gamma: Tensor<B, 1>,
    beta: Tensor<B, 1>,
    eps: f32,
) -> Tensor<B, D> {
    let dims = x.dims();
    let [y, _] = B::layer_norm_forward(
        rows_of(x),
        gamma.into_primitive().tensor(),
        beta.into_primitive().tensor(),
        eps,
    );
    float::<B, 2>(y).reshape(dims)
}

/// The layer norm with its backward pass; gradients reach `x`, `γ` and `β`.
pub fn forward_autodiff<B: LayerNormKernels, const D: usize>(
    x: Tensor<Autodiff<B>, D>,
    gamma: Tensor<Autodiff<B>, 1>,
    beta: Tensor<Autodiff<B>, 1>,
    eps: f32,
) -> Tensor<Autodiff<B>, D> {
    #[derive(Debug)]
    struct LayerNormBackward;

    impl<B: LayerNormKernels> Backward<B, 3> for LayerNormBackward {
        /// `x` `[rows, H]`, `γ`, the row statistics; the shape of `x`.
        type State = ([FloatTensor<B>; 3], Vec<usize>);

        fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let ([x, gamma, stats], dims) = ops.state;
            let w = dims[dims.len() - 1];
            let rows = dims.iter().product::<usize>() / w.max(1);
            let dy = B::float_reshape(grads.consume::<B>(&ops.node), Shape::new([rows, w]));
            let [dx, dgamma, dbeta] = B::layer_norm_backward(dy, x, gamma, stats);
            let [node_x, node_gamma, node_beta] = ops.parents;
            if let Some(node) = node_x {
                grads.register::<B>(node.id, B::float_reshape(dx, Shape::from(dims)));
            }
            if let Some(node) = node_gamma {
                grads.register::<B>(node.id, dgamma);
            }
            if let Some(node) = node_beta {
                grads.register::<B>(node.id, dbeta);
            }
        }
    }

    let dims = x.dims();
    let (x, gamma, beta) = (
        x.into_primitive().tensor(),
        gamma.into_primitive().tensor(),
        beta.into_primitive().tensor(),
    );
    let prep = LayerNormBackward
        .prepare::<NoCheckpointing>([x.node.clone(), gamma.node.clone(), beta.node.clone()])
        .compute_bound()
        .stateful();
    let x_rows = rows_of(float::<B, D>(x.primitive));
    let [y, stats] =
        B::layer_norm_forward(x_rows.clone(), gamma.primitive.clone(), beta.primitive, eps);
    let y = float::<B, 2>(y).reshape(dims).into_primitive().tensor();
    let out = match prep {
        OpsKind::Tracked(prep) => prep.finish(([x_rows, gamma.primitive, stats], dims.to_vec()), y),
        OpsKind::UnTracked(prep) => prep.finish(y),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}
