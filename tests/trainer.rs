//! The training loop ([`Trainer`]) driven directly, with hooks that keep checkpoints in memory.
//! (A file of its own: its runs must be the only users of the backend's random generator in
//! the process, or the dropout masks of two runs would differ.)

use anyhow::Result;
use burn::backend::{Autodiff, Flex};
use burn::tensor::backend::Backend;
use burn::tensor::ElementConversion;

use pipeline::artifacts::Features;
use pipeline::model::config::EncoderConfig;
use pipeline::model::keys::hf_tensors;
use pipeline::model::{HeadConfig, HeadKind, QaModel};
use pipeline::train::batch::{batch, BatchStrategy};
use pipeline::train::loss::{qa_loss, LossConfig};
use pipeline::train::optim::{OptimConfig, OptimState, QaOptimizer};
use pipeline::train::schedule::ScheduleKind;
use pipeline::train::trainer::{
    EarlyStopping, EvalLine, Hooks, KeepBest, KeepBestBy, StepPlan, Trainer, TrainerConfig,
    TrainerState, Validation,
};

type A = Autodiff<Flex>;
type Checkpoint = (QaModel<A>, OptimState, TrainerState);

/// 24 windows of 16 tokens: varied ids, answers at varied positions, a few without one.
fn features() -> Features {
    let (n, l) = (24, 16);
    let mut f = Features::blank(n, l);
    for r in 0..n {
        for t in 0..l {
            f.input_ids[r * l + t] = 3 + ((r * 7 + t * 5) % 40) as i32;
        }
        // Windows end after 16, 13, 10 or 7 tokens; the rest is padding.
        for t in l - 3 * (r % 4)..l {
            f.input_ids[r * l + t] = 1;
            f.attention_mask[r * l + t] = 0;
        }
        if r % 5 != 0 {
            f.start_positions[r] = 1 + (r % 5) as i32;
            f.end_positions[r] = f.start_positions[r] + (r % 2) as i32;
        }
    }
    f
}

fn model() -> QaModel<A> {
    let cfg: EncoderConfig = serde_json::from_str(
        r#"{"model_type": "roberta", "vocab_size": 48, "hidden_size": 16,
            "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32,
            "max_position_embeddings": 20, "pad_token_id": 1}"#,
    )
    .unwrap();
    let head = HeadConfig {
        kind: HeadKind::Linear,
        num_rnn_layers: 1,
        rnn_dropout: 0.0,
        ..HeadConfig::default()
    };
    A::seed(&Default::default(), 11);
    QaModel::init(&cfg, &head, &Default::default()).unwrap()
}

fn config(batching: BatchStrategy) -> TrainerConfig {
    TrainerConfig {
        fold: 0,
        seed: 7,
        epochs: 2,
        batch_size: 4,
        gradient_accumulation: 1,
        steps: StepPlan {
            batches_per_epoch: 5,
            steps_per_epoch: 5,
            total_steps: 10,
            warmup: 2,
            eval_every: 3,
            checkpoint_every: 4,
        },
        schedule: ScheduleKind::Linear,
        learning_rate: 1e-3,
        max_grad_norm: 1.0,
        loss_scaling: false,
        loss: LossConfig::default(),
        keep_best: KeepBest {
            by: KeepBestBy::Loss,
        },
        early_stopping: EarlyStopping { patience: 0 },
        batching,
        pad_multiple: 4,
    }
}

/// Validates on the last four windows (a real loss), keeps the best and the last checkpoint
/// in memory, and stops after `stop_after` steps when asked to.
struct MemoryHooks<'a> {
    feats: &'a Features,
    stop_after: Option<usize>,
    best: Option<QaModel<Flex>>,
    last: Option<Checkpoint>,
    validations: Vec<(usize, f64)>,
    steps: usize,
}

impl<'a> MemoryHooks<'a> {
    fn new(feats: &'a Features, stop_after: Option<usize>) -> Self {
        Self {
            feats,
            stop_after,
            best: None,
            last: None,
            validations: Vec::new(),
            steps: 0,
        }
    }
}

