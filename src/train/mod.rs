//! Training pieces: losses, optimizers (AdamW, AdamP), learning-rate schedules, gradient clipping.

pub mod loss;
