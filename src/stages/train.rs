//! `train`: fine-tunes one encoder + head per fold, validating on the fold's held-out examples.
//!
//! Reads `prepare/` (features, examples, tokenizer) and `split/folds.parquet`; writes into
//! `train/fold-K/`: `best/` (a HF folder: the checkpoint with the best `keep_best_by`),
//! `last/` (a resumable checkpoint: weights, `optimizer.json`, `trainer_state.json`),
//! `metrics.jsonl` (one line per validation) and the manifest. A fold whose manifest is absent
//! but whose `last/` matches the current settings resumes from it. The data order of every
//! epoch and the dropout of every step are seeded from (seed, fold, epoch/step), so a resumed
//! run takes exactly the steps an uninterrupted one takes.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use burn::tensor::backend::{AutodiffBackend, Backend};
use serde_json::json;

use super::{Ctx, Plan, Stage};
use crate::artifacts::{read_examples, read_folds, Features};
use crate::model::config::EncoderConfig;
use crate::model::export::save_pretrained;
use crate::model::QaModel;
use crate::qa::decode::argmax;
use crate::qa::decode::{decode_rows, Logits};
use crate::qa::examples::Example;
use crate::qa::metrics;
use crate::qa::windows::QaTokenizer;
use crate::run::{names, Manifest, RunLayout, StageWriter};
use crate::settings::Settings;
use crate::train::batch::{forward_chunks, labels, Batching};
use crate::train::loss::qa_loss;
use crate::train::optim::{OptimState, QaOptimizer};
use crate::train::schedule::warmup_steps;
use crate::train::trainer::{
    mix, EvalLine, Hooks, Trainer, TrainerConfig, TrainerState, Validation,
};

