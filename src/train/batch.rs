//! Batches of windows from `prepare/features.safetensors` as tensors, and model logits over a
//! list of windows in evaluation mode.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use crate::artifacts::Features;
use crate::infer::Logits;
use crate::model::QaModel;

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
    let labels = |src: &[i32]| -> Tensor<B, 1, Int> {
        let v: Vec<i64> = rows.iter().map(|&r| src[r] as i64).collect();
        Tensor::from_data(TensorData::new(v, [b]), device)
    };
    Batch {
        input_ids: gather(&|i| feats.input_ids[i] as i64),
        attention_mask: gather(&|i| feats.attention_mask[i] as i64),
        token_type_ids: gather(&|i| feats.token_type_ids[i] as i64),
        start_positions: labels(&feats.start_positions),
        end_positions: labels(&feats.end_positions),
    }
}

/// Start/end logits of `rows`, in that order, computed `batch_size` windows at a time.
pub fn logits<B: Backend>(
    model: &QaModel<B>,
    feats: &Features,
    rows: &[usize],
    batch_size: usize,
    device: &B::Device,
    on_progress: &dyn Fn(u64),
) -> Logits {
    let seq = feats.max_seq_length;
    let mut start = Vec::with_capacity(rows.len() * seq);
    let mut end = Vec::with_capacity(rows.len() * seq);
    for chunk in rows.chunks(batch_size.max(1)) {
        let b = batch::<B>(feats, chunk, device);
        let (s, e) = model.forward(b.input_ids, b.attention_mask, b.token_type_ids);
        start.extend(s.into_data().convert::<f32>().iter::<f32>());
        end.extend(e.into_data().convert::<f32>().iter::<f32>());
        on_progress(chunk.len() as u64);
    }
    Logits { seq, start, end }
}
