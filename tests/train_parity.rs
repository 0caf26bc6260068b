//! Optimizers, schedules and clipping reproduce torch / adamp / transformers on the fixtures of
//! tools/make_model_fixtures.py (`tests/fixtures/train/{optim,schedules,clip}.json`), and the
//! module-level optimizer and clipping agree with the per-tensor functions on a real module.

mod common;

use burn::backend::{Autodiff, Flex};
use burn::module::{AutodiffModule, Module, Param};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor, TensorData};
use common::{fixture, floats, uints};
use pipeline::train::clip::{clip_grad_norm, clip_grad_norm_on_device, clip_tensors};
use pipeline::train::optim::{
    adamp_projection, param_specs, update, AdamState, OptimConfig, OptimKind, OptimState,
    ParamSpec, Projection, QaOptimizer,
};
use pipeline::train::schedule::{lr_at, ScheduleKind};
use serde_json::Value;

type Cpu = Flex;
type AB = Autodiff<Flex>;

/// Relative tolerance for optimizer params and states.
const TOL: f64 = 1e-5;

fn read(rel: &str) -> Value {
    serde_json::from_slice(&std::fs::read(fixture(rel)).unwrap()).unwrap()
}

fn values<BB: Backend, const D: usize>(t: &Tensor<BB, D>) -> Vec<f32> {
    t.to_data().iter::<f32>().collect()
}

/// Max relative difference (denominator floored at 1e-6 so exact zeros compare absolutely).
fn max_rel(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w as f64).abs() / (w as f64).abs().max(1e-6))
        .fold(0.0, f64::max)
}

fn tensor<const D: usize>(v: &Value, dims: [usize; D]) -> Tensor<Cpu, D> {
    Tensor::from_data(TensorData::new(floats(v), dims), &Default::default())
}

/// One fixture parameter through all steps of one run, returning the worst relative
/// differences (params, exp_avg, exp_avg_sq).
fn run_param<const D: usize>(
    fx: &Value,
    run: &Value,
    cfg: &OptimConfig,
    name: &str,
    dims: [usize; D],
) -> [f64; 3] {
    let decay = !fx["no_decay"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n.as_str() == Some(name));
    let spec = ParamSpec {
        decay,
        channel_axis: 0,
    };
    let mut p = tensor(&fx["init"][name], dims);
    let mut st = AdamState::<Cpu, D>::zeros(dims, &Default::default());
    let mut worst = [0.0f64; 3];
    for (k, rec) in run["steps"].as_array().unwrap().iter().enumerate() {
        let g = tensor(&fx["grads"][k][name], dims);
        if let Some(which) = rec.get("adamp_projection").and_then(|m| m.get(name)) {
            let want: Projection = serde_json::from_value(which.clone()).unwrap();
            let got = adamp_projection(cfg, 0, p.clone(), g.clone());
            assert_eq!(got, want, "{name} step {k}: projection");
        }
        let lr = rec["lr"].as_f64().unwrap();
        (p, st) = update(cfg, lr, spec, p, g, st);
        let s = &rec["state"][name];
        assert_eq!(st.step as f64, s["step"].as_f64().unwrap());
        let d = [
            max_rel(&values(&p), &floats(&rec["params"][name])),
            max_rel(&values(&st.exp_avg), &floats(&s["exp_avg"])),
            max_rel(&values(&st.exp_avg_sq), &floats(&s["exp_avg_sq"])),
        ];
        for (w, x) in worst.iter_mut().zip(d) {
            *w = w.max(x);
        }
        assert!(
            d.iter().all(|&x| x <= TOL),
            "{name} step {k}: rel diffs {d:?}"
        );
    }
    worst
}

