//! Reading a document collection: the KLUE open-domain wiki JSON (`{"0": {"text", "title",
//! "document_id", …}, …}`), JSON Lines or Parquet with `id`, `title`, `text`, or a SQuAD file
//! whose distinct contexts become the documents. A bad record is one line naming the file, the
//! record and the field.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// One document of the collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub id: String,
    pub title: String,
    pub text: String,
}

/// The documents of `path`, in file order; ids are unique and texts non-empty.
pub fn read_corpus(path: &Path) -> Result<Vec<Document>> {
    if !path.exists() {
        bail!("{}: corpus file not found", path.display());
    }
    let is_parquet = path.extension().is_some_and(|e| e == "parquet");
    let docs = if is_parquet {
        read_parquet(path)?
    } else {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let text = std::str::from_utf8(&bytes).map_err(|e| {
            anyhow::anyhow!("{}: not UTF-8 (byte {})", path.display(), e.valid_up_to())
        })?;
        if path.extension().is_some_and(|e| e == "jsonl") {
            read_jsonl(path, text)?
        } else {
            let v: Value = serde_json::from_str(text)
                .with_context(|| format!("{}: not JSON", path.display()))?;
            if v.get("data").is_some_and(Value::is_array) {
                squad_contexts(path, &v)?
            } else {
                read_wiki(path, &v)?
            }
        }
    };
    check(path, &docs)?;
    Ok(docs)
}

/// A string field of record `key`: a missing or non-string field is an error.
fn field(path: &Path, key: &str, record: &Value, name: &str) -> Result<String> {
    match record.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) if name != "text" => Ok(n.to_string()),
        Some(Value::Null) | None => bail!(
            "{}: record {key}: field `{name}` is missing",
            path.display()
        ),
        Some(_) => bail!(
            "{}: record {key}: field `{name}` is not a string",
            path.display()
        ),
    }
}

/// KLUE's `wikipedia_documents.json`: an object of records keyed by number; the id is the
/// record's `document_id` where it has one, else its key.
fn read_wiki(path: &Path, v: &Value) -> Result<Vec<Document>> {
    let Some(records) = v.as_object() else {
        bail!(
            "{}: not a corpus (an object of records with `text` and `title`, JSON Lines, Parquet, or a SQuAD file)",
            path.display()
        );
    };
    records
        .iter()
        .map(|(key, r)| {
            let id = match r.get("document_id") {
                Some(Value::Null) | None => key.clone(),
                Some(_) => field(path, key, r, "document_id")?,
            };
            Ok(Document {
                id,
                title: field(path, key, r, "title")?,
                text: field(path, key, r, "text")?,
            })
        })
        .collect()
}

/// JSON Lines with `id`, `title`, `text`; records are named by their line.
fn read_jsonl(path: &Path, text: &str) -> Result<Vec<Document>> {
    let mut docs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let key = format!("line {}", i + 1);
        let r: Value = serde_json::from_str(line)
            .with_context(|| format!("{}: {key}: not JSON", path.display()))?;
        docs.push(Document {
            id: field(path, &key, &r, "id")?,
            title: field(path, &key, &r, "title")?,
            text: field(path, &key, &r, "text")?,
        });
    }
    Ok(docs)
}

/// A SQuAD file's distinct contexts, each a document `title#n` (n counts the title's
/// paragraphs).
fn squad_contexts(path: &Path, v: &Value) -> Result<Vec<Document>> {
    let mut docs = Vec::new();
    let mut seen = HashSet::new();
    for (a, article) in v["data"].as_array().into_iter().flatten().enumerate() {
        let key = format!("data[{a}]");
        let title = field(path, &key, article, "title")?;
        for (p, para) in article["paragraphs"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let text = field(path, &format!("{key}.paragraphs[{p}]"), para, "context")?;
            if seen.insert(text.clone()) {
                docs.push(Document {
                    id: format!("{title}#{p}"),
                    title: title.clone(),
                    text,
                });
            }
        }
    }
    Ok(docs)
}

