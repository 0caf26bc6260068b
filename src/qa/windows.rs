//! Tokenisation into overlapping windows with start/end labels, matching HF `run_qa.py`.
//!
//! `tokenizer(question, context, truncation="only_second", max_length, stride,
//! return_overflowing_tokens=True, return_offsets_mapping=True, padding="max_length")` is what
//! the HF fast tokenizer computes with the same Rust `tokenizers` code we call here, so windows
//! match it exactly (same count, ids and offsets); labels follow `prepare_train_features`.
//! Offsets are characters (`encode_char_offsets`), the unit `answer_start` uses.
//! Also trains the from-scratch BERT-style WordPiece tokenizer.

/// A HF tokenizer folder's `tokenizers` file and its settings.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap};

use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, Encoding, NormalizedString, Normalizer, OffsetReferential, OffsetType,
    PaddingDirection, PaddingParams, PaddingStrategy, PostProcessor, PostProcessorWrapper,
    PreTokenizedString, PreTokenizer, Tokenizer, TruncationDirection, TruncationParams,
    TruncationStrategy,
};

use super::examples::Example;

/// Special tokens of the trained WordPiece vocabulary, in KLUE's id order.
pub const WORDPIECE_SPECIALS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// A HF tokenizer plus the special-token ids windowing needs.
#[derive(Clone)]
pub struct QaTokenizer {
    pub tokenizer: Tokenizer,
    pub cls_id: u32,
    pub pad_id: u32,
    pub pad_token: String,
}

