//! Just enough of the Prometheus text format to read gofe proxies' own upstream series.
//!
//! The embedded source needs two families from a proxy's `/metrics`:
//! `gofe_upstream_requests_total{cluster,endpoint,code_class}` and the buckets of
//! `gofe_upstream_request_duration_seconds{cluster,endpoint,le}`. Lines it does not need, or
//! cannot read, are skipped (a scrape never fails on one odd line).
//!
//! [`Scraper`] fetches targets' `/metrics` and keeps each target's recent samples in a
//! [`History`], whose [`History::deltas`] are what happened over the window, summed over the
//! targets (the controller's embedded signals and the adapter's scrape source both use it).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Counters of one endpoint at one scrape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counters {
    /// All requests.
    pub requests: f64,
    /// Requests answered 5xx.
    pub failures: f64,
    /// Latency histogram: cumulative count per upper bound (`+Inf` included), by bound.
    pub buckets: Vec<(f64, f64)>,
}

/// One scrape of one proxy: counters per (cluster, endpoint).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sample {
    /// Per (cluster, endpoint).
    pub endpoints: BTreeMap<(String, String), Counters>,
}

/// The change of an endpoint's counters between two scrapes (or summed over proxies).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Delta {
    /// Requests in between.
    pub requests: f64,
    /// 5xx in between.
    pub failures: f64,
    /// Cumulative bucket increases, by bound.
    pub buckets: Vec<(f64, f64)>,
}

impl Delta {
    /// Adds another proxy's delta for the same endpoint.
    pub fn add(&mut self, other: &Delta) {
        self.requests += other.requests;
        self.failures += other.failures;
        if self.buckets.is_empty() {
            self.buckets = other.buckets.clone();
        } else {
            for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
                mine.1 += theirs.1;
            }
        }
    }

    /// The `q` quantile of the latency, interpolated within buckets as Prometheus'
    /// `histogram_quantile` does. `None` without observations.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.buckets.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total;
        let mut lower = (0.0, 0.0);
        for &(le, count) in &self.buckets {
            if count >= rank {
                if le.is_infinite() {
                    return Some(lower.0);
                }
                let in_bucket = count - lower.1;
                if in_bucket <= 0.0 {
                    return Some(le);
                }
                return Some(lower.0 + (le - lower.0) * (rank - lower.1) / in_bucket);
            }
            lower = (le, count);
        }
        Some(lower.0)
    }
}

impl Sample {
    /// Reads the text format, keeping gofe's upstream series.
    pub fn parse(text: &str) -> Sample {
        let mut endpoints: BTreeMap<(String, String), Counters> = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, labels, value)) = split(line) else {
                continue;
            };
            let get = |k: &str| labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
            let (Some(cluster), Some(endpoint)) = (get("cluster"), get("endpoint")) else {
                continue;
            };
            match name {
                "gofe_upstream_requests_total" => {
                    let c = endpoints.entry((cluster, endpoint)).or_default();
                    c.requests += value;
                    if get("code_class").as_deref() == Some("5xx") {
                        c.failures += value;
                    }
                }
                "gofe_upstream_request_duration_seconds_bucket" => {
                    let Some(le) = get("le").and_then(|l| parse_float(&l)) else {
                        continue;
                    };
                    endpoints
                        .entry((cluster, endpoint))
                        .or_default()
                        .buckets
                        .push((le, value));
                }
                _ => {}
            }
        }
        for c in endpoints.values_mut() {
            c.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        Sample { endpoints }
    }

    /// What changed since `earlier`. A counter that went down was reset (a restarted proxy):
    /// its current value is the change.
    pub fn delta_since(&self, earlier: &Sample) -> BTreeMap<(String, String), Delta> {
        let since = |now: f64, before: Option<f64>| match before {
            Some(b) if now >= b => now - b,
            _ => now,
        };
        self.endpoints
            .iter()
            .map(|(key, now)| {
                let before = earlier.endpoints.get(key);
                let reset = before.is_some_and(|b| now.requests < b.requests);
                let before = before.filter(|_| !reset);
                let buckets = now
                    .buckets
                    .iter()
                    .map(|&(le, count)| {
                        let prev = before.and_then(|b| {
                            b.buckets.iter().find(|(l, _)| *l == le).map(|(_, c)| *c)
                        });
                        (le, since(count, prev))
                    })
                    .collect();
                (
                    key.clone(),
                    Delta {
                        requests: since(now.requests, before.map(|b| b.requests)),
                        failures: since(now.failures, before.map(|b| b.failures)),
                        buckets,
                    },
                )
            })
            .collect()
    }
}

