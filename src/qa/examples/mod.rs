//! Question-answering examples: loading every supported input format and validating answers.
//!
//! Reads SQuAD v1.1/v2.0 JSON (KorQuAD), JSON Lines as HF `datasets` exports them, HF
//! `save_to_disk` folders (Arrow IPC stream files), CSV and Parquet. Offsets are Unicode
//! character offsets, as `answer_start` counts them. Structural problems (missing fields,
//! duplicate ids, empty questions) are errors naming the file, row and field; answers that do not
//! match their context are repaired when the text occurs once nearby and dropped otherwise.

use std::fs;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use serde::{Deserialize, Serialize};

mod readers;
mod validate;

pub use readers::strip_bom;
use readers::{load_frame, load_jsonl, load_squad, read_csv, read_hf_disk};
pub use validate::{validate, CharIndex};

/// Input file formats `prepare` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    /// Chosen from the path: `.json` SQuAD, `.jsonl` JSON Lines, `.csv`, `.parquet`, a folder = HF `save_to_disk`.
    #[default]
    Auto,
    Squad,
    Jsonl,
    HfDisk,
    Csv,
    Parquet,
}

/// One gold answer: its text and the character offset where it starts in the context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    pub text: String,
    pub start: usize,
}

/// One question over one context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    pub id: String,
    pub title: String,
    /// Document identity where the data has one (KLUE's `document_id`); else grouping uses the title.
    pub document_id: Option<String>,
    pub context: String,
    pub question: String,
    pub answers: Vec<Answer>,
}

/// A problem in an input file, located precisely enough to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {location}: {message}")]
pub struct DataError {
    pub file: PathBuf,
    /// Row, line or JSON path (with the id when known).
    pub location: String,
    pub message: String,
}

fn data_err(file: &Path, location: impl Into<String>, message: impl Into<String>) -> DataError {
    DataError {
        file: file.to_path_buf(),
        location: location.into(),
        message: message.into(),
    }
}

/// What validation did to a file's examples.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    pub rows: usize,
    pub kept: usize,
    /// Answers whose `answer_start` was wrong but whose text occurs exactly once nearby.
    pub repaired_answers: usize,
    /// Answers that could not be found in their context.
    pub dropped_answers: usize,
    /// Examples dropped because none of their answers matched their context.
    pub dropped_examples: usize,
    /// The first few dropped example ids, for the log.
    pub dropped_ids: Vec<String>,
}

/// Picks the format from the path when `format` is `auto`.
pub fn detect_format(path: &Path, format: DataFormat) -> Result<DataFormat, DataError> {
    if format != DataFormat::Auto {
        return Ok(format);
    }
    if path.is_dir() {
        return Ok(DataFormat::HfDisk);
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    match ext.as_str() {
        "json" => Ok(DataFormat::Squad),
        "jsonl" | "ndjson" => Ok(DataFormat::Jsonl),
        "csv" => Ok(DataFormat::Csv),
        "parquet" | "pq" => Ok(DataFormat::Parquet),
        "arrow" => Ok(DataFormat::HfDisk),
        _ => Err(data_err(
            path,
            "file name",
            "cannot tell the format from the extension (.json, .jsonl, .csv, .parquet, or a save_to_disk folder); set data.format",
        )),
    }
}

/// Loads and validates one data file. `require_answers` is true for training data.
pub fn load(
    path: &Path,
    format: DataFormat,
    require_answers: bool,
    repair_window: usize,
) -> anyhow::Result<(Vec<Example>, LoadReport)> {
    let raw = load_raw(path, format)?;
    Ok(validate(path, raw, require_answers, repair_window)?)
}

/// Reads examples without validating answers against contexts.
pub fn load_raw(path: &Path, format: DataFormat) -> anyhow::Result<Vec<RawExample>> {
    if !path.exists() {
        return Err(data_err(path, "path", "does not exist").into());
    }
    Ok(match detect_format(path, format)? {
        DataFormat::Squad => load_squad(path)?,
        DataFormat::Jsonl => load_jsonl(path)?,
        DataFormat::Csv => load_frame(path, read_csv(path)?, "row")?,
        DataFormat::Parquet => {
            let file = fs::File::open(path)?;
            let df = ParquetReader::new(file)
                .finish()
                .map_err(|e| data_err(path, "file", format!("not a readable Parquet file: {e}")))?;
            load_frame(path, df, "row")?
        }
        DataFormat::HfDisk => load_frame(path, read_hf_disk(path)?, "row")?,
        DataFormat::Auto => unreachable!("detect_format resolves auto"),
    })
}

/// Every question's id and gold answer texts, in file order, as the official scorers read them.
pub fn load_golds(path: &Path, format: DataFormat) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    Ok(load_raw(path, format)?
        .into_iter()
        .map(|r| {
            let texts = r.example.answers.into_iter().map(|a| a.text).collect();
            (r.example.id, texts)
        })
        .collect())
}

