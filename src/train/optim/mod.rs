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
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::model::keys::Path;

mod adamp;
mod adamw;
mod flat;

pub use adamp::{adamp_projection, adamp_step};
pub use adamw::adamw_step;
use flat::{flat_layout, FlatState};

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
            path: Path::default(),
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
}

/// Whether AdamW's multi-tensor step (every parameter in one buffer) fits the device's largest
/// buffer; where it does not, the per-tensor step gives the same numbers.
pub fn multi_tensor_fits<B: Backend>(
    model: &crate::model::QaModel<B>,
    device: crate::device::Device,
) -> bool {
    use burn::module::Module;
    crate::device::max_buffer_bytes(device).is_none_or(|max| model.num_params() as u64 * 4 <= max)
}

struct StepMapper<'a, B: AutodiffBackend> {
    opt: &'a mut QaOptimizer<B>,
    grads: GradientsParams,
    coef: Option<Tensor<B::InnerBackend, 1>>,
    lr: f64,
    path: Path,
}

impl<B: AutodiffBackend> ModuleMapper<B> for StepMapper<'_, B> {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
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
        let path = self.path.joined();
        let spec = param_spec(&path, self.path.owner());

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
        path: Path::default(),
        out: Vec::new(),
    };
    module.visit(&mut lister);
    lister.out
}

struct SpecLister {
    path: Path,
    out: Vec<(String, ParamSpec)>,
}

impl<B: Backend> ModuleVisitor<B> for SpecLister {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.enter(name, container_type);
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.exit();
    }

    fn visit_float<const D: usize>(&mut self, _param: &Param<Tensor<B, D>>) {
        let path = self.path.joined();
        let spec = param_spec(&path, self.path.owner());
        self.out.push((path, spec));
    }
}

#[cfg(test)]
mod tests {
    use super::adamp::{rows, unrows};
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
