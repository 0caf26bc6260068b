//! `split`: assigns every example to one of K folds, or to the test split.
//!
//! Reads `prepare/examples.parquet`; writes `split/folds.parquet` (example_index, id, group,
//! fold; fold -1 = test). Strategies: `group` (no group in two folds, question counts balanced
//! greedily, largest group first, as scikit-learn's `GroupKFold`), `stratified` (context-length
//! quantile bins dealt round-robin), `random`. Test examples come from `data.test` or, with
//! `holdout_fraction`, from a seeded, group-disjoint hold-out. Everything is seeded.

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use polars::prelude::*;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use super::{hash_of, input, Ctx, Plan, Stage};
use crate::artifacts::{write_folds, SPLIT_TEST, TEST_FOLD};
use crate::run::{names, Manifest, StageWriter};
use crate::settings::{GroupBy, SplitSettings, SplitStrategy};

/// Up to date while `[split]` and the examples are.
pub fn plan(ctx: &Ctx) -> Result<Plan> {
    let hash = hash_of(&ctx.settings.split)?;
    Ok(Plan::once(
        ctx,
        Stage::Split,
        hash,
        vec![input(ctx.layout().examples())],
    ))
}

/// Runs the stage.
pub fn run(ctx: &Ctx, plan: Plan) -> Result<Manifest> {
    let s = &ctx.settings.split;
    let examples_path = plan
        .inputs
        .first()
        .map(|(_, p)| p.clone())
        .context("split has no input")?;
    let mut w = StageWriter::begin(plan.dir, names::SPLIT, plan.config_hash, &plan.inputs)?;
    let file = std::fs::File::open(&examples_path)
        .with_context(|| format!("opening {}", examples_path.display()))?;
    let df = ParquetReader::new(file).finish()?;
    let (group_col, groups) = group_keys(&df, s.group_by)?;
    let ids: Vec<String> = df
        .column("id")?
        .str()?
        .iter()
        .map(|v| v.unwrap_or_default().to_string())
        .collect();
    let is_test: Vec<bool> = df
        .column("source")?
        .str()?
        .iter()
        .map(|v| v == Some(SPLIT_TEST))
        .collect();
    let lengths: Vec<u32> = df
        .column("context_chars")?
        .u32()?
        .iter()
        .map(|v| v.unwrap_or(0))
        .collect();

    let folds = assign(s, &groups, &lengths, &is_test)?;
    write_folds(&w.path(names::FOLDS), &ids, &groups, &folds)?;
    w.record(names::FOLDS)?;
    let key = crate::artifacts::split_train_key(&examples_path, &w.path(names::FOLDS))?;
    w.write_json(names::TRAIN_KEY, &key)?;

    let summary = summarise(s, &group_col, &groups, &folds)?;
    ctx.ui.info(&format!(
        "split: {}",
        describe(&summary).unwrap_or_default().replace('\n', "; ")
    ));
    w.finish(summary)
}

/// Group key per example and the column it came from.
fn group_keys(df: &DataFrame, by: GroupBy) -> Result<(String, Vec<String>)> {
    let strs = |name: &str| -> Result<Vec<Option<String>>> {
        Ok(df
            .column(name)?
            .str()?
            .iter()
            .map(|v| v.filter(|s| !s.is_empty()).map(str::to_string))
            .collect())
    };
    let docs = strs("document_id")?;
    let titles = strs("title")?;
    let contexts = strs("context")?;
    let col = match by {
        GroupBy::Auto if docs.iter().all(Option::is_some) => "document_id",
        GroupBy::Auto if titles.iter().all(Option::is_some) => "title",
        GroupBy::Auto => "context",
        GroupBy::DocumentId => "document_id",
        GroupBy::Title => "title",
        GroupBy::Context => "context",
    };
    let chosen = match col {
        "document_id" => &docs,
        "title" => &titles,
        _ => &contexts,
    };
    if let Some(row) = chosen.iter().position(Option::is_none) {
        bail!(
            "split.group_by = {col:?} but example {row} has no {col}: use another split.group_by"
        );
    }
    Ok((
        col.to_string(),
        chosen
            .iter()
            .map(|v| v.clone().unwrap_or_default())
            .collect(),
    ))
}

