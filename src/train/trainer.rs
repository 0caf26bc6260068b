//! The training loop of one fold ([`Trainer`]): forward, loss, backward, gradient accumulation,
//! clipping, loss scaling, the optimizer step and the schedule, with a plan of when to
//! validate, keep the best weights, checkpoint and stop. What a validation measures and where
//! weights go is the caller's ([`Hooks`]): `stages/train/` wires settings, data and files;
//! `tests/trainer.rs` drives it directly.

use anyhow::{bail, Result};
use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::backend::{AutodiffBackend, Backend};
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
use crate::train::unread::{Check, Unread, UnreadValues};

pub use crate::train::unread::StepLine;

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

/// The step arithmetic of one fold: batches per epoch, optimizer steps, warm-up, and when to
/// validate and checkpoint (built from the settings by `stages::train`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepPlan {
    /// Micro-batches per epoch (the last one partial unless dropped).
    pub batches_per_epoch: usize,
    /// Optimizer steps per epoch: `batches_per_epoch` over the accumulation, rounded up.
    pub steps_per_epoch: usize,
    pub total_steps: usize,
    pub warmup: usize,
    /// Validate every N optimizer steps (and after the last).
    pub eval_every: usize,
    /// Save a resumable checkpoint every N optimizer steps (and after the last).
    pub checkpoint_every: usize,
}

/// Which validation is kept as the best checkpoint: the first, then any that scores higher by
/// `by` (a lower loss for [`KeepBestBy::Loss`]); a tie keeps the earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepBest {
    pub by: KeepBestBy,
}

impl KeepBest {
    /// Whether `line` replaces `best`.
    pub fn improves(&self, line: &EvalLine, best: Option<&EvalLine>) -> bool {
        best.is_none_or(|b| line.score(self.by) > b.score(self.by))
    }
}

/// Stops a fold after `patience` validations in a row without improvement (0: never).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EarlyStopping {
    pub patience: usize,
}

impl EarlyStopping {
    /// After a validation: updates `since_best` (validations since the best, kept in the
    /// trainer's state for resume) and says whether to stop.
    pub fn after_validation(&self, improved: bool, since_best: &mut usize) -> bool {
        if improved {
            *since_best = 0;
        } else {
            *since_best += 1;
        }
        self.patience > 0 && *since_best >= self.patience
    }
}

/// The random streams of a fold's training, each seeded by (seed, fold, stream, index) through
/// [`mix`], so data order and dropout are the same on resume and independent of each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The initial weights of a from-scratch model (index 0).
    ModelInit = 1,
    /// The order of the training windows (index: the epoch).
    DataOrder = 2,
    /// Dropout of a micro-batch (index: the micro-batch counted over all epochs).
    Dropout = 3,
}

