//! The ops as custom operations of Burn's `Fusion` stream.

use super::{AttentionKernels, Params};
use crate::model::kernels::fusion_op::{register, take};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Shape, TensorMetadata};
use burn_fusion::{Fusion, FusionBackend};

impl<B: FusionBackend + AttentionKernels> AttentionKernels for Fusion<B> {
    fn attention_forward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        seed: FloatTensor<Self>,
        params: Params,
    ) -> [FloatTensor<Self>; 2] {
        let shape = q.shape();
        let rows = Shape::new([shape[0] * params.heads, shape[1], 2]);
        register::<B, _, 2>(
            "attention_forward",
            vec![q, k, v, bias, seed],
            [shape, rows],
            move |inputs: Vec<FloatTensor<B>>| {
                let [q, k, v, bias, seed] = take(inputs);
                B::attention_forward(q, k, v, bias, seed, params).into()
            },
        )
    }

    fn attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        seed: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        dout: FloatTensor<Self>,
        params: Params,
    ) -> [FloatTensor<Self>; 3] {
        let shape = q.shape();
        register::<B, _, 3>(
            "attention_backward",
            vec![q, k, v, bias, seed, out, lse, dout],
            [shape.clone(), shape.clone(), shape],
            move |inputs: Vec<FloatTensor<B>>| {
                let [q, k, v, bias, seed, out, lse, dout] = take(inputs);
                B::attention_backward(q, k, v, bias, seed, out, lse, dout, params).into()
            },
        )
    }
}
