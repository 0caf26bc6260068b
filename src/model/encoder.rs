//! The RoBERTa / BERT encoder, mirroring HF `modeling_roberta.py` / `modeling_bert.py`.
//!
//! Structs follow HF's classes in order (`Embeddings -> SelfAttention -> SelfOutput -> Attention
//! -> Intermediate -> Output -> Layer -> Encoder -> Model`) and each module's HF key is its field
//! path, with two spellings Rust cannot use: `attention.self` (field `self_attention`) and
//! `LayerNorm` (field `layer_norm`); [`super::keys`] maps them. Dropout sits exactly where HF puts
//! it (embeddings, attention probabilities, after the attention-output and FFN-output dense
//! layers) and is active only on an autodiff backend (training), never in evaluation.

use burn::module::{Module, Param};
use burn::nn::{
    Dropout, DropoutConfig, Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear,
    LinearConfig,
};
use burn::tensor::activation::{gelu, gelu_approximate, softmax};
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor};

use super::amp;
use super::config::{EncoderConfig, Family};
use super::dropout::dropout;

/// A Linear initialised as HF does: N(0, initializer_range), zero bias.
pub fn hf_linear<B: Backend>(d_in: usize, d_out: usize, std: f64, device: &B::Device) -> Linear<B> {
    let mut l = LinearConfig::new(d_in, d_out).init(device);
    l.weight = Param::from_tensor(Tensor::random(
        [d_in, d_out],
        Distribution::Normal(0.0, std),
        device,
    ));
    l.bias = Some(Param::from_tensor(Tensor::zeros([d_out], device)));
    l
}

fn hf_embedding<B: Backend>(n: usize, d: usize, std: f64, device: &B::Device) -> Embedding<B> {
    let mut e = EmbeddingConfig::new(n, d).init(device);
    e.weight = Param::from_tensor(Tensor::random(
        [n, d],
        Distribution::Normal(0.0, std),
        device,
    ));
    e
}

/// `ln.forward(x)`, through the fused kernel where the backend has it (see
/// [`super::kernels::layer_norm`]).
fn layer_norm_forward<B: Backend>(ln: &LayerNorm<B>, x: Tensor<B, 3>, eps: f64) -> Tensor<B, 3> {
    super::kernels::layer_norm(ln, x, eps)
}

fn layer_norm<B: Backend>(cfg: &EncoderConfig, device: &B::Device) -> LayerNorm<B> {
    LayerNormConfig::new(cfg.hidden_size)
        .with_epsilon(cfg.layer_norm_eps)
        .init(device)
}

/// `RobertaEmbeddings` / `BertEmbeddings`.
#[derive(Module, Debug)]
pub struct Embeddings<B: Backend> {
    pub word_embeddings: Embedding<B>,
    pub position_embeddings: Embedding<B>,
    pub token_type_embeddings: Embedding<B>,
    pub layer_norm: LayerNorm<B>,
    pub dropout: Dropout,
}

impl<B: Backend> Embeddings<B> {
    fn init(cfg: &EncoderConfig, device: &B::Device) -> Self {
        let std = cfg.initializer_range;
        // HF zeroes the padding row of the word embeddings. Done on the data so the parameter
        // stays a leaf tensor for autodiff.
        let (n, d) = (cfg.vocab_size, cfg.hidden_size);
        let random: Tensor<B, 2> = Tensor::random([n, d], Distribution::Normal(0.0, std), device);
        let mut values = random
            .into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .unwrap_or_default();
        let pad = cfg.pad_token_id.min(n.saturating_sub(1));
        values[pad * d..(pad + 1) * d]
            .iter_mut()
            .for_each(|x| *x = 0.0);
        let mut word = EmbeddingConfig::new(n, d).init(device);
        word.weight = Param::from_tensor(Tensor::from_data(
            burn::tensor::TensorData::new(values, [n, d]),
            device,
        ));
        Self {
            word_embeddings: word,
            position_embeddings: hf_embedding(
                cfg.max_position_embeddings,
                cfg.hidden_size,
                std,
                device,
            ),
            token_type_embeddings: hf_embedding(cfg.type_vocab_size, cfg.hidden_size, std, device),
            layer_norm: layer_norm(cfg, device),
            dropout: DropoutConfig::new(cfg.hidden_dropout_prob).init(),
        }
    }

    fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        token_type_ids: Tensor<B, 2, Int>,
        position_ids: Tensor<B, 2, Int>,
        eps: f64,
    ) -> Tensor<B, 3> {
        let x = self.word_embeddings.forward(input_ids)
            + self.token_type_embeddings.forward(token_type_ids)
            + self.position_embeddings.forward(position_ids);
        dropout(&self.dropout, layer_norm_forward(&self.layer_norm, x, eps))
    }
}

/// `RobertaSelfAttention` (HF key `attention.self`).
#[derive(Module, Debug)]
pub struct SelfAttention<B: Backend> {
    pub query: Linear<B>,
    pub key: Linear<B>,
    pub value: Linear<B>,
    pub dropout: Dropout,
    pub num_heads: usize,
}

