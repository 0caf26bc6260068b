//! The analysers that turn text into index terms: character bigrams within each word (as good
//! as a Korean morphological analyser on KorQuAD, with no dictionary), or whitespace words.

use tantivy::tokenizer::{Token, TokenStream, Tokenizer};

/// How text becomes terms.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Analyzer {
    /// Every pair of adjacent characters within a word (a one-character word as itself),
    /// lowercased.
    #[default]
    Bigram,
    /// Words split at white space, lowercased.
    Whitespace,
}

impl Analyzer {
    /// The name tantivy registers the analyser under.
    pub fn name(self) -> &'static str {
        match self {
            Analyzer::Bigram => "pipeline_bigram",
            Analyzer::Whitespace => "pipeline_whitespace",
        }
    }

    /// The terms of `text`, in order (repeats kept: a query term given twice counts twice).
    pub fn terms(self, text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for word in text.split_whitespace() {
            let word = word.to_lowercase();
            match self {
                Analyzer::Whitespace => out.push(word),
                Analyzer::Bigram => {
                    let chars: Vec<char> = word.chars().collect();
                    if chars.len() == 1 {
                        out.push(word);
                    }
                    out.extend(chars.windows(2).map(|p| p.iter().collect::<String>()));
                }
            }
        }
        out
    }
}

/// [`Analyzer`] as a tantivy tokenizer.
#[derive(Clone)]
pub(crate) struct TantivyAnalyzer(pub Analyzer);

/// The terms of one text, handed out one at a time.
pub(crate) struct Terms {
    tokens: Vec<Token>,
    at: usize,
}

impl TokenStream for Terms {
    fn advance(&mut self) -> bool {
        self.at += 1;
        self.at <= self.tokens.len()
    }

    fn token(&self) -> &Token {
        &self.tokens[self.at - 1]
    }

    fn token_mut(&mut self) -> &mut Token {
        &mut self.tokens[self.at - 1]
    }
}

impl Tokenizer for TantivyAnalyzer {
    type TokenStream<'a> = Terms;

    fn token_stream<'a>(&'a mut self, text: &'a str) -> Terms {
        let tokens = self
            .0
            .terms(text)
            .into_iter()
            .enumerate()
            .map(|(position, text)| Token {
                position,
                text,
                ..Token::default()
            })
            .collect();
        Terms { tokens, at: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bigrams_stay_within_words() {
        assert_eq!(
            Analyzer::Bigram.terms("서울의 수도 A Bc"),
            ["서울", "울의", "수도", "a", "bc"]
        );
        assert_eq!(
            Analyzer::Whitespace.terms(" 서울의  수도\n"),
            ["서울의", "수도"]
        );
        assert!(Analyzer::Bigram.terms("  ").is_empty());
    }

    #[test]
    fn the_tantivy_tokenizer_hands_out_the_same_terms() {
        let mut t = TantivyAnalyzer(Analyzer::Bigram);
        let mut s = t.token_stream("대한민국 수도");
        let mut got = Vec::new();
        while s.advance() {
            got.push((s.token().text.clone(), s.token().position));
        }
        let want: Vec<(String, usize)> = ["대한", "한민", "민국", "수도"]
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i))
            .collect();
        assert_eq!(got, want);
    }
}
