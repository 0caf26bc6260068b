//! Official exact-match / F1 answer metrics for KorQuAD 1.0 and SQuAD v1.1.
//!
//! This is a re-implementation of the two official evaluation scripts
//! (`KorQuAD_v1.0_evaluate.py` and SQuAD's `evaluate-v1.1.py`) that reproduces
//! their Python semantics exactly, including the places where Python string
//! handling differs from Rust's:
//!
//! * `str.split()` treats U+001C..=U+001F as whitespace; `char::is_whitespace`
//!   does not, so `is_py_space` adds them.
//! * `re`'s Unicode `\b` uses `str.isalnum()`, which is narrower than
//!   `char::is_alphanumeric` (the latter also accepts `Other_Alphabetic`
//!   combining marks and circled letters), so `is_py_word` subtracts those.
//! * `str.lower()` and `str::to_lowercase` agree on every code point assigned
//!   in Unicode 14 (Python 3.11's database), including the context-dependent
//!   final sigma and the two-char lowering of `İ`.
//!
//! Known residual difference: characters first assigned after Unicode 14 follow
//! the Rust standard library's (newer) Unicode tables rather than Python 3.11's.
//!
//! Scores are averaged exactly like the scripts: per-question values are
//! summed in document order, then `100.0 * sum / total`.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::str::FromStr;

/// Which official evaluation script to reproduce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// KorQuAD 1.0: character-level F1 after Korean-specific symbol removal.
    Korquad,
    /// SQuAD v1.1: token-level F1 after English article removal.
    Squad,
}

impl Metric {
    /// Every metric, in the order the CLI lists them.
    pub const ALL: [Metric; 2] = [Metric::Korquad, Metric::Squad];

    /// The lowercase name used on the command line and in serialized configs.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Korquad => "korquad",
            Metric::Squad => "squad",
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error returned when a string names no known [`Metric`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseMetricError {
    /// The rejected input, verbatim.
    pub input: String,
}

impl fmt::Display for ParseMetricError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let choices: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
        write!(
            f,
            "unknown metric `{}`; expected one of: {}",
            self.input,
            choices.join(", ")
        )
    }
}

impl std::error::Error for ParseMetricError {}

impl FromStr for Metric {
    type Err = ParseMetricError;

    /// Accepts the lowercase names (`korquad`, `squad`); ASCII case is ignored
    /// so that `KorQuAD` / `SQuAD` as written in papers also work.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Metric::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| ParseMetricError {
                input: s.to_owned(),
            })
    }
}

/// Characters the KorQuAD script replaces with a space (not deletes) before
/// anything else, so they split tokens for exact match.
const KORQUAD_SPACED: [char; 12] = [
    '\'', '"', '《', '》', '<', '>', '〈', '〉', '(', ')', '‘', '’',
];

/// Python `str.isspace()`: Rust's `White_Space` set plus the four ASCII
/// information separators, which CPython also treats as whitespace.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1C}'..='\u{1F}').contains(&c)
}

/// Python `' '.join(s.split())`: collapse runs of whitespace, trim both ends.
fn white_space_fix(s: &str) -> String {
    py_split(s).collect::<Vec<_>>().join(" ")
}

/// Python `s.split()` with no argument: non-empty runs of non-whitespace.
fn py_split(s: &str) -> impl Iterator<Item = &str> {
    s.split(is_py_space).filter(|t| !t.is_empty())
}

/// Python `s.lower()`. Verified code point by code point against CPython 3.11
/// (Unicode 14): identical for every assigned character; both apply the
/// Unicode `Final_Sigma` rule with the same Cased / Case_Ignorable context.
fn py_lower(s: &str) -> String {
    s.to_lowercase()
}

/// Python `''.join(ch for ch in s if ch not in string.punctuation)`.
/// `string.punctuation` is exactly the 32 ASCII punctuation characters.
fn remove_ascii_punct(s: &str) -> String {
    s.chars().filter(|c| !c.is_ascii_punctuation()).collect()
}

