//! `pipeline infer`: any HF QA checkpoint (or an exported fold) over a data file.
//!
//! Reads the model folder (config, weights, tokenizer) and the data file; writes into `--out`
//! `predictions.json`, `nbest_predictions.json` and `logits.safetensors` (`start_logits`,
//! `end_logits` f32 `[features, max_seq_length]`, `example_index` i64 `[features]`; features in
//! input order, windows in order, as HF produces them).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use burn::tensor::backend::Backend;
use safetensors::tensor::{Dtype, TensorView};
use serde::Serialize;

use crate::device::Device;
use crate::model::config::EncoderConfig;
use crate::model::{HeadConfig, QaModel};
use crate::qa::decode::{decode_example, DecodeConfig, WindowLogits};
use crate::qa::examples::{self, Example};
use crate::qa::windows::{build_windows, QaTokenizer, Window};
use crate::settings::DataFormat;
use crate::ui::Ui;

/// What `infer` needs.
#[derive(Debug, Clone)]
pub struct InferArgs {
    pub model: PathBuf,
    pub data: PathBuf,
    pub out: PathBuf,
    pub max_seq_length: usize,
    pub doc_stride: usize,
    pub batch_size: usize,
    pub decode: DecodeConfig,
    pub head: HeadConfig,
    pub device: Device,
}

/// Start/end logits of every window, row-major `[windows, seq]`.
pub struct Logits {
    pub seq: usize,
    pub start: Vec<f32>,
    pub end: Vec<f32>,
}

/// Runs `model` over windows in batches, in evaluation mode (no dropout, no autodiff), through
/// the same batching as training and prediction use (`fixed_shape`: see
/// [`crate::train::batch::forward_chunks`]).
pub fn window_logits<B: Backend>(
    model: &QaModel<B>,
    windows: &[Window],
    batch_size: usize,
    fixed_shape: bool,
    device: &B::Device,
    on_progress: &dyn Fn(u64),
) -> Logits {
    let seq = windows.first().map(|w| w.input_ids.len()).unwrap_or(0);
    let feats = crate::artifacts::Features::from_windows(windows, seq, vec![0; windows.len()]);
    let rows: Vec<usize> = (0..windows.len()).collect();
    crate::train::batch::logits(
        model,
        &feats,
        &rows,
        batch_size,
        fixed_shape,
        device,
        on_progress,
    )
}

/// One n-best entry as HF writes it.
#[derive(Debug, Clone, Serialize)]
pub struct NbestEntry {
    pub text: String,
    pub probability: f32,
    pub start_logit: f32,
    pub end_logit: f32,
}

/// Decodes every example from its windows' logits: best answers and n-best lists, by id.
pub fn decode_all(
    examples: &[Example],
    windows: &[Window],
    logits: &Logits,
    cfg: &DecodeConfig,
) -> (BTreeMap<String, String>, BTreeMap<String, Vec<NbestEntry>>) {
    let row_example: Vec<usize> = windows.iter().map(|w| w.example_index).collect();
    let offsets: Vec<Vec<Option<(usize, usize)>>> =
        windows.iter().map(Window::context_offsets).collect();
    decode_rows(examples, &row_example, &offsets, logits, cfg)
}

/// Decodes the examples that have rows: row `r` of `logits` is a window of example
/// `row_example[r]` with context offsets `row_offsets[r]`; rows of one example in window order.
pub fn decode_rows(
    examples: &[Example],
    row_example: &[usize],
    row_offsets: &[Vec<Option<(usize, usize)>>],
    logits: &Logits,
    cfg: &DecodeConfig,
) -> (BTreeMap<String, String>, BTreeMap<String, Vec<NbestEntry>>) {
    let mut by_example: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (r, &e) in row_example.iter().enumerate() {
        by_example.entry(e).or_default().push(r);
    }
    let l = logits.seq;
    let mut preds = BTreeMap::new();
    let mut nbest = BTreeMap::new();
    for (&ei, rows) in &by_example {
        let ex = &examples[ei];
        let ws: Vec<WindowLogits> = rows
            .iter()
            .map(|&i| WindowLogits {
                start_logits: &logits.start[i * l..(i + 1) * l],
                end_logits: &logits.end[i * l..(i + 1) * l],
                offsets: &row_offsets[i],
            })
            .collect();
        let cands = decode_example(&ex.context, &ws, cfg);
        preds.insert(
            ex.id.clone(),
            cands.first().map(|c| c.text.clone()).unwrap_or_default(),
        );
        nbest.insert(
            ex.id.clone(),
            cands
                .into_iter()
                .map(|c| NbestEntry {
                    text: c.text,
                    probability: c.probability,
                    start_logit: c.start_logit,
                    end_logit: c.end_logit,
                })
                .collect(),
        );
    }
    (preds, nbest)
}

