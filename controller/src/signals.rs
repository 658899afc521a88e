//! Where per-endpoint signals come from: Prometheus, or the proxies' `/metrics` scraped
//! directly (the embedded source, so gofe runs with no Prometheus at all).
//!
//! Both produce the same [`Snapshot`]: per cluster and endpoint, requests in the window, rate,
//! success rate and a latency quantile, each stamped with when it was sampled on the
//! controller's clock. A source that cannot answer returns an error, never zeros: the decision
//! step then holds (see `gofe_core::policy`).

use std::collections::BTreeMap;
use std::time::Duration;

use gofe_core::policy::Signals;

use crate::config::{PrometheusConfig, SignalsConfig, SourceKind};

pub use gofe_prom::exposition;

/// Signals per cluster, then per endpoint address.
pub type Snapshot = BTreeMap<String, BTreeMap<String, Signals>>;

/// Why a source could not produce signals.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// The Prometheus client could not be built from `signals.prometheus` (an unusable URL,
    /// or `https://`, which needs a CA file the controller cannot be given yet).
    #[error("prometheus client: {0}")]
    PrometheusClient(#[source] gofe_prom::BuildError),
    /// A Prometheus query failed; `source` says how: connection refused, timeout, 5xx, bad
    /// PromQL (Prometheus' `errorType` and `error`), an answer that is not the API's JSON, ...
    #[error("prometheus query {name:?} failed: {source} (query: {query})")]
    Prometheus {
        /// The query's name in the configuration (`requests`, `rps`, ...).
        name: String,
        /// The rendered query.
        query: String,
        /// What went wrong.
        #[source]
        source: gofe_prom::Error,
    },
    /// No proxy could be scraped.
    #[error("no proxy could be scraped: {0}")]
    Scrape(String),
}

impl SignalError {
    /// A short label for the `reason` of `gofe_controller_signal_errors_total`: the source
    /// (`prometheus` or `scrape`). A Prometheus failure's own kind is
    /// [`gofe_prom::Error::metric_label`] of its source.
    pub fn metric_label(&self) -> &'static str {
        match self {
            SignalError::PrometheusClient(_) | SignalError::Prometheus { .. } => "prometheus",
            SignalError::Scrape(_) => "scrape",
        }
    }
}

/// A configured signal source.
pub enum Source {
    /// Scrapes proxies directly.
    Embedded(Box<Embedded>),
    /// Queries Prometheus.
    Prometheus(Prometheus),
}

impl Source {
    /// Builds the source the configuration names, over the rate `window`
    /// ([`SignalsConfig::window`]).
    pub fn new(config: &SignalsConfig, window: Duration) -> Result<Self, SignalError> {
        Ok(match config.source {
            SourceKind::Embedded => Source::Embedded(Box::new(Embedded::new(
                config.embedded.targets.clone(),
                window,
                config.latency_quantile,
            ))),
            SourceKind::Prometheus => Source::Prometheus(Prometheus::new(
                &config.prometheus,
                window,
                config.latency_quantile,
            )?),
        })
    }

    /// Fetches the current signals. `now_ms` is the controller's clock.
    pub async fn fetch(&mut self, now_ms: u64) -> Result<Snapshot, SignalError> {
        match self {
            Source::Embedded(e) => e.fetch(now_ms).await,
            Source::Prometheus(p) => p.fetch(now_ms).await,
        }
    }

    /// Its name, as `/decisions` says where an endpoint's signals came from.
    pub fn name(&self) -> &'static str {
        match self {
            Source::Embedded(_) => "embedded",
            Source::Prometheus(_) => "prometheus",
        }
    }

    /// The rendered queries (Prometheus) or scrape targets (embedded), for `/debug/queries`.
    pub fn describe(&self) -> BTreeMap<String, String> {
        match self {
            Source::Embedded(e) => e
                .targets
                .iter()
                .enumerate()
                .map(|(i, t)| (format!("target{i}"), format!("http://{t}/metrics")))
                .collect(),
            Source::Prometheus(p) => p.queries.clone(),
        }
    }
}

