//! Traffic: composed generators and streamed trace files.
//!
//! A [`TrafficSource`] answers "how many requests per second at time `t`" for increasing `t`.
//! Components are summed, then multiplied by the noise factors, and never go below zero.
//!
//! ## Trace files
//!
//! CSV (`timestamp,rps`, an optional header line, `#` comments), JSON lines
//! (`{"timestamp": ..., "rps": ...}`) or a Prometheus `query_range` answer (its series summed
//! per timestamp), chosen by the scenario's `format` or the extension (`.jsonl`/`.ndjson` =
//! JSON lines, `.json` = a Prometheus answer when it starts with `{"status"`). With `counter`
//! the values are a counter turned into per-second rates (a decrease is a reset, as in
//! Prometheus' `rate()`); `start` skips into the trace. [`check_trace`] lists every problem of
//! a file for `gofe sim check`.
//! A timestamp is a number of seconds (Unix time or an offset) or RFC 3339 UTC
//! (`2024-03-05T14:00:00Z`); time starts at the first timestamp. Any resolution works.
//! The rules, applied while streaming (CSV and JSON lines are read as the simulation
//! advances, so memory does not grow with their length; a Prometheus answer is read whole):
//!
//! * between two samples the rate is interpolated linearly;
//! * a gap longer than `max_gap` follows the scenario's `gaps` rule: `refuse` (the default: an
//!   error naming the line after the gap), `interpolate`, `hold` (the earlier value) or `zero`;
//! * a duplicate or out-of-order timestamp is refused, naming the line;
//! * a negative, non-finite or unparsable value is refused, naming the line and field;
//! * after the last sample the trace contributes nothing.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::scenario::{GapRule, TraceFormat, Traffic};

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
    /// A Prometheus answer is not valid JSON of the expected shape.
    #[error("{path}:{line}:{column}: {field}: {message}")]
    Json {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The JSON path (`data.result[0].values[3]`).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A point of a Prometheus answer is wrong, or a gap between the summed samples.
    #[error("{path}: {field}: {message}")]
    Point {
        /// The file.
        path: PathBuf,
        /// Where: `data.result[S].values[P]`, or `sample at T` for the summed series.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The scenario's options do not fit the trace.
    #[error("{path}: {field}: {message}")]
    Options {
        /// The file.
        path: PathBuf,
        /// The option (`start`).
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Where a sample came from, for errors.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Origin {
    /// A line of a CSV or JSON-lines file (1-based).
    Line(usize),
    /// A timestamp of the summed series of a Prometheus answer (as in the file, Unix seconds).
    Time(f64),
}

/// How a trace file is read: the scenario's `trace` options.
#[derive(Clone, Debug)]
pub struct TraceOptions {
    /// The format.
    pub format: TraceFormat,
    /// Counter values: rates are taken between successive samples (resets handled).
    pub counter: bool,
    /// Trace seconds (from the first timestamp) at simulated time 0.
    pub start: f64,
    /// Multiplies every value.
    pub scale: f64,
    /// Trace seconds per simulated second.
    pub speedup: f64,
    /// What a long gap means.
    pub gaps: GapRule,
    /// The longest gap interpolated without `gaps`, seconds.
    pub max_gap: f64,
}

impl Default for TraceOptions {
    fn default() -> Self {
        TraceOptions {
            format: TraceFormat::Auto,
            counter: false,
            start: 0.0,
            scale: 1.0,
            speedup: 1.0,
            gaps: GapRule::Refuse,
            max_gap: 300.0,
        }
    }
}

impl TraceOptions {
    /// The file (relative to the scenario) and options of a `trace` component; `None` for a
    /// generator.
    pub fn of(t: &Traffic) -> Option<(&Path, TraceOptions)> {
        match t {
            Traffic::Trace {
                file,
                scale,
                speedup,
                gaps,
                max_gap,
                format,
                counter,
                start,
            } => Some((
                file.as_path(),
                TraceOptions {
                    format: *format,
                    counter: *counter,
                    start: start.map_or(0.0, |d| d.secs()),
                    scale: *scale,
                    speedup: *speedup,
                    gaps: *gaps,
                    max_gap: max_gap.secs(),
                },
            )),
            _ => None,
        }
    }
}

// === trace reading ===

enum Source {
    Lines {
        lines: std::io::Lines<Box<dyn BufRead>>,
        json: bool,
    },
    /// The summed series of a Prometheus answer, as (Unix seconds, value), oldest first.
    Points(std::vec::IntoIter<(f64, f64)>),
}

/// Reads trace samples one at a time.
pub struct TraceReader {
    path: PathBuf,
    source: Source,
    line_no: usize,
    /// Problems found while loading a Prometheus answer, handed out first.
    pending: std::vec::IntoIter<TraceError>,
    origin: Option<f64>,
    last: Option<f64>,
    /// Counter mode (line sources): the previous raw sample.
    counter: Option<Option<(f64, f64)>>,
}

impl TraceReader {
    /// Opens a trace file (CSV or JSON lines by its extension; `.json` that starts with
    /// `{"status"` is a Prometheus answer).
    pub fn open(path: &Path) -> Result<Self, TraceError> {
        Self::open_with(path, TraceFormat::Auto, false)
    }

    /// Opens a trace file in `format`; with `counter` its values are a counter.
    pub fn open_with(path: &Path, format: TraceFormat, counter: bool) -> Result<Self, TraceError> {
        let io = |source| TraceError::Io {
            path: path.to_owned(),
            source,
        };
        let format = match format {
            TraceFormat::Auto => match path.extension().and_then(|e| e.to_str()) {
                Some("jsonl" | "ndjson") => TraceFormat::Jsonl,
                Some("json") => {
                    let mut head = [0u8; 64];
                    let mut f = File::open(path).map_err(io)?;
                    let n = read_up_to(&mut f, &mut head).map_err(io)?;
                    if looks_like_prometheus(&head[..n]) {
                        TraceFormat::Prometheus
                    } else {
                        TraceFormat::Jsonl
                    }
                }
                _ => TraceFormat::Csv,
            },
            f => f,
        };
        if format == TraceFormat::Prometheus {
            let text = std::fs::read_to_string(path).map_err(io)?;
            return Ok(Self::prometheus(path, &text, counter));
        }
        let file = File::open(path).map_err(io)?;
        let mut r = Self::new(path, Box::new(BufReader::new(file)));
        if let Source::Lines { json, .. } = &mut r.source {
            *json = format == TraceFormat::Jsonl;
        }
        r.counter = counter.then_some(None);
        Ok(r)
    }

    /// Reads a CSV or JSON-lines trace from any reader; `path` names it in errors and picks
    /// the format (`.jsonl`, `.ndjson`, `.json`: JSON lines).
    pub fn new(path: &Path, reader: Box<dyn BufRead>) -> Self {
        let json = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("jsonl" | "ndjson" | "json")
        );
        TraceReader {
            path: path.to_owned(),
            source: Source::Lines {
                lines: reader.lines(),
                json,
            },
            line_no: 0,
            pending: Vec::new().into_iter(),
            origin: None,
            last: None,
            counter: None,
        }
    }

    /// Treats the values as a counter (line sources; see [`TraceOptions::counter`]).
    pub fn counter(mut self) -> Self {
        self.counter = Some(None);
        self
    }

    /// Reads a Prometheus `query_range` answer: its series (counters turned into rates per
    /// series first when `counter`) summed per timestamp. Every problem found is handed out
    /// by [`next_sample`](Self::next_sample) before any sample.
    pub fn prometheus(path: &Path, text: &str, counter: bool) -> Self {
        let (origin, points, problems) = prometheus_points(path, text, counter);
        TraceReader {
            path: path.to_owned(),
            source: Source::Points(points.into_iter()),
            line_no: 0,
            pending: problems.into_iter(),
            origin,
            last: None,
            counter: None,
        }
    }

    /// The error for a sample from `origin`.
    pub fn error_at(&self, origin: Origin, field: &'static str, message: String) -> TraceError {
        match origin {
            Origin::Line(line) => TraceError::Invalid {
                path: self.path.clone(),
                line,
                field,
                message,
            },
            Origin::Time(t) => TraceError::Point {
                path: self.path.clone(),
                field: format!("sample at {}", fmt_time(t)),
                message,
            },
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

    /// The next sample as (seconds since the first sample, rps), with where it came from.
    /// After an error the reader goes on with the next line, so that every problem of a file
    /// can be listed (an I/O error other than bad UTF-8 ends the file).
    pub fn next_sample(&mut self) -> Result<Option<(f64, f64, Origin)>, TraceError> {
        if let Some(e) = self.pending.next() {
            return Err(e);
        }
        loop {
            let (ts, rps, origin) = match &mut self.source {
                Source::Points(points) => {
                    let Some((ts, v)) = points.next() else {
                        return Ok(None);
                    };
                    let origin = self.origin.unwrap_or(ts);
                    let t = ts - origin;
                    self.last = Some(t);
                    return Ok(Some((t, v, Origin::Time(ts))));
                }
                Source::Lines { lines, json } => {
                    let json = *json;
                    let Some(line) = lines.next() else {
                        return Ok(None);
                    };
                    self.line_no += 1;
                    let line = match line {
                        Ok(l) => l,
                        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                            return Err(self.invalid("line", "not UTF-8"));
                        }
                        Err(source) => {
                            self.source = Source::Points(Vec::new().into_iter());
                            return Err(TraceError::Io {
                                path: self.path.clone(),
                                source,
                            });
                        }
                    };
                    let text = line.trim();
                    if text.is_empty() || text.starts_with('#') {
                        continue;
                    }
                    let (ts, rps) = if json {
                        self.parse_json(text)?
                    } else {
                        let mut fields = text.split(',').map(str::trim);
                        let (Some(a), Some(b), None) =
                            (fields.next(), fields.next(), fields.next())
                        else {
                            return Err(self.invalid("line", "expected two fields: timestamp,rps"));
                        };
                        if self.origin.is_none()
                            && self.last.is_none()
                            && parse_time(a).is_none()
                            && (a.eq_ignore_ascii_case("timestamp")
                                || a.eq_ignore_ascii_case("time"))
                        {
                            // A header line.
                            continue;
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
                    (ts, rps, Origin::Line(self.line_no))
                }
            };
            if !rps.is_finite() || rps < 0.0 {
                return Err(self.invalid("rps", format!("must be a finite number >= 0, got {rps}")));
            }
            let origin_ts = *self.origin.get_or_insert(ts);
            let t = ts - origin_ts;
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
            if let Some(prev) = &mut self.counter {
                let before = prev.replace((t, rps));
                match before {
                    None => continue,
                    Some((pt, pv)) => return Ok(Some((t, counter_rate(pt, pv, t, rps), origin))),
                }
            }
            return Ok(Some((t, rps, origin)));
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

/// The per-second rate between two counter samples; a decrease is a reset (the counter
/// restarted from 0), as Prometheus' `rate()` reads it.
pub fn counter_rate(t0: f64, v0: f64, t1: f64, v1: f64) -> f64 {
    let increase = if v1 >= v0 { v1 - v0 } else { v1 };
    increase / (t1 - t0)
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Whether a document starts like a Prometheus API answer (`{"status"`, blanks allowed).
fn looks_like_prometheus(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head);
    let rest = text.trim_start();
    let Some(rest) = rest.strip_prefix('{') else {
        return false;
    };
    rest.trim_start().starts_with("\"status\"")
}

fn fmt_time(t: f64) -> String {
    let s = format!("{t:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[derive(Deserialize)]
struct PromAnswer {
    status: String,
    #[serde(default)]
    data: Option<PromData>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct PromData {
    #[serde(rename = "resultType")]
    result_type: String,
    result: Vec<PromSeries>,
}

#[derive(Deserialize)]
struct PromSeries {
    #[serde(default)]
    #[allow(dead_code)]
    metric: BTreeMap<String, String>,
    #[serde(default)]
    values: Vec<(f64, String)>,
}

/// The summed series of a Prometheus `query_range` answer: (origin, points, problems). The
/// origin is the earliest timestamp of any series (before the counter conversion drops each
/// series' first point).
fn prometheus_points(
    path: &Path,
    text: &str,
    counter: bool,
) -> (Option<f64>, Vec<(f64, f64)>, Vec<TraceError>) {
    let mut problems = Vec::new();
    let point = |field: String, message: String| TraceError::Point {
        path: path.to_owned(),
        field,
        message,
    };
    let de = &mut serde_json::Deserializer::from_str(text);
    let answer: PromAnswer = match serde_path_to_error::deserialize(de) {
        Ok(a) => a,
        Err(e) => {
            let field = e.path().to_string();
            let inner = e.into_inner();
            let message = inner.to_string();
            // serde_json appends " at line L column C"; the position is in the prefix.
            let message = message
                .rsplit_once(" at line ")
                .map_or(message.clone(), |(m, _)| m.to_owned());
            problems.push(TraceError::Json {
                path: path.to_owned(),
                line: inner.line(),
                column: inner.column(),
                field: if field == "." { "answer".into() } else { field },
                message,
            });
            return (None, Vec::new(), problems);
        }
    };
    if answer.status != "success" {
        problems.push(point(
            "status".into(),
            format!(
                "the answer is {:?}, not \"success\" ({}: {})",
                answer.status,
                answer.error_type.unwrap_or_default(),
                answer.error.unwrap_or_default()
            ),
        ));
        return (None, Vec::new(), problems);
    }
    let Some(data) = answer.data else {
        problems.push(point("data".into(), "missing".into()));
        return (None, Vec::new(), problems);
    };
    if data.result_type != "matrix" {
        problems.push(point(
            "data.resultType".into(),
            format!(
                "{:?}: a trace needs a range query's \"matrix\" answer",
                data.result_type
            ),
        ));
        return (None, Vec::new(), problems);
    }
    let mut sum: BTreeMap<i64, f64> = BTreeMap::new();
    let mut origin: Option<f64> = None;
    for (si, series) in data.result.iter().enumerate() {
        let mut prev: Option<(f64, f64)> = None;
        for (pi, (ts, raw)) in series.values.iter().enumerate() {
            let field = || format!("data.result[{si}].values[{pi}]");
            let value = match raw.parse::<f64>() {
                Ok(v) => v,
                Err(_) => {
                    problems.push(point(field(), format!("value {raw:?} is not a number")));
                    continue;
                }
            };
            if !value.is_finite() || value < 0.0 || !ts.is_finite() {
                problems.push(point(
                    field(),
                    format!(
                        "value {raw:?} at {} must be a finite number >= 0",
                        fmt_time(*ts)
                    ),
                ));
                continue;
            }
            if let Some((pt, _)) = prev {
                if *ts <= pt {
                    problems.push(point(
                        field(),
                        format!(
                            "timestamp {} does not follow {} (timestamps must increase)",
                            fmt_time(*ts),
                            fmt_time(pt)
                        ),
                    ));
                    continue;
                }
            }
            origin = Some(origin.map_or(*ts, |o: f64| o.min(*ts)));
            let v = match (counter, prev) {
                (false, _) => Some(value),
                (true, None) => None,
                (true, Some((pt, pv))) => Some(counter_rate(pt, pv, *ts, value)),
            };
            prev = Some((*ts, value));
            if let Some(v) = v {
                *sum.entry((ts * 1000.0).round() as i64).or_insert(0.0) += v;
            }
        }
    }
    let points = sum
        .into_iter()
        .map(|(ms, v)| (ms as f64 / 1000.0, v))
        .collect();
    (origin, points, problems)
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
    start: f64,
    gaps: GapRule,
    max_gap: f64,
    prev: Option<(f64, f64)>,
    next: Option<(f64, f64, Origin)>,
    /// Time of the last sample (known once read).
    pub ended: bool,
}

impl TraceCurve {
    /// Wraps a reader with the scenario's options (`format` and `counter` are the reader's).
    pub fn new(mut reader: TraceReader, options: &TraceOptions) -> Result<Self, TraceError> {
        let first = reader.next_sample()?;
        Ok(TraceCurve {
            reader,
            scale: options.scale,
            speedup: options.speedup,
            start: options.start,
            gaps: options.gaps,
            max_gap: options.max_gap,
            prev: None,
            next: first,
            ended: false,
        })
    }

    /// Opens the file with `options`.
    pub fn open(path: &Path, options: &TraceOptions) -> Result<Self, TraceError> {
        Self::new(
            TraceReader::open_with(path, options.format, options.counter)?,
            options,
        )
    }

    fn gap_error(&self, origin: Origin, gap: f64) -> TraceError {
        self.reader.error_at(
            origin,
            "timestamp",
            format!(
                "gap of {gap:.0}s before this sample is longer than max_gap ({:.0}s); set gaps: interpolate, hold or zero to accept it",
                self.max_gap
            ),
        )
    }

    /// The trace's rate at simulated time `t` (non-decreasing across calls).
    pub fn at(&mut self, t: f64) -> Result<f64, TraceError> {
        let t = self.start + t * self.speedup;
        while let Some((nt, nv, origin)) = self.next {
            if nt > t {
                break;
            }
            if let Some((pt, _)) = self.prev {
                // A gap wholly before the start is not replayed.
                if nt - pt > self.max_gap && self.gaps == GapRule::Refuse && nt > self.start {
                    return Err(self.gap_error(origin, nt - pt));
                }
            }
            self.prev = Some((nt, nv));
            self.next = self.reader.next_sample()?;
        }
        let value = match (self.prev, self.next) {
            (None, Some((_, v, _))) => v,
            (Some((pt, pv)), Some((nt, nv, origin))) => {
                let gap = nt - pt;
                if gap > self.max_gap {
                    match self.gaps {
                        GapRule::Refuse => return Err(self.gap_error(origin, gap)),
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

/// The length of a trace in simulated seconds from its `start` (reads it once, streaming).
pub fn trace_length(path: &Path, options: &TraceOptions) -> Result<f64, TraceError> {
    let mut r = TraceReader::open_with(path, options.format, options.counter)?;
    let mut last = 0.0;
    while let Some((t, _, _)) = r.next_sample()? {
        last = t;
    }
    Ok(((last - options.start) / options.speedup).max(0.0))
}

/// Most problems listed per trace by [`check_trace`]; the rest are counted.
pub const MAX_PROBLEMS: usize = 1000;

/// Every problem of a trace with `options`, in file order: each malformed line or point,
/// duplicate or out-of-order timestamp, refused gap (after `start`), and a `start` past the
/// end. At most [`MAX_PROBLEMS`] are returned, with the count of all of them.
pub fn check_trace(path: &Path, options: &TraceOptions) -> (Vec<TraceError>, usize) {
    let mut problems = Vec::new();
    let mut count = 0;
    let mut push = |e: TraceError, count: &mut usize| {
        *count += 1;
        if problems.len() < MAX_PROBLEMS {
            problems.push(e);
        }
    };
    let mut r = match TraceReader::open_with(path, options.format, options.counter) {
        Ok(r) => r,
        Err(e) => {
            push(e, &mut count);
            return (problems, count);
        }
    };
    let mut prev: Option<f64> = None;
    let mut samples = 0usize;
    loop {
        match r.next_sample() {
            Ok(None) => break,
            Ok(Some((t, _, origin))) => {
                samples += 1;
                if let Some(pt) = prev {
                    if t - pt > options.max_gap
                        && options.gaps == GapRule::Refuse
                        && t > options.start
                    {
                        push(r.error_at(
                            origin,
                            "timestamp",
                            format!(
                                "gap of {:.0}s before this sample is longer than max_gap ({:.0}s); set gaps: interpolate, hold or zero to accept it",
                                t - pt,
                                options.max_gap
                            ),
                        ), &mut count);
                    }
                }
                prev = Some(t);
            }
            Err(e) => {
                let io = matches!(e, TraceError::Io { .. });
                push(e, &mut count);
                if io {
                    break;
                }
            }
        }
    }
    let last = prev.unwrap_or(0.0);
    if samples == 0 && count == 0 {
        push(
            TraceError::Options {
                path: path.to_owned(),
                field: "file",
                message: "no samples".into(),
            },
            &mut count,
        );
    } else if options.start > 0.0 && options.start >= last && samples > 0 {
        push(
            TraceError::Options {
                path: path.to_owned(),
                field: "start",
                message: format!(
                    "{}s is past the trace's last sample ({}s after its first)",
                    fmt_time(options.start),
                    fmt_time(last)
                ),
            },
            &mut count,
        );
    }
    (problems, count)
}

/// Every problem of every trace of a scenario (see [`check_trace`]).
#[derive(Debug, thiserror::Error)]
#[error("{}", self.lines().join("\n"))]
pub struct TraceProblems {
    /// Per trace file: the problems listed and how many there were in all.
    pub files: Vec<(PathBuf, Vec<TraceError>, usize)>,
}

impl TraceProblems {
    /// One line per problem, and one per file with more than [`MAX_PROBLEMS`].
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (path, listed, count) in &self.files {
            out.extend(listed.iter().map(ToString::to_string));
            if *count > listed.len() {
                out.push(format!(
                    "{}: … and {} more problems",
                    path.display(),
                    count - listed.len()
                ));
            }
        }
        out
    }

    /// All problems, listed or not.
    pub fn count(&self) -> usize {
        self.files.iter().map(|f| f.2).sum()
    }
}

/// Checks every trace of `traffic` (paths relative to `base`) in full, with its options.
pub fn check_traces(traffic: &[Traffic], base: &Path) -> Result<(), TraceProblems> {
    let mut files = Vec::new();
    for t in traffic {
        if let Some((file, options)) = TraceOptions::of(t) {
            let path = base.join(file);
            let (listed, count) = check_trace(&path, &options);
            if count > 0 {
                files.push((path, listed, count));
            }
        }
    }
    if files.is_empty() {
        Ok(())
    } else {
        Err(TraceProblems { files })
    }
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
            components.push(match TraceOptions::of(t) {
                Some((file, options)) => {
                    Component::Trace(Box::new(TraceCurve::open(&base.join(file), &options)?))
                }
                None => Component::Curve(t.clone()),
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
        TraceCurve::new(
            reader(name, text),
            &TraceOptions {
                gaps,
                ..TraceOptions::default()
            },
        )
        .unwrap()
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

    fn samples(mut r: TraceReader) -> Vec<(f64, f64)> {
        let mut out = Vec::new();
        while let Some((t, v, _)) = r.next_sample().unwrap() {
            out.push((t, v));
        }
        out
    }

    const TWO_SERIES: &str = r#"{"status":"success","data":{"resultType":"matrix","result":[
        {"metric":{"pod":"a"},"values":[[1000,"1"],[1010,"2"],[1020,"3"]]},
        {"metric":{"pod":"b"},"values":[[1010,"10"],[1020,"20"],[1030,"30"]]}]}}"#;

    #[test]
    fn prometheus_answers_sum_their_series_per_timestamp() {
        let r = TraceReader::prometheus(Path::new("p.json"), TWO_SERIES, false);
        assert_eq!(
            samples(r),
            [(0.0, 1.0), (10.0, 12.0), (20.0, 23.0), (30.0, 30.0)]
        );
        assert!(looks_like_prometheus(b"  {\n \"status\": \"success\""));
        assert!(!looks_like_prometheus(b"{\"timestamp\": 1, \"rps\": 2}"));
    }

    #[test]
    fn prometheus_counters_become_rates_per_series_with_resets() {
        // a: +10 per 10 s, then a reset to 4 (4 since the restart); b: +50 per 10 s.
        let text = r#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{"pod":"a"},"values":[[0,"100"],[10,"110"],[20,"4"],[30,"14"]]},
            {"metric":{"pod":"b"},"values":[[0,"0"],[10,"50"],[20,"100"],[30,"150"]]}]}}"#;
        let r = TraceReader::prometheus(Path::new("p.json"), text, true);
        assert_eq!(samples(r), [(10.0, 6.0), (20.0, 5.4), (30.0, 6.0)]);
        assert_eq!(counter_rate(0.0, 100.0, 10.0, 4.0), 0.4);
    }

    #[test]
    fn prometheus_non_finite_points_are_refused_with_their_index() {
        let text = r#"{"status":"success","data":{"resultType":"matrix","result":[
            {"metric":{},"values":[[0,"1"],[15,"NaN"],[30,"2"]]},
            {"metric":{},"values":[[0,"+Inf"],[15,"x"]]}]}}"#;
        let mut r = TraceReader::prometheus(Path::new("p.json"), text, false);
        let e: Vec<String> = (0..3)
            .map(|_| r.next_sample().unwrap_err().to_string())
            .collect();
        assert_eq!(
            e,
            [
                "p.json: data.result[0].values[1]: value \"NaN\" at 15 must be a finite number >= 0",
                "p.json: data.result[1].values[0]: value \"+Inf\" at 0 must be a finite number >= 0",
                "p.json: data.result[1].values[1]: value \"x\" is not a number",
            ]
        );
        assert_eq!(
            r.next_sample().unwrap(),
            Some((0.0, 1.0, Origin::Time(0.0)))
        );
        let bad = TraceReader::prometheus(
            Path::new("p.json"),
            "{\"status\":\"success\",\n\"data\":{\"resultType\":\"matrix\",\"result\":[{\"values\":[[0,1]]}]}}",
            false,
        )
        .next_sample()
        .unwrap_err()
        .to_string();
        assert!(
            bad.starts_with("p.json:2:") && bad.contains("data.result[0].values[0]"),
            "{bad}"
        );
        let vector = TraceReader::prometheus(
            Path::new("p.json"),
            r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#,
            false,
        )
        .next_sample()
        .unwrap_err()
        .to_string();
        assert!(
            vector.starts_with("p.json: data.resultType: \"vector\""),
            "{vector}"
        );
    }

    #[test]
    fn csv_counters_become_rates_and_a_reset_counts_from_zero() {
        let r = reader("t.csv", "0,100\n10,200\n20,50\n30,150\n").counter();
        assert_eq!(samples(r), [(10.0, 10.0), (20.0, 5.0), (30.0, 10.0)]);
    }

    #[test]
    fn start_offsets_into_the_trace_and_skips_gaps_before_it() {
        // A 1000 s gap, then samples every 10 s: starting at 1000 s replays only those.
        let text = "0,5\n1000,10\n1010,20\n1020,30\n";
        let options = TraceOptions {
            start: 1005.0,
            ..TraceOptions::default()
        };
        let mut c = TraceCurve::new(reader("t.csv", text), &options).unwrap();
        assert_eq!(c.at(0.0).unwrap(), 15.0);
        assert_eq!(c.at(5.0).unwrap(), 20.0);
        assert_eq!(c.at(10.0).unwrap(), 25.0);
        let dir = std::env::temp_dir().join(format!("gofe-sim-start-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("t.csv");
        std::fs::write(&file, text).unwrap();
        assert_eq!(trace_length(&file, &options).unwrap(), 15.0);
        assert_eq!(check_trace(&file, &options).1, 0);
        let past = TraceOptions {
            start: 2000.0,
            ..TraceOptions::default()
        };
        let (problems, _) = check_trace(&file, &past);
        let last = problems.last().unwrap().to_string();
        assert!(
            last.ends_with("start: 2000s is past the trace's last sample (1020s after its first)"),
            "{last}"
        );
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn check_lists_every_problem_in_file_order() {
        let dir = std::env::temp_dir().join(format!("gofe-sim-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("t.csv");
        std::fs::write(
            &file,
            "timestamp,rps\n0,1\n1,x\n2,-1\n2,3\n1,4\n1000,5\n1001,1,2\n",
        )
        .unwrap();
        let (problems, n) = check_trace(&file, &TraceOptions::default());
        let name = file.display().to_string();
        let got: Vec<String> = problems
            .iter()
            .map(|p| p.to_string().replacen(&name, "t.csv", 1))
            .collect();
        assert_eq!(n, 5);
        assert_eq!(
            got,
            [
                "t.csv:3: rps: not a number: \"x\"",
                "t.csv:4: rps: must be a finite number >= 0, got -1",
                "t.csv:6: timestamp: out of order (timestamps must increase)",
                "t.csv:7: timestamp: gap of 998s before this sample is longer than max_gap (300s); set gaps: interpolate, hold or zero to accept it",
                "t.csv:8: line: expected two fields: timestamp,rps",
            ]
        );
        std::fs::remove_dir_all(dir).ok();
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
            if let Ok(mut c) = TraceCurve::new(reader(name, text), &TraceOptions::default()) {
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
