//! Mixed precision the way `torch.autocast` does it: weights, optimizer state and gradients stay
//! f32 (the "master" copy), while inside [`autocast`] every matrix product of the model (linear
//! layers, attention scores and the attention-weighted values, the LSTM head's input and
//! recurrent products) rounds its inputs to bf16 or f16, multiplies there (tensor cores on a
//! GPU, with f32 accumulation), and hands back f32. Softmax, layer norm, GELU, the loss and the
//! optimizer run in f32 as torch's autocast lists them. The backward pass mirrors it: a cast's
//! gradient is cast back, so weight gradients arrive in f32.
//!
//! The state is per thread, like torch's: `autocast(Some(bf16), || model.forward(..))`. Two more
//! per-thread execution settings live here, scoped the same way by `with_backend!`: whether
//! evaluation uses Burn's fused attention op, and whether the backend's tensors are in host
//! memory (which picks the CPU fast paths of dropout and the attention mask).

use std::cell::Cell;

use burn::nn::Linear;
use burn::tensor::backend::Backend;
use burn::tensor::{FloatDType, Tensor};

thread_local! {
    static AUTOCAST: Cell<Option<FloatDType>> = const { Cell::new(None) };
    static FUSED_ATTENTION: Cell<bool> = const { Cell::new(false) };
    static HOST_BACKEND: Cell<bool> = const { Cell::new(false) };
    static FUSED_KERNELS: Cell<bool> = const { Cell::new(true) };
}

/// Runs `f` with our own fused GPU kernels ([`super::kernels`]) on (`true`, the default) or
/// off (the reference path of Burn tensor operations, which the parity tests compare them to),
/// restored afterwards.
pub fn with_fused_kernels<R>(on: bool, f: impl FnOnce() -> R) -> R {
    scoped(&FUSED_KERNELS, on, f)
}

/// Whether the model uses our fused GPU kernels where the backend has them.
pub fn fused_kernels() -> bool {
    FUSED_KERNELS.with(Cell::get)
}

/// Runs `f` knowing that the backend's tensors live in host memory (`true`: the CPU arm of
/// `with_backend!`), restored afterwards. The model then makes dropout masks on the host and
/// materialises broadcast attention masks, which the CPU backend adds far faster contiguous;
/// a GPU backend broadcasts and samples inside its kernels instead.
pub fn with_host_backend<R>(on: bool, f: impl FnOnce() -> R) -> R {
    scoped(&HOST_BACKEND, on, f)
}

/// Whether the model runs on a host-memory backend now (see [`with_host_backend`]).
pub fn host_backend() -> bool {
    HOST_BACKEND.with(Cell::get)
}

/// Runs `f` with evaluation-time attention (no autodiff, so no dropout) computed by Burn's
/// fused attention op (`true`) or as matmul, softmax, matmul (`false`, the default); restored
/// afterwards. Both give the same numbers up to rounding (the parity tests run the fused one).
pub fn with_fused_attention<R>(on: bool, f: impl FnOnce() -> R) -> R {
    scoped(&FUSED_ATTENTION, on, f)
}

/// Runs `f` with the thread-local `key` set to `value`, restoring the previous value afterwards,
/// also when `f` panics.
fn scoped<T: Copy + 'static, R>(
    key: &'static std::thread::LocalKey<Cell<T>>,
    value: T,
    f: impl FnOnce() -> R,
) -> R {
    struct Restore<T: Copy + 'static>(&'static std::thread::LocalKey<Cell<T>>, T);
    impl<T: Copy + 'static> Drop for Restore<T> {
        fn drop(&mut self) {
            self.0.with(|c| c.set(self.1));
        }
    }
    let _restore = Restore(key, key.with(|c| c.replace(value)));
    f()
}

/// Whether evaluation-time attention uses the fused op now.
pub fn fused_attention() -> bool {
    FUSED_ATTENTION.with(Cell::get)
}

/// Runs `f` with matrix products computed in `dtype` (`None`: as the tensors are); the previous
/// setting comes back afterwards, also when `f` panics.
pub fn autocast<R>(dtype: Option<FloatDType>, f: impl FnOnce() -> R) -> R {
    scoped(&AUTOCAST, dtype, f)
}

