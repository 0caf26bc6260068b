//! `predict`: each fold's best checkpoint scores its own out-of-fold windows and every test
//! window.
//!
//! Reads `train/fold-K/best/`, `prepare/features.safetensors`, `split/folds.parquet`; writes
//! `predict/fold-K/oof_logits.safetensors` and `test_logits.safetensors` (`start_logits`,
//! `end_logits` `[rows, seq]`, `example_index`, `feature_index`; test rows in feature order,
//! the same for every fold, so `ensemble` can average them).

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use serde_json::json;

use super::{hash_of, input, Ctx, Plan, Stage};
use crate::artifacts::write_logits;
use crate::artifacts::{read_folds, Features, TEST_FOLD};
use crate::device::Precision;
use crate::model::QaModel;
use crate::run::{names, Manifest, StageWriter};
use crate::settings::EvalAttention;
use crate::train::batch::logits;

/// Fold `k` is up to date while its best checkpoint, the features, the folds and the settings
/// that change logits (device, batch size, precision, attention) are.
pub fn plan(ctx: &Ctx, k: usize) -> Result<Plan> {
    let t = &ctx.settings.train;
    let at = ctx.layout();
    // Precision, attention and batching enter only when they differ from the defaults, so
    // that runs from before they existed keep their hash.
    let batching = (!t.batching.is_padded()).then_some((t.batching, t.pad_multiple));
    let hash = match (t.precision, t.eval_attention, batching) {
        (Precision::F32, EvalAttention::Naive, None) => {
            hash_of(&(&t.hashed_device(), t.eval_batch_size, k))?
        }
        (p, EvalAttention::Naive, None) => hash_of(&(&t.hashed_device(), t.eval_batch_size, k, p))?,
        (p, a, None) => hash_of(&(&t.hashed_device(), t.eval_batch_size, k, p, a))?,
        (p, a, Some(b)) => hash_of(&(&t.hashed_device(), t.eval_batch_size, k, p, a, b))?,
    };
    let inputs = vec![
        input(at.features()),
        input(at.folds()),
        input(at.best(k).join(crate::model::WEIGHTS_FILE)),
    ];
    Ok(Plan::fold(Stage::Predict, k, at.predicted(k), hash, inputs))
}

/// Runs one fold.
pub fn run(ctx: &Ctx, plan: Plan) -> Result<Manifest> {
    let device = ctx.settings.train.device;
    let fused = ctx.settings.train.eval_attention.fused();
    crate::model::amp::with_fused_attention(fused, || {
        crate::with_backend!(device, ctx.settings.train.precision, |B, d| {
            run_on::<B>(ctx, plan, d)
        })
    })
}

fn run_on<B: Backend>(ctx: &Ctx, plan: Plan, device: &B::Device) -> Result<Manifest> {
    ctx.ui.cuda_summary();
    let fold = plan.fold.context("predict runs per fold")?;
    let mut w = StageWriter::begin(
        plan.dir,
        &format!("predict fold {fold}"),
        plan.config_hash,
        &plan.inputs,
    )?;
    let best = ctx.layout().best(fold);
    let (model, _, _) =
        QaModel::<B>::from_pretrained(&best, &ctx.settings.model.head_config(), device)
            .with_context(|| format!("loading {}", best.display()))?;
    let feats = Features::load(&ctx.layout().features())?;
    let folds = read_folds(&ctx.layout().folds())?;
    let fold_of = |r: usize| folds[feats.example_index[r] as usize];
    let oof: Vec<usize> = (0..feats.len())
        .filter(|&r| fold_of(r) == fold as i32)
        .collect();
    let test: Vec<usize> = (0..feats.len())
        .filter(|&r| fold_of(r) == TEST_FOLD)
        .collect();
    let batching = ctx.settings.train.eval_batching();
    let bar = ctx.ui.bar(
        (oof.len() + test.len()) as u64,
        &format!("predict fold {fold}"),
    );
    for (name, rows) in [(names::OOF_LOGITS, &oof), (names::TEST_LOGITS, &test)] {
        let lg = logits(&model, &feats, rows, batching, device, &|n| bar.inc(n));
        let ex: Vec<i64> = rows.iter().map(|&r| feats.example_index[r]).collect();
        let fi: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
        write_logits(&w.path(name), &lg, &ex, Some(&fi))?;
        w.record(name)?;
    }
    bar.finish_and_clear();
    w.finish(json!({"fold": fold, "oof_windows": oof.len(), "test_windows": test.len()}))
}
