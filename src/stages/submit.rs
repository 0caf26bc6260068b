//! `submit`: the competition files from the ensemble's predictions.
//!
//! Reads `ensemble/predictions.json` and `nbest_predictions.json`; writes
//! `submit/predictions.json` (`{"id": "answer"}`, UTF-8, not ASCII-escaped),
//! `nbest_predictions.json`, and `submission.csv` (`id,answer`) when `submit.csv` is set.

use anyhow::Result;
use serde_json::json;

use super::{hash_of, input, Ctx, Plan, Stage};
use crate::run::{names, Manifest, StageWriter};

/// Quotes a CSV field when it needs it (RFC 4180).
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Up to date while `[submit]` and the ensembled predictions are.
pub fn plan(ctx: &Ctx) -> Result<Plan> {
    let at = ctx.layout();
    let inputs = vec![
        input(at.ensembled(names::PREDICTIONS)),
        input(at.ensembled(names::NBEST_PREDICTIONS)),
    ];
    Ok(Plan::once(
        ctx,
        Stage::Submit,
        hash_of(&ctx.settings.submit)?,
        inputs,
    ))
}

/// Runs the stage.
pub fn run(ctx: &Ctx, plan: Plan) -> Result<Manifest> {
    let mut w = StageWriter::begin(plan.dir, names::SUBMIT, plan.config_hash, &plan.inputs)?;
    let ens = ctx.stage_dir(Stage::Ensemble);
    let preds = crate::artifacts::read_predictions(&ens.join(names::PREDICTIONS))?;
    w.write_json(names::PREDICTIONS, &preds)?;
    w.write(
        names::NBEST_PREDICTIONS,
        &std::fs::read(ens.join(names::NBEST_PREDICTIONS))?,
    )?;
    if ctx.settings.submit.csv {
        let mut csv = String::from("id,answer\n");
        for (id, a) in &preds {
            csv.push_str(&format!("{},{}\n", csv_field(id), csv_field(a)));
        }
        w.write(names::SUBMISSION, csv.as_bytes())?;
    }
    ctx.ui.info(&format!(
        "submit: {} predictions -> {}",
        preds.len(),
        w.path(names::PREDICTIONS).display()
    ));
    w.finish(json!({"predictions": preds.len(), "csv": ctx.settings.submit.csv}))
}

#[cfg(test)]
mod tests {
    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(super::csv_field("서울"), "서울");
        assert_eq!(super::csv_field("a,b"), "\"a,b\"");
        assert_eq!(super::csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}
