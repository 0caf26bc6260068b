//! The fused LSTM recurrence: one kernel launch per time step forward (the recurrent product of
//! every row and both directions plus the gate and cell update), one per time step backward, and
//! the weight gradient as one batched matrix product over all steps.
//!
//! Layout (all contiguous, f32): the input projections `xp` `[n, l, 4H]` (gates i, f, g, o, each
//! `[H]`, already holding `x W_ihᵀ + b_ih + b_hh`), where rows `d·rows .. (d+1)·rows` belong to
//! direction `d`; the recurrent weights transposed, `w` `[dirs, H, 4H]`. The forward pass keeps
//! the cell states `c` `[n, l, H]` and the activated gates `[n, l, 4H]` for the backward pass,
//! so nothing is recomputed there. Each thread owns one hidden unit of one row: its four gate
//! pre-activations are four dot products of the previous state with columns of `w`, which
//! neighbouring threads read from neighbouring addresses.
//!
//! The step's state comes from the previous launch, so a launch per step is the fewest a
//! recurrence over global memory allows (a grid-wide barrier does not exist on wgpu).
//!
//! The backward pass goes through the steps in reverse, reading `w` transposed (`[dirs, 4H, H]`,
//! made once per pass) so that its loads are coalesced as the forward pass's are. Per step and
//! unit:
//! `dh = dy + Σ_k dG_{t+1}[k] w[j, k]`, `dc = dh·o·(1 − tanh²c) + dc_{t+1}·f_{t+1}`, then the
//! pre-activation gradients `dG_t` of the four gates. `dG` is the gradient of `xp`; the
//! weight gradient is `Σ_t h_{t−1}ᵀ dG_t`, one batched product.

use super::empty;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};
use burn_cubecl::cubecl::prelude::{CubeCount, CubeDim};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

/// A backend with the fused LSTM recurrence. See the module documentation for the layouts.
pub trait LstmKernels: Backend {
    /// From a zero state over all `l` steps: the outputs `h` `[n, l, H]`, the cell states
    /// `[n, l, H]` and the activated gates `[n, l, 4H]`. `rows` rows per direction.
    fn lstm_forward(
        xp: FloatTensor<Self>,
        w: FloatTensor<Self>,
        rows: usize,
    ) -> [FloatTensor<Self>; 3];

    /// The gradient of `xp` (`dG`, `[n, l, 4H]`) from the outputs' gradient `dy` `[n, l, H]`
    /// and what [`Self::lstm_forward`] kept.
    fn lstm_backward(
        dy: FloatTensor<Self>,
        c: FloatTensor<Self>,
        gates: FloatTensor<Self>,
        w: FloatTensor<Self>,
        rows: usize,
    ) -> FloatTensor<Self>;
}

/// Hidden units per cube: one warp's lanes, reading neighbouring columns of the weights.
pub const UNITS: usize = 32;
/// Warps per cube, each summing every `SPLIT`-th term of the recurrent product.
pub const SPLIT: usize = 8;
/// Rows per cube: each weight loaded serves this many rows (of one direction).
pub const ROW_CHUNK: usize = 4;

/// The CubeCL kernels (kept apart: CubeCL's `Tensor` is not Burn's).
mod cube {
    use super::{ROW_CHUNK, SPLIT, UNITS};
    use burn_cubecl::cubecl;
    use burn_cubecl::cubecl::prelude::*;

    /// σ(x) without overflow: `1/(1+e^−|x|)` for x ≥ 0, `e^−|x|/(1+e^−|x|)` below.
    #[cube]
    fn sigmoid<F: Float>(x: F) -> F {
        let e = F::exp(-F::abs(x));
        let s = F::new(1.0) / (F::new(1.0) + e);
        let mut r = s;
        if x < F::new(0.0) {
            r = e * s;
        }
        r
    }

    /// This thread's place in its cube: unit `j` (lane), split `s` (warp), the cube's first row
    /// `r0` within its direction `d`.
    #[cube]
    fn place() -> (usize, usize, usize, usize) {
        let j = CUBE_POS_X as usize * UNITS + UNIT_POS_X as usize;
        let s = UNIT_POS_Y as usize;
        let r0 = CUBE_POS_Y as usize * ROW_CHUNK;
        let d = CUBE_POS_Z as usize;
        (j, s, r0, d)
    }

