//! The adapter's own Prometheus metrics, served at `/metrics` on its TLS port (like `/healthz`,
//! without a client certificate: they hold counts, no metric values).
//!
//! - `gofe_adapter_requests_total{group,code}`: API requests answered (every path but the
//!   health and metrics ones), by API group (`external`, `custom`, `resource`, or `other`:
//!   discovery, OpenAPI, debug) and HTTP status, 401/403 refusals included.
//! - `gofe_adapter_cache_requests_total{result}`: answers from the cache (`hit`) or from a
//!   new query (`miss`).
//! - `gofe_adapter_prometheus_query_duration_seconds`: Prometheus query latency (a histogram).
//! - `gofe_adapter_prometheus_query_errors_total{kind}`: failed Prometheus queries by kind
//!   (`unavailable`, `timeout`, `rejected`, ... as `gofe_prom` classifies them).
//! - `gofe_adapter_request_duration_seconds`: their latency (a histogram).
//! - `gofe_adapter_requestheader_generation`: which request-header settings are in force (0:
//!   none loaded yet; one more at each CA or allowed-names change).
//! - `gofe_adapter_external_rules_ready`: 1 once external rules were discovered.
//! - `gofe_adapter_resource_table{source}`: 1 for the resource table in force: `cluster`
//!   (read from the API server's discovery) or `builtin` (gofe's table, while discovery is
//!   unavailable; see [`crate::resources`]).
//! - `gofe_adapter_resource_discovery_total{result}`: reads of the cluster's discovery, `ok`
//!   or `error`.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// The adapter's metrics.
pub struct Metrics {
    registry: Registry,
    /// `gofe_adapter_requests_total{group,code}`.
    pub requests: IntCounterVec,
    /// `gofe_adapter_cache_requests_total{result}`.
    pub cache: IntCounterVec,
    /// `gofe_adapter_prometheus_query_duration_seconds`.
    pub prometheus_duration: Histogram,
    /// `gofe_adapter_prometheus_query_errors_total{kind}`.
    pub prometheus_errors: IntCounterVec,
    /// `gofe_adapter_request_duration_seconds`.
    pub duration: Histogram,
    /// `gofe_adapter_requestheader_generation`.
    pub requestheader_generation: IntGauge,
    /// `gofe_adapter_external_rules_ready`.
    pub rules_ready: IntGauge,
    /// `gofe_adapter_resource_table{source}`.
    pub resource_table: IntGaugeVec,
    /// `gofe_adapter_resource_discovery_total{result}`.
    pub resource_discovery: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric in a registry of its own.
    pub fn new() -> Self {
        let registry = Registry::new();
        registry
            .register(Box::new(gofe_prom::process::ProcessCollector::new(
                "metrics-adapter",
            )))
            .expect("unique metrics");
        let requests = IntCounterVec::new(
            Opts::new(
                "gofe_adapter_requests_total",
                "API requests answered, by API group and HTTP status code (refusals included).",
            ),
            &["group", "code"],
        )
        .expect("valid metric");
        let cache = IntCounterVec::new(
            Opts::new(
                "gofe_adapter_cache_requests_total",
                "Metric values served from the cache (hit) or by a new query (miss).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let prometheus_duration = Histogram::with_opts(
            HistogramOpts::new(
                "gofe_adapter_prometheus_query_duration_seconds",
                "Time Prometheus took to answer one query.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )
        .expect("valid metric");
        let prometheus_errors = IntCounterVec::new(
            Opts::new(
                "gofe_adapter_prometheus_query_errors_total",
                "Failed Prometheus queries, by kind of failure.",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "gofe_adapter_request_duration_seconds",
                "Time to answer an API request, Prometheus queries included.",
            )
            .buckets(vec![
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )
        .expect("valid metric");
        let requestheader_generation = IntGauge::new(
            "gofe_adapter_requestheader_generation",
            "Request-header (front-proxy CA) settings in force: 0 none loaded, one more per change.",
        )
        .expect("valid metric");
        let rules_ready = IntGauge::new(
            "gofe_adapter_external_rules_ready",
            "1 once external rules' metric names were discovered.",
        )
        .expect("valid metric");
        let resource_table = IntGaugeVec::new(
            Opts::new(
                "gofe_adapter_resource_table",
                "1 for the Kubernetes resource table in force: cluster (discovery) or builtin (discovery unavailable).",
            ),
            &["source"],
        )
        .expect("valid metric");
        let resource_discovery = IntCounterVec::new(
            Opts::new(
                "gofe_adapter_resource_discovery_total",
                "Reads of the cluster's API discovery, by result (ok, error).",
            ),
            &["result"],
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(duration.clone()),
            Box::new(cache.clone()),
            Box::new(prometheus_duration.clone()),
            Box::new(prometheus_errors.clone()),
            Box::new(requestheader_generation.clone()),
            Box::new(rules_ready.clone()),
            Box::new(resource_table.clone()),
            Box::new(resource_discovery.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        Metrics {
            registry,
            requests,
            cache,
            prometheus_duration,
            prometheus_errors,
            duration,
            requestheader_generation,
            rules_ready,
            resource_table,
            resource_discovery,
        }
    }

    /// Marks `source` as the resource table in force.
    pub fn set_resource_source(&self, source: crate::resources::TableSource) {
        for s in [
            crate::resources::TableSource::Cluster,
            crate::resources::TableSource::Builtin,
        ] {
            self.resource_table
                .with_label_values(&[s.as_str()])
                .set(i64::from(s == source));
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}