impl Stream {
    /// The seed of this stream's `index`-th draw for `fold`.
    pub fn seed(self, seed: u64, fold: usize, index: usize) -> u64 {
        mix(seed, fold, index, self as u64)
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
    pub gradient_accumulation: usize,
    pub steps: StepPlan,
    pub schedule: ScheduleKind,
    pub learning_rate: f64,
    /// 0: no clipping.
    pub max_grad_norm: f64,
    /// f16-mixed's dynamic loss scaling.
    pub loss_scaling: bool,
    pub loss: LossConfig,
    pub keep_best: KeepBest,
    pub early_stopping: EarlyStopping,
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
    /// stopping or an interruption; returns the final weights, optimizer and state. Each epoch
    /// is a list of micro-batches; after every `gradient_accumulation` of them (or the epoch's
    /// last) comes an optimizer step, then what is due after it.
    pub fn run<B: AutodiffBackend>(
        &self,
        mut model: QaModel<B>,
        mut optim: QaOptimizer<B>,
        mut st: TrainerState,
        device: &B::Device,
        hooks: &mut dyn Hooks<B>,
    ) -> Result<(QaModel<B>, QaOptimizer<B>, TrainerState)> {
        let c = &self.config;
        let mut run = FoldRun::new(self, &st, device, hooks);
        for epoch in st.epoch..c.epochs {
            let batches = self.epoch_batches(epoch);
            let first = if epoch == st.epoch { st.batch } else { 0 };
            for (bi, rows) in batches.iter().enumerate().skip(first) {
                run.micro_batch(&model, &mut st, rows, epoch, bi)?;
                if run.in_accum < c.gradient_accumulation && bi + 1 < batches.len() {
                    continue;
                }
                let lr;
                (model, lr) = run.optimizer_step(model, &mut optim, &mut st)?;
                st.epoch = epoch;
                st.batch = bi + 1;
                let at = epoch as f64 + (bi + 1) as f64 / batches.len() as f64;
                if run.after_step(&model, &optim, &mut st, at, lr)? == Flow::Stop {
                    return run.finish(model, optim, st);
                }
            }
            st.batch = 0;
            st.epoch = epoch + 1;
        }
        run.finish(model, optim, st)
    }

    /// The training windows of `epoch`, shuffled by its seed and shaped into micro-batches.
    fn epoch_batches(&self, epoch: usize) -> Vec<Vec<usize>> {
        let c = &self.config;
        let mut order = self.train_rows.to_vec();
        let seed = Stream::DataOrder.seed(c.seed, c.fold, epoch);
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let order = c.batching.training_order(self.feats, order, c.batch_size);
        order
            .chunks(c.batch_size)
            .take(c.steps.batches_per_epoch)
            .map(<[usize]>::to_vec)
            .collect()
    }
}

/// Whether training goes on after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// Where a diverged run can go back to, for its error: the last checkpoint saved (whose
/// validation, if one ran with it, was finite).
struct Divergence {
    fold: usize,
    saved_at: Option<usize>,
    dir: String,
}

impl Divergence {
    fn last_finite(&self) -> String {
        match self.saved_at {
            Some(step) => format!(
                "the last finite checkpoint is {} (step {step}); lower train.learning_rate?",
                self.dir
            ),
            None => "no checkpoint was saved before it (lower train.learning_rate?)".to_string(),
        }
    }

    /// An error for a non-finite value read back.
    fn check<B: Backend>(&self, u: &Unread<B>, v: f64) -> Result<()> {
        let fold = self.fold;
        match u.check {
            Check::Loss { epoch, batch } if !v.is_finite() => bail!(
                "train fold {fold}: the loss became {v} at step {} (epoch {epoch}, batch {batch}); {}",
                u.step,
                self.last_finite()
            ),
            Check::GradNorm if !v.is_finite() => bail!(
                "train fold {fold}: the gradient norm became {v} at step {}; {}",
                u.step,
                self.last_finite()
            ),
            _ => Ok(()),
        }
    }
}

/// One call of [`Trainer::run`]: what lives across its steps.
struct FoldRun<'a, B: AutodiffBackend> {
    trainer: &'a Trainer<'a>,
    device: &'a B::Device,
    hooks: &'a mut dyn Hooks<B>,
    started: std::time::Instant,
    /// Training seconds before this call (a resumed run's).
    time_before: f64,
    /// The training loss summed since the last validation, and its count.
    running: (f64, usize),
    accum: GradientsAccumulator<QaModel<B>>,
    in_accum: usize,
    /// Losses and gradient norms are read one step late (see [`UnreadValues`]).
    unread: UnreadValues<B::InnerBackend>,
    /// f16-mixed: dynamic loss scaling, continued from the saved state on resume.
    scaler: Option<LossScaler>,
    divergence: Divergence,
}

