//! `pipeline bench` runs on the CPU and reports sane numbers; CUDA without a GPU fails cleanly.

mod common;

use common::*;
use serde_json::Value;

#[test]
fn bench_reports_throughput_on_cpu() {
    let out = pipeline(
        &root(),
        &[
            "bench",
            "--model",
            "tiny",
            "--seq",
            "32",
            "--batch",
            "4",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--peak-tflops",
            "1",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(r["examples_per_second"].as_f64().unwrap() > 0.0);
    let tokens = r["tokens_per_second"].as_f64().unwrap();
    let eps = r["examples_per_second"].as_f64().unwrap();
    assert!((tokens / eps - 32.0).abs() < 1e-6);
    // tiny: vocab 1000, hidden 32, 2 layers, intermediate 64, 514 positions, 1 token type.
    let layer = 4 * (32 * 32 + 32) + 2 * 2 * 32 + (32 * 64 + 64) + (64 * 32 + 32);
    let embeddings = (1000 + 514 + 1) * 32 + 2 * 32;
    let head = 32 * 2 + 2;
    assert_eq!(
        r["parameters"].as_u64().unwrap() as usize,
        embeddings + 2 * layer + head
    );
    let mfu = r["mfu"].as_f64().unwrap();
    assert!((mfu - r["achieved_tflops"].as_f64().unwrap()).abs() < 1e-12);
    // One warm-up step was timed; the CPU has no device memory to report.
    assert!(r["warmup_seconds"].as_f64().unwrap() > 0.0);
    assert!(r["peak_device_memory_mib"].is_null());
    assert!(r["peak_host_memory_mib"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_on_cuda_without_a_gpu_fails_cleanly() {
    let out = pipeline(
        &root(),
        &[
            "bench", "--device", "cuda", "--model", "tiny", "--seq", "32",
        ],
    );
    if out.status.success() {
        return;
    }
    let t = text(&out);
    assert!(t.contains("--device cpu") && !t.contains("panicked"), "{t}");
}
