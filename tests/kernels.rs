//! Our CubeCL kernels against the reference path of Burn tensor operations, on `wgpu` (Mesa's
//! lavapipe in CI: Vulkan on the CPU, slow but exact) or, with `PIPELINE_KERNEL_BACKEND=cuda`,
//! on CUDA (the GPU session's first step), and against the CPU backend, whose BiLSTM the model
//! parity tests hold to `torch.nn.LSTM`. Without any Vulkan driver the wgpu tests skip with a
//! message.

use burn::backend::{Autodiff, Flex};
use burn::module::Param;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, ElementConversion, Tensor, TensorData};
use pipeline::device::{cuda_device, wgpu_device, CudaBackend, WgpuAdapter, WgpuBackend};
use pipeline::model::amp::with_fused_kernels;
use pipeline::model::heads::BiLstm;
use pipeline::model::kernels::attention::AttentionKernels;

type Cpu = Autodiff<Flex>;

/// How close a GPU result must be to its reference: exact f32 arithmetic on wgpu (lavapipe's
/// Vulkan on the CPU); on CUDA, matrix products run on TF32 tensor cores, so 1e-4 on values
/// and 2e-3 on weight gradients.
#[derive(Debug, Clone, Copy)]
struct Tol {
    values: f32,
    weight_grads: f32,
}

impl Tol {
    /// The tolerance of the output or gradient called `name`.
    fn of(&self, name: &str) -> f32 {
        if name.contains("weight") {
            self.weight_grads
        } else {
            self.values
        }
    }

    /// At least `floor` everywhere (for sums of thousands of terms).
    fn at_least(self, floor: f32) -> Self {
        Tol {
            values: self.values.max(floor),
            weight_grads: self.weight_grads.max(floor),
        }
    }
}

/// One test at a time holds the GPU: the device's random generator is shared, and a test that
/// seeds it (the LSTM's dropout masks) must not have another test draw from it between its
/// fused and its reference run.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `$body::<B>(&device, tol)` on the GPU backend `PIPELINE_KERNEL_BACKEND` names: `wgpu`
/// (the default; without any Vulkan driver the test says SKIP) or `cuda` (which must exist).
macro_rules! on_gpu {
    ($body:ident) => {{
        let _held = one_at_a_time();
        match std::env::var("PIPELINE_KERNEL_BACKEND").as_deref() {
            Ok("cuda") => {
                let device =
                    cuda_device(0).unwrap_or_else(|e| panic!("PIPELINE_KERNEL_BACKEND=cuda: {e}"));
                $body::<CudaBackend>(
                    &device,
                    Tol {
                        values: 1e-4,
                        weight_grads: 2e-3,
                    },
                )
            }
            Ok("wgpu") | Err(_) => match wgpu_device(WgpuAdapter::Default) {
                Ok(device) => $body::<WgpuBackend>(
                    &device,
                    Tol {
                        values: 1e-5,
                        weight_grads: 1e-5,
                    },
                ),
                Err(e) => eprintln!("SKIP: {e}"),
            },
            Ok(other) => panic!("PIPELINE_KERNEL_BACKEND={other}: use wgpu or cuda"),
        }
    }};
}

fn values<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

/// `|a − b| ≤ tol · max(1, |b|)` everywhere, and `b` not all zero.
fn assert_close(what: &str, a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    assert!(
        b.iter().any(|&v| v != 0.0),
        "{what}: the reference is all zero"
    );
    let (mut worst, mut at) = (0.0f32, 0);
    for (k, (x, y)) in a.iter().zip(b).enumerate() {
        let e = (x - y).abs() / y.abs().max(1.0);
        assert!(e.is_finite(), "{what}[{k}]: {x} vs {y}");
        if e > worst {
            (worst, at) = (e, k);
        }
    }
    assert!(
        worst <= tol,
        "{what}: worst relative error {worst:e} at {at} ({} vs {})",
        a[at],
        b[at]
    );
}

/// Weights, inputs and output weights of one BiLSTM case, as plain data, so that every backend
/// gets the same numbers.
struct LstmCase {
    layers: usize,
    d_in: usize,
    hidden: usize,
    lengths: Vec<usize>,
    l: usize,
    dropout: f64,
    params: Vec<TensorData>,
    x: TensorData,
    w_out: TensorData,
}

impl LstmCase {
    fn new(layers: usize, hidden: usize, lengths: &[usize], l: usize, dropout: f64) -> Self {
        let d = Default::default();
        let d_in = 6;
        let lstm = BiLstm::<Flex>::init(d_in, hidden, layers, dropout, &d);
        let mut params = Vec::new();
        for layer in &lstm.layers {
            for dir in [&layer.forward, &layer.reverse] {
                params.push(dir.weight_ih.val().into_data());
                params.push(dir.weight_hh.val().into_data());
                params.push(dir.bias_ih.val().into_data());
                params.push(dir.bias_hh.val().into_data());
            }
        }
        let b = lengths.len();
        let normal = Distribution::Normal(0.0, 1.0);
        Self {
            layers,
            d_in,
            hidden,
            lengths: lengths.to_vec(),
            l,
            dropout,
            params,
            x: Tensor::<Flex, 3>::random([b, l, d_in], normal, &d).into_data(),
            w_out: Tensor::<Flex, 3>::random([b, l, 2 * hidden], normal, &d).into_data(),
        }
    }

