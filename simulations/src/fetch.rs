//! `gofe sim fetch`: a trace from a live Prometheus, written as a `query_range` answer that the
//! `trace` traffic component reads.
//!
//! Prometheus refuses a range query of more than 11,000 points per series, so a longer range
//! is asked for in consecutive chunks of at most [`MAX_POINTS`] evaluation times (on the same
//! `start + k × step` grid) and the series are joined by their labels. Points are written as
//! Prometheus sends them (NaN and ±Inf included: the trace reader refuses them, naming the
//! point).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gofe_prom::{Client, ClientConfig, Labels, RangeSeries};

/// Most evaluation times per series in one range query (Prometheus' limit).
pub const MAX_POINTS: u64 = 11_000;

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The range or step is unusable.
    #[error("{field}: {message}")]
    Range {
        /// `--start`, `--end` or `--step`.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The client could not be built (URL, CA file).
    #[error(transparent)]
    Client(#[from] gofe_prom::BuildError),
    /// A chunk's query failed.
    #[error("query_range from {start} to {end}: {source}")]
    Query {
        /// The chunk's first evaluation time, Unix seconds.
        start: f64,
        /// The chunk's last evaluation time, Unix seconds.
        end: f64,
        /// The client's error.
        #[source]
        source: gofe_prom::Error,
    },
    /// The output could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// What to fetch.
#[derive(Clone, Debug)]
pub struct FetchRequest {
    /// The Prometheus base URL.
    pub url: String,
    /// The PromQL query.
    pub query: String,
    /// First evaluation time, Unix seconds.
    pub start: f64,
    /// Last evaluation time (inclusive when on the grid), Unix seconds.
    pub end: f64,
    /// Spacing of the evaluation times.
    pub step: Duration,
    /// Each query's time limit.
    pub timeout: Duration,
    /// CA certificate(s) for an `https://` Prometheus.
    pub ca_file: Option<PathBuf>,
}

/// The chunks of a range: `(first, last)` evaluation times in milliseconds, each with at most
/// [`MAX_POINTS`] points on the grid `start + k × step`, covering every grid time up to `end`.
pub fn chunks(start_ms: i64, end_ms: i64, step_ms: i64) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    if step_ms <= 0 || end_ms < start_ms {
        return out;
    }
    let points = (end_ms - start_ms) / step_ms + 1;
    let mut k = 0;
    while k < points {
        let last = (k + MAX_POINTS as i64 - 1).min(points - 1);
        out.push((start_ms + k * step_ms, start_ms + last * step_ms));
        k = last + 1;
    }
    out
}

/// Runs the range query chunk by chunk and joins the series by their labels (sorted by
/// labels, points oldest first).
pub async fn fetch(client: &Client, req: &FetchRequest) -> Result<Vec<RangeSeries>, FetchError> {
    let range = |field, message: &str| FetchError::Range {
        field,
        message: message.to_owned(),
    };
    if !req.start.is_finite() || !req.end.is_finite() {
        return Err(range("--start", "must be a finite time"));
    }
    if req.end < req.start {
        return Err(range("--end", "must not be before --start"));
    }
    let step_ms = req.step.as_millis() as i64;
    if step_ms < 1 {
        return Err(range("--step", "must be at least 1ms"));
    }
    let start_ms = (req.start * 1000.0).round() as i64;
    let end_ms = (req.end * 1000.0).round() as i64;
    let mut joined: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
    let parts = chunks(start_ms, end_ms, step_ms);
    for (i, (a, b)) in parts.iter().enumerate() {
        let (a, b) = (*a as f64 / 1000.0, *b as f64 / 1000.0);
        tracing::info!(
            chunk = i + 1,
            of = parts.len(),
            start = a,
            end = b,
            "query_range"
        );
        let series = client
            .query_range(&req.query, a, b, req.step)
            .await
            .map_err(|source| FetchError::Query {
                start: a,
                end: b,
                source,
            })?;
        for s in series {
            joined.entry(s.labels).or_default().extend(s.points);
        }
    }
    Ok(joined
        .into_iter()
        .map(|(labels, points)| RangeSeries { labels, points })
        .collect())
}

/// A time for `--start`/`--end`: Unix seconds, RFC 3339 UTC, `now` or `now-DURATION`
/// (`now-7d` is written `now-168h`); `now` is given in Unix seconds.
pub fn parse_when(s: &str, now: f64) -> Option<f64> {
    let s = s.trim();
    if s == "now" {
        return Some(now);
    }
    if let Some(ago) = s.strip_prefix("now-") {
        return gofe_yaml::duration::parse(ago)
            .ok()
            .map(|d| now - d.as_secs_f64());
    }
    crate::traffic::parse_time(s)
}

/// A value as Prometheus writes it (`NaN`, `+Inf`, `-Inf`, else the shortest decimal).
fn prom_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

/// A timestamp as Prometheus writes it: seconds with up to three decimals.
fn prom_time(t: f64) -> String {
    let ms = (t * 1000.0).round() as i64;
    if ms % 1000 == 0 {
        format!("{}", ms / 1000)
    } else {
        let s = format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000));
        s.trim_end_matches('0').to_owned()
    }
}

