//! `train`: fine-tunes one encoder + head per fold, validating on the fold's held-out examples.
//!
//! Reads `prepare/` (features, examples, tokenizer) and `split/folds.parquet`; writes into
//! `train/fold-K/`: `best/` (a HF folder: the checkpoint with the best `keep_best_by`),
//! `last/` (a resumable checkpoint: weights, `optimizer.json`, `trainer_state.json`),
//! `metrics.jsonl` (one line per validation) and the manifest. A fold whose manifest is absent
//! but whose `last/` matches the current settings resumes from it. The data order of every
//! epoch and the dropout of every step are seeded from (seed, fold, epoch/step), so a resumed
//! run takes exactly the steps an uninterrupted one takes.

mod checkpoint;
mod config;
mod fits;
mod validation;

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::tensor::backend::{AutodiffBackend, Backend};

pub use checkpoint::resumable_step;
use checkpoint::{remove_dirs, resume, save_dir, Resume};
pub use fits::check_fits;
use validation::{validate, FoldData};

use super::{files_of, hash_of, input, Ctx, Plan, Stage};
use crate::artifacts::{read_examples, read_folds, Features, TrainSummary};
use crate::model::config::EncoderConfig;
use crate::model::QaModel;
use crate::qa::windows::QaTokenizer;
use crate::run::{names, Manifest, RunLayout, StageWriter};
use crate::settings::Settings;
use crate::tensorboard::{tags, EventWriter};
use crate::train::optim::QaOptimizer;
use crate::train::trainer::{
    EvalLine, Hooks, StepLine, StepPlan, Stream, Trainer, TrainerState, Validation,
};
use config::{step_plan, trainer_config};

/// Fold `k` is up to date while the model, training, decoding and evaluation settings, the
/// prepared data, the tokenizer, the folds and the pretrained files are.
pub fn plan(ctx: &Ctx, k: usize) -> Result<Plan> {
    let s = &ctx.settings;
    let at = ctx.layout();
    // How many folds train at once, and whether AdamW steps all tensors as one, do not change
    // a fold's result.
    // Nor do the devices' indices.
    let hashed = crate::settings::TrainSettings {
        parallel_folds: 1,
        multi_tensor_adamw: false,
        device: s.train.hashed_device(),
        devices: crate::settings::Devices::None,
        ..s.train.clone()
    };
    // Only the training part of `prepare` and `split` (their content keys): a new test file
    // redoes the test windows and `predict`, not training.
    let mut inputs = vec![input(at.prepared_train_key()), input(at.split_train_key())];
    if let Some(dir) = &s.model.pretrained {
        inputs.extend(files_of(dir).into_iter().map(input));
    }
    let hash = hash_of(&(&s.model, &hashed, &s.decode, &s.evaluate, k))?;
    Ok(Plan::fold(Stage::Train, k, at.fold(k), hash, inputs))
}

/// Fold `k`'s plan as runs before the content keys recorded it: the whole prepared files as
/// inputs (read only to migrate such runs, see `stages::migrate`).
pub fn legacy_plan(ctx: &Ctx, k: usize) -> Result<Plan> {
    let at = ctx.layout();
    let mut p = plan(ctx, k)?;
    let pretrained = p.inputs.split_off(2);
    p.inputs = vec![
        input(at.examples()),
        input(at.features()),
        input(at.tokenizer().join(crate::qa::windows::TOKENIZER_FILE)),
        input(at.folds()),
    ];
    p.inputs.extend(pretrained);
    Ok(p)
}

/// Runs one fold on the configured device.
pub fn run(ctx: &Ctx, plan: Plan) -> Result<Manifest> {
    let device = ctx.settings.train.device;
    // One writer per fold, also among the workers of `train.parallel_folds`.
    let _lock = crate::run::Lock::acquire(
        &plan.dir.join(crate::run::LOCK),
        &format!("{} ({})", plan.label, plan.dir.display()),
    )?;
    let fused = ctx.settings.train.eval_attention.fused();
    crate::model::amp::with_fused_attention(fused, || {
        crate::with_backend!(device, ctx.settings.train.precision, |B, d| {
            run_on::<burn::backend::Autodiff<B>>(ctx, plan, d)
        })
    })
}

fn fold_data(ctx: &Ctx, fold: usize) -> Result<FoldData> {
    let at = ctx.layout();
    let feats = Features::load(&at.features())?;
    let (examples, _) = read_examples(&at.examples())?;
    let folds = read_folds(&at.folds())?;
    let fold_of = |r: usize| folds[feats.example_index[r] as usize];
    let train_rows: Vec<usize> = (0..feats.len())
        .filter(|&r| feats.train_window[r] == 1 && fold_of(r) >= 0 && fold_of(r) != fold as i32)
        .collect();
    let val_rows: Vec<usize> = (0..feats.len())
        .filter(|&r| fold_of(r) == fold as i32)
        .collect();
    if train_rows.is_empty() || val_rows.is_empty() {
        bail!(
            "fold {fold} has {} training and {} validation windows: too little data for {} folds",
            train_rows.len(),
            val_rows.len(),
            ctx.settings.split.folds
        );
    }
    Ok(FoldData {
        feats,
        examples,
        train_rows,
        val_rows,
    })
}

