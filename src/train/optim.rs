//! AdamW (`torch.optim.AdamW`) and AdamP (`adamp` 0.3.0) with HF Trainer's weight-decay groups.
//!
//! The per-tensor updates ([`adamw_step`], [`adamp_step`]) follow the PyTorch code operation by
//! operation, in float32 with f64 scalars (bias corrections and step sizes are computed in f64
//! and rounded once when applied), so a run matches torch to float32 rounding.
//! [`QaOptimizer`] applies them to every float parameter of a Burn module, keeps the moments
//! per [`ParamId`], and decides weight decay and AdamP's channel axis from the parameter's
//! module path (see [`param_spec`]).
//!
//! AdamP's projection is evaluated on the device without reading anything back: both the
//! channel-wise and the layer-wise candidates are computed and the one whose cosine test fires
//! is selected with 0/1 factors, which yields bit-for-bit the branch torch takes.

use std::collections::HashMap;

use anyhow::bail;
use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor, TensorData};
use serde::{Deserialize, Serialize};

/// Which update rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimKind {
    /// `torch.optim.AdamW` (decoupled weight decay).
    #[default]
    Adamw,
    /// AdamP (Heo et al. 2021, `adamp` 0.3.0): Adam whose update is projected off the weight's
    /// radial direction for scale-invariant weights, with reduced decay there.
    Adamp,
}

/// Optimizer hyper-parameters (the learning rate comes from the schedule at each step).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    /// Update rule.
    pub kind: OptimKind,
    /// First-moment decay β1.
    pub beta1: f64,
    /// Second-moment decay β2.
    pub beta2: f64,
    /// Added to the bias-corrected `sqrt(v)`; AdamP also uses it in its norms and cosines.
    pub eps: f64,
    /// Decoupled weight decay for the parameters that decay (see [`param_spec`]).
    pub weight_decay: f64,
    /// AdamP: cosine threshold factor (the test is `|cos| < delta / sqrt(n)`).
    pub delta: f64,
    /// AdamP: weight decay multiplier for projected (scale-invariant) parameters.
    pub wd_ratio: f64,
    /// AdamP: Nesterov momentum in the update direction.
    pub nesterov: bool,
}

impl Default for OptimConfig {
    /// PyTorch's Adam betas/eps, HF's usual `weight_decay` 0.01, and `adamp`'s defaults.
    fn default() -> Self {
        Self {
            kind: OptimKind::Adamw,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
            delta: 0.1,
            wd_ratio: 0.1,
            nesterov: false,
        }
    }
}

/// Adam moments of one parameter. `step` counts the updates applied so far.
#[derive(Clone, Debug)]
pub struct AdamState<B: Backend, const D: usize> {
    /// First moment `m`.
    pub exp_avg: Tensor<B, D>,
    /// Second moment `v`.
    pub exp_avg_sq: Tensor<B, D>,
    /// Number of updates taken (torch's `state["step"]`).
    pub step: usize,
}

impl<B: Backend, const D: usize> AdamState<B, D> {
    /// Fresh state (zero moments, step 0), as torch creates on a parameter's first update.
    pub fn zeros(dims: [usize; D], device: &B::Device) -> Self {
        Self {
            exp_avg: Tensor::zeros(dims, device),
            exp_avg_sq: Tensor::zeros(dims, device),
            step: 0,
        }
    }
}

/// How one parameter is treated: decayed or not, and which axis holds AdamP's channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    /// Apply weight decay (HF: not for biases and LayerNorm parameters).
    pub decay: bool,
    /// The axis AdamP's channel-wise test treats as output channels: 0 for PyTorch layouts
    /// (`[out, in]`, embeddings, LSTM weights), 1 for Burn `Linear` weights (`[in, out]`).
    pub channel_axis: usize,
}