    /// Outputs, the inputs' gradient and every parameter's gradient of `Σ y·w_out` on `B`.
    fn run<B: burn::tensor::backend::AutodiffBackend>(&self, device: &B::Device) -> Vec<Vec<f32>> {
        let mut lstm = BiLstm::<B>::init(self.d_in, self.hidden, self.layers, self.dropout, device);
        let mut p = self.params.iter().cloned();
        let mut next = || p.next().expect("one tensor a parameter");
        for layer in &mut lstm.layers {
            for dir in [&mut layer.forward, &mut layer.reverse] {
                dir.weight_ih = Param::from_tensor(Tensor::from_data(next(), device));
                dir.weight_hh = Param::from_tensor(Tensor::from_data(next(), device));
                dir.bias_ih = Param::from_tensor(Tensor::from_data(next(), device));
                dir.bias_hh = Param::from_tensor(Tensor::from_data(next(), device));
            }
        }
        let b = self.lengths.len();
        let mask: Vec<f32> = self
            .lengths
            .iter()
            .flat_map(|&n| (0..self.l).map(move |t| if t < n { 1.0 } else { 0.0 }))
            .collect();
        let mask = Tensor::<B, 2>::from_data(TensorData::new(mask, [b, self.l]), device);
        let x = Tensor::<B, 3>::from_data(self.x.clone(), device).require_grad();
        B::seed(device, 11);
        let y = lstm.forward(x.clone(), mask);
        let w = Tensor::<B, 3>::from_data(self.w_out.clone(), device);
        let g = (y.clone() * w).sum().backward();
        let mut out = vec![values(y.inner()), values(x.grad(&g).unwrap())];
        for layer in &lstm.layers {
            for dir in [&layer.forward, &layer.reverse] {
                out.push(values(dir.weight_ih.val().grad(&g).unwrap()));
                out.push(values(dir.weight_hh.val().grad(&g).unwrap()));
                out.push(values(dir.bias_ih.val().grad(&g).unwrap()));
                out.push(values(dir.bias_hh.val().grad(&g).unwrap()));
            }
        }
        out
    }
}

fn names(layers: usize) -> Vec<String> {
    let mut n = vec!["y".to_string(), "x.grad".to_string()];
    for k in 0..layers {
        for dir in ["", "_reverse"] {
            for p in ["weight_ih", "weight_hh", "bias_ih", "bias_hh"] {
                n.push(format!("{p}_l{k}{dir}.grad"));
            }
        }
    }
    n
}

/// The fused LSTM kernel gives today's BiLSTM's outputs and gradients within 1e-5 (f32; on CUDA
/// the [`Tol`] of TF32): on
/// padded batches, with 1 and 2 layers, both directions; against the tensor-operation path on
/// the same device and against the CPU backend.
#[test]
fn fused_lstm_equals_the_reference_path() {
    on_gpu!(lstm_parity)
}

fn lstm_parity<B: AttentionKernels>(device: &B::Device, tol: Tol) {
    for (layers, hidden, lengths, l) in [
        (1, 8, vec![9, 4, 1], 9),
        (2, 16, vec![13, 13, 7, 2], 13),
        (2, 40, vec![5], 5),
        // Two cubes of rows (4 a cube), the second partly empty; 40 units: two cubes of 32.
        (1, 40, vec![6, 6, 5, 3, 2, 1], 6),
    ] {
        let case = LstmCase::new(layers, hidden, &lengths, l, 0.0);
        let fused = case.run::<Autodiff<B>>(device);
        let reference = with_fused_kernels(false, || case.run::<Autodiff<B>>(device));
        let cpu = case.run::<Cpu>(&Default::default());
        for ((name, f), (r, c)) in names(layers)
            .iter()
            .zip(&fused)
            .zip(reference.iter().zip(&cpu))
        {
            let what = format!("{layers} layers, H {hidden}, lengths {lengths:?}: {name}");
            assert_close(&format!("{what} (fused vs GPU ops)"), f, r, tol.of(name));
            assert_close(&format!("{what} (fused vs cpu)"), f, c, tol.of(name));
        }
    }
}

/// Issue 25 §4: the fused LSTM at a realistic width (H 512, 128 steps, 8 rows whose lengths run
/// from full to 1) equals the CPU backend within 1e-4 (outputs and every gradient; f32 sums of
/// 512 and 2048 terms in another order).
#[test]
fn fused_lstm_at_a_realistic_width() {
    on_gpu!(lstm_wide)
}

