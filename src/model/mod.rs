//! The reader model: an HF-compatible encoder plus a span head, and its loading.
//!
//! Knows nothing of files beyond a HF model folder, nor of stages. Returns start/end logits;
//! losses are computed apart so prediction reuses the same forward.

/// A HF checkpoint folder's weights (`save_pretrained`'s single-file safetensors).
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// A HF checkpoint folder's model configuration.
pub const CONFIG_FILE: &str = "config.json";

pub mod amp;
pub mod config;
pub mod dropout;
pub mod encoder;
pub mod export;
pub mod heads;
pub mod kernels;
pub mod keys;
pub mod load;
pub mod memory;

use std::path::Path;

use anyhow::{bail, Result};
use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

use config::{EncoderConfig, Family};
use encoder::{hf_linear, EncoderModel};
use heads::{BiLstm, Cnn};
use load::Weights;

/// Which head sits on the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HeadKind {
    /// HF `qa_outputs`: Linear(hidden, 2).
    #[default]
    Linear,
    /// The competition notebook's: stacked bidirectional LSTM (hidden = encoder hidden), then Linear(2 hidden, 2).
    Bilstm,
    /// Conv1d over the tokens with several kernel sizes (`hidden / 3` channels each), ReLU,
    /// then Linear (see [`heads::Cnn`]).
    Cnn,
}

/// `linear`, `bilstm` or `cnn`, as in settings (for command-line arguments).
impl std::str::FromStr for HeadKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "linear" => Ok(HeadKind::Linear),
            "bilstm" => Ok(HeadKind::Bilstm),
            "cnn" => Ok(HeadKind::Cnn),
            other => Err(format!("unknown head {other:?}: use linear, bilstm or cnn")),
        }
    }
}

/// Head settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadConfig {
    pub kind: HeadKind,
    pub num_rnn_layers: usize,
    pub rnn_dropout: f64,
    /// The CNN head's kernel sizes (odd).
    pub cnn_kernel_sizes: Vec<usize>,
}

/// The CNN head's default kernel sizes.
pub const CNN_KERNEL_SIZES: [usize; 3] = [1, 3, 5];

impl Default for HeadConfig {
    fn default() -> Self {
        Self {
            kind: HeadKind::Linear,
            num_rnn_layers: 2,
            rnn_dropout: 0.1,
            cnn_kernel_sizes: CNN_KERNEL_SIZES.to_vec(),
        }
    }
}

impl HeadConfig {
    /// The head of kind `kind` as an exported checkpoint's `config.json` describes it
    /// (`num_rnn_layers`, `cnn_kernel_sizes`), defaults for what it does not say.
    pub fn from_checkpoint(kind: HeadKind, config: &serde_json::Value) -> Self {
        let d = Self::default();
        let sizes = config["cnn_kernel_sizes"].as_array().and_then(|a| {
            a.iter()
                .map(|k| k.as_u64().map(|k| k as usize))
                .collect::<Option<Vec<_>>>()
        });
        Self {
            kind,
            num_rnn_layers: config["num_rnn_layers"]
                .as_u64()
                .map_or(d.num_rnn_layers, |n| n as usize),
            cnn_kernel_sizes: sizes.unwrap_or(d.cnn_kernel_sizes),
            ..d
        }
    }

    /// The CNN head's channels per kernel size for an encoder of `hidden` units.
    pub fn cnn_channels(hidden: usize) -> usize {
        (hidden / 3).max(1)
    }
}

/// Encoder + head.
#[derive(Module, Debug)]
pub struct QaModel<B: Backend> {
    pub encoder: EncoderModel<B>,
    pub lstm: Option<BiLstm<B>>,
    pub cnn: Option<Cnn<B>>,
    pub qa_outputs: Linear<B>,
}

/// What loading found in the checkpoint.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadReport {
    pub source: String,
    pub prefix: String,
    /// The head came from the checkpoint (else it was initialised).
    pub head_loaded: bool,
    pub unused: Vec<String>,
}