/// Each target's recent samples, oldest first, on the caller's clock (ms).
#[derive(Clone, Debug, Default)]
pub struct History {
    window_ms: u64,
    per_target: BTreeMap<String, VecDeque<(u64, Sample)>>,
}

impl History {
    /// Keeps, per target, the samples of the last `window` plus one at least that old (the
    /// base of the deltas).
    pub fn new(window: Duration) -> Self {
        History {
            window_ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            per_target: BTreeMap::new(),
        }
    }

    /// Adds a target's sample taken at `now_ms`.
    pub fn record(&mut self, target: &str, now_ms: u64, sample: Sample) {
        let h = self.per_target.entry(target.to_owned()).or_default();
        h.push_back((now_ms, sample));
        while h.len() > 2 && now_ms.saturating_sub(h[1].0) >= self.window_ms {
            h.pop_front();
        }
    }

    /// Drops a target's samples (it could not be scraped: it contributes nothing stale).
    pub fn forget(&mut self, target: &str) {
        self.per_target.remove(target);
    }

    /// What changed per (cluster, endpoint) between each target's oldest and newest kept
    /// sample, summed over targets, with the longest of those spans (ms). A span of 0 means
    /// no target has two samples yet: there is no rate to compute.
    pub fn deltas(&self) -> (u64, BTreeMap<(String, String), Delta>) {
        let mut totals: BTreeMap<(String, String), Delta> = BTreeMap::new();
        let mut span_ms = 0;
        for h in self.per_target.values() {
            let (Some((t0, first)), Some((t1, last))) = (h.front(), h.back()) else {
                continue;
            };
            if t1 <= t0 {
                continue;
            }
            span_ms = span_ms.max(t1 - t0);
            for (key, delta) in last.delta_since(first) {
                totals.entry(key).or_default().add(&delta);
            }
        }
        (span_ms, totals)
    }
}

/// Fetches gofe proxies' `/metrics` over plain HTTP.
#[derive(Clone, Debug)]
pub struct Scraper {
    client: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
}

impl Scraper {
    /// A scraper whose every fetch ends within `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Scraper {
            client: Client::builder(TokioExecutor::new()).build_http(),
            timeout,
        }
    }

    /// `http://TARGET/metrics`, read. The error names the target and what failed.
    pub async fn scrape(&self, target: &str) -> Result<Sample, String> {
        let uri: http::Uri = format!("http://{target}/metrics")
            .parse()
            .map_err(|e| format!("{target}: {e}"))?;
        let fetch = async {
            let resp = self
                .client
                .get(uri)
                .await
                .map_err(|e| format!("{target}: {e}"))?;
            if !resp.status().is_success() {
                return Err(format!("{target}: HTTP {}", resp.status()));
            }
            resp.into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| format!("{target}: {e}"))
        };
        let body = tokio::time::timeout(self.timeout, fetch)
            .await
            .map_err(|_| format!("{target}: no answer within {:?}", self.timeout))??;
        let text = std::str::from_utf8(&body).map_err(|e| format!("{target}: {e}"))?;
        Ok(Sample::parse(text))
    }
}

fn parse_float(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

/// A sample line's parts: name, labels, value.
type Line<'a> = (&'a str, Vec<(String, String)>, f64);

