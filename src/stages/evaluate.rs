//! `evaluate`: the scores of the run, in `evaluate/metrics.json`, a short `report.md` and
//! `report.html` (tables and learning curves; also copied to `outputs/<run>/report.html`).
//!
//! Per-fold validation (best checkpoint), pooled out-of-fold EM/F1 over all training examples,
//! and, when the test split has answers, test EM/F1 of every fold alone and of the ensemble.

use std::collections::HashMap;

use anyhow::{Context, Result};

use super::{hash_of, input, Ctx, Plan, Stage};
use crate::artifacts::{
    read_examples, read_folds, read_logits, read_predictions, Features, TEST_FOLD,
};
use crate::artifacts::{
    require_summary, EvalLine, MeanScore, RunMetrics, TestScores, TrainSummary,
};
use crate::qa::decode::decode_rows;
use crate::qa::metrics::{score, Score};
use crate::run::{names, Manifest, StageWriter};

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

    let per_fold: Vec<TrainSummary> = (0..s.split.folds)
        .map(|k| require_summary(&at.fold(k)))
        .collect::<Result<_>>()?;
    let oof = score_of(&golds(&|f| f >= 0), &read_preds(names::OOF_PREDICTIONS)?);
    let test_golds = golds(&|f| f == TEST_FOLD);
    let mut test = None;
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
        test = Some(TestScores {
            ensemble,
            folds: singles,
            mean_fold: MeanScore {
                exact_match: mean_em,
                f1: mean_f1,
            },
            best_fold_f1: best_f1,
        });
    }
    let metrics = RunMetrics {
        metric: s.evaluate.metric,
        folds: per_fold,
        oof,
        test,
    };
    w.write_json(names::METRICS, &metrics)?;
    w.write(names::REPORT, markdown_report(ctx, &metrics).as_bytes())?;
    let html = html_report(ctx, &metrics)?;
    w.write(names::REPORT_HTML, html.as_bytes())?;
    // The page also beside the stage folders, where a user looks first (a view: no stage reads
    // it).
    crate::run::write_atomic(&ctx.run_dir.join(names::REPORT_HTML), html.as_bytes())?;
    let (oof, test) = (&metrics.oof, &metrics.test);
    ctx.ui.info(&format!(
        "evaluate: out-of-fold EM {:.2} F1 {:.2}{} -> {}",
        oof.exact_match,
        oof.f1,
        test.as_ref().map_or(String::new(), |t| format!(
            "; test ensemble EM {:.2} F1 {:.2} (mean fold F1 {:.2})",
            t.ensemble.exact_match, t.ensemble.f1, t.mean_fold.f1
        )),
        w.path(names::REPORT).display()
    ));
    w.finish(serde_json::to_value(metrics)?)
}

/// `report.md`: the folds' validation, the pooled out-of-fold and the test scores.
fn markdown_report(ctx: &Ctx, m: &RunMetrics) -> String {
    let s = &ctx.settings;

    let mut md = format!(
        "# {} — {} folds, metric {}\n\n",
        s.run.name, s.split.folds, s.evaluate.metric
    );
    md.push_str("| fold | best step | val EM | val F1 | val loss | train s | windows/s |\n|---|---|---|---|---|---|---|\n");
    for (k, f) in m.folds.iter().enumerate() {
        let b = &f.best;
        md.push_str(&format!(
            "| {k} | {} | {:.2} | {:.2} | {:.4} | {:.0} | {:.1} |\n",
            b.step, b.exact_match, b.f1, b.loss, f.train_seconds, f.windows_per_second,
        ));
    }
    md.push_str(&format!(
        "\nPooled out-of-fold over {} training questions: EM {:.2}, F1 {:.2}\n",
        m.oof.total, m.oof.exact_match, m.oof.f1
    ));
    if let Some(t) = &m.test {
        md.push_str(&format!(
            "\nTest ({} questions): ensemble EM {:.2} F1 {:.2}; mean single fold EM {:.2} F1 {:.2}; best fold F1 {:.2}\n",
            t.ensemble.total,
            t.ensemble.exact_match,
            t.ensemble.f1,
            t.mean_fold.exact_match,
            t.mean_fold.f1,
            t.best_fold_f1,
        ));
    }
    md
}

