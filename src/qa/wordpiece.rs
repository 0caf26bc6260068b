//! A deterministic WordPiece vocabulary trainer.
//!
//! `tokenizers`' `WordPieceTrainer` runs BPE merges with a `##` continuation prefix, but it
//! numbers symbols in `AHashMap` order (seeded at random per process), so merge ties, and so the
//! vocabulary, change from run to run. A pipeline must give the same windows for the same
//! config, so we run the same algorithm with a total order on ties: the most frequent pair
//! first, then the lexicographically smallest `(left, right)` pair. `tools/make_fixtures.py`
//! implements the same rule (naively); the fixture vocabulary proves the two agree.
//!
//! Words come from the tokenizer's own normalizer and pre-tokenizer, as the library's trainer
//! takes them.

use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};

/// Continuation prefix of non-initial word pieces.
const PREFIX: &str = "##";

/// One candidate merge in the priority queue; ordered by count, then smallest pair first.
#[derive(PartialEq, Eq)]
struct Entry {
    count: u64,
    left: String,
    right: String,
    pair: (u32, u32),
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.count
            .cmp(&other.count)
            .then_with(|| (&other.left, &other.right).cmp(&(&self.left, &self.right)))
    }
}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Symbol interning: id <-> string.
#[derive(Default)]
struct Symbols {
    names: Vec<String>,
    ids: HashMap<String, u32>,
}

impl Symbols {
    fn id(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(s.to_string());
        self.ids.insert(s.to_string(), id);
        id
    }
}

/// The initial tokens: every character on its own (as the library's alphabet), sorted, then
/// every non-initial one as a `##` piece, sorted.
fn alphabet(word_counts: &BTreeMap<String, u64>) -> Vec<String> {
    let mut firsts = std::collections::BTreeSet::new();
    let mut rests = std::collections::BTreeSet::new();
    for w in word_counts.keys() {
        for (i, c) in w.chars().enumerate() {
            firsts.insert(c.to_string());
            if i > 0 {
                rests.insert(format!("{PREFIX}{c}"));
            }
        }
    }
    firsts.into_iter().chain(rests).collect()
}

/// `word` with every occurrence of `pair` (left to right, not overlapping) replaced by `id`.
fn merge_in(word: &[u32], pair: (u32, u32), id: u32) -> Vec<u32> {
    let mut new = Vec::with_capacity(word.len());
    let mut i = 0;
    while i < word.len() {
        if i + 1 < word.len() && (word[i], word[i + 1]) == pair {
            new.push(id);
            i += 2;
        } else {
            new.push(word[i]);
            i += 1;
        }
    }
    new
}

/// Each adjacent pair's count (weighted by the word's count) and the words it occurs in.
type PairCounts = HashMap<(u32, u32), u64>;
type PairWords = HashMap<(u32, u32), HashSet<usize>>;

/// Merges `pair` into `id` in every word that holds it, updating the pair counts and where
/// pairs occur; returns the pairs whose counts changed.
fn merge_everywhere(
    words: &mut [Vec<u32>],
    counts: &[u64],
    pair_counts: &mut PairCounts,
    where_: &mut PairWords,
    pair: (u32, u32),
    new_id: u32,
) -> HashSet<(u32, u32)> {
    let mut touched: HashSet<(u32, u32)> = HashSet::new();
    let mut affected: Vec<usize> = where_
        .get(&pair)
        .map(|s| s.iter().copied().collect())
        .unwrap_or_default();
    affected.sort_unstable();
    for wi in affected {
        let old = &words[wi];
        if !old.windows(2).any(|p| (p[0], p[1]) == pair) {
            continue;
        }
        let c = counts[wi];
        for p in old.windows(2) {
            let k = (p[0], p[1]);
            if let Some(v) = pair_counts.get_mut(&k) {
                *v -= c;
            }
            touched.insert(k);
        }
        let new = merge_in(old, pair, new_id);
        for p in new.windows(2) {
            let k = (p[0], p[1]);
            *pair_counts.entry(k).or_default() += c;
            where_.entry(k).or_default().insert(wi);
            touched.insert(k);
        }
        words[wi] = new;
    }
    touched
}

