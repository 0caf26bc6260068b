//! Question-answering examples: loading every supported input format and validating answers.
//!
//! Reads SQuAD v1.1/v2.0 JSON (KorQuAD), JSON Lines as HF `datasets` exports them, HF
//! `save_to_disk` folders (Arrow IPC stream files), CSV and Parquet. Offsets are Unicode
//! character offsets, as `answer_start` counts them. Structural problems (missing fields,
//! duplicate ids, empty questions) are errors naming the file, row and field; answers that do not
//! match their context are repaired when the text occurs once nearby and dropped otherwise.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use polars::prelude::*;
use serde::{Deserialize, Serialize};

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
fn read_text_file(path: &Path) -> Result<Vec<u8>, DataError> {
    let mut bytes = fs::read(path).map_err(|e| data_err(path, "file", e.to_string()))?;
    if strip_bom(&bytes).len() != bytes.len() {
        bytes.drain(..3);
    }
    Ok(bytes)
}

/// Whether a text has nothing a tokenizer keeps: only whitespace, control characters (NUL
/// included) and the invisible format characters BERT's text cleaning drops.
fn is_blank(text: &str) -> bool {
    text.chars().all(|c| {
        c.is_whitespace()
            || c.is_control()
            || matches!(
                c,
                '\u{fffd}' | '\u{200b}'..='\u{200f}' | '\u{2060}' | '\u{feff}'
            )
    })
}

fn load_squad(path: &Path) -> Result<Vec<RawExample>, DataError> {
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

fn load_jsonl(path: &Path) -> Result<Vec<RawExample>, DataError> {
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

fn read_csv(path: &Path) -> Result<DataFrame, DataError> {
    let bytes = read_text_file(path)?;
    CsvReadOptions::default()
        .with_has_header(true)
        .with_infer_schema_length(Some(0)) // every column as text: ids stay as written
        .into_reader_with_file_handle(std::io::Cursor::new(bytes))
        .finish()
        .map_err(|e| data_err(path, "file", format!("not a readable CSV file: {e}")))
}

/// Reads every `*.arrow` file (Arrow IPC stream, as `save_to_disk` writes) in a folder.
fn read_hf_disk(path: &Path) -> Result<DataFrame, DataError> {
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

fn load_frame(path: &Path, df: DataFrame, unit: &str) -> Result<Vec<RawExample>, DataError> {
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

/// Character-offset view of a string: `slice(start, end)` in characters, O(1).
pub struct CharIndex<'a> {
    text: &'a str,
    /// Byte offset of every character, plus the text length at the end.
    bytes: Vec<usize>,
}

impl<'a> CharIndex<'a> {
    pub fn new(text: &'a str) -> Self {
        let mut bytes: Vec<usize> = text.char_indices().map(|(b, _)| b).collect();
        bytes.push(text.len());
        Self { text, bytes }
    }
    /// Number of characters.
    pub fn len(&self) -> usize {
        self.bytes.len() - 1
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Characters `[start, end)`, or `None` when out of range.
    pub fn slice(&self, start: usize, end: usize) -> Option<&'a str> {
        if start > end || end > self.len() {
            return None;
        }
        Some(&self.text[self.bytes[start]..self.bytes[end]])
    }
    /// Character offset of a byte offset that starts a character.
    pub fn char_of_byte(&self, byte: usize) -> usize {
        self.bytes.partition_point(|&b| b < byte)
    }
}

/// Checks ids, texts and answers; repairs or drops answers that do not match their context.
pub fn validate(
    path: &Path,
    raw: Vec<RawExample>,
    require_answers: bool,
    repair_window: usize,
) -> Result<(Vec<Example>, LoadReport), DataError> {
    let mut report = LoadReport {
        rows: raw.len(),
        ..Default::default()
    };
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut out = Vec::with_capacity(raw.len());
    for RawExample {
        location,
        mut example,
    } in raw
    {
        if example.id.trim().is_empty() {
            return Err(data_err(path, &location, "field `id` is empty"));
        }
        if let Some(first) = seen.insert(example.id.clone(), location.clone()) {
            return Err(data_err(
                path,
                &location,
                format!("duplicate id {:?} (first seen at {first})", example.id),
            ));
        }
        for (field, text) in [
            ("question", &example.question),
            ("context", &example.context),
        ] {
            if text.trim().is_empty() {
                return Err(data_err(
                    path,
                    &location,
                    format!("field `{field}` is empty"),
                ));
            }
            if is_blank(text) {
                return Err(data_err(
                    path,
                    &location,
                    format!("field `{field}` is empty: it holds only control or invisible characters, which give no tokens"),
                ));
            }
        }
        if example.answers.is_empty() {
            if require_answers {
                return Err(data_err(
                    path,
                    &location,
                    "field `answers` is empty: training data needs at least one answer",
                ));
            }
            out.push(example);
            continue;
        }
        let chars = CharIndex::new(&example.context);
        let before = example.answers.len();
        let mut kept = Vec::with_capacity(before);
        for a in example.answers.drain(..) {
            match locate_answer(&chars, &a, repair_window) {
                Some(start) if start == a.start => kept.push(a),
                Some(start) => {
                    report.repaired_answers += 1;
                    kept.push(Answer { start, ..a });
                }
                None => report.dropped_answers += 1,
            }
        }
        if kept.is_empty() {
            report.dropped_examples += 1;
            if report.dropped_ids.len() < 10 {
                report.dropped_ids.push(example.id.clone());
            }
            continue;
        }
        example.answers = kept;
        out.push(example);
    }
    report.kept = out.len();
    Ok((out, report))
}

/// Where the answer really starts: its own `start` when the text is there, else the single
/// occurrence of the text within `window` characters of it, else `None`.
fn locate_answer(chars: &CharIndex<'_>, a: &Answer, window: usize) -> Option<usize> {
    let len = a.text.chars().count();
    if len == 0 || a.text.trim().is_empty() {
        return None;
    }
    if chars.slice(a.start, a.start + len) == Some(a.text.as_str()) {
        return Some(a.start);
    }
    let lo = a.start.saturating_sub(window);
    let hi = (a.start + len + window).min(chars.len());
    let region = chars.slice(lo.min(hi), hi)?;
    let mut found = region
        .match_indices(a.text.as_str())
        .map(|(b, _)| lo + region[..b].chars().count());
    match (found.next(), found.next()) {
        (Some(start), None) => Some(start),
        _ => None,
    }
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
