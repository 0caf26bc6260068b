//! `pipeline run all --launcher slurm` against a real Slurm (the single-node cluster of
//! `tools/slurm-local.sh`, which `.ci/run` starts): the same predictions as a local run; a fold
//! task cancelled mid-training and resubmitted, or requeued by Slurm, ends the same; a failing
//! fold gives a failed status and no submission; a sweep submits its variants. Skips with a message where no Slurm answers, unless
//! `PIPELINE_REQUIRE_SLURM` is set (CI), where that fails.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// The tiny sample run, 3 epochs (a fold trains for a few seconds), checkpointed every 5 steps.
fn tiny() -> Vec<String> {
    sets(&[
        "split.folds=2",
        "prepare.vocab_size=600",
        "model.hidden_size=32",
        "model.num_hidden_layers=1",
        "model.intermediate_size=64",
        "train.epochs=3",
        "train.batch_size=32",
        "train.learning_rate=1e-3",
        "train.eval_every=5",
    ])
}

fn slurm_answers() -> bool {
    let up = Command::new("sinfo")
        .args(["-h", "-o", "%t"])
        .output()
        .is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .any(|l| ["idle", "mix", "alloc"].contains(&l.trim()))
        });
    if !up {
        assert!(
            std::env::var_os("PIPELINE_REQUIRE_SLURM").is_none(),
            "no Slurm answers (sinfo), and PIPELINE_REQUIRE_SLURM is set"
        );
        eprintln!("skipped: no Slurm answers (start one: eval \"$(tools/slurm-local.sh start)\")");
    }
    up
}

/// The job ids `run all --launcher slurm` printed.
fn submitted(out: &str) -> Vec<String> {
    let line = out
        .lines()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no job ids in:\n{out}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    ["prepare", "folds", "finish"]
        .iter()
        .filter_map(|k| v[k].as_str().map(String::from))
        .collect()
}