fn lstm_wide<B: AttentionKernels>(device: &B::Device, tol: Tol) {
    let tol = tol.at_least(1e-4);
    let lengths = vec![128, 127, 100, 64, 33, 17, 2, 1];
    let case = LstmCase::new(1, 512, &lengths, 128, 0.0);
    let fused = case.run::<Autodiff<B>>(device);
    let cpu = case.run::<Cpu>(&Default::default());
    for (name, (f, c)) in names(1).iter().zip(fused.iter().zip(&cpu)) {
        assert_close(
            &format!("H 512, lengths {lengths:?}: {name}"),
            f,
            c,
            tol.of(name),
        );
    }
}

/// Dropout between the layers draws the same masks on both paths (it is outside the kernel),
/// so the two agree with dropout on too.
#[test]
fn fused_lstm_with_dropout_between_layers() {
    on_gpu!(fused_lstm_with_dropout_between_layers_on)
}

fn fused_lstm_with_dropout_between_layers_on<B: AttentionKernels>(device: &B::Device, tol: Tol) {
    let case = LstmCase::new(2, 8, &[7, 3], 7, 0.5);
    let fused = case.run::<Autodiff<B>>(device);
    let reference = with_fused_kernels(false, || case.run::<Autodiff<B>>(device));
    let without = LstmCase {
        dropout: 0.0,
        ..case
    }
    .run::<Autodiff<B>>(device);
    assert!(
        fused[0].iter().zip(&without[0]).any(|(a, b)| a != b),
        "dropout 0.5 changed nothing"
    );
    for (name, (f, r)) in names(2).iter().zip(fused.iter().zip(&reference)) {
        assert_close(&format!("dropout 0.5: {name}"), f, r, tol.of(name));
    }
}

use pipeline::model::kernels::attention::{self, kept_host, seed_words, Params};

/// `[b, heads, L, dh]` -> the linear layers' `[b, L, heads·dh]`, which the kernels read.
fn token_major<B: Backend>(t: Tensor<B, 4>) -> Tensor<B, 3> {
    let [b, heads, l, dh] = t.dims();
    t.swap_dims(1, 2).reshape([b, l, heads * dh])
}

/// `[b, L, heads·dh]` -> `[b, heads, L, dh]`.
fn head_major<B: Backend>(t: Tensor<B, 3>, heads: usize) -> Tensor<B, 4> {
    let [b, l, h] = t.dims();
    t.reshape([b, l, heads, h / heads]).swap_dims(1, 2)
}

/// The fused attention (through [`pipeline::model::kernels::attention`]) of `[b, heads, L, dh]`
/// inputs, handed over in the linear layers' layout.
fn fused<B: Backend>(
    [q, k, v]: [Tensor<B, 4>; 3],
    bias: Tensor<B, 2>,
    scale: f32,
    p: f32,
) -> Tensor<B, 4> {
    let heads = q.dims()[1];
    let (q, k, v) = (token_major(q), token_major(k), token_major(v));
    let ctx = pipeline::model::kernels::attention(&q, &k, &v, &bias, heads, scale, p)
        .expect("the GPU backend has the fused attention");
    head_major(ctx, heads)
}

/// [`attention::forward_with_seed`] of `[b, heads, L, dh]` inputs.
fn fused_with_seed<B: AttentionKernels>(
    [q, k, v]: [Tensor<Autodiff<B>, 4>; 3],
    bias: Tensor<B, 2>,
    seed: Tensor<B, 1>,
    params: Params,
) -> Tensor<Autodiff<B>, 4> {
    let (q, k, v) = (token_major(q), token_major(k), token_major(v));
    head_major(
        attention::forward_with_seed(q, k, v, bias, seed, params),
        params.heads,
    )
}

/// Issue 25 §3: a linear layer's bias gradient in one launch (column sums): the layer's output
/// and the gradients of its input, weight and bias equal the CPU's, for 210 rows × 40 columns
/// (two cubes of 32 columns, every row lane) and under the tensor-operation path.
#[test]
fn linear_with_one_launch_bias_gradient_equals_the_cpu() {
    on_gpu!(linear_bias_on)
}

