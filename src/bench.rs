//! `pipeline bench`: training throughput on random inputs for a model shape.
//!
//! Runs `warmup` then `steps` full training steps (forward, CE loss, backward, global-norm
//! clipping, AdamW) of a randomly initialised encoder + head (linear, or the competition notebook's BiLSTM with
//! `--head bilstm`), synchronising on the loss every step, and reports examples/s, tokens/s,
//! the step time, peak host memory and model-FLOPs utilisation: training FLOPs per token ≈
//! 6 × non-embedding parameters + 12 × layers × hidden × seq, divided by the peak given with
//! `--peak-tflops`.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use burn::module::{AutodiffModule, Module};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Distribution, ElementConversion, Int, Tensor};
use serde::Serialize;

use crate::device::{Device, Precision};
use crate::model::config::EncoderConfig;
use crate::model::{HeadConfig, HeadKind, QaModel};
use crate::train::clip::clip_coef_on_device;
use crate::train::loss::{qa_loss, LossConfig};
use crate::train::optim::{OptimConfig, QaOptimizer};

/// What to measure (also `pipeline bench`'s arguments).
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// `tiny`, `roberta-base`, `roberta-large`, or a HF config.json.
    #[arg(long, default_value = "roberta-base")]
    pub model: String,
    /// `linear` (HF's `qa_outputs`), `bilstm` (2 bidirectional LSTM layers of the encoder's
    /// width, then Linear(2 hidden, 2): the competition notebook's head) or `cnn` (Conv1d with
    /// kernel sizes 1, 3, 5, hidden / 3 channels each, ReLU, then Linear).
    #[arg(long, default_value = "linear")]
    pub head: HeadKind,
    #[arg(long, default_value_t = 384)]
    pub seq: usize,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// `cpu`, `cuda` / `cuda:N`, or `wgpu` / `wgpu:N` / `wgpu:cpu` (Vulkan, Metal).
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    /// `f32`; `bf16-mixed` / `f16-mixed` (autocast with f32 weights, as `train.precision`; the
    /// f16 loss scaler's bookkeeping is not timed); pure `bf16` / `f16` (CUDA only).
    #[arg(long, default_value = "f32")]
    pub precision: Precision,
    /// The device's peak TFLOP/s at this precision, for MFU (e.g. an H100 SXM: 67 for f32 on
    /// CUDA cores, 495 for TF32 tensor cores, 989 for bf16/f16 tensor cores); none: no MFU.
    #[arg(long)]
    pub peak_tflops: Option<f64>,
    /// Run the model's reference path of Burn tensor operations instead of our fused GPU
    /// kernels (LSTM, attention), to compare the two in one build.
    #[arg(long)]
    pub reference_kernels: bool,
    /// AdamW's multi-tensor step (all parameters as one flat tensor); also
    /// `PIPELINE_MULTI_TENSOR=1`.
    #[arg(long)]
    pub multi_tensor_adamw: bool,
}

/// The measurement.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub model: String,
    pub head: HeadKind,
    pub device: String,
    pub precision: String,
    pub seq: usize,
    pub batch: usize,
    pub steps: usize,
    pub parameters: usize,
    pub non_embedding_parameters: usize,
    pub step_seconds: f64,
    pub examples_per_second: f64,
    pub tokens_per_second: f64,
    pub train_flops_per_token: f64,
    pub achieved_tflops: f64,
    pub mfu: Option<f64>,
    pub peak_tflops: Option<f64>,
    pub peak_host_memory_mib: Option<f64>,
    /// Seconds of the warm-up steps together (on CUDA: mostly kernel compilation and
    /// autotuning, unless the kernel cache already holds them).
    pub warmup_seconds: f64,
    /// CUDA: the most GPU memory Burn's allocator held after any step (its reserved pages, like
    /// PyTorch's `max_memory_reserved`).
    pub peak_device_memory_mib: Option<f64>,
    /// Whether this build autotunes CUDA kernels (the opt-in `autotune` feature).
    pub autotune: bool,
    /// Whether AdamW updated all parameters as one tensor (the multi-tensor step, on with
    /// `--multi-tensor-adamw` unless the device's buffer limit forbids it).
    pub multi_tensor_adamw: bool,
    /// Whether the model ran our fused GPU kernels (LSTM, attention) where the backend has
    /// them; false with `--reference-kernels`.
    pub fused_kernels: bool,
    /// The first step's training loss (the inputs and weights are seeded: devices can be
    /// compared on it).
    pub first_loss: f64,
    /// GPU devices: kernels launched per timed step (fused kernels count once), counted from
    /// CubeCL's own launch records; none on the CPU or with `PIPELINE_CUDA_PROFILE` on.
    pub kernel_launches_per_step: Option<f64>,
    /// GPU devices: kernels compiled in the whole run (mostly during warm-up).
    pub kernels_compiled: Option<u64>,
    /// GPU devices: kernels compiled during the timed steps (0 once every shape is warm).
    pub kernels_compiled_timed: Option<u64>,
}

