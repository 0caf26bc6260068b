//! Validating a fold: loss, span accuracy and EM/F1 on its held-out examples.

use burn::tensor::backend::Backend;
use burn::tensor::ElementConversion;

use crate::artifacts::Features;
use crate::model::QaModel;
use crate::qa::decode::{argmax, decode_rows, Logits};
use crate::qa::examples::Example;
use crate::qa::metrics;
use crate::settings::Settings;
use crate::train::batch::{forward_chunks, labels, PAD_LOGIT};
use crate::train::loss::qa_loss;
use crate::train::trainer::Validation;

/// The data a fold trains and validates on.
pub(super) struct FoldData {
    pub feats: Features,
    pub examples: Vec<Example>,
    pub train_rows: Vec<usize>,
    pub val_rows: Vec<usize>,
}

/// Validation: loss, start/end accuracy on windows holding the answer, EM/F1 on decoded text.
#[allow(clippy::too_many_arguments)]
pub(super) fn validate<B: Backend>(
    model: &QaModel<B>,
    data: &FoldData,
    s: &Settings,
    device: &B::Device,
) -> Validation {
    let t = &s.train;
    let loss_cfg = t.loss_config();
    let mut loss_sum = 0.0;
    // One forward pass gives both the loss and the logits to decode.
    let rows = &data.val_rows;
    let mut lg = Logits::filled(rows.len(), data.feats.max_seq_length, PAD_LOGIT);
    forward_chunks(
        model,
        &data.feats,
        rows,
        t.eval_batching(),
        device,
        |chunk, st, en| {
            let chunk_rows: Vec<usize> = chunk.iter().map(|&p| rows[p]).collect();
            let (sp, ep) = labels::<B>(&data.feats, &chunk_rows, device);
            let loss = qa_loss(&loss_cfg, st.clone(), en.clone(), sp, ep);
            loss_sum += loss.into_scalar().elem::<f64>() * chunk.len() as f64;
            lg.put(chunk, st, en);
        },
    );
    let (start_acc, end_acc) = span_accuracy(&data.feats, &data.val_rows, &lg);
    let (em, f1) = score_rows(&data.examples, &data.feats, &data.val_rows, &lg, s);
    Validation {
        loss: loss_sum / data.val_rows.len() as f64,
        start_acc,
        end_acc,
        exact_match: em,
        f1,
    }
}

/// Start and end accuracy over the windows of `rows` that hold the answer (labels other than
/// `(0, 0)`): the share whose argmax logit is the labelled token. `lg` holds `rows`' logits in
/// order. A weak model that puts every argmax on `[CLS]` (the no-answer label) scores 0.
fn span_accuracy(feats: &Features, rows: &[usize], lg: &Logits) -> (f64, f64) {
    let l = lg.seq;
    let (mut hit_s, mut hit_e, mut labelled) = (0usize, 0usize, 0usize);
    for (k, &r) in rows.iter().enumerate() {
        let (sp, ep) = (feats.start_positions[r], feats.end_positions[r]);
        if sp == 0 && ep == 0 {
            continue; // the answer is not in this window
        }
        labelled += 1;
        hit_s += usize::from(argmax(&lg.start[k * l..(k + 1) * l]) == sp as usize);
        hit_e += usize::from(argmax(&lg.end[k * l..(k + 1) * l]) == ep as usize);
    }
    let n = labelled.max(1) as f64;
    (hit_s as f64 / n, hit_e as f64 / n)
}

/// EM/F1 of the examples behind `rows` decoded from `lg`.
pub fn score_rows(
    examples: &[Example],
    feats: &Features,
    rows: &[usize],
    lg: &Logits,
    s: &Settings,
) -> (f64, f64) {
    let row_example: Vec<usize> = rows
        .iter()
        .map(|&r| feats.example_index[r] as usize)
        .collect();
    let offsets: Vec<_> = rows.iter().map(|&r| feats.context_offsets(r)).collect();
    let (preds, _) = decode_rows(examples, &row_example, &offsets, lg, &s.decode);
    let golds: Vec<(String, Vec<String>)> = preds
        .keys()
        .filter_map(|id| examples.iter().find(|e| &e.id == id))
        .map(|e| {
            (
                e.id.clone(),
                e.answers.iter().map(|a| a.text.clone()).collect(),
            )
        })
        .collect();
    let (score, _) = metrics::score(
        s.evaluate.metric,
        golds.iter().map(|(id, g)| (id.as_str(), g.as_slice())),
        &preds.into_iter().collect(),
    );
    (score.exact_match, score.f1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Windows of length 4 labelled (start, end).
    fn feats(labels: &[(i32, i32)]) -> Features {
        Features {
            start_positions: labels.iter().map(|p| p.0).collect(),
            end_positions: labels.iter().map(|p| p.1).collect(),
            ..Features::blank(labels.len(), 4)
        }
    }

    fn one_hot(at: &[usize], l: usize) -> Vec<f32> {
        at.iter()
            .flat_map(|&i| (0..l).map(move |j| if j == i { 1.0 } else { 0.0 }))
            .collect()
    }

    #[test]
    fn span_accuracy_counts_argmax_hits_over_windows_holding_the_answer() {
        // window 0: no answer (skipped); 1: (1, 2); 2: (3, 3); 3: (2, 3)
        let f = feats(&[(0, 0), (1, 2), (3, 3), (2, 3)]);
        let rows = [3, 1, 0, 2];
        let lg = Logits {
            seq: 4,
            // argmax per row in `rows` order: row 3 -> 2 (hit), row 1 -> 0 (miss), row 0 (any),
            // row 2 -> 3 (hit); ends: row 3 -> 3 (hit), row 1 -> 2 (hit), row 2 -> 0 (miss)
            start: one_hot(&[2, 0, 1, 3], 4),
            end: one_hot(&[3, 2, 1, 0], 4),
        };
        let (s, e) = span_accuracy(&f, &rows, &lg);
        assert!((s - 2.0 / 3.0).abs() < 1e-12, "{s}");
        assert!((e - 2.0 / 3.0).abs() < 1e-12, "{e}");
        // every argmax on [CLS]: a model that always says "no answer" scores 0
        let cls = Logits {
            seq: 4,
            start: one_hot(&[0; 4], 4),
            end: one_hot(&[0; 4], 4),
        };
        assert_eq!(span_accuracy(&f, &rows, &cls), (0.0, 0.0));
        // no labelled window: 0, not NaN
        let none = feats(&[(0, 0), (0, 0)]);
        assert_eq!(span_accuracy(&none, &[0, 1], &cls), (0.0, 0.0));
    }
}