/// Reads a checkpoint's `trainer_state.json`.
fn read_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join(names::TRAINER_STATE);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// The step the fold of `plan` would resume from: that of its newest checkpoint whose state
/// reads and was made with the plan's settings and inputs (for `status`).
pub fn resumable_step(plan: &Plan) -> Option<usize> {
    let key = crate::run::resume_key(&plan.config_hash, &plan.inputs).ok()?;
    RunLayout::checkpoints(&plan.dir)
        .iter()
        .filter_map(|d| read_state(d).ok())
        .find(|st| st.config_hash == key)
        .map(|st| st.step)
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

/// Refuses, in one line, settings whose training step cannot fit the device's memory (a lower
/// bound, [`crate::model::memory`]), instead of an allocation failure or the OOM killer later.
/// `cfg` is the model's config; without it (before `prepare`) it is read from the pretrained
/// folder or built from the from-scratch sizes.
pub fn check_fits(s: &Settings, cfg: Option<&EncoderConfig>) -> Result<()> {
    let device = s.train.device;
    let guessed;
    let cfg = match cfg {
        Some(c) => c,
        None => {
            guessed = match &s.model.pretrained {
                Some(dir) => match EncoderConfig::load(&dir.join(crate::model::CONFIG_FILE)) {
                    Ok(c) => c,
                    Err(_) => return Ok(()), // `prepare` / `train` report the folder
                },
                None => s
                    .model
                    .scratch_config(s.prepare.vocab_size, 0, s.prepare.max_seq_length),
            };
            &guessed
        }
    };
    use crate::model::memory::{gib, training_step_bytes};
    let head_dim = cfg.hidden_size / cfg.num_attention_heads.max(1);
    let fused = crate::model::kernels::attention_is_fused(
        device,
        s.train.precision,
        s.train.batch_size * cfg.num_attention_heads,
        head_dim,
    );
    let need = training_step_bytes(
        cfg,
        &s.model.head_config(),
        s.train.batch_size,
        s.prepare.max_seq_length,
        fused,
    );
    // wgpu caps every buffer (lavapipe at 128 MiB): the word embeddings, a layer's
    // feed-forward activations and (without the fused attention) its attention scores are the
    // largest ones a step cannot split.
    if let Some(max) = crate::device::max_buffer_bytes(device) {
        let h = cfg.hidden_size as u64;
        let (b, l) = (s.train.batch_size as u64, s.prepare.max_seq_length as u64);
        let mut buffers = vec![
            ("the word embedding table", cfg.vocab_size as u64 * h * 4),
            (
                "a layer's feed-forward activations",
                b * l * cfg.intermediate_size as u64 * 4,
            ),
        ];
        if !fused {
            buffers.push((
                "a layer's attention scores",
                b * cfg.num_attention_heads as u64 * l * l * 4,
            ));
        }
        for (what, bytes) in buffers {
            if bytes > max {
                bail!(
                    "{what} needs one buffer of {:.0} MiB, but device {} allows at most {:.0} MiB per buffer: lower train.batch_size or prepare.max_seq_length, or use another device",
                    bytes as f64 / 1048576.0,
                    s.train.device,
                    max as f64 / 1048576.0
                );
            }
        }
    }
    let Some(have) = crate::device::memory_bytes(device) else {
        return Ok(());
    };
    if need > have {
        bail!(
            "a training step at train.batch_size {} x prepare.max_seq_length {} needs at least {:.1} GiB, but device {} has {:.1} GiB: lower train.batch_size (train.gradient_accumulation keeps the effective batch) or prepare.max_seq_length",
            s.train.batch_size,
            s.prepare.max_seq_length,
            gib(need),
            s.train.device,
            gib(have)
        );
    }
    Ok(())
}

/// The data a fold trains and validates on.
struct FoldData {
    feats: Features,
    examples: Vec<Example>,
    train_rows: Vec<usize>,
    val_rows: Vec<usize>,
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

/// Validation: loss, start/end accuracy on windows holding the answer, EM/F1 on decoded text.
#[allow(clippy::too_many_arguments)]
fn validate<B: Backend>(
    model: &QaModel<B>,
    data: &FoldData,
    s: &Settings,
    device: &B::Device,
) -> (f64, f64, f64, f64, f64, Logits) {
    let t = &s.train;
    let loss_cfg = t.loss_config();
    let mut loss_sum = 0.0;
    // One forward pass gives both the loss and the logits to decode.
    let seq = data.feats.max_seq_length;
    let mut lg = Logits {
        seq,
        start: Vec::with_capacity(data.val_rows.len() * seq),
        end: Vec::with_capacity(data.val_rows.len() * seq),
    };
    forward_chunks(
        model,
        &data.feats,
        &data.val_rows,
        Batching {
            batch_size: t.eval_batch_size,
            fixed_shape: s.fixed_shape(),
        },
        device,
        |chunk, st, en| {
            lg.start.extend(st.to_data().convert::<f32>().iter::<f32>());
            lg.end.extend(en.to_data().convert::<f32>().iter::<f32>());
            let (sp, ep) = labels::<B>(&data.feats, chunk, device);
            let loss = qa_loss(&loss_cfg, st, en, sp, ep);
            loss_sum += loss.into_scalar().elem::<f64>() * chunk.len() as f64;
        },
    );
    let (start_acc, end_acc) = span_accuracy(&data.feats, &data.val_rows, &lg);
    let (em, f1) = score_rows(&data.examples, &data.feats, &data.val_rows, &lg, s);
    (
        loss_sum / data.val_rows.len() as f64,
        start_acc,
        end_acc,
        em,
        f1,
        lg,
    )
}

/// Start and end accuracy over the windows of `rows` that hold the answer (labels other than
/// `(0, 0)`): the share whose argmax logit is the labelled token. `lg` holds `rows`' logits in
/// order. A weak model that puts every argmax on `[CLS]` (the no-answer label) scores 0.
fn span_accuracy(feats: &Features, rows: &[usize], lg: &Logits) -> (f64, f64) {
    let l = lg.seq;
    let (mut hit_s, mut hit_e, mut labelled) = (0usize, 0usize, 0usize);
    for (k, &r) in rows.iter().enumerate() {
        let (sp, ep) = (feats.start_positions[r], feats.end_positions[r]);
        if sp == 0 && ep == 0 {
            continue; // the answer is not in this window
        }
        labelled += 1;
        hit_s += usize::from(argmax(&lg.start[k * l..(k + 1) * l]) == sp as usize);
        hit_e += usize::from(argmax(&lg.end[k * l..(k + 1) * l]) == ep as usize);
    }
    let n = labelled.max(1) as f64;
    (hit_s as f64 / n, hit_e as f64 / n)
}

/// EM/F1 of the examples behind `rows` decoded from `lg`.
pub fn score_rows(
    examples: &[Example],
    feats: &Features,
    rows: &[usize],
    lg: &Logits,
    s: &Settings,
) -> (f64, f64) {
    let row_example: Vec<usize> = rows
        .iter()
        .map(|&r| feats.example_index[r] as usize)
        .collect();
    let offsets: Vec<_> = rows.iter().map(|&r| feats.context_offsets(r)).collect();
    let (preds, _) = decode_rows(examples, &row_example, &offsets, lg, &s.decode);
    let golds: Vec<(String, Vec<String>)> = preds
        .keys()
        .filter_map(|id| examples.iter().find(|e| &e.id == id))
        .map(|e| {
            (
                e.id.clone(),
                e.answers.iter().map(|a| a.text.clone()).collect(),
            )
        })
        .collect();
    let (score, _) = metrics::score(
        s.evaluate.metric,
        golds.iter().map(|(id, g)| (id.as_str(), g.as_slice())),
        &preds.into_iter().collect(),
    );
    (score.exact_match, score.f1)
}

/// Writes a HF folder atomically enough: into `dir.tmp`, then swapped into place. With `keep_old`
/// the folder it replaces becomes `dir.old` (see [`checkpoint_dirs`]) until the next save, so a
/// crash between the two renames still leaves the previous checkpoint whole.
fn save_dir<B: Backend>(
    model: &QaModel<B>,
    cfg: &EncoderConfig,
    base: Option<&serde_json::Value>,
    tok_dir: &Path,
    dir: &Path,
    extra: &[(&str, Vec<u8>)],
    keep_old: bool,
) -> Result<()> {
    let tmp = dir.with_extension("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    save_pretrained(model, cfg, base, tok_dir, &tmp)?;
    for (name, bytes) in extra {
        crate::run::write_atomic(&tmp.join(name), bytes)?;
    }
    if dir.exists() {
        if keep_old {
            let old = dir.with_extension("old");
            if old.exists() {
                std::fs::remove_dir_all(&old)
                    .with_context(|| format!("removing {}", old.display()))?;
            }
            std::fs::rename(dir, &old)
                .with_context(|| format!("renaming {} to {}", dir.display(), old.display()))?;
        } else {
            std::fs::remove_dir_all(dir)?;
        }
    }
    std::fs::rename(&tmp, dir).with_context(|| format!("renaming into {}", dir.display()))?;
    Ok(())
}

/// Removes the folders that exist.
fn remove_dirs(dirs: &[&Path]) -> Result<()> {
    for d in dirs {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| format!("removing {}", d.display()))?;
        }
    }
    Ok(())
}

/// What a fold starts from (made once per fold: its size does not matter).
#[allow(clippy::large_enum_variant)]
enum Resume<B: Backend> {
    /// A readable checkpoint made with the current settings.
    From {
        dir: PathBuf,
        state: TrainerState,
        model: QaModel<B>,
        optim: OptimState,
        /// Why newer checkpoints were passed over.
        skipped: Vec<String>,
    },
    /// No such checkpoint: `changed` when one exists but was made with other settings.
    Fresh { changed: bool, skipped: Vec<String> },
}

/// Finds the newest checkpoint of the fold in `fold_dir` that reads whole (state, weights and
/// optimizer) and was made with `config_hash`. A checkpoint that cannot be read is passed over
/// with the reason, never an error: the fold then resumes from an older one or starts over.
fn resume<B: Backend>(
    fold_dir: &Path,
    config_hash: &str,
    s: &Settings,
    device: &B::Device,
) -> Resume<B> {
    let mut skipped = Vec::new();
    let mut changed = false;
    for dir in RunLayout::checkpoints(fold_dir) {
        if !dir.exists() {
            continue;
        }
        let read = || -> Result<Option<(TrainerState, QaModel<B>, OptimState)>> {
            let state = read_state(&dir)?;
            if state.config_hash != config_hash {
                return Ok(None);
            }
            let (model, _, _) =
                QaModel::<B>::from_pretrained(&dir, &s.model.head_config(), device)?;
            let path = dir.join(names::OPTIMIZER_STATE);
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let os: OptimState = serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing {}", path.display()))?;
            Ok(Some((state, model, os)))
        };
        match read() {
            Ok(Some((state, model, optim))) => {
                return Resume::From {
                    dir,
                    state,
                    model,
                    optim,
                    skipped,
                }
            }
            Ok(None) => changed = true,
            Err(e) => skipped.push(format!(
                "checkpoint {} cannot be read ({}), passed over",
                dir.display(),
                crate::run::one_line(&e)
            )),
        }
    }
    Resume::Fresh { changed, skipped }
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
}

impl<B: AutodiffBackend> Hooks<B> for FoldHooks<'_, B::InnerBackend> {
    fn validate(&mut self, model: &QaModel<B::InnerBackend>) -> Validation {
        let (loss, start_acc, end_acc, exact_match, f1, _) =
            validate(model, self.data, &self.ctx.settings, self.device);
        Validation {
            loss,
            start_acc,
            end_acc,
            exact_match,
            f1,
        }
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

    fn evaluated(&mut self, line: &EvalLine, improved: bool, history: &[EvalLine]) -> Result<()> {
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
}

fn run_on<B: AutodiffBackend>(ctx: &Ctx, plan: Plan, device: &B::Device) -> Result<Manifest> {
    ctx.ui.cuda_summary();
    let s = &ctx.settings;
    let t = &s.train;
    let fold = plan.fold.context("train runs per fold")?;
    let device_kind = t.device;
    let dir = plan.dir.clone();
    let last_dir = dir.join(names::LAST);
    let best_dir = dir.join(names::BEST);
    let mut w = StageWriter::begin(
        dir.clone(),
        &format!("train fold {fold}"),
        plan.config_hash,
        &plan.inputs,
    )?;
    // A checkpoint resumes only under the same settings and the same input files.
    let config_hash = w.resume_key()?;

    let data = fold_data(ctx, fold)?;
    let tok_dir = ctx.stage_dir(Stage::Prepare).join("tokenizer");
    let tok = QaTokenizer::load(&tok_dir)?;
    B::seed(device, mix(t.seed, fold, 0, 1));
    let (mut model, enc_cfg, base_cfg) = initial_model::<B>(s, &tok, device)?;
    check_fits(s, Some(&enc_cfg)).with_context(|| format!("train fold {fold}"))?;
    let mut optim = QaOptimizer::<B>::new(t.optim_config()).with_multi_tensor(t.multi_tensor_adamw);
    if optim.multi_tensor() && !crate::train::optim::multi_tensor_fits(&model, device_kind) {
        optim = optim.with_multi_tensor(false);
    }
    let mut st = TrainerState {
        config_hash: config_hash.clone(),
        ..Default::default()
    };

    // Resume from the newest readable checkpoint made with these settings (not with --force).
    let [_, old_dir] = RunLayout::checkpoints(&dir);
    if ctx.force {
        remove_dirs(&[&last_dir, &old_dir])?;
    }
    match resume::<B>(&dir, &config_hash, s, device) {
        Resume::From {
            dir: from,
            state,
            model: m,
            optim: os,
            skipped,
        } => {
            model = m;
            optim.load_state(os, device)?;
            st = state;
            // A best that is gone, or whose loss is not finite (an older version saved such
            // validations), is no best.
            if st.best.as_ref().is_some_and(|b| !b.loss.is_finite()) || !best_dir.exists() {
                st.best = None;
            }
            for why in &skipped {
                ctx.ui.info(&format!("train fold {fold}: {why}"));
            }
            ctx.ui.info(&format!(
                "train fold {fold}: resuming at step {} from {}",
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
        }
        Resume::Fresh { changed, skipped } => {
            for why in &skipped {
                ctx.ui.info(&format!("train fold {fold}: {why}"));
            }
            if !skipped.is_empty() {
                ctx.ui.info(&format!(
                    "train fold {fold}: no readable checkpoint, training from the start"
                ));
            } else if changed {
                ctx.ui.info(&format!(
                    "train fold {fold}: settings changed, starting over"
                ));
            }
            remove_dirs(&[&last_dir, &old_dir])?;
        }
    }

    let batches_per_epoch = if t.drop_last {
        data.train_rows.len() / t.batch_size
    } else {
        data.train_rows.len().div_ceil(t.batch_size)
    };
    if batches_per_epoch == 0 {
        bail!(
            "train fold {fold}: {} training windows make no full batch of {} (train.drop_last = true)",
            data.train_rows.len(),
            t.batch_size
        );
    }
    let steps_per_epoch = batches_per_epoch.div_ceil(t.gradient_accumulation);
    let total_steps = steps_per_epoch * t.epochs;
    let warmup = warmup_steps(total_steps, t.warmup_steps, t.warmup_ratio);
    let eval_every = if t.eval_every == 0 {
        steps_per_epoch
    } else {
        t.eval_every
    };
    let ckpt_every = if t.checkpoint_every == 0 {
        eval_every
    } else {
        t.checkpoint_every
    };
    ctx.ui.info(&format!(
        "train fold {fold}: {} training windows, {} validation windows, {total_steps} steps ({warmup} warmup), device {}",
        data.train_rows.len(),
        data.val_rows.len(),
        t.device
    ));

    let bar = ctx.ui.bar(total_steps as u64, &format!("fold {fold}"));
    bar.set_position(st.step as u64);
    let trainer = Trainer {
        config: TrainerConfig {
            fold,
            seed: t.seed,
            epochs: t.epochs,
            batch_size: t.batch_size,
            batches_per_epoch,
            gradient_accumulation: t.gradient_accumulation,
            total_steps,
            warmup,
            schedule: t.schedule,
            learning_rate: t.learning_rate,
            max_grad_norm: t.max_grad_norm,
            loss_scaling: t.precision.loss_scaling(),
            loss: t.loss_config(),
            eval_every,
            checkpoint_every: ckpt_every,
            patience: t.patience,
            keep_best_by: t.keep_best_by,
            interrupt_after: ctx.interrupt_after,
        },
        feats: &data.feats,
        train_rows: &data.train_rows,
    };
    let mut hooks = FoldHooks {
        ctx,
        fold,
        data: &data,
        device,
        export: Export {
            cfg: &enc_cfg,
            base: base_cfg.as_ref(),
            tok_dir: &tok_dir,
        },
        dir: &dir,
        last_dir: &last_dir,
        best_dir: &best_dir,
        bar,
        total_steps,
        started: Instant::now(),
        last_log: Instant::now(),
        windows_at_start: st.windows_seen,
    };
    let (_, _, st) = trainer.run(model, optim, st, device, &mut hooks)?;
    hooks.bar.finish_and_clear();
    if !best_dir.exists() {
        bail!("train fold {fold}: no validation ran, so there is no best checkpoint");
    }
    for f in [crate::model::WEIGHTS_FILE, crate::model::CONFIG_FILE] {
        w.record(&format!("best/{f}"))?;
    }
    w.record(names::METRICS_LOG)?;
    let best = st.best.clone();
    ctx.ui.info(&format!(
        "train fold {fold}: best {:?} = {:.4} at step {} ({:.0} windows/s)",
        t.keep_best_by,
        best.as_ref()
            .map(|b| b.score(t.keep_best_by))
            .unwrap_or(f64::NAN)
            .abs(),
        best.as_ref().map(|b| b.step).unwrap_or(0),
        st.windows_seen as f64 / st.train_seconds.max(1e-9)
    ));
    w.finish(json!({
        "fold": fold,
        "steps": st.step,
        "best": best,
        "first": st.history.first(),
        "train_seconds": st.train_seconds,
        "windows_per_second": st.windows_seen as f64 / st.train_seconds.max(1e-9),
        "skipped_steps": st.skipped_steps,
        "loss_scale": st.loss_scaler.map(|s| s.scale),
        "train_windows": data.train_rows.len(),
        "val_windows": data.val_rows.len(),
    }))
}

use burn::tensor::ElementConversion;

#[cfg(test)]
mod tests {
    use super::*;

    /// Windows of length 4 labelled (start, end).
    fn feats(labels: &[(i32, i32)]) -> Features {
        Features {
            start_positions: labels.iter().map(|p| p.0).collect(),
            end_positions: labels.iter().map(|p| p.1).collect(),
            ..Features::blank(labels.len(), 4)
        }
    }

    fn one_hot(at: &[usize], l: usize) -> Vec<f32> {
        at.iter()
            .flat_map(|&i| (0..l).map(move |j| if j == i { 1.0 } else { 0.0 }))
            .collect()
    }

    #[test]
    fn span_accuracy_counts_argmax_hits_over_windows_holding_the_answer() {
        // window 0: no answer (skipped); 1: (1, 2); 2: (3, 3); 3: (2, 3)
        let f = feats(&[(0, 0), (1, 2), (3, 3), (2, 3)]);
        let rows = [3, 1, 0, 2];
        let lg = Logits {
            seq: 4,
            // argmax per row in `rows` order: row 3 -> 2 (hit), row 1 -> 0 (miss), row 0 (any),
            // row 2 -> 3 (hit); ends: row 3 -> 3 (hit), row 1 -> 2 (hit), row 2 -> 0 (miss)
            start: one_hot(&[2, 0, 1, 3], 4),
            end: one_hot(&[3, 2, 1, 0], 4),
        };
        let (s, e) = span_accuracy(&f, &rows, &lg);
        assert!((s - 2.0 / 3.0).abs() < 1e-12, "{s}");
        assert!((e - 2.0 / 3.0).abs() < 1e-12, "{e}");
        // every argmax on [CLS]: a model that always says "no answer" scores 0
        let cls = Logits {
            seq: 4,
            start: one_hot(&[0; 4], 4),
            end: one_hot(&[0; 4], 4),
        };
        assert_eq!(span_accuracy(&f, &rows, &cls), (0.0, 0.0));
        // no labelled window: 0, not NaN
        let none = feats(&[(0, 0), (0, 0)]);
        assert_eq!(span_accuracy(&none, &[0, 1], &cls), (0.0, 0.0));
    }
}
