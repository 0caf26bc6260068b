//! How good a ranking is, where the questions carry their own context and answers: gold-passage
//! recall@k (a passage is gold when its text lies within the question's context or contains
//! it), mean reciprocal rank of the first gold passage, and answer-in-top-k (an answer as a
//! character substring of a retrieved passage: Korean particles attach to words).

use std::collections::BTreeMap;

use serde::Serialize;

/// The cut-offs reported besides `top_k`.
pub const CUTOFFS: [usize; 4] = [1, 5, 10, 20];

/// Retrieval scores, in percent (MRR ×100).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetrievalMetrics {
    /// Questions scored (those with a context).
    pub questions: usize,
    pub top_k: usize,
    /// Gold-passage recall@k, by k.
    pub recall: BTreeMap<usize, f64>,
    pub mrr: f64,
    /// Answer-in-top-k, by k, over the questions with answers.
    pub answer_in_top_k: BTreeMap<usize, f64>,
    pub answered_questions: usize,
}

/// One question for scoring: its own context and answer texts.
pub struct Gold<'a> {
    pub context: &'a str,
    pub answers: Vec<&'a str>,
}

/// Scores `ranked` (each question's passage texts, best first) against `golds`; `None` where
/// no question has a context.
pub fn score_ranking(
    golds: &[Gold],
    ranked: &[Vec<&str>],
    top_k: usize,
) -> Option<RetrievalMetrics> {
    let mut ks: Vec<usize> = CUTOFFS.iter().copied().chain([top_k]).collect();
    ks.sort_unstable();
    ks.dedup();
    let mut hit: BTreeMap<usize, usize> = ks.iter().map(|&k| (k, 0)).collect();
    let mut ans: BTreeMap<usize, usize> = hit.clone();
    let (mut n, mut answered, mut rr) = (0usize, 0usize, 0.0f64);
    for (g, list) in golds.iter().zip(ranked) {
        if g.context.is_empty() {
            continue;
        }
        n += 1;
        let gold = |p: &str| g.context.contains(p) || p.contains(g.context);
        let first_gold = list.iter().position(|p| gold(p));
        if let Some(r) = first_gold {
            rr += 1.0 / (r + 1) as f64;
        }
        let has_answer = |p: &str| g.answers.iter().any(|a| !a.is_empty() && p.contains(a));
        let first_answer = list.iter().position(|p| has_answer(p));
        if !g.answers.is_empty() {
            answered += 1;
        }
        for &k in &ks {
            if first_gold.is_some_and(|r| r < k) {
                *hit.entry(k).or_default() += 1;
            }
            if first_answer.is_some_and(|r| r < k) {
                *ans.entry(k).or_default() += 1;
            }
        }
    }
    if n == 0 {
        return None;
    }
    let pct = |c: usize, of: usize| 100.0 * c as f64 / of.max(1) as f64;
    Some(RetrievalMetrics {
        questions: n,
        top_k,
        recall: hit.into_iter().map(|(k, c)| (k, pct(c, n))).collect(),
        mrr: 100.0 * rr / n as f64,
        answer_in_top_k: ans
            .into_iter()
            .map(|(k, c)| (k, pct(c, answered)))
            .collect(),
        answered_questions: answered,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recall_mrr_and_answers_count_as_defined() {
        let golds = [
            Gold {
                context: "서울은 수도이다. 한강이 흐른다.",
                answers: vec!["서울"],
            },
            Gold {
                context: "도쿄는 일본의 수도이다.",
                answers: vec!["도쿄"],
            },
            Gold {
                context: "",
                answers: vec![],
            },
        ];
        let ranked = vec![
            // A passage inside the context is gold; it is ranked 2nd.
            vec!["파리는 프랑스의 수도", "한강이 흐른다."],
            // The gold passage is not retrieved, but the answer is, ranked 1st.
            vec!["도쿄 타워", "오사카"],
            vec!["무엇이든"],
        ];
        let m = score_ranking(&golds, &ranked, 2).unwrap();
        assert_eq!(m.questions, 2, "a question without a context is not scored");
        assert_eq!(m.recall[&1], 0.0);
        assert_eq!(m.recall[&2], 50.0);
        assert_eq!(m.recall[&20], 50.0);
        assert!((m.mrr - 25.0).abs() < 1e-12);
        assert_eq!(m.answer_in_top_k[&1], 50.0);
        assert_eq!(m.answer_in_top_k[&2], 50.0);
        assert!(score_ranking(&golds[2..], &ranked[2..], 2).is_none());
        // A top_k among the cut-offs is counted once.
        let m = score_ranking(&golds, &ranked, 20).unwrap();
        assert_eq!(m.recall[&20], 50.0);
        assert_eq!(m.recall.len(), 4);
    }
}