impl<B: Backend> SelfAttention<B> {
    fn forward(&self, x: Tensor<B, 3>, mask: &KeyMask<B>) -> Tensor<B, 3> {
        let [b, l, h] = x.dims();
        let nh = self.num_heads;
        let dh = h / nh;
        let q = super::kernels::linear(&self.query, x.clone());
        let k = super::kernels::linear(&self.key, x.clone());
        let v = super::kernels::linear(&self.value, x);
        if let KeyMask::Additive(m) = mask {
            if m.dims()[2] == 1 {
                // On a GPU backend: our fused attention (flash-attention style, dropout
                // inside), which reads q, k, v in the linear layers' layout and never writes
                // the [b, heads, l, l] scores.
                let bias = m.clone().reshape([b, l]);
                let scale = 1.0 / (dh as f32).sqrt();
                let p = self.dropout.prob as f32;
                if let Some(ctx) = super::kernels::attention(&q, &k, &v, &bias, nh, scale, p) {
                    return ctx;
                }
            }
        }
        let heads = |t: Tensor<B, 3>| t.reshape([b, l, nh, dh]).swap_dims(1, 2);
        let (q, k, v) = (heads(q), heads(k), heads(v));
        let pad_mask = match mask {
            KeyMask::Additive(m) => m.clone(),
            KeyMask::Padded(keys) => {
                // Without dropout (no autodiff): Burn's fused attention, softmax(q kᵀ/√dh) v
                // with padded keys at -inf, computed tile by tile (flash attention on CUDA).
                let keys = keys.clone().expand([b, nh, l, l]);
                let back = burn::tensor::FloatDType::from(q.dtype());
                let (q, k, v) = (amp::to_compute(q), amp::to_compute(k), amp::to_compute(v));
                let ctx =
                    burn::tensor::module::attention(q, k, v, Some(keys), None, Default::default());
                return ctx.cast(back).swap_dims(1, 2).reshape([b, l, h]);
            }
        };
        let scores = amp::matmul(q, k.swap_dims(2, 3)) / (dh as f64).sqrt();
        let scores = scores + pad_mask;
        let probs = dropout(&self.dropout, softmax(scores, 3));
        amp::matmul(probs, v).swap_dims(1, 2).reshape([b, l, h])
    }
}

/// Padded keys, as each attention layer takes them.
#[derive(Debug, Clone)]
pub enum KeyMask<B: Backend> {
    /// Added to the scores: 0 for real keys, a large negative value for padding, `[b, 1, 1, l]`
    /// or, on a host backend, materialised as `[b, heads, l, l]` (training, where attention
    /// dropout needs the probabilities).
    Additive(Tensor<B, 4>),
    /// True at padded keys, `[b, 1, 1, l]` (evaluation: fused attention).
    Padded(Tensor<B, 4, burn::tensor::Bool>),
}

/// `RobertaSelfOutput`.
#[derive(Module, Debug)]
pub struct SelfOutput<B: Backend> {
    pub dense: Linear<B>,
    pub layer_norm: LayerNorm<B>,
    pub dropout: Dropout,
}

/// `RobertaAttention`.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub self_attention: SelfAttention<B>,
    pub output: SelfOutput<B>,
}

/// `RobertaIntermediate`.
#[derive(Module, Debug)]
pub struct Intermediate<B: Backend> {
    pub dense: Linear<B>,
    /// `gelu` (exact, erf) unless the config asks for the tanh approximation.
    pub approximate_gelu: bool,
}

/// `RobertaOutput`.
#[derive(Module, Debug)]
pub struct Output<B: Backend> {
    pub dense: Linear<B>,
    pub layer_norm: LayerNorm<B>,
    pub dropout: Dropout,
}

/// `RobertaLayer`.
#[derive(Module, Debug)]
pub struct Layer<B: Backend> {
    pub attention: Attention<B>,
    pub intermediate: Intermediate<B>,
    pub output: Output<B>,
}

