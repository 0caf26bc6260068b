//! The readers of each input format, into [`RawExample`]s with errors naming file, row, field.

use std::fs;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use serde::Deserialize;

use super::{data_err, Answer, DataError, Example, RawExample};

#[derive(Deserialize)]
struct SquadFile {
    data: Vec<SquadArticle>,
}
#[derive(Deserialize)]
struct SquadArticle {
    #[serde(default)]
    title: String,
    paragraphs: Vec<SquadParagraph>,
}
#[derive(Deserialize)]
struct SquadParagraph {
    context: Option<String>,
    #[serde(default)]
    document_id: Option<serde_json::Value>,
    qas: Vec<SquadQa>,
}
#[derive(Deserialize)]
struct SquadQa {
    id: Option<serde_json::Value>,
    question: Option<String>,
    #[serde(default)]
    answers: Vec<SquadAnswer>,
}
#[derive(Deserialize)]
struct SquadAnswer {
    text: Option<String>,
    answer_start: Option<i64>,
}

fn id_string(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `bytes` without a leading UTF-8 byte-order mark (Windows tools write one before JSON and
/// CSV).
pub fn strip_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes)
}

/// Reads a whole file, without a leading byte-order mark.
pub(super) fn read_text_file(path: &Path) -> Result<Vec<u8>, DataError> {
    let mut bytes = fs::read(path).map_err(|e| data_err(path, "file", e.to_string()))?;
    if strip_bom(&bytes).len() != bytes.len() {
        bytes.drain(..3);
    }
    Ok(bytes)
}

/// Whether a text has nothing a tokenizer keeps: only whitespace, control characters (NUL
/// included) and the invisible format characters BERT's text cleaning drops.
pub(super) fn is_blank(text: &str) -> bool {
    text.chars().all(|c| {
        c.is_whitespace()
            || c.is_control()
            || matches!(
                c,
                '\u{fffd}' | '\u{200b}'..='\u{200f}' | '\u{2060}' | '\u{feff}'
            )
    })
}

pub(super) fn load_squad(path: &Path) -> Result<Vec<RawExample>, DataError> {
    let bytes = read_text_file(path)?;
    let file: SquadFile = serde_json::from_slice(&bytes).map_err(|e| {
        data_err(
            path,
            format!("line {} column {}", e.line(), e.column()),
            format!("not SQuAD-format JSON ({{\"data\": [{{\"title\", \"paragraphs\": [{{\"context\", \"qas\"}}]}}]}}): {e}"),
        )
    })?;
    let mut out = Vec::new();
    for (i, art) in file.data.into_iter().enumerate() {
        for (j, para) in art.paragraphs.into_iter().enumerate() {
            let ploc = format!("data[{i}].paragraphs[{j}]");
            let context = para
                .context
                .ok_or_else(|| data_err(path, &ploc, "missing field `context`"))?;
            for (k, qa) in para.qas.into_iter().enumerate() {
                let mut loc = format!("{ploc}.qas[{k}]");
                let id = qa
                    .id
                    .as_ref()
                    .map(id_string)
                    .ok_or_else(|| data_err(path, &loc, "missing field `id`"))?;
                loc = format!("{loc} (id {id})");
                let question = qa
                    .question
                    .ok_or_else(|| data_err(path, &loc, "missing field `question`"))?;
                let mut answers = Vec::new();
                for (a, ans) in qa.answers.into_iter().enumerate() {
                    let text = ans.text.ok_or_else(|| {
                        data_err(path, &loc, format!("answers[{a}]: missing field `text`"))
                    })?;
                    let start = ans.answer_start.ok_or_else(|| {
                        data_err(
                            path,
                            &loc,
                            format!("answers[{a}]: missing field `answer_start`"),
                        )
                    })?;
                    answers.push(answer(path, &loc, text, start)?);
                }
                out.push(RawExample {
                    location: loc,
                    example: Example {
                        id,
                        title: art.title.clone(),
                        document_id: para.document_id.as_ref().map(id_string),
                        context: context.clone(),
                        question,
                        answers,
                    },
                });
            }
        }
    }
    Ok(out)
}

fn answer(path: &Path, loc: &str, text: String, start: i64) -> Result<Answer, DataError> {
    let start = usize::try_from(start).map_err(|_| {
        data_err(
            path,
            loc,
            format!("field `answer_start` is negative ({start})"),
        )
    })?;
    Ok(Answer { text, start })
}

/// One JSON Lines record as HF `datasets.Dataset.to_json` writes it.
#[derive(Deserialize)]
struct JsonlRecord {
    id: Option<serde_json::Value>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    document_id: Option<serde_json::Value>,
    context: Option<String>,
    question: Option<String>,
    #[serde(default)]
    answers: Option<AnswerLists>,
}

/// HF's `answers` column: parallel lists.
#[derive(Deserialize, Default, Clone)]
struct AnswerLists {
    #[serde(default)]
    text: Vec<String>,
    #[serde(default)]
    answer_start: Vec<i64>,
}

