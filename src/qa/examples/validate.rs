//! Checking each answer against its context: repaired when its text occurs once nearby, else
//! dropped (and the example, when no answer is left); structural problems are errors.

use std::collections::HashMap;
use std::path::Path;

use super::readers::is_blank;
use super::{data_err, Answer, DataError, Example, LoadReport, RawExample};

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
