//! `ensemble`: averages the folds' test logits window by window, then decodes; also pools the
//! out-of-fold logits into out-of-fold predictions for an honest cross-validation score.
//!
//! Reads `predict/fold-K/*_logits.safetensors`, `prepare/` and `train/fold-K/manifest.json`
//! (for `weighted`); writes `ensemble/test_logits.safetensors`, `predictions.json`,
//! `nbest_predictions.json`, `oof_predictions.json`.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{train::fold_dir, Ctx, Plan, Stage};
use crate::artifacts::{read_examples, Features};
use crate::infer::{decode_rows, read_logits, write_logits, Logits};
use crate::qa::decode::DecodeConfig;
use crate::run::{Manifest, StageWriter};

/// Character offsets of one window's tokens (`None` outside the context).
type ContextOffsets = Vec<Option<(usize, usize)>>;

/// How fold logits combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EnsembleMethod {
    /// Plain mean of start/end logits.
    #[default]
    Mean,
    /// Mean weighted by each fold's best validation score (`train.keep_best_by`).
    Weighted,
}

/// The decode settings.
pub fn decode_config(ctx: &Ctx) -> DecodeConfig {
    DecodeConfig {
        n_best_size: ctx.settings.decode.n_best_size,
        max_answer_length: ctx.settings.decode.max_answer_length,
    }
}

/// Each fold's best validation score by `keep_best_by` (from its train manifest).
pub fn fold_scores(ctx: &Ctx) -> Result<Vec<serde_json::Value>> {
    (0..ctx.settings.split.folds)
        .map(|k| {
            let m = Manifest::read(&fold_dir(&ctx.run_dir, k))?;
            Ok(m.map(|m| m.summary).unwrap_or(serde_json::Value::Null))
        })
        .collect()
}

/// Runs the stage.
pub fn run(ctx: &Ctx, plan: Plan) -> Result<Manifest> {
    let s = &ctx.settings;
    let mut w = StageWriter::begin(plan.dir, "ensemble", plan.config_hash, &plan.inputs)?;
    let prep = ctx.stage_dir(Stage::Prepare);
    let feats = Features::load(&prep.join("features.safetensors"))?;
    let (examples, _) = read_examples(&prep.join("examples.parquet"))?;
    let k = s.split.folds;
    let pred = ctx.stage_dir(Stage::Predict);

    let weights: Vec<f64> = match s.ensemble.method {
        EnsembleMethod::Mean => vec![1.0 / k as f64; k],
        EnsembleMethod::Weighted => {
            let key = match s.train.keep_best_by {
                crate::settings::KeepBestBy::Em => "exact_match",
                crate::settings::KeepBestBy::F1 => "f1",
                crate::settings::KeepBestBy::Loss => "loss",
                crate::settings::KeepBestBy::StartAcc => "start_acc",
                crate::settings::KeepBestBy::EndAcc => "end_acc",
            };
            let raw: Vec<f64> = fold_scores(ctx)?
                .iter()
                .map(|m| m["best"][key].as_f64().unwrap_or(0.0))
                .map(|v| {
                    if key == "loss" {
                        1.0 / v.max(1e-9)
                    } else {
                        v.max(1e-9)
                    }
                })
                .collect();
            let sum: f64 = raw.iter().sum();
            raw.iter().map(|v| v / sum).collect()
        }
    };

    // Test logits: same windows in every fold, averaged.
    let mut avg: Option<(Logits, Vec<i64>, Vec<i64>)> = None;
    for (fold, weight) in weights.iter().enumerate() {
        let weight = *weight as f32;
        let (lg, ex, fi) = read_logits(&pred.join(format!("fold-{fold}/test_logits.safetensors")))?;
        match &mut avg {
            None => {
                let scaled = Logits {
                    seq: lg.seq,
                    start: lg.start.iter().map(|x| x * weight).collect(),
                    end: lg.end.iter().map(|x| x * weight).collect(),
                };
                avg = Some((scaled, ex, fi));
            }
            Some((acc, ex0, fi0)) => {
                if &fi != fi0 || lg.seq != acc.seq {
                    bail!("fold {fold}'s test windows differ from fold 0's: folds must share one prepare stage");
                }
                let _ = ex0;
                for (a, x) in acc.start.iter_mut().zip(&lg.start) {
                    *a += x * weight;
                }
                for (a, x) in acc.end.iter_mut().zip(&lg.end) {
                    *a += x * weight;
                }
            }
        }
    }
    let (test_lg, test_ex, test_fi) = avg.unwrap_or((
        Logits {
            seq: feats.max_seq_length,
            start: vec![],
            end: vec![],
        },
        vec![],
        vec![],
    ));
    write_logits(
        &w.path("test_logits.safetensors"),
        &test_lg,
        &test_ex,
        Some(&test_fi),
    )?;
    w.record("test_logits.safetensors")?;
    let cfg = decode_config(ctx);
    let rows_of = |fi: &[i64]| -> (Vec<usize>, Vec<ContextOffsets>) {
        (
            fi.iter()
                .map(|&r| feats.example_index[r as usize] as usize)
                .collect(),
            fi.iter()
                .map(|&r| feats.context_offsets(r as usize))
                .collect(),
        )
    };
    let (re, ro) = rows_of(&test_fi);
    let (preds, nbest) = decode_rows(&examples, &re, &ro, &test_lg, &cfg);
    w.write_json("predictions.json", &preds)?;
    w.write_json("nbest_predictions.json", &nbest)?;

    // Out-of-fold: every training window belongs to exactly one fold.
    let mut oof = Logits {
        seq: feats.max_seq_length,
        start: vec![],
        end: vec![],
    };
    let mut oof_fi = Vec::new();
    for fold in 0..k {
        let (lg, _, fi) = read_logits(&pred.join(format!("fold-{fold}/oof_logits.safetensors")))?;
        oof.start.extend(lg.start);
        oof.end.extend(lg.end);
        oof_fi.extend(fi);
    }
    let (re, ro) = rows_of(&oof_fi);
    let (oof_preds, _) = decode_rows(&examples, &re, &ro, &oof, &cfg);
    w.write_json("oof_predictions.json", &oof_preds)?;
    ctx.ui.info(&format!(
        "ensemble: {} folds ({:?}) -> {} test predictions, {} out-of-fold predictions",
        k,
        s.ensemble.method,
        preds.len(),
        oof_preds.len()
    ));
    w.finish(json!({
        "method": s.ensemble.method,
        "weights": weights,
        "test_predictions": preds.len(),
        "oof_predictions": oof_preds.len(),
    }))
}