/// Which projection AdamP applied to a parameter in a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Projection {
    /// No projection (1-D parameter, or neither cosine test fired): full weight decay.
    None,
    /// Per-channel projection (every row's |cos(g, p)| below the threshold).
    Channel,
    /// Whole-tensor projection.
    Layer,
}

/// HF Trainer's decay rule on a parameter path: no decay when the last segment contains
/// `bias`, or the parameter belongs to a LayerNorm (`layer_norm.gamma` / `.beta` in this
/// project, `LayerNorm.weight` / `.bias` in HF names).
pub fn decays(path: &str) -> bool {
    let last = path.rsplit('.').next().unwrap_or(path);
    let layer_norm = path
        .split('.')
        .any(|s| s.contains("layer_norm") || s.contains("LayerNorm"));
    !(last.contains("bias") || layer_norm)
}

/// The [`ParamSpec`] of a parameter from its dotted module path and the Burn container type of
/// the struct that owns it (`"Struct:Linear"`, `"Struct:LayerNorm"`, ... as Burn's
/// `enter_module` reports it).
pub fn param_spec(path: &str, owner: &str) -> ParamSpec {
    let last = path.rsplit('.').next().unwrap_or(path);
    let decay = decays(path) && owner != "Struct:LayerNorm";
    // Burn's Linear stores `[d_in, d_out]`, the transpose of torch's `[out, in]`; AdamP's
    // channels are torch's rows, i.e. Burn's columns.
    let channel_axis = usize::from(owner == "Struct:Linear" && last == "weight");
    ParamSpec {
        decay,
        channel_axis,
    }
}

/// `1 - β^t` with torch's f64 `beta ** step`.
fn bias_correction(beta: f64, step: usize) -> f64 {
    1.0 - beta.powf(step as f64)
}

/// torch's `m.lerp_(g, w)` (CPU formula; picks the form by the size of the weight).
fn lerp<B: Backend, const D: usize>(m: Tensor<B, D>, g: Tensor<B, D>, w: f64) -> Tensor<B, D> {
    if w < 0.5 {
        m.clone() + (g - m).mul_scalar(w)
    } else {
        g.clone() - (g - m).mul_scalar(1.0 - w)
    }
}

/// `v * β2 + (1 - β2) * g * g` (torch's `mul_(β2).addcmul_(g, g, value=1-β2)`).
fn second_moment<B: Backend, const D: usize>(
    v: Tensor<B, D>,
    g: &Tensor<B, D>,
    beta2: f64,
) -> Tensor<B, D> {
    v.mul_scalar(beta2) + g.clone().mul_scalar(1.0 - beta2) * g.clone()
}

/// `sqrt(v) / sqrt(1 - β2^t) + eps`.
fn denom<B: Backend, const D: usize>(v: &Tensor<B, D>, bc2: f64, eps: f64) -> Tensor<B, D> {
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

/// `x` as `[channels, rest]` with `axis` as the channel axis (torch's `x.view(x.size(0), -1)`
/// after moving `axis` first).
fn rows<B: Backend, const D: usize>(x: Tensor<B, D>, axis: usize) -> Tensor<B, 2> {
    let x = if axis == 0 { x } else { x.swap_dims(0, axis) };
    let dims = x.dims();
    let c = dims[0];
    let n = dims.iter().skip(1).product::<usize>();
    x.reshape([c, n])
}

/// Inverse of [`rows`] for a tensor of original dims `dims`.
fn unrows<B: Backend, const D: usize>(
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

/// One step of the configured rule on one tensor.
pub fn update<B: Backend, const D: usize>(
    cfg: &OptimConfig,
    lr: f64,
    spec: ParamSpec,
    param: Tensor<B, D>,
    grad: Tensor<B, D>,
    state: AdamState<B, D>,
) -> (Tensor<B, D>, AdamState<B, D>) {
    match cfg.kind {
        OptimKind::Adamw => adamw_step(cfg, lr, spec.decay, param, grad, state),
        OptimKind::Adamp => adamp_step(cfg, lr, spec, param, grad, state),
    }
}

/// Stored moments of one parameter, flattened so parameters of any rank share one map.
#[derive(Debug)]
struct Slot<B: Backend> {
    path: String,
    shape: Vec<usize>,
    exp_avg: Tensor<B, 1>,
    exp_avg_sq: Tensor<B, 1>,
    step: usize,
}

/// Serialisable optimizer state of one parameter, keyed by its module path (paths are stable
/// across processes; [`ParamId`]s are not when a model is rebuilt from a checkpoint).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParamState {
    /// Dotted module path, e.g. `qa_outputs.weight`.
    pub path: String,
    /// Parameter shape (Burn layout).
    pub shape: Vec<usize>,
    /// Updates taken.
    pub step: usize,
    /// First moment, row-major.
    pub exp_avg: Vec<f32>,
    /// Second moment, row-major.
    pub exp_avg_sq: Vec<f32>,
}

/// Serialisable state of a [`QaOptimizer`] for resumable checkpoints.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OptimState {
    /// One entry per parameter that has been updated, sorted by path.
    pub params: Vec<ParamState>,
}

