//! `pipeline infer` gives transformers' logits and HF's decoded answers on the tiny checkpoints
//! (tests/fixtures/models/infer_*.json), and fails cleanly where CUDA is not available.

mod common;

use common::*;
use safetensors::SafeTensors;
use serde_json::Value;

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// `pipeline infer` of fixture `model` on the SQuAD fixture into `out`; with a device, on it
/// with the fixtures' windows (64 tokens, stride 16), else with the defaults.
fn infer(model: &str, out: &std::path::Path, device: Option<&str>) -> std::process::Output {
    let (m, data) = (fixture(model), fixture("inputs/squad.json"));
    let mut args = vec![
        "infer",
        "-q",
        "--model",
        m.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    if let Some(device) = device {
        args.extend_from_slice(&[
            "--max-seq-length",
            "64",
            "--doc-stride",
            "16",
            "--device",
            device,
        ]);
    }
    pipeline(&root(), &args)
}

fn check(model: &str, reference: &str, device: &str) {
    let fx: Value = serde_json::from_slice(&std::fs::read(fixture(reference)).unwrap()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let o = infer(model, out.path(), Some(device));
    if no_wgpu_adapter(&o) {
        return;
    }
    assert!(o.status.success(), "{}", text(&o));
    let preds: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("predictions.json")).unwrap())
            .unwrap();
    assert_eq!(preds, fx["predictions"], "{model}: decoded answers differ");
    let bytes = std::fs::read(out.path().join("logits.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let feats = fx["features"].as_array().unwrap();
    assert_eq!(
        st.tensor("start_logits").unwrap().shape(),
        &[feats.len(), 64]
    );
    let ex: Vec<i64> = st
        .tensor("example_index")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let mut d = 0f32;
    for (k, name) in [
        ("start_logits", "start_logits"),
        ("end_logits", "end_logits"),
    ] {
        let got = f32s(st.tensor(name).unwrap().data());
        for (i, f) in feats.iter().enumerate() {
            assert_eq!(ex[i], f["example_index"].as_i64().unwrap());
            for (j, v) in f[k].as_array().unwrap().iter().enumerate() {
                d = d.max((got[i * 64 + j] - v.as_f64().unwrap() as f32).abs());
            }
        }
    }
    eprintln!("{model} on {device}: infer max |Δ logits| = {d:e}");
    assert!(d <= 1e-4, "{model}: {d}");
    let nbest: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("nbest_predictions.json")).unwrap())
            .unwrap();
    assert!(nbest["train-000-0"][0]["probability"].as_f64().unwrap() > 0.0);
}

#[test]
fn infer_matches_transformers_roberta() {
    check("models/roberta_qa", "models/infer_roberta.json", "cpu");
}

#[test]
fn infer_matches_transformers_bert_from_pytorch_bin() {
    check("models/bert_qa", "models/infer_bert.json", "cpu");
}

/// The wgpu backend (lavapipe in CI: Vulkan on the CPU) gives transformers' logits too.
#[test]
fn infer_on_wgpu_matches_transformers_roberta_and_bert() {
    check("models/roberta_qa", "models/infer_roberta.json", "wgpu");
    check("models/bert_qa", "models/infer_bert.json", "wgpu");
}

#[test]
fn infer_rejects_windows_longer_than_the_position_table() {
    let out = tempfile::tempdir().unwrap();
    let o = infer("models/roberta_qa", out.path(), None);
    assert!(!o.status.success());
    let err = text(&o);
    assert!(
        err.contains("max_seq_length 384 is longer than the model allows (64"),
        "{err}"
    );
}

#[test]
fn cuda_without_a_gpu_fails_cleanly() {
    let out = tempfile::tempdir().unwrap();
    let o = infer("models/roberta_qa", out.path(), Some("cuda"));
    if o.status.success() {
        eprintln!("a CUDA device works here: nothing to check");
        return;
    }
    let t = text(&o);
    assert!(t.contains("--device cpu"), "{t}");
    assert!(!t.contains("panicked"), "{t}");
    assert_eq!(t.trim().lines().count(), 1, "{t}");
}
