//! `pipeline run all --launcher slurm`: the run as three dependent Slurm jobs.
//!
//! 1. `prepare` + `split` (one task);
//! 2. a job array, one task per fold not yet done, each `run train --fold K` then
//!    `run predict --fold K`, after (1) succeeded (`afterok`), requeue-able: a requeued or
//!    resubmitted task resumes its fold from its last checkpoint;
//! 3. `run all` (ensemble, evaluate, submit; everything before is done by then), after every task
//!    of (2) succeeded. A failed or cancelled fold leaves it unrun (`--kill-on-invalid-dep`).
//!
//! Every task runs this same `pipeline` binary, in the same folder, with the same `--config` and
//! `--set` arguments, so its stage hashes are the ones a local run computes and a finished task
//! looks to `pipeline status` exactly like a local fold. The scripts are written, readable, into
//! `outputs/<run>/slurm/`, with the task logs in `slurm/logs/` and the job ids in `jobs.json`.
//!
//! Locks: the fold tasks share the run's lock (a shared `flock`) and each takes its fold's lock
//! exclusively; a local `pipeline run` takes the run's lock exclusively, so it and the tasks
//! exclude each other. That holds across machines where the shared filesystem carries `flock`
//! (NFSv4, and NFSv3 with NLM, map it to byte-range locks; Lustre needs the `flock` mount option;
//! an NFS mount with `local_lock=flock` or `local_lock=all` makes it per machine): see
//! docs/cluster.md.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::run::{self, names, RunLayout};

/// A fold task's hidden flag ([`super::worker::WorkerFlags::slurm_fold_task`]): `pipeline run
/// <stage> --fold K` then shares the run's lock with the other tasks (see the module's notes).
const FOLD_TASK: &str = "--slurm-fold-task";
use crate::settings::{GpuFlag, SlurmSettings};
use crate::stages::{self, Ctx, Stage};

/// What was submitted, in `slurm/jobs.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Jobs {
    pub submitted_at: String,
    /// The `prepare` + `split` job, where those were not done.
    pub prepare: Option<String>,
    /// The fold array and its folds (task ids are the fold numbers).
    pub folds_array: Option<String>,
    pub folds: Vec<usize>,
    /// The `ensemble` + `evaluate` + `submit` job.
    pub finish: String,
    pub logs: PathBuf,
}

/// One job script.
struct Script {
    /// File name in `slurm/` (also the job name's suffix).
    name: &'static str,
    text: String,
}

/// A word for a shell script, quoted where it needs to be.
fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The `#SBATCH` lines every job gets, and those fold tasks add (GPUs, requeue).
fn sbatch_lines(c: &SlurmSettings, job: &str, log: &str, cwd: &Path, fold_task: bool) -> String {
    let mut v = vec![
        format!("--job-name={job}"),
        format!("--output={log}"),
        format!("--chdir={}", cwd.display()),
        "--nodes=1".to_string(),
        "--ntasks=1".to_string(),
        format!("--cpus-per-task={}", c.cpus_per_task.max(1)),
        // A failed or cancelled dependency removes the job instead of leaving it pending.
        "--kill-on-invalid-dep=yes".to_string(),
    ];
    for (flag, value) in [
        ("partition", &c.partition),
        ("account", &c.account),
        ("qos", &c.qos),
        ("time", &c.time),
        ("mem", &c.mem),
    ] {
        if let Some(v2) = value {
            v.push(format!("--{flag}={v2}"));
        }
    }
    if fold_task {
        // Preempted or requeued: the task starts again and resumes its fold; its log goes on.
        v.push("--requeue".to_string());
        v.push("--open-mode=append".to_string());
        if c.gpus_per_task > 0 {
            v.push(match c.gpu_flag {
                GpuFlag::Gres => format!("--gres=gpu:{}", c.gpus_per_task),
                GpuFlag::GpusPerTask => format!("--gpus-per-task={}", c.gpus_per_task),
            });
        }
    }
    v.extend(c.extra_args.iter().cloned());
    v.iter().map(|l| format!("#SBATCH {l}\n")).collect()
}