fn linear_bias_on<B: AttentionKernels>(device: &B::Device, tol: Tol) {
    fn run<A: burn::tensor::backend::AutodiffBackend>(
        inputs: &[TensorData; 3],
        device: &A::Device,
    ) -> Vec<Vec<f32>> {
        let [x, w, b] = inputs;
        let mut l = burn::nn::LinearConfig::new(24, 40).init::<A>(device);
        l.weight = Param::from_tensor(Tensor::from_data(w.clone(), device));
        l.bias = Some(Param::from_tensor(Tensor::from_data(b.clone(), device)));
        let x = Tensor::<A, 3>::from_data(x.clone(), device).require_grad();
        let y = pipeline::model::kernels::linear(&l, x.clone());
        let g = (y.clone() * y.clone()).sum().backward();
        let bias = l.bias.as_ref().expect("a bias");
        vec![
            values(y.inner()),
            values(x.grad(&g).unwrap()),
            values(l.weight.val().grad(&g).unwrap()),
            values(bias.val().grad(&g).unwrap()),
        ]
    }
    let d = Default::default();
    let normal = Distribution::Normal(0.0, 1.0);
    let inputs = [
        Tensor::<Flex, 3>::random([3, 70, 24], normal, &d).into_data(),
        Tensor::<Flex, 2>::random([24, 40], normal, &d).into_data(),
        Tensor::<Flex, 1>::random([40], normal, &d).into_data(),
    ];
    let fused = run::<Autodiff<B>>(&inputs, device);
    let reference = with_fused_kernels(false, || run::<Autodiff<B>>(&inputs, device));
    let cpu = run::<Cpu>(&inputs, &Default::default());
    // Against the CPU the matrix products differ in rounding (sums of 24 to 210 products of
    // values up to ~10: 1.05e-5 measured), so 1e-4 there; against the GPU's own tensor
    // operations only the bias's sum differs.
    let cpu_tol = tol.at_least(1e-4);
    for (name, (f, (r, c))) in ["y", "x.grad", "weight.grad", "bias.grad"]
        .iter()
        .zip(fused.iter().zip(reference.iter().zip(&cpu)))
    {
        assert_close(
            &format!("linear {name} (fused vs GPU ops)"),
            f,
            r,
            tol.of(name),
        );
        let what = format!("linear {name} (fused vs cpu)");
        assert_close(&what, f, c, cpu_tol.of(name));
    }
}

/// Issue 25 §3: `Σ t²` over many tensors in few launches: the partial sums' total equals the
/// CPU's `Σ t²` for one tensor of 1 element, one cube's block, more blocks than cubes, and a
/// million elements (an empty one gives 0), and for 40 tensors of those and other sizes
/// together (three groups: later groups add to the first's sums); the dispatching
/// `sum_of_squares` gives the same total.
#[test]
fn few_launch_sum_of_squares_equals_the_cpu() {
    on_gpu!(sum_of_squares_on)
}

fn sum_of_squares_on<B: pipeline::model::kernels::sum_squares::SumSquaresKernels>(
    device: &B::Device,
    tol: Tol,
) {
    use pipeline::model::kernels::{sum_of_squares, sum_squares::parts, sum_squares::PARTS};
    let sizes = [0usize, 1, 256, 64 * 256 + 3, 1_000_000];
    let mut all: Vec<TensorData> = sizes.iter().map(|&n| random_data(n)).collect();
    all.extend((0..35).map(|i| random_data(1 + 37 * i)));
    let lists: Vec<Vec<TensorData>> = all[..sizes.len()]
        .iter()
        .map(|d| vec![d.clone()])
        .chain([all.clone()])
        .collect();
    for list in lists {
        let want: f64 = list
            .iter()
            .flat_map(|d| d.to_vec::<f32>().unwrap())
            .map(|x| f64::from(x) * f64::from(x))
            .sum();
        let on = |d: &TensorData| Tensor::<B, 1>::from_data(d.clone(), device);
        let sums = parts(list.iter().map(on).collect());
        assert_eq!(sums.dims(), [PARTS]);
        let total = sum_of_squares(list.iter().map(on).collect()).expect("tensors");
        let what = format!("{} tensors of {:?}…", list.len(), list[0].shape);
        for got in [values(sums.sum())[0], values(total)[0]] {
            let err = (f64::from(got) - want).abs() / want.max(1.0);
            assert!(
                err <= f64::from(tol.values.max(1e-6)),
                "{what}: {got} vs {want}"
            );
        }
    }
}

fn random_data(n: usize) -> TensorData {
    Tensor::<Flex, 1>::random([n], Distribution::Normal(0.0, 1.0), &Default::default()).into_data()
}

/// `y` and the gradients of x, γ and β of `Σ layer_norm(x)·w` with Burn's `LayerNorm` (through
/// the fused kernel where the backend has it and fused kernels are on), `x` `[b, l, h]`.
fn layer_norm_run<B: burn::tensor::backend::AutodiffBackend>(
    inputs: &[TensorData; 4],
    eps: f64,
    device: &B::Device,
) -> Vec<Vec<f32>> {
    let [x, w, gamma, beta] = inputs;
    let h = gamma.shape[0];
    let mut ln = burn::nn::LayerNormConfig::new(h)
        .with_epsilon(eps)
        .init::<B>(device);
    ln.gamma = Param::from_tensor(Tensor::from_data(gamma.clone(), device));
    ln.beta = Some(Param::from_tensor(Tensor::from_data(beta.clone(), device)));
    let x = Tensor::<B, 3>::from_data(x.clone(), device).require_grad();
    let y = pipeline::model::kernels::layer_norm(&ln, x.clone(), eps);
    let w = Tensor::<B, 3>::from_data(w.clone(), device);
    let g = (y.clone() * w).sum().backward();
    let beta = ln.beta.as_ref().expect("a bias");
    vec![
        values(y.inner()),
        values(x.grad(&g).unwrap()),
        values(ln.gamma.val().grad(&g).unwrap()),
        values(beta.val().grad(&g).unwrap()),
    ]
}

