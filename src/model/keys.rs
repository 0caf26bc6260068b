//! The one map between the model's parameters and HF checkpoint keys: loading
//! ([`super::QaModel::from_weights`]) and export ([`super::export::state_dict`]) both walk the
//! model's own parameters and ask [`hf_key`] where each one lives in a checkpoint.
//!
//! A parameter's Burn path is its field path (`encoder.encoder.layer.0.attention.output.dense.
//! weight`), which follows HF's module names with three spellings Rust cannot use or Burn
//! chooses: `attention.self` (field `self_attention`), `LayerNorm` (field `layer_norm`) with
//! `weight`/`bias` (Burn's `gamma`/`beta`), and PyTorch `nn.LSTM`'s flat names
//! (`lstm.weight_ih_l0_reverse` for `lstm.layers.0.reverse.weight_ih`). HF's `nn.Linear` stores
//! its weight `[out, in]`, Burn `[in, out]`: those keys are marked `transposed`.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::load::Weights;

/// Which part of the model a key belongs to: the encoder's keys sit under the family prefix
/// (`roberta.` / `bert.`, or none in a bare base model); the head's at the top level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    Encoder,
    Lstm,
    Cnn,
    QaOutputs,
}

/// Where one parameter lives in a HF checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HfKey {
    pub part: Part,
    /// The key, without the encoder's family prefix.
    pub key: String,
    /// Stored transposed (an `nn.Linear` weight).
    pub transposed: bool,
}

/// The HF key of the parameter at Burn path `path` whose owning module is a `Linear` when
/// `linear`; `None` for a path outside the map.
pub fn hf_key(path: &str, linear: bool) -> Option<HfKey> {
    let transposed = linear && path.ends_with(".weight");
    if let Some(rest) = path.strip_prefix("encoder.") {
        let parts: Vec<&str> = rest.split('.').collect();
        let last = parts.len() - 1;
        let in_layer_norm = last > 0 && parts[last - 1] == "layer_norm";
        let key: Vec<&str> = parts
            .iter()
            .enumerate()
            .map(|(i, p)| match (*p, i == last) {
                ("self_attention", _) => "self",
                ("layer_norm", _) => "LayerNorm",
                ("gamma", true) if in_layer_norm => "weight",
                ("beta", true) if in_layer_norm => "bias",
                (p, _) => p,
            })
            .collect();
        return Some(HfKey {
            part: Part::Encoder,
            key: key.join("."),
            transposed,
        });
    }
    if let Some(rest) = path.strip_prefix("lstm.layers.") {
        // `{k}.{forward|reverse}.{weight_ih|weight_hh|bias_ih|bias_hh}`
        let mut it = rest.split('.');
        let (k, dir, name) = (it.next()?, it.next()?, it.next()?);
        let suffix = match dir {
            "forward" => "",
            "reverse" => "_reverse",
            _ => return None,
        };
        return Some(HfKey {
            part: Part::Lstm,
            key: format!("lstm.{name}_l{k}{suffix}"),
            transposed: false,
        });
    }
    if path.starts_with("cnn.convs.") {
        // PyTorch's `nn.Conv1d` layout and names: `cnn.convs.{i}.weight` `[out, in, k]`, `.bias`.
        return Some(HfKey {
            part: Part::Cnn,
            key: path.to_string(),
            transposed: false,
        });
    }
    path.starts_with("qa_outputs.").then(|| HfKey {
        part: Part::QaOutputs,
        key: path.to_string(),
        transposed,
    })
}

/// The pre-transformers-4 spelling of a LayerNorm key (`gamma` / `beta`), which older
/// checkpoints still use.
pub fn legacy_layer_norm(key: &str) -> Option<String> {
    if !key.contains("LayerNorm.") {
        return None;
    }
    key.strip_suffix(".weight")
        .map(|k| format!("{k}.gamma"))
        .or_else(|| key.strip_suffix(".bias").map(|k| format!("{k}.beta")))
}

/// Tracks the field path and the type of the struct that owns the current field while Burn walks
/// a module.
#[derive(Default)]
pub struct Path(Vec<(String, String)>);

impl Path {
    pub fn enter(&mut self, name: &str, container_type: &str) {
        self.0.push((name.to_string(), container_type.to_string()));
    }

    pub fn exit(&mut self) {
        self.0.pop();
    }

    /// The dotted path of the current field.
    pub fn joined(&self) -> String {
        self.0
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(".")
    }

    /// The type of the struct that owns the current field, as Burn names it (`Struct:Linear`).
    pub fn owner(&self) -> &str {
        self.0.last().map_or("", |(_, c)| c.as_str())
    }

    /// Whether the struct owning the current field is a `Linear`.
    pub fn in_linear(&self) -> bool {
        self.owner().ends_with(":Linear")
    }

    /// The current field's [`HfKey`].
    pub fn hf_key(&self) -> Option<HfKey> {
        hf_key(&self.joined(), self.in_linear())
    }
}

