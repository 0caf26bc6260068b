//! N-best answer-span decoding from start/end logits.
//!
//! Reproduces the v1 (no null answer) path of Hugging Face's
//! `utils_qa.postprocess_qa_predictions`: for every window of an example take
//! the `n_best_size` highest start and end logits, pair them, drop spans that
//! leave the context, run backwards or are too long, then keep the
//! `n_best_size` best spans by `start_logit + end_logit` across all windows and
//! attach a softmax probability.
//!
//! Deliberate choices where the reference is ill-defined:
//! * NaN logits and scores rank below every number (numpy would put NaN first
//!   in `argsort`, and Python's `sorted` gives an arbitrary order with NaN
//!   keys); nothing panics.
//! * Equal logits rank the higher index first, i.e. numpy's
//!   `np.argsort(x)[::-1]` as if its sort were stable.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use crate::qa::examples::Example;
use crate::qa::windows::Window;

/// Limits of the span search (also the `[decode]` settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeConfig {
    /// How many start and end positions to try per window, and how many
    /// candidates to return per example.
    pub n_best_size: usize,
    /// Longest span in tokens (`end - start + 1`).
    pub max_answer_length: usize,
}

impl Default for DecodeConfig {
    /// Hugging Face's defaults (`n_best_size=20`, `max_answer_length=30`).
    fn default() -> Self {
        Self {
            n_best_size: 20,
            max_answer_length: 30,
        }
    }
}

/// The model output for one window of one example.
///
/// `offsets` are CHARACTER (not byte) offsets `[start, end)` into the
/// example's context, `None` for tokens outside the context (question,
/// special tokens, padding).
#[derive(Debug, Clone, Copy)]
pub struct WindowLogits<'a> {
    /// Start logits, one per token.
    pub start_logits: &'a [f32],
    /// End logits, one per token.
    pub end_logits: &'a [f32],
    /// Character span of each token in the context, if it belongs to it.
    pub offsets: &'a [Option<(usize, usize)>],
}

/// One decoded answer candidate.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Candidate {
    /// The answer text, `context` characters `[char_start, char_end)`.
    pub text: String,
    /// Character offset where the span starts, as given by the start token.
    pub char_start: usize,
    /// Character offset where the span ends (exclusive), from the end token.
    pub char_end: usize,
    /// Start logit of the chosen start token.
    pub start_logit: f32,
    /// End logit of the chosen end token.
    pub end_logit: f32,
    /// `start_logit + end_logit`, in f32.
    pub score: f32,
    /// Softmax of `score` over the returned candidates.
    pub probability: f32,
}

/// Text of the fallback candidate when no real span survives (as HF).
const EMPTY_FALLBACK: &str = "empty";

/// Total order on logits with NaN below everything; `-0.0 == 0.0` as in numpy.
fn cmp_nan_smallest(a: f32, b: f32) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// Indices of the `n` largest values, largest first; ties put the higher index
/// first, like reversing a stable ascending argsort.
fn top_n_desc(xs: &[f32], n: usize) -> Vec<usize> {
    // Strict total order (the index breaks every tie), so the unstable
    // selection and sort below are deterministic.
    let before = |a: &usize, b: &usize| cmp_nan_smallest(xs[*b], xs[*a]).then(b.cmp(a));
    let mut idx: Vec<usize> = (0..xs.len()).collect();
    if n == 0 {
        return Vec::new();
    }
    if n < idx.len() {
        // Partial selection keeps this O(len) for the usual 384-token windows.
        idx.select_nth_unstable_by(n - 1, before);
        idx.truncate(n);
    }
    idx.sort_unstable_by(before);
    idx
}

/// Index of the largest value, the first one on ties; NaN counts as smallest.
/// An empty slice gives 0 (numpy would raise; numpy would also return the
/// first NaN rather than ignore it).
pub fn argmax(xs: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in xs.iter().enumerate().skip(1) {
        if cmp_nan_smallest(x, xs[best]) == Ordering::Greater {
            best = i;
        }
    }
    best
}