/// Issue 25 §3: the fused layer norm (one launch forward, two backward) equals Burn's layer norm
/// (the GPU backend's tensor operations, and the CPU backend) in values and in the gradients of
/// x, γ and β: widths under, over and not a multiple of the 256 threads of a row's cube, a
/// width of 1, and 70,000 rows (more cubes than one grid dimension holds).
#[test]
fn fused_layer_norm_equals_burns() {
    on_gpu!(layer_norm_parity)
}

fn layer_norm_parity<B: AttentionKernels>(device: &B::Device, tol: Tol) {
    let d = Default::default();
    let normal = Distribution::Normal(0.0, 1.0);
    for ([b, l, h], eps) in [
        ([3, 7, 40], 1e-5),
        ([2, 5, 1000], 1e-12),
        ([4, 300, 64], 1e-5),
        ([2, 3, 1], 1e-5),
        ([1, 70_000, 16], 1e-5),
    ] {
        let inputs = [
            Tensor::<Flex, 3>::random([b, l, h], Distribution::Normal(0.5, 2.0), &d).into_data(),
            Tensor::<Flex, 3>::random([b, l, h], normal, &d).into_data(),
            Tensor::<Flex, 1>::random([h], normal, &d).into_data(),
            Tensor::<Flex, 1>::random([h], normal, &d).into_data(),
        ];
        let fused = layer_norm_run::<Autodiff<B>>(&inputs, eps, device);
        let reference = with_fused_kernels(false, || {
            layer_norm_run::<Autodiff<B>>(&inputs, eps, device)
        });
        let cpu = layer_norm_run::<Cpu>(&inputs, eps, &Default::default());
        // γ's and β's gradients sum over every row: 1,200 or 70,000 terms in another order
        // (measured: 2.5e-5 and 1.4e-4 against the CPU).
        let rows = b * l;
        let tol = tol.at_least(match rows {
            0..=1000 => 0.0,
            1001..=10_000 => 1e-4,
            _ => 5e-4,
        });
        for (name, (f, (r, c))) in ["y", "x.grad", "gamma.grad", "beta.grad"]
            .iter()
            .zip(fused.iter().zip(reference.iter().zip(&cpu)))
        {
            let what = format!("[{b}, {l}, {h}] eps {eps}: {name}");
            if h == 1 && *name != "beta.grad" {
                // A row of one: y = β exactly, and x's and γ's gradients are 0.
                assert!(
                    f.iter().zip(r).all(|(a, b)| a == b),
                    "{what}: {f:?} vs {r:?}"
                );
                continue;
            }
            assert_close(&format!("{what} (fused vs cpu)"), f, c, tol.values);
            // Burn's own wgpu tensor operations give γ's and β's gradients over 70,000 rows off
            // by up to 20× (the CPU and our kernel agree within 1.4e-4; a Burn issue, not
            // investigated further), so there they are not the reference.
            if rows <= 65_535 || !matches!(*name, "gamma.grad" | "beta.grad") {
                assert_close(&format!("{what} (fused vs GPU ops)"), f, r, tol.values);
            }
        }
    }
}

/// Issue 25 §2: the kernels launch unchecked (no bounds check per global index); checked
/// launches drop out-of-bounds accesses instead. Both give the same bits on shapes whose edges
/// cut through cubes (units, rows, query and key blocks, tiles), so no access of ours falls
/// outside its tensor.
#[test]
fn checked_and_unchecked_launches_give_the_same_bits() {
    on_gpu!(checked_and_unchecked_on)
}

fn checked_and_unchecked_on<B: AttentionKernels>(device: &B::Device, _: Tol) {
    use pipeline::model::kernels::set_checked_launches;
    let lstm = LstmCase::new(2, 40, &[7, 7, 6, 3, 1], 7, 0.0);
    let attention = AttentionCase::new(3, 24, &[37, 0, 19], 37);
    let scale = attention.scale();
    let run = |checked: bool| {
        set_checked_launches(checked);
        let mut out = lstm.run::<Autodiff<B>>(device);
        out.extend(attention.run::<B>(device, |qkv, bias| fused(qkv, bias, scale, 0.0)));
        out
    };
    let checked = run(true);
    let unchecked = run(false);
    for (k, (c, u)) in checked.iter().zip(&unchecked).enumerate() {
        assert!(c.iter().any(|&v| v != 0.0), "output {k} is all zero");
        assert_eq!(c, u, "output {k}: checked and unchecked launches differ");
    }
}

/// Random `[b, heads, l, dh]` inputs (taking gradients) and the additive padding bias `[b, l]`
/// (0 at real keys, −1e9 at pads) for `lengths`.
struct AttentionCase {
    dims: [usize; 4],
    q: TensorData,
    k: TensorData,
    v: TensorData,
    w: TensorData,
    bias: TensorData,
}