/// A word character for Python 3 `re` in Unicode mode: `str.isalnum()` or `_`.
fn is_py_word(c: char) -> bool {
    if c.is_ascii() {
        return c.is_ascii_alphanumeric() || c == '_';
    }
    c.is_alphanumeric() && !in_non_py_alnum(c)
}

/// Whether `c` is alphanumeric for Rust but not for Python's `str.isalnum()`.
fn in_non_py_alnum(c: char) -> bool {
    let c = u32::from(c);
    NON_PY_ALNUM
        .binary_search_by(|&[lo, hi]| {
            if hi < c {
                std::cmp::Ordering::Less
            } else if lo > c {
                std::cmp::Ordering::Greater
            } else {
                std::cmp::Ordering::Equal
            }
        })
        .is_ok()
}

/// SQuAD `re.sub(r'\b(a|an|the)\b', ' ', text)`.
///
/// Because the pattern is bracketed by `\b` and its alternatives consist only
/// of word characters, a match is exactly a maximal run of word characters
/// equal to `a`, `an` or `the`; scanning runs is therefore equivalent to the
/// regex, without a regex dependency.
fn remove_articles(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        if is_py_word(c) {
            let end = rest
                .char_indices()
                .find(|&(_, ch)| !is_py_word(ch))
                .map_or(rest.len(), |(i, _)| i);
            let word = &rest[..end];
            if matches!(word, "a" | "an" | "the") {
                out.push(' ');
            } else {
                out.push_str(word);
            }
            rest = &rest[end..];
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// The official `normalize_answer` of the chosen script.
pub fn normalize_answer(metric: Metric, s: &str) -> String {
    match metric {
        Metric::Korquad => {
            // Order matters: replacement happens before lowering, which can
            // change the final-sigma context, exactly as in the script.
            let spaced: String = s
                .chars()
                .map(|c| if KORQUAD_SPACED.contains(&c) { ' ' } else { c })
                .collect();
            white_space_fix(&remove_ascii_punct(&py_lower(&spaced)))
        }
        Metric::Squad => white_space_fix(&remove_articles(&remove_ascii_punct(&py_lower(s)))),
    }
}

/// Official exact match: the normalized strings are equal.
pub fn exact_match(metric: Metric, prediction: &str, gold: &str) -> bool {
    normalize_answer(metric, prediction) == normalize_answer(metric, gold)
}

/// Official F1: character-level for KorQuAD, whitespace-token-level for SQuAD.
///
/// As in both scripts, no overlap gives 0, including when both sides
/// normalize to nothing (where exact match is nevertheless true).
pub fn f1(metric: Metric, prediction: &str, gold: &str) -> f64 {
    let pred = normalize_answer(metric, prediction);
    let gold = normalize_answer(metric, gold);
    match metric {
        // Characters of all tokens concatenated = every non-whitespace char.
        Metric::Korquad => overlap_f1(
            py_split(&pred).flat_map(str::chars).collect(),
            py_split(&gold).flat_map(str::chars).collect(),
        ),
        Metric::Squad => overlap_f1(py_split(&pred).collect(), py_split(&gold).collect()),
    }
}

/// F1 over multisets (`Counter(pred) & Counter(gold)`), with the scripts'
/// float operation order so results are bit-identical.
fn overlap_f1<T: Hash + Eq>(pred: Vec<T>, gold: Vec<T>) -> f64 {
    let gold_len = gold.len();
    let mut remaining: HashMap<T, usize> = HashMap::new();
    for g in gold {
        *remaining.entry(g).or_insert(0) += 1;
    }
    let pred_len = pred.len();
    let mut num_same = 0usize;
    for p in pred {
        if let Some(n) = remaining.get_mut(&p) {
            if *n > 0 {
                *n -= 1;
                num_same += 1;
            }
        }
    }
    if num_same == 0 {
        return 0.0;
    }
    let precision = num_same as f64 / pred_len as f64;
    let recall = num_same as f64 / gold_len as f64;
    (2.0 * precision * recall) / (precision + recall)
}

/// Best exact match (0 or 1) and best F1 over several gold answers, as the
/// official `metric_max_over_ground_truths`.
///
/// With no gold answers Python would raise (`max()` of an empty list); this
/// returns `(0.0, 0.0)` instead.
pub fn best_em_f1(metric: Metric, prediction: &str, golds: &[String]) -> (f64, f64) {
    let mut em = 0.0f64;
    let mut best_f1 = 0.0f64;
    for gold in golds {
        if exact_match(metric, prediction, gold) {
            em = 1.0;
        }
        best_f1 = best_f1.max(f1(metric, prediction, gold));
    }
    (em, best_f1)
}

/// Aggregate scores, as percentages like the official scripts print them.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Score {
    /// Mean exact match ×100.
    pub exact_match: f64,
    /// Mean F1 ×100.
    pub f1: f64,
    /// Number of gold questions, answered or not.
    pub total: usize,
}

/// Official averaging: every gold question counts in `total`, a missing
/// prediction scores 0, and the result is `100.0 * sum / total` with the sum
/// taken in the order `golds` yields questions.
///
/// Also returns the ids that had no prediction, in gold order. With no gold
/// questions Python would divide by zero; this returns zero scores instead.
pub fn score<'a>(
    metric: Metric,
    golds: impl IntoIterator<Item = (&'a str, &'a [String])>,
    predictions: &HashMap<String, String>,
) -> (Score, Vec<String>) {
    let mut em_sum = 0.0f64;
    let mut f1_sum = 0.0f64;
    let mut total = 0usize;
    let mut missing = Vec::new();
    for (id, answers) in golds {
        total += 1;
        match predictions.get(id) {
            Some(prediction) => {
                let (em, f) = best_em_f1(metric, prediction, answers);
                em_sum += em;
                f1_sum += f;
            }
            None => missing.push(id.to_owned()),
        }
    }
    let score = if total == 0 {
        Score {
            exact_match: 0.0,
            f1: 0.0,
            total,
        }
    } else {
        Score {
            exact_match: 100.0 * em_sum / total as f64,
            f1: 100.0 * f1_sum / total as f64,
            total,
        }
    };
    (score, missing)
}

