//! Span heads: HF's linear `qa_outputs`, and the competition seed's stacked bidirectional LSTM.
//!
//! The LSTM keeps PyTorch `nn.LSTM`'s parameter layout and names (`weight_ih_l{k}`,
//! `weight_hh_l{k}`, `bias_ih_l{k}`, `bias_hh_l{k}`, `*_reverse`; gates stacked i, f, g, o) so
//! torch weights load as they are. Padding is masked rather than packed: at a padded step the
//! state is carried unchanged and the output is zero. With right padding the reverse direction
//! therefore starts every sequence at its last real token with a zero state, exactly what
//! `pack_padded_sequence` gives, and outputs at pads are zero as `pad_packed_sequence` gives.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig};
use burn::tensor::activation::{sigmoid, tanh};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};

use super::amp;
use super::load::Weights;

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

    fn load(
        w: &mut Weights,
        prefix: &str,
        suffix: &str,
        d_in: usize,
        h: usize,
        device: &B::Device,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            weight_ih: Param::from_tensor(w.tensor(
                &format!("{prefix}weight_ih{suffix}"),
                [4 * h, d_in],
                device,
            )?),
            weight_hh: Param::from_tensor(w.tensor(
                &format!("{prefix}weight_hh{suffix}"),
                [4 * h, h],
                device,
            )?),
            bias_ih: Param::from_tensor(w.tensor(
                &format!("{prefix}bias_ih{suffix}"),
                [4 * h],
                device,
            )?),
            bias_hh: Param::from_tensor(w.tensor(
                &format!("{prefix}bias_hh{suffix}"),
                [4 * h],
                device,
            )?),
        })
    }

    /// The input projections of all steps at once, `x W_ihᵀ + b_ih + b_hh`: `[b, l, 4H]`.
    fn input_projection(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let h4 = self.weight_ih.dims()[0];
        let bias = (self.bias_ih.val() + self.bias_hh.val()).reshape([1, 1, h4]);
        amp::matmul(x, self.weight_ih.val().transpose().unsqueeze_dim(0)) + bias
    }

    /// Runs over `x` `[b, l, in]` with `mask` `[b, l, 1]` (1 = real token); `[b, l, H]`.
    fn forward(&self, x: Tensor<B, 3>, mask: Tensor<B, 3>, reverse: bool) -> Tensor<B, 3> {
        let block = (x.dims()[1] as f64).sqrt().ceil().max(1.0) as usize;
        self.forward_in_blocks(x, mask, reverse, block)
    }

    /// [`Self::forward`], taking the steps' input projections out of blocks of `block` steps.
    ///
    /// The gradient of a slice is a zero tensor of the sliced tensor's size with the slice
    /// written in, so slicing each step out of the whole `[b, l, 4H]` projection costs l
    /// full-size tensors in the backward pass (O(l²): most of a BiLSTM step at L 128, and
    /// gigabytes of memory traffic per layer at L 384). Slicing blocks of √l steps out of it,
    /// then steps out of the blocks, costs O(l·√l) and gives the same values and gradients.
    fn forward_in_blocks(
        &self,
        x: Tensor<B, 3>,
        mask: Tensor<B, 3>,
        reverse: bool,
        block: usize,
    ) -> Tensor<B, 3> {
        let [b, l, _] = x.dims();
        let h = self.weight_hh.dims()[1];
        let device = x.device();
        let xp = self.input_projection(x);
        let w_hh = amp::to_compute(self.weight_hh.val().transpose());
        let mut hs: Tensor<B, 2> = Tensor::zeros([b, h], &device);
        let mut cs: Tensor<B, 2> = Tensor::zeros([b, h], &device);
        let mut outs: Vec<Tensor<B, 2>> = Vec::with_capacity(l);
        let steps: Vec<usize> = if reverse {
            (0..l).rev().collect()
        } else {
            (0..l).collect()
        };
        let blocks: Vec<Tensor<B, 3>> = (0..l)
            .step_by(block)
            .map(|t0| xp.clone().slice([0..b, t0..(t0 + block).min(l), 0..4 * h]))
            .collect();
        for t in steps {
            let g = blocks[t / block]
                .clone()
                .slice([0..b, t % block..t % block + 1, 0..4 * h])
                .reshape([b, 4 * h])
                + amp::matmul(hs.clone(), w_hh.clone());
            // Gates i, f, o through one sigmoid over all four (elementwise: the same values),
            // the cell candidate g through tanh.
            let gates = sigmoid(g.clone());
            let i = gates.clone().slice([0..b, 0..h]);
            let f = gates.clone().slice([0..b, h..2 * h]);
            let o = gates.slice([0..b, 3 * h..4 * h]);
            let gg = tanh(g.slice([0..b, 2 * h..3 * h]));
            let c_new = f * cs.clone() + i * gg;
            let h_new = o * tanh(c_new.clone());
            let m = mask.clone().slice([0..b, t..t + 1, 0..1]).reshape([b, 1]);
            let keep = m.clone().neg() + 1.0;
            cs = c_new * m.clone() + cs * keep.clone();
            hs = h_new.clone() * m.clone() + hs * keep;
            outs.push(h_new * m);
        }
        if reverse {
            outs.reverse();
        }
        Tensor::stack(outs, 1)
    }
}

