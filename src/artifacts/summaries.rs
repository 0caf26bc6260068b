//! The summaries stages record in their manifests and hand each other, typed: `train`'s
//! [`TrainSummary`] per fold, `evaluate`'s [`RunMetrics`], `ensemble`'s [`EnsembleSummary`].
//! They are read through [`read_summary`], where a missing or mistyped field is an error naming
//! the manifest and the field, never a silent 0 in a report.

use std::path::Path;

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::qa::metrics::{Metric, Score};
use crate::run::{Manifest, RunLayout, MANIFEST};

/// Which validation metric picks the best checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KeepBestBy {
    Em,
    #[default]
    F1,
    /// Lowest validation loss.
    Loss,
    StartAcc,
    EndAcc,
}

/// One validation. Its numbers are written so that any value reads back: a non-finite one as
/// the string `"NaN"`, `"inf"` or `"-inf"` (see [`crate::run::float`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalLine {
    pub step: usize,
    #[serde(with = "crate::run::float")]
    pub epoch: f64,
    #[serde(with = "crate::run::float")]
    pub lr: f64,
    #[serde(with = "crate::run::float")]
    pub train_loss: f64,
    #[serde(with = "crate::run::float")]
    pub loss: f64,
    #[serde(with = "crate::run::float")]
    pub start_acc: f64,
    #[serde(with = "crate::run::float")]
    pub end_acc: f64,
    #[serde(with = "crate::run::float")]
    pub exact_match: f64,
    #[serde(with = "crate::run::float")]
    pub f1: f64,
    #[serde(with = "crate::run::float")]
    pub elapsed_s: f64,
}

impl EvalLine {
    /// The metric `by` names, as recorded (the loss as a loss: smaller is better).
    pub fn metric(&self, by: KeepBestBy) -> f64 {
        match by {
            KeepBestBy::Em => self.exact_match,
            KeepBestBy::F1 => self.f1,
            KeepBestBy::Loss => self.loss,
            KeepBestBy::StartAcc => self.start_acc,
            KeepBestBy::EndAcc => self.end_acc,
        }
    }

    /// The value `keep_best_by` compares, larger is better (the loss negated).
    pub fn score(&self, by: KeepBestBy) -> f64 {
        match by {
            KeepBestBy::Loss => -self.loss,
            _ => self.metric(by),
        }
    }
}

/// What `train` records for a fold: its best validation (the kept checkpoint), its first, and
/// how the training went.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    pub fold: usize,
    /// Optimizer steps taken.
    pub steps: usize,
    pub best: EvalLine,
    pub first: EvalLine,
    #[serde(with = "crate::run::float")]
    pub train_seconds: f64,
    #[serde(with = "crate::run::float")]
    pub windows_per_second: f64,
    #[serde(with = "crate::run::float")]
    pub tokens_per_window: f64,
    pub skipped_steps: usize,
    /// The f16 loss scaler's last scale (`null` without one).
    #[serde(deserialize_with = "Option::deserialize")]
    pub loss_scale: Option<f64>,
    pub train_windows: usize,
    pub val_windows: usize,
}

/// The mean EM and F1 of the folds alone on the test split.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MeanScore {
    #[serde(with = "crate::run::float")]
    pub exact_match: f64,
    #[serde(with = "crate::run::float")]
    pub f1: f64,
}

/// The test split's scores, where it has answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestScores {
    pub ensemble: Score,
    /// Each fold alone, in fold order.
    pub folds: Vec<Score>,
    pub mean_fold: MeanScore,
    #[serde(with = "crate::run::float")]
    pub best_fold_f1: f64,
}

/// What `evaluate` records (also `evaluate/metrics.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunMetrics {
    pub metric: Metric,
    /// Each fold's training summary, in fold order.
    pub folds: Vec<TrainSummary>,
    /// Pooled out-of-fold scores over all training questions.
    pub oof: Score,
    /// `null` where the test split has no answers.
    #[serde(deserialize_with = "Option::deserialize")]
    pub test: Option<TestScores>,
}

/// What `ensemble` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnsembleSummary {
    /// `mean`, `weighted` or `hard_vote`, as the settings spell it.
    pub method: String,
    /// Each fold's weight, in fold order.
    pub weights: Vec<f64>,
    pub test_predictions: usize,
    pub oof_predictions: usize,
}

/// The summary of the manifest in `dir`, as `T`; `Ok(None)` when the stage has no manifest. A
/// summary that does not read as `T` (a missing field, a string for a number) is an error naming
/// the manifest file and the field.
pub fn read_summary<T: DeserializeOwned>(dir: &Path) -> Result<Option<T>> {
    let Some(m) = Manifest::read(dir)? else {
        return Ok(None);
    };
    let what = std::any::type_name::<T>().rsplit("::").next().unwrap_or("");
    serde_json::from_value(m.summary)
        .map(Some)
        .with_context(|| format!("{}: summary is not a {what}", dir.join(MANIFEST).display()))
}

/// [`read_summary`] of a stage that must have run: its absence is an error too.
pub fn require_summary<T: DeserializeOwned>(dir: &Path) -> Result<T> {
    read_summary(dir)?.with_context(|| {
        format!(
            "{}: missing (the stage has not finished)",
            dir.join(MANIFEST).display()
        )
    })
}

/// Each of the first `folds` folds' [`TrainSummary`], `None` for a fold not trained yet.
pub fn fold_summaries(at: &RunLayout, folds: usize) -> Result<Vec<Option<TrainSummary>>> {
    (0..folds).map(|k| read_summary(&at.fold(k))).collect()
}