#[test]
fn optimizers_match_torch_and_adamp() {
    let fx = read("train/optim.json");
    for (label, run) in fx["runs"].as_object().unwrap() {
        let hp = &run["hparams"];
        let betas = floats(&hp["betas"]);
        assert_eq!(hp["weight_decay_no_decay_group"].as_f64(), Some(0.0));
        let adamp = label.starts_with("adamp");
        let cfg = OptimConfig {
            kind: if adamp {
                OptimKind::Adamp
            } else {
                OptimKind::Adamw
            },
            beta1: hp["betas"][0].as_f64().unwrap(),
            beta2: hp["betas"][1].as_f64().unwrap(),
            eps: hp["eps"].as_f64().unwrap(),
            weight_decay: hp["weight_decay"].as_f64().unwrap(),
            delta: hp["delta"].as_f64().unwrap_or(0.1),
            wd_ratio: hp["wd_ratio"].as_f64().unwrap_or(0.1),
            nesterov: hp["nesterov"].as_bool().unwrap_or(false),
        };
        assert_eq!(betas.len(), 2);
        if hp.get("schedule").is_some() {
            assert_eq!(hp["schedule"], "linear");
            let (w, t) = (
                hp["warmup_steps"].as_u64().unwrap() as usize,
                hp["total_steps"].as_u64().unwrap() as usize,
            );
            for (k, rec) in run["steps"].as_array().unwrap().iter().enumerate() {
                let want = rec["lr"].as_f64().unwrap();
                let got = lr_at(ScheduleKind::Linear, hp["lr"].as_f64().unwrap(), k, w, t);
                assert!(
                    (got - want).abs() <= 1e-12 * want.abs(),
                    "lr {k}: {got} vs {want}"
                );
            }
        }
        let mut worst = [0.0f64; 3];
        for name in fx["param_names"].as_array().unwrap() {
            let name = name.as_str().unwrap();
            let shape: Vec<usize> = uints(&fx["shapes"][name]);
            let d = match shape[..] {
                [a] => run_param(&fx, run, &cfg, name, [a]),
                [a, b] => run_param(&fx, run, &cfg, name, [a, b]),
                _ => panic!("unexpected shape {shape:?}"),
            };
            for (w, x) in worst.iter_mut().zip(d) {
                *w = w.max(x);
            }
        }
        eprintln!(
            "optim {label}: max rel diff params {:.3e}, exp_avg {:.3e}, exp_avg_sq {:.3e}",
            worst[0], worst[1], worst[2]
        );
    }
}

#[test]
fn schedules_match_transformers() {
    let fx = read("train/schedules.json");
    let base = fx["base_lr"].as_f64().unwrap();
    let total = fx["total_steps"].as_u64().unwrap() as usize;
    for (label, s) in fx["schedules"].as_object().unwrap() {
        let kind = if label.starts_with("linear") {
            ScheduleKind::Linear
        } else {
            ScheduleKind::Cosine
        };
        let warmup = s["warmup_steps"].as_u64().unwrap() as usize;
        let mut worst = 0.0f64;
        for (k, want) in s["lrs"].as_array().unwrap().iter().enumerate() {
            let want = want.as_f64().unwrap();
            let got = lr_at(kind, base, k, warmup, total);
            let rel = if want == 0.0 {
                got.abs()
            } else {
                (got - want).abs() / want.abs()
            };
            assert!(rel <= 1e-12, "{label} step {k}: {got} vs {want}");
            worst = worst.max(rel);
        }
        eprintln!("schedule {label}: max rel diff {worst:.3e}");
    }
}

#[test]
fn clipping_matches_clip_grad_norm() {
    let fx = read("train/clip.json");
    let max_norm = fx["max_norm"].as_f64().unwrap();
    for (label, case) in fx["cases"].as_object().unwrap() {
        let grads: Vec<Tensor<Cpu, 1>> = case["grads"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                let v = floats(&g["data"]);
                let n = v.len();
                Tensor::from_data(TensorData::new(v, [n]), &Default::default())
            })
            .collect();
        let (out, total) = clip_tensors(grads, max_norm);
        let want_total = case["total_norm"].as_f64().unwrap();
        let rel_total = (total - want_total).abs() / want_total;
        let mut worst = 0.0f64;
        for (g, want) in out.iter().zip(case["clipped"].as_array().unwrap()) {
            worst = worst.max(max_rel(&values(g), &floats(&want["data"])));
        }
        eprintln!("clip {label}: total {total} (rel diff {rel_total:.3e}), grads max rel diff {worst:.3e}");
        assert!(rel_total <= 1e-6, "{label}: total {total} vs {want_total}");
        assert!(worst <= 1e-6, "{label}: grads differ by {worst}");
        if label == "unchanged" {
            assert_eq!(worst, 0.0, "unchanged grads must be bit-identical");
        }
    }
}

