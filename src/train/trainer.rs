//! The training loop of one fold ([`Trainer`]): forward, loss, backward, gradient accumulation,
//! clipping, loss scaling, the optimizer step and the schedule, with a plan of when to
//! validate, keep the best weights, checkpoint and stop. What a validation measures and where
//! weights go is the caller's ([`Hooks`]): `stages/train/` wires settings, data and files;
//! `tests/trainer.rs` drives it directly.

use anyhow::{bail, Result};
use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::artifacts::Features;
use crate::model::QaModel;
use crate::train::batch::{batch, BatchStrategy};
use crate::train::clip::{clip_coef_on_device, clip_grad_norm, grad_norm, scale_grads};
use crate::train::loss::{qa_loss, LossConfig};
use crate::train::optim::QaOptimizer;
use crate::train::scaler::LossScaler;
use crate::train::schedule::{lr_at, ScheduleKind};

pub use crate::artifacts::{EvalLine, KeepBestBy};

/// Where a fold's training stands; saved in `last/trainer_state.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrainerState {
    /// The settings hash and input files it was made with ([`crate::run::resume_key`]).
    pub config_hash: String,
    /// Optimizer steps taken.
    pub step: usize,
    /// Epoch and batch within it to continue from.
    pub epoch: usize,
    pub batch: usize,
    pub best: Option<EvalLine>,
    pub evals_since_best: usize,
    pub history: Vec<EvalLine>,
    pub train_seconds: f64,
    pub windows_seen: usize,
    /// Token positions the training batches held (windows × batch length): `max_seq_length`
    /// per window when padded, fewer with `dynamic` / `bucket` batching.
    #[serde(default)]
    pub tokens_computed: usize,
    /// f16-mixed: the loss scaler, and the optimizer steps it skipped (non-finite gradients).
    #[serde(default)]
    pub loss_scaler: Option<LossScaler>,
    #[serde(default)]
    pub skipped_steps: usize,
}

/// One validation's numbers: loss, start and end accuracy, EM, F1.
#[derive(Debug, Clone, Copy)]
pub struct Validation {
    pub loss: f64,
    pub start_acc: f64,
    pub end_acc: f64,
    pub exact_match: f64,
    pub f1: f64,
}

/// One optimizer step's numbers, known a step late (see `UnreadValues`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepLine {
    /// Optimizer steps taken, this one included (as [`EvalLine::step`]).
    pub step: usize,
    /// The mean training loss of the step's micro-batches.
    pub loss: f64,
    /// The learning rate the step used.
    pub lr: f64,
    /// The gradient norm before clipping, where one was computed (clipping or loss scaling on).
    pub grad_norm: Option<f64>,
}

/// What the loop leaves to its caller: measuring a validation, writing weights, reporting.
pub trait Hooks<B: AutodiffBackend> {
    /// Validates `model` (dropout off).
    fn validate(&mut self, model: &QaModel<B::InnerBackend>) -> Validation;
    /// Keeps `model` as the best so far.
    fn save_best(&mut self, model: &QaModel<B::InnerBackend>) -> Result<()>;
    /// Writes a resumable checkpoint.
    fn save_checkpoint(
        &mut self,
        model: &QaModel<B>,
        optim: &QaOptimizer<B>,
        st: &TrainerState,
    ) -> Result<()>;
    /// Where a diverged run can go back to, for its error message (`None`: no checkpoint).
    fn checkpoint_dir(&self) -> String;
    /// After each optimizer step; `running` is the mean training loss read so far, if any.
    fn stepped(&mut self, st: &TrainerState, running: Option<f64>);
    /// Each step's numbers, in step order, a step late; every step up to a validation or a
    /// checkpoint is logged before it. By default nothing is done.
    fn logged(&mut self, _line: &StepLine) -> Result<()> {
        Ok(())
    }
    /// After each validation; `history` includes `line`.
    fn evaluated(&mut self, line: &EvalLine, improved: bool, history: &[EvalLine]) -> Result<()>;
    /// A message for the user.
    fn info(&mut self, message: &str);
    /// Asked after each optimizer step: `Some(why)` stops training as a crash would, right
    /// after a checkpoint of this step (so a resume continues from it exactly), with an error
    /// saying why. By default never.
    fn stop_requested(&mut self, _st: &TrainerState) -> Option<String> {
        None
    }
}