fn answers_from_lists(
    path: &Path,
    loc: &str,
    lists: AnswerLists,
) -> Result<Vec<Answer>, DataError> {
    if lists.text.len() != lists.answer_start.len() {
        return Err(data_err(
            path,
            loc,
            format!(
                "field `answers`: {} texts but {} answer_start values",
                lists.text.len(),
                lists.answer_start.len()
            ),
        ));
    }
    lists
        .text
        .into_iter()
        .zip(lists.answer_start)
        .map(|(t, s)| answer(path, loc, t, s))
        .collect()
}

pub(super) fn load_jsonl(path: &Path) -> Result<Vec<RawExample>, DataError> {
    let text = String::from_utf8(read_text_file(path)?)
        .map_err(|e| data_err(path, "file", format!("not UTF-8 text: {e}")))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let loc = format!("line {}", n + 1);
        let rec: JsonlRecord = serde_json::from_str(line)
            .map_err(|e| data_err(path, &loc, format!("invalid JSON record: {e}")))?;
        let id = rec
            .id
            .as_ref()
            .map(id_string)
            .ok_or_else(|| data_err(path, &loc, "missing field `id`"))?;
        let loc = format!("{loc} (id {id})");
        let context = rec
            .context
            .ok_or_else(|| data_err(path, &loc, "missing field `context`"))?;
        let question = rec
            .question
            .ok_or_else(|| data_err(path, &loc, "missing field `question`"))?;
        let answers = answers_from_lists(path, &loc, rec.answers.unwrap_or_default())?;
        out.push(RawExample {
            location: loc,
            example: Example {
                id,
                title: rec.title.unwrap_or_default(),
                document_id: rec.document_id.as_ref().map(id_string),
                context,
                question,
                answers,
            },
        });
    }
    Ok(out)
}

pub(super) fn read_csv(path: &Path) -> Result<DataFrame, DataError> {
    let bytes = read_text_file(path)?;
    CsvReadOptions::default()
        .with_has_header(true)
        .with_infer_schema_length(Some(0)) // every column as text: ids stay as written
        .into_reader_with_file_handle(std::io::Cursor::new(bytes))
        .finish()
        .map_err(|e| data_err(path, "file", format!("not a readable CSV file: {e}")))
}

/// Reads every `*.arrow` file (Arrow IPC stream, as `save_to_disk` writes) in a folder.
pub(super) fn read_hf_disk(path: &Path) -> Result<DataFrame, DataError> {
    let mut files: Vec<PathBuf> = if path.is_file() {
        vec![path.to_path_buf()]
    } else {
        let entries = fs::read_dir(path).map_err(|e| data_err(path, "folder", e.to_string()))?;
        entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "arrow"))
            .collect()
    };
    files.sort();
    if files.is_empty() {
        let hint = if path.join("dataset_dict.json").exists() {
            " (this is a DatasetDict: point data.train/data.test at one of its split folders, e.g. train/)"
        } else {
            ""
        };
        return Err(data_err(
            path,
            "folder",
            format!("no .arrow files found{hint}"),
        ));
    }
    let mut frames = Vec::new();
    for f in &files {
        let file = fs::File::open(f).map_err(|e| data_err(f, "file", e.to_string()))?;
        let df = IpcStreamReader::new(file)
            .finish()
            .map_err(|e| data_err(f, "file", format!("not an Arrow IPC stream: {e}")))?;
        frames.push(df);
    }
    let mut df = frames.remove(0);
    for other in frames {
        df.vstack_mut(&other)
            .map_err(|e| data_err(path, "folder", format!("shards disagree: {e}")))?;
    }
    Ok(df)
}

/// Text cells of a column (`None` = null); ids and document ids may be numeric.
fn text_column(
    path: &Path,
    df: &DataFrame,
    name: &str,
    required: bool,
) -> Result<Option<Vec<Option<String>>>, DataError> {
    let Ok(col) = df.column(name) else {
        if required {
            return Err(data_err(
                path,
                "header",
                format!("missing column `{name}` (found: {})", column_names(df)),
            ));
        }
        return Ok(None);
    };
    let cast = col
        .cast(&DataType::String)
        .map_err(|e| data_err(path, "header", format!("column `{name}`: {e}")))?;
    let ca = cast
        .str()
        .map_err(|e| data_err(path, "header", format!("column `{name}`: {e}")))?;
    Ok(Some(ca.iter().map(|v| v.map(str::to_string)).collect()))
}

