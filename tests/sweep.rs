//! `pipeline sweep` on the shipped sample with a tiny model: variants share prepare and split,
//! the comparison is written and ranked, `sweep status` reports, and a sweep whose runs were
//! interrupted resumes to the uninterrupted sweep's numbers.

mod common;

use std::path::{Path, PathBuf};

use common::*;

const TINY: &[&str] = SWEEP_TINY;

const SWEEP_FILE: &str = r#"
[sweep]
name = "heads"
[sweep.grid]
"train.learning_rate" = [1e-3, 5e-4]
"model.head" = ["linear", "cnn"]
"#;

fn sweep(dir: &Path, head: &[&str], env: Option<(&str, &str)>) -> std::process::Output {
    let mut args: Vec<String> = head.iter().map(|s| s.to_string()).collect();
    args.extend(sets(TINY));
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_pipeline"));
    cmd.args(&args).current_dir(dir);
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// The cells of one CSV line (quoted cells may hold commas).
fn cells(line: &str) -> Vec<String> {
    let (mut out, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// The comparison without the columns that measure time.
fn numbers(csv: &str) -> Vec<Vec<String>> {
    csv.lines()
        .map(|l| {
            let c = cells(l);
            let n = c.len();
            // ..., train_seconds, windows_per_second, best
            [&c[..n - 3], &c[n - 1..]].concat()
        })
        .collect()
}

#[test]
fn a_sweep_shares_upstream_stages_ranks_its_variants_and_resumes() {
    // From a sweep file: 2 learning rates x 2 heads.
    let ws = workspace();
    let d = ws.path();
    std::fs::write(d.join("sweep.toml"), SWEEP_FILE).unwrap();
    let o = sweep(d, &["sweep", "--sweep", "sweep.toml"], None);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    // One prepare and one split for four variants: 6 stage runs saved.
    assert_eq!(out.matches("prepare: running").count(), 1, "{out}");
    assert_eq!(out.matches("split: running").count(), 1, "{out}");
    assert!(
        out.contains("prepare and split for 4 variants: 2 run, 6 shared"),
        "{out}"
    );
    let dir = d.join("outputs/heads");
    let csv = std::fs::read_to_string(dir.join("comparison.csv")).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 5, "{csv}");
    assert!(lines[0].starts_with("variant,model.head,train.learning_rate,oof_em,oof_f1"));
    // Ranked by out-of-fold F1 (keep_best_by = f1), the first marked best.
    let header = cells(lines[0]);
    let at = header.iter().position(|h| h == "oof_f1").unwrap();
    let f1: Vec<f64> = lines[1..]
        .iter()
        .map(|l| cells(l)[at].parse().unwrap())
        .collect();
    assert!(f1.windows(2).all(|w| w[0] >= w[1]), "{csv}");
    assert!(
        lines[1].ends_with(",*") && !lines[2].ends_with(",*"),
        "{csv}"
    );
    let md = std::fs::read_to_string(dir.join("comparison.md")).unwrap();
    // Four variant rows.
    assert_eq!(md.matches("\n| head=").count(), 4, "{md}");
    // Every variant has the shared features: one file on disk, linked four times.
    let features = dir.join("head=cnn+learning_rate=0.001/prepare/features.safetensors");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&features).unwrap().nlink(), 4);
    // Top-k ensembles: k = 1 is the best variant alone, so its out-of-fold F1 is the best row's.
    let top1 = md
        .lines()
        .find(|l| l.starts_with("| 1 |"))
        .expect("a top-k table");
    let best_f1 = cells(lines[1])[at].clone();
    assert_eq!(top1.split(" | ").nth(2), Some(best_f1.as_str()), "{md}");
    assert!(md.contains("| 4 |"), "{md}");
    // report.html: the comparison table (header + 4 variants, the best marked), the top-k
    // table, and the chart: per variant a fold-spread dot (with its bar), an out-of-fold dot
    // and a test-ensemble dot; one tick label per variant.
    let (plots, tables) = read_report(&dir.join("report.html"));
    assert_eq!(tables[0].len(), 5, "{:?}", tables[0]);
    assert_eq!(tables[0][1].last().map(String::as_str), Some("*"));
    assert_eq!(tables[1].len(), 5, "{:?}", tables[1]);
    let chart = &plots["sweep-f1"];
    assert_eq!(chart.dots, 3 * 4, "{chart:?}");
    for row in &tables[0][1..] {
        assert!(chart.texts.contains(&row[0]), "{} not on the axis", row[0]);
    }

    // A cross-run ensemble of two variants, by every method.
    let runs = format!(
        "{},{}",
        dir.join("head=cnn+learning_rate=0.001").display(),
        dir.join("head=linear+learning_rate=0.001").display()
    );
    for method in ["mean", "weighted", "hard_vote"] {
        let out = d.join(format!("ens-{method}"));
        let o = ok(
            d,
            &[
                "ensemble",
                "--runs",
                &runs,
                "--method",
                method,
                "--out",
                out.to_str().unwrap(),
            ],
        );
        let scores: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("scores.json")).unwrap()).unwrap();
        assert!(scores["oof"]["total"].as_u64().unwrap() > 300, "{o}");
        assert!(scores["test"]["f1"].as_f64().is_some(), "{o}");
        let preds: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("predictions.json")).unwrap()).unwrap();
        assert_eq!(preds.as_object().unwrap().len(), 76);
    }
    // Issue 24 §5: a vote votes on the out-of-fold questions too (each answer is one of the
    // two runs', where they agree that one), not the mean's; it writes its tallies and n-best.
    let json = |p: PathBuf| -> serde_json::Value {
        serde_json::from_slice(
            &std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
        )
        .unwrap()
    };
    let (a, b) = (
        json(dir.join("head=cnn+learning_rate=0.001/ensemble/oof_predictions.json")),
        json(dir.join("head=linear+learning_rate=0.001/ensemble/oof_predictions.json")),
    );
    let voted = json(d.join("ens-hard_vote/oof_predictions.json"));
    let voted = voted.as_object().unwrap();
    assert!(voted.len() > 300);
    let mut disagree = 0;
    for (id, v) in voted {
        assert!(
            v == &a[id] || v == &b[id],
            "{id}: {v} is neither run's answer"
        );
        if a[id] != b[id] {
            disagree += 1;
        } else {
            assert_eq!(v, &a[id], "{id}");
        }
    }
    assert!(disagree > 0);
    assert_ne!(
        std::fs::read(d.join("ens-hard_vote/oof_predictions.json")).unwrap(),
        std::fs::read(d.join("ens-mean/oof_predictions.json")).unwrap()
    );
    let votes = json(d.join("ens-hard_vote/votes.json"));
    assert_eq!(votes.as_object().unwrap().len(), 76);
    let nbest = json(d.join("ens-hard_vote/nbest_predictions.json"));
    assert_eq!(nbest.as_object().unwrap().len(), 76);
    assert!(!d.join("ens-mean/votes.json").exists());

    // Issue 24 §6: runs by name (a sweep variant's, resolved under output_dir): the same
    // ensemble as by folder; a run that does not exist is named as such.
    let by_name = d.join("ens-by-name");
    ok(
        d,
        &[
            "ensemble",
            "--runs",
            "head=cnn+learning_rate=0.001,heads/head=linear+learning_rate=0.001",
            "--out",
            by_name.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read(by_name.join("predictions.json")).unwrap(),
        std::fs::read(d.join("ens-mean/predictions.json")).unwrap()
    );
    let err = fails(d, &["ensemble", "--runs", "outputs/nope"]);
    assert!(
        err.contains("outputs/nope: no such run") && err.trim().lines().count() == 1,
        "{err}"
    );

    // Issue 24 §1: a run with a fold missing, unfinished or with a file gone is refused, in
    // one line naming the run and the fold, by every method.
    let src = dir.join("head=linear+learning_rate=0.001");
    for (name, remove, says) in [
        (
            "gap",
            "predict/fold-1",
            "fold 1 of its 2 folds is not predicted",
        ),
        (
            "unfinished",
            "predict/fold-1/manifest.json",
            "fold 1 of its 2 folds is not predicted",
        ),
        (
            "no-logits",
            "predict/fold-1/test_logits.safetensors",
            "fold 1's predictions are incomplete",
        ),
    ] {
        let copy = d.join("outputs").join(name);
        let st = std::process::Command::new("cp")
            .args(["-a", src.to_str().unwrap(), copy.to_str().unwrap()])
            .status()
            .unwrap();
        assert!(st.success());
        let p = copy.join(remove);
        if p.is_dir() {
            std::fs::remove_dir_all(&p).unwrap();
        } else {
            std::fs::remove_file(&p).unwrap();
        }
        for method in ["mean", "hard_vote"] {
            let err = fails(
                d,
                &[
                    "ensemble",
                    "--runs",
                    &format!("{runs},{}", copy.display()),
                    "--method",
                    method,
                ],
            );
            assert!(
                err.contains(&format!("run {}", copy.display())) && err.contains(says),
                "{name} {method}: {err}"
            );
            assert_eq!(err.trim().lines().count(), 1, "{err}");
        }
    }

    // The same ensemble from `[ensemble] runs` and `method` in the config file.
    let listed: Vec<String> = runs.split(',').map(|r| format!("{r:?}")).collect();
    let config = std::fs::read_to_string(d.join("pipeline.toml")).unwrap();
    let config = config.replace(
        "[ensemble]\nmethod = \"mean\"",
        &format!(
            "[ensemble]\nmethod = \"weighted\"\nruns = [{}]",
            listed.join(", ")
        ),
    );
    assert!(config.contains("\"weighted\""));
    std::fs::write(d.join("ensemble.toml"), config).unwrap();
    let out = d.join("ens-config");
    ok(
        d,
        &[
            "ensemble",
            "--config",
            "ensemble.toml",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read(out.join("predictions.json")).unwrap(),
        std::fs::read(d.join("ens-weighted/predictions.json")).unwrap()
    );
    let err = fails(d, &["ensemble"]);
    assert!(err.contains("no runs to combine"), "{err}");
    // A run prepared with other windows is refused, in one line.
    ok(
        d,
        &[
            &["run", "prepare", "-q", "--set", "run.name=other"][..],
            &TINY_SETS(),
            &["--set", "prepare.max_seq_length=64"],
        ]
        .concat(),
    );
    let err = fails(d, &["ensemble", "--runs", &format!("{runs},outputs/other")]);
    assert!(
        err.contains("were prepared differently") && err.trim().lines().count() == 1,
        "{err}"
    );

    let status = ok(
        d,
        &[
            &["sweep", "status", "--sweep", "sweep.toml"][..],
            &TINY_SETS(),
        ]
        .concat(),
    );
    assert!(status.contains("4 variants"), "{status}");
    assert_eq!(status.matches(" done\n").count(), 4, "{status}");
    assert!(status.contains("best so far: "), "{status}");

    // The same sweep from --grid, each run interrupted after step 10, then run again.
    let ws2 = workspace();
    let d2 = ws2.path();
    let grid = [
        "sweep",
        "--set",
        "run.name=unused",
        "--grid",
        "train.learning_rate=1e-3,5e-4",
        "--grid",
        "model.head=linear,cnn",
    ];
    let o = sweep(d2, &grid, Some(("PIPELINE_INTERRUPT_AFTER_STEP", "10")));
    assert!(!o.status.success());
    assert!(
        text(&o).contains("pipeline sweep` again resumes them"),
        "{}",
        text(&o)
    );
    // `sweep status` without the grid: the variants the sweep's folder records.
    let status = ok(d2, &["sweep", "status"]);
    assert!(status.contains("4 variants"), "{status}");
    assert_eq!(status.matches("  head=").count(), 4, "{status}");
    // Resumed two variants at a time.
    let parallel: Vec<&str> = grid.iter().copied().chain(["--parallel", "2"]).collect();
    let o = sweep(d2, &parallel, None);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("resuming at step 10"), "{}", text(&o));
    assert!(
        text(&o).contains("0 run, 0 shared, 8 already done"),
        "{}",
        text(&o)
    );
    let csv2 = std::fs::read_to_string(d2.join("outputs/sweep/comparison.csv")).unwrap();
    assert_eq!(numbers(&csv), numbers(&csv2));
}

