//! Results: one [`Row`] per measured case, printed as a table for people and
//! as one JSON object per line (`--json`) for scripts.
//!
//! The JSON shape is stable: `name`, `figures`, `baseline`, `ratio` (objects
//! of numbers, keys sorted; `baseline` and `ratio` are `null` when the row has
//! none), `target` (text or `null`), `pass` (`true`, `false`, or `null` when
//! the row has no target), `note` (text or `null`) and `series` (an object
//! of number arrays such as a histogram, or `null`).

use std::fmt::Write as _;

use serde_json::{Map, Value, json};

/// One measured case of a scenario, e.g. `handout_latency/blocking`.
///
/// `Serialize`/`Deserialize` carry a row unchanged (pairs in display order)
/// from a pinned child run to its parent; [`Row::to_json`] is the public shape.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Row {
    /// `scenario/case`.
    pub name: String,
    /// What was measured, in display order; units are in the keys (`p50_us`).
    pub figures: Vec<(String, f64)>,
    /// The same-run baseline the figures are compared with.
    pub baseline: Vec<(String, f64)>,
    /// figure ÷ baseline (or the target's own quotient), in display order.
    pub ratio: Vec<(String, f64)>,
    /// The DESIGN §13 target, in words.
    pub target: Option<String>,
    /// Whether the target was met; `None` when there is no target.
    pub pass: Option<bool>,
    /// Anything a reader needs to interpret the row.
    pub note: Option<String>,
    /// Sequences such as a histogram.
    pub series: Vec<(String, Vec<f64>)>,
}

impl Row {
    /// A row with figures only.
    pub fn new(name: impl Into<String>) -> Row {
        Row {
            name: name.into(),
            figures: Vec::new(),
            baseline: Vec::new(),
            ratio: Vec::new(),
            target: None,
            pass: None,
            note: None,
            series: Vec::new(),
        }
    }

    /// Adds a figure.
    #[must_use]
    pub fn figure(mut self, key: &str, value: f64) -> Row {
        self.figures.push((key.to_owned(), value));
        self
    }

    /// Adds a baseline figure.
    #[must_use]
    pub fn baseline(mut self, key: &str, value: f64) -> Row {
        self.baseline.push((key.to_owned(), value));
        self
    }

    /// Adds a ratio.
    #[must_use]
    pub fn ratio(mut self, key: &str, value: f64) -> Row {
        self.ratio.push((key.to_owned(), value));
        self
    }

    /// Sets the target and whether it was met.
    #[must_use]
    pub fn target(mut self, target: impl Into<String>, pass: bool) -> Row {
        self.target = Some(target.into());
        self.pass = Some(pass);
        self
    }

    /// Sets a note.
    #[must_use]
    pub fn note(mut self, note: impl Into<String>) -> Row {
        self.note = Some(note.into());
        self
    }

    /// Adds a sequence.
    #[must_use]
    pub fn series(mut self, key: &str, values: Vec<f64>) -> Row {
        self.series.push((key.to_owned(), values));
        self
    }

    /// The stable JSON object.
    pub fn to_json(&self) -> Value {
        let numbers = |pairs: &[(String, f64)]| -> Value {
            if pairs.is_empty() {
                return Value::Null;
            }
            let map: Map<String, Value> =
                pairs.iter().map(|(k, v)| (k.clone(), number(*v))).collect();
            Value::Object(map)
        };
        json!({
            "name": self.name,
            "figures": numbers(&self.figures).as_object().cloned().unwrap_or_default(),
            "baseline": numbers(&self.baseline),
            "ratio": numbers(&self.ratio),
            "target": self.target,
            "pass": self.pass,
            "note": self.note,
            "series": if self.series.is_empty() {
                Value::Null
            } else {
                Value::Object(
                    self.series
                        .iter()
                        .map(|(k, v)| (k.clone(), Value::Array(v.iter().map(|x| number(*x)).collect())))
                        .collect(),
                )
            },
        })
    }
}

/// Finite numbers as JSON numbers (integers without a fraction); NaN and
/// infinities, which JSON cannot carry, as `null`.
fn number(v: f64) -> Value {
    if !v.is_finite() {
        return Value::Null;
    }
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        // Exact: |v| < 2^53 and no fraction.
        return json!(v as i64);
    }
    json!((v * 1000.0).round() / 1000.0)
}

