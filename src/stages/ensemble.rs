//! `ensemble`: averages the folds' test logits window by window, then decodes (or, with
//! `hard_vote`, decodes every fold alone and votes on the answer text, writing `votes.json`);
//! also pools the out-of-fold logits into out-of-fold predictions for an honest
//! cross-validation score.
//!
//! Reads `predict/fold-K/*_logits.safetensors`, `prepare/` and `train/fold-K/manifest.json`
//! (for `weighted`); writes `ensemble/test_logits.safetensors`, `predictions.json`,
//! `nbest_predictions.json`, `oof_predictions.json`.

use anyhow::{bail, Result};

use super::{hash_of, input, Ctx, Plan, Stage};
use crate::artifacts::{read_examples, Features};
use crate::artifacts::{read_logits, write_logits};
use crate::artifacts::{require_summary, EnsembleSummary, KeepBestBy, TrainSummary};
use crate::qa::decode::{decode_rows, Logits};
use crate::qa::vote::{add_ballot, tally};
use crate::run::{names, Manifest, StageWriter};
use crate::settings::EnsembleMethod;

/// Logits with the example and feature index of each row, as `read_logits` returns them.
type RowLogits = (Logits, Vec<i64>, Vec<i64>);

/// The folds' test logits combined with `weights`, and the feature rows they belong to
/// (example and feature index per row; `None` without folds); folds must share their windows.
pub fn mean_test_logits(at: &crate::run::RunLayout, weights: &[f64]) -> Result<Option<RowLogits>> {
    let mut acc: Option<RowLogits> = None;
    for (fold, weight) in weights.iter().enumerate() {
        let weight = *weight as f32;
        let (lg, ex, fi) = read_logits(&at.test_logits(fold))?;
        match &mut acc {
            None => {
                let scaled = Logits {
                    seq: lg.seq,
                    start: lg.start.iter().map(|x| x * weight).collect(),
                    end: lg.end.iter().map(|x| x * weight).collect(),
                };
                acc = Some((scaled, ex, fi));
            }
            Some((a, _, fi0)) => {
                if &fi != fi0 || lg.seq != a.seq {
                    bail!("fold {fold}'s test windows differ from fold 0's: average folds that share one prepare stage, or use ensemble.method = \"hard_vote\"");
                }
                for (x, y) in a.start.iter_mut().zip(&lg.start) {
                    *x += y * weight;
                }
                for (x, y) in a.end.iter_mut().zip(&lg.end) {
                    *x += y * weight;
                }
            }
        }
    }
    Ok(acc)
}

/// Up to date while `[ensemble]`, `[decode]`, `train.keep_best_by` (the weights), the
/// features and every fold's logits are.
pub fn plan(ctx: &Ctx) -> Result<Plan> {
    let s = &ctx.settings;
    let at = ctx.layout();
    let mut inputs = vec![input(at.features())];
    for k in 0..s.split.folds {
        inputs.push(input(at.test_logits(k)));
        inputs.push(input(at.oof_logits(k)));
    }
    // `[ensemble] runs` is for `pipeline ensemble`, not this stage.
    let own = crate::settings::EnsembleSettings {
        runs: Vec::new(),
        ..s.ensemble.clone()
    };
    let hash = hash_of(&(&own, &s.decode, &s.train.keep_best_by))?;
    Ok(Plan::once(ctx, Stage::Ensemble, hash, inputs))
}

/// Runs the stage.
pub fn run(ctx: &Ctx, plan: Plan) -> Result<Manifest> {
    let s = &ctx.settings;
    let mut w = StageWriter::begin(plan.dir, names::ENSEMBLE, plan.config_hash, &plan.inputs)?;
    let at = ctx.layout();
    let feats = Features::load(&at.features())?;
    let (examples, _) = read_examples(&at.examples())?;
    let k = s.split.folds;

    let cfg = ctx.settings.decode;
    let weights: Vec<f64> = match s.ensemble.method {
        EnsembleMethod::Mean | EnsembleMethod::HardVote => vec![1.0 / k as f64; k],
        EnsembleMethod::Weighted => {
            let by = s.train.keep_best_by;
            let mut raw = Vec::new();
            for fold in 0..k {
                let summary: TrainSummary = require_summary(&at.fold(fold))?;
                let v = summary.best.metric(by);
                raw.push(if by == KeepBestBy::Loss {
                    1.0 / v.max(1e-9)
                } else {
                    v.max(1e-9)
                });
            }
            let sum: f64 = raw.iter().sum();
            raw.iter().map(|v| v / sum).collect()
        }
    };

    let preds = if s.ensemble.method == EnsembleMethod::HardVote {
        // Every fold decodes its own windows; then one vote per fold and question.
        let mut answers: std::collections::BTreeMap<String, Vec<(String, f32)>> =
            Default::default();
        for fold in 0..k {
            let (lg, _, fi) = read_logits(&at.test_logits(fold))?;
            let (re, ro) = feats.decode_meta(&fi);
            let (_, nbest) = decode_rows(&examples, &re, &ro, &lg, &cfg);
            add_ballot(&mut answers, nbest);
        }
        let t = tally(answers, k);
        w.write_json(names::PREDICTIONS, &t.predictions)?;
        w.write_json(names::VOTES, &t.votes)?;
        // submit reads an n-best list: the tallies in its shape.
        w.write_json(names::NBEST_PREDICTIONS, &t.nbest)?;
        t.predictions
    } else {
        let (test_lg, test_ex, test_fi) = mean_test_logits(&at, &weights)?.unwrap_or((
            Logits {
                seq: feats.max_seq_length,
                start: vec![],
                end: vec![],
            },
            vec![],
            vec![],
        ));
        write_logits(
            &w.path(names::TEST_LOGITS),
            &test_lg,
            &test_ex,
            Some(&test_fi),
        )?;
        w.record(names::TEST_LOGITS)?;
        let (re, ro) = feats.decode_meta(&test_fi);
        let (preds, nbest) = decode_rows(&examples, &re, &ro, &test_lg, &cfg);
        w.write_json(names::PREDICTIONS, &preds)?;
        w.write_json(names::NBEST_PREDICTIONS, &nbest)?;
        preds
    };

    // Out-of-fold: every training window belongs to exactly one fold.
    let mut oof = Logits {
        seq: feats.max_seq_length,
        start: vec![],
        end: vec![],
    };
    let mut oof_fi = Vec::new();
    for fold in 0..k {
        let (lg, _, fi) = read_logits(&at.oof_logits(fold))?;
        oof.start.extend(lg.start);
        oof.end.extend(lg.end);
        oof_fi.extend(fi);
    }
    let (re, ro) = feats.decode_meta(&oof_fi);
    let (oof_preds, _) = decode_rows(&examples, &re, &ro, &oof, &cfg);
    w.write_json(names::OOF_PREDICTIONS, &oof_preds)?;
    ctx.ui.info(&format!(
        "ensemble: {} folds ({:?}) -> {} test predictions, {} out-of-fold predictions",
        k,
        s.ensemble.method,
        preds.len(),
        oof_preds.len()
    ));
    let summary = EnsembleSummary {
        method: crate::settings::name_of(&s.ensemble.method),
        weights,
        test_predictions: preds.len(),
        oof_predictions: oof_preds.len(),
    };
    w.finish(serde_json::to_value(summary)?)
}
