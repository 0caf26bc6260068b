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
use heads::BiLstm;
use load::Weights;

/// Which head sits on the encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HeadKind {
    /// HF `qa_outputs`: Linear(hidden, 2).
    #[default]
    Linear,
    /// The seed's: stacked bidirectional LSTM (hidden = encoder hidden), then Linear(2 hidden, 2).
    Bilstm,
}

/// `linear` or `bilstm`, as in settings (for command-line arguments).
impl std::str::FromStr for HeadKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "linear" => Ok(HeadKind::Linear),
            "bilstm" => Ok(HeadKind::Bilstm),
            other => Err(format!("unknown head {other:?}: use linear or bilstm")),
        }
    }
}

/// Head settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadConfig {
    pub kind: HeadKind,
    pub num_rnn_layers: usize,
    pub rnn_dropout: f64,
}

impl Default for HeadConfig {
    fn default() -> Self {
        Self {
            kind: HeadKind::Linear,
            num_rnn_layers: 2,
            rnn_dropout: 0.1,
        }
    }
}

/// Encoder + head.
#[derive(Module, Debug)]
pub struct QaModel<B: Backend> {
    pub encoder: EncoderModel<B>,
    pub lstm: Option<BiLstm<B>>,
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
        let (lstm, out_in) = match head.kind {
            HeadKind::Linear => (None, h),
            HeadKind::Bilstm => (
                Some(BiLstm::init(
                    h,
                    h,
                    head.num_rnn_layers,
                    head.rnn_dropout,
                    device,
                )),
                2 * h,
            ),
        };
        Ok(Self {
            encoder: EncoderModel::init(cfg, device)?,
            lstm,
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
        let head_loaded =
            w.has("qa_outputs.weight") && (head.kind == HeadKind::Linear || lstm_found);
        let model = Self::init(cfg, head, device)?;
        let model = keys::load_into(model, w, &prefix, "", |part| match part {
            keys::Part::Encoder => true,
            keys::Part::Lstm => lstm_found,
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
            x = lstm.forward(x, attention_mask.float());
        }
        let logits = amp::linear(&self.qa_outputs, x);
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
