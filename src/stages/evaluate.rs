//! `evaluate`: the scores of the run, in `evaluate/metrics.json` and a short `report.md`.
//!
//! Per-fold validation (best checkpoint), pooled out-of-fold EM/F1 over all training examples,
//! and, when the test split has answers, test EM/F1 of every fold alone and of the ensemble.

use std::collections::HashMap;

use anyhow::Result;
use serde_json::json;

use super::{hash_of, input, Ctx, Plan, Stage};
use crate::artifacts::{
    read_examples, read_folds, read_logits, read_predictions, Features, TEST_FOLD,
};
use crate::qa::decode::decode_rows;
use crate::qa::metrics::{score, Score};
use crate::run::{fold_summaries, names, Manifest, StageWriter};

/// Up to date while `[evaluate]`, `[decode]`, the ensembled predictions and the folds are.
pub fn plan(ctx: &Ctx) -> Result<Plan> {
    let s = &ctx.settings;
    let at = ctx.layout();
    let inputs = vec![
        input(at.ensembled(names::PREDICTIONS)),
        input(at.ensembled(names::OOF_PREDICTIONS)),
        input(at.folds()),
    ];
    let hash = hash_of(&(&s.evaluate, &s.decode))?;
    Ok(Plan::once(ctx, Stage::Evaluate, hash, inputs))
}

/// Runs the stage.
pub fn run(ctx: &Ctx, plan: Plan) -> Result<Manifest> {
    let s = &ctx.settings;
    let mut w = StageWriter::begin(plan.dir, names::EVALUATE, plan.config_hash, &plan.inputs)?;
    let at = ctx.layout();
    let (examples, _) = read_examples(&at.examples())?;
    let feats = Features::load(&at.features())?;
    let folds = read_folds(&at.folds())?;
    let ens = ctx.stage_dir(Stage::Ensemble);
    let read_preds = |name: &str| -> Result<HashMap<String, String>> {
        Ok(read_predictions(&ens.join(name))?.into_iter().collect())
    };
    let golds = |want: &dyn Fn(i32) -> bool| -> Vec<(String, Vec<String>)> {
        examples
            .iter()
            .zip(&folds)
            .filter(|(e, f)| want(**f) && !e.answers.is_empty())
            .map(|(e, _)| {
                (
                    e.id.clone(),
                    e.answers.iter().map(|a| a.text.clone()).collect(),
                )
            })
            .collect()
    };
    let score_of = |g: &[(String, Vec<String>)], p: &HashMap<String, String>| -> Score {
        score(
            s.evaluate.metric,
            g.iter().map(|(id, a)| (id.as_str(), a.as_slice())),
            p,
        )
        .0
    };

    let per_fold = fold_summaries(&ctx.run_dir, ctx.settings.split.folds)?;
    let oof = score_of(&golds(&|f| f >= 0), &read_preds(names::OOF_PREDICTIONS)?);
    let test_golds = golds(&|f| f == TEST_FOLD);
    let mut test = serde_json::Value::Null;
    if !test_golds.is_empty() {
        let cfg = ctx.settings.decode;
        let mut singles = Vec::new();
        for k in 0..s.split.folds {
            let (lg, _, fi) = read_logits(&at.test_logits(k))?;
            let (re, ro) = feats.decode_meta(&fi);
            let (p, _) = decode_rows(&examples, &re, &ro, &lg, &cfg);
            singles.push(score_of(&test_golds, &p.into_iter().collect()));
        }
        let ensemble = score_of(&test_golds, &read_preds(names::PREDICTIONS)?);
        let mean_f1 = singles.iter().map(|x| x.f1).sum::<f64>() / singles.len() as f64;
        let mean_em = singles.iter().map(|x| x.exact_match).sum::<f64>() / singles.len() as f64;
        let best_f1 = singles.iter().map(|x| x.f1).fold(f64::MIN, f64::max);
        test = json!({
            "ensemble": ensemble,
            "folds": singles,
            "mean_fold": {"exact_match": mean_em, "f1": mean_f1},
            "best_fold_f1": best_f1,
        });
    }
    let metrics = json!({
        "metric": s.evaluate.metric,
        "folds": per_fold,
        "oof": oof,
        "test": test,
    });
    w.write_json(names::METRICS, &metrics)?;

    let mut md = format!(
        "# {} — {} folds, metric {}\n\n",
        s.run.name, s.split.folds, s.evaluate.metric
    );
    md.push_str("| fold | best step | val EM | val F1 | val loss | train s | windows/s |\n|---|---|---|---|---|---|---|\n");
    for (k, f) in per_fold.iter().enumerate() {
        let b = &f["best"];
        md.push_str(&format!(
            "| {k} | {} | {:.2} | {:.2} | {:.4} | {:.0} | {:.1} |\n",
            b["step"],
            b["exact_match"].as_f64().unwrap_or(f64::NAN),
            b["f1"].as_f64().unwrap_or(f64::NAN),
            b["loss"].as_f64().unwrap_or(f64::NAN),
            f["train_seconds"].as_f64().unwrap_or(f64::NAN),
            f["windows_per_second"].as_f64().unwrap_or(f64::NAN),
        ));
    }
    md.push_str(&format!(
        "\nPooled out-of-fold over {} training questions: EM {:.2}, F1 {:.2}\n",
        oof.total, oof.exact_match, oof.f1
    ));
    if !test.is_null() {
        md.push_str(&format!(
            "\nTest ({} questions): ensemble EM {:.2} F1 {:.2}; mean single fold EM {:.2} F1 {:.2}; best fold F1 {:.2}\n",
            test["ensemble"]["total"],
            test["ensemble"]["exact_match"].as_f64().unwrap_or(0.0),
            test["ensemble"]["f1"].as_f64().unwrap_or(0.0),
            test["mean_fold"]["exact_match"].as_f64().unwrap_or(0.0),
            test["mean_fold"]["f1"].as_f64().unwrap_or(0.0),
            test["best_fold_f1"].as_f64().unwrap_or(0.0),
        ));
    }
    w.write(names::REPORT, md.as_bytes())?;
    ctx.ui.info(&format!(
        "evaluate: out-of-fold EM {:.2} F1 {:.2}{} -> {}",
        oof.exact_match,
        oof.f1,
        if test.is_null() {
            String::new()
        } else {
            format!(
                "; test ensemble EM {:.2} F1 {:.2} (mean fold F1 {:.2})",
                test["ensemble"]["exact_match"].as_f64().unwrap_or(0.0),
                test["ensemble"]["f1"].as_f64().unwrap_or(0.0),
                test["mean_fold"]["f1"].as_f64().unwrap_or(0.0)
            )
        },
        w.path(names::REPORT).display()
    ));
    w.finish(metrics)
}
