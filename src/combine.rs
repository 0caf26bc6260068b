//! Ensembles across runs (`pipeline ensemble --runs A,B,...`): the fold logits of several
//! finished runs of the same prepared windows (a sweep's variants: other heads, losses,
//! learning rates), combined by mean, by weights from each run's out-of-fold score, or by a
//! vote on the decoded answers.
//!
//! Each run's test logits are the mean of its folds' (`predict/fold-K/test_logits`); its
//! out-of-fold logits come from the fold that held each window out. The runs must have the
//! same `prepare` outputs (the windows and examples, by content hash) and the same test
//! windows; their splits may differ otherwise.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::artifacts::{read_examples, read_logits, Features};
use crate::qa::decode::{decode_rows, DecodeConfig, Logits, NbestEntry};
use crate::qa::examples::Example;
use crate::qa::metrics::{self, Metric, Score};
use crate::qa::vote::{add_ballot, hard_vote};
use crate::run::{names, Manifest, RunLayout};
use crate::settings::EnsembleMethod;

/// What a cross-run ensemble gives.
#[derive(Debug, Serialize)]
pub struct Combined {
    pub runs: Vec<PathBuf>,
    pub method: EnsembleMethod,
    pub weights: Vec<f64>,
    /// Pooled out-of-fold score over the windows every run held out.
    pub oof: Score,
    /// The labelled test questions' score (`None` without answers).
    pub test: Option<Score>,
    #[serde(skip)]
    pub predictions: BTreeMap<String, String>,
    #[serde(skip)]
    pub nbest: BTreeMap<String, Vec<NbestEntry>>,
    #[serde(skip)]
    pub oof_predictions: BTreeMap<String, String>,
}

/// Test logits with their feature rows.
type RowsLogits = (Logits, Vec<i64>);
/// Out-of-fold start and end logits by feature row.
type OofLogits = HashMap<i64, (Vec<f32>, Vec<f32>)>;

/// The folds of a run: its `predict/fold-K` folders.
fn folds(at: &RunLayout) -> usize {
    (0..).take_while(|&k| at.test_logits(k).exists()).count()
}

/// A run's test logits (its folds' mean) with their feature rows, and its out-of-fold logits
/// by feature row.
fn run_logits(at: &RunLayout, seq: usize) -> Result<(RowsLogits, OofLogits)> {
    let k = folds(at);
    if k == 0 {
        bail!(
            "{}: no predicted folds (run `pipeline run all` there first)",
            at.stage(names::PREDICT).display()
        );
    }
    let mut test: Option<RowsLogits> = None;
    let mut oof = HashMap::new();
    for fold in 0..k {
        let (lg, _, fi) = read_logits(&at.test_logits(fold))?;
        let w = 1.0 / k as f32;
        match &mut test {
            None => {
                let mut lg = lg;
                lg.start
                    .iter_mut()
                    .chain(lg.end.iter_mut())
                    .for_each(|v| *v *= w);
                test = Some((lg, fi));
            }
            Some((acc, rows)) => {
                if *rows != fi {
                    bail!(
                        "{}: fold {fold}'s test windows differ from fold 0's",
                        at.stage(names::PREDICT).display()
                    );
                }
                for (a, v) in acc
                    .start
                    .iter_mut()
                    .zip(&lg.start)
                    .chain(acc.end.iter_mut().zip(&lg.end))
                {
                    *a += w * v;
                }
            }
        }
        let (lg, _, fi) = read_logits(&at.oof_logits(fold))?;
        for (i, r) in fi.iter().enumerate() {
            let span = i * seq..(i + 1) * seq;
            oof.insert(*r, (lg.start[span.clone()].to_vec(), lg.end[span].to_vec()));
        }
    }
    Ok((
        test.unwrap_or((
            Logits {
                seq,
                start: vec![],
                end: vec![],
            },
            vec![],
        )),
        oof,
    ))
}

/// The content hash of a prepared file of run `at`, from its prepare manifest.
fn prepared(at: &RunLayout, name: &str) -> Result<String> {
    let dir = at.stage(names::PREPARE);
    let m = Manifest::read(&dir)?.with_context(|| format!("{}: not prepared", dir.display()))?;
    m.outputs
        .get(name)
        .map(|r| r.blake3.clone())
        .with_context(|| format!("{}: the manifest lists no {name}", dir.display()))
}

/// A run's pooled out-of-fold F1 from its `evaluate` stage.
fn oof_f1(at: &RunLayout) -> Result<f64> {
    let dir = at.stage(names::EVALUATE);
    let m = Manifest::read(&dir)?.with_context(|| {
        format!(
            "{}: not evaluated (the weighted method needs each run's out-of-fold F1)",
            dir.display()
        )
    })?;
    Ok(m.summary["oof"]["f1"].as_f64().unwrap_or(0.0))
}

