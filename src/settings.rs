//! The `pipeline.toml` schema, `--set section.key=value` overrides and validation.
//!
//! Settings are resolved once (file, then overrides, then validation) and handed to every stage.
//! Unknown keys are rejected so a typo never silently falls back to a default. Relative paths
//! are taken relative to the directory `pipeline` runs in, as `run_qa.py` arguments are.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub use crate::qa::examples::DataFormat;
use crate::qa::metrics::Metric;

/// Everything `pipeline.toml` can say.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub run: RunSettings,
    pub data: DataSettings,
    pub prepare: PrepareSettings,
    pub split: SplitSettings,
    pub model: ModelSettings,
    pub train: TrainSettings,
    /// `[decode]`: n-best span decoding, as HF `postprocess_qa_predictions`.
    pub decode: crate::qa::decode::DecodeConfig,
    pub ensemble: EnsembleSettings,
    pub evaluate: EvaluateSettings,
    pub submit: SubmitSettings,
}

/// `[ensemble]`: how the folds' test logits combine.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnsembleSettings {
    pub method: EnsembleMethod,
}

/// `[submit]`: which files the submission gets.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SubmitSettings {
    /// Also write `submission.csv` (`id,answer`).
    pub csv: bool,
}

impl Default for SubmitSettings {
    fn default() -> Self {
        Self { csv: true }
    }
}

/// `[run]`: where outputs go.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunSettings {
    /// Run name: outputs land in `<output_dir>/<name>/`.
    pub name: String,
    pub output_dir: PathBuf,
}

impl Default for RunSettings {
    fn default() -> Self {
        Self {
            name: "default".into(),
            output_dir: "outputs".into(),
        }
    }
}

/// How fold logits combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EnsembleMethod {
    /// Plain mean of start/end logits.
    #[default]
    Mean,
    /// Mean weighted by each fold's best validation score (`train.keep_best_by`).
    Weighted,
    /// Each fold decodes its own logits; the answer text most folds give wins, ties going to
    /// the higher mean score (start + end logit). Works for folds with different windows.
    HardVote,
}

/// `[data]`: the training file and an optional test file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataSettings {
    pub train: PathBuf,
    /// Optional: without it, `split.holdout_fraction` can carve a test split from `train`.
    pub test: Option<PathBuf>,
    pub format: DataFormat,
    /// Keep only the first N training examples (file order), as run_qa's `max_train_samples`.
    pub max_train_samples: Option<usize>,
    /// Keep only the first N test examples.
    pub max_test_samples: Option<usize>,
}

/// What to do with a training example whose answer lies beyond its first window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Overflow {
    /// HF behaviour: every window trains, windows without the answer point at CLS.
    #[default]
    Keep,
    /// The seed's behaviour: train only on first windows and drop examples whose answer is not in it.
    Drop,
}

/// `[prepare]`: tokenisation into windows.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrepareSettings {
    /// A `tokenizer.json` file or a HF folder holding one; empty = train a WordPiece vocabulary.
    pub tokenizer: Option<PathBuf>,
    /// Vocabulary size of the trained WordPiece tokenizer.
    pub vocab_size: usize,
    /// Minimum pair frequency for the trained tokenizer.
    pub min_frequency: u64,
    pub max_seq_length: usize,
    pub doc_stride: usize,
    pub overflow: Overflow,
    /// How far (in characters) a shifted `answer_start` may be repaired.
    pub repair_window: usize,
}

impl Default for PrepareSettings {
    fn default() -> Self {
        Self {
            tokenizer: None,
            vocab_size: 8000,
            min_frequency: 2,
            max_seq_length: 384,
            doc_stride: 128,
            overflow: Overflow::Keep,
            repair_window: 32,
        }
    }
}

/// `[model]`: a pretrained HF folder, or the sizes of a from-scratch encoder; and the head.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSettings {
    /// A HF model folder (`config.json`, `tokenizer.json`, `model.safetensors` or
    /// `pytorch_model.bin`); unset = from scratch with the sizes below and the tokenizer
    /// `prepare` trained.
    pub pretrained: Option<PathBuf>,
    /// From scratch: `roberta` or `bert`.
    pub model_type: String,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
    /// `linear` (HF `qa_outputs`) or `bilstm` (the seed's head).
    pub head: crate::model::HeadKind,
    /// BiLSTM layers (hidden size = encoder hidden size per direction).
    pub num_rnn_layers: usize,
    /// Dropout between BiLSTM layers.
    pub rnn_dropout: f64,
}

