//! The stage list and runner: what each stage reads, whether it is up to date, and running it.
//!
//! A stage is done when its manifest exists and matches the current settings section it reads
//! and the current content of its inputs (data files, upstream outputs). `run all` walks the
//! list, skipping done stages; a single stage refuses to run on top of an upstream stage that is
//! missing or stale.

pub mod ensemble;
pub mod evaluate;
pub mod predict;
pub mod prepare;
pub mod split;
pub mod submit;
pub mod train;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::Serialize;

use crate::artifacts::{read_summary, TrainSummary};
use crate::run::{self, names, Manifest, RunLayout, Status};
use crate::settings::Settings;
use crate::ui::Ui;

/// The stages, in pipeline order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Stage {
    Prepare,
    Split,
    Train,
    Predict,
    Ensemble,
    Evaluate,
    Submit,
}

impl Stage {
    pub const ALL: [Stage; 7] = [
        Stage::Prepare,
        Stage::Split,
        Stage::Train,
        Stage::Predict,
        Stage::Ensemble,
        Stage::Evaluate,
        Stage::Submit,
    ];

    /// The stage's name, module and output folder.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Prepare => names::PREPARE,
            Stage::Split => names::SPLIT,
            Stage::Train => names::TRAIN,
            Stage::Predict => names::PREDICT,
            Stage::Ensemble => names::ENSEMBLE,
            Stage::Evaluate => names::EVALUATE,
            Stage::Submit => names::SUBMIT,
        }
    }

    /// Stages that run once per fold.
    pub fn per_fold(self) -> bool {
        matches!(self, Stage::Train | Stage::Predict)
    }

    /// The stage this one reads from.
    fn upstream(self) -> Option<Stage> {
        let i = Stage::ALL.iter().position(|s| *s == self)?;
        i.checked_sub(1).map(|j| Stage::ALL[j])
    }
}

/// Everything a stage needs: the resolved settings, the run folder and the CLI's choices.
pub struct Ctx {
    pub settings: Settings,
    pub run_dir: PathBuf,
    pub force: bool,
    pub fold: Option<usize>,
    pub ui: Ui,
    /// The `--config` / `--set` arguments this run was started with, for fold processes.
    pub config_args: Vec<String>,
    /// For tests that resume: each training fold stops as a crash would, right after a
    /// checkpoint at this step (`PIPELINE_INTERRUPT_AFTER_STEP`, read by `commands`).
    pub interrupt_after: Option<usize>,
    /// Runs the folds of a per-fold stage in worker processes, one per device given, where
    /// `train.devices` or `train.parallel_folds` asks for that (set by the `run` command to
    /// [`crate::launch`]'s; `None`: such settings are refused).
    pub fold_workers: Option<FoldWorkers>,
}

/// Runs the folds of `stage` that are not done in worker processes on `devices`.
pub type FoldWorkers = fn(&Ctx, Stage, &[crate::device::Device]) -> Result<()>;

impl Ctx {
    pub fn new(settings: Settings, force: bool, fold: Option<usize>, ui: Ui) -> Result<Self> {
        if let Some(k) = fold {
            if k >= settings.split.folds {
                bail!(
                    "--fold {k} is out of range: split.folds = {} (folds are 0..{})",
                    settings.split.folds,
                    settings.split.folds - 1
                );
            }
        }
        Ok(Self {
            run_dir: settings.run_dir(),
            settings,
            force,
            fold,
            ui,
            config_args: Vec::new(),
            interrupt_after: None,
            fold_workers: None,
        })
    }

    /// The output folder of a stage.
    pub fn stage_dir(&self, stage: Stage) -> PathBuf {
        self.layout().stage(stage.name())
    }

    /// The paths of this run's folder.
    pub fn layout(&self) -> RunLayout {
        RunLayout::new(&self.run_dir)
    }
}

/// What decides whether a stage is up to date.
pub struct Plan {
    /// `prepare`, or `train fold 2`.
    pub label: String,
    /// The fold of a per-fold stage.
    pub fold: Option<usize>,
    pub dir: PathBuf,
    pub config_hash: String,
    pub inputs: Vec<(String, PathBuf)>,
}

/// Files under a path: the path itself, or every file in a folder (sorted), for hashing.
pub fn files_of(path: &Path) -> Vec<PathBuf> {
    if path.is_dir() {
        let mut v: Vec<PathBuf> = std::fs::read_dir(path)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.is_file())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    } else {
        vec![path.to_path_buf()]
    }
}

/// A settings value's hash, for a plan.
pub fn hash_of<T: Serialize>(v: &T) -> Result<String> {
    run::config_hash(v)
}