fn column_names(df: &DataFrame) -> String {
    df.get_column_names()
        .iter()
        .map(|s| s.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Answers of a table: a struct column `answers{text[], answer_start[]}` (Arrow, Parquet), a JSON
/// string column `answers` (CSV), or flat `answer_text`/`answer_start` columns (one answer).
fn answer_column(path: &Path, df: &DataFrame) -> Result<Vec<Option<AnswerLists>>, DataError> {
    let n = df.height();
    let bad = |m: String| data_err(path, "column `answers`", m);
    if let Ok(col) = df.column("answers") {
        match col.dtype() {
            DataType::Struct(_) => {
                let s = col.as_materialized_series();
                let st = s.struct_().map_err(|e| bad(e.to_string()))?;
                let texts = st
                    .field_by_name("text")
                    .map_err(|_| bad("struct has no field `text`".into()))?;
                let starts = st
                    .field_by_name("answer_start")
                    .map_err(|_| bad("struct has no field `answer_start`".into()))?;
                let texts = texts
                    .cast(&DataType::List(Box::new(DataType::String)))
                    .map_err(|e| bad(format!("`text` is not a list of strings: {e}")))?;
                let starts = starts
                    .cast(&DataType::List(Box::new(DataType::Int64)))
                    .map_err(|e| bad(format!("`answer_start` is not a list of integers: {e}")))?;
                let tl = texts.list().map_err(|e| bad(e.to_string()))?;
                let sl = starts.list().map_err(|e| bad(e.to_string()))?;
                let mut out = Vec::with_capacity(n);
                for (t, s) in tl.series_iter().zip(sl.series_iter()) {
                    let text: Vec<String> = match t {
                        Some(t) => t
                            .str()
                            .map_err(|e| bad(e.to_string()))?
                            .iter()
                            .map(|v| v.unwrap_or_default().to_string())
                            .collect(),
                        None => Vec::new(),
                    };
                    let answer_start: Vec<i64> = match s {
                        Some(s) => s
                            .i64()
                            .map_err(|e| bad(e.to_string()))?
                            .iter()
                            .map(|v| v.unwrap_or(-1))
                            .collect(),
                        None => Vec::new(),
                    };
                    out.push(Some(AnswerLists { text, answer_start }));
                }
                Ok(out)
            }
            _ => {
                let cells = text_column(path, df, "answers", true)?.unwrap_or_default();
                cells
                    .into_iter()
                    .enumerate()
                    .map(|(r, cell)| match cell {
                        None => Ok(None),
                        Some(c) if c.trim().is_empty() => Ok(None),
                        Some(c) => serde_json::from_str::<AnswerLists>(&c).map(Some).map_err(|e| {
                            data_err(
                                path,
                                format!("row {}", r + 1),
                                format!("field `answers` is not JSON like {{\"text\": [...], \"answer_start\": [...]}}: {e}"),
                            )
                        }),
                    })
                    .collect()
            }
        }
    } else if df.column("answer_text").is_ok() || df.column("answer_start").is_ok() {
        let texts = text_column(path, df, "answer_text", true)?.unwrap_or_default();
        let starts = text_column(path, df, "answer_start", true)?.unwrap_or_default();
        texts
            .into_iter()
            .zip(starts)
            .enumerate()
            .map(|(r, (t, s))| match (t, s) {
                (Some(t), Some(s)) if !s.trim().is_empty() => {
                    let start = s.trim().parse::<i64>().map_err(|_| {
                        data_err(
                            path,
                            format!("row {}", r + 1),
                            format!("field `answer_start` is not an integer: {s:?}"),
                        )
                    })?;
                    Ok(Some(AnswerLists {
                        text: vec![t],
                        answer_start: vec![start],
                    }))
                }
                _ => Ok(None),
            })
            .collect()
    } else {
        Ok(vec![None; n])
    }
}

pub(super) fn load_frame(
    path: &Path,
    df: DataFrame,
    unit: &str,
) -> Result<Vec<RawExample>, DataError> {
    let n = df.height();
    let ids = text_column(path, &df, "id", true)?.unwrap_or_default();
    let contexts = text_column(path, &df, "context", true)?.unwrap_or_default();
    let questions = text_column(path, &df, "question", true)?.unwrap_or_default();
    let titles = text_column(path, &df, "title", false)?;
    let docs = text_column(path, &df, "document_id", false)?;
    let answers = answer_column(path, &df)?;
    let mut out = Vec::with_capacity(n);
    for (r, ans) in answers.into_iter().enumerate() {
        let mut loc = format!("{unit} {}", r + 1);
        let id = ids[r]
            .clone()
            .ok_or_else(|| data_err(path, &loc, "field `id` is empty"))?;
        loc = format!("{loc} (id {id})");
        let context = contexts[r]
            .clone()
            .ok_or_else(|| data_err(path, &loc, "field `context` is missing"))?;
        let question = questions[r]
            .clone()
            .ok_or_else(|| data_err(path, &loc, "field `question` is missing"))?;
        let answers = answers_from_lists(path, &loc, ans.unwrap_or_default())?;
        out.push(RawExample {
            location: loc,
            example: Example {
                id,
                title: titles
                    .as_ref()
                    .and_then(|t| t[r].clone())
                    .unwrap_or_default(),
                document_id: docs.as_ref().and_then(|d| d[r].clone()),
                context,
                question,
                answers,
            },
        });
    }
    Ok(out)
}
