//! Traffic: composed generators and streamed trace files.
//!
//! A [`TrafficSource`] answers "how many requests per second at time `t`" for increasing `t`.
//! Components are summed, then multiplied by the noise factors, and never go below zero.
//!
//! ## Trace files
//!
//! CSV (`timestamp,rps`, an optional header line, `#` comments) or JSON lines
//! (`{"timestamp": ..., "rps": ...}`), chosen by the extension (`.jsonl`/`.ndjson` = JSON lines).
//! A timestamp is a number of seconds (Unix time or an offset) or RFC 3339 UTC
//! (`2024-03-05T14:00:00Z`); time starts at the first timestamp. Any resolution works.
//! The rules, applied while streaming (the file is read as the simulation advances, so memory
//! does not grow with its length):
//!
//! * between two samples the rate is interpolated linearly;
//! * a gap longer than `max_gap` follows the scenario's `gaps` rule: `refuse` (the default: an
//!   error naming the line after the gap), `interpolate`, `hold` (the earlier value) or `zero`;
//! * a duplicate or out-of-order timestamp is refused, naming the line;
//! * a negative, non-finite or unparsable value is refused, naming the line and field;
//! * after the last sample the trace contributes nothing.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use crate::scenario::{GapRule, Traffic};

/// A malformed trace.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The file could not be read.
    #[error("{path}: cannot read trace: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A line is wrong.
    #[error("{path}:{line}: {field}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// `timestamp` or `rps` (or `line`).
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

// === trace reading ===

/// Reads trace samples one at a time.
pub struct TraceReader {
    path: PathBuf,
    lines: std::io::Lines<Box<dyn BufRead>>,
    line_no: usize,
    json: bool,
    origin: Option<f64>,
    last: Option<f64>,
}

impl TraceReader {
    /// Opens a trace file.
    pub fn open(path: &Path) -> Result<Self, TraceError> {
        let file = File::open(path).map_err(|source| TraceError::Io {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self::new(path, Box::new(BufReader::new(file))))
    }

    /// Reads a trace from any reader; `path` names it in errors and picks the format.
    pub fn new(path: &Path, reader: Box<dyn BufRead>) -> Self {
        let json = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("jsonl" | "ndjson" | "json")
        );
        TraceReader {
            path: path.to_owned(),
            lines: reader.lines(),
            line_no: 0,
            json,
            origin: None,
            last: None,
        }
    }

    fn invalid(&self, field: &'static str, message: impl Into<String>) -> TraceError {
        TraceError::Invalid {
            path: self.path.clone(),
            line: self.line_no,
            field,
            message: message.into(),
        }
    }

    /// The next sample as (seconds since the first sample, rps), with the line it came from.
    pub fn next_sample(&mut self) -> Result<Option<(f64, f64, usize)>, TraceError> {
        loop {
            let Some(line) = self.lines.next() else {
                return Ok(None);
            };
            self.line_no += 1;
            let line = line.map_err(|source| TraceError::Io {
                path: self.path.clone(),
                source,
            })?;
            let text = line.trim();
            if text.is_empty() || text.starts_with('#') {
                continue;
            }
            let (ts, rps) = if self.json {
                self.parse_json(text)?
            } else {
                let mut fields = text.split(',').map(str::trim);
                let (Some(a), Some(b), None) = (fields.next(), fields.next(), fields.next()) else {
                    return Err(self.invalid("line", "expected two fields: timestamp,rps"));
                };
                if self.origin.is_none() && self.last.is_none() && parse_time(a).is_none() {
                    // A header line.
                    if a.eq_ignore_ascii_case("timestamp") || a.eq_ignore_ascii_case("time") {
                        continue;
                    }
                }
                let ts = parse_time(a).ok_or_else(|| {
                    self.invalid(
                        "timestamp",
                        format!("not a number of seconds or RFC 3339 time: {a:?}"),
                    )
                })?;
                let rps: f64 = b
                    .parse()
                    .map_err(|_| self.invalid("rps", format!("not a number: {b:?}")))?;
                (ts, rps)
            };
            if !rps.is_finite() || rps < 0.0 {
                return Err(self.invalid("rps", format!("must be a finite number >= 0, got {rps}")));
            }
            let origin = *self.origin.get_or_insert(ts);
            let t = ts - origin;
            if let Some(last) = self.last {
                if t == last {
                    return Err(self.invalid(
                        "timestamp",
                        "duplicate timestamp (refused: which value is right is unknown)",
                    ));
                }
                if t < last {
                    return Err(
                        self.invalid("timestamp", "out of order (timestamps must increase)")
                    );
                }
            }
            self.last = Some(t);
            return Ok(Some((t, rps, self.line_no)));
        }
    }

