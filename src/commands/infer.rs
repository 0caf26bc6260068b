//! `pipeline infer`: any HF question-answering checkpoint (or an exported fold) over a data
//! file.

use anyhow::Result;

use crate::infer::InferArgs;
use crate::ui::Ui;

pub fn exec(mut args: InferArgs, ui: Ui) -> Result<()> {
    args.fused_attention = crate::env::attention()? == Some("fused");
    crate::infer::run(&args, ui)
}
