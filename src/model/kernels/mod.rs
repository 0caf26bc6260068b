//! Our own GPU kernels, written in CubeCL so that one source compiles for CUDA and for wgpu
//! (Vulkan, Metal): the fused LSTM recurrence ([`lstm`]) and the fused masked attention with
//! dropout ([`attention`]).
//!
//! The model is generic over Burn's `Backend`; the kernels exist for the GPU backends only
//! (`Autodiff<Fusion<CubeBackend<..>>>` in training, `Fusion<CubeBackend<..>>` in prediction,
//! f32). Rather than adding a bound to every generic function, the model asks [`lstm`] here,
//! which checks the backend's type and returns `None` where no kernel exists (the CPU backend,
//! pure half precision); the caller then runs the reference path of tensor operations, which
//! the parity tests hold the kernels to.

use std::any::{Any, TypeId};

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::FloatDType::F32;
use burn::tensor::Tensor;

/// The definition of kernel module `$k` (a `#[cube(launch)]` kernel) for f32, built as the
/// `define()` that the macro generates builds it, without the `ComputeClient` that one needs:
/// tensor inputs, tensor outputs and scalars in the kernel's order, then its comptime values.
macro_rules! cuda_definition {
    ($props:expr, $dim:expr, $name:expr, $($k:ident)::+;
     inputs [$($i:ident),*]; $(sequences [$($q:ident: $n:expr),*];)? outputs [$($o:ident),*];
     scalars [$($s:ident: $t:ty),*]; comptime [$($c:expr),*]) => {{
        use $($k)::+ as k;
        use burn_cubecl::cubecl::prelude::{
            AddressType, DynamicScalar, KernelSettings, LaunchArg, Tensor, TensorCompilationArg,
        };
        type T = Tensor<DynamicScalar<k::_F>>;
        let dtype = $crate::model::kernels::cuda_source::f32_storage();
        let settings = KernelSettings::default()
            .cube_dim($dim)
            .address_type(AddressType::U32)
            .kernel_name($name);
        let mut b = $crate::model::kernels::cuda_source::builder($props);
        b.scope.register_type::<DynamicScalar<k::_F>>(dtype);
        settings.address_type.register(&mut b.scope);
        let no_alias = TensorCompilationArg { inplace: None };
        $(let $i = <T as LaunchArg>::expand(&no_alias, &mut b);)*
        $($(let $q = <burn_cubecl::cubecl::prelude::Sequence<T> as LaunchArg>::expand(
            &(0..$n).map(|_| no_alias.clone()).collect(),
            &mut b,
        );)*)?
        $(let $o = <T as LaunchArg>::expand_output(&no_alias, &mut b);)*
        $(let $s = <$t as LaunchArg>::expand(&(), &mut b);)*
        k::expand::<DynamicScalar<k::_F>>(&mut b.scope, $($i,)* $($($q,)*)? $($o,)* $($s,)* $($c,)* dtype);
        b.build(settings)
    }};
}

/// Launches `$kernel` checked (every global index bounds-checked, out-of-bounds accesses
/// dropped) where [`checked_launches`] says so, else unchecked (the kernels' indices are held
/// in bounds by their own guards; the kernel tests run both ways and compare).
macro_rules! launch {
    ($($k:ident)::+ ::<$r:ty>($($arg:expr),* $(,)?)) => {{
        if $crate::model::kernels::checked_launches() {
            $($k)::+::launch::<$r>($($arg),*)
        } else {
            // SAFETY: every index of our kernels is guarded by its shape arguments (rows,
            // lengths, units), which the launch computes from the tensors it passes; the
            // kernel tests compare checked and unchecked launches bit for bit.
            unsafe { $($k)::+::launch_unchecked::<$r>($($arg),*) }
        }
    }};
}

pub mod attention;
pub mod bias;
pub mod cuda_source;
mod fusion_op;
pub mod layer_norm;
pub mod lstm;
mod reduce;
pub mod sum_squares;

/// Every kernel of ours as CUDA C++ for architecture `sm` (80, 90), at the launch shapes of
/// the competition model: the LSTM at roberta-large's width (H 1024, 8 rows × 2 directions),
/// the attention at head dims 64 and 128, with and without dropout (see [`cuda_source`]).
pub fn cuda_kernels(sm: u32) -> anyhow::Result<Vec<cuda_source::CudaKernel>> {
    let props = cuda_source::properties(sm);
    let mut out = lstm::cuda_kernels(&props, sm)?;
    out.extend(layer_norm::cuda_kernels(&props, sm)?);
    out.extend(sum_squares::cuda_kernels(&props, sm)?);
    out.extend(bias::cuda_kernels(&props, sm)?);
    for dh in [64, 128] {
        for dropout in [false, true] {
            out.extend(attention::cuda_kernels(&props, sm, dh, dropout)?);
        }
    }
    Ok(out)
}

