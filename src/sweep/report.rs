//! The sweep's comparison: one row per variant, ranked, and the top-k cross-run ensembles.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Result;

use super::{SweepArgs, Variant};
use crate::artifacts::{fold_summaries, read_summary, RunMetrics, TrainSummary};
use crate::run::{self, names};
use crate::settings::{KeepBestBy, Settings};

pub const COMPARISON_CSV: &str = "comparison.csv";
pub const COMPARISON_MD: &str = "comparison.md";

/// The comparison in three formats.
pub struct Table {
    pub csv: String,
    pub markdown: String,
    /// The table's cells (the best row first, marked in its last cell).
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// The F1 of each variant with results, best first, for the chart.
    pub scores: Vec<crate::report::VariantScores>,
    /// The best variant with results.
    pub best: Option<String>,
    /// The run folders of the variants with results, best first.
    pub ranked_runs: Vec<PathBuf>,
}

/// One variant's numbers (`None` until it has them).
struct Row<'a> {
    variant: &'a Variant,
    metrics: Option<RunMetrics>,
    /// The folds trained so far.
    folds: Vec<TrainSummary>,
}

fn mean_std(xs: &[f64]) -> Option<(f64, f64)> {
    if xs.is_empty() {
        return None;
    }
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    Some((
        m,
        (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n).sqrt(),
    ))
}

impl Row<'_> {
    /// The folds' best validation value of `by` (the loss as a loss).
    fn fold_best(&self, by: KeepBestBy) -> Vec<f64> {
        self.folds.iter().map(|f| f.best.metric(by)).collect()
    }

    /// The value `keep_best_by` ranks by, larger is better: out-of-fold EM or F1, else the
    /// folds' mean.
    fn rank(&self, by: KeepBestBy) -> Option<f64> {
        let m = self.metrics.as_ref()?;
        match by {
            KeepBestBy::F1 => Some(m.oof.f1),
            KeepBestBy::Em => Some(m.oof.exact_match),
            KeepBestBy::Loss => mean_std(&self.fold_best(by)).map(|(m, _)| -m),
            KeepBestBy::StartAcc | KeepBestBy::EndAcc => {
                mean_std(&self.fold_best(by)).map(|(m, _)| m)
            }
        }
    }

    /// The table's cells after the variant's values.
    fn cells(&self) -> Vec<String> {
        let f = |x: Option<f64>| x.map_or(String::new(), |x| format!("{x:.2}"));
        let Some(m) = &self.metrics else {
            return vec![String::new(); 12];
        };
        let f1 = self.fold_best(KeepBestBy::F1);
        let (mean, std) = mean_std(&f1).unzip();
        let best = f1
            .iter()
            .copied()
            .fold(None, |a: Option<f64>, x| Some(a.map_or(x, |a| a.max(x))));
        let secs: f64 = self.folds.iter().map(|f| f.train_seconds).sum();
        let wps = mean_std(
            &self
                .folds
                .iter()
                .map(|f| f.windows_per_second)
                .collect::<Vec<_>>(),
        )
        .map(|(m, _)| m);
        let mean_of = |by| mean_std(&self.fold_best(by)).map(|x| x.0);
        let test = m.test.as_ref().map(|t| &t.ensemble);
        vec![
            f(Some(m.oof.exact_match)),
            f(Some(m.oof.f1)),
            f(mean_of(KeepBestBy::StartAcc)),
            f(mean_of(KeepBestBy::EndAcc)),
            f(test.map(|t| t.exact_match)),
            f(test.map(|t| t.f1)),
            f(mean),
            f(std),
            f(best),
            mean_of(KeepBestBy::Loss).map_or(String::new(), |x| format!("{x:.4}")),
            format!("{secs:.1}"),
            f(wps),
        ]
    }
}

/// The comparison of the variants' finished runs, best first by `train.keep_best_by`.
pub fn comparison(args: &SweepArgs, base: &Settings, vs: &[Variant]) -> Result<Table> {
    let mut keys: Vec<String> = Vec::new();
    for v in vs {
        for (k, _) in &v.values {
            if !keys.contains(k) {
                keys.push(k.clone());
            }
        }
    }
    let mut rows = variant_rows(args, base, vs)?;
    let by = rows.first().map_or(KeepBestBy::F1, |r| r.1);
    rows.sort_by(|a, b| {
        let (x, y) = (a.0.rank(by), b.0.rank(by));
        y.unwrap_or(f64::NEG_INFINITY)
            .total_cmp(&x.unwrap_or(f64::NEG_INFINITY))
    });
    let header = table_header(&keys);
    let mut csv = header.join(",") + "\n";
    let mut md = format!(
        "# sweep \"{}\", ranked by {:?} (out-of-fold where it applies)\n\n| {} |\n|{}\n",
        args.name(),
        by,
        header.join(" | "),
        " --- |".repeat(header.len())
    );
    let mut cells_of_rows = Vec::new();
    for (i, (row, _)) in rows.iter().enumerate() {
        let cells = row_cells(row, &keys, i == 0);
        csv.push_str(&(csv_line(&cells) + "\n"));
        md.push_str(&format!("| {} |\n", cells.join(" | ")));
        cells_of_rows.push(cells);
    }
    let scores = rows
        .iter()
        .filter_map(|(r, _)| {
            let m = r.metrics.as_ref()?;
            Some(crate::report::VariantScores {
                name: r.variant.name.clone(),
                oof_f1: Some(m.oof.f1),
                fold_f1: r.fold_best(KeepBestBy::F1),
                test_f1: m.test.as_ref().map(|t| t.ensemble.f1),
            })
        })
        .collect();
    let ranked_runs = rows
        .iter()
        .filter(|(r, _)| r.metrics.is_some())
        .map(|(r, _)| args.settings(base, r.variant).map(|s| s.run_dir()))
        .collect::<Result<Vec<_>>>()?;
    let best = rows
        .first()
        .filter(|(r, _)| r.metrics.is_some())
        .map(|(r, _)| r.variant.name.clone());
    Ok(Table {
        csv,
        markdown: md,
        header,
        rows: cells_of_rows,
        scores,
        best,
        ranked_runs,
    })
}

