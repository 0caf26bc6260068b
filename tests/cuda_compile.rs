//! Issue 25 §4: every one of our CubeCL kernels compiles for CUDA (sm_80 and sm_90), with no GPU:
//! CubeCL's CUDA compiler gives the C++ its runtime would hand to NVRTC, NVIDIA's NVRTC and
//! `ptxas -v` (from PyPI) compile it, in the unchecked mode our launches use, and each kernel
//! must use at most 48 KiB of shared memory and [`MAX_REGISTERS`] registers a thread, and spill
//! nothing. The table it prints is the one in `bench/RESULTS.md`. `PIPELINE_CUDA_SOURCES=DIR`
//! keeps the CUDA sources.
//!
//! NVIDIA's tools come from `PIPELINE_CUDA_TOOLS_PYTHON` (an interpreter with
//! `nvidia-cuda-nvrtc-cu12`, `nvidia-cuda-nvcc-cu12` and `nvidia-cuda-runtime-cu12`; `.ci/run`
//! installs them). Without it the test says SKIP, unless `PIPELINE_REQUIRE_CUDA_TOOLS=1` (CI),
//! where it fails.

mod common;

use std::collections::BTreeMap;

use pipeline::model::kernels;

const MAX_SHARED: usize = 48 * 1024;

/// Registers a thread may use: 128 lets a 256-thread block keep two blocks on a streaming
/// multiprocessor (64 K registers), and the bound.
const MAX_REGISTERS: u64 = 128;

#[test]
fn every_kernel_compiles_for_cuda_within_its_spill_and_shared_memory_budget() {
    let Some(python) = std::env::var_os("PIPELINE_CUDA_TOOLS_PYTHON") else {
        assert!(
            std::env::var("PIPELINE_REQUIRE_CUDA_TOOLS").is_err(),
            "PIPELINE_REQUIRE_CUDA_TOOLS is set but PIPELINE_CUDA_TOOLS_PYTHON is not"
        );
        eprintln!("SKIP: PIPELINE_CUDA_TOOLS_PYTHON is not set (an interpreter with NVIDIA's NVRTC and ptxas from PyPI)");
        return;
    };
    // The sources for sm_80 and sm_90 differ (grid constants are in both; clusters from 90).
    let mut shared = BTreeMap::new();
    let dirs: Vec<(u32, tempfile::TempDir)> = [80u32, 90]
        .into_iter()
        .map(|sm| {
            let dir = tempfile::tempdir().unwrap();
            let again = kernels::cuda_kernels(sm).unwrap();
            for (k, k2) in kernels::cuda_kernels(sm).unwrap().into_iter().zip(again) {
                // CubeCL iterates hash sets when it lays out shared memory and declares
                // locals, in an order that changes from process to process (and ptxas's
                // registers and spills change with the shared layout). Each kernel has one
                // shared array at fixed offsets, so two generations differ at most in the
                // order of their lines.
                let lines = |s: &str| {
                    let mut v: Vec<String> = s.lines().map(str::to_string).collect();
                    v.sort();
                    v
                };
                assert_eq!(
                    lines(&k.source),
                    lines(&k2.source),
                    "{}: its CUDA source changes from one generation to the next",
                    k.name
                );
                assert!(
                    k.source.contains("__global__")
                        && k.source
                            .contains(&format!("__launch_bounds__({})", k.threads)),
                    "{}: not a CUDA kernel of {} threads:\n{}",
                    k.name,
                    k.threads,
                    k.source
                );
                std::fs::write(dir.path().join(format!("{}.cu", k.name)), &k.source).unwrap();
                // PIPELINE_CUDA_SOURCES=DIR keeps the sources (DIR/sm_NN/<kernel>.cu).
                if let Some(keep) = std::env::var_os("PIPELINE_CUDA_SOURCES") {
                    let keep = std::path::Path::new(&keep).join(format!("sm_{sm}"));
                    std::fs::create_dir_all(&keep).unwrap();
                    std::fs::write(keep.join(format!("{}.cu", k.name)), &k.source).unwrap();
                }
                shared.insert((k.name.clone(), sm), (k.shared_bytes, k.threads));
            }
            (sm, dir)
        })
        .collect();
    let mut rows = Vec::new();
    for (sm, dir) in &dirs {
        let o = std::process::Command::new(&python)
            .arg(common::root().join("tools/ptxas_report.py"))
            .arg(dir.path())
            .args(["--arch", &format!("sm_{sm}")])
            .output()
            .expect("the CUDA tools' python runs");
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "{out}{}",
            String::from_utf8_lossy(&o.stderr)
        );
        for line in out.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            rows.push(v);
        }
    }
    // One compiled function per kernel and architecture.
    assert_eq!(rows.len(), shared.len(), "{rows:?}");
    println!(
        "| kernel | sm | threads | registers | spill stores / loads (B) | stack (B) | shared (B) |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let mut bad = Vec::new();
    for r in &rows {
        let name = r["kernel"].as_str().unwrap().to_string();
        let sm: u32 = r["arch"].as_str().unwrap()[3..].parse().unwrap();
        let (dynamic, threads) = shared[&(name.clone(), sm)];
        let smem = dynamic + r["static_smem"].as_u64().unwrap() as usize;
        let (st, ld) = (
            r["spill_stores"].as_u64().unwrap(),
            r["spill_loads"].as_u64().unwrap(),
        );
        println!(
            "| {name} | {sm} | {threads} | {} | {st} / {ld} | {} | {smem} |",
            r["regs"], r["stack"]
        );
        let regs = r["regs"].as_u64().unwrap();
        if st > 0 || ld > 0 || smem > MAX_SHARED || regs > MAX_REGISTERS {
            bad.push(format!(
                "{name} sm_{sm}: {st}/{ld} B spilled, {regs} registers, {smem} B shared"
            ));
        }
    }
    println!("({}, NVRTC {})", rows[0]["ptxas"], rows[0]["nvrtc"]);
    assert!(bad.is_empty(), "kernels over budget: {bad:?}");
}
