//! A fold's checkpoints: saving a HF folder atomically, and finding the newest one to resume.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;

use super::Plan;
use crate::model::config::EncoderConfig;
use crate::model::export::save_pretrained;
use crate::model::QaModel;
use crate::run::{names, RunLayout};
use crate::settings::Settings;
use crate::train::optim::OptimState;
use crate::train::trainer::TrainerState;

/// Reads a checkpoint's `trainer_state.json`.
fn read_state(dir: &Path) -> Result<TrainerState> {
    let path = dir.join(names::TRAINER_STATE);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

/// The step the fold of `plan` would resume from: that of its newest checkpoint whose state
/// reads and was made with the plan's settings and inputs (for `status`).
pub fn resumable_step(plan: &Plan) -> Option<usize> {
    let key = crate::run::resume_key(&plan.config_hash, &plan.inputs).ok()?;
    RunLayout::checkpoints(&plan.dir)
        .iter()
        .filter_map(|d| read_state(d).ok())
        .find(|st| st.config_hash == key)
        .map(|st| st.step)
}

/// Writes a HF folder atomically enough: into `dir.tmp`, then swapped into place. With `keep_old`
/// the folder it replaces becomes `dir.old` (see [`RunLayout::checkpoints`]) until the next save, so a
/// crash between the two renames still leaves the previous checkpoint whole.
pub(super) fn save_dir<B: Backend>(
    model: &QaModel<B>,
    cfg: &EncoderConfig,
    base: Option<&serde_json::Value>,
    tok_dir: &Path,
    dir: &Path,
    extra: &[(&str, Vec<u8>)],
    keep_old: bool,
) -> Result<()> {
    let tmp = dir.with_extension("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;
    save_pretrained(model, cfg, base, tok_dir, &tmp)?;
    for (name, bytes) in extra {
        crate::run::write_atomic(&tmp.join(name), bytes)?;
    }
    if dir.exists() {
        if keep_old {
            let old = dir.with_extension("old");
            if old.exists() {
                std::fs::remove_dir_all(&old)
                    .with_context(|| format!("removing {}", old.display()))?;
            }
            std::fs::rename(dir, &old)
                .with_context(|| format!("renaming {} to {}", dir.display(), old.display()))?;
        } else {
            std::fs::remove_dir_all(dir)?;
        }
    }
    std::fs::rename(&tmp, dir).with_context(|| format!("renaming into {}", dir.display()))?;
    Ok(())
}

/// Removes the folders that exist.
pub(super) fn remove_dirs(dirs: &[&Path]) -> Result<()> {
    for d in dirs {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| format!("removing {}", d.display()))?;
        }
    }
    Ok(())
}

/// What a fold starts from (made once per fold: its size does not matter).
#[allow(clippy::large_enum_variant)]
pub(super) enum Resume<B: Backend> {
    /// A readable checkpoint made with the current settings.
    From {
        dir: PathBuf,
        state: TrainerState,
        model: QaModel<B>,
        optim: OptimState,
        /// Why newer checkpoints were passed over.
        skipped: Vec<String>,
    },
    /// No such checkpoint: `changed` when one exists but was made with other settings.
    Fresh { changed: bool, skipped: Vec<String> },
}

/// Finds the newest checkpoint of the fold in `fold_dir` that reads whole (state, weights and
/// optimizer) and was made with `config_hash`. A checkpoint that cannot be read is passed over
/// with the reason, never an error: the fold then resumes from an older one or starts over.
pub(super) fn resume<B: Backend>(
    fold_dir: &Path,
    config_hash: &str,
    s: &Settings,
    device: &B::Device,
) -> Resume<B> {
    let mut skipped = Vec::new();
    let mut changed = false;
    for dir in RunLayout::checkpoints(fold_dir) {
        if !dir.exists() {
            continue;
        }
        let read = || -> Result<Option<(TrainerState, QaModel<B>, OptimState)>> {
            let state = read_state(&dir)?;
            if state.config_hash != config_hash {
                return Ok(None);
            }
            let (model, _, _) =
                QaModel::<B>::from_pretrained(&dir, &s.model.head_config(), device)?;
            let path = dir.join(names::OPTIMIZER_STATE);
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let os: OptimState = serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing {}", path.display()))?;
            Ok(Some((state, model, os)))
        };
        match read() {
            Ok(Some((state, model, optim))) => {
                return Resume::From {
                    dir,
                    state,
                    model,
                    optim,
                    skipped,
                }
            }
            Ok(None) => changed = true,
            Err(e) => skipped.push(format!(
                "checkpoint {} cannot be read ({}), passed over",
                dir.display(),
                crate::run::one_line(&e)
            )),
        }
    }
    Resume::Fresh { changed, skipped }
}