/// Each adjacent pair's count over all words (weighted by the word's count), and the words it
/// occurs in.
fn pair_index(words: &[Vec<u32>], counts: &[u64]) -> (PairCounts, PairWords) {
    let mut pair_counts = PairCounts::new();
    let mut where_ = PairWords::new();
    for (wi, w) in words.iter().enumerate() {
        for p in w.windows(2) {
            *pair_counts.entry((p[0], p[1])).or_default() += counts[wi];
            where_.entry((p[0], p[1])).or_default().insert(wi);
        }
    }
    (pair_counts, where_)
}

/// Trains a vocabulary of at most `vocab_size` tokens from pre-tokenised word counts.
/// Token ids: `specials` first, then the initial characters, then the `##` characters (each
/// group sorted), then merges in the order they were made. Merging stops when the best pair
/// occurs fewer than `min_frequency` times or no pair is left.
pub fn train_vocab(
    word_counts: &BTreeMap<String, u64>,
    vocab_size: usize,
    min_frequency: u64,
    specials: &[&str],
) -> Vec<String> {
    let mut vocab: Vec<String> = Vec::new();
    let mut in_vocab: HashSet<String> = HashSet::new();
    let mut push = |t: String, vocab: &mut Vec<String>| {
        if in_vocab.insert(t.clone()) {
            vocab.push(t);
        }
    };
    for s in specials {
        push(s.to_string(), &mut vocab);
    }
    for t in alphabet(word_counts) {
        push(t, &mut vocab);
    }

    let mut sym = Symbols::default();
    let mut words: Vec<Vec<u32>> = Vec::with_capacity(word_counts.len());
    let counts: Vec<u64> = word_counts.values().copied().collect();
    for w in word_counts.keys() {
        let pieces = w
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i == 0 {
                    sym.id(&c.to_string())
                } else {
                    sym.id(&format!("{PREFIX}{c}"))
                }
            })
            .collect();
        words.push(pieces);
    }

    let (mut pair_counts, mut where_) = pair_index(&words, &counts);
    let entry = |pair: (u32, u32), count: u64, sym: &Symbols| Entry {
        count,
        left: sym.names[pair.0 as usize].clone(),
        right: sym.names[pair.1 as usize].clone(),
        pair,
    };
    let mut heap: BinaryHeap<Entry> = pair_counts
        .iter()
        .map(|(&p, &c)| entry(p, c, &sym))
        .collect();

    while vocab.len() < vocab_size {
        let Some(top) = heap.pop() else { break };
        let current = pair_counts.get(&top.pair).copied().unwrap_or(0);
        if current != top.count {
            continue; // stale: a fresh entry was pushed when the count changed
        }
        if current == 0 || current < min_frequency {
            break;
        }
        let right = top.right.strip_prefix(PREFIX).unwrap_or(&top.right);
        let merged = format!("{}{}", top.left, right);
        let new_id = sym.id(&merged);
        push(merged, &mut vocab);

        let touched = merge_everywhere(
            &mut words,
            &counts,
            &mut pair_counts,
            &mut where_,
            top.pair,
            new_id,
        );
        for k in touched {
            let c = pair_counts.get(&k).copied().unwrap_or(0);
            if c > 0 {
                heap.push(entry(k, c, &sym));
            }
        }
    }
    vocab
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(words: &[(&str, u64)]) -> BTreeMap<String, u64> {
        words.iter().map(|(w, c)| (w.to_string(), *c)).collect()
    }

    #[test]
    fn merges_most_frequent_then_smallest_pair() {
        let wc = counts(&[("ab", 3), ("cd", 3), ("abab", 1)]);
        let v = train_vocab(&wc, 100, 1, &["[PAD]"]);
        // specials, initial chars sorted, ## chars sorted, then merges.
        assert_eq!(
            &v[..9],
            &["[PAD]", "a", "b", "c", "d", "##a", "##b", "##d", "ab"]
        );
        // ("a","##b") occurs 3 + 1 = 4 times (the second "ab" of "abab" is "##a ##b").
        assert!(v.contains(&"cd".to_string()));
        let again = train_vocab(&wc, 100, 1, &["[PAD]"]);
        assert_eq!(v, again);
    }

    #[test]
    fn stops_at_vocab_size_and_min_frequency() {
        let wc = counts(&[("abc", 1), ("abd", 5)]);
        let v = train_vocab(&wc, 9, 1, &[]);
        assert_eq!(v.len(), 9);
        let v = train_vocab(&wc, 100, 2, &[]);
        assert!(v.contains(&"ab".to_string()) && !v.contains(&"abc".to_string()));
    }
}
