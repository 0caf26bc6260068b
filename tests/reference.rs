//! Scoring and decoding against references computed in Python (tools/make_fixtures.py):
//! the official KorQuAD 1.0 / SQuAD v1.1 evaluation logic, and HF `postprocess_qa_predictions`.

mod common;

use std::collections::HashMap;

use common::*;
use pipeline::qa::decode::{decode_example, DecodeConfig, WindowLogits};
use pipeline::qa::metrics::{best_em_f1, score, Metric};
use serde_json::Value;

fn read(rel: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixture(rel)).unwrap()).unwrap()
}

#[test]
fn em_f1_match_the_official_scripts_pair_by_pair() {
    let fx = read("metrics.json");
    let pairs = fx["pairs"].as_array().unwrap();
    assert!(pairs.len() >= 300);
    for metric in [Metric::Korquad, Metric::Squad] {
        let key = metric.to_string();
        let mut golds_by_id = Vec::new();
        let mut preds = HashMap::new();
        for (i, p) in pairs.iter().enumerate() {
            let pred = p["prediction"].as_str().unwrap();
            let golds: Vec<String> = p["golds"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g.as_str().unwrap().to_string())
                .collect();
            let (em, f1) = best_em_f1(metric, pred, &golds);
            let want_em = p[&key]["em"].as_f64().unwrap();
            let want_f1 = p[&key]["f1"].as_f64().unwrap();
            assert_eq!(em, want_em, "{key} pair {i}: EM of {pred:?} vs {golds:?}");
            assert!(
                (f1 - want_f1).abs() < 1e-12,
                "{key} pair {i}: F1 of {pred:?} vs {golds:?}: {f1} != {want_f1}"
            );
            golds_by_id.push((format!("q{i}"), golds));
            preds.insert(format!("q{i}"), pred.to_string());
        }
        let (s, missing) = score(
            metric,
            golds_by_id
                .iter()
                .map(|(id, g)| (id.as_str(), g.as_slice())),
            &preds,
        );
        assert!(missing.is_empty());
        let t = &fx["totals"][&key];
        assert_eq!(s.total as u64, t["total"].as_u64().unwrap());
        assert!((s.exact_match - t["exact_match"].as_f64().unwrap()).abs() < 1e-9);
        assert!((s.f1 - t["f1"].as_f64().unwrap()).abs() < 1e-9);
    }
}

#[test]
fn score_command_prints_the_official_numbers() {
    let expected = read("score/expected.json");
    for metric in ["korquad", "squad"] {
        let out = pipeline(
            &root(),
            &[
                "score",
                fixture("score/dataset.json").to_str().unwrap(),
                fixture("score/predictions.json").to_str().unwrap(),
                "--metric",
                metric,
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
        let got: Value = serde_json::from_slice(&out.stdout).unwrap();
        let want = &expected[metric];
        assert_eq!(got["total"], want["total"], "{metric}");
        for k in ["exact_match", "f1"] {
            let (g, w) = (got[k].as_f64().unwrap(), want[k].as_f64().unwrap());
            assert!((g - w).abs() < 1e-9, "{metric} {k}: {g} != {w}");
        }
        // One question has no prediction: said on stderr, scored 0.
        assert!(String::from_utf8_lossy(&out.stderr).contains("no prediction"));
    }
}

#[test]
fn score_rejects_bad_predictions_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let p = tmp.path().join("p.json");
    std::fs::write(&p, r#"{"a": 3}"#).unwrap();
    let err = fails(
        &root(),
        &[
            "score",
            fixture("score/dataset.json").to_str().unwrap(),
            p.to_str().unwrap(),
        ],
    );
    assert!(
        err.contains("id \"a\": the prediction must be a string"),
        "{err}"
    );
}

/// Start logits, end logits and context offsets of one window.
type WindowData = (Vec<f32>, Vec<f32>, Vec<Option<(usize, usize)>>);

#[test]
fn decoding_matches_hf_postprocess_qa_predictions() {
    let fx = read("decode.json");
    let cfg = DecodeConfig {
        n_best_size: fx["n_best_size"].as_u64().unwrap() as usize,
        max_answer_length: fx["max_answer_length"].as_u64().unwrap() as usize,
    };
    let features = fx["features"].as_array().unwrap();
    let floats = |v: &Value| -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    let mut checked = 0;
    for (ei, ex) in fx["examples"].as_array().unwrap().iter().enumerate() {
        let id = ex["id"].as_str().unwrap();
        let context = ex["context"].as_str().unwrap();
        let mine: Vec<WindowData> = features
            .iter()
            .filter(|f| f["example_index"].as_u64() == Some(ei as u64))
            .map(|f| {
                let offsets = f["offsets"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| {
                        o.as_array().map(|o| {
                            (
                                o[0].as_u64().unwrap() as usize,
                                o[1].as_u64().unwrap() as usize,
                            )
                        })
                    })
                    .collect();
                (
                    floats(&f["start_logits"]),
                    floats(&f["end_logits"]),
                    offsets,
                )
            })
            .collect();
        let windows: Vec<WindowLogits> = mine
            .iter()
            .map(|(s, e, o)| WindowLogits {
                start_logits: s,
                end_logits: e,
                offsets: o,
            })
            .collect();
        let got = decode_example(context, &windows, &cfg);
        assert_eq!(
            got[0].text,
            fx["predictions"][id].as_str().unwrap(),
            "{id}: best answer"
        );
        let want = fx["nbest"][id].as_array().unwrap();
        assert_eq!(got.len(), want.len(), "{id}: n-best length");
        for (k, (g, w)) in got.iter().zip(want).enumerate() {
            assert_eq!(g.text, w["text"].as_str().unwrap(), "{id} #{k}: text");
            assert_eq!(
                g.start_logit,
                w["start_logit"].as_f64().unwrap() as f32,
                "{id} #{k}"
            );
            assert_eq!(
                g.end_logit,
                w["end_logit"].as_f64().unwrap() as f32,
                "{id} #{k}"
            );
            let p = w["probability"].as_f64().unwrap() as f32;
            assert!(
                (g.probability - p).abs() <= 1e-6,
                "{id} #{k}: prob {} != {p}",
                g.probability
            );
        }
        checked += 1;
    }
    assert!(checked >= 20);
}
