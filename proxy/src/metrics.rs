//! The proxy's Prometheus metrics.
//!
//! Every series a request touches is resolved to a handle when the configuration is applied
//! ([`EndpointStats`], [`ListenerStats`], [`ClusterStats`]), so the hot path only bumps atomics:
//! no label lookup, no lock, no allocation. The names and labels are the contract the controller
//! and the metrics adapter consume; the README lists them with the PromQL that reads them.

use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::health::HealthSource;

/// Latency histogram buckets, in seconds: 0.5 ms to 30 s.
pub(crate) const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

const CODE_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// All metric families of one proxy, registered in its own registry.
pub(crate) struct Metrics {
    registry: Registry,
    upstream_requests: IntCounterVec,
    upstream_duration: HistogramVec,
    upstream_active: IntGaugeVec,
    upstream_pending: IntGaugeVec,
    pub(crate) upstream_cx_active: IntGaugeVec,
    pub(crate) upstream_cx_total: IntCounterVec,
    pub(crate) upstream_connect_failures: IntCounterVec,
    /// TLS handshakes with an endpoint that failed, by cluster and reason.
    pub(crate) upstream_tls_errors: IntCounterVec,
    upstream_timeouts: IntCounterVec,
    upstream_no_healthy: IntCounterVec,
    endpoint_weight: IntGaugeVec,
    endpoint_health: IntGaugeVec,
    endpoint_effective_weight: IntGaugeVec,
    downstream_requests: IntCounterVec,
    downstream_active: IntGaugeVec,
    downstream_aborted: IntCounterVec,
    downstream_duration: HistogramVec,
    downstream_cx_active: IntGaugeVec,
    downstream_cx_total: IntCounterVec,
    pub(crate) config_version: IntGauge,
    pub(crate) config_reloads: IntCounterVec,
    breaker_state: IntGaugeVec,
    ejections_total: IntCounterVec,
    ejections_active: IntGaugeVec,
    ejections_overflow: IntCounterVec,
    overflows: IntCounterVec,
    retries: IntCounterVec,
    panic: IntCounterVec,
    downstream_cx_overflow: IntCounterVec,
    downstream_cx_flood: IntCounterVec,
    downstream_cx_no_chain: IntCounterVec,
    /// `gofe_rbac_denied_total{listener,action,policy}`.
    pub(crate) rbac_denied: IntCounterVec,
    /// `gofe_access_log_dropped_total{listener}`.
    pub(crate) access_log_dropped: IntCounterVec,
    /// `gofe_tracing_spans_exported_total{listener}`.
    pub(crate) tracing_exported: IntCounterVec,
    /// `gofe_tracing_spans_dropped_total{listener}`.
    pub(crate) tracing_dropped: IntCounterVec,
    /// `gofe_tracing_spans_failed_total{listener}`.
    pub(crate) tracing_failed: IntCounterVec,
    /// `gofe_fault_injected_total{route,kind}`.
    pub(crate) fault_injected: IntCounterVec,
    /// `gofe_fault_overflow_total{route}`.
    pub(crate) fault_overflow: IntCounterVec,
    /// `gofe_fault_active{listener}`.
    pub(crate) fault_active: IntGaugeVec,
    /// `gofe_ratelimit_allowed_total{route}`.
    ratelimit_allowed: IntCounterVec,
    /// `gofe_ratelimit_limited_total{route}`.
    ratelimit_limited: IntCounterVec,
    /// `gofe_ratelimit_enforced_total{route}`.
    ratelimit_enforced: IntCounterVec,
    /// `gofe_cluster_ratelimit_allowed_total{cluster}`.
    cluster_ratelimit_allowed: IntCounterVec,
    /// `gofe_cluster_ratelimit_limited_total{cluster}`.
    cluster_ratelimit_limited: IntCounterVec,
    /// `gofe_cluster_ratelimit_enforced_total{cluster}`.
    cluster_ratelimit_enforced: IntCounterVec,
    /// `gofe_shadow_requests_total{cluster,result}`.
    shadow_requests: IntCounterVec,
    /// `gofe_shadow_requests_active{cluster}`.
    shadow_active: IntGaugeVec,
    /// Registered when an xDS client starts (a file-configured proxy has no such series).
    xds: std::sync::OnceLock<XdsMetrics>,
    /// `gofe_tcp_proxy_connections_total{stat_prefix}`.
    tcp_connections: IntCounterVec,
    /// `gofe_tcp_proxy_connections_active{stat_prefix}`.
    tcp_active: IntGaugeVec,
    /// `gofe_tcp_proxy_received_bytes_total{stat_prefix}`.
    tcp_received: IntCounterVec,
    /// `gofe_tcp_proxy_sent_bytes_total{stat_prefix}`.
    tcp_sent: IntCounterVec,
    /// `gofe_tcp_proxy_idle_timeouts_total{stat_prefix}`.
    tcp_idle: IntCounterVec,
    /// `gofe_tcp_proxy_failures_total{stat_prefix,reason}`.
    tcp_failures: IntCounterVec,
}

