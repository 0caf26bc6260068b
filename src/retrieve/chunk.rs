//! Documents cut into passages of about `chunk_chars` characters, at a sentence end or else at
//! white space, the next passage starting `overlap` characters back (at a word's start). Each
//! passage keeps its document id, title and character offset; a text that repeats an earlier
//! passage's is kept once.

use std::collections::HashSet;

use super::Document;

/// One passage of the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passage {
    /// Its row in `passages.parquet` (0, 1, …).
    pub passage_id: u64,
    pub doc_id: String,
    pub title: String,
    pub text: String,
    /// Where `text` starts in the document's text, in characters.
    pub start: usize,
}

/// The passages of `docs`, in document order; `chunk_chars` 0 keeps whole documents.
pub fn chunk(docs: &[Document], chunk_chars: usize, overlap: usize) -> Vec<Passage> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for d in docs {
        for (start, text) in spans(&d.text, chunk_chars, overlap) {
            if seen.insert(text.clone()) {
                out.push(Passage {
                    passage_id: out.len() as u64,
                    doc_id: d.id.clone(),
                    title: d.title.clone(),
                    text,
                    start,
                });
            }
        }
    }
    out
}

/// The (start, text) spans of one text, in characters.
fn spans(text: &str, chunk_chars: usize, overlap: usize) -> Vec<(usize, String)> {
    let chars: Vec<char> = text.chars().collect();
    let n = chars.len();
    if chunk_chars == 0 || n <= chunk_chars {
        return vec![(0, text.to_string())];
    }
    let overlap = overlap.min(chunk_chars / 2);
    let mut out = Vec::new();
    let mut start = 0;
    while start < n {
        let end = (start + chunk_chars).min(n);
        let cut = if end == n {
            n
        } else {
            cut_before(&chars, start + chunk_chars / 2, end)
        };
        let piece: String = chars[start..cut].iter().collect();
        if !piece.trim().is_empty() {
            out.push((start, piece));
        }
        if cut == n {
            break;
        }
        start = next_start(&chars, cut, overlap);
    }
    out
}

/// Where a passage ending by `end` is cut: after the last sentence end in `(lo, end]`, else
/// after the last white space there, else at `end`.
fn cut_before(chars: &[char], lo: usize, end: usize) -> usize {
    let sentence = (lo + 1..=end).rev().find(|&i| {
        matches!(chars[i - 1], '.' | '!' | '?' | '。' | '\n')
            && chars.get(i).is_none_or(|c| c.is_whitespace())
    });
    let space = || (lo + 1..=end).rev().find(|&i| chars[i - 1].is_whitespace());
    sentence.or_else(space).unwrap_or(end)
}

/// The next passage's start after a cut at `cut`: `overlap` characters back, moved forward to a
/// word's start (not past `cut`), then past white space.
fn next_start(chars: &[char], cut: usize, overlap: usize) -> usize {
    let mut s = cut - overlap;
    if overlap > 0 && s > 0 && !chars[s - 1].is_whitespace() {
        s = (s..cut)
            .find(|&i| chars[i - 1].is_whitespace())
            .unwrap_or(cut);
    }
    while s < chars.len() && chars[s].is_whitespace() {
        s += 1;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(id: &str, text: &str) -> Document {
        Document {
            id: id.into(),
            title: format!("title {id}"),
            text: text.into(),
        }
    }

    #[test]
    fn offsets_map_back_and_cover_the_document() {
        let text =
            "첫 문장은 여기서 끝난다. 둘째 문장은 조금 더 길게 이어지고 있다! 셋째는 물음인가? \
                    넷째 문장 없이 단어만 길게 이어지는 마지막 부분이다 끝";
        for (size, overlap) in [(20, 0), (20, 6), (33, 10), (7, 3), (1000, 5)] {
            let ps = chunk(&[doc("d", text)], size, overlap);
            let chars: Vec<char> = text.chars().collect();
            let mut covered = vec![false; chars.len()];
            for p in &ps {
                let n = p.text.chars().count();
                let back: String = chars[p.start..p.start + n].iter().collect();
                assert_eq!(back, p.text, "size {size} overlap {overlap}");
                assert!(n <= size, "{n} > {size}");
                covered[p.start..p.start + n]
                    .iter_mut()
                    .for_each(|c| *c = true);
            }
            for (i, c) in chars.iter().enumerate() {
                assert!(
                    covered[i] || c.is_whitespace(),
                    "char {i} lost at size {size}"
                );
            }
        }
    }

    #[test]
    fn sentences_are_preferred_and_overlap_starts_at_a_word() {
        // A sentence end in the passage's second half wins over a later space.
        let ps = chunk(&[doc("d", "하나 둘 셋. 넷 다섯 여섯")], 12, 0);
        assert_eq!(ps[0].text, "하나 둘 셋.");
        let ps = chunk(&[doc("d", "aaa bbb ccc ddd eee")], 8, 4);
        let texts: Vec<&str> = ps.iter().map(|p| p.text.as_str()).collect();
        assert_eq!(texts, ["aaa bbb ", "bbb ccc ", "ccc ddd ", "ddd eee"]);
    }

    #[test]
    fn whole_documents_and_repeated_texts() {
        let ps = chunk(
            &[
                doc("a", "같은 글"),
                doc("b", "같은 글"),
                doc("c", "다른 글"),
            ],
            0,
            0,
        );
        assert_eq!(ps.len(), 2);
        assert_eq!(
            (ps[1].doc_id.as_str(), ps[1].passage_id, ps[1].start),
            ("c", 1, 0)
        );
    }
}
