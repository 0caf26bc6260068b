//! `pipeline score DATA PREDICTIONS`: EM/F1 as the official scripts compute them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::qa::metrics::{self, Metric, Score};
use crate::settings::DataFormat;
use crate::ui::Ui;

#[derive(Debug, clap::Args)]
pub struct Args {
    pub data: PathBuf,
    pub predictions: PathBuf,
    #[arg(long, default_value = "korquad")]
    pub metric: Metric,
}

pub fn exec(a: Args, ui: Ui) -> Result<()> {
    let (score, missing) = score_files(&a.data, &a.predictions, a.metric)?;
    if let Some(first) = missing.first() {
        ui.info(&format!(
            "{} questions have no prediction and score 0 (e.g. {first})",
            missing.len()
        ));
    }
    println!("{}", serde_json::to_string(&score)?);
    Ok(())
}

/// Scores predictions against every question of a data file (any supported format): the
/// score and the ids without a prediction.
pub fn score_files(
    data: &Path,
    predictions: &Path,
    metric: Metric,
) -> Result<(Score, Vec<String>)> {
    let golds = crate::qa::examples::load_golds(data, DataFormat::Auto)?;
    let preds: HashMap<String, String> = crate::artifacts::read_predictions(predictions)?
        .into_iter()
        .collect();
    Ok(metrics::score(
        metric,
        golds
            .iter()
            .map(|(id, answers)| (id.as_str(), answers.as_slice())),
        &preds,
    ))
}
