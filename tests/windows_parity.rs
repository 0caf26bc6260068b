//! Windows match HF `transformers` window for window: the fixtures hold what
//! `tokenizer(question, context, truncation="only_second", max_length, stride,
//! return_overflowing_tokens=True, return_offsets_mapping=True, padding="max_length")` and
//! run_qa's `prepare_train_features` labels gave (tools/make_fixtures.py).

mod common;

use common::*;
use pipeline::qa::examples::{Answer, Example};
use pipeline::qa::windows::{build_windows, QaTokenizer, Window};
use serde_json::Value;

fn tokenizer(name: &str) -> QaTokenizer {
    QaTokenizer::load(&fixture(&format!("tokenizers/{name}"))).expect("fixture tokenizer loads")
}

fn as_usize(v: &Value) -> usize {
    v.as_u64().expect("integer") as usize
}

/// Compares our windows with the fixture's features, field by field, with a precise message.
fn assert_same(fixture_name: &str, expected: &[Value], got: &[Window]) -> usize {
    let mut quirks = 0;
    assert_eq!(
        expected.len(),
        got.len(),
        "{fixture_name}: number of windows differs"
    );
    for (i, (e, w)) in expected.iter().zip(got).enumerate() {
        assert_eq!(
            as_usize(&e["example_index"]),
            w.example_index,
            "{fixture_name} window {i}: example"
        );
        if let Some(hash) = e.get("input_ids_fnv1a64") {
            // KorQuAD fixtures hold a hash of the ids: ids decode back to the licensed text.
            assert_eq!(
                hash.as_str().unwrap(),
                fnv1a64(&w.input_ids),
                "{fixture_name} window {i}: input_ids"
            );
        } else {
            let ids: Vec<u32> = uints(&e["input_ids"]);
            assert_eq!(ids, w.input_ids, "{fixture_name} window {i}: input_ids");
        }
        let mask: Vec<u32> = uints(&e["attention_mask"]);
        assert_eq!(
            mask, w.attention_mask,
            "{fixture_name} window {i}: attention_mask"
        );
        if let Some(tt) = e.get("token_type_ids") {
            let tt: Vec<u32> = uints(tt);
            assert_eq!(tt, w.type_ids, "{fixture_name} window {i}: token_type_ids");
        }
        let offsets: Vec<(usize, usize)> = e["offsets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| (as_usize(&o[0]), as_usize(&o[1])))
            .collect();
        assert_eq!(offsets, w.offsets, "{fixture_name} window {i}: offsets");
        let seq: Vec<Option<usize>> = e["sequence_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_u64().map(|x| x as usize))
            .collect();
        assert_eq!(
            seq, w.sequence_ids,
            "{fixture_name} window {i}: sequence_ids"
        );
        let (mut hf_start, hf_end) = (as_usize(&e["start_position"]), as_usize(&e["end_position"]));
        if seq[hf_start].is_none() && hf_start != w.cls_index {
            // HF's start scan runs past the context when the answer starts in its last token
            // (see qa::windows::label); ours stops at that token.
            hf_start = seq.iter().rposition(|s| *s == Some(1)).unwrap();
            quirks += 1;
        }
        assert_eq!(
            (hf_start, hf_end),
            (w.start_position, w.end_position),
            "{fixture_name} window {i}: labels"
        );
    }
    quirks
}

/// Windows `examples` with fixture `fx`'s length and stride and the `tok` tokenizer, asserts
/// they are HF's, and returns how many there are.
fn windows_match(file: &str, fx: &Value, tok: &str, examples: &[Example]) -> usize {
    let windows = build_windows(
        &tokenizer(tok),
        examples,
        as_usize(&fx["max_seq_length"]),
        as_usize(&fx["doc_stride"]),
        &|_| {},
    )
    .unwrap();
    let quirks = assert_same(file, fx["features"].as_array().unwrap(), &windows);
    eprintln!(
        "{file}: {} windows, {quirks} where HF labels a start outside the context",
        windows.len()
    );
    windows.len()
}

fn check_sample_fixture(file: &str, tok: &str) {
    let fx: Value =
        serde_json::from_slice(&std::fs::read(fixture(&format!("windows/{file}"))).unwrap())
            .unwrap();
    let examples: Vec<Example> = fx["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| Example {
            id: e["id"].as_str().unwrap().into(),
            title: String::new(),
            document_id: None,
            context: e["context"].as_str().unwrap().into(),
            question: e["question"].as_str().unwrap().into(),
            answers: vec![Answer {
                text: e["answer_text"].as_str().unwrap().into(),
                start: as_usize(&e["answer_start"]),
            }],
        })
        .collect();
    let windows = windows_match(file, &fx, tok, &examples);
    assert!(
        windows > examples.len(),
        "{file}: the fixture should exercise overflow windows"
    );
}

#[test]
fn wordpiece_windows_match_hf() {
    check_sample_fixture("wordpiece.json", "wordpiece");
    check_sample_fixture("wordpiece_64.json", "wordpiece");
}

#[test]
fn byte_level_bpe_windows_match_hf() {
    check_sample_fixture("bbpe.json", "bbpe");
    check_sample_fixture("bbpe_64.json", "bbpe");
}

/// KorQuAD fixtures store ids and offsets only (the text is not ours to copy): the questions are
/// read from `../shared` at test time.
fn check_korquad(file: &str, tok: &str) {
    let Some(path) = korquad() else { return };
    let fx: Value =
        serde_json::from_slice(&std::fs::read(fixture(&format!("windows/{file}"))).unwrap())
            .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let digest = sha256_hex(&bytes);
    assert_eq!(
        fx["source_sha256"].as_str().unwrap(),
        digest,
        "KorQuAD file differs from the one the fixture was made from"
    );
    let all: Vec<Example> =
        pipeline::qa::examples::load_raw(&path, pipeline::settings::DataFormat::Squad)
            .unwrap()
            .into_iter()
            .map(|r| r.example)
            .collect();
    let wanted: Vec<&str> = fx["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    let examples: Vec<Example> = wanted
        .iter()
        .map(|id| {
            all.iter()
                .find(|e| e.id == *id)
                .expect("id in KorQuAD")
                .clone()
        })
        .collect();
    windows_match(file, &fx, tok, &examples);
}

#[test]
fn korquad_windows_match_hf() {
    check_korquad("korquad_wordpiece.json", "wordpiece");
    check_korquad("korquad_bbpe.json", "bbpe");
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// FNV-1a 64 over each id as 4 little-endian bytes, as tools/make_fixtures.py writes it.
fn fnv1a64(ids: &[u32]) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for id in ids {
        for b in id.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    format!("{h:016x}")
}

/// The deterministic WordPiece trainer gives the fixture tokenizer's vocabulary exactly
/// (tools/make_fixtures.py trains it with the same rule, over the sample plus a few English
/// lines), and the same vocabulary on every run.
#[test]
fn trained_wordpiece_vocab_matches_the_reference_trainer() {
    let mut texts: Vec<String> = Vec::new();
    for split in ["train", "test"] {
        let path = root().join(format!("data/sample/{split}.json"));
        let data: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        for art in data["data"].as_array().unwrap() {
            for para in art["paragraphs"].as_array().unwrap() {
                texts.push(para["context"].as_str().unwrap().into());
                for qa in para["qas"].as_array().unwrap() {
                    texts.push(qa["question"].as_str().unwrap().into());
                }
            }
        }
    }
    let extra = [
        "The quick brown fox jumps over the lazy dog.",
        "An answer is a span of the context; the model predicts its start and end.",
        "Question answering with BERT and RoBERTa style tokenizers, version 1.1.",
        "She said \"hello\" and left at 10:30 a.m. (not p.m.).",
    ];
    for _ in 0..3 {
        texts.extend(extra.iter().map(|s| s.to_string()));
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let ours = QaTokenizer::train_wordpiece(&refs, 1500, 1).unwrap();
    let theirs = tokenizer("wordpiece");
    let mut a: Vec<(String, u32)> = ours.tokenizer.get_vocab(true).into_iter().collect();
    let mut b: Vec<(String, u32)> = theirs.tokenizer.get_vocab(true).into_iter().collect();
    a.sort_by_key(|x| x.1);
    b.sort_by_key(|x| x.1);
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x, y, "first vocabulary difference");
    }
    let again = QaTokenizer::train_wordpiece(&refs, 1500, 1).unwrap();
    assert_eq!(
        ours.tokenizer.to_string(false).unwrap(),
        again.tokenizer.to_string(false).unwrap()
    );
}

/// A question that leaves no more context room than the stride is a clear error (the
/// tokenizer itself would panic, HF's raises).
#[test]
fn questions_too_long_for_the_window_are_named() {
    let ex = Example {
        id: "long-q".into(),
        title: String::new(),
        document_id: None,
        context: "짧은 문맥입니다. 정답은 여기에 있다.".into(),
        question:
            "아주 길고 긴 질문이 창 하나를 거의 다 차지해 버리면 어떻게 될까요? 정말 궁금합니다"
                .into(),
        answers: vec![],
    };
    let err = build_windows(&tokenizer("bbpe"), &[ex], 32, 16, &|_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("example \"long-q\": the question takes"),
        "{err}"
    );
    assert!(
        err.contains("raise max_seq_length or lower doc_stride"),
        "{err}"
    );
}
