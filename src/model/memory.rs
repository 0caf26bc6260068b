//! A lower-bound estimate of the memory one training step needs, to refuse a configuration that
//! cannot fit before it is tried (an allocation failure aborts the process; on the CPU the
//! kernel's OOM killer ends it, with no message that says why).
//!
//! Counted in f32: weights, gradients and AdamW's two moments (4 copies of every parameter), and
//! the activations the backward pass keeps per encoder layer: the attention scores, their
//! softmax and its dropout (three `[batch, heads, L, L]` tensors, the term that explodes with
//! the sequence length), and about ten hidden-sized plus two intermediate-sized `[batch, L, ·]`
//! tensors; a BiLSTM head keeps its gates and states per direction and layer. Burn's allocator
//! pools and the framework's workspace come on top, so the real peak is higher (bf16-mixed keeps
//! half-precision copies as well): this only refuses what surely cannot fit.

use super::config::EncoderConfig;
use super::{HeadConfig, HeadKind};

/// Parameters of the encoder + head.
pub fn parameters(cfg: &EncoderConfig, head: &HeadConfig) -> u64 {
    let h = cfg.hidden_size as u64;
    let i = cfg.intermediate_size as u64;
    let embeddings =
        (cfg.vocab_size + cfg.max_position_embeddings + cfg.type_vocab_size) as u64 * h + 2 * h;
    let layer = 4 * (h * h + h) + 2 * h * i + i + h + 4 * h;
    let head_params = match head.kind {
        HeadKind::Linear => 2 * h + 2,
        // Per layer and direction: input and recurrent weights for 4 gates, two biases.
        HeadKind::Bilstm => {
            let first = 2 * (4 * h * h + 4 * h * h + 8 * h);
            let later = 2 * (4 * h * 2 * h + 4 * h * h + 8 * h);
            first + later * head.num_rnn_layers.saturating_sub(1) as u64 + 2 * 2 * h + 2
        }
        // Per kernel size k: a [c, h, k] weight and c biases; then Linear(n c, 2).
        HeadKind::Cnn => {
            let c = HeadConfig::cnn_channels(cfg.hidden_size) as u64;
            let n = head.cnn_kernel_sizes.len() as u64;
            let convs: u64 = head
                .cnn_kernel_sizes
                .iter()
                .map(|&k| c * h * k as u64 + c)
                .sum();
            convs + 2 * n * c + 2
        }
    };
    embeddings + cfg.num_hidden_layers as u64 * layer + head_params
}

/// Bytes one training step needs at least (see the module doc); `fused_attention`: the step
/// runs the fused attention kernel, which keeps no `[b, heads, l, l]` tensors.
pub fn training_step_bytes(
    cfg: &EncoderConfig,
    head: &HeadConfig,
    batch: usize,
    seq: usize,
    fused_attention: bool,
) -> u64 {
    const F32: u64 = 4;
    let (b, l) = (batch as u64, seq as u64);
    let (h, i) = (cfg.hidden_size as u64, cfg.intermediate_size as u64);
    let heads = cfg.num_attention_heads as u64;
    let states = 4 * parameters(cfg, head) * F32;
    // The fused attention keeps per row only its output and log-sum-exp, no [b, heads, l, l].
    let attention = if fused_attention {
        0
    } else {
        3 * b * heads * l * l * F32
    };
    let per_layer = attention + b * l * (10 * h + 2 * i) * F32;
    let rnn = match head.kind {
        HeadKind::Linear => 0,
        HeadKind::Bilstm => head.num_rnn_layers as u64 * 2 * b * l * 6 * h * F32,
        // The masked input, the convolutions' outputs and their ReLU.
        HeadKind::Cnn => b * l * (h + 2 * h) * F32,
    };
    states
        .saturating_add(per_layer.saturating_mul(cfg.num_hidden_layers as u64))
        .saturating_add(rnn)
}

/// `n` bytes in GiB, for messages.
pub fn gib(n: u64) -> f64 {
    n as f64 / (1u64 << 30) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roberta(hidden: usize, layers: usize, heads: usize, inter: usize) -> EncoderConfig {
        let m = crate::settings::ModelSettings {
            hidden_size: hidden,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            intermediate_size: inter,
            ..Default::default()
        };
        m.scratch_config(50265, 1, 512)
    }

    #[test]
    fn parameter_counts_match_hf_roberta_base_and_large() {
        // transformers' RobertaForQuestionAnswering: 124,056,578 (base), 354,312,194 (large).
        let lin = HeadConfig::default();
        assert_eq!(parameters(&roberta(768, 12, 12, 3072), &lin), 124_056_578);
        assert_eq!(parameters(&roberta(1024, 24, 16, 4096), &lin), 354_312_194);
        // torch: nn.LSTM(h, h, num_layers=2, bidirectional=True) has 40h^2 + 32h parameters,
        // Linear(2h, 2) 4h + 2, where the linear head's Linear(h, 2) has 2h + 2.
        let bilstm = HeadConfig {
            kind: HeadKind::Bilstm,
            ..HeadConfig::default()
        };
        let cfg = roberta(256, 4, 4, 1024);
        let h = 256u64;
        assert_eq!(
            parameters(&cfg, &bilstm) - parameters(&cfg, &lin),
            40 * h * h + 32 * h + (4 * h + 2) - (2 * h + 2)
        );
    }

    /// The count the memory estimate uses is the model's own, for every head.
    #[test]
    fn parameter_counts_are_the_models() {
        use burn::module::Module;
        let mut cfg = roberta(48, 2, 4, 96);
        cfg.vocab_size = 100;
        for kind in [HeadKind::Linear, HeadKind::Bilstm, HeadKind::Cnn] {
            let head = HeadConfig {
                kind,
                ..HeadConfig::default()
            };
            let model = crate::model::QaModel::<burn::backend::Flex>::init(
                &cfg,
                &head,
                &Default::default(),
            )
            .unwrap();
            assert_eq!(
                parameters(&cfg, &head),
                model.num_params() as u64,
                "{kind:?}"
            );
        }
    }

    #[test]
    fn the_attention_term_grows_with_the_square_of_the_length() {
        let cfg = roberta(64, 2, 4, 256);
        let lin = HeadConfig::default();
        let short = training_step_bytes(&cfg, &lin, 16, 128, false);
        let long = training_step_bytes(&cfg, &lin, 16, 65536, false);
        // 65536 tokens: 3 x 16 x 4 x 65536^2 x 4 bytes per layer, about 3 TiB for two layers.
        assert!(gib(long) > 3.0 * 1024.0, "{}", gib(long));
        assert!(gib(short) < 1.0, "{}", gib(short));
        // The fused attention (GPU training) writes no scores: the term goes.
        let fused = training_step_bytes(&cfg, &lin, 16, 65536, true);
        assert!(gib(fused) < gib(long) / 100.0, "{}", gib(fused));
    }
}