/// The xDS client's series (Envoy's `control_plane.*` and per-type `update_*` stats).
pub(crate) struct XdsMetrics {
    /// `gofe_xds_connected`.
    pub(crate) connected: IntGauge,
    /// `gofe_xds_disconnects_total`.
    pub(crate) disconnects: IntCounter,
    /// `gofe_xds_update_accepted_total{type}`.
    pub(crate) accepted: IntCounterVec,
    /// `gofe_xds_update_rejected_total{type}`.
    pub(crate) rejected: IntCounterVec,
    /// `gofe_xds_version_info{type,version}`.
    pub(crate) version: IntGaugeVec,
    /// `gofe_xds_last_rejection_info{type,error}`.
    pub(crate) last_rejection: IntGaugeVec,
    /// `gofe_xds_init_fetch_timeout_total`.
    pub(crate) init_fetch_timeouts: IntCounter,
}

/// Circuit-breaker overflow kinds, in `ClusterStats::overflow` order.
pub(crate) const OVERFLOW_KINDS: [&str; 4] = ["connections", "pending", "requests", "retries"];

fn register<C: Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    registry
        .register(Box::new(c.clone()))
        .expect("metric names are unique and valid");
    c
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(
        r,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let r = Registry::new();
        r.register(Box::new(gofe_prom::process::ProcessCollector::new("proxy")))
            .expect("unique metrics");
        let ce = &["cluster", "endpoint"];
        Metrics {
            upstream_requests: counter_vec(
                &r,
                "gofe_upstream_requests_total",
                "Requests sent to an upstream endpoint, by response status class (proxy-generated 502/503/504 for that endpoint included).",
                &["cluster", "endpoint", "code_class"],
            ),
            upstream_duration: register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "gofe_upstream_request_duration_seconds",
                        "Time from sending a request to an endpoint until its response headers arrived (or the request failed).",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    ce,
                )
                .expect("valid metric"),
            ),
            upstream_active: gauge_vec(
                &r,
                "gofe_upstream_requests_active",
                "Requests in flight to an endpoint, until their response body ends.",
                ce,
            ),
            upstream_pending: gauge_vec(
                &r,
                "gofe_upstream_requests_pending",
                "Requests of a cluster waiting for an upstream connection or for response headers.",
                &["cluster"],
            ),
            upstream_cx_active: gauge_vec(
                &r,
                "gofe_upstream_connections_active",
                "Open connections to an endpoint.",
                ce,
            ),
            upstream_cx_total: counter_vec(
                &r,
                "gofe_upstream_connections_total",
                "Connections opened to an endpoint.",
                ce,
            ),
            upstream_connect_failures: counter_vec(
                &r,
                "gofe_upstream_connect_failures_total",
                "Failed connection attempts to an endpoint (refused, unreachable, connect timeout).",
                ce,
            ),
            upstream_tls_errors: counter_vec(
                &r,
                "gofe_upstream_tls_errors_total",
                "Failed TLS handshakes with a cluster's endpoints, by reason (unknown_ca, san_mismatch, bad_certificate, peer_alert, alpn, timeout, handshake).",
                &["cluster", "reason"],
            ),
            upstream_timeouts: counter_vec(
                &r,
                "gofe_upstream_request_timeouts_total",
                "Requests of a cluster answered 504 because the route timeout expired.",
                &["cluster"],
            ),
            upstream_no_healthy: counter_vec(
                &r,
                "gofe_upstream_no_healthy_total",
                "Requests of a cluster answered 503 because no endpoint could take them.",
                &["cluster"],
            ),
            endpoint_weight: gauge_vec(
                &r,
                "gofe_endpoint_weight",
                "Configured load-balancing weight of an endpoint (0 = drained).",
                ce,
            ),
            endpoint_health: gauge_vec(
                &r,
                "gofe_endpoint_health",
                "Whether an endpoint may serve, as each source sees it: 1 yes, 0 no. source=\"config\" (a configuration file) or \"controller\" (xDS health_status) is its configured health (0: unhealthy or draining); source=\"outlier\" is the proxy's own passive detection (0: ejected or half-open).",
                &["cluster", "endpoint", "source"],
            ),
            endpoint_effective_weight: gauge_vec(
                &r,
                "gofe_endpoint_effective_weight",
                "The weight the balancer gives an endpoint now: its configured weight while every source says it may serve, else 0 (panic mode, which ignores health, aside).",
                ce,
            ),
            downstream_requests: counter_vec(
                &r,
                "gofe_downstream_requests_total",
                "Requests answered on a listener, by the status class returned to the client (those whose client went away first are gofe_downstream_requests_aborted_total).",
                &["listener", "code_class"],
            ),
            downstream_active: gauge_vec(
                &r,
                "gofe_downstream_requests_active",
                "Requests in progress on a listener.",
                &["listener"],
            ),
            downstream_aborted: counter_vec(
                &r,
                "gofe_downstream_requests_aborted_total",
                "Requests on a listener whose client went away before the proxy had a response for them (mid-body, or while an endpoint was working on it); never counted against an endpoint.",
                &["listener"],
            ),
            downstream_duration: register(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "gofe_downstream_request_duration_seconds",
                        "Time from a routed request's arrival until its response was sent whole (or abandoned), by listener and route (its name, or VHOST/INDEX).",
                    )
                    .buckets(LATENCY_BUCKETS.to_vec()),
                    &["listener", "route"],
                )
                .expect("valid metric"),
            ),
            downstream_cx_active: gauge_vec(
                &r,
                "gofe_downstream_connections_active",
                "Open client connections on a listener.",
                &["listener"],
            ),
            downstream_cx_total: counter_vec(
                &r,
                "gofe_downstream_connections_total",
                "Client connections accepted on a listener.",
                &["listener"],
            ),
            access_log_dropped: counter_vec(
                &r,
                "gofe_access_log_dropped_total",
                "Access-log lines of a listener dropped because its writer had fallen behind (its buffer was full); requests never wait for the log.",
                &["listener"],
            ),
            tracing_exported: counter_vec(
                &r,
                "gofe_tracing_spans_exported_total",
                "Spans of a listener's requests the OTLP collector accepted.",
                &["listener"],
            ),
            tracing_dropped: counter_vec(
                &r,
                "gofe_tracing_spans_dropped_total",
                "Spans of a listener's requests dropped because the export queue was full (max_cache_size); requests never wait for the exporter.",
                &["listener"],
            ),
            tracing_failed: counter_vec(
                &r,
                "gofe_tracing_spans_failed_total",
                "Spans of a listener's requests lost because their export failed (collector unreachable, too slow, or not 2xx); exports are not retried.",
                &["listener"],
            ),
            fault_injected: counter_vec(
                &r,
                "gofe_fault_injected_total",
                "Faults the fault filter injected on a route, by kind (delay or abort); a request both delayed and aborted counts in both.",
                &["route", "kind"],
            ),
            fault_overflow: counter_vec(
                &r,
                "gofe_fault_overflow_total",
                "Faults of a route not injected because its max_active_faults were active (Envoy's faults_overflow).",
                &["route"],
            ),
            fault_active: gauge_vec(
                &r,
                "gofe_fault_active",
                "Requests of a listener being faulted now (delayed, or aborted until their response ends).",
                &["listener"],
            ),
            ratelimit_allowed: counter_vec(
                &r,
                "gofe_ratelimit_allowed_total",
                "Requests of a route that took a token from its local rate limit's bucket (Envoy's ok).",
                &["route"],
            ),
            ratelimit_limited: counter_vec(
                &r,
                "gofe_ratelimit_limited_total",
                "Requests of a route that found its local rate limit's bucket empty (Envoy's rate_limited), enforced or not.",
                &["route"],
            ),
            ratelimit_enforced: counter_vec(
                &r,
                "gofe_ratelimit_enforced_total",
                "Rate-limited requests of a route answered with the limit's status (429 by default) instead of going on.",
                &["route"],
            ),
            cluster_ratelimit_allowed: counter_vec(
                &r,
                "gofe_cluster_ratelimit_allowed_total",
                "Upstream attempts to a cluster that took a token from the cluster's local rate limit.",
                &["cluster"],
            ),
            cluster_ratelimit_limited: counter_vec(
                &r,
                "gofe_cluster_ratelimit_limited_total",
                "Upstream attempts to a cluster that found its local rate limit's bucket empty, enforced or not.",
                &["cluster"],
            ),
            cluster_ratelimit_enforced: counter_vec(
                &r,
                "gofe_cluster_ratelimit_enforced_total",
                "Rate-limited attempts to a cluster not made: a first attempt answered with the limit's status, a retry not sent.",
                &["cluster"],
            ),
            shadow_requests: counter_vec(
                &r,
                "gofe_shadow_requests_total",
                "Mirrored copies of requests meant for a shadow cluster (request_mirror_policies), by result: ok (a response other than 5xx), 5xx, failed (no response: no healthy endpoint, connect failure, reset, timeout), dropped (the cluster's copies in flight were at its max_requests), body_too_large (a body over 1 MiB), body_incomplete (the request's body was not read whole). Never counted in the gofe_upstream_* series.",
                &["cluster", "result"],
            ),
            shadow_active: gauge_vec(
                &r,
                "gofe_shadow_requests_active",
                "Mirrored copies of requests in flight to a shadow cluster (waiting for the request's body, or for the shadow's response).",
                &["cluster"],
            ),
            config_version: register(
                &r,
                IntGauge::new(
                    "gofe_config_version",
                    "Version number of the active configuration (increments on every applied change).",
                )
                .expect("valid metric"),
            ),
            config_reloads: counter_vec(
                &r,
                "gofe_config_reloads_total",
                "Configuration loads, by result (success, failure).",
                &["result"],
            ),
            breaker_state: gauge_vec(
                &r,
                "gofe_endpoint_breaker_state",
                "Outlier-detection breaker of an endpoint: 0 closed (serving), 1 open (ejected), 2 half-open (trial requests).",
                ce,
            ),
            ejections_total: counter_vec(
                &r,
                "gofe_outlier_ejections_total",
                "Endpoint ejections by reason (consecutive_5xx, consecutive_gateway_failure, failure_percentage, failed_trial).",
                &["cluster", "endpoint", "reason"],
            ),
            ejections_active: gauge_vec(
                &r,
                "gofe_outlier_ejections_active",
                "Endpoints of a cluster currently ejected or half-open.",
                &["cluster"],
            ),
            ejections_overflow: counter_vec(
                &r,
                "gofe_outlier_ejections_overflow_total",
                "Ejections skipped because max_ejection_percent of the cluster was already out.",
                &["cluster"],
            ),
            overflows: counter_vec(
                &r,
                "gofe_circuit_breaker_overflows_total",
                "Requests that hit a circuit-breaker limit, by kind (connections: queued for a connection; pending, requests: answered 503; retries: not retried).",
                &["cluster", "kind"],
            ),
            retries: counter_vec(
                &r,
                "gofe_upstream_retries_total",
                "Retried attempts.",
                &["cluster"],
            ),
            panic: counter_vec(
                &r,
                "gofe_upstream_panic_total",
                "Requests balanced over all endpoints because too few were healthy (panic mode).",
                &["cluster"],
            ),
            downstream_cx_overflow: counter_vec(
                &r,
                "gofe_downstream_connections_overflow_total",
                "Client connections closed at once because the listener was at max_connections.",
                &["listener"],
            ),
            downstream_cx_no_chain: counter_vec(
                &r,
                "gofe_downstream_connections_no_filter_chain_total",
                "Client connections closed because none of the listener's filter chains matched them and it has no default chain (Envoy's no_filter_chain_match).",
                &["listener"],
            ),
            downstream_cx_flood: counter_vec(
                &r,
                "gofe_downstream_connections_flood_total",
                "HTTP/2 client connections closed for flooding the proxy with control frames it must answer (PING, SETTINGS): more than 1000 at once, refilled at 100/s (Envoy's max_outbound_control_frames).",
                &["listener"],
            ),
            rbac_denied: counter_vec(
                &r,
                "gofe_rbac_denied_total",
                "Requests the listener's RBAC filter denied (403), by its action and the policy that decided: the matching policy under DENY, none under ALLOW (no policy matched).",
                &["listener", "action", "policy"],
            ),
            tcp_connections: counter_vec(
                &r,
                "gofe_tcp_proxy_connections_total",
                "Client connections a tcp_proxy opened an upstream connection for, by stat_prefix (the listener's name unless set).",
                &["stat_prefix"],
            ),
            tcp_active: gauge_vec(
                &r,
                "gofe_tcp_proxy_connections_active",
                "tcp_proxy connections open now (client and upstream both connected).",
                &["stat_prefix"],
            ),
            tcp_received: counter_vec(
                &r,
                "gofe_tcp_proxy_received_bytes_total",
                "Bytes a tcp_proxy read from its clients and wrote upstream.",
                &["stat_prefix"],
            ),
            tcp_sent: counter_vec(
                &r,
                "gofe_tcp_proxy_sent_bytes_total",
                "Bytes a tcp_proxy read from upstreams and wrote to its clients.",
                &["stat_prefix"],
            ),
            tcp_idle: counter_vec(
                &r,
                "gofe_tcp_proxy_idle_timeouts_total",
                "tcp_proxy connections closed after idle_timeout without a byte either way.",
                &["stat_prefix"],
            ),
            tcp_failures: counter_vec(
                &r,
                "gofe_tcp_proxy_failures_total",
                "tcp_proxy client connections closed without an upstream: connect_failure, no_upstream (no endpoint, or no original destination), loop (a passthrough whose original destination is the proxy's own port).",
                &["stat_prefix", "reason"],
            ),
            registry: r,
            xds: std::sync::OnceLock::new(),
        }
    }

    /// The registry, for series registered by their own module (the workload identity's).
    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The xDS client's series, registered on first use.
    pub(crate) fn xds(&self) -> &XdsMetrics {
        self.xds.get_or_init(|| {
            let r = &self.registry;
            let counter = |name: &str, help: &str| {
                register(r, IntCounter::new(name, help).expect("valid metric"))
            };
            XdsMetrics {
                connected: register(
                    r,
                    IntGauge::new(
                        "gofe_xds_connected",
                        "1 while the ADS stream to the control plane is open, else 0 (Envoy's control_plane.connected_state).",
                    )
                    .expect("valid metric"),
                ),
                disconnects: counter(
                    "gofe_xds_disconnects_total",
                    "Failed connection attempts and broken ADS streams.",
                ),
                accepted: counter_vec(
                    r,
                    "gofe_xds_update_accepted_total",
                    "xDS responses accepted (ACKed), by type (cds, eds, lds, rds).",
                    &["type"],
                ),
                rejected: counter_vec(
                    r,
                    "gofe_xds_update_rejected_total",
                    "xDS responses rejected (NACKed), by type; the proxy kept its last good configuration.",
                    &["type"],
                ),
                version: gauge_vec(
                    r,
                    "gofe_xds_version_info",
                    "1 for the last accepted version_info of each type.",
                    &["type", "version"],
                ),
                last_rejection: gauge_vec(
                    r,
                    "gofe_xds_last_rejection_info",
                    "1 for the error_detail of the last rejected response of each type (at most 256 characters).",
                    &["type", "error"],
                ),
                init_fetch_timeouts: counter(
                    "gofe_xds_init_fetch_timeout_total",
                    "Initial fetches that initial_fetch_timeout cut short (the proxy then reported ready with what it had).",
                ),
            }
        })
    }

    pub(crate) fn health(&self, cluster: &str, endpoint: &str) -> crate::health::HealthStats {
        crate::health::HealthStats {
            state: self.breaker_state.with_label_values(&[cluster, endpoint]),
            outlier_healthy: self.endpoint_health.with_label_values(&[
                cluster,
                endpoint,
                crate::health::OUTLIER_SOURCE,
            ]),
            effective_weight: self
                .endpoint_effective_weight
                .with_label_values(&[cluster, endpoint]),
            ejections: crate::health::REASONS.map(|reason| {
                self.ejections_total
                    .with_label_values(&[cluster, endpoint, reason.as_str()])
            }),
            active: self.ejections_active.with_label_values(&[cluster]),
        }
    }

    /// The registry in Prometheus text exposition format.
    pub(crate) fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding into memory cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }

    /// The handles of an endpoint's series; sets its configured weight and health (`healthy`,
    /// as `source` set it).
    pub(crate) fn endpoint(
        &self,
        cluster: &str,
        endpoint: &str,
        weight: u32,
        healthy: bool,
        source: HealthSource,
    ) -> EndpointStats {
        let labels = [cluster, endpoint];
        self.endpoint_weight
            .with_label_values(&labels)
            .set(i64::from(weight));
        for s in HealthSource::ALL {
            if s == source {
                self.endpoint_health
                    .with_label_values(&[cluster, endpoint, s.as_str()])
                    .set(i64::from(healthy));
            } else {
                let _ = self
                    .endpoint_health
                    .remove_label_values(&[cluster, endpoint, s.as_str()]);
            }
        }
        EndpointStats {
            requests: CODE_CLASSES.map(|class| {
                self.upstream_requests
                    .with_label_values(&[cluster, endpoint, class])
            }),
            duration: self.upstream_duration.with_label_values(&labels),
            active: self.upstream_active.with_label_values(&labels),
        }
    }

    pub(crate) fn cluster(&self, cluster: &str) -> ClusterStats {
        ClusterStats {
            pending: self.upstream_pending.with_label_values(&[cluster]),
            timeouts: self.upstream_timeouts.with_label_values(&[cluster]),
            no_healthy: self.upstream_no_healthy.with_label_values(&[cluster]),
            overflow: OVERFLOW_KINDS.map(|kind| self.overflows.with_label_values(&[cluster, kind])),
            retries: self.retries.with_label_values(&[cluster]),
            panic: self.panic.with_label_values(&[cluster]),
            ejections_overflow: self.ejections_overflow.with_label_values(&[cluster]),
            ejections_active: self.ejections_active.with_label_values(&[cluster]),
        }
    }

    pub(crate) fn listener(&self, listener: &str) -> ListenerStats {
        ListenerStats {
            requests: CODE_CLASSES.map(|class| {
                self.downstream_requests
                    .with_label_values(&[listener, class])
            }),
            active: self.downstream_active.with_label_values(&[listener]),
            aborted: self.downstream_aborted.with_label_values(&[listener]),
            cx_active: self.downstream_cx_active.with_label_values(&[listener]),
            cx_total: self.downstream_cx_total.with_label_values(&[listener]),
            cx_overflow: self.downstream_cx_overflow.with_label_values(&[listener]),
            cx_flood: self.downstream_cx_flood.with_label_values(&[listener]),
            cx_no_chain: self.downstream_cx_no_chain.with_label_values(&[listener]),
        }
    }

    /// The series of a `tcp_proxy` labelled `stat_prefix`.
    pub(crate) fn tcp(&self, stat_prefix: &str) -> crate::tcp::TcpStats {
        let failure = |reason| self.tcp_failures.with_label_values(&[stat_prefix, reason]);
        crate::tcp::TcpStats {
            connections: self.tcp_connections.with_label_values(&[stat_prefix]),
            active: self.tcp_active.with_label_values(&[stat_prefix]),
            received: self.tcp_received.with_label_values(&[stat_prefix]),
            sent: self.tcp_sent.with_label_values(&[stat_prefix]),
            idle_timeouts: self.tcp_idle.with_label_values(&[stat_prefix]),
            connect_failures: failure("connect_failure"),
            no_upstream: failure("no_upstream"),
            loops: failure("loop"),
        }
    }

    /// The histogram of a route's request durations; `route` is its name.
    pub(crate) fn route_duration(&self, listener: &str, route: &str) -> Histogram {
        self.downstream_duration
            .with_label_values(&[listener, route])
    }

    /// The counters of a route's injected faults; `route` is its name.
    pub(crate) fn fault(&self, route: &str) -> crate::fault::FaultCounters {
        crate::fault::FaultCounters {
            delays: self.fault_injected.with_label_values(&[route, "delay"]),
            aborts: self.fault_injected.with_label_values(&[route, "abort"]),
            overflow: self.fault_overflow.with_label_values(&[route]),
        }
    }

    /// The counters of a cluster's local rate limit.
    pub(crate) fn cluster_ratelimit(&self, cluster: &str) -> crate::ratelimit::RateLimitCounters {
        crate::ratelimit::RateLimitCounters {
            allowed: self.cluster_ratelimit_allowed.with_label_values(&[cluster]),
            limited: self.cluster_ratelimit_limited.with_label_values(&[cluster]),
            enforced: self
                .cluster_ratelimit_enforced
                .with_label_values(&[cluster]),
        }
    }

    /// The counters of a route's local rate limit; `route` is its name.
    pub(crate) fn ratelimit(&self, route: &str) -> crate::ratelimit::RateLimitCounters {
        crate::ratelimit::RateLimitCounters {
            allowed: self.ratelimit_allowed.with_label_values(&[route]),
            limited: self.ratelimit_limited.with_label_values(&[route]),
            enforced: self.ratelimit_enforced.with_label_values(&[route]),
        }
    }

    /// The counters of the copies mirrored to `cluster`.
    pub(crate) fn shadow(&self, cluster: &str) -> crate::mirror::ShadowCounters {
        crate::mirror::ShadowCounters {
            results: crate::mirror::RESULTS
                .map(|result| self.shadow_requests.with_label_values(&[cluster, result])),
            active: self.shadow_active.with_label_values(&[cluster]),
        }
    }

    /// Drops the series of an endpoint that left the configuration.
    pub(crate) fn forget_endpoint(&self, cluster: &str, endpoint: &str) {
        let labels = [cluster, endpoint];
        for class in CODE_CLASSES {
            let _ = self
                .upstream_requests
                .remove_label_values(&[cluster, endpoint, class]);
        }
        let _ = self.upstream_duration.remove_label_values(&labels);
        let _ = self.upstream_active.remove_label_values(&labels);
        let _ = self.endpoint_weight.remove_label_values(&labels);
        let _ = self.upstream_cx_total.remove_label_values(&labels);
        let _ = self.upstream_connect_failures.remove_label_values(&labels);
        let _ = self.breaker_state.remove_label_values(&labels);
        let _ = self.endpoint_effective_weight.remove_label_values(&labels);
        for source in HealthSource::ALL
            .map(HealthSource::as_str)
            .into_iter()
            .chain([crate::health::OUTLIER_SOURCE])
        {
            let _ = self
                .endpoint_health
                .remove_label_values(&[cluster, endpoint, source]);
        }
        for reason in crate::health::REASONS {
            let _ = self
                .ejections_total
                .remove_label_values(&[cluster, endpoint, reason.as_str()]);
        }
        // Connections still open keep their gauge until they close; the series goes then.
    }

    /// Drops the series of a cluster that left the configuration.
    pub(crate) fn forget_cluster(&self, cluster: &str) {
        let _ = self.upstream_pending.remove_label_values(&[cluster]);
        let _ = self.upstream_timeouts.remove_label_values(&[cluster]);
        let _ = self.upstream_no_healthy.remove_label_values(&[cluster]);
        let _ = self.ejections_active.remove_label_values(&[cluster]);
        let _ = self.ejections_overflow.remove_label_values(&[cluster]);
        let _ = self.retries.remove_label_values(&[cluster]);
        let _ = self.panic.remove_label_values(&[cluster]);
        for kind in OVERFLOW_KINDS {
            let _ = self.overflows.remove_label_values(&[cluster, kind]);
        }
        for result in crate::mirror::RESULTS {
            let _ = self.shadow_requests.remove_label_values(&[cluster, result]);
        }
        let _ = self.shadow_active.remove_label_values(&[cluster]);
    }
}

