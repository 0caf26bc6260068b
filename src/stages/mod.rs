//! The stage list and runner: what each stage reads, whether it is up to date, and running it.
//!
//! A stage is done when its manifest exists and matches the current settings section it reads
//! and the current content of its inputs (data files, upstream outputs). `run all` walks the
//! list, skipping done stages; a single stage refuses to run on top of an upstream stage that is
//! missing or stale.

pub mod prepare;
pub mod split;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::Serialize;

use crate::run::{self, Manifest, Status};
use crate::settings::Settings;
use crate::ui::Ui;

/// The stages, in pipeline order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
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
            Stage::Prepare => "prepare",
            Stage::Split => "split",
            Stage::Train => "train",
            Stage::Predict => "predict",
            Stage::Ensemble => "ensemble",
            Stage::Evaluate => "evaluate",
            Stage::Submit => "submit",
        }
    }

    /// Stages whose code does not exist yet, and the issue that builds them.
    fn not_built(self) -> Option<&'static str> {
        match self {
            Stage::Prepare | Stage::Split => None,
            _ => Some("the model and training issues (#3, #4)"),
        }
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
}

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
        })
    }

    /// The output folder of a stage.
    pub fn stage_dir(&self, stage: Stage) -> PathBuf {
        self.run_dir.join(stage.name())
    }
}

/// What decides whether a stage is up to date.
pub struct Plan {
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

fn hash_of<T: Serialize>(v: &T) -> Result<String> {
    run::config_hash(v)
}

/// The settings and inputs a stage reads.
pub fn plan(ctx: &Ctx, stage: Stage) -> Result<Plan> {
    let s = &ctx.settings;
    let dir = ctx.stage_dir(stage);
    let (config_hash, inputs) = match stage {
        Stage::Prepare => prepare::plan(s)?,
        Stage::Split => (
            hash_of(&s.split)?,
            vec![(
                "prepare/examples.parquet".to_string(),
                ctx.stage_dir(Stage::Prepare).join("examples.parquet"),
            )],
        ),
        _ => (String::new(), Vec::new()),
    };
    Ok(Plan {
        dir,
        config_hash,
        inputs,
    })
}

/// Where a stage stands, with its manifest when it has one.
pub fn status(ctx: &Ctx, stage: Stage) -> Result<(Status, Option<Manifest>)> {
    if let Some(issue) = stage.not_built() {
        return Ok((Status::Stale(format!("not built yet: {issue}")), None));
    }
    let p = plan(ctx, stage)?;
    for (_, path) in &p.inputs {
        if !path.exists() {
            let m = Manifest::read(&p.dir)?;
            let why = match stage.upstream() {
                Some(up) if path.starts_with(ctx.stage_dir(up)) => {
                    format!("needs `{}` first", up.name())
                }
                _ => format!("input {} does not exist", path.display()),
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

fn run_one(ctx: &Ctx, stage: Stage) -> Result<Manifest> {
    let p = plan(ctx, stage)?;
    ctx.ui.info(&format!("{}: running", stage.name()));
    let m = match stage {
        Stage::Prepare => prepare::run(ctx, p)?,
        Stage::Split => split::run(ctx, p)?,
        other => bail!(
            "stage `{}` is not built yet: it comes with {}",
            other.name(),
            other.not_built().unwrap_or("a later issue")
        ),
    };
    ctx.ui.info(&format!(
        "{}: done in {:.1}s -> {}",
        stage.name(),
        m.elapsed_s,
        ctx.stage_dir(stage).display()
    ));
    Ok(m)
}

/// `pipeline run <stage>`: runs it unless up to date (or forced); upstream must be done.
pub fn run_stage(ctx: &Ctx, stage: Stage) -> Result<()> {
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
    if stage.not_built().is_none() && !ctx.force && status(ctx, stage)?.0 == Status::Done {
        ctx.ui.info(&format!(
            "{}: up to date (use --force to rerun)",
            stage.name()
        ));
        return Ok(());
    }
    run_one(ctx, stage).map(|_| ())
}

/// `pipeline run all`: every stage in order, skipping those up to date.
pub fn run_all(ctx: &Ctx) -> Result<()> {
    for stage in Stage::ALL {
        if stage.not_built().is_none() && !ctx.force && status(ctx, stage)?.0 == Status::Done {
            ctx.ui
                .info(&format!("{}: up to date, skipped", stage.name()));
            continue;
        }
        run_one(ctx, stage)?;
    }
    Ok(())
}

/// `pipeline status`: one line per stage (with fold sizes for `split`).
pub fn report_status(ctx: &Ctx) -> Result<String> {
    let mut out = format!("run folder: {}\n", ctx.run_dir.display());
    let mut upstream_ok = true;
    for stage in Stage::ALL {
        let (mut st, m) = status(ctx, stage)?;
        if !upstream_ok && st == Status::Done {
            st = Status::Stale("an upstream stage is not done".into());
        }
        out.push_str(&format!("{:<9} {}\n", stage.name(), st.label()));
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
