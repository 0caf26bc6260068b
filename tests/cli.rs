//! End-to-end behaviour of the CLI on the shipped sample: stages, manifests, status, errors.

mod common;

use common::*;

/// Whether the sample run in workspace `d` has a manifest at `unit` (`split`, `train/fold-0`).
fn has_manifest(d: &std::path::Path, unit: &str) -> bool {
    d.join("outputs/sample")
        .join(unit)
        .join("manifest.json")
        .exists()
}

#[test]
fn split_needs_prepare_first() {
    let ws = workspace();
    let err = fails(ws.path(), &["run", "split"]);
    assert!(err.contains("needs `prepare`"), "{err}");
    assert!(!has_manifest(ws.path(), "split"));
}

#[test]
fn stage_lifecycle_on_the_sample() {
    let ws = workspace();
    let d = ws.path();
    ok(d, &["run", "prepare"]);
    let run = d.join("outputs/sample");
    for f in [
        "prepare/manifest.json",
        "prepare/examples.parquet",
        "prepare/features.safetensors",
        "prepare/tokenizer/tokenizer.json",
        "prepare/tokenizer/tokenizer_config.json",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    ok(d, &["run", "split"]);
    let status = ok(d, &["status"]);
    assert!(status.contains("prepare   done"), "{status}");
    assert!(status.contains("split     done"), "{status}");
    assert!(status.contains("questions per fold"), "{status}");
    assert!(
        status.contains("train     stale (train fold 0 is missing)"),
        "{status}"
    );
    assert!(status.contains("train fold 2: missing"), "{status}");

    // Up to date: skipped, manifest untouched.
    let before = std::fs::read(run.join("split/manifest.json")).unwrap();
    let again = ok(d, &["run", "split"]);
    assert!(again.contains("up to date"), "{again}");
    assert_eq!(
        before,
        std::fs::read(run.join("split/manifest.json")).unwrap()
    );

    // A changed setting makes exactly the stage that reads it stale.
    let status = ok(d, &["status", "--set", "split.folds=2"]);
    assert!(status.contains("prepare   done"), "{status}");
    assert!(
        status.contains("split     stale (its settings changed)"),
        "{status}"
    );

    // Windows settings do not touch the examples, so split stays done after prepare reruns.
    ok(
        d,
        &[
            "run",
            "prepare",
            "--force",
            "--set",
            "prepare.doc_stride=16",
        ],
    );
    let status = ok(d, &["status", "--set", "prepare.doc_stride=16"]);
    assert!(status.contains("split     done"), "{status}");

    // A changed upstream output makes both the producer and its reader stale.
    let mut bytes = std::fs::read(run.join("prepare/examples.parquet")).unwrap();
    bytes.push(0);
    std::fs::write(run.join("prepare/examples.parquet"), bytes).unwrap();
    let status = ok(d, &["status", "--set", "prepare.doc_stride=16"]);
    assert!(
        status.contains("prepare   stale (output examples.parquet was modified)"),
        "{status}"
    );
    assert!(status.contains("split     stale (input"), "{status}");

    // prepare reruns when stale; it rewrites byte-identical examples, so split (which reads
    // only those) is done again without rerunning.
    let out = ok(d, &["run", "prepare", "--set", "prepare.doc_stride=16"]);
    assert!(out.contains("prepare: running"), "{out}");
    let out = ok(d, &["run", "split", "--set", "prepare.doc_stride=16"]);
    assert!(out.contains("split: up to date"), "{out}");
}

#[test]
fn later_stages_need_earlier_ones() {
    let ws = workspace();
    let d = ws.path();
    ok(d, &["run", "prepare", "-q"]);
    ok(d, &["run", "split", "-q"]);
    let err = fails(d, &["run", "predict"]);
    assert!(err.contains("stage `predict` needs `train`"), "{err}");
    let err = fails(d, &["run", "submit"]);
    assert!(err.contains("needs `evaluate`"), "{err}");
    assert!(!has_manifest(d, "predict/fold-0"));
}

#[test]
fn config_errors_are_one_line_and_name_the_key() {
    let ws = workspace();
    let d = ws.path();
    let err = fails(d, &["run", "prepare", "--set", "prepare.max_seq_lenght=10"]);
    assert!(err.contains("max_seq_lenght"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let err = fails(d, &["run", "train", "--fold", "7"]);
    assert!(err.contains("--fold 7 is out of range"), "{err}");
    let err = fails(d, &["status", "--config", "nope.toml"]);
    assert!(err.contains("nope.toml"), "{err}");
}

#[test]
fn korquad_prepare_and_split_hold_out_titles() {
    let Some((ws, args)) = korquad_workspace() else {
        return;
    };
    let d = ws.path();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ok(d, &[&["run", "prepare"][..], &args].concat());
    assert!(out.contains("5774 rows, 5774 kept"), "{out}");
    ok(d, &[&["run", "split"][..], &args].concat());

    let run = d.join("outputs/korquad-tiny");
    let (examples, _) =
        pipeline::artifacts::read_examples(&run.join("prepare/examples.parquet")).unwrap();
    let folds = pipeline::artifacts::read_folds(&run.join("split/folds.parquet")).unwrap();
    assert_eq!(examples.len(), 5774);
    let mut fold_of_title = std::collections::HashMap::new();
    for (e, f) in examples.iter().zip(&folds) {
        let prev = *fold_of_title.entry(e.title.clone()).or_insert(*f);
        assert_eq!(prev, *f, "title {} is in two folds", e.title);
    }
    let test = folds.iter().filter(|f| **f == -1).count() as f64 / 5774.0;
    assert!((0.17..0.25).contains(&test), "held-out fraction {test}");
    let features =
        pipeline::artifacts::Features::load(&run.join("prepare/features.safetensors")).unwrap();
    assert_eq!(features.max_seq_length, 256);
    assert!(features.len() > examples.len());
    // Every labelled window's tokens cover its answer's characters.
    for i in 0..features.len() {
        let (s, e) = (
            features.start_positions[i] as usize,
            features.end_positions[i] as usize,
        );
        if s == 0 {
            continue;
        }
        let offs = features.context_offsets(i);
        let ex = &examples[features.example_index[i] as usize];
        let a = &ex.answers[0];
        let (cs, ce) = (offs[s].unwrap().0, offs[e].unwrap().1);
        assert!(
            cs <= a.start && ce >= a.start + a.text.chars().count(),
            "window {i}"
        );
    }
}

#[test]
fn prepare_uses_a_pretrained_models_tokenizer_and_checks_its_length() {
    let ws = workspace();
    let d = ws.path();
    let model = fixture("models/roberta_qa");
    let set_model = format!("model.pretrained={}", model.display());
    let err = fails(d, &["run", "prepare", "-q", "--set", &set_model]);
    assert!(
        err.contains("prepare.max_seq_length (128) is longer than")
            && err.contains("roberta_qa allows: 64 (max_position_embeddings 66)"),
        "{err}"
    );
    assert!(!has_manifest(d, "prepare"));
    let windows = sets(&[
        &set_model,
        "prepare.max_seq_length=64",
        "prepare.doc_stride=16",
    ]);
    ok_with(d, &["run", "prepare"], &windows);
    let status = ok_with(d, &["status"], &windows);
    assert!(status.contains("tokenizer vocab 1500\n"), "{status}");
    let saved =
        std::fs::read_to_string(d.join("outputs/sample/prepare/tokenizer/tokenizer.json")).unwrap();
    assert!(
        saved.contains("\"<s>\""),
        "the model's byte-level BPE tokenizer is used"
    );
}

/// `run all --launcher slurm --dry-run` prints the three scripts with what `[slurm]` asks for
/// and the `sbatch` lines with their dependencies, and submits nothing (no Slurm needed).
#[test]
fn slurm_dry_run_prints_readable_scripts_and_submits_nothing() {
    let ws = workspace();
    let d = ws.path();
    let out = ok_with(
        d,
        &["run", "all", "--launcher", "slurm", "--dry-run"],
        &sets(&[
            "slurm.partition=gpu",
            "slurm.gpus_per_task=1",
            "slurm.cpus_per_task=4",
            "slurm.time=2:00:00",
            r#"slurm.extra_args=["--constraint=h100"]"#,
            "slurm.setup=module load cuda/12.4",
        ]),
    );
    for want in [
        "outputs/sample/slurm/prepare.sh ----",
        "outputs/sample/slurm/folds.sh ----",
        "outputs/sample/slurm/finish.sh ----",
        "#SBATCH --partition=gpu",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --time=2:00:00",
        "#SBATCH --gres=gpu:1",
        "#SBATCH --requeue",
        "#SBATCH --constraint=h100",
        "module load cuda/12.4",
        "run train --fold \"$fold\" --slurm-fold-task --config pipeline.toml --set slurm.partition=gpu",
        "run predict --fold \"$fold\" --slurm-fold-task --config",
        "--dependency=afterok:<prepare> --array=0,1,2 ",
        "--dependency=afterok:<folds> ",
    ] {
        assert!(out.contains(want), "{want:?} missing:\n{out}");
    }
    // GPUs only for the fold tasks.
    assert_eq!(out.matches("--gres=gpu:1").count(), 1, "{out}");
    assert!(!d.join("outputs/sample/slurm").exists());
    // The whole run only.
    let err = fails(d, &["run", "train", "--launcher", "slurm"]);
    assert!(err.contains("submits a whole run"), "{err}");
}

/// Issue 26 §4: the README's table of environment variables is `src/env.rs`'s, and no file under
/// `src/` but `env.rs` reads a variable of ours.
#[test]
fn environment_variables_are_declared_and_read_in_one_place() {
    let readme = std::fs::read_to_string(common::root().join("README.md")).unwrap();
    let start = "<!-- env-table: generated from src/env.rs (tests/cli.rs checks it) -->\n";
    let table = readme
        .split(start)
        .nth(1)
        .and_then(|rest| rest.split("<!-- /env-table -->").next())
        .expect("the README's env-table markers");
    assert_eq!(
        table,
        pipeline::env::markdown_table(),
        "regenerate the README's table"
    );
    let mut readers = Vec::new();
    let mut stack = vec![common::root().join("src")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") && !p.ends_with("src/env.rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                for var in pipeline::env::VARS {
                    if text.contains(&format!("\"{}\"", var.name)) {
                        readers.push(format!("{}: {}", p.display(), var.name));
                    }
                }
                if text.contains("env::var(\"PIPELINE_") || text.contains("env::var_os(\"PIPELINE_")
                {
                    readers.push(format!("{}: reads a PIPELINE_ variable", p.display()));
                }
            }
        }
    }
    assert!(readers.is_empty(), "read outside src/env.rs: {readers:?}");
}