/// A named shape or a `config.json`.
pub fn model_config(name: &str) -> Result<EncoderConfig> {
    let shape = |h: usize, l: usize, heads: usize, i: usize| EncoderConfig {
        model_type: "roberta".into(),
        vocab_size: 50265,
        hidden_size: h,
        num_hidden_layers: l,
        num_attention_heads: heads,
        intermediate_size: i,
        hidden_act: "gelu".into(),
        hidden_dropout_prob: 0.1,
        attention_probs_dropout_prob: 0.1,
        max_position_embeddings: 514,
        type_vocab_size: 1,
        layer_norm_eps: 1e-5,
        pad_token_id: 1,
        initializer_range: 0.02,
    };
    Ok(match name {
        "tiny" => EncoderConfig {
            vocab_size: 1000,
            ..shape(32, 2, 4, 64)
        },
        "roberta-base" => shape(768, 12, 12, 3072),
        "roberta-large" => shape(1024, 24, 16, 4096),
        path => EncoderConfig::load(Path::new(path))?,
    })
}

/// Runs the benchmark on the chosen device.
pub fn run(args: &BenchArgs) -> Result<BenchReport> {
    let cfg = model_config(&args.model)?;
    if args.seq > cfg.max_seq_length()? {
        bail!(
            "--seq {} is longer than the model allows ({})",
            args.seq,
            cfg.max_seq_length()?
        );
    }
    if args.precision.is_pure_half() && args.head == HeadKind::Bilstm && !args.reference_kernels {
        bail!(
            "--precision {} with --head bilstm is not supported (the fused LSTM kernel runs on f32 tensors): use --precision {}-mixed, or --reference-kernels to time the per-operation path",
            args.precision,
            args.precision
        );
    }
    let device_memory = || crate::device::reserved_mib(args.device);
    if args.device != Device::Cpu {
        crate::device::kernel_count::enable();
    }
    crate::with_backend!(args.device, args.precision, |B, d| {
        crate::ui::Ui::default().cuda_summary();
        crate::model::amp::with_fused_kernels(!args.reference_kernels, || {
            run_on::<burn::backend::Autodiff<B>>(args, &cfg, d, &device_memory)
        })
    })
}

