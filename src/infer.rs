//! `pipeline infer`: any HF QA checkpoint (or an exported fold) over a data file.
//!
//! Reads the model folder (config, weights, tokenizer) and the data file; writes into `--out`
//! `predictions.json`, `nbest_predictions.json` and `logits.safetensors` (`start_logits`,
//! `end_logits` f32 `[features, max_seq_length]`, `example_index` i64 `[features]`; features in
//! input order, windows in order, as HF produces them).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use serde::Serialize;

use crate::artifacts::write_logits;
use crate::device::Device;
use crate::model::config::EncoderConfig;
use crate::model::{HeadConfig, QaModel};
use crate::qa::decode::{decode_all, DecodeConfig, Logits};
use crate::qa::examples;
use crate::qa::examples::DataFormat;
use crate::qa::windows::{build_windows, QaTokenizer, Window};
use crate::train::batch::Batching;
use crate::ui::Ui;

/// `pipeline infer`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct InferArgs {
    /// HF model folder: config.json, tokenizer.json, model.safetensors or pytorch_model.bin.
    #[arg(long)]
    pub model: PathBuf,
    /// Data file (any format `prepare` reads; answers optional).
    #[arg(long)]
    pub data: PathBuf,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 384)]
    pub max_seq_length: usize,
    #[arg(long, default_value_t = 128)]
    pub doc_stride: usize,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 20)]
    pub n_best_size: usize,
    #[arg(long, default_value_t = 30)]
    pub max_answer_length: usize,
    /// `linear` (HF qa_outputs) or `bilstm` (an exported BiLSTM fold).
    #[arg(long, default_value = "linear")]
    pub head: crate::model::HeadKind,
    /// `cpu`, `cuda` / `cuda:N`, or `wgpu` / `wgpu:N` / `wgpu:cpu` (Vulkan, Metal).
    #[arg(long, default_value = "cpu")]
    pub device: Device,
    /// Burn's fused attention op instead of matmul, softmax, matmul (`PIPELINE_ATTENTION=fused`,
    /// read by `cli`).
    #[arg(skip)]
    pub fused_attention: bool,
}

/// Runs `model` over windows in batches, in evaluation mode (no dropout, no autodiff), through
/// the same batching as training and prediction use (`fixed_shape`: see
/// [`crate::train::batch::forward_chunks`]).
pub fn window_logits<B: Backend>(
    model: &QaModel<B>,
    windows: &[Window],
    batching: Batching,
    device: &B::Device,
    on_progress: &dyn Fn(u64),
) -> Logits {
    let seq = windows.first().map(|w| w.input_ids.len()).unwrap_or(0);
    let feats = crate::artifacts::Features::from_windows(windows, seq, vec![0; windows.len()]);
    let rows: Vec<usize> = (0..windows.len()).collect();
    crate::train::batch::logits(model, &feats, &rows, batching, device, on_progress)
}

/// JSON with non-ASCII text as is (the competition's format), pretty-printed.
pub fn write_json_utf8<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    crate::run::write_json_atomic(path, value)
}

/// Runs `infer` on the chosen backend.
pub fn run(args: &InferArgs, ui: Ui) -> Result<()> {
    if args.doc_stride >= args.max_seq_length {
        bail!(
            "--doc-stride ({}) must be smaller than --max-seq-length ({})",
            args.doc_stride,
            args.max_seq_length
        );
    }
    crate::model::amp::with_fused_attention(args.fused_attention, || {
        crate::with_backend!(args.device, crate::device::Precision::F32, |B, d| {
            run_on::<B>(args, d, ui)
        })
    })
}

fn run_on<B: Backend>(args: &InferArgs, device: &B::Device, ui: Ui) -> Result<()> {
    // The head's shape (BiLSTM layers, CNN kernel sizes) as the checkpoint's config.json says.
    let config_path = args.model.join(crate::model::CONFIG_FILE);
    let config: serde_json::Value = std::fs::read(&config_path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    let head = HeadConfig::from_checkpoint(args.head, &config);
    let decode = DecodeConfig {
        n_best_size: args.n_best_size,
        max_answer_length: args.max_answer_length,
    };
    ui.cuda_summary();
    let cfg = EncoderConfig::load(&args.model.join(crate::model::CONFIG_FILE))?;
    let tok = QaTokenizer::load(&args.model)?;
    cfg.check_fits_inputs(tok.vocab_size(), args.max_seq_length, &args.model)?;
    let (model, _, report) = QaModel::<B>::from_pretrained(&args.model, &head, device)
        .with_context(|| format!("loading {}", args.model.display()))?;
    if !report.head_loaded {
        ui.info(
            "infer: warning: the checkpoint has no trained QA head; it was initialised at random",
        );
    }
    if !report.unused.is_empty() {
        ui.info(&format!(
            "infer: {} checkpoint tensors unused: {}",
            report.unused.len(),
            report.unused.join(", ")
        ));
    }
    let (examples, load) = examples::load(&args.data, DataFormat::Auto, false, 32)?;
    if load.dropped_examples > 0 {
        ui.info(&format!(
            "infer: {} examples dropped: no answer matched their context",
            load.dropped_examples
        ));
    }
    let windows = build_windows(
        &tok,
        &examples,
        args.max_seq_length,
        args.doc_stride,
        &|_| {},
    )?;
    let bar = ui.bar(windows.len() as u64, "infer");
    let batching = Batching::padded(args.batch_size, args.device.wants_fixed_shapes());
    let logits = window_logits(&model, &windows, batching, device, &|n| bar.inc(n));
    bar.finish_and_clear();
    let (preds, nbest) = decode_all(&examples, &windows, &logits, &decode);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let ex_index: Vec<i64> = windows.iter().map(|w| w.example_index as i64).collect();
    write_logits(
        &args.out.join(crate::run::names::LOGITS),
        &logits,
        &ex_index,
        None,
    )?;
    write_json_utf8(&args.out.join(crate::run::names::NBEST_PREDICTIONS), &nbest)?;
    write_json_utf8(&args.out.join(crate::run::names::PREDICTIONS), &preds)?;
    ui.info(&format!(
        "infer: {} examples, {} windows -> {}",
        examples.len(),
        windows.len(),
        args.out.join(crate::run::names::PREDICTIONS).display()
    ));
    Ok(())
}
