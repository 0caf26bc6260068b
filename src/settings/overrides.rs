//! `--set section.key=value`: applied to the raw TOML table before it is parsed.

use anyhow::{bail, Context, Result};

use super::Settings;

/// The `section.key` paths whose value is a string (or a path, or an enum named by a string):
/// `--set` takes their value as written, so `run.name=nan` is the name "nan", not a float.
pub(super) fn string_keys() -> std::collections::BTreeSet<String> {
    // Every optional string setting set, so that it shows up in the serialised table.
    let mut probe = Settings::default();
    probe.data.test = Some("x".into());
    probe.prepare.tokenizer = Some("x".into());
    probe.model.pretrained = Some("x".into());
    let mut keys = std::collections::BTreeSet::new();
    if let Ok(toml::Value::Table(t)) = toml::Value::try_from(&probe) {
        for (section, v) in &t {
            if let toml::Value::Table(inner) = v {
                for (key, v) in inner {
                    if v.is_str() {
                        keys.insert(format!("{section}.{key}"));
                    }
                }
            }
        }
    }
    keys
}

/// Applies one `section.key=value` override to the raw TOML table. `strings` are the keys whose
/// value is a string whatever it looks like ([`string_keys`]).
pub(super) fn apply_override(
    table: &mut toml::Table,
    item: &str,
    strings: &std::collections::BTreeSet<String>,
) -> Result<()> {
    let (path, raw) = item
        .split_once('=')
        .with_context(|| format!("--set {item:?}: expected section.key=value"))?;
    let keys: Vec<&str> = path.trim().split('.').collect();
    if keys.iter().any(|k| k.is_empty()) || keys.len() < 2 {
        bail!("--set {item:?}: expected section.key=value");
    }
    let raw = raw.trim();
    // A value is read as TOML (numbers, booleans, quoted strings, arrays); anything that does
    // not parse is taken as a bare string, so `--set data.train=x.json` needs no quotes. A
    // string setting takes the value as a string even when it parses as something else.
    let parsed = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"));
    let value = match parsed {
        Some(v @ toml::Value::String(_)) => v,
        Some(_) if strings.contains(keys.join(".").as_str()) => {
            toml::Value::String(raw.to_string())
        }
        Some(v) => v,
        None => toml::Value::String(raw.to_string()),
    };
    let mut cur = table;
    for key in &keys[..keys.len() - 1] {
        let entry = cur
            .entry(key.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .with_context(|| format!("--set {item:?}: {key} is not a section"))?;
    }
    cur.insert(keys[keys.len() - 1].to_string(), value);
    Ok(())
}
