//! Locks: one writer per run folder and per fold, held by the OS so a killed process leaves none.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// Name of the lock file in a run folder and in each fold folder.
pub const LOCK: &str = ".lock";

/// Tells a fold worker that its parent holds the run's lock: the parent's pid.
pub const WORKER_OF: &str = "PIPELINE_WORKER_OF";

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
/// `train.parallel_folds` (`worker_of`: its parent's pid, from [`WORKER_OF`], while that parent
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

/// Makes `cmd` a fold worker of this process: it is told so, and on Linux the kernel kills it
/// (SIGKILL) the moment this process dies, however it dies, so no orphan goes on writing into
/// the run. A worker whose parent died before the child was set up never starts.
pub fn as_worker(cmd: &mut std::process::Command) {
    cmd.env(WORKER_OF, std::process::id().to_string());
    dies_with_parent(cmd);
}

/// On Linux the kernel kills the process `cmd` starts (SIGKILL) the moment this process dies,
/// however it dies; a child whose parent died before it was set up never starts.
pub fn dies_with_parent(cmd: &mut std::process::Command) {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::process::CommandExt;
        let parent = std::process::id();
        // SAFETY: prctl and getppid are async-signal-safe, as code between fork and exec must be.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() as u32 != parent {
                    return Err(std::io::Error::other("the parent process has exited"));
                }
                Ok(())
            });
        }
    }
}

/// Runs one child process per item of `items`, `width` at a time: `start` makes each one's
/// command (started as it is) from the item and its slot (`0..width`, free while the process
/// runs: a device to pin it to). Returns the items whose process failed, in order of failure.
pub fn run_processes<T>(
    items: Vec<T>,
    width: usize,
    mut start: impl FnMut(&T, usize) -> Result<std::process::Command>,
) -> Result<Vec<T>> {
    let width = width.max(1);
    let mut queue: std::collections::VecDeque<T> = items.into();
    let mut running: Vec<(T, usize, std::process::Child)> = Vec::new();
    let mut failed = Vec::new();
    loop {
        while running.len() < width {
            let Some(item) = queue.pop_front() else { break };
            let slot = (0..width)
                .find(|s| running.iter().all(|r| r.1 != *s))
                .unwrap_or(0);
            let child = start(&item, slot)?
                .spawn()
                .context("starting a worker process")?;
            running.push((item, slot, child));
        }
        if running.is_empty() {
            return Ok(failed);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        let mut i = 0;
        while i < running.len() {
            match running[i].2.try_wait()? {
                Some(status) => {
                    let (item, _, _) = running.swap_remove(i);
                    if !status.success() {
                        failed.push(item);
                    }
                }
                None => i += 1,
            }
        }
    }
}
