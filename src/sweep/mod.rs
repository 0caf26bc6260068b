//! `pipeline sweep`: many runs that differ in a few settings, compared side by side.
//!
//! The variants come from `[sweep]` (a grid of `"section.key" = [values]`, whose every
//! combination is a variant, and an explicit `variants` list) and from `--grid
//! section.key=v1,v2`. Each variant is a full run in `<output_dir>/<sweep>/<variant>/`: the
//! base settings plus its overrides, with its own manifests and resume.
//!
//! Upstream stages are shared: before any variant trains, `prepare` and then `split` run
//! once per distinct content key (the stage's settings hash and the content of its inputs,
//! with paths inside the run folder taken relative to it) and are linked into every other
//! variant with that key (hard links, the manifest's input paths rebased), where the stage
//! runner then finds them done. The rest runs as one `pipeline run all` process per variant,
//! `--parallel N` at a time; a killed sweep, rerun, skips what is done in every variant.
//! `comparison.csv` / `comparison.md` hold one row per variant, sorted by the metric
//! `train.keep_best_by` names.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::launch::pool::run_processes;
use crate::launch::worker::Worker;
use crate::run::{self, FileRecord, Manifest, Status};
use crate::settings::{Settings, SweepSettings};
use crate::stages::{self, Ctx, Stage};
use crate::ui::Ui;

mod report;

pub use report::{comparison, top_k_ensembles, Table, TopK, COMPARISON_CSV, COMPARISON_MD};

/// One run of the sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct Variant {
    /// Its folder's name, from its values (`head=cnn+learning_rate=0.001`).
    pub name: String,
    /// `section.key=value` overrides, as `--set` takes them.
    pub sets: Vec<String>,
    /// The overridden keys and values, for the comparison table.
    pub values: Vec<(String, String)>,
}