/// The model at the start of training, its config and the config.json to export it with.
fn initial_model<B: Backend>(
    s: &Settings,
    tok: &QaTokenizer,
    device: &B::Device,
) -> Result<(QaModel<B>, EncoderConfig, Option<serde_json::Value>)> {
    let head = s.model.head_config();
    match &s.model.pretrained {
        Some(dir) => {
            let (m, cfg, _) = QaModel::from_pretrained(dir, &head, device)
                .with_context(|| format!("loading {}", dir.display()))?;
            let base =
                serde_json::from_slice(&std::fs::read(dir.join(crate::model::CONFIG_FILE))?)?;
            Ok((m, cfg, Some(base)))
        }
        None => {
            let cfg = s.model.scratch_config(
                tok.vocab_size(),
                tok.pad_id as usize,
                s.prepare.max_seq_length,
            );
            Ok((QaModel::init(&cfg, &head, device)?, cfg, None))
        }
    }
}

/// Where a fold's weights are exported from: the model's config, the pretrained config.json
/// it came with, and the tokenizer folder.
struct Export<'a> {
    cfg: &'a EncoderConfig,
    base: Option<&'a serde_json::Value>,
    tok_dir: &'a Path,
}

/// The train stage's side of the [`Trainer`]: validation on the fold's examples, the `best/`
/// and `last/` folders, `metrics.jsonl`, the progress bar and messages.
struct FoldHooks<'a, B: Backend> {
    ctx: &'a Ctx,
    fold: usize,
    data: &'a FoldData,
    device: &'a B::Device,
    export: Export<'a>,
    dir: &'a Path,
    last_dir: &'a Path,
    best_dir: &'a Path,
    bar: indicatif::ProgressBar,
    total_steps: usize,
    started: Instant,
    last_log: Instant,
    windows_at_start: usize,
    /// The fold's TensorBoard event file.
    tb: EventWriter,
}

impl<B: AutodiffBackend> Hooks<B> for FoldHooks<'_, B::InnerBackend> {
    fn validate(&mut self, model: &QaModel<B::InnerBackend>) -> Validation {
        validate(model, self.data, &self.ctx.settings, self.device)
    }

    fn save_best(&mut self, model: &QaModel<B::InnerBackend>) -> Result<()> {
        let e = &self.export;
        save_dir(model, e.cfg, e.base, e.tok_dir, self.best_dir, &[], false)
    }

    fn save_checkpoint(
        &mut self,
        model: &QaModel<B>,
        optim: &QaOptimizer<B>,
        st: &TrainerState,
    ) -> Result<()> {
        // Every step up to this checkpoint is logged: on disk before the checkpoint is, so a
        // resume from it finds them.
        self.tb.sync()?;
        let os = serde_json::to_vec(&optim.state())?;
        let ts = serde_json::to_vec_pretty(st)?;
        let e = &self.export;
        save_dir(
            model,
            e.cfg,
            e.base,
            e.tok_dir,
            self.last_dir,
            &[(names::OPTIMIZER_STATE, os), (names::TRAINER_STATE, ts)],
            true,
        )
    }

    fn checkpoint_dir(&self) -> String {
        self.last_dir.display().to_string()
    }

    fn stepped(&mut self, st: &TrainerState, running: Option<f64>) {
        let fold = self.fold;
        self.bar.inc(1);
        // The running loss is read a step late: nothing to show after the first step.
        if let Some(loss) = running {
            self.bar.set_message(format!("fold {fold} loss {loss:.4}"));
        }
        // Without a terminal (logs, nohup) the bar is hidden: a plain line every 30 s.
        if self.bar.is_hidden() && self.last_log.elapsed().as_secs() >= 30 {
            self.last_log = Instant::now();
            self.ctx.ui.info(&format!(
                "fold {fold} step {}/{}: loss {:.4}, {:.1} windows/s",
                st.step,
                self.total_steps,
                running.unwrap_or(0.0),
                (st.windows_seen - self.windows_at_start) as f64
                    / self.started.elapsed().as_secs_f64()
            ));
        }
    }

    fn logged(&mut self, l: &StepLine) -> Result<()> {
        let mut values = vec![(tags::TRAIN_LOSS, l.loss), (tags::LEARNING_RATE, l.lr)];
        if let Some(n) = l.grad_norm {
            values.push((tags::GRAD_NORM, n));
        }
        self.tb.scalars(l.step, &values)
    }

    fn evaluated(&mut self, line: &EvalLine, improved: bool, history: &[EvalLine]) -> Result<()> {
        self.tb.scalars(
            line.step,
            &[
                ("eval/loss", line.loss),
                ("eval/exact_match", line.exact_match),
                ("eval/f1", line.f1),
                ("eval/start_acc", line.start_acc),
                ("eval/end_acc", line.end_acc),
            ],
        )?;
        self.ctx.ui.note(
            &self.bar,
            &format!(
                "fold {} step {}: loss {:.4} val loss {:.4} EM {:.2} F1 {:.2}{}",
                self.fold,
                line.step,
                line.train_loss,
                line.loss,
                line.exact_match,
                line.f1,
                if improved { " (best)" } else { "" }
            ),
        );
        let lines: String = history
            .iter()
            .filter_map(|l| serde_json::to_string(l).ok())
            .map(|l| l + "\n")
            .collect();
        crate::run::write_atomic(&self.dir.join(names::METRICS_LOG), lines.as_bytes())
    }

    fn info(&mut self, message: &str) {
        self.ctx.ui.info(message);
    }

    /// The crash a resume test asks for (`PIPELINE_INTERRUPT_AFTER_STEP`, read by `commands::run`).
    fn stop_requested(&mut self, st: &TrainerState) -> Option<String> {
        let n = self.ctx.interrupt_after?;
        (st.step >= n).then(|| crate::env::INTERRUPT_AFTER_STEP.name.to_string())
    }
}

