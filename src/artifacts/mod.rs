//! File formats that stages hand to each other: examples (Parquet), token windows
//! (safetensors), fold assignments (Parquet), logits (safetensors), predictions (JSON). Every writer goes through the atomic-write helper.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use polars::prelude::*;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::qa::decode::Logits;
use crate::qa::examples::{Answer, Example};
use crate::qa::windows::Window;
use crate::run::write_atomic_with;

mod fold_logits;
mod summaries;
pub use fold_logits::{mean_test_logits, pooled_oof_logits, RowLogits};
pub use summaries::{
    fold_summaries, read_summary, require_summary, EnsembleSummary, EvalLine, KeepBestBy,
    MeanScore, RunMetrics, TestScores, TrainSummary,
};

/// Character offsets of one window's tokens (`None` outside the context).
pub type ContextOffsets = Vec<Option<(usize, usize)>>;

/// Which source an example came from.
pub const SPLIT_TRAIN: &str = "train";
pub const SPLIT_TEST: &str = "test";

/// Writes `df` to `path` as Parquet, atomically.
pub fn write_parquet(path: &Path, df: &mut DataFrame) -> Result<()> {
    write_atomic_with(path, |f| {
        ParquetWriter::new(f).finish(df)?;
        Ok(())
    })
}

fn read_parquet(path: &Path) -> Result<DataFrame> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    ParquetReader::new(file)
        .finish()
        .map_err(|e| anyhow!("reading {}: {e}", path.display()))
}

/// The content key of the training part of a `prepare` stage: its training examples (in
/// order), their windows (every field) and the tokenizer file, each hashed, with their counts.
/// A new or changed test file leaves it the same, so the folds trained on it stay done.
pub fn prepared_train_key(
    examples: &Path,
    features: &Path,
    tokenizer: &Path,
) -> Result<serde_json::Value> {
    let (ex, sources) = read_examples(examples)?;
    let is_train = |i: usize| sources.get(i).map(String::as_str) == Some(SPLIT_TRAIN);
    let mut h = blake3::Hasher::new();
    let mut n_ex = 0usize;
    for (i, e) in ex.iter().enumerate().filter(|(i, _)| is_train(*i)) {
        h.update(&(i as u64).to_le_bytes());
        h.update(&serde_json::to_vec(e)?);
        n_ex += 1;
    }
    let examples_hash = h.finalize().to_hex().to_string();
    let f = Features::load(features)?;
    let l = f.max_seq_length;
    let mut h = blake3::Hasher::new();
    h.update(&(l as u64).to_le_bytes());
    let mut n_win = 0usize;
    for r in (0..f.len()).filter(|&r| is_train(f.example_index[r] as usize)) {
        let row = r * l..(r + 1) * l;
        for v in &f.input_ids[row.clone()] {
            h.update(&v.to_le_bytes());
        }
        h.update(&f.attention_mask[row.clone()]);
        h.update(&f.token_type_ids[row]);
        for v in &f.offsets[r * l * 2..(r + 1) * l * 2] {
            h.update(&v.to_le_bytes());
        }
        h.update(&f.example_index[r].to_le_bytes());
        h.update(&f.window_index[r].to_le_bytes());
        h.update(&f.start_positions[r].to_le_bytes());
        h.update(&f.end_positions[r].to_le_bytes());
        h.update(&[f.train_window[r]]);
        n_win += 1;
    }
    Ok(serde_json::json!({
        "train_examples": n_ex,
        "examples": examples_hash,
        "train_windows": n_win,
        "windows": h.finalize().to_hex().to_string(),
        "tokenizer": crate::run::FileRecord::of(tokenizer)?.blake3,
    }))
}

/// The content key of the training part of a `split` stage: the fold of every example from
/// the training file (held-out ones included), in order.
pub fn split_train_key(examples: &Path, folds: &Path) -> Result<serde_json::Value> {
    let (_, sources) = read_examples(examples)?;
    let folds = read_folds(folds)?;
    let mut h = blake3::Hasher::new();
    let mut n = 0usize;
    for (i, f) in folds.iter().enumerate() {
        if sources.get(i).map(String::as_str) == Some(SPLIT_TRAIN) {
            h.update(&(i as u64).to_le_bytes());
            h.update(&f.to_le_bytes());
            n += 1;
        }
    }
    Ok(serde_json::json!({
        "train_examples": n,
        "folds": h.finalize().to_hex().to_string(),
    }))
}

