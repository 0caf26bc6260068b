//! Saving a model as a HF folder that `transformers.AutoModelForQuestionAnswering` loads:
//! `config.json` (with `architectures`), `model.safetensors` under HF keys (`roberta.` /
//! `bert.` prefix, Linear weights back to `[out, in]`), and the tokenizer files. A BiLSTM head is
//! saved beside, under PyTorch `nn.LSTM` keys (`lstm.weight_ih_l0`, ...), and `qa_outputs` is
//! then Linear(2·hidden, 2), which transformers does not know: such a folder reloads here.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, Context, Result};
use burn::tensor::backend::Backend;
use safetensors::tensor::{Dtype, TensorView};

use super::config::{EncoderConfig, Family};
use super::QaModel;

/// Row-major f32 values and shape of every tensor, by HF key.
pub type StateDict = BTreeMap<String, (Vec<usize>, Vec<f32>)>;

/// The model's tensors under HF keys (the inverse of loading): every parameter at its
/// [`super::keys::hf_key`], the encoder's under the family prefix.
pub fn state_dict<B: Backend>(model: &QaModel<B>, family: Family) -> StateDict {
    super::keys::hf_tensors(model)
        .into_iter()
        .map(|(k, shape, data)| {
            let key = match k.part {
                super::keys::Part::Encoder => format!("{}{}", family.prefix(), k.key),
                _ => k.key,
            };
            (key, (shape, data))
        })
        .collect()
}

/// Writes `config.json`, `model.safetensors` and copies `tokenizer.json` /
/// `tokenizer_config.json` from `tokenizer_dir` into `out`.
pub fn save_pretrained<B: Backend>(
    model: &QaModel<B>,
    cfg: &EncoderConfig,
    base_config: Option<&serde_json::Value>,
    tokenizer_dir: &Path,
    out: &Path,
) -> Result<()> {
    let family = cfg.family()?;
    let sd = state_dict(model, family);
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = sd
        .into_iter()
        .map(|(k, (shape, data))| {
            let b = data.iter().flat_map(|x| x.to_le_bytes()).collect();
            (k, shape, b)
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = bytes
        .iter()
        .map(|(k, shape, b)| {
            TensorView::new(Dtype::F32, shape.clone(), b)
                .map(|v| (k.clone(), v))
                .map_err(|e| anyhow!("{k}: {e}"))
        })
        .collect::<Result<_>>()?;
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    let st = safetensors::serialize(views, Some(meta))?;
    crate::run::write_atomic(&out.join(crate::model::WEIGHTS_FILE), &st)?;

    // Start from the checkpoint's own config (it has keys we do not model) when there is one.
    let mut config = match base_config {
        Some(v) => v.clone(),
        None => serde_json::to_value(cfg)?,
    };
    let arch = match family {
        Family::Roberta if cfg.model_type == "xlm-roberta" => "XLMRobertaForQuestionAnswering",
        Family::Roberta => "RobertaForQuestionAnswering",
        Family::Bert => "BertForQuestionAnswering",
    };
    config["architectures"] = serde_json::json!([arch]);
    config["model_type"] = serde_json::json!(cfg.model_type);
    if let Some(lstm) = &model.lstm {
        config["qa_head"] = serde_json::json!("bilstm");
        config["num_rnn_layers"] = serde_json::json!(lstm.layers.len());
    }
    if let Some(cnn) = &model.cnn {
        let sizes: Vec<usize> = cnn.convs.iter().map(|c| c.kernel_size).collect();
        config["qa_head"] = serde_json::json!("cnn");
        config["cnn_kernel_sizes"] = serde_json::json!(sizes);
    }
    crate::run::write_json_atomic(&out.join(crate::model::CONFIG_FILE), &config)?;
    for name in [
        crate::qa::windows::TOKENIZER_FILE,
        crate::qa::windows::TOKENIZER_CONFIG_FILE,
        "special_tokens_map.json",
    ] {
        let src = tokenizer_dir.join(name);
        if src.exists() {
            let bytes =
                std::fs::read(&src).with_context(|| format!("reading {}", src.display()))?;
            crate::run::write_atomic(&out.join(name), &bytes)?;
        }
    }
    Ok(())
}
