//! Span heads: HF's linear `qa_outputs`, the competition notebook's stacked bidirectional LSTM, and
//! a convolutional head ([`Cnn`]).
//!
//! The LSTM keeps PyTorch `nn.LSTM`'s parameter layout and names (`weight_ih_l{k}`,
//! `weight_hh_l{k}`, `bias_ih_l{k}`, `bias_hh_l{k}`, `*_reverse`; gates stacked i, f, g, o) so
//! torch weights load as they are. Padding (right padding, as the windows have it) is handled as
//! `pack_padded_sequence` does: the reverse direction runs over each sequence reversed within its
//! length, so it starts at the last real token with a zero state; pads come after the real
//! tokens in both directions, so they never reach a real token's output, and outputs at pads
//! are zero as `pad_packed_sequence` gives. The recurrence itself needs no per-step masking,
//! which keeps the number of tensor operations per time step low (each costs a kernel launch
//! on CUDA).

use burn::module::{Module, Param};
use burn::nn::conv::{Conv1d, Conv1dConfig};
use burn::nn::{Dropout, DropoutConfig, PaddingConfig1d};
use burn::tensor::activation::{sigmoid, tanh};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor};

use super::amp;

/// One direction of one LSTM layer, PyTorch layout.
#[derive(Module, Debug)]
pub struct LstmDirection<B: Backend> {
    /// `[4H, input]`, gates i, f, g, o.
    pub weight_ih: Param<Tensor<B, 2>>,
    /// `[4H, H]`.
    pub weight_hh: Param<Tensor<B, 2>>,
    pub bias_ih: Param<Tensor<B, 1>>,
    pub bias_hh: Param<Tensor<B, 1>>,
}

impl<B: Backend> LstmDirection<B> {
    fn init(d_in: usize, h: usize, device: &B::Device) -> Self {
        // PyTorch's default: U(-1/sqrt(H), 1/sqrt(H)) for every weight and bias.
        let k = 1.0 / (h as f64).sqrt();
        let u = Distribution::Uniform(-k, k);
        Self {
            weight_ih: Param::from_tensor(Tensor::random([4 * h, d_in], u, device)),
            weight_hh: Param::from_tensor(Tensor::random([4 * h, h], u, device)),
            bias_ih: Param::from_tensor(Tensor::random([4 * h], u, device)),
            bias_hh: Param::from_tensor(Tensor::random([4 * h], u, device)),
        }
    }

    /// The input projections of all steps at once, `x W_ihᵀ + b_ih + b_hh`: `[b, l, 4H]`.
    fn input_projection(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let h4 = self.weight_ih.dims()[0];
        let bias = (self.bias_ih.val() + self.bias_hh.val()).reshape([1, 1, h4]);
        amp::matmul(x, self.weight_ih.val().transpose().unsqueeze_dim(0)) + bias
    }

    /// Runs from a zero state over all `l` steps of `x` `[b, l, in]`, in order: `[b, l, H]`.
    fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let l = x.dims()[1];
        self.forward_in_blocks(x, block_len(l))
    }

    /// [`Self::forward`] with the steps' inputs taken out of blocks of `block` steps.
    fn forward_in_blocks(&self, x: Tensor<B, 3>, block: usize) -> Tensor<B, 3> {
        let w_hh = amp::to_compute(self.weight_hh.val().transpose());
        recurrence(
            self.input_projection(x),
            |hs| amp::matmul(hs, w_hh.clone()),
            block,
        )
    }
}

/// √l rounded up: the block length of [`recurrence`].
fn block_len(l: usize) -> usize {
    (l as f64).sqrt().ceil().max(1.0) as usize
}

