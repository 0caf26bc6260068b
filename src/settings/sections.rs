//! The sections of `pipeline.toml`, each a typed struct with its defaults.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::qa::examples::DataFormat;
use crate::qa::metrics::Metric;

/// `[ensemble]`: how the folds' test logits combine.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnsembleSettings {
    pub method: EnsembleMethod,
    /// Finished run folders for `pipeline ensemble` (a cross-run ensemble) when `--runs` is
    /// not given. Not part of a run's own ensemble stage.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<PathBuf>,
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

/// `[sweep]`: the variants `pipeline sweep` runs (not read by any stage).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SweepSettings {
    /// The sweep's folder under `run.output_dir`; variants are runs inside it.
    pub name: Option<String>,
    /// Variants run at once (each a `pipeline run all` process).
    pub parallel: Option<usize>,
    /// `"section.key" = [v1, v2, ...]`: every combination is a variant (Cartesian product).
    pub grid: std::collections::BTreeMap<String, Vec<toml::Value>>,
    /// Explicit variants, each `{ "section.key" = value, ... }`, after the grid's.
    pub variants: Vec<std::collections::BTreeMap<String, toml::Value>>,
}

impl SweepSettings {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
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
    /// The competition notebook's behaviour: train only on first windows and drop examples whose answer is not in it.
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
    pub model_type: crate::model::config::Family,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
    /// `linear` (HF `qa_outputs`), `bilstm` (the competition notebook's head) or `cnn`.
    pub head: crate::model::HeadKind,
    /// BiLSTM layers (hidden size = encoder hidden size per direction).
    pub num_rnn_layers: usize,
    /// Dropout between BiLSTM layers.
    pub rnn_dropout: f64,
    /// The CNN head's kernel sizes (odd; `hidden_size / 3` channels each). Hashed only when
    /// not the default, so runs from before the CNN head keep their hash.
    #[serde(skip_serializing_if = "is_default_kernels")]
    pub cnn_kernel_sizes: Vec<usize>,
}

fn is_default_kernels(k: &[usize]) -> bool {
    k == crate::model::CNN_KERNEL_SIZES
}

