//! The encoder configuration, read from HF `config.json` (keys named as HF names them).

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Which position-id rule and which checkpoint prefix an encoder uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    /// `roberta`, `xlm-roberta`: positions = cumsum(non-pad) + pad_token_id.
    Roberta,
    /// `bert`: positions = 0..L; token types honoured.
    Bert,
}

impl Family {
    /// The HF `model_type` of a from-scratch encoder of this family.
    pub fn model_type(self) -> &'static str {
        match self {
            Family::Roberta => "roberta",
            Family::Bert => "bert",
        }
    }

    /// The submodule prefix of a `*ForQuestionAnswering` checkpoint.
    pub fn prefix(self) -> &'static str {
        match self {
            Family::Roberta => "roberta.",
            Family::Bert => "bert.",
        }
    }
}

/// The subset of HF `config.json` the encoder needs; unknown keys are ignored (HF writes many).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncoderConfig {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: usize,
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}
fn default_init_range() -> f64 {
    0.02
}

impl EncoderConfig {
    /// Reads and checks `config.json`.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: Self = serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: not a HF config.json", path.display()))?;
        cfg.check()
            .with_context(|| format!("in {}", path.display()))?;
        Ok(cfg)
    }

    /// The family of `model_type`, or an error naming the supported ones.
    pub fn family(&self) -> Result<Family> {
        match self.model_type.as_str() {
            "roberta" | "xlm-roberta" | "camembert" => Ok(Family::Roberta),
            "bert" => Ok(Family::Bert),
            other => bail!("model_type {other:?} is not supported (roberta, xlm-roberta, bert)"),
        }
    }

    /// Consistency checks with clear messages.
    pub fn check(&self) -> Result<()> {
        self.family()?;
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            bail!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        if !matches!(
            self.hidden_act.as_str(),
            "gelu" | "gelu_new" | "gelu_pytorch_tanh"
        ) {
            bail!("hidden_act {:?} is not supported (gelu)", self.hidden_act);
        }
        Ok(())
    }

    /// Longest input the position table allows.
    pub fn max_seq_length(&self) -> Result<usize> {
        Ok(match self.family()? {
            // RoBERTa positions start after pad_token_id.
            Family::Roberta => self
                .max_position_embeddings
                .saturating_sub(self.pad_token_id + 1),
            Family::Bert => self.max_position_embeddings,
        })
    }

    /// A tokenizer of `vocab` tokens and windows of `max_seq_length` must fit this model (from
    /// `dir`): every token id has an embedding and every position a position embedding.
    pub fn check_fits_inputs(&self, vocab: usize, max_seq_length: usize, dir: &Path) -> Result<()> {
        if vocab > self.vocab_size {
            bail!(
                "{}: the tokenizer has {vocab} tokens but the model's vocab_size is {}: they do not belong together",
                dir.display(),
                self.vocab_size
            );
        }
        let max = self.max_seq_length()?;
        if max_seq_length > max {
            bail!(
                "max_seq_length {max_seq_length} is longer than the model allows ({max}, from max_position_embeddings {})",
                self.max_position_embeddings
            );
        }
        Ok(())
    }
}
