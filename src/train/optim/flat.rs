//! AdamW's multi-tensor step (`train.multi_tensor_adamw`): every parameter, gradient and
//! moment concatenated into one tensor each and updated by one chain of element-wise
//! operations, as torch's `foreach` AdamW. Element for element the arithmetic is the
//! per-tensor update's, so the results are identical.

use std::collections::HashMap;

use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};

use super::adamw::adamw_step;
use super::{param_spec, AdamState, QaOptimizer, Slot};
use crate::model::keys::Path;

/// Where one parameter lives in the multi-tensor step's flat tensors.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct FlatEntry {
    pub(super) id: ParamId,
    pub(super) path: String,
    pub(super) shape: Vec<usize>,
    pub(super) decay: bool,
}

impl FlatEntry {
    pub(super) fn len(&self) -> usize {
        self.shape.iter().product()
    }
}

/// AdamW state of the multi-tensor step: every parameter's moments, concatenated in the
/// module's visiting order (`layout`), with one step count.
#[derive(Debug)]
pub(super) struct FlatState<B: Backend> {
    pub(super) layout: Vec<FlatEntry>,
    /// 1 where the element's parameter decays, else 0; and its complement.
    pub(super) decay: Tensor<B, 1>,
    pub(super) keep: Tensor<B, 1>,
    pub(super) exp_avg: Tensor<B, 1>,
    pub(super) exp_avg_sq: Tensor<B, 1>,
    pub(super) step: usize,
}

impl<B: AutodiffBackend> QaOptimizer<B> {
    /// The step count the multi-tensor step can go on from with `layout`: that of the flat
    /// state when it has exactly this layout; else the one count all parameters' known states
    /// share (0 when none has a state yet). `None` where no such count exists (parameters at
    /// different steps, or a known state of another shape): then one tensor at a time.
    pub(super) fn flat_step_count(&self, layout: &[FlatEntry]) -> Option<usize> {
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
    pub(super) fn known_step(&self, e: &FlatEntry) -> Option<Option<usize>> {
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
    pub(super) fn step_flat<M: AutodiffModule<B>>(
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
    pub(super) fn build_flat<M: AutodiffModule<B>>(
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
    pub(super) fn flatten_back(&mut self) {
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
pub(super) fn flat_layout<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &GradientsParams,
) -> Vec<FlatEntry> {
    struct Lister<'a> {
        grads: &'a GradientsParams,
        path: Path,
        out: Vec<FlatEntry>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Lister<'_> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.enter(name, container_type);
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if self.grads.get::<B::InnerBackend, D>(param.id).is_none() {
                return;
            }
            let path = self.path.joined();
            let spec = param_spec(&path, self.path.owner());
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
        path: Path::default(),
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