/// Each variant's row (what its run has recorded so far) and its `keep_best_by`.
fn variant_rows<'a>(
    args: &SweepArgs,
    base: &Settings,
    vs: &'a [Variant],
) -> Result<Vec<(Row<'a>, KeepBestBy)>> {
    let mut rows = Vec::new();
    for v in vs {
        let s = args.settings(base, v)?;
        let at = run::RunLayout::new(&s.run_dir());
        let metrics = read_summary(&at.stage(names::EVALUATE))?;
        let folds = fold_summaries(&at, s.split.folds)?
            .into_iter()
            .flatten()
            .collect();
        rows.push((
            Row {
                variant: v,
                metrics,
                folds,
            },
            s.train.keep_best_by,
        ));
    }
    Ok(rows)
}

/// The comparison's columns: the variant, its swept keys, the numbers, the best mark.
fn table_header(keys: &[String]) -> Vec<String> {
    ["variant".to_string()]
        .into_iter()
        .chain(keys.iter().cloned())
        .chain(
            [
                "oof_em",
                "oof_f1",
                "val_start_acc",
                "val_end_acc",
                "test_em",
                "test_f1",
                "fold_f1_mean",
                "fold_f1_std",
                "fold_f1_best",
                "val_loss",
                "train_seconds",
                "windows_per_second",
                "best",
            ]
            .map(String::from),
        )
        .collect()
}

/// A row's cells: the variant's name and values for `keys`, its numbers, `*` when `first`
/// (the best) and it has results.
fn row_cells(row: &Row, keys: &[String], first: bool) -> Vec<String> {
    let values: BTreeMap<&str, &str> = row
        .variant
        .values
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let best = first && row.metrics.is_some();
    [row.variant.name.clone()]
        .into_iter()
        .chain(
            keys.iter()
                .map(|k| values.get(k.as_str()).unwrap_or(&"").to_string()),
        )
        .chain(row.cells())
        .chain([if best { "*".to_string() } else { String::new() }])
        .collect()
}

/// Cells as one CSV line (quoted where they hold a comma or a quote).
fn csv_line(cells: &[String]) -> String {
    let quoted: Vec<String> = cells
        .iter()
        .map(|c| {
            if c.contains([',', '"']) {
                format!("\"{}\"", c.replace('"', "\"\""))
            } else {
                c.clone()
            }
        })
        .collect();
    quoted.join(",")
}

/// "Top-k variants ensembled" for k = 1..min(5, variants): the best k runs (in ranking order)
/// combined by mean ([`crate::combine`]).
pub struct TopK {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
    /// Why the list stops early, if it does.
    pub note: Option<String>,
}

impl TopK {
    pub const TITLE: &str = "Top-k variants ensembled (mean of their fold logits)";

    pub fn markdown(&self) -> String {
        let mut md = format!(
            "\n## {}\n\n| {} |\n|{}\n",
            Self::TITLE,
            self.header.join(" | "),
            " --- |".repeat(self.header.len())
        );
        for r in &self.rows {
            md.push_str(&format!("| {} |\n", r.join(" | ")));
        }
        if let Some(n) = &self.note {
            md.push_str(&format!("\n(no cross-run ensemble: {n})\n"));
        }
        md
    }
}

/// Combines the top k of `ranked` for each k.
pub fn top_k_ensembles(base: &Settings, ranked: &[PathBuf]) -> TopK {
    let mut top = TopK {
        header: ["k", "oof_em", "oof_f1", "test_em", "test_f1"]
            .map(String::from)
            .to_vec(),
        rows: Vec::new(),
        note: None,
    };
    for k in 1..=ranked.len().min(5) {
        let c = crate::combine::combine(
            &ranked[..k],
            crate::settings::EnsembleMethod::Mean,
            &base.decode,
            base.evaluate.metric,
        );
        match c {
            Ok(c) => {
                let (tem, tf1) = c.test.as_ref().map_or((String::new(), String::new()), |t| {
                    (format!("{:.2}", t.exact_match), format!("{:.2}", t.f1))
                });
                top.rows.push(vec![
                    k.to_string(),
                    format!("{:.2}", c.oof.exact_match),
                    format!("{:.2}", c.oof.f1),
                    tem,
                    tf1,
                ]);
            }
            Err(e) => {
                top.note = Some(run::one_line(&e));
                break;
            }
        }
    }
    top
}