fn run_on<B: AutodiffBackend>(
    args: &BenchArgs,
    cfg: &EncoderConfig,
    device: &B::Device,
    device_memory: &dyn Fn() -> Option<f64>,
) -> Result<BenchReport> {
    let (b, s) = (args.batch, args.seq);
    let head = HeadConfig {
        kind: args.head,
        ..HeadConfig::default()
    };
    // Seeded weights and inputs: the first loss is the same from run to run on one device.
    B::seed(device, 42);
    let model = QaModel::<B>::init(cfg, &head, device)?;
    let parameters = model.num_params();
    let embedding =
        (cfg.vocab_size + cfg.max_position_embeddings + cfg.type_vocab_size) * cfg.hidden_size;
    let non_embedding = parameters.saturating_sub(embedding);
    let mut optim =
        QaOptimizer::<B>::new(OptimConfig::default()).with_multi_tensor(args.multi_tensor_adamw);
    if optim.multi_tensor() && !crate::train::optim::multi_tensor_fits(&model, args.device) {
        optim = optim.with_multi_tensor(false);
    }
    let multi_tensor = optim.multi_tensor();
    let loss_cfg = LossConfig::default();
    // Ids from 3 upwards: no pad token, so every position is real.
    let ids: Tensor<B, 2, Int> = Tensor::<B, 2>::random(
        [b, s],
        Distribution::Uniform(3.0, (cfg.vocab_size - 1) as f64),
        device,
    )
    .int();
    let mask: Tensor<B, 2, Int> = Tensor::ones([b, s], device);
    let types: Tensor<B, 2, Int> = Tensor::zeros([b, s], device);
    let labels = |lo: f64| -> Tensor<B, 1, Int> {
        Tensor::<B, 1>::random([b], Distribution::Uniform(lo, (s - 1) as f64), device).int()
    };
    let (sp, ep) = (labels(1.0), labels(1.0));
    let mut first_loss = None;
    let mut step = |model: QaModel<B>| -> QaModel<B> {
        let (st, en) = model.forward(ids.clone(), mask.clone(), types.clone());
        let loss = qa_loss(&loss_cfg, st, en, sp.clone(), ep.clone());
        if first_loss.is_none() {
            first_loss = Some(loss.clone().into_scalar().elem::<f64>());
        }
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let (coef, _) = clip_coef_on_device(&model, &grads, 1.0);
        let model = optim.step_scaled(1e-5, model, grads, coef);
        // Synchronise on a value that depends on the update.
        let _: f64 = model.qa_outputs.weight.val().sum().into_scalar().elem();
        model
    };
    let (model, timing) = time_steps(args, model, &mut step, device_memory);
    let Timing {
        warmup_seconds,
        step_seconds,
        peak_device,
        counts,
    } = timing;
    let steps = args.steps.max(1);
    let _ = model.valid();
    let tokens_per_second = (b * s) as f64 / step_seconds;
    let flops_per_token =
        6.0 * non_embedding as f64 + 12.0 * (cfg.num_hidden_layers * cfg.hidden_size * s) as f64;
    let achieved = flops_per_token * tokens_per_second / 1e12;
    Ok(BenchReport {
        model: args.model.clone(),
        head: args.head,
        device: args.device.to_string(),
        precision: args.precision.to_string(),
        seq: s,
        batch: b,
        steps: args.steps,
        parameters,
        non_embedding_parameters: non_embedding,
        step_seconds,
        examples_per_second: b as f64 / step_seconds,
        tokens_per_second,
        train_flops_per_token: flops_per_token,
        achieved_tflops: achieved,
        mfu: args.peak_tflops.map(|p| achieved / p),
        peak_tflops: args.peak_tflops,
        peak_host_memory_mib: peak_host_memory_mib(),
        warmup_seconds,
        peak_device_memory_mib: peak_device,
        autotune: cfg!(feature = "autotune"),
        multi_tensor_adamw: multi_tensor,
        fused_kernels: crate::model::amp::fused_kernels(),
        first_loss: first_loss.unwrap_or(f64::NAN),
        kernel_launches_per_step: counts.map(|((l0, _), (l1, _))| (l1 - l0) as f64 / steps as f64),
        kernels_compiled: counts.map(|(_, (_, c1))| c1),
        kernels_compiled_timed: counts.map(|((_, c0), (_, c1))| c1 - c0),
    })
}

/// What [`time_steps`] measured.
struct Timing {
    warmup_seconds: f64,
    /// The mean timed step, without the memory queries between steps.
    step_seconds: f64,
    /// The device memory's peak over all steps (MiB), where it can be asked.
    peak_device: Option<f64>,
    /// CubeCL's (launches, compilations) before and after the timed steps, where counted.
    counts: Option<((u64, u64), (u64, u64))>,
}

/// Runs `args.warmup` then `args.steps` (at least 1) training steps with `step`, each step's
/// time on stderr (warm-up steps show kernel compilation and autotuning).
fn time_steps<M>(
    args: &BenchArgs,
    mut model: M,
    step: &mut dyn FnMut(M) -> M,
    device_memory: &dyn Fn() -> Option<f64>,
) -> (M, Timing) {
    let mut peak_device: Option<f64> = None;
    let mut timed = |i: usize, what: &str, t: Instant| {
        eprintln!("{what} step {i}: {:.3} s", t.elapsed().as_secs_f64());
        if let Some(mib) = device_memory() {
            peak_device = Some(peak_device.map_or(mib, |p| p.max(mib)));
        }
    };
    let w0 = Instant::now();
    for i in 0..args.warmup {
        let t = Instant::now();
        model = step(model);
        timed(i + 1, "warm-up", t);
    }
    let warmup_seconds = w0.elapsed().as_secs_f64();
    let counting = crate::device::kernel_count::enabled();
    let before = counting.then(crate::device::kernel_count::settled);
    let mut timed_total = 0.0;
    for i in 0..args.steps.max(1) {
        let t = Instant::now();
        model = step(model);
        timed_total += t.elapsed().as_secs_f64();
        timed(i + 1, "timed", t);
    }
    let after = counting.then(crate::device::kernel_count::settled);
    let timing = Timing {
        warmup_seconds,
        step_seconds: timed_total / args.steps.max(1) as f64,
        peak_device,
        counts: before.zip(after),
    };
    (model, timing)
}

/// The process's peak resident memory (`VmHWM`), Linux only.
fn peak_host_memory_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
