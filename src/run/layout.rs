//! Where everything of a run lives: the file names and the [`RunLayout`] of paths.

use std::path::{Path, PathBuf};

/// The names of the files and folders inside a run folder: the one place that spells them.
/// Stages write through a [`StageWriter`] by these names and find each other's outputs through
/// [`RunLayout`].
pub mod names {
    /// Stage folders, in run order (also the stages' names).
    pub const PREPARE: &str = "prepare";
    pub const SPLIT: &str = "split";
    pub const TRAIN: &str = "train";
    pub const PREDICT: &str = "predict";
    pub const ENSEMBLE: &str = "ensemble";
    pub const EVALUATE: &str = "evaluate";
    pub const SUBMIT: &str = "submit";
    /// `prepare/`: the examples, their token windows, the tokenizer folder.
    pub const EXAMPLES: &str = "examples.parquet";
    pub const FEATURES: &str = "features.safetensors";
    pub const TOKENIZER: &str = "tokenizer";
    /// `prepare/` and `split/`: the content key of the stage's training part (what `train`
    /// depends on; a new test file leaves it the same).
    pub const TRAIN_KEY: &str = "train_key.json";
    /// `split/`: each example's fold.
    pub const FOLDS: &str = "folds.parquet";
    /// `train/fold-K/`: the kept checkpoint, the resumable ones, the metric log.
    pub const BEST: &str = "best";
    pub const LAST: &str = "last";
    pub const LAST_OLD: &str = "last.old";
    pub const METRICS_LOG: &str = "metrics.jsonl";
    pub const TRAINER_STATE: &str = "trainer_state.json";
    pub const OPTIMIZER_STATE: &str = "optimizer.json";
    /// `predict/fold-K/` and `ensemble/`: window logits.
    pub const OOF_LOGITS: &str = "oof_logits.safetensors";
    pub const TEST_LOGITS: &str = "test_logits.safetensors";
    /// `infer`'s output folder: the logits of every window.
    pub const LOGITS: &str = "logits.safetensors";
    /// `ensemble/`, `submit/` (and `infer`'s output folder): answers.
    pub const PREDICTIONS: &str = "predictions.json";
    pub const NBEST_PREDICTIONS: &str = "nbest_predictions.json";
    pub const OOF_PREDICTIONS: &str = "oof_predictions.json";
    pub const VOTES: &str = "votes.json";
    /// `evaluate/`: scores and the report.
    pub const METRICS: &str = "metrics.json";
    pub const REPORT: &str = "report.md";
    /// `tb/fold-K/`: TensorBoard event files of each fold's training (logs in no manifest;
    /// `evaluate` reads them for the per-step loss curve, and does without them).
    pub const TENSORBOARD: &str = "tb";
    /// The run's report with plots, beside its stage folders (a copy of `evaluate/`'s).
    pub const REPORT_HTML: &str = "report.html";
    /// `submit/`: the competition's file.
    pub const SUBMISSION: &str = "submission.csv";
    /// `slurm/`: the generated sbatch scripts, the job ids and the tasks' logs.
    pub const SLURM: &str = "slurm";
    pub const SLURM_LOGS: &str = "logs";
    pub const SLURM_JOBS: &str = "jobs.json";
    /// The scripts: `prepare` + `split`, the folds' job array, the stages after the folds.
    pub const SLURM_PREPARE: &str = "prepare.sh";
    pub const SLURM_FOLDS: &str = "folds.sh";
    pub const SLURM_FINISH: &str = "finish.sh";
}

/// Every path of one run folder (`outputs/<run>/`).
#[derive(Debug, Clone)]
pub struct RunLayout {
    root: PathBuf,
}

impl RunLayout {
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
        }
    }

    /// The run folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A stage's folder, by the stage's name ([`names::PREPARE`] …).
    pub fn stage(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn examples(&self) -> PathBuf {
        self.stage(names::PREPARE).join(names::EXAMPLES)
    }

    pub fn features(&self) -> PathBuf {
        self.stage(names::PREPARE).join(names::FEATURES)
    }

    /// The tokenizer folder `prepare` copies (HF's files inside).
    pub fn tokenizer(&self) -> PathBuf {
        self.stage(names::PREPARE).join(names::TOKENIZER)
    }

    /// `slurm/`: the sbatch scripts ([`names::SLURM_PREPARE`] …) and [`names::SLURM_JOBS`].
    pub fn slurm(&self) -> PathBuf {
        self.root.join(names::SLURM)
    }

    /// `slurm/logs/`: the Slurm tasks' output.
    pub fn slurm_logs(&self) -> PathBuf {
        self.slurm().join(names::SLURM_LOGS)
    }

    /// `prepare/train_key.json`.
    pub fn prepared_train_key(&self) -> PathBuf {
        self.stage(names::PREPARE).join(names::TRAIN_KEY)
    }

    /// `split/train_key.json`.
    pub fn split_train_key(&self) -> PathBuf {
        self.stage(names::SPLIT).join(names::TRAIN_KEY)
    }

    pub fn folds(&self) -> PathBuf {
        self.stage(names::SPLIT).join(names::FOLDS)
    }

    /// The folder of training fold `k`.
    pub fn fold(&self, k: usize) -> PathBuf {
        self.stage(names::TRAIN).join(format!("fold-{k}"))
    }

    /// Fold `k`'s TensorBoard folder (`tensorboard --logdir outputs/<run>/tb` shows the folds
    /// as runs).
    pub fn tensorboard(&self, k: usize) -> PathBuf {
        self.root.join(names::TENSORBOARD).join(format!("fold-{k}"))
    }

    /// Fold `k`'s kept (best) checkpoint.
    pub fn best(&self, k: usize) -> PathBuf {
        self.fold(k).join(names::BEST)
    }

    /// The resumable checkpoints of a fold folder, newest first: `last/`, and `last.old/`, the
    /// one before it, kept while `last/` is replaced so that a crash at any moment leaves one
    /// readable.
    pub fn checkpoints(fold_dir: &Path) -> [PathBuf; 2] {
        [fold_dir.join(names::LAST), fold_dir.join(names::LAST_OLD)]
    }

    /// `predict`'s folder for fold `k`.
    pub fn predicted(&self, k: usize) -> PathBuf {
        self.stage(names::PREDICT).join(format!("fold-{k}"))
    }

    pub fn oof_logits(&self, k: usize) -> PathBuf {
        self.predicted(k).join(names::OOF_LOGITS)
    }

    pub fn test_logits(&self, k: usize) -> PathBuf {
        self.predicted(k).join(names::TEST_LOGITS)
    }

    /// A file of the `ensemble` stage ([`names::PREDICTIONS`] …).
    pub fn ensembled(&self, name: &str) -> PathBuf {
        self.stage(names::ENSEMBLE).join(name)
    }
}
