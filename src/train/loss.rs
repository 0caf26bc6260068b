//! Span losses over sequence positions: the start and end losses averaged, as HF's
//! `*ForQuestionAnswering` does. Cross-entropy, and the competition notebook's focal and
//! label-smoothing losses with its exact formulas.

use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};
use serde::{Deserialize, Serialize};

/// Which loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    #[default]
    Ce,
    /// `-(1 - p_t)^γ log p_t` (the competition notebook's `FocalLoss`: `nll_loss((1 - p)^γ * log p)`).
    Focal,
    /// `-Σ_c q_c log p_c`, `q_t = 1 - ε`, `q_c = ε / (C - 1)` elsewhere (the competition notebook's
    /// `LabelSmoothingLoss`; not torch's `label_smoothing`, which spreads ε over all C).
    LabelSmoothing,
}

/// Loss settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    pub kind: LossKind,
    /// Focal γ.
    pub gamma: f64,
    /// Label-smoothing ε.
    pub smoothing: f64,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            kind: LossKind::Ce,
            gamma: 2.0,
            smoothing: 0.1,
        }
    }
}

/// Mean loss of `logits` `[batch, classes]` against `targets` `[batch]`.
pub fn position_loss<B: Backend>(
    cfg: &LossConfig,
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> Tensor<B, 1> {
    let [b, c] = logits.dims();
    let lp = log_softmax(logits, 1);
    let lp_t = lp.clone().gather(1, targets.reshape([b, 1])).reshape([b]);
    match cfg.kind {
        LossKind::Ce => lp_t.neg().mean(),
        LossKind::Focal => {
            let weight = (lp_t.clone().exp().neg() + 1.0).powf_scalar(cfg.gamma);
            (weight * lp_t).neg().mean()
        }
        LossKind::LabelSmoothing => {
            let off = cfg.smoothing / (c as f64 - 1.0);
            let on = 1.0 - cfg.smoothing;
            // Σ_c q_c lp_c = off · Σ_c lp_c + (on - off) · lp_t
            let total = lp.sum_dim(1).reshape([b]) * off + lp_t * (on - off);
            total.neg().mean()
        }
    }
}

/// `(start_loss + end_loss) / 2` over start/end logits `[batch, seq]`.
pub fn qa_loss<B: Backend>(
    cfg: &LossConfig,
    start_logits: Tensor<B, 2>,
    end_logits: Tensor<B, 2>,
    start_positions: Tensor<B, 1, Int>,
    end_positions: Tensor<B, 1, Int>,
) -> Tensor<B, 1> {
    (position_loss(cfg, start_logits, start_positions)
        + position_loss(cfg, end_logits, end_positions))
        / 2.0
}