impl<B: Backend> Layer<B> {
    fn init(cfg: &EncoderConfig, device: &B::Device) -> Self {
        let (h, i, std) = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.initializer_range,
        );
        Self {
            attention: Attention {
                self_attention: SelfAttention {
                    query: hf_linear(h, h, std, device),
                    key: hf_linear(h, h, std, device),
                    value: hf_linear(h, h, std, device),
                    dropout: DropoutConfig::new(cfg.attention_probs_dropout_prob).init(),
                    num_heads: cfg.num_attention_heads,
                },
                output: SelfOutput {
                    dense: hf_linear(h, h, std, device),
                    layer_norm: layer_norm(cfg, device),
                    dropout: DropoutConfig::new(cfg.hidden_dropout_prob).init(),
                },
            },
            intermediate: Intermediate {
                dense: hf_linear(h, i, std, device),
                approximate_gelu: cfg.hidden_act != "gelu",
            },
            output: Output {
                dense: hf_linear(i, h, std, device),
                layer_norm: layer_norm(cfg, device),
                dropout: DropoutConfig::new(cfg.hidden_dropout_prob).init(),
            },
        }
    }

    fn forward(&self, x: Tensor<B, 3>, mask: &KeyMask<B>, eps: f64) -> Tensor<B, 3> {
        let a = &self.attention;
        let ctx = a.self_attention.forward(x.clone(), mask);
        let o = &a.output;
        let attn = layer_norm_forward(
            &o.layer_norm,
            dropout(&o.dropout, super::kernels::linear(&o.dense, ctx)) + x,
            eps,
        );
        let inter = super::kernels::linear(&self.intermediate.dense, attn.clone());
        let inter = if self.intermediate.approximate_gelu {
            gelu_approximate(inter)
        } else {
            gelu(inter)
        };
        let out = &self.output;
        layer_norm_forward(
            &out.layer_norm,
            dropout(&out.dropout, super::kernels::linear(&out.dense, inter)) + attn,
            eps,
        )
    }
}

/// `RobertaEncoder`.
#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    pub layer: Vec<Layer<B>>,
}

/// `RobertaModel` / `BertModel` without the pooler (QA does not use it).
#[derive(Module, Debug)]
pub struct EncoderModel<B: Backend> {
    pub embeddings: Embeddings<B>,
    pub encoder: Encoder<B>,
    /// RoBERTa's position rule (cumsum of the non-pad mask) when true, BERT's arange otherwise.
    pub roberta_positions: bool,
    pub pad_token_id: usize,
    /// The layer norms' ε (`layer_norm_eps`; Burn's `LayerNorm` keeps its own private).
    pub layer_norm_eps: f64,
}

impl<B: Backend> EncoderModel<B> {
    /// A randomly initialised encoder (HF's initialisation).
    pub fn init(cfg: &EncoderConfig, device: &B::Device) -> anyhow::Result<Self> {
        Ok(Self {
            embeddings: Embeddings::init(cfg, device),
            encoder: Encoder {
                layer: (0..cfg.num_hidden_layers)
                    .map(|_| Layer::init(cfg, device))
                    .collect(),
            },
            roberta_positions: cfg.family()? == Family::Roberta,
            pad_token_id: cfg.pad_token_id,
            layer_norm_eps: cfg.layer_norm_eps,
        })
    }

    /// Position ids as HF computes them: RoBERTa `cumsum(mask) * mask + pad_token_id` over the
    /// non-pad mask of `input_ids` (so left or right padding both work), BERT `0..L`.
    pub fn position_ids(&self, input_ids: &Tensor<B, 2, Int>) -> Tensor<B, 2, Int> {
        let [b, l] = input_ids.dims();
        let device = input_ids.device();
        if self.roberta_positions {
            let mask = input_ids
                .clone()
                .not_equal_elem(self.pad_token_id as i64)
                .int();
            mask.clone().cumsum(1) * mask + self.pad_token_id as i64
        } else {
            Tensor::<B, 1, Int>::arange(0..l as i64, &device)
                .unsqueeze_dim::<2>(0)
                .repeat_dim(0, b)
        }
    }

    /// The last hidden state `[batch, seq, hidden]`. `attention_mask` is 1 for real tokens.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
        token_type_ids: Tensor<B, 2, Int>,
    ) -> Tensor<B, 3> {
        let [b, l] = input_ids.dims();
        let positions = self.position_ids(&input_ids);
        // RoBERTa has one token type; a BERT-style tokenizer may still mark the context with 1.
        let token_type_ids = if self.embeddings.token_type_embeddings.weight.dims()[0] == 1 {
            token_type_ids.zeros_like()
        } else {
            token_type_ids
        };
        let mut x =
            self.embeddings
                .forward(input_ids, token_type_ids, positions, self.layer_norm_eps);
        let padded = attention_mask.equal_elem(0).reshape([b, 1, 1, l]);
        let mask = if B::ad_enabled(&x.device()) || !amp::fused_attention() {
            // HF adds finfo(dtype).min at padded keys; any value that underflows exp() is the
            // same.
            let additive = padded.float() * -1.0e9;
            if amp::host_backend() {
                // One contiguous [b, heads, l, l] copy for all layers: the CPU backend adds it
                // to the scores in place with SIMD, where the broadcast [b, 1, 1, l] took its
                // generic strided path (a tenth of a training step).
                let nh = self
                    .encoder
                    .layer
                    .first()
                    .map_or(1, |layer| layer.attention.self_attention.num_heads);
                KeyMask::Additive(additive.repeat_dim(2, l).repeat_dim(1, nh))
            } else {
                KeyMask::Additive(additive)
            }
        } else {
            KeyMask::Padded(padded)
        };
        for layer in &self.encoder.layer {
            x = layer.forward(x, &mask, self.layer_norm_eps);
        }
        x
    }
}