impl Default for ModelSettings {
    fn default() -> Self {
        Self {
            pretrained: None,
            model_type: "roberta".into(),
            hidden_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 512,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            head: crate::model::HeadKind::Linear,
            num_rnn_layers: 2,
            rnn_dropout: 0.1,
        }
    }
}

impl ModelSettings {
    /// The head settings.
    pub fn head_config(&self) -> crate::model::HeadConfig {
        crate::model::HeadConfig {
            kind: self.head,
            num_rnn_layers: self.num_rnn_layers,
            rnn_dropout: self.rnn_dropout,
        }
    }

    /// A from-scratch encoder config for a tokenizer of `vocab_size` tokens with `pad_id`, big
    /// enough for `max_seq_length` positions.
    pub fn scratch_config(
        &self,
        vocab_size: usize,
        pad_id: usize,
        max_seq_length: usize,
    ) -> crate::model::config::EncoderConfig {
        let roberta = self.model_type != "bert";
        crate::model::config::EncoderConfig {
            model_type: self.model_type.clone(),
            vocab_size,
            hidden_size: self.hidden_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            intermediate_size: self.intermediate_size,
            hidden_act: "gelu".into(),
            hidden_dropout_prob: self.hidden_dropout_prob,
            attention_probs_dropout_prob: self.attention_probs_dropout_prob,
            max_position_embeddings: if roberta {
                max_seq_length + pad_id + 1
            } else {
                max_seq_length
            },
            type_vocab_size: if roberta { 1 } else { 2 },
            layer_norm_eps: if roberta { 1e-5 } else { 1e-12 },
            pad_token_id: pad_id,
            initializer_range: 0.02,
        }
    }
}

pub use crate::train::trainer::KeepBestBy;

fn is_one(n: &usize) -> bool {
    *n == 1
}

/// `[train]`: fine-tuning one model per fold.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainSettings {
    /// `cpu` (flex), `cuda` / `cuda:N`, or `wgpu` / `wgpu:N` / `wgpu:cpu` (Vulkan, Metal).
    pub device: crate::device::Device,
    /// `f32`, or pure `bf16` / `f16` on CUDA (prediction uses the same).
    pub precision: crate::device::Precision,
    pub epochs: usize,
    pub batch_size: usize,
    pub eval_batch_size: usize,
    pub learning_rate: f64,
    pub optimizer: crate::train::optim::OptimKind,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_epsilon: f64,
    pub adamp_delta: f64,
    pub adamp_wd_ratio: f64,
    pub adamp_nesterov: bool,
    pub schedule: crate::train::schedule::ScheduleKind,
    pub warmup_ratio: f64,
    /// Overrides `warmup_ratio` when set and positive.
    pub warmup_steps: Option<usize>,
    /// Global-norm clipping; 0 = off (the seed's "no-clip").
    pub max_grad_norm: f64,
    pub gradient_accumulation: usize,
    /// Drop each epoch's last, incomplete training batch (HF's `dataloader_drop_last`); on
    /// CUDA this keeps one batch shape, so kernels are compiled and autotuned once.
    pub drop_last: bool,
    /// Folds trained at once, each in its own process (`pipeline run train --fold K`); 2 on a
    /// 2-core machine uses both cores. Results equal training the folds one by one. Not part
    /// of the train stage's settings hash (left out of serialisation at 1).
    #[serde(skip_serializing_if = "is_one")]
    pub parallel_folds: usize,
    pub seed: u64,
    /// Validate every N optimizer steps; 0 = at the end of every epoch.
    pub eval_every: usize,
    pub keep_best_by: KeepBestBy,
    /// Stop a fold after this many validations without improvement; 0 = never.
    pub patience: usize,
    /// Save a resumable checkpoint every N optimizer steps; 0 = at every validation.
    pub checkpoint_every: usize,
    pub loss: crate::train::loss::LossKind,
    pub focal_gamma: f64,
    pub label_smoothing: f64,
    /// AdamW updates all parameters as one flat tensor (torch's `foreach`) instead of one tensor
    /// at a time: the same numbers, so not part of the settings hash (left out of serialisation
    /// when off). `PIPELINE_MULTI_TENSOR=1` turns it on.
    #[serde(skip_serializing_if = "is_false")]
    pub multi_tensor_adamw: bool,
    /// Attention in evaluation and prediction (no dropout there): `naive` (matmul, softmax,
    /// matmul) or `fused` (Burn's fused attention op; flash attention on CUDA). The logits agree
    /// up to rounding. Left out of serialisation at `naive`, so older runs keep their hash;
    /// `PIPELINE_ATTENTION=fused|naive` sets it.
    #[serde(skip_serializing_if = "EvalAttention::is_naive")]
    pub eval_attention: EvalAttention,
}

