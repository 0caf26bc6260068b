//! The `wgpu` backend against the CPU backend: training on the same weights and data gives the
//! same loss curve within float noise, and `bench` runs there. In CI the device is Mesa's
//! lavapipe (Vulkan on the CPU); without any Vulkan driver these tests skip with a message.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

/// A workspace with the tiny RoBERTa fixture as the pretrained model, dropout off (the two
/// backends draw dropout masks from different generators), and the sample prepared and split.
fn workspace_with_model(settings: &[String]) -> tempfile::TempDir {
    let ws = workspace();
    let model = ws.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for f in std::fs::read_dir(fixture("models/roberta_qa")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, model.join(f.file_name().unwrap())).unwrap();
    }
    let mut cfg: Value =
        serde_json::from_slice(&std::fs::read(model.join("config.json")).unwrap()).unwrap();
    cfg["hidden_dropout_prob"] = 0.0.into();
    cfg["attention_probs_dropout_prob"] = 0.0.into();
    std::fs::write(model.join("config.json"), cfg.to_string()).unwrap();
    for stage in ["prepare", "split"] {
        let mut a = vec!["run".to_string(), stage.into(), "-q".into()];
        a.extend(settings.iter().cloned());
        ok(ws.path(), &a.iter().map(String::as_str).collect::<Vec<_>>());
    }
    ws
}

fn settings() -> Vec<String> {
    [
        "model.pretrained=model",
        "prepare.max_seq_length=64",
        "prepare.doc_stride=16",
        "split.folds=2",
        "data.max_train_samples=40",
        "train.epochs=1",
        "train.batch_size=8",
        "train.eval_every=4",
        "train.learning_rate=1e-3",
    ]
    .iter()
    .flat_map(|kv| ["--set".to_string(), kv.to_string()])
    .collect()
}

fn metric(dir: &Path, key: &str) -> Vec<f64> {
    metrics_column(&dir.join("outputs/sample/train/fold-0"), key)
}

#[test]
fn training_on_wgpu_follows_the_cpu_loss_curve() {
    let s = settings();
    let ws = workspace_with_model(&s);
    let d = ws.path();
    let mut train = vec!["run", "train", "-q", "--fold", "0"];
    train.extend(s.iter().map(String::as_str));
    ok(d, &train);
    let cpu = (metric(d, "train_loss"), metric(d, "loss"));

    let ws2 = workspace_with_model(&s);
    let d2 = ws2.path();
    let mut on_wgpu = train.clone();
    on_wgpu.extend(["--set", "train.device=wgpu"]);
    let o = pipeline(d2, &on_wgpu);
    if no_wgpu_adapter(&o) {
        return;
    }
    assert!(o.status.success(), "{}", text(&o));
    let gpu = (metric(d2, "train_loss"), metric(d2, "loss"));
    assert_eq!(cpu.0.len(), 5, "{cpu:?}");
    assert_eq!(cpu.0.len(), gpu.0.len());
    for (name, a, b) in [
        ("train loss", &cpu.0, &gpu.0),
        ("validation loss", &cpu.1, &gpu.1),
    ] {
        for (x, y) in a.iter().zip(b) {
            let rel = (x - y).abs() / x.abs();
            assert!(rel < 1e-4, "{name}: cpu {a:?} vs wgpu {b:?}");
        }
    }
    // The loss falls on both.
    assert!(gpu.1.last() < gpu.1.first(), "{gpu:?}");
}