/// An input of a plan: a file, named by its path.
pub fn input(p: PathBuf) -> (String, PathBuf) {
    (p.display().to_string(), p)
}

impl Plan {
    /// The plan of a stage that runs once.
    pub fn once(
        ctx: &Ctx,
        stage: Stage,
        config_hash: String,
        inputs: Vec<(String, PathBuf)>,
    ) -> Self {
        Plan {
            label: stage.name().to_string(),
            fold: None,
            dir: ctx.stage_dir(stage),
            config_hash,
            inputs,
        }
    }

    /// The plan of fold `k` of a per-fold stage, whose output folder is `dir`.
    pub fn fold(
        stage: Stage,
        k: usize,
        dir: PathBuf,
        config_hash: String,
        inputs: Vec<(String, PathBuf)>,
    ) -> Self {
        Plan {
            label: format!("{} fold {k}", stage.name()),
            fold: Some(k),
            dir,
            config_hash,
            inputs,
        }
    }
}

/// The folds a per-fold stage runs: `--fold K`, or all.
fn folds(ctx: &Ctx) -> Vec<usize> {
    match ctx.fold {
        Some(k) => vec![k],
        None => (0..ctx.settings.split.folds).collect(),
    }
}

/// The units of a stage (one, or one per fold), each planned by the stage's own module.
pub fn plans(ctx: &Ctx, stage: Stage) -> Result<Vec<Plan>> {
    match stage {
        Stage::Prepare => Ok(vec![prepare::plan(ctx)?]),
        Stage::Split => Ok(vec![split::plan(ctx)?]),
        Stage::Train => folds(ctx)
            .into_iter()
            .map(|k| train::plan(ctx, k))
            .collect(),
        Stage::Predict => folds(ctx)
            .into_iter()
            .map(|k| predict::plan(ctx, k))
            .collect(),
        Stage::Ensemble => Ok(vec![ensemble::plan(ctx)?]),
        Stage::Evaluate => Ok(vec![evaluate::plan(ctx)?]),
        Stage::Submit => Ok(vec![submit::plan(ctx)?]),
    }
}

/// Where one unit stands.
pub fn unit_status(ctx: &Ctx, stage: Stage, p: &Plan) -> Result<(Status, Option<Manifest>)> {
    for (_, path) in &p.inputs {
        if !path.exists() {
            let m = Manifest::read(&p.dir).ok().flatten();
            let up = Stage::ALL.iter().filter(|up| **up < stage).find(|up| {
                path.starts_with(ctx.stage_dir(**up))
                    || path.starts_with(ctx.run_dir.join(up.name()))
            });
            let why = match up {
                Some(up) => format!("needs `{}` first", up.name()),
                None => format!("input {} does not exist", path.display()),
            };
            return Ok((
                if m.is_some() {
                    Status::Stale(why)
                } else {
                    Status::Missing
                },
                m,
            ));
        }
    }
    run::check(&p.dir, &p.config_hash, &p.inputs)
}

/// Whether fold `k` of a per-fold stage is done (up to date).
pub fn fold_done(ctx: &Ctx, stage: Stage, k: usize) -> Result<bool> {
    let p = match stage {
        Stage::Train => train::plan(ctx, k)?,
        Stage::Predict => predict::plan(ctx, k)?,
        other => bail!("`{}` is not a per-fold stage", other.name()),
    };
    Ok(unit_status(ctx, stage, &p)?.0 == Status::Done)
}

/// Where a stage stands: done when every unit (fold) is; else the first unit that is not.
pub fn status(ctx: &Ctx, stage: Stage) -> Result<(Status, Option<Manifest>)> {
    let mut last = None;
    for p in plans(ctx, stage)? {
        let (st, m) = unit_status(ctx, stage, &p)?;
        if st != Status::Done {
            let st = match (stage.per_fold(), st) {
                (true, Status::Missing) => Status::Stale(format!("{} is missing", p.label)),
                (true, Status::Stale(why)) => Status::Stale(format!("{}: {why}", p.label)),
                (_, st) => st,
            };
            return Ok((st, m));
        }
        last = m;
    }
    Ok((Status::Done, last))
}