impl<'a, B: AutodiffBackend> FoldRun<'a, B> {
    fn new(
        trainer: &'a Trainer<'a>,
        st: &TrainerState,
        device: &'a B::Device,
        hooks: &'a mut dyn Hooks<B>,
    ) -> Self {
        let c = &trainer.config;
        let divergence = Divergence {
            fold: c.fold,
            saved_at: (st.step > 0).then_some(st.step),
            dir: hooks.checkpoint_dir(),
        };
        Self {
            trainer,
            device,
            hooks,
            started: std::time::Instant::now(),
            time_before: st.train_seconds,
            running: (0.0, 0),
            accum: GradientsAccumulator::new(),
            in_accum: 0,
            unread: UnreadValues::new(c.gradient_accumulation),
            scaler: c.loss_scaling.then(|| st.loss_scaler.unwrap_or_default()),
            divergence,
        }
    }

    fn config(&self) -> &'a TrainerConfig {
        &self.trainer.config
    }

    fn seconds(&self) -> f64 {
        self.time_before + self.started.elapsed().as_secs_f64()
    }

    /// Forward, loss and backward of micro-batch `bi` of `epoch` (`rows`); its gradients join
    /// the accumulation.
    fn micro_batch(
        &mut self,
        model: &QaModel<B>,
        st: &mut TrainerState,
        rows: &[usize],
        epoch: usize,
        bi: usize,
    ) -> Result<()> {
        let c = self.config();
        let feats = self.trainer.feats;
        let index = epoch * c.steps.batches_per_epoch + bi;
        B::seed(self.device, Stream::Dropout.seed(c.seed, c.fold, index));
        let len = c.batching.length(feats, rows, c.pad_multiple);
        let b = batch::<B>(feats, rows, len, self.device);
        let (s_log, e_log) = model.forward(b.input_ids, b.attention_mask, b.token_type_ids);
        let loss = qa_loss(&c.loss, s_log, e_log, b.start_positions, b.end_positions);
        let loss = loss / c.gradient_accumulation as f64;
        self.unread.current.push(Unread {
            value: loss.clone().inner(),
            check: Check::Loss { epoch, batch: bi },
            step: st.step,
        });
        if self.scaler.is_some() {
            // f16-mixed reads its gradient norm every step anyway (to skip overflowing steps),
            // so nothing is gained by reading the loss later.
            let d = &self.divergence;
            self.unread
                .settle_current(&mut self.running, &|u, v| d.check(u, v))?;
        }
        st.windows_seen += rows.len();
        st.tokens_computed += rows.len() * len;
        let scaled = match &self.scaler {
            Some(s) => loss * s.scale,
            None => loss,
        };
        let grads = GradientsParams::from_grads(scaled.backward(), model);
        self.accum.accumulate(model, grads);
        self.in_accum += 1;
        Ok(())
    }

    /// The optimizer step on the accumulated gradients: unscaling and clipping, the loss
    /// scaler's skip, the schedule's learning rate (returned with the new weights); then the
    /// previous step's numbers are read and logged, and the step is counted.
    fn optimizer_step(
        &mut self,
        model: QaModel<B>,
        optim: &mut QaOptimizer<B>,
        st: &mut TrainerState,
    ) -> Result<(QaModel<B>, f64)> {
        let c = self.config();
        self.in_accum = 0;
        let mut grads = self.accum.grads();
        if let Some(s) = &self.scaler {
            // Unscale in f32 (the scale is a power of two: exact), as GradScaler.unscale_.
            grads = scale_grads(&model, grads, (1.0 / s.scale) as f32);
        }
        // The clipping coefficient, when it stays on the device: the optimizer applies it.
        let mut clip_coef = None;
        let mut host_norm = None;
        let step_ok = match self.scaler.as_mut() {
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
                    self.unread.current.push(Unread {
                        value: norm,
                        check: Check::GradNorm,
                        step: st.step,
                    });
                }
                true
            }
        };
        st.loss_scaler = self.scaler;
        // The schedule counts optimizer steps taken: a step the loss scaler skipped does not
        // advance it (HF Trainer steps its scheduler only when the optimizer ran).
        let steps = &c.steps;
        let taken = st.step - st.skipped_steps;
        let lr = lr_at(
            c.schedule,
            c.learning_rate,
            taken,
            steps.warmup,
            steps.total_steps,
        );
        let model = if step_ok {
            optim.step_scaled(lr, model, grads, clip_coef)
        } else {
            st.skipped_steps += 1;
            model
        };
        // The previous step's loss and norm: by now the device has computed them, and this
        // step's work is queued behind them.
        self.unread.take_step(st.step + 1, lr, host_norm);
        let d = &self.divergence;
        if let Some(l) = self
            .unread
            .next_step(&mut self.running, &|u, v| d.check(u, v))?
        {
            self.hooks.logged(&l)?;
        }
        st.step += 1;
        Ok((model, lr))
    }

    /// What is due after optimizer step `st.step` (at epoch position `at`, learning rate
    /// `lr`): a validation (keeping the best, counting patience), a checkpoint, an
    /// interruption asked for.
    fn after_step(
        &mut self,
        model: &QaModel<B>,
        optim: &QaOptimizer<B>,
        st: &mut TrainerState,
        at: f64,
        lr: f64,
    ) -> Result<Flow> {
        let steps = self.config().steps;
        let running = (self.running.1 > 0).then(|| self.running.0 / self.running.1 as f64);
        self.hooks.stepped(st, running);
        let last_step = st.step == steps.total_steps;
        let eval_now = st.step.is_multiple_of(steps.eval_every) || last_step;
        let checkpoint_now = st.step.is_multiple_of(steps.checkpoint_every);
        let interrupt_now = self.hooks.stop_requested(st);
        if eval_now || checkpoint_now || interrupt_now.is_some() {
            self.log_all()?;
        }
        let stop = eval_now && self.validate(model, st, at, lr)? == Flow::Stop;
        if checkpoint_now || last_step || stop {
            self.checkpoint(model, optim, st)?;
        }
        if stop {
            return Ok(Flow::Stop);
        }
        if let Some(why) = interrupt_now {
            self.hooks.save_checkpoint(model, optim, st)?;
            bail!(
                "train fold {}: interrupted after step {} ({why})",
                self.config().fold,
                st.step
            );
        }
        Ok(Flow::Continue)
    }

    /// Validates after step `st.step`, keeps the weights where they are the best so far, and
    /// says whether patience ran out. A non-finite validation loss is an error: such weights
    /// are never kept or checkpointed.
    fn validate(
        &mut self,
        model: &QaModel<B>,
        st: &mut TrainerState,
        at: f64,
        lr: f64,
    ) -> Result<Flow> {
        let c = self.config();
        let valid = model.valid();
        let v = self.hooks.validate(&valid);
        if !v.loss.is_finite() {
            bail!(
                "train fold {}: the validation loss became {} at step {}; {}",
                c.fold,
                v.loss,
                st.step,
                self.divergence.last_finite()
            );
        }
        let line = EvalLine {
            step: st.step,
            epoch: at,
            lr,
            train_loss: self.running.0 / self.running.1.max(1) as f64,
            loss: v.loss,
            start_acc: v.start_acc,
            end_acc: v.end_acc,
            exact_match: v.exact_match,
            f1: v.f1,
            elapsed_s: self.seconds(),
        };
        self.running = (0.0, 0);
        let improved = c.keep_best.improves(&line, st.best.as_ref());
        if improved {
            self.hooks.save_best(&valid)?;
            st.best = Some(line.clone());
        }
        let stop = c
            .early_stopping
            .after_validation(improved, &mut st.evals_since_best);
        st.history.push(line.clone());
        self.hooks.evaluated(&line, improved, &st.history)?;
        if stop {
            self.hooks.info(&format!(
                "train fold {}: no improvement in {} validations, stopping early",
                c.fold, c.early_stopping.patience
            ));
            return Ok(Flow::Stop);
        }
        Ok(Flow::Continue)
    }

    /// Reads and logs every step's numbers still on the device.
    fn log_all(&mut self) -> Result<()> {
        let d = &self.divergence;
        for l in self
            .unread
            .settle_all(&mut self.running, &|u, v| d.check(u, v))?
        {
            self.hooks.logged(&l)?;
        }
        Ok(())
    }

    /// A resumable checkpoint of this step.
    fn checkpoint(
        &mut self,
        model: &QaModel<B>,
        optim: &QaOptimizer<B>,
        st: &mut TrainerState,
    ) -> Result<()> {
        st.train_seconds = self.seconds();
        self.hooks.save_checkpoint(model, optim, st)?;
        self.divergence.saved_at = Some(st.step);
        Ok(())
    }

    /// The end of training (the plan's, or early stopping): the last numbers logged, the final
    /// checkpoint saved.
    fn finish(
        mut self,
        model: QaModel<B>,
        optim: QaOptimizer<B>,
        mut st: TrainerState,
    ) -> Result<(QaModel<B>, QaOptimizer<B>, TrainerState)> {
        self.log_all()?;
        st.train_seconds = self.seconds();
        self.hooks.save_checkpoint(&model, &optim, &st)?;
        Ok((model, optim, st))
    }
}