impl AttentionCase {
    fn new(heads: usize, dh: usize, lengths: &[usize], l: usize) -> Self {
        let d = Default::default();
        let dims = [lengths.len(), heads, l, dh];
        let normal = Distribution::Normal(0.0, 1.0);
        let r = || Tensor::<Flex, 4>::random(dims, normal, &d).into_data();
        let bias: Vec<f32> = lengths
            .iter()
            .flat_map(|&n| (0..l).map(move |t| if t < n { 0.0 } else { -1.0e9 }))
            .collect();
        Self {
            dims,
            q: r(),
            k: r(),
            v: r(),
            w: r(),
            bias: TensorData::new(bias, [lengths.len(), l]),
        }
    }

    /// The same case with its pads at the start of each row (left padding).
    fn left_padded(mut self, lengths: &[usize]) -> Self {
        let l = self.dims[2];
        let bias: Vec<f32> = lengths
            .iter()
            .flat_map(|&n| (0..l).map(move |t| if t >= l - n { 0.0 } else { -1.0e9 }))
            .collect();
        self.bias = TensorData::new(bias, [lengths.len(), l]);
        self
    }

    fn inputs<B: Backend>(&self, device: &B::Device) -> [Tensor<B, 4>; 3] {
        [&self.q, &self.k, &self.v].map(|t| Tensor::from_data(t.clone(), device).require_grad())
    }

    fn scale(&self) -> f32 {
        1.0 / (self.dims[3] as f32).sqrt()
    }

    /// `ctx`, then the gradients of q, k, v of `Σ ctx·w`, with `attend` computing `ctx`.
    fn run<B: AttentionKernels>(
        &self,
        device: &B::Device,
        attend: impl Fn([Tensor<Autodiff<B>, 4>; 3], Tensor<Autodiff<B>, 2>) -> Tensor<Autodiff<B>, 4>,
    ) -> Vec<Vec<f32>> {
        let [q, k, v] = self.inputs::<Autodiff<B>>(device);
        let bias = Tensor::<Autodiff<B>, 2>::from_data(self.bias.clone(), device);
        let ctx = attend([q.clone(), k.clone(), v.clone()], bias);
        let w = Tensor::<Autodiff<B>, 4>::from_data(self.w.clone(), device);
        let g = (ctx.clone() * w).sum().backward();
        vec![
            values(ctx.inner()),
            values(q.grad(&g).unwrap()),
            values(k.grad(&g).unwrap()),
            values(v.grad(&g).unwrap()),
        ]
    }
}

/// Today's attention as tensor operations: `(softmax(q kᵀ·scale + bias) ⊙ mask) v`.
fn naive<B: Backend>(
    [q, k, v]: [Tensor<B, 4>; 3],
    bias: Tensor<B, 2>,
    scale: f32,
    mask: Option<Tensor<B, 4>>,
) -> Tensor<B, 4> {
    let [b, _, l, _] = q.dims();
    let scores = q.matmul(k.swap_dims(2, 3)) * scale + bias.reshape([b, 1, 1, l]);
    let mut p = burn::tensor::activation::softmax(scores, 3);
    if let Some(m) = mask {
        p = p * m;
    }
    p.matmul(v)
}

/// The fused attention equals today's (matmul, softmax, matmul) in values and in the
/// gradients of q, k and v within 1e-5, without dropout: L up to 512, head dims 32 and 64,
/// batches with padding.
#[test]
fn fused_attention_equals_the_reference_path() {
    on_gpu!(fused_attention_equals_the_reference_path_on)
}

fn fused_attention_equals_the_reference_path_on<B: AttentionKernels>(device: &B::Device, tol: Tol) {
    for (heads, dh, lengths, l) in [
        (2, 32, vec![77, 40, 1], 77),
        (3, 64, vec![16, 9], 16),
        (2, 64, vec![512, 300], 512),
    ] {
        let case = AttentionCase::new(heads, dh, &lengths, l);
        let scale = case.scale();
        let fused = case.run::<B>(device, |qkv, bias| fused(qkv, bias, scale, 0.0));
        let reference = case.run::<B>(device, |qkv, bias| naive(qkv, bias, scale, None));
        for (name, (f, r)) in ["ctx", "q.grad", "k.grad", "v.grad"]
            .iter()
            .zip(fused.iter().zip(&reference))
        {
            assert_close(
                &format!("H {heads} dh {dh} lengths {lengths:?}: {name}"),
                f,
                r,
                tol.values,
            );
        }
    }
}

/// Issue 25 §4: realistic shapes: 8 rows × 16 heads × L 384 × dh 64 with lengths from full to
/// 1; 2 rows × L 512 × dh 128; left padding with a row of length 0 (every key masked: the
/// uniform softmax, as the tensor operations give it). Values and the gradients of q, k, v
/// equal the tensor-operation path's.
#[test]
fn fused_attention_at_realistic_shapes() {
    on_gpu!(attention_realistic)
}