/// Fold of every example (`TEST_FOLD` for test examples).
pub fn assign(
    s: &SplitSettings,
    groups: &[String],
    lengths: &[u32],
    is_test: &[bool],
) -> Result<Vec<i32>> {
    let n = groups.len();
    let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
    let mut folds = vec![0i32; n];
    let mut test = is_test.to_vec();

    // Group sizes, in first-seen order so the result does not depend on hash order.
    let mut order: Vec<&str> = Vec::new();
    let mut members: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, g) in groups.iter().enumerate() {
        if test[i] {
            continue;
        }
        members
            .entry(g.as_str())
            .or_insert_with(|| {
                order.push(g.as_str());
                Vec::new()
            })
            .push(i);
    }

    if s.holdout_fraction > 0.0 && !is_test.iter().any(|&t| t) {
        hold_out(
            s.holdout_fraction,
            &mut order,
            &members,
            &mut test,
            &mut rng,
        );
    }

    let train: Vec<usize> = (0..n).filter(|&i| !test[i]).collect();
    let k = s.folds;
    match s.strategy {
        SplitStrategy::Group => {
            if order.len() < k {
                bail!(
                    "split.strategy = \"group\" needs at least {k} groups for {k} folds, the data has {}: lower split.folds or use another strategy",
                    order.len()
                );
            }
            // Seeded shuffle, then a stable sort by size: equal-sized groups land in a seeded
            // order; the largest go first to the lightest fold (balanced question counts).
            let mut gs = order.clone();
            gs.shuffle(&mut rng);
            gs.sort_by_key(|g| std::cmp::Reverse(members[g].len()));
            let mut load = vec![0usize; k];
            for g in gs {
                let f = (0..k).min_by_key(|&f| (load[f], f)).unwrap_or(0);
                load[f] += members[g].len();
                for &i in &members[g] {
                    folds[i] = f as i32;
                }
            }
        }
        SplitStrategy::Stratified => {
            let mut sorted = train.clone();
            sorted.sort_by_key(|&i| (lengths[i], i));
            let bins = s.length_bins.max(1);
            let per_bin = sorted.len().div_ceil(bins).max(1);
            let mut next = 0usize;
            for chunk in sorted.chunks(per_bin) {
                let mut chunk = chunk.to_vec();
                chunk.shuffle(&mut rng);
                for i in chunk {
                    folds[i] = (next % k) as i32;
                    next += 1;
                }
            }
        }
        SplitStrategy::Random => {
            let mut shuffled = train.clone();
            shuffled.shuffle(&mut rng);
            for (j, i) in shuffled.into_iter().enumerate() {
                folds[i] = (j % k) as i32;
            }
        }
    }
    if train.len() < k {
        bail!("{} training examples cannot fill {k} folds", train.len());
    }
    for i in 0..n {
        if test[i] {
            folds[i] = TEST_FOLD;
        }
    }
    Ok(folds)
}

/// Moves whole groups, in a seeded order, into the test split until it holds about
/// `fraction` of the examples (`test` marks them; `order` loses the held-out groups).
fn hold_out(
    fraction: f64,
    order: &mut Vec<&str>,
    members: &HashMap<&str, Vec<usize>>,
    test: &mut [bool],
    rng: &mut ChaCha8Rng,
) {
    let n = test.len();
    let mut shuffled = order.clone();
    shuffled.shuffle(rng);
    let target = (fraction * n as f64).round() as usize;
    let mut taken = 0;
    let mut held = std::collections::HashSet::new();
    for g in shuffled {
        if taken >= target {
            break;
        }
        taken += members[g].len();
        held.insert(g);
        for &i in &members[g] {
            test[i] = true;
        }
    }
    order.retain(|g| !held.contains(g));
}

/// Fold sizes with polars: questions and groups per fold.
fn summarise(
    s: &SplitSettings,
    group_col: &str,
    groups: &[String],
    folds: &[i32],
) -> Result<serde_json::Value> {
    let df = df!("group" => groups, "fold" => folds)?;
    let sizes = df
        .lazy()
        .group_by([col("fold")])
        .agg([
            len().alias("questions"),
            col("group").n_unique().alias("groups"),
        ])
        .sort(["fold"], Default::default())
        .collect()?;
    let fold_col = sizes.column("fold")?.i32()?.clone();
    let q = sizes.column("questions")?.cast(&DataType::UInt64)?;
    let g = sizes.column("groups")?.cast(&DataType::UInt64)?;
    let (q, g) = (q.u64()?, g.u64()?);
    let mut per_fold = Vec::new();
    let mut test = json!({"questions": 0, "groups": 0});
    for i in 0..sizes.height() {
        let entry = json!({
            "fold": fold_col.get(i),
            "questions": q.get(i),
            "groups": g.get(i),
        });
        if fold_col.get(i) == Some(TEST_FOLD) {
            test = json!({"questions": q.get(i), "groups": g.get(i)});
        } else {
            per_fold.push(entry);
        }
    }
    Ok(json!({
        "strategy": s.strategy,
        "group_by": group_col,
        "folds": per_fold,
        "test": test,
    }))
}

