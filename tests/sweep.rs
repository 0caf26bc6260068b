//! `pipeline sweep` on the shipped sample with a tiny model: variants share prepare and split,
//! the comparison is written and ranked, `sweep status` reports, and a sweep whose runs were
//! interrupted resumes to the uninterrupted sweep's numbers.

mod common;

use std::path::Path;

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
        out.contains("prepare and split ran 2 time(s) for 4 variants; 6 stage runs saved"),
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
    // Resumed two variants at a time.
    let parallel: Vec<&str> = grid.iter().copied().chain(["--parallel", "2"]).collect();
    let o = sweep(d2, &parallel, None);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("resuming at step 10"), "{}", text(&o));
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
}