/// `report.html`: the scores table and each fold's learning curves.
fn html_report(ctx: &Ctx, m: &RunMetrics) -> Result<String> {
    let s = &ctx.settings;
    let at = ctx.layout();
    let f2 = |x: f64| format!("{x:.2}");
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
    for (k, f) in m.folds.iter().enumerate() {
        let b = &f.best;
        rows.push(vec![
            format!("fold {k} (validation)"),
            b.step.to_string(),
            f2(b.exact_match),
            f2(b.f1),
            format!("{:.4}", b.loss),
            format!("{:.0}", f.train_seconds),
            format!("{:.1}", f.windows_per_second),
        ]);
    }
    let mut marked = vec![rows.len()];
    let pad = |mut r: Vec<String>| {
        r.resize(header.len(), String::new());
        r
    };
    let oof = &m.oof;
    rows.push(pad(vec![
        format!("out-of-fold, pooled ({} questions)", oof.total),
        String::new(),
        f2(oof.exact_match),
        f2(oof.f1),
    ]));
    if let Some(test) = &m.test {
        marked.push(rows.len());
        rows.push(pad(vec![
            format!(
                "test: ensemble of {} folds ({} questions)",
                s.split.folds, test.ensemble.total
            ),
            String::new(),
            f2(test.ensemble.exact_match),
            f2(test.ensemble.f1),
        ]));
        rows.push(pad(vec![
            "test: mean single fold".into(),
            String::new(),
            f2(test.mean_fold.exact_match),
            f2(test.mean_fold.f1),
        ]));
    }
    let mut curves = Vec::new();
    for (k, f) in m.folds.iter().enumerate() {
        curves.push(fold_curves(
            &at.fold(k),
            &at.tensorboard(k),
            k,
            f.best.step,
        )?);
    }
    crate::report::run_page(
        &format!("{}: {} folds", s.run.name, s.split.folds),
        &format!(
            "Model {} with the {} head, {} loss, {} epochs at learning rate {}; metric {}.",
            s.model
                .pretrained
                .as_ref()
                .map_or("from scratch".to_string(), |p| p.display().to_string()),
            crate::settings::name_of(&s.model.head),
            crate::settings::name_of(&s.train.loss),
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

/// A fold's curves from its `metrics.jsonl` and, for the training loss per step, its
/// TensorBoard log (the validations' running means where the log is absent or unreadable: it
/// is a view, not a recorded output); `best_step` is the kept checkpoint's. A missing or
/// unreadable `metrics.jsonl` (a recorded output of `train`) is an error naming the line.
fn fold_curves(
    fold_dir: &std::path::Path,
    tb_dir: &std::path::Path,
    k: usize,
    best_step: usize,
) -> Result<crate::report::FoldCurves> {
    let path = fold_dir.join(names::METRICS_LOG);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut c = crate::report::FoldCurves {
        fold: k,
        ..Default::default()
    };
    let lines: Vec<EvalLine> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| format!("{}: line {}", path.display(), i + 1))
        })
        .collect::<Result<_>>()?;
    for l in &lines {
        let x = l.step as f64;
        c.train_loss.push((x, l.train_loss));
        c.val_loss.push((x, l.loss));
        c.val_f1.push((x, l.f1));
        c.val_em.push((x, l.exact_match));
    }
    c.best = lines
        .iter()
        .find(|l| l.step == best_step)
        .map(|b| (b.step as f64, b.f1, b.loss));
    if let Ok(scalars) = crate::tensorboard::read_scalars(tb_dir) {
        let per_step: Vec<(f64, f64)> = scalars
            .into_iter()
            .filter(|s| s.tag == crate::tensorboard::tags::TRAIN_LOSS)
            .map(|s| (s.step as f64, s.value as f64))
            .collect();
        if !per_step.is_empty() {
            c.train_loss = per_step;
        }
    }
    Ok(c)
}