    /// One forward time step `t`. A cube owns [`UNITS`] hidden units of [`ROW_CHUNK`] rows of
    /// one direction: each of its [`SPLIT`] warps sums a slice of the recurrent product
    /// (`m ≡ s mod SPLIT`) for every row at once, so each weight it loads (a row of `w`,
    /// contiguous across the warp's lanes) serves all the rows; the partial sums meet in shared
    /// memory, and the first `ROW_CHUNK` warps finish one row each (gates, cell, output).
    #[cube(launch, launch_unchecked)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn lstm_step_forward<F: Float>(
        xp: &Tensor<F>,
        w: &Tensor<F>,
        y: &mut Tensor<F>,
        c: &mut Tensor<F>,
        gates: &mut Tensor<F>,
        t: u32,
        len: u32,
        hidden: u32,
        rows: u32,
        #[define(F)] _dtype: StorageType,
    ) {
        let (j, s, r0, d) = place();
        let h = hidden as usize;
        let l = len as usize;
        let t = t as usize;
        let rows = rows as usize;
        let h4 = 4 * h;
        let lane = UNIT_POS_X as usize;
        // part[((p · 4 + gate) · ROW_CHUNK + r) · UNITS + lane]
        let mut part = SharedMemory::<F>::new(comptime!(SPLIT * 4 * ROW_CHUNK * UNITS));
        let mut acc = Array::<F>::new(comptime!(4 * ROW_CHUNK));
        #[unroll]
        for e in 0..comptime!(4 * ROW_CHUNK) {
            acc[e] = F::new(0.0);
        }
        if t > 0 && j < h {
            let w_at = d * h * h4 + j;
            let mut m = s;
            while m < h {
                let wm = w_at + m * h4;
                let w_i = w[wm];
                let w_f = w[wm + h];
                let w_g = w[wm + 2 * h];
                let w_o = w[wm + 3 * h];
                #[unroll]
                for r in 0..ROW_CHUNK {
                    let row = r0 + r;
                    if row < rows {
                        let n = d * rows + row;
                        let hm = y[(n * l + t - 1) * h + m];
                        acc[r] += hm * w_i;
                        acc[ROW_CHUNK + r] += hm * w_f;
                        acc[2 * ROW_CHUNK + r] += hm * w_g;
                        acc[3 * ROW_CHUNK + r] += hm * w_o;
                    }
                }
                m += SPLIT;
            }
        }
        #[unroll]
        for e in 0..comptime!(4 * ROW_CHUNK) {
            part[(s * 4usize * ROW_CHUNK + e) * UNITS + lane] = acc[e];
        }
        sync_cube();
        let row = r0 + s;
        if s < ROW_CHUNK && row < rows && j < h {
            let n = d * rows + row;
            let x_at = (n * l + t) * h4 + j;
            let mut a = Array::<F>::new(4usize);
            #[unroll]
            for g in 0..4usize {
                let mut sum = xp[x_at + g * h];
                #[unroll]
                for p in 0..SPLIT {
                    sum += part[((p * 4usize + g) * ROW_CHUNK + s) * UNITS + lane];
                }
                a[g] = sum;
            }
            let mut c_prev = F::new(0.0);
            if t > 0 {
                c_prev = c[(n * l + t - 1) * h + j];
            }
            let i = sigmoid::<F>(a[0]);
            let f = sigmoid::<F>(a[1]);
            let g = F::tanh(a[2]);
            let o = sigmoid::<F>(a[3]);
            let c_t = f * c_prev + i * g;
            let s_at = (n * l + t) * h + j;
            c[s_at] = c_t;
            y[s_at] = o * F::tanh(c_t);
            gates[x_at] = i;
            gates[x_at + h] = f;
            gates[x_at + 2 * h] = g;
            gates[x_at + 3 * h] = o;
        }
    }

    /// One backward time step `t`: writes `dG_t` and carries `dc` (`[n, H]`, read only when
    /// `t + 1 < l`, so it needs no initialisation). `wt` is `w` transposed, `[dirs, 4H, H]`:
    /// the cube is laid out as the forward one, each warp summing its slice of
    /// `Σ_k dG_{t+1}[k] · wt[k, j]` (`k ≡ s mod SPLIT`) for all its rows from one contiguous
    /// load of `wt` per `k`.
    #[cube(launch, launch_unchecked)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn lstm_step_backward<F: Float>(
        dy: &Tensor<F>,
        c: &Tensor<F>,
        gates: &Tensor<F>,
        wt: &Tensor<F>,
        dg: &mut Tensor<F>,
        dc: &mut Tensor<F>,
        t: u32,
        len: u32,
        hidden: u32,
        rows: u32,
        #[define(F)] _dtype: StorageType,
    ) {
        let (j, s, r0, d) = place();
        let h = hidden as usize;
        let l = len as usize;
        let t = t as usize;
        let rows = rows as usize;
        let h4 = 4 * h;
        let lane = UNIT_POS_X as usize;
        let one = F::new(1.0);
        let mut part = SharedMemory::<F>::new(comptime!(SPLIT * ROW_CHUNK * UNITS));
        let mut acc = Array::<F>::new(ROW_CHUNK);
        #[unroll]
        for r in 0..ROW_CHUNK {
            acc[r] = F::new(0.0);
        }
        if t + 1 < l && j < h {
            let wt_at = d * h4 * h + j;
            let mut k = s;
            while k < h4 {
                let wk = wt[wt_at + k * h];
                #[unroll]
                for r in 0..ROW_CHUNK {
                    let row = r0 + r;
                    if row < rows {
                        let n = d * rows + row;
                        acc[r] += dg[(n * l + t + 1) * h4 + k] * wk;
                    }
                }
                k += SPLIT;
            }
        }
        #[unroll]
        for r in 0..ROW_CHUNK {
            part[(s * ROW_CHUNK + r) * UNITS + lane] = acc[r];
        }
        sync_cube();
        let row = r0 + s;
        if s < ROW_CHUNK && row < rows && j < h {
            let n = d * rows + row;
            let s_at = (n * l + t) * h + j;
            let g_at = (n * l + t) * h4 + j;
            let mut dh = dy[s_at];
            #[unroll]
            for p in 0..SPLIT {
                dh += part[(p * ROW_CHUNK + s) * UNITS + lane];
            }
            let mut dc_next = F::new(0.0);
            if t + 1 < l {
                dc_next = dc[n * h + j] * gates[(n * l + t + 1) * h4 + h + j];
            }
            let i = gates[g_at];
            let f = gates[g_at + h];
            let g = gates[g_at + 2 * h];
            let o = gates[g_at + 3 * h];
            let tc = F::tanh(c[s_at]);
            let dc_t = dh * o * (one - tc * tc) + dc_next;
            let mut c_prev = F::new(0.0);
            if t > 0 {
                c_prev = c[s_at - h];
            }
            dg[g_at] = dc_t * g * i * (one - i);
            dg[g_at + h] = dc_t * c_prev * f * (one - f);
            dg[g_at + 2 * h] = dc_t * i * (one - g * g);
            dg[g_at + 3 * h] = dh * tc * o * (one - o);
            dc[n * h + j] = dc_t;
        }
    }
}

