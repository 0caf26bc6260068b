//! Batches of windows from `prepare/features.safetensors` as tensors, and model logits over a
//! list of windows in evaluation mode.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

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

/// Gathers `rows` of `feats` into tensors on `device`.
pub fn batch<B: Backend>(feats: &Features, rows: &[usize], device: &B::Device) -> Batch<B> {
    let l = feats.max_seq_length;
    let b = rows.len();
    let gather = |src: &dyn Fn(usize) -> i64| -> Tensor<B, 2, Int> {
        let mut v = Vec::with_capacity(b * l);
        for &r in rows {
            for j in 0..l {
                v.push(src(r * l + j));
            }
        }
        Tensor::from_data(TensorData::new(v, [b, l]), device)
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

/// How evaluation and prediction batch windows.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    pub batch_size: usize,
    /// Pad a short last batch to `batch_size` (see [`forward_chunks`]).
    pub fixed_shape: bool,
}

/// Runs the model in chunks of `batch_size` windows of `rows` and hands `each` every chunk's
/// rows with their start/end logits. With `fixed_shape`, a short last chunk is padded to
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
    for chunk in rows.chunks(size) {
        let n = chunk.len();
        let padded: Vec<usize>;
        let input = if fixed_shape && n < size {
            padded = chunk
                .iter()
                .copied()
                .chain(std::iter::repeat_n(chunk[0], size - n))
                .collect();
            &padded[..]
        } else {
            chunk
        };
        let b = batch::<B>(feats, input, device);
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
    let seq = feats.max_seq_length;
    let mut start = Vec::with_capacity(rows.len() * seq);
    let mut end = Vec::with_capacity(rows.len() * seq);
    forward_chunks(model, feats, rows, batching, device, |chunk, s, e| {
        start.extend(s.into_data().convert::<f32>().iter::<f32>());
        end.extend(e.into_data().convert::<f32>().iter::<f32>());
        on_progress(chunk.len() as u64);
    });
    Logits { seq, start, end }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HeadConfig;
    use burn::backend::Flex;

    /// 7 windows of length 8 with varied ids and padding.
    fn features() -> Features {
        let (n, l) = (7, 8);
        let mut f = Features {
            attention_mask: vec![0; n * l],
            start_positions: vec![1; n],
            end_positions: vec![2; n],
            ..Features::blank(n, l)
        };
        for r in 0..n {
            for j in 0..(3 + r % 5) {
                f.input_ids[r * l + j] = (3 + r * 7 + j * 11) as i32 % 90 + 3;
                f.attention_mask[r * l + j] = 1;
            }
        }
        f
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
            Batching {
                batch_size: 3,
                fixed_shape: false,
            },
            &Default::default(),
            &|_| {},
        );
        // Progress counts real rows only: 3, then 2 (not the padded 3).
        let seen = std::cell::RefCell::new(Vec::new());
        let padded = logits(
            &model,
            &f,
            &rows,
            Batching {
                batch_size: 3,
                fixed_shape: true,
            },
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
            Batching {
                batch_size: 3,
                fixed_shape: true,
            },
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
}