fn attention_realistic<B: AttentionKernels>(device: &B::Device, tol: Tol) {
    for (heads, dh, lengths, l, left) in [
        (16, 64, vec![384, 383, 300, 129, 65, 64, 17, 1], 384, false),
        (2, 128, vec![512, 300], 512, false),
        (4, 128, vec![40, 0, 17], 40, true),
        (3, 64, vec![33, 0, 5], 33, true),
    ] {
        let mut case = AttentionCase::new(heads, dh, &lengths, l);
        if left {
            case = case.left_padded(&lengths);
        }
        let scale = case.scale();
        let fused = case.run::<B>(device, |qkv, bias| fused(qkv, bias, scale, 0.0));
        let reference = case.run::<B>(device, |qkv, bias| naive(qkv, bias, scale, None));
        for (name, (f, r)) in ["ctx", "q.grad", "k.grad", "v.grad"]
            .iter()
            .zip(fused.iter().zip(&reference))
        {
            let what = format!("H {heads} dh {dh} lengths {lengths:?} left {left}: {name}");
            assert_close(&what, f, r, tol.at_least(1e-5).values);
        }
    }
}

/// The dropout mask as the generator gives it: `[b·heads, L, L]` of 1/(1−p) or 0, from the
/// host's Philox.
fn host_mask(case: &AttentionCase, seed: [f32; 2], p: f32) -> TensorData {
    let [b, heads, l, _] = case.dims;
    let params = Params {
        heads,
        scale: case.scale(),
        dropout: p,
    };
    let (threshold, scale) = params.keep().unwrap();
    let key = seed_words(seed);
    let mut m = Vec::with_capacity(b * heads * l * l);
    for bh in 0..(b * heads) as u32 {
        for i in 0..l as u32 {
            for j in 0..l as u32 {
                m.push(if kept_host(key, bh, i, j, threshold) {
                    scale
                } else {
                    0.0
                });
            }
        }
    }
    TensorData::new(m, [b, heads, l, l])
}

/// Dropout inside the kernel: with equal scores and `v` the identity, `ctx[i][j]` is the
/// dropped-out probability itself. Every value is 0 or exactly `(1/L)/(1−p)`; the kept share
/// is 1−p; and the kept positions are those of Philox-4x32-10 computed on the host.
#[test]
fn attention_dropout_has_the_right_rate_scale_and_generator() {
    on_gpu!(attention_dropout_has_the_right_rate_scale_and_generator_on)
}

fn attention_dropout_has_the_right_rate_scale_and_generator_on<B: AttentionKernels>(
    device: &B::Device,
    _tol: Tol,
) {
    let (b, heads, l, p) = (2, 2, 64, 0.25f32);
    let case = AttentionCase::new(heads, l, &vec![l; b], l);
    let zeros = Tensor::<Autodiff<B>, 4>::zeros([b, heads, l, l], device);
    let eye = Tensor::<Autodiff<B>, 2>::eye(l, device)
        .reshape([1, 1, l, l])
        .expand([b, heads, l, l]);
    let seed = [0.3f32, 0.7];
    let params = Params {
        heads,
        scale: case.scale(),
        dropout: p,
    };
    let ctx = fused_with_seed(
        [zeros.clone(), zeros, eye],
        Tensor::zeros([b, l], device),
        Tensor::from_floats(seed, device),
        params,
    );
    let got = values(ctx.inner());
    let want: Vec<f32> = host_mask(&case, seed, p).to_vec().unwrap();
    let kept = 1.0 / (l as f32) / (1.0 - p);
    let mut n_kept = 0;
    for (k, (g, m)) in got.iter().zip(&want).enumerate() {
        let expected = if *m > 0.0 { kept } else { 0.0 };
        assert!(
            (g - expected).abs() <= 1e-6,
            "element {k}: {g} vs {expected}"
        );
        n_kept += usize::from(*m > 0.0);
    }
    let share = n_kept as f64 / got.len() as f64;
    assert!((share - 0.75).abs() < 0.02, "kept share {share} for p {p}");
}

/// With dropout, the gradients equal those of today's attention with the same mask (from the
/// host's generator) within 1e-5, and agree with central finite differences of the fused
/// forward pass itself: the backward pass regenerates the forward pass's mask.
#[test]
fn attention_dropout_gradients_match_the_same_mask_and_finite_differences() {
    on_gpu!(attention_dropout_gradients_match_the_same_mask_and_finite_differences_on)
}

fn attention_dropout_gradients_match_the_same_mask_and_finite_differences_on<
    B: AttentionKernels,
>(
    device: &B::Device,
    tol: Tol,
) {
    // Head dims 32 (one thread a row) and 128 (four threads a row, tiles of 8 rows).
    for (heads, dh, lengths, l) in [(2, 32, vec![23, 11], 23), (2, 128, vec![21, 9], 21)] {
        attention_dropout_case::<B>(device, tol, heads, dh, &lengths, l);
    }
}

