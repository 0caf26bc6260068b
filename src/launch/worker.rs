//! How this program starts itself: one builder for the `pipeline run` children of fold
//! workers, sweep variants and Slurm tasks. What a parent tells a child travels as hidden
//! arguments of `run` ([`WorkerFlags`]), visible in `ps` and in the Slurm scripts; no
//! environment variable carries a signal from this program to its own children.

use std::process::Command;

use anyhow::{Context, Result};

use crate::device::Device;

/// The hidden arguments of `pipeline run` that only this program passes, to its children.
#[derive(Debug, Clone, Default, PartialEq, clap::Args)]
pub struct WorkerFlags {
    /// A fold worker pinned to this device (`train.devices`, `train.parallel_folds`).
    #[arg(long, hide = true, value_name = "DEVICE")]
    pub worker_device: Option<Device>,
    /// A fold worker of the process with this pid, which holds the run's lock while it lives.
    #[arg(long, hide = true, value_name = "PID")]
    pub worker_of: Option<u32>,
    /// A fold task of a Slurm job array: shares the run's lock with the other folds' tasks.
    #[arg(long, hide = true)]
    pub slurm_fold_task: bool,
}

impl WorkerFlags {
    /// The flags as command-line arguments.
    pub fn to_args(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(d) = self.worker_device {
            v.extend(["--worker-device".to_string(), d.to_string()]);
        }
        if let Some(pid) = self.worker_of {
            v.extend(["--worker-of".to_string(), pid.to_string()]);
        }
        if self.slurm_fold_task {
            v.push("--slurm-fold-task".into());
        }
        v
    }
}

/// A `pipeline run <target>` child of this process.
#[derive(Debug, Clone, Default)]
pub struct Worker {
    /// A stage's name or `all`.
    pub target: String,
    pub fold: Option<usize>,
    /// `--config FILE --set K=V …`, as the parent was given them.
    pub config_args: Vec<String>,
    pub flags: WorkerFlags,
    pub force: bool,
    pub quiet: bool,
    /// No progress bars: for children that run side by side.
    pub plain_progress: bool,
}

impl Worker {
    /// A fold worker of this process for `stage`'s fold `fold`, pinned to `device`.
    pub fn fold(stage: &str, fold: usize, device: Device, config_args: &[String]) -> Self {
        Self {
            target: stage.to_string(),
            fold: Some(fold),
            config_args: config_args.to_vec(),
            flags: WorkerFlags {
                worker_device: Some(device),
                worker_of: Some(std::process::id()),
                slurm_fold_task: false,
            },
            plain_progress: true,
            ..Self::default()
        }
    }

    /// The arguments after the executable.
    pub fn args(&self) -> Vec<String> {
        let mut v = vec!["run".to_string(), self.target.clone()];
        if let Some(k) = self.fold {
            v.extend(["--fold".to_string(), k.to_string()]);
        }
        v.extend(self.config_args.iter().cloned());
        v.extend(self.flags.to_args());
        for (on, flag) in [
            (self.force, "--force"),
            (self.quiet, "-q"),
            (self.plain_progress, "--plain-progress"),
        ] {
            if on {
                v.push(flag.to_string());
            }
        }
        v
    }

    /// The child's command: this executable with [`Self::args`], killed by the kernel when
    /// this process dies (see [`super::pool::dies_with_parent`]).
    pub fn command(&self) -> Result<Command> {
        let exe = std::env::current_exe().context("locating the pipeline executable")?;
        let mut cmd = Command::new(exe);
        cmd.args(self.args());
        super::pool::dies_with_parent(&mut cmd);
        Ok(cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fold_worker_carries_its_signals_as_arguments() {
        let config = ["--config".to_string(), "p.toml".to_string()];
        let mut w = Worker::fold("train", 2, Device::Cuda(1), &config);
        w.quiet = true;
        let pid = std::process::id().to_string();
        assert_eq!(
            w.args(),
            [
                "run",
                "train",
                "--fold",
                "2",
                "--config",
                "p.toml",
                "--worker-device",
                "cuda:1",
                "--worker-of",
                &pid,
                "-q",
                "--plain-progress"
            ]
        );
    }
}
