//! Learning-rate schedules equal to transformers' `get_{linear,cosine,constant}_schedule_with_warmup`.
//!
//! transformers builds a `LambdaLR` whose lr before optimizer step `k` (0-based) is
//! `base_lr * λ(k)`, computed in f64. The functions here evaluate the same λ with the same
//! operation order, so the values agree with the Python ones to the last bit (cosine up to the
//! last ulp of the platform `cos`).

use serde::{Deserialize, Serialize};

/// Which warmup-then-decay shape the learning rate follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleKind {
    /// Linear warmup from 0, then linear decay to 0 at `total_steps`.
    Linear,
    /// Linear warmup, then half a cosine period down to 0 (transformers' `num_cycles = 0.5`).
    Cosine,
    /// Linear warmup, then constant.
    Constant,
}

/// transformers' default `num_cycles` for the cosine schedule (half a period: base lr to 0).
const NUM_CYCLES: f64 = 0.5;

/// The multiplier λ(step) of the schedule (the factor `LambdaLR` applies to the base lr).
pub fn lambda_at(kind: ScheduleKind, step: usize, warmup_steps: usize, total_steps: usize) -> f64 {
    if step < warmup_steps {
        // All three schedules share this warmup: `float(step) / float(max(1, warmup))`.
        return step as f64 / warmup_steps.max(1) as f64;
    }
    // Signed, as in Python: past `total_steps` the numerator goes negative and `max(0, ..)`
    // clamps it.
    let after = step as f64 - warmup_steps as f64;
    let span = (total_steps as f64 - warmup_steps as f64).max(1.0);
    match kind {
        ScheduleKind::Linear => ((total_steps as f64 - step as f64) / span).max(0.0),
        ScheduleKind::Cosine => {
            let progress = after / span;
            // Same left-to-right order as `math.pi * float(num_cycles) * 2.0 * progress`.
            (0.5 * (1.0 + (std::f64::consts::PI * NUM_CYCLES * 2.0 * progress).cos())).max(0.0)
        }
        ScheduleKind::Constant => 1.0,
    }
}

/// The learning rate used by optimizer step `step` (0-based): `base_lr * λ(step)`.
pub fn lr_at(
    kind: ScheduleKind,
    base_lr: f64,
    step: usize,
    warmup_steps: usize,
    total_steps: usize,
) -> f64 {
    base_lr * lambda_at(kind, step, warmup_steps, total_steps)
}

/// Warmup length as HF `TrainingArguments.get_warmup_steps` decides it: explicit
/// `warmup_steps` when given and positive (HF treats 0 as "not set"), else
/// `ceil(total * warmup_ratio)`.
pub fn warmup_steps(total: usize, warmup_steps: Option<usize>, warmup_ratio: f64) -> usize {
    match warmup_steps {
        Some(n) if n > 0 => n,
        _ => {
            let w = (total as f64 * warmup_ratio).ceil();
            // A negative or NaN ratio is a configuration error upstream; treat it as no warmup.
            if w.is_finite() && w > 0.0 {
                w as usize
            } else {
                0
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_warmup_matches_hand_values() {
        let lrs: Vec<f64> = (0..5)
            .map(|k| lr_at(ScheduleKind::Linear, 1e-3, k, 2, 5))
            .collect();
        assert_eq!(lrs[0], 0.0);
        assert_eq!(lrs[1], 5e-4);
        assert_eq!(lrs[2], 1e-3);
        assert_eq!(lrs[3], 1e-3 * (2.0 / 3.0));
        assert_eq!(lrs[4], 1e-3 * (1.0 / 3.0));
        assert_eq!(lr_at(ScheduleKind::Linear, 1e-3, 7, 2, 5), 0.0);
    }

    #[test]
    fn cosine_and_constant_ends() {
        assert_eq!(lr_at(ScheduleKind::Cosine, 1.0, 0, 0, 10), 1.0);
        assert!(lr_at(ScheduleKind::Cosine, 1.0, 10, 0, 10) < 1e-15);
        assert_eq!(lr_at(ScheduleKind::Constant, 2.0, 1, 4, 10), 0.5);
        assert_eq!(lr_at(ScheduleKind::Constant, 2.0, 9, 4, 10), 2.0);
    }

    #[test]
    fn warmup_steps_like_hf() {
        assert_eq!(warmup_steps(100, Some(7), 0.5), 7);
        assert_eq!(warmup_steps(100, None, 0.1), 10);
        assert_eq!(warmup_steps(101, None, 0.1), 11);
        assert_eq!(warmup_steps(100, Some(0), 0.06), 6);
        assert_eq!(warmup_steps(100, None, 0.0), 0);
    }

    #[test]
    fn serde_names() {
        assert_eq!(
            serde_json::to_string(&ScheduleKind::Cosine).unwrap_or_default(),
            "\"cosine\""
        );
    }
}
