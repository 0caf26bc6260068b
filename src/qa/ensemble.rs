//! The ensemble core, tensor-free, shared by the fold ensemble (`stages::ensemble`) and the
//! cross-run ensemble (`combine`), which only read files and call it: weights from scores, the
//! weighted mean of logits window by window, the hard vote, and out-of-fold pooling.

use std::collections::BTreeMap;

use anyhow::{bail, Result};

use super::decode::{Logits, NbestEntry};
use super::vote::{add_ballot, tally, Tally};

/// Members' weights from their scores (larger is better), each floored at 1e-9 so a zero
/// score keeps a tiny weight, normalised to sum to 1.
pub fn weights_from_scores(scores: &[f64]) -> Vec<f64> {
    let raw: Vec<f64> = scores.iter().map(|s| s.max(1e-9)).collect();
    let sum: f64 = raw.iter().sum();
    raw.iter().map(|v| v / sum).collect()
}

/// Equal weights for `n` members.
pub fn equal_weights(n: usize) -> Vec<f64> {
    vec![1.0 / n as f64; n]
}

/// The weighted mean of members' logits over the same windows, accumulated one member at a
/// time (so members can be read one by one): `Σ_i w_i · logits_i` in f32, the first member
/// scaled, each later one added.
#[derive(Default)]
pub struct WeightedMean {
    acc: Option<Logits>,
    members: usize,
}

impl WeightedMean {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds member `lg` with weight `w`; its windows must be the first member's (same count
    /// and length), else an error naming the member (0-based).
    pub fn add(&mut self, lg: &Logits, w: f64) -> Result<()> {
        let w = w as f32;
        let member = self.members;
        self.members += 1;
        match &mut self.acc {
            None => {
                self.acc = Some(Logits {
                    seq: lg.seq,
                    start: lg.start.iter().map(|x| x * w).collect(),
                    end: lg.end.iter().map(|x| x * w).collect(),
                });
            }
            Some(a) => {
                if lg.seq != a.seq || lg.start.len() != a.start.len() {
                    bail!(
                        "member {member} has {} windows of {} positions, member 0 {} of {}",
                        lg.start.len() / lg.seq.max(1),
                        lg.seq,
                        a.start.len() / a.seq.max(1),
                        a.seq
                    );
                }
                for (x, y) in a.start.iter_mut().zip(&lg.start) {
                    *x += y * w;
                }
                for (x, y) in a.end.iter_mut().zip(&lg.end) {
                    *x += y * w;
                }
            }
        }
        Ok(())
    }

    /// The mean; `None` without members.
    pub fn finish(self) -> Option<Logits> {
        self.acc
    }
}

/// The hard vote: each member's n-best lists (decoded alone) give one ballot per question,
/// the answer most members give wins (see [`super::vote`]).
pub fn hard_vote(members: impl IntoIterator<Item = BTreeMap<String, Vec<NbestEntry>>>) -> Tally {
    let mut answers = BTreeMap::new();
    let mut voters = 0;
    for nbest in members {
        add_ballot(&mut answers, nbest);
        voters += 1;
    }
    tally(answers, voters)
}

/// Out-of-fold pooling: each fold's held-out windows (logits and their feature rows),
/// concatenated in fold order: every training window is held out by exactly one fold.
pub fn pool_out_of_fold(
    seq: usize,
    folds: impl IntoIterator<Item = (Logits, Vec<i64>)>,
) -> (Logits, Vec<i64>) {
    let mut pooled = Logits {
        seq,
        start: vec![],
        end: vec![],
    };
    let mut rows = Vec::new();
    for (lg, r) in folds {
        pooled.start.extend(lg.start);
        pooled.end.extend(lg.end);
        rows.extend(r);
    }
    (pooled, rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lg(start: &[f32], end: &[f32]) -> Logits {
        Logits {
            seq: 2,
            start: start.to_vec(),
            end: end.to_vec(),
        }
    }

    #[test]
    fn weights_are_normalised_and_floored() {
        assert_eq!(weights_from_scores(&[1.0, 3.0]), vec![0.25, 0.75]);
        let w = weights_from_scores(&[0.0, 2.0]);
        assert!(w[0] > 0.0 && w[0] < 1e-9 && (w[0] + w[1] - 1.0).abs() < 1e-12);
        assert_eq!(equal_weights(4), vec![0.25; 4]);
    }

    #[test]
    fn the_weighted_mean_scales_the_first_and_adds_the_rest() {
        let mut m = WeightedMean::new();
        m.add(&lg(&[1.0, -2.0, 0.5, 4.0], &[0.0, 1.0, 2.0, 3.0]), 0.25)
            .unwrap();
        m.add(&lg(&[3.0, 2.0, 1.5, 0.0], &[4.0, 3.0, 2.0, 1.0]), 0.75)
            .unwrap();
        let out = m.finish().unwrap();
        assert_eq!(out.start, vec![2.5, 1.0, 1.25, 1.0]);
        assert_eq!(out.end, vec![3.0, 2.5, 2.0, 1.5]);
        // A negative zero stays as the first member's scaling gives it (bits written to disk).
        let mut m = WeightedMean::new();
        m.add(&lg(&[-0.0, 0.0], &[0.0, 0.0]), 1.0).unwrap();
        assert!(m.finish().unwrap().start[0].is_sign_negative());
    }

    #[test]
    fn members_with_other_windows_are_refused() {
        let mut m = WeightedMean::new();
        m.add(&lg(&[1.0, 2.0], &[1.0, 2.0]), 0.5).unwrap();
        let err = m
            .add(&lg(&[1.0, 2.0, 3.0, 4.0], &[0.0; 4]), 0.5)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "member 1 has 2 windows of 2 positions, member 0 1 of 2"
        );
        assert!(WeightedMean::new().finish().is_none());
    }

    #[test]
    fn the_vote_takes_each_members_top_answer() {
        let entry = |text: &str, s: f32| NbestEntry {
            text: text.into(),
            probability: 1.0,
            start_logit: s,
            end_logit: 0.0,
        };
        let member = |text: &str, s: f32| BTreeMap::from([("q".to_string(), vec![entry(text, s)])]);
        let t = hard_vote([member("a", 1.0), member("b", 5.0), member("a", 2.0)]);
        assert_eq!(t.predictions["q"], "a");
        assert_eq!(t.votes["q"][0].votes, 2);
    }

    #[test]
    fn pooling_concatenates_in_fold_order() {
        let (p, rows) = pool_out_of_fold(
            2,
            [
                (lg(&[1.0, 2.0], &[3.0, 4.0]), vec![5]),
                (lg(&[5.0, 6.0, 7.0, 8.0], &[0.0; 4]), vec![0, 9]),
            ],
        );
        assert_eq!(rows, vec![5, 0, 9]);
        assert_eq!(p.start, vec![1.0, 2.0, 5.0, 6.0, 7.0, 8.0]);
        assert_eq!(p.end, vec![3.0, 4.0, 0.0, 0.0, 0.0, 0.0]);
    }
}
