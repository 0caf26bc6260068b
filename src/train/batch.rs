//! Batches of windows from `prepare/features.safetensors` as tensors, the batching strategies
//! (`train.batching`), and model logits over a list of windows in evaluation mode.
//!
//! - `padded`: every batch is `max_seq_length` long (the windows as `prepare` wrote them).
//! - `dynamic`: each batch is cut to its longest window rounded up to `pad_multiple` (HF's
//!   `DataCollatorWithPadding(pad_to_multiple_of=…)`), so a GPU sees few shapes.
//! - `bucket`: `dynamic`, with windows of similar length batched together: HF's
//!   `group_by_length` for training (the seeded shuffle is cut into mega-batches of 50 batches,
//!   each sorted by length), and evaluation in length order.
//!
//! Windows are right-padded, so cutting a batch keeps every real token and its position; the
//! encoder masks the pads either way, the BiLSTM packs them out and the CNN zeroes them, so the
//! logits at real tokens do not change beyond float noise. The loss does: its softmax runs over
//! the batch's positions, and the pads a shorter batch drops leave its denominator (as in HF
//! with dynamic padding). Logits handed on keep the `[rows, max_seq_length]` layout, positions
//! past a cut batch filled with -100 (HF's `create_and_fill_np_array`).

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::artifacts::Features;
use crate::model::QaModel;
use crate::qa::decode::Logits;

/// Input tensors of the windows `rows` (indices into `feats`).
pub struct Batch<B: Backend> {
    pub input_ids: Tensor<B, 2, Int>,
    pub attention_mask: Tensor<B, 2, Int>,
    pub token_type_ids: Tensor<B, 2, Int>,
    pub start_positions: Tensor<B, 1, Int>,
    pub end_positions: Tensor<B, 1, Int>,
}

/// Gathers `rows` of `feats` into tensors on `device`, `len` tokens long (the windows' first
/// `len` tokens: `max_seq_length` for a padded batch).
pub fn batch<B: Backend>(
    feats: &Features,
    rows: &[usize],
    len: usize,
    device: &B::Device,
) -> Batch<B> {
    let l = feats.max_seq_length;
    let len = len.min(l);
    let b = rows.len();
    let gather = |src: &dyn Fn(usize) -> i64| -> Tensor<B, 2, Int> {
        let mut v = Vec::with_capacity(b * len);
        for &r in rows {
            for j in 0..len {
                v.push(src(r * l + j));
            }
        }
        Tensor::from_data(TensorData::new(v, [b, len]), device)
    };
    let (start_positions, end_positions) = labels::<B>(feats, rows, device);
    Batch {
        input_ids: gather(&|i| feats.input_ids[i] as i64),
        attention_mask: gather(&|i| feats.attention_mask[i] as i64),
        token_type_ids: gather(&|i| feats.token_type_ids[i] as i64),
        start_positions,
        end_positions,
    }
}

/// The start and end labels of `rows` as tensors on `device`.
pub fn labels<B: Backend>(
    feats: &Features,
    rows: &[usize],
    device: &B::Device,
) -> (Tensor<B, 1, Int>, Tensor<B, 1, Int>) {
    let of = |src: &[i32]| -> Tensor<B, 1, Int> {
        let v: Vec<i64> = rows.iter().map(|&r| src[r] as i64).collect();
        Tensor::from_data(TensorData::new(v, [rows.len()]), device)
    };
    (of(&feats.start_positions), of(&feats.end_positions))
}

/// How batches are shaped (`train.batching`; see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum BatchStrategy {
    #[default]
    Padded,
    Dynamic,
    Bucket,
}

/// HF's `group_by_length` mega-batch: this many batches are sorted by length together.
const MEGA_BATCHES: usize = 50;

/// The logit written at positions past a cut batch (HF's `create_and_fill_np_array`).
pub const PAD_LOGIT: f32 = -100.0;

impl BatchStrategy {
    pub fn is_padded(&self) -> bool {
        *self == BatchStrategy::Padded
    }

    /// The length of a batch of `rows`: `max_seq_length` when padded, else the longest
    /// window rounded up to a multiple of `pad_multiple` (at most `max_seq_length`).
    pub fn length(self, feats: &Features, rows: &[usize], pad_multiple: usize) -> usize {
        let l = feats.max_seq_length;
        if self.is_padded() {
            return l;
        }
        let longest = rows
            .iter()
            .map(|&r| feats.length(r))
            .max()
            .unwrap_or(1)
            .max(1);
        longest
            .div_ceil(pad_multiple.max(1))
            .saturating_mul(pad_multiple.max(1))
            .min(l)
    }

    /// The training batches of one epoch from its seeded `order` of windows: `batch_size`
    /// consecutive windows, after `bucket` has sorted each mega-batch by length (longest
    /// first; ties keep the shuffled order). A pure function of the order: resume is exact.
    pub fn training_order(
        self,
        feats: &Features,
        mut order: Vec<usize>,
        batch_size: usize,
    ) -> Vec<usize> {
        if self == BatchStrategy::Bucket {
            for mega in order.chunks_mut(MEGA_BATCHES * batch_size.max(1)) {
                mega.sort_by_key(|&r| std::cmp::Reverse(feats.length(r)));
            }
        }
        order
    }
}