fn run_on<B: AutodiffBackend>(ctx: &Ctx, plan: Plan, device: &B::Device) -> Result<Manifest> {
    ctx.ui.cuda_summary();
    let s = &ctx.settings;
    let t = &s.train;
    let fold = plan.fold.context("train runs per fold")?;
    let dir = plan.dir.clone();
    let mut w = StageWriter::begin(
        dir.clone(),
        &format!("train fold {fold}"),
        plan.config_hash,
        &plan.inputs,
    )?;
    // A checkpoint resumes only under the same settings and the same input files.
    let config_hash = w.resume_key()?;

    let data = fold_data(ctx, fold)?;
    let tok_dir = ctx.layout().tokenizer();
    let tok = QaTokenizer::load(&tok_dir)?;
    B::seed(device, Stream::ModelInit.seed(t.seed, fold, 0));
    let (model, enc_cfg, base_cfg) = initial_model::<B>(s, &tok, device)?;
    check_fits(s, Some(&enc_cfg)).with_context(|| format!("train fold {fold}"))?;
    let mut optim = QaOptimizer::<B>::new(t.optim_config()).with_multi_tensor(t.multi_tensor_adamw);
    if optim.multi_tensor() && !crate::train::optim::multi_tensor_fits(&model, t.device) {
        optim = optim.with_multi_tensor(false);
    }
    let start = Start {
        model,
        optim,
        st: TrainerState {
            config_hash,
            ..Default::default()
        },
    };
    let start = resume_or_start(ctx, fold, &dir, start, device)?;

    let steps =
        step_plan(t, data.train_rows.len()).with_context(|| format!("train fold {fold}"))?;
    ctx.ui.info(&format!(
        "train fold {fold}: {} training windows, {} validation windows, {} steps ({} warmup), device {}",
        data.train_rows.len(),
        data.val_rows.len(),
        steps.total_steps,
        steps.warmup,
        t.device
    ));
    let export = Export {
        cfg: &enc_cfg,
        base: base_cfg.as_ref(),
        tok_dir: &tok_dir,
    };
    let st = train_fold(ctx, fold, &data, device, export, &dir, steps, start)?;
    finish_fold(ctx, &mut w, fold, &dir, &st)?;
    let summary = train_summary(fold, &data, st)?;
    w.finish(serde_json::to_value(summary)?)
}

/// Where a fold's training starts: fresh weights, optimizer and state, or a checkpoint's.
struct Start<B: AutodiffBackend> {
    model: QaModel<B>,
    optim: QaOptimizer<B>,
    st: TrainerState,
}

