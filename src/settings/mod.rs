//! The `pipeline.toml` schema, `--set section.key=value` overrides and validation.
//!
//! Settings are resolved once (file, then overrides, then validation) and handed to every stage.
//! Unknown keys are rejected so a typo never silently falls back to a default. Relative paths
//! are taken relative to the directory `pipeline` runs in, as `run_qa.py` arguments are.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub use crate::qa::examples::DataFormat;
mod overrides;
pub mod ranges;
mod sections;

use overrides::{apply_override, string_keys};
pub use sections::*;

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
    /// `[launcher]`, `[slurm]`: where `pipeline run` runs (not part of any stage's hash).
    #[serde(skip_serializing_if = "is_default")]
    pub launcher: LauncherSettings,
    #[serde(skip_serializing_if = "is_default")]
    pub slurm: SlurmSettings,
    /// `[sweep]`: read by `pipeline sweep` only.
    #[serde(skip_serializing_if = "SweepSettings::is_empty")]
    pub sweep: SweepSettings,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

impl Settings {
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

    /// Checks values that the types alone cannot, section by section.
    pub fn validate(&self) -> Result<()> {
        ranges::check(self)?;
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
        self.validate_prepare()?;
        self.validate_split_and_model()?;
        self.validate_train()?;
        if self.decode.n_best_size == 0 || self.decode.max_answer_length == 0 {
            bail!("decode.n_best_size and decode.max_answer_length must be positive");
        }
        Ok(())
    }

    /// `[prepare]`: window lengths (against the pretrained model's position table) and the
    /// vocabulary.
    fn validate_prepare(&self) -> Result<()> {
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
        Ok(())
    }

    /// `[split]` and `[model]`.
    fn validate_split_and_model(&self) -> Result<()> {
        let s = &self.split;
        if s.folds < 2 {
            bail!("split.folds must be at least 2, got {}", s.folds);
        }
        if s.holdout_fraction > 0.0 && self.data.test.is_some() {
            bail!("split.holdout_fraction and data.test are both set: use one source of test examples");
        }
        if s.strategy == SplitStrategy::Stratified && s.length_bins == 0 {
            bail!("split.length_bins must be at least 1");
        }
        let m = &self.model;
        if m.pretrained.is_none()
            && (m.num_attention_heads == 0 || !m.hidden_size.is_multiple_of(m.num_attention_heads))
        {
            bail!(
                "model.hidden_size ({}) must be a multiple of model.num_attention_heads ({})",
                m.hidden_size,
                m.num_attention_heads
            );
        }
        if m.head == crate::model::HeadKind::Cnn
            && (m.cnn_kernel_sizes.is_empty() || m.cnn_kernel_sizes.iter().any(|k| k % 2 == 0))
        {
            bail!(
                "model.cnn_kernel_sizes must be odd sizes (\"same\" padding), at least one: got {:?}",
                m.cnn_kernel_sizes
            );
        }
        Ok(())
    }

    /// `[train]`: precision against device and head, devices, positive sizes.
    fn validate_train(&self) -> Result<()> {
        let m = &self.model;
        let t = &self.train;
        let device = t.device;
        if device == crate::device::Device::Cpu && t.precision.is_pure_half() {
            bail!(
                "train.precision = \"{}\" needs train.device = \"cuda\" (the CPU backend keeps f32 weights; \"bf16-mixed\" runs there)",
                t.precision
            );
        }
        if t.precision.is_pure_half() && m.head == crate::model::HeadKind::Bilstm {
            bail!(
                "train.precision = \"{}\" with model.head = \"bilstm\" is not supported (the fused LSTM kernel runs on f32 tensors; the per-operation path is unusably slow on a GPU): use train.precision = \"{}-mixed\", which keeps the LSTM in f32",
                t.precision,
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
        if let Devices::List(v) = &t.devices {
            if v.iter().any(|d| d.kind() != v[0].kind()) {
                bail!("train.devices mixes kinds of device ({v:?}): use one kind (all cuda:N, all cpu, ...)");
            }
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

/// A setting's name as the config spells it.
pub fn name_of<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
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

    /// Enumerated settings are typed: a value outside the enum fails at load and the error
    /// names the key and lists the values it takes.
    #[test]
    fn an_enum_setting_out_of_range_lists_its_values() {
        for (set, key, values) in [
            (
                "model.model_type=gpt2",
                "model_type",
                &["roberta", "bert"][..],
            ),
            ("model.head=gru", "head", &["linear", "bilstm", "cnn"][..]),
            ("train.loss=hinge", "loss", &["ce", "focal"][..]),
        ] {
            let err = format!("{:#}", Settings::from_toml(MIN, &[set.into()]).unwrap_err());
            assert!(err.contains(key), "{set}: {err}");
            for v in values {
                assert!(err.contains(v), "{set}: {v} not listed in {err}");
            }
        }
        let err = Settings::from_toml(
            MIN,
            &[
                "model.head=cnn".into(),
                "model.cnn_kernel_sizes=[3, 4]".into(),
            ],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("model.cnn_kernel_sizes") && err.contains("odd"),
            "{err}"
        );
        let s = Settings::from_toml(MIN, &["model.model_type=bert".into()]).unwrap();
        assert_eq!(s.model.scratch_config(100, 0, 64).model_type, "bert");
    }
}