#[allow(non_snake_case)]
fn TINY_SETS() -> Vec<&'static str> {
    TINY.iter().flat_map(|s| ["--set", *s]).collect()
}

#[test]
fn a_sweep_without_variants_or_with_a_bad_grid_says_so() {
    let ws = workspace();
    let err = fails(ws.path(), &["sweep"]);
    assert!(err.contains("the sweep has no variants"), "{err}");
    let err = fails(ws.path(), &["sweep", "--grid", "train.learning_rate"]);
    assert!(
        err.contains("--grid") && err.contains("section.key=v1,v2"),
        "{err}"
    );
    let err = fails(ws.path(), &["sweep", "--grid", "train.nope=1,2"]);
    assert!(err.contains("nope"), "{err}");
    // Issue 24 §4, §6: repeated --grid keys make one axis; a value twice and --parallel 0 are
    // refused.
    let out = ok(
        ws.path(),
        &[
            "sweep",
            "status",
            "--grid",
            "model.head=linear",
            "--grid",
            "model.head=cnn",
        ],
    );
    assert!(
        out.contains("2 variants") && out.contains("head=cnn") && out.contains("head=linear"),
        "{out}"
    );
    for grid in ["model.head=linear,linear", "train.learning_rate=1e-3,0.001"] {
        let err = fails(ws.path(), &["sweep", "--grid", grid]);
        assert!(err.contains("twice"), "{grid}: {err}");
    }
    let err = fails(
        ws.path(),
        &[
            "sweep",
            "--grid",
            "model.head=linear,cnn",
            "--parallel",
            "0",
        ],
    );
    assert!(
        err.contains("--parallel") && err.contains("at least 1"),
        "{err}"
    );
    assert!(!ws.path().join("outputs/sweep/head=linear").exists());
}