/// The LSTM recurrence from a zero state over input projections `xp` `[n, l, 4H]` (gates i, f,
/// g, o), with `recurrent(h)` giving `h W_hhᵀ` `[n, 4H]` for the state `h` `[n, H]`: `[n, l, H]`.
///
/// The steps' inputs are sliced out of blocks of `block` steps, not out of `xp` itself: the
/// gradient of a slice is a zero tensor of the sliced tensor's size with the slice written in,
/// so slicing each step out of the whole `[n, l, 4H]` projection costs l full-size tensors in
/// the backward pass (O(l²): most of a BiLSTM step at L 128, and gigabytes of memory traffic
/// per layer at L 384). Blocks of √l steps cost O(l·√l) and give the same values and gradients.
fn recurrence<B: Backend>(
    xp: Tensor<B, 3>,
    recurrent: impl Fn(Tensor<B, 2>) -> Tensor<B, 2>,
    block: usize,
) -> Tensor<B, 3> {
    let [n, l, h4] = xp.dims();
    let h = h4 / 4;
    let device = xp.device();
    let mut hs: Tensor<B, 2> = Tensor::zeros([n, h], &device);
    let mut cs: Tensor<B, 2> = Tensor::zeros([n, h], &device);
    let mut outs: Vec<Tensor<B, 2>> = Vec::with_capacity(l);
    for t0 in (0..l).step_by(block) {
        let len = block.min(l - t0);
        let xb = xp.clone().slice([0..n, t0..t0 + len, 0..h4]);
        for t in 0..len {
            let g = xb.clone().slice([0..n, t..t + 1, 0..h4]).reshape([n, h4]) + recurrent(hs);
            // Gates i, f, o through one sigmoid over all four (elementwise: the same values),
            // the cell candidate g through tanh.
            let gates = sigmoid(g.clone());
            let i = gates.clone().slice([0..n, 0..h]);
            let f = gates.clone().slice([0..n, h..2 * h]);
            let o = gates.slice([0..n, 3 * h..4 * h]);
            let gg = tanh(g.slice([0..n, 2 * h..3 * h]));
            cs = f * cs + i * gg;
            hs = o * tanh(cs.clone());
            outs.push(hs.clone());
        }
    }
    Tensor::stack(outs, 1)
}

/// For right-padded `mask` `[b, l]` (1 = real token, a prefix of each row), the row indices into
/// `x.reshape([b * l, ..])` that reverse each sequence within its length and keep its pads in
/// place: position t of row r maps to `r·l + len_r − 1 − t` for t < len_r, else to `r·l + t`.
/// The map is its own inverse, so the same indices put reversed outputs back in order.
fn reversal_rows<B: Backend>(mask: Tensor<B, 2>) -> Tensor<B, 1, Int> {
    let [b, l] = mask.dims();
    let device = mask.device();
    let m = mask.int();
    let len = m.clone().sum_dim(1); // [b, 1]
    let t = Tensor::<B, 1, Int>::arange(0..l as i64, &device).reshape([1, l]);
    let row = Tensor::<B, 1, Int>::arange(0..b as i64, &device).reshape([b, 1]) * l as i64;
    // m · (len − 1 − t) + (1 − m) · t  ==  t + m · (len − 1 − 2t)
    let within = len - 1 - t.clone() * 2;
    (t + m * within + row).reshape([b * l])
}

/// Rows of `x` `[b, l, d]` taken by `rows` (from [`reversal_rows`]).
fn take_rows<B: Backend>(x: Tensor<B, 3>, rows: Tensor<B, 1, Int>) -> Tensor<B, 3> {
    let [b, l, d] = x.dims();
    x.reshape([b * l, d]).select(0, rows).reshape([b, l, d])
}

/// One bidirectional layer.
#[derive(Module, Debug)]
pub struct LstmLayer<B: Backend> {
    pub forward: LstmDirection<B>,
    pub reverse: LstmDirection<B>,
}

