//! `evaluate`: the scores of the run, in `evaluate/metrics.json`, a short `report.md` and
//! `report.html` (tables and learning curves; also copied to `outputs/<run>/report.html`).
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
use crate::train::trainer::EvalLine;

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
    let html = html_report(ctx, &per_fold, &oof, &test)?;
    w.write(names::REPORT_HTML, html.as_bytes())?;
    // The page also beside the stage folders, where a user looks first (a view: no stage reads
    // it).
    crate::run::write_atomic(&ctx.run_dir.join(names::REPORT_HTML), html.as_bytes())?;
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

/// `report.html`: the scores table and each fold's learning curves.
fn html_report(
    ctx: &Ctx,
    per_fold: &[serde_json::Value],
    oof: &Score,
    test: &serde_json::Value,
) -> Result<String> {
    let s = &ctx.settings;
    let at = ctx.layout();
    let f2 = |v: &serde_json::Value| v.as_f64().map_or(String::new(), |x| format!("{x:.2}"));
    let header: Vec<String> = [
        "",
        "best step",
        "EM",
        "F1",
        "val loss",
        "train s",
        "windows/s",
    ]
    .map(String::from)
    .to_vec();
    let mut rows = Vec::new();
    for (k, f) in per_fold.iter().enumerate() {
        let b = &f["best"];
        rows.push(vec![
            format!("fold {k} (validation)"),
            b["step"].to_string(),
            f2(&b["exact_match"]),
            f2(&b["f1"]),
            b["loss"]
                .as_f64()
                .map_or(String::new(), |x| format!("{x:.4}")),
            f["train_seconds"]
                .as_f64()
                .map_or(String::new(), |x| format!("{x:.0}")),
            f["windows_per_second"]
                .as_f64()
                .map_or(String::new(), |x| format!("{x:.1}")),
        ]);
    }
    let mut marked = vec![rows.len()];
    let pad = |mut r: Vec<String>| {
        r.resize(header.len(), String::new());
        r
    };
    rows.push(pad(vec![
        format!("out-of-fold, pooled ({} questions)", oof.total),
        String::new(),
        format!("{:.2}", oof.exact_match),
        format!("{:.2}", oof.f1),
    ]));
    if !test.is_null() {
        marked.push(rows.len());
        rows.push(pad(vec![
            format!(
                "test: ensemble of {} folds ({} questions)",
                s.split.folds, test["ensemble"]["total"]
            ),
            String::new(),
            f2(&test["ensemble"]["exact_match"]),
            f2(&test["ensemble"]["f1"]),
        ]));
        rows.push(pad(vec![
            "test: mean single fold".into(),
            String::new(),
            f2(&test["mean_fold"]["exact_match"]),
            f2(&test["mean_fold"]["f1"]),
        ]));
    }
    let mut curves = Vec::new();
    for k in 0..s.split.folds {
        curves.push(fold_curves(&at.fold(k), &at.tensorboard(k), k)?);
    }
    crate::report::run_page(
        &format!("{}: {} folds", s.run.name, s.split.folds),
        &format!(
            "Model {} with the {} head, {} loss, {} epochs at learning rate {}; metric {}.",
            s.model
                .pretrained
                .as_ref()
                .map_or("from scratch".to_string(), |p| p.display().to_string()),
            name_of(&s.model.head),
            name_of(&s.train.loss),
            s.train.epochs,
            s.train.learning_rate,
            s.evaluate.metric
        ),
        &header,
        &rows,
        &marked,
        &curves,
    )
}

/// A setting's name as the config spells it.
fn name_of<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

/// A fold's curves from its `metrics.jsonl` and, for the training loss per step, its
/// TensorBoard log (the validations' running means where the log is absent or unreadable).
fn fold_curves(
    fold_dir: &std::path::Path,
    tb_dir: &std::path::Path,
    k: usize,
) -> Result<crate::report::FoldCurves> {
    let text = std::fs::read_to_string(fold_dir.join(names::METRICS_LOG)).unwrap_or_default();
    let mut c = crate::report::FoldCurves {
        fold: k,
        ..Default::default()
    };
    let mut best: Option<&EvalLine> = None;
    let lines: Vec<EvalLine> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for l in &lines {
        let x = l.step as f64;
        c.train_loss.push((x, l.train_loss));
        c.val_loss.push((x, l.loss));
        c.val_f1.push((x, l.f1));
        c.val_em.push((x, l.exact_match));
    }
    // The kept checkpoint: the fold manifest's best.
    if let Some(m) = crate::run::Manifest::read(fold_dir)? {
        let step = m.summary["best"]["step"].as_u64();
        best = lines.iter().find(|l| Some(l.step as u64) == step);
    }
    c.best = best.map(|b| (b.step as f64, b.f1, b.loss));
    if let Ok(scalars) = crate::tensorboard::read_scalars(tb_dir) {
        let per_step: Vec<(f64, f64)> = scalars
            .into_iter()
            .filter(|s| s.tag == "train/loss")
            .map(|s| (s.step as f64, s.value as f64))
            .collect();
        if !per_step.is_empty() {
            c.train_loss = per_step;
        }
    }
    Ok(c)
}