/// A number for the table: integers as such, small values with two decimals.
pub fn show(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".to_owned();
    }
    if v.fract() == 0.0 && v.abs() < 1e15 {
        return format!("{}", v as i64);
    }
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn pairs(pairs: &[(String, f64)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", show(*v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The human table: one block per row.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let width = rows
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(10)
        .max(10);
    for row in rows {
        let verdict = match row.pass {
            Some(true) => "PASS",
            Some(false) => "FAIL",
            None => "-",
        };
        let _ = writeln!(
            out,
            "{:<width$}  {verdict:<4}  {}",
            row.name,
            pairs(&row.figures)
        );
        let pad = " ".repeat(width + 8);
        if !row.baseline.is_empty() {
            let _ = writeln!(out, "{pad}baseline: {}", pairs(&row.baseline));
        }
        if !row.ratio.is_empty() {
            let _ = writeln!(out, "{pad}ratio:    {}", pairs(&row.ratio));
        }
        if let Some(target) = &row.target {
            let _ = writeln!(out, "{pad}target:   {target}");
        }
        if let Some(note) = &row.note {
            let _ = writeln!(out, "{pad}note:     {note}");
        }
        for (key, values) in &row.series {
            let _ = writeln!(out, "{pad}{key}: {}", sparkline(values, 72));
        }
    }
    out
}

/// A one-line picture of a sequence, at most `width` characters (adjacent
/// values merged by their maximum, so peaks survive).
pub fn sparkline(values: &[f64], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    if values.is_empty() || width == 0 {
        return String::new();
    }
    let chunk = values.len().div_ceil(width);
    let merged: Vec<f64> = values
        .chunks(chunk)
        .map(|c| c.iter().copied().fold(0.0, f64::max))
        .collect();
    let top = merged.iter().copied().fold(0.0, f64::max);
    merged
        .iter()
        .map(|v| {
            if top <= 0.0 {
                BARS[0]
            } else {
                BARS[((v / top) * 7.0).round().clamp(0.0, 7.0) as usize]
            }
        })
        .collect()
}

/// A Markdown table (for `docs/performance.md`).
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| case | figures | baseline | ratio | target | result |\n|---|---|---|---|---|---|\n",
    );
    for row in rows {
        let verdict = match row.pass {
            Some(true) => "pass",
            Some(false) => "**fail**",
            None => "–",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {verdict} |",
            row.name,
            pairs(&row.figures),
            pairs(&row.baseline),
            pairs(&row.ratio),
            row.target.as_deref().unwrap_or(""),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_is_stable() {
        let row = Row::new("x/y")
            .figure("p50_us", 12.5)
            .figure("count", 3.0)
            .baseline("p50_us", 10.0)
            .ratio("p50", 1.25)
            .target("p50 <= 1.5x", true);
        let v = row.to_json();
        assert_eq!(v["name"], "x/y");
        assert_eq!(v["figures"]["count"], 3);
        assert_eq!(v["figures"]["p50_us"], 12.5);
        assert_eq!(v["ratio"]["p50"], 1.25);
        assert_eq!(v["pass"], true);
        assert_eq!(v["note"], Value::Null);
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "baseline", "figures", "name", "note", "pass", "ratio", "series", "target"
            ]
        );
        let bare = Row::new("a").figure("n", f64::NAN).to_json();
        assert_eq!(bare["baseline"], Value::Null);
        assert_eq!(bare["figures"]["n"], Value::Null);
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(show(3.0), "3");
        assert_eq!(show(1.23456), "1.23");
        assert_eq!(show(27.1828), "27.2");
        assert_eq!(show(271.828), "272");
        assert!(table(&[Row::new("a").figure("n", 1.0)]).contains("a"));
        assert_eq!(sparkline(&[0.0, 1.0, 2.0, 4.0], 4), "▁▃▅█");
        assert_eq!(sparkline(&[1.0, 8.0, 1.0, 1.0], 2).chars().count(), 2);
    }
}