/// The plan of one fold's training: its steps and when things happen.
#[derive(Debug, Clone)]
pub struct TrainerConfig {
    /// The fold (in messages and in the seeds of data order and dropout).
    pub fold: usize,
    pub seed: u64,
    pub epochs: usize,
    pub batch_size: usize,
    pub batches_per_epoch: usize,
    pub gradient_accumulation: usize,
    pub total_steps: usize,
    pub warmup: usize,
    pub schedule: ScheduleKind,
    pub learning_rate: f64,
    /// 0: no clipping.
    pub max_grad_norm: f64,
    /// f16-mixed's dynamic loss scaling.
    pub loss_scaling: bool,
    pub loss: LossConfig,
    pub eval_every: usize,
    pub checkpoint_every: usize,
    /// Validations without improvement before stopping; 0 = never.
    pub patience: usize,
    pub keep_best_by: KeepBestBy,
    /// How batches are shaped, and the multiple their lengths round up to.
    pub batching: BatchStrategy,
    pub pad_multiple: usize,
}

/// One fold's training loop over `feats`' rows `train_rows` (see the module docs).
pub struct Trainer<'a> {
    pub config: TrainerConfig,
    pub feats: &'a Features,
    pub train_rows: &'a [usize],
}

impl Trainer<'_> {
    /// Trains from `st` (a fresh state or a resumed checkpoint's) to the end of the plan, early
    /// stopping or an interruption; returns the final weights, optimizer and state.
    pub fn run<B: AutodiffBackend>(
        &self,
        mut model: QaModel<B>,
        mut optim: QaOptimizer<B>,
        mut st: TrainerState,
        device: &B::Device,
        hooks: &mut dyn Hooks<B>,
    ) -> Result<(QaModel<B>, QaOptimizer<B>, TrainerState)> {
        let c = &self.config;
        let fold = c.fold;
        let total_steps = c.total_steps;
        let batches_per_epoch = c.batches_per_epoch;
        let loss_cfg = &c.loss;
        let started = std::time::Instant::now();
        let time_before = st.train_seconds;
        let mut running = (0.0f64, 0usize);
        let mut stop = false;
        let mut accum = GradientsAccumulator::<QaModel<B>>::new();
        let mut in_accum = 0usize;
        // Losses and gradient norms are read one step late (see `UnreadValues`).
        let mut unread = UnreadValues::new(c.gradient_accumulation);
        // Where a diverged run can go back to: the last checkpoint saved, whose validation (if
        // one ran with it) was finite.
        let saved_at = std::cell::Cell::new((st.step > 0).then_some(st.step));
        let where_to = hooks.checkpoint_dir();
        let last_finite = || match saved_at.get() {
            Some(step) => format!(
                "the last finite checkpoint is {where_to} (step {step}); lower train.learning_rate?"
            ),
            None => "no checkpoint was saved before it (lower train.learning_rate?)".to_string(),
        };
        let report = |u: &Unread<B::InnerBackend>, v: f64| -> Result<()> {
            match u.check {
                Check::Loss { epoch, batch } if !v.is_finite() => bail!(
                    "train fold {fold}: the loss became {v} at step {} (epoch {epoch}, batch {batch}); {}",
                    u.step,
                    last_finite()
                ),
                Check::GradNorm if !v.is_finite() => bail!(
                    "train fold {fold}: the gradient norm became {v} at step {}; {}",
                    u.step,
                    last_finite()
                ),
                _ => Ok(()),
            }
        };
        // f16-mixed: dynamic loss scaling, continued from the saved state on resume.
        let mut scaler = c.loss_scaling.then(|| st.loss_scaler.unwrap_or_default());
        'epochs: for epoch in st.epoch..c.epochs {
            let mut order = self.train_rows.to_vec();
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(c.seed, fold, epoch, 2)));
            let order = c.batching.training_order(self.feats, order, c.batch_size);
            let batches: Vec<&[usize]> =
                order.chunks(c.batch_size).take(batches_per_epoch).collect();
            let first = if epoch == st.epoch { st.batch } else { 0 };
            for (bi, rows) in batches.iter().enumerate().skip(first) {
                B::seed(device, mix(c.seed, fold, epoch * batches_per_epoch + bi, 3));
                let len = c.batching.length(self.feats, rows, c.pad_multiple);
                let b = batch::<B>(self.feats, rows, len, device);
                let (s_log, e_log) = model.forward(b.input_ids, b.attention_mask, b.token_type_ids);
                let loss = qa_loss(loss_cfg, s_log, e_log, b.start_positions, b.end_positions);
                let loss = loss / c.gradient_accumulation as f64;
                unread.current.push(Unread {
                    value: loss.clone().inner(),
                    check: Check::Loss { epoch, batch: bi },
                    step: st.step,
                });
                if scaler.is_some() {
                    // f16-mixed reads its gradient norm every step anyway (to skip overflowing
                    // steps), so nothing is gained by reading the loss later.
                    unread.settle_current(&mut running, &report)?;
                }
                st.windows_seen += rows.len();
                st.tokens_computed += rows.len() * len;
                let scaled = match &scaler {
                    Some(s) => loss * s.scale,
                    None => loss,
                };
                let grads = GradientsParams::from_grads(scaled.backward(), &model);
                accum.accumulate(&model, grads);
                in_accum += 1;
                if in_accum < c.gradient_accumulation && bi + 1 < batches.len() {
                    continue;
                }
                in_accum = 0;
                let mut grads = accum.grads();
                if let Some(s) = &scaler {
                    // Unscale in f32 (the scale is a power of two: exact), as GradScaler.unscale_.
                    grads = scale_grads(&model, grads, (1.0 / s.scale) as f32);
                }
                // The clipping coefficient, when it stays on the device: the optimizer applies it.
                let mut clip_coef = None;
                let mut host_norm = None;
                let step_ok = match scaler.as_mut() {
                    Some(s) => {
                        let norm = if c.max_grad_norm > 0.0 {
                            let (g, norm) = clip_grad_norm(&model, grads, c.max_grad_norm);
                            grads = g;
                            norm
                        } else {
                            grad_norm(&model, &grads)
                        };
                        host_norm = Some(norm);
                        s.update(norm.is_finite())
                    }
                    None => {
                        if c.max_grad_norm > 0.0 {
                            // Clipped without a read-back; the norm is checked a step later.
                            let (coef, norm) = clip_coef_on_device(&model, &grads, c.max_grad_norm);
                            clip_coef = coef;
                            unread.current.push(Unread {
                                value: norm,
                                check: Check::GradNorm,
                                step: st.step,
                            });
                        }
                        true
                    }
                };
                st.loss_scaler = scaler;
                // The schedule counts optimizer steps taken: a step the loss scaler skipped does
                // not advance it (HF Trainer steps its scheduler only when the optimizer ran).
                let lr = lr_at(
                    c.schedule,
                    c.learning_rate,
                    st.step - st.skipped_steps,
                    c.warmup,
                    total_steps,
                );
                if step_ok {
                    model = optim.step_scaled(lr, model, grads, clip_coef);
                } else {
                    st.skipped_steps += 1;
                }
                // The previous step's loss and norm: by now the device has computed them, and this
                // step's work is queued behind them.
                unread.take_step(st.step + 1, lr, host_norm);
                if let Some(l) = unread.next_step(&mut running, &report)? {
                    hooks.logged(&l)?;
                }
                st.step += 1;
                st.epoch = epoch;
                st.batch = bi + 1;
                hooks.stepped(&st, (running.1 > 0).then(|| running.0 / running.1 as f64));

                let last_step = st.step == total_steps;
                let eval_now = st.step.is_multiple_of(c.eval_every) || last_step;
                let interrupt_now = hooks.stop_requested(&st);
                if eval_now || st.step.is_multiple_of(c.checkpoint_every) || interrupt_now.is_some()
                {
                    for l in unread.settle_all(&mut running, &report)? {
                        hooks.logged(&l)?;
                    }
                }
                if eval_now {
                    let valid = model.valid();
                    let v = hooks.validate(&valid);
                    let (vloss, sacc, eacc, em, f1) =
                        (v.loss, v.start_acc, v.end_acc, v.exact_match, v.f1);
                    if !vloss.is_finite() {
                        // Never best, never saved as a checkpoint: the weights have diverged.
                        bail!(
                            "train fold {fold}: the validation loss became {vloss} at step {}; {}",
                            st.step,
                            last_finite()
                        );
                    }
                    let line = EvalLine {
                        step: st.step,
                        epoch: epoch as f64 + (bi + 1) as f64 / batches.len() as f64,
                        lr,
                        train_loss: running.0 / running.1.max(1) as f64,
                        loss: vloss,
                        start_acc: sacc,
                        end_acc: eacc,
                        exact_match: em,
                        f1,
                        elapsed_s: time_before + started.elapsed().as_secs_f64(),
                    };
                    running = (0.0, 0);
                    let improved = st
                        .best
                        .as_ref()
                        .is_none_or(|b| line.score(c.keep_best_by) > b.score(c.keep_best_by));
                    if improved {
                        hooks.save_best(&valid)?;
                        st.best = Some(line.clone());
                        st.evals_since_best = 0;
                    } else {
                        st.evals_since_best += 1;
                    }
                    st.history.push(line.clone());
                    hooks.evaluated(&line, improved, &st.history)?;
                    if c.patience > 0 && st.evals_since_best >= c.patience {
                        hooks.info(&format!(
                            "train fold {fold}: no improvement in {} validations, stopping early",
                            c.patience
                        ));
                        stop = true;
                    }
                }
                if st.step.is_multiple_of(c.checkpoint_every) || last_step || stop {
                    st.train_seconds = time_before + started.elapsed().as_secs_f64();
                    hooks.save_checkpoint(&model, &optim, &st)?;
                    saved_at.set(Some(st.step));
                }
                if stop {
                    break 'epochs;
                }
                if let Some(why) = interrupt_now {
                    hooks.save_checkpoint(&model, &optim, &st)?;
                    bail!(
                        "train fold {fold}: interrupted after step {} ({why})",
                        st.step
                    );
                }
            }
            st.batch = 0;
            st.epoch = epoch + 1;
        }
        for l in unread.settle_all(&mut running, &report)? {
            hooks.logged(&l)?;
        }
        st.train_seconds = time_before + started.elapsed().as_secs_f64();
        hooks.save_checkpoint(&model, &optim, &st)?;
        Ok((model, optim, st))
    }
}

