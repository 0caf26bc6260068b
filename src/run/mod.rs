//! The run directory: atomic writes, stage manifests and up-to-date checks.
//!
//! Every file a stage produces is written to a temporary name in its final folder and renamed
//! into place; the stage's `manifest.json` is written last. A stage whose manifest is absent is
//! not done, so a crash or Ctrl-C at any point leaves no partial result marked done. A manifest
//! records a hash of the settings the stage reads and the size and BLAKE3 hash of each input and
//! output, from which `status` derives done / stale / missing.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

mod layout;
mod lock;

pub use layout::{names, RunLayout};
pub use lock::{lock_run, Lock, LOCK};

/// File name of every stage's manifest.
pub const MANIFEST: &str = "manifest.json";

/// Writes `bytes` to `path` atomically: a temp file in the same folder, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic_with(path, |f| f.write_all(bytes).map_err(Into::into))
}

/// Like [`write_atomic`] but lets `fill` stream into the temp file.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut fs::File) -> Result<()>,
) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temp file in {}", dir.display()))?;
    fill(tmp.as_file_mut()).with_context(|| format!("writing {}", path.display()))?;
    // Temp files are created 0600; results are ordinary files.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(0o644))?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .with_context(|| format!("renaming into {}", path.display()))?;
    Ok(())
}

/// Serialises `value` as pretty JSON and writes it atomically.
pub fn write_json_atomic<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    write_atomic(path, &bytes)
}

/// Size and content hash of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    pub size: u64,
    pub blake3: String,
}

impl FileRecord {
    /// Hashes the file at `path`.
    pub fn of(path: &Path) -> Result<Self> {
        let mut f = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = f
                .read(&mut buf)
                .with_context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                break;
            }
            size += n as u64;
            hasher.update(&buf[..n]);
        }
        Ok(Self {
            size,
            blake3: hasher.finalize().to_hex().to_string(),
        })
    }
}

/// Hash of the settings a stage reads, so a change in them makes the stage stale.
pub fn config_hash<T: Serialize>(value: &T) -> Result<String> {
    let bytes = serde_json::to_vec(value)?;
    Ok(blake3::hash(&bytes).to_hex().to_string())
}

/// [`StageWriter::resume_key`] for a stage not begun: hashes the input files.
pub fn resume_key(config_hash_: &str, inputs: &[(String, PathBuf)]) -> Result<String> {
    config_hash(&(config_hash_, &records(inputs)?))
}

/// Hashes each input file.
pub fn records(inputs: &[(String, PathBuf)]) -> Result<BTreeMap<String, FileRecord>> {
    inputs
        .iter()
        .map(|(key, path)| Ok((key.clone(), FileRecord::of(path)?)))
        .collect()
}

/// What a finished stage recorded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub stage: String,
    pub config_hash: String,
    /// Input files by path as given (data files, upstream outputs).
    pub inputs: BTreeMap<String, FileRecord>,
    /// Output files by name relative to the stage folder.
    pub outputs: BTreeMap<String, FileRecord>,
    pub finished_at: String,
    pub elapsed_s: f64,
    /// Stage-specific counts and facts (shown by `status`, read by reports).
    pub summary: serde_json::Value,
}

