//! Fused masked self-attention for training, forward and backward, in the manner of
//! flash-attention 2: `ctx = dropout(softmax(q kᵀ·s + bias)) v` with `s = 1/√dh`, computed
//! tile by tile with an online softmax, so no `[b, heads, L, L]` tensor is ever written to
//! global memory.
//!
//! Layouts (contiguous f32): `q`, `k`, `v`, `ctx` and their gradients `[b, L, heads·dh]`, the
//! linear layers' own layout, read and written in place (head `h` of a row is its dimensions
//! `h·dh .. (h+1)·dh`), so no copy goes into or out of the kernels; `bias` `[b, L]`, added to
//! every query's scores (HF's additive padding mask: 0 at real keys, −1e9 at pads; any padding
//! side); the row log-sum-exp `lse` `[b·heads, L, 2]` kept for the backward pass as its two
//! terms, the row's running maximum and the log of its denominator: their sum would lose the
//! denominator where the maximum is −1e9 (a row whose every key is masked), and the backward
//! pass would then see probabilities of 1 instead of 1/L.
//!
//! Forward: a cube owns [`Layout::rows`] query rows of one (batch, head); [`Layout::parts`]
//! threads share a row, each with its slice of the scaled query and of the output accumulator
//! in registers; the cube walks the keys in tiles of [`Layout::keys`] rows of `k` and `v` (and the bias) loaded
//! cooperatively into shared memory. Each thread writes its slice's share of every score of the
//! tile to shared memory; after a barrier each sums its row's shares (the online softmax runs
//! on every thread of the row, identically). The backward kernels split their rows the same
//! way , and stage `lse` and `D` with the tile.
//!
//! Dropout on the probabilities (PyTorch's: zero with probability p, scale the rest by
//! 1/(1−p)) draws each element's keep bit from Philox-4x32-10 ([`philox`]), a counter-based
//! generator: word `j mod 4` of counter (key j / 4, query i, batch·head, 0), so one evaluation
//! serves four neighbouring keys; key: the two 24-bit words of a seed tensor drawn from the
//! backend's generator per call. The backward pass regenerates the same
//! bits instead of storing a mask. The softmax's denominator counts every key (dropout comes
//! after the softmax), as in PyTorch.
//!
//! Backward (FA2): `D_i = dO_i·O_i`; with `p_ij = exp((x_ij − m_i) − ln Σ_i)` recomputed,
//! `dV_j = Σ_i z_ij p_ij dO_i`, `dp_ij = z_ij dO_i·v_j`, `ds_ij = p_ij (dp_ij − D_i)`,
//! `dQ_i = s Σ_j ds_ij k_j`, `dK_j = s Σ_i ds_ij q_i` (z: the dropout scale or 0). One launch
//! per query block writes `D` and `dQ`; one per key block writes `dK` and `dV`.

use crate::model::kernels::empty;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Distribution, Tensor, TensorPrimitive};
use burn_cubecl::cubecl::prelude::{CubeCount, CubeDim};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

/// How a kernel's cube is laid out: `rows` query (or key) rows of one batch·head, `parts`
/// threads to a row, each owning `dh / parts` of its dimensions, and `keys` rows of the other
/// side per shared-memory tile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub rows: usize,
    pub parts: usize,
    pub keys: usize,
}

impl Layout {
    /// Every kernel's: 32 rows, 16 dimensions a thread. A thread keeps two (forward: the query
    /// and the accumulator, with the tile's scores), three (`dQ`: q, dO, dQ) or four (`dK`/`dV`:
    /// k, v, dK, dV) arrays of its slice of the row; at 32 dimensions a slice these needed up to
    /// 141 and 166–180 registers (ptxas, `bench/RESULTS.md`), at 16 they stay at or under 128.
    /// Blocks of 128 threads at dh 64, 256 at dh 128.
    pub fn of(dh: usize) -> Self {
        Self::with(dh, 32, 16)
    }

    /// `rows` rows of `dh / slice` threads (fewer where `dh` does not divide), and tiles of
    /// keys that keep the shared memory at 24 KiB at dh 64 and 128: the tiles (`2 · keys ·
    /// dh` floats) and the partial sums (`2 · keys · threads`), under the 32 KiB a Vulkan
    /// device may have (lavapipe's).
    fn with(dh: usize, rows: usize, slice: usize) -> Self {
        let mut parts = 1;
        while parts * 2 <= dh.div_ceil(slice) && dh.is_multiple_of(parts * 2) {
            parts *= 2;
        }
        let keys = if rows * parts > 128 { 8 } else { 16 };
        Self { rows, parts, keys }
    }

