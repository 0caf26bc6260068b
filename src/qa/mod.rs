//! Tensor-free question-answering logic: examples, windows, decoding, voting, metrics.

pub mod decode;
pub mod ensemble;
pub mod examples;
pub mod metrics;
pub mod vote;
pub mod windows;
pub mod wordpiece;