/// How evaluation and prediction compute attention (`train.eval_attention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EvalAttention {
    #[default]
    Naive,
    Fused,
}

impl EvalAttention {
    fn is_naive(&self) -> bool {
        *self == EvalAttention::Naive
    }

    /// Whether Burn's fused attention op runs.
    pub fn fused(self) -> bool {
        self == EvalAttention::Fused
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Default for TrainSettings {
    fn default() -> Self {
        Self {
            device: crate::device::Device::Cpu,
            precision: Default::default(),
            epochs: 3,
            batch_size: 32,
            eval_batch_size: 64,
            learning_rate: 5e-5,
            optimizer: Default::default(),
            weight_decay: 0.01,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_epsilon: 1e-8,
            adamp_delta: 0.1,
            adamp_wd_ratio: 0.1,
            adamp_nesterov: false,
            schedule: crate::train::schedule::ScheduleKind::Linear,
            warmup_ratio: 0.0,
            warmup_steps: None,
            max_grad_norm: 1.0,
            gradient_accumulation: 1,
            drop_last: false,
            parallel_folds: 1,
            seed: 42,
            eval_every: 0,
            keep_best_by: KeepBestBy::F1,
            patience: 0,
            checkpoint_every: 0,
            loss: Default::default(),
            focal_gamma: 2.0,
            label_smoothing: 0.1,
            multi_tensor_adamw: false,
            eval_attention: EvalAttention::Naive,
        }
    }
}

impl TrainSettings {
    /// The optimizer hyper-parameters.
    pub fn optim_config(&self) -> crate::train::optim::OptimConfig {
        crate::train::optim::OptimConfig {
            kind: self.optimizer,
            beta1: self.adam_beta1,
            beta2: self.adam_beta2,
            eps: self.adam_epsilon,
            weight_decay: self.weight_decay,
            delta: self.adamp_delta,
            wd_ratio: self.adamp_wd_ratio,
            nesterov: self.adamp_nesterov,
        }
    }

    /// The loss settings.
    pub fn loss_config(&self) -> crate::train::loss::LossConfig {
        crate::train::loss::LossConfig {
            kind: self.loss,
            gamma: self.focal_gamma,
            smoothing: self.label_smoothing,
        }
    }
}

/// How `split` assigns examples to folds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SplitStrategy {
    /// No document in two folds; question counts balanced.
    #[default]
    Group,
    /// Balanced context-length bins in every fold.
    Stratified,
    Random,
}

/// Which column groups examples for the `group` strategy and the hold-out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// `document_id` where the data has one, else `title`.
    #[default]
    Auto,
    DocumentId,
    Title,
    Context,
}

/// `[split]`: K-fold assignment.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SplitSettings {
    pub strategy: SplitStrategy,
    pub folds: usize,
    pub seed: u64,
    pub group_by: GroupBy,
    /// Fraction of groups held out as the test split when `data.test` is not given (0 = none).
    pub holdout_fraction: f64,
    /// Number of context-length bins for `stratified`.
    pub length_bins: usize,
}

impl Default for SplitSettings {
    fn default() -> Self {
        Self {
            strategy: SplitStrategy::Group,
            folds: 5,
            seed: 42,
            group_by: GroupBy::Auto,
            holdout_fraction: 0.0,
            length_bins: 5,
        }
    }
}

/// `[evaluate]`: which official metric scores predictions.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvaluateSettings {
    pub metric: Metric,
}

impl Default for EvaluateSettings {
    fn default() -> Self {
        Self {
            metric: Metric::Korquad,
        }
    }
}

