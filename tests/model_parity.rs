//! The Burn encoder + heads compute what PyTorch `transformers` computes, on the tiny random
//! checkpoints and reference outputs of tools/make_model_fixtures.py (CPU, flex backend).

mod common;

use burn::backend::Flex;
use burn::tensor::{Int, Tensor, TensorData};
use common::*;
use pipeline::model::load::Weights;
use pipeline::model::{HeadConfig, HeadKind, QaModel};
use serde_json::Value;

type B = Flex;

fn read(rel: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixture(rel)).unwrap()).unwrap()
}

fn int_tensor(rows: &[Vec<i64>]) -> Tensor<B, 2, Int> {
    let l = rows[0].len();
    let flat: Vec<i64> = rows.iter().flatten().copied().collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), l]), &Default::default())
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn load(dir: &str) -> (QaModel<B>, pipeline::model::LoadReport) {
    let (m, _, report) =
        QaModel::<B>::from_pretrained(&fixture(dir), &HeadConfig::default(), &Default::default())
            .unwrap_or_else(|e| panic!("{dir}: {e:#}"));
    (m, report)
}

/// Runs every fixture window through the model; returns the max |Δ| over start and end logits.
fn check_logits(model: &QaModel<B>, fx: &Value) -> f32 {
    let windows = fx["windows"].as_array().unwrap();
    let ids: Vec<Vec<i64>> = windows.iter().map(|w| ints(&w["input_ids"])).collect();
    let mask: Vec<Vec<i64>> = windows.iter().map(|w| ints(&w["attention_mask"])).collect();
    let types: Vec<Vec<i64>> = windows
        .iter()
        .map(|w| match w.get("token_type_ids") {
            Some(t) => ints(t),
            None => vec![0; ids[0].len()],
        })
        .collect();
    let (s, e) = model.forward(int_tensor(&ids), int_tensor(&mask), int_tensor(&types));
    let s = s.into_data().to_vec::<f32>().unwrap();
    let e = e.into_data().to_vec::<f32>().unwrap();
    let want_s: Vec<f32> = windows
        .iter()
        .flat_map(|w| floats(&w["start_logits"]))
        .collect();
    let want_e: Vec<f32> = windows
        .iter()
        .flat_map(|w| floats(&w["end_logits"]))
        .collect();
    max_abs_diff(&s, &want_s).max(max_abs_diff(&e, &want_e))
}

/// `model`'s logits on fixture `logits`' windows are transformers' within 1e-4.
fn assert_logits(what: &str, model: &QaModel<B>, logits: &str) {
    let d = check_logits(model, &read(logits));
    eprintln!("{what}: max |Δ logits| = {d:e}");
    assert!(d <= 1e-4, "{what}: max |Δ| {d}");
}

#[test]
fn roberta_logits_match_transformers() {
    let (model, report) = load("models/roberta_qa");
    assert_eq!(report.prefix, "roberta.");
    assert!(report.head_loaded);
    assert!(report.unused.is_empty(), "{:?}", report.unused);
    assert_logits("roberta_qa", &model, "models/logits_roberta.json");
}

/// Evaluation-time attention through Burn's fused op (what `infer` and `predict` use on the
/// CPU) gives the same logits, also with left and right padding.
#[test]
fn fused_attention_matches_transformers_too() {
    use pipeline::model::amp::with_fused_attention;
    let (model, _) = load("models/roberta_qa");
    with_fused_attention(true, || {
        assert_logits("roberta_qa, fused", &model, "models/logits_roberta.json")
    });
    let (bert, _) = load("models/bert_qa");
    with_fused_attention(true, || {
        assert_logits("bert_qa, fused", &bert, "models/logits_bert.json")
    });
}

#[test]
fn bert_from_pytorch_bin_matches_transformers() {
    let (model, report) = load("models/bert_qa");
    assert_eq!(report.prefix, "bert.");
    assert!(report.source.ends_with("pytorch_model.bin"));
    assert_logits(
        "bert_qa (pytorch_model.bin)",
        &model,
        "models/logits_bert.json",
    );
}

