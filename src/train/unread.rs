//! Losses and gradient norms read back one optimizer step late (see [`UnreadValues`]).

use anyhow::Result;
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor};

/// One optimizer step's numbers, known a step late (see `UnreadValues`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepLine {
    /// Optimizer steps taken, this one included (as [`crate::artifacts::EvalLine::step`]).
    pub step: usize,
    /// The mean training loss of the step's micro-batches.
    pub loss: f64,
    /// The learning rate the step used.
    pub lr: f64,
    /// The gradient norm before clipping, where one was computed (clipping or loss scaling on).
    pub grad_norm: Option<f64>,
}

/// A training loss or gradient norm still on the device.
pub(crate) struct Unread<B: Backend> {
    pub value: Tensor<B, 1>,
    pub check: Check,
    /// The optimizer step it belongs to.
    pub step: usize,
}

#[derive(Clone, Copy)]
pub(crate) enum Check {
    /// A micro-batch's loss (divided by the accumulation steps): summed into the running
    /// training loss; must be finite.
    Loss { epoch: usize, batch: usize },
    /// The gradient norm before clipping: must be finite.
    GradNorm,
}

/// Losses and gradient norms read one optimizer step late. Reading a value makes the host wait
/// until the device has computed it; read at once, the loss would stall every step between the
/// forward and the backward pass, and the norm between the backward pass and the optimizer, and
/// a GPU would idle while the host queues the next work. Read a step late, they are ready.
/// Everything is read before a validation, a checkpoint and the end of training, so what is
/// logged and saved is unchanged; a non-finite value stops training one step later than it
/// would have (the last good checkpoint is on disk either way).
pub(crate) struct UnreadValues<B: Backend> {
    /// Values of the step being queued, and its line so far.
    pub current: Vec<Unread<B>>,
    current_line: PartialLine,
    /// Values of the step before, and its line.
    previous: Vec<Unread<B>>,
    previous_line: PartialLine,
    /// Gradient accumulation steps (each micro-batch's loss is divided by it).
    accumulation: usize,
}

/// A [`StepLine`] while its values are read.
#[derive(Default)]
struct PartialLine {
    /// The step and learning rate, once the step is taken.
    taken: Option<(usize, f64)>,
    loss_sum: f64,
    losses: usize,
    grad_norm: Option<f64>,
}

impl PartialLine {
    fn line(&self) -> Option<StepLine> {
        let (step, lr) = self.taken?;
        Some(StepLine {
            step,
            loss: self.loss_sum / self.losses.max(1) as f64,
            lr,
            grad_norm: self.grad_norm,
        })
    }
}

impl<B: Backend> UnreadValues<B> {
    pub fn new(accumulation: usize) -> Self {
        Self {
            current: Vec::new(),
            current_line: PartialLine::default(),
            previous: Vec::new(),
            previous_line: PartialLine::default(),
            accumulation,
        }
    }

    /// Reads the current step's values now.
    pub fn settle_current(&mut self, running: &mut (f64, usize), report: &Report<B>) -> Result<()> {
        let list = std::mem::take(&mut self.current);
        let mut line = std::mem::take(&mut self.current_line);
        let done = self.settle(list, &mut line, running, report);
        self.current_line = line;
        done
    }

    /// The current step is taken as optimizer step `step` (counted from 1) with `lr`; `norm`
    /// is its gradient norm where it was read on the host already.
    pub fn take_step(&mut self, step: usize, lr: f64, norm: Option<f64>) {
        self.current_line.taken = Some((step, lr));
        if norm.is_some() {
            self.current_line.grad_norm = norm;
        }
    }

    /// Reads the previous step's values and returns its line; the current step's become the
    /// previous.
    pub fn next_step(
        &mut self,
        running: &mut (f64, usize),
        report: &Report<B>,
    ) -> Result<Option<StepLine>> {
        let list = std::mem::take(&mut self.previous);
        let mut line = std::mem::take(&mut self.previous_line);
        self.settle(list, &mut line, running, report)?;
        self.previous = std::mem::take(&mut self.current);
        self.previous_line = std::mem::take(&mut self.current_line);
        Ok(line.line())
    }

    /// Reads everything, in step order, and returns the lines of the steps taken.
    pub fn settle_all(
        &mut self,
        running: &mut (f64, usize),
        report: &Report<B>,
    ) -> Result<Vec<StepLine>> {
        let a = self.next_step(running, report)?;
        let b = self.next_step(running, report)?;
        Ok(a.into_iter().chain(b).collect())
    }

    /// Adds the losses of `list` to `running` and to `line` in order, checking every value with
    /// `report`.
    fn settle(
        &self,
        list: Vec<Unread<B>>,
        line: &mut PartialLine,
        running: &mut (f64, usize),
        report: &Report<B>,
    ) -> Result<()> {
        for u in list {
            let v = u.value.clone().into_scalar().elem::<f64>();
            match u.check {
                Check::Loss { .. } => {
                    let v = v * self.accumulation as f64;
                    report(&u, v)?;
                    running.0 += v;
                    running.1 += 1;
                    line.loss_sum += v;
                    line.losses += 1;
                }
                Check::GradNorm => {
                    report(&u, v)?;
                    line.grad_norm = Some(v);
                }
            }
        }
        Ok(())
    }
}

/// Checks one value read back (see [`UnreadValues`]).
pub(crate) type Report<'a, B> = dyn Fn(&Unread<B>, f64) -> Result<()> + 'a;
