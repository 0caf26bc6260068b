//! Global-norm gradient clipping equal to `torch.nn.utils.clip_grad_norm_` (L2).
//!
//! torch takes the L2 norm of each gradient, then the L2 norm of those norms (the global norm
//! over *all* gradients), and multiplies every gradient by
//! `min(1, max_norm / (total + 1e-6))`. Burn's built-in `GradientClipping::Norm` clips each
//! tensor by its own norm, which changes the update direction, so it is not used.
//!
//! Everything stays in float32 as in torch: the total is `sqrt(Σ_i Σ g_i²)` (torch's norm of
//! per-tensor norms, equal up to rounding; it skips a square root and its square per tensor),
//! and the coefficient (`1e-6` and `max_norm` rounded to f32; `max_norm / t` is `t.reciprocal() *
//! max_norm` in torch's `__rdiv__`). Only the total norm is read back to the host, once.

use std::collections::HashSet;

use burn::module::{AutodiffModule, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};

/// The factor torch multiplies the gradients by, or `None` when it is 1 (nothing to do).
pub fn clip_coefficient(total_norm: f32, max_norm: f64) -> Option<f32> {
    let coef = (1.0f32 / (total_norm + 1e-6f32)) * max_norm as f32;
    // torch clamps to 1.0 and always multiplies; multiplying by exactly 1 is the identity, so
    // skipping it gives the same bits and saves a pass over every gradient.
    (coef < 1.0).then_some(coef)
}

/// The global L2 norm `sqrt(Σ_i Σ g_i²)` of the gradients as a `[1]` tensor on the device (the
/// norm of the per-tensor norms that torch takes, up to rounding; no host read): `Σ g²` of
/// many gradients per launch on a GPU backend ([`crate::model::kernels::sum_of_squares`]).
/// `None` for no tensors.
fn total_norm<B: Backend>(grads: Vec<Tensor<B, 1>>) -> Option<Tensor<B, 1>> {
    crate::model::kernels::sum_of_squares(grads).map(Tensor::sqrt)
}

/// [`total_norm`] read back once; 0 for no tensors.
fn norm_of_norms<B: Backend>(grads: Vec<Tensor<B, 1>>) -> f32 {
    total_norm(grads).map_or(0.0, |t| t.into_scalar().elem::<f32>())
}

/// Clips a list of (flattened) gradients by their global L2 norm, as `clip_grad_norm_` does.
///
/// Returns the clipped gradients and the total norm before clipping (the value torch returns).
pub fn clip_tensors<B: Backend>(
    grads: Vec<Tensor<B, 1>>,
    max_norm: f64,
) -> (Vec<Tensor<B, 1>>, f64) {
    let total = norm_of_norms(grads.clone());
    let grads = match clip_coefficient(total, max_norm) {
        Some(coef) => grads.into_iter().map(|g| g.mul_scalar(coef)).collect(),
        None => grads,
    };
    (grads, f64::from(total))
}

/// Collects the gradients of the module's float parameters, flattened (each id once).
struct NormCollector<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    seen: HashSet<ParamId>,
    flat: Vec<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for NormCollector<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        // Tied parameters are visited once per use; torch lists each parameter once.
        if !self.seen.insert(param.id) {
            return;
        }
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            self.flat.push(g.flatten(0, D - 1));
        }
    }
}

/// A gradient scale: a host number, or a `[1]` tensor left on the device.
enum Coef<B: Backend> {
    Host(f32),
    Device(Tensor<B, 1>),
}

/// Multiplies the gradient of every float parameter of the module by `coef`.
struct Scaler<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    seen: HashSet<ParamId>,
    coef: Coef<B::InnerBackend>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scaler<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if !self.seen.insert(param.id) {
            return;
        }
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            let g = match &self.coef {
                Coef::Host(c) => g.mul_scalar(*c),
                Coef::Device(c) => g * c.clone().reshape([1; D]),
            };
            self.grads.register(param.id, g);
        }
    }
}

/// Multiplies every gradient of `module`'s float parameters by `coef`.
fn scale<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    mut grads: GradientsParams,
    coef: Coef<B::InnerBackend>,
) -> GradientsParams {
    module.visit(&mut Scaler::<B> {
        grads: &mut grads,
        seen: HashSet::new(),
        coef,
    });
    grads
}

/// Each gradient of `module`'s float parameters, flattened (each id once), in visiting order.
fn flat_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
) -> Vec<Tensor<B::InnerBackend, 1>> {
    let mut collector = NormCollector::<B> {
        grads,
        seen: HashSet::new(),
        flat: Vec::new(),
    };
    module.visit(&mut collector);
    collector.flat
}