#[test]
fn sharded_safetensors_load_the_same_model() {
    let (model, report) = load("models/roberta_sharded");
    assert!(report.source.ends_with("model.safetensors.index.json"));
    assert_logits("roberta_sharded", &model, "models/logits_roberta.json");
}

#[test]
fn left_and_right_padding_give_transformers_logits() {
    let (model, _) = load("models/roberta_qa");
    let fx = &read("models/logits_roberta.json")["left_padded"];
    // Naive attention, then Burn's fused op (infer/predict on the CPU).
    for (side, fused) in [
        ("left", false),
        ("right", false),
        ("left", true),
        ("right", true),
    ] {
        let b = &fx[side];
        let ids: Vec<Vec<i64>> = b["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(ints)
            .collect();
        let mask: Vec<Vec<i64>> = b["attention_mask"]
            .as_array()
            .unwrap()
            .iter()
            .map(ints)
            .collect();
        let types = vec![vec![0; ids[0].len()]; ids.len()];
        let (s, e) = pipeline::model::amp::with_fused_attention(fused, || {
            model.forward(int_tensor(&ids), int_tensor(&mask), int_tensor(&types))
        });
        let (s, e) = (
            s.into_data().to_vec::<f32>().unwrap(),
            e.into_data().to_vec::<f32>().unwrap(),
        );
        let (ws, we) = (floats(&b["start_logits"]), floats(&b["end_logits"]));
        let real: Vec<bool> = mask.iter().flatten().map(|m| *m == 1).collect();
        let mut d = 0f32;
        for i in 0..real.len() {
            if real[i] {
                d = d.max((s[i] - ws[i]).abs()).max((e[i] - we[i]).abs());
            }
        }
        eprintln!("roberta {side}-padded (fused {fused}): max |Δ logits| on real tokens = {d:e}");
        assert!(d <= 1e-4, "{side}, fused {fused}: max |Δ| {d}");
    }
}

#[test]
fn bare_base_model_loads_without_prefix_and_initialises_the_head() {
    let (_, report) = load("models/roberta_base");
    assert_eq!(report.prefix, "");
    assert!(!report.head_loaded);
    assert_eq!(
        report.unused,
        vec![
            "pooler.dense.bias".to_string(),
            "pooler.dense.weight".to_string()
        ]
    );
}

#[test]
fn missing_or_misshapen_tensors_are_named() {
    let cfg =
        pipeline::model::config::EncoderConfig::load(&fixture("models/roberta_qa/config.json"))
            .unwrap();
    let full = Weights::from_dir(&fixture("models/roberta_qa")).unwrap();
    let keys: Vec<String> = full.keys().map(String::from).collect();
    assert!(keys.contains(&"roberta.encoder.layer.1.output.dense.bias".to_string()));
    let mut cfg2 = cfg.clone();
    cfg2.intermediate_size = 65;
    let mut w = Weights::from_dir(&fixture("models/roberta_qa")).unwrap();
    let err =
        QaModel::<B>::from_weights(&mut w, &cfg2, &HeadConfig::default(), &Default::default())
            .err()
            .unwrap()
            .to_string();
    assert!(
        err.contains("intermediate.dense.weight has shape [64, 32]"),
        "{err}"
    );
}

/// A head fixture's tensors (`group` under its own name, `linear` as `qa_outputs`) as
/// checkpoint weights.
fn head_weights(fx: &Value, group: &str, source: &str) -> Weights {
    let mut map = std::collections::BTreeMap::new();
    for (g, prefix) in [(group, group), ("linear", "qa_outputs")] {
        for (k, v) in fx[g].as_object().unwrap() {
            let shape: Vec<usize> = uints(&v["shape"]);
            map.insert(
                format!("{prefix}.{k}"),
                TensorData::new(floats(&v["data"]), shape),
            );
        }
    }
    Weights::from_map(map, source)
}

#[test]
fn bilstm_head_matches_torch_lstm_with_packing() {
    let fx = read("train/lstm.json");
    let mut w = head_weights(&fx, "lstm", "lstm.json");
    let dev = Default::default();
    // Loaded through the model's key map, as `from_pretrained` loads a BiLSTM head.
    use pipeline::model::keys::load_into;
    let lstm = pipeline::model::heads::BiLstm::<B>::init(8, 8, 2, 0.0, &dev);
    let lstm = load_into(lstm, &mut w, "", "lstm", |_| true).unwrap();
    let head = pipeline::model::encoder::hf_linear::<B>(16, 2, 0.02, &dev);
    let head = load_into(head, &mut w, "", "qa_outputs", |_| true).unwrap();
    assert!(w.unused().is_empty(), "not loaded: {:?}", w.unused());
    let x: Tensor<B, 3> =
        Tensor::from_data(TensorData::new(floats(&fx["x"]["data"]), [2, 6, 8]), &dev);

    let full = lstm.forward(x.clone(), Tensor::ones([2, 6], &dev));
    let d_full = max_abs_diff(
        &full.into_data().to_vec::<f32>().unwrap(),
        &floats(&fx["output_full"]["data"]),
    );

    let lengths = ints(&fx["lengths"]);
    let mask: Vec<f32> = lengths
        .iter()
        .flat_map(|&n| (0..6).map(move |t| if t < n { 1.0 } else { 0.0 }))
        .collect();
    let mask: Tensor<B, 2> = Tensor::from_data(TensorData::new(mask, [2, 6]), &dev);
    let packed = lstm.forward(x, mask);
    let d_packed = max_abs_diff(
        &packed.clone().into_data().to_vec::<f32>().unwrap(),
        &floats(&fx["output_packed"]["data"]),
    );
    let logits = head.forward(packed);
    let d_logits = max_abs_diff(
        &logits.into_data().to_vec::<f32>().unwrap(),
        &floats(&fx["logits_packed"]["data"]),
    );
    eprintln!("bilstm: max |Δ| full {d_full:e}, packed {d_packed:e}, logits {d_logits:e}");
    assert!(d_full <= 1e-5 && d_packed <= 1e-5 && d_logits <= 1e-5);
}

/// The CNN head, loaded through the model's key map from `torch.nn.Conv1d` / `nn.Linear`
/// weights, gives PyTorch's logits on a padded batch; the padded window's logits at its real
/// tokens equal those of the same window cut to its length (padding does not leak in).
#[test]
fn cnn_head_matches_torch_conv1d() {
    let fx = read("train/cnn.json");
    let mut w = head_weights(&fx, "cnn", "cnn.json");
    let dev = Default::default();
    use pipeline::model::keys::load_into;
    let cnn = pipeline::model::heads::Cnn::<B>::init(9, 3, &[1, 3, 5], &dev);
    let cnn = load_into(cnn, &mut w, "", "cnn", |_| true).unwrap();
    let head = pipeline::model::encoder::hf_linear::<B>(9, 2, 0.02, &dev);
    let head = load_into(head, &mut w, "", "qa_outputs", |_| true).unwrap();
    assert!(w.unused().is_empty(), "not loaded: {:?}", w.unused());
    let x: Tensor<B, 3> =
        Tensor::from_data(TensorData::new(floats(&fx["x"]["data"]), [2, 7, 9]), &dev);
    let mask: Vec<f32> = ints(&fx["lengths"])
        .iter()
        .flat_map(|&n| (0..7).map(move |t| if t < n { 1.0 } else { 0.0 }))
        .collect();
    let mask: Tensor<B, 2> = Tensor::from_data(TensorData::new(mask, [2, 7]), &dev);
    let logits = head.forward(cnn.forward(x.clone(), mask.clone()));
    let d = max_abs_diff(
        &logits.clone().into_data().to_vec::<f32>().unwrap(),
        &floats(&fx["logits"]["data"]),
    );
    eprintln!("cnn: max |Δ logits| {d:e}");
    assert!(d <= 1e-5, "max |Δ| {d}");
    let short = head.forward(cnn.forward(x.slice([1..2, 0..4, 0..9]), mask.slice([1..2, 0..4])));
    let short = short.into_data().to_vec::<f32>().unwrap();
    let padded = logits
        .slice([1..2, 0..4, 0..2])
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    assert!(max_abs_diff(&short, &padded) <= 1e-6);
}

#[test]
fn bilstm_head_on_the_encoder_runs_and_keeps_the_encoder() {
    let dev = Default::default();
    let head = HeadConfig {
        kind: HeadKind::Bilstm,
        num_rnn_layers: 2,
        rnn_dropout: 0.0,
        ..HeadConfig::default()
    };
    let (model, _, report) =
        QaModel::<B>::from_pretrained(&fixture("models/roberta_qa"), &head, &dev).unwrap();
    assert!(!report.head_loaded);
    assert_eq!(
        report.unused,
        vec![
            "qa_outputs.bias".to_string(),
            "qa_outputs.weight".to_string()
        ]
    );
    let ids = vec![vec![0i64, 100, 2, 2, 200, 300, 2, 1]];
    let mask = vec![vec![1i64, 1, 1, 1, 1, 1, 1, 0]];
    let (s, _) = model.forward(
        int_tensor(&ids),
        int_tensor(&mask),
        int_tensor(&[vec![0; 8]]),
    );
    assert_eq!(s.dims(), [1, 8]);
}

/// Exporting gives back the checkpoint's keys and, reloaded, the same logits. With
/// `PIPELINE_EXPORT_DIR` set the exports are also kept there for tools/check_export.py, which
/// loads them with `transformers.AutoModelForQuestionAnswering`.
#[test]
fn export_round_trips_with_hf_keys() {
    use pipeline::model::config::EncoderConfig;
    use pipeline::model::export::save_pretrained;
    let dev = Default::default();
    for (name, logits) in [
        ("roberta_qa", "models/logits_roberta.json"),
        ("bert_qa", "models/logits_bert.json"),
    ] {
        let dir = fixture(&format!("models/{name}"));
        let (model, cfg, _) =
            QaModel::<B>::from_pretrained(&dir, &HeadConfig::default(), &dev).unwrap();
        let keep = std::env::var("PIPELINE_EXPORT_DIR").ok();
        let tmp = tempfile::tempdir().unwrap();
        let out = match &keep {
            Some(d) => std::path::PathBuf::from(d).join(name),
            None => tmp.path().to_path_buf(),
        };
        std::fs::create_dir_all(&out).unwrap();
        let base: Value =
            serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        save_pretrained(&model, &cfg, Some(&base), &dir, &out).unwrap();

        let original: Vec<String> = Weights::from_dir(&dir)
            .unwrap()
            .keys()
            .map(String::from)
            .collect();
        let exported: Vec<String> = Weights::from_dir(&out)
            .unwrap()
            .keys()
            .map(String::from)
            .collect();
        assert_eq!(original, exported, "{name}: exported keys differ");
        let cfg2 = EncoderConfig::load(&out.join("config.json")).unwrap();
        assert_eq!(cfg, cfg2);
        let (again, _, report) =
            QaModel::<B>::from_pretrained(&out, &HeadConfig::default(), &dev).unwrap();
        assert!(report.unused.is_empty() && report.head_loaded);
        assert_logits(&format!("{name}, exported and reloaded"), &again, logits);
    }
}

/// A BiLSTM or CNN head exports under PyTorch's names, says so in `config.json`, and reloads
/// (with the head read back from that config) to the same logits.
#[test]
fn bilstm_and_cnn_exports_reload_identically() {
    for kind in [HeadKind::Bilstm, HeadKind::Cnn] {
        head_export_reloads_identically(kind);
    }
}

fn head_export_reloads_identically(kind: HeadKind) {
    use pipeline::model::export::save_pretrained;
    let dev = Default::default();
    let head = HeadConfig {
        kind,
        num_rnn_layers: 3,
        rnn_dropout: 0.0,
        cnn_kernel_sizes: vec![3, 7],
    };
    let dir = fixture("models/roberta_qa");
    let (model, cfg, _) = QaModel::<B>::from_pretrained(&dir, &head, &dev).unwrap();
    let out = tempfile::tempdir().unwrap();
    save_pretrained(&model, &cfg, None, &dir, out.path()).unwrap();
    let config: Value =
        serde_json::from_slice(&std::fs::read(out.path().join("config.json")).unwrap()).unwrap();
    let head_back = HeadConfig::from_checkpoint(kind, &config);
    assert_eq!(
        (head_back.num_rnn_layers, head_back.cnn_kernel_sizes.clone()),
        match kind {
            HeadKind::Cnn => (2, vec![3, 7]),
            _ => (3, vec![1, 3, 5]),
        },
        "{config}"
    );
    let (again, _, report) = QaModel::<B>::from_pretrained(out.path(), &head_back, &dev).unwrap();
    assert!(report.head_loaded && report.unused.is_empty(), "{report:?}");
    let ids = vec![vec![0i64, 100, 2, 2, 200, 300, 2, 1]];
    let mask = vec![vec![1i64, 1, 1, 1, 1, 1, 1, 0]];
    let types = vec![vec![0i64; 8]];
    let (a, _) = model.forward(int_tensor(&ids), int_tensor(&mask), int_tensor(&types));
    let (b, _) = again.forward(int_tensor(&ids), int_tensor(&mask), int_tensor(&types));
    assert_eq!(
        a.into_data().to_vec::<f32>().unwrap(),
        b.into_data().to_vec::<f32>().unwrap()
    );
}

#[test]
fn from_scratch_model_follows_the_model_section() {
    let s = pipeline::settings::Settings::from_toml(
        "[data]\ntrain='x'\n[model]\nhidden_size=16\nnum_hidden_layers=3\nnum_attention_heads=2\nintermediate_size=32\nhead='bilstm'\nnum_rnn_layers=1\n",
        &[],
    )
    .unwrap();
    let cfg = s.model.scratch_config(300, 1, 40);
    assert_eq!(
        cfg.max_position_embeddings, 42,
        "RoBERTa positions start after pad"
    );
    let dev = Default::default();
    let model = QaModel::<B>::init(&cfg, &s.model.head_config(), &dev).unwrap();
    assert_eq!(model.encoder.encoder.layer.len(), 3);
    assert_eq!(model.lstm.as_ref().unwrap().layers.len(), 1);
    // HF zeroes the padding row of the word embeddings.
    let row = model
        .encoder
        .embeddings
        .word_embeddings
        .weight
        .val()
        .slice([1..2, 0..16])
        .into_data()
        .to_vec::<f32>()
        .unwrap();
    assert!(row.iter().all(|x| *x == 0.0));
    let ids = vec![vec![0i64, 5, 2, 7, 8, 2, 1, 1]];
    let mask = vec![vec![1i64, 1, 1, 1, 1, 1, 0, 0]];
    let (s, e) = model.forward(
        int_tensor(&ids),
        int_tensor(&mask),
        int_tensor(&[vec![0; 8]]),
    );
    assert_eq!((s.dims(), e.dims()), ([1, 8], [1, 8]));
}

/// Logits on real KorQuAD questions (the first that fit 64-token windows): windows rebuilt here
/// from ../shared (their equality with HF's is the tokenisation fixtures' job), logits compared
/// with transformers'.
#[test]
fn korquad_question_logits_match_transformers() {
    use pipeline::qa::examples::{load_raw, Example};
    use pipeline::qa::windows::{build_windows, QaTokenizer};
    use sha2::Digest;
    let Some(path) = korquad() else { return };
    let bytes = std::fs::read(&path).unwrap();
    let digest: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let all: Vec<Example> = load_raw(&path, pipeline::settings::DataFormat::Squad)
        .unwrap()
        .into_iter()
        .map(|r| r.example)
        .collect();
    for kind in ["roberta", "bert"] {
        let fx = read(&format!("models/korquad_logits_{kind}.json"));
        assert_eq!(fx["source_sha256"].as_str().unwrap(), digest);
        let dir = fixture(&format!("models/{kind}_qa"));
        let (model, _) = load(&format!("models/{kind}_qa"));
        let tok = QaTokenizer::load(&dir).unwrap();
        let examples: Vec<Example> = fx["examples"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                all.iter()
                    .find(|x| x.id == e["id"].as_str().unwrap())
                    .unwrap()
                    .clone()
            })
            .collect();
        let windows = build_windows(&tok, &examples, 64, 16, &|_| {}).unwrap();
        let want = fx["windows"].as_array().unwrap();
        assert_eq!(windows.len(), want.len(), "{kind}: windows");
        let lg = pipeline::infer::window_logits(
            &model,
            &windows,
            pipeline::train::batch::Batching::padded(64, true),
            &Default::default(),
            &|_| {},
        );
        let mut d = 0f32;
        for (i, (w, f)) in windows.iter().zip(want).enumerate() {
            assert_eq!(w.example_index as u64, f["example_index"].as_u64().unwrap());
            for (k, name) in [(&lg.start, "start_logits"), (&lg.end, "end_logits")] {
                d = d.max(max_abs_diff(&k[i * 64..(i + 1) * 64], &floats(&f[name])));
            }
        }
        eprintln!(
            "{kind}: KorQuAD logits over {} windows, max |Δ| = {d:e}",
            windows.len()
        );
        assert!(d <= 1e-4, "{kind}: {d}");
    }
}

