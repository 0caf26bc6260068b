//! `report.html`: one self-contained page (inline CSS and SVG, no script, no external file) of a
//! run — per-fold learning curves with the best checkpoint marked, and the per-fold /
//! out-of-fold / ensemble table — or of a sweep — its comparison table and a chart of F1 per
//! variant with its fold spread.
//!
//! The page is well-formed XHTML, so any XML parser reads it. Each chart is a
//! `<figure data-plot="…">` holding one SVG ([`plots`] says how its series are drawn). This
//! module only renders: the stages gather the numbers.

pub mod plots;

use anyhow::Result;
use plots::{Chart, Mark, Series};

const STYLE: &str =
    "body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}\
table{border-collapse:collapse;margin:1em 0;font-size:14px}\
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}\
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}\
tr.best td{font-weight:bold;background:#eef6ee}\
figure{display:inline-block;margin:0.5em}\
.muted{color:#777;font-size:13px}div.wide{overflow-x:auto}";

/// Escapes text for HTML/XML.
pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A page from its title and body (already HTML).
fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html xmlns=\"http://www.w3.org/1999/xhtml\" lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n",
        escape(title)
    )
}

/// A table; rows whose index is in `marked` get `class="best"`.
pub fn table(header: &[String], rows: &[Vec<String>], marked: &[usize]) -> String {
    let mut t = String::from("<table>\n<tr>");
    for h in header {
        t.push_str(&format!("<th>{}</th>", escape(h)));
    }
    t.push_str("</tr>\n");
    for (i, r) in rows.iter().enumerate() {
        t.push_str(if marked.contains(&i) {
            "<tr class=\"best\">"
        } else {
            "<tr>"
        });
        for c in r {
            t.push_str(&format!("<td>{}</td>", escape(c)));
        }
        t.push_str("</tr>\n");
    }
    t.push_str("</table>\n");
    t
}

/// A chart as a captioned figure; `id` names it in `data-plot`.
pub fn figure(id: &str, chart: &Chart, width: u32, height: u32) -> Result<String> {
    let svg = plots::svg(chart, width, height)?;
    Ok(format!(
        "<figure data-plot=\"{}\" data-title=\"{}\">\n{svg}\n</figure>\n",
        escape(id),
        escape(&chart.title)
    ))
}

/// One fold's learning curves.
#[derive(Debug, Clone, Default)]
pub struct FoldCurves {
    pub fold: usize,
    /// Training loss per optimizer step (from the TensorBoard log), or per validation (the
    /// mean since the one before) where the log is absent.
    pub train_loss: Vec<(f64, f64)>,
    pub val_loss: Vec<(f64, f64)>,
    pub val_f1: Vec<(f64, f64)>,
    pub val_em: Vec<(f64, f64)>,
    /// The kept checkpoint's (step, F1, loss).
    pub best: Option<(f64, f64, f64)>,
}

/// The two charts of a fold: losses, and EM/F1; the best checkpoint is a dot on each.
pub fn fold_charts(c: &FoldCurves) -> [Chart; 2] {
    let mut loss = vec![
        Series::line("train loss", c.train_loss.clone()),
        Series::line("validation loss", c.val_loss.clone()),
    ];
    let mut f1 = vec![
        Series::line("validation F1", c.val_f1.clone()),
        Series::line("validation EM", c.val_em.clone()),
    ];
    if let Some((step, best_f1, best_loss)) = c.best {
        loss.push(Series::dots("best checkpoint", vec![(step, best_loss)]));
        f1.push(Series::dots("best checkpoint", vec![(step, best_f1)]));
    }
    [
        Chart {
            title: format!("fold {}: loss", c.fold),
            x_label: "step".into(),
            y_label: "loss".into(),
            series: loss,
            categories: None,
        },
        Chart {
            title: format!("fold {}: validation EM / F1", c.fold),
            x_label: "step".into(),
            y_label: "score".into(),
            series: f1,
            categories: None,
        },
    ]
}

