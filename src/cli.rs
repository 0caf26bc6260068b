//! The command line: parses it and dispatches to [`crate::commands`], one module per command.

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::commands;
use crate::ui::Ui;

/// K-fold extractive question answering: prepare, split, train, predict, ensemble, evaluate, submit.
#[derive(Debug, Parser)]
#[command(name = "pipeline", version, about)]
pub struct Cli {
    /// No progress bars or status messages.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Progress as plain lines, no bars (for workers that run side by side; set by this
    /// program for its children).
    #[arg(long, global = true, hide = true)]
    pub plain_progress: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one stage, or all of them in order (skipping those up to date).
    Run(commands::run::Args),
    /// Run every variant of a sweep (`[sweep]`, `--sweep FILE`, `--grid`) as its own run,
    /// sharing prepare and split where they are the same, and compare them
    /// (`<output_dir>/<sweep>/comparison.csv`, `.md`); `pipeline sweep status` shows where
    /// each variant stands.
    Sweep(commands::sweep::Args),
    /// Ensemble several finished runs of the same prepared windows (e.g. a sweep's
    /// variants): writes predictions.json, nbest_predictions.json, oof_predictions.json and
    /// scores.json (out-of-fold and, where labelled, test EM/F1) into --out.
    Ensemble(commands::ensemble::Args),
    /// Show each stage as done / stale / missing, with why.
    Status(commands::status::Args),
    /// Run any HF question-answering checkpoint (or an exported fold) over a data file; writes
    /// predictions.json, nbest_predictions.json and logits.safetensors into --out.
    Infer(crate::infer::InferArgs),
    /// Retrieve passages from a corpus (BM25) for the questions of a data file; writes
    /// passages.parquet, topk.parquet and metrics.json into --out and prints the metrics.
    Retrieve(commands::retrieve::Args),
    /// Measure training throughput on random inputs (examples/s, tokens/s, MFU) for a model
    /// shape; prints one JSON object.
    Bench(crate::bench::BenchArgs),
    /// Score a predictions.json ({"id": "answer", ...}) against a SQuAD-format file, as the
    /// official scripts do; prints {"exact_match", "f1", "total"} as JSON.
    Score(commands::score::Args),
}

/// Parses the process arguments and runs the command.
pub fn main() -> Result<()> {
    let cli = Cli::parse();
    let ui = Ui {
        quiet: cli.quiet,
        plain: cli.plain_progress,
    };
    crate::model::kernels::set_checked_launches(crate::env::checked_kernels()?);
    match cli.command {
        Command::Run(a) => commands::run::exec(a, ui),
        Command::Sweep(a) => commands::sweep::exec(a, ui),
        Command::Ensemble(a) => commands::ensemble::exec(a),
        Command::Status(a) => commands::status::exec(a, ui),
        Command::Infer(a) => commands::infer::exec(a, ui),
        Command::Retrieve(a) => commands::retrieve::exec(a, ui),
        Command::Bench(a) => commands::bench::exec(a),
        Command::Score(a) => commands::score::exec(a, ui),
    }
}