impl Default for ModelSettings {
    fn default() -> Self {
        Self {
            pretrained: None,
            model_type: crate::model::config::Family::Roberta,
            hidden_size: 128,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 512,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            head: crate::model::HeadKind::Linear,
            num_rnn_layers: 2,
            rnn_dropout: 0.1,
            cnn_kernel_sizes: crate::model::CNN_KERNEL_SIZES.to_vec(),
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
            cnn_kernel_sizes: self.cnn_kernel_sizes.clone(),
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
        let roberta = self.model_type == crate::model::config::Family::Roberta;
        crate::model::config::EncoderConfig {
            model_type: self.model_type.model_type().into(),
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
    /// Global-norm clipping; 0 = off (the competition notebook's "no-clip").
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
    /// Devices that train (and predict) one fold each at a time, in worker processes pinned to
    /// them: `["cuda:0", "cuda:1"]`, `"cuda:all"` (every CUDA device), or CPU "devices"
    /// (`["cpu", "cpu"]`). Empty (the default): `device`, with `parallel_folds` workers.
    #[serde(skip_serializing_if = "Devices::is_empty")]
    pub devices: Devices,
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
    /// `padded` (every batch `max_seq_length` long), `dynamic` (each batch cut to its longest
    /// window, rounded up to `pad_multiple`) or `bucket` (`dynamic` with windows of similar
    /// length batched together; HF's `group_by_length`); training, evaluation and prediction.
    /// Hashed only when not `padded`, so older runs keep their hash.
    #[serde(skip_serializing_if = "BatchStrategy::is_padded")]
    pub batching: BatchStrategy,
    /// Batch lengths of `dynamic` / `bucket` are multiples of this (few shapes for a GPU).
    #[serde(skip_serializing_if = "is_64")]
    pub pad_multiple: usize,
}

pub use crate::train::batch::BatchStrategy;

fn is_64(n: &usize) -> bool {
    *n == 64
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
            devices: Devices::default(),
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
            batching: BatchStrategy::Padded,
            pad_multiple: 64,
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

    /// How evaluation and prediction batch windows on this device.
    pub fn eval_batching(&self) -> crate::train::batch::Batching {
        crate::train::batch::Batching {
            batch_size: self.eval_batch_size,
            fixed_shape: self.device.wants_fixed_shapes(),
            strategy: self.batching,
            pad_multiple: self.pad_multiple,
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

impl TrainSettings {
    /// The device as far as results go: the kind of `devices` (all one kind) or of `device`,
    /// without its index. Stage hashes use it, so a fold trained on `cuda:1` by a worker of
    /// `devices` is the fold a run on `cuda:0` alone would make.
    pub fn hashed_device(&self) -> crate::device::Device {
        match &self.devices {
            Devices::List(v) if !v.is_empty() => v[0].kind(),
            Devices::AllCuda => crate::device::Device::Cuda(0),
            _ => self.device.kind(),
        }
    }
}

/// `train.devices`: a list of devices, or every CUDA device (`"cuda:all"`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Devices {
    #[default]
    None,
    List(Vec<crate::device::Device>),
    AllCuda,
}

impl Devices {
    pub fn is_empty(&self) -> bool {
        matches!(self, Devices::None) || matches!(self, Devices::List(v) if v.is_empty())
    }

    /// The devices, with `"cuda:all"` resolved to the CUDA devices this machine has.
    pub fn resolve(&self) -> anyhow::Result<Vec<crate::device::Device>> {
        match self {
            Devices::None => Ok(Vec::new()),
            Devices::List(v) => Ok(v.clone()),
            Devices::AllCuda => {
                let n = crate::device::cuda_device_count()
                    .map_err(|e| anyhow::anyhow!("train.devices = \"cuda:all\": {e}"))?;
                if n == 0 {
                    anyhow::bail!("train.devices = \"cuda:all\", but no CUDA device is visible");
                }
                Ok((0..n).map(crate::device::Device::Cuda).collect())
            }
        }
    }
}

impl Serialize for Devices {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Devices::None => Vec::<String>::new().serialize(s),
            Devices::List(v) => v.serialize(s),
            Devices::AllCuda => s.serialize_str("cuda:all"),
        }
    }
}

impl<'de> Deserialize<'de> for Devices {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        // Strings first, parsed below: an untagged enum of devices would hide the device's own
        // error behind serde's "did not match any variant".
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
            Other(toml::Value),
        }
        const FORMS: &str = "a list of devices (cpu, cuda, cuda:N, wgpu, wgpu:N, wgpu:cpu), e.g. [\"cuda:0\", \"cuda:1\"], or \"cuda:all\"";
        match Raw::deserialize(d)? {
            Raw::One(s) if s == "cuda:all" => Ok(Devices::AllCuda),
            Raw::One(s) => Err(serde::de::Error::custom(format!(
                "train.devices must be {FORMS}, got {s:?}"
            ))),
            Raw::Many(v) => v
                .iter()
                .map(|s| {
                    s.parse().map_err(|e: anyhow::Error| {
                        serde::de::Error::custom(format!("train.devices: {e}"))
                    })
                })
                .collect::<std::result::Result<_, _>>()
                .map(Devices::List),
            Raw::Other(v) => Err(serde::de::Error::custom(format!(
                "train.devices must be {FORMS}, got {v}"
            ))),
        }
    }
}

/// `[launcher]`: where `pipeline run` runs its work.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LauncherSettings {
    pub kind: LauncherKind,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum LauncherKind {
    /// In this process (and its fold workers).
    #[default]
    Local,
    /// Submitted to Slurm as three dependent jobs (see `[slurm]`).
    Slurm,
}

/// `[slurm]`: what `--launcher slurm` asks the cluster for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlurmSettings {
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    /// Per job, in any form `sbatch --time` takes (`"4:00:00"`, `"1-00:00:00"`).
    pub time: Option<String>,
    /// GPUs per fold task (0: none).
    pub gpus_per_task: usize,
    /// How GPUs are requested: `"gres"` (`--gres=gpu:N`) or `"gpus_per_task"`
    /// (`--gpus-per-task=N`).
    pub gpu_flag: GpuFlag,
    pub cpus_per_task: usize,
    /// Memory per task, as `sbatch --mem` takes it (`"32G"`).
    pub mem: Option<String>,
    /// More `sbatch` arguments, one per item (`["--constraint=h100"]`).
    pub extra_args: Vec<String>,
    /// A shell line each job runs first (`"module load cuda/12.4"`).
    pub setup: Option<String>,
    /// Job names start with this (default: `pipeline-<run name>`).
    pub job_name: Option<String>,
}

impl Default for SlurmSettings {
    fn default() -> Self {
        Self {
            partition: None,
            account: None,
            qos: None,
            time: None,
            gpus_per_task: 0,
            gpu_flag: GpuFlag::Gres,
            cpus_per_task: 1,
            mem: None,
            extra_args: Vec::new(),
            setup: None,
            job_name: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuFlag {
    #[default]
    Gres,
    GpusPerTask,
}