/// The dtype matrix products use now, if autocast is on.
pub fn current() -> Option<FloatDType> {
    AUTOCAST.with(Cell::get)
}

/// `t` in the autocast dtype (unchanged when autocast is off), for an operand reused by many
/// products; [`matmul`] leaves it as it is.
pub fn to_compute<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    match current() {
        Some(low) => t.cast(low),
        None => t,
    }
}

/// `a.matmul(b)`, under autocast with both sides in the autocast dtype and the result cast back
/// to `a`'s dtype.
pub fn matmul<B: Backend, const D: usize>(a: Tensor<B, D>, b: Tensor<B, D>) -> Tensor<B, D> {
    match current() {
        Some(low) => {
            let back = FloatDType::from(a.dtype());
            a.cast(low).matmul(b.cast(low)).cast(back)
        }
        None => a.matmul(b),
    }
}

/// `l.forward(x)`, under autocast with `x` and the weight in the autocast dtype (the bias is
/// added in f32 after the product). [`super::kernels::linear`] is the same with the bias
/// gradient in one launch on a GPU backend.
pub fn linear<B: Backend, const D: usize>(l: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    match current() {
        Some(_) => {
            let y = linear_product(l, x);
            match &l.bias {
                Some(bias) => y + bias.val().unsqueeze(),
                None => y,
            }
        }
        None => l.forward(x),
    }
}

/// `x · Wᵀ` of linear layer `l` without its bias, under autocast in the autocast dtype (the
/// result cast back to `x`'s dtype).
pub fn linear_product<B: Backend, const D: usize>(l: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    match current() {
        Some(low) => {
            let back = FloatDType::from(x.dtype());
            burn::tensor::module::linear(x.cast(low), l.weight.val().cast(low), None).cast(back)
        }
        None => burn::tensor::module::linear(x, l.weight.val(), None),
    }
}