/// A module with the three kinds of parameters HF treats differently.
#[derive(Module, Debug)]
struct Small<B: Backend> {
    dense: Linear<B>,
    layer_norm: LayerNorm<B>,
}

fn small(device: &burn::tensor::Device<AB>) -> Small<AB> {
    let mut dense = LinearConfig::new(3, 4).init(device);
    dense.bias = Some(Param::from_tensor(Tensor::random(
        [4],
        Distribution::Normal(0.0, 0.5),
        device,
    )));
    let mut layer_norm = LayerNormConfig::new(4).init(device);
    layer_norm.gamma =
        Param::from_tensor(Tensor::random([4], Distribution::Normal(1.0, 0.2), device));
    Small { dense, layer_norm }
}

fn backward(m: &Small<AB>, device: &burn::tensor::Device<AB>) -> GradientsParams {
    let x = Tensor::<AB, 2>::random([5, 3], Distribution::Normal(0.0, 1.0), device);
    let y = m.layer_norm.forward(m.dense.forward(x));
    let w = Tensor::<AB, 2>::random([5, 4], Distribution::Normal(0.0, 1.0), device);
    let loss = (y * w).sum();
    GradientsParams::from_grads::<AB, _>(loss.backward(), m)
}

type Inner = <AB as burn::tensor::backend::AutodiffBackend>::InnerBackend;

fn ids(m: &Small<AB>) -> [burn::module::ParamId; 4] {
    [
        m.dense.weight.id,
        m.dense.bias.as_ref().unwrap().id,
        m.layer_norm.gamma.id,
        m.layer_norm.beta.as_ref().unwrap().id,
    ]
}

#[test]
fn module_optimizer_decays_weights_only() {
    let dev = Default::default();
    let m = small(&dev);
    let specs = param_specs::<AB, _>(&m);
    let paths: Vec<(&str, bool, usize)> = specs
        .iter()
        .map(|(p, s)| (p.as_str(), s.decay, s.channel_axis))
        .collect();
    assert_eq!(
        paths,
        vec![
            ("dense.weight", true, 1),
            ("dense.bias", false, 0),
            ("layer_norm.gamma", false, 0),
            ("layer_norm.beta", false, 0),
        ]
    );

    // Zero gradients: Adam's update is 0/(0+eps) = 0, so only decoupled decay moves a parameter.
    let mut grads = GradientsParams::new();
    let before = [
        values(&m.dense.weight.val()),
        values(&m.dense.bias.as_ref().unwrap().val()),
        values(&m.layer_norm.gamma.val()),
        values(&m.layer_norm.beta.as_ref().unwrap().val()),
    ];
    let [w, b, g, be] = ids(&m);
    grads.register::<Inner, 2>(w, Tensor::zeros([3, 4], &dev));
    grads.register::<Inner, 1>(b, Tensor::zeros([4], &dev));
    grads.register::<Inner, 1>(g, Tensor::zeros([4], &dev));
    grads.register::<Inner, 1>(be, Tensor::zeros([4], &dev));
    let (lr, wd) = (0.1, 0.5);
    let mut opt = QaOptimizer::<AB>::new(OptimConfig {
        weight_decay: wd,
        ..OptimConfig::default()
    });
    let m = opt.step(lr, m, grads);
    let factor = (1.0 - lr * wd) as f32;
    let want_w: Vec<f32> = before[0].iter().map(|x| x * factor).collect();
    assert_eq!(values(&m.dense.weight.val()), want_w);
    assert_eq!(values(&m.dense.bias.as_ref().unwrap().val()), before[1]);
    assert_eq!(values(&m.layer_norm.gamma.val()), before[2]);
    assert_eq!(
        values(&m.layer_norm.beta.as_ref().unwrap().val()),
        before[3]
    );
    assert!(m.dense.weight.val().is_require_grad());
}