/// The global L2 norm of the gradients of all float parameters of `module` (each id once).
pub fn grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
) -> f64 {
    f64::from(norm_of_norms(flat_grads(module, grads)))
}

/// Multiplies the gradient of every float parameter of `module` by `coef` (in f32).
pub fn scale_grads<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: GradientsParams,
    coef: f32,
) -> GradientsParams {
    scale(module, grads, Coef::Host(coef))
}

/// `clip_grad_norm_` over the gradients of all float parameters of `module`.
///
/// Gradients of ids that are not parameters of `module` are neither counted nor scaled. A
/// non-finite total is returned as is and the gradients are left alone (torch would spread the
/// NaN into them); callers should skip the step then.
/// Returns the (possibly) rescaled gradients and the total norm before clipping.
pub fn clip_grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: GradientsParams,
    max_norm: f64,
) -> (GradientsParams, f64) {
    let total = grad_norm(module, &grads);
    match clip_coefficient(total as f32, max_norm) {
        Some(coef) => (scale_grads(module, grads, coef), total),
        None => (grads, total),
    }
}

/// [`clip_grad_norm`] without reading anything back to the host: the coefficient
/// `min(1, max_norm / (total + 1e-6))` (torch's `clip_coef_clamped`) stays on the device and
/// every gradient is multiplied by it (by exactly 1 when the norm is below `max_norm`), as
/// torch's `clip_grad_norm_` does: the same numbers as [`clip_grad_norm`] for a finite norm,
/// while a non-finite norm spreads into the gradients (as in torch), so the caller must check
/// the returned `[1]` norm before keeping the result. On a GPU this keeps the host from waiting
/// for the backward pass before it can queue the optimizer's work.
pub fn clip_grad_norm_on_device<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: GradientsParams,
    max_norm: f64,
) -> (GradientsParams, Tensor<B::InnerBackend, 1>) {
    match clip_coef_on_device(module, &grads, max_norm) {
        (Some(coef), total) => (scale(module, grads, Coef::Device(coef)), total),
        (None, total) => (grads, total),
    }
}

/// What [`clip_grad_norm_on_device`] computes, without applying it: torch's `clip_coef_clamped`
/// as a `[1]` tensor on the device (`None` when `module` has no gradients) and the total norm.
/// The optimizer multiplies each gradient by the coefficient as the first operation of its
/// update ([`crate::train::optim::QaOptimizer::step_scaled`]), where a GPU fuses it into the
/// update's kernel instead of spending a pass (and a launch) per gradient.
pub fn clip_coef_on_device<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
    max_norm: f64,
) -> (
    Option<Tensor<B::InnerBackend, 1>>,
    Tensor<B::InnerBackend, 1>,
) {
    let Some(total) = total_norm(flat_grads(module, grads)) else {
        return (None, Tensor::zeros([1], &Default::default()));
    };
    // The host formula of `clip_coefficient`, element-wise in f32: (1 / (t + 1e-6)) · max.
    let coef = total
        .clone()
        .add_scalar(1e-6f32)
        .recip()
        .mul_scalar(max_norm as f32)
        .clamp_max(1.0f32);
    (Some(coef), total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn small_norm_is_untouched_and_large_is_scaled() {
        let dev = Default::default();
        let g = vec![Tensor::<Flex, 1>::from_floats([3.0, 4.0], &dev)];
        let (out, total) = clip_tensors(g, 10.0);
        assert_eq!(total, 5.0);
        assert_eq!(out[0].to_data().to_vec::<f32>().unwrap(), vec![3.0, 4.0]);

        let g = vec![
            Tensor::<Flex, 1>::from_floats([3.0], &dev),
            Tensor::<Flex, 1>::from_floats([4.0], &dev),
        ];
        let (out, total) = clip_tensors(g, 1.0);
        assert_eq!(total, 5.0);
        let a = out[0].to_data().to_vec::<f32>().unwrap()[0];
        let b = out[1].to_data().to_vec::<f32>().unwrap()[0];
        assert!((a - 0.6).abs() < 1e-6 && (b - 0.8).abs() < 1e-6, "{a} {b}");
    }

    #[test]
    fn no_grads_gives_zero() {
        let (out, total) = clip_tensors::<Flex>(Vec::new(), 1.0);
        assert!(out.is_empty());
        assert_eq!(total, 0.0);
    }
}