impl<B: Backend> QaModel<B> {
    /// A randomly initialised model (from-scratch mode).
    pub fn init(cfg: &EncoderConfig, head: &HeadConfig, device: &B::Device) -> Result<Self> {
        let h = cfg.hidden_size;
        let (mut lstm, mut cnn) = (None, None);
        let out_in = match head.kind {
            HeadKind::Linear => h,
            HeadKind::Bilstm => {
                let layers = head.num_rnn_layers;
                lstm = Some(BiLstm::init(h, h, layers, head.rnn_dropout, device));
                2 * h
            }
            HeadKind::Cnn => {
                if head.cnn_kernel_sizes.is_empty()
                    || head.cnn_kernel_sizes.iter().any(|k| k % 2 == 0)
                {
                    bail!(
                        "the CNN head's kernel sizes must be odd and at least one, got {:?}",
                        head.cnn_kernel_sizes
                    );
                }
                let c = HeadConfig::cnn_channels(h);
                let head = Cnn::init(h, c, &head.cnn_kernel_sizes, device);
                let out = head.out_channels();
                cnn = Some(head);
                out
            }
        };
        Ok(Self {
            encoder: EncoderModel::init(cfg, device)?,
            lstm,
            cnn,
            qa_outputs: hf_linear(out_in, 2, cfg.initializer_range, device),
        })
    }

    /// Loads a HF folder (`config.json` + weights). The encoder may sit under `roberta.` /
    /// `bert.` (a `*ForQuestionAnswering` or `*ForMaskedLM` checkpoint) or at the top (a bare
    /// base model). The head loads when the checkpoint has it, else is initialised as HF does.
    pub fn from_pretrained(
        dir: &Path,
        head: &HeadConfig,
        device: &B::Device,
    ) -> Result<(Self, EncoderConfig, LoadReport)> {
        let cfg = EncoderConfig::load(&dir.join(CONFIG_FILE))?;
        let mut w = Weights::from_dir(dir)?;
        let (model, report) = Self::from_weights(&mut w, &cfg, head, device)?;
        Ok((model, cfg, report))
    }

    /// Builds the model from checkpoint tensors.
    pub fn from_weights(
        w: &mut Weights,
        cfg: &EncoderConfig,
        head: &HeadConfig,
        device: &B::Device,
    ) -> Result<(Self, LoadReport)> {
        let family = cfg.family()?;
        let prefix = detect_prefix(w, family)?;
        // The head comes from the checkpoint when it holds one for this head kind: `qa_outputs`
        // alone for the linear head, the LSTM and `qa_outputs` for the BiLSTM head. Otherwise
        // it keeps HF's initialisation, as `from_pretrained` does for a missing head.
        let lstm_found = head.kind == HeadKind::Bilstm && w.has("lstm.weight_ih_l0");
        let cnn_found = head.kind == HeadKind::Cnn && w.has("cnn.convs.0.weight");
        let head_loaded = w.has("qa_outputs.weight")
            && match head.kind {
                HeadKind::Linear => true,
                HeadKind::Bilstm => lstm_found,
                HeadKind::Cnn => cnn_found,
            };
        let model = Self::init(cfg, head, device)?;
        let model = keys::load_into(model, w, &prefix, "", |part| match part {
            keys::Part::Encoder => true,
            keys::Part::Lstm => lstm_found,
            keys::Part::Cnn => cnn_found,
            keys::Part::QaOutputs => head_loaded,
        })?;
        let report = LoadReport {
            source: w.source.display().to_string(),
            prefix,
            head_loaded,
            unused: w.unused(),
        };
        Ok((model, report))
    }

    /// Start and end logits `[batch, seq]`.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
        token_type_ids: Tensor<B, 2, Int>,
    ) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let [b, l] = input_ids.dims();
        let mut x = self
            .encoder
            .forward(input_ids, attention_mask.clone(), token_type_ids);
        if let Some(lstm) = &self.lstm {
            x = lstm.forward(x, attention_mask.clone().float());
        }
        if let Some(cnn) = &self.cnn {
            x = cnn.forward(x, attention_mask.float());
        }
        let logits = kernels::linear(&self.qa_outputs, x);
        let start = logits.clone().slice([0..b, 0..l, 0..1]).reshape([b, l]);
        let end = logits.slice([0..b, 0..l, 1..2]).reshape([b, l]);
        (start, end)
    }
}

/// `roberta.` / `bert.` when the checkpoint nests the encoder, `""` for a bare base model.
fn detect_prefix(w: &Weights, family: Family) -> Result<String> {
    let p = family.prefix();
    if w.has(&format!("{p}embeddings.word_embeddings.weight")) {
        Ok(p.to_string())
    } else if w.has("embeddings.word_embeddings.weight") {
        Ok(String::new())
    } else {
        bail!(
            "checkpoint {} has no {p}embeddings.word_embeddings.weight nor embeddings.word_embeddings.weight: not a {family:?} checkpoint",
            w.source.display()
        )
    }
}
