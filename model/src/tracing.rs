//! Distributed tracing of a listener (Envoy's `HttpConnectionManager.tracing` with the
//! OpenTelemetry provider, `envoy.tracers.opentelemetry`): which requests are traced, how
//! their context travels, and where the spans go.
//!
//! ```yaml
//! tracing:
//!   random_sampling: { value: 1 }          # 1 % of new traces (Envoy's Percent)
//!   propagation: [tracecontext, b3]        # gofe's: W3C traceparent, then B3 (default: W3C only)
//!   provider:
//!     opentelemetry:
//!       service_name: "edge"
//!       http_service:
//!         http_uri: { uri: "http://127.0.0.1:4318/v1/traces", timeout: "1s" }
//! ```
//!
//! A request whose incoming context says sampled (or not) keeps that decision (parent-based
//! sampling); a new trace is sampled at `random_sampling` (or `client_sampling` when the
//! request has an `x-client-trace-id`), capped by `overall_sampling`, as in Envoy. The proxy
//! makes a SERVER span per downstream request and a CLIENT span per upstream attempt, and
//! exports them over OTLP/HTTP (protobuf) in batches; this crate only says what is wanted.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default `http_uri.timeout` of the collector: time allowed for one export.
pub const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default `max_cache_size`: spans waiting for export; more are dropped (Envoy's default).
pub const DEFAULT_MAX_CACHE_SIZE: u32 = 1024;
/// Default `batch.max_export_batch_size` (OpenTelemetry's batch span processor default).
pub const DEFAULT_MAX_EXPORT_BATCH_SIZE: u32 = 512;
/// Default `batch.schedule_delay` (OpenTelemetry's batch span processor default).
pub const DEFAULT_SCHEDULE_DELAY: Duration = Duration::from_secs(5);
/// Default `service_name` (Envoy's is `unknown_service:envoy`).
pub const DEFAULT_SERVICE_NAME: &str = "unknown_service:gofe";

/// A listener's tracing (Envoy's `HttpConnectionManager.Tracing`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// Share of new traces started for requests that carry `x-client-trace-id` (Envoy's
    /// `client_sampling`). Default 100 %.
    #[serde(default = "Percent::all", skip_serializing_if = "Percent::is_all")]
    pub client_sampling: Percent,
    /// Share of other new traces started (Envoy's `random_sampling`). Default 100 %.
    #[serde(default = "Percent::all", skip_serializing_if = "Percent::is_all")]
    pub random_sampling: Percent,
    /// Upper limit on new traces after the two above (Envoy's `overall_sampling`): a request
    /// chosen by them is traced with this probability. An incoming sampled context is not
    /// subject to it. Default 100 %.
    #[serde(default = "Percent::all", skip_serializing_if = "Percent::is_all")]
    pub overall_sampling: Percent,
    /// Where spans go (Envoy's `provider`).
    pub provider: TracingProvider,
    /// gofe's: the context formats read from requests (the first present wins, in this order)
    /// and written to upstreams (all of them). Default `[tracecontext]` (W3C `traceparent`
    /// and `tracestate`). Over xDS only the default can be expressed (Envoy's OpenTelemetry
    /// tracer speaks W3C).
    #[serde(
        default = "default_propagation",
        skip_serializing_if = "is_default_propagation"
    )]
    pub propagation: Vec<Propagation>,
    /// gofe's: how spans are batched for export. Over xDS only the defaults can be expressed.
    #[serde(default, skip_serializing_if = "BatchConfig::is_default")]
    pub batch: BatchConfig,
}

/// A share of requests, in percent (Envoy's `type.v3.Percent`): 0 to 100.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    /// The percentage, 0 to 100 (fractions allowed: `0.01` is one in ten thousand).
    pub value: f64,
}

// Equality is total on what validation lets through (0 to 100, never NaN).
impl Eq for Percent {}

impl Percent {
    /// 100 %.
    pub fn all() -> Self {
        Percent { value: 100.0 }
    }

    fn is_all(&self) -> bool {
        self.value == 100.0
    }
}

/// A trace-context format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Propagation {
    /// W3C Trace Context: `traceparent` and `tracestate` (OpenTelemetry's `tracecontext`).
    Tracecontext,
    /// B3 single header, `b3: {trace}-{span}-{sampled}` (read: also B3's multi headers).
    B3,
    /// B3 multiple headers, `x-b3-traceid`, `x-b3-spanid`, `x-b3-sampled` (read: also `b3`).
    B3multi,
}

fn default_propagation() -> Vec<Propagation> {
    vec![Propagation::Tracecontext]
}

fn is_default_propagation(p: &[Propagation]) -> bool {
    p == [Propagation::Tracecontext]
}