/// AdamW / AdamP over all float parameters of a Burn module, HF Trainer style.
#[derive(Debug)]
pub struct QaOptimizer<B: AutodiffBackend> {
    cfg: OptimConfig,
    states: HashMap<ParamId, Slot<B::InnerBackend>>,
    /// Loaded state not yet matched to a parameter (matched by path on the next step).
    pending: HashMap<String, Slot<B::InnerBackend>>,
    /// AdamW's moments of all parameters in one tensor each (the multi-tensor step).
    flat: Option<FlatState<B::InnerBackend>>,
    /// Whether AdamW updates all parameters as one tensor (see [`QaOptimizer::step`]).
    multi_tensor: bool,
}

/// Where one parameter lives in the multi-tensor step's flat tensors.
#[derive(Clone, Debug, PartialEq)]
struct FlatEntry {
    id: ParamId,
    path: String,
    shape: Vec<usize>,
    decay: bool,
}

impl FlatEntry {
    fn len(&self) -> usize {
        self.shape.iter().product()
    }
}

/// AdamW state of the multi-tensor step: every parameter's moments, concatenated in the
/// module's visiting order (`layout`), with one step count.
#[derive(Debug)]
struct FlatState<B: Backend> {
    layout: Vec<FlatEntry>,
    /// 1 where the element's parameter decays, else 0; and its complement.
    decay: Tensor<B, 1>,
    keep: Tensor<B, 1>,
    exp_avg: Tensor<B, 1>,
    exp_avg_sq: Tensor<B, 1>,
    step: usize,
}

impl<B: AutodiffBackend> QaOptimizer<B> {
    /// A fresh optimizer. AdamW's multi-tensor step (see [`Self::step`]) is off unless
    /// [`Self::with_multi_tensor`] turns it on (`train.multi_tensor_adamw`). On the host backend copying every parameter and
    /// gradient into one tensor costs more than the operations it saves (roberta-base on 2 CPU
    /// cores: 3.7–4.0 s a step instead of 2.1–2.3 s, twice the memory). On the GPU backends
    /// (`Fusion` over CubeCL) each tensor's update already fuses into one kernel, so the
    /// concatenations and slices add launches: a 2-layer encoder's step launches 496 kernels
    /// with it and 409 without (wgpu, `bench/RESULTS.md`), and it doubles the parameters'
    /// and gradients' memory.
    pub fn new(cfg: OptimConfig) -> Self {
        Self {
            cfg,
            states: HashMap::new(),
            pending: HashMap::new(),
            flat: None,
            multi_tensor: false,
        }
    }

    /// Whether AdamW updates all parameters as one flat tensor or one tensor at a time; both
    /// give the same numbers.
    pub fn with_multi_tensor(mut self, on: bool) -> Self {
        self.multi_tensor = on;
        self
    }

