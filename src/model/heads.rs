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

    /// Runs over `x` `[b, l, in]` with `mask` `[b, l, 1]` (1 = real token); `[b, l, H]`.
    fn forward(&self, x: Tensor<B, 3>, mask: Tensor<B, 3>, reverse: bool) -> Tensor<B, 3> {
        let [b, l, _] = x.dims();
        let h = self.weight_hh.dims()[1];
        let device = x.device();
        // Input projections of all steps at once; only the recurrent part is sequential.
        let bias = (self.bias_ih.val() + self.bias_hh.val()).reshape([1, 1, 4 * h]);
        let xp = amp::matmul(x, self.weight_ih.val().transpose().unsqueeze_dim(0)) + bias;
        // Cast once for all steps under autocast (the per-step cast is then a no-op).
        let w_hh = amp::to_compute(self.weight_hh.val().transpose());
        let mut hs: Tensor<B, 2> = Tensor::zeros([b, h], &device);
        let mut cs: Tensor<B, 2> = Tensor::zeros([b, h], &device);
        let mut outs: Vec<Tensor<B, 2>> = Vec::with_capacity(l);
        let steps: Vec<usize> = if reverse {
            (0..l).rev().collect()
        } else {
            (0..l).collect()
        };
        for t in steps {
            let g = xp
                .clone()
                .slice([0..b, t..t + 1, 0..4 * h])
                .reshape([b, 4 * h])
                + amp::matmul(hs.clone(), w_hh.clone());
            let i = sigmoid(g.clone().slice([0..b, 0..h]));
            let f = sigmoid(g.clone().slice([0..b, h..2 * h]));
            let gg = tanh(g.clone().slice([0..b, 2 * h..3 * h]));
            let o = sigmoid(g.slice([0..b, 3 * h..4 * h]));
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