impl<B: Backend> LstmLayer<B> {
    /// `x` `[b, l, in]` -> `[b, l, 2H]` (forward then reverse direction), `rows` from
    /// [`reversal_rows`]. Outputs at pads are not zeroed here.
    ///
    /// On a device backend (CUDA) both directions run in one loop, stacked along the batch,
    /// with one batched product for the two recurrent matrices: every time step is then half as
    /// many tensor operations, each a kernel launch. On the host backend (CPU), where launches
    /// cost little, the directions run one after the other, which measured faster there.
    fn forward(&self, x: Tensor<B, 3>, rows: Tensor<B, 1, Int>, paired: bool) -> Tensor<B, 3> {
        let [b, l, _] = x.dims();
        let x_rev = take_rows(x.clone(), rows.clone());
        if !paired {
            let fwd = self.forward.forward(x);
            let rev = take_rows(self.reverse.forward(x_rev), rows);
            return Tensor::cat(vec![fwd, rev], 2);
        }
        let h = self.forward.weight_hh.dims()[1];
        let xp = Tensor::cat(
            vec![
                self.forward.input_projection(x),
                self.reverse.input_projection(x_rev),
            ],
            0,
        );
        let w_hh = Tensor::stack(
            vec![
                self.forward.weight_hh.val().transpose(),
                self.reverse.weight_hh.val().transpose(),
            ],
            0,
        );
        // The fused kernel (f32 state and products) where the backend has one, else the
        // recurrence of tensor operations (recurrent products in the autocast dtype).
        let y = super::kernels::lstm(&xp, &w_hh, b).unwrap_or_else(|| {
            let w_hh = amp::to_compute(w_hh);
            recurrence(
                xp,
                |hs| amp::matmul(hs.reshape([2, b, h]), w_hh.clone()).reshape([2 * b, 4 * h]),
                block_len(l),
            )
        });
        let fwd = y.clone().slice([0..b, 0..l, 0..h]);
        let rev = take_rows(y.slice([b..2 * b, 0..l, 0..h]), rows);
        Tensor::cat(vec![fwd, rev], 2)
    }
}

/// `num_layers` stacked bidirectional LSTM layers, dropout between layers (PyTorch semantics).
#[derive(Module, Debug)]
pub struct BiLstm<B: Backend> {
    pub layers: Vec<LstmLayer<B>>,
    pub dropout: Dropout,
}

impl<B: Backend> BiLstm<B> {
    /// A randomly initialised LSTM with `hidden` units per direction.
    pub fn init(
        d_in: usize,
        hidden: usize,
        layers: usize,
        dropout: f64,
        device: &B::Device,
    ) -> Self {
        Self {
            layers: (0..layers)
                .map(|k| {
                    let d = if k == 0 { d_in } else { 2 * hidden };
                    LstmLayer {
                        forward: LstmDirection::init(d, hidden, device),
                        reverse: LstmDirection::init(d, hidden, device),
                    }
                })
                .collect(),
            dropout: DropoutConfig::new(dropout).init(),
        }
    }

    /// `x` `[b, l, in]`, `mask` `[b, l]` (1 = real token; right padding) -> `[b, l, 2H]`, zero
    /// at pads.
    pub fn forward(&self, x: Tensor<B, 3>, mask: Tensor<B, 2>) -> Tensor<B, 3> {
        let [b, l] = mask.dims();
        let rows = reversal_rows(mask.clone());
        let mask = mask.reshape([b, l, 1]);
        let mut x = x;
        for (k, layer) in self.layers.iter().enumerate() {
            if k > 0 {
                x = super::dropout::dropout(&self.dropout, x);
            }
            x = layer.forward(x, rows.clone(), !amp::host_backend()) * mask.clone();
        }
        x
    }
}

/// The convolutional head: `nn.Conv1d` over the token axis for each kernel size (odd, "same"
/// padding `k / 2`), each with `channels` outputs, concatenated along the channels and passed
/// through ReLU; `qa_outputs` then projects to start/end. As a PyTorch module:
///
/// ```text
/// x = x * mask[..., None]                     # pads zeroed
/// y = cat([conv(x.transpose(1, 2)) for conv in self.convs], dim=1)
/// y = relu(y).transpose(1, 2)                 # [b, l, len(convs) * channels]
/// ```
///
/// with `self.convs = nn.ModuleList(...)` under `cnn`, so its keys are `cnn.convs.{i}.weight`
/// `[channels, hidden, k]` and `cnn.convs.{i}.bias`. Pads are zeroed before the convolutions,
/// which then see zeros past a window's last real token whatever padding follows it: a
/// window's logits do not depend on how much padding its batch has.
#[derive(Module, Debug)]
pub struct Cnn<B: Backend> {
    pub convs: Vec<Conv1d<B>>,
}