/// What the run's job names start with (`[slurm] job_name`, else `pipeline-<run name>`).
fn job_base(ctx: &Ctx) -> String {
    ctx.settings
        .slurm
        .job_name
        .clone()
        .unwrap_or_else(|| format!("pipeline-{}", ctx.settings.run.name))
}

/// The three scripts.
fn scripts(ctx: &Ctx, exe: &Path, cwd: &Path, logs: &Path) -> Vec<Script> {
    let c = &ctx.settings.slurm;
    let base = job_base(ctx);
    let args: Vec<String> = ctx.config_args.iter().map(|a| quote(a)).collect();
    let args = args.join(" ");
    // The tasks run here, whatever `[launcher]` says.
    let quiet = if ctx.ui.quiet {
        " --launcher local -q"
    } else {
        " --launcher local"
    };
    let head = |what: &str| {
        format!(
            "#!/bin/bash\n# {what}\n# Written by `pipeline run all --launcher slurm` for run {}; submitted with\n# `sbatch --parsable [--dependency=afterok:<id>] [--array=<folds>] <this file>`.\n",
            ctx.settings.run.name
        )
    };
    let body = |lines: &[String]| {
        let mut t = String::from("set -euo pipefail\n");
        if let Some(setup) = &c.setup {
            t.push_str(setup);
            t.push('\n');
        }
        t.push_str(&format!("exe={}\n", quote(&exe.display().to_string())));
        for l in lines {
            t.push_str(l);
            t.push('\n');
        }
        t
    };
    let log = |array: bool| {
        let pattern = if array { "%x-%A_%a.out" } else { "%x-%j.out" };
        logs.join(pattern).display().to_string()
    };
    let prepare_job = format!("{base}-prepare");
    let folds_job = format!("{base}-fold");
    let finish_job = format!("{base}-finish");
    vec![
        Script {
            name: names::SLURM_PREPARE,
            text: head("prepare + split")
                + &sbatch_lines(c, &prepare_job, &log(false), cwd, false)
                + &body(&[
                    format!("\"$exe\" run prepare {args}{quiet}"),
                    format!("\"$exe\" run split {args}{quiet}"),
                ]),
        },
        Script {
            name: names::SLURM_FOLDS,
            text: head("one fold per array task: train, then predict (a rerun resumes the fold)")
                + &sbatch_lines(c, &folds_job, &log(true), cwd, true)
                + &body(&[
                    "fold=\"$SLURM_ARRAY_TASK_ID\"".to_string(),
                    format!("\"$exe\" run train --fold \"$fold\" {FOLD_TASK} {args}{quiet}"),
                    format!("\"$exe\" run predict --fold \"$fold\" {FOLD_TASK} {args}{quiet}"),
                ]),
        },
        Script {
            name: names::SLURM_FINISH,
            text: head("ensemble + evaluate + submit, once every fold is done")
                + &sbatch_lines(c, &finish_job, &log(false), cwd, false)
                + &body(&[format!("\"$exe\" run all {args}{quiet}")]),
        },
    ]
}

fn jobs_path(run_dir: &Path) -> PathBuf {
    RunLayout::new(run_dir).slurm().join(names::SLURM_JOBS)
}

/// The jobs of the run's last submission, if any.
pub fn read_jobs(run_dir: &Path) -> Result<Option<Jobs>> {
    let p = jobs_path(run_dir);
    if !p.exists() {
        return Ok(None);
    }
    let bytes = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
    Ok(Some(
        serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", p.display()))?,
    ))
}