// === load reports ===

/// Where each endpoint's signals came from this step, by cluster then endpoint.
pub type Origins = BTreeMap<String, BTreeMap<String, &'static str>>;

/// The name [`Origins`] gives signals taken from load reports.
pub const LRS: &str = "lrs";

/// The proxies' load reports as signals: every endpoint whose newest report is at most
/// `fresh_for` old, over the store's window ending `now` (`now_ms` on the controller's clock).
/// Load reports carry a mean latency, not a quantile: that is the latency such an endpoint is
/// weighed by.
pub fn from_load_reports(
    store: &gofe_xds::LoadStore,
    now: tokio::time::Instant,
    now_ms: u64,
    fresh_for: Duration,
) -> Snapshot {
    let mut snapshot = Snapshot::new();
    for (cluster, endpoints) in store.window(now) {
        for (endpoint, w) in endpoints {
            if w.age > fresh_for {
                continue;
            }
            let requests = w.finished() as f64;
            let age_ms = u64::try_from(w.age.as_millis()).unwrap_or(u64::MAX);
            snapshot.entry(cluster.clone()).or_default().insert(
                endpoint,
                Signals {
                    requests,
                    rps: w.rps,
                    success_rate: if w.finished() > 0 {
                        w.successful as f64 / requests
                    } else {
                        1.0
                    },
                    latency: w.mean_latency().unwrap_or(0.0),
                    sampled_at_ms: now_ms.saturating_sub(age_ms),
                },
            );
        }
    }
    snapshot
}

/// `base` (the configured source's signals, named `base_name`) with every endpoint `lrs` has
/// taken from `lrs` instead, and where each endpoint's signals came from.
pub fn combine(base: Snapshot, base_name: &'static str, lrs: Snapshot) -> (Snapshot, Origins) {
    let mut origins = Origins::new();
    for (cluster, endpoints) in &base {
        let o = origins.entry(cluster.clone()).or_default();
        for endpoint in endpoints.keys() {
            o.insert(endpoint.clone(), base_name);
        }
    }
    let mut out = base;
    for (cluster, endpoints) in lrs {
        let o = origins.entry(cluster.clone()).or_default();
        let c = out.entry(cluster).or_default();
        for (endpoint, signals) in endpoints {
            o.insert(endpoint.clone(), LRS);
            c.insert(endpoint, signals);
        }
    }
    (out, origins)
}

// === impl Embedded ===

/// Scrapes proxies' `/metrics` and computes windowed rates from successive samples.
pub struct Embedded {
    targets: Vec<String>,
    quantile: f64,
    scraper: exposition::Scraper,
    history: exposition::History,
}

impl Embedded {
    /// A scraper of `targets` (`host:port` admin addresses).
    pub fn new(targets: Vec<String>, window: Duration, quantile: f64) -> Self {
        Embedded {
            targets,
            quantile,
            scraper: exposition::Scraper::new(Duration::from_secs(3)),
            history: exposition::History::new(window),
        }
    }

    async fn fetch(&mut self, now_ms: u64) -> Result<Snapshot, SignalError> {
        let mut errors = Vec::new();
        let mut any = false;
        for target in &self.targets {
            match self.scraper.scrape(target).await {
                Ok(sample) => {
                    any = true;
                    self.history.record(target, now_ms, sample);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "scrape failed");
                    errors.push(e);
                    // A target that cannot be scraped contributes nothing fresh.
                    self.history.forget(target);
                }
            }
        }
        if !any {
            return Err(SignalError::Scrape(errors.join("; ")));
        }
        let (span_ms, totals) = self.history.deltas();
        let mut snapshot = Snapshot::new();
        if span_ms == 0 {
            // One sample so far: nothing to compute a rate from yet.
            return Ok(snapshot);
        }
        for ((cluster, endpoint), d) in totals {
            snapshot.entry(cluster).or_default().insert(
                endpoint,
                Signals {
                    requests: d.requests,
                    rps: d.requests * 1000.0 / span_ms as f64,
                    success_rate: if d.requests > 0.0 {
                        (d.requests - d.failures) / d.requests
                    } else {
                        1.0
                    },
                    latency: d.quantile(self.quantile).unwrap_or(0.0),
                    sampled_at_ms: now_ms,
                },
            );
        }
        Ok(snapshot)
    }
}