    fn parse_json(&self, text: &str) -> Result<(f64, f64), TraceError> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| self.invalid("line", format!("not JSON: {e}")))?;
        let ts = match value.get("timestamp") {
            Some(serde_json::Value::Number(n)) => n.as_f64(),
            Some(serde_json::Value::String(s)) => parse_time(s),
            _ => None,
        }
        .ok_or_else(|| self.invalid("timestamp", "missing or not a number/RFC 3339 string"))?;
        let rps = value
            .get("rps")
            .and_then(serde_json::Value::as_f64)
            .ok_or_else(|| self.invalid("rps", "missing or not a number"))?;
        Ok((ts, rps))
    }
}

/// Seconds from a number or an RFC 3339 UTC time (`YYYY-MM-DDTHH:MM:SS[.fff](Z|+00:00)`).
pub fn parse_time(s: &str) -> Option<f64> {
    if let Ok(n) = s.parse::<f64>() {
        return n.is_finite().then_some(n);
    }
    let s = s.strip_suffix('Z').or_else(|| s.strip_suffix("+00:00"))?;
    let (date, time) = s.split_once(['T', ' '])?;
    let mut d = date.split('-');
    let (y, m, day): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let mut t = time.split(':');
    let (hh, mm): (i64, i64) = (t.next()?.parse().ok()?, t.next()?.parse().ok()?);
    let ss: f64 = t.next()?.parse().ok()?;
    if !(1..=12).contains(&m)
        || !(1..=31).contains(&day)
        || hh > 23
        || mm > 59
        || !(0.0..61.0).contains(&ss)
    {
        return None;
    }
    // Days from civil (proleptic Gregorian).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60) as f64 + ss)
}

/// A trace as a function of time, read ahead by one sample.
pub struct TraceCurve {
    reader: TraceReader,
    scale: f64,
    speedup: f64,
    gaps: GapRule,
    max_gap: f64,
    prev: Option<(f64, f64)>,
    next: Option<(f64, f64, usize)>,
    /// Time of the last sample (known once read).
    pub ended: bool,
}

impl TraceCurve {
    /// Wraps a reader with the scenario's options.
    pub fn new(
        mut reader: TraceReader,
        scale: f64,
        speedup: f64,
        gaps: GapRule,
        max_gap: f64,
    ) -> Result<Self, TraceError> {
        let first = reader.next_sample()?;
        Ok(TraceCurve {
            reader,
            scale,
            speedup,
            gaps,
            max_gap,
            prev: None,
            next: first,
            ended: false,
        })
    }

    /// The trace's rate at simulated time `t` (non-decreasing across calls).
    pub fn at(&mut self, t: f64) -> Result<f64, TraceError> {
        let t = t * self.speedup;
        while let Some((nt, nv, line)) = self.next {
            if nt > t {
                break;
            }
            if let Some((pt, _)) = self.prev {
                if nt - pt > self.max_gap && self.gaps == GapRule::Refuse {
                    return Err(TraceError::Invalid {
                        path: self.reader.path.clone(),
                        line,
                        field: "timestamp",
                        message: format!(
                            "gap of {:.0}s before this sample is longer than max_gap ({:.0}s); set gaps: interpolate, hold or zero to accept it",
                            nt - pt,
                            self.max_gap
                        ),
                    });
                }
            }
            self.prev = Some((nt, nv));
            self.next = self.reader.next_sample()?;
        }
        let value = match (self.prev, self.next) {
            (None, Some((_, v, _))) => v,
            (Some((pt, pv)), Some((nt, nv, line))) => {
                let gap = nt - pt;
                if gap > self.max_gap {
                    match self.gaps {
                        GapRule::Refuse => {
                            return Err(TraceError::Invalid {
                                path: self.reader.path.clone(),
                                line,
                                field: "timestamp",
                                message: format!(
                                    "gap of {gap:.0}s before this sample is longer than max_gap ({:.0}s); set gaps: interpolate, hold or zero to accept it",
                                    self.max_gap
                                ),
                            })
                        }
                        GapRule::Interpolate => pv + (nv - pv) * (t - pt) / gap,
                        GapRule::Hold => pv,
                        GapRule::Zero => 0.0,
                    }
                } else {
                    pv + (nv - pv) * (t - pt) / gap
                }
            }
            (Some((pt, pv)), None) => {
                self.ended = true;
                if t == pt {
                    pv
                } else {
                    0.0
                }
            }
            (None, None) => {
                self.ended = true;
                0.0
            }
        };
        Ok(value * self.scale)
    }
}