/// Reads a special token's content from `tokenizer_config.json` (`"x"` or `{"content": "x"}`).
fn config_token(config: &serde_json::Value, key: &str) -> Option<String> {
    match config.get(key)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

impl QaTokenizer {
    /// Loads `tokenizer.json` (a file, or a HF folder holding one with its
    /// `tokenizer_config.json`, which names the pad and CLS tokens).
    pub fn load(path: &Path) -> Result<Self> {
        let (file, dir) = if path.is_dir() {
            (path.join(TOKENIZER_FILE), path.to_path_buf())
        } else {
            (
                path.to_path_buf(),
                path.parent().map(Path::to_path_buf).unwrap_or_default(),
            )
        };
        if !file.exists() {
            bail!(
                "{}: no tokenizer.json (only fast tokenizers saved as tokenizer.json are supported)",
                file.display()
            );
        }
        let mut tokenizer = Tokenizer::from_file(&file)
            .map_err(|e| anyhow!("{}: not a HF tokenizer.json: {e}", file.display()))?;
        let config: serde_json::Value = match std::fs::read(dir.join(TOKENIZER_CONFIG_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!("parsing {}", dir.join(TOKENIZER_CONFIG_FILE).display())
            })?,
            Err(_) => serde_json::Value::Null,
        };
        let find = |key: &str, fallbacks: &[&str]| -> Option<(String, u32)> {
            let baked = match key {
                "pad_token" => tokenizer.get_padding().map(|p| p.pad_token.clone()),
                _ => None,
            };
            config_token(&config, key)
                .into_iter()
                .chain(baked)
                .chain(fallbacks.iter().map(|s| s.to_string()))
                .find_map(|t| tokenizer.token_to_id(&t).map(|id| (t, id)))
        };
        let (_, cls_id) = find("cls_token", &["[CLS]", "<s>"]).ok_or_else(|| {
            anyhow!(
                "{}: cannot find the CLS token ([CLS] or <s>)",
                file.display()
            )
        })?;
        let (pad_token, pad_id) = find("pad_token", &["[PAD]", "<pad>"]).ok_or_else(|| {
            anyhow!(
                "{}: cannot find the pad token ([PAD] or <pad>)",
                file.display()
            )
        })?;
        // Windowing sets its own truncation and padding, as HF does per call.
        tokenizer
            .with_truncation(None)
            .map_err(|e| anyhow!("{e}"))?;
        tokenizer.with_padding(None);
        Ok(Self {
            tokenizer,
            cls_id,
            pad_id,
            pad_token,
        })
    }

    /// Trains a BERT-style WordPiece tokenizer (no lower-casing, KLUE-like specials) on `texts`,
    /// deterministically (see [`super::wordpiece`]).
    pub fn train_wordpiece(texts: &[&str], vocab_size: usize, min_frequency: u64) -> Result<Self> {
        let normalizer = BertNormalizer::new(true, true, Some(false), false);
        let pre_tokenizer = BertPreTokenizer;
        let words = texts
            .par_iter()
            .map(|t| -> Result<Vec<String>> {
                let mut n = NormalizedString::from(*t);
                normalizer.normalize(&mut n).map_err(|e| anyhow!("{e}"))?;
                let mut pre = PreTokenizedString::from(n);
                pre_tokenizer
                    .pre_tokenize(&mut pre)
                    .map_err(|e| anyhow!("{e}"))?;
                Ok(pre
                    .get_splits(OffsetReferential::Original, OffsetType::Byte)
                    .into_iter()
                    .map(|(w, _, _)| w.to_string())
                    .collect())
            })
            .collect::<Result<Vec<_>>>()?;
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for w in words.into_iter().flatten() {
            *counts.entry(w).or_default() += 1;
        }
        let vocab =
            super::wordpiece::train_vocab(&counts, vocab_size, min_frequency, &WORDPIECE_SPECIALS);
        let vocab: ahash::AHashMap<String, u32> = vocab
            .into_iter()
            .enumerate()
            .map(|(i, t)| (t, i as u32))
            .collect();
        let model = WordPiece::builder()
            .vocab(vocab)
            .unk_token("[UNK]".into())
            .continuing_subword_prefix("##".into())
            .max_input_chars_per_word(100)
            .build()
            .map_err(|e| anyhow!("building WordPiece: {e}"))?;
        let mut tokenizer = Tokenizer::new(model);
        tokenizer.with_normalizer(Some(normalizer));
        tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
        tokenizer.with_decoder(Some(tokenizers::decoders::wordpiece::WordPiece::default()));
        let specials: Vec<AddedToken> = WORDPIECE_SPECIALS
            .iter()
            .map(|t| AddedToken::from(*t, true))
            .collect();
        tokenizer.add_special_tokens(&specials);
        let id = |t: &str| {
            tokenizer
                .token_to_id(t)
                .ok_or_else(|| anyhow!("trained vocabulary lacks {t}"))
        };
        let (cls_id, sep_id, pad_id) = (id("[CLS]")?, id("[SEP]")?, id("[PAD]")?);
        let post = TemplateProcessing::builder()
            .try_single("[CLS] $A [SEP]")
            .map_err(|e| anyhow!("{e}"))?
            .try_pair("[CLS] $A [SEP] $B:1 [SEP]:1")
            .map_err(|e| anyhow!("{e}"))?
            .special_tokens(vec![("[CLS]", cls_id), ("[SEP]", sep_id)])
            .build()
            .map_err(|e| anyhow!("{e}"))?;
        tokenizer.with_post_processor(Some(post));
        Ok(Self {
            tokenizer,
            cls_id,
            pad_id,
            pad_token: "[PAD]".into(),
        })
    }

    /// Saves `tokenizer.json` and a `tokenizer_config.json` naming the special tokens, the layout
    /// HF `AutoTokenizer.from_pretrained` reads. Returns the written file names.
    pub fn save(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        let json = self
            .tokenizer
            .to_string(true)
            .map_err(|e| anyhow!("serialising the tokenizer: {e}"))?;
        let tok_path = dir.join(TOKENIZER_FILE);
        crate::run::write_atomic(&tok_path, json.as_bytes())?;
        let token = |id: u32| self.tokenizer.id_to_token(id).unwrap_or_default();
        let mut config = serde_json::json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "cls_token": token(self.cls_id),
            "pad_token": self.pad_token,
            "model_max_length": 512,
        });
        for (key, tok) in [
            ("sep_token", "[SEP]"),
            ("unk_token", "[UNK]"),
            ("mask_token", "[MASK]"),
        ] {
            if self.tokenizer.token_to_id(tok).is_some() {
                config[key] = tok.into();
            }
        }
        let cfg_path = dir.join(TOKENIZER_CONFIG_FILE);
        crate::run::write_json_atomic(&cfg_path, &config)?;
        Ok(vec![tok_path, cfg_path])
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// A copy configured for windowing as HF's call configures it.
    fn for_windows(&self, max_seq_length: usize, doc_stride: usize) -> Result<Tokenizer> {
        let mut tok = self.tokenizer.clone();
        tok.with_truncation(Some(TruncationParams {
            direction: TruncationDirection::Right,
            max_length: max_seq_length,
            strategy: TruncationStrategy::OnlySecond,
            stride: doc_stride,
        }))
        .map_err(|e| anyhow!("{e}"))?;
        tok.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_seq_length),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id: self.pad_id,
            pad_type_id: 0,
            pad_token: self.pad_token.clone(),
        }));
        Ok(tok)
    }
}

