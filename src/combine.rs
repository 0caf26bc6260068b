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

use crate::artifacts::{
    mean_test_logits, read_examples, read_logits, read_summary, Features, RunMetrics,
};
use crate::qa::decode::{decode_rows, DecodeConfig, Logits, NbestEntry};
use crate::qa::ensemble::{equal_weights, hard_vote, weights_from_scores, WeightedMean};
use crate::qa::examples::Example;
use crate::qa::metrics::{self, Metric, Score};
use crate::qa::vote::Vote;
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
    /// A vote's tallies per question (`hard_vote` only).
    #[serde(skip)]
    pub votes: Option<BTreeMap<String, Vec<Vote>>>,
    #[serde(skip)]
    pub oof_predictions: BTreeMap<String, String>,
}

/// Answers, n-best lists and (for a vote) the tallies.
type Decoded = (
    BTreeMap<String, String>,
    BTreeMap<String, Vec<NbestEntry>>,
    Option<BTreeMap<String, Vec<Vote>>>,
);

/// Test logits with their feature rows.
type RowsLogits = (Logits, Vec<i64>);
/// Out-of-fold start and end logits by feature row.
type OofLogits = HashMap<i64, (Vec<f32>, Vec<f32>)>;

/// The number of folds of run `at`, once every fold of its split is predicted: `predict` done
/// (its manifest written, its outputs intact) with the run's current folds. A run with a fold
/// missing, unfinished (a sweep variant still training, a `run all --fold K` run) or predicted
/// with another split is refused, naming the run and the fold.
fn predicted_folds(at: &RunLayout) -> Result<usize> {
    let run = at.root().display();
    let split = at.stage(names::SPLIT);
    let m = Manifest::read(&split)?.with_context(|| {
        format!(
            "run {run}: not split (no {}): run `pipeline run all` there first",
            split.join(crate::run::MANIFEST).display()
        )
    })?;
    let k = m.summary["folds"]
        .as_array()
        .map(Vec::len)
        .filter(|&k| k > 0)
        .with_context(|| {
            format!(
                "run {run}: {} lists no folds",
                split.join(crate::run::MANIFEST).display()
            )
        })?;
    let folds = crate::run::FileRecord::of(&at.folds())?;
    for fold in 0..k {
        let dir = at.predicted(fold);
        let m = Manifest::read(&dir)?.with_context(|| {
            format!("run {run}: fold {fold} of its {k} folds is not predicted ({} has no manifest: missing or unfinished); every fold must be predicted before the run is ensembled", dir.display())
        })?;
        if let Some(why) = crate::run::changed_outputs(&dir, &m)? {
            bail!("run {run}: fold {fold}'s predictions are incomplete ({why}): rerun `pipeline run predict` there");
        }
        let same_split = m
            .inputs
            .iter()
            .any(|(key, rec)| key.ends_with(names::FOLDS) && *rec == folds);
        if !same_split {
            bail!("run {run}: fold {fold} was predicted with another split than the run's current one: rerun `pipeline run all` there");
        }
    }
    Ok(k)
}

/// A run's test logits (its folds' mean) with their feature rows, and its out-of-fold logits
/// by feature row.
fn run_logits(at: &RunLayout, seq: usize) -> Result<(RowsLogits, OofLogits)> {
    let k = predicted_folds(at)?;
    let test = mean_test_logits(at, &equal_weights(k))?
        .map(|(lg, _, fi)| (lg, fi))
        .unwrap_or((Logits::filled(0, seq, 0.0), vec![]));
    let mut oof = HashMap::new();
    for fold in 0..k {
        let (lg, _, fi) = read_logits(&at.oof_logits(fold))?;
        for (i, r) in fi.iter().enumerate() {
            let span = i * seq..(i + 1) * seq;
            oof.insert(*r, (lg.start[span.clone()].to_vec(), lg.end[span].to_vec()));
        }
    }
    Ok((test, oof))
}