impl Manifest {
    /// Reads `dir/manifest.json`; `Ok(None)` when absent, an error when it does not parse
    /// (which [`check`] turns into "stale": the stage is redone).
    pub fn read(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(MANIFEST);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("parsing {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }
}

/// Where a stage stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Done,
    Stale(String),
    Missing,
}

impl Status {
    pub fn label(&self) -> String {
        match self {
            Status::Done => "done".into(),
            Status::Stale(why) => format!("stale ({why})"),
            Status::Missing => "missing".into(),
        }
    }
}

/// Compares a stage's manifest with the current config and files.
pub fn check(
    dir: &Path,
    config_hash: &str,
    inputs: &[(String, PathBuf)],
) -> Result<(Status, Option<Manifest>)> {
    let m = match Manifest::read(dir) {
        Ok(Some(m)) => m,
        Ok(None) => return Ok((Status::Missing, None)),
        // A manifest that does not parse (truncated, edited, disk trouble) counts as absent:
        // the stage is redone, and status says why.
        Err(e) => return Ok((Status::Stale(unreadable(&e)), None)),
    };
    let status = if m.config_hash != config_hash {
        Status::Stale("its settings changed".into())
    } else if let Some(why) = changed_inputs(&m, inputs)? {
        Status::Stale(why)
    } else if let Some(why) = changed_outputs(dir, &m)? {
        Status::Stale(why)
    } else {
        Status::Done
    };
    Ok((status, Some(m)))
}

/// Why a state file that does not parse is treated as absent: its error, and that it is redone.
fn unreadable(e: &anyhow::Error) -> String {
    format!("{} (it will be redone)", one_line(e))
}

/// An error chain on one line: `context: cause: cause`.
pub fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

/// Serde for an `f64` in a state file that must read back whatever its value: a finite number
/// is a JSON number; NaN and the infinities are the strings `"NaN"`, `"inf"` and `"-inf"`
/// (serde_json would write `null`, which does not read back as a number). Reading also takes
/// `null` as NaN, as older versions wrote it.
pub mod float {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
        if v.is_finite() {
            s.serialize_f64(*v)
        } else if v.is_nan() {
            s.serialize_str("NaN")
        } else if *v > 0.0 {
            s.serialize_str("inf")
        } else {
            s.serialize_str("-inf")
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Num(f64),
            Str(String),
            Null(()),
        }
        match Repr::deserialize(d)? {
            Repr::Num(v) => Ok(v),
            Repr::Null(()) => Ok(f64::NAN),
            Repr::Str(s) => match s.as_str() {
                "NaN" => Ok(f64::NAN),
                "inf" => Ok(f64::INFINITY),
                "-inf" => Ok(f64::NEG_INFINITY),
                other => Err(serde::de::Error::custom(format!(
                    "expected a number, \"NaN\", \"inf\" or \"-inf\", got {other:?}"
                ))),
            },
        }
    }
}

fn changed_inputs(m: &Manifest, inputs: &[(String, PathBuf)]) -> Result<Option<String>> {
    if inputs.len() != m.inputs.len() || inputs.iter().any(|(k, _)| !m.inputs.contains_key(k)) {
        return Ok(Some("its list of inputs changed".into()));
    }
    for (key, path) in inputs {
        if !path.exists() {
            return Ok(Some(format!("input {} is missing", path.display())));
        }
        if m.inputs.get(key) != Some(&FileRecord::of(path)?) {
            return Ok(Some(format!("input {} changed", path.display())));
        }
    }
    Ok(None)
}

pub fn changed_outputs(dir: &Path, m: &Manifest) -> Result<Option<String>> {
    for (name, rec) in &m.outputs {
        let path = dir.join(name);
        match fs::metadata(&path) {
            Err(_) => return Ok(Some(format!("output {name} is missing"))),
            Ok(md) if md.len() != rec.size => {
                return Ok(Some(format!("output {name} was modified")))
            }
            Ok(_) => {}
        }
    }
    Ok(None)
}

/// Collects a stage's outputs while it runs and writes its manifest when it finishes.
pub struct StageWriter {
    pub dir: PathBuf,
    stage: String,
    config_hash: String,
    inputs: BTreeMap<String, FileRecord>,
    outputs: BTreeMap<String, FileRecord>,
    started: std::time::Instant,
}

