//! Issue 27, the retriever alone (`pipeline retrieve`): BM25 with tantivy over the sample's
//! corpus (its contexts plus character-shuffled distractors) and over KorQuAD 1.0 dev as an
//! open-domain set; the files it writes, their rerun after an interruption, bad corpora.

mod common;

use std::path::Path;

use common::*;

fn retrieve(
    dir: &Path,
    corpus: &Path,
    questions: &Path,
    out: &Path,
    more: &[&str],
) -> serde_json::Value {
    let mut args = vec![
        "retrieve".to_string(),
        "-q".into(),
        "--corpus".into(),
        corpus.display().to_string(),
        "--questions".into(),
        questions.display().to_string(),
        "--out".into(),
        out.display().to_string(),
    ];
    args.extend(more.iter().map(|s| s.to_string()));
    let text = ok(dir, &args.iter().map(String::as_str).collect::<Vec<_>>());
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn parquet(path: &Path) -> polars::prelude::DataFrame {
    use polars::prelude::*;
    ParquetReader::new(std::fs::File::open(path).unwrap())
        .finish()
        .unwrap()
}

#[test]
fn the_sample_corpus_is_retrieved_and_rewritten_identically() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ret");
    let corpus = root().join("data/sample/corpus.json");
    let test = root().join("data/sample/test.json");
    let m = retrieve(dir.path(), &corpus, &test, &out, &["--top-k", "10"]);
    assert_eq!(m["questions"], 76);
    // The gold context, not its shuffled copy, is almost always first.
    assert!(m["recall"]["1"].as_f64().unwrap() > 80.0, "{m}");
    assert!(m["recall"]["10"].as_f64().unwrap() > 95.0, "{m}");
    assert!(m["mrr"].as_f64().unwrap() > 85.0, "{m}");
    assert_eq!(
        m["recall"].as_object().unwrap().len(),
        4,
        "1, 5, 10, 20: {m}"
    );

    let passages = parquet(&out.join("passages.parquet"));
    assert_eq!(passages.height(), 200);
    let names: Vec<&str> = passages
        .get_column_names()
        .iter()
        .map(|s| s.as_str())
        .collect();
    assert_eq!(names, ["passage_id", "doc_id", "title", "text", "start"]);
    let topk = parquet(&out.join("topk.parquet"));
    assert_eq!(topk.height(), 76 * 10);
    let names: Vec<&str> = topk.get_column_names().iter().map(|s| s.as_str()).collect();
    assert_eq!(names, ["question_id", "rank", "passage_id", "score"]);

    // Interrupted: a half-built index and a missing output; the rerun writes the same bytes.
    let files = ["passages.parquet", "topk.parquet", "metrics.json"];
    let before: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(out.join(f)).unwrap())
        .collect();
    std::fs::create_dir_all(out.join(".index-left-over")).unwrap();
    std::fs::remove_file(out.join("topk.parquet")).unwrap();
    retrieve(dir.path(), &corpus, &test, &out, &["--top-k", "10"]);
    for (f, b) in files.iter().zip(&before) {
        assert_eq!(&std::fs::read(out.join(f)).unwrap(), b, "{f} differs");
    }

    // Passages of at most 120 characters map back into their documents.
    let m = retrieve(
        dir.path(),
        &corpus,
        &test,
        &out,
        &[
            "--chunk-chars",
            "120",
            "--chunk-overlap",
            "30",
            "--analyzer",
            "whitespace",
        ],
    );
    assert!(m["recall"]["20"].as_f64().unwrap() > 50.0, "{m}");
    let passages = parquet(&out.join("passages.parquet"));
    assert!(passages.height() > 400);
    let docs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&corpus).unwrap()).unwrap();
    let by_id: std::collections::HashMap<String, String> = docs
        .as_object()
        .unwrap()
        .values()
        .map(|d| {
            (
                d["document_id"].to_string(),
                d["text"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let col = |n: &str| passages.column(n).unwrap().clone();
    let (ids, texts, starts) = (col("doc_id"), col("text"), col("start"));
    for i in 0..passages.height() {
        let id = ids.str().unwrap().get(i).unwrap();
        let text = texts.str().unwrap().get(i).unwrap();
        let start = starts.u64().unwrap().get(i).unwrap() as usize;
        assert!(text.chars().count() <= 120);
        let back: String = by_id[id]
            .chars()
            .skip(start)
            .take(text.chars().count())
            .collect();
        assert_eq!(back, text);
    }
}

#[test]
fn a_bad_corpus_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"id\": \"a\", \"title\": \"T\", \"text\": \"x\"}\n{\"id\": \"a\", \"title\": \"T\", \"text\": \"y\"}\n",
    )
    .unwrap();
    let test = root().join("data/sample/test.json");
    let o = pipeline(
        dir.path(),
        &[
            "retrieve",
            "--corpus",
            bad.to_str().unwrap(),
            "--questions",
            test.to_str().unwrap(),
            "--out",
            "o",
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr).trim().to_string();
    assert!(!o.status.success());
    assert!(
        err.contains("bad.jsonl: record a: duplicate id") && err.lines().count() == 1,
        "{err}"
    );
    assert!(!dir.path().join("o/topk.parquet").exists());
}

/// KorQuAD 1.0 dev as an open-domain set: its 961 distinct paragraphs as the corpus, its
/// 5,774 questions; the targets for bigrams are R@1 ≥ 88 and R@20 ≥ 99.
#[test]
fn korquad_open_domain_recall_with_bigrams() {
    let Some(k) = korquad() else { return };
    let dir = tempfile::tempdir().unwrap();
    let m = retrieve(dir.path(), &k, &k, &dir.path().join("o"), &[]);
    assert_eq!(m["questions"], 5774);
    let r = |k: &str| m["recall"][k].as_f64().unwrap();
    assert!(r("1") >= 88.0 && r("20") >= 99.0, "{m}");
}