    /// Threads per cube.
    pub fn threads(&self) -> u32 {
        (self.rows * self.parts) as u32
    }

    /// Cubes for `bh` batch·heads of `l` rows: blocks of rows along x, batch·heads along y.
    fn grid(&self, bh: usize, l: usize) -> (CubeCount, CubeDim) {
        (
            CubeCount::Static(l.div_ceil(self.rows) as u32, bh as u32, 1),
            CubeDim::new_1d(self.threads()),
        )
    }
}

/// The largest head dimension the kernels take (registers per thread grow with it).
pub const MAX_HEAD_DIM: usize = 128;
/// The most batch × heads the kernels take: one row of cubes each, at most 65,535 on wgpu.
pub const MAX_BATCH_HEADS: usize = 65_535;

/// The attention's constants: heads per batch row, the score scale, the dropout probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    pub heads: usize,
    pub scale: f32,
    pub dropout: f32,
}

impl Params {
    /// The keep threshold of a uniform 32-bit draw (`keep · 2³²`) and the scale of kept
    /// probabilities; `None` without dropout.
    pub fn keep(&self) -> Option<(u32, f32)> {
        (self.dropout > 0.0).then(|| {
            let keep = 1.0 - f64::from(self.dropout);
            (
                (keep * 4_294_967_296.0).round().min(u32::MAX as f64) as u32,
                (1.0 / keep) as f32,
            )
        })
    }
}

/// A backend with the fused attention (see the module documentation for layouts).
pub trait AttentionKernels: Backend {
    /// `(ctx, lse)`. `seed`: `[2]` uniform floats in [0, 1) (read only with dropout).
    fn attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        seed: FloatTensor<Self>,
        params: Params,
    ) -> [FloatTensor<Self>; 2];

    /// `(dq, dk, dv)` from the output's gradient `dout`.
    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        seed: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        dout: FloatTensor<Self>,
        params: Params,
    ) -> [FloatTensor<Self>; 3];
}

mod cube;

use cube::*;
pub use cube::{kept_host, philox_host, seed_words};

/// The three kernels as CUDA C++ for architecture `sm` at head dimension `dh`, with or without
/// dropout (each pair is a kernel of its own), launched as [`grid`] launches them.
pub(crate) fn cuda_kernels(
    props: &burn_cubecl::cubecl::ir::DeviceProperties,
    sm: u32,
    dh: usize,
    dropout: bool,
) -> anyhow::Result<Vec<super::cuda_source::CudaKernel>> {
    let layout = Layout::of(dh);
    let tag = format!("dh{dh}{}", if dropout { "_dropout" } else { "" });
    let dim = CubeDim::new_1d(layout.threads());
    let (rows, parts, keys) = (layout.rows, layout.parts, layout.keys);
    let forward = cuda_definition!(props, dim, "attention_forward_kernel_f_f32", cube::attention_forward_kernel;
        inputs [q, k, v, bias, seed]; outputs [out, lse];
        scalars [len: u32, heads: u32, scale: f32, threshold: u32, keep_scale: f32];
        comptime [dh, rows, parts, keys, dropout]);
    let dq = cuda_definition!(props, dim, "attention_dq_kernel_f_f32", cube::attention_dq_kernel;
        inputs [q, k, v, bias, seed, out, lse, dout]; outputs [delta, dq];
        scalars [len: u32, heads: u32, scale: f32, threshold: u32, keep_scale: f32];
        comptime [dh, rows, parts, keys, dropout]);
    let dkdv = cuda_definition!(props, dim, "attention_dkdv_kernel_f_f32", cube::attention_dkdv_kernel;
        inputs [q, k, v, bias, seed, lse, dout, delta]; outputs [dk, dv];
        scalars [len: u32, heads: u32, scale: f32, threshold: u32, keep_scale: f32];
        comptime [dh, rows, parts, keys, dropout]);
    Ok(vec![
        super::cuda_source::compile(&format!("attention_forward_{tag}"), forward, sm)?,
        super::cuda_source::compile(&format!("attention_dq_{tag}"), dq, sm)?,
        super::cuda_source::compile(&format!("attention_dkdv_{tag}"), dkdv, sm)?,
    ])
}

/// `(b·heads, L, dh)` of `q` `[b, L, heads·dh]`.
fn dims3<R: CubeRuntime>(t: &CubeTensor<R>, heads: usize) -> (usize, usize, usize) {
    let s = t.meta.shape();
    (s[0] * heads, s[1], s[2] / heads)
}