/// A value as `--set` takes it: a string as it is, anything else in TOML syntax.
fn as_set_value(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `section.key=v1,v2,...` (commas inside `[...]` do not split).
pub fn parse_grid(item: &str) -> Result<(String, Vec<toml::Value>)> {
    let (key, raw) = item
        .split_once('=')
        .with_context(|| format!("--grid {item:?}: expected section.key=v1,v2,..."))?;
    let (mut values, mut depth, mut cur) = (Vec::new(), 0i32, String::new());
    for c in raw.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                values.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    values.push(cur);
    let values: Vec<toml::Value> = values
        .iter()
        .map(|v| {
            let v = v.trim();
            format!("v = {v}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(v.to_string()))
        })
        .collect();
    if key.trim().is_empty() || values.iter().any(|v| v.as_str() == Some("")) {
        bail!("--grid {item:?}: expected section.key=v1,v2,...");
    }
    Ok((key.trim().to_string(), values))
}

/// Puts the command line's `--grid` axes into `grid`: each key replaces the file's axis of that
/// name, and repeated `--grid`s of one key add their values to one axis.
pub fn merge_grid(
    grid: &mut std::collections::BTreeMap<String, Vec<toml::Value>>,
    items: &[String],
) -> Result<()> {
    let mut given: std::collections::BTreeMap<String, Vec<toml::Value>> = Default::default();
    for item in items {
        let (key, values) = parse_grid(item)?;
        given.entry(key).or_default().extend(values);
    }
    grid.extend(given);
    Ok(())
}

/// Refuses an axis that lists one value twice (`linear,linear`, `1e-3,0.001`): the same
/// variant would train twice.
fn check_distinct(key: &str, values: &[toml::Value]) -> Result<()> {
    for (i, v) in values.iter().enumerate() {
        if values[..i].contains(v) {
            bail!(
                "sweep grid {key:?} lists {} twice: each value once",
                as_set_value(v)
            );
        }
    }
    Ok(())
}

/// The variants of `sweep`: the grid's combinations in key order, then the explicit variants.
pub fn variants(sweep: &SweepSettings) -> Result<Vec<Variant>> {
    let axes = &sweep.grid;
    let mut combos: Vec<Vec<(String, toml::Value)>> = Vec::new();
    if !axes.is_empty() {
        combos.push(Vec::new());
        for (key, values) in axes {
            if values.is_empty() {
                bail!("sweep grid {key:?} has no values");
            }
            check_distinct(key, values)?;
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    values.iter().map(move |v| {
                        let mut c = c.clone();
                        c.push((key.clone(), v.clone()));
                        c
                    })
                })
                .collect();
        }
    }
    combos.extend(
        sweep
            .variants
            .iter()
            .map(|v| v.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
    );
    if combos.is_empty() {
        bail!("the sweep has no variants: give [sweep.grid], [[sweep.variants]] or --grid section.key=v1,v2");
    }
    let mut out: Vec<Variant> = Vec::new();
    for combo in combos {
        let values: Vec<(String, String)> = combo
            .iter()
            .map(|(k, v)| (k.clone(), as_set_value(v)))
            .collect();
        let short = |k: &str| -> String {
            let last = k.rsplit('.').next().unwrap_or(k);
            let clash = combo
                .iter()
                .filter(|(o, _)| o.rsplit('.').next() == Some(last))
                .count()
                > 1;
            if clash {
                k.to_string()
            } else {
                last.to_string()
            }
        };
        let mut name: String = values
            .iter()
            .map(|(k, v)| format!("{}={v}", short(k)))
            .collect::<Vec<_>>()
            .join("+")
            .chars()
            .map(|c| {
                if c.is_alphanumeric() || "._=+-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if name.is_empty() {
            name = "base".into();
        }
        if out.iter().any(|v| v.name == name) {
            name = format!("{name}-{}", out.len());
        }
        out.push(Variant {
            name,
            sets: values.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            values,
        });
    }
    Ok(out)
}

/// What a sweep is run with: the base config file, its `--set` overrides (the environment's
/// first), and the sweep with the command line's `--grid` and `--parallel` merged in.
pub struct SweepArgs {
    pub config: PathBuf,
    pub sets: Vec<String>,
    pub sweep: SweepSettings,
}

impl SweepArgs {
    fn name(&self) -> String {
        self.sweep.name.clone().unwrap_or_else(|| "sweep".into())
    }

    /// The sweep's folder.
    pub fn dir(&self, base: &Settings) -> PathBuf {
        base.run.output_dir.join(self.name())
    }

    /// A variant's overrides after the base ones: its values, then its run folder.
    fn variant_sets(&self, base: &Settings, v: &Variant) -> Vec<String> {
        let mut sets = self.sets.clone();
        sets.extend(v.sets.iter().cloned());
        sets.push(format!("run.output_dir={}", self.dir(base).display()));
        sets.push(format!("run.name={}", v.name));
        sets
    }

    fn settings(&self, base: &Settings, v: &Variant) -> Result<Settings> {
        Settings::load(&self.config, &self.variant_sets(base, v))
            .with_context(|| format!("sweep variant {}", v.name))
    }
}

/// A stage's content key: its settings hash and its inputs' contents, named relative to the
/// run folder where they lie in it.
fn content_key(run_dir: &Path, stage: Stage, plan: &stages::Plan) -> Result<String> {
    let inputs: Vec<(String, FileRecord)> = plan
        .inputs
        .iter()
        .map(|(_, p)| {
            let name = p.strip_prefix(run_dir).unwrap_or(p).display().to_string();
            Ok((name, FileRecord::of(p)?))
        })
        .collect::<Result<_>>()?;
    run::config_hash(&(stage.name(), &plan.config_hash, inputs))
}

/// Links stage `stage`'s folder of run `from` into run `to` (hard links, a copy where the
/// file system refuses), the manifest last with its input paths rebased onto `to`.
fn share(from: &Path, to: &Path, stage: Stage) -> Result<()> {
    let (src, dst) = (from.join(stage.name()), to.join(stage.name()));
    if dst.exists() {
        std::fs::remove_dir_all(&dst).with_context(|| format!("removing {}", dst.display()))?;
    }
    fn link_tree(src: &Path, dst: &Path) -> Result<()> {
        std::fs::create_dir_all(dst).with_context(|| format!("creating {}", dst.display()))?;
        for e in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
            let p = e?.path();
            let name = p.file_name().unwrap_or_default();
            let target = dst.join(name);
            if p.is_dir() {
                link_tree(&p, &target)?;
            } else if name != run::MANIFEST
                && name != run::LOCK
                && std::fs::hard_link(&p, &target).is_err()
            {
                std::fs::copy(&p, &target).with_context(|| format!("copying {}", p.display()))?;
            }
        }
        Ok(())
    }
    link_tree(&src, &dst)?;
    let mut m = Manifest::read(&src)?.with_context(|| format!("{}: no manifest", src.display()))?;
    let (old, new) = (from.display().to_string(), to.display().to_string());
    m.inputs = m
        .inputs
        .into_iter()
        .map(|(k, r)| match k.strip_prefix(&old) {
            Some(rest) => (format!("{new}{rest}"), r),
            None => (k, r),
        })
        .collect();
    run::write_json_atomic(&dst.join(run::MANIFEST), &m)
}

/// Runs prepare and split once per content key, shared into every variant; returns the stage
/// runs done and saved.
fn share_upstream(args: &SweepArgs, base: &Settings, vs: &[Variant], ui: Ui) -> Result<Shared> {
    let mut donors: HashMap<String, PathBuf> = HashMap::new();
    let (mut ran, mut saved) = (0, 0);
    let mut shared = Shared::default();
    for v in vs {
        let ctx = Ctx::new(args.settings(base, v)?, false, None, ui)?;
        let _lock = run::lock_run(&ctx.run_dir, None)?;
        for stage in [Stage::Prepare, Stage::Split] {
            let plan = stages::plans(&ctx, stage)?.remove(0);
            let done = stages::status(&ctx, stage)?.0 == Status::Done;
            let key = content_key(&ctx.run_dir, stage, &plan)?;
            if !done {
                match donors.get(&key) {
                    Some(from) => {
                        share(from, &ctx.run_dir, stage)?;
                        if stages::status(&ctx, stage)?.0 != Status::Done {
                            bail!(
                                "sweep: the shared `{}` of {} is not done in {}",
                                stage.name(),
                                from.display(),
                                ctx.run_dir.display()
                            );
                        }
                        saved += 1;
                        ui.info(&format!(
                            "sweep {}: `{}` shared from {}",
                            v.name,
                            stage.name(),
                            from.display()
                        ));
                    }
                    None => {
                        stages::run_stage(&ctx, stage)?;
                        ran += 1;
                    }
                }
            } else {
                shared.done += 1;
            }
            donors.entry(key).or_insert_with(|| ctx.run_dir.clone());
        }
    }
    shared.ran = ran;
    shared.saved = saved;
    Ok(shared)
}

/// What sharing the upstream stages did: stage runs done, saved by sharing, and found done.
#[derive(Default)]
struct Shared {
    ran: usize,
    saved: usize,
    done: usize,
}

impl Shared {
    fn describe(&self, variants: usize) -> String {
        let mut s = format!(
            "sweep: prepare and split for {variants} variants: {} run, {} shared",
            self.ran, self.saved
        );
        if self.done > 0 {
            s.push_str(&format!(
                ", {} already done (from an earlier sweep run)",
                self.done
            ));
        }
        s
    }
}

/// The sweep's own record of its variants, in its folder: `sweep status` reads it when the
/// variants are not given again (a `--grid` sweep).
const SWEEP_RECORD: &str = "sweep.json";

impl SweepArgs {
    /// The sweep's variants: the given ones, else the ones its folder records.
    fn sweep_or_recorded(&self, base: &Settings) -> Result<SweepSettings> {
        if !self.sweep.grid.is_empty() || !self.sweep.variants.is_empty() {
            return Ok(self.sweep.clone());
        }
        let path = self.dir(base).join(SWEEP_RECORD);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("reading the sweep's variants from {}", path.display())),
            Err(_) => Ok(self.sweep.clone()),
        }
    }
}

