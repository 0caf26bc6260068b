//! Tensor-free question-answering logic: examples, windows, decoding, metrics.

pub mod decode;
pub mod examples;
pub mod metrics;
pub mod windows;
pub mod wordpiece;