/// A tracing provider (Envoy's `config.trace.v3.Tracing.Http`): only OpenTelemetry.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TracingProvider {
    /// Envoy's `envoy.tracers.opentelemetry` (`OpenTelemetryConfig`).
    pub opentelemetry: OpenTelemetryConfig,
}

/// The OpenTelemetry tracer (Envoy's `OpenTelemetryConfig`), exporting OTLP/HTTP protobuf.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenTelemetryConfig {
    /// The `service.name` resource attribute of the spans. Default `unknown_service:gofe`.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// The OTLP/HTTP collector (Envoy's `http_service`). Required: gofe does not export
    /// over gRPC.
    pub http_service: HttpServiceConfig,
    /// Most spans waiting for export; more are dropped and counted in
    /// `gofe_tracing_spans_dropped_total` (Envoy's `max_cache_size`). Default 1024.
    #[serde(default = "default_max_cache_size")]
    pub max_cache_size: u32,
}

fn default_service_name() -> String {
    DEFAULT_SERVICE_NAME.to_owned()
}

fn default_max_cache_size() -> u32 {
    DEFAULT_MAX_CACHE_SIZE
}

/// An HTTP service (Envoy's `config.core.v3.HttpService`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpServiceConfig {
    /// Where exports are POSTed.
    pub http_uri: HttpUriConfig,
}

/// An HTTP URI (Envoy's `config.core.v3.HttpUri`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpUriConfig {
    /// The collector's URL, `http://host:port/path` (OTLP's is `/v1/traces`). gofe connects to
    /// its host and port itself.
    pub uri: String,
    /// Envoy's `cluster`, the cluster Envoy would reach the collector through. gofe keeps it
    /// for the round trip to xDS but does not route exports through a cluster: they go to the
    /// `uri`'s address. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Time allowed for one export (connect, send, answer). Default 1 s.
    #[serde(default = "default_export_timeout", with = "gofe_yaml::duration::text")]
    #[schemars(with = "crate::schema::DurationText")]
    pub timeout: Duration,
}

fn default_export_timeout() -> Duration {
    DEFAULT_EXPORT_TIMEOUT
}

/// How spans are batched (OpenTelemetry's batch span processor settings).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Most spans in one export; a full batch is sent without waiting for the delay.
    /// Default 512.
    #[serde(default = "default_max_export_batch_size")]
    pub max_export_batch_size: u32,
    /// Longest a span waits for its batch to be sent. Default 5 s.
    #[serde(default = "default_schedule_delay", with = "gofe_yaml::duration::text")]
    #[schemars(with = "crate::schema::DurationText")]
    pub schedule_delay: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_export_batch_size: DEFAULT_MAX_EXPORT_BATCH_SIZE,
            schedule_delay: DEFAULT_SCHEDULE_DELAY,
        }
    }
}

impl BatchConfig {
    /// Whether these are the defaults (the only batch settings xDS can say).
    pub fn is_default(&self) -> bool {
        *self == BatchConfig::default()
    }
}

fn default_max_export_batch_size() -> u32 {
    DEFAULT_MAX_EXPORT_BATCH_SIZE
}

fn default_schedule_delay() -> Duration {
    DEFAULT_SCHEDULE_DELAY
}

impl TracingConfig {
    /// A tracing configuration exporting to `uri` with every default.
    pub fn to_collector(uri: &str) -> Self {
        TracingConfig {
            client_sampling: Percent::all(),
            random_sampling: Percent::all(),
            overall_sampling: Percent::all(),
            provider: TracingProvider {
                opentelemetry: OpenTelemetryConfig {
                    service_name: default_service_name(),
                    http_service: HttpServiceConfig {
                        http_uri: HttpUriConfig {
                            uri: uri.to_owned(),
                            cluster: None,
                            timeout: DEFAULT_EXPORT_TIMEOUT,
                        },
                    },
                    max_cache_size: DEFAULT_MAX_CACHE_SIZE,
                },
            },
            propagation: default_propagation(),
            batch: BatchConfig::default(),
        }
    }
}

/// A collector address gofe can POST to: host, port and path of an `http://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectorUri {
    /// The host (a name or an IP address, IPv6 without brackets).
    pub host: String,
    /// The port (80 when the URL has none).
    pub port: u16,
    /// The path and query (`/` when the URL has none).
    pub path_and_query: String,
    /// The authority as written, for the `Host` header.
    pub authority: String,
}

