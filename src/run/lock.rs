//! Locks: one writer per run folder and per fold, held by the OS so a killed process leaves none.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// Name of the lock file in a run folder and in each fold folder.
pub const LOCK: &str = ".lock";

/// An exclusive OS lock (`flock`) on a lock file, held until this value is dropped or the
/// process ends, however it ends: the kernel releases it, so a killed process never leaves a
/// stale lock behind. The holder's pid is written into the file, for the message another
/// process gets.
#[derive(Debug)]
pub struct Lock {
    _file: fs::File,
}

impl Lock {
    /// Takes the lock on `path` (created with its folder if absent), or fails at once with
    /// one line naming `what`, the pid holding it and what to do.
    pub fn acquire(path: &Path, what: &str) -> Result<Self> {
        Self::take(path, what, false)
    }

    /// A shared lock on `path`: held by any number of processes at once (the fold tasks of a
    /// Slurm array), excluded by an exclusive holder ([`Lock::acquire`]) and excluding it.
    pub fn acquire_shared(path: &Path, what: &str) -> Result<Self> {
        Self::take(path, what, true)
    }

    fn take(path: &Path, what: &str, shared: bool) -> Result<Self> {
        let mut file = open_lock_file(path)?;
        let got = if shared {
            file.try_lock_shared()
        } else {
            file.try_lock()
        };
        match got {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                let holder = fs::read_to_string(path).unwrap_or_default();
                let holder = holder.trim();
                let pid = if holder.is_empty() {
                    "another process".to_string()
                } else {
                    format!("process {holder}")
                };
                anyhow::bail!(
                    "{what} is being written by {pid} (lock {}): wait for it to finish or stop it, then run again; `pipeline status` is safe meanwhile",
                    path.display()
                );
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
        // The holder's pid, for the message another process gets (a shared holder leaves the
        // file as it is: the others hold it too).
        if !shared {
            file.set_len(0)?;
            writeln!(file, "{}", std::process::id())?;
            file.flush()?;
        }
        Ok(Self { _file: file })
    }

    /// Whether some process holds the lock on `path` now (without taking it for long).
    pub fn is_held(path: &Path) -> bool {
        let Ok(file) = fs::OpenOptions::new().read(true).write(true).open(path) else {
            return false;
        };
        match file.try_lock() {
            Ok(()) => {
                let _ = file.unlock();
                false
            }
            Err(_) => true,
        }
    }
}

fn open_lock_file(path: &Path) -> Result<fs::File> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("opening the lock file {}", path.display()))
}

/// The run's lock for a process that writes into `run_dir`. A fold worker started by
/// `train.parallel_folds` (`worker_of`: its parent's pid, from the hidden `--worker-of`, while that parent
/// lives) gets `None`: its parent holds the run's lock, which the worker checks, and the worker
/// locks its fold instead.
pub fn lock_run(run_dir: &Path, worker_of: Option<u32>) -> Result<Option<Lock>> {
    let path = run_dir.join(LOCK);
    if let Some(parent) = worker_of.filter(|&pid| std::os::unix::process::parent_id() == pid) {
        if !Lock::is_held(&path) {
            anyhow::bail!(
                "this fold worker's parent (pid {parent}) no longer holds {}: stopping",
                path.display()
            );
        }
        return Ok(None);
    }
    Lock::acquire(&path, &format!("run {}", run_dir.display())).map(Some)
}