/// The module-level step equals the per-tensor functions with the specs it derives, for both
/// rules (AdamP on the transposed Linear weight uses channel axis 1).
#[test]
fn module_optimizer_matches_per_tensor_updates() {
    let dev = Default::default();
    for kind in [OptimKind::Adamw, OptimKind::Adamp] {
        let cfg = OptimConfig {
            kind,
            weight_decay: 0.1,
            ..OptimConfig::default()
        };
        let mut opt = QaOptimizer::<AB>::new(cfg.clone());
        let mut m = small(&dev);
        let mut states: (AdamState<Inner, 2>, [AdamState<Inner, 1>; 3]) = (
            AdamState::zeros([3, 4], &dev),
            std::array::from_fn(|_| AdamState::zeros([4], &dev)),
        );
        for step in 0..3 {
            let grads = backward(&m, &dev);
            let [w, b, g, be] = ids(&m);
            let gw = grads.get::<Inner, 2>(w).unwrap();
            let g1: [Tensor<Inner, 1>; 3] = [b, g, be].map(|id| grads.get::<Inner, 1>(id).unwrap());
            let inner = m.valid();
            let lr = 1e-2 * (step + 1) as f64;
            let spec_w = ParamSpec {
                decay: true,
                channel_axis: 1,
            };
            let (pw, sw) = update(&cfg, lr, spec_w, inner.dense.weight.val(), gw, states.0);
            let p1 = [
                inner.dense.bias.as_ref().unwrap().val(),
                inner.layer_norm.gamma.val(),
                inner.layer_norm.beta.as_ref().unwrap().val(),
            ];
            let spec1 = ParamSpec {
                decay: false,
                channel_axis: 0,
            };
            let mut new1 = Vec::new();
            let [s0, s1, s2] = states.1;
            let mut st1 = Vec::new();
            for ((p, g), s) in p1.into_iter().zip(g1).zip([s0, s1, s2]) {
                let (p, s) = update(&cfg, lr, spec1, p, g, s);
                new1.push(values(&p));
                st1.push(s);
            }
            m = opt.step(lr, m, grads);
            assert_eq!(
                values(&m.dense.weight.val()),
                values(&pw),
                "{kind:?} weight"
            );
            assert_eq!(values(&m.dense.bias.as_ref().unwrap().val()), new1[0]);
            assert_eq!(values(&m.layer_norm.gamma.val()), new1[1]);
            assert_eq!(values(&m.layer_norm.beta.as_ref().unwrap().val()), new1[2]);
            let Ok(st1) = <[AdamState<Inner, 1>; 3]>::try_from(st1) else {
                panic!("three states")
            };
            states = (sw, st1);
        }
    }
}

#[test]
fn clip_grad_norm_on_module_matches_pure_function() {
    let dev = Default::default();
    let m = small(&dev);
    let grads = backward(&m, &dev);
    let [w, b, g, be] = ids(&m);
    let mut flat: Vec<Tensor<Inner, 1>> = vec![grads.get::<Inner, 2>(w).unwrap().flatten(0, 1)];
    flat.extend([b, g, be].map(|id| grads.get::<Inner, 1>(id).unwrap()));
    let (_, plain_total) = clip_tensors(flat.clone(), 1e9);
    // A max norm below the total so that clipping happens.
    let max_norm = plain_total / 3.0;
    let (want, want_total) = clip_tensors(flat, max_norm);
    let (grads, total) = clip_grad_norm::<AB, _>(&m, grads, max_norm);
    assert_eq!(total, want_total);
    assert_eq!(
        values(&grads.get::<Inner, 2>(w).unwrap().flatten::<1>(0, 1)),
        values(&want[0])
    );
    for (i, id) in [b, g, be].into_iter().enumerate() {
        assert_eq!(
            values(&grads.get::<Inner, 1>(id).unwrap()),
            values(&want[i + 1])
        );
    }
    let mut sq = 0.0f64;
    for t in &want {
        sq += values(t).iter().map(|&x| (x as f64).powi(2)).sum::<f64>();
    }
    assert!(
        (sq.sqrt() - max_norm).abs() <= 1e-5 * max_norm,
        "clipped norm {}",
        sq.sqrt()
    );
}