/// Resumes from the newest readable checkpoint made with these settings (`fresh`'s state's
/// `config_hash`), or starts from `fresh`; `--force` and changed settings start over (their
/// checkpoints removed), and the reasons are told.
fn resume_or_start<B: AutodiffBackend>(
    ctx: &Ctx,
    fold: usize,
    dir: &Path,
    fresh: Start<B>,
    device: &B::Device,
) -> Result<Start<B>> {
    let [last_dir, old_dir] = RunLayout::checkpoints(dir);
    if ctx.force {
        remove_dirs(&[&last_dir, &old_dir])?;
    }
    let say = |why: &str| ctx.ui.info(&format!("train fold {fold}: {why}"));
    match resume::<B>(dir, &fresh.st.config_hash, &ctx.settings, device) {
        Resume::From {
            dir: from,
            state,
            model,
            optim: saved,
            skipped,
        } => {
            let mut optim = fresh.optim;
            optim.load_state(saved, device)?;
            let mut st = state;
            // A best that is gone, or whose loss is not finite (an older version saved such
            // validations), is no best.
            let best_gone = !dir.join(names::BEST).exists();
            if st.best.as_ref().is_some_and(|b| !b.loss.is_finite()) || best_gone {
                st.best = None;
            }
            skipped.iter().for_each(|why| say(why));
            say(&format!(
                "resuming at step {} from {}",
                st.step,
                from.display()
            ));
            if from != last_dir {
                // The unreadable newer checkpoint goes and this one takes its place (one
                // rename: atomic), so `last/` is again the newest whole checkpoint.
                remove_dirs(&[&last_dir])?;
                std::fs::rename(&from, &last_dir).with_context(|| {
                    format!("renaming {} to {}", from.display(), last_dir.display())
                })?;
            }
            Ok(Start { model, optim, st })
        }
        Resume::Fresh { changed, skipped } => {
            skipped.iter().for_each(|why| say(why));
            if !skipped.is_empty() {
                say("no readable checkpoint, training from the start");
            } else if changed {
                say("settings changed, starting over");
            }
            remove_dirs(&[&last_dir, &old_dir])?;
            Ok(fresh)
        }
    }
}

/// Runs the trainer from `start` over the fold's data with the stage's hooks (progress bar,
/// metrics log, TensorBoard, checkpoints and best weights under `dir`); the final state.
#[allow(clippy::too_many_arguments)]
fn train_fold<B: AutodiffBackend>(
    ctx: &Ctx,
    fold: usize,
    data: &FoldData,
    device: &B::Device,
    export: Export,
    dir: &Path,
    steps: StepPlan,
    start: Start<B>,
) -> Result<TrainerState> {
    let Start { model, optim, st } = start;
    let bar = ctx
        .ui
        .bar(steps.total_steps as u64, &format!("fold {fold}"));
    bar.set_position(st.step as u64);
    let trainer = Trainer {
        config: trainer_config(&ctx.settings.train, fold, steps),
        feats: &data.feats,
        train_rows: &data.train_rows,
    };
    let (last_dir, best_dir) = (dir.join(names::LAST), dir.join(names::BEST));
    let mut hooks = FoldHooks {
        ctx,
        fold,
        data,
        device,
        export,
        dir,
        last_dir: &last_dir,
        best_dir: &best_dir,
        bar,
        total_steps: steps.total_steps,
        started: Instant::now(),
        last_log: Instant::now(),
        windows_at_start: st.windows_seen,
        tb: EventWriter::resume(&ctx.layout().tensorboard(fold), st.step as i64)?,
    };
    let (_, _, st) = trainer.run(model, optim, st, device, &mut hooks)?;
    hooks.bar.finish_and_clear();
    Ok(st)
}

/// Records the fold's outputs (the best weights and the metrics log) and tells the best.
fn finish_fold(
    ctx: &Ctx,
    w: &mut StageWriter,
    fold: usize,
    dir: &Path,
    st: &TrainerState,
) -> Result<()> {
    if !dir.join(names::BEST).exists() {
        bail!("train fold {fold}: no validation ran, so there is no best checkpoint");
    }
    for f in [crate::model::WEIGHTS_FILE, crate::model::CONFIG_FILE] {
        w.record(&format!("best/{f}"))?;
    }
    w.record(names::METRICS_LOG)?;
    let by = ctx.settings.train.keep_best_by;
    let best = st.best.as_ref();
    ctx.ui.info(&format!(
        "train fold {fold}: best {by:?} = {:.4} at step {} ({:.0} windows/s)",
        best.map(|b| b.score(by)).unwrap_or(f64::NAN).abs(),
        best.map(|b| b.step).unwrap_or(0),
        st.windows_seen as f64 / st.train_seconds.max(1e-9)
    ));
    Ok(())
}

/// What the fold's manifest records.
fn train_summary(fold: usize, data: &FoldData, st: TrainerState) -> Result<TrainSummary> {
    let (Some(best), Some(first)) = (st.best, st.history.first().cloned()) else {
        bail!("train fold {fold}: no validation ran, so there is no best checkpoint");
    };
    Ok(TrainSummary {
        fold,
        steps: st.step,
        best,
        first,
        train_seconds: st.train_seconds,
        windows_per_second: st.windows_seen as f64 / st.train_seconds.max(1e-9),
        tokens_per_window: st.tokens_computed as f64 / st.windows_seen.max(1) as f64,
        skipped_steps: st.skipped_steps,
        loss_scale: st.loss_scaler.map(|s| s.scale),
        train_windows: data.train_rows.len(),
        val_windows: data.val_rows.len(),
    })
}
