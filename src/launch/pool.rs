//! One process pool for every child this program starts (fold workers, sweep variants): a
//! fixed number at a time, each dying with its parent.

use anyhow::{Context, Result};

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