    /// Whether AdamW's multi-tensor step is on.
    pub fn multi_tensor(&self) -> bool {
        self.multi_tensor
    }

    /// [`Self::with_multi_tensor`] on an optimizer in use; the state carries over.
    pub fn set_multi_tensor(&mut self, on: bool) {
        self.multi_tensor = on;
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &OptimConfig {
        &self.cfg
    }

    /// Updates every float parameter of `module` that has a gradient in `grads`, with learning
    /// rate `lr`. Parameters without a gradient (frozen) are left as they are.
    ///
    /// AdamW (unless [`Self::with_multi_tensor`] turned it off) concatenates all parameters,
    /// gradients and moments into one tensor each and updates them with one chain of
    /// element-wise operations, as torch's `foreach` / fused AdamW do: on CUDA every tensor
    /// operation is a kernel launch with its own bookkeeping, and one update per parameter
    /// tensor (about a dozen operations each, ~200 tensors for roberta-base) costs thousands
    /// of them. Element for element the arithmetic is the per-tensor update's, so the results
    /// are identical. AdamP, whose projection is per tensor, updates one tensor at a time.
    pub fn step<M: AutodiffModule<B>>(&mut self, lr: f64, module: M, grads: GradientsParams) -> M {
        self.step_scaled(lr, module, grads, None)
    }

    /// [`Self::step`] with every gradient first multiplied by `coef` (a `[1]` tensor: the
    /// clipping coefficient of [`crate::train::clip::clip_coef_on_device`]). The product is the
    /// first operation of each update, so a GPU fuses it into the update's kernel; the numbers
    /// are those of scaling the gradients first and then stepping.
    pub fn step_scaled<M: AutodiffModule<B>>(
        &mut self,
        lr: f64,
        module: M,
        grads: GradientsParams,
        coef: Option<Tensor<B::InnerBackend, 1>>,
    ) -> M {
        if self.multi_tensor && self.cfg.kind == OptimKind::Adamw {
            let layout = flat_layout(&module, &grads);
            if let Some(step) = self.flat_step_count(&layout) {
                return self.step_flat(lr, module, grads, coef, layout, step);
            }
        }
        self.flatten_back();
        let mut mapper = StepMapper {
            opt: self,
            grads,
            coef,
            lr,
            path: Vec::new(),
        };
        module.map(&mut mapper)
    }

    /// Paths of loaded state that no parameter has claimed yet (after a step, these are
    /// entries whose path or shape did not match the module).
    pub fn unmatched_state(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.pending.keys().map(String::as_str).collect();
        v.sort_unstable();
        v
    }

    /// Exports the moments and step counts (reads them back from the device).
    pub fn state(&self) -> OptimState {
        let to_vec =
            |t: &Tensor<B::InnerBackend, 1>| -> Vec<f32> { t.to_data().iter::<f32>().collect() };
        let mut params: Vec<ParamState> = self
            .states
            .values()
            .chain(self.pending.values())
            .map(|s| ParamState {
                path: s.path.clone(),
                shape: s.shape.clone(),
                step: s.step,
                exp_avg: to_vec(&s.exp_avg),
                exp_avg_sq: to_vec(&s.exp_avg_sq),
            })
            .collect();
        if let Some(f) = &self.flat {
            let (m, v) = (to_vec(&f.exp_avg), to_vec(&f.exp_avg_sq));
            let mut at = 0;
            for e in &f.layout {
                let n = e.len();
                params.push(ParamState {
                    path: e.path.clone(),
                    shape: e.shape.clone(),
                    step: f.step,
                    exp_avg: m[at..at + n].to_vec(),
                    exp_avg_sq: v[at..at + n].to_vec(),
                });
                at += n;
            }
        }
        params.sort_by(|a, b| a.path.cmp(&b.path));
        OptimState { params }
    }

    /// Replaces the state with `s` (tensors created on `device`). Entries are matched to
    /// parameters by path, and must match their shape, at the next [`QaOptimizer::step`].
    pub fn load_state(
        &mut self,
        s: OptimState,
        device: &burn::tensor::Device<B::InnerBackend>,
    ) -> anyhow::Result<()> {
        let mut pending = HashMap::new();
        for p in s.params {
            let n: usize = p.shape.iter().product();
            if p.exp_avg.len() != n || p.exp_avg_sq.len() != n {
                bail!(
                    "optimizer state for {}: shape {:?} needs {n} values, got {} / {}",
                    p.path,
                    p.shape,
                    p.exp_avg.len(),
                    p.exp_avg_sq.len()
                );
            }
            let tensor = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, [n]), device);
            let path = p.path.clone();
            let slot = Slot {
                path: p.path,
                shape: p.shape,
                exp_avg: tensor(p.exp_avg),
                exp_avg_sq: tensor(p.exp_avg_sq),
                step: p.step,
            };
            if pending.insert(path.clone(), slot).is_some() {
                bail!("optimizer state lists {path} twice");
            }
        }
        self.states.clear();
        self.flat = None;
        self.pending = pending;
        Ok(())
    }

    /// The step count the multi-tensor step can go on from with `layout`: that of the flat
    /// state when it has exactly this layout; else the one count all parameters' known states
    /// share (0 when none has a state yet). `None` where no such count exists (parameters at
    /// different steps, or a known state of another shape): then one tensor at a time.
    fn flat_step_count(&self, layout: &[FlatEntry]) -> Option<usize> {
        if layout.is_empty() {
            return None;
        }
        if let Some(f) = &self.flat {
            if f.layout == layout {
                return Some(f.step);
            }
        }
        let mut step = None;
        for e in layout {
            if let Some(s) = self.known_step(e)? {
                if step.is_some_and(|t| t != s) {
                    return None;
                }
                step = Some(s);
            }
        }
        Some(step.unwrap_or(0))
    }

    /// The step count of `e`'s state in the flat state, the per-tensor states or the loaded
    /// state: `Some(None)` where none holds it, `None` where one holds it with another shape.
    fn known_step(&self, e: &FlatEntry) -> Option<Option<usize>> {
        if let Some(f) = &self.flat {
            if let Some(x) = f.layout.iter().find(|x| x.id == e.id) {
                return (x.shape == e.shape).then_some(Some(f.step));
            }
        }
        if let Some(s) = self.states.get(&e.id) {
            return (s.shape == e.shape).then_some(Some(s.step));
        }
        if let Some(s) = self.pending.get(&e.path) {
            return (s.shape == e.shape).then_some(Some(s.step));
        }
        Some(None)
    }

    /// The multi-tensor AdamW step (see [`Self::step`]).
    fn step_flat<M: AutodiffModule<B>>(
        &mut self,
        lr: f64,
        module: M,
        mut grads: GradientsParams,
        coef: Option<Tensor<B::InnerBackend, 1>>,
        layout: Vec<FlatEntry>,
        step: usize,
    ) -> M {
        let flat = match self.flat.take() {
            Some(f) if f.layout == layout => f,
            other => {
                self.flat = other;
                self.build_flat(&module, &layout, step)
            }
        };
        let mut gather = Gather {
            grads: &mut grads,
            params: Vec::with_capacity(layout.len()),
            grad_list: Vec::with_capacity(layout.len()),
        };
        module.visit(&mut gather);
        let (params, grad_list) = (gather.params, gather.grad_list);
        let p = Tensor::cat(params, 0);
        let g = Tensor::cat(grad_list, 0);
        let g = match coef {
            Some(c) => g * c,
            None => g,
        };
        let wd = self.cfg.weight_decay;
        // The per-tensor step multiplies decaying parameters by f32(1 - lr·wd); 0/1 masks
        // give exactly that factor, or 1, per element.
        let p = if wd != 0.0 {
            p * (flat.decay.clone().mul_scalar(1.0 - lr * wd) + flat.keep.clone())
        } else {
            p
        };
        let state = AdamState {
            exp_avg: flat.exp_avg,
            exp_avg_sq: flat.exp_avg_sq,
            step: flat.step,
        };
        let (p, st) = adamw_step(&self.cfg, lr, false, p, g, state);
        let mut offsets = HashMap::with_capacity(layout.len());
        let mut at = 0;
        for e in &layout {
            offsets.insert(e.id, at);
            at += e.len();
        }
        let module = module.map(&mut Scatter { flat: p, offsets });
        self.flat = Some(FlatState {
            layout,
            decay: flat.decay,
            keep: flat.keep,
            exp_avg: st.exp_avg,
            exp_avg_sq: st.exp_avg_sq,
            step: st.step,
        });
        module
    }

    /// A flat state for `layout` at `step`: moments taken from wherever each parameter's
    /// state is (zeros where it has none), masks from the decay rule.
    fn build_flat<M: AutodiffModule<B>>(
        &mut self,
        module: &M,
        layout: &[FlatEntry],
        step: usize,
    ) -> FlatState<B::InnerBackend> {
        let device = first_device(module);
        // Whatever the old flat state held becomes per-tensor state first.
        self.flatten_back();
        let (mut ms, mut vs) = (Vec::new(), Vec::new());
        for e in layout {
            let n = e.len();
            let (m, v) = if let Some(s) = self.states.remove(&e.id).filter(|s| s.shape == e.shape) {
                (s.exp_avg, s.exp_avg_sq)
            } else if let Some(s) = self.pending.remove(&e.path).filter(|s| s.shape == e.shape) {
                (s.exp_avg, s.exp_avg_sq)
            } else {
                (Tensor::zeros([n], &device), Tensor::zeros([n], &device))
            };
            ms.push(m);
            vs.push(v);
        }
        let mask: Vec<f32> = layout
            .iter()
            .flat_map(|e| std::iter::repeat_n(if e.decay { 1.0 } else { 0.0 }, e.len()))
            .collect();
        let keep: Vec<f32> = mask.iter().map(|&d| 1.0 - d).collect();
        let n = mask.len();
        FlatState {
            layout: layout.to_vec(),
            decay: Tensor::from_data(TensorData::new(mask, [n]), &device),
            keep: Tensor::from_data(TensorData::new(keep, [n]), &device),
            exp_avg: Tensor::cat(ms, 0),
            exp_avg_sq: Tensor::cat(vs, 0),
            step,
        }
    }

    /// Moves the flat state back into per-tensor states (before a per-tensor step).
    fn flatten_back(&mut self) {
        let Some(f) = self.flat.take() else { return };
        let mut at = 0;
        for x in &f.layout {
            let n = x.len();
            self.states.insert(
                x.id,
                Slot {
                    path: x.path.clone(),
                    shape: x.shape.clone(),
                    exp_avg: f.exp_avg.clone().narrow(0, at, n),
                    exp_avg_sq: f.exp_avg_sq.clone().narrow(0, at, n),
                    step: f.step,
                },
            );
            at += n;
        }
    }
}

