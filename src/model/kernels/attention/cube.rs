//! The CubeCL kernels (kept apart: CubeCL's `Tensor` is not Burn's).

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

/// The Philox key words from the seed tensor `[2]`.
#[cube]
fn key_words<F: Float>(seed: &Tensor<F>) -> (u32, u32) {
    (
        u32::cast_from(seed[0] * F::new(16_777_216.0)),
        u32::cast_from(seed[1] * F::new(16_777_216.0)),
    )
}

/// Where batch·head `bh`'s rows start in a `[b, L, heads·dh]` tensor (the linear layers'
/// output, read in place: row `i` of the head is at `base + i · stride`), and the stride.
#[cube]
fn head_of(bh: usize, l: usize, heads: usize, #[comptime] dh: usize) -> (usize, usize) {
    let stride = heads * dh;
    ((bh / heads) * l * stride + (bh % heads) * dh, stride)
}

/// Loads rows `t0 .. t0 + keys` of the head at `base` of `[b, L, heads·dh]` tensors `a` and `b`
/// (rows `stride` = heads·dh apart) into the shared tiles at `a_at` and `b_at` of `smem`, zero
/// past `L`; every thread of the cube takes part.
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_tiles<F: Float>(
    a: &Tensor<F>,
    b: &Tensor<F>,
    smem: &mut SharedMemory<F>,
    a_at: usize,
    b_at: usize,
    base: usize,
    stride: usize,
    t0: usize,
    l: usize,
    #[comptime] dh: usize,
    #[comptime] keys: usize,
) {
    let mut e = UNIT_POS_X as usize;
    while e < keys * dh {
        let row = t0 + e / dh;
        if row < l {
            let at = base + row * stride + e % dh;
            smem[a_at + e] = a[at];
            smem[b_at + e] = b[at];
        } else {
            smem[a_at + e] = F::new(0.0);
            smem[b_at + e] = F::new(0.0);
        }
        e += CUBE_DIM_X as usize;
    }
}

/// Loads `src[at + t0 .. at + t0 + keys]` (a bias, lse or delta row) into the shared tile at
/// `tile` of `smem`, zero past `L`; the first `keys` threads take part.
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_row<F: Float>(
    src: &Tensor<F>,
    smem: &mut SharedMemory<F>,
    tile: usize,
    at: usize,
    t0: usize,
    l: usize,
    #[comptime] keys: usize,
) {
    let e = UNIT_POS_X as usize;
    if e < keys {
        let j = t0 + e;
        if j < l {
            smem[tile + e] = src[at + j];
        } else {
            smem[tile + e] = F::new(0.0);
        }
    }
}

/// Loads the pairs `src[at + t0 + e][0..2]` of a `[.., L, 2]` tensor (the rows' maximum and log
/// denominator) into the shared tiles at `first` and `second`, zero past `L`; the first `keys`
/// threads take part.
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_pair_row<F: Float>(
    src: &Tensor<F>,
    smem: &mut SharedMemory<F>,
    first: usize,
    second: usize,
    at: usize,
    t0: usize,
    l: usize,
    #[comptime] keys: usize,
) {
    let e = UNIT_POS_X as usize;
    if e < keys {
        let j = t0 + e;
        if j < l {
            smem[first + e] = src[(at + j) * 2];
            smem[second + e] = src[(at + j) * 2 + 1];
        } else {
            smem[first + e] = F::new(0.0);
            smem[second + e] = F::new(0.0);
        }
    }
}

/// This thread's shares (its slice `off .. off + slice`) of two dot products with every row
/// `r` of two tiles of `smem`: `a · a_tile[r]` into `pa[r · threads + t]`, `b · b_tile[r]`
/// into `pb` (tile and partial-sum offsets in `smem`).
#[cube]
#[allow(clippy::too_many_arguments)]
fn partial_dots<F: Float>(
    a: &Array<F>,
    b: &Array<F>,
    smem: &mut SharedMemory<F>,
    a_tile: usize,
    b_tile: usize,
    pa: usize,
    pb: usize,
    t: usize,
    off: usize,
    #[comptime] dh: usize,
    #[comptime] slice: usize,
    #[comptime] keys: usize,
    #[comptime] threads: usize,
) {
    for r in 0..keys {
        let mut x = F::new(0.0);
        let mut y = F::new(0.0);
        #[unroll]
        for d in 0..slice {
            x += a[d] * smem[a_tile + r * dh + off + d];
            y += b[d] * smem[b_tile + r * dh + off + d];
        }
        smem[pa + r * threads + t] = x;
        smem[pb + r * threads + t] = y;
    }
}