impl Settings {
    /// Whether evaluation batches keep one shape on the configured device (see
    /// [`crate::device::Device::wants_fixed_shapes`]).
    pub fn fixed_shape(&self) -> bool {
        self.train.device.wants_fixed_shapes()
    }

    /// Reads `path`, applies `overrides` (`section.key=value`, value in TOML syntax or a bare
    /// string) and validates the result.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        // A byte-order mark (Windows editors write one) is not part of the TOML.
        let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
        Self::from_toml(text, overrides).with_context(|| format!("in config {}", path.display()))
    }

    /// Parses settings from TOML text plus overrides, then validates.
    pub fn from_toml(text: &str, overrides: &[String]) -> Result<Self> {
        let mut table: toml::Table = text.parse().context("invalid TOML")?;
        let strings = string_keys();
        for item in overrides {
            apply_override(&mut table, item, &strings)?;
        }
        let settings: Settings = table.try_into().map_err(|e: toml::de::Error| {
            anyhow::anyhow!("{}", e.to_string().trim().replace('\n', " "))
        })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks values that the types alone cannot.
    pub fn validate(&self) -> Result<()> {
        if self.run.name.is_empty()
            || self.run.name.contains(['/', '\\'])
            || self.run.name.starts_with('.')
        {
            bail!(
                "run.name must be a plain folder name, got {:?}",
                self.run.name
            );
        }
        if self.data.train.as_os_str().is_empty() {
            bail!("data.train is required: the training file (SQuAD JSON, JSON Lines, CSV, Parquet or a HF save_to_disk folder)");
        }
        let p = &self.prepare;
        if p.max_seq_length < 8 {
            bail!(
                "prepare.max_seq_length must be at least 8, got {}",
                p.max_seq_length
            );
        }
        match &self.model.pretrained {
            // The model's position table bounds the windows (read here when the folder is
            // there; `prepare` reports a missing one).
            Some(dir) if dir.join(crate::model::CONFIG_FILE).is_file() => {
                let cfg = crate::model::config::EncoderConfig::load(&dir.join(crate::model::CONFIG_FILE))?;
                let max = cfg.max_seq_length()?;
                if p.max_seq_length > max {
                    bail!(
                        "prepare.max_seq_length ({}) is longer than {} allows: {max} (max_position_embeddings {})",
                        p.max_seq_length,
                        dir.display(),
                        cfg.max_position_embeddings
                    );
                }
            }
            Some(_) => {}
            None if p.max_seq_length > MAX_SCRATCH_SEQ => bail!(
                "prepare.max_seq_length ({}) is over {MAX_SCRATCH_SEQ}, the longest window a from-scratch model takes (attention memory grows with its square)",
                p.max_seq_length
            ),
            None => {}
        }
        if p.doc_stride >= p.max_seq_length {
            bail!(
                "prepare.doc_stride ({}) must be smaller than prepare.max_seq_length ({})",
                p.doc_stride,
                p.max_seq_length
            );
        }
        if p.tokenizer.is_none() && p.vocab_size < 100 {
            bail!(
                "prepare.vocab_size must be at least 100, got {}",
                p.vocab_size
            );
        }
        let s = &self.split;
        if s.folds < 2 {
            bail!("split.folds must be at least 2, got {}", s.folds);
        }
        if !(0.0..0.9).contains(&s.holdout_fraction) {
            bail!(
                "split.holdout_fraction must be in [0, 0.9), got {}",
                s.holdout_fraction
            );
        }
        if s.holdout_fraction > 0.0 && self.data.test.is_some() {
            bail!("split.holdout_fraction and data.test are both set: use one source of test examples");
        }
        if s.strategy == SplitStrategy::Stratified && s.length_bins == 0 {
            bail!("split.length_bins must be at least 1");
        }
        let m = &self.model;
        if m.pretrained.is_none() {
            if !matches!(m.model_type.as_str(), "roberta" | "bert") {
                bail!(
                    "model.model_type must be roberta or bert, got {:?}",
                    m.model_type
                );
            }
            if m.num_attention_heads == 0 || !m.hidden_size.is_multiple_of(m.num_attention_heads) {
                bail!(
                    "model.hidden_size ({}) must be a multiple of model.num_attention_heads ({})",
                    m.hidden_size,
                    m.num_attention_heads
                );
            }
        }
        let t = &self.train;
        let device = t.device;
        if device == crate::device::Device::Cpu && t.precision.is_pure_half() {
            bail!(
                "train.precision = \"{}\" needs train.device = \"cuda\" (the CPU backend keeps f32 weights; \"bf16-mixed\" runs there)",
                t.precision
            );
        }
        if matches!(device, crate::device::Device::Wgpu(_))
            && t.precision != crate::device::Precision::F32
        {
            bail!(
                "train.precision = \"{}\" is not supported with train.device = \"{}\" (f32 only: WGSL has no bf16)",
                t.precision,
                t.device
            );
        }
        if t.parallel_folds == 0 {
            bail!("train.parallel_folds must be at least 1");
        }
        if t.epochs == 0
            || t.batch_size == 0
            || t.eval_batch_size == 0
            || t.gradient_accumulation == 0
        {
            bail!("train.epochs, train.batch_size, train.eval_batch_size and train.gradient_accumulation must be positive");
        }
        if t.learning_rate.is_nan() || t.learning_rate <= 0.0 {
            bail!(
                "train.learning_rate must be positive, got {}",
                t.learning_rate
            );
        }
        if self.decode.n_best_size == 0 || self.decode.max_answer_length == 0 {
            bail!("decode.n_best_size and decode.max_answer_length must be positive");
        }
        Ok(())
    }

    /// The tokenizer `prepare` uses: `prepare.tokenizer`, else the pretrained model's, else none
    /// (train one).
    pub fn tokenizer_source(&self) -> Option<PathBuf> {
        self.prepare
            .tokenizer
            .clone()
            .or_else(|| self.model.pretrained.clone())
    }

    /// `<output_dir>/<name>`: the run directory.
    pub fn run_dir(&self) -> PathBuf {
        self.run.output_dir.join(&self.run.name)
    }
}