/// A span before its text and probability are known.
struct Prelim {
    char_start: usize,
    char_end: usize,
    start_logit: f32,
    end_logit: f32,
    score: f32,
}

/// Python `context[start:end]` on character indices, via a precomputed table
/// of char boundaries (`bounds[i]` = byte offset of char `i`, plus the total
/// length at the end). Out-of-range offsets are clamped and a reversed range
/// gives "" — exactly Python's slicing rules, so nothing panics.
fn slice_chars<'c>(context: &'c str, bounds: &[usize], start: usize, end: usize) -> &'c str {
    let n_chars = bounds.len().saturating_sub(1);
    let start = start.min(n_chars);
    let end = end.min(n_chars);
    if start >= end {
        return "";
    }
    context.get(bounds[start]..bounds[end]).unwrap_or("")
}

/// numpy's float32 `sum` (pairwise summation with 8 accumulators), so the
/// softmax denominator rounds exactly like `exp_scores.sum()`.
fn numpy_pairwise_sum_f32(xs: &[f32]) -> f32 {
    const BLOCK: usize = 128;
    let n = xs.len();
    if n < 8 {
        let mut acc = 0.0f32;
        for &x in xs {
            acc += x;
        }
        acc
    } else if n <= BLOCK {
        let mut r = [0.0f32; 8];
        r.copy_from_slice(&xs[..8]);
        let full = n - n % 8;
        let mut i = 8;
        while i < full {
            for (j, acc) in r.iter_mut().enumerate() {
                *acc += xs[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &x in &xs[full..] {
            res += x;
        }
        res
    } else {
        let mut half = n / 2;
        half -= half % 8;
        numpy_pairwise_sum_f32(&xs[..half]) + numpy_pairwise_sum_f32(&xs[half..])
    }
}

/// `exp(s - max) / sum` in f32, as HF's numpy code does for float32 logits.
fn softmax_f32(scores: &[f32]) -> Vec<f32> {
    // f32::max ignores NaN, so NaN scores only poison the result if present
    // (then every probability is NaN, as with numpy).
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = scores.iter().map(|&s| (s - max).exp()).collect();
    let sum = numpy_pairwise_sum_f32(&exps);
    exps.iter().map(|&e| e / sum).collect()
}

/// Softmax in f64, then rounded to f32. HF builds `np.array` from the Python
/// float 0.0 of the fallback plus float32 scores, which numpy promotes to
/// float64; mirroring that keeps the fallback case's probabilities aligned.
fn softmax_f64(scores: &[f32]) -> Vec<f32> {
    let max = scores
        .iter()
        .map(|&s| f64::from(s))
        .fold(f64::NEG_INFINITY, f64::max);
    let exps: Vec<f64> = scores.iter().map(|&s| (f64::from(s) - max).exp()).collect();
    // Fewer than 8 values: numpy's sum is a plain left-to-right loop.
    let sum: f64 = exps.iter().fold(0.0, |acc, &e| acc + e);
    exps.iter().map(|&e| (e / sum) as f32).collect()
}

/// Decode all windows of one example (in window order) into its n-best
/// candidates, best first.
///
/// Returns at most `n_best_size` real candidates, plus the `"empty"` fallback
/// (logits and score 0) in front when there is no candidate or only one with
/// empty text — so the result is never empty (with `n_best_size == 0` it is
/// just the fallback).
pub fn decode_example(
    context: &str,
    windows: &[WindowLogits<'_>],
    cfg: &DecodeConfig,
) -> Vec<Candidate> {
    let n_best = cfg.n_best_size;
    let mut prelim: Vec<Prelim> = Vec::new();
    for w in windows {
        let starts = top_n_desc(w.start_logits, n_best);
        let ends = top_n_desc(w.end_logits, n_best);
        for &s in &starts {
            for &e in &ends {
                // `get` covers "index beyond the offsets", the inner Option
                // covers "token outside the context".
                let (Some(Some((char_start, _))), Some(Some((_, char_end)))) =
                    (w.offsets.get(s), w.offsets.get(e))
                else {
                    continue;
                };
                if e < s || e - s + 1 > cfg.max_answer_length {
                    continue;
                }
                let start_logit = w.start_logits[s];
                let end_logit = w.end_logits[e];
                prelim.push(Prelim {
                    char_start: *char_start,
                    char_end: *char_end,
                    start_logit,
                    end_logit,
                    score: start_logit + end_logit,
                });
            }
        }
    }

    // Stable sort, descending: equal scores keep discovery order, like
    // Python's `sorted(..., reverse=True)`.
    prelim.sort_by(|a, b| cmp_nan_smallest(b.score, a.score));
    prelim.truncate(n_best);

    // Built once so that slicing each candidate is O(1) even for long
    // Korean contexts (char offsets cannot index UTF-8 bytes directly).
    let bounds: Vec<usize> = context
        .char_indices()
        .map(|(b, _)| b)
        .chain(std::iter::once(context.len()))
        .collect();

    let mut out: Vec<Candidate> = prelim
        .into_iter()
        .map(|p| Candidate {
            text: slice_chars(context, &bounds, p.char_start, p.char_end).to_owned(),
            char_start: p.char_start,
            char_end: p.char_end,
            start_logit: p.start_logit,
            end_logit: p.end_logit,
            score: p.score,
            probability: 0.0,
        })
        .collect();

    let fallback = out.is_empty() || (out.len() == 1 && out[0].text.is_empty());
    if fallback {
        out.insert(
            0,
            Candidate {
                text: EMPTY_FALLBACK.to_owned(),
                char_start: 0,
                char_end: 0,
                start_logit: 0.0,
                end_logit: 0.0,
                score: 0.0,
                probability: 0.0,
            },
        );
    }

    let scores: Vec<f32> = out.iter().map(|c| c.score).collect();
    let probs = if fallback {
        softmax_f64(&scores)
    } else {
        softmax_f32(&scores)
    };
    for (c, p) in out.iter_mut().zip(probs) {
        c.probability = p;
    }
    out
}

/// Start/end logits of every window, row-major `[windows, seq]`.
pub struct Logits {
    pub seq: usize,
    pub start: Vec<f32>,
    pub end: Vec<f32>,
}

/// One n-best entry as HF writes it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NbestEntry {
    pub text: String,
    pub probability: f32,
    pub start_logit: f32,
    pub end_logit: f32,
}

/// Decodes every example from its windows' logits: best answers and n-best lists, by id.
pub fn decode_all(
    examples: &[Example],
    windows: &[Window],
    logits: &Logits,
    cfg: &DecodeConfig,
) -> (BTreeMap<String, String>, BTreeMap<String, Vec<NbestEntry>>) {
    let row_example: Vec<usize> = windows.iter().map(|w| w.example_index).collect();
    let offsets: Vec<Vec<Option<(usize, usize)>>> =
        windows.iter().map(Window::context_offsets).collect();
    decode_rows(examples, &row_example, &offsets, logits, cfg)
}

/// Decodes the examples that have rows: row `r` of `logits` is a window of example
/// `row_example[r]` with context offsets `row_offsets[r]`; rows of one example in window order.
pub fn decode_rows(
    examples: &[Example],
    row_example: &[usize],
    row_offsets: &[Vec<Option<(usize, usize)>>],
    logits: &Logits,
    cfg: &DecodeConfig,
) -> (BTreeMap<String, String>, BTreeMap<String, Vec<NbestEntry>>) {
    let mut by_example: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (r, &e) in row_example.iter().enumerate() {
        by_example.entry(e).or_default().push(r);
    }
    let l = logits.seq;
    let mut preds = BTreeMap::new();
    let mut nbest = BTreeMap::new();
    for (&ei, rows) in &by_example {
        let ex = &examples[ei];
        let ws: Vec<WindowLogits> = rows
            .iter()
            .map(|&i| WindowLogits {
                start_logits: &logits.start[i * l..(i + 1) * l],
                end_logits: &logits.end[i * l..(i + 1) * l],
                offsets: &row_offsets[i],
            })
            .collect();
        let cands = decode_example(&ex.context, &ws, cfg);
        preds.insert(
            ex.id.clone(),
            cands.first().map(|c| c.text.clone()).unwrap_or_default(),
        );
        nbest.insert(
            ex.id.clone(),
            cands
                .into_iter()
                .map(|c| NbestEntry {
                    text: c.text,
                    probability: c.probability,
                    start_logit: c.start_logit,
                    end_logit: c.end_logit,
                })
                .collect(),
        );
    }
    (preds, nbest)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Expected values were computed with a port of HF's
    // `postprocess_qa_predictions` (numpy, stable argsort) and checked by hand.

    fn cfg(n_best_size: usize, max_answer_length: usize) -> DecodeConfig {
        DecodeConfig {
            n_best_size,
            max_answer_length,
        }
    }

    fn texts(c: &[Candidate]) -> Vec<&str> {
        c.iter().map(|c| c.text.as_str()).collect()
    }

    fn assert_close(a: f32, b: f32) {
        // numpy's float32 exp is a SIMD approximation that can differ from
        // libm by a few ulp, so probabilities are compared with a tolerance.
        assert!((a - b).abs() <= 1e-6, "{a} vs {b}");
    }

    #[test]
    fn best_span_in_second_window_korean() {
        let ctx = "대한민국의 수도는 서울이다";
        let o1 = [
            None,
            None,
            Some((0, 4)),
            Some((4, 5)),
            Some((6, 8)),
            Some((8, 9)),
        ];
        let o2 = [
            None,
            None,
            Some((6, 8)),
            Some((8, 9)),
            Some((10, 12)),
            Some((12, 14)),
        ];
        let w = [
            WindowLogits {
                start_logits: &[0.0, 0.0, 2.0, 0.5, 1.0, -1.0],
                end_logits: &[0.0, 0.0, 1.5, 0.5, 1.0, 0.2],
                offsets: &o1,
            },
            WindowLogits {
                start_logits: &[0.0, 0.0, 0.5, -1.0, 3.0, 0.0],
                end_logits: &[0.0, 0.0, 0.1, -0.5, 2.5, 1.0],
                offsets: &o2,
            },
        ];
        let out = decode_example(ctx, &w, &cfg(4, 3));
        // "수도는 서울" (window 2) also scores 3.0 but comes after window 1's
        // equal-scoring span, so the stable sort drops it at the n-best cut.
        assert_eq!(
            texts(&out),
            ["서울", "서울이다", "대한민국", "대한민국의 수도"]
        );
        let spans: Vec<_> = out.iter().map(|c| (c.char_start, c.char_end)).collect();
        assert_eq!(spans, [(10, 12), (10, 14), (0, 4), (0, 8)]);
        let scores: Vec<_> = out.iter().map(|c| c.score).collect();
        assert_eq!(scores, [5.5, 4.0, 3.5, 3.0]);
        assert_eq!((out[0].start_logit, out[0].end_logit), (3.0, 2.5));
        let expected = [0.694_179_1, 0.154_892_28, 0.093_946_93, 0.056_981_694];
        for (c, p) in out.iter().zip(expected) {
            assert_close(c.probability, p);
        }
    }

    #[test]
    fn invalid_spans_are_skipped() {
        let ctx = "abcdef";
        // Token 0 is outside the context; logits run past the offsets.
        let offsets = [None, Some((0, 1)), Some((1, 2)), Some((2, 3))];
        let w = [WindowLogits {
            start_logits: &[9.0, 1.0, 5.0, 0.0, 8.0],
            end_logits: &[9.0, 4.0, 0.0, 1.0, 8.0],
            offsets: &offsets,
        }];
        let out = decode_example(ctx, &w, &cfg(5, 30));
        // Start order [0, 4, 2, 1, 3], end order [0, 4, 1, 3, 2]; 0 has no
        // offsets and 4 is past them. Valid pairs in discovery order:
        // (2,3)=6 "bc", (2,2)=5 "b", (1,1)=5 "a", (1,3)=2, (1,2)=1, (3,3)=1;
        // the last one falls off the n-best cut.
        let got: Vec<_> = out.iter().map(|c| (c.text.as_str(), c.score)).collect();
        assert_eq!(
            got,
            [
                ("bc", 6.0),
                ("b", 5.0),
                ("a", 5.0),
                ("abc", 2.0),
                ("ab", 1.0)
            ]
        );
    }

    #[test]
    fn max_answer_length_limits_tokens() {
        let ctx = "abcdef";
        let offsets: Vec<_> = (0..6).map(|i| Some((i, i + 1))).collect();
        let w = [WindowLogits {
            start_logits: &[5.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            end_logits: &[0.0, 0.0, 0.0, 0.0, 0.0, 5.0],
            offsets: &offsets,
        }];
        let out = decode_example(ctx, &w, &cfg(1, 6));
        assert_eq!(texts(&out), ["abcdef"]);
        // 6 tokens > 5: the only top-1 pair is rejected, so the fallback wins.
        let out = decode_example(ctx, &w, &cfg(1, 5));
        assert_eq!(texts(&out), ["empty"]);
        assert_eq!(out[0].probability, 1.0);
    }

    #[test]
    fn ties_prefer_higher_index_then_discovery_order() {
        let offsets = [Some((0, 1)), Some((1, 2)), Some((2, 3))];
        let w = [WindowLogits {
            start_logits: &[1.0, 1.0, 1.0],
            end_logits: &[0.0, 0.0, 0.0],
            offsets: &offsets,
        }];
        // starts [2, 1], ends [2, 1]: pairs (2,2), (1,2), (1,1) all score 1.
        let out = decode_example("abc", &w, &cfg(2, 30));
        assert_eq!(texts(&out), ["c", "bc"]);
        assert_eq!(out[0].probability, 0.5);
        assert_eq!(out[1].probability, 0.5);
    }

    #[test]
    fn fallback_when_no_candidate() {
        let offsets = [None, None];
        let w = [WindowLogits {
            start_logits: &[1.0, 2.0],
            end_logits: &[1.0, 2.0],
            offsets: &offsets,
        }];
        let out = decode_example("abc", &w, &cfg(20, 30));
        assert_eq!(
            out,
            [Candidate {
                text: "empty".to_owned(),
                char_start: 0,
                char_end: 0,
                start_logit: 0.0,
                end_logit: 0.0,
                score: 0.0,
                probability: 1.0,
            }]
        );
        assert_eq!(decode_example("abc", &[], &cfg(20, 30)).len(), 1);
        assert_eq!(decode_example("abc", &w, &cfg(0, 30))[0].text, "empty");
    }

    #[test]
    fn fallback_before_single_empty_text() {
        let offsets = [Some((1, 1)), None];
        let w = [WindowLogits {
            start_logits: &[1.0, 0.0],
            end_logits: &[0.5, 0.0],
            offsets: &offsets,
        }];
        let out = decode_example("abc", &w, &cfg(5, 30));
        assert_eq!(texts(&out), ["empty", ""]);
        assert_eq!(out[1].score, 1.5);
        // numpy promotes this case to float64 (Python 0.0 + float32 scores).
        assert_close(out[0].probability, 0.182_425_53);
        assert_close(out[1].probability, 0.817_574_5);
    }

    #[test]
    fn offsets_past_context_are_clamped() {
        let ctx = "한국어";
        let offsets = [Some((1, 2)), Some((2, 10)), Some((7, 9))];
        let w = [WindowLogits {
            start_logits: &[3.0, 1.0, 2.0],
            end_logits: &[0.0, 3.0, 2.0],
            offsets: &offsets,
        }];
        let out = decode_example(ctx, &w, &cfg(3, 30));
        // (0,1)=6 -> [1,10) clamped to "국어"; (0,2)=5 -> [1,9) "국어";
        // (2,2)=4 -> [7,9) entirely past the end, "". Raw offsets are kept.
        let got: Vec<_> = out
            .iter()
            .map(|c| (c.text.as_str(), c.char_start, c.char_end))
            .collect();
        assert_eq!(got, [("국어", 1, 10), ("국어", 1, 9), ("", 7, 9)]);
    }

    #[test]
    fn nan_logits_do_not_panic() {
        let offsets = [Some((0, 1)), Some((1, 2)), Some((2, 3))];
        let w = [WindowLogits {
            start_logits: &[f32::NAN, 1.0, 0.0],
            end_logits: &[0.0, f32::NAN, 2.0],
            offsets: &offsets,
        }];
        let out = decode_example("abc", &w, &cfg(2, 30));
        // NaN ranks last, so only non-NaN logits reach the top 2.
        assert_eq!(texts(&out), ["bc", "c"]);
        let w = [WindowLogits {
            start_logits: &[f32::NAN; 3],
            end_logits: &[f32::NAN; 3],
            offsets: &offsets,
        }];
        let out = decode_example("abc", &w, &cfg(2, 30));
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|c| c.probability.is_nan()));
    }

    #[test]
    fn long_multibyte_context_slices_by_char() {
        let ctx: String = "가나다라마바사".repeat(20_000);
        let n = ctx.chars().count();
        let offsets = [None, Some((n - 3, n - 2)), Some((n - 2, n))];
        let w = [WindowLogits {
            start_logits: &[0.0, 1.0, 0.0],
            end_logits: &[0.0, 0.0, 1.0],
            offsets: &offsets,
        }];
        let out = decode_example(&ctx, &w, &cfg(1, 30));
        assert_eq!(out[0].text, "마바사");
    }

    #[test]
    fn top_n_order() {
        assert_eq!(top_n_desc(&[0.5, 2.0, 0.5, 1.0, 0.5], 4), [1, 3, 4, 2]);
        assert_eq!(top_n_desc(&[1.0, 2.0], 5), [1, 0]);
        assert_eq!(top_n_desc(&[0.0, -0.0], 2), [1, 0]);
        assert_eq!(top_n_desc(&[f32::NAN, 0.0, f32::NAN], 3), [1, 2, 0]);
        assert!(top_n_desc(&[1.0], 0).is_empty());
    }

    #[test]
    fn argmax_first_max_nan_smallest() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.0, -1.0]), 1);
        assert_eq!(argmax(&[-1.0, f32::NAN, 5.0]), 2);
        assert_eq!(argmax(&[]), 0);
    }

    #[test]
    fn numpy_sum_order() {
        // 2^24 absorbs a lone +1 in sequential f32 addition; numpy's
        // 8-accumulator pairwise sum gives 16777224 for this input.
        let mut xs = vec![16_777_216.0f32];
        xs.extend([1.0f32; 9]);
        assert_eq!(numpy_pairwise_sum_f32(&xs), 16_777_224.0);
        assert_eq!(numpy_pairwise_sum_f32(&xs[..3]), 16_777_216.0);
        assert_eq!(numpy_pairwise_sum_f32(&[]), 0.0);
    }

    #[test]
    fn softmax_two_values() {
        let p = softmax_f32(&[1.0, 0.0]);
        assert_close(p[0], 0.731_058_6);
        assert_close(p[1], 0.268_941_4);
    }
}