/// Index into a `[_; 5]` of status classes.
#[inline]
pub(crate) fn class_index(status: u16) -> usize {
    (usize::from(status / 100)).clamp(1, 5) - 1
}

/// Handles for one endpoint's series.
pub(crate) struct EndpointStats {
    requests: [IntCounter; 5],
    duration: Histogram,
    pub(crate) active: IntGauge,
}

impl EndpointStats {
    /// Exchanges finished so far, and of those how many were 5xx (for `/clusters`).
    pub(crate) fn totals(&self) -> (u64, u64) {
        let counts = self.requests.each_ref().map(IntCounter::get);
        (counts.iter().sum(), counts[4])
    }

    /// Everything the endpoint's series have counted so far, for a load report: read from the
    /// same counters the hot path bumps, on the reporter's timer, never per request.
    pub(crate) fn load_totals(&self) -> LoadTotals {
        let counts = self.requests.each_ref().map(IntCounter::get);
        LoadTotals {
            finished: counts.iter().sum(),
            errors: counts[4],
            latency_count: self.duration.get_sample_count(),
            latency_seconds: self.duration.get_sample_sum(),
            active: u64::try_from(self.active.get()).unwrap_or(0),
        }
    }

    /// Records one finished upstream exchange.
    #[inline]
    pub(crate) fn record(&self, status: u16, elapsed: Duration) {
        self.requests[class_index(status)].inc();
        self.duration.observe(elapsed.as_secs_f64());
    }
}

