//! Reading HF checkpoints: `model.safetensors`, sharded safetensors with
//! `model.safetensors.index.json`, and `pytorch_model.bin` (via burn-store's pickle reader).
//!
//! Loading is strict: a tensor the model needs but the checkpoint lacks, or one of the wrong
//! shape, is an error naming it; tensors the model does not use are listed. Which key each
//! parameter reads, and the `nn.Linear` transpose, come from [`super::keys`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use safetensors::tensor::{Dtype, SafeTensors};

/// The tensors of one checkpoint, by HF key, and which ones the model took.
pub struct Weights {
    tensors: BTreeMap<String, TensorData>,
    used: BTreeSet<String>,
    /// Where they came from, for messages.
    pub source: PathBuf,
}

fn from_safetensors(path: &Path, out: &mut BTreeMap<String, TensorData>) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow!("{}: not a safetensors file: {e}", path.display()))?;
    for (name, view) in st.tensors() {
        let dtype = match view.dtype() {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            Dtype::F64 => DType::F64,
            Dtype::I64 => DType::I64,
            Dtype::I32 => DType::I32,
            Dtype::U8 => DType::U8,
            other => bail!(
                "{}: tensor {name} has unsupported dtype {other:?}",
                path.display()
            ),
        };
        let data = TensorData::from_bytes_vec(view.data().to_vec(), view.shape().to_vec(), dtype);
        out.insert(name, data);
    }
    Ok(())
}

impl Weights {
    /// Reads the checkpoint in a HF model folder.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let mut tensors = BTreeMap::new();
        let single = dir.join(crate::model::WEIGHTS_FILE);
        let index = dir.join("model.safetensors.index.json");
        let bin = dir.join("pytorch_model.bin");
        let source = if single.exists() {
            from_safetensors(&single, &mut tensors)?;
            single
        } else if index.exists() {
            let idx: serde_json::Value = serde_json::from_slice(
                &std::fs::read(&index).with_context(|| format!("reading {}", index.display()))?,
            )
            .with_context(|| format!("{}: not JSON", index.display()))?;
            let map = idx["weight_map"]
                .as_object()
                .ok_or_else(|| anyhow!("{}: no weight_map", index.display()))?;
            let shards: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
            for shard in shards {
                from_safetensors(&dir.join(shard), &mut tensors)?;
            }
            index
        } else if bin.exists() {
            let reader = burn_store::pytorch::PytorchReader::new(&bin)
                .map_err(|e| anyhow!("{}: cannot read: {e}", bin.display()))?;
            for (name, snap) in reader.into_tensors() {
                let data = snap
                    .to_data()
                    .map_err(|e| anyhow!("{}: tensor {name}: {e:?}", bin.display()))?;
                tensors.insert(name, data);
            }
            bin
        } else {
            bail!(
                "{}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin",
                dir.display()
            );
        };
        Ok(Self {
            tensors,
            used: BTreeSet::new(),
            source,
        })
    }

    /// Tensors given directly (tests, exports).
    pub fn from_map(tensors: BTreeMap<String, TensorData>, source: &str) -> Self {
        Self {
            tensors,
            used: BTreeSet::new(),
            source: source.into(),
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// All keys, for prefix detection.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Keys the model did not take (e.g. a pooler, `position_ids` buffers, an LM head).
    pub fn unused(&self) -> Vec<String> {
        self.tensors
            .keys()
            .filter(|k| !self.used.contains(*k))
            .cloned()
            .collect()
    }

    /// Takes one tensor as f32 with the expected shape.
    pub fn tensor<B: Backend, const D: usize>(
        &mut self,
        name: &str,
        shape: [usize; D],
        device: &B::Device,
    ) -> Result<Tensor<B, D>> {
        let data = self.tensors.get(name).ok_or_else(|| {
            anyhow!(
                "checkpoint {} has no tensor {name} (the model needs it)",
                self.source.display()
            )
        })?;
        if data.shape.as_slice() != shape.as_slice() {
            bail!(
                "checkpoint {}: tensor {name} has shape {:?}, the config implies {:?}",
                self.source.display(),
                data.shape.as_slice(),
                shape
            );
        }
        let data = data.clone().convert::<f32>();
        self.used.insert(name.to_string());
        Ok(Tensor::from_data(data, device))
    }
}