/// One token window of one example, everything HF's tokenizer call returns for it plus labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub example_index: usize,
    /// Position of this window among its example's windows.
    pub window_index: usize,
    pub input_ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    pub attention_mask: Vec<u32>,
    /// Character offsets as HF's `offset_mapping` (into the question for sequence 0, into the
    /// context for sequence 1, `(0, 0)` for special and pad tokens).
    pub offsets: Vec<(usize, usize)>,
    pub sequence_ids: Vec<Option<usize>>,
    /// Token labels; both are the CLS index when the answer is not inside this window.
    pub start_position: usize,
    pub end_position: usize,
    /// Position of the CLS token (where unanswerable windows point).
    pub cls_index: usize,
}

impl Window {
    /// Whether the window's labels point at the answer (not at CLS).
    pub fn has_answer(&self) -> bool {
        self.start_position != self.cls_index
    }
    /// Offsets of context tokens only (`None` elsewhere), what decoding uses.
    pub fn context_offsets(&self) -> Vec<Option<(usize, usize)>> {
        self.offsets
            .iter()
            .zip(&self.sequence_ids)
            .map(|(&o, s)| (*s == Some(1)).then_some(o))
            .collect()
    }
}

/// Tokenises one example into its windows and labels them from its first answer.
///
/// `context` is the context already encoded on its own (type id 1, char offsets, no special
/// tokens); `post_process` then does what `encode((question, context))` does after encoding
/// each sequence: truncation with overflow, the template, padding. Contexts are shared by many
/// questions, so encoding each once is most of prepare's speed.
fn example_windows(
    plain: &Tokenizer,
    windowing: &Tokenizer,
    cls_id: u32,
    ex: &Example,
    context: Encoding,
    example_index: usize,
) -> Result<Vec<Window>> {
    // run_qa strips leading white space from questions: it wastes context room.
    let question = plain
        .encode_char_offsets(ex.question.trim_start(), false)
        .map_err(|e| anyhow!("example {:?}: tokenising the question: {e}", ex.id))?;
    // The tokenizer panics (HF's raises) when the question leaves no more context room than
    // the stride; say so instead.
    if let Some(t) = windowing.get_truncation() {
        let specials = windowing
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(true));
        let room = t.max_length.saturating_sub(specials + question.len());
        if room <= t.stride {
            bail!(
                "example {:?}: the question takes {} tokens, leaving {room} for the context, not more than doc_stride {}: raise max_seq_length or lower doc_stride",
                ex.id,
                question.len(),
                t.stride
            );
        }
    }
    let mut enc = windowing
        .post_process(question, Some(context), true)
        .map_err(|e| anyhow!("example {:?}: windowing: {e}", ex.id))?;
    let overflow = enc.take_overflowing();
    let answer = ex
        .answers
        .first()
        .map(|a| (a.start, a.start + a.text.chars().count()));
    Ok(std::iter::once(enc)
        .chain(overflow)
        .enumerate()
        .map(|(w, e)| {
            let input_ids = e.get_ids().to_vec();
            let offsets = e.get_offsets().to_vec();
            let sequence_ids = e.get_sequence_ids();
            let cls = input_ids.iter().position(|&t| t == cls_id).unwrap_or(0);
            let (start_position, end_position) = match answer {
                None => (cls, cls),
                Some((s, e)) => label(&offsets, &sequence_ids, s, e).unwrap_or((cls, cls)),
            };
            Window {
                example_index,
                window_index: w,
                type_ids: e.get_type_ids().to_vec(),
                attention_mask: e.get_attention_mask().to_vec(),
                input_ids,
                offsets,
                sequence_ids,
                start_position,
                end_position,
                cls_index: cls,
            }
        })
        .collect())
}

