//! QA losses and their gradients equal PyTorch's (tests/fixtures/train/losses.json).

mod common;

use burn::backend::{Autodiff, Flex};
use burn::tensor::{Int, Tensor, TensorData};
use common::*;
use pipeline::train::loss::{qa_loss, LossConfig, LossKind};
use serde_json::Value;

type B = Autodiff<Flex>;

#[test]
fn losses_and_gradients_match_torch() {
    let fx: Value =
        serde_json::from_slice(&std::fs::read(fixture("train/losses.json")).unwrap()).unwrap();
    let dev = Default::default();
    let logits = |k: &str| -> Tensor<B, 2> {
        Tensor::from_data(TensorData::new(floats(&fx[k]), [3, 10]), &dev).require_grad()
    };
    let pos = |k: &str| -> Tensor<B, 1, Int> {
        let v: Vec<i64> = fx[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect();
        Tensor::from_data(TensorData::new(v, [3]), &dev)
    };
    for (name, kind) in [
        ("ce", LossKind::Ce),
        ("focal", LossKind::Focal),
        ("label_smoothing", LossKind::LabelSmoothing),
    ] {
        let cfg = LossConfig {
            kind,
            gamma: 2.0,
            smoothing: 0.1,
        };
        let (s, e) = (logits("start_logits"), logits("end_logits"));
        let loss = qa_loss(
            &cfg,
            s.clone(),
            e.clone(),
            pos("start_positions"),
            pos("end_positions"),
        );
        let grads = loss.backward();
        let got = loss.into_data().to_vec::<f32>().unwrap()[0];
        let want = fx["losses"][name]["total"].as_f64().unwrap() as f32;
        let gs = s.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
        let ge = e.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
        let d_grad = gs
            .iter()
            .zip(floats(&fx["losses"][name]["grad_start"]))
            .chain(ge.iter().zip(floats(&fx["losses"][name]["grad_end"])))
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!(
            "{name}: loss {got} vs {want} (|Δ| {:e}), max |Δ grad| {d_grad:e}",
            (got - want).abs()
        );
        assert!((got - want).abs() <= 1e-5, "{name}: {got} != {want}");
        assert!(d_grad <= 1e-6, "{name}: grad differs by {d_grad}");
    }
}