/// Combines the runs in `runs` (run folders) by `method`.
pub fn combine(
    runs: &[PathBuf],
    method: EnsembleMethod,
    decode: &DecodeConfig,
    metric: Metric,
) -> Result<Combined> {
    if runs.is_empty() {
        bail!("no runs to ensemble");
    }
    let layouts: Vec<RunLayout> = runs.iter().map(|r| RunLayout::new(r)).collect();
    for name in [names::FEATURES, names::EXAMPLES] {
        let first = prepared(&layouts[0], name)?;
        for (at, run) in layouts.iter().zip(runs).skip(1) {
            if prepared(at, name)? != first {
                bail!(
                    "runs {} and {} were prepared differently ({name} differs): a cross-run ensemble needs the same windows",
                    runs[0].display(),
                    run.display()
                );
            }
        }
    }
    let feats = Features::load(&layouts[0].features())?;
    let (examples, _) = read_examples(&layouts[0].examples())?;
    let seq = feats.max_seq_length;
    let all: Vec<_> = layouts
        .iter()
        .map(|at| run_logits(at, seq))
        .collect::<Result<_>>()?;
    for (i, ((_, rows), _)) in all.iter().enumerate().skip(1) {
        if *rows != all[0].0 .1 {
            bail!(
                "runs {} and {} hold out different test windows: a cross-run ensemble needs the same test set",
                runs[0].display(),
                runs[i].display()
            );
        }
    }
    let weights: Vec<f64> = match method {
        EnsembleMethod::Weighted => {
            let raw: Vec<f64> = layouts
                .iter()
                .map(|at| oof_f1(at).map(|f| f.max(1e-9)))
                .collect::<Result<_>>()?;
            let sum: f64 = raw.iter().sum();
            raw.iter().map(|v| v / sum).collect()
        }
        _ => vec![1.0 / runs.len() as f64; runs.len()],
    };
    let test_rows = all[0].0 .1.clone();
    let (re, ro) = feats.decode_meta(&test_rows);
    let (predictions, nbest) = if method == EnsembleMethod::HardVote {
        let mut answers: BTreeMap<String, Vec<(String, f32)>> = BTreeMap::new();
        for ((lg, _), _) in &all {
            let (_, nb) = decode_rows(&examples, &re, &ro, lg, decode);
            add_ballot(&mut answers, nb);
        }
        let preds = answers
            .into_iter()
            .map(|(id, a)| {
                (
                    id,
                    hard_vote(&a)
                        .first()
                        .map(|v| v.text.clone())
                        .unwrap_or_default(),
                )
            })
            .collect();
        (preds, BTreeMap::new())
    } else {
        let mut mean = Logits::filled(test_rows.len(), seq, 0.0);
        for (((lg, _), _), w) in all.iter().zip(&weights) {
            let w = *w as f32;
            for (a, v) in mean
                .start
                .iter_mut()
                .zip(&lg.start)
                .chain(mean.end.iter_mut().zip(&lg.end))
            {
                *a += w * v;
            }
        }
        decode_rows(&examples, &re, &ro, &mean, decode)
    };
    // Out-of-fold: the windows every run held out, averaged with the same weights.
    let mut oof_rows: Vec<i64> = all[0]
        .1
        .keys()
        .copied()
        .filter(|r| all.iter().all(|(_, o)| o.contains_key(r)))
        .collect();
    oof_rows.sort_unstable();
    let mut oof = Logits::filled(oof_rows.len(), seq, 0.0);
    for (i, r) in oof_rows.iter().enumerate() {
        for ((_, o), w) in all.iter().zip(&weights) {
            let (s, e) = &o[r];
            for j in 0..seq {
                oof.start[i * seq + j] += *w as f32 * s[j];
                oof.end[i * seq + j] += *w as f32 * e[j];
            }
        }
    }
    let (re, ro) = feats.decode_meta(&oof_rows);
    let (oof_predictions, _) = decode_rows(&examples, &re, &ro, &oof, decode);
    let score_of = |preds: &BTreeMap<String, String>| -> Option<Score> {
        let golds: Vec<&Example> = examples
            .iter()
            .filter(|e| preds.contains_key(&e.id) && !e.answers.is_empty())
            .collect();
        if golds.is_empty() {
            return None;
        }
        let answers: Vec<(String, Vec<String>)> = golds
            .iter()
            .map(|e| {
                (
                    e.id.clone(),
                    e.answers.iter().map(|a| a.text.clone()).collect(),
                )
            })
            .collect();
        let p: HashMap<String, String> =
            preds.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        Some(
            metrics::score(
                metric,
                answers.iter().map(|(id, a)| (id.as_str(), a.as_slice())),
                &p,
            )
            .0,
        )
    };
    Ok(Combined {
        runs: runs.to_vec(),
        method,
        weights,
        oof: score_of(&oof_predictions).unwrap_or_default(),
        test: score_of(&predictions),
        predictions,
        nbest,
        oof_predictions,
    })
}

/// Writes a combination into `out`: `predictions.json`, `nbest_predictions.json` (not for a
/// vote), `oof_predictions.json` and `scores.json`.
pub fn write(c: &Combined, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    crate::run::write_json_atomic(&out.join(names::PREDICTIONS), &c.predictions)?;
    if !c.nbest.is_empty() {
        crate::run::write_json_atomic(&out.join(names::NBEST_PREDICTIONS), &c.nbest)?;
    }
    crate::run::write_json_atomic(&out.join(names::OOF_PREDICTIONS), &c.oof_predictions)?;
    crate::run::write_json_atomic(&out.join(SCORES), c)
}

pub const SCORES: &str = "scores.json";
