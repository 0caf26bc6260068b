//! `ensemble`: averages the folds' test logits window by window, then decodes (or, with
//! `hard_vote`, decodes every fold alone and votes on the answer text, writing `votes.json`);
//! also pools the out-of-fold logits into out-of-fold predictions for an honest
//! cross-validation score.
//!
//! Reads `predict/fold-K/*_logits.safetensors`, `prepare/` and `train/fold-K/manifest.json`
//! (for `weighted`); writes `ensemble/test_logits.safetensors`, `predictions.json`,
//! `nbest_predictions.json`, `oof_predictions.json`.

use anyhow::Result;

use super::{hash_of, input, Ctx, Plan, Stage};
use crate::artifacts::{mean_test_logits, pooled_oof_logits, read_examples, Features};
use crate::artifacts::{read_logits, write_logits};
use crate::artifacts::{require_summary, EnsembleSummary, KeepBestBy, TrainSummary};
use crate::qa::decode::{decode_rows, Logits};
use crate::qa::ensemble::{equal_weights, hard_vote, weights_from_scores};
use crate::run::{names, Manifest, StageWriter};
use crate::settings::EnsembleMethod;

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
        EnsembleMethod::Mean | EnsembleMethod::HardVote => equal_weights(k),
        EnsembleMethod::Weighted => {
            // Each fold's best validation score; a loss counts as its inverse.
            let by = s.train.keep_best_by;
            let mut scores = Vec::new();
            for fold in 0..k {
                let summary: TrainSummary = require_summary(&at.fold(fold))?;
                let v = summary.best.metric(by);
                scores.push(if by == KeepBestBy::Loss {
                    1.0 / v.max(1e-9)
                } else {
                    v
                });
            }
            weights_from_scores(&scores)
        }
    };

    let preds = if s.ensemble.method == EnsembleMethod::HardVote {
        // Every fold decodes its own windows; then one vote per fold and question.
        let mut ballots = Vec::new();
        for fold in 0..k {
            let (lg, _, fi) = read_logits(&at.test_logits(fold))?;
            let (re, ro) = feats.decode_meta(&fi);
            ballots.push(decode_rows(&examples, &re, &ro, &lg, &cfg).1);
        }
        let t = hard_vote(ballots);
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
    let (oof, oof_fi) = pooled_oof_logits(&at, k, feats.max_seq_length)?;
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