/// How evaluation and prediction batch windows.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    pub batch_size: usize,
    /// Pad a short last batch to `batch_size` (see [`forward_chunks`]).
    pub fixed_shape: bool,
    pub strategy: BatchStrategy,
    pub pad_multiple: usize,
}

impl Batching {
    /// Padded batches of `batch_size`.
    pub fn padded(batch_size: usize, fixed_shape: bool) -> Self {
        Self {
            batch_size,
            fixed_shape,
            strategy: BatchStrategy::Padded,
            pad_multiple: 1,
        }
    }
}

/// Runs the model in chunks of `batch_size` windows of `rows` and hands `each` every chunk:
/// the chunk's positions in `rows`, and their start/end logits `[n, len]` (`len` the chunk's
/// length, see [`BatchStrategy::length`]). Chunks follow `rows`' order, except `bucket`'s,
/// which follow the windows' length. With `fixed_shape`, a short last chunk is padded to
/// `batch_size` by repeating its first window and the padding is cut off the logits before
/// `each` sees them: a JIT backend (CUDA) then compiles and autotunes one batch shape, not two.
pub fn forward_chunks<B: Backend>(
    model: &QaModel<B>,
    feats: &Features,
    rows: &[usize],
    batching: Batching,
    device: &B::Device,
    mut each: impl FnMut(&[usize], Tensor<B, 2>, Tensor<B, 2>),
) {
    let (size, fixed_shape) = (batching.batch_size.max(1), batching.fixed_shape);
    let mut positions: Vec<usize> = (0..rows.len()).collect();
    if batching.strategy == BatchStrategy::Bucket {
        positions.sort_by_key(|&p| std::cmp::Reverse(feats.length(rows[p])));
    }
    for chunk in positions.chunks(size) {
        let n = chunk.len();
        let mut input: Vec<usize> = chunk.iter().map(|&p| rows[p]).collect();
        let len = batching
            .strategy
            .length(feats, &input, batching.pad_multiple);
        if fixed_shape && n < size {
            input.extend(std::iter::repeat_n(input[0], size - n));
        }
        let b = batch::<B>(feats, &input, len, device);
        let (s, e) = model.forward(b.input_ids, b.attention_mask, b.token_type_ids);
        if input.len() > n {
            each(chunk, s.narrow(0, 0, n), e.narrow(0, 0, n));
        } else {
            each(chunk, s, e);
        }
    }
}

/// Start/end logits of `rows`, in that order, computed `batch_size` windows at a time (see
/// [`forward_chunks`]).
pub fn logits<B: Backend>(
    model: &QaModel<B>,
    feats: &Features,
    rows: &[usize],
    batching: Batching,
    device: &B::Device,
    on_progress: &dyn Fn(u64),
) -> Logits {
    let mut lg = Logits::filled(rows.len(), feats.max_seq_length, PAD_LOGIT);
    forward_chunks(model, feats, rows, batching, device, |chunk, s, e| {
        lg.put(chunk, s, e);
        on_progress(chunk.len() as u64);
    });
    lg
}

impl Logits {
    /// `rows` rows of `seq` logits, every one `value`.
    pub fn filled(rows: usize, seq: usize, value: f32) -> Self {
        Logits {
            seq,
            start: vec![value; rows * seq],
            end: vec![value; rows * seq],
        }
    }