/// The series as a Prometheus `query_range` answer (one line, then a newline).
pub fn answer_json(series: &[RangeSeries]) -> String {
    let mut out = String::from(r#"{"status":"success","data":{"resultType":"matrix","result":["#);
    for (i, s) in series.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let metric = serde_json::to_string(&s.labels).unwrap_or_else(|_| "{}".into());
        let _ = write!(out, r#"{{"metric":{metric},"values":["#);
        for (j, (t, v)) in s.points.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            let _ = write!(out, "[{},\"{}\"]", prom_time(*t), prom_value(*v));
        }
        out.push_str("]}");
    }
    out.push_str("]}}\n");
    out
}

/// What [`fetch_to_file`] wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    /// Series in the file.
    pub series: usize,
    /// Points over all series.
    pub points: usize,
    /// Range queries made.
    pub queries: usize,
    /// Points that are NaN or ±Inf (the trace reader refuses them).
    pub non_finite: usize,
}

/// Fetches `req` and writes the answer to `out` (through a temporary file renamed at the end,
/// so a failed fetch leaves no partial file). Runs its own single-threaded Tokio runtime.
pub fn fetch_to_file(req: &FetchRequest, out: &Path) -> Result<Fetched, FetchError> {
    let mut config = ClientConfig::new(req.url.clone());
    config.timeout = req.timeout;
    config.ca_file = req.ca_file.clone();
    let io = |source| FetchError::Io {
        path: out.to_owned(),
        source,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io)?;
    let series = runtime.block_on(async {
        let client = Client::new(&config)?;
        fetch(&client, req).await
    })?;
    let step_ms = (req.step.as_millis() as i64).max(1);
    let queries = chunks(
        (req.start * 1000.0).round() as i64,
        (req.end * 1000.0).round() as i64,
        step_ms,
    )
    .len();
    let fetched = Fetched {
        series: series.len(),
        points: series.iter().map(|s| s.points.len()).sum(),
        queries,
        non_finite: series
            .iter()
            .flat_map(|s| &s.points)
            .filter(|p| !p.1.is_finite())
            .count(),
    };
    if fetched.non_finite > 0 {
        tracing::warn!(
            points = fetched.non_finite,
            "the answer has NaN or infinite values: a trace refuses them"
        );
    }
    crate::output::write_atomic(out, answer_json(&series).as_bytes()).map_err(io)?;
    Ok(fetched)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_grid_with_at_most_11000_points() {
        assert_eq!(chunks(0, 10_999_000, 1000), vec![(0, 10_999_000)]);
        assert_eq!(
            chunks(0, 11_000_000, 1000),
            vec![(0, 10_999_000), (11_000_000, 11_000_000)]
        );
        // 25,001 points at 2 s, end off the grid.
        let c = chunks(1_000, 1_000 + 50_000_500, 2000);
        assert_eq!(
            c,
            vec![
                (1_000, 1_000 + 21_998_000),
                (1_000 + 22_000_000, 1_000 + 43_998_000),
                (1_000 + 44_000_000, 1_000 + 50_000_000)
            ]
        );
        assert!(chunks(5, 4, 1).is_empty());
    }

    #[test]
    fn times_are_unix_rfc3339_or_relative_to_now() {
        assert_eq!(parse_when("now", 1000.0), Some(1000.0));
        assert_eq!(parse_when("now-2h", 10_000.0), Some(2800.0));
        assert_eq!(parse_when("1700000000", 0.0), Some(1.7e9));
        assert_eq!(parse_when("1970-01-01T01:00:00Z", 0.0), Some(3600.0));
        assert_eq!(parse_when("yesterday", 0.0), None);
    }

    #[test]
    fn the_answer_is_written_as_prometheus_writes_it() {
        let s = vec![RangeSeries {
            labels: [("pod".to_owned(), "a".to_owned())].into_iter().collect(),
            points: vec![
                (1.5, 2.0),
                (2.0, f64::NAN),
                (3.25, 0.1),
                (4.0, f64::INFINITY),
            ],
        }];
        assert_eq!(
            answer_json(&s),
            "{\"status\":\"success\",\"data\":{\"resultType\":\"matrix\",\"result\":[{\"metric\":{\"pod\":\"a\"},\"values\":[[1.5,\"2\"],[2,\"NaN\"],[3.25,\"0.1\"],[4,\"+Inf\"]]}]}}\n"
        );
    }
}