/// The length of a trace in simulated seconds (reads it once, streaming).
pub fn trace_length(path: &Path, speedup: f64) -> Result<f64, TraceError> {
    let mut r = TraceReader::open(path)?;
    let mut last = 0.0;
    while let Some((t, _, _)) = r.next_sample()? {
        last = t;
    }
    Ok(last / speedup)
}

// === composition ===

enum Component {
    Curve(Traffic),
    Trace(Box<TraceCurve>),
}

/// The scenario's traffic as one function of time.
pub struct TrafficSource {
    components: Vec<Component>,
    rng: fastrand::Rng,
}

impl TrafficSource {
    /// Builds the source; trace paths are relative to `base`.
    pub fn new(traffic: &[Traffic], base: &Path, seed: u64) -> Result<Self, TraceError> {
        let mut components = Vec::new();
        for t in traffic {
            components.push(match t {
                Traffic::Trace {
                    file,
                    scale,
                    speedup,
                    gaps,
                    max_gap,
                } => Component::Trace(Box::new(TraceCurve::new(
                    TraceReader::open(&base.join(file))?,
                    *scale,
                    *speedup,
                    *gaps,
                    max_gap.secs(),
                )?)),
                other => Component::Curve(other.clone()),
            });
        }
        Ok(TrafficSource {
            components,
            rng: fastrand::Rng::with_seed(seed ^ 0x0074_7261_6666_6963),
        })
    }

    /// Requests per second at `t` seconds (call with increasing `t`).
    pub fn at(&mut self, t: f64) -> Result<f64, TraceError> {
        let mut sum = 0.0;
        let mut factor = 1.0;
        for c in &mut self.components {
            match c {
                Component::Trace(curve) => sum += curve.at(t)?,
                Component::Curve(curve) => match curve {
                    Traffic::Noise { fraction } => {
                        factor *= 1.0 + *fraction * normal(&mut self.rng);
                    }
                    other => sum += curve_at(other, t),
                },
            }
        }
        Ok((sum * factor).max(0.0))
    }
}