fn attention_dropout_case<B: AttentionKernels>(
    device: &B::Device,
    tol: Tol,
    heads: usize,
    dh: usize,
    lengths: &[usize],
    l: usize,
) {
    let p = 0.2f32;
    let case = AttentionCase::new(heads, dh, lengths, l);
    let seed = [0.123f32, 0.456];
    let params = Params {
        heads,
        scale: case.scale(),
        dropout: p,
    };
    let fused_at = |qkv: [Tensor<Autodiff<B>, 4>; 3], bias: Tensor<Autodiff<B>, 2>| {
        fused_with_seed(qkv, bias.inner(), Tensor::from_floats(seed, device), params)
    };
    let fused = case.run::<B>(device, fused_at);
    let mask = Tensor::<Autodiff<B>, 4>::from_data(host_mask(&case, seed, p), device);
    let reference = case.run::<B>(device, |qkv, bias| {
        naive(qkv, bias, case.scale(), Some(mask.clone()))
    });
    for (name, (f, r)) in ["ctx", "q.grad", "k.grad", "v.grad"]
        .iter()
        .zip(fused.iter().zip(&reference))
    {
        assert_close(&format!("dropout {p}, dh {dh}: {name}"), f, r, tol.values);
    }

    // f(x) = Σ ctx·w through the fused forward pass, with one input element moved.
    let bias = Tensor::<Autodiff<B>, 2>::from_data(case.bias.clone(), device);
    let w = Tensor::<Autodiff<B>, 4>::from_data(case.w.clone(), device);
    let f = |which: usize, at: usize, delta: f32| -> f64 {
        let mut inputs = [case.q.clone(), case.k.clone(), case.v.clone()];
        let mut x: Vec<f32> = inputs[which].to_vec().unwrap();
        x[at] += delta;
        inputs[which] = TensorData::new(x, case.dims);
        let [q, k, v] = inputs.map(|t| Tensor::<Autodiff<B>, 4>::from_data(t, device));
        let ctx = fused_at([q, k, v], bias.clone());
        f64::from((ctx * w.clone()).sum().into_scalar().elem::<f32>())
    };
    let eps = 1e-2f32;
    for which in 0..3 {
        for at in [5usize, 777, 1400] {
            let numeric = (f(which, at, eps) - f(which, at, -eps)) / (2.0 * f64::from(eps));
            let analytic = f64::from(fused[1 + which][at]);
            assert!(
                (numeric - analytic).abs() <= 2e-3 + 1e-2 * analytic.abs(),
                "dh {dh}, input {which} element {at}: finite difference {numeric} vs gradient {analytic}"
            );
        }
    }
}

/// The CNN head (Burn's `conv1d`) on wgpu equals the CPU backend in its output and in the
/// gradients of its input and weights, on a padded batch.
#[test]
fn cnn_head_on_wgpu_equals_the_cpu() {
    on_gpu!(cnn_head_on_wgpu_equals_the_cpu_on)
}

fn cnn_head_on_wgpu_equals_the_cpu_on<B: AttentionKernels>(device: &B::Device, tol: Tol) {
    use pipeline::model::heads::Cnn;
    let (b, l, h, c, sizes) = (3, 11, 12, 4, [1usize, 3, 5]);
    let rand = |shape: Vec<usize>| {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
            .collect();
        TensorData::new(v, shape)
    };
    let lengths = [11usize, 6, 1];
    fn run<B: burn::tensor::backend::AutodiffBackend>(
        device: &B::Device,
        data: &[(TensorData, TensorData)],
        x: TensorData,
        mask: TensorData,
        (h, c, sizes): (usize, usize, &[usize]),
    ) -> Vec<Vec<f32>> {
        let mut cnn = Cnn::<B>::init(h, c, sizes, device);
        for (conv, (w, bias)) in cnn.convs.iter_mut().zip(data) {
            conv.weight = Param::from_tensor(Tensor::from_data(w.clone(), device));
            conv.bias = Some(Param::from_tensor(Tensor::from_data(bias.clone(), device)));
        }
        let x = Tensor::<B, 3>::from_data(x, device).require_grad();
        let y = cnn.forward(x.clone(), Tensor::from_data(mask, device));
        let g = (y.clone() * y.clone()).sum().backward();
        let mut out = vec![values(y.inner()), values(x.grad(&g).unwrap())];
        for conv in &cnn.convs {
            out.push(values(conv.weight.val().grad(&g).unwrap()));
        }
        out
    }
    let data: Vec<(TensorData, TensorData)> = sizes
        .iter()
        .map(|&k| (rand(vec![c, h, k]), rand(vec![c])))
        .collect();
    let x = rand(vec![b, l, h]);
    let mask: Vec<f32> = lengths
        .iter()
        .flat_map(|&n| (0..l).map(move |t| if t < n { 1.0 } else { 0.0 }))
        .collect();
    let mask = TensorData::new(mask, [b, l]);
    let cpu = run::<Cpu>(
        &Default::default(),
        &data,
        x.clone(),
        mask.clone(),
        (h, c, &sizes),
    );
    let gpu = run::<Autodiff<B>>(device, &data, x, mask, (h, c, &sizes));
    for (i, (a, e)) in gpu.iter().zip(&cpu).enumerate() {
        assert_close(&format!("cnn output/gradient {i}"), a, e, tol.weight_grads);
    }
}