/// A seed for (fold, epoch or step) so data order and dropout are reproducible on resume.
fn mix(seed: u64, fold: usize, n: usize, salt: u64) -> u64 {
    let mut h = blake3::Hasher::new();
    h.update(&seed.to_le_bytes());
    h.update(&(fold as u64).to_le_bytes());
    h.update(&(n as u64).to_le_bytes());
    h.update(&salt.to_le_bytes());
    let b = h.finalize();
    u64::from_le_bytes(b.as_bytes()[..8].try_into().unwrap_or([0; 8]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(step: usize, loss: f64, f1: f64) -> EvalLine {
        EvalLine {
            step,
            epoch: 0.0,
            lr: 0.0,
            train_loss: 0.0,
            loss,
            start_acc: 0.0,
            end_acc: 0.0,
            exact_match: 0.0,
            f1,
            elapsed_s: 0.0,
        }
    }

    #[test]
    fn keep_best_takes_the_first_then_strictly_better() {
        let by_f1 = KeepBest { by: KeepBestBy::F1 };
        let by_loss = KeepBest {
            by: KeepBestBy::Loss,
        };
        let best = line(1, 2.0, 50.0);
        assert!(by_f1.improves(&best, None));
        assert!(by_f1.improves(&line(2, 9.0, 51.0), Some(&best)));
        assert!(
            !by_f1.improves(&line(2, 0.1, 50.0), Some(&best)),
            "a tie keeps the earlier"
        );
        assert!(by_loss.improves(&line(2, 1.9, 0.0), Some(&best)));
        assert!(!by_loss.improves(&line(2, 2.1, 99.0), Some(&best)));
    }

    #[test]
    fn early_stopping_counts_validations_since_the_best() {
        let patient = EarlyStopping { patience: 2 };
        let mut since = 0;
        assert!(!patient.after_validation(true, &mut since));
        assert!(!patient.after_validation(false, &mut since));
        assert!(
            !patient.after_validation(true, &mut since),
            "an improvement resets"
        );
        assert_eq!(since, 0);
        assert!(!patient.after_validation(false, &mut since));
        assert!(patient.after_validation(false, &mut since));
        let never = EarlyStopping { patience: 0 };
        let mut since = 0;
        assert!((0..100).all(|_| !never.after_validation(false, &mut since)));
    }

    #[test]
    fn the_streams_are_the_salts_the_seeds_were_drawn_with() {
        // Renaming the salts must not change a resumed run's data order or dropout.
        assert_eq!(Stream::ModelInit.seed(42, 1, 0), mix(42, 1, 0, 1));
        assert_eq!(Stream::DataOrder.seed(42, 1, 3), mix(42, 1, 3, 2));
        assert_eq!(Stream::Dropout.seed(42, 1, 9), mix(42, 1, 9, 3));
        assert_ne!(
            Stream::DataOrder.seed(42, 1, 3),
            Stream::Dropout.seed(42, 1, 3)
        );
    }
}