/// One bidirectional layer.
#[derive(Module, Debug)]
pub struct LstmLayer<B: Backend> {
    pub forward: LstmDirection<B>,
    pub reverse: LstmDirection<B>,
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

    /// Loads PyTorch `nn.LSTM` weights under `prefix` (e.g. `lstm.`).
    pub fn load(
        w: &mut Weights,
        prefix: &str,
        d_in: usize,
        hidden: usize,
        layers: usize,
        dropout: f64,
        device: &B::Device,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            layers: (0..layers)
                .map(|k| {
                    let d = if k == 0 { d_in } else { 2 * hidden };
                    Ok(LstmLayer {
                        forward: LstmDirection::load(
                            w,
                            prefix,
                            &format!("_l{k}"),
                            d,
                            hidden,
                            device,
                        )?,
                        reverse: LstmDirection::load(
                            w,
                            prefix,
                            &format!("_l{k}_reverse"),
                            d,
                            hidden,
                            device,
                        )?,
                    })
                })
                .collect::<anyhow::Result<_>>()?,
            dropout: DropoutConfig::new(dropout).init(),
        })
    }

    /// `x` `[b, l, in]`, `mask` `[b, l]` (1 = real token) -> `[b, l, 2H]`.
    pub fn forward(&self, x: Tensor<B, 3>, mask: Tensor<B, 2>) -> Tensor<B, 3> {
        let [b, l] = mask.dims();
        let mask = mask.reshape([b, l, 1]);
        let mut x = x;
        for (k, layer) in self.layers.iter().enumerate() {
            if k > 0 {
                x = super::dropout::dropout(&self.dropout, x);
            }
            let fwd = layer.forward.forward(x.clone(), mask.clone(), false);
            let rev = layer.reverse.forward(x, mask.clone(), true);
            x = Tensor::cat(vec![fwd, rev], 2);
        }
        x
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
    /// projection, the torch-parity-tested formulation) bit for bit, padding included.
    #[test]
    fn blocked_steps_give_the_same_outputs_and_gradients() {
        let d = Default::default();
        let (b, l, d_in, h) = (3, 11, 5, 4);
        let x: Tensor<A, 3> =
            Tensor::random([b, l, d_in], Distribution::Normal(0.0, 1.0), &d).require_grad();
        // lengths 11, 6, 1: right padding, as the windows have it
        let mask: Vec<f32> = [11, 6, 1]
            .iter()
            .flat_map(|&n| (0..l).map(move |t| if t < n { 1.0 } else { 0.0 }))
            .collect();
        let mask: Tensor<A, 3> = Tensor::from_data(TensorData::new(mask, [b, l, 1]), &d);
        let w: Tensor<A, 3> = Tensor::random([b, l, h], Distribution::Default, &d);
        for reverse in [false, true] {
            let dir = LstmDirection::<A>::init(d_in, h, &d);
            let run = |block: usize| {
                let y = dir.forward_in_blocks(x.clone(), mask.clone(), reverse, block);
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
                assert_eq!(run(block), whole, "block {block}, reverse {reverse}");
            }
            // Outputs at padded steps are zero.
            assert!(whole.0[(b * l - 1) * h..].iter().all(|&v| v == 0.0));
        }
    }
}