use cube::*;

/// `n`, `l` and `H` of `[n, l, 4H]` (the projections or the gates).
fn dims<R: CubeRuntime>(t: &CubeTensor<R>) -> (usize, usize, usize) {
    let s = t.meta.shape();
    (s[0], s[1], s[2] / 4)
}

/// The cube of both step kernels: [`UNITS`] lanes × [`SPLIT`] warps (256 threads).
pub(crate) fn cube_dim() -> CubeDim {
    CubeDim::new_2d(UNITS as u32, SPLIT as u32)
}

/// Cubes for `n` rows (`rows` per direction) of `h` units: units along x, row chunks along y,
/// directions along z.
fn grid(n: usize, h: usize, rows: usize) -> (CubeCount, CubeDim) {
    let count = CubeCount::Static(
        h.div_ceil(UNITS) as u32,
        rows.div_ceil(ROW_CHUNK) as u32,
        (n / rows) as u32,
    );
    (count, cube_dim())
}

impl<R, F, I, BT> LstmKernels for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn lstm_forward(xp: CubeTensor<R>, w: CubeTensor<R>, rows: usize) -> [CubeTensor<R>; 3] {
        let xp = into_contiguous(xp);
        let w = into_contiguous(w);
        let (n, l, h) = dims(&xp);
        let y = empty(&xp, vec![n, l, h]);
        let c = empty(&xp, vec![n, l, h]);
        let gates = empty(&xp, vec![n, l, 4 * h]);
        let client = xp.client.clone();
        let (count, dim) = grid(n, h, rows);
        let dtype = xp.dtype;
        for t in 0..l {
            launch!(lstm_step_forward::<R>(
                &client,
                count.clone(),
                dim,
                xp.clone().into_tensor_arg(),
                w.clone().into_tensor_arg(),
                y.clone().into_tensor_arg(),
                c.clone().into_tensor_arg(),
                gates.clone().into_tensor_arg(),
                t as u32,
                l as u32,
                h as u32,
                rows as u32,
                dtype.into(),
            ));
        }
        [y, c, gates]
    }

    fn lstm_backward(
        dy: CubeTensor<R>,
        c: CubeTensor<R>,
        gates: CubeTensor<R>,
        w: CubeTensor<R>,
        rows: usize,
    ) -> CubeTensor<R> {
        let dy = into_contiguous(dy);
        // `[dirs, 4H, H]`: one transposition per backward pass, for coalesced reads every step.
        let wt = into_contiguous(burn_cubecl::ops::permute(w, &[0, 2, 1]));
        let (n, l, h) = dims(&gates);
        let h4 = 4 * h;
        let dg = empty(&gates, vec![n, l, h4]);
        let dc = empty(&gates, vec![n, 1, h]);
        let client = gates.client.clone();
        let (count, dim) = grid(n, h, rows);
        let dtype = gates.dtype;
        for t in (0..l).rev() {
            launch!(lstm_step_backward::<R>(
                &client,
                count.clone(),
                dim,
                dy.clone().into_tensor_arg(),
                c.clone().into_tensor_arg(),
                gates.clone().into_tensor_arg(),
                wt.clone().into_tensor_arg(),
                dg.clone().into_tensor_arg(),
                dc.clone().into_tensor_arg(),
                t as u32,
                l as u32,
                h as u32,
                rows as u32,
                dtype.into(),
            ));
        }
        dg
    }
}