impl<R, F, I, BT> AttentionKernels for CubeBackend<R, F, I, BT>
where
    R: CubeRuntime,
    F: FloatElement,
    I: IntElement,
    BT: BoolElement,
{
    fn attention_forward(
        q: CubeTensor<R>,
        k: CubeTensor<R>,
        v: CubeTensor<R>,
        bias: CubeTensor<R>,
        seed: CubeTensor<R>,
        params: Params,
    ) -> [CubeTensor<R>; 2] {
        let (q, k, v) = (into_contiguous(q), into_contiguous(k), into_contiguous(v));
        let (bias, seed) = (into_contiguous(bias), into_contiguous(seed));
        let (bh, l, dh) = dims3(&q, params.heads);
        let out = empty(&q, q.meta.shape().to_vec());
        let lse = empty(&q, vec![bh, l, 2]);
        let (threshold, keep_scale) = params.keep().unwrap_or((u32::MAX, 1.0));
        let layout = Layout::of(dh);
        let (count, dim) = layout.grid(bh, l);
        let dtype = q.dtype;
        launch!(attention_forward_kernel::<R>(
            &q.client.clone(),
            count,
            dim,
            q.into_tensor_arg(),
            k.into_tensor_arg(),
            v.into_tensor_arg(),
            bias.into_tensor_arg(),
            seed.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            lse.clone().into_tensor_arg(),
            l as u32,
            params.heads as u32,
            params.scale,
            threshold,
            keep_scale,
            dh,
            layout.rows,
            layout.parts,
            layout.keys,
            params.dropout > 0.0,
            dtype.into(),
        ));
        [out, lse]
    }

    fn attention_backward(
        q: CubeTensor<R>,
        k: CubeTensor<R>,
        v: CubeTensor<R>,
        bias: CubeTensor<R>,
        seed: CubeTensor<R>,
        out: CubeTensor<R>,
        lse: CubeTensor<R>,
        dout: CubeTensor<R>,
        params: Params,
    ) -> [CubeTensor<R>; 3] {
        let (q, k, v) = (into_contiguous(q), into_contiguous(k), into_contiguous(v));
        let (bias, seed) = (into_contiguous(bias), into_contiguous(seed));
        let (out, lse, dout) = (
            into_contiguous(out),
            into_contiguous(lse),
            into_contiguous(dout),
        );
        let (bh, l, dh) = dims3(&q, params.heads);
        let shape = q.meta.shape().to_vec();
        let dq = empty(&q, shape.clone());
        let dk = empty(&q, shape.clone());
        let dv = empty(&q, shape);
        let delta = empty(&q, vec![bh, l]);
        let (threshold, keep_scale) = params.keep().unwrap_or((u32::MAX, 1.0));
        let client = q.client.clone();
        let dtype = q.dtype;
        let dropout = params.dropout > 0.0;
        let layout = Layout::of(dh);
        let (count, dim) = layout.grid(bh, l);
        launch!(attention_dq_kernel::<R>(
            &client,
            count.clone(),
            dim,
            q.clone().into_tensor_arg(),
            k.clone().into_tensor_arg(),
            v.clone().into_tensor_arg(),
            bias.clone().into_tensor_arg(),
            seed.clone().into_tensor_arg(),
            out.into_tensor_arg(),
            lse.clone().into_tensor_arg(),
            dout.clone().into_tensor_arg(),
            delta.clone().into_tensor_arg(),
            dq.clone().into_tensor_arg(),
            l as u32,
            params.heads as u32,
            params.scale,
            threshold,
            keep_scale,
            dh,
            layout.rows,
            layout.parts,
            layout.keys,
            dropout,
            dtype.into(),
        ));
        launch!(attention_dkdv_kernel::<R>(
            &client,
            count,
            dim,
            q.into_tensor_arg(),
            k.into_tensor_arg(),
            v.into_tensor_arg(),
            bias.into_tensor_arg(),
            seed.into_tensor_arg(),
            lse.into_tensor_arg(),
            dout.into_tensor_arg(),
            delta.into_tensor_arg(),
            dk.clone().into_tensor_arg(),
            dv.clone().into_tensor_arg(),
            l as u32,
            params.heads as u32,
            params.scale,
            threshold,
            keep_scale,
            dh,
            layout.rows,
            layout.parts,
            layout.keys,
            dropout,
            dtype.into(),
        ));
        [dq, dk, dv]
    }
}

mod fusion;