/// A training loss or gradient norm still on the device.
struct Unread<B: Backend> {
    value: Tensor<B, 1>,
    check: Check,
    /// The optimizer step it belongs to.
    step: usize,
}

#[derive(Clone, Copy)]
enum Check {
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
struct UnreadValues<B: Backend> {
    /// Values of the step being queued, and its line so far.
    current: Vec<Unread<B>>,
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
    fn new(accumulation: usize) -> Self {
        Self {
            current: Vec::new(),
            current_line: PartialLine::default(),
            previous: Vec::new(),
            previous_line: PartialLine::default(),
            accumulation,
        }
    }

    /// Reads the current step's values now.
    fn settle_current(&mut self, running: &mut (f64, usize), report: &Report<B>) -> Result<()> {
        let list = std::mem::take(&mut self.current);
        let mut line = std::mem::take(&mut self.current_line);
        let done = self.settle(list, &mut line, running, report);
        self.current_line = line;
        done
    }

    /// The current step is taken as optimizer step `step` (counted from 1) with `lr`; `norm`
    /// is its gradient norm where it was read on the host already.
    fn take_step(&mut self, step: usize, lr: f64, norm: Option<f64>) {
        self.current_line.taken = Some((step, lr));
        if norm.is_some() {
            self.current_line.grad_norm = norm;
        }
    }

    /// Reads the previous step's values and returns its line; the current step's become the
    /// previous.
    fn next_step(
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
    fn settle_all(
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
type Report<'a, B> = dyn Fn(&Unread<B>, f64) -> Result<()> + 'a;

/// A seed for (fold, epoch or step) so data order and dropout are reproducible on resume.
pub fn mix(seed: u64, fold: usize, n: usize, salt: u64) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(&(fold as u64).to_le_bytes());
    h.update(&(n as u64).to_le_bytes());
    h.update(&salt.to_le_bytes());
    let b = h.finalize();
    u64::from_le_bytes(b.as_bytes()[..8].try_into().unwrap_or([0; 8]))
}