/// Writes `examples.parquet`: one row per example, `source` = train or test.
pub fn write_examples(path: &Path, examples: &[Example], sources: &[&str]) -> Result<()> {
    let texts: ListChunked = examples
        .iter()
        .map(|e| {
            let t: Vec<&str> = e.answers.iter().map(|a| a.text.as_str()).collect();
            Some(Series::new("".into(), t))
        })
        .collect();
    let starts: ListChunked = examples
        .iter()
        .map(|e| {
            let s: Vec<i64> = e.answers.iter().map(|a| a.start as i64).collect();
            Some(Series::new("".into(), s))
        })
        .collect();
    let col = |name: &str, v: Vec<&str>| Column::from(Series::new(name.into(), v));
    let mut df = DataFrame::new_infer_height(vec![
        Column::from(Series::new(
            "example_index".into(),
            (0..examples.len() as u32).collect::<Vec<_>>(),
        )),
        col("id", examples.iter().map(|e| e.id.as_str()).collect()),
        col("title", examples.iter().map(|e| e.title.as_str()).collect()),
        Column::from(Series::new(
            "document_id".into(),
            examples
                .iter()
                .map(|e| e.document_id.as_deref())
                .collect::<Vec<_>>(),
        )),
        col(
            "context",
            examples.iter().map(|e| e.context.as_str()).collect(),
        ),
        col(
            "question",
            examples.iter().map(|e| e.question.as_str()).collect(),
        ),
        Column::from(texts.into_series().with_name("answer_text".into())),
        Column::from(starts.into_series().with_name("answer_start".into())),
        col("source", sources.to_vec()),
        Column::from(Series::new(
            "context_chars".into(),
            examples
                .iter()
                .map(|e| e.context.chars().count() as u32)
                .collect::<Vec<_>>(),
        )),
    ])?;
    write_parquet(path, &mut df)
}

/// Reads `examples.parquet` back as examples and their sources.
pub fn read_examples(path: &Path) -> Result<(Vec<Example>, Vec<String>)> {
    let df = read_parquet(path)?;
    let strs = |name: &str| -> Result<Vec<Option<String>>> {
        Ok(df
            .column(name)?
            .str()?
            .iter()
            .map(|v| v.map(str::to_string))
            .collect())
    };
    let ids = strs("id")?;
    let titles = strs("title")?;
    let docs = strs("document_id")?;
    let contexts = strs("context")?;
    let questions = strs("question")?;
    let sources = strs("source")?;
    let texts = df.column("answer_text")?.list()?.clone();
    let starts = df.column("answer_start")?.list()?.clone();
    let mut out = Vec::with_capacity(df.height());
    for (i, (t, s)) in texts.series_iter().zip(starts.series_iter()).enumerate() {
        let t: Vec<String> = match t {
            Some(t) => t
                .str()?
                .iter()
                .map(|v| v.unwrap_or_default().to_string())
                .collect(),
            None => Vec::new(),
        };
        let s: Vec<i64> = match s {
            Some(s) => s.i64()?.iter().map(|v| v.unwrap_or(0)).collect(),
            None => Vec::new(),
        };
        out.push(Example {
            id: ids[i].clone().unwrap_or_default(),
            title: titles[i].clone().unwrap_or_default(),
            document_id: docs[i].clone(),
            context: contexts[i].clone().unwrap_or_default(),
            question: questions[i].clone().unwrap_or_default(),
            answers: t
                .into_iter()
                .zip(s)
                .map(|(text, start)| Answer {
                    text,
                    start: start.max(0) as usize,
                })
                .collect(),
        });
    }
    let sources = sources.into_iter().map(Option::unwrap_or_default).collect();
    Ok((out, sources))
}

/// All windows of a dataset as dense arrays of `[n_windows, max_seq_length]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    pub max_seq_length: usize,
    pub input_ids: Vec<i32>,
    pub attention_mask: Vec<u8>,
    pub token_type_ids: Vec<u8>,
    /// `[n, L, 2]` character offsets into the context; `-1` for tokens outside the context.
    pub offsets: Vec<i32>,
    pub example_index: Vec<i64>,
    pub window_index: Vec<i32>,
    pub start_positions: Vec<i32>,
    pub end_positions: Vec<i32>,
    /// 1 where the window is used for training (all labelled windows, or in `overflow = "drop"`
    /// mode only first windows that contain the answer).
    pub train_window: Vec<u8>,
}

impl Features {
    /// `n` windows of length `l` (for tests): ids 1, all tokens real, segment 0, no context
    /// offsets, one example per window, labels `(0, 0)`, all training windows.
    pub fn blank(n: usize, l: usize) -> Self {
        Features {
            max_seq_length: l,
            input_ids: vec![1; n * l],
            attention_mask: vec![1; n * l],
            token_type_ids: vec![0; n * l],
            offsets: vec![-1; n * l * 2],
            example_index: (0..n as i64).collect(),
            window_index: vec![0; n],
            start_positions: vec![0; n],
            end_positions: vec![0; n],
            train_window: vec![1; n],
        }
    }