#[test]
fn bench_runs_on_wgpu_and_reports_device_memory() {
    let o = pipeline(
        &root(),
        &[
            "bench", "--model", "tiny", "--device", "wgpu", "--seq", "32", "--batch", "2",
            "--steps", "1", "--warmup", "1",
        ],
    );
    if no_wgpu_adapter(&o) {
        return;
    }
    assert!(o.status.success(), "{}", text(&o));
    let report = |o: &std::process::Output| -> Value {
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap()
    };
    let r = report(&o);
    assert_eq!(r["device"], "wgpu");
    assert!(r["peak_device_memory_mib"].as_f64().unwrap() > 0.0, "{r}");
    // Launches and compilations are counted from CubeCL's records, and are deterministic: the
    // same run again launches the same kernels, from the same seeded first loss.
    let launches = r["kernel_launches_per_step"].as_f64().unwrap();
    assert!(launches > 100.0, "{r}");
    assert!(r["kernels_compiled"].as_u64().unwrap() > 10, "{r}");
    let again = report(&pipeline(
        &root(),
        &[
            "bench", "--model", "tiny", "--device", "wgpu", "--seq", "32", "--batch", "2",
            "--steps", "2", "--warmup", "1",
        ],
    ));
    assert_eq!(
        again["kernel_launches_per_step"].as_f64(),
        Some(launches),
        "{again}"
    );
    assert_eq!(again["first_loss"], r["first_loss"]);
    // bf16 has no WGSL type: refused in one line, not a shader compilation panic.
    let err = fails(
        &root(),
        &[
            "bench",
            "--model",
            "tiny",
            "--device",
            "wgpu",
            "--precision",
            "bf16-mixed",
        ],
    );
    assert!(err.contains("not supported on wgpu"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// wgpu caps each buffer (lavapipe: 128 MiB, a real GPU a few GiB); a step whose activations
/// need a bigger one is refused in one line before `prepare`, not a panic in a device thread.
/// (The attention scores need none: the fused attention never writes them.)
#[test]
fn a_buffer_over_the_devices_limit_is_refused_before_anything_runs() {
    let ws = workspace();
    let d = ws.path();
    let o = pipeline(
        d,
        &[
            "run",
            "all",
            "--set",
            "train.device=wgpu",
            "--set",
            "train.batch_size=65536",
        ],
    );
    if no_wgpu_adapter(&o) {
        return;
    }
    let t = text(&o);
    assert!(!o.status.success(), "{t}");
    assert!(
        t.contains("a layer's feed-forward activations needs one buffer of")
            && t.contains("MiB, but device wgpu allows at most"),
        "{t}"
    );
    assert_eq!(t.trim().lines().count(), 1, "{t}");
    assert!(!d.join("outputs/sample/prepare").exists());
}

/// `pipeline bench` on wgpu with `extra` arguments: its JSON report, or `None` (SKIP) without a
/// Vulkan device.
fn bench_report(extra: &[&str]) -> Option<Value> {
    let mut args = vec![
        "bench", "-q", "--device", "wgpu", "--steps", "1", "--warmup", "1",
    ];
    args.extend(extra);
    let o = pipeline(&root(), &args);
    if no_wgpu_adapter(&o) {
        return None;
    }
    assert!(o.status.success(), "{}", text(&o));
    Some(serde_json::from_str(String::from_utf8_lossy(&o.stdout).trim()).unwrap())
}

fn launches(r: &Value) -> f64 {
    r["kernel_launches_per_step"].as_f64().unwrap()
}

/// The fused LSTM launches two kernels per time step and layer (one forward, one backward, both
/// directions in each): the BiLSTM's launch count grows by 2 · 2 layers per extra time step,
/// where the reference path of tensor operations grows by about 50.
#[test]
fn the_fused_lstm_launches_two_kernels_per_time_step_and_layer() {
    let count = |seq: &str, reference: bool| {
        let mut a = vec![
            "--model", "tiny", "--head", "bilstm", "--batch", "2", "--seq", seq,
        ];
        if reference {
            a.push("--reference-kernels");
        }
        bench_report(&a).map(|r| {
            assert_eq!(r["fused_kernels"], !reference, "{r}");
            launches(&r)
        })
    };
    let Some(short) = count("32", false) else {
        return;
    };
    let long = count("64", false).unwrap();
    let per_step = (long - short) / 32.0;
    assert_eq!(per_step, 4.0, "{short} launches at L 32, {long} at L 64");
    let reference = (count("64", true).unwrap() - count("32", true).unwrap()) / 32.0;
    assert!(
        reference > 40.0,
        "reference path: {reference} launches per time step"
    );
}

/// A 2048-token step with 16 heads (attention scores of 256 MiB a layer if they were written)
/// trains through the fused attention, with dropout, to a finite loss.
#[test]
fn long_sequences_train_through_the_fused_attention() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.json");
    std::fs::write(
        &cfg,
        r#"{"model_type": "roberta", "vocab_size": 512, "hidden_size": 64,
            "num_hidden_layers": 1, "num_attention_heads": 16, "intermediate_size": 128,
            "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 2050,
            "type_vocab_size": 1, "layer_norm_eps": 1e-05, "pad_token_id": 1}"#,
    )
    .unwrap();
    let Some(r) = bench_report(&[
        "--model",
        cfg.to_str().unwrap(),
        "--seq",
        "2048",
        "--batch",
        "1",
    ]) else {
        return;
    };
    assert_eq!(r["fused_kernels"], true, "{r}");
    assert!(r["first_loss"].as_f64().unwrap().is_finite(), "{r}");
}
