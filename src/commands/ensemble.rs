//! `pipeline ensemble --runs A,B`: several finished runs of the same prepared windows combined.

use std::path::PathBuf;

use anyhow::{bail, Result};

use super::ConfigArgs;
use crate::settings::EnsembleMethod;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run folders, comma-separated or repeated (default: `[ensemble] runs`).
    #[arg(long, value_delimiter = ',')]
    pub runs: Vec<PathBuf>,
    /// How the runs combine (default: `[ensemble] method`).
    #[arg(long, value_enum)]
    pub method: Option<EnsembleMethod>,
    #[arg(long, default_value = "outputs/ensemble")]
    pub out: PathBuf,
    #[command(flatten)]
    pub config: ConfigArgs,
}

pub fn exec(a: Args) -> Result<()> {
    let s = a.config.load()?;
    let runs = if a.runs.is_empty() {
        s.ensemble.runs.clone()
    } else {
        a.runs
    };
    if runs.is_empty() {
        bail!("ensemble: no runs to combine: pass --runs A,B or set `runs = [...]` in [ensemble]");
    }
    let method = a.method.unwrap_or(s.ensemble.method);
    let runs = crate::combine::resolve_runs(&runs, &s.run.output_dir)?;
    let c = crate::combine::combine(&runs, method, &s.decode, s.evaluate.metric)?;
    crate::combine::write(&c, &a.out)?;
    println!("{}", serde_json::to_string(&c)?);
    Ok(())
}