/// The float parameters of `module` that have a gradient in `grads`, in visiting order.
fn flat_layout<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
) -> Vec<FlatEntry> {
    struct Lister<'a> {
        grads: &'a GradientsParams,
        path: PathStack,
        out: Vec<FlatEntry>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Lister<'_> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path
                .push((name.to_string(), container_type.to_string()));
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if self.grads.get::<B::InnerBackend, D>(param.id).is_none() {
                return;
            }
            let path = joined(&self.path);
            let spec = param_spec(&path, owner(&self.path));
            self.out.push(FlatEntry {
                id: param.id,
                path,
                shape: param.shape().dims::<D>().to_vec(),
                decay: spec.decay,
            });
        }
    }
    let mut l = Lister {
        grads,
        path: Vec::new(),
        out: Vec::new(),
    };
    module.visit(&mut l);
    l.out
}

/// The device of the first float parameter of `module` (the default device if none).
fn first_device<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
) -> burn::tensor::Device<B::InnerBackend> {
    module.devices().into_iter().next().unwrap_or_default()
}

/// Collects the flattened parameters and gradients of the layout's parameters.
struct Gather<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    params: Vec<Tensor<B::InnerBackend, 1>>,
    grad_list: Vec<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Gather<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            let n = g.shape().num_elements();
            self.grad_list.push(g.reshape([n]));
            self.params.push(param.val().inner().reshape([n]));
        }
    }
}