/// Evaluates `$body` with the type `$B` bound to the backend for (`$device`, `$precision`) and
/// `$d` to a reference to its device, under autocast for the mixed precisions; pure half
/// precision is CUDA only. The evaluation-time attention is the caller's to choose
/// ([`with_fused_attention`]). It lives here, not in `device`, because it reaches this
/// module: the device layer stays below the model's..
/// The body returns a `Result`.
#[macro_export]
macro_rules! with_backend {
    ($device:expr, $precision:expr, |$B:ident, $d:ident| $body:expr) => {{
        use $crate::device::{Device, Precision};
        let precision: Precision = $precision;
        let device: Device = $device;
        let autocast = precision.autocast();
        $crate::model::amp::autocast(autocast, || match (device, precision) {
            (Device::Cpu, p) if p.is_pure_half() => Err(anyhow::anyhow!(
                "precision {p} needs a CUDA device (the CPU backend keeps f32 weights; bf16-mixed runs there)"
            )),
            (Device::Cpu, _) => {
                type $B = burn::backend::Flex;
                let cpu = burn::backend::flex::FlexDevice;
                let $d = &cpu;
                $crate::model::amp::with_host_backend(true, || $body)
            }
            (Device::Wgpu(a), p) => {
                if p != Precision::F32 {
                    return Err(anyhow::anyhow!(
                        "precision {p} is not supported on {device} (f32 only: WGSL has no bf16): use train.precision = \"f32\", or a CUDA device"
                    ));
                }
                let dev = $crate::device::wgpu_device(a)?;
                let $d = &dev;
                type $B = $crate::device::WgpuBackend;
                $body
            }
            (Device::Cuda(i), p) => {
                let dev = $crate::device::cuda_device(i)?;
                let $d = &dev;
                match p {
                    Precision::F32 | Precision::Bf16Mixed | Precision::F16Mixed => {
                        type $B = burn::backend::Cuda<f32, i32>;
                        $body
                    }
                    Precision::Bf16 => {
                        type $B = burn::backend::Cuda<burn::tensor::bf16, i32>;
                        $body
                    }
                    Precision::F16 => {
                        type $B = burn::backend::Cuda<burn::tensor::f16, i32>;
                        $body
                    }
                }
            }
        })
    }};
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::{bf16, Distribution};

    type B = Flex;

    fn round_bf16(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&x| bf16::from_f32(x).to_f64()).collect()
    }

    #[test]
    fn autocast_is_scoped_and_restored() {
        assert_eq!(current(), None);
        let inner = autocast(Some(FloatDType::BF16), || {
            let nested = autocast(None, current);
            (current(), nested)
        });
        assert_eq!(inner, (Some(FloatDType::BF16), None));
        assert_eq!(current(), None);
        let _ = std::panic::catch_unwind(|| autocast(Some(FloatDType::F16), || panic!("x")));
        assert_eq!(current(), None);
    }

    /// The product of bf16-rounded inputs, accumulated in high precision, rounded to bf16:
    /// what a tensor-core bf16 matmul with f32 accumulation returns.
    #[test]
    fn linear_under_autocast_rounds_inputs_and_output_to_bf16() {
        let d = Default::default();
        let l: Linear<B> = crate::model::encoder::hf_linear(16, 8, 0.5, &d);
        let l = Linear {
            bias: Some(burn::module::Param::from_tensor(Tensor::random(
                [8],
                Distribution::Normal(0.0, 1.0),
                &d,
            ))),
            ..l
        };
        let x: Tensor<B, 3> = Tensor::random([2, 3, 16], Distribution::Normal(0.0, 1.0), &d);
        let got: Vec<f32> = autocast(Some(FloatDType::BF16), || linear(&l, x.clone()))
            .into_data()
            .to_vec()
            .unwrap();
        let xs = round_bf16(&x.to_data().to_vec::<f32>().unwrap());
        let ws = round_bf16(&l.weight.val().to_data().to_vec::<f32>().unwrap());
        let bs: Vec<f32> = l.bias.as_ref().unwrap().val().to_data().to_vec().unwrap();
        for row in 0..6 {
            for o in 0..8 {
                let dot: f64 = (0..16).map(|i| xs[row * 16 + i] * ws[i * 8 + o]).sum();
                let want = bf16::from_f64(dot).to_f32() + bs[o];
                let g = got[row * 8 + o];
                assert!(
                    (g - want).abs() <= 1e-6 * want.abs().max(1.0),
                    "{g} vs {want}"
                );
            }
        }
        // Off: the f32 layer, bit for bit.
        let plain: Vec<f32> = linear(&l, x.clone()).into_data().to_vec().unwrap();
        let reference: Vec<f32> = l.forward(x).into_data().to_vec().unwrap();
        assert_eq!(plain, reference);
    }

    #[test]
    fn gradients_under_autocast_are_f32_and_close_to_full_precision() {
        type A = Autodiff<B>;
        let d = Default::default();
        let a: Tensor<A, 3> =
            Tensor::random([2, 5, 8], Distribution::Normal(0.0, 1.0), &d).require_grad();
        let b: Tensor<A, 3> =
            Tensor::random([2, 8, 4], Distribution::Normal(0.0, 1.0), &d).require_grad();
        let grads = |low: Option<FloatDType>| {
            let y = autocast(low, || matmul(a.clone(), b.clone()));
            assert_eq!(y.dtype(), burn::tensor::DType::F32);
            let g = (y.clone() * y).sum().backward();
            (a.grad(&g).unwrap(), b.grad(&g).unwrap())
        };
        let (fa, fb) = grads(None);
        let (la, lb) = grads(Some(FloatDType::BF16));
        assert_eq!(la.dtype(), burn::tensor::DType::F32);
        // bf16 keeps 8 significant bits (relative error 2^-9 per rounding): a few roundings
        // per product stay within 2% of the largest gradient, and they are not exact.
        let close = |low: Tensor<B, 3>, full: Tensor<B, 3>| {
            let (low, full): (Vec<f32>, Vec<f32>) = (
                low.into_data().to_vec().unwrap(),
                full.into_data().to_vec().unwrap(),
            );
            let scale = full.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = low
                .iter()
                .zip(&full)
                .fold(0f32, |m, (l, f)| m.max((l - f).abs()));
            assert!(err <= 2e-2 * scale, "max error {err} vs scale {scale}");
            assert!(err > 0.0, "autocast changed nothing");
        };
        close(la, fa);
        close(lb, fb);
    }
}