/// `prepare_train_features`' labelling: token span of the answer `[start_char, end_char)` when
/// it lies wholly inside the window's context, else `None`.
///
/// One deliberate difference from HF: its start scan runs while `offset.0 <= start_char` over
/// *all* following tokens, so when the answer starts in the last context token the `(0, 0)`
/// offsets of `[SEP]` and padding carry it to the last padding position, a label outside the
/// context. We stop the scan at the end of the context, which labels that token.
fn label(
    offsets: &[(usize, usize)],
    sequence_ids: &[Option<usize>],
    start_char: usize,
    end_char: usize,
) -> Option<(usize, usize)> {
    let mut first = sequence_ids.iter().position(|s| *s == Some(1))?;
    let mut last = sequence_ids.iter().rposition(|s| *s == Some(1))?;
    if !(offsets[first].0 <= start_char && offsets[last].1 >= end_char) {
        return None;
    }
    let context_end = last;
    while first <= context_end && offsets[first].0 <= start_char {
        first += 1;
    }
    while offsets[last].1 >= end_char {
        if last == 0 {
            break;
        }
        last -= 1;
    }
    Some((first - 1, last + 1))
}

/// Tokenises all examples in parallel, windows in example order then window order (HF's order).
pub fn build_windows(
    tok: &QaTokenizer,
    examples: &[Example],
    max_seq_length: usize,
    doc_stride: usize,
    on_progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<Window>> {
    let windowing = tok.for_windows(max_seq_length, doc_stride)?;
    let mut plain = tok.tokenizer.clone();
    plain.with_post_processor(None::<PostProcessorWrapper>);

    let mut context_of: HashMap<&str, usize> = HashMap::new();
    let mut contexts: Vec<&str> = Vec::new();
    let slots: Vec<usize> = examples
        .iter()
        .map(|e| {
            *context_of.entry(e.context.as_str()).or_insert_with(|| {
                contexts.push(e.context.as_str());
                contexts.len() - 1
            })
        })
        .collect();
    let encoded: Vec<Encoding> = contexts
        .par_iter()
        .map(|c| {
            let mut e = plain
                .encode_char_offsets(*c, false)
                .map_err(|e| anyhow!("tokenising a context: {e}"))?;
            // As `encode` does for the second sequence of a pair.
            e.set_type_ids(vec![1; e.len()]);
            Ok(e)
        })
        .collect::<Result<_>>()?;
    let per_example: Vec<Vec<Window>> = examples
        .par_iter()
        .enumerate()
        .map(|(i, ex)| {
            let w = example_windows(
                &plain,
                &windowing,
                tok.cls_id,
                ex,
                encoded[slots[i]].clone(),
                i,
            );
            on_progress(1);
            w
        })
        .collect::<Result<_>>()?;
    Ok(per_example.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_hf_but_stay_inside_the_context() {
        // [CLS] q [SEP] c0 c1 c2 [SEP] pad
        let offsets = vec![
            (0, 0),
            (0, 1),
            (0, 0),
            (0, 3),
            (4, 7),
            (8, 10),
            (0, 0),
            (0, 0),
        ];
        let seq = vec![None, Some(0), None, Some(1), Some(1), Some(1), None, None];
        assert_eq!(label(&offsets, &seq, 4, 7), Some((4, 4)));
        assert_eq!(label(&offsets, &seq, 0, 7), Some((3, 4)));
        assert_eq!(label(&offsets, &seq, 20, 22), None);
        // Answer in the last context token: HF's scan would run on over [SEP] and padding to 7.
        assert_eq!(label(&offsets, &seq, 8, 10), Some((5, 5)));
    }
}