/// `name{a="x",b="y"} value [timestamp]` → parts; `None` for anything malformed.
fn split(line: &str) -> Option<Line<'_>> {
    let bytes = line.as_bytes();
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    let mut i = name_end;
    let mut labels = Vec::new();
    if bytes[i] == b'{' {
        i += 1;
        loop {
            while i < bytes.len() && (bytes[i] == b',' || bytes[i] == b' ') {
                i += 1;
            }
            if *bytes.get(i)? == b'}' {
                i += 1;
                break;
            }
            let eq = i + line[i..].find('=')?;
            let label = line[i..eq].trim().to_owned();
            i = eq + 1;
            if bytes.get(i) != Some(&b'"') {
                return None;
            }
            i += 1;
            let mut value = String::new();
            loop {
                let c = line[i..].chars().next()?;
                i += c.len_utf8();
                match c {
                    '\\' => {
                        let n = line[i..].chars().next()?;
                        i += n.len_utf8();
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
            labels.push((label, value));
        }
    }
    let value = parse_float(line[i..].split_whitespace().next()?)?;
    Some((name, labels, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP gofe_upstream_requests_total Requests.
# TYPE gofe_upstream_requests_total counter
gofe_upstream_requests_total{cluster="web",code_class="2xx",endpoint="10.0.0.1:80"} 90
gofe_upstream_requests_total{cluster="web",code_class="5xx",endpoint="10.0.0.1:80"} 10
gofe_upstream_requests_total{cluster="w\"e,b",code_class="2xx",endpoint="x:1"} 1
gofe_upstream_request_duration_seconds_bucket{cluster="web",endpoint="10.0.0.1:80",le="0.1"} 50
gofe_upstream_request_duration_seconds_bucket{cluster="web",endpoint="10.0.0.1:80",le="0.2"} 100
gofe_upstream_request_duration_seconds_bucket{cluster="web",endpoint="10.0.0.1:80",le="+Inf"} 100
gofe_config_version 3
garbage line {{{
"#;

    #[test]
    fn reads_counters_buckets_and_escapes() {
        let s = Sample::parse(TEXT);
        let c = &s.endpoints[&("web".to_owned(), "10.0.0.1:80".to_owned())];
        assert_eq!((c.requests, c.failures), (100.0, 10.0));
        assert_eq!(
            c.buckets,
            vec![(0.1, 50.0), (0.2, 100.0), (f64::INFINITY, 100.0)]
        );
        assert!(s
            .endpoints
            .contains_key(&("w\"e,b".to_owned(), "x:1".to_owned())));
    }

    #[test]
    fn deltas_and_resets() {
        let a = Sample::parse(TEXT);
        let b = Sample::parse(
            &TEXT
                .replace("} 90", "} 190")
                .replace("le=\"+Inf\"} 100", "le=\"+Inf\"} 200"),
        );
        let d = &b.delta_since(&a)[&("web".to_owned(), "10.0.0.1:80".to_owned())];
        assert_eq!(d.requests, 100.0);
        assert_eq!(d.failures, 0.0);
        let reset = a.delta_since(&b);
        let d = &reset[&("web".to_owned(), "10.0.0.1:80".to_owned())];
        assert_eq!(
            d.requests, 100.0,
            "after a reset the current value is the change"
        );
    }

    #[test]
    fn malformed_lines_are_skipped_not_fatal() {
        for line in [
            r#"x{a="1""#,
            r#"x{a=1} 2"#,
            r#"x{a="1"} nope"#,
            r#"{} 1"#,
            r#"x{="",} 1"#,
            r#"x{a="\"} 1"#,
        ] {
            let _ = split(line);
        }
        assert_eq!(
            split("x 1").map(|(n, l, v)| (n, l.len(), v)),
            Some(("x", 0, 1.0))
        );
        assert_eq!(
            split("x{} 1").map(|(n, l, v)| (n, l.len(), v)),
            Some(("x", 0, 1.0))
        );
        assert_eq!(
            split(r#"x{a="1",} 2 1700000000"#).map(|(_, l, v)| (l, v)),
            Some((vec![("a".to_owned(), "1".to_owned())], 2.0))
        );
    }

    #[test]
    fn quantiles_interpolate_like_prometheus() {
        let d = Delta {
            requests: 100.0,
            failures: 0.0,
            buckets: vec![(0.1, 50.0), (0.2, 100.0), (f64::INFINITY, 100.0)],
        };
        assert!((d.quantile(0.5).unwrap() - 0.1).abs() < 1e-12);
        assert!((d.quantile(0.75).unwrap() - 0.15).abs() < 1e-12);
        assert!((d.quantile(0.25).unwrap() - 0.05).abs() < 1e-12);
        let tail = Delta {
            buckets: vec![(0.1, 0.0), (f64::INFINITY, 10.0)],
            ..d.clone()
        };
        assert_eq!(
            tail.quantile(0.9),
            Some(0.1),
            "+Inf bucket: the highest finite bound"
        );
        assert_eq!(Delta::default().quantile(0.5), None);
    }
}
