//! One printer for messages and progress bars, so `-q` silences both.

use indicatif::{ProgressBar, ProgressStyle};

/// Where user-facing messages go (stderr; stdout is kept for results such as `score`'s JSON).
#[derive(Debug, Clone, Copy, Default)]
pub struct Ui {
    pub quiet: bool,
    /// No progress bars (plain progress lines instead): set for worker processes that run side
    /// by side, whose bars would overwrite each other (the hidden `--plain-progress`).
    pub plain: bool,
}

impl Ui {
    /// A one-line status message.
    pub fn info(&self, msg: &str) {
        if !self.quiet {
            eprintln!("{msg}");
        }
    }

    /// The line naming the CUDA device and its kernel cache, the first time a stage asks after
    /// the device was set up (see [`crate::device::take_cuda_summary`]).
    pub fn cuda_summary(&self) {
        if let Some(summary) = crate::device::take_cuda_summary() {
            self.info(&summary);
        }
    }

    /// A line printed above `bar` (or plainly on stderr when the bar is hidden because stderr
    /// is not a terminal, so logs keep it); nothing when quiet.
    pub fn note(&self, bar: &ProgressBar, msg: &str) {
        if self.quiet {
            return;
        }
        if bar.is_hidden() {
            eprintln!("{msg}");
        } else {
            bar.println(msg);
        }
    }

    /// A progress bar of `len` steps (hidden when quiet or when stderr is not a terminal).
    pub fn bar(&self, len: u64, msg: &str) -> ProgressBar {
        if self.quiet || self.plain {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len);
        if let Ok(style) =
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({per_sec}, eta {eta})")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(msg.to_string());
        bar
    }
}
