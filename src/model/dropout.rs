//! Dropout as PyTorch's `nn.Dropout` does it in training: each element is zeroed with probability
//! `p` and the rest are scaled by `1 / (1 - p)`; outside training (no autodiff) it is the identity.
//!
//! Burn's own `Dropout` draws its mask element by element from the backend's generator, and on
//! the CPU backend that is a sequential ChaCha12 draw through a generic sampler, then two
//! element-wise products (mask, then scale). With attention dropout on `[b, heads, L, L]`
//! probabilities that was a fifth of a CPU training step. On a host-memory backend
//! ([`super::amp::with_host_backend`], the CPU arm of `with_backend!`) the mask is made here
//! instead: one draw from the backend's generator seeds it, so `B::seed` keeps training
//! reproducible, and ChaCha8 streams fill fixed-size chunks in parallel, so the mask does not
//! depend on the number of threads. The mask already holds the scale, so applying it is one
//! product. On a GPU, Burn's on-device sampling stays (a host mask would cross the bus).

use burn::nn::Dropout;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor, TensorData};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

/// Elements per ChaCha8 stream: each chunk of the mask has a stream of its own.
const CHUNK: usize = 1 << 16;

/// `d` applied to `x` (see the module documentation).
pub fn dropout<B: Backend, const D: usize>(d: &Dropout, x: Tensor<B, D>) -> Tensor<B, D> {
    let device = x.device();
    if d.prob == 0.0 || !B::ad_enabled(&device) {
        return x;
    }
    if !super::amp::host_backend() || d.prob >= 1.0 {
        return d.forward(x);
    }
    // 48 bits of seed from the backend's generator (two uniform f32s, 24 random bits each).
    let draws: Vec<f32> = Tensor::<B, 1>::random([2], Distribution::Default, &device)
        .into_data()
        .convert::<f32>()
        .to_vec()
        .unwrap_or_default();
    let bits = |i: usize| (draws.get(i).copied().unwrap_or(0.0) * (1u32 << 24) as f32) as u64;
    apply(x, 1.0 - d.prob, (bits(0) << 24) | bits(1))
}

/// `x` times a host mask (see [`mask`]).
fn apply<B: Backend, const D: usize>(x: Tensor<B, D>, keep: f64, seed: u64) -> Tensor<B, D> {
    let shape = x.shape();
    let mask = mask(shape.num_elements(), keep, seed);
    let mask = Tensor::<B, D>::from_data(TensorData::new(mask, shape), &x.device());
    x * mask
}

/// `n` values, each `1 / keep` with probability `keep` (a uniform 32-bit draw below
/// `keep · 2³²`) and 0 otherwise; chunk `i` draws from stream `i` of ChaCha8 seeded by `seed`.
fn mask(n: usize, keep: f64, seed: u64) -> Vec<f32> {
    let threshold = (keep * 4_294_967_296.0).round() as u64;
    let scale = (1.0 / keep) as f32;
    let mut out = vec![0f32; n];
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(i, chunk)| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(i as u64);
            for v in chunk {
                if u64::from(rng.next_u32()) < threshold {
                    *v = scale;
                }
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::nn::DropoutConfig;

    type A = Autodiff<Flex>;

    #[test]
    fn mask_keeps_the_right_share_scaled_and_is_independent_of_threads() {
        let n = 3 * CHUNK + 1234;
        let m = mask(n, 0.9, 7);
        let kept = m.iter().filter(|&&v| v != 0.0).count();
        // Binomial(n, 0.9): standard deviation sqrt(n·0.09) ≈ 142; allow 5 of them.
        let want = 0.9 * n as f64;
        assert!(
            (kept as f64 - want).abs() < 5.0 * (n as f64 * 0.09).sqrt(),
            "{kept} of {n}"
        );
        assert!(m.iter().all(|&v| v == 0.0 || v == (1.0 / 0.9) as f32));
        // The same seed gives the same mask whatever the pool size; another seed another mask.
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        assert_eq!(one.install(|| mask(n, 0.9, 7)), m);
        assert_ne!(mask(n, 0.9, 8), m);
        // Chunks draw from different streams, not the same numbers again.
        assert_ne!(m[..CHUNK], m[CHUNK..2 * CHUNK]);
    }

    #[test]
    fn host_dropout_zeroes_and_scales_and_its_gradient_is_the_mask() {
        let d = Default::default();
        let x: Tensor<A, 2> =
            Tensor::random([64, 96], Distribution::Normal(0.0, 1.0), &d).require_grad();
        // (The seed comes from the backend's generator, which is global to the process and
        // shared with the tests running beside this one: reproducibility under `B::seed` is
        // checked end to end by the resume test, in a process of its own.)
        let run = |seed: u64| apply(x.clone(), 0.75, seed);
        let y = run(1);
        assert_eq!(y.to_data(), run(1).to_data());
        assert_ne!(y.to_data(), run(2).to_data());
        let layer = DropoutConfig::new(0.25).init();
        let through_layer =
            crate::model::amp::with_host_backend(true, || dropout(&layer, x.clone()));
        let zeros = |t: &Tensor<A, 2>| {
            let v: Vec<f32> = t.to_data().to_vec().unwrap();
            v.iter().filter(|&&e| e == 0.0).count()
        };
        assert!(zeros(&through_layer) > 0 && zeros(&through_layer) < 64 * 96 / 2);
        let xs: Vec<f32> = x.to_data().to_vec().unwrap();
        let ys: Vec<f32> = y.to_data().to_vec().unwrap();
        let scale = (1.0f64 / 0.75) as f32;
        let mut zeros = 0;
        for (a, b) in xs.iter().zip(&ys) {
            if *b == 0.0 {
                zeros += 1;
            } else {
                assert_eq!(*b, a * scale);
            }
        }
        let n = xs.len() as f64;
        assert!((zeros as f64 - 0.25 * n).abs() < 5.0 * (n * 0.25 * 0.75).sqrt());
        // d(sum y)/dx is the mask: scale where kept, 0 where dropped.
        let g = y.clone().sum().backward();
        let gx: Vec<f32> = x.grad(&g).unwrap().to_data().to_vec().unwrap();
        for (gi, yi) in gx.iter().zip(&ys) {
            assert_eq!(*gi, if *yi == 0.0 { 0.0 } else { scale });
        }
    }

    #[test]
    fn dropout_is_the_identity_without_autodiff() {
        let d = Default::default();
        let layer = DropoutConfig::new(0.5).init();
        let x: Tensor<Flex, 2> = Tensor::random([8, 8], Distribution::Default, &d);
        let y = crate::model::amp::with_host_backend(true, || dropout(&layer, x.clone()));
        assert_eq!(y.to_data(), x.to_data());
    }
}