/// The two step kernels as CUDA C++ for architecture `sm` (see [`super::cuda_source`]).
pub(crate) fn cuda_kernels(
    props: &burn_cubecl::cubecl::ir::DeviceProperties,
    sm: u32,
) -> anyhow::Result<Vec<super::cuda_source::CudaKernel>> {
    let dim = cube_dim();
    let forward = cuda_definition!(props, dim, "lstm_step_forward_f_f32", cube::lstm_step_forward;
        inputs [xp, w]; outputs [y, c, gates];
        scalars [t: u32, len: u32, hidden: u32, rows: u32]; comptime []);
    let backward = cuda_definition!(props, dim, "lstm_step_backward_f_f32", cube::lstm_step_backward;
        inputs [dy, c, gates, wt]; outputs [dg, dc];
        scalars [t: u32, len: u32, hidden: u32, rows: u32]; comptime []);
    Ok(vec![
        super::cuda_source::compile("lstm_step_forward", forward, sm)?,
        super::cuda_source::compile("lstm_step_backward", backward, sm)?,
    ])
}

mod fusion {
    //! The ops as custom operations of Burn's `Fusion` stream.

    use super::LstmKernels;
    use crate::model::kernels::fusion_op::{register, take};
    use burn::tensor::ops::FloatTensor;
    use burn::tensor::{Shape, TensorMetadata};
    use burn_fusion::{Fusion, FusionBackend};

    impl<B: FusionBackend + LstmKernels> LstmKernels for Fusion<B> {
        fn lstm_forward(
            xp: FloatTensor<Self>,
            w: FloatTensor<Self>,
            rows: usize,
        ) -> [FloatTensor<Self>; 3] {
            let [n, l, h4] = xp.shape().dims::<3>();
            let state = Shape::new([n, l, h4 / 4]);
            register::<B, _, 3>(
                "lstm_forward",
                vec![xp, w],
                [state.clone(), state, Shape::new([n, l, h4])],
                move |inputs: Vec<FloatTensor<B>>| {
                    let [xp, w] = take(inputs);
                    B::lstm_forward(xp, w, rows).into()
                },
            )
        }

