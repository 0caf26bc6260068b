//! `pipeline bench`: training throughput on random inputs for a model shape, as one JSON line.

use anyhow::Result;

use crate::bench::BenchArgs;

pub fn exec(mut args: BenchArgs) -> Result<()> {
    args.multi_tensor_adamw |= crate::env::multi_tensor()? == Some(true);
    let report = crate::bench::run(&args)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