/// The sum of the `parts` partial sums that the threads of row `row` wrote for tile row `r`
/// into the partial sums at `partial` of `smem`.
#[cube]
fn row_sum<F: Float>(
    smem: &SharedMemory<F>,
    partial: usize,
    r: usize,
    row: usize,
    #[comptime] threads: usize,
    #[comptime] parts: usize,
) -> F {
    let mut x = F::new(0.0);
    #[unroll]
    for p in 0..parts {
        x += smem[partial + r * threads + row * parts + p];
    }
    x
}

/// Thread `p`'s share (of `parts` sharing the row) of the keep bits of query `i` against keys
/// `t0 .. t0 + keys` (bit `r`: key `t0 + r` kept): the Philox evaluations `q4 ≡ p mod parts`,
/// four keys each (`t0` is a multiple of 4). The row's threads OR their shares through shared
/// memory ([`row_bits`]), so each evaluation runs once per row, and before the tile's loop, so
/// the generator's state is not live beside the row's accumulators.
#[cube]
#[allow(clippy::too_many_arguments)]
fn keep_share_of_query(
    i: usize,
    t0: usize,
    bh: usize,
    k0: u32,
    k1: u32,
    threshold: u32,
    p: usize,
    #[comptime] parts: usize,
    #[comptime] keys: usize,
) -> u32 {
    let mut bits = 0u32;
    let mut q4 = p;
    while q4 < comptime!(keys / 4) {
        let j = t0 + q4 * 4;
        let (a, b, c, d) = philox((j / 4) as u32, i as u32, bh as u32, 0u32, k0, k1);
        let at = (q4 * 4) as u32;
        if a < threshold {
            bits |= 1u32 << at;
        }
        if b < threshold {
            bits |= 1u32 << (at + 1);
        }
        if c < threshold {
            bits |= 1u32 << (at + 2);
        }
        if d < threshold {
            bits |= 1u32 << (at + 3);
        }
        q4 += parts;
    }
    bits
}

/// Thread `p`'s share of the keep bits of key `j` against queries `t0 .. t0 + keys` (bit `r`:
/// query `t0 + r`): the queries `r ≡ p mod parts`, one Philox evaluation each.
#[cube]
#[allow(clippy::too_many_arguments)]
fn keep_share_of_key(
    j: usize,
    t0: usize,
    bh: usize,
    k0: u32,
    k1: u32,
    threshold: u32,
    p: usize,
    #[comptime] parts: usize,
    #[comptime] keys: usize,
) -> u32 {
    let mut bits = 0u32;
    let mut r = p;
    while r < keys {
        let (a, b, c, d) = philox((j / 4) as u32, (t0 + r) as u32, bh as u32, 0u32, k0, k1);
        if word(a, b, c, d, j % 4) < threshold {
            bits |= 1u32 << r as u32;
        }
        r += parts;
    }
    bits
}

/// The keep bits of row `row`: the OR of its `parts` threads' shares at `shares` of `smem`
/// (kept as floats, exact: a tile has at most 16 keys, so a share is below 2¹⁶).
#[cube]
fn row_bits<F: Float>(
    smem: &SharedMemory<F>,
    shares: usize,
    row: usize,
    #[comptime] parts: usize,
) -> u32 {
    let mut bits = 0u32;
    #[unroll]
    for p in 0..parts {
        bits |= u32::cast_from(smem[shares + row * parts + p]);
    }
    bits
}

/// The dropout factor of bit `r` of `bits`: `scale` if set, else 0.
#[cube]
fn kept_factor<F: Float>(bits: u32, r: usize, scale: F) -> F {
    let mut z = F::new(0.0);
    if (bits >> r as u32) & 1u32 == 1u32 {
        z = scale;
    }
    z
}