/// `squeue`'s view of `ids`: (job id as squeue prints it, state). Empty where none is queued
/// or running (or squeue cannot be asked).
fn squeue(ids: &[&str]) -> Vec<(String, String)> {
    if ids.is_empty() {
        return Vec::new();
    }
    let out = Command::new("squeue")
        .args(["-h", "-o", "%i|%T", "-j", &ids.join(",")])
        .output();
    let Ok(out) = out else { return Vec::new() };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('|'))
        .map(|(a, b)| (a.trim().to_string(), b.trim().to_string()))
        .collect()
}

/// The job ids of `jobs`.
fn ids(jobs: &Jobs) -> Vec<&str> {
    jobs.prepare
        .iter()
        .chain(jobs.folds_array.iter())
        .chain([&jobs.finish])
        .map(String::as_str)
        .collect()
}

/// Runs `sbatch` and returns the job id.
fn sbatch(args: &[String], script: &Path) -> Result<String> {
    let out = Command::new("sbatch")
        .args(args)
        .arg(script)
        .output()
        .context("running sbatch (is this a Slurm node? is `sbatch` on PATH?)")?;
    if !out.status.success() {
        bail!(
            "sbatch {} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // `--parsable` prints `id` or `id;cluster`.
    let id = text.trim().split(';').next().unwrap_or("").to_string();
    if id.is_empty() {
        bail!("sbatch {} printed no job id", script.display());
    }
    Ok(id)
}

/// Submits what is left of the run (or, with `dry_run`, prints it).
pub fn submit(ctx: &Ctx, dry_run: bool) -> Result<()> {
    let run_dir = &ctx.run_dir;
    let cwd = std::env::current_dir().context("reading the current folder")?;
    let exe = std::env::current_exe().context("locating the pipeline executable")?;
    let run_dir_abs = cwd.join(run_dir);
    refuse_while_busy(run_dir, dry_run)?;
    let left = Left::of(ctx)?;
    if left.folds.is_empty() && stages::status(ctx, Stage::Submit)?.0 == run::Status::Done {
        ctx.ui.info(&format!(
            "run {}: everything is done, nothing to submit",
            run_dir.display()
        ));
        return Ok(());
    }
    let all = scripts(ctx, &exe, &cwd, &RunLayout::new(&run_dir_abs).slurm_logs());
    let dir = RunLayout::new(run_dir).slurm();
    if dry_run {
        for s in &all {
            println!("# ---- {} ----\n{}", dir.join(s.name).display(), s.text);
        }
        print_submission(&dir, &left);
        return Ok(());
    }
    let logs = RunLayout::new(run_dir).slurm_logs();
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    for s in &all {
        let p = dir.join(s.name);
        run::write_atomic(&p, s.text.as_bytes())?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
    }
    let jobs = submit_jobs(&dir, &left, RunLayout::new(&run_dir_abs).slurm_logs())?;
    run::write_atomic(&jobs_path(run_dir), &serde_json::to_vec_pretty(&jobs)?)?;
    // The ids on stdout (one line, for scripts); the rest as messages.
    println!(
        "{}",
        serde_json::json!({
            "prepare": jobs.prepare,
            "folds": jobs.folds_array,
            "fold_list": jobs.folds,
            "finish": jobs.finish,
        })
    );
    ctx.ui.info(&format!(
        "submitted to Slurm: {}folds {:?} as array {}, then job {} (ensemble, evaluate, submit); scripts and logs in {}; `pipeline status` shows where they are",
        jobs.prepare
            .as_ref()
            .map_or(String::new(), |p| format!("prepare + split as job {p}, ")),
        jobs.folds,
        jobs.folds_array.as_deref().unwrap_or("-"),
        jobs.finish,
        dir.display()
    ));
    Ok(())
}

/// Refuses while an earlier submission of this run is still queued or running (unless only
/// printing), or while another process writes the run.
fn refuse_while_busy(run_dir: &Path, dry_run: bool) -> Result<()> {
    if let Some(old) = read_jobs(run_dir)? {
        let live = squeue(&ids(&old));
        if !live.is_empty() && !dry_run {
            let shown: Vec<String> = live.iter().map(|(i, s)| format!("{i} {s}")).collect();
            bail!(
                "run {} already has Slurm jobs queued or running ({}): wait for them or `scancel` them, then submit again",
                run_dir.display(),
                shown.join(", ")
            );
        }
    }
    if run::Lock::is_held(&run_dir.join(run::LOCK)) {
        bail!(
            "run {} is being written by another process (lock {}): wait for it to finish, then submit",
            run_dir.display(),
            run_dir.join(run::LOCK).display()
        );
    }
    Ok(())
}

/// What a submission has left to do: `prepare` + `split` unless both are done, and the folds
/// whose `train` or `predict` is not.
struct Left {
    upstream_done: bool,
    folds: Vec<usize>,
}

impl Left {
    fn of(ctx: &Ctx) -> Result<Self> {
        let upstream_done = stages::status(ctx, Stage::Split)?.0 == run::Status::Done
            && stages::status(ctx, Stage::Prepare)?.0 == run::Status::Done;
        let mut folds = Vec::new();
        for k in 0..ctx.settings.split.folds {
            let done = upstream_done
                && stages::fold_done(ctx, Stage::Train, k)?
                && stages::fold_done(ctx, Stage::Predict, k)?;
            if !done {
                folds.push(k);
            }
        }
        Ok(Self {
            upstream_done,
            folds,
        })
    }

    /// The job array's indices, `0,2,3`.
    fn array(&self) -> String {
        let ks: Vec<String> = self.folds.iter().map(|k| k.to_string()).collect();
        ks.join(",")
    }
}

/// The `sbatch` lines a submission would run, with placeholders for the ids.
fn print_submission(dir: &Path, left: &Left) {
    println!("# ---- submission ----");
    if !left.upstream_done {
        println!(
            "sbatch --parsable {}",
            dir.join(names::SLURM_PREPARE).display()
        );
    }
    if !left.folds.is_empty() {
        println!(
            "sbatch --parsable{} --array={} {}",
            if left.upstream_done {
                ""
            } else {
                " --dependency=afterok:<prepare>"
            },
            left.array(),
            dir.join(names::SLURM_FOLDS).display()
        );
    }
    println!(
        "sbatch --parsable{} {}",
        if left.folds.is_empty() {
            ""
        } else {
            " --dependency=afterok:<folds>"
        },
        dir.join(names::SLURM_FINISH).display()
    );
}

/// Submits the scripts in `dir` as dependent jobs: `prepare` + `split` where left, the folds'
/// array after it, the rest after both.
fn submit_jobs(dir: &Path, left: &Left, logs: PathBuf) -> Result<Jobs> {
    let prepare = if left.upstream_done {
        None
    } else {
        Some(sbatch(
            &["--parsable".into()],
            &dir.join(names::SLURM_PREPARE),
        )?)
    };
    let folds_array = if left.folds.is_empty() {
        None
    } else {
        let mut a = vec![
            "--parsable".to_string(),
            format!("--array={}", left.array()),
        ];
        if let Some(p) = &prepare {
            a.push(format!("--dependency=afterok:{p}"));
        }
        Some(sbatch(&a, &dir.join(names::SLURM_FOLDS))?)
    };
    let mut a = vec!["--parsable".to_string()];
    if let Some(f) = folds_array.as_ref().or(prepare.as_ref()) {
        a.push(format!("--dependency=afterok:{f}"));
    }
    let finish = sbatch(&a, &dir.join(names::SLURM_FINISH))?;
    Ok(Jobs {
        submitted_at: chrono::Utc::now().to_rfc3339(),
        prepare,
        folds_array,
        folds: left.folds.clone(),
        finish,
        logs,
    })
}

/// The fold task's log path of `jobs` for fold `k`.
fn fold_log(ctx: &Ctx, jobs: &Jobs, k: usize) -> Option<PathBuf> {
    let array = jobs.folds_array.as_ref()?;
    let base = job_base(ctx);
    Some(jobs.logs.join(format!("{base}-fold-{array}_{k}.out")))
}

/// Whether a log ends in an error of ours (`error: …`), and its last such line.
fn log_error(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .rev()
        .find(|l| l.starts_with("error:") || l.contains("CANCELLED") || l.contains("DUE TO"))
        .map(|l| l.trim().to_string())
}

/// `pipeline status` lines for a run submitted to Slurm (`None` for one that never was): each
/// job's state from `squeue` while it is queued or running, else from the manifests and the
/// task logs (this launcher does not need Slurm accounting; `sacct` may add more).
pub fn status(ctx: &Ctx) -> Result<Option<String>> {
    let Some(jobs) = read_jobs(&ctx.run_dir)? else {
        return Ok(None);
    };
    let live = squeue(&ids(&jobs));
    let state_of =
        |id: &str| -> Option<String> { live.iter().find(|(i, _)| i == id).map(|(_, s)| s.clone()) };
    // A pending array shows as `ID_[0-2]` or `ID_[0,2]`.
    let pending_in_array = |array: &str, k: usize| -> Option<String> {
        live.iter().find_map(|(i, s)| {
            let rest = i.strip_prefix(&format!("{array}_["))?;
            let list = rest.trim_end_matches(']').split('%').next()?;
            let hit = list.split(',').any(|part| match part.split_once('-') {
                Some((a, b)) => {
                    a.parse::<usize>().is_ok_and(|a| a <= k)
                        && b.parse::<usize>().is_ok_and(|b| k <= b)
                }
                None => part.parse::<usize>() == Ok(k),
            });
            hit.then(|| s.clone())
        })
    };
    let mut out = format!(
        "slurm: submitted {} (scripts and logs in {})\n",
        jobs.submitted_at,
        ctx.layout().slurm().display()
    );
    if let Some(p) = &jobs.prepare {
        let st = state_of(p).unwrap_or_else(|| {
            if stages::status(ctx, Stage::Split).is_ok_and(|s| s.0 == run::Status::Done) {
                "COMPLETED".into()
            } else {
                "ENDED, split not done: see its log".into()
            }
        });
        out.push_str(&format!("  prepare + split: job {p}: {st}\n"));
    }
    let mut failed = Vec::new();
    if let Some(array) = &jobs.folds_array {
        for &k in &jobs.folds {
            let id = format!("{array}_{k}");
            let log = fold_log(ctx, &jobs, k).unwrap_or_default();
            let st = match state_of(&id).or_else(|| pending_in_array(array, k)) {
                Some(s) => s,
                None if stages::fold_done(ctx, Stage::Predict, k).unwrap_or(false) => {
                    "COMPLETED".into()
                }
                None => {
                    failed.push(k);
                    match log_error(&log) {
                        Some(e) => format!("FAILED: {e} (log {})", log.display()),
                        None => format!("ENDED without finishing (log {})", log.display()),
                    }
                }
            };
            out.push_str(&format!("  fold {k}: job {id}: {st}\n"));
        }
    }
    let st = match state_of(&jobs.finish) {
        Some(s) => s,
        None if stages::status(ctx, Stage::Submit)?.0 == run::Status::Done => "COMPLETED".into(),
        None if !failed.is_empty() => format!("NOT RUN: fold(s) {failed:?} failed"),
        None => "ENDED, submit not done: see its log".into(),
    };
    out.push_str(&format!(
        "  ensemble + evaluate + submit: job {}: {st}\n",
        jobs.finish
    ));
    if !failed.is_empty() {
        out.push_str(&format!(
            "  fold(s) {failed:?} failed: `pipeline run all --launcher slurm` resubmits them (each resumes from its checkpoint)\n"
        ));
    }
    Ok(Some(out))
}