/// Writes `logits.safetensors` atomically: `start_logits`, `end_logits` `[rows, seq]`,
/// `example_index` `[rows]`, and `feature_index` `[rows]` (the window's row in
/// `prepare/features.safetensors`) when given.
pub fn write_logits(
    path: &Path,
    logits: &Logits,
    example_index: &[i64],
    feature_index: Option<&[i64]>,
) -> Result<()> {
    let n = example_index.len();
    let f32b = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let i64b = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let (s, e) = (f32b(&logits.start), f32b(&logits.end));
    let ex = i64b(example_index);
    let fi = feature_index.map(i64b);
    let mut views = vec![
        (
            "end_logits",
            TensorView::new(Dtype::F32, vec![n, logits.seq], &e)?,
        ),
        ("example_index", TensorView::new(Dtype::I64, vec![n], &ex)?),
        (
            "start_logits",
            TensorView::new(Dtype::F32, vec![n, logits.seq], &s)?,
        ),
    ];
    if let Some(fi) = &fi {
        views.push(("feature_index", TensorView::new(Dtype::I64, vec![n], fi)?));
    }
    let bytes = safetensors::serialize(views, None)?;
    crate::run::write_atomic(path, &bytes)
}

/// Reads a logits file written by [`write_logits`]: logits, example index, feature index.
pub fn read_logits(path: &Path) -> Result<(Logits, Vec<i64>, Vec<i64>)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let get = |name: &str| {
        st.tensor(name)
            .map_err(|e| anyhow::anyhow!("{}: {name}: {e}", path.display()))
    };
    let s = get("start_logits")?;
    let seq = s.shape().get(1).copied().unwrap_or(0);
    let f32s = |d: &[u8]| -> Vec<f32> {
        d.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let i64s = |d: &[u8]| -> Vec<i64> {
        d.chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect()
    };
    let start = f32s(s.data());
    let end = f32s(get("end_logits")?.data());
    let ex = i64s(get("example_index")?.data());
    let fi = match st.tensor("feature_index") {
        Ok(t) => i64s(t.data()),
        Err(_) => Vec::new(),
    };
    Ok((Logits { seq, start, end }, ex, fi))
}

/// JSON with non-ASCII text as is (the competition's format), pretty-printed.
pub fn write_json_utf8<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    crate::run::write_json_atomic(path, value)
}

/// Runs `infer` on the chosen backend.
pub fn run(args: &InferArgs, ui: Ui) -> Result<()> {
    crate::with_backend!(args.device, crate::device::Precision::F32, |B, d| {
        run_on::<B>(args, d, ui)
    })
}

fn run_on<B: Backend>(args: &InferArgs, device: &B::Device, ui: Ui) -> Result<()> {
    ui.cuda_summary();
    let cfg = EncoderConfig::load(&args.model.join("config.json"))?;
    let tok = QaTokenizer::load(&args.model)?;
    check_compatible(&cfg, &tok, args.max_seq_length, &args.model)?;
    let (model, _, report) = QaModel::<B>::from_pretrained(&args.model, &args.head, device)
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
    let fixed = args.device.wants_fixed_shapes();
    let logits = window_logits(&model, &windows, args.batch_size, fixed, device, &|n| {
        bar.inc(n)
    });
    bar.finish_and_clear();
    let (preds, nbest) = decode_all(&examples, &windows, &logits, &args.decode);
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let ex_index: Vec<i64> = windows.iter().map(|w| w.example_index as i64).collect();
    write_logits(
        &args.out.join("logits.safetensors"),
        &logits,
        &ex_index,
        None,
    )?;
    write_json_utf8(&args.out.join("nbest_predictions.json"), &nbest)?;
    write_json_utf8(&args.out.join("predictions.json"), &preds)?;
    ui.info(&format!(
        "infer: {} examples, {} windows -> {}",
        examples.len(),
        windows.len(),
        args.out.join("predictions.json").display()
    ));
    Ok(())
}

/// Tokenizer and model must agree on the vocabulary, and windows must fit the position table.
pub fn check_compatible(
    cfg: &EncoderConfig,
    tok: &QaTokenizer,
    max_seq_length: usize,
    dir: &Path,
) -> Result<()> {
    let vocab = tok.vocab_size();
    if vocab > cfg.vocab_size {
        bail!(
            "{}: the tokenizer has {vocab} tokens but the model's vocab_size is {}: they do not belong together",
            dir.display(),
            cfg.vocab_size
        );
    }
    let max = cfg.max_seq_length()?;
    if max_seq_length > max {
        bail!(
            "max_seq_length {max_seq_length} is longer than the model allows ({max}, from max_position_embeddings {})",
            cfg.max_position_embeddings
        );
    }
    Ok(())
}