/// An endpoint's totals since its series were created (see [`EndpointStats::load_totals`]).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct LoadTotals {
    /// Exchanges finished (every status class).
    pub(crate) finished: u64,
    /// Of those, 5xx (proxy-generated 502/503/504 for the endpoint included).
    pub(crate) errors: u64,
    /// Latencies observed, and their sum in seconds.
    pub(crate) latency_count: u64,
    /// See `latency_count`.
    pub(crate) latency_seconds: f64,
    /// In flight now (a gauge).
    pub(crate) active: u64,
}

/// Handles for one cluster's series.
pub(crate) struct ClusterStats {
    pub(crate) pending: IntGauge,
    pub(crate) timeouts: IntCounter,
    pub(crate) no_healthy: IntCounter,
    /// By [`OVERFLOW_KINDS`].
    pub(crate) overflow: [IntCounter; 4],
    pub(crate) retries: IntCounter,
    pub(crate) panic: IntCounter,
    pub(crate) ejections_overflow: IntCounter,
    /// Endpoints not closed (the same gauge every endpoint's health updates).
    pub(crate) ejections_active: IntGauge,
}

/// Handles for one listener's series.
pub(crate) struct ListenerStats {
    pub(crate) requests: [IntCounter; 5],
    pub(crate) active: IntGauge,
    /// Requests whose client went away before it could be answered.
    pub(crate) aborted: IntCounter,
    pub(crate) cx_active: IntGauge,
    pub(crate) cx_total: IntCounter,
    pub(crate) cx_overflow: IntCounter,
    /// HTTP/2 connections closed for a control-frame flood.
    pub(crate) cx_flood: IntCounter,
    /// Connections no filter chain matched.
    pub(crate) cx_no_chain: IntCounter,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_handles_land_in_the_text_output() {
        let m = Metrics::new();
        let ep = m.endpoint("web", "127.0.0.1:1", 3, true, HealthSource::Config);
        ep.record(503, Duration::from_millis(2));
        ep.record(200, Duration::from_millis(2));
        ep.record(200, Duration::from_millis(2));
        let text = m.render();
        assert!(text.contains(
            r#"gofe_upstream_requests_total{cluster="web",code_class="2xx",endpoint="127.0.0.1:1"} 2"#
        ));
        assert!(text.contains(
            r#"gofe_upstream_requests_total{cluster="web",code_class="5xx",endpoint="127.0.0.1:1"} 1"#
        ));
        assert!(text.contains(
            r#"gofe_upstream_request_duration_seconds_count{cluster="web",endpoint="127.0.0.1:1"} 3"#
        ));
        assert!(text.contains(r#"gofe_endpoint_weight{cluster="web",endpoint="127.0.0.1:1"} 3"#));
        m.forget_endpoint("web", "127.0.0.1:1");
        assert!(!m.render().contains("127.0.0.1:1"));
    }

    #[test]
    fn status_classes() {
        assert_eq!(class_index(100), 0);
        assert_eq!(class_index(204), 1);
        assert_eq!(class_index(308), 2);
        assert_eq!(class_index(404), 3);
        assert_eq!(class_index(599), 4);
        assert_eq!(class_index(0), 0);
        assert_eq!(class_index(999), 4);
    }
}
