//! AdamP's per-tensor update (`adamp` 0.3.0): Adam projected off the weight's radial direction
//! where the cosine test finds the weight scale-invariant, evaluated without host reads.

use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor};

use super::adamw::{bias_correction, denom, second_moment};
use super::{AdamState, OptimConfig, ParamSpec, Projection};

/// `x` as `[channels, rest]` with `axis` as the channel axis (torch's `x.view(x.size(0), -1)`
/// after moving `axis` first).
pub(super) fn rows<B: Backend, const D: usize>(x: Tensor<B, D>, axis: usize) -> Tensor<B, 2> {
    let x = if axis == 0 { x } else { x.swap_dims(0, axis) };
    let dims = x.dims();
    let c = dims[0];
    let n = dims.iter().skip(1).product::<usize>();
    x.reshape([c, n])
}

/// Inverse of [`rows`] for a tensor of original dims `dims`.
pub(super) fn unrows<B: Backend, const D: usize>(
    x: Tensor<B, 2>,
    dims: [usize; D],
    axis: usize,
) -> Tensor<B, D> {
    let mut swapped = dims;
    swapped.swap(0, axis);
    let x: Tensor<B, D> = x.reshape(swapped);
    if axis == 0 {
        x
    } else {
        x.swap_dims(0, axis)
    }
}

/// Row L2 norms `[r, 1]`.
fn row_norms<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    (x.clone() * x).sum_dim(1).sqrt()
}

/// `|F.cosine_similarity(g, p, dim=1, eps)|` per row (torch ≥ 1.12: each side divided by its
/// norm clamped to `eps`, then the dot product).
fn row_cos<B: Backend>(g: Tensor<B, 2>, p: Tensor<B, 2>, eps: f64) -> Tensor<B, 2> {
    let gn = row_norms(g.clone()).clamp_min(eps);
    let pn = row_norms(p.clone()).clamp_min(eps);
    ((g / gn) * (p / pn)).sum_dim(1).abs()
}

/// AdamP's removal of the radial component per row:
/// `p_n = p / (|p| + eps)`, returns `p_n * sum(p_n * perturb)` (to be subtracted).
fn radial<B: Backend>(p: Tensor<B, 2>, perturb: Tensor<B, 2>, eps: f64) -> Tensor<B, 2> {
    let p_n = p.clone() / row_norms(p).add_scalar(eps);
    p_n.clone() * (p_n * perturb).sum_dim(1)
}

/// 1.0 where `max(cos) < delta / sqrt(n)`, else 0.0, as a `[1, 1]` tensor (stays on device).
fn test_fires<B: Backend>(cos: Tensor<B, 2>, delta: f64, n: usize) -> Tensor<B, 2> {
    // torch compares the f32 max against the f64 threshold rounded to f32.
    let thr = (delta / (n as f64).sqrt()) as f32;
    cos.max().lower_elem(thr).float().reshape([1, 1])
}

/// Which projection AdamP would apply for `param` (before the step) and `grad`. Reads two
/// scalars back from the device; the update itself ([`adamp_step`]) does not need this.
pub fn adamp_projection<B: Backend, const D: usize>(
    cfg: &OptimConfig,
    channel_axis: usize,
    param: Tensor<B, D>,
    grad: Tensor<B, D>,
) -> Projection {
    if D < 2 {
        return Projection::None;
    }
    let p2 = rows(param, channel_axis);
    let g2 = rows(grad, channel_axis);
    let [c, n] = p2.dims();
    let fires = |x: Tensor<B, 2>| x.into_scalar().elem::<f32>() > 0.5;
    if fires(test_fires(
        row_cos(g2.clone(), p2.clone(), cfg.eps),
        cfg.delta,
        n,
    )) {
        return Projection::Channel;
    }
    let pl = p2.reshape([1, c * n]);
    let gl = g2.reshape([1, c * n]);
    if fires(test_fires(row_cos(gl, pl, cfg.eps), cfg.delta, c * n)) {
        Projection::Layer
    } else {
        Projection::None
    }
}

/// One AdamP (`adamp` 0.3.0) step on one tensor. Parameters with ≥ 2 dims get the
/// channel-then-layer projection test; see the module docs.
pub fn adamp_step<B: Backend, const D: usize>(
    cfg: &OptimConfig,
    lr: f64,
    spec: ParamSpec,
    param: Tensor<B, D>,
    grad: Tensor<B, D>,
    state: AdamState<B, D>,
) -> (Tensor<B, D>, AdamState<B, D>) {
    let step = state.step + 1;
    let (b1, b2) = (cfg.beta1, cfg.beta2);
    // adamp: `exp_avg.mul_(β1).add_(1 - β1, grad)` (not torch's lerp).
    let m = state.exp_avg.mul_scalar(b1) + grad.clone().mul_scalar(1.0 - b1);
    let v = second_moment(state.exp_avg_sq, &grad, b2);
    let d = denom(&v, bias_correction(b2, step), cfg.eps);
    let step_size = lr / bias_correction(b1, step);
    let perturb = if cfg.nesterov {
        (m.clone().mul_scalar(b1) + grad.clone().mul_scalar(1.0 - b1)) / d
    } else {
        m.clone() / d
    };
    let wd = if spec.decay { cfg.weight_decay } else { 0.0 };
    let plain = (1.0 - lr * wd) as f32;

    let p = if D >= 2 {
        let dims = param.dims();
        let axis = spec.channel_axis;
        let p2 = rows(param, axis);
        let g2 = rows(grad, axis);
        let u2 = rows(perturb, axis);
        let [c, n] = p2.dims();

        // Channel view: each row of the `[c, n]` view.
        let fire_c = test_fires(row_cos(g2.clone(), p2.clone(), cfg.eps), cfg.delta, n);
        let proj_c = radial(p2.clone(), u2.clone(), cfg.eps);
        // Layer view: the whole tensor as one row; only used when the channel test failed.
        let pl = p2.clone().reshape([1, c * n]);
        let gl = g2.reshape([1, c * n]);
        let ul = u2.clone().reshape([1, c * n]);
        let fire_l = test_fires(row_cos(gl, pl.clone(), cfg.eps), cfg.delta, c * n)
            * (fire_c.clone().neg().add_scalar(1.0));
        let proj_l = radial(pl, ul, cfg.eps).reshape([c, n]);
        // A 0/1 factor keeps the untaken branch exact: `u - x*0 = u`, `u - x*1 = u - x`.
        let u2 = u2 - proj_c * fire_c.clone() - proj_l * fire_l.clone();

        let mut p2 = p2;
        if wd > 0.0 {
            let ratio = (1.0 - lr * wd * cfg.wd_ratio) as f32;
            let fired = fire_c + fire_l;
            // `plain*1 + ratio*0` and `plain*0 + ratio*1` are exact, so the factor is
            // exactly one of the two f32 values torch would use.
            let factor =
                fired.clone().neg().add_scalar(1.0).mul_scalar(plain) + fired.mul_scalar(ratio);
            p2 = p2 * factor;
        }
        unrows(p2 - u2.mul_scalar(step_size), dims, axis)
    } else {
        let p = if wd > 0.0 {
            param.mul_scalar(plain)
        } else {
            param
        };
        p - perturb.mul_scalar(step_size)
    };
    (
        p,
        AdamState {
            exp_avg: m,
            exp_avg_sq: v,
            step,
        },
    )
}