/// An uninitialised contiguous tensor of `shape` on `like`'s device, in its dtype.
pub(crate) fn empty<R: burn_cubecl::CubeRuntime>(
    like: &burn_cubecl::tensor::CubeTensor<R>,
    shape: Vec<usize>,
) -> burn_cubecl::tensor::CubeTensor<R> {
    burn_cubecl::ops::numeric::empty_device_contiguous_dtype(
        like.client.clone(),
        like.device.clone(),
        shape.into(),
        like.dtype,
    )
}

static CHECKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether our kernels launch bounds-checked: unchecked (no check per global index) unless
/// [`set_checked_launches`] turned it on (the CLI does for `PIPELINE_CHECKED_KERNELS=1`; the
/// kernel tests compare both). Either way the results are the same bits.
pub fn checked_launches() -> bool {
    CHECKED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Launches our kernels bounds-checked (`true`) or not from now on, in this process.
pub fn set_checked_launches(on: bool) {
    CHECKED.store(on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether training on `device` in `precision` runs the fused attention (no `[b, heads, L, L]`
/// buffer) for `batch_heads` = batch × heads of `head_dim`: the GPU backends in f32 or mixed
/// precision (see [`attention`]).
pub fn attention_is_fused(
    device: crate::device::Device,
    precision: crate::device::Precision,
    batch_heads: usize,
    head_dim: usize,
) -> bool {
    device != crate::device::Device::Cpu
        && !precision.is_pure_half()
        && attention_takes(batch_heads, head_dim)
}

/// Whether the attention kernels take `batch_heads` = batch × heads of `head_dim` (and are on).
fn attention_takes(batch_heads: usize, head_dim: usize) -> bool {
    super::amp::fused_kernels()
        && head_dim <= attention::MAX_HEAD_DIM
        && batch_heads <= attention::MAX_BATCH_HEADS
}

/// `x` as type `T`, which it is (checked by the caller through `TypeId`).
fn same<S: 'static, T: 'static>(x: S) -> T {
    *(Box::new(x) as Box<dyn Any>)
        .downcast::<T>()
        .unwrap_or_else(|_| unreachable!("the TypeIds were equal"))
}

/// Whether `B` is `T`.
fn is<B: 'static, T: 'static>() -> bool {
    TypeId::of::<B>() == TypeId::of::<T>()
}

/// The fused LSTM recurrence ([`lstm`]'s layouts: `xp` `[n, l, 4H]`, `w` `[dirs, H, 4H]`, `rows`
/// rows per direction) where backend `B` has it and [`super::amp::fused_kernels`] is on, with
/// autodiff where `B` has it; else `None`.
pub fn lstm<B: Backend>(xp: &Tensor<B, 3>, w: &Tensor<B, 3>, rows: usize) -> Option<Tensor<B, 3>> {
    if !super::amp::fused_kernels() {
        return None;
    }
    // The kernels keep f32 state and products, also under autocast.
    let (xp, w) = (xp.clone().cast(F32), w.clone().cast(F32));
    macro_rules! on {
        ($T:ty) => {
            if is::<B, Autodiff<$T>>() {
                let y = lstm::forward_autodiff::<$T>(same(xp), same(w), rows);
                return Some(same(y));
            }
            if is::<B, $T>() {
                return Some(same(lstm::forward::<$T>(same(xp), same(w), rows)));
            }
        };
    }
    on!(crate::device::WgpuBackend);
    on!(crate::device::CudaBackend);
    None
}

/// `Σ_t Σ t²` over the tensors `ts` as a `[1]` tensor (`None` for none), for clipping's global
/// norm. The f32 tensors go through [`sum_squares`] (one launch per [`sum_squares::GROUP`]
/// tensors, then one sum) where backend `B` has the kernel and [`super::amp::fused_kernels`] is
/// on; the others are `(t·t).sum_dim(0)` each, added in order.
pub fn sum_of_squares<B: Backend>(ts: Vec<Tensor<B, 1>>) -> Option<Tensor<B, 1>> {
    let gpu = super::amp::fused_kernels()
        && (is::<B, crate::device::WgpuBackend>() || is::<B, crate::device::CudaBackend>());
    let (fused, other): (Vec<_>, Vec<_>) = ts.into_iter().partition(|t| {
        gpu && t.dtype() == burn::tensor::DType::F32 && t.dims()[0] < (u32::MAX / 2) as usize
    });
    let fused = (!fused.is_empty()).then(|| {
        let parts: Tensor<B, 1> = if is::<B, crate::device::WgpuBackend>() {
            same(sum_squares::parts::<crate::device::WgpuBackend>(same(
                fused,
            )))
        } else {
            same(sum_squares::parts::<crate::device::CudaBackend>(same(
                fused,
            )))
        };
        parts.sum_dim(0)
    });
    fused
        .into_iter()
        .chain(other.into_iter().map(|t| (t.clone() * t).sum_dim(0)))
        .reduce(|a, b| a + b)
}

/// Linear layer `l` on `x` as [`super::amp::linear`] computes it (autocast included), with the
/// bias added by [`bias_add`] (its gradient in one launch) where that applies.
pub fn linear<B: Backend, const D: usize>(
    l: &burn::nn::Linear<B>,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    match &l.bias {
        Some(bias) if bias_add_applies(&x) => {
            let y = super::amp::linear_product(l, x);
            let bias = bias.val();
            bias_add(&y, &bias).unwrap_or_else(|| y + bias.unsqueeze())
        }
        _ => super::amp::linear(l, x),
    }
}

/// Whether [`bias_add`] takes `x` (so a linear layer may split its product and its bias add).
pub fn bias_add_applies<B: Backend, const D: usize>(x: &Tensor<B, D>) -> bool {
    super::amp::fused_kernels()
        && x.dtype() == burn::tensor::DType::F32
        && (is::<B, Autodiff<crate::device::WgpuBackend>>()
            || is::<B, Autodiff<crate::device::CudaBackend>>())
}

/// `x + bias` (`x` `[.., H]`, `bias` `[H]`) with its bias gradient in one launch
/// ([`bias::add`]) where backend `B` is a GPU backend with autodiff, [`super::amp::fused_kernels`]
/// is on and both are f32; else `None` (the caller adds as before).
pub fn bias_add<B: Backend, const D: usize>(
    x: &Tensor<B, D>,
    bias: &Tensor<B, 1>,
) -> Option<Tensor<B, D>> {
    use burn::tensor::DType;
    if !super::amp::fused_kernels() || x.dtype() != DType::F32 || bias.dtype() != DType::F32 {
        return None;
    }
    macro_rules! on {
        ($T:ty) => {
            if is::<B, Autodiff<$T>>() {
                let y = bias::add::<$T, D>(same(x.clone()), same(bias.clone()));
                return Some(same(y));
            }
        };
    }
    on!(crate::device::WgpuBackend);
    on!(crate::device::CudaBackend);
    None
}

/// `ln.forward(x)` through the fused layer norm ([`layer_norm`]) where backend `B` has it,
/// [`super::amp::fused_kernels`] is on, `x` is f32 and `ln` has a bias; else Burn's layer
/// norm. `eps` is `ln`'s (Burn keeps it private; the caller has it from the model config).
pub fn layer_norm<B: Backend, const D: usize>(
    ln: &burn::nn::LayerNorm<B>,
    x: Tensor<B, D>,
    eps: f64,
) -> Tensor<B, D> {
    let Some(beta) = ln
        .beta
        .as_ref()
        .filter(|_| super::amp::fused_kernels() && x.dtype() == burn::tensor::DType::F32)
    else {
        return ln.forward(x);
    };
    let (gamma, beta) = (ln.gamma.val(), beta.val());
    macro_rules! on {
        ($T:ty) => {
            if is::<B, Autodiff<$T>>() {
                let y = layer_norm::forward_autodiff::<$T, D>(
                    same(x),
                    same(gamma),
                    same(beta),
                    eps as f32,
                );
                return same(y);
            }
            if is::<B, $T>() {
                let y = layer_norm::forward::<$T, D>(same(x), same(gamma), same(beta), eps as f32);
                return same(y);
            }
        };
    }
    on!(crate::device::WgpuBackend);
    on!(crate::device::CudaBackend);
    ln.forward(x)
}

/// The fused attention ([`attention`]'s semantics: `dropout(softmax(q kᵀ·scale + bias)) v`)
/// where backend `B` has it, [`super::amp::fused_kernels`] is on, the head dimension is at most
/// [`attention::MAX_HEAD_DIM`] and batch × heads at most [`attention::MAX_BATCH_HEADS`]; else
/// `None`. `q`, `k`, `v` `[b, L, heads·dh]` (the linear layers' outputs, read in place), `bias`
/// `[b, L]`; the context comes back as `[b, L, heads·dh]`. Dropout `p` applies only with
/// autodiff (training), as `nn.Dropout` does.
pub fn attention<B: Backend>(
    q: &Tensor<B, 3>,
    k: &Tensor<B, 3>,
    v: &Tensor<B, 3>,
    bias: &Tensor<B, 2>,
    heads: usize,
    scale: f32,
    p: f32,
) -> Option<Tensor<B, 3>> {
    let [b, _, h] = q.dims();
    if heads == 0 || !h.is_multiple_of(heads) || !attention_takes(b * heads, h / heads) {
        return None;
    }
    let f32 = |t: &Tensor<B, 3>| t.clone().cast(F32);
    let (q, k, v, bias) = (f32(q), f32(k), f32(v), bias.clone().cast(F32));
    macro_rules! on {
        ($T:ty) => {
            if is::<B, Autodiff<$T>>() {
                let y = attention::forward_autodiff::<$T>(
                    same(q),
                    same(k),
                    same(v),
                    same(bias),
                    heads,
                    scale,
                    p,
                );
                return Some(same(y));
            }
            if is::<B, $T>() {
                let y =
                    attention::forward::<$T>(same(q), same(k), same(v), same(bias), heads, scale);
                return Some(same(y));
            }
        };
    }
    on!(crate::device::WgpuBackend);
    on!(crate::device::CudaBackend);
    None
}