impl<B: Backend> Cnn<B> {
    /// Convolutions from `d_in` channels with `channels` outputs each, one per kernel size
    /// (PyTorch's default initialisation).
    pub fn init(d_in: usize, channels: usize, kernel_sizes: &[usize], device: &B::Device) -> Self {
        Self {
            convs: kernel_sizes
                .iter()
                .map(|&k| {
                    Conv1dConfig::new(d_in, channels, k)
                        .with_padding(PaddingConfig1d::Explicit(k / 2, k / 2))
                        .init(device)
                })
                .collect(),
        }
    }

    /// Channels out: the convolutions' outputs together.
    pub fn out_channels(&self) -> usize {
        self.convs.iter().map(|c| c.weight.dims()[0]).sum()
    }

    /// `x` `[b, l, in]`, `mask` `[b, l]` (1 = real token) -> `[b, l, out_channels]`.
    pub fn forward(&self, x: Tensor<B, 3>, mask: Tensor<B, 2>) -> Tensor<B, 3> {
        let [b, l] = mask.dims();
        let x = (x * mask.reshape([b, l, 1])).swap_dims(1, 2);
        let ys: Vec<Tensor<B, 3>> = self.convs.iter().map(|c| c.forward(x.clone())).collect();
        burn::tensor::activation::relu(Tensor::cat(ys, 1)).swap_dims(1, 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::tensor::TensorData;

    type A = Autodiff<Flex>;

    fn values(t: Tensor<Flex, 2>) -> Vec<f32> {
        t.into_data().to_vec().unwrap()
    }

    /// Blocks change how the steps' inputs are sliced, nothing else: outputs and every
    /// gradient equal the one-block run (each step's input slice taken from the whole
    /// projection) bit for bit.
    #[test]
    fn blocked_steps_give_the_same_outputs_and_gradients() {
        let d = Default::default();
        let (b, l, d_in, h) = (3, 11, 5, 4);
        let x: Tensor<A, 3> =
            Tensor::random([b, l, d_in], Distribution::Normal(0.0, 1.0), &d).require_grad();
        let w: Tensor<A, 3> = Tensor::random([b, l, h], Distribution::Default, &d);
        let dir = LstmDirection::<A>::init(d_in, h, &d);
        let run = |block: usize| {
            let y = dir.forward_in_blocks(x.clone(), block);
            let g = (y.clone() * w.clone()).sum().backward();
            let flat = |t: Tensor<Flex, 3>| t.reshape([1, -1]);
            (
                values(flat(y.inner())),
                values(flat(x.grad(&g).unwrap())),
                values(dir.weight_ih.val().grad(&g).unwrap()),
                values(dir.weight_hh.val().grad(&g).unwrap()),
                values(dir.bias_ih.val().grad(&g).unwrap().unsqueeze()),
            )
        };
        let whole = run(l);
        assert!(whole.1.iter().any(|&v| v != 0.0), "no input gradient");
        // √11 rounds up to 4: blocks of 4, 4 and 3 steps; 1: every step its own block.
        for block in [4, 1, 5] {
            assert_eq!(run(block), whole, "block {block}");
        }
    }

    fn right_padding(lengths: &[usize], l: usize) -> Vec<f32> {
        lengths
            .iter()
            .flat_map(|&n| (0..l).map(move |t| if t < n { 1.0 } else { 0.0 }))
            .collect()
    }

    #[test]
    fn reversal_rows_reverse_each_sequence_within_its_length() {
        let d = Default::default();
        let mask = right_padding(&[4, 2, 0, 1], 4);
        let mask: Tensor<Flex, 2> = Tensor::from_data(TensorData::new(mask, [4, 4]), &d);
        let rows: Vec<i64> = reversal_rows(mask)
            .into_data()
            .convert::<i64>()
            .to_vec()
            .unwrap();
        #[rustfmt::skip]
        assert_eq!(rows, [3, 2, 1, 0,  5, 4, 6, 7,  8, 9, 10, 11,  12, 13, 14, 15]);
    }

    /// A 2-layer BiLSTM (no dropout), random inputs `[b, l, d_in]` that take gradients, and
    /// the right-padding mask of `lengths`.
    fn padded_case(
        lengths: &[usize],
        l: usize,
        d_in: usize,
        h: usize,
    ) -> (BiLstm<A>, Tensor<A, 3>, Tensor<A, 2>) {
        let d = Default::default();
        let b = lengths.len();
        let lstm = BiLstm::<A>::init(d_in, h, 2, 0.0, &d);
        let x = Tensor::random([b, l, d_in], Distribution::Normal(0.0, 1.0), &d).require_grad();
        let mask = Tensor::from_data(TensorData::new(right_padding(lengths, l), [b, l]), &d);
        (lstm, x, mask)
    }

    /// Padding acts as packing: each padded sequence gives what the BiLSTM gives for that
    /// sequence alone, cut to its length, with zeros at pads; and no gradient reaches the
    /// inputs at pads.
    #[test]
    fn padded_batch_equals_each_sequence_run_alone() {
        let d = Default::default();
        let (l, d_in, h) = (7, 5, 4);
        let lengths = [7, 3, 1];
        let (lstm, x, mask) = padded_case(&lengths, l, d_in, h);
        let y = lstm.forward(x.clone(), mask);
        let g = y.clone().sum().backward();
        let x_grad: Vec<f32> = x.grad(&g).unwrap().into_data().to_vec().unwrap();
        let y: Vec<f32> = y.inner().into_data().to_vec().unwrap();
        for (r, &n) in lengths.iter().enumerate() {
            let xr = x.clone().slice([r..r + 1, 0..n, 0..d_in]);
            let alone: Vec<f32> = lstm
                .forward(xr, Tensor::ones([1, n], &d))
                .inner()
                .into_data()
                .to_vec()
                .unwrap();
            for t in 0..l {
                let got = &y[(r * l + t) * 2 * h..(r * l + t + 1) * 2 * h];
                if t < n {
                    let want = &alone[t * 2 * h..(t + 1) * 2 * h];
                    for (a, w) in got.iter().zip(want) {
                        assert!(
                            (a - w).abs() < 1e-6,
                            "row {r} step {t}: {got:?} vs {want:?}"
                        );
                    }
                } else {
                    assert!(got.iter().all(|&v| v == 0.0), "row {r} pad {t}: {got:?}");
                    let gx = &x_grad[(r * l + t) * d_in..(r * l + t + 1) * d_in];
                    assert!(gx.iter().all(|&v| v == 0.0), "gradient at pad {r},{t}");
                }
            }
        }
    }

    /// Both directions in one batched loop (device backends) give the outputs and gradients of
    /// one direction after the other (the host backend's way), up to the rounding of a batched
    /// product.
    #[test]
    fn paired_directions_equal_one_after_the_other() {
        let d = Default::default();
        let (l, d_in, h) = (9, 5, 4);
        let lengths = [9, 4, 2];
        let b = lengths.len();
        let (lstm, x, mask) = padded_case(&lengths, l, d_in, h);
        let w: Tensor<A, 3> = Tensor::random([b, l, 2 * h], Distribution::Default, &d);
        let run = |host: bool| {
            let y = amp::with_host_backend(host, || lstm.forward(x.clone(), mask.clone()));
            let g = (y.clone() * w.clone()).sum().backward();
            let mut v: Vec<Vec<f32>> = vec![
                y.inner().into_data().to_vec().unwrap(),
                x.grad(&g).unwrap().into_data().to_vec().unwrap(),
            ];
            for layer in &lstm.layers {
                for dir in [&layer.forward, &layer.reverse] {
                    v.push(values(dir.weight_ih.val().grad(&g).unwrap()));
                    v.push(values(dir.weight_hh.val().grad(&g).unwrap()));
                    v.push(values(dir.bias_hh.val().grad(&g).unwrap().unsqueeze()));
                }
            }
            v
        };
        let (paired, separate) = (run(false), run(true));
        for (k, (p, s)) in paired.iter().zip(&separate).enumerate() {
            assert_eq!(p.len(), s.len());
            assert!(s.iter().any(|&v| v != 0.0), "tensor {k} is all zero");
            for (a, b) in p.iter().zip(s) {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "tensor {k}: {a} vs {b}"
                );
            }
        }
    }
}