// === impl Prometheus ===

/// Queries Prometheus with configurable PromQL.
pub struct Prometheus {
    client: gofe_prom::Client,
    queries: BTreeMap<String, String>,
}

impl Prometheus {
    /// A client for `config.url` with the queries rendered for `window` and `quantile`.
    pub fn new(
        config: &PrometheusConfig,
        window: Duration,
        quantile: f64,
    ) -> Result<Self, SignalError> {
        let client = gofe_prom::Client::new(&gofe_prom::ClientConfig {
            timeout: config.timeout,
            ..gofe_prom::ClientConfig::new(&config.url)
        })
        .map_err(SignalError::PrometheusClient)?;
        let w = gofe_yaml::duration::format(window);
        let render = |q: &str| {
            q.replace("{window}", &w)
                .replace("{quantile}", &quantile.to_string())
        };
        let queries = [
            ("requests", &config.requests),
            ("rps", &config.rps),
            ("success_rate", &config.success_rate),
            ("latency", &config.latency),
            ("last_sample", &config.last_sample),
        ]
        .into_iter()
        .map(|(k, q)| (k.to_owned(), render(q)))
        .collect();
        Ok(Prometheus { client, queries })
    }

    /// The query `name`'s value per (cluster, endpoint); series without both labels (and a
    /// scalar) are ignored.
    async fn vector(&self, name: &str) -> Result<BTreeMap<(String, String), f64>, SignalError> {
        let query = self.queries.get(name).map_or("", String::as_str);
        let samples =
            self.client
                .query(query, None)
                .await
                .map_err(|source| SignalError::Prometheus {
                    name: name.to_owned(),
                    query: query.to_owned(),
                    source,
                })?;
        let mut out = BTreeMap::new();
        for mut sample in samples {
            let (Some(c), Some(e)) = (
                sample.labels.remove("cluster"),
                sample.labels.remove("endpoint"),
            ) else {
                continue;
            };
            out.insert((c, e), sample.value);
        }
        Ok(out)
    }

    async fn fetch(&mut self, now_ms: u64) -> Result<Snapshot, SignalError> {
        let requests = self.vector("requests").await?;
        let rps = self.vector("rps").await?;
        let success = self.vector("success_rate").await?;
        let latency = self.vector("latency").await?;
        let last = self.vector("last_sample").await?;
        let unix_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut snapshot = Snapshot::new();
        for (key, n) in &requests {
            // A series with no newest-sample time is treated as missing, not as fresh.
            let Some(ts) = last.get(key) else { continue };
            let age_ms = ((unix_now - ts).max(0.0) * 1000.0) as u64;
            let signals = Signals {
                requests: *n,
                rps: rps.get(key).copied().unwrap_or(0.0),
                // NaN (no requests in the window) is not "all failed": count it as no data.
                success_rate: success
                    .get(key)
                    .copied()
                    .filter(|v| v.is_finite())
                    .unwrap_or(1.0),
                latency: latency
                    .get(key)
                    .copied()
                    .filter(|v| v.is_finite())
                    .unwrap_or(0.0),
                sampled_at_ms: now_ms.saturating_sub(age_ms),
            };
            snapshot
                .entry(key.0.clone())
                .or_default()
                .insert(key.1.clone(), signals);
        }
        Ok(snapshot)
    }
}

#[cfg(test)]
mod tests;
