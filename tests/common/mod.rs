//! Helpers shared by the integration tests.
#![allow(dead_code)]

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
