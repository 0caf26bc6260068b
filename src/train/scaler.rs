//! Dynamic loss scaling for f16 mixed precision, as `torch.cuda.amp.GradScaler` does it.
//!
//! f16 keeps 5 exponent bits: small gradients flowing back through f16 matrix products
//! underflow to zero. The loss is multiplied by `scale` before the backward pass and the
//! gradients divided by it afterwards (in f32). A step whose gradients are not finite is skipped
//! and the scale halved; after `growth_interval` finite steps in a row it doubles. torch's
//! defaults: initial scale 2¹⁶, factors 2 and ½, interval 2000.

use serde::{Deserialize, Serialize};

/// The scaler's state (saved with the trainer state so a resumed run continues it).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScaler {
    pub scale: f64,
    /// Finite steps since the last change of scale.
    pub good_steps: usize,
}

/// torch's `GradScaler` defaults.
pub const INIT_SCALE: f64 = 65536.0;
pub const GROWTH_INTERVAL: usize = 2000;

impl Default for LossScaler {
    fn default() -> Self {
        Self {
            scale: INIT_SCALE,
            good_steps: 0,
        }
    }
}

impl LossScaler {
    /// Records whether this step's (unscaled) gradients were finite; returns whether the
    /// optimizer should step.
    pub fn update(&mut self, finite: bool) -> bool {
        if finite {
            self.good_steps += 1;
            if self.good_steps == GROWTH_INTERVAL {
                // torch keeps the scale finite in f32.
                let grown = self.scale * 2.0;
                if grown <= f64::from(f32::MAX) {
                    self.scale = grown;
                }
                self.good_steps = 0;
            }
        } else {
            self.scale *= 0.5;
            self.good_steps = 0;
        }
        finite
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_on_overflow_and_grows_after_the_interval_like_grad_scaler() {
        let mut s = LossScaler::default();
        assert_eq!(s.scale, 65536.0);
        assert!(!s.update(false));
        assert!(!s.update(false));
        assert_eq!(s.scale, 16384.0);
        for _ in 0..GROWTH_INTERVAL - 1 {
            assert!(s.update(true));
        }
        assert_eq!((s.scale, s.good_steps), (16384.0, GROWTH_INTERVAL - 1));
        assert!(s.update(true));
        assert_eq!((s.scale, s.good_steps), (32768.0, 0));
        // An overflow resets the run of good steps.
        s.update(true);
        s.update(false);
        assert_eq!((s.scale, s.good_steps), (16384.0, 0));
    }
}