/// Forward, `parts` threads per query row, each owning `dh / parts` of its dimensions.
#[cube(launch, launch_unchecked)]
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
    #[comptime] rows: usize,
    #[comptime] parts: usize,
    #[comptime] keys: usize,
    #[comptime] dropout: bool,
    #[define(F)] _dtype: StorageType,
) {
    let slice = comptime!(dh / parts);
    let threads = comptime!(rows * parts);
    let bh = CUBE_POS_Y as usize;
    let l = len as usize;
    let t = UNIT_POS_X as usize;
    let row = t / parts;
    let off = (t % parts) * slice;
    let i = CUBE_POS_X as usize * rows + row;
    let valid = i < l;
    let (base, stride) = head_of(bh, l, heads as usize, dh);
    let bias_at = (bh / heads as usize) * l;
    let (k0, k1) = key_words::<F>(seed);
    let z_kept = F::cast_from(keep_scale);
    let mut qr = Array::<F>::new(slice);
    let mut acc = Array::<F>::new(slice);
    let s = F::cast_from(scale);
    #[unroll]
    for d in 0..slice {
        acc[d] = F::new(0.0);
        qr[d] = F::new(0.0);
        if valid {
            qr[d] = q[base + i * stride + off + d] * s;
        }
    }
    let mut m = F::new(-1.0e30);
    let mut denom = F::new(0.0);
    // One shared array carved at fixed offsets: CubeCL places separate shared arrays in an
    // order that changes from process to process, and ptxas's register allocation (spills
    // included) changes with the layout.
    let k_tile = 0usize;
    let v_tile = comptime!(keys * dh);
    let b_tile = comptime!(2 * keys * dh);
    let px = comptime!(2 * keys * dh + keys);
    let kb = comptime!(2 * keys * dh + keys + keys * threads);
    let mut smem =
        SharedMemory::<F>::new(comptime!(2 * keys * dh + keys + keys * threads + threads));
    let mut t0 = 0usize;
    while t0 < l {
        load_tiles::<F>(
            k, v, &mut smem, k_tile, v_tile, base, stride, t0, l, dh, keys,
        );
        load_row::<F>(bias, &mut smem, b_tile, bias_at, t0, l, keys);
        if dropout {
            smem[kb + t] = F::cast_from(keep_share_of_query(
                i,
                t0,
                bh,
                k0,
                k1,
                threshold,
                t % parts,
                parts,
                keys,
            ));
        }
        sync_cube();
        // This thread's share of every score of the tile.
        for r in 0..keys {
            let mut x = F::new(0.0);
            #[unroll]
            for d in 0..slice {
                x += qr[d] * smem[k_tile + r * dh + off + d];
            }
            smem[px + r * threads + t] = x;
        }
        sync_cube();
        if valid {
            let mut bits = 0u32;
            if dropout {
                bits = row_bits::<F>(&smem, kb, row, parts);
            }
            // The tile's maximum score, then one rescale of the running sums per tile (one
            // `exp` per key, not two). The scores are summed again from shared memory in the
            // second pass rather than kept: 16 registers fewer, which ptxas needs to spill
            // nothing at 128 threads a block.
            let mut m_new = m;
            for r in 0..keys {
                if t0 + r < l {
                    let x = smem[b_tile + r] + row_sum::<F>(&smem, px, r, row, threads, parts);
                    if x > m_new {
                        m_new = x;
                    }
                }
            }
            let corr = F::exp(m - m_new);
            denom *= corr;
            #[unroll]
            for d in 0..slice {
                acc[d] *= corr;
            }
            for r in 0..keys {
                if t0 + r < l {
                    let x = smem[b_tile + r] + row_sum::<F>(&smem, px, r, row, threads, parts);
                    let p = F::exp(x - m_new);
                    denom += p;
                    let mut pz = p;
                    if dropout {
                        pz = p * kept_factor::<F>(bits, r, z_kept);
                    }
                    #[unroll]
                    for d in 0..slice {
                        acc[d] += pz * smem[v_tile + r * dh + off + d];
                    }
                }
            }
            m = m_new;
        }
        sync_cube();
        t0 += keys;
    }
    if valid {
        #[unroll]
        for d in 0..slice {
            out[base + i * stride + off + d] = acc[d] / denom;
        }
        if off == 0 {
            lse[(bh * l + i) * 2] = m;
            lse[(bh * l + i) * 2 + 1] = F::ln(denom);
        }
    }
}