/// Puts the updated flat parameters back, each as its own tensor.
struct Scatter<B: Backend> {
    flat: Tensor<B, 1>,
    offsets: HashMap<ParamId, usize>,
}

impl<B: AutodiffBackend> ModuleMapper<B> for Scatter<B::InnerBackend> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(&at) = self.offsets.get(&id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let dims = tensor.dims();
        let n = dims.iter().product::<usize>();
        let require_grad = tensor.is_require_grad();
        let new = self.flat.clone().narrow(0, at, n).reshape(dims);
        let mut out = Tensor::from_inner(new);
        if require_grad {
            out = out.require_grad();
        }
        Param::from_mapped_value(id, out, mapper)
    }
}

/// Tracks the dotted module path and the owning struct while Burn walks a module.
type PathStack = Vec<(String, String)>;

fn joined(path: &PathStack) -> String {
    path.iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(".")
}

/// The container type of the struct that owns the current field (Burn reports it with the
/// field name on `enter_module`).
fn owner(path: &PathStack) -> &str {
    path.last().map(|(_, c)| c.as_str()).unwrap_or("")
}

struct StepMapper<'a, B: AutodiffBackend> {
    opt: &'a mut QaOptimizer<B>,
    grads: GradientsParams,
    coef: Option<Tensor<B::InnerBackend, 1>>,
    lr: f64,
    path: PathStack,
}

