//! Every environment variable the `pipeline` binary reads, declared once ([`VARS`], the
//! README's table "Environment variables") and read only through this module. Variables that
//! name a setting become `--set` overrides ([`settings_overrides`]), so they enter the settings
//! hash like any setting. This program never signals its own children through the environment
//! (see [`crate::launch::worker`]); tests and benchmarks have variables of their own, listed in
//! the README beside this table.

use anyhow::{bail, Result};

/// One variable: its name, the values it takes and what it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Var {
    pub name: &'static str,
    pub values: &'static str,
    pub effect: &'static str,
}

/// Sets `train.eval_attention` (and `infer`'s attention).
pub const ATTENTION: Var = Var {
    name: "PIPELINE_ATTENTION",
    values: "`fused` \\| `naive`",
    effect: "sets `train.eval_attention` (and `infer`'s attention): the attention in evaluation and prediction",
};
/// Sets `train.multi_tensor_adamw` (and `bench --multi-tensor-adamw`).
pub const MULTI_TENSOR: Var = Var {
    name: "PIPELINE_MULTI_TENSOR",
    values: "`1` \\| `0`",
    effect: "sets `train.multi_tensor_adamw` (and `bench --multi-tensor-adamw`): AdamW's multi-tensor step",
};
/// Launches our GPU kernels bounds-checked.
pub const CHECKED_KERNELS: Var = Var {
    name: "PIPELINE_CHECKED_KERNELS",
    values: "`1`",
    effect: "launches our GPU kernels with bounds checks (debugging: the same results, slower)",
};
/// Where CUDA kernels and autotune results are cached.
pub const KERNEL_CACHE: Var = Var {
    name: "PIPELINE_KERNEL_CACHE",
    values: "a folder, or `off`",
    effect: "where compiled CUDA kernels and autotune results are kept (default `$XDG_CACHE_HOME/pipeline/kernels`, else `~/.cache/pipeline/kernels`)",
};
/// CubeCL's per-kernel CUDA profile into a file.
pub const CUDA_PROFILE: Var = Var {
    name: "PIPELINE_CUDA_PROFILE",
    values: "a file",
    effect: "writes CubeCL's per-kernel CUDA profile (kernel names and times) into the file",
};
/// The CUDA toolkit whose headers the run-time kernel compiler needs.
pub const CUDA_PATH: Var = Var {
    name: "CUDA_PATH",
    values: "a folder",
    effect: "the CUDA toolkit (its headers compile kernels at run time); default `/usr/local/cuda`, `/opt/cuda`, or `/usr` with `/usr/bin/nvcc`",
};
/// A test hook: training stops as a crash would after this step.
pub const INTERRUPT_AFTER_STEP: Var = Var {
    name: "PIPELINE_INTERRUPT_AFTER_STEP",
    values: "a step",
    effect: "for resume tests: each training fold stops as a crash would, right after its checkpoint at that step",
};

/// Every variable the binary reads.
pub const VARS: [Var; 7] = [
    ATTENTION,
    MULTI_TENSOR,
    CHECKED_KERNELS,
    KERNEL_CACHE,
    CUDA_PROFILE,
    CUDA_PATH,
    INTERRUPT_AFTER_STEP,
];

/// The value of `v` as text, if set (and valid Unicode).
pub fn get(v: Var) -> Option<String> {
    std::env::var(v.name).ok()
}

/// The value of `v` as an OS string, if set (paths).
pub fn get_os(v: Var) -> Option<std::ffi::OsString> {
    std::env::var_os(v.name)
}

/// `PIPELINE_ATTENTION`: `Some("fused" | "naive")`; any other value is an error.
pub fn attention() -> Result<Option<&'static str>> {
    Ok(match get(ATTENTION).as_deref() {
        None => None,
        Some("fused") => Some("fused"),
        Some("naive") => Some("naive"),
        Some(v) => bail!("{}={v:?}: use fused or naive", ATTENTION.name),
    })
}

/// `PIPELINE_MULTI_TENSOR`: `Some(true | false)` for `1` / `0`; any other value is an error.
pub fn multi_tensor() -> Result<Option<bool>> {
    Ok(match get(MULTI_TENSOR).as_deref() {
        None => None,
        Some("1") => Some(true),
        Some("0") => Some(false),
        Some(v) => bail!("{}={v:?}: use 1 or 0", MULTI_TENSOR.name),
    })
}

/// `PIPELINE_CHECKED_KERNELS=1`; any other value than `1` or `0` is an error.
pub fn checked_kernels() -> Result<bool> {
    Ok(match get(CHECKED_KERNELS).as_deref() {
        None | Some("0") => false,
        Some("1") => true,
        Some(v) => bail!("{}={v:?}: use 1 or 0", CHECKED_KERNELS.name),
    })
}

/// `PIPELINE_INTERRUPT_AFTER_STEP`, a step number; any other value is an error.
pub fn interrupt_after_step() -> Result<Option<usize>> {
    get(INTERRUPT_AFTER_STEP)
        .map(|v| {
            v.parse().map_err(|_| {
                anyhow::anyhow!("{}={v:?}: use a step number", INTERRUPT_AFTER_STEP.name)
            })
        })
        .transpose()
}

/// The `--set` overrides of the variables that name a setting, to be placed before the
/// command line's own (which win).
pub fn settings_overrides() -> Result<Vec<String>> {
    let mut sets = Vec::new();
    if let Some(v) = attention()? {
        sets.push(format!("train.eval_attention={v}"));
    }
    if let Some(on) = multi_tensor()? {
        sets.push(format!("train.multi_tensor_adamw={on}"));
    }
    Ok(sets)
}

/// The README's table of [`VARS`], one row each.
pub fn markdown_table() -> String {
    let mut t = String::from("| variable | values | effect |\n| --- | --- | --- |\n");
    for v in VARS {
        t.push_str(&format!("| `{}` | {} | {} |\n", v.name, v.values, v.effect));
    }
    t
}
