//! Our kernels as custom operations of Burn's `Fusion` stream, which runs them in order with the
//! fused element-wise kernels around them. One operation type serves every kernel: a closure
//! (any [`Kernel`]) says what runs on the inner backend.

use burn::backend::ir::{CustomOpIr, HandleContainer, OperationIr, TensorIr};
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Shape, TensorMetadata};
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionBackend, FusionRuntime};

/// What a custom operation runs on the inner backend `B`: its float inputs, in the order they
/// were registered, to its float outputs (a closure; its captures are the op's parameters).
pub(crate) trait Kernel<B: burn::tensor::backend::Backend>:
    Fn(Vec<FloatTensor<B>>) -> Vec<FloatTensor<B>> + Clone + Send + Sync + 'static
{
}

impl<B: burn::tensor::backend::Backend, F> Kernel<B> for F where
    F: Fn(Vec<FloatTensor<B>>) -> Vec<FloatTensor<B>> + Clone + Send + Sync + 'static
{
}

#[derive(Clone)]
struct Op<B, K> {
    desc: CustomOpIr,
    kernel: K,
    _b: std::marker::PhantomData<B>,
}

impl<B, K> std::fmt::Debug for Op<B, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Op").field("desc", &self.desc).finish()
    }
}

impl<B: FusionBackend, K: Kernel<B>> Operation<B::FusionRuntime> for Op<B, K> {
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
        for (ir, t) in self.desc.outputs.iter().zip((self.kernel)(inputs)) {
            handles.register_float_tensor::<B>(&ir.id, t);
        }
    }
}

/// Registers `kernel` on `inputs` as one custom operation called `name`, with outputs of
/// `shapes` (in the first input's dtype).
pub(crate) fn register<B: FusionBackend, K: Kernel<B>, const N: usize>(
    name: &'static str,
    inputs: Vec<FloatTensor<Fusion<B>>>,
    shapes: [Shape; N],
    kernel: K,
) -> [FloatTensor<Fusion<B>>; N] {
    let client = inputs[0].client.clone();
    let dtype = inputs[0].dtype();
    let outs: Vec<TensorIr> = shapes
        .into_iter()
        .map(|s| TensorIr::uninit(client.create_empty_handle(), s, dtype))
        .collect();
    let streams = OperationStreams::with_inputs(inputs.iter());
    let irs: Vec<TensorIr> = inputs.into_iter().map(|t| t.into_ir()).collect();
    let desc = CustomOpIr::new(name, &irs, &outs);
    let op = Op::<B, K> {
        desc: desc.clone(),
        kernel,
        _b: std::marker::PhantomData,
    };
    client
        .register(streams, OperationIr::Custom(desc), op)
        .try_into()
        .unwrap_or_else(|_| unreachable!("{N} outputs registered"))
}

/// `inputs` as an array of `N` (the count a [`Kernel`] registered them with).
pub(crate) fn take<T, const N: usize>(inputs: Vec<T>) -> [T; N] {
    inputs
        .try_into()
        .unwrap_or_else(|_| unreachable!("{N} inputs registered"))
}
