//! Whether a training step fits the device, checked before anything is written.

use anyhow::{bail, Result};

use crate::model::config::EncoderConfig;
use crate::settings::Settings;

/// Refuses, in one line, settings whose training step cannot fit the device's memory (a lower
/// bound, [`crate::model::memory`]), instead of an allocation failure or the OOM killer later.
/// `cfg` is the model's config; without it (before `prepare`) it is read from the pretrained
/// folder or built from the from-scratch sizes.
pub fn check_fits(s: &Settings, cfg: Option<&EncoderConfig>) -> Result<()> {
    let device = s.train.device;
    let guessed;
    let cfg = match cfg {
        Some(c) => c,
        None => {
            guessed = match &s.model.pretrained {
                Some(dir) => match EncoderConfig::load(&dir.join(crate::model::CONFIG_FILE)) {
                    Ok(c) => c,
                    Err(_) => return Ok(()), // `prepare` / `train` report the folder
                },
                None => s
                    .model
                    .scratch_config(s.prepare.vocab_size, 0, s.prepare.max_seq_length),
            };
            &guessed
        }
    };
    use crate::model::memory::{gib, training_step_bytes};
    let head_dim = cfg.hidden_size / cfg.num_attention_heads.max(1);
    let fused = crate::model::kernels::attention_is_fused(
        device,
        s.train.precision,
        s.train.batch_size * cfg.num_attention_heads,
        head_dim,
    );
    let need = training_step_bytes(
        cfg,
        &s.model.head_config(),
        s.train.batch_size,
        s.prepare.max_seq_length,
        fused,
    );
    // wgpu caps every buffer (lavapipe at 128 MiB): the word embeddings, a layer's
    // feed-forward activations and (without the fused attention) its attention scores are the
    // largest ones a step cannot split.
    if let Some(max) = crate::device::max_buffer_bytes(device) {
        let h = cfg.hidden_size as u64;
        let (b, l) = (s.train.batch_size as u64, s.prepare.max_seq_length as u64);
        let mut buffers = vec![
            ("the word embedding table", cfg.vocab_size as u64 * h * 4),
            (
                "a layer's feed-forward activations",
                b * l * cfg.intermediate_size as u64 * 4,
            ),
        ];
        if !fused {
            buffers.push((
                "a layer's attention scores",
                b * cfg.num_attention_heads as u64 * l * l * 4,
            ));
        }
        for (what, bytes) in buffers {
            if bytes > max {
                bail!(
                    "{what} needs one buffer of {:.0} MiB, but device {} allows at most {:.0} MiB per buffer: lower train.batch_size or prepare.max_seq_length, or use another device",
                    bytes as f64 / 1048576.0,
                    s.train.device,
                    max as f64 / 1048576.0
                );
            }
        }
    }
    let Some(have) = crate::device::memory_bytes(device) else {
        return Ok(());
    };
    if need > have {
        bail!(
            "a training step at train.batch_size {} x prepare.max_seq_length {} needs at least {:.1} GiB, but device {} has {:.1} GiB: lower train.batch_size (train.gradient_accumulation keeps the effective batch) or prepare.max_seq_length",
            s.train.batch_size,
            s.prepare.max_seq_length,
            gib(need),
            s.train.device,
            gib(have)
        );
    }
    Ok(())
}
