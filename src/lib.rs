//! `pipeline`: the K-fold extractive question-answering reader workflow.
//!
//! Stages (`prepare`, `split`, ...) live in [`stages`] and talk only through files in the run
//! folder ([`run`], [`artifacts`]); pure QA logic lives in [`qa`].

pub mod artifacts;
pub mod bench;
pub mod cli;
pub mod combine;
pub mod commands;
pub mod device;
pub mod env;
pub mod infer;
pub mod launch;
pub mod model;
pub mod qa;
pub mod report;
pub mod retrieve;
pub mod run;
pub mod settings;
pub mod stages;
pub mod sweep;
pub mod tensorboard;
pub mod train;
pub mod ui;