impl<B: AutodiffBackend> ModuleMapper<B> for StepMapper<'_, B> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path
            .push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<B::InnerBackend, D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let grad = match &self.coef {
            Some(c) => grad * c.clone().reshape([1; D]),
            None => grad,
        };
        let require_grad = tensor.is_require_grad();
        let inner = tensor.inner();
        let dims = inner.dims();
        let path = joined(&self.path);
        let spec = param_spec(&path, owner(&self.path));

        let slot = self.opt.states.remove(&id).or_else(|| {
            // A loaded entry applies only if it fits this parameter; otherwise it stays
            // pending and shows up in `unmatched_state`.
            match self.opt.pending.remove(&path) {
                Some(s) if s.shape == dims.to_vec() => Some(s),
                Some(s) => {
                    self.opt.pending.insert(path.clone(), s);
                    None
                }
                None => None,
            }
        });
        let state = match slot {
            Some(s) => AdamState {
                exp_avg: s.exp_avg.reshape(dims),
                exp_avg_sq: s.exp_avg_sq.reshape(dims),
                step: s.step,
            },
            None => AdamState::zeros(dims, &inner.device()),
        };
        let (new, st) = update(&self.opt.cfg, self.lr, spec, inner, grad, state);
        let n = dims.iter().product::<usize>();
        self.opt.states.insert(
            id,
            Slot {
                path,
                shape: dims.to_vec(),
                exp_avg: st.exp_avg.reshape([n]),
                exp_avg_sq: st.exp_avg_sq.reshape([n]),
                step: st.step,
            },
        );
        let mut out = Tensor::from_inner(new);
        if require_grad {
            out = out.require_grad();
        }
        Param::from_mapped_value(id, out, mapper)
    }
}