#[test]
fn optimizer_state_round_trips() {
    let dev = Default::default();
    for kind in [OptimKind::Adamw, OptimKind::Adamp] {
        let cfg = OptimConfig {
            kind,
            ..OptimConfig::default()
        };
        let mut a = QaOptimizer::<AB>::new(cfg.clone());
        let mut m = small(&dev);
        for _ in 0..2 {
            let grads = backward(&m, &dev);
            m = a.step(1e-2, m, grads);
        }
        let saved = a.state();
        assert_eq!(saved.params.len(), 4);
        assert!(saved.params.iter().all(|p| p.step == 2));
        let json = serde_json::to_string(&saved).unwrap();
        let back: OptimState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, saved);

        // A rebuilt module (new ParamIds, same values) resumes through the path keys.
        let m2 = Small {
            dense: Linear {
                weight: Param::from_tensor(m.dense.weight.val().detach().require_grad()),
                bias: Some(Param::from_tensor(
                    m.dense.bias.as_ref().unwrap().val().detach().require_grad(),
                )),
            },
            layer_norm: m.layer_norm.clone().map(&mut Fresh),
        };
        let mut b = QaOptimizer::<AB>::new(cfg.clone());
        b.load_state(back, &dev).unwrap();
        assert_eq!(
            b.state(),
            saved,
            "{kind:?}: pending state is exported as loaded"
        );

        let grads = backward(&m, &dev);
        let [w, bi, g, be] = ids(&m);
        let [w2, bi2, g2, be2] = ids(&m2);
        let mut grads2 = GradientsParams::new();
        grads2.register::<Inner, 2>(w2, grads.get::<Inner, 2>(w).unwrap());
        for (from, to) in [(bi, bi2), (g, g2), (be, be2)] {
            grads2.register::<Inner, 1>(to, grads.get::<Inner, 1>(from).unwrap());
        }
        let m = a.step(1e-2, m, grads);
        let m2 = b.step(1e-2, m2, grads2);
        assert!(b.unmatched_state().is_empty());
        assert_eq!(
            values(&m.dense.weight.val()),
            values(&m2.dense.weight.val())
        );
        assert_eq!(
            values(&m.layer_norm.gamma.val()),
            values(&m2.layer_norm.gamma.val())
        );
        assert_eq!(a.state(), b.state(), "{kind:?}: states after resuming");

        // Malformed state is rejected.
        let mut bad = saved.clone();
        bad.params[0].exp_avg.pop();
        assert!(QaOptimizer::<AB>::new(cfg).load_state(bad, &dev).is_err());
    }
}

/// Gives every float parameter a new id (as a model rebuilt from a checkpoint would have).
struct Fresh;

impl burn::module::ModuleMapper<AB> for Fresh {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<AB, D>>) -> Param<Tensor<AB, D>> {
        Param::from_tensor(param.val().detach().require_grad())
    }
}

/// All float parameter values of a module, in visiting order.
fn all_values<M: Module<AB>>(m: &M) -> Vec<Vec<f32>> {
    struct V(Vec<Vec<f32>>);
    impl burn::module::ModuleVisitor<AB> for V {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<AB, D>>) {
            self.0.push(values(&p.val()));
        }
    }
    let mut v = V(Vec::new());
    m.visit(&mut v);
    v.0
}

