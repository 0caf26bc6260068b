//! The CubeCL kernels (kept apart: CubeCL's `Tensor` is not Burn's).

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
                        pz =
                            p * dropout_factor::<F>(word(w0, w1, w2, w3, r % 4), threshold, z_kept);
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
                        dp *= dropout_factor::<F>(word(w0, w1, w2, w3, r % 4), threshold, z_kept);
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