fn run_one(ctx: &Ctx, stage: Stage) -> Result<()> {
    if stage.per_fold() && ctx.fold.is_none() {
        let t = &ctx.settings.train;
        let devices = if !t.devices.is_empty() {
            Some(t.devices.resolve()?)
        } else if stage == Stage::Train && t.parallel_folds > 1 {
            Some(vec![t.device; t.parallel_folds])
        } else {
            None
        };
        if let Some(devices) = devices {
            let Some(workers) = ctx.fold_workers else {
                bail!(
                    "{}: train.devices / train.parallel_folds need `pipeline run`'s fold workers",
                    stage.name()
                );
            };
            return workers(ctx, stage, &devices);
        }
    }
    for p in plans(ctx, stage)? {
        if !ctx.force && unit_status(ctx, stage, &p)?.0 == Status::Done {
            ctx.ui.info(&format!("{}: up to date, skipped", p.label));
            continue;
        }
        let label = p.label.clone();
        ctx.ui.info(&format!("{label}: running"));
        let m = match stage {
            Stage::Prepare => prepare::run(ctx, p)?,
            Stage::Split => split::run(ctx, p)?,
            Stage::Train => train::run(ctx, p)?,
            Stage::Predict => predict::run(ctx, p)?,
            Stage::Ensemble => ensemble::run(ctx, p)?,
            Stage::Evaluate => evaluate::run(ctx, p)?,
            Stage::Submit => submit::run(ctx, p)?,
        };
        ctx.ui
            .info(&format!("{label}: done in {:.1}s", m.elapsed_s));
    }
    Ok(())
}

/// Brings a run made before `train` depended only on the training part of `prepare` and
/// `split` up to date, once: a `prepare` or `split` whose outputs are intact gets its
/// `train_key.json` (computed from its files, added to its manifest); a train fold whose
/// manifest lists the whole prepared files, unchanged, lists the keys instead, and its
/// resumable checkpoints take the new resume key. Nothing is retrained. Idempotent.
pub fn migrate(ctx: &Ctx) -> Result<()> {
    let at = ctx.layout();
    for stage in [Stage::Prepare, Stage::Split] {
        let dir = ctx.stage_dir(stage);
        let key_path = dir.join(names::TRAIN_KEY);
        let Some(mut m) = Manifest::read(&dir).ok().flatten() else {
            continue;
        };
        if key_path.exists() || run::changed_outputs(&dir, &m)?.is_some() {
            continue;
        }
        let key = match stage {
            Stage::Prepare => crate::artifacts::prepared_train_key(
                &at.examples(),
                &at.features(),
                &at.tokenizer().join(crate::qa::windows::TOKENIZER_FILE),
            )?,
            _ => crate::artifacts::split_train_key(&at.examples(), &at.folds())?,
        };
        run::write_json_atomic(&key_path, &key)?;
        m.outputs
            .insert(names::TRAIN_KEY.into(), run::FileRecord::of(&key_path)?);
        run::write_json_atomic(&dir.join(run::MANIFEST), &m)?;
    }
    for k in 0..ctx.settings.split.folds {
        let (new, old) = (train::plan(ctx, k)?, train::legacy_plan(ctx, k)?);
        if !new
            .inputs
            .iter()
            .chain(&old.inputs)
            .all(|(_, p)| p.exists())
        {
            continue;
        }
        if let Some(mut m) = Manifest::read(&new.dir).ok().flatten() {
            let legacy = m.inputs.len() == old.inputs.len()
                && old.inputs.iter().all(|(key, _)| m.inputs.contains_key(key));
            if legacy && run::check(&old.dir, &old.config_hash, &old.inputs)?.0 == Status::Done {
                m.inputs = run::records(&new.inputs)?;
                run::write_json_atomic(&new.dir.join(run::MANIFEST), &m)?;
            }
        }
        let (old_key, new_key) = (
            run::resume_key(&old.config_hash, &old.inputs)?,
            run::resume_key(&new.config_hash, &new.inputs)?,
        );
        for dir in RunLayout::checkpoints(&new.dir) {
            let path = dir.join(names::TRAINER_STATE);
            let Some(mut st) = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            else {
                continue;
            };
            if st["config_hash"] == old_key.as_str() {
                st["config_hash"] = new_key.clone().into();
                run::write_json_atomic(&path, &st)?;
            }
        }
    }
    Ok(())
}

/// `pipeline run <stage>`: runs it unless up to date (or forced); upstream must be done.
pub fn run_stage(ctx: &Ctx, stage: Stage) -> Result<()> {
    migrate(ctx)?;
    if let Some(up) = stage.upstream() {
        let (st, _) = status(ctx, up)?;
        if st != Status::Done {
            bail!(
                "stage `{}` needs `{}`, which is {}: run `pipeline run {}` (or `pipeline run all`) first",
                stage.name(),
                up.name(),
                st.label(),
                up.name()
            );
        }
    }
    if !ctx.force && status(ctx, stage)?.0 == Status::Done {
        ctx.ui.info(&format!(
            "{}: up to date (use --force to rerun)",
            stage.name()
        ));
        return Ok(());
    }
    run_one(ctx, stage)
}