/// The multi-tensor AdamW step (all parameters as one flat tensor) gives bit for bit the
/// per-tensor step's parameters and state on the tiny QA model (embeddings, attention, layer
/// norms, head: decaying and non-decaying tensors), also when switching between the two, when
/// a parameter has no gradient in a step, and when resuming from exported state.
#[test]
fn multi_tensor_adamw_equals_one_tensor_at_a_time() {
    use burn::tensor::Int;
    use pipeline::model::{HeadConfig, QaModel};
    let dev = Default::default();
    // No dropout: both models must see the same function of the same inputs.
    let cfg = pipeline::model::config::EncoderConfig {
        hidden_dropout_prob: 0.0,
        attention_probs_dropout_prob: 0.0,
        ..pipeline::bench::model_config("tiny").unwrap()
    };
    let model = QaModel::<AB>::init(&cfg, &HeadConfig::default(), &dev).unwrap();
    // Both models see the same inputs and loss weights, drawn once per step.
    let inputs = || {
        (
            Tensor::<AB, 2, Int>::random([3, 16], Distribution::Uniform(3.0, 90.0), &dev),
            Tensor::<AB, 2>::random([3, 16], Distribution::Normal(0.0, 1.0), &dev),
        )
    };
    let grads_of = |m: &QaModel<AB>, (ids, w): &(Tensor<AB, 2, Int>, Tensor<AB, 2>)| {
        let mask = Tensor::<AB, 2, Int>::ones([3, 16], &dev);
        let types = Tensor::<AB, 2, Int>::zeros([3, 16], &dev);
        let (s, e) = m.forward(ids.clone(), mask, types);
        let loss = (s * w.clone()).sum() + (e * w.clone().powf_scalar(2.0)).sum();
        GradientsParams::from_grads::<AB, _>(loss.backward(), m)
    };
    let ocfg = OptimConfig {
        weight_decay: 0.1,
        ..OptimConfig::default()
    };
    let mut multi = QaOptimizer::<AB>::new(ocfg.clone());
    let mut single = QaOptimizer::<AB>::new(ocfg.clone()).with_multi_tensor(false);
    let (mut a, mut b) = (model.clone(), model);
    let qa_weight = a.qa_outputs.weight.id;
    for step in 0..6u64 {
        let lr = 1e-2 / (step + 1) as f64;
        let x = inputs();
        let (mut ga, mut gb) = (grads_of(&a, &x), grads_of(&b, &x));
        if step == 3 {
            // a frozen parameter in this step: left as it is, its moments kept
            ga.remove::<Inner, 2>(qa_weight);
            gb.remove::<Inner, 2>(qa_weight);
        }
        // step 2 runs the multi-tensor optimizer one tensor at a time
        multi.set_multi_tensor(step != 2);
        a = multi.step(lr, a, ga);
        b = single.step(lr, b, gb);
        assert_eq!(
            all_values(&a),
            all_values(&b),
            "parameters after step {step}"
        );
        assert_eq!(multi.state(), single.state(), "state after step {step}");
        if step == 1 {
            // resuming: the exported state loaded into a fresh multi-tensor optimizer
            let mut resumed = QaOptimizer::<AB>::new(ocfg.clone());
            resumed.load_state(single.state(), &dev).unwrap();
            let mut again = QaOptimizer::<AB>::new(ocfg.clone()).with_multi_tensor(false);
            again.load_state(single.state(), &dev).unwrap();
            let x = inputs();
            let c = resumed.step(1e-3, a.clone(), grads_of(&a, &x));
            let d = again.step(1e-3, b.clone(), grads_of(&b, &x));
            assert_eq!(all_values(&c), all_values(&d), "after resuming");
            assert_eq!(resumed.state(), again.state(), "state after resuming");
            assert!(resumed.unmatched_state().is_empty());
        }
    }
    // the frozen step left the head's weight one step behind
    assert!(multi.state().params.iter().any(|p| p.step == 5));
}

/// Clipping on the device (no read-back) scales the gradients exactly as the host version,
/// whether the norm is above `max_norm` (clipped) or below (left as they are).
#[test]
fn clip_on_device_equals_clip_on_host() {
    let dev = Default::default();
    let m = small(&dev);
    let grads = backward(&m, &dev);
    let total = pipeline::train::clip::grad_norm::<AB, _>(&m, &grads);
    let [w, b, g, be] = ids(&m);
    let all = |gp: &GradientsParams| {
        let mut v = values(&gp.get::<Inner, 2>(w).unwrap());
        for id in [b, g, be] {
            v.extend(values(&gp.get::<Inner, 1>(id).unwrap()));
        }
        v
    };
    let before = all(&grads);
    for max_norm in [total / 3.0, total * 2.0] {
        let mut copy = GradientsParams::new();
        copy.register::<Inner, 2>(w, grads.get::<Inner, 2>(w).unwrap());
        for id in [b, g, be] {
            copy.register::<Inner, 1>(id, grads.get::<Inner, 1>(id).unwrap());
        }
        let (host, host_total) = clip_grad_norm::<AB, _>(&m, copy, max_norm);
        let mut copy = GradientsParams::new();
        copy.register::<Inner, 2>(w, grads.get::<Inner, 2>(w).unwrap());
        for id in [b, g, be] {
            copy.register::<Inner, 1>(id, grads.get::<Inner, 1>(id).unwrap());
        }
        let (device, device_total) = clip_grad_norm_on_device::<AB, _>(&m, copy, max_norm);
        assert_eq!(values(&device_total), vec![host_total as f32]);
        assert_eq!(all(&device), all(&host), "max_norm {max_norm}");
        let clipped = max_norm < total;
        assert_eq!(all(&host) != before, clipped, "max_norm {max_norm}");
    }
}
