//! `pipeline sweep [run|status]`: every variant of a sweep as its own run, and their comparison.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::ConfigArgs;
use crate::ui::Ui;

/// What `pipeline sweep` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Action {
    Run,
    Status,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// `run` (the default) or `status`.
    #[arg(value_enum, default_value = "run")]
    pub action: Action,
    #[command(flatten)]
    pub config: ConfigArgs,
    /// A TOML file with the `[sweep]` table (instead of the config's).
    #[arg(long = "sweep", value_name = "FILE")]
    pub sweep_file: Option<PathBuf>,
    /// A grid axis, e.g. `--grid train.learning_rate=1e-3,5e-4` (repeatable).
    #[arg(long, value_name = "SECTION.KEY=V1,V2")]
    pub grid: Vec<String>,
    /// Variants run at once (default `[sweep] parallel`, else 1).
    #[arg(long)]
    pub parallel: Option<usize>,
}

pub fn exec(a: Args, ui: Ui) -> Result<()> {
    let sets = a.config.sets()?;
    let mut sweep = match &a.sweep_file {
        Some(path) => read_sweep_file(path)?,
        None => crate::settings::Settings::load(&a.config.config, &sets)?.sweep,
    };
    // `--grid` replaces a grid key of the same name (repeated `--grid`s of one key are one
    // axis); `--parallel` the file's.
    crate::sweep::merge_grid(&mut sweep.grid, &a.grid)?;
    sweep.parallel = a.parallel.or(sweep.parallel);
    let args = crate::sweep::SweepArgs {
        config: a.config.config.clone(),
        sets,
        sweep,
    };
    match a.action {
        Action::Run => crate::sweep::run(&args, ui),
        Action::Status => {
            print!("{}", crate::sweep::status(&args, ui)?);
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