/// An example before validation, with where it came from.
pub struct RawExample {
    pub location: String,
    pub example: Example,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(id: &str, context: &str, text: &str, start: usize) -> RawExample {
        RawExample {
            location: format!("row {id}"),
            example: Example {
                id: id.into(),
                title: "t".into(),
                document_id: None,
                context: context.into(),
                question: "무엇?".into(),
                answers: vec![Answer {
                    text: text.into(),
                    start,
                }],
            },
        }
    }

    #[test]
    fn answers_use_character_offsets_and_shifted_starts_are_repaired() {
        let ctx = "대한민국의 수도는 서울이다. Seoul is big.";
        let raw = vec![
            ex("ok", ctx, "서울", 10),
            ex("shift", ctx, "서울", 12),
            ex("gone", ctx, "부산", 10),
        ];
        let (kept, report) = validate(Path::new("f.json"), raw, true, 8).unwrap();
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[1].answers[0].start, 10);
        assert_eq!(report.repaired_answers, 1);
        assert_eq!(report.dropped_examples, 1);
        assert_eq!(report.dropped_ids, vec!["gone".to_string()]);
    }

    #[test]
    fn ambiguous_repairs_are_dropped_not_guessed() {
        let ctx = "사과 그리고 사과";
        let (kept, report) =
            validate(Path::new("f"), vec![ex("a", ctx, "사과", 3)], true, 8).unwrap();
        assert!(kept.is_empty());
        assert_eq!(report.dropped_answers, 1);
    }

    #[test]
    fn duplicate_ids_and_empty_fields_name_the_row() {
        let ctx = "abc def";
        let err = validate(
            Path::new("d.json"),
            vec![ex("x", ctx, "abc", 0), ex("x", ctx, "def", 4)],
            true,
            8,
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("d.json: row x: duplicate id"), "{err}");
        let mut e = ex("q", ctx, "abc", 0);
        e.example.question = "  ".into();
        let err = validate(Path::new("d.json"), vec![e], true, 8)
            .unwrap_err()
            .to_string();
        assert!(err.contains("field `question` is empty"), "{err}");
    }

    #[test]
    fn control_characters_alone_are_an_empty_field_naming_the_row() {
        let ctx = "abc def";
        for (field, text) in [
            ("question", "\0\0\0"),
            ("question", "\u{1}\u{7f}\u{200b}"),
            ("context", "\0 \u{feff}\t"),
        ] {
            let mut e = ex("r7", ctx, "abc", 0);
            if field == "question" {
                e.example.question = text.into();
            } else {
                e.example.context = text.into();
            }
            let err = validate(Path::new("d.json"), vec![e], true, 8)
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with("d.json: row r7: field `")
                    && err.contains(&format!("field `{field}` is empty: it holds only control")),
                "{err}"
            );
        }
        // Text with control characters in it, and visible text too, is kept.
        let mut e = ex("ok", ctx, "abc", 0);
        e.example.question = "what\0is it?".into();
        assert_eq!(
            validate(Path::new("d"), vec![e], true, 8).unwrap().0.len(),
            1
        );
    }

    #[test]
    fn a_byte_order_mark_is_not_part_of_the_data() {
        assert_eq!(strip_bom(b"\xef\xbb\xbf{}"), b"{}");
        assert_eq!(strip_bom(b"{}"), b"{}");
        let dir = tempfile::tempdir().unwrap();
        let rows = "id,question,context,answer_text,answer_start\nr1,q?,abc def,def,4\n";
        let json = r#"{"data":[{"title":"t","paragraphs":[{"context":"abc def","qas":[{"id":"r1","question":"q?","answers":[{"text":"def","answer_start":4}]}]}]}]}"#;
        let jsonl = r#"{"id":"r1","question":"q?","context":"abc def","answers":{"text":["def"],"answer_start":[4]}}"#;
        for (name, body) in [("a.csv", rows), ("a.json", json), ("a.jsonl", jsonl)] {
            let p = dir.path().join(name);
            std::fs::write(&p, format!("\u{feff}{body}")).unwrap();
            let (kept, _) =
                load(&p, DataFormat::Auto, true, 8).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert_eq!(kept.len(), 1, "{name}");
            assert_eq!(kept[0].id, "r1", "{name}");
            assert_eq!(kept[0].answers[0].start, 4, "{name}");
        }
    }

    #[test]
    fn char_index_slices_by_characters() {
        let c = CharIndex::new("가나다abc");
        assert_eq!(c.len(), 6);
        assert_eq!(c.slice(1, 4), Some("나다a"));
        assert_eq!(c.slice(5, 7), None);
        assert_eq!(c.char_of_byte(6), 2);
    }
}