fn queued(ids: &[String]) -> String {
    let o = Command::new("squeue")
        .args(["-h", "-o", "%i %T", "-j", &ids.join(",")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Waits (up to 5 minutes) until none of `ids` is queued or running.
fn wait_done(ids: &[String]) {
    let start = Instant::now();
    loop {
        let q = queued(ids);
        if q.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(300),
            "jobs still queued after 5 minutes: {q}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Waits (up to 4 minutes) until fold 0 of the sample run in `d` has saved a checkpoint.
fn wait_for_checkpoint(d: &Path) {
    let state = d.join("outputs/sample/train/fold-0/last/trainer_state.json");
    let start = Instant::now();
    while !state.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(240),
            "fold 0 never checkpointed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn slurm_runs_match_local_runs_resume_after_scancel_and_report_failed_folds() {
    if !slurm_answers() {
        return;
    }
    let args = tiny();
    let preds = "outputs/sample/submit/predictions.json";

    // The reference: a local run.
    let local = workspace();
    let t = Instant::now();
    ok_with(local.path(), &["run", "all", "-q"], &args);
    let local_s = t.elapsed().as_secs_f64();

    // 1. Submitted to Slurm: three jobs; the same predictions, byte for byte.
    let ws = workspace();
    let d = ws.path();
    let t = Instant::now();
    let out = ok_with(d, &["run", "all", "--launcher", "slurm"], &args);
    let ids = submitted(&out);
    assert_eq!(ids.len(), 3, "{out}");
    for s in ["prepare.sh", "folds.sh", "finish.sh"] {
        let text = std::fs::read_to_string(d.join("outputs/sample/slurm").join(s)).unwrap();
        assert!(text.starts_with("#!/bin/bash\n"), "{text}");
    }
    wait_done(&ids);
    let slurm_s = t.elapsed().as_secs_f64();
    eprintln!("wall time: local run all {local_s:.1} s, --launcher slurm {slurm_s:.1} s");
    assert_eq!(read(&local.path().join(preds)), read(&d.join(preds)));
    let status = ok_with(d, &["status"], &args);
    assert!(status.contains("fold 1: job "), "{status}");
    assert_eq!(status.matches(": COMPLETED").count(), 4, "{status}");
    assert!(status.contains("train fold 0: done"), "{status}");
    // Nothing left: nothing is submitted.
    let again = ok_with(d, &["run", "all", "--launcher", "slurm"], &args);
    assert!(again.contains("nothing to submit"), "{again}");

    // 2. Fold 0's task cancelled after its first checkpoint, then resubmitted: only fold 0
    //    and the last job go, fold 0 resumes, and the predictions are the local run's.
    let ws2 = workspace();
    let d2 = ws2.path();
    let out = ok_with(d2, &["run", "all", "--launcher", "slurm"], &args);
    let ids = submitted(&out);
    let array = &ids[1];
    wait_for_checkpoint(d2);
    // While the fold tasks hold the run, a local writer is refused.
    let busy = fails(
        d2,
        &[&["run", "train", "--fold", "0"][..], &strs(&args)].concat(),
    );
    assert!(busy.contains("is being written by"), "{busy}");
    let cancel = Command::new("scancel")
        .arg(format!("{array}_0"))
        .status()
        .unwrap();
    assert!(cancel.success());
    wait_done(&ids);
    assert!(
        !d2.join("outputs/sample/train/fold-0/manifest.json")
            .exists()
            || !d2
                .join("outputs/sample/predict/fold-0/manifest.json")
                .exists(),
        "fold 0 finished before it was cancelled: the test proves nothing"
    );
    assert!(!d2.join(preds).exists());
    let status = ok_with(d2, &["status"], &args);
    assert!(
        status.contains(&format!("fold 0: job {array}_0: ")),
        "{status}"
    );
    assert!(status.contains("NOT RUN"), "{status}");
    let out = ok_with(d2, &["run", "all", "--launcher", "slurm"], &args);
    let ids = submitted(&out);
    assert_eq!(ids.len(), 2, "only the fold array and the last job: {out}");
    assert!(out.contains("\"fold_list\":[0]"), "{out}");
    wait_done(&ids);
    let log = std::fs::read_dir(d2.join("outputs/sample/slurm/logs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().contains(&format!("-fold-{}_0", ids[0])))
        .expect("the resubmitted fold's log");
    let log = std::fs::read_to_string(log).unwrap();
    assert!(log.contains("resuming at step"), "{log}");
    assert_eq!(read(&local.path().join(preds)), read(&d2.join(preds)));

    // 3. Fold 0's task requeued (as on preemption) after its first checkpoint: Slurm starts it
    //    again by itself, it resumes the fold, and the run ends with the local predictions.
    let ws4 = workspace();
    let d4 = ws4.path();
    let out = ok_with(d4, &["run", "all", "--launcher", "slurm"], &args);
    let ids = submitted(&out);
    wait_for_checkpoint(d4);
    let requeue = Command::new("scontrol")
        .args(["requeue", &format!("{}_0", ids[1])])
        .status()
        .unwrap();
    assert!(requeue.success());
    // Slurm holds a requeued job back for two minutes (its begin time); once it is pending
    // for that, start it now.
    let task = format!("{}_0", ids[1]);
    let start = Instant::now();
    loop {
        let o = Command::new("squeue")
            .args(["-h", "-o", "%T %r", "-j", &task])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&o.stdout).contains("PENDING BeginTime") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{task} never pending"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let now = Command::new("scontrol")
        .args(["update", &format!("jobid={task}"), "StartTime=now"])
        .status()
        .unwrap();
    assert!(now.success());
    wait_done(&ids);
    let log = d4.join(format!(
        "outputs/sample/slurm/logs/pipeline-sample-fold-{}_0.out",
        ids[1]
    ));
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("DUE TO JOB REQUEUE"), "{log}");
    assert!(log.contains("resuming at step"), "{log}");
    assert_eq!(read(&local.path().join(preds)), read(&d4.join(preds)));

    // 4. Folds that fail (stopped after step 3 as a crash would): their tasks exit non-zero,
    //    the last job never runs, `status` names the failure and the log, no submission.
    let ws3 = workspace();
    let d3 = ws3.path();
    let o = Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .args([&["run", "all", "--launcher", "slurm"][..], &strs(&args)].concat())
        .env("PIPELINE_INTERRUPT_AFTER_STEP", "3")
        .current_dir(d3)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let ids = submitted(&text(&o));
    wait_done(&ids);
    let status = ok_with(d3, &["status"], &args);
    assert!(status.contains("FAILED: error: train fold"), "{status}");
    assert!(status.contains(".out)"), "names the log: {status}");
    assert!(
        status.contains("NOT RUN: fold(s) [0, 1] failed"),
        "{status}"
    );
    assert!(!d3.join(preds).exists());
    assert!(!d3.join("outputs/sample/submit/manifest.json").exists());
}

/// A sweep with the Slurm launcher submits each variant's folds and returns; run again once
/// they are done, it writes the comparison.
#[test]
fn a_sweep_submits_its_variants_to_slurm() {
    if !slurm_answers() {
        return;
    }
    let ws = workspace();
    let d = ws.path();
    let mut args = sets(SWEEP_TINY);
    args.extend(sets(&["launcher.kind=slurm"]));
    args.extend(["--grid".to_string(), "model.head=linear,cnn".to_string()]);
    let out = ok_with(d, &["sweep"], &args);
    assert!(out.contains("2 variant(s) submitted to Slurm"), "{out}");
    assert!(!d.join("outputs/sweep/comparison.csv").exists());
    let ids: Vec<String> = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .flat_map(submitted)
        .collect();
    assert_eq!(
        ids.len(),
        4,
        "a fold array and a last job per variant: {out}"
    );
    wait_done(&ids);
    let out = ok_with(d, &["sweep"], &args);
    assert!(!out.contains("submitted to Slurm"), "{out}");
    let csv = std::fs::read_to_string(d.join("outputs/sweep/comparison.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}
