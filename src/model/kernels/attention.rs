//! Fused masked self-attention for training, forward and backward, in the manner of
//! flash-attention 2: `ctx = dropout(softmax(q kᵀ·s + bias)) v` with `s = 1/√dh`, computed
//! tile by tile with an online softmax, so no `[b, heads, L, L]` tensor is ever written to
//! global memory.
//!
//! Layouts (contiguous f32): `q`, `k`, `v`, `ctx` `[b·heads, L, dh]`; `bias` `[b, L]`, added to
//! every query's scores (HF's additive padding mask: 0 at real keys, −1e9 at pads; any padding
//! side); the row log-sum-exp `lse` `[b·heads, L]` kept for the backward pass.
//!
//! Forward: a cube owns [`ROWS`] query rows of one (batch, head); each thread one row, with the
//! scaled query and the output accumulator in registers; the cube walks the keys in tiles of
//! [`KEYS`] rows of `k` and `v` loaded cooperatively into shared memory.
//!
//! Dropout on the probabilities (PyTorch's: zero with probability p, scale the rest by
//! 1/(1−p)) draws each element's keep bit from Philox-4x32-10 ([`philox`]), a counter-based
//! generator: word `j mod 4` of counter (key j / 4, query i, batch·head, 0), so one evaluation
//! serves four neighbouring keys; key: the two 24-bit words of a seed tensor drawn from the
//! backend's generator per call. The backward pass regenerates the same
//! bits instead of storing a mask. The softmax's denominator counts every key (dropout comes
//! after the softmax), as in PyTorch.
//!
//! Backward (FA2): `D_i = dO_i·O_i`; with `p_ij = exp(x_ij − lse_i)` recomputed,
//! `dV_j = Σ_i z_ij p_ij dO_i`, `dp_ij = z_ij dO_i·v_j`, `ds_ij = p_ij (dp_ij − D_i)`,
//! `dQ_i = s Σ_j ds_ij k_j`, `dK_j = s Σ_i ds_ij q_i` (z: the dropout scale or 0). One launch
//! per query block writes `D` and `dQ`; one per key block writes `dK` and `dV`.

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
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};

/// Query (or key) rows per cube: one thread each.
pub const ROWS: u32 = 64;
/// Rows of the other side per shared-memory tile (`2 · KEYS · dh` floats: 16 KiB at dh 128).
pub const KEYS: usize = 16;
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

/// The CubeCL kernels (kept apart: CubeCL's `Tensor` is not Burn's).
mod cube {
    use super::KEYS;
    use burn_cubecl::cubecl;
    use burn_cubecl::cubecl::prelude::*;

    /// Philox multipliers and Weyl key increments (Salmon et al., SC'11; Random123).
    pub(super) const PHILOX_M0: u32 = 0xD251_1F53;
    pub(super) const PHILOX_M1: u32 = 0xCD9E_8D57;
    pub(super) const PHILOX_W0: u32 = 0x9E37_79B9;
    pub(super) const PHILOX_W1: u32 = 0xBB67_AE85;

    /// Philox-4x32-10's four output words for counter `(c0, c1, c2, c3)` and key `(k0, k1)`.
    /// [`philox_host`] is the same function on the host. (The key is bumped after the last round
    /// too, which changes nothing: it is not read again.)
    #[cube]
    fn philox(c0: u32, c1: u32, c2: u32, c3: u32, k0: u32, k1: u32) -> (u32, u32, u32, u32) {
        let mut x0 = c0;
        let mut x1 = c1;
        let mut x2 = c2;
        let mut x3 = c3;
        let mut key0 = k0;
        let mut key1 = k1;
        #[unroll]
        for _ in 0..10u32 {
            let hi0 = u32::mul_hi(PHILOX_M0, x0);
            let lo0 = PHILOX_M0 * x0;
            let hi1 = u32::mul_hi(PHILOX_M1, x2);
            let lo1 = PHILOX_M1 * x2;
            x0 = hi1 ^ x1 ^ key0;
            x1 = lo1;
            x2 = hi0 ^ x3 ^ key1;
            x3 = lo0;
            key0 += PHILOX_W0;
            key1 += PHILOX_W1;
        }
        (x0, x1, x2, x3)
    }