/// Parses a collector URL: `http://host[:port][/path]`; `https` and anything without a host
/// are refused, with why.
pub fn parse_collector_uri(uri: &str) -> Result<CollectorUri, String> {
    let parsed: http::Uri = uri
        .parse()
        .map_err(|e| format!("invalid URL {uri:?}: {e}"))?;
    match parsed.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "{uri:?}: https collectors are not supported by gofe (use http://)"
            ))
        }
        _ => return Err(format!("{uri:?}: expected an http:// URL")),
    }
    let Some(authority) = parsed.authority() else {
        return Err(format!("{uri:?}: no host"));
    };
    let host = authority.host();
    if host.is_empty() {
        return Err(format!("{uri:?}: no host"));
    }
    if authority.as_str().contains('@') {
        return Err(format!("{uri:?}: user information is not supported"));
    }
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let path_and_query = parsed
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());
    Ok(CollectorUri {
        host,
        port: authority.port_u16().unwrap_or(80),
        path_and_query,
        authority: authority.as_str().to_owned(),
    })
}

/// Problems of where and how spans are exported (a listener's `tracing`, or the controller's),
/// each as (field under the `tracing` block, message).
pub fn check_export(provider: &TracingProvider, batch: &BatchConfig) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    let otel = &provider.opentelemetry;
    let base = "provider.opentelemetry";
    if let Err(m) = parse_collector_uri(&otel.http_service.http_uri.uri) {
        problems.push((format!("{base}.http_service.http_uri.uri"), m));
    }
    if otel.http_service.http_uri.timeout.is_zero() {
        problems.push((
            format!("{base}.http_service.http_uri.timeout"),
            "must be longer than 0s".to_owned(),
        ));
    }
    if otel.max_cache_size == 0 {
        problems.push((
            format!("{base}.max_cache_size"),
            "must be at least 1".to_owned(),
        ));
    }
    if otel.service_name.is_empty() {
        problems.push((
            format!("{base}.service_name"),
            "must not be empty (leave it out for the default)".to_owned(),
        ));
    }
    if batch.max_export_batch_size == 0 {
        problems.push((
            "batch.max_export_batch_size".to_owned(),
            "must be at least 1".to_owned(),
        ));
    }
    if batch.schedule_delay.is_zero() {
        problems.push((
            "batch.schedule_delay".to_owned(),
            "must be longer than 0s".to_owned(),
        ));
    }
    problems
}

/// Problems of a listener's tracing, each as (field under `tracing`, message).
pub(crate) fn check(t: &TracingConfig) -> Vec<(String, String)> {
    let mut problems = Vec::new();
    for (field, p) in [
        ("client_sampling", t.client_sampling),
        ("random_sampling", t.random_sampling),
        ("overall_sampling", t.overall_sampling),
    ] {
        if !(0.0..=100.0).contains(&p.value) {
            problems.push((
                format!("{field}.value"),
                format!("must be between 0 and 100 (percent), not {}", p.value),
            ));
        }
    }
    problems.extend(check_export(&t.provider, &t.batch));
    if t.propagation.is_empty() {
        problems.push((
            "propagation".to_owned(),
            "needs at least one format (tracecontext, b3, b3multi)".to_owned(),
        ));
    }
    for (i, p) in t.propagation.iter().enumerate() {
        if t.propagation[..i].contains(p) {
            problems.push((
                format!("propagation[{i}]"),
                format!("{p:?} listed twice").to_lowercase(),
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collector_urls() {
        let u = parse_collector_uri("http://127.0.0.1:4318/v1/traces").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path_and_query.as_str()),
            ("127.0.0.1", 4318, "/v1/traces")
        );
        assert_eq!(u.authority, "127.0.0.1:4318");
        let u = parse_collector_uri("http://[::1]/x?y=1").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 80));
        assert_eq!(u.path_and_query, "/x?y=1");
        assert_eq!(
            parse_collector_uri("http://collector")
                .unwrap()
                .path_and_query,
            "/"
        );
        for (bad, why) in [
            ("https://c:4318/v1/traces", "https collectors"),
            ("grpc://c:4317", "expected an http:// URL"),
            ("/v1/traces", "expected an http:// URL"),
            ("http://u:p@c/v1/traces", "user information"),
            ("not a url", "invalid URL"),
        ] {
            let e = parse_collector_uri(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn bad_percentages_and_settings_name_their_fields() {
        let mut t = TracingConfig::to_collector("http://127.0.0.1:4318/v1/traces");
        assert!(check(&t).is_empty());
        t.random_sampling.value = 101.0;
        t.overall_sampling.value = f64::NAN;
        t.propagation = vec![Propagation::B3, Propagation::B3];
        t.provider.opentelemetry.max_cache_size = 0;
        let fields: Vec<String> = check(&t).into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            [
                "random_sampling.value",
                "overall_sampling.value",
                "provider.opentelemetry.max_cache_size",
                "propagation[1]"
            ]
        );
    }
}