/// Backward, `parts` threads per query row: `D_i = dO_i·O_i` (written to `delta`) and `dQ`.
#[cube(launch, launch_unchecked)]
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
    #[comptime] rows: usize,
    #[comptime] parts: usize,
    #[comptime] keys: usize,
    #[comptime] dropout: bool,
    #[define(F)] _dtype: StorageType,
) {
    let slice = comptime!(dh / parts);
    let threads = comptime!(rows * parts);
    let bh = CUBE_POS_Y as usize;
    let l = len as usize;
    let t = UNIT_POS_X as usize;
    let row = t / parts;
    let off = (t % parts) * slice;
    let i = CUBE_POS_X as usize * rows + row;
    let valid = i < l;
    let (base, stride) = head_of(bh, l, heads as usize, dh);
    let bias_at = (bh / heads as usize) * l;
    let (k0, k1) = key_words::<F>(seed);
    let z_kept = F::cast_from(keep_scale);
    let s = F::cast_from(scale);
    let mut qr = Array::<F>::new(slice);
    let mut dor = Array::<F>::new(slice);
    let mut acc = Array::<F>::new(slice);
    let mut d_part = F::new(0.0);
    let mut max_i = F::new(0.0);
    let mut log_denom_i = F::new(0.0);
    #[unroll]
    for d in 0..slice {
        acc[d] = F::new(0.0);
        qr[d] = F::new(0.0);
        dor[d] = F::new(0.0);
        if valid {
            let at = base + i * stride + off + d;
            qr[d] = q[at] * s;
            dor[d] = dout[at];
            d_part += dor[d] * out[at];
        }
    }
    // One shared array carved at fixed offsets: CubeCL places separate shared arrays in an
    // order that changes from process to process, and ptxas's register allocation (spills
    // included) changes with the layout.
    let k_tile = 0usize;
    let v_tile = comptime!(keys * dh);
    let b_tile = comptime!(2 * keys * dh);
    let px = comptime!(2 * keys * dh + keys);
    let pdp = comptime!(2 * keys * dh + keys + keys * threads);
    let kb = comptime!(2 * keys * dh + keys + 2 * keys * threads);
    let mut smem = SharedMemory::<F>::new(comptime!(
        2 * keys * dh + keys + 2 * keys * threads + threads
    ));
    // D_i from the row's partial sums.
    smem[px + t] = d_part;
    sync_cube();
    let d_i = row_sum::<F>(&smem, px, 0, row, threads, parts);
    if valid {
        if off == 0 {
            delta[bh * l + i] = d_i;
        }
        max_i = lse[(bh * l + i) * 2];
        log_denom_i = lse[(bh * l + i) * 2 + 1];
    }
    sync_cube();
    let mut t0 = 0usize;
    while t0 < l {
        load_tiles::<F>(
            k, v, &mut smem, k_tile, v_tile, base, stride, t0, l, dh, keys,
        );
        load_row::<F>(bias, &mut smem, b_tile, bias_at, t0, l, keys);
        if dropout {
            smem[kb + t] = F::cast_from(keep_share_of_query(
                i,
                t0,
                bh,
                k0,
                k1,
                threshold,
                t % parts,
                parts,
                keys,
            ));
        }
        sync_cube();
        partial_dots::<F>(
            &qr, &dor, &mut smem, k_tile, v_tile, px, pdp, t, off, dh, slice, keys, threads,
        );
        sync_cube();
        if valid {
            let mut bits = 0u32;
            if dropout {
                bits = row_bits::<F>(&smem, kb, row, parts);
            }
            for r in 0..keys {
                let j = t0 + r;
                if j < l {
                    let x = smem[b_tile + r] + row_sum::<F>(&smem, px, r, row, threads, parts);
                    let mut dp = row_sum::<F>(&smem, pdp, r, row, threads, parts);
                    let p = F::exp((x - max_i) - log_denom_i);
                    if dropout {
                        dp *= kept_factor::<F>(bits, r, z_kept);
                    }
                    let ds = p * (dp - d_i);
                    #[unroll]
                    for d in 0..slice {
                        acc[d] += ds * smem[k_tile + r * dh + off + d];
                    }
                }
            }
        }
        sync_cube();
        t0 += keys;
    }
    if valid {
        #[unroll]
        for d in 0..slice {
            dq[base + i * stride + off + d] = acc[d] * s;
        }
    }
}