/// A standard normal draw (Box–Muller), deterministic for a seeded generator.
pub fn normal(rng: &mut fastrand::Rng) -> f64 {
    let u1 = rng.f64().max(1e-300);
    let u2 = rng.f64();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// The value of one generator at `t` seconds.
pub fn curve_at(c: &Traffic, t: f64) -> f64 {
    match c {
        Traffic::Constant { rps } => *rps,
        Traffic::Diurnal {
            mean,
            amplitude,
            period,
            peak,
        } => mean + amplitude * (std::f64::consts::TAU * (t - peak.secs()) / period.secs()).cos(),
        Traffic::Ramp {
            from,
            to,
            start,
            end,
        } => {
            let (s, e) = (start.secs(), end.secs());
            if t <= s {
                *from
            } else if t >= e {
                *to
            } else {
                from + (to - from) * (t - s) / (e - s)
            }
        }
        Traffic::Step { at, rps } => {
            if t >= at.secs() {
                *rps
            } else {
                0.0
            }
        }
        Traffic::Spike {
            at,
            rps,
            rise,
            hold,
            decay,
        } => {
            let x = t - at.secs();
            let (r, h) = (rise.secs(), hold.secs());
            if x < 0.0 {
                0.0
            } else if x < r {
                rps * x / r
            } else if x < r + h {
                *rps
            } else {
                rps * (-(x - r - h) / decay.secs().max(1e-9)).exp()
            }
        }
        Traffic::Noise { .. } | Traffic::Trace { .. } => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    use crate::scenario::Dur;

    fn reader(name: &str, text: &'static str) -> TraceReader {
        TraceReader::new(Path::new(name), Box::new(text.as_bytes()))
    }

    fn curve(name: &str, text: &'static str, gaps: GapRule) -> TraceCurve {
        TraceCurve::new(reader(name, text), 1.0, 1.0, gaps, 300.0).unwrap()
    }

    #[test]
    fn csv_with_header_interpolates() {
        let mut c = curve("t.csv", "timestamp,rps\n100,10\n110,20\n", GapRule::Refuse);
        assert_eq!(c.at(0.0).unwrap(), 10.0);
        assert_eq!(c.at(5.0).unwrap(), 15.0);
        assert_eq!(c.at(10.0).unwrap(), 20.0);
        assert_eq!(c.at(11.0).unwrap(), 0.0, "after the end");
    }

    #[test]
    fn json_lines_and_rfc3339() {
        let mut c = curve(
            "t.jsonl",
            "{\"timestamp\":\"2024-03-05T14:00:00Z\",\"rps\":1}\n{\"timestamp\":\"2024-03-05T14:00:10Z\",\"rps\":3}\n",
            GapRule::Refuse,
        );
        assert_eq!(c.at(5.0).unwrap(), 2.0);
        assert_eq!(parse_time("1970-01-02T00:00:00Z"), Some(86_400.0));
    }

    #[test]
    fn duplicates_and_disorder_are_refused_with_the_line() {
        let mut r = reader("t.csv", "0,1\n1,2\n1,3\n");
        r.next_sample().unwrap();
        r.next_sample().unwrap();
        let e = r.next_sample().unwrap_err().to_string();
        assert_eq!(
            e,
            "t.csv:3: timestamp: duplicate timestamp (refused: which value is right is unknown)"
        );
        let mut r = reader("t.csv", "5,1\n4,2\n");
        r.next_sample().unwrap();
        let e = r.next_sample().unwrap_err().to_string();
        assert!(e.starts_with("t.csv:2: timestamp: out of order"), "{e}");
    }

    #[test]
    fn bad_values_are_refused_with_line_and_field() {
        let mut r = reader("t.csv", "0,1\n1,-2\n");
        r.next_sample().unwrap();
        assert!(r
            .next_sample()
            .unwrap_err()
            .to_string()
            .starts_with("t.csv:2: rps:"));
        let mut r = reader("t.csv", "0,abc\n");
        assert!(r
            .next_sample()
            .unwrap_err()
            .to_string()
            .starts_with("t.csv:1: rps: not a number"));
        let mut r = reader("t.jsonl", "{\"timestamp\":1}\n");
        assert!(r
            .next_sample()
            .unwrap_err()
            .to_string()
            .starts_with("t.jsonl:1: rps:"));
        let mut r = reader("t.csv", "1,2,3\n");
        assert!(r
            .next_sample()
            .unwrap_err()
            .to_string()
            .starts_with("t.csv:1: line:"));
    }

    #[test]
    fn gap_rules() {
        let text = "0,10\n1000,20\n";
        let e = curve("t.csv", text, GapRule::Refuse)
            .at(10.0)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("t.csv:2: timestamp: gap of 1000s"), "{e}");
        assert_eq!(
            curve("t.csv", text, GapRule::Interpolate)
                .at(500.0)
                .unwrap(),
            15.0
        );
        assert_eq!(curve("t.csv", text, GapRule::Hold).at(500.0).unwrap(), 10.0);
        assert_eq!(curve("t.csv", text, GapRule::Zero).at(500.0).unwrap(), 0.0);
    }

    #[test]
    fn generators() {
        let d = |s| Dur(Duration::from_secs(s));
        let spike = Traffic::Spike {
            at: d(10),
            rps: 100.0,
            rise: d(10),
            hold: d(10),
            decay: d(10),
        };
        assert_eq!(curve_at(&spike, 5.0), 0.0);
        assert_eq!(curve_at(&spike, 15.0), 50.0);
        assert_eq!(curve_at(&spike, 25.0), 100.0);
        assert!((curve_at(&spike, 40.0) - 100.0 / std::f64::consts::E).abs() < 1e-9);
        let diurnal = Traffic::Diurnal {
            mean: 100.0,
            amplitude: 50.0,
            period: d(86_400),
            peak: d(50_400),
        };
        assert!((curve_at(&diurnal, 50_400.0) - 150.0).abs() < 1e-9);
        assert!((curve_at(&diurnal, 7_200.0) - 50.0).abs() < 1e-9);
        let ramp = Traffic::Ramp {
            from: 0.0,
            to: 10.0,
            start: d(0),
            end: d(10),
        };
        assert_eq!(curve_at(&ramp, 5.0), 5.0);
    }

    proptest::proptest! {
        #[test]
        fn malformed_traces_never_panic(text in "[0-9a-zT:.,{}\"\\- \n#]{0,300}", json in proptest::prelude::any::<bool>()) {
            let name = if json { "t.jsonl" } else { "t.csv" };
            let text: &'static str = Box::leak(text.into_boxed_str());
            if let Ok(mut c) = TraceCurve::new(reader(name, text), 1.0, 1.0, GapRule::Refuse, 300.0) {
                for t in 0..50 {
                    if c.at(f64::from(t)).is_err() {
                        break;
                    }
                }
            }
        }
    }

    #[test]
    fn noise_is_seeded() {
        let t = [
            Traffic::Constant { rps: 100.0 },
            Traffic::Noise { fraction: 0.1 },
        ];
        let mut a = TrafficSource::new(&t, Path::new("."), 7).unwrap();
        let mut b = TrafficSource::new(&t, Path::new("."), 7).unwrap();
        for i in 0..100 {
            assert_eq!(a.at(f64::from(i)).unwrap(), b.at(f64::from(i)).unwrap());
        }
    }
}
