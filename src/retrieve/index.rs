//! The BM25 index of the passages: tantivy (Lucene's design and scoring in Rust, on-disk
//! segments, memory-mapped) with one of our analysers. tantivy's BM25 has Lucene's idf and
//! its classic constants k1 = 1.2, b = 0.75, which it does not let a caller change.

use std::path::Path;

use anyhow::{Context, Result};
use rayon::prelude::*;
use tantivy::collector::TopDocs;
use tantivy::query::{BooleanQuery, BoostQuery, Occur, Query, TermQuery};
use tantivy::schema::{Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, FAST};
use tantivy::{Index, Searcher, TantivyDocument, Term};

use super::analyzer::TantivyAnalyzer;
use super::{Analyzer, Passage};

/// Extra hits fetched beyond `k`, so that ties at the cut are broken by passage id, not by
/// where tantivy placed the documents.
const TIE_MARGIN: usize = 4;

/// A searchable index of passages.
pub struct Bm25Index {
    searcher: Searcher,
    text: Field,
    /// Each segment's passage ids by document (read once from the fast field: a stored
    /// document per hit would be decompressed otherwise).
    ids: Vec<Vec<u64>>,
    analyzer: Analyzer,
}

impl Bm25Index {
    /// Indexes `passages` into the empty folder `dir` (one indexing thread: the same segments,
    /// so the same ties, from run to run).
    pub fn build(dir: &Path, passages: &[Passage], analyzer: Analyzer) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut sb = Schema::builder();
        let indexing = TextFieldIndexing::default()
            .set_tokenizer(analyzer.name())
            .set_index_option(IndexRecordOption::WithFreqs);
        let text = sb.add_text_field(
            "text",
            TextOptions::default().set_indexing_options(indexing),
        );
        let id = sb.add_u64_field("passage_id", FAST);
        let index = Index::create_in_dir(dir, sb.build())
            .with_context(|| format!("creating an index in {}", dir.display()))?;
        index
            .tokenizers()
            .register(analyzer.name(), TantivyAnalyzer(analyzer));
        let mut writer = index.writer_with_num_threads(1, 200_000_000)?;
        for p in passages {
            let mut doc = TantivyDocument::default();
            doc.add_text(text, &p.text);
            doc.add_u64(id, p.passage_id);
            writer.add_document(doc)?;
        }
        writer.commit()?;
        writer.wait_merging_threads()?;
        let reader = index.reader()?;
        reader.reload()?;
        let searcher = reader.searcher();
        let ids = searcher
            .segment_readers()
            .iter()
            .map(|seg| {
                let col = seg.fast_fields().u64("passage_id")?;
                Ok((0..seg.max_doc())
                    .map(|d| col.first(d).unwrap_or(u64::MAX))
                    .collect())
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            searcher,
            text,
            ids,
            analyzer,
        })
    }

    /// The `k` best passages for `question`: (passage id, BM25 score), best first, ties by
    /// passage id. A question without terms finds nothing.
    pub fn search(&self, question: &str, k: usize) -> Result<Vec<(u64, f32)>> {
        // A term given n times counts n times (as repeated clauses would in Lucene): one
        // clause boosted by n, which scores the same with fewer posting lists to walk.
        let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
        for t in self.analyzer.terms(question) {
            *counts.entry(t).or_default() += 1;
        }
        let clauses: Vec<(Occur, Box<dyn Query>)> = counts
            .into_iter()
            .map(|(t, n)| {
                let term = Term::from_field_text(self.text, &t);
                let q: Box<dyn Query> =
                    Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs));
                let q: Box<dyn Query> = if n > 1 {
                    Box::new(BoostQuery::new(q, n as f32))
                } else {
                    q
                };
                (Occur::Should, q)
            })
            .collect();
        if clauses.is_empty() || k == 0 {
            return Ok(Vec::new());
        }
        let top = TopDocs::with_limit(k + TIE_MARGIN).order_by_score();
        let mut hits = Vec::new();
        for (score, addr) in self.searcher.search(&BooleanQuery::new(clauses), &top)? {
            let pid = self.ids[addr.segment_ord as usize][addr.doc_id as usize];
            hits.push((pid, score));
        }
        hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        hits.truncate(k);
        Ok(hits)
    }

    /// [`Self::search`] for every question, on every core.
    pub fn search_all(&self, questions: &[&str], k: usize) -> Result<Vec<Vec<(u64, f32)>>> {
        questions.par_iter().map(|q| self.search(q, k)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passages(texts: &[&str]) -> Vec<Passage> {
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| Passage {
                passage_id: i as u64,
                doc_id: format!("d{i}"),
                title: String::new(),
                text: t.to_string(),
                start: 0,
            })
            .collect()
    }

    #[test]
    fn the_passage_sharing_the_rarest_terms_ranks_first() {
        let dir = tempfile::tempdir().unwrap();
        let ps = passages(&[
            "일본의 수도는 도쿄이다",
            "대한민국의 수도는 서울이다",
            "프랑스의 수도는 파리이다",
            "서울은 한강이 흐르는 도시이다",
        ]);
        let index = Bm25Index::build(dir.path(), &ps, Analyzer::Bigram).unwrap();
        let hits = index.search("대한민국의 수도는 어디인가", 3).unwrap();
        assert_eq!(hits[0].0, 1, "{hits:?}");
        assert!(hits.windows(2).all(|w| w[0].1 >= w[1].1));
        assert!(index.search("   ", 3).unwrap().is_empty());
        let all = index.search_all(&["도쿄", "파리"], 1).unwrap();
        assert_eq!((all[0][0].0, all[1][0].0), (0, 2));
    }
}