/// Parquet with string columns `id`, `title`, `text`; records are named by their row.
fn read_parquet(path: &Path) -> Result<Vec<Document>> {
    use polars::prelude::*;
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let df = ParquetReader::new(file)
        .finish()
        .map_err(|e| anyhow::anyhow!("{}: not Parquet: {e}", path.display()))?;
    let col = |name: &str| -> Result<Vec<Option<String>>> {
        let c = df
            .column(name)
            .map_err(|_| anyhow::anyhow!("{}: no column `{name}`", path.display()))?;
        let s = c
            .str()
            .map_err(|_| anyhow::anyhow!("{}: column `{name}` is not text", path.display()))?;
        Ok(s.iter().map(|v| v.map(str::to_string)).collect())
    };
    let (ids, titles, texts) = (col("id")?, col("title")?, col("text")?);
    let mut docs = Vec::with_capacity(ids.len());
    for (i, ((id, title), text)) in ids.into_iter().zip(titles).zip(texts).enumerate() {
        let missing =
            |f: &str| anyhow::anyhow!("{}: row {i}: field `{f}` is missing", path.display());
        docs.push(Document {
            id: id.ok_or_else(|| missing("id"))?,
            title: title.unwrap_or_default(),
            text: text.ok_or_else(|| missing("text"))?,
        });
    }
    Ok(docs)
}

/// Ids must be unique and texts non-empty.
fn check(path: &Path, docs: &[Document]) -> Result<()> {
    let mut ids = HashSet::new();
    for d in docs {
        if !ids.insert(d.id.as_str()) {
            bail!("{}: record {}: duplicate id", path.display(), d.id);
        }
        if d.text.trim().is_empty() {
            bail!("{}: record {}: field `text` is empty", path.display(), d.id);
        }
    }
    if docs.is_empty() {
        bail!("{}: the corpus has no documents", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    #[test]
    fn the_three_text_formats_read() {
        let (_d, wiki) = write(
            "w.json",
            r#"{"0": {"text": "가나다", "title": "T", "document_id": 7}, "1": {"text": "라마", "title": "U"}}"#,
        );
        let docs = read_corpus(&wiki).unwrap();
        assert_eq!((docs[0].id.as_str(), docs[1].id.as_str()), ("7", "1"));
        let (_d, jsonl) = write(
            "c.jsonl",
            "{\"id\": \"a\", \"title\": \"T\", \"text\": \"x y\"}\n\n",
        );
        assert_eq!(read_corpus(&jsonl).unwrap()[0].text, "x y");
        let (_d, squad) = write(
            "s.json",
            r#"{"data": [{"title": "T", "paragraphs": [{"context": "c1", "qas": []}, {"context": "c1"}, {"context": "c2"}]}]}"#,
        );
        let docs = read_corpus(&squad).unwrap();
        assert_eq!(docs.len(), 2, "a repeated context is one document");
        assert_eq!(docs[1].id, "T#2");
    }

    #[test]
    fn bad_records_are_one_line_errors_naming_file_record_and_field() {
        let cases = [
            ("d.jsonl", "{\"id\": \"a\", \"title\": \"\", \"text\": \"x\"}\n{\"id\": \"a\", \"title\": \"\", \"text\": \"y\"}", "record a: duplicate id"),
            ("e.jsonl", "{\"id\": \"a\", \"title\": \"\", \"text\": \"  \"}", "record a: field `text` is empty"),
            ("n.jsonl", "{\"id\": \"a\", \"title\": \"\", \"text\": 3}", "line 1: field `text` is not a string"),
            ("m.json", r#"{"0": {"title": "T"}}"#, "record 0: field `text` is missing"),
        ];
        for (name, text, want) in cases {
            let (_d, p) = write(name, text);
            let err = format!("{:#}", read_corpus(&p).unwrap_err());
            assert!(
                err.contains(name) && err.contains(want) && !err.contains('\n'),
                "{err}"
            );
        }
        let (_d, p) = write("b.json", "");
        std::fs::write(&p, [0x7b, 0xff, 0x7d]).unwrap();
        let err = format!("{:#}", read_corpus(&p).unwrap_err());
        assert!(err.contains("not UTF-8"), "{err}");
        let err = format!("{:#}", read_corpus(Path::new("/no/such.json")).unwrap_err());
        assert!(err.contains("corpus file not found"), "{err}");
    }
}
