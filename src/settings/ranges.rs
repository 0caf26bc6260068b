//! The range of every number setting that is not a count: one table, checked when the settings
//! are resolved, so a value that cannot work (a NaN, an infinity, a dropout of 1.5, a beta of 1)
//! stops the run before anything starts, in one line naming the key, the value and the range.

use anyhow::{bail, Result};

use super::Settings;

/// Where a bound lies and whether it is included.
#[derive(Debug, Clone, Copy)]
pub enum Bound {
    Incl(f64),
    Excl(f64),
    /// No bound (values must still be finite).
    None,
}

/// One float setting: its key, how to read it, and its range.
pub struct FloatRange {
    pub key: &'static str,
    pub get: fn(&Settings) -> f64,
    pub lo: Bound,
    pub hi: Bound,
}

impl FloatRange {
    /// The range as written in errors and the README: `[0, 1)`, `(0, inf)`.
    pub fn describe(&self) -> String {
        let lo = match self.lo {
            Bound::Incl(v) => format!("[{v}"),
            Bound::Excl(v) => format!("({v}"),
            Bound::None => "(-inf".into(),
        };
        let hi = match self.hi {
            Bound::Incl(v) => format!("{v}]"),
            Bound::Excl(v) => format!("{v})"),
            Bound::None => "inf)".into(),
        };
        format!("{lo}, {hi}")
    }

    /// Whether `v` lies in the range (a NaN or an infinity never does).
    pub fn contains(&self, v: f64) -> bool {
        let lo = match self.lo {
            Bound::Incl(b) => v >= b,
            Bound::Excl(b) => v > b,
            Bound::None => true,
        };
        let hi = match self.hi {
            Bound::Incl(b) => v <= b,
            Bound::Excl(b) => v < b,
            Bound::None => true,
        };
        v.is_finite() && lo && hi
    }
}

use Bound::{Excl, Incl};

/// A table row.
const fn r(key: &'static str, get: fn(&Settings) -> f64, lo: Bound, hi: Bound) -> FloatRange {
    FloatRange { key, get, lo, hi }
}

/// Every float setting with its range. `tests` checks that no float setting is missing.
#[rustfmt::skip]
pub const FLOAT_RANGES: &[FloatRange] = &[
    // A dropout of 1 would scale the kept values by 1 / 0.
    r("model.hidden_dropout_prob", |s| s.model.hidden_dropout_prob, Incl(0.0), Excl(1.0)),
    r("model.attention_probs_dropout_prob", |s| s.model.attention_probs_dropout_prob, Incl(0.0), Excl(1.0)),
    r("model.rnn_dropout", |s| s.model.rnn_dropout, Incl(0.0), Excl(1.0)),
    r("train.learning_rate", |s| s.train.learning_rate, Excl(0.0), Bound::None),
    r("train.weight_decay", |s| s.train.weight_decay, Incl(0.0), Bound::None),
    // torch.optim.AdamW: 0 <= beta < 1, 0 <= eps.
    r("train.adam_beta1", |s| s.train.adam_beta1, Incl(0.0), Excl(1.0)),
    r("train.adam_beta2", |s| s.train.adam_beta2, Incl(0.0), Excl(1.0)),
    r("train.adam_epsilon", |s| s.train.adam_epsilon, Incl(0.0), Bound::None),
    r("train.adamp_delta", |s| s.train.adamp_delta, Incl(0.0), Bound::None),
    r("train.adamp_wd_ratio", |s| s.train.adamp_wd_ratio, Incl(0.0), Bound::None),
    r("train.warmup_ratio", |s| s.train.warmup_ratio, Incl(0.0), Incl(1.0)),
    // 0 turns clipping off.
    r("train.max_grad_norm", |s| s.train.max_grad_norm, Incl(0.0), Bound::None),
    r("train.focal_gamma", |s| s.train.focal_gamma, Incl(0.0), Bound::None),
    // torch.nn.CrossEntropyLoss: 0 <= label_smoothing <= 1.
    r("train.label_smoothing", |s| s.train.label_smoothing, Incl(0.0), Incl(1.0)),
    r("split.holdout_fraction", |s| s.split.holdout_fraction, Incl(0.0), Excl(0.9)),
];

/// Refuses the first float setting outside its range.
pub fn check(s: &Settings) -> Result<()> {
    for r in FLOAT_RANGES {
        let v = (r.get)(s);
        if !r.contains(v) {
            bail!(
                "{} = {v} is out of range: it must be a finite number in {}",
                r.key,
                r.describe()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: &str = "[data]\ntrain = \"t.json\"\n";

    /// Every float-valued leaf of the serialised settings, as `section.key`.
    fn float_keys(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    float_keys(v, &key, out);
                }
            }
            serde_json::Value::Number(n) if n.is_f64() => out.push(prefix.to_string()),
            _ => {}
        }
    }

    #[test]
    fn every_float_setting_has_a_range() {
        let s = Settings::from_toml(MIN, &[]).unwrap();
        let mut keys = Vec::new();
        float_keys(&serde_json::to_value(&s).unwrap(), "", &mut keys);
        assert!(keys.len() >= 15, "{keys:?}");
        for k in &keys {
            assert!(
                FLOAT_RANGES.iter().any(|r| r.key == k),
                "{k} has no range in FLOAT_RANGES"
            );
        }
        for r in FLOAT_RANGES {
            assert!(
                keys.iter().any(|k| k == r.key),
                "{} is not a setting",
                r.key
            );
            // The default is in range.
            assert!(r.contains((r.get)(&s)), "{}", r.key);
        }
    }

    /// For every key: NaN, both infinities and a value just past each bound are refused in one
    /// line naming the key, the value and the range; a value just inside each bound is taken.
    #[test]
    fn every_float_setting_refuses_values_outside_its_range() {
        for r in FLOAT_RANGES {
            let mut bad = vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY];
            let mut good = Vec::new();
            match r.lo {
                Incl(b) => {
                    bad.push(b - 0.5);
                    good.push(b);
                }
                Excl(b) => {
                    bad.push(b);
                    good.push(b + 1e-6);
                }
                Bound::None => {}
            }
            match r.hi {
                Incl(b) => {
                    bad.push(b + 0.5);
                    good.push(b);
                }
                Excl(b) => {
                    bad.push(b);
                    good.push(b - 1e-6);
                }
                Bound::None => good.push(1e6),
            }
            for v in bad {
                let set = format!("{}={}", r.key, toml_float(v));
                let err = match Settings::from_toml(MIN, std::slice::from_ref(&set)) {
                    Ok(_) => panic!("{set} was accepted"),
                    Err(e) => format!("{e:#}"),
                };
                assert!(!err.contains('\n'), "{set}: {err}");
                assert!(
                    err.contains(r.key) && err.contains(&r.describe()),
                    "{set}: {err}"
                );
            }
            for v in good {
                let sets = [format!("{}={}", r.key, toml_float(v))];
                Settings::from_toml(MIN, &sets).unwrap_or_else(|e| panic!("{sets:?}: {e:#}"));
            }
        }
    }

    fn toml_float(v: f64) -> String {
        if v.is_nan() {
            "nan".into()
        } else if v.is_infinite() {
            if v > 0.0 { "inf" } else { "-inf" }.into()
        } else {
            format!("{v:?}")
        }
    }
}