/// Lines for `pipeline status`.
pub fn describe(summary: &serde_json::Value) -> Option<String> {
    let folds = summary["folds"].as_array()?;
    let sizes: Vec<String> = folds
        .iter()
        .map(|f| format!("{}:{}", f["fold"], f["questions"]))
        .collect();
    Some(format!(
        "{} folds ({} by {}), questions per fold [{}]\ntest split: {} questions in {} groups",
        folds.len(),
        summary["strategy"].as_str().unwrap_or("?"),
        summary["group_by"].as_str().unwrap_or("?"),
        sizes.join(" "),
        summary["test"]["questions"],
        summary["test"]["groups"]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(strategy: SplitStrategy, holdout: f64) -> SplitSettings {
        SplitSettings {
            strategy,
            folds: 4,
            seed: 7,
            holdout_fraction: holdout,
            ..Default::default()
        }
    }

    fn data() -> (Vec<String>, Vec<u32>) {
        // 40 groups of 1..=6 questions.
        let mut groups = Vec::new();
        let mut lengths = Vec::new();
        for g in 0..40 {
            for q in 0..(1 + g % 6) {
                groups.push(format!("doc{g}"));
                lengths.push((g * 37 % 500 + q) as u32);
            }
        }
        (groups, lengths)
    }

    #[test]
    fn group_folds_never_share_a_group_and_are_balanced() {
        let (groups, lengths) = data();
        let test = vec![false; groups.len()];
        let folds = assign(
            &settings(SplitStrategy::Group, 0.0),
            &groups,
            &lengths,
            &test,
        )
        .unwrap();
        let mut fold_of: HashMap<&str, i32> = HashMap::new();
        for (g, f) in groups.iter().zip(&folds) {
            assert_eq!(
                *fold_of.entry(g).or_insert(*f),
                *f,
                "group {g} in two folds"
            );
        }
        let mut sizes = [0usize; 4];
        for f in &folds {
            sizes[*f as usize] += 1;
        }
        let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
        assert!(hi - lo <= 6, "unbalanced {sizes:?}");
        // Deterministic for a seed.
        assert_eq!(
            folds,
            assign(
                &settings(SplitStrategy::Group, 0.0),
                &groups,
                &lengths,
                &test
            )
            .unwrap()
        );
    }

    #[test]
    fn holdout_is_group_disjoint_and_near_the_fraction() {
        let (groups, lengths) = data();
        let test = vec![false; groups.len()];
        let folds = assign(
            &settings(SplitStrategy::Group, 0.2),
            &groups,
            &lengths,
            &test,
        )
        .unwrap();
        let held: Vec<usize> = (0..groups.len())
            .filter(|&i| folds[i] == TEST_FOLD)
            .collect();
        let frac = held.len() as f64 / groups.len() as f64;
        assert!((0.18..0.3).contains(&frac), "{frac}");
        for &i in &held {
            for j in 0..groups.len() {
                if groups[j] == groups[i] {
                    assert_eq!(folds[j], TEST_FOLD);
                }
            }
        }
    }

    #[test]
    fn stratified_and_random_balance_counts_and_respect_given_test_rows() {
        let (groups, lengths) = data();
        let mut test = vec![false; groups.len()];
        test[0] = true;
        for strategy in [SplitStrategy::Stratified, SplitStrategy::Random] {
            let folds = assign(&settings(strategy, 0.0), &groups, &lengths, &test).unwrap();
            assert_eq!(folds[0], TEST_FOLD);
            let mut sizes = [0usize; 4];
            for f in folds.iter().filter(|f| **f >= 0) {
                sizes[*f as usize] += 1;
            }
            assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
        }
    }

    #[test]
    fn too_few_groups_is_a_clear_error() {
        let groups: Vec<String> = vec!["a".into(), "a".into(), "b".into()];
        let err = assign(
            &settings(SplitStrategy::Group, 0.0),
            &groups,
            &[1, 2, 3],
            &[false; 3],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("at least 4 groups"), "{err}");
    }
}