/// Variants at once: `--parallel` / `[sweep] parallel` (at least 1), else 1.
fn parallel_of(sweep: &SweepSettings) -> Result<usize> {
    match sweep.parallel {
        Some(0) => bail!("sweep: --parallel (or [sweep] parallel) must be at least 1, got 0"),
        Some(n) => Ok(n),
        None => Ok(1),
    }
}

/// `pipeline sweep`: shares the upstream stages, runs every variant to the end (`--parallel`
/// at a time), then writes and prints the comparison.
pub fn run(args: &SweepArgs, ui: Ui) -> Result<()> {
    let base = Settings::load(&args.config, &args.sets)?;
    let vs = variants(&args.sweep)?;
    let width = parallel_of(&args.sweep)?;
    let dir = args.dir(&base);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let _lock = run::Lock::acquire(&dir.join(run::LOCK), &format!("sweep {}", dir.display()))?;
    run::write_json_atomic(&dir.join(SWEEP_RECORD), &args.sweep)?;
    ui.info(&format!(
        "sweep \"{}\": {} variants -> {}",
        args.name(),
        vs.len(),
        dir.display()
    ));
    let shared = share_upstream(args, &base, &vs, ui)?;
    ui.info(&shared.describe(vs.len()));
    let failed: Vec<&str> = run_processes(vs.iter().collect(), width, |v, _| {
        let mut config_args = vec!["--config".to_string(), args.config.display().to_string()];
        for s in args.variant_sets(&base, v) {
            config_args.extend(["--set".to_string(), s]);
        }
        let worker = Worker {
            target: "all".into(),
            config_args,
            quiet: ui.quiet,
            plain_progress: width > 1,
            ..Worker::default()
        };
        ui.info(&format!("sweep: running {}", v.name));
        worker.command()
    })?
    .into_iter()
    .map(|v| v.name.as_str())
    .collect();
    if base.launcher.kind == crate::settings::LauncherKind::Slurm {
        // Each variant's `run all` submitted its jobs and returned: the comparison waits for
        // them.
        let mut pending = Vec::new();
        for v in &vs {
            let ctx = Ctx::new(args.settings(&base, v)?, false, None, ui)?;
            if stages::status(&ctx, Stage::Submit)?.0 != Status::Done {
                pending.push(v.name.as_str());
            }
        }
        if !pending.is_empty() {
            ui.info(&format!(
                "sweep: {} variant(s) submitted to Slurm or still running ({}); `pipeline sweep status` shows them, and `pipeline sweep` again once they finish writes the comparison",
                pending.len(),
                pending.join(", ")
            ));
            if !failed.is_empty() {
                bail!("sweep: submitting variant(s) {failed:?} failed (their errors are above)");
            }
            return Ok(());
        }
    }
    let mut table = comparison(args, &base, &vs)?;
    // Only here, not in `sweep status`: the ensembles decode every run's logits.
    let top = top_k_ensembles(&base, &table.ranked_runs);
    table.markdown.push_str(&top.markdown());
    run::write_atomic(&dir.join(COMPARISON_CSV), table.csv.as_bytes())?;
    run::write_atomic(&dir.join(COMPARISON_MD), table.markdown.as_bytes())?;
    let chart = crate::report::sweep_chart(
        &format!("sweep \"{}\": F1 per variant", args.name()),
        &table.scores,
    );
    let mut more = vec![crate::report::Section {
        title: TopK::TITLE.to_string(),
        header: top.header,
        rows: top.rows,
    }];
    if let Some(n) = top.note {
        more.push(crate::report::Section {
            title: "No cross-run ensemble".to_string(),
            header: vec!["why".to_string()],
            rows: vec![vec![n]],
        });
    }
    let html = crate::report::sweep_page(
        &format!("sweep \"{}\"", args.name()),
        &table.header,
        &table.rows,
        table.best.is_some().then_some(0),
        &chart,
        &more,
    )?;
    run::write_atomic(&dir.join(run::names::REPORT_HTML), html.as_bytes())?;
    if !ui.quiet {
        print!("{}", table.markdown);
    }
    if !failed.is_empty() {
        bail!("sweep: variant(s) {failed:?} failed (their errors are above); `pipeline sweep` again resumes them");
    }
    Ok(())
}

/// `pipeline sweep status`: each variant's state (its first stage not done) and best so far.
pub fn status(args: &SweepArgs, ui: Ui) -> Result<String> {
    let base = Settings::load(&args.config, &args.sets)?;
    let vs = variants(&args.sweep_or_recorded(&base)?)?;
    let mut out = format!(
        "sweep \"{}\": {} variants in {}\n",
        args.name(),
        vs.len(),
        args.dir(&base).display()
    );
    let table = comparison(args, &base, &vs)?;
    for v in &vs {
        let ctx = Ctx::new(args.settings(&base, v)?, false, None, ui)?;
        let mut state = "done".to_string();
        for stage in Stage::ALL {
            let (st, _) = stages::status(&ctx, stage)?;
            if st != Status::Done {
                state = format!("{}: {}", stage.name(), st.label());
                break;
            }
        }
        out.push_str(&format!("  {:<40} {state}\n", v.name));
    }
    if let Some(best) = &table.best {
        out.push_str(&format!("best so far: {best}\n"));
    }
    Ok(out)
}
