//! A fold's training plan from the settings: the step arithmetic ([`step_plan`]) and the
//! trainer's configuration ([`trainer_config`]), each built in one place.

use anyhow::{bail, Result};

use crate::settings::TrainSettings;
use crate::train::schedule::warmup_steps;
use crate::train::trainer::{EarlyStopping, KeepBest, StepPlan, TrainerConfig};

/// The step arithmetic of a fold with `windows` training windows: micro-batches per epoch
/// (a last partial one unless `drop_last`), optimizer steps (over the accumulation, rounded
/// up), warm-up (`warmup_steps`, else the ratio of all steps, rounded up), and validation and
/// checkpoint intervals (`eval_every` 0: once an epoch; `checkpoint_every` 0: at every
/// validation). No full batch under `drop_last` is an error.
pub fn step_plan(t: &TrainSettings, windows: usize) -> Result<StepPlan> {
    let batches_per_epoch = if t.drop_last {
        windows / t.batch_size
    } else {
        windows.div_ceil(t.batch_size)
    };
    if batches_per_epoch == 0 {
        bail!(
            "{windows} training windows make no full batch of {} (train.drop_last = true)",
            t.batch_size
        );
    }
    let steps_per_epoch = batches_per_epoch.div_ceil(t.gradient_accumulation);
    let total_steps = steps_per_epoch * t.epochs;
    let eval_every = match t.eval_every {
        0 => steps_per_epoch,
        n => n,
    };
    Ok(StepPlan {
        batches_per_epoch,
        steps_per_epoch,
        total_steps,
        warmup: warmup_steps(total_steps, t.warmup_steps, t.warmup_ratio),
        eval_every,
        checkpoint_every: match t.checkpoint_every {
            0 => eval_every,
            n => n,
        },
    })
}

/// The trainer's configuration for `fold` with the step plan `steps`.
pub fn trainer_config(t: &TrainSettings, fold: usize, steps: StepPlan) -> TrainerConfig {
    TrainerConfig {
        fold,
        seed: t.seed,
        epochs: t.epochs,
        batch_size: t.batch_size,
        gradient_accumulation: t.gradient_accumulation,
        steps,
        schedule: t.schedule,
        learning_rate: t.learning_rate,
        max_grad_norm: t.max_grad_norm,
        loss_scaling: t.precision.loss_scaling(),
        loss: t.loss_config(),
        keep_best: KeepBest { by: t.keep_best_by },
        early_stopping: EarlyStopping {
            patience: t.patience,
        },
        batching: t.batching,
        pad_multiple: t.pad_multiple,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn train(batch: usize, accumulation: usize, epochs: usize) -> TrainSettings {
        TrainSettings {
            batch_size: batch,
            gradient_accumulation: accumulation,
            epochs,
            warmup_ratio: 0.1,
            warmup_steps: None,
            eval_every: 0,
            checkpoint_every: 0,
            drop_last: false,
            ..TrainSettings::default()
        }
    }

    #[test]
    fn steps_round_up_over_batches_and_accumulation() {
        // 100 windows in batches of 16: 7 micro-batches (the last of 4), 4 steps of 2.
        let p = step_plan(&train(16, 2, 3), 100).unwrap();
        assert_eq!(
            p,
            StepPlan {
                batches_per_epoch: 7,
                steps_per_epoch: 4,
                total_steps: 12,
                warmup: 2, // ceil(1.2)
                eval_every: 4,
                checkpoint_every: 4,
            }
        );
    }

    #[test]
    fn explicit_intervals_and_warmup_win() {
        let mut t = train(10, 1, 2);
        t.eval_every = 3;
        t.checkpoint_every = 5;
        t.warmup_steps = Some(7);
        let p = step_plan(&t, 95).unwrap();
        assert_eq!((p.batches_per_epoch, p.total_steps, p.warmup), (10, 20, 7));
        assert_eq!((p.eval_every, p.checkpoint_every), (3, 5));
        t.checkpoint_every = 0;
        assert_eq!(step_plan(&t, 95).unwrap().checkpoint_every, 3);
    }

    #[test]
    fn drop_last_drops_the_partial_batch_and_refuses_none() {
        let mut t = train(16, 1, 1);
        t.drop_last = true;
        assert_eq!(step_plan(&t, 100).unwrap().batches_per_epoch, 6);
        let err = step_plan(&t, 15).unwrap_err().to_string();
        assert_eq!(
            err,
            "15 training windows make no full batch of 16 (train.drop_last = true)"
        );
    }

    #[test]
    fn the_trainer_takes_the_settings_it_names() {
        let mut t = train(8, 1, 1);
        t.patience = 3;
        t.keep_best_by = crate::train::trainer::KeepBestBy::Loss;
        let steps = step_plan(&t, 40).unwrap();
        let c = trainer_config(&t, 2, steps);
        assert_eq!((c.fold, c.batch_size, c.steps), (2, 8, steps));
        assert_eq!(c.early_stopping.patience, 3);
        assert_eq!(c.keep_best.by, crate::train::trainer::KeepBestBy::Loss);
    }
}
