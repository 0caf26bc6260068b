//! `pipeline retrieve`: the retriever alone, as `infer` is the reader alone: BM25 over a
//! corpus for the questions of a data file; prints the metrics as one JSON line.

use std::path::PathBuf;

use anyhow::Result;

use crate::retrieve::{retrieve_files, Analyzer, Request};
use crate::ui::Ui;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The documents: KLUE's wiki JSON, JSON Lines or Parquet with id/title/text, or a SQuAD
    /// file (its distinct contexts).
    #[arg(long)]
    pub corpus: PathBuf,
    /// The questions (any supported data format).
    #[arg(long)]
    pub questions: PathBuf,
    /// Where passages.parquet, topk.parquet, metrics.json and the index go.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 20)]
    pub top_k: usize,
    #[arg(long, value_enum, default_value = "bigram")]
    pub analyzer: Analyzer,
    /// Passage length in characters (cut at a sentence end or white space); 0: whole documents.
    #[arg(long, default_value_t = 0)]
    pub chunk_chars: usize,
    /// Characters a passage repeats from the one before.
    #[arg(long, default_value_t = 0)]
    pub chunk_overlap: usize,
}

pub fn exec(a: Args, ui: Ui) -> Result<()> {
    let metrics = retrieve_files(
        &Request {
            corpus: a.corpus,
            questions: a.questions,
            out: a.out,
            top_k: a.top_k,
            analyzer: a.analyzer,
            chunk_chars: a.chunk_chars,
            chunk_overlap: a.chunk_overlap,
        },
        ui,
    )?;
    println!("{}", serde_json::to_string(&metrics)?);
    Ok(())
}