    /// Philox-4x32-10 on the host: all four output words.
    pub fn philox_host(counter: [u32; 4], key: [u32; 2]) -> [u32; 4] {
        let [mut x0, mut x1, mut x2, mut x3] = counter;
        let [mut k0, mut k1] = key;
        for r in 0..10 {
            let p0 = u64::from(PHILOX_M0) * u64::from(x0);
            let p1 = u64::from(PHILOX_M1) * u64::from(x2);
            (x0, x1, x2, x3) = (
                (p1 >> 32) as u32 ^ x1 ^ k0,
                p1 as u32,
                (p0 >> 32) as u32 ^ x3 ^ k1,
                p0 as u32,
            );
            if r < 9 {
                k0 = k0.wrapping_add(PHILOX_W0);
                k1 = k1.wrapping_add(PHILOX_W1);
            }
        }
        [x0, x1, x2, x3]
    }

    /// The Philox key from the seed tensor's two uniform floats (24 random bits each).
    pub fn seed_words(seed: [f32; 2]) -> [u32; 2] {
        seed.map(|s| (s * 16_777_216.0) as u32)
    }

    /// Whether the probability of query `i`, key `j` in batch·head `bh` is kept, on the host:
    /// word `j mod 4` of Philox at counter `(j / 4, i, bh, 0)` below `threshold` (one
    /// evaluation serves four neighbouring keys).
    pub fn kept_host(key: [u32; 2], bh: u32, i: u32, j: u32, threshold: u32) -> bool {
        philox_host([j / 4, i, bh, 0], key)[(j % 4) as usize] < threshold
    }

    /// Word `k` (0..4) of four.
    #[cube]
    fn word(w0: u32, w1: u32, w2: u32, w3: u32, k: usize) -> u32 {
        let mut r = w0;
        if k == 1 {
            r = w1;
        }
        if k == 2 {
            r = w2;
        }
        if k == 3 {
            r = w3;
        }
        r
    }

    /// The dropout factor of a probability whose keep word is `bits`: `scale` if kept, else 0.
    #[cube]
    fn dropout_factor<F: Float>(bits: u32, threshold: u32, scale: F) -> F {
        let mut z = F::new(0.0);
        if bits < threshold {
            z = scale;
        }
        z
    }

    /// The Philox key words from the seed tensor `[2]`.
    #[cube]
    fn key_words<F: Float>(seed: &Tensor<F>) -> (u32, u32) {
        (
            u32::cast_from(seed[0] * F::new(16_777_216.0)),
            u32::cast_from(seed[1] * F::new(16_777_216.0)),
        )
    }

    /// Loads rows `t0 .. t0 + KEYS` of `[.., L, dh]` tensors `a` and `b` (batch·head `base`) into
    /// shared tiles, zero past `L`; every thread of the cube takes part.
    #[cube]
    fn load_tiles<F: Float>(
        a: &Tensor<F>,
        b: &Tensor<F>,
        a_tile: &mut SharedMemory<F>,
        b_tile: &mut SharedMemory<F>,
        base: usize,
        t0: usize,
        l: usize,
        #[comptime] dh: usize,
    ) {
        let mut e = UNIT_POS_X as usize;
        while e < KEYS * dh {
            let row = t0 + e / dh;
            if row < l {
                let at = base + row * dh + e % dh;
                a_tile[e] = a[at];
                b_tile[e] = b[at];
            } else {
                a_tile[e] = F::new(0.0);
                b_tile[e] = F::new(0.0);
            }
            e += CUBE_DIM_X as usize;
        }
    }