    /// Writes a chunk's logits `[n, len]` into rows `positions` (their first `len` positions).
    pub fn put<B: Backend>(&mut self, positions: &[usize], s: Tensor<B, 2>, e: Tensor<B, 2>) {
        let len = s.dims()[1];
        let s: Vec<f32> = s.into_data().convert::<f32>().to_vec().unwrap_or_default();
        let e: Vec<f32> = e.into_data().convert::<f32>().to_vec().unwrap_or_default();
        for (k, &p) in positions.iter().enumerate() {
            let at = p * self.seq;
            self.start[at..at + len].copy_from_slice(&s[k * len..(k + 1) * len]);
            self.end[at..at + len].copy_from_slice(&e[k * len..(k + 1) * len]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HeadConfig;
    use burn::backend::Flex;

    /// `n` windows of length `l`, window `r` with `len(r)` real tokens of varied ids, then
    /// padding; labels (1, 2).
    fn varied(n: usize, l: usize, len: impl Fn(usize) -> usize) -> Features {
        let mut f = Features {
            attention_mask: vec![0; n * l],
            start_positions: vec![1; n],
            end_positions: vec![2; n],
            ..Features::blank(n, l)
        };
        for r in 0..n {
            for j in 0..len(r) {
                f.input_ids[r * l + j] = (3 + r * 7 + j * 11) as i32 % 90 + 3;
                f.attention_mask[r * l + j] = 1;
            }
        }
        f
    }

    /// 7 windows of length 8 with varied ids and padding.
    fn features() -> Features {
        varied(7, 8, |r| 3 + r % 5)
    }

    #[test]
    fn padded_last_batch_gives_the_same_logits_for_the_real_rows() {
        let cfg = crate::bench::model_config("tiny").unwrap();
        let model =
            QaModel::<Flex>::init(&cfg, &HeadConfig::default(), &Default::default()).unwrap();
        let f = features();
        let rows = [6, 0, 3, 5, 1];
        let plain = logits(
            &model,
            &f,
            &rows,
            Batching::padded(3, false),
            &Default::default(),
            &|_| {},
        );
        // Progress counts real rows only: 3, then 2 (not the padded 3).
        let seen = std::cell::RefCell::new(Vec::new());
        let padded = logits(
            &model,
            &f,
            &rows,
            Batching::padded(3, true),
            &Default::default(),
            &|n| seen.borrow_mut().push(n),
        );
        assert_eq!(*seen.borrow(), vec![3, 2]);
        assert_eq!(padded.start.len(), rows.len() * 8);
        assert_eq!(padded.end.len(), rows.len() * 8);
        let d = plain
            .start
            .iter()
            .chain(&plain.end)
            .zip(padded.start.iter().chain(&padded.end))
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d <= 1e-6, "max |Δ| {d}");
        // And the rows are in order: row 6 alone equals the first window's logits.
        let one = logits(
            &model,
            &f,
            &[6],
            Batching::padded(3, true),
            &Default::default(),
            &|_| {},
        );
        let d1 = one
            .start
            .iter()
            .zip(&padded.start[..8])
            .map(|(a, b)| (a - b).abs());
        assert!(d1.fold(0f32, f32::max) <= 1e-6);
    }

    /// Windows of varied length (3 to 7 real tokens of 16) give the same logits at their real
    /// tokens batched padded, dynamic (cut to 8) or bucketed, for every head; positions past
    /// a cut batch are filled with PAD_LOGIT, and bucketing keeps the rows' order.
    #[test]
    fn dynamic_and_bucketed_batches_give_the_padded_logits() {
        use crate::model::HeadKind;
        let l = 16;
        let f = varied(7, l, |r| 3 + r % 5);
        let cfg = crate::bench::model_config("tiny").unwrap();
        let rows = [6, 0, 3, 5, 1, 2];
        for kind in [HeadKind::Linear, HeadKind::Bilstm, HeadKind::Cnn] {
            let head = HeadConfig {
                kind,
                rnn_dropout: 0.0,
                ..HeadConfig::default()
            };
            let model = QaModel::<Flex>::init(&cfg, &head, &Default::default()).unwrap();
            let run = |strategy| {
                let b = Batching {
                    strategy,
                    pad_multiple: 4,
                    ..Batching::padded(4, false)
                };
                logits(&model, &f, &rows, b, &Default::default(), &|_| {})
            };
            let padded = run(BatchStrategy::Padded);
            for strategy in [BatchStrategy::Dynamic, BatchStrategy::Bucket] {
                let cut = run(strategy);
                let mut worst = 0f32;
                for (k, &r) in rows.iter().enumerate() {
                    for j in 0..l {
                        let i = k * l + j;
                        if j < f.length(r) {
                            worst = worst
                                .max((cut.start[i] - padded.start[i]).abs())
                                .max((cut.end[i] - padded.end[i]).abs());
                        } else if j >= 8 {
                            // Every batch here is cut to at most 8 tokens.
                            assert_eq!((cut.start[i], cut.end[i]), (PAD_LOGIT, PAD_LOGIT));
                        }
                    }
                }
                assert!(worst <= 1e-5, "{kind:?} {strategy:?}: max |Δ| {worst}");
            }
        }
        // Lengths: the longest window rounded up, at most max_seq_length.
        assert_eq!(BatchStrategy::Dynamic.length(&f, &[0, 1], 4), 4);
        assert_eq!(BatchStrategy::Dynamic.length(&f, &[4], 4), 8);
        assert_eq!(BatchStrategy::Dynamic.length(&f, &[4], 64), 16);
        assert_eq!(BatchStrategy::Padded.length(&f, &[0], 4), 16);
    }

    /// `bucket` sorts each mega-batch of the seeded order by length, longest first, keeping
    /// the shuffled order among equal lengths; the other strategies keep the order.
    #[test]
    fn bucketing_sorts_within_mega_batches() {
        let n = 120;
        let f = varied(n, 8, |r| 1 + r * 7 % 8);
        let order: Vec<usize> = (0..n).rev().collect();
        assert_eq!(
            BatchStrategy::Dynamic.training_order(&f, order.clone(), 1),
            order
        );
        // batch size 1: mega-batches of 50, 50 and 20 windows.
        let b = BatchStrategy::Bucket.training_order(&f, order.clone(), 1);
        for (mega, orig) in b.chunks(50).zip(order.chunks(50)) {
            let mut sorted = orig.to_vec();
            sorted.sort_by_key(|&r| std::cmp::Reverse(f.length(r)));
            assert_eq!(mega, &sorted[..]);
            assert!(mega.windows(2).all(|w| f.length(w[0]) >= f.length(w[1])));
        }
    }
}