/// Every parameter of `module` with its [`HfKey`] and its value in HF's layout, in visiting
/// order; parameters outside the map are left out.
pub fn hf_tensors<B: Backend, M: Module<B>>(module: &M) -> Vec<(HfKey, Vec<usize>, Vec<f32>)> {
    struct Collect {
        path: Path,
        out: Vec<(HfKey, Vec<usize>, Vec<f32>)>,
    }
    impl<B: Backend> ModuleVisitor<B> for Collect {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.enter(name, container_type);
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.exit();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let Some(k) = self.path.hf_key() else { return };
            let t = param.val();
            let t = if k.transposed { t.swap_dims(0, 1) } else { t };
            let shape = t.dims().to_vec();
            let data = t
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .unwrap_or_default();
            self.out.push((k, shape, data));
        }
    }
    let mut c = Collect {
        path: Path::default(),
        out: Vec::new(),
    };
    module.visit(&mut c);
    c.out
}

/// Replaces each parameter of `module` whose part `take`s by the checkpoint's tensor at its
/// [`HfKey`] (under `prefix` for the encoder; a LayerNorm's old `gamma`/`beta` spelling where
/// the checkpoint uses it), checking its shape; the other parameters keep their values. The
/// first missing or misshapen tensor is the error. `at` is where `module` sits in
/// [`super::QaModel`]: `""` for the whole model, `"lstm"` for a BiLSTM head alone.
pub fn load_into<B: Backend, M: Module<B>>(
    module: M,
    w: &mut Weights,
    prefix: &str,
    at: &str,
    take: impl Fn(Part) -> bool,
) -> anyhow::Result<M> {
    struct Fill<'a, F> {
        w: &'a mut Weights,
        prefix: &'a str,
        take: F,
        path: Path,
        err: Option<anyhow::Error>,
    }
    impl<B: Backend, F: Fn(Part) -> bool> ModuleMapper<B> for Fill<'_, F> {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.path.enter(name, container_type);
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.exit();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            if self.err.is_some() {
                return param;
            }
            let Some(k) = self.path.hf_key() else {
                return param;
            };
            if !(self.take)(k.part) {
                return param;
            }
            let key = match k.part {
                Part::Encoder => format!("{}{}", self.prefix, k.key),
                _ => k.key,
            };
            let key = match legacy_layer_norm(&key) {
                Some(old) if !self.w.has(&key) && self.w.has(&old) => old,
                _ => key,
            };
            let (id, tensor, mapper) = param.consume();
            let device = tensor.device();
            let mut shape = tensor.dims();
            if k.transposed {
                shape.swap(0, 1);
            }
            match self.w.tensor::<B, D>(&key, shape, &device) {
                Ok(t) => {
                    // Materialise the transpose: a strided parameter would be copied on every use.
                    let mut t = if k.transposed {
                        Tensor::from_data(t.swap_dims(0, 1).into_data(), &device)
                    } else {
                        t
                    };
                    if tensor.is_require_grad() {
                        t = t.require_grad();
                    }
                    Param::from_mapped_value(id, t, mapper)
                }
                Err(e) => {
                    self.err = Some(e);
                    Param::from_mapped_value(id, tensor, mapper)
                }
            }
        }
    }
    let mut path = Path::default();
    if !at.is_empty() {
        path.enter(at, "Struct:QaModel");
    }
    let mut fill = Fill {
        w,
        prefix,
        take,
        path,
        err: None,
    };
    let module = module.map(&mut fill);
    match fill.err {
        Some(e) => Err(e),
        None => Ok(module),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burn_paths_map_to_hf_keys() {
        let k = |p: &str, l: bool| hf_key(p, l).map(|k| (k.part, k.key, k.transposed));
        assert_eq!(
            k(
                "encoder.encoder.layer.3.attention.self_attention.query.weight",
                true
            ),
            Some((
                Part::Encoder,
                "encoder.layer.3.attention.self.query.weight".into(),
                true
            ))
        );
        assert_eq!(
            k("encoder.embeddings.layer_norm.gamma", false),
            Some((Part::Encoder, "embeddings.LayerNorm.weight".into(), false))
        );
        assert_eq!(
            k("encoder.encoder.layer.0.output.layer_norm.beta", false),
            Some((
                Part::Encoder,
                "encoder.layer.0.output.LayerNorm.bias".into(),
                false
            ))
        );
        assert_eq!(
            k("encoder.embeddings.word_embeddings.weight", false),
            Some((
                Part::Encoder,
                "embeddings.word_embeddings.weight".into(),
                false
            ))
        );
        assert_eq!(
            k("lstm.layers.1.reverse.weight_hh", false),
            Some((Part::Lstm, "lstm.weight_hh_l1_reverse".into(), false))
        );
        assert_eq!(
            k("qa_outputs.bias", true),
            Some((Part::QaOutputs, "qa_outputs.bias".into(), false))
        );
        assert_eq!(k("something.else", false), None);
        assert_eq!(
            legacy_layer_norm("encoder.layer.0.output.LayerNorm.bias").as_deref(),
            Some("encoder.layer.0.output.LayerNorm.beta")
        );
        assert_eq!(legacy_layer_norm("qa_outputs.bias"), None);
    }
}
