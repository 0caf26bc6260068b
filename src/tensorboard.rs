//! TensorBoard event files: the scalars of a fold's training, in the format TensorBoard reads
//! (and W&B / MLflow import with `wandb sync --sync-tensorboard`).
//!
//! A file is a sequence of TFRecords (`u64` length, its masked CRC-32C, the bytes, their masked
//! CRC-32C), each holding one `Event` protobuf (tensorflow/core/util/event.proto; only the
//! fields written here are declared: `wall_time`, `step`, `file_version`, `summary` with
//! `simple_value` scalars). The first event names the format (`brain.Event:2`).
//!
//! Resume: [`EventWriter::resume`] keeps what earlier files hold up to the step a fold resumes
//! from, compacted into one new file, and drops the rest, so a resumed fold's logs hold each
//! (tag, step) once, as an uninterrupted run's do.

/// The scalar tags `train` writes per optimizer step (and `evaluate` reads back for its curves).
pub mod tags {
    pub const TRAIN_LOSS: &str = "train/loss";
    pub const LEARNING_RATE: &str = "train/learning_rate";
    pub const GRAD_NORM: &str = "train/grad_norm";
}

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use prost::Message;

/// The `Event` message (the fields this module uses).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    #[prost(int64, tag = "2")]
    pub step: i64,
    #[prost(oneof = "What", tags = "3, 5")]
    pub what: Option<What>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum What {
    #[prost(string, tag = "3")]
    FileVersion(String),
    #[prost(message, tag = "5")]
    Summary(Summary),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<SummaryValue>,
}

/// `Summary.Value` with a `simple_value` (a float scalar).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryValue {
    #[prost(string, tag = "1")]
    pub tag: String,
    #[prost(float, optional, tag = "2")]
    pub simple_value: Option<f32>,
}

/// The first event of every file.
pub const FILE_VERSION: &str = "brain.Event:2";

/// One scalar of an event file.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    pub tag: String,
    pub step: i64,
    pub wall_time: f64,
    pub value: f32,
}

fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Appends one TFRecord holding `data`.
fn write_record(out: &mut impl Write, data: &[u8]) -> std::io::Result<()> {
    let len = (data.len() as u64).to_le_bytes();
    out.write_all(&len)?;
    out.write_all(&masked_crc(&len).to_le_bytes())?;
    out.write_all(data)?;
    out.write_all(&masked_crc(data).to_le_bytes())
}

/// The records of one file's bytes. A record cut short at the end (a crash while writing) ends
/// the list; a checksum that does not match is an error.
fn read_records(bytes: &[u8], path: &Path) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    let mut at = 0usize;
    let u32_at =
        |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    while at + 12 <= bytes.len() {
        let len_bytes = &bytes[at..at + 8];
        if masked_crc(len_bytes) != u32_at(at + 8) {
            bail!(
                "{}: record at byte {at}: length checksum mismatch",
                path.display()
            );
        }
        let len = u64::from_le_bytes(len_bytes.try_into()?) as usize;
        let start = at + 12;
        let Some(end) = start.checked_add(len).filter(|e| e + 4 <= bytes.len()) else {
            break;
        };
        let data = &bytes[start..end];
        if masked_crc(data) != u32_at(end) {
            bail!(
                "{}: record at byte {at}: data checksum mismatch",
                path.display()
            );
        }
        out.push(data.to_vec());
        at = end + 4;
    }
    Ok(out)
}

/// The event files of `dir`, in the order TensorBoard reads them (by name).
pub fn event_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    if !dir.exists() {
        return Ok(files);
    }
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        let is_events = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("events.out.tfevents.") && !n.ends_with(".tmp"));
        if is_events && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

/// Every scalar of the event files in `dir`, file by file in name order.
pub fn read_scalars(dir: &Path) -> Result<Vec<Scalar>> {
    let mut out = Vec::new();
    for path in event_files(dir)? {
        out.extend(read_scalars_of(&path)?);
    }
    Ok(out)
}

/// The scalars of one event file.
fn read_scalars_of(path: &Path) -> Result<Vec<Scalar>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, rec) in read_records(&bytes, path)?.into_iter().enumerate() {
        let ev = Event::decode(rec.as_slice())
            .with_context(|| format!("{}: record {i} is not an Event", path.display()))?;
        if let Some(What::Summary(s)) = ev.what {
            out.extend(s.value.into_iter().filter_map(|v| {
                v.simple_value.map(|value| Scalar {
                    tag: v.tag,
                    step: ev.step,
                    wall_time: ev.wall_time,
                    value,
                })
            }));
        }
    }
    Ok(out)
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Writes one event file of scalars.
pub struct EventWriter {
    out: BufWriter<File>,
    path: PathBuf,
}