impl StageWriter {
    /// Starts a stage: removes its old manifest first (so it is not done until this run
    /// finishes), clears leftover temp files, and records the inputs' hashes.
    pub fn begin(
        dir: PathBuf,
        stage: &str,
        config_hash: String,
        inputs: &[(String, PathBuf)],
    ) -> Result<Self> {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let manifest = dir.join(MANIFEST);
        if manifest.exists() {
            fs::remove_file(&manifest)
                .with_context(|| format!("removing {}", manifest.display()))?;
        }
        for entry in fs::read_dir(&dir)?.flatten() {
            if entry.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(Self {
            dir,
            stage: stage.to_string(),
            config_hash,
            inputs: records(inputs)?,
            outputs: BTreeMap::new(),
            started: std::time::Instant::now(),
        })
    }

    /// The settings hash together with the inputs' hashes: what a resumable checkpoint of
    /// this stage must have been made with.
    pub fn resume_key(&self) -> Result<String> {
        config_hash(&(&self.config_hash, &self.inputs))
    }

    /// Path of an output file inside the stage folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes an output atomically and records it.
    pub fn write(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        write_atomic(&self.path(name), bytes)?;
        self.record(name)
    }

    /// Writes a JSON output atomically and records it.
    pub fn write_json<T: Serialize>(&mut self, name: &str, value: &T) -> Result<()> {
        write_json_atomic(&self.path(name), value)?;
        self.record(name)
    }

    /// Records an output that was written atomically by other means.
    pub fn record(&mut self, name: &str) -> Result<()> {
        let rec = FileRecord::of(&self.path(name))?;
        self.outputs.insert(name.to_string(), rec);
        Ok(())
    }

    /// Writes the manifest: from now on the stage is done.
    pub fn finish(self, summary: serde_json::Value) -> Result<Manifest> {
        let m = Manifest {
            stage: self.stage,
            config_hash: self.config_hash,
            inputs: self.inputs,
            outputs: self.outputs,
            finished_at: chrono::Utc::now().to_rfc3339(),
            elapsed_s: self.started.elapsed().as_secs_f64(),
            summary,
        };
        write_json_atomic(&self.dir.join(MANIFEST), &m)?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_is_missing_until_finished_then_stale_when_inputs_or_config_change() {
        let tmp = tempfile::tempdir().unwrap();
        let input = tmp.path().join("in.txt");
        fs::write(&input, "a").unwrap();
        let dir = tmp.path().join("stage");
        let inputs = vec![("data".to_string(), input.clone())];

        let mut w = StageWriter::begin(dir.clone(), "s", "h1".into(), &inputs).unwrap();
        w.write("out.txt", b"result").unwrap();
        assert_eq!(check(&dir, "h1", &inputs).unwrap().0, Status::Missing);
        w.finish(serde_json::json!({})).unwrap();
        assert_eq!(check(&dir, "h1", &inputs).unwrap().0, Status::Done);

        assert!(matches!(
            check(&dir, "h2", &inputs).unwrap().0,
            Status::Stale(_)
        ));
        fs::write(&input, "b").unwrap();
        assert!(matches!(
            check(&dir, "h1", &inputs).unwrap().0,
            Status::Stale(why) if why.contains("changed")
        ));
        fs::write(&input, "a").unwrap();
        fs::write(dir.join("out.txt"), "tampered!").unwrap();
        assert!(matches!(
            check(&dir, "h1", &inputs).unwrap().0,
            Status::Stale(why) if why.contains("out.txt")
        ));
        // Restarting a stage un-does it before anything is rewritten.
        let _w = StageWriter::begin(dir.clone(), "s", "h1".into(), &inputs).unwrap();
        assert_eq!(check(&dir, "h1", &inputs).unwrap().0, Status::Missing);
    }

    #[test]
    fn non_finite_floats_in_state_files_read_back() {
        #[derive(Serialize, Deserialize)]
        struct S {
            #[serde(with = "float")]
            v: f64,
        }
        for v in [1.5, -0.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let text = serde_json::to_string(&S { v }).unwrap();
            let back: S = serde_json::from_str(&text).unwrap();
            assert!(
                back.v.to_bits() == v.to_bits() || (v.is_nan() && back.v.is_nan()),
                "{v} -> {text}"
            );
        }
        assert_eq!(
            serde_json::to_string(&S { v: f64::NAN }).unwrap(),
            r#"{"v":"NaN"}"#
        );
        // What older versions wrote for NaN.
        let old: S = serde_json::from_str(r#"{"v":null}"#).unwrap();
        assert!(old.v.is_nan());
        assert!(serde_json::from_str::<S>(r#"{"v":"nope"}"#).is_err());
    }

    #[test]
    fn a_manifest_that_does_not_parse_is_stale_and_names_itself() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("stage");
        let w = StageWriter::begin(dir.clone(), "s", "h".into(), &[]).unwrap();
        w.finish(serde_json::json!({})).unwrap();
        assert_eq!(check(&dir, "h", &[]).unwrap().0, Status::Done);
        fs::write(dir.join(MANIFEST), "{\"stage\": \"s\", \"conf").unwrap();
        let (st, m) = check(&dir, "h", &[]).unwrap();
        assert!(m.is_none());
        assert!(
            matches!(&st, Status::Stale(why) if why.contains("manifest.json") && why.contains("redone")),
            "{st:?}"
        );
    }

    #[test]
    fn a_lock_is_exclusive_names_its_holder_and_ends_with_its_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("run/.lock");
        let held = Lock::acquire(&p, "run r").unwrap();
        assert!(Lock::is_held(&p));
        let err = Lock::acquire(&p, "run r").unwrap_err().to_string();
        assert!(
            err.starts_with(&format!(
                "run r is being written by process {}",
                std::process::id()
            )),
            "{err}"
        );
        drop(held);
        assert!(!Lock::is_held(&p));
        let _again = Lock::acquire(&p, "run r").unwrap();
    }

    #[test]
    fn atomic_write_leaves_no_temp_files() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("x/y.json");
        write_json_atomic(&p, &serde_json::json!({"a": 1})).unwrap();
        let names: Vec<_> = fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("y.json")]);
    }
}