/// `pipeline run all`: every stage in order, skipping those up to date.
pub fn run_all(ctx: &Ctx) -> Result<()> {
    migrate(ctx)?;
    // Before `prepare` writes anything: a step that cannot fit stops the run now.
    train::check_fits(&ctx.settings, None)?;
    for stage in Stage::ALL {
        if let Some(k) = ctx.fold.filter(|_| stage > Stage::Predict) {
            ctx.ui.info(&format!(
                "--fold {k}: stopping before `{}`, which needs every fold (`pipeline run all` without --fold)",
                stage.name()
            ));
            return Ok(());
        }
        if !ctx.force && status(ctx, stage)?.0 == Status::Done {
            ctx.ui
                .info(&format!("{}: up to date, skipped", stage.name()));
            continue;
        }
        run_one(ctx, stage)?;
    }
    let submit = ctx.stage_dir(Stage::Submit);
    let evaluate = ctx.stage_dir(Stage::Evaluate);
    ctx.ui.info(&format!(
        "done: submission {} , scores {} , report with plots {}",
        submit.join(names::PREDICTIONS).display(),
        evaluate.join(names::REPORT).display(),
        ctx.run_dir.join(names::REPORT_HTML).display()
    ));
    Ok(())
}

/// `pipeline status`: one line per stage (with fold sizes for `split`).
pub fn report_status(ctx: &Ctx) -> Result<String> {
    migrate(ctx)?;
    let mut out = format!("run folder: {}\n", ctx.run_dir.display());
    let mut upstream_ok = true;
    for stage in Stage::ALL {
        let (mut st, m) = status(ctx, stage)?;
        if !upstream_ok && st == Status::Done {
            st = Status::Stale("an upstream stage is not done".into());
        }
        out.push_str(&format!("{:<9} {}\n", stage.name(), st.label()));
        if stage.per_fold() {
            for p in plans(ctx, stage)? {
                let (fs, fm) = unit_status(ctx, stage, &p)?;
                let best = match (stage, &fm) {
                    (Stage::Train, Some(_)) => match read_summary::<TrainSummary>(&p.dir) {
                        Ok(Some(t)) => format!(
                            ", best F1 {:.2} EM {:.2} at step {}",
                            t.best.f1, t.best.exact_match, t.best.step
                        ),
                        Ok(None) => String::new(),
                        Err(e) => format!(", {}", crate::run::one_line(&e)),
                    },
                    _ => String::new(),
                };
                let label = match (stage, &fs) {
                    (Stage::Train, Status::Missing | Status::Stale(_)) => {
                        match train::resumable_step(&p) {
                            Some(step) => format!("resumable from step {step}"),
                            None => fs.label(),
                        }
                    }
                    _ => fs.label(),
                };
                out.push_str(&format!("          {}: {label}{best}\n", p.label));
            }
        }
        if let (Status::Done, Some(m)) = (&st, &m) {
            let extra = match stage {
                Stage::Prepare => prepare::describe(&m.summary),
                Stage::Split => split::describe(&m.summary),
                _ => None,
            };
            if let Some(extra) = extra {
                for line in extra.lines() {
                    out.push_str(&format!("          {line}\n"));
                }
            }
        }
        upstream_ok &= st == Status::Done;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(sets: &[&str], stage: Stage) -> Vec<String> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let settings = Settings::from_toml("[data]\ntrain = \"t.json\"", &sets).unwrap();
        let ctx = Ctx::new(
            settings,
            false,
            None,
            Ui {
                quiet: true,
                plain: false,
            },
        )
        .unwrap();
        plans(&ctx, stage)
            .unwrap()
            .into_iter()
            .map(|p| p.config_hash)
            .collect()
    }

    /// `PIPELINE_ATTENTION` (now `train.eval_attention`) changes `predict`'s logits, so it
    /// makes `predict` and `train` (whose validation uses it) stale; the multi-tensor step
    /// gives the same numbers and does not. Defaults hash as before the settings existed.
    #[test]
    fn settings_that_change_results_enter_the_hash_and_the_others_do_not() {
        for stage in [Stage::Train, Stage::Predict] {
            let base = hashes(&[], stage);
            let naive = hashes(&["train.eval_attention=naive"], stage);
            let fused = hashes(&["train.eval_attention=fused"], stage);
            let multi = hashes(&["train.multi_tensor_adamw=true"], stage);
            let padded = hashes(&["train.batching=padded"], stage);
            let dynamic = hashes(&["train.batching=dynamic"], stage);
            assert_eq!(base, padded, "{stage:?}");
            assert_ne!(base, dynamic, "{stage:?}");
            assert_eq!(base, naive, "{stage:?}");
            assert_ne!(base, fused, "{stage:?}");
            assert_eq!(base, multi, "{stage:?}");
        }
    }
}
