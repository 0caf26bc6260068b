//! `pipeline run <stage|all>`: one stage, or all of them in order (skipping those up to date),
//! here, in fold workers, or submitted to Slurm.

use anyhow::{bail, Result};

use super::ConfigArgs;
use crate::launch::worker::WorkerFlags;
use crate::run::Lock;
use crate::settings::LauncherKind;
use crate::stages::{self, Ctx, Stage};
use crate::ui::Ui;

/// Which stage `run` runs: one [`Stage`] by its name, or `all` (`None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target(pub Option<Stage>);

fn parse_target(s: &str) -> std::result::Result<Target, String> {
    if s == "all" {
        return Ok(Target(None));
    }
    <Stage as clap::ValueEnum>::from_str(s, false)
        .map(|st| Target(Some(st)))
        .map_err(|_| {
            let names: Vec<&str> = Stage::ALL.iter().map(|st| st.name()).collect();
            format!("use one of {}, all", names.join(", "))
        })
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// prepare, split, train, predict, ensemble, evaluate, submit, or all
    #[arg(value_parser = parse_target)]
    pub target: Target,
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Limit fold-wise stages (train, predict) to one fold.
    #[arg(long)]
    pub fold: Option<usize>,
    /// Rerun even when up to date.
    #[arg(long)]
    pub force: bool,
    /// Where the work runs: in this process (`local`) or submitted to Slurm as three
    /// dependent jobs (`slurm`, see `[slurm]`); default `[launcher] kind`.
    #[arg(long, value_enum)]
    pub launcher: Option<LauncherKind>,
    /// With the Slurm launcher: print the job scripts and `sbatch` lines, submit nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub worker: WorkerFlags,
}

pub fn exec(a: Args, ui: Ui) -> Result<()> {
    let mut settings = a.config.load()?;
    // A fold worker of `train.devices` / `parallel_folds` runs on the device it is pinned to.
    if let Some(d) = a.worker.worker_device {
        settings.train.device = d;
    }
    let launcher = a.launcher.unwrap_or(settings.launcher.kind);
    let stage = a.target.0;
    if let (Some(k), Some(stage)) = (a.fold, stage) {
        if !stage.per_fold() {
            bail!(
                "--fold {k} applies to the per-fold stages (train, predict, or all), not to `{}`",
                stage.name()
            );
        }
    }
    let mut ctx = Ctx::new(settings, a.force, a.fold, ui)?;
    ctx.config_args = a.config.to_args();
    ctx.fold_workers = Some(crate::launch::local::folds_in_processes);
    if launcher == LauncherKind::Slurm {
        if a.fold.is_some() || stage.is_some() {
            bail!("--launcher slurm submits a whole run: use `pipeline run all --launcher slurm`");
        }
        return crate::launch::slurm::submit(&ctx, a.dry_run);
    }
    if a.dry_run {
        bail!("--dry-run applies to --launcher slurm");
    }
    ctx.interrupt_after = crate::env::interrupt_after_step()?;
    let _lock = lock(&ctx, &a.worker)?;
    match stage {
        Some(stage) => stages::run_stage(&ctx, stage),
        None => stages::run_all(&ctx),
    }
}

/// One writer per run, held until this process ends (see [`Lock`]). A fold task of a Slurm
/// array shares the run with the other folds' tasks (each locks its fold); an exclusive writer
/// (a local `run`) excludes them all. A fold worker of `train.parallel_folds` takes no run lock:
/// its parent holds it.
fn lock(ctx: &Ctx, worker: &WorkerFlags) -> Result<Option<Lock>> {
    if worker.slurm_fold_task {
        if ctx.fold.is_none() {
            bail!("--slurm-fold-task is only for `pipeline run <stage> --fold K`");
        }
        return Ok(Some(Lock::acquire_shared(
            &ctx.run_dir.join(crate::run::LOCK),
            &format!("run {}", ctx.run_dir.display()),
        )?));
    }
    crate::run::lock_run(&ctx.run_dir, worker.worker_of)
}