/// Loading and export agree on the HF key tree: every tensor that loading took from a fixture
/// checkpoint comes back under the same key, and export writes nothing else (besides `qa_outputs` where the checkpoint had no head, which loading initialised).
#[test]
fn export_writes_back_exactly_the_keys_that_loading_took() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models");
    for name in ["roberta_qa", "roberta_base", "roberta_sharded", "bert_qa"] {
        let d = dir.join(name);
        let (model, cfg, report) =
            QaModel::<B>::from_pretrained(&d, &HeadConfig::default(), &Default::default()).unwrap();
        let weights = Weights::from_dir(&d).unwrap();
        let taken: std::collections::BTreeSet<String> = weights
            .keys()
            .filter(|k| !report.unused.iter().any(|u| u == k))
            .map(str::to_string)
            .collect();
        let sd = pipeline::model::export::state_dict(&model, cfg.family().unwrap());
        let mut written: std::collections::BTreeSet<String> = sd.keys().cloned().collect();
        if !report.head_loaded {
            assert!(written.remove("qa_outputs.weight") && written.remove("qa_outputs.bias"));
        }
        // Export writes the family's prefix (`roberta.`); a bare checkpoint (a base model
        // without one) loads from the same keys without it.
        let strip = |k: &str, p: &str| k.strip_prefix(p).unwrap_or(k).to_string();
        let family = cfg.family().unwrap().prefix();
        let taken: std::collections::BTreeSet<String> =
            taken.iter().map(|k| strip(k, &report.prefix)).collect();
        let written: std::collections::BTreeSet<String> =
            written.iter().map(|k| strip(k, family)).collect();
        assert_eq!(written, taken, "{name}: export and load disagree on keys");
        assert!(taken.len() > 10, "{name}: {} keys", taken.len());
    }
}