fn float<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// The attention without autodiff (prediction: no dropout). `q`, `k`, `v` `[b, L, heads·dh]`,
/// `bias` `[b, L]` -> `[b, L, heads·dh]`.
pub fn forward<B: AttentionKernels>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    bias: Tensor<B, 2>,
    heads: usize,
    scale: f32,
) -> Tensor<B, 3> {
    let seed = Tensor::<B, 1>::zeros([2], &q.device())
        .into_primitive()
        .tensor();
    let params = Params {
        heads,
        scale,
        dropout: 0.0,
    };
    let prim = |t: Tensor<B, 3>| t.into_primitive().tensor();
    let [out, _] = B::attention_forward(
        prim(q),
        prim(k),
        prim(v),
        bias.into_primitive().tensor(),
        seed,
        params,
    );
    float(out)
}

/// The attention with its backward pass and, with `dropout` > 0, dropout on the
/// probabilities from a fresh seed drawn from the backend's generator (so `B::seed` makes it
/// reproducible, with no transfer to the host). Shapes as [`forward`]; gradients reach `q`, `k`
/// and `v` (the mask takes none).
pub fn forward_autodiff<B: AttentionKernels>(
    q: Tensor<Autodiff<B>, 3>,
    k: Tensor<Autodiff<B>, 3>,
    v: Tensor<Autodiff<B>, 3>,
    bias: Tensor<Autodiff<B>, 2>,
    heads: usize,
    scale: f32,
    dropout: f32,
) -> Tensor<Autodiff<B>, 3> {
    let device = bias.device();
    let seed: Tensor<B, 1> = if dropout > 0.0 {
        Tensor::random([2], Distribution::Default, &device)
    } else {
        Tensor::zeros([2], &device)
    };
    let params = Params {
        heads,
        scale,
        dropout,
    };
    forward_with_seed(q, k, v, bias.inner(), seed, params)
}

/// [`forward_autodiff`] with the seed given (`[2]` uniform floats in [0, 1)).
pub fn forward_with_seed<B: AttentionKernels>(
    q: Tensor<Autodiff<B>, 3>,
    k: Tensor<Autodiff<B>, 3>,
    v: Tensor<Autodiff<B>, 3>,
    bias: Tensor<B, 2>,
    seed: Tensor<B, 1>,
    params: Params,
) -> Tensor<Autodiff<B>, 3> {
    #[derive(Debug)]
    struct AttentionBackward;

    impl<B: AttentionKernels> Backward<B, 3> for AttentionBackward {
        /// q, k, v, bias, seed, out, lse; the constants.
        type State = ([FloatTensor<B>; 7], Params);

        fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let ([q, k, v, bias, seed, out, lse], params) = ops.state;
            let dout = grads.consume::<B>(&ops.node);
            let qkv = B::attention_backward(q, k, v, bias, seed, out, lse, dout, params);
            for (node, g) in ops.parents.into_iter().zip(qkv) {
                if let Some(node) = node {
                    grads.register::<B>(node.id, g);
                }
            }
        }
    }

    let (q, k, v) = (
        q.into_primitive().tensor(),
        k.into_primitive().tensor(),
        v.into_primitive().tensor(),
    );
    let bias = bias.into_primitive().tensor();
    let seed = seed.into_primitive().tensor();
    let prep = AttentionBackward
        .prepare::<NoCheckpointing>([q.node.clone(), k.node.clone(), v.node.clone()])
        .compute_bound()
        .stateful();
    let (q, k, v) = (q.primitive, k.primitive, v.primitive);
    let [out, lse] = B::attention_forward(
        q.clone(),
        k.clone(),
        v.clone(),
        bias.clone(),
        seed.clone(),
        params,
    );
    let out = match prep {
        OpsKind::Tracked(prep) => {
            prep.finish(([q, k, v, bias, seed, out.clone(), lse], params), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(out),
    };
    Tensor::from_primitive(TensorPrimitive::Float(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random123's known-answer vectors for Philox-4x32-10.
    #[test]
    fn philox_host_matches_the_known_answers() {
        assert_eq!(
            philox_host([0; 4], [0; 2]),
            [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]
        );
        assert_eq!(
            philox_host([u32::MAX; 4], [u32::MAX; 2]),
            [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]
        );
        assert_eq!(
            philox_host(
                [0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344],
                [0xa409_3822, 0x299f_31d0]
            ),
            [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1]
        );
    }

    #[test]
    fn keep_threshold_and_scale() {
        let p = |dropout| Params {
            heads: 1,
            scale: 1.0,
            dropout,
        };
        assert_eq!(p(0.0).keep(), None);
        assert_eq!(p(0.25).keep(), Some((3 << 30, 1.0 / 0.75)));
        assert_eq!(p(0.5).keep(), Some((1 << 31, 2.0)));
    }
}
