//! AdamW's per-tensor update, operation by operation as `torch.optim.AdamW`.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::{AdamState, OptimConfig};

/// `1 - β^t` with torch's f64 `beta ** step`.
pub(super) fn bias_correction(beta: f64, step: usize) -> f64 {
    1.0 - beta.powf(step as f64)
}

/// torch's `m.lerp_(g, w)` (CPU formula; picks the form by the size of the weight).
pub(super) fn lerp<B: Backend, const D: usize>(
    m: Tensor<B, D>,
    g: Tensor<B, D>,
    w: f64,
) -> Tensor<B, D> {
    if w < 0.5 {
        m.clone() + (g - m).mul_scalar(w)
    } else {
        g.clone() - (g - m).mul_scalar(1.0 - w)
    }
}

/// `v * β2 + (1 - β2) * g * g` (torch's `mul_(β2).addcmul_(g, g, value=1-β2)`).
pub(super) fn second_moment<B: Backend, const D: usize>(
    v: Tensor<B, D>,
    g: &Tensor<B, D>,
    beta2: f64,
) -> Tensor<B, D> {
    v.mul_scalar(beta2) + g.clone().mul_scalar(1.0 - beta2) * g.clone()
}

/// `sqrt(v) / sqrt(1 - β2^t) + eps`.
pub(super) fn denom<B: Backend, const D: usize>(
    v: &Tensor<B, D>,
    bc2: f64,
    eps: f64,
) -> Tensor<B, D> {
    v.clone().sqrt().div_scalar(bc2.sqrt()).add_scalar(eps)
}

/// One `torch.optim.AdamW` step (foreach=False) on one tensor. Returns the new parameter and
/// state. `decay: false` means this parameter's group has weight decay 0.
pub fn adamw_step<B: Backend, const D: usize>(
    cfg: &OptimConfig,
    lr: f64,
    decay: bool,
    param: Tensor<B, D>,
    grad: Tensor<B, D>,
    state: AdamState<B, D>,
) -> (Tensor<B, D>, AdamState<B, D>) {
    let step = state.step + 1;
    let wd = if decay { cfg.weight_decay } else { 0.0 };
    let mut p = param;
    if wd != 0.0 {
        p = p.mul_scalar(1.0 - lr * wd);
    }
    let m = lerp(state.exp_avg, grad.clone(), 1.0 - cfg.beta1);
    let v = second_moment(state.exp_avg_sq, &grad, cfg.beta2);
    let step_size = lr / bias_correction(cfg.beta1, step);
    let d = denom(&v, bias_correction(cfg.beta2, step), cfg.eps);
    // torch: `param.addcdiv_(m, denom, value=-step_size)` = p + (-step_size * m) / denom.
    let p = p - m.clone().mul_scalar(step_size) / d;
    (
        p,
        AdamState {
            exp_avg: m,
            exp_avg_sq: v,
            step,
        },
    )
}
