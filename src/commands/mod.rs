//! One module per command: its clap arguments and an `exec`. [`crate::cli`] only parses the
//! command line and dispatches here.

pub mod bench;
pub mod ensemble;
pub mod infer;
pub mod retrieve;
pub mod run;
pub mod score;
pub mod status;
pub mod sweep;

use std::path::PathBuf;

use anyhow::Result;

use crate::settings::Settings;

/// `--config` and `--set`, shared by the commands that read the settings.
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

    /// The environment's `--set` overrides ([`crate::env::settings_overrides`]), then the
    /// command line's (which win).
    pub fn sets(&self) -> Result<Vec<String>> {
        let mut sets = crate::env::settings_overrides()?;
        sets.extend(self.set.iter().cloned());
        Ok(sets)
    }

    /// The settings file with [`Self::sets`] applied.
    pub fn load(&self) -> Result<Settings> {
        Settings::load(&self.config, &self.sets()?)
    }
}
