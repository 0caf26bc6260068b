//! A fold's TensorBoard event files, read back by TensorBoard's own reader (the `tensorboard`
//! package's `EventAccumulator`, in a Python that `.ci/run` installs it into; set
//! `PIPELINE_TENSORBOARD_PYTHON`), checked against the fold's `metrics.jsonl`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;

/// Reads `dir` with TensorBoard's `EventAccumulator`: tag -> [(step, value)]. `None` (the test
/// skips) where no Python with `tensorboard` is at hand, unless `PIPELINE_REQUIRE_TENSORBOARD`
/// is set (CI), where that fails.
fn tensorboard_read(dir: &Path) -> Option<BTreeMap<String, Vec<(i64, f64)>>> {
    let python =
        std::env::var("PIPELINE_TENSORBOARD_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let script = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1], size_guidance={"scalars": 0})
acc.Reload()
print(json.dumps({t: [[e.step, e.value] for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}))
"#;
    let o = Command::new(&python)
        .args(["-c", script, dir.to_str().unwrap()])
        .output();
    let required = std::env::var_os("PIPELINE_REQUIRE_TENSORBOARD").is_some();
    match o {
        Ok(o) if o.status.success() => Some(serde_json::from_slice(&o.stdout).unwrap()),
        other => {
            let why = match other {
                Ok(o) => String::from_utf8_lossy(&o.stderr).to_string(),
                Err(e) => e.to_string(),
            };
            assert!(
                !required,
                "TensorBoard's reader did not run ({python}): {why}"
            );
            eprintln!("skipped: no Python with `tensorboard` ({python}): {why}");
            None
        }
    }
}

#[test]
fn tensorboard_reads_back_the_fold_logs() {
    let ws = workspace();
    let d = ws.path();
    // 2 folds, 2 epochs of 4 steps, validated every 3 steps and at the end; clipping on (the
    // gradient norm is logged).
    let tiny = sets(&[
        "split.folds=2",
        "prepare.vocab_size=600",
        "model.hidden_size=32",
        "model.num_hidden_layers=1",
        "model.intermediate_size=64",
        "train.epochs=2",
        "train.batch_size=32",
        "train.learning_rate=1e-3",
        "train.eval_every=3",
        "train.max_grad_norm=1.0",
    ]);
    for stage in ["prepare", "split"] {
        ok_with(d, &["run", stage, "-q"], &tiny);
    }
    ok_with(d, &["run", "train", "-q", "--fold", "1"], &tiny);
    let fold = d.join("outputs/sample/train/fold-1");
    let Some(tb) = tensorboard_read(&d.join("outputs/sample/tb/fold-1")) else {
        return;
    };
    let series = |tag: &str| -> Vec<(i64, f64)> {
        tb.get(tag)
            .unwrap_or_else(|| panic!("no {tag} in {:?}", tb.keys()))
            .clone()
    };
    let lines: Vec<Value> = std::fs::read_to_string(fold.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 2, "{lines:?}");
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-6 * b.abs().max(1.0);
    // Validations: one point per metrics.jsonl line, same step and value (stored as f32).
    for (tag, key) in [
        ("eval/loss", "loss"),
        ("eval/exact_match", "exact_match"),
        ("eval/f1", "f1"),
        ("eval/start_acc", "start_acc"),
        ("eval/end_acc", "end_acc"),
    ] {
        let got = series(tag);
        assert_eq!(got.len(), lines.len(), "{tag}");
        for ((step, v), l) in got.iter().zip(&lines) {
            assert_eq!(*step, l["step"].as_i64().unwrap(), "{tag}");
            let want = l[key].as_f64().unwrap() as f32 as f64;
            assert!(close(*v, want), "{tag} at {step}: {v} vs {want}");
        }
    }
    // Training: one point per optimizer step, 1..=last; the mean loss of the steps since the
    // previous validation is that validation's train_loss; the learning rate at a validation
    // step is its lr.
    let loss = series("train/loss");
    let last = lines.last().unwrap()["step"].as_i64().unwrap();
    let steps: Vec<i64> = loss.iter().map(|p| p.0).collect();
    assert_eq!(steps, (1..=last).collect::<Vec<_>>());
    let lr: BTreeMap<i64, f64> = series("train/learning_rate").into_iter().collect();
    let norms = series("train/grad_norm");
    assert_eq!(norms.len(), loss.len());
    assert!(norms.iter().all(|(_, n)| n.is_finite() && *n > 0.0));
    let mut from = 0;
    for l in &lines {
        let step = l["step"].as_i64().unwrap();
        let window: Vec<f64> = loss
            .iter()
            .filter(|(s, _)| *s > from && *s <= step)
            .map(|p| p.1)
            .collect();
        let mean = window.iter().sum::<f64>() / window.len() as f64;
        let want = l["train_loss"].as_f64().unwrap();
        assert!(
            (mean - want).abs() <= 1e-5 * want.abs().max(1.0),
            "train loss {from}..{step}: {mean} vs {want}"
        );
        let want_lr = l["lr"].as_f64().unwrap() as f32 as f64;
        assert!(
            close(lr[&step], want_lr),
            "lr at {step}: {} vs {want_lr}",
            lr[&step]
        );
        from = step;
    }
}