    #[cube(launch)]
    // `if dropout { if .. }` stays nested: `dropout` is comptime, the inner test is not.
    #[allow(clippy::too_many_arguments, clippy::collapsible_if)]
    pub(super) fn attention_forward_kernel<F: Float>(
        q: &Tensor<F>,
        k: &Tensor<F>,
        v: &Tensor<F>,
        bias: &Tensor<F>,
        seed: &Tensor<F>,
        out: &mut Tensor<F>,
        lse: &mut Tensor<F>,
        len: u32,
        heads: u32,
        scale: f32,
        threshold: u32,
        keep_scale: f32,
        #[comptime] dh: usize,
        #[comptime] dropout: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        let bh = CUBE_POS_Y as usize;
        let l = len as usize;
        let i = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
        let valid = i < l;
        let base = bh * l * dh;
        let bias_at = (bh / heads as usize) * l;
        let (k0, k1) = key_words::<F>(seed);
        let z_kept = F::cast_from(keep_scale);
        let mut qr = Array::<F>::new(dh);
        let mut acc = Array::<F>::new(dh);
        let s = F::cast_from(scale);
        #[unroll]
        for d in 0..dh {
            acc[d] = F::new(0.0);
            qr[d] = F::new(0.0);
            if valid {
                qr[d] = q[base + i * dh + d] * s;
            }
        }
        let mut m = F::new(-1.0e30);
        let mut denom = F::new(0.0);
        let mut k_tile = SharedMemory::<F>::new(KEYS * dh);
        let mut v_tile = SharedMemory::<F>::new(KEYS * dh);
        let mut t0 = 0usize;
        while t0 < l {
            load_tiles::<F>(k, v, &mut k_tile, &mut v_tile, base, t0, l, dh);
            sync_cube();
            if valid {
                let mut w0 = 0u32;
                let mut w1 = 0u32;
                let mut w2 = 0u32;
                let mut w3 = 0u32;
                for r in 0..KEYS {
                    let j = t0 + r;
                    if dropout {
                        if r % 4 == 0 {
                            let (a, b, c, d) =
                                philox((j / 4) as u32, i as u32, bh as u32, 0u32, k0, k1);
                            w0 = a;
                            w1 = b;
                            w2 = c;
                            w3 = d;
                        }
                    }
                    if j < l {
                        let mut x = bias[bias_at + j];
                        #[unroll]
                        for d in 0..dh {
                            x += qr[d] * k_tile[r * dh + d];
                        }
                        let mut m_new = m;
                        if x > m {
                            m_new = x;
                        }
                        let corr = F::exp(m - m_new);
                        let p = F::exp(x - m_new);
                        denom = denom * corr + p;
                        let mut pz = p;
                        if dropout {
                            pz = p * dropout_factor::<F>(
                                word(w0, w1, w2, w3, r % 4),
                                threshold,
                                z_kept,
                            );
                        }
                        #[unroll]
                        for d in 0..dh {
                            acc[d] = acc[d] * corr + pz * v_tile[r * dh + d];
                        }
                        m = m_new;
                    }
                }
            }
            sync_cube();
            t0 += KEYS;
        }
        if valid {
            #[unroll]
            for d in 0..dh {
                out[base + i * dh + d] = acc[d] / denom;
            }
            lse[bh * l + i] = m + F::ln(denom);
        }
    }

