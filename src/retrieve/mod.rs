//! Open-domain retrieval: passages from a document collection for questions that come without
//! one (the KLUE-MRC open-domain test set). A corpus is read ([`corpus`]), cut into passages
//! ([`chunk`]), indexed with tantivy's BM25 under one of our analysers ([`index`], [`analyzer`]),
//! and searched; [`metrics`] scores the ranking where the questions carry their contexts.

pub mod analyzer;
pub mod chunk;
pub mod corpus;
pub mod index;
pub mod metrics;
pub mod output;

pub use analyzer::Analyzer;
pub use chunk::{chunk, Passage};
pub use corpus::{read_corpus, Document};
pub use index::Bm25Index;
pub use metrics::{score_ranking, RetrievalMetrics};

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::qa::examples::{load_raw, DataFormat};
use crate::ui::Ui;

/// What `pipeline retrieve` is asked.
#[derive(Debug, Clone)]
pub struct Request {
    pub corpus: PathBuf,
    pub questions: PathBuf,
    pub out: PathBuf,
    pub top_k: usize,
    pub analyzer: Analyzer,
    /// Passage length in characters; 0 keeps whole documents.
    pub chunk_chars: usize,
    pub chunk_overlap: usize,
}

/// Retrieves the `top_k` passages of the corpus for every question of a data file and writes
/// [`output::PASSAGES`], [`output::TOPK`] and [`output::METRICS`] (and the index, in `index/`)
/// into `out`; the metrics where the questions carry contexts.
pub fn retrieve_files(r: &Request, ui: Ui) -> Result<Option<RetrievalMetrics>> {
    let docs = read_corpus(&r.corpus)?;
    let passages = chunk(&docs, r.chunk_chars, r.chunk_overlap);
    let examples: Vec<_> = load_raw(&r.questions, DataFormat::Auto)?
        .into_iter()
        .map(|raw| raw.example)
        .collect();
    std::fs::create_dir_all(&r.out).with_context(|| format!("creating {}", r.out.display()))?;
    let t0 = Instant::now();
    let index = build_index(&r.out, &passages, r.analyzer)?;
    let indexed_s = t0.elapsed().as_secs_f64();
    let questions: Vec<&str> = examples.iter().map(|e| e.question.as_str()).collect();
    let t1 = Instant::now();
    let hits = index.search_all(&questions, r.top_k)?;
    let search_s = t1.elapsed().as_secs_f64();
    ui.info(&format!(
        "retrieve: {} documents -> {} passages indexed in {indexed_s:.1} s; {} questions in {search_s:.2} s ({:.0} per second)",
        docs.len(),
        passages.len(),
        questions.len(),
        questions.len() as f64 / search_s.max(1e-9)
    ));
    let golds: Vec<metrics::Gold> = examples
        .iter()
        .map(|e| metrics::Gold {
            context: &e.context,
            answers: e.answers.iter().map(|a| a.text.as_str()).collect(),
        })
        .collect();
    let ranked: Vec<Vec<&str>> = hits
        .iter()
        .map(|list| {
            list.iter()
                .map(|(p, _)| passages[*p as usize].text.as_str())
                .collect()
        })
        .collect();
    let metrics = score_ranking(&golds, &ranked, r.top_k);
    let ids: Vec<&str> = examples.iter().map(|e| e.id.as_str()).collect();
    output::write_passages(&r.out, &passages)?;
    output::write_topk(&r.out, &ids, &hits)?;
    output::write_metrics(&r.out, &metrics)?;
    Ok(metrics)
}

/// The index of `passages` in `out/index/`, built anew in a temporary folder beside it and
/// renamed into place, so an interrupted build leaves no half-written index behind.
fn build_index(out: &Path, passages: &[Passage], analyzer: Analyzer) -> Result<Bm25Index> {
    let tmp = tempfile::Builder::new()
        .prefix(".index-")
        .tempdir_in(out)
        .with_context(|| format!("creating a folder in {}", out.display()))?;
    let index = Bm25Index::build(tmp.path(), passages, analyzer)?;
    let dest = out.join("index");
    if dest.exists() {
        std::fs::remove_dir_all(&dest).with_context(|| format!("removing {}", dest.display()))?;
    }
    std::fs::rename(tmp.keep(), &dest)
        .with_context(|| format!("renaming into {}", dest.display()))?;
    Ok(index)
}
