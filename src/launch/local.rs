//! The local launcher's fold workers: the folds of a per-fold stage in child processes of
//! this one, a device each ([`folds_in_processes`], handed to the stages as
//! [`crate::stages::FoldWorkers`]).

use anyhow::{bail, Result};

use super::pool::run_processes;
use super::worker::Worker;
use crate::run::Status;
use crate::stages::{self, Ctx, Stage};

/// Runs the folds of `stage` that are not done in child processes (`pipeline run <stage> --fold
/// K` with this run's config), one per device of `devices` at a time, each pinned to its device
/// (the hidden `--worker-device`): `train.devices`, or `train.parallel_folds` copies of `train.device` so a
/// CPU run uses every core. Each fold keeps its own seeded random streams and a device's index
/// is not part of any hash, so results equal one-by-one runs.
pub fn folds_in_processes(
    ctx: &Ctx,
    stage: Stage,
    devices: &[crate::device::Device],
) -> Result<()> {
    let mut queue = Vec::new();
    for p in stages::plans(ctx, stage)? {
        if !ctx.force && stages::unit_status(ctx, stage, &p)?.0 == Status::Done {
            ctx.ui.info(&format!("{}: up to date, skipped", p.label));
        } else if let Some(k) = p.fold {
            queue.push(k);
        }
    }
    let name = stage.name();
    if queue.is_empty() {
        return Ok(());
    }
    // No more workers than folds to run.
    let devices = &devices[..devices.len().min(queue.len())];
    let shown: Vec<String> = devices.iter().map(|d| d.to_string()).collect();
    ctx.ui.info(&format!(
        "{name}: folds {queue:?}, {} at a time in separate processes on [{}]",
        devices.len(),
        shown.join(", ")
    ));
    let mut failed = run_processes(queue, devices.len(), |&k, slot| {
        let mut worker = Worker::fold(name, k, devices[slot], &ctx.config_args);
        worker.force = ctx.force;
        worker.quiet = ctx.ui.quiet;
        ctx.ui
            .info(&format!("{name} fold {k}: worker on {}", devices[slot]));
        worker.command()
    })?;
    if !failed.is_empty() {
        failed.sort_unstable();
        bail!(
            "{name}: fold(s) {failed:?} failed (their errors are above); `pipeline run {name}` resumes them"
        );
    }
    Ok(())
}