    /// Backward, one thread per query row: `D_i = dO_i·O_i` (written to `delta`) and `dQ`.
    #[cube(launch)]
    // `if dropout { if .. }` stays nested: `dropout` is comptime, the inner test is not.
    #[allow(clippy::too_many_arguments, clippy::collapsible_if)]
    pub(super) fn attention_dq_kernel<F: Float>(
        q: &Tensor<F>,
        k: &Tensor<F>,
        v: &Tensor<F>,
        bias: &Tensor<F>,
        seed: &Tensor<F>,
        out: &Tensor<F>,
        lse: &Tensor<F>,
        dout: &Tensor<F>,
        delta: &mut Tensor<F>,
        dq: &mut Tensor<F>,
        len: u32,
        heads: u32,
        scale: f32,
        threshold: u32,
        keep_scale: f32,
        #[comptime] dh: usize,
        #[comptime] dropout: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        let bh = CUBE_POS_Y as usize;
        let l = len as usize;
        let i = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
        let valid = i < l;
        let base = bh * l * dh;
        let bias_at = (bh / heads as usize) * l;
        let (k0, k1) = key_words::<F>(seed);
        let z_kept = F::cast_from(keep_scale);
        let s = F::cast_from(scale);
        let mut qr = Array::<F>::new(dh);
        let mut dor = Array::<F>::new(dh);
        let mut acc = Array::<F>::new(dh);
        let mut d_i = F::new(0.0);
        let mut lse_i = F::new(0.0);
        #[unroll]
        for d in 0..dh {
            acc[d] = F::new(0.0);
            qr[d] = F::new(0.0);
            dor[d] = F::new(0.0);
            if valid {
                let at = base + i * dh + d;
                qr[d] = q[at] * s;
                dor[d] = dout[at];
                d_i += dor[d] * out[at];
            }
        }
        if valid {
            delta[bh * l + i] = d_i;
            lse_i = lse[bh * l + i];
        }
        let mut k_tile = SharedMemory::<F>::new(KEYS * dh);
        let mut v_tile = SharedMemory::<F>::new(KEYS * dh);
        let mut t0 = 0usize;
        while t0 < l {
            load_tiles::<F>(k, v, &mut k_tile, &mut v_tile, base, t0, l, dh);
            sync_cube();
            if valid {
                let mut w0 = 0u32;
                let mut w1 = 0u32;
                let mut w2 = 0u32;
                let mut w3 = 0u32;
                for r in 0..KEYS {
                    let j = t0 + r;
                    if dropout {
                        if r % 4 == 0 {
                            let (a, b, c, d) =
                                philox((j / 4) as u32, i as u32, bh as u32, 0u32, k0, k1);
                            w0 = a;
                            w1 = b;
                            w2 = c;
                            w3 = d;
                        }
                    }
                    if j < l {
                        let mut x = bias[bias_at + j];
                        let mut dp = F::new(0.0);
                        #[unroll]
                        for d in 0..dh {
                            x += qr[d] * k_tile[r * dh + d];
                            dp += dor[d] * v_tile[r * dh + d];
                        }
                        let p = F::exp(x - lse_i);
                        if dropout {
                            dp *=
                                dropout_factor::<F>(word(w0, w1, w2, w3, r % 4), threshold, z_kept);
                        }
                        let ds = p * (dp - d_i);
                        #[unroll]
                        for d in 0..dh {
                            acc[d] += ds * k_tile[r * dh + d];
                        }
                    }
                }
            }
            sync_cube();
            t0 += KEYS;
        }
        if valid {
            #[unroll]
            for d in 0..dh {
                dq[base + i * dh + d] = acc[d] * s;
            }
        }
    }

