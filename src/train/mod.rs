//! Training pieces: losses, optimizers (AdamW, AdamP), learning-rate schedules, gradient clipping.

pub mod batch;
pub mod clip;
pub mod loss;
pub mod optim;
pub mod scaler;
pub mod schedule;
pub mod trainer;
mod unread;
