//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A file under `tests/fixtures`.
pub fn fixture(rel: &str) -> PathBuf {
    root().join("tests/fixtures").join(rel)
}

/// KorQuAD 1.0 dev from `../shared`, or `None` (with a message) where it is absent.
pub fn korquad() -> Option<PathBuf> {
    let p = root().join("../shared/data/korquad/KorQuAD_v1.0_dev.json");
    if p.exists() {
        Some(p)
    } else {
        eprintln!(
            "SKIP: {} is absent (it lives beside the checkout in ../shared)",
            p.display()
        );
        None
    }
}

/// Runs the `pipeline` binary in `dir`.
pub fn pipeline(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pipeline"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the pipeline binary runs")
}

/// stdout + stderr as text.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Whether a run failed only because no wgpu adapter exists here (no Vulkan driver): says SKIP.
/// Where Mesa's lavapipe is installed (as `.ci/run` does) there is always one.
pub fn no_wgpu_adapter(o: &Output) -> bool {
    let t = text(o);
    let none = !o.status.success() && t.contains("no usable wgpu adapter");
    if none {
        eprintln!("SKIP: no wgpu adapter here (install mesa-vulkan-drivers and libvulkan1): {t}");
    }
    none
}

/// Runs and asserts success, returning the output text.
pub fn ok(dir: &Path, args: &[&str]) -> String {
    let o = pipeline(dir, args);
    let t = text(&o);
    assert!(o.status.success(), "pipeline {args:?} failed:\n{t}");
    t
}

/// Runs and asserts failure, returning the output text.
pub fn fails(dir: &Path, args: &[&str]) -> String {
    let o = pipeline(dir, args);
    let t = text(&o);
    assert!(!o.status.success(), "pipeline {args:?} should fail:\n{t}");
    t
}

/// A temp folder with `pipeline.toml` (the repo's) and `data/` linked in, so runs write
/// their outputs there.
pub fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::copy(
        root().join("pipeline.toml"),
        dir.path().join("pipeline.toml"),
    )
    .unwrap();
    std::os::unix::fs::symlink(root().join("data"), dir.path().join("data")).unwrap();
    std::os::unix::fs::symlink(root().join("tests"), dir.path().join("tests")).unwrap();
    dir
}

/// A [`workspace`] with `configs/korquad-tiny.toml` and the arguments that run it on the
/// KorQuAD dev set; `None` where `../shared` is absent.
pub fn korquad_workspace() -> Option<(tempfile::TempDir, Vec<String>)> {
    let korquad = korquad()?;
    let ws = workspace();
    std::fs::create_dir_all(ws.path().join("configs")).unwrap();
    std::fs::copy(
        root().join("configs/korquad-tiny.toml"),
        ws.path().join("configs/korquad-tiny.toml"),
    )
    .unwrap();
    let args = [
        "--config".to_string(),
        "configs/korquad-tiny.toml".into(),
        "--set".into(),
        format!("data.train={}", korquad.display()),
    ];
    Some((ws, args.to_vec()))
}

/// [`ok`] with `head` (the command) followed by `more` (options).
pub fn ok_with(dir: &Path, head: &[&str], more: &[String]) -> String {
    let all: Vec<&str> = head
        .iter()
        .copied()
        .chain(more.iter().map(String::as_str))
        .collect();
    ok(dir, &all)
}

/// `--set k=v` for each of `pairs`.
pub fn sets(pairs: &[&str]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|p| ["--set".to_string(), p.to_string()])
        .collect()
}

/// A JSON array of integers.
pub fn ints(v: &serde_json::Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap())
        .collect()
}

/// A JSON array of non-negative integers, as `T` (`u32`, `usize`).
pub fn uints<T: TryFrom<u64>>(v: &serde_json::Value) -> Vec<T>
where
    T::Error: std::fmt::Debug,
{
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| T::try_from(x.as_u64().unwrap()).unwrap())
        .collect()
}

/// Every number of a (nested) JSON array, flattened, as f32.
pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    fn walk(v: &serde_json::Value, out: &mut Vec<f32>) {
        match v {
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            x => out.push(x.as_f64().expect("a number") as f32),
        }
    }
    let mut out = Vec::new();
    walk(v, &mut out);
    out
}

/// One column of a fold's `metrics.jsonl` (one value per validation).
pub fn metrics_column(fold: &Path, key: &str) -> Vec<f64> {
    std::fs::read_to_string(fold.join("metrics.jsonl"))
        .unwrap_or_else(|e| panic!("{}: {e}", fold.display()))
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()[key]
                .as_f64()
                .unwrap()
        })
        .collect()
}

/// What one chart of a `report.html` draws (see `pipeline::report::plots`): the number of
/// points of each line series (a `<polyline>` of stroke width 2; axes and ticks are width 1),
/// and of dots (`<circle>`).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Plot {
    pub lines: Vec<usize>,
    pub dots: usize,
    /// The `<text>` of the chart (title, ticks, legend).
    pub texts: Vec<String>,
}

/// Parses a `report.html` as XML (it must be well-formed) and returns its charts by their
/// `data-plot` name, and the cells of its tables, row by row.
pub fn read_report(path: &Path) -> (BTreeMap<String, Plot>, Vec<Vec<Vec<String>>>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let opts = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let doc = roxmltree::Document::parse_with_options(&text, opts)
        .unwrap_or_else(|e| panic!("{} does not parse: {e}", path.display()));
    let mut plots = BTreeMap::new();
    for fig in doc.descendants().filter(|n| n.has_tag_name("figure")) {
        let name = fig.attribute("data-plot").expect("a figure names its plot");
        let mut p = Plot::default();
        for n in fig.descendants() {
            match n.tag_name().name() {
                "polyline" if n.attribute("stroke-width") == Some("2") => p.lines.push(
                    n.attribute("points")
                        .unwrap_or("")
                        .split_whitespace()
                        .count(),
                ),
                "circle" => p.dots += 1,
                "text" => p.texts.push(n.text().unwrap_or("").trim().to_string()),
                _ => {}
            }
        }
        assert_eq!(
            fig.descendants().filter(|n| n.has_tag_name("svg")).count(),
            1,
            "{name}: one SVG"
        );
        plots.insert(name.to_string(), p);
    }
    let tables = doc
        .descendants()
        .filter(|n| n.has_tag_name("table"))
        .map(|t| {
            t.children()
                .filter(|r| r.has_tag_name("tr"))
                .map(|r| {
                    r.children()
                        .filter(|c| c.is_element())
                        .map(|c| c.text().unwrap_or("").to_string())
                        .collect()
                })
                .collect()
        })
        .collect();
    (plots, tables)
}

/// Tiny, fast settings for every variant of a test sweep (`--set` values).
pub const SWEEP_TINY: &[&str] = &[
    "split.folds=2",
    "prepare.vocab_size=600",
    "model.hidden_size=32",
    "model.num_hidden_layers=1",
    "model.intermediate_size=64",
    "train.epochs=1",
    "train.eval_every=20",
];