impl EventWriter {
    /// A new event file in `dir` that continues a run resumed after `step` (0: from the
    /// start): the scalars earlier files hold up to `step` are copied into it, and the earlier
    /// files are removed. Later scalars of a (tag, step) replace earlier ones.
    pub fn resume(dir: &Path, step: i64) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let old = event_files(dir)?;
        let mut kept: BTreeMap<i64, BTreeMap<String, (f64, f32)>> = BTreeMap::new();
        // An unreadable old file is dropped with its scalars (they are only logs).
        for path in &old {
            if let Ok(scalars) = read_scalars_of(path) {
                for s in scalars.into_iter().filter(|s| s.step <= step) {
                    kept.entry(s.step)
                        .or_default()
                        .insert(s.tag, (s.wall_time, s.value));
                }
            }
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        let wall = now();
        // Names sort in time order: TensorBoard reads files by name.
        let name = format!(
            "events.out.tfevents.{:010}.{host}.{}.{:09}",
            wall as u64,
            std::process::id(),
            (wall.fract() * 1e9) as u64
        );
        let path = dir.join(&name);
        let tmp = dir.join(format!("{name}.tmp"));
        let mut w = Self {
            out: BufWriter::new(
                File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
            ),
            path: path.clone(),
        };
        w.event(Event {
            wall_time: wall,
            step: 0,
            what: Some(What::FileVersion(FILE_VERSION.into())),
        })?;
        for (step, values) in kept {
            let wall_time = values.values().map(|v| v.0).fold(0.0, f64::max);
            let value = values
                .into_iter()
                .map(|(tag, (_, v))| SummaryValue {
                    tag,
                    simple_value: Some(v),
                })
                .collect();
            w.event(Event {
                wall_time,
                step,
                what: Some(What::Summary(Summary { value })),
            })?;
        }
        w.sync()?;
        // The compacted file replaces the old ones: renamed in first, so a crash in between
        // leaves duplicates (which the next resume merges), never a loss.
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
        for p in old {
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
        Ok(w)
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn event(&mut self, ev: Event) -> Result<()> {
        write_record(&mut self.out, &ev.encode_to_vec())
            .with_context(|| format!("writing {}", self.path.display()))
    }

    /// Appends scalars of one step (as one event).
    pub fn scalars(&mut self, step: usize, values: &[(&str, f64)]) -> Result<()> {
        let value = values
            .iter()
            .map(|(tag, v)| SummaryValue {
                tag: (*tag).to_string(),
                simple_value: Some(*v as f32),
            })
            .collect();
        self.event(Event {
            wall_time: now(),
            step: step as i64,
            what: Some(What::Summary(Summary { value })),
        })
    }

    /// Writes what is buffered through to the disk.
    pub fn sync(&mut self) -> Result<()> {
        self.out
            .flush()
            .and_then(|_| self.out.get_ref().sync_data())
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The masked CRC-32C of TFRecord: CRC-32C("123456789") is 0xE3069283 (RFC 3720's check
    /// value); its mask, 0xC78AB0E5, is what TensorBoard's `masked_crc32c` returns.
    #[test]
    fn masked_crc_matches_tfrecord() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(masked_crc(b"123456789"), 0xC78A_B0E5);
    }

    #[test]
    fn resume_keeps_steps_up_to_the_resume_point_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::resume(dir.path(), 0).unwrap();
        for s in 1..=5 {
            w.scalars(s, &[("train/loss", s as f64), ("train/lr", 0.5)])
                .unwrap();
        }
        w.sync().unwrap();
        drop(w);
        // Resumed after step 3: steps 4 and 5 go, and are logged again.
        let mut w = EventWriter::resume(dir.path(), 3).unwrap();
        for s in 4..=6 {
            w.scalars(s, &[("train/loss", 10.0 * s as f64)]).unwrap();
        }
        w.sync().unwrap();
        assert_eq!(event_files(dir.path()).unwrap().len(), 1);
        let loss: Vec<(i64, f32)> = read_scalars(dir.path())
            .unwrap()
            .into_iter()
            .filter(|s| s.tag == "train/loss")
            .map(|s| (s.step, s.value))
            .collect();
        assert_eq!(
            loss,
            vec![
                (1, 1.0),
                (2, 2.0),
                (3, 3.0),
                (4, 40.0),
                (5, 50.0),
                (6, 60.0)
            ]
        );
        let lr = read_scalars(dir.path())
            .unwrap()
            .into_iter()
            .filter(|s| s.tag == "train/lr")
            .count();
        assert_eq!(lr, 3);
        // From the start: nothing is kept.
        let w = EventWriter::resume(dir.path(), 0).unwrap();
        drop(w);
        assert!(read_scalars(dir.path()).unwrap().is_empty());
    }

    #[test]
    fn a_record_cut_short_ends_the_file_and_a_bad_checksum_is_an_error() {
        let mut bytes = Vec::new();
        write_record(&mut bytes, b"one").unwrap();
        write_record(&mut bytes, b"two").unwrap();
        let p = Path::new("x");
        assert_eq!(read_records(&bytes, p).unwrap().len(), 2);
        assert_eq!(read_records(&bytes[..bytes.len() - 2], p).unwrap().len(), 1);
        let mut bad = bytes.clone();
        bad[13] ^= 1;
        let err = read_records(&bad, p).unwrap_err().to_string();
        assert!(err.contains("checksum"), "{err}");
    }
}
