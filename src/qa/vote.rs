//! Hard voting: the folds' answer texts tallied, for `ensemble.method = "hard_vote"`.

use std::collections::BTreeMap;

use serde::Serialize;

use super::decode::NbestEntry;

/// One ballot: adds each question's top n-best answer (its text and start + end logit) to
/// `answers` (a question with an empty list votes `("", 0)`).
pub fn add_ballot(
    answers: &mut BTreeMap<String, Vec<(String, f32)>>,
    nbest: BTreeMap<String, Vec<NbestEntry>>,
) {
    for (id, list) in nbest {
        let top = list
            .first()
            .map(|e| (e.text.clone(), e.start_logit + e.end_logit))
            .unwrap_or_default();
        answers.entry(id).or_default().push(top);
    }
}

/// One answer text's votes across folds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Vote {
    pub text: String,
    pub votes: usize,
    /// Mean of start + end logit over the folds that gave this text.
    pub mean_score: f64,
    /// The folds that gave it.
    pub folds: Vec<usize>,
}

/// Tallies the folds' answers (`answers[k]` = fold k's text and score), most votes first, ties
/// by higher mean score, then by the earliest fold. Empty when there are no answers.
pub fn hard_vote(answers: &[(String, f32)]) -> Vec<Vote> {
    let mut votes: Vec<Vote> = Vec::new();
    for (fold, (text, score)) in answers.iter().enumerate() {
        match votes.iter_mut().find(|v| &v.text == text) {
            Some(v) => {
                v.mean_score += f64::from(*score);
                v.votes += 1;
                v.folds.push(fold);
            }
            None => votes.push(Vote {
                text: text.clone(),
                votes: 1,
                mean_score: f64::from(*score),
                folds: vec![fold],
            }),
        }
    }
    for v in &mut votes {
        v.mean_score /= v.votes as f64;
    }
    // Stable sort: equal (votes, mean) keep first-fold order.
    votes.sort_by(|a, b| {
        b.votes
            .cmp(&a.votes)
            .then(b.mean_score.total_cmp(&a.mean_score))
    });
    votes
}

/// A vote over every question: each question's tallies, the winning answers, and the tallies
/// in the n-best shape (probability = the answer's vote share, `start_logit` = its mean score).
pub struct Tally {
    pub votes: BTreeMap<String, Vec<Vote>>,
    pub predictions: BTreeMap<String, String>,
    pub nbest: BTreeMap<String, Vec<NbestEntry>>,
}

/// Tallies `voters` ballots (built with [`add_ballot`]).
pub fn tally(answers: BTreeMap<String, Vec<(String, f32)>>, voters: usize) -> Tally {
    let votes: BTreeMap<String, Vec<Vote>> = answers
        .into_iter()
        .map(|(id, a)| (id, hard_vote(&a)))
        .collect();
    let predictions = votes
        .iter()
        .map(|(id, v)| {
            (
                id.clone(),
                v.first().map(|v| v.text.clone()).unwrap_or_default(),
            )
        })
        .collect();
    let nbest = votes
        .iter()
        .map(|(id, vs)| {
            let list = vs
                .iter()
                .map(|v| NbestEntry {
                    text: v.text.clone(),
                    probability: v.votes as f32 / voters.max(1) as f32,
                    start_logit: v.mean_score as f32,
                    end_logit: 0.0,
                })
                .collect();
            (id.clone(), list)
        })
        .collect();
    Tally {
        votes,
        predictions,
        nbest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(t: &str, s: f32) -> (String, f32) {
        (t.to_string(), s)
    }

    #[test]
    fn hard_vote_takes_the_majority_then_the_higher_mean_score() {
        // Majority wins even against a higher score.
        let v = hard_vote(&[a("서울", 1.0), a("부산", 9.0), a("서울", 2.0)]);
        assert_eq!(v[0].text, "서울");
        assert_eq!((v[0].votes, v[0].folds.clone()), (2, vec![0, 2]));
        assert!((v[0].mean_score - 1.5).abs() < 1e-12);
        assert_eq!(v[1].text, "부산");
        // A tie goes to the higher mean score.
        let v = hard_vote(&[a("A", 1.0), a("B", 3.0), a("A", 4.0), a("B", 3.0)]);
        assert_eq!(v[0].text, "B");
        // Equal votes and scores: the earliest fold's answer.
        let v = hard_vote(&[a("x", 2.0), a("y", 2.0)]);
        assert_eq!(v[0].text, "x");
        assert!(hard_vote(&[]).is_empty());
    }
}