/// The run folders `--runs` (or `[ensemble] runs`) names: a folder as given, else a run name
/// under `output_dir` (`run.name`), else a sweep variant's name under one of `output_dir`'s
/// sweep folders. A name found nowhere, or in two sweeps, is refused in one line.
pub fn resolve_runs(runs: &[PathBuf], output_dir: &Path) -> Result<Vec<PathBuf>> {
    runs.iter()
        .map(|r| {
            if r.is_dir() {
                return Ok(r.clone());
            }
            let named = output_dir.join(r);
            if r.is_relative() && named.is_dir() {
                return Ok(named);
            }
            let mut in_sweeps: Vec<PathBuf> = std::fs::read_dir(output_dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().join(r))
                .filter(|p| r.is_relative() && p.is_dir())
                .collect();
            in_sweeps.sort();
            match in_sweeps.len() {
                1 => Ok(in_sweeps.remove(0)),
                0 => bail!(
                    "--runs {}: no such run (neither a folder, nor a run or sweep variant under {})",
                    r.display(),
                    output_dir.display()
                ),
                _ => bail!(
                    "--runs {}: ambiguous, a variant of several sweeps ({}): give its folder",
                    r.display(),
                    in_sweeps
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        })
        .collect()
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
    let m: RunMetrics = read_summary(&dir)?.with_context(|| {
        format!(
            "{}: not evaluated (the weighted method needs each run's out-of-fold F1)",
            dir.display()
        )
    })?;
    Ok(m.oof.f1)
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
    check_same_prepared(runs, &layouts)?;
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
            weights_from_scores(&layouts.iter().map(oof_f1).collect::<Result<Vec<_>>>()?)
        }
        _ => equal_weights(runs.len()),
    };
    let test_rows = all[0].0 .1.clone();
    // Out-of-fold: the windows every run held out.
    let (oof_rows, oof_logits) = common_oof(&all, seq);
    let test_logits: Vec<&Logits> = all.iter().map(|((lg, _), _)| lg).collect();
    let oof_refs: Vec<&Logits> = oof_logits.iter().collect();
    let decode_by = |rows: &[i64], runs: &[&Logits]| -> Result<Decoded> {
        let (re, ro) = feats.decode_meta(rows);
        if method == EnsembleMethod::HardVote {
            // Every run decodes alone; one vote per run and question.
            let t = hard_vote(
                runs.iter()
                    .map(|lg| decode_rows(&examples, &re, &ro, lg, decode).1),
            );
            Ok((t.predictions, t.nbest, Some(t.votes)))
        } else {
            let mut mean = WeightedMean::new();
            for (lg, w) in runs.iter().zip(&weights) {
                mean.add(lg, *w)?;
            }
            let mean = mean
                .finish()
                .unwrap_or_else(|| Logits::filled(rows.len(), seq, 0.0));
            let (p, nb) = decode_rows(&examples, &re, &ro, &mean, decode);
            Ok((p, nb, None))
        }
    };
    let (predictions, nbest, votes) = decode_by(&test_rows, &test_logits)?;
    let (oof_predictions, _, _) = decode_by(&oof_rows, &oof_refs)?;
    let score_of = |preds: &BTreeMap<String, String>| score_answered(&examples, preds, metric);
    Ok(Combined {
        runs: runs.to_vec(),
        method,
        weights,
        oof: score_of(&oof_predictions).unwrap_or_default(),
        test: score_of(&predictions),
        predictions,
        nbest,
        votes,
        oof_predictions,
    })
}

/// Refuses runs whose prepared windows or examples differ from the first run's.
fn check_same_prepared(runs: &[PathBuf], layouts: &[RunLayout]) -> Result<()> {
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
    Ok(())
}

/// The out-of-fold windows every run held out (sorted feature rows) and each run's logits
/// on them, in that order.
fn common_oof(all: &[(RowsLogits, OofLogits)], seq: usize) -> (Vec<i64>, Vec<Logits>) {
    let mut oof_rows: Vec<i64> = all[0]
        .1
        .keys()
        .copied()
        .filter(|r| all.iter().all(|(_, o)| o.contains_key(r)))
        .collect();
    oof_rows.sort_unstable();
    let oof_logits: Vec<Logits> = all
        .iter()
        .map(|(_, o)| {
            let mut lg = Logits::filled(oof_rows.len(), seq, 0.0);
            for (i, r) in oof_rows.iter().enumerate() {
                let (s, e) = &o[r];
                lg.start[i * seq..(i + 1) * seq].copy_from_slice(s);
                lg.end[i * seq..(i + 1) * seq].copy_from_slice(e);
            }
            lg
        })
        .collect();
    (oof_rows, oof_logits)
}

/// The score of `preds` over the labelled examples they answer; `None` for none.
fn score_answered(
    examples: &[Example],
    preds: &BTreeMap<String, String>,
    metric: Metric,
) -> Option<Score> {
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
    let p: HashMap<String, String> = preds.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    Some(
        metrics::score(
            metric,
            answers.iter().map(|(id, a)| (id.as_str(), a.as_slice())),
            &p,
        )
        .0,
    )
}

/// Writes a combination into `out`: `predictions.json`, `nbest_predictions.json` (for a vote:
/// the tallies in n-best shape, probability = vote share), `votes.json` (a vote only),
/// `oof_predictions.json` and `scores.json`.
pub fn write(c: &Combined, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    crate::run::write_json_atomic(&out.join(names::PREDICTIONS), &c.predictions)?;
    crate::run::write_json_atomic(&out.join(names::NBEST_PREDICTIONS), &c.nbest)?;
    match &c.votes {
        Some(v) => crate::run::write_json_atomic(&out.join(names::VOTES), v)?,
        None => {
            // A mean's output folder holds no tallies of an earlier vote.
            let _ = std::fs::remove_file(out.join(names::VOTES));
        }
    }
    crate::run::write_json_atomic(&out.join(names::OOF_PREDICTIONS), &c.oof_predictions)?;
    crate::run::write_json_atomic(&out.join(SCORES), c)
}

pub const SCORES: &str = "scores.json";
