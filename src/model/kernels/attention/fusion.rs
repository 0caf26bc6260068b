//! The ops as custom operations of Burn's `Fusion` stream.

use super::{AttentionKernels, Params};
use burn::backend::ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Shape, TensorMetadata};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionBackend, FusionRuntime};

#[derive(Clone, Debug)]
struct Op<B> {
    desc: CustomOpIr,
    params: Params,
    backward: bool,
    _b: std::marker::PhantomData<B>,
}

impl<B: FusionBackend + AttentionKernels> Operation<B::FusionRuntime> for Op<B> {
    fn execute(
        &self,
        handles: &mut HandleContainer<<B::FusionRuntime as FusionRuntime>::FusionHandle>,
    ) {
        let inputs: Vec<_> = self
            .desc
            .inputs
            .iter()
            .map(|t| handles.get_float_tensor::<B>(t))
            .collect();
        let outputs: Vec<FloatTensor<B>> = if self.backward {
            let [q, k, v, bias, seed, out, lse, dout]: [FloatTensor<B>; 8] = inputs
                .try_into()
                .unwrap_or_else(|_| unreachable!("eight inputs"));
            B::attention_backward(q, k, v, bias, seed, out, lse, dout, self.params).into()
        } else {
            let [q, k, v, bias, seed]: [FloatTensor<B>; 5] = inputs
                .try_into()
                .unwrap_or_else(|_| unreachable!("five inputs"));
            B::attention_forward(q, k, v, bias, seed, self.params).into()
        };
        for (ir, t) in self.desc.outputs.iter().zip(outputs) {
            handles.register_float_tensor::<B>(&ir.id, t);
        }
    }
}

/// Registers `inputs` -> outputs of `shapes` as one custom operation.
fn register<B: FusionBackend + AttentionKernels>(
    name: &'static str,
    inputs: Vec<FloatTensor<Fusion<B>>>,
    shapes: Vec<Shape>,
    params: Params,
    backward: bool,
) -> Vec<FloatTensor<Fusion<B>>> {
    let client = inputs[0].client.clone();
    let dtype = inputs[0].dtype();
    let outs: Vec<TensorIr> = shapes
        .into_iter()
        .map(|s| TensorIr::uninit(client.create_empty_handle(), s, dtype))
        .collect();
    let streams = OperationStreams::with_inputs(inputs.iter());
    let irs: Vec<TensorIr> = inputs.into_iter().map(|t| t.into_ir()).collect();
    let desc = CustomOpIr::new(name, &irs, &outs);
    let op = Op::<B> {
        desc: desc.clone(),
        params,
        backward,
        _b: std::marker::PhantomData,
    };
    client.register(streams, OperationIr::Custom(desc), op)
}

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
        register::<B>(
            "attention_forward",
            vec![q, k, v, bias, seed],
            vec![shape, rows],
            params,
            false,
        )
        .try_into()
        .unwrap_or_else(|_| unreachable!("two outputs"))
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
        register::<B>(
            "attention_backward",
            vec![q, k, v, bias, seed, out, lse, dout],
            vec![shape.clone(), shape.clone(), shape],
            params,
            true,
        )
        .try_into()
        .unwrap_or_else(|_| unreachable!("three outputs"))
    }
}