    /// Backward, one thread per key row: `dK` and `dV`, with the query side (`q`, `dO`, `lse`,
    /// `D`) in shared tiles.
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn attention_dkdv_kernel<F: Float>(
        q: &Tensor<F>,
        k: &Tensor<F>,
        v: &Tensor<F>,
        bias: &Tensor<F>,
        seed: &Tensor<F>,
        lse: &Tensor<F>,
        dout: &Tensor<F>,
        delta: &Tensor<F>,
        dk: &mut Tensor<F>,
        dv: &mut Tensor<F>,
        len: u32,
        heads: u32,
        scale: f32,
        threshold: u32,
        keep_scale: f32,
        #[comptime] dh: usize,
        #[comptime] dropout: bool,
        #[define(F)] _dtype: StorageType,
    ) {
        let bh = CUBE_POS_Y as usize;
        let l = len as usize;
        let j = (CUBE_POS_X * CUBE_DIM_X + UNIT_POS_X) as usize;
        let valid = j < l;
        let base = bh * l * dh;
        let (k0, k1) = key_words::<F>(seed);
        let z_kept = F::cast_from(keep_scale);
        let s = F::cast_from(scale);
        let mut kr = Array::<F>::new(dh);
        let mut vr = Array::<F>::new(dh);
        let mut dk_acc = Array::<F>::new(dh);
        let mut dv_acc = Array::<F>::new(dh);
        let mut bias_j = F::new(0.0);
        #[unroll]
        for d in 0..dh {
            dk_acc[d] = F::new(0.0);
            dv_acc[d] = F::new(0.0);
            kr[d] = F::new(0.0);
            vr[d] = F::new(0.0);
            if valid {
                kr[d] = k[base + j * dh + d] * s;
                vr[d] = v[base + j * dh + d];
            }
        }
        if valid {
            bias_j = bias[(bh / heads as usize) * l + j];
        }
        let mut q_tile = SharedMemory::<F>::new(KEYS * dh);
        let mut do_tile = SharedMemory::<F>::new(KEYS * dh);
        let mut t0 = 0usize;
        while t0 < l {
            load_tiles::<F>(q, dout, &mut q_tile, &mut do_tile, base, t0, l, dh);
            sync_cube();
            if valid {
                for r in 0..KEYS {
                    let i = t0 + r;
                    if i < l {
                        let mut x = bias_j;
                        let mut dp = F::new(0.0);
                        #[unroll]
                        for d in 0..dh {
                            x += kr[d] * q_tile[r * dh + d];
                            dp += vr[d] * do_tile[r * dh + d];
                        }
                        let p = F::exp(x - lse[bh * l + i]);
                        let mut pz = p;
                        if dropout {
                            let (a, b, c, d) =
                                philox((j / 4) as u32, i as u32, bh as u32, 0u32, k0, k1);
                            let z = dropout_factor::<F>(word(a, b, c, d, j % 4), threshold, z_kept);
                            pz = p * z;
                            dp *= z;
                        }
                        let ds = p * (dp - delta[bh * l + i]);
                        #[unroll]
                        for d in 0..dh {
                            dv_acc[d] += pz * do_tile[r * dh + d];
                            dk_acc[d] += ds * q_tile[r * dh + d];
                        }
                    }
                }
            }
            sync_cube();
            t0 += KEYS;
        }
        if valid {
            #[unroll]
            for d in 0..dh {
                dk[base + j * dh + d] = dk_acc[d] * s;
                dv[base + j * dh + d] = dv_acc[d];
            }
        }
    }
}

use cube::*;
pub use cube::{kept_host, philox_host, seed_words};

fn empty<R: CubeRuntime>(like: &CubeTensor<R>, shape: Vec<usize>) -> CubeTensor<R> {
    empty_device_contiguous_dtype(
        like.client.clone(),
        like.device.clone(),
        shape.into(),
        like.dtype,
    )
}

/// `[bh, l, dh]` of `q`.
fn dims3<R: CubeRuntime>(t: &CubeTensor<R>) -> (usize, usize, usize) {
    let s = t.meta.shape();
    (s[0], s[1], s[2])
}

/// Cubes: blocks of [`ROWS`] rows along x, batch·heads along y.
fn grid(bh: usize, l: usize) -> (CubeCount, CubeDim) {
    (
        CubeCount::Static(l.div_ceil(ROWS as usize) as u32, bh as u32, 1),
        CubeDim::new_1d(ROWS),
    )
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
        let (bh, l, dh) = dims3(&q);
        let out = empty(&q, vec![bh, l, dh]);
        let lse = empty(&q, vec![bh, l]);
        let (threshold, keep_scale) = params.keep().unwrap_or((u32::MAX, 1.0));
        let (count, dim) = grid(bh, l);
        let dtype = q.dtype;
        attention_forward_kernel::launch::<R>(
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
            params.dropout > 0.0,
            dtype.into(),
        );
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
        let (bh, l, dh) = dims3(&q);
        let dq = empty(&q, vec![bh, l, dh]);
        let dk = empty(&q, vec![bh, l, dh]);
        let dv = empty(&q, vec![bh, l, dh]);
        let delta = empty(&q, vec![bh, l]);
        let (threshold, keep_scale) = params.keep().unwrap_or((u32::MAX, 1.0));
        let client = q.client.clone();
        let dtype = q.dtype;
        let dropout = params.dropout > 0.0;
        let (count, dim) = grid(bh, l);
        attention_dq_kernel::launch::<R>(
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
            dropout,
            dtype.into(),
        );
        attention_dkdv_kernel::launch::<R>(
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
            dropout,
            dtype.into(),
        );
        [dq, dk, dv]
    }
}

