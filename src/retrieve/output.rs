//! What retrieval writes: `passages.parquet` (`passage_id`, `doc_id`, `title`, `text`, `start`),
//! `topk.parquet` (`question_id`, `rank`, `passage_id`, `score`) and `metrics.json`, each
//! atomically.

use std::path::Path;

use anyhow::Result;
use polars::prelude::*;

use super::{Passage, RetrievalMetrics};
use crate::artifacts::write_parquet;

pub const PASSAGES: &str = "passages.parquet";
pub const TOPK: &str = "topk.parquet";
pub const METRICS: &str = "metrics.json";

/// Writes `passages.parquet` into `dir`.
pub fn write_passages(dir: &Path, passages: &[Passage]) -> Result<()> {
    let mut df = DataFrame::new_infer_height(vec![
        Column::from(Series::new(
            "passage_id".into(),
            passages.iter().map(|p| p.passage_id).collect::<Vec<_>>(),
        )),
        Column::from(Series::new(
            "doc_id".into(),
            passages
                .iter()
                .map(|p| p.doc_id.as_str())
                .collect::<Vec<_>>(),
        )),
        Column::from(Series::new(
            "title".into(),
            passages
                .iter()
                .map(|p| p.title.as_str())
                .collect::<Vec<_>>(),
        )),
        Column::from(Series::new(
            "text".into(),
            passages.iter().map(|p| p.text.as_str()).collect::<Vec<_>>(),
        )),
        Column::from(Series::new(
            "start".into(),
            passages.iter().map(|p| p.start as u64).collect::<Vec<_>>(),
        )),
    ])?;
    write_parquet(&dir.join(PASSAGES), &mut df)
}

/// Writes `topk.parquet` into `dir`: every question's hits, ranked from 1.
pub fn write_topk(dir: &Path, ids: &[&str], hits: &[Vec<(u64, f32)>]) -> Result<()> {
    let (mut q, mut rank, mut pid, mut score) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (id, list) in ids.iter().zip(hits) {
        for (r, (p, s)) in list.iter().enumerate() {
            q.push(*id);
            rank.push(r as u32 + 1);
            pid.push(*p);
            score.push(*s);
        }
    }
    let mut df = DataFrame::new_infer_height(vec![
        Column::from(Series::new("question_id".into(), q)),
        Column::from(Series::new("rank".into(), rank)),
        Column::from(Series::new("passage_id".into(), pid)),
        Column::from(Series::new("score".into(), score)),
    ])?;
    write_parquet(&dir.join(TOPK), &mut df)
}

/// Writes `metrics.json` into `dir` (`null` where no question has a context).
pub fn write_metrics(dir: &Path, metrics: &Option<RetrievalMetrics>) -> Result<()> {
    crate::run::write_json_atomic(&dir.join(METRICS), metrics)
}
