//! `pipeline run all` end to end on the shipped sample with a tiny model (CPU), resume after an
//! interruption, and status per fold.

mod common;

use std::path::Path;

use common::*;
use serde_json::Value;

/// A tiny, fast version of the embedded default: 2 folds, a 1-layer model, short windows.
const TINY: &[&str] = &[
    "--set",
    "split.folds=2",
    "--set",
    "prepare.vocab_size=600",
    "--set",
    "model.hidden_size=32",
    "--set",
    "model.num_hidden_layers=1",
    "--set",
    "model.intermediate_size=64",
    "--set",
    "train.epochs=2",
    "--set",
    "train.batch_size=32",
    "--set",
    "train.learning_rate=1e-3",
    "--set",
    "train.eval_every=5",
];

fn args<'a>(head: &[&'a str]) -> Vec<&'a str> {
    head.iter().chain(TINY).copied().collect()
}

fn json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap()
}

#[test]
fn run_all_produces_scores_and_a_submission() {
    let ws = workspace();
    let d = ws.path();
    let out = ok(d, &args(&["run", "all"]));
    assert!(out.contains("done: submission"), "{out}");
    let run = d.join("outputs/sample");
    for f in [
        "train/fold-0/best/model.safetensors",
        "train/fold-1/best/config.json",
        "train/fold-0/last/optimizer.json",
        "train/fold-0/metrics.jsonl",
        "predict/fold-1/test_logits.safetensors",
        "predict/fold-0/oof_logits.safetensors",
        "ensemble/test_logits.safetensors",
        "evaluate/metrics.json",
        "evaluate/report.md",
        "submit/predictions.json",
        "submit/nbest_predictions.json",
        "submit/submission.csv",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    // Validation loss falls during training.
    let lines: Vec<Value> = std::fs::read_to_string(run.join("train/fold-0/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.len() >= 2);
    let first = lines[0]["loss"].as_f64().unwrap();
    let last = lines.last().unwrap()["loss"].as_f64().unwrap();
    assert!(
        last < first,
        "validation loss did not fall: {first} -> {last}"
    );
    // Every test question is answered, in UTF-8 (not ASCII-escaped).
    let preds = json(&run.join("submit/predictions.json"));
    assert_eq!(preds.as_object().unwrap().len(), 76);
    let raw = std::fs::read_to_string(run.join("submit/predictions.json")).unwrap();
    assert!(!raw.contains("\\u"), "predictions are ASCII-escaped");
    let csv = std::fs::read_to_string(run.join("submit/submission.csv")).unwrap();
    assert!(csv.starts_with("id,answer\n"));
    for id in preds.as_object().unwrap().keys() {
        assert!(
            csv.contains(&format!("\n{id},")),
            "{id} missing from submission.csv"
        );
    }
    let m = json(&run.join("evaluate/metrics.json"));
    assert_eq!(m["oof"]["total"], 318);
    assert_eq!(m["test"]["ensemble"]["total"], 76);
    assert_eq!(m["folds"].as_array().unwrap().len(), 2);
    report_has_curves_and_scores(&run, &m);
    // A finished run is up to date, and the ensemble averaged exactly the folds' test logits.
    let again = ok(d, &args(&["run", "all"]));
    assert!(again.contains("train: up to date, skipped"), "{again}");
    let status = ok(d, &args(&["status"]));
    assert!(status.contains("train fold 1: done, best F1"), "{status}");

    // Hard voting reruns only ensemble, evaluate and submit: one vote per fold and question,
    // the prediction is the top of the tally.
    let mut hv = args(&["run", "all"]);
    hv.extend(["--set", "ensemble.method=hard_vote"]);
    let out = ok(d, &hv);
    assert!(out.contains("predict: up to date, skipped"), "{out}");
    let votes = json(&run.join("ensemble/votes.json"));
    let preds = json(&run.join("submit/predictions.json"));
    assert_eq!(votes.as_object().unwrap().len(), 76);
    for (id, tally) in votes.as_object().unwrap() {
        let tally = tally.as_array().unwrap();
        let n: u64 = tally.iter().map(|v| v["votes"].as_u64().unwrap()).sum();
        assert_eq!(n, 2, "{id}: one vote per fold");
        assert!(tally
            .windows(2)
            .all(|w| w[0]["votes"].as_u64() >= w[1]["votes"].as_u64()));
        assert_eq!(preds[id], tally[0]["text"], "{id}");
    }
    let m = json(&run.join("evaluate/metrics.json"));
    assert_eq!(m["test"]["ensemble"]["total"], 76);
}

/// A fold's TensorBoard scalars as (step, tag, value), sorted.
fn tb_scalars(dir: &Path) -> Vec<(i64, String, f32)> {
    let mut v: Vec<_> = pipeline::tensorboard::read_scalars(dir)
        .unwrap()
        .into_iter()
        .map(|s| (s.step, s.tag, s.value))
        .collect();
    v.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    assert!(v.iter().any(|s| s.1 == "train/loss"), "{v:?}");
    assert!(v.iter().any(|s| s.1 == "eval/f1"), "{v:?}");
    // One value per (step, tag).
    assert!(v.windows(2).all(|w| (w[0].0, &w[0].1) != (w[1].0, &w[1].1)));
    v
}

/// `report.html` (beside the stages, and the same in `evaluate/`) parses; each fold has a
/// loss chart (training loss per step, validation loss per validation, the best checkpoint)
/// and a score chart (F1, EM, the best checkpoint); the table has the folds', the pooled
/// out-of-fold and the test rows with `metrics.json`'s numbers.
fn report_has_curves_and_scores(run: &Path, m: &Value) {
    let page = run.join("report.html");
    assert_eq!(
        std::fs::read(&page).unwrap(),
        std::fs::read(run.join("evaluate/report.html")).unwrap()
    );
    let (plots, tables) = read_report(&page);
    assert_eq!(plots.len(), 4, "{:?}", plots.keys());
    for k in 0..2 {
        let fold = run.join(format!("train/fold-{k}"));
        let evals = metrics_column(&fold, "step");
        let last_step = *evals.last().unwrap() as usize;
        let loss = &plots[&format!("fold-{k}-loss")];
        assert_eq!(loss.lines, vec![last_step, evals.len()], "fold {k} loss");
        assert_eq!(loss.dots, 1, "fold {k}: the best checkpoint");
        assert!(
            loss.texts.iter().any(|t| t == "train loss"),
            "{:?}",
            loss.texts
        );
        let score = &plots[&format!("fold-{k}-score")];
        assert_eq!(
            score.lines,
            vec![evals.len(), evals.len()],
            "fold {k} score"
        );
        assert_eq!(score.dots, 1);
    }
    let rows = &tables[0];
    assert_eq!(rows.len(), 1 + 2 + 1 + 2, "{rows:?}");
    let f1 = |i: usize| rows[i][3].parse::<f64>().unwrap();
    assert!((f1(3) - m["oof"]["f1"].as_f64().unwrap()).abs() < 0.006);
    assert!((f1(4) - m["test"]["ensemble"]["f1"].as_f64().unwrap()).abs() < 0.006);
    assert!(
        (f1(1) - m["folds"][0]["best"]["f1"].as_f64().unwrap()).abs() < 0.006,
        "{rows:?}"
    );
}

fn weights(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap()
}

/// A workspace with the sample prepared and split (the tiny settings), ready to train.
fn split_workspace() -> tempfile::TempDir {
    let ws = workspace();
    ok(ws.path(), &args(&["run", "prepare", "-q"]));
    ok(ws.path(), &args(&["run", "split", "-q"]));
    ws
}

/// `model.head = "cnn"` trains a fold whose best checkpoint says `qa_head = "cnn"` and
/// reloads in `infer --head cnn` with its trained head.
#[test]
fn the_cnn_head_trains_exports_and_infers() {
    let ws = split_workspace();
    let d = ws.path();
    let mut a = args(&["run", "train", "-q", "--fold", "0"]);
    a.extend([
        "--set",
        "model.head=cnn",
        "--set",
        "model.cnn_kernel_sizes=[3, 5]",
    ]);
    ok(d, &a);
    let best = d.join("outputs/sample/train/fold-0/best");
    let config = json(&best.join("config.json"));
    assert_eq!(config["qa_head"], "cnn");
    assert_eq!(config["cnn_kernel_sizes"], serde_json::json!([3, 5]));
    let out = d.join("infer-out");
    let o = pipeline(
        d,
        &[
            "infer",
            "--model",
            best.to_str().unwrap(),
            "--data",
            "data/sample/test.json",
            "--out",
            out.to_str().unwrap(),
            "--head",
            "cnn",
            "--max-seq-length",
            "128",
            "--doc-stride",
            "32",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains("initialised at random"), "{}", text(&o));
    assert!(out.join("predictions.json").exists());
}

#[test]
fn an_interrupted_fold_resumes_to_the_same_weights() {
    // Uninterrupted reference.
    let ws = split_workspace();
    let d = ws.path();
    ok(d, &args(&["run", "train", "-q", "--fold", "0"]));
    let fold0 = d.join("outputs/sample/train/fold-0");
    let reference = weights(&fold0.join("last/model.safetensors"));
    let reference_best = weights(&fold0.join("best/model.safetensors"));

    // Same run, interrupted after step 7 (past the checkpoint at step 5), then resumed.
    let ws2 = split_workspace();
    let d2 = ws2.path();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .args(args(&["run", "train", "-q", "--fold", "0"]))
        .env("PIPELINE_INTERRUPT_AFTER_STEP", "7")
        .current_dir(d2)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        text(&o).contains("interrupted after step 7"),
        "{}",
        text(&o)
    );
    let fold0b = d2.join("outputs/sample/train/fold-0");
    assert!(
        !fold0b.join("manifest.json").exists(),
        "an interrupted fold must not be done"
    );
    let status = ok(d2, &args(&["status"]));
    assert!(
        status.contains("train fold 0: resumable from step 7"),
        "{status}"
    );
    let out = ok(d2, &args(&["run", "train", "--fold", "0"]));
    assert!(out.contains("resuming at step 7"), "{out}");
    assert_eq!(
        reference,
        weights(&fold0b.join("last/model.safetensors")),
        "resumed weights differ from the uninterrupted run"
    );
    assert_eq!(
        reference_best,
        weights(&fold0b.join("best/model.safetensors"))
    );
    // The TensorBoard logs hold each (tag, step) once, with the uninterrupted run's values.
    assert_eq!(
        tb_scalars(&d.join("outputs/sample/tb/fold-0")),
        tb_scalars(&d2.join("outputs/sample/tb/fold-0")),
        "resumed TensorBoard scalars differ from the uninterrupted run's"
    );
    // Fold 1 was never trained: train as a whole is not done.
    let status = ok(d2, &args(&["status"]));
    assert!(status.contains("train fold 0: done"), "{status}");
    assert!(status.contains("train fold 1: missing"), "{status}");

    // AdamW's multi-tensor step (CUDA's default), interrupted and resumed the same way, gives
    // the per-tensor step's weights bit for bit.
    let ws3 = split_workspace();
    let d3 = ws3.path();
    let multi = |extra: Option<&str>| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_pipeline"));
        c.args(args(&["run", "train", "-q", "--fold", "0"]))
            .env("PIPELINE_MULTI_TENSOR", "1")
            .current_dir(d3);
        if let Some(n) = extra {
            c.env("PIPELINE_INTERRUPT_AFTER_STEP", n);
        }
        c.output().unwrap()
    };
    assert!(!multi(Some("7")).status.success());
    let o = multi(None);
    assert!(o.status.success(), "{}", text(&o));
    let fold0c = d3.join("outputs/sample/train/fold-0");
    assert_eq!(
        reference,
        weights(&fold0c.join("last/model.safetensors")),
        "multi-tensor AdamW weights differ"
    );
}

#[test]
fn cuda_training_without_a_gpu_fails_cleanly() {
    let ws = split_workspace();
    let d = ws.path();
    let o = pipeline(
        d,
        &args(&[
            "run",
            "train",
            "-q",
            "--fold",
            "0",
            "--set",
            "train.device=cuda",
        ]),
    );
    if o.status.success() {
        return; // a working GPU: nothing to check here
    }
    let t = text(&o);
    assert!(t.contains("--device cpu") && !t.contains("panicked"), "{t}");
    // `run all` checks the device's memory before `prepare`: still one clean line.
    let o = pipeline(
        d,
        &args(&["run", "all", "-q", "--set", "train.device=cuda"]),
    );
    let t = text(&o);
    assert!(!o.status.success() && t.contains("--device cpu"), "{t}");
    assert!(
        !t.contains("panicked") && t.trim().lines().count() == 1,
        "{t}"
    );
}

/// The KorQuAD recipe (configs/korquad-tiny.toml) shortened for CI: a subset, 2 folds, 1 epoch,
/// tiny sizes; skipped where ../shared is absent.
#[test]
fn korquad_subset_runs_end_to_end_and_learns() {
    let Some((ws, mut a)) = korquad_workspace() else {
        return;
    };
    let d = ws.path();
    a.extend(sets(&[
        "data.max_train_samples=400",
        "split.folds=2",
        "prepare.vocab_size=1500",
        "prepare.max_seq_length=128",
        "prepare.doc_stride=32",
        "model.hidden_size=32",
        "model.num_hidden_layers=1",
        "model.intermediate_size=64",
        "train.epochs=1",
        "train.eval_every=6",
        "train.learning_rate=1e-3",
    ]));
    let out = ok_with(d, &["run", "all"], &a);
    assert!(out.contains("done: submission"), "{out}");
    let r = d.join("outputs/korquad-tiny");
    let m = json(&r.join("evaluate/metrics.json"));
    assert!(m["test"]["ensemble"]["total"].as_u64().unwrap() > 0, "{m}");
    let lines: Vec<Value> = std::fs::read_to_string(r.join("train/fold-1/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (first, last) = (&lines[0]["loss"], &lines.last().unwrap()["loss"]);
    assert!(
        last.as_f64() < first.as_f64(),
        "validation loss did not fall: {first} -> {last}"
    );
    assert!(ok_with(d, &["status"], &a).contains("submit    done"));
}

#[test]
fn drop_last_trains_only_full_batches_and_half_precision_needs_cuda() {
    let ws = split_workspace();
    let d = ws.path();
    // After TINY, so these win over its batch size.
    let mut a = args(&["run", "train", "--fold", "0"]);
    a.extend([
        "--set",
        "train.drop_last=true",
        "--set",
        "train.batch_size=25",
    ]);
    let out = ok(d, &a);
    // "train fold 0: N training windows, M validation windows, S steps (W warmup), ..."
    let line = out
        .lines()
        .find(|l| l.contains("training windows"))
        .unwrap_or_else(|| panic!("{out}"));
    let n: usize = line
        .split_whitespace()
        .nth(3)
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| panic!("{line}"));
    let steps = 2 * (n / 25); // train.epochs = 2 (TINY)
    assert_ne!(
        n % 25,
        0,
        "{n} windows: the fold should leave a partial batch"
    );
    assert!(line.contains(&format!(" {steps} steps")), "{line}");
    let metrics =
        std::fs::read_to_string(d.join("outputs/sample/train/fold-0/metrics.jsonl")).unwrap();
    let last: Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    assert_eq!(last["step"].as_u64().unwrap() as usize, steps);

    let err = fails(d, &args(&["run", "train", "--set", "train.precision=bf16"]));
    assert!(
        err.contains("train.precision") && err.contains("cuda"),
        "{err}"
    );
    let err = fails(d, &args(&["run", "train", "--set", "train.precision=f8"]));
    assert!(err.contains("precision"), "{err}");
}

/// `train.precision = "bf16-mixed"` / `"f16-mixed"` (autocast: f32 weights, bf16 / f16 matrix
/// products; f16 with dynamic loss scaling) run on the CPU backend too: the same fold trains to
/// validation losses within 1% (bf16) / 3% (f16) of f32's, not the same bits (the products
/// really were rounded), and the checkpoint is still f32. f16-mixed reports its loss scale and
/// skipped steps.
#[test]
fn mixed_precision_trains_close_to_f32_with_f32_checkpoints() {
    let ws = split_workspace();
    let d = ws.path();
    let fold = d.join("outputs/sample/train/fold-0");
    let column = |key: &str| metrics_column(&fold, key);
    let losses = || column("loss");
    ok(d, &args(&["run", "train", "--fold", "0", "-q"]));
    let f32_losses = losses();
    let (f32_lrs, steps) = (column("lr"), column("step"));
    for precision in ["bf16-mixed", "f16-mixed"] {
        let mut a = args(&["run", "train", "--fold", "0", "-q"]);
        let set = format!("train.precision={precision}");
        a.extend(["--set", &set]);
        ok(d, &a);
        let mixed = losses();
        assert_eq!(mixed.len(), f32_losses.len());
        assert_ne!(mixed, f32_losses, "{precision}: autocast changed nothing");
        // f16-mixed skips the steps whose scaled gradients overflow (as GradScaler does),
        // which a run this short feels: 3% there, 1% for bf16.
        let tol = if precision == "f16-mixed" { 0.03 } else { 0.01 };
        for (m, f) in mixed.iter().zip(&f32_losses) {
            assert!((m - f).abs() <= tol * f, "{precision} {m} vs f32 {f}");
        }
        let bytes = std::fs::read(fold.join("best/model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (name, t) in st.tensors() {
            assert_eq!(t.dtype(), safetensors::Dtype::F32, "{precision}: {name}");
        }
        let manifest: Value =
            serde_json::from_slice(&std::fs::read(fold.join("manifest.json")).unwrap()).unwrap();
        let summary = &manifest["summary"];
        if precision == "f16-mixed" {
            // Halved once per skipped step from GradScaler's 2^16 (no growth before 2000 steps).
            let skipped = summary["skipped_steps"].as_u64().unwrap();
            let scale = summary["loss_scale"].as_f64().unwrap();
            assert_eq!(scale, 65536.0 / 2f64.powi(skipped as i32), "{summary}");
            assert!(
                skipped < summary["steps"].as_u64().unwrap() / 4,
                "{summary}"
            );
            // Skipped steps do not advance the schedule (as in HF Trainer): at the last
            // validation, past the warm-up where the linear decay loses `slope` per step, the
            // learning rate is `skipped` steps' worth higher than f32's at the same step.
            assert!(skipped > 0, "no step overflowed: this run tests nothing");
            let n = f32_lrs.len();
            let slope = (f32_lrs[n - 2] - f32_lrs[n - 1]) / (steps[n - 1] - steps[n - 2]);
            let (lr, want) = (column("lr")[n - 1], f32_lrs[n - 1] + skipped as f64 * slope);
            assert!((lr - want).abs() < 1e-12, "last lr {lr}, want {want}");
        } else {
            assert!(summary["loss_scale"].is_null(), "{summary}");
            assert_eq!(summary["skipped_steps"].as_u64(), Some(0));
        }
    }
}

#[test]
fn parallel_folds_train_in_processes_to_the_same_weights() {
    let ws = split_workspace();
    let d = ws.path();
    let mut a = args(&["run", "train"]);
    a.extend(["--set", "train.parallel_folds=2"]);
    let out = ok(d, &a);
    assert!(out.contains("2 at a time in separate processes"), "{out}");
    // Plain progress lines from the fold processes, no bars.
    assert!(out.contains("fold 1 step"), "{out}");
    // Same settings hash as one-by-one training: nothing to redo.
    let status = ok(d, &args(&["status"]));
    assert!(status.contains("train     done"), "{status}");

    let ws2 = split_workspace();
    let d2 = ws2.path();
    ok(d2, &args(&["run", "train", "-q"]));
    for k in 0..2 {
        let f = format!("outputs/sample/train/fold-{k}/last/model.safetensors");
        assert_eq!(
            weights(&d.join(&f)),
            weights(&d2.join(&f)),
            "fold {k}: parallel and one-by-one training differ"
        );
    }
    // A failing fold process fails the stage with a clear line.
    let mut bad = args(&["run", "train", "--force"]);
    bad.extend([
        "--set",
        "train.parallel_folds=2",
        "--set",
        "train.device=cuda",
    ]);
    let o = pipeline(d, &bad);
    if !o.status.success() {
        let t = text(&o);
        assert!(t.contains("fold(s) [0, 1] failed"), "{t}");
    }
}

/// `train.devices`: one fold worker per device at a time, for train and predict, pinned to its
/// device (CPU "devices" here, through the code path GPUs take); the weights and logits equal
/// one-by-one runs', and the stage hashes do not depend on the devices.
#[test]
fn folds_spread_over_devices_to_the_same_results() {
    let ws = split_workspace();
    let d = ws.path();
    // Three devices for two folds: two workers (issue 24 §6: it said "3 at a time").
    let devices = ["--set", r#"train.devices=["cpu", "cpu", "cpu"]"#];
    let mut a = args(&["run", "train"]);
    a.extend(devices);
    let out = ok(d, &a);
    assert!(
        out.contains("train: folds [0, 1], 2 at a time in separate processes on [cpu, cpu]"),
        "{out}"
    );
    assert!(out.contains("train fold 1: worker on cpu"), "{out}");
    let mut a = args(&["run", "predict"]);
    a.extend(devices);
    let out = ok(d, &a);
    assert!(out.contains("predict: folds [0, 1], 2 at a time"), "{out}");
    // Done under the settings without devices too.
    let status = ok(d, &args(&["status"]));
    assert!(status.contains("train     done"), "{status}");
    assert!(status.contains("predict   done"), "{status}");

    let ws2 = split_workspace();
    let d2 = ws2.path();
    ok(d2, &args(&["run", "train", "-q"]));
    ok(d2, &args(&["run", "predict", "-q"]));
    for k in 0..2 {
        for f in [
            format!("outputs/sample/train/fold-{k}/last/model.safetensors"),
            format!("outputs/sample/predict/fold-{k}/oof_logits.safetensors"),
            format!("outputs/sample/predict/fold-{k}/test_logits.safetensors"),
        ] {
            assert_eq!(weights(&d.join(&f)), weights(&d2.join(&f)), "{f} differs");
        }
    }
    // Mixed kinds are refused; "cuda:all" without a GPU says so in one line.
    let mut a = args(&["status"]);
    a.extend(["--set", r#"train.devices=["cpu", "cuda:0"]"#]);
    let err = fails(d, &a);
    assert!(err.contains("train.devices mixes kinds"), "{err}");
    let mut a = args(&["run", "train", "--force"]);
    a.extend(["--set", "train.devices=cuda:all"]);
    let o = pipeline(d, &a);
    if !o.status.success() {
        let t = text(&o);
        assert!(
            t.trim().lines().count() <= 2 && t.contains("train.devices = \"cuda:all\""),
            "{t}"
        );
    }
}

/// A diverging run (a learning rate of 1e30) stops at the first non-finite loss with one line
/// naming the step, exits non-zero, and leaves the fold missing, never done.
#[test]
fn a_diverging_loss_stops_training_with_a_clear_error() {
    let ws = split_workspace();
    let d = ws.path();
    // after TINY, whose learning rate it replaces
    let diverge = ["--set", "train.learning_rate=1e30"];
    let mut train = args(&["run", "train", "-q", "--fold", "0"]);
    train.extend(diverge);
    let o = pipeline(d, &train);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(
        t.contains("train fold 0: the loss became NaN at step ")
            && t.contains("no checkpoint was saved before it")
            && !t.contains("panicked"),
        "{t}"
    );
    assert_eq!(t.trim().lines().count(), 1, "{t}");
    let mut status = args(&["status"]);
    status.extend(diverge);
    let status = text(&pipeline(d, &status));
    assert!(status.contains("train fold 0: missing"), "{status}");
}
