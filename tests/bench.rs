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
    // Launch counts are for GPU devices; the first loss is seeded, about ln(32) at random init.
    assert!(r["kernel_launches_per_step"].is_null(), "{r}");
    let first = r["first_loss"].as_f64().unwrap();
    assert!((first - 32f64.ln()).abs() < 0.5, "{r}");
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

/// `--head bilstm` benches the competition notebook's model: the encoder plus two bidirectional LSTM layers of
/// the encoder's width (PyTorch's `nn.LSTM` parameter count: 4H × (in + H) weights and two 4H
/// biases per direction and layer) and Linear(2H, 2). `torch_bench.py --head bilstm` builds the
/// same count (107,746 for tiny).
#[test]
fn bench_with_the_bilstm_head_counts_its_parameters() {
    let run = |head: &str| -> Value {
        let out = pipeline(
            &root(),
            &[
                "bench", "--model", "tiny", "--head", head, "--seq", "16", "--batch", "2",
                "--steps", "1", "--warmup", "0",
            ],
        );
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let (linear, bilstm) = (run("linear"), run("bilstm"));
    assert_eq!(bilstm["head"], "bilstm");
    let h = 32;
    let direction = |input: usize| 4 * h * (input + h) + 2 * 4 * h;
    let lstm = 2 * direction(h) + 2 * direction(2 * h);
    let params = |r: &Value| r["parameters"].as_u64().unwrap() as usize;
    assert_eq!(
        params(&bilstm),
        params(&linear) - (h * 2 + 2) + lstm + (2 * h * 2 + 2)
    );
    assert_eq!(params(&bilstm), 107_746);
    // `--head cnn`: Conv1d(h, h/3, k) for k = 1, 3, 5, then Linear(3 (h/3), 2).
    let cnn = run("cnn");
    assert_eq!(cnn["head"], "cnn");
    let c = h / 3;
    let convs: usize = [1, 3, 5].iter().map(|k| c * h * k + c).sum();
    assert_eq!(
        params(&cnn),
        params(&linear) - (h * 2 + 2) + convs + (3 * c * 2 + 2)
    );
    let out = pipeline(&root(), &["bench", "--model", "tiny", "--head", "gru"]);
    assert!(!out.status.success() && text(&out).contains("--head"));
}
