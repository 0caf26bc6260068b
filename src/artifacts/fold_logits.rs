//! A run's fold logits read from `predict/` and combined by the ensemble core
//! ([`crate::qa::ensemble`]): the folds' weighted mean on the test windows, and the pooled
//! out-of-fold logits.

use anyhow::{bail, Result};

use super::read_logits;
use crate::qa::decode::Logits;
use crate::qa::ensemble::{pool_out_of_fold, WeightedMean};
use crate::run::RunLayout;

/// What to do when folds' windows differ.
const SAME_WINDOWS: &str =
    "average folds that share one prepare stage, or use ensemble.method = \"hard_vote\"";

/// Logits with the example and feature index of each row, as [`read_logits`] returns them.
pub type RowLogits = (Logits, Vec<i64>, Vec<i64>);

/// The folds' test logits combined with `weights` (one per fold), read one fold at a time, and
/// the feature rows they belong to; `None` without folds. Folds must share their windows.
pub fn mean_test_logits(at: &RunLayout, weights: &[f64]) -> Result<Option<RowLogits>> {
    let mut mean = WeightedMean::new();
    let mut rows: Option<(Vec<i64>, Vec<i64>)> = None;
    for (fold, &weight) in weights.iter().enumerate() {
        let (lg, ex, fi) = read_logits(&at.test_logits(fold))?;
        match &rows {
            None => rows = Some((ex, fi)),
            Some((_, fi0)) if *fi0 != fi => {
                bail!("fold {fold}'s test windows differ from fold 0's: {SAME_WINDOWS}")
            }
            Some(_) => {}
        }
        mean.add(&lg, weight)
            .map_err(|e| anyhow::anyhow!("fold {fold}'s test logits: {e}: {SAME_WINDOWS}"))?;
    }
    Ok(mean.finish().zip(rows).map(|(lg, (ex, fi))| (lg, ex, fi)))
}

/// The out-of-fold logits of the first `folds` folds pooled (every training window is held out
/// by exactly one fold), with their feature rows.
pub fn pooled_oof_logits(at: &RunLayout, folds: usize, seq: usize) -> Result<(Logits, Vec<i64>)> {
    let parts = (0..folds)
        .map(|k| read_logits(&at.oof_logits(k)).map(|(lg, _, fi)| (lg, fi)))
        .collect::<Result<Vec<_>>>()?;
    Ok(pool_out_of_fold(seq, parts))
}