/// The path and [`ParamSpec`] of every float parameter of `module`, in visiting order: what
/// [`QaOptimizer::step`] uses (for logging and tests).
pub fn param_specs<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, ParamSpec)> {
    let mut lister = SpecLister {
        path: Vec::new(),
        out: Vec::new(),
    };
    module.visit(&mut lister);
    lister.out
}

struct SpecLister {
    path: PathStack,
    out: Vec<(String, ParamSpec)>,
}

impl<B: Backend> ModuleVisitor<B> for SpecLister {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path
            .push((name.to_string(), container_type.to_string()));
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, _param: &Param<Tensor<B, D>>) {
        let path = joined(&self.path);
        let spec = param_spec(&path, owner(&self.path));
        self.out.push((path, spec));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    type T = Flex;

    #[test]
    fn decay_rule() {
        assert!(decays("qa_outputs.weight"));
        assert!(decays("encoder.embeddings.word_embeddings.weight"));
        assert!(!decays(
            "encoder.encoder.layer.0.attention.self_attention.query.bias"
        ));
        assert!(!decays("encoder.encoder.layer.0.output.layer_norm.gamma"));
        assert!(!decays("encoder.embeddings.layer_norm.beta"));
        assert!(!decays("lstm.layers.0.forward.bias_ih"));
        assert!(decays("lstm.layers.0.forward.weight_ih"));
        assert!(!decays("encoder.layer.0.output.LayerNorm.weight"));
        assert!(!param_spec("x.ln.gamma", "Struct:LayerNorm").decay);
        assert_eq!(
            param_spec("x.dense.weight", "Struct:Linear").channel_axis,
            1
        );
        assert_eq!(
            param_spec("x.weight_ih", "Struct:LstmDirection").channel_axis,
            0
        );
    }

    #[test]
    fn rows_roundtrip_on_axis_1() {
        let dev = Default::default();
        let x = Tensor::<T, 3>::from_floats(
            [
                [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]],
                [[7.0, 8.0], [9.0, 10.0], [11.0, 12.0]],
            ],
            &dev,
        );
        let r = rows(x.clone(), 1);
        assert_eq!(r.dims(), [3, 4]);
        let back = unrows(r, x.dims(), 1);
        assert_eq!(
            back.to_data().to_vec::<f32>().unwrap(),
            x.to_data().to_vec::<f32>().unwrap()
        );
    }

    #[test]
    fn adamp_channel_axis_is_layout_independent() {
        // The same weight in torch layout (axis 0) and transposed (axis 1) must update the same.
        let dev = Default::default();
        let p = Tensor::<T, 2>::from_floats([[1.0, 2.0, 0.5], [-1.0, 0.3, 0.7]], &dev);
        // Orthogonal to each row of p: channel projection fires.
        let g = Tensor::<T, 2>::from_floats([[2.0, -1.0, 0.0], [0.3, 1.0, 0.0]], &dev);
        let cfg = OptimConfig {
            kind: OptimKind::Adamp,
            ..OptimConfig::default()
        };
        let spec0 = ParamSpec {
            decay: true,
            channel_axis: 0,
        };
        let spec1 = ParamSpec {
            decay: true,
            channel_axis: 1,
        };
        assert_eq!(
            adamp_projection(&cfg, 0, p.clone(), g.clone()),
            Projection::Channel
        );
        assert_eq!(
            adamp_projection(&cfg, 1, p.clone().transpose(), g.clone().transpose()),
            Projection::Channel
        );
        let (a, _) = adamp_step(
            &cfg,
            1e-2,
            spec0,
            p.clone(),
            g.clone(),
            AdamState::zeros([2, 3], &dev),
        );
        let (b, _) = adamp_step(
            &cfg,
            1e-2,
            spec1,
            p.transpose(),
            g.transpose(),
            AdamState::zeros([3, 2], &dev),
        );
        let a = a.to_data().to_vec::<f32>().unwrap();
        let b = b.transpose().to_data().to_vec::<f32>().unwrap();
        assert_eq!(a, b);
    }
}