impl Hooks<A> for MemoryHooks<'_> {
    fn validate(&mut self, model: &QaModel<Flex>) -> Validation {
        let d = Default::default();
        let b = batch::<Flex>(self.feats, &[20, 21, 22, 23], 16, &d);
        let (s, e) = model.forward(b.input_ids, b.attention_mask, b.token_type_ids);
        let loss = qa_loss(
            &LossConfig::default(),
            s,
            e,
            b.start_positions,
            b.end_positions,
        )
        .into_scalar()
        .elem::<f64>();
        self.validations.push((self.steps, loss));
        Validation {
            loss,
            start_acc: 0.0,
            end_acc: 0.0,
            exact_match: 0.0,
            f1: 0.0,
        }
    }
    fn save_best(&mut self, model: &QaModel<Flex>) -> Result<()> {
        self.best = Some(model.clone());
        Ok(())
    }
    fn save_checkpoint(
        &mut self,
        model: &QaModel<A>,
        optim: &QaOptimizer<A>,
        st: &TrainerState,
    ) -> Result<()> {
        self.last = Some((model.clone(), optim.state(), st.clone()));
        Ok(())
    }
    fn checkpoint_dir(&self) -> String {
        "memory".into()
    }
    fn stepped(&mut self, st: &TrainerState, _running: Option<f64>) {
        self.steps = st.step;
    }
    fn evaluated(&mut self, _: &EvalLine, _: bool, _: &[EvalLine]) -> Result<()> {
        Ok(())
    }
    fn info(&mut self, _: &str) {}
    fn stop_requested(&mut self, st: &TrainerState) -> Option<String> {
        let n = self.stop_after?;
        (st.step >= n).then(|| "asked by the test".into())
    }
}

fn weights<B: Backend>(m: &QaModel<B>) -> Vec<Vec<f32>> {
    hf_tensors(m).into_iter().map(|(_, _, v)| v).collect()
}

/// Stopped after step 7 (between the checkpoints at 4 and 8, after the validation at 6) and
/// resumed from the checkpoint the stop wrote, training ends on the uninterrupted run's
/// weights, best weights and validations, bit for bit: data order, dropout, schedule, clipping
/// and optimizer moments all continue where they were.
///
/// Also with bucketed batches of varied lengths: the batch plan is a function of the seed and
/// the epoch.
#[test]
fn a_stopped_run_resumed_from_its_checkpoint_equals_the_uninterrupted_run() {
    for batching in [BatchStrategy::Padded, BatchStrategy::Bucket] {
        stopped_and_resumed(batching);
    }
}

fn stopped_and_resumed(batching: BatchStrategy) {
    let feats = features();
    let rows: Vec<usize> = (0..20).collect();
    let trainer = Trainer {
        config: config(batching),
        feats: &feats,
        train_rows: &rows,
    };
    let d = Default::default();
    let fresh = || QaOptimizer::<A>::new(OptimConfig::default());

    let mut whole = MemoryHooks::new(&feats, None);
    let (m, _, st) = trainer
        .run(model(), fresh(), TrainerState::default(), &d, &mut whole)
        .unwrap();
    assert_eq!(st.step, 10);
    assert_eq!(whole.validations.len(), 4, "steps 3, 6, 9 and the last");

    let mut first = MemoryHooks::new(&feats, Some(7));
    let Err(err) = trainer.run(model(), fresh(), TrainerState::default(), &d, &mut first) else {
        panic!("the run stops");
    };
    assert!(
        err.to_string()
            .contains("interrupted after step 7 (asked by the test)"),
        "{err}"
    );
    let (ck_model, ck_optim, ck_state) = first.last.take().expect("a checkpoint at the stop");
    assert_eq!(ck_state.step, 7);
    let mut optim = fresh();
    optim.load_state(ck_optim, &d).unwrap();
    let mut second = MemoryHooks::new(&feats, None);
    second.best = first.best.take();
    let (m2, _, st2) = trainer
        .run(ck_model, optim, ck_state, &d, &mut second)
        .unwrap();

    assert!(weights(&m) == weights(&m2), "final weights differ");
    assert!(
        weights(whole.best.as_ref().unwrap()) == weights(second.best.as_ref().unwrap()),
        "best weights differ"
    );
    let losses = |h: &[EvalLine]| h.iter().map(|l| (l.step, l.loss)).collect::<Vec<_>>();
    assert_eq!(losses(&st.history), losses(&st2.history));
    assert_eq!(st.best.unwrap().step, st2.best.unwrap().step);
    // A model that trained at all: the validations differ from one another.
    assert!(whole.validations.windows(2).any(|w| w[0].1 != w[1].1));
}