/// Start and end token accuracy over labelled windows, as fractions in [0, 1].
///
/// The four slices are expected to have equal length; if they do not, only
/// the common prefix is compared (and counted). An empty input gives `(0, 0)`.
pub fn start_end_accuracy(
    pred_start: &[usize],
    pred_end: &[usize],
    gold_start: &[usize],
    gold_end: &[usize],
) -> (f64, f64) {
    debug_assert!(
        pred_start.len() == gold_start.len()
            && pred_end.len() == gold_end.len()
            && pred_start.len() == pred_end.len(),
        "start/end accuracy inputs differ in length"
    );
    let n = pred_start
        .len()
        .min(pred_end.len())
        .min(gold_start.len())
        .min(gold_end.len());
    if n == 0 {
        return (0.0, 0.0);
    }
    let hits =
        |p: &[usize], g: &[usize]| p[..n].iter().zip(&g[..n]).filter(|(a, b)| a == b).count();
    let starts = hits(pred_start, gold_start);
    let ends = hits(pred_end, gold_end);
    (starts as f64 / n as f64, ends as f64 / n as f64)
}

/// Code point ranges (inclusive) that `char::is_alphanumeric` accepts but
/// CPython 3.11's `str.isalnum()` rejects: `Other_Alphabetic` combining marks
/// (Mn/Mc) and circled letters (So). Generated by comparing both predicates on
/// every code point assigned in Unicode 14; there are no differences in the
/// other direction.
#[rustfmt::skip]
const NON_PY_ALNUM: [[u32; 2]; 234] = [
    [0x0345, 0x0345], [0x0363, 0x036F], [0x05B0, 0x05BD], [0x05BF, 0x05BF],
    [0x05C1, 0x05C2], [0x05C4, 0x05C5], [0x05C7, 0x05C7], [0x0610, 0x061A],
    [0x064B, 0x0657], [0x0659, 0x065F], [0x0670, 0x0670], [0x06D6, 0x06DC],
    [0x06E1, 0x06E4], [0x06E7, 0x06E8], [0x06ED, 0x06ED], [0x0711, 0x0711],
    [0x0730, 0x073F], [0x07A6, 0x07B0], [0x0816, 0x0817], [0x081B, 0x0823],
    [0x0825, 0x0827], [0x0829, 0x082C], [0x08D4, 0x08DF], [0x08E3, 0x08E9],
    [0x08F0, 0x0903], [0x093A, 0x093B], [0x093E, 0x094C], [0x094E, 0x094F],
    [0x0955, 0x0957], [0x0962, 0x0963], [0x0981, 0x0983], [0x09BE, 0x09C4],
    [0x09C7, 0x09C8], [0x09CB, 0x09CC], [0x09D7, 0x09D7], [0x09E2, 0x09E3],
    [0x0A01, 0x0A03], [0x0A3E, 0x0A42], [0x0A47, 0x0A48], [0x0A4B, 0x0A4C],
    [0x0A51, 0x0A51], [0x0A70, 0x0A71], [0x0A75, 0x0A75], [0x0A81, 0x0A83],
    [0x0ABE, 0x0AC5], [0x0AC7, 0x0AC9], [0x0ACB, 0x0ACC], [0x0AE2, 0x0AE3],
    [0x0AFA, 0x0AFC], [0x0B01, 0x0B03], [0x0B3E, 0x0B44], [0x0B47, 0x0B48],
    [0x0B4B, 0x0B4C], [0x0B56, 0x0B57], [0x0B62, 0x0B63], [0x0B82, 0x0B82],
    [0x0BBE, 0x0BC2], [0x0BC6, 0x0BC8], [0x0BCA, 0x0BCC], [0x0BD7, 0x0BD7],
    [0x0C00, 0x0C04], [0x0C3E, 0x0C44], [0x0C46, 0x0C48], [0x0C4A, 0x0C4C],
    [0x0C55, 0x0C56], [0x0C62, 0x0C63], [0x0C81, 0x0C83], [0x0CBE, 0x0CC4],
    [0x0CC6, 0x0CC8], [0x0CCA, 0x0CCC], [0x0CD5, 0x0CD6], [0x0CE2, 0x0CE3],
    [0x0D00, 0x0D03], [0x0D3E, 0x0D44], [0x0D46, 0x0D48], [0x0D4A, 0x0D4C],
    [0x0D57, 0x0D57], [0x0D62, 0x0D63], [0x0D81, 0x0D83], [0x0DCF, 0x0DD4],
    [0x0DD6, 0x0DD6], [0x0DD8, 0x0DDF], [0x0DF2, 0x0DF3], [0x0E31, 0x0E31],
    [0x0E34, 0x0E3A], [0x0E4D, 0x0E4D], [0x0EB1, 0x0EB1], [0x0EB4, 0x0EB9],
    [0x0EBB, 0x0EBC], [0x0ECD, 0x0ECD], [0x0F71, 0x0F83], [0x0F8D, 0x0F97],
    [0x0F99, 0x0FBC], [0x102B, 0x1036], [0x1038, 0x1038], [0x103B, 0x103E],
    [0x1056, 0x1059], [0x105E, 0x1060], [0x1062, 0x1064], [0x1067, 0x106D],
    [0x1071, 0x1074], [0x1082, 0x108D], [0x108F, 0x108F], [0x109A, 0x109D],
    [0x1712, 0x1713], [0x1732, 0x1733], [0x1752, 0x1753], [0x1772, 0x1773],
    [0x17B6, 0x17C8], [0x1885, 0x1886], [0x18A9, 0x18A9], [0x1920, 0x192B],
    [0x1930, 0x1938], [0x1A17, 0x1A1B], [0x1A55, 0x1A5E], [0x1A61, 0x1A74],
    [0x1ABF, 0x1AC0], [0x1ACC, 0x1ACE], [0x1B00, 0x1B04], [0x1B35, 0x1B43],
    [0x1B80, 0x1B82], [0x1BA1, 0x1BA9], [0x1BAC, 0x1BAD], [0x1BE7, 0x1BF1],
    [0x1C24, 0x1C36], [0x1DD3, 0x1DF4], [0x24B6, 0x24E9], [0x2DE0, 0x2DFF],
    [0xA674, 0xA67B], [0xA69E, 0xA69F], [0xA802, 0xA802], [0xA80B, 0xA80B],
    [0xA823, 0xA827], [0xA880, 0xA881], [0xA8B4, 0xA8C3], [0xA8C5, 0xA8C5],
    [0xA8FF, 0xA8FF], [0xA926, 0xA92A], [0xA947, 0xA952], [0xA980, 0xA983],
    [0xA9B4, 0xA9BF], [0xA9E5, 0xA9E5], [0xAA29, 0xAA36], [0xAA43, 0xAA43],
    [0xAA4C, 0xAA4D], [0xAA7B, 0xAA7D], [0xAAB0, 0xAAB0], [0xAAB2, 0xAAB4],
    [0xAAB7, 0xAAB8], [0xAABE, 0xAABE], [0xAAEB, 0xAAEF], [0xAAF5, 0xAAF5],
    [0xABE3, 0xABEA], [0xFB1E, 0xFB1E], [0x10376, 0x1037A], [0x10A01, 0x10A03],
    [0x10A05, 0x10A06], [0x10A0C, 0x10A0F], [0x10D24, 0x10D27], [0x10EAB, 0x10EAC],
    [0x11000, 0x11002], [0x11038, 0x11045], [0x11073, 0x11074], [0x11080, 0x11082],
    [0x110B0, 0x110B8], [0x110C2, 0x110C2], [0x11100, 0x11102], [0x11127, 0x11132],
    [0x11145, 0x11146], [0x11180, 0x11182], [0x111B3, 0x111BF], [0x111CE, 0x111CF],
    [0x1122C, 0x11234], [0x11237, 0x11237], [0x1123E, 0x1123E], [0x112DF, 0x112E8],
    [0x11300, 0x11303], [0x1133E, 0x11344], [0x11347, 0x11348], [0x1134B, 0x1134C],
    [0x11357, 0x11357], [0x11362, 0x11363], [0x11435, 0x11441], [0x11443, 0x11445],
    [0x114B0, 0x114C1], [0x115AF, 0x115B5], [0x115B8, 0x115BE], [0x115DC, 0x115DD],
    [0x11630, 0x1163E], [0x11640, 0x11640], [0x116AB, 0x116B5], [0x1171D, 0x1172A],
    [0x1182C, 0x11838], [0x11930, 0x11935], [0x11937, 0x11938], [0x1193B, 0x1193C],
    [0x11940, 0x11940], [0x11942, 0x11942], [0x119D1, 0x119D7], [0x119DA, 0x119DF],
    [0x119E4, 0x119E4], [0x11A01, 0x11A0A], [0x11A35, 0x11A39], [0x11A3B, 0x11A3E],
    [0x11A51, 0x11A5B], [0x11A8A, 0x11A97], [0x11C2F, 0x11C36], [0x11C38, 0x11C3E],
    [0x11C92, 0x11CA7], [0x11CA9, 0x11CB6], [0x11D31, 0x11D36], [0x11D3A, 0x11D3A],
    [0x11D3C, 0x11D3D], [0x11D3F, 0x11D41], [0x11D43, 0x11D43], [0x11D47, 0x11D47],
    [0x11D8A, 0x11D8E], [0x11D90, 0x11D91], [0x11D93, 0x11D96], [0x11EF3, 0x11EF6],
    [0x16F4F, 0x16F4F], [0x16F51, 0x16F87], [0x16F8F, 0x16F92], [0x16FF0, 0x16FF1],
    [0x1BC9E, 0x1BC9E], [0x1E000, 0x1E006], [0x1E008, 0x1E018], [0x1E01B, 0x1E021],
    [0x1E023, 0x1E024], [0x1E026, 0x1E02A], [0x1E947, 0x1E947], [0x1F130, 0x1F149],
    [0x1F150, 0x1F169], [0x1F170, 0x1F189],
];