mod fusion {
    //! The ops as custom operations of Burn's `Fusion` stream.

    use super::{AttentionKernels, Params};
    use burn::backend::ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};
    use burn::tensor::ops::FloatTensor;
    use burn::tensor::{Shape, TensorMetadata};
    use burn_fusion::stream::{Operation, OperationStreams};
    use burn_fusion::{Fusion, FusionBackend, FusionRuntime};

    #[derive(Clone, Debug)]
    struct Op<B> {
        desc: CustomOpIr,
        params: Params,
        backward: bool,
        _b: std::marker::PhantomData<B>,
    }

    impl<B: FusionBackend + AttentionKernels> Operation<B::FusionRuntime> for Op<B> {
        fn execute(
            &self,
            handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>,
        ) {
            let inputs: Vec<_> = self
                .desc
                .inputs
                .iter()
                .map(|t| handles.get_float_tensor::<B>(t))
                .collect();
            let outputs: Vec<FloatTensor<B>> = if self.backward {
                let [q, k, v, bias, seed, out, lse, dout]: [FloatTensor<B>; 8] = inputs
                    .try_into()
                    .unwrap_or_else(|_| unreachable!("eight inputs"));
                B::attention_backward(q, k, v, bias, seed, out, lse, dout, self.params).into()
            } else {
                let [q, k, v, bias, seed]: [FloatTensor<B>; 5] = inputs
                    .try_into()
                    .unwrap_or_else(|_| unreachable!("five inputs"));
                B::attention_forward(q, k, v, bias, seed, self.params).into()
            };
            for (ir, t) in self.desc.outputs.iter().zip(outputs) {
                handles.register_float_tensor::<B>(&ir.id, t);
            }
        }
    }

    /// Registers `inputs` -> outputs of `shapes` as one custom operation.
    fn register<B: FusionBackend + AttentionKernels>(
        name: &'static str,
        inputs: Vec<FloatTensor<Fusion<B>>>,
        shapes: Vec<Shape>,
        params: Params,
        backward: bool,
    ) -> Vec<FloatTensor<Fusion<B>>> {
        let client = inputs[0].client.clone();
        let dtype = inputs[0].dtype();
        let outs: Vec<TensorIr> = shapes
            .into_iter()
            .map(|s| TensorIr::uninit(client.create_empty_handle(), s, dtype))
            .collect();
        let streams = OperationStreams::with_inputs(inputs.iter());
        let irs: Vec<TensorIr> = inputs.into_iter().map(|t| t.into_ir()).collect();
        let desc = CustomOpIr::new(name, &irs, &outs);
        let op = Op::<B> {
            desc: desc.clone(),
            params,
            backward,
            _b: std::marker::PhantomData,
        };
        client.register(streams, OperationIr::Custom(desc), op)
    }

    impl<B: FusionBackend + AttentionKernels> AttentionKernels for Fusion<B> {
        fn attention_forward(
            q: FloatTensor<Self>,
            k: FloatTensor<Self>,
            v: FloatTensor<Self>,
            bias: FloatTensor<Self>,
            seed: FloatTensor<Self>,
            params: Params,
        ) -> [FloatTensor<Self>; 2] {
            let shape = q.shape();
            let rows = Shape::new([shape[0], shape[1]]);
            register::<B>(
                "attention_forward",
                vec![q, k, v, bias, seed],
                vec![shape, rows],
                params,
                false,
            )
            .try_into()
            .unwrap_or_else(|_| unreachable!("two outputs"))
        }

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
        ) -> [FloatTensor<Self>; 3] {
            let shape = q.shape();
            register::<B>(
                "attention_backward",
                vec![q, k, v, bias, seed, out, lse, dout],
                vec![shape.clone(), shape.clone(), shape],
                params,
                true,
            )
            .try_into()
            .unwrap_or_else(|_| unreachable!("three outputs"))
        }
    }
}

fn float<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// `[b, heads, L, dh]` -> `[b·heads, L, dh]` primitive.
fn flat<B: Backend>(t: Tensor<B, 4>) -> FloatTensor<B> {
    let [b, h, l, dh] = t.dims();
    t.reshape([b * h, l, dh]).into_primitive().tensor()
}