    /// Number of windows.
    pub fn len(&self) -> usize {
        self.example_index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Flattens windows; `train_window[i]` says which ones train.
    pub fn from_windows(windows: &[Window], max_seq_length: usize, train_window: Vec<u8>) -> Self {
        let n = windows.len();
        let l = max_seq_length;
        let mut f = Features {
            max_seq_length,
            input_ids: Vec::with_capacity(n * l),
            attention_mask: Vec::with_capacity(n * l),
            token_type_ids: Vec::with_capacity(n * l),
            offsets: Vec::with_capacity(n * l * 2),
            example_index: Vec::with_capacity(n),
            window_index: Vec::with_capacity(n),
            start_positions: Vec::with_capacity(n),
            end_positions: Vec::with_capacity(n),
            train_window,
        };
        for w in windows {
            f.input_ids.extend(w.input_ids.iter().map(|&x| x as i32));
            f.attention_mask
                .extend(w.attention_mask.iter().map(|&x| x as u8));
            f.token_type_ids
                .extend(w.type_ids.iter().map(|&x| x.min(255) as u8));
            for (o, s) in w.offsets.iter().zip(&w.sequence_ids) {
                if *s == Some(1) {
                    f.offsets.extend([o.0 as i32, o.1 as i32]);
                } else {
                    f.offsets.extend([-1, -1]);
                }
            }
            f.example_index.push(w.example_index as i64);
            f.window_index.push(w.window_index as i32);
            f.start_positions.push(w.start_position as i32);
            f.end_positions.push(w.end_position as i32);
        }
        f
    }

    /// Tokens of window `i` up to its last real one (windows are right-padded).
    pub fn length(&self, i: usize) -> usize {
        let l = self.max_seq_length;
        let mask = &self.attention_mask[i * l..(i + 1) * l];
        mask.iter().rposition(|&m| m != 0).map_or(0, |j| j + 1)
    }

    /// What decoding needs of the feature rows `rows`: each one's example, and its tokens'
    /// context offsets.
    pub fn decode_meta(&self, rows: &[i64]) -> (Vec<usize>, Vec<ContextOffsets>) {
        (
            rows.iter()
                .map(|&r| self.example_index[r as usize] as usize)
                .collect(),
            rows.iter()
                .map(|&r| self.context_offsets(r as usize))
                .collect(),
        )
    }

    /// Context offsets of window `i` (`None` outside the context), for decoding.
    pub fn context_offsets(&self, i: usize) -> Vec<Option<(usize, usize)>> {
        let l = self.max_seq_length;
        self.offsets[i * l * 2..(i + 1) * l * 2]
            .chunks_exact(2)
            .map(|c| (c[0] >= 0).then(|| (c[0] as usize, c[1] as usize)))
            .collect()
    }

    /// Writes `features.safetensors`.
    pub fn save(&self, path: &Path) -> Result<()> {
        let n = self.len();
        let l = self.max_seq_length;
        let bytes_i32 = |v: &[i32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let bytes_i64 = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let owned: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = vec![
            (
                "input_ids",
                Dtype::I32,
                vec![n, l],
                bytes_i32(&self.input_ids),
            ),
            (
                "attention_mask",
                Dtype::U8,
                vec![n, l],
                self.attention_mask.clone(),
            ),
            (
                "token_type_ids",
                Dtype::U8,
                vec![n, l],
                self.token_type_ids.clone(),
            ),
            (
                "offsets",
                Dtype::I32,
                vec![n, l, 2],
                bytes_i32(&self.offsets),
            ),
            (
                "example_index",
                Dtype::I64,
                vec![n],
                bytes_i64(&self.example_index),
            ),
            (
                "window_index",
                Dtype::I32,
                vec![n],
                bytes_i32(&self.window_index),
            ),
            (
                "start_positions",
                Dtype::I32,
                vec![n],
                bytes_i32(&self.start_positions),
            ),
            (
                "end_positions",
                Dtype::I32,
                vec![n],
                bytes_i32(&self.end_positions),
            ),
            (
                "train_window",
                Dtype::U8,
                vec![n],
                self.train_window.clone(),
            ),
        ];
        let views: Vec<(&str, TensorView<'_>)> = owned
            .iter()
            .map(|(name, dt, shape, data)| {
                TensorView::new(*dt, shape.clone(), data)
                    .map(|v| (*name, v))
                    .map_err(|e| anyhow!("{name}: {e}"))
            })
            .collect::<Result<_>>()?;
        let meta = HashMap::from([("max_seq_length".to_string(), l.to_string())]);
        let bytes = safetensors::serialize(views, Some(meta))?;
        crate::run::write_atomic(path, &bytes)
    }

    /// Reads `features.safetensors`.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| anyhow!("{}: not a safetensors file: {e}", path.display()))?;
        let get = |name: &str, dt: Dtype| -> Result<(Vec<usize>, Vec<u8>)> {
            let t = st
                .tensor(name)
                .map_err(|e| anyhow!("{}: tensor {name}: {e}", path.display()))?;
            if t.dtype() != dt {
                bail!(
                    "{}: tensor {name} has dtype {:?}, expected {dt:?}",
                    path.display(),
                    t.dtype()
                );
            }
            Ok((t.shape().to_vec(), t.data().to_vec()))
        };
        let i32s = |b: Vec<u8>| -> Vec<i32> {
            b.chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        };
        let (shape, ids) = get("input_ids", Dtype::I32)?;
        if shape.len() != 2 {
            bail!(
                "{}: input_ids must be [windows, max_seq_length]",
                path.display()
            );
        }
        let (_, ex) = get("example_index", Dtype::I64)?;
        Ok(Features {
            max_seq_length: shape[1],
            input_ids: i32s(ids),
            attention_mask: get("attention_mask", Dtype::U8)?.1,
            token_type_ids: get("token_type_ids", Dtype::U8)?.1,
            offsets: i32s(get("offsets", Dtype::I32)?.1),
            example_index: ex
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect(),
            window_index: i32s(get("window_index", Dtype::I32)?.1),
            start_positions: i32s(get("start_positions", Dtype::I32)?.1),
            end_positions: i32s(get("end_positions", Dtype::I32)?.1),
            train_window: get("train_window", Dtype::U8)?.1,
        })
    }
}

/// Fold of every example: `0..k`, or [`TEST_FOLD`] for the test split.
pub const TEST_FOLD: i32 = -1;

/// Writes `folds.parquet`: example_index, id, group, fold.
pub fn write_folds(path: &Path, ids: &[String], groups: &[String], folds: &[i32]) -> Result<()> {
    let mut df = DataFrame::new_infer_height(vec![
        Column::from(Series::new(
            "example_index".into(),
            (0..ids.len() as u32).collect::<Vec<_>>(),
        )),
        Column::from(Series::new("id".into(), ids)),
        Column::from(Series::new("group".into(), groups)),
        Column::from(Series::new("fold".into(), folds)),
    ])?;
    write_parquet(path, &mut df)
}

/// Reads the fold of every example (index = example_index).
pub fn read_folds(path: &Path) -> Result<Vec<i32>> {
    let df = read_parquet(path)?;
    Ok(df
        .column("fold")?
        .i32()?
        .iter()
        .map(|v| v.unwrap_or(TEST_FOLD))
        .collect())
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

/// Reads a predictions file (`{"id": "answer", ...}`: ours, or a user's for `pipeline score`),
/// naming the file and the id whose prediction is not a string.
pub fn read_predictions(path: &Path) -> Result<std::collections::BTreeMap<String, String>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let value: serde_json::Value = serde_json::from_slice(crate::qa::examples::strip_bom(&bytes))
        .with_context(|| format!("{}: not JSON", path.display()))?;
    let Some(obj) = value.as_object() else {
        bail!(
            "{}: expected a JSON object {{\"id\": \"answer\", ...}}",
            path.display()
        );
    };
    obj.iter()
        .map(|(id, v)| match v.as_str() {
            Some(s) => Ok((id.clone(), s.to_string())),
            None => bail!(
                "{}: id {id:?}: the prediction must be a string, got {v}",
                path.display()
            ),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_and_features_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let ex = vec![
            Example {
                id: "1".into(),
                title: "제목".into(),
                document_id: Some("d".into()),
                context: "가나다 라마".into(),
                question: "무엇?".into(),
                answers: vec![Answer {
                    text: "라마".into(),
                    start: 4,
                }],
            },
            Example {
                id: "2".into(),
                title: "t".into(),
                document_id: None,
                context: "x".into(),
                question: "y".into(),
                answers: vec![],
            },
        ];
        let p = tmp.path().join("e.parquet");
        write_examples(&p, &ex, &[SPLIT_TRAIN, SPLIT_TEST]).unwrap();
        let (back, src) = read_examples(&p).unwrap();
        assert_eq!(back, ex);
        assert_eq!(src, vec!["train", "test"]);

        let f = Features {
            max_seq_length: 2,
            input_ids: vec![1, 2, 3, 4],
            attention_mask: vec![1, 1, 1, 0],
            token_type_ids: vec![0, 1, 0, 0],
            offsets: vec![-1, -1, 0, 2, -1, -1, 3, 5],
            example_index: vec![0, 0],
            window_index: vec![0, 1],
            start_positions: vec![1, 0],
            end_positions: vec![1, 0],
            train_window: vec![1, 0],
        };
        let p = tmp.path().join("f.safetensors");
        f.save(&p).unwrap();
        assert_eq!(Features::load(&p).unwrap(), f);
        assert_eq!(f.context_offsets(1), vec![None, Some((3, 5))]);
    }
}
