//! `prepare`: data files -> validated examples, a tokenizer, and labelled token windows.
//!
//! Reads `data.train` (and `data.test`), and `prepare.tokenizer` when given. Writes into
//! `prepare/`: `examples.parquet`, `features.safetensors`, `tokenizer/tokenizer.json` (+
//! `tokenizer_config.json`), then the manifest with load, repair and window counts.

use anyhow::{bail, Result};
use serde_json::json;

use super::{files_of, Ctx, Plan, Stage};
use crate::artifacts::{self, Features, SPLIT_TEST, SPLIT_TRAIN};
use crate::qa::examples::{self, Example};
use crate::qa::windows::{build_windows, QaTokenizer, Window};
use crate::run::{self, names, Manifest, StageWriter};
use crate::settings::Overflow;

/// Up to date while the `[data]` and `[prepare]` sections, the data files and the tokenizer
/// files are.
pub fn plan(ctx: &Ctx) -> Result<Plan> {
    let s = &ctx.settings;
    let tokenizer = s.tokenizer_source();
    let hash = run::config_hash(&(&s.data, &s.prepare, &tokenizer))?;
    let mut inputs = Vec::new();
    let mut add = |role: &str, path: &std::path::Path| {
        for f in files_of(path) {
            inputs.push((format!("{role}:{}", f.display()), f));
        }
    };
    add("train", &s.data.train);
    if let Some(test) = &s.data.test {
        add("test", test);
    }
    if let Some(tok) = &tokenizer {
        if tok.is_dir() {
            for name in [
                crate::qa::windows::TOKENIZER_FILE,
                crate::qa::windows::TOKENIZER_CONFIG_FILE,
            ] {
                if tok.join(name).exists() {
                    add("tokenizer", &tok.join(name));
                }
            }
        } else {
            add("tokenizer", tok);
        }
    }
    Ok(Plan::once(ctx, Stage::Prepare, hash, inputs))
}

/// Runs the stage.
pub fn run(ctx: &Ctx, plan: Plan) -> Result<Manifest> {
    let s = &ctx.settings;
    let p = &s.prepare;
    let mut w = StageWriter::begin(plan.dir, names::PREPARE, plan.config_hash, &plan.inputs)?;

    let t0 = std::time::Instant::now();
    let Loaded {
        all,
        n_train,
        train_report,
        test_report,
    } = load_examples(ctx)?;
    let load_s = t0.elapsed().as_secs_f64();

    let t1 = std::time::Instant::now();
    let (tok, trained) = tokenizer(ctx, &all[..n_train])?;
    if let Some(dir) = &s.model.pretrained {
        let cfg = crate::model::config::EncoderConfig::load(&dir.join(crate::model::CONFIG_FILE))?;
        cfg.check_fits_inputs(tok.vocab_size(), p.max_seq_length, dir)?;
    }
    let tok_dir = w.dir.join(names::TOKENIZER);
    for path in tok.save(&tok_dir)? {
        if let Ok(rel) = path.strip_prefix(&w.dir) {
            w.record(&rel.to_string_lossy())?;
        }
    }
    let tokenizer_s = t1.elapsed().as_secs_f64();

    let t2 = std::time::Instant::now();
    let bar = ctx.ui.bar(all.len() as u64, "prepare: tokenising");
    let windows = build_windows(&tok, &all, p.max_seq_length, p.doc_stride, &|n| bar.inc(n))?;
    bar.finish_and_clear();
    let (train_window, dropped_overflow) = train_flags(&windows, &all, n_train, p.overflow);
    let features = Features::from_windows(&windows, p.max_seq_length, train_window);
    let windows_s = t2.elapsed().as_secs_f64();

    let mut sources = vec![SPLIT_TRAIN; n_train];
    sources.resize(all.len(), SPLIT_TEST);
    artifacts::write_examples(&w.path(names::EXAMPLES), &all, &sources)?;
    w.record(names::EXAMPLES)?;
    features.save(&w.path(names::FEATURES))?;
    w.record(names::FEATURES)?;
    let key = artifacts::prepared_train_key(
        &w.path(names::EXAMPLES),
        &w.path(names::FEATURES),
        &tok_dir.join(crate::qa::windows::TOKENIZER_FILE),
    )?;
    w.write_json(names::TRAIN_KEY, &key)?;

    let max_windows = windows
        .iter()
        .map(|x| x.window_index + 1)
        .max()
        .unwrap_or(0);
    let labelled = windows.iter().filter(|x| x.has_answer()).count();
    if p.overflow == Overflow::Drop && dropped_overflow > 0 {
        ctx.ui.info(&format!(
            "prepare: overflow = \"drop\": {dropped_overflow} training examples have their answer beyond the first window and will not train"
        ));
    }
    ctx.ui.info(&format!(
        "prepare: {} examples ({} train, {} test) -> {} windows (max {} per example), {} labelled with an answer",
        all.len(),
        n_train,
        all.len() - n_train,
        windows.len(),
        max_windows,
        labelled
    ));
    w.finish(json!({
        "train": train_report,
        "test": test_report,
        "examples": all.len(),
        "train_examples": n_train,
        "test_examples": all.len() - n_train,
        "windows": windows.len(),
        "train_windows": features.train_window.iter().filter(|&&x| x == 1).count(),
        "windows_with_answer": labelled,
        "max_windows_per_example": max_windows,
        "overflow_dropped_examples": dropped_overflow,
        "tokenizer": { "trained": trained, "vocab_size": tok.vocab_size() },
        "max_seq_length": p.max_seq_length,
        "doc_stride": p.doc_stride,
        "seconds": { "load": load_s, "tokenizer": tokenizer_s, "windows": windows_s },
    }))
}

