//! Running safely: one writer per run (a real second process, real `kill -9`), no non-finite
//! validation kept as best, state files that do not parse, and the last bad inputs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The sample at the size of `pipeline_e2e`'s tiny runs; `epochs` sets how long a fold trains.
fn tiny(head: &[&str], epochs: &str) -> Vec<String> {
    let mut v: Vec<String> = head.iter().map(|s| s.to_string()).collect();
    for kv in [
        "split.folds=2",
        "prepare.vocab_size=600",
        "model.hidden_size=32",
        "model.num_hidden_layers=1",
        "model.intermediate_size=64",
        "train.batch_size=32",
        "train.learning_rate=1e-3",
        "train.eval_every=5",
    ] {
        v.extend(["--set".to_string(), kv.to_string()]);
    }
    v.extend(["--set".to_string(), format!("train.epochs={epochs}")]);
    v
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn spawn(dir: &Path, args: &[String]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the pipeline binary starts")
}

/// Waits (up to 120 s) until `cond` holds.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pid written in a lock file, once there is one.
fn lock_pid(p: &Path) -> Option<u32> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// Whether a process runs (a zombie, dead but not yet reaped, does not).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// A workspace with the sample prepared and split at the tiny settings.
fn split_workspace() -> tempfile::TempDir {
    let ws = workspace();
    ok(ws.path(), &strs(&tiny(&["run", "prepare", "-q"], "2")));
    ok(ws.path(), &strs(&tiny(&["run", "split", "-q"], "2")));
    ws
}

fn read(p: PathBuf) -> Vec<u8> {
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Issue 13 §1: a second process on a live run is refused at once, with the holder's pid; the
/// first finishes as if alone; `status` never blocks. Then a `parallel_folds = 2` run killed
/// with SIGKILL leaves no worker alive, and its rerun gives the uninterrupted predictions.
#[test]
fn one_writer_per_run_and_no_orphan_workers() {
    let ws = workspace();
    let d = ws.path();
    let run = d.join("outputs/sample");
    let first = spawn(d, &tiny(&["run", "all", "-q"], "4"));
    wait_for("the run's lock", || lock_pid(&run.join(".lock")).is_some());
    let holder = lock_pid(&run.join(".lock")).unwrap();
    assert_eq!(holder, first.id());

    let mut second = tiny(&["run", "all"], "4");
    second.extend(["--set".into(), "train.seed=7".into()]);
    let err = fails(d, &strs(&second));
    assert!(
        err.contains(&format!("is being written by process {holder}"))
            && err.contains("outputs/sample"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // A single stage and a single fold are refused too; status answers meanwhile.
    let err = fails(d, &strs(&tiny(&["run", "train", "--fold", "1"], "4")));
    assert!(err.contains("being written by process"), "{err}");
    ok(d, &strs(&tiny(&["status"], "4")));

    let out = first.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let status = ok(d, &strs(&tiny(&["status"], "4")));
    assert!(
        !status.contains("stale") && !status.contains("missing"),
        "{status}"
    );
    let reference = read(run.join("ensemble/test_logits.safetensors"));
    let reference_preds = read(run.join("submit/predictions.json"));
    // The lock is released with the process: the next writer gets it.
    ok(d, &strs(&tiny(&["run", "all", "-q"], "4")));

    // parallel_folds = 2, killed once both workers have saved a checkpoint.
    let ws2 = workspace();
    let d2 = ws2.path();
    let run2 = d2.join("outputs/sample");
    let mut par = tiny(&["run", "all", "-q"], "4");
    par.extend(["--set".into(), "train.parallel_folds=2".into()]);
    let mut parent = spawn(d2, &par);
    let fold = |k: usize| run2.join(format!("train/fold-{k}"));
    wait_for("both fold workers' first checkpoint", || {
        (0..2).all(|k| fold(k).join("last/trainer_state.json").exists())
    });
    let workers: Vec<u32> = (0..2)
        .map(|k| lock_pid(&fold(k).join(".lock")).expect("a worker wrote its pid"))
        .collect();
    assert!(workers.iter().all(|&p| p != parent.id()));
    assert!(
        workers.iter().all(|&p| alive(p)),
        "the workers finished before the kill: train longer"
    );
    parent.kill().unwrap(); // SIGKILL
    parent.wait().unwrap();
    let killed = Instant::now();
    while workers.iter().any(|&p| alive(p)) {
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "fold workers {workers:?} outlived their killed parent"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        (0..2).all(|k| !fold(k).join("manifest.json").exists()),
        "a killed fold must not be done"
    );
    let status = ok(d2, &strs(&tiny(&["status"], "4")));
    assert!(status.contains("resumable from step"), "{status}");
    let rerun: Vec<String> = par.into_iter().filter(|a| a != "-q").collect();
    let out = ok(d2, &strs(&rerun));
    assert!(out.contains("resuming at step"), "{out}");
    assert!(out.contains("done: submission"), "{out}");
    assert_eq!(
        read(run2.join("ensemble/test_logits.safetensors")),
        reference,
        "the rerun after kill -9 differs from the uninterrupted run"
    );
    assert_eq!(read(run2.join("submit/predictions.json")), reference_preds);
}

/// Issue 13 §1: while a fold is locked (a worker still writing it), no second process trains it.
#[test]
fn a_locked_fold_is_not_trained_twice() {
    let ws = split_workspace();
    let d = ws.path();
    let lock = d.join("outputs/sample/train/fold-0/.lock");
    std::fs::create_dir_all(lock.parent().unwrap()).unwrap();
    let f = std::fs::File::create(&lock).unwrap();
    f.try_lock().unwrap();
    std::fs::write(&lock, "4242\n").unwrap();
    let err = fails(d, &strs(&tiny(&["run", "train", "-q"], "1")));
    assert!(
        err.contains("train fold 0") && err.contains("being written by process 4242"),
        "{err}"
    );
    assert!(!d.join("outputs/sample/train/fold-0/last").exists());
    drop(f);
    ok(d, &strs(&tiny(&["run", "train", "-q", "--fold", "0"], "1")));
}

/// Issue 13 §2: a validation whose loss is NaN is never best nor a checkpoint; training stops
/// with one line naming the step and the last finite checkpoint; a rerun with a sane learning
/// rate is not blocked by the failed one.
#[test]
fn a_non_finite_validation_is_never_kept() {
    let ws = split_workspace();
    let d = ws.path();
    let fold = d.join("outputs/sample/train/fold-0");
    let diverging = |extra: &[String]| {
        let mut a = tiny(&["run", "train", "-q", "--fold", "0"], "2");
        for kv in ["train.learning_rate=1e30", "train.eval_every=1"] {
            a.extend(["--set".into(), kv.into()]);
        }
        for kv in extra {
            a.extend(["--set".into(), kv.clone()]);
        }
        let err = fails(d, &strs(&a));
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        err
    };
    // Without warmup the first update already diverges: step 1's validation is NaN.
    for keep in ["f1", "loss"] {
        let err = diverging(&[
            "train.warmup_ratio=0".into(),
            format!("train.keep_best_by={keep}"),
        ]);
        assert!(
            err.contains("train fold 0: the validation loss became NaN at step 1")
                && err.contains("no checkpoint was saved before it"),
            "{err}"
        );
        assert!(!fold.join("best").exists(), "a NaN validation became best");
        assert!(!fold.join("last").exists(), "a NaN checkpoint was saved");
        assert!(!fold.join("manifest.json").exists());
    }
    // With the sample's warmup, step 1 is still finite and step 2 is not: the error names the
    // checkpoint of step 1, which stays best and resumable, with finite numbers.
    let err = diverging(&[]);
    assert!(
        err.contains("the validation loss became NaN at step 2")
            && err.contains(
                "the last finite checkpoint is outputs/sample/train/fold-0/last (step 1)"
            ),
        "{err}"
    );
    let state: serde_json::Value =
        serde_json::from_slice(&read(fold.join("last/trainer_state.json"))).unwrap();
    assert_eq!(state["step"], 1, "{state}");
    assert!(
        state["best"]["loss"].as_f64().is_some_and(f64::is_finite),
        "{state}"
    );
    assert!(
        state["history"].as_array().is_some_and(|h| h.len() == 1),
        "{state}"
    );
    assert!(fold.join("best/model.safetensors").exists());
    // Other settings afterwards: the fold starts over and finishes.
    let out = ok(d, &strs(&tiny(&["run", "train", "--fold", "0"], "2")));
    assert!(out.contains("settings changed, starting over"), "{out}");
    assert!(out.contains("train fold 0: best"), "{out}");
}

/// Issue 13 §3: a manifest that does not parse is stale (status names it) and the stage is
/// redone; a fold whose newest checkpoint does not read resumes from the one before it (or
/// from the start), to the uninterrupted weights.
#[test]
fn unreadable_state_files_are_redone_or_passed_over() {
    let ws = workspace();
    let d = ws.path();
    let run = d.join("outputs/sample");
    ok(d, &strs(&tiny(&["run", "all", "-q"], "2")));
    let reference = read(run.join("train/fold-0/last/model.safetensors"));
    let preds = read(run.join("submit/predictions.json"));

    let m = run.join("prepare/manifest.json");
    let bytes = read(m.clone());
    std::fs::write(&m, &bytes[..bytes.len() / 2]).unwrap();
    let status = ok(d, &strs(&tiny(&["status"], "2")));
    assert!(
        status.contains("prepare   stale (parsing") && status.contains("prepare/manifest.json"),
        "{status}"
    );
    let out = ok(d, &strs(&tiny(&["run", "all"], "2")));
    assert!(out.contains("prepare: running"), "{out}");
    // The same features again: nothing downstream is redone, the submission is unchanged.
    assert!(out.contains("train: up to date"), "{out}");
    assert_eq!(read(run.join("submit/predictions.json")), preds);

    // Interrupted after step 7: `last/` is step 7, `last.old/` step 5.
    let fold = run.join("train/fold-0");
    let interrupted = |args: &[String]| {
        let o = Command::new(env!("CARGO_BIN_EXE_pipeline"))
            .args(args)
            .env("PIPELINE_INTERRUPT_AFTER_STEP", "7")
            .current_dir(d)
            .output()
            .unwrap();
        assert!(
            text(&o).contains("interrupted after step 7"),
            "{}",
            text(&o)
        );
    };
    let train = tiny(&["run", "train", "--fold", "0", "--force"], "2");
    interrupted(&train);
    std::fs::write(fold.join("last/trainer_state.json"), "{\"step\": 7, ").unwrap();
    let status = ok(d, &strs(&tiny(&["status"], "2")));
    assert!(
        status.contains("train fold 0: resumable from step 5"),
        "{status}"
    );
    let resume = tiny(&["run", "train", "--fold", "0"], "2");
    let out = ok(d, &strs(&resume));
    assert!(
        out.contains("last/trainer_state.json") && out.contains("passed over"),
        "{out}"
    );
    assert!(
        out.contains("resuming at step 5 from") && out.contains("last.old"),
        "{out}"
    );
    assert_eq!(read(fold.join("last/model.safetensors")), reference);

    // Both unreadable: trains from the start, says so, same weights.
    interrupted(&train);
    std::fs::write(fold.join("last/optimizer.json"), "").unwrap();
    std::fs::write(fold.join("last.old/model.safetensors"), "not weights").unwrap();
    let out = ok(d, &strs(&resume));
    assert!(
        out.contains("no readable checkpoint, training from the start"),
        "{out}"
    );
    assert_eq!(read(fold.join("last/model.safetensors")), reference);

    // Issue 26 §1: a summary missing a field is a one-line error naming the manifest and the
    // field, not a 0 in the report.
    let m = run.join("train/fold-1/manifest.json");
    let mut v: serde_json::Value = serde_json::from_slice(&read(m.clone())).unwrap();
    let best = v["summary"]["best"]
        .as_object_mut()
        .expect("a best validation");
    assert!(best.remove("f1").is_some());
    std::fs::write(&m, serde_json::to_vec(&v).unwrap()).unwrap();
    let o = pipeline(d, &strs(&tiny(&["run", "evaluate", "--force", "-q"], "2")));
    let err = String::from_utf8_lossy(&o.stderr).trim().to_string();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        err.contains("train/fold-1/manifest.json")
            && err.contains("missing field `f1`")
            && err.lines().count() == 1,
        "{err}"
    );
    let status = ok(d, &strs(&tiny(&["status"], "2")));
    assert!(status.contains("missing field `f1`"), "{status}");
}

/// Issue 13 §4: windows too long for the model or the machine are refused before anything is
/// written; options a command ignores are errors.
#[test]
fn the_last_bad_inputs_are_one_line_errors() {
    let ws = workspace();
    let d = ws.path();
    let err = fails(d, &["run", "all", "--set", "prepare.max_seq_length=100000"]);
    assert!(
        err.contains("prepare.max_seq_length (100000) is over 4096"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // Within the limit, but a step that no machine here can hold: refused before `prepare`.
    let err = fails(
        d,
        &[
            "run",
            "all",
            "--set",
            "prepare.max_seq_length=4096",
            "--set",
            "train.batch_size=4096",
        ],
    );
    assert!(
        err.contains(
            "a training step at train.batch_size 4096 x prepare.max_seq_length 4096 needs at least"
        ),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!d.join("outputs/sample/prepare").exists(), "prepare ran");

    let err = fails(d, &["run", "ensemble", "--fold", "1"]);
    assert!(
        err.contains("--fold 1 applies to the per-fold stages"),
        "{err}"
    );
    let err = fails(d, &["run", "prepare", "--fold", "0"]);
    assert!(err.contains("not to `prepare`"), "{err}");

    // A run named like a number or a float: a string, as the setting is.
    let out = ok(d, &["status", "--set", "run.name=nan"]);
    assert!(out.contains("outputs/nan"), "{out}");
}

/// Issue 24 §2, §3, §6: a dropout out of [0, 1), a NaN or infinite number and a device that
/// does not exist are one-line settings errors (exit 1, no backtrace) before anything runs.
#[test]
fn out_of_range_settings_are_one_line_errors_before_anything_runs() {
    let ws = workspace();
    let d = ws.path();
    for (set, key, range) in [
        (
            "model.hidden_dropout_prob=1.5",
            "model.hidden_dropout_prob",
            "[0, 1)",
        ),
        (
            "model.attention_probs_dropout_prob=-0.5",
            "model.attention_probs_dropout_prob",
            "[0, 1)",
        ),
        ("model.rnn_dropout=1.5", "model.rnn_dropout", "[0, 1)"),
        (
            "model.hidden_dropout_prob=nan",
            "model.hidden_dropout_prob",
            "[0, 1)",
        ),
        ("train.learning_rate=inf", "train.learning_rate", "(0, inf)"),
        ("train.warmup_ratio=inf", "train.warmup_ratio", "[0, 1]"),
        ("train.label_smoothing=2", "train.label_smoothing", "[0, 1]"),
        ("train.adam_beta1=1.5", "train.adam_beta1", "[0, 1)"),
        ("train.max_grad_norm=nan", "train.max_grad_norm", "[0, inf)"),
        ("train.max_grad_norm=-1", "train.max_grad_norm", "[0, inf)"),
    ] {
        let o = pipeline(
            d,
            &["run", "all", "--set", set, "--set", "model.head=bilstm"],
        );
        let err = text(&o);
        assert_eq!(o.status.code(), Some(1), "{set}: {err}");
        assert!(err.contains(key) && err.contains(range), "{set}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{set}: {err}");
        assert!(!d.join("outputs/sample").exists(), "{set}: something ran");
    }
    // Issue 25 §4: pure half precision with the BiLSTM head names the precision to use.
    let err = fails(
        d,
        &[
            "run",
            "all",
            "--set",
            "train.device=cuda",
            "--set",
            "train.precision=bf16",
            "--set",
            "model.head=bilstm",
        ],
    );
    assert!(
        err.contains("use train.precision = \"bf16-mixed\""),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let o = pipeline(d, &["run", "all", "--set", r#"train.devices=["tpu"]"#]);
    let err = text(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("unknown device \"tpu\"")
            && err.contains("cuda:N")
            && !err.contains("untagged"),
        "{err}"
    );
    let err = fails(d, &["run", "all", "--set", "train.devices=3"]);
    assert!(
        err.contains("cuda:all") && !err.contains("untagged"),
        "{err}"
    );
}

/// The sample's test file cut to its first `n` articles, written into `dir`.
fn fewer_test_articles(dir: &Path, n: usize) -> PathBuf {
    let src = root().join("data/sample/test.json");
    let mut v: serde_json::Value = serde_json::from_slice(&read(src)).unwrap();
    v["data"].as_array_mut().unwrap().truncate(n);
    let out = dir.join("test-small.json");
    std::fs::write(&out, serde_json::to_vec(&v).unwrap()).unwrap();
    out
}

/// Makes `run` look as the binary before the training part's key left it: no `train_key.json`
/// in `prepare` and `split`, and train manifests listing the whole prepared files as inputs.
fn as_legacy_run(run: &Path, folds: usize) {
    use pipeline::run::{FileRecord, Manifest, MANIFEST};
    for stage in ["prepare", "split"] {
        let dir = run.join(stage);
        std::fs::remove_file(dir.join("train_key.json")).unwrap();
        let mut m = Manifest::read(&dir).unwrap().unwrap();
        assert!(m.outputs.remove("train_key.json").is_some());
        pipeline::run::write_json_atomic(&dir.join(MANIFEST), &m).unwrap();
    }
    let rel = Path::new("outputs").join(run.file_name().unwrap());
    for k in 0..folds {
        let dir = run.join(format!("train/fold-{k}"));
        let mut m = Manifest::read(&dir).unwrap().unwrap();
        m.inputs.clear();
        for f in [
            "prepare/examples.parquet",
            "prepare/features.safetensors",
            "prepare/tokenizer/tokenizer.json",
            "split/folds.parquet",
        ] {
            m.inputs.insert(
                rel.join(f).display().to_string(),
                FileRecord::of(&run.join(f)).unwrap(),
            );
        }
        pipeline::run::write_json_atomic(&dir.join(MANIFEST), &m).unwrap();
    }
}

/// Issue 24 §0: a new test file retrains no fold: prepare, split and the stages after `train`
/// run again, and the predictions equal a run made from scratch with that test file. A run
/// whose manifests predate the training part's key (the old inputs) is migrated, not retrained.
#[test]
fn a_new_test_file_retrains_no_fold() {
    let ws = workspace();
    let d = ws.path();
    let small = fewer_test_articles(d, 8);
    let base = tiny(&["run", "all"], "1");
    ok(d, &strs(&base));
    let weights = |run: &str, k: usize| {
        read(d.join(format!(
            "outputs/{run}/train/fold-{k}/best/model.safetensors"
        )))
    };
    let manifest =
        |run: &str, k: usize| read(d.join(format!("outputs/{run}/train/fold-{k}/manifest.json")));
    let before: Vec<_> = (0..2)
        .map(|k| (weights("sample", k), manifest("sample", k)))
        .collect();

    let with_small: Vec<String> = base
        .iter()
        .cloned()
        .chain(["--set".into(), format!("data.test={}", small.display())])
        .collect();
    let out = ok(d, &strs(&with_small));
    assert!(
        out.contains("prepare: running") && out.contains("predict"),
        "{out}"
    );
    assert!(!out.contains("train fold"), "a fold trained again:\n{out}");
    assert!(!out.contains("starting over"), "{out}");
    for (k, b) in before.iter().enumerate() {
        assert_eq!(
            *b,
            (weights("sample", k), manifest("sample", k)),
            "fold {k}"
        );
    }
    let mut status_args = tiny(&["status"], "1");
    status_args.extend(["--set".into(), format!("data.test={}", small.display())]);
    let status = ok(d, &strs(&status_args));
    assert!(
        !status.contains("stale") && !status.contains("missing"),
        "{status}"
    );

    // From scratch with the small test file: the same predictions.
    let fresh: Vec<String> = with_small
        .iter()
        .cloned()
        .chain(["--set".into(), "run.name=fresh".into()])
        .collect();
    ok(d, &strs(&fresh));
    let preds = |run: &str| read(d.join(format!("outputs/{run}/submit/predictions.json")));
    assert_eq!(preds("sample"), preds("fresh"));
    let n: serde_json::Value = serde_json::from_slice(&preds("fresh")).unwrap();
    assert!(n.as_object().unwrap().len() < 76, "{n}");

    // A run with the manifests an older binary wrote: migrated once, nothing retrained.
    as_legacy_run(&d.join("outputs/fresh"), 2);
    let out = ok(d, &strs(&fresh));
    assert!(
        !out.contains("train fold") && !out.contains("prepare: running"),
        "{out}"
    );
    assert!(d.join("outputs/fresh/prepare/train_key.json").exists());
    assert_eq!(preds("sample"), preds("fresh"));
}