/// The attention without autodiff (prediction: no dropout). `q`, `k`, `v` `[b, heads, L, dh]`,
/// `bias` `[b, L]` -> `[b, heads, L, dh]`.
pub fn forward<B: AttentionKernels>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    bias: Tensor<B, 2>,
    scale: f32,
) -> Tensor<B, 4> {
    let [b, heads, l, dh] = q.dims();
    let seed = Tensor::<B, 1>::zeros([2], &q.device())
        .into_primitive()
        .tensor();
    let params = Params {
        heads,
        scale,
        dropout: 0.0,
    };
    let [out, _] = B::attention_forward(
        flat(q),
        flat(k),
        flat(v),
        bias.into_primitive().tensor(),
        seed,
        params,
    );
    float::<B, 3>(out).reshape([b, heads, l, dh])
}

/// The attention with its backward pass and, with `dropout` > 0, dropout on the
/// probabilities from a fresh seed drawn from the backend's generator (so `B::seed` makes it
/// reproducible, with no transfer to the host). Shapes as [`forward`]; gradients reach `q`, `k`
/// and `v` (the mask takes none).
pub fn forward_autodiff<B: AttentionKernels>(
    q: Tensor<Autodiff<B>, 4>,
    k: Tensor<Autodiff<B>, 4>,
    v: Tensor<Autodiff<B>, 4>,
    bias: Tensor<Autodiff<B>, 2>,
    scale: f32,
    dropout: f32,
) -> Tensor<Autodiff<B>, 4> {
    let device = bias.device();
    let seed: Tensor<B, 1> = if dropout > 0.0 {
        Tensor::random([2], Distribution::Default, &device)
    } else {
        Tensor::zeros([2], &device)
    };
    let params = Params {
        heads: q.dims()[1],
        scale,
        dropout,
    };
    forward_with_seed(q, k, v, bias.inner(), seed, params)
}

/// [`forward_autodiff`] with the seed given (`[2]` uniform floats in [0, 1)).
pub fn forward_with_seed<B: AttentionKernels>(
    q: Tensor<Autodiff<B>, 4>,
    k: Tensor<Autodiff<B>, 4>,
    v: Tensor<Autodiff<B>, 4>,
    bias: Tensor<B, 2>,
    seed: Tensor<B, 1>,
    params: Params,
) -> Tensor<Autodiff<B>, 4> {
    #[derive(Debug)]
    struct AttentionBackward;

    impl<B: AttentionKernels> Backward<B, 3> for AttentionBackward {
        /// q, k, v (flattened), bias, seed, out, lse; the constants; `[b, heads, L, dh]`.
        type State = ([FloatTensor<B>; 7], Params, [usize; 4]);

        fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
            let ([q, k, v, bias, seed, out, lse], params, dims) = ops.state;
            let dout = flat(float::<B, 4>(grads.consume::<B>(&ops.node)));
            let qkv = B::attention_backward(q, k, v, bias, seed, out, lse, dout, params);
            for (node, g) in ops.parents.into_iter().zip(qkv) {
                if let Some(node) = node {
                    let g = float::<B, 3>(g).reshape(dims).into_primitive().tensor();
                    grads.register::<B>(node.id, g);
                }
            }
        }
    }

    let dims = q.dims();
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
    let flat_inner = |t: FloatTensor<B>| flat(float::<B, 4>(t));
    let (q, k, v) = (
        flat_inner(q.primitive),
        flat_inner(k.primitive),
        flat_inner(v.primitive),
    );
    let [out, lse] = B::attention_forward(
        q.clone(),
        k.clone(),
        v.clone(),
        bias.clone(),
        seed.clone(),
        params,
    );
    let out4 = float::<B, 3>(out.clone())
        .reshape(dims)
        .into_primitive()
        .tensor();
    let out = match prep {
        OpsKind::Tracked(prep) => {
            prep.finish(([q, k, v, bias, seed, out, lse], params, dims), out4)
        }
        OpsKind::UnTracked(prep) => prep.finish(out4),
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