#[cfg(test)]
mod tests {
    use super::*;

    fn golds(xs: &[&str]) -> Vec<String> {
        xs.iter().map(|s| (*s).to_owned()).collect()
    }

    // Expected values below were computed with a faithful port of the
    // official Python scripts (CPython 3.11) and checked by hand.

    #[test]
    fn metric_parse_display_serde() {
        assert_eq!("korquad".parse::<Metric>(), Ok(Metric::Korquad));
        assert_eq!("SQuAD".parse::<Metric>(), Ok(Metric::Squad));
        let err = "bleu".parse::<Metric>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown metric `bleu`; expected one of: korquad, squad"
        );
        assert_eq!(Metric::Korquad.to_string(), "korquad");
        assert_eq!(serde_json::to_string(&Metric::Squad).unwrap(), "\"squad\"");
        let m: Metric = serde_json::from_str("\"korquad\"").unwrap();
        assert_eq!(m, Metric::Korquad);
    }

    #[test]
    fn korquad_normalize() {
        let k = |s| normalize_answer(Metric::Korquad, s);
        assert_eq!(
            k("《대한민국》의 수도(首都)는 '서울'이다."),
            "대한민국 의 수도 首都 는 서울 이다"
        );
        assert_eq!(k("〈한국〉 ‘서울’ \"부산\" <대구>"), "한국 서울 부산 대구");
        // U+001F and U+3000 are whitespace for Python's split().
        assert_eq!(k("서\u{1F}울\u{3000}시"), "서 울 시");
        // Final sigma, and the symbol replacement happening before lower():
        // the space (not the case-ignorable apostrophe) ends the word.
        assert_eq!(k("ΟΔΟΣ"), "οδος");
        assert_eq!(k("ΣΑ"), "σα");
        assert_eq!(k("ΟΔΟΣ'Α"), "οδος α");
        assert_eq!(k("İstanbul"), "i\u{307}stanbul");
        // KorQuAD keeps English articles.
        assert_eq!(k("The A an"), "the a an");
        assert_eq!(k(""), "");
    }

    #[test]
    fn squad_normalize() {
        let s = |x| normalize_answer(Metric::Squad, x);
        assert_eq!(s("The Quick, brown fox!"), "quick brown fox");
        // '_' is punctuation, removed before articles are looked for.
        assert_eq!(s("A an THE the_end theatre"), "theend theatre");
        assert_eq!(s("the2 the_ 2the"), "the2 2the");
        assert_eq!(s("an apple"), "apple");
        // Python's \b: U+0345 and U+24D0 are not isalnum() (Rust calls them
        // alphanumeric), so "the" before them is still a whole word.
        assert_eq!(s("the\u{345}"), "\u{345}");
        assert_eq!(s("theⓐ"), "ⓐ");
        assert_eq!(s("Ⓐ the"), "ⓐ");
        // Precomposed é is a word char, the combining accent is not.
        assert_eq!(s("thé the"), "thé");
        assert_eq!(s("the\u{301}"), "\u{301}");
        // lower() sees the apostrophe (case-ignorable), so σ is not final.
        assert_eq!(s("ΟΔΟΣ'Α"), "οδοσα");
    }

    #[test]
    fn python_helpers() {
        for c in [
            '\u{1C}', '\u{1D}', '\u{1E}', '\u{1F}', ' ', '\u{85}', '\u{A0}', '\u{3000}',
        ] {
            assert!(is_py_space(c), "{c:?}");
        }
        assert!(!is_py_space('\u{200B}'));
        assert!(is_py_word('가') && is_py_word('_') && is_py_word('²') && is_py_word('Ⅻ'));
        assert!(!is_py_word('\u{345}') && !is_py_word('Ⓐ') && !is_py_word('\u{5B0}'));
        assert!(!is_py_word('-') && !is_py_word(' '));
        // The table must be sorted and non-overlapping for binary search.
        assert!(NON_PY_ALNUM.windows(2).all(|w| w[0][1] < w[1][0]));
        assert!(NON_PY_ALNUM.iter().all(|[lo, hi]| lo <= hi));
    }

    #[test]
    fn korquad_em_f1() {
        let m = Metric::Korquad;
        assert!(exact_match(m, "(서울)", "서울"));
        assert!(!exact_match(m, "서 울", "서울"));
        // Whitespace does not count in character F1.
        assert_eq!(f1(m, "서 울", "서울"), 1.0);
        // p = 2/5, r = 1.
        assert_eq!(f1(m, "서울특별시", "서울"), 0.5714285714285715);
        // Multiset intersection: one 가 and one 나 in common.
        assert_eq!(f1(m, "가가나", "가나나"), 0.6666666666666666);
        assert_eq!(f1(m, "서울", "서울시"), 0.8);
        assert_eq!(f1(m, "1,000원", "1000 원"), 1.0);
        assert_eq!(f1(m, "부산", "서울"), 0.0);
        assert_eq!(f1(m, "", "서울"), 0.0);
    }

    #[test]
    fn squad_em_f1() {
        let m = Metric::Squad;
        assert!(exact_match(m, "The Eiffel Tower", "eiffel tower."));
        assert_eq!(
            f1(m, "the cat sat", "a cat sat on the mat"),
            0.6666666666666666
        );
        assert_eq!(f1(m, "cat cat dog", "cat dog dog"), 0.6666666666666666);
        // Both empty after normalization: EM 1 but F1 0, as in the script.
        assert!(exact_match(m, "the", "a"));
        assert_eq!(f1(m, "the", "a"), 0.0);
    }

    #[test]
    fn best_over_golds() {
        let m = Metric::Korquad;
        assert_eq!(
            best_em_f1(m, "서울", &golds(&["서울특별시", "서울"])),
            (1.0, 1.0)
        );
        assert_eq!(
            best_em_f1(m, "서울", &golds(&["부산", "서울시"])),
            (0.0, 0.8)
        );
        assert_eq!(best_em_f1(m, "서울", &[]), (0.0, 0.0));
    }

    #[test]
    fn score_korquad_with_missing() {
        let g1 = golds(&["서울"]);
        let g2 = golds(&["부산"]);
        let g3 = golds(&["서울시", "서울특별시"]);
        let data = [("q1", &g1[..]), ("q2", &g2[..]), ("q3", &g3[..])];
        let preds: HashMap<String, String> = [("q1", "서울"), ("q3", "서울")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let (s, missing) = score(Metric::Korquad, data, &preds);
        assert_eq!(
            s,
            Score {
                exact_match: 33.333333333333336,
                f1: 60.0,
                total: 3
            }
        );
        assert_eq!(missing, vec!["q2".to_owned()]);
    }

    #[test]
    fn score_squad_ignores_extra_predictions() {
        let a = golds(&["The Eiffel Tower"]);
        let b = golds(&["Paris", "paris, France"]);
        let c = golds(&["1889"]);
        let data = [("a", &a[..]), ("b", &b[..]), ("c", &c[..])];
        let preds: HashMap<String, String> = [
            ("a", "eiffel tower"),
            ("b", "France"),
            ("c", "in 1889"),
            ("zz", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let (s, missing) = score(Metric::Squad, data, &preds);
        assert_eq!(s.exact_match, 33.333333333333336);
        assert_eq!(s.f1, 77.77777777777777);
        assert_eq!(s.total, 3);
        assert!(missing.is_empty());
    }

    #[test]
    fn score_empty() {
        let (s, missing) = score(Metric::Squad, std::iter::empty(), &HashMap::new());
        assert_eq!((s.exact_match, s.f1, s.total), (0.0, 0.0, 0));
        assert!(missing.is_empty());
    }

    #[test]
    fn accuracy() {
        assert_eq!(
            start_end_accuracy(&[1, 2, 3, 4], &[5, 6, 7, 8], &[1, 0, 3, 4], &[5, 6, 0, 0]),
            (0.75, 0.5)
        );
        assert_eq!(start_end_accuracy(&[], &[], &[], &[]), (0.0, 0.0));
    }
}