/// The page of a run: a heading line, the scores table (`header`, `rows`, the ensemble /
/// out-of-fold rows marked) and each fold's charts.
pub fn run_page(
    title: &str,
    summary: &str,
    header: &[String],
    rows: &[Vec<String>],
    marked: &[usize],
    folds: &[FoldCurves],
) -> Result<String> {
    let mut body = format!(
        "<h1>{}</h1>\n<p>{}</p>\n<h2>Scores</h2>\n",
        escape(title),
        escape(summary)
    );
    body.push_str(&table(header, rows, marked));
    body.push_str("<h2>Learning curves</h2>\n<p class=\"muted\">Training loss per optimizer step (from the TensorBoard log), validation at every evaluation; the dot is the kept checkpoint.</p>\n");
    for f in folds {
        body.push_str(&format!("<h3>Fold {}</h3>\n<div>\n", f.fold));
        let [a, b] = fold_charts(f);
        body.push_str(&figure(&format!("fold-{}-loss", f.fold), &a, 520, 300)?);
        body.push_str(&figure(&format!("fold-{}-score", f.fold), &b, 520, 300)?);
        body.push_str("</div>\n");
    }
    Ok(page(title, &body))
}

/// One variant of a sweep in its chart.
#[derive(Debug, Clone)]
pub struct VariantScores {
    pub name: String,
    /// Pooled out-of-fold F1.
    pub oof_f1: Option<f64>,
    /// Each fold's best validation F1.
    pub fold_f1: Vec<f64>,
    /// The test ensemble's F1, where the test is labelled.
    pub test_f1: Option<f64>,
}

/// F1 per variant (in the given order): fold mean ± std as a bar, pooled out-of-fold F1, and
/// the test ensemble's where known.
pub fn sweep_chart(title: &str, vs: &[VariantScores]) -> Chart {
    let mut spread = Vec::new();
    let mut means = Vec::new();
    let mut oof = Vec::new();
    let mut test = Vec::new();
    for (i, v) in vs.iter().enumerate() {
        let x = i as f64;
        if !v.fold_f1.is_empty() {
            let n = v.fold_f1.len() as f64;
            let m = v.fold_f1.iter().sum::<f64>() / n;
            let sd = (v.fold_f1.iter().map(|f| (f - m).powi(2)).sum::<f64>() / n).sqrt();
            means.push((x, m));
            spread.push((m - sd, m + sd));
        }
        if let Some(f) = v.oof_f1 {
            oof.push((x, f));
        }
        if let Some(f) = v.test_f1 {
            test.push((x, f));
        }
    }
    let mut series = vec![Series {
        label: "fold F1, mean ± std".into(),
        points: means,
        mark: Mark::Spread(spread),
    }];
    series.push(Series::dots("out-of-fold F1", oof));
    if !test.is_empty() {
        series.push(Series::dots("test ensemble F1", test));
    }
    Chart {
        title: title.to_string(),
        x_label: "variant".into(),
        y_label: "F1".into(),
        series,
        categories: Some(vs.iter().map(|v| v.name.clone()).collect()),
    }
}

/// A titled table of a page.
pub struct Section {
    pub title: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// The page of a sweep: its comparison table (the best row marked), the chart, and more
/// tables.
pub fn sweep_page(
    title: &str,
    header: &[String],
    rows: &[Vec<String>],
    best: Option<usize>,
    chart: &Chart,
    more: &[Section],
) -> Result<String> {
    let mut body = format!("<h1>{}</h1>\n<h2>Comparison</h2>\n", escape(title));
    body.push_str("<div class=\"wide\">\n");
    body.push_str(&table(header, rows, &best.into_iter().collect::<Vec<_>>()));
    body.push_str("</div>\n");
    let rows = chart.categories.as_ref().map_or(1, Vec::len);
    body.push_str(&figure("sweep-f1", chart, 900, (110 + 40 * rows) as u32)?);
    for m in more {
        body.push_str(&format!("<h2>{}</h2>\n", escape(&m.title)));
        body.push_str(&table(&m.header, &m.rows, &[]));
    }
    Ok(page(title, &body))
}