/// The longest `prepare.max_seq_length` of a from-scratch model: 8x BERT's 512. Longer windows
/// need attention memory that grows with the square of the length (at 65536 tokens a step of
/// the sample's tiny model needs terabytes); a pretrained model is bounded by its own
/// `max_position_embeddings` instead.
pub const MAX_SCRATCH_SEQ: usize = 4096;

/// The `section.key` paths whose value is a string (or a path, or an enum named by a string):
/// `--set` takes their value as written, so `run.name=nan` is the name "nan", not a float.
fn string_keys() -> std::collections::BTreeSet<String> {
    // Every optional string setting set, so that it shows up in the serialised table.
    let mut probe = Settings::default();
    probe.data.test = Some("x".into());
    probe.prepare.tokenizer = Some("x".into());
    probe.model.pretrained = Some("x".into());
    let mut keys = std::collections::BTreeSet::new();
    if let Ok(toml::Value::Table(t)) = toml::Value::try_from(&probe) {
        for (section, v) in &t {
            if let toml::Value::Table(inner) = v {
                for (key, v) in inner {
                    if v.is_str() {
                        keys.insert(format!("{section}.{key}"));
                    }
                }
            }
        }
    }
    keys
}

/// Applies one `section.key=value` override to the raw TOML table. `strings` are the keys whose
/// value is a string whatever it looks like ([`string_keys`]).
fn apply_override(
    table: &mut toml::Table,
    item: &str,
    strings: &std::collections::BTreeSet<String>,
) -> Result<()> {
    let (path, raw) = item
        .split_once('=')
        .with_context(|| format!("--set {item:?}: expected section.key=value"))?;
    let keys: Vec<&str> = path.trim().split('.').collect();
    if keys.iter().any(|k| k.is_empty()) || keys.len() < 2 {
        bail!("--set {item:?}: expected section.key=value");
    }
    let raw = raw.trim();
    // A value is read as TOML (numbers, booleans, quoted strings, arrays); anything that does
    // not parse is taken as a bare string, so `--set data.train=x.json` needs no quotes. A
    // string setting takes the value as a string even when it parses as something else.
    let parsed = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"));
    let value = match parsed {
        Some(v @ toml::Value::String(_)) => v,
        Some(_) if strings.contains(keys.join(".").as_str()) => {
            toml::Value::String(raw.to_string())
        }
        Some(v) => v,
        None => toml::Value::String(raw.to_string()),
    };
    let mut cur = table;
    for key in &keys[..keys.len() - 1] {
        let entry = cur
            .entry(key.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .with_context(|| format!("--set {item:?}: {key} is not a section"))?;
    }
    cur.insert(keys[keys.len() - 1].to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "[data]\ntrain = \"t.json\"\n";

    #[test]
    fn defaults_fill_missing_sections() {
        let s = Settings::from_toml(MIN, &[]).unwrap();
        assert_eq!(s.prepare.max_seq_length, 384);
        assert_eq!(s.split.folds, 5);
        assert_eq!(s.run_dir(), PathBuf::from("outputs/default"));
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let err = Settings::from_toml("[prepare]\nmax_seq_len = 3\n[data]\ntrain='x'", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_seq_len"), "{err}");
    }

    #[test]
    fn overrides_parse_toml_values_and_bare_strings() {
        let s = Settings::from_toml(
            MIN,
            &[
                "prepare.max_seq_length=256".into(),
                "data.train=other/file.jsonl".into(),
                "split.strategy=\"random\"".into(),
                "run.name=exp1".into(),
            ],
        )
        .unwrap();
        assert_eq!(s.prepare.max_seq_length, 256);
        assert_eq!(s.data.train, PathBuf::from("other/file.jsonl"));
        assert_eq!(s.split.strategy, SplitStrategy::Random);
        assert_eq!(s.run.name, "exp1");
    }

    #[test]
    fn a_string_setting_takes_values_that_look_like_numbers_or_booleans_as_strings() {
        for (set, name) in [
            ("nan", "nan"),
            ("true", "true"),
            ("2024", "2024"),
            ("\"42\"", "42"),
        ] {
            let s = Settings::from_toml(MIN, &[format!("run.name={set}")]).unwrap();
            assert_eq!(s.run.name, name);
        }
        let s = Settings::from_toml(MIN, &["data.train=2024".into(), "train.device=cpu".into()])
            .unwrap();
        assert_eq!(s.data.train, PathBuf::from("2024"));
        let s = Settings::from_toml(MIN, &["data.test=1e3".into()]).unwrap();
        assert_eq!(s.data.test, Some(PathBuf::from("1e3")));
        // Numbers stay numbers, and a number setting still refuses a string.
        let s = Settings::from_toml(MIN, &["train.seed=7".into()]).unwrap();
        assert_eq!(s.train.seed, 7);
        assert!(Settings::from_toml(MIN, &["train.seed=nan".into()]).is_err());
    }

    #[test]
    fn window_length_is_bounded_from_scratch_and_by_a_pretrained_models_positions() {
        let err = Settings::from_toml(MIN, &["prepare.max_seq_length=100000".into()])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("prepare.max_seq_length (100000) is over 4096"),
            "{err}"
        );
        assert!(Settings::from_toml(MIN, &["prepare.max_seq_length=4096".into()]).is_ok());
        // The roberta fixture: max_position_embeddings 66 with pad_token_id 1 -> 64 tokens.
        let model = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/models/roberta_qa"
        );
        let cfg = crate::model::config::EncoderConfig::load(
            &Path::new(model).join(crate::model::CONFIG_FILE),
        )
        .unwrap();
        let max = cfg.max_seq_length().unwrap();
        let with = |l: usize| {
            Settings::from_toml(
                MIN,
                &[
                    format!("model.pretrained={model}"),
                    format!("prepare.max_seq_length={l}"),
                    "prepare.doc_stride=4".into(),
                ],
            )
        };
        assert!(with(max).is_ok());
        let err = with(max + 1).unwrap_err().to_string();
        assert!(err.contains(&format!("allows: {max}")), "{err}");
    }

    #[test]
    fn a_byte_order_mark_before_the_toml_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pipeline.toml");
        std::fs::write(&p, format!("\u{feff}{MIN}")).unwrap();
        assert_eq!(
            Settings::load(&p, &[]).unwrap().data.train,
            PathBuf::from("t.json")
        );
    }

    #[test]
    fn bad_override_and_bad_values_say_what_is_wrong() {
        assert!(Settings::from_toml(MIN, &["nodot=1".into()]).is_err());
        let err = Settings::from_toml(MIN, &["prepare.doc_stride=500".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("doc_stride"), "{err}");
        let err = Settings::from_toml(MIN, &["split.folds=1".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("split.folds"), "{err}");
    }
}
