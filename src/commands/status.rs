//! `pipeline status`: each stage as done / stale / missing, with why (and the Slurm jobs).

use anyhow::Result;

use super::ConfigArgs;
use crate::stages::{self, Ctx};
use crate::ui::Ui;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub config: ConfigArgs,
}

pub fn exec(a: Args, ui: Ui) -> Result<()> {
    let ctx = Ctx::new(a.config.load()?, false, None, ui)?;
    print!("{}", stages::report_status(&ctx)?);
    if let Some(slurm) = crate::launch::slurm::status(&ctx)? {
        print!("{slurm}");
    }
    Ok(())
}