/// Backward, `parts` threads per key row: `dK` and `dV`, with the query side (`q`, `dO`, `lse`,
/// `D`) in shared tiles.
#[cube(launch, launch_unchecked)]
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
    #[comptime] rows: usize,
    #[comptime] parts: usize,
    #[comptime] keys: usize,
    #[comptime] dropout: bool,
    #[define(F)] _dtype: StorageType,
) {
    let slice = comptime!(dh / parts);
    let threads = comptime!(rows * parts);
    let bh = CUBE_POS_Y as usize;
    let l = len as usize;
    let t = UNIT_POS_X as usize;
    let row = t / parts;
    let off = (t % parts) * slice;
    let j = CUBE_POS_X as usize * rows + row;
    let valid = j < l;
    let (base, stride) = head_of(bh, l, heads as usize, dh);
    let (k0, k1) = key_words::<F>(seed);
    let z_kept = F::cast_from(keep_scale);
    let s = F::cast_from(scale);
    let mut kr = Array::<F>::new(slice);
    let mut vr = Array::<F>::new(slice);
    let mut dk_acc = Array::<F>::new(slice);
    let mut dv_acc = Array::<F>::new(slice);
    let mut bias_j = F::new(0.0);
    #[unroll]
    for d in 0..slice {
        dk_acc[d] = F::new(0.0);
        dv_acc[d] = F::new(0.0);
        kr[d] = F::new(0.0);
        vr[d] = F::new(0.0);
        if valid {
            kr[d] = k[base + j * stride + off + d] * s;
            vr[d] = v[base + j * stride + off + d];
        }
    }
    if valid {
        bias_j = bias[(bh / heads as usize) * l + j];
    }
    // One shared array carved at fixed offsets: CubeCL places separate shared arrays in an
    // order that changes from process to process, and ptxas's register allocation (spills
    // included) changes with the layout.
    let q_tile = 0usize;
    let do_tile = comptime!(keys * dh);
    let max_tile = comptime!(2 * keys * dh);
    let log_denom_tile = comptime!(2 * keys * dh + keys);
    let delta_tile = comptime!(2 * keys * dh + 2 * keys);
    let px = comptime!(2 * keys * dh + 3 * keys);
    let pdp = comptime!(2 * keys * dh + 3 * keys + keys * threads);
    let kb = comptime!(2 * keys * dh + 3 * keys + 2 * keys * threads);
    let mut smem = SharedMemory::<F>::new(comptime!(
        2 * keys * dh + 3 * keys + 2 * keys * threads + threads
    ));
    let mut t0 = 0usize;
    while t0 < l {
        load_tiles::<F>(
            q, dout, &mut smem, q_tile, do_tile, base, stride, t0, l, dh, keys,
        );
        load_pair_row::<F>(
            lse,
            &mut smem,
            max_tile,
            log_denom_tile,
            bh * l,
            t0,
            l,
            keys,
        );
        load_row::<F>(delta, &mut smem, delta_tile, bh * l, t0, l, keys);
        if dropout {
            smem[kb + t] = F::cast_from(keep_share_of_key(
                j,
                t0,
                bh,
                k0,
                k1,
                threshold,
                t % parts,
                parts,
                keys,
            ));
        }
        sync_cube();
        partial_dots::<F>(
            &kr, &vr, &mut smem, q_tile, do_tile, px, pdp, t, off, dh, slice, keys, threads,
        );
        sync_cube();
        if valid {
            let mut bits = 0u32;
            if dropout {
                bits = row_bits::<F>(&smem, kb, row, parts);
            }
            for r in 0..keys {
                let i = t0 + r;
                if i < l {
                    let x = bias_j + row_sum::<F>(&smem, px, r, row, threads, parts);
                    let mut dp = row_sum::<F>(&smem, pdp, r, row, threads, parts);
                    let p = F::exp((x - smem[max_tile + r]) - smem[log_denom_tile + r]);
                    let mut pz = p;
                    if dropout {
                        let z = kept_factor::<F>(bits, r, z_kept);
                        pz = p * z;
                        dp *= z;
                    }
                    let ds = p * (dp - smem[delta_tile + r]);
                    #[unroll]
                    for d in 0..slice {
                        dv_acc[d] += pz * smem[do_tile + r * dh + off + d];
                        dk_acc[d] += ds * smem[q_tile + r * dh + off + d];
                    }
                }
            }
        }
        sync_cube();
        t0 += keys;
    }
    if valid {
        #[unroll]
        for d in 0..slice {
            dk[base + j * stride + off + d] = dk_acc[d] * s;
            dv[base + j * stride + off + d] = dv_acc[d];
        }
    }
}
