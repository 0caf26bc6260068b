//! Command-line interface: clap types and dispatch into the library.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use crate::qa::examples::{self};
use crate::qa::metrics::{self, Metric, Score};
use crate::settings::{DataFormat, Settings};
use crate::stages::{self, Ctx, Stage};
use crate::ui::Ui;

/// K-fold extractive question answering: prepare, split, train, predict, ensemble, evaluate, submit.
#[derive(Debug, Parser)]
#[command(name = "pipeline", version, about)]
pub struct Cli {
    /// No progress bars or status messages.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// Which stage `run` runs: one [`Stage`] by its name, or `all` (`None`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target(Option<Stage>);

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

/// What `pipeline sweep` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SweepAction {
    Run,
    Status,
}

#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// The settings file.
    #[arg(long, default_value = "pipeline.toml")]
    pub config: PathBuf,
    /// Override one setting, e.g. `--set prepare.max_seq_length=256` (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
}

impl ConfigArgs {
    /// The same arguments again, for a child process.
    pub fn to_args(&self) -> Vec<String> {
        let mut v = vec!["--config".to_string(), self.config.display().to_string()];
        for s in &self.set {
            v.push("--set".into());
            v.push(s.clone());
        }
        v
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one stage, or all of them in order (skipping those up to date).
    Run {
        /// prepare, split, train, predict, ensemble, evaluate, submit, or all
        #[arg(value_parser = parse_target)]
        target: Target,
        #[command(flatten)]
        config: ConfigArgs,
        /// Limit fold-wise stages (train, predict) to one fold.
        #[arg(long)]
        fold: Option<usize>,
        /// Rerun even when up to date.
        #[arg(long)]
        force: bool,
        /// Where the work runs: in this process (`local`) or submitted to Slurm as three
        /// dependent jobs (`slurm`, see `[slurm]`); default `[launcher] kind`.
        #[arg(long, value_enum)]
        launcher: Option<crate::settings::LauncherKind>,
        /// With the Slurm launcher: print the job scripts and `sbatch` lines, submit nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Run every variant of a sweep (`[sweep]`, `--sweep FILE`, `--grid`) as its own run,
    /// sharing prepare and split where they are the same, and compare them
    /// (`<output_dir>/<sweep>/comparison.csv`, `.md`); `pipeline sweep status` shows where
    /// each variant stands.
    Sweep {
        /// `run` (the default) or `status`.
        #[arg(value_enum, default_value = "run")]
        action: SweepAction,
        #[command(flatten)]
        config: ConfigArgs,
        /// A TOML file with the `[sweep]` table (instead of the config's).
        #[arg(long = "sweep", value_name = "FILE")]
        sweep_file: Option<PathBuf>,
        /// A grid axis, e.g. `--grid train.learning_rate=1e-3,5e-4` (repeatable).
        #[arg(long, value_name = "SECTION.KEY=V1,V2")]
        grid: Vec<String>,
        /// Variants run at once (default `[sweep] parallel`, else 1).
        #[arg(long)]
        parallel: Option<usize>,
    },
    /// Ensemble several finished runs of the same prepared windows (e.g. a sweep's
    /// variants): writes predictions.json, nbest_predictions.json, oof_predictions.json and
    /// scores.json (out-of-fold and, where labelled, test EM/F1) into --out.
    Ensemble {
        /// Run folders, comma-separated or repeated (default: `[ensemble] runs`).
        #[arg(long, value_delimiter = ',')]
        runs: Vec<PathBuf>,
        /// How the runs combine (default: `[ensemble] method`).
        #[arg(long, value_enum)]
        method: Option<crate::settings::EnsembleMethod>,
        #[arg(long, default_value = "outputs/ensemble")]
        out: PathBuf,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Show each stage as done / stale / missing, with why.
    Status {
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Run any HF question-answering checkpoint (or an exported fold) over a data file; writes
    /// predictions.json, nbest_predictions.json and logits.safetensors into --out.
    Infer(crate::infer::InferArgs),
    /// Measure training throughput on random inputs (examples/s, tokens/s, MFU) for a model
    /// shape; prints one JSON object.
    Bench(crate::bench::BenchArgs),
    /// Score a predictions.json ({"id": "answer", ...}) against a SQuAD-format file, as the
    /// official scripts do; prints {"exact_match", "f1", "total"} as JSON.
    Score {
        data: PathBuf,
        predictions: PathBuf,
        #[arg(long, default_value = "korquad")]
        metric: Metric,
    },
}

/// Environment variables that act as settings, read here and nowhere else: each becomes a
/// `--set` override placed before the command line's own (which win), so it enters the stages'
/// settings hashes like any setting.
const ENV_SETTINGS: [(&str, &str); 2] = [
    // `fused` or `naive`: evaluation and prediction attention.
    ("PIPELINE_ATTENTION", "train.eval_attention"),
    // `1` or `0`: AdamW's multi-tensor step.
    ("PIPELINE_MULTI_TENSOR", "train.multi_tensor_adamw"),
];

/// The `--set` overrides of the environment (see [`ENV_SETTINGS`]).
fn env_overrides() -> Result<Vec<String>> {
    let mut sets = Vec::new();
    for (var, key) in ENV_SETTINGS {
        let Ok(value) = std::env::var(var) else {
            continue;
        };
        let value = match (key, value.as_str()) {
            ("train.multi_tensor_adamw", "1") => "true",
            ("train.multi_tensor_adamw", "0") => "false",
            ("train.multi_tensor_adamw", v) => bail!("{var}={v:?}: use 1 or 0"),
            ("train.eval_attention", v @ ("fused" | "naive")) => v,
            (_, v) => bail!("{var}={v:?}: use fused or naive"),
        };
        sets.push(format!("{key}={value}"));
    }
    Ok(sets)
}

/// The settings file with the environment's and then the command line's overrides.
fn load_settings(config: &ConfigArgs) -> Result<Settings> {
    let mut sets = env_overrides()?;
    sets.extend(config.set.iter().cloned());
    Settings::load(&config.config, &sets)
}

/// Parses the process arguments and runs the command.
/// Set to `1` to launch our GPU kernels with bounds checks (debugging; same results, slower).
const CHECKED_KERNELS_ENV: &str = "PIPELINE_CHECKED_KERNELS";

pub fn main() -> Result<()> {
    let cli = Cli::parse();
    let ui = Ui { quiet: cli.quiet };
    if std::env::var(CHECKED_KERNELS_ENV).is_ok_and(|v| v == "1") {
        crate::model::kernels::set_checked_launches(true);
    }
    match cli.command {
        Command::Run {
            target,
            config,
            fold,
            force,
            launcher,
            dry_run,
        } => {
            let mut settings = load_settings(&config)?;
            // A fold worker of `train.devices` / `parallel_folds` runs on the device it is
            // pinned to.
            if let Ok(d) = std::env::var(stages::DEVICE_ENV) {
                settings.train.device = d
                    .parse()
                    .with_context(|| format!("{}={d:?}", stages::DEVICE_ENV))?;
            }
            let launcher = launcher.unwrap_or(settings.launcher.kind);
            let mut ctx = Ctx::new(settings, force, fold, ui)?;
            if let (Some(k), Some(stage)) = (fold, stage_of(target)) {
                if !stage.per_fold() {
                    bail!(
                        "--fold {k} applies to the per-fold stages (train, predict, or all), not to `{}`",
                        stage.name()
                    );
                }
            }
            ctx.config_args = config.to_args();
            if launcher == crate::settings::LauncherKind::Slurm {
                if fold.is_some() || stage_of(target).is_some() {
                    bail!("--launcher slurm submits a whole run: use `pipeline run all --launcher slurm`");
                }
                return crate::launch::slurm::submit(&ctx, dry_run);
            }
            if dry_run {
                bail!("--dry-run applies to --launcher slurm");
            }
            // A test hook: the training loop stops after this step as a crash would.
            ctx.interrupt_after = std::env::var("PIPELINE_INTERRUPT_AFTER_STEP")
                .ok()
                .and_then(|v| v.parse().ok());
            // One writer per run: held until this process ends (see `run::Lock`).
            // A fold worker of `train.parallel_folds` is told its parent's pid (`run::as_worker`).
            let worker_of = std::env::var(crate::run::WORKER_OF)
                .ok()
                .and_then(|v| v.parse().ok());
            let _lock = if std::env::var_os(crate::launch::slurm::FOLD_TASK_ENV).is_some() {
                // A fold task of a Slurm array shares the run with the other folds' tasks (each
                // locks its fold); an exclusive writer (a local `run`) excludes them all.
                if fold.is_none() {
                    bail!(
                        "{} is set only for `pipeline run <stage> --fold K`",
                        crate::launch::slurm::FOLD_TASK_ENV
                    );
                }
                Some(crate::run::Lock::acquire_shared(
                    &ctx.run_dir.join(crate::run::LOCK),
                    &format!("run {}", ctx.run_dir.display()),
                )?)
            } else {
                crate::run::lock_run(&ctx.run_dir, worker_of)?
            };
            match stage_of(target) {
                Some(stage) => stages::run_stage(&ctx, stage),
                None => stages::run_all(&ctx),
            }
        }
        Command::Sweep {
            action,
            config,
            sweep_file,
            grid,
            parallel,
        } => {
            let mut sets = env_overrides()?;
            sets.extend(config.set.iter().cloned());
            let mut sweep = match &sweep_file {
                Some(path) => read_sweep_file(path)?,
                None => Settings::load(&config.config, &sets)?.sweep,
            };
            // `--grid` replaces a grid key of the same name (repeated `--grid`s of one key are
            // one axis); `--parallel` the file's.
            crate::sweep::merge_grid(&mut sweep.grid, &grid)?;
            sweep.parallel = parallel.or(sweep.parallel);
            let args = crate::sweep::SweepArgs {
                config: config.config.clone(),
                sets,
                sweep,
            };
            match action {
                SweepAction::Run => crate::sweep::run(&args, ui),
                SweepAction::Status => {
                    print!("{}", crate::sweep::status(&args, ui)?);
                    Ok(())
                }
            }
        }
        Command::Ensemble {
            runs,
            method,
            out,
            config,
        } => {
            let s = load_settings(&config)?;
            let runs = if runs.is_empty() {
                s.ensemble.runs.clone()
            } else {
                runs
            };
            if runs.is_empty() {
                anyhow::bail!(
                    "ensemble: no runs to combine: pass --runs A,B or set `runs = [...]` in [ensemble]"
                );
            }
            let method = method.unwrap_or(s.ensemble.method);
            let runs = crate::combine::resolve_runs(&runs, &s.run.output_dir)?;
            let c = crate::combine::combine(&runs, method, &s.decode, s.evaluate.metric)?;
            crate::combine::write(&c, &out)?;
            println!("{}", serde_json::to_string(&c)?);
            Ok(())
        }
        Command::Status { config } => {
            let settings = load_settings(&config)?;
            let ctx = Ctx::new(settings, false, None, ui)?;
            print!("{}", stages::report_status(&ctx)?);
            if let Some(slurm) = crate::launch::slurm::status(&ctx)? {
                print!("{slurm}");
            }
            Ok(())
        }
        Command::Infer(mut args) => {
            args.fused_attention = std::env::var("PIPELINE_ATTENTION").is_ok_and(|v| v == "fused");
            crate::infer::run(&args, ui)
        }
        Command::Bench(mut args) => {
            args.multi_tensor_adamw |=
                std::env::var("PIPELINE_MULTI_TENSOR").is_ok_and(|v| v == "1");
            let report = crate::bench::run(&args)?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
        Command::Score {
            data,
            predictions,
            metric,
        } => {
            let (score, missing) = score_files(&data, &predictions, metric)?;
            if !missing.is_empty() {
                ui.info(&format!(
                    "{} questions have no prediction and score 0 (e.g. {})",
                    missing.len(),
                    missing[0]
                ));
            }
            println!("{}", serde_json::to_string(&score)?);
            Ok(())
        }
    }
}

/// A `--sweep FILE`: its `[sweep]` table, or the file itself as that table.
fn read_sweep_file(path: &Path) -> Result<crate::settings::SweepSettings> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut table: toml::Table = text
        .parse()
        .with_context(|| format!("{}: not TOML", path.display()))?;
    let value = table.remove("sweep").unwrap_or(toml::Value::Table(table));
    value
        .try_into()
        .with_context(|| format!("{}: not a [sweep] table", path.display()))
}

fn stage_of(t: Target) -> Option<Stage> {
    t.0
}

/// Scores predictions against every question of a data file (any supported format).
pub fn score_files(
    data: &Path,
    predictions: &Path,
    metric: Metric,
) -> Result<(Score, Vec<String>)> {
    let golds = examples::load_golds(data, DataFormat::Auto)?;
    let preds: HashMap<String, String> = crate::artifacts::read_predictions(predictions)?
        .into_iter()
        .collect();
    Ok(metrics::score(
        metric,
        golds
            .iter()
            .map(|(id, answers)| (id.as_str(), answers.as_slice())),
        &preds,
    ))
}