        fn lstm_backward(
            dy: FloatTensor<Self>,
            c: FloatTensor<Self>,
            gates: FloatTensor<Self>,
            w: FloatTensor<Self>,
            rows: usize,
        ) -> FloatTensor<Self> {
            let shape = gates.shape();
            let [dg] = register::<B, _, 1>(
                "lstm_backward",
                vec![dy, c, gates, w],
                [shape],
                move |inputs: Vec<FloatTensor<B>>| {
                    let [dy, c, gates, w] = take(inputs);
                    vec![B::lstm_backward(dy, c, gates, w, rows)]
                },
            );
            dg
        }
    }
}

fn float<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// The recurrence on a backend without autodiff (prediction): `xp` `[n, l, 4H]`, `w`
/// `[dirs, H, 4H]` -> `h` `[n, l, H]`.
pub fn forward<B: LstmKernels>(xp: Tensor<B, 3>, w: Tensor<B, 3>, rows: usize) -> Tensor<B, 3> {
    let [y, _, _] = B::lstm_forward(
        xp.into_primitive().tensor(),
        w.into_primitive().tensor(),
        rows,
    );
    float(y)
}

/// The recurrence with its backward pass: `xp` `[n, l, 4H]`, `w` `[dirs, H, 4H]` -> `h`
/// `[n, l, H]`; gradients reach `xp` and `w`.
pub fn forward_autodiff<B: LstmKernels>(
    xp: Tensor<Autodiff<B>, 3>,
    w: Tensor<Autodiff<B>, 3>,
    rows: usize,
) -> Tensor<Autodiff<B>, 3> {
    #[derive(Debug)]
    struct LstmBackward;

    impl<B: LstmKernels> Backward<B, 2> for LstmBackward {
        /// Outputs, cell states, gates, weights, rows per direction.
        type State = (
            FloatTensor<B>,
            FloatTensor<B>,
            FloatTensor<B>,
            FloatTensor<B>,
            usize,
        );

        fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
            let [node_xp, node_w] = ops.parents;
            let dy = grads.consume::<B>(&ops.node);
            let (y, c, gates, w, rows) = ops.state;
            let dg = B::lstm_backward(dy, c, gates, w.clone(), rows);
            if let Some(node) = node_w {
                // Σ over rows and steps of h_{t−1}ᵀ dG_t, per direction: h shifted one step
                // (zero before the first), one batched product [dirs, H, rows·l] x [dirs,
                // rows·l, 4H].
                let y: Tensor<B, 3> = float(y);
                let dg: Tensor<B, 3> = float(dg.clone());
                let [n, l, h] = y.dims();
                let dirs = n / rows;
                let h_prev = Tensor::cat(
                    vec![
                        Tensor::zeros([n, 1, h], &y.device()),
                        y.slice([0..n, 0..l - 1, 0..h]),
                    ],
                    1,
                )
                .reshape([dirs, rows * l, h]);
                let dw = h_prev
                    .swap_dims(1, 2)
                    .matmul(dg.reshape([dirs, rows * l, 4 * h]));
                grads.register::<B>(node.id, dw.into_primitive().tensor());
            }
            if let Some(node) = node_xp {
                grads.register::<B>(node.id, dg);
            }
        }
    }

    let xp = xp.into_primitive().tensor();
    let w = w.into_primitive().tensor();
    let out = match LstmBackward
        .prepare::<NoCheckpointing>([xp.node.clone(), w.node.clone()])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(prep) => {
            let [y, c, gates] = B::lstm_forward(xp.primitive, w.primitive.clone(), rows);
            prep.finish((y.clone(), c, gates, w.primitive, rows), y)
        }
        OpsKind::UnTracked(prep) => {
            let [y, _, _] = B::lstm_forward(xp.primitive, w.primitive, rows);
            prep.finish(y)
        }
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}