/// The training and test examples, validated (test after train), with their reports.
struct Loaded {
    all: Vec<Example>,
    n_train: usize,
    train_report: examples::LoadReport,
    test_report: Option<examples::LoadReport>,
}

/// Reads `data.train` and `data.test` (cut to `max_*_samples`), checks ids are unique and
/// that training examples are left, and tells what validation dropped or repaired.
fn load_examples(ctx: &Ctx) -> Result<Loaded> {
    let s = &ctx.settings;
    let p = &s.prepare;
    let (mut all, train_report) =
        examples::load(&s.data.train, s.data.format, true, p.repair_window)?;
    if let Some(n) = s.data.max_train_samples {
        all.truncate(n);
    }
    let n_train = all.len();
    let test_report = match &s.data.test {
        Some(test) => {
            let (mut ex, rep) = examples::load(test, s.data.format, false, p.repair_window)?;
            if let Some(n) = s.data.max_test_samples {
                ex.truncate(n);
            }
            all.extend(ex);
            Some(rep)
        }
        None => None,
    };
    check_unique_ids(&all, n_train)?;
    log_report(ctx, "train", &s.data.train, &train_report);
    if let (Some(rep), Some(path)) = (&test_report, &s.data.test) {
        log_report(ctx, "test", path, rep);
    }
    if n_train == 0 {
        bail!(
            "{}: no usable training examples left after validation",
            s.data.train.display()
        );
    }
    Ok(Loaded {
        all,
        n_train,
        train_report,
        test_report,
    })
}

/// The tokenizer: the configured one, or a WordPiece trained on `train`'s questions and
/// (distinct) contexts; and whether it was trained.
fn tokenizer(ctx: &Ctx, train: &[Example]) -> Result<(QaTokenizer, bool)> {
    let p = &ctx.settings.prepare;
    Ok(match &ctx.settings.tokenizer_source() {
        Some(path) => (QaTokenizer::load(path)?, false),
        None => {
            ctx.ui.info(&format!(
                "prepare: training a WordPiece tokenizer (vocab {}) on the training questions and contexts",
                p.vocab_size
            ));
            let mut texts: Vec<&str> = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for e in train {
                if seen.insert(e.context.as_str()) {
                    texts.push(&e.context);
                }
                texts.push(&e.question);
            }
            (
                QaTokenizer::train_wordpiece(&texts, p.vocab_size, p.min_frequency)?,
                true,
            )
        }
    })
}

fn check_unique_ids(all: &[Example], n_train: usize) -> Result<()> {
    let train: std::collections::HashSet<&str> =
        all[..n_train].iter().map(|e| e.id.as_str()).collect();
    if let Some(e) = all[n_train..]
        .iter()
        .find(|e| train.contains(e.id.as_str()))
    {
        bail!(
            "id {:?} is in both the training and the test file: ids must be unique across both",
            e.id
        );
    }
    Ok(())
}

fn log_report(ctx: &Ctx, role: &str, path: &std::path::Path, r: &examples::LoadReport) {
    let mut msg = format!(
        "prepare: {role} {}: {} rows, {} kept",
        path.display(),
        r.rows,
        r.kept
    );
    if r.repaired_answers > 0 {
        msg.push_str(&format!(", {} answer starts repaired", r.repaired_answers));
    }
    if r.dropped_answers > 0 {
        msg.push_str(&format!(
            ", {} answers not found in their context ({} examples dropped, e.g. {:?})",
            r.dropped_answers, r.dropped_examples, r.dropped_ids
        ));
    }
    ctx.ui.info(&msg);
}

/// Which windows train: in `keep` mode every window of a training example (HF); in `drop` mode
/// only first windows holding the answer. Returns the flags and the examples `drop` removed.
fn train_flags(
    windows: &[Window],
    all: &[Example],
    n_train: usize,
    overflow: Overflow,
) -> (Vec<u8>, usize) {
    let mut dropped = 0;
    let flags = windows
        .iter()
        .map(|w| {
            let train = w.example_index < n_train && !all[w.example_index].answers.is_empty();
            let keep = match overflow {
                Overflow::Keep => train,
                Overflow::Drop if train && w.window_index == 0 => {
                    if !w.has_answer() {
                        dropped += 1;
                    }
                    w.has_answer()
                }
                Overflow::Drop => false,
            };
            u8::from(keep)
        })
        .collect();
    (flags, dropped)
}

/// Lines for `pipeline status`.
pub fn describe(summary: &serde_json::Value) -> Option<String> {
    Some(format!(
        "{} examples ({} train, {} test), {} windows, tokenizer vocab {}{}",
        summary["examples"],
        summary["train_examples"],
        summary["test_examples"],
        summary["windows"],
        summary["tokenizer"]["vocab_size"],
        if summary["tokenizer"]["trained"] == true {
            " (trained)"
        } else {
            ""
        }
    ))
}
