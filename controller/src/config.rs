//! The controller's configuration file.
//!
//! ```yaml
//! proxy_config: "proxy.yaml"     # listeners, routes, clusters and base weights served to proxies
//! interval: "5s"                 # decision interval
//! signals:
//!   source: embedded             # or: prometheus
//!   window: "30s"
//!   latency_quantile: 0.9
//!   embedded: { targets: ["127.0.0.1:9901"] }         # proxies' admin addresses
//!   prometheus: { url: "http://127.0.0.1:9090" }      # queries have working defaults
//! policy: { max_ejection_percent: 50 }                # defaults for every cluster
//! clusters: { web: { base_ejection_time: "10s" } }    # per-cluster overrides
//! admin: { address: "127.0.0.1:9902" }                # /decisions, /debug/queries, /metrics
//! xds: { address: "0.0.0.0:18000" }                   # ADS for the proxies
//! kubernetes: { namespace: shop }                     # discover endpoints (off by default)
//! ```
//!
//! Errors name the file, line and field, like the proxy's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gofe_core::policy::Policy;
use gofe_yaml::Spanned;
use serde::{Deserialize, Deserializer, Serialize};

/// The whole controller configuration.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// A gofe proxy configuration file: what the controller serves to proxies. Its clusters'
    /// endpoints and weights are the base the controller adjusts. Relative to this file.
    pub proxy_config: Spanned<String>,
    /// Time between decisions. Default 5 s.
    #[serde(default = "default_interval", with = "duration_text")]
    pub interval: Duration,
    /// Where signals come from.
    #[serde(default)]
    pub signals: SignalsConfig,
    /// Policy for every cluster.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// Per-cluster policies, replacing `policy` for that cluster.
    #[serde(default)]
    pub clusters: BTreeMap<String, PolicyConfig>,
    /// The controller's own HTTP endpoint. Default `127.0.0.1:9902`.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Serve the decisions over xDS (ADS) to proxies (`gofe proxy --bootstrap`) and other
    /// Envoy-protocol clients. Default: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xds: Option<XdsConfig>,
    /// Kubernetes mode: endpoints from the EndpointSlices of the Services that `TrafficPolicy`
    /// resources select, policies from those resources, leader election on a Lease. Default:
    /// off (file mode: clusters and endpoints from `proxy_config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesConfig>,
}

/// Kubernetes mode.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// Watch `TrafficPolicy` and `EndpointSlice` objects of this namespace only. Default: all
    /// namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Leader election among the controller's replicas.
    #[serde(default)]
    pub leader_election: LeaderElectionConfig,
}

/// Leader election on a `coordination.k8s.io/v1` Lease; the settings and defaults of
/// Kubernetes' own controllers (client-go's leader election).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LeaderElectionConfig {
    /// Off: this replica always decides (run one replica only). Default on.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The Lease's name. Default `gofe-controller`.
    #[serde(default = "default_lease_name")]
    pub lease_name: String,
    /// The Lease's namespace. Default: `$POD_NAMESPACE`, else `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_namespace: Option<String>,
    /// This replica's identity. Default: `$POD_NAME`, else the host name, with the process id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// How long a lease holds without renewal. Default 15 s.
    #[serde(default = "default_lease_duration", with = "duration_text")]
    pub lease_duration: Duration,
    /// The leader stops deciding when it could not renew for this long. Default 10 s.
    #[serde(default = "default_renew_deadline", with = "duration_text")]
    pub renew_deadline: Duration,
    /// Time between attempts to acquire or renew. Default 2 s.
    #[serde(default = "default_retry_period", with = "duration_text")]
    pub retry_period: Duration,
}

impl Default for LeaderElectionConfig {
    fn default() -> Self {
        LeaderElectionConfig {
            enabled: true,
            lease_name: default_lease_name(),
            lease_namespace: None,
            identity: None,
            lease_duration: default_lease_duration(),
            renew_deadline: default_renew_deadline(),
            retry_period: default_retry_period(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_lease_name() -> String {
    "gofe-controller".into()
}
fn default_lease_duration() -> Duration {
    Duration::from_secs(15)
}
fn default_renew_deadline() -> Duration {
    Duration::from_secs(10)
}
fn default_retry_period() -> Duration {
    Duration::from_secs(2)
}

/// The controller's xDS server.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct XdsConfig {
    /// `ip:port` for ADS over gRPC (plaintext; `/metrics` on the same port).
    pub address: String,
}

fn default_interval() -> Duration {
    Duration::from_secs(5)
}

/// The controller's admin listener.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `ip:port`.
    pub address: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            address: "127.0.0.1:9902".into(),
        }
    }
}

/// Which signal source to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// Scrape the proxies' `/metrics` directly and compute rates (no Prometheus needed).
    #[default]
    Embedded,
    /// Query Prometheus.
    Prometheus,
}

/// Signals: source, window, and each source's settings.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SignalsConfig {
    /// Which source. Default `embedded`.
    #[serde(default)]
    pub source: SourceKind,
    /// The rate window. Default 30 s.
    #[serde(default = "default_window", with = "duration_text")]
    pub window: Duration,
    /// The latency quantile the policy weighs by (0–1). Default 0.9.
    #[serde(default = "default_quantile")]
    pub latency_quantile: f64,
    /// The embedded scraper.
    #[serde(default)]
    pub embedded: EmbeddedConfig,
    /// Prometheus.
    #[serde(default)]
    pub prometheus: PrometheusConfig,
}

impl Default for SignalsConfig {
    fn default() -> Self {
        SignalsConfig {
            source: SourceKind::default(),
            window: default_window(),
            latency_quantile: default_quantile(),
            embedded: EmbeddedConfig::default(),
            prometheus: PrometheusConfig::default(),
        }
    }
}

fn default_window() -> Duration {
    Duration::from_secs(30)
}

fn default_quantile() -> f64 {
    0.9
}

/// The embedded scraper's settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedConfig {
    /// Admin addresses (`host:port`) of the proxies to scrape.
    #[serde(default)]
    pub targets: Vec<String>,
}

/// Prometheus settings. Each query is a template: `{window}` becomes the window (e.g. `30s`)
/// and `{quantile}` the latency quantile; results must carry `cluster` and `endpoint` labels.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusConfig {
    /// Base URL of the Prometheus HTTP API. Default `http://127.0.0.1:9090`.
    #[serde(default = "default_prometheus_url")]
    pub url: String,
    /// Requests in the window.
    #[serde(default = "default_q_requests")]
    pub requests: String,
    /// Requests per second.
    #[serde(default = "default_q_rps")]
    pub rps: String,
    /// Success rate (0–1).
    #[serde(default = "default_q_success")]
    pub success_rate: String,
    /// Latency in seconds.
    #[serde(default = "default_q_latency")]
    pub latency: String,
    /// Timestamp (s) of each endpoint's newest sample, for staleness.
    #[serde(default = "default_q_timestamp")]
    pub last_sample: String,
    /// Request timeout. Default 5 s.
    #[serde(default = "default_query_timeout", with = "duration_text")]
    pub timeout: Duration,
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        PrometheusConfig {
            url: default_prometheus_url(),
            requests: default_q_requests(),
            rps: default_q_rps(),
            success_rate: default_q_success(),
            latency: default_q_latency(),
            last_sample: default_q_timestamp(),
            timeout: default_query_timeout(),
        }
    }
}

fn default_prometheus_url() -> String {
    "http://127.0.0.1:9090".into()
}
fn default_q_requests() -> String {
    "sum by (cluster, endpoint) (increase(gofe_upstream_requests_total[{window}]))".into()
}
fn default_q_rps() -> String {
    "sum by (cluster, endpoint) (rate(gofe_upstream_requests_total[{window}]))".into()
}
fn default_q_success() -> String {
    "sum by (cluster, endpoint) (rate(gofe_upstream_requests_total{code_class!=\"5xx\"}[{window}])) / sum by (cluster, endpoint) (rate(gofe_upstream_requests_total[{window}]))".into()
}
fn default_q_latency() -> String {
    "histogram_quantile({quantile}, sum by (cluster, endpoint, le) (rate(gofe_upstream_request_duration_seconds_bucket[{window}])))".into()
}
fn default_q_timestamp() -> String {
    "max by (cluster, endpoint) (timestamp(gofe_upstream_requests_total))".into()
}
fn default_query_timeout() -> Duration {
    Duration::from_secs(5)
}

/// A cluster's decision policy as written in YAML: every field optional, defaulting to
/// [`Policy::default`]. Percentages are whole percents, as in Envoy.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// See [`Policy::success_rate_minimum_hosts`].
    pub success_rate_minimum_hosts: Option<usize>,
    /// See [`Policy::success_rate_request_volume`].
    pub success_rate_request_volume: Option<f64>,
    /// See [`Policy::success_rate_stdev_factor`].
    pub success_rate_stdev_factor: Option<f64>,
    /// Failure percentage (0–100) that ejects.
    pub failure_percentage_threshold: Option<f64>,
    /// See [`Policy::failure_percentage_minimum_hosts`].
    pub failure_percentage_minimum_hosts: Option<usize>,
    /// See [`Policy::failure_percentage_request_volume`].
    pub failure_percentage_request_volume: Option<f64>,
    /// See [`Policy::base_ejection_time`].
    #[serde(default, with = "opt_duration_text")]
    pub base_ejection_time: Option<Duration>,
    /// See [`Policy::max_ejection_time`].
    #[serde(default, with = "opt_duration_text")]
    pub max_ejection_time: Option<Duration>,
    /// See [`Policy::max_ejection_percent`].
    pub max_ejection_percent: Option<u32>,
    /// See [`Policy::half_open_weight_percent`].
    pub half_open_weight_percent: Option<u32>,
    /// See [`Policy::half_open_min_requests`].
    pub half_open_min_requests: Option<f64>,
    /// See [`Policy::slow_start_window`].
    #[serde(default, with = "opt_duration_text")]
    pub slow_start_window: Option<Duration>,
    /// See [`Policy::latency_weighting`].
    pub latency_weighting: Option<bool>,
    /// See [`Policy::min_weight_percent`].
    pub min_weight_percent: Option<u32>,
    /// See [`Policy::max_weight_percent`].
    pub max_weight_percent: Option<u32>,
    /// See [`Policy::max_step_percent`].
    pub max_step_percent: Option<u32>,
    /// See [`Policy::hysteresis_percent`].
    pub hysteresis_percent: Option<u32>,
    /// See [`Policy::latency_half_life`].
    #[serde(default, with = "opt_duration_text")]
    pub latency_half_life: Option<Duration>,
    /// See [`Policy::latency_min_requests`].
    pub latency_min_requests: Option<f64>,
    /// See [`Policy::panic_threshold_percent`] (Envoy's `healthy_panic_threshold`).
    pub healthy_panic_threshold: Option<u32>,
    /// See [`Policy::stale_after`].
    #[serde(default, with = "opt_duration_text")]
    pub stale_after: Option<Duration>,
    /// See [`Policy::relax_after`].
    #[serde(default, with = "opt_duration_text")]
    pub relax_after: Option<Duration>,
}

impl PolicyConfig {
    /// `self` over `base`: fields set here win.
    pub fn resolve(&self, base: &Policy) -> Policy {
        let d = base.clone();
        Policy {
            success_rate_minimum_hosts: self
                .success_rate_minimum_hosts
                .unwrap_or(d.success_rate_minimum_hosts),
            success_rate_request_volume: self
                .success_rate_request_volume
                .unwrap_or(d.success_rate_request_volume),
            success_rate_stdev_factor: self
                .success_rate_stdev_factor
                .unwrap_or(d.success_rate_stdev_factor),
            failure_percentage_threshold: self
                .failure_percentage_threshold
                .map_or(d.failure_percentage_threshold, |p| p / 100.0),
            failure_percentage_minimum_hosts: self
                .failure_percentage_minimum_hosts
                .unwrap_or(d.failure_percentage_minimum_hosts),
            failure_percentage_request_volume: self
                .failure_percentage_request_volume
                .unwrap_or(d.failure_percentage_request_volume),
            base_ejection_time: self.base_ejection_time.unwrap_or(d.base_ejection_time),
            max_ejection_time: self.max_ejection_time.unwrap_or(d.max_ejection_time),
            max_ejection_percent: self.max_ejection_percent.unwrap_or(d.max_ejection_percent),
            half_open_weight_percent: self
                .half_open_weight_percent
                .unwrap_or(d.half_open_weight_percent),
            half_open_min_requests: self
                .half_open_min_requests
                .unwrap_or(d.half_open_min_requests),
            slow_start_window: self.slow_start_window.unwrap_or(d.slow_start_window),
            latency_weighting: self.latency_weighting.unwrap_or(d.latency_weighting),
            min_weight_percent: self.min_weight_percent.unwrap_or(d.min_weight_percent),
            max_weight_percent: self.max_weight_percent.unwrap_or(d.max_weight_percent),
            max_step_percent: self.max_step_percent.unwrap_or(d.max_step_percent),
            hysteresis_percent: self.hysteresis_percent.unwrap_or(d.hysteresis_percent),
            latency_half_life: self.latency_half_life.unwrap_or(d.latency_half_life),
            latency_min_requests: self.latency_min_requests.unwrap_or(d.latency_min_requests),
            panic_threshold_percent: self
                .healthy_panic_threshold
                .unwrap_or(d.panic_threshold_percent),
            stale_after: self.stale_after.unwrap_or(d.stale_after),
            relax_after: self.relax_after.unwrap_or(d.relax_after),
            decay_interval: d.decay_interval,
        }
    }
}

mod duration_text {
    use super::*;

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        gofe_core::duration::parse(&text).map_err(serde::de::Error::custom)
    }

    pub(super) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&gofe_core::duration::format(*d))
    }
}

mod opt_duration_text {
    use super::*;

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        gofe_core::duration::parse(&text)
            .map(Some)
            .map_err(serde::de::Error::custom)
    }

    pub(super) fn serialize<S: serde::Serializer>(
        d: &Option<Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&gofe_core::duration::format(*d)),
            None => s.serialize_none(),
        }
    }
}

/// Why the controller configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid controller configuration.
    #[error("{file}:{line}:{column}: {field}: {message}")]
    Invalid {
        /// The file.
        file: String,
        /// 1-based line (0 when unknown).
        line: usize,
        /// 1-based column (0 when unknown).
        column: usize,
        /// Field path.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The proxy configuration it names is invalid.
    #[error(transparent)]
    Proxy(#[from] gofe_proxy::config::ConfigError),
}

/// A loaded configuration: the controller's settings and the proxy configuration it serves.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The controller's settings.
    pub controller: ControllerConfig,
    /// The proxy configuration (base weights).
    pub proxy: gofe_proxy::ProxyConfig,
}

/// Parses controller YAML; `name` names it in errors.
pub fn parse(name: &str, text: &str) -> Result<ControllerConfig, ConfigError> {
    let config: ControllerConfig = gofe_yaml::from_str(text).map_err(|p| ConfigError::Invalid {
        file: name.to_owned(),
        line: p.line.unwrap_or(0),
        column: p.column.unwrap_or(0),
        field: p.field,
        message: p.message,
    })?;
    if let Some(k) = &config.kubernetes {
        let le = &k.leader_election;
        if !(le.retry_period < le.renew_deadline && le.renew_deadline < le.lease_duration) {
            return Err(ConfigError::Invalid {
                file: name.to_owned(),
                line: 0,
                column: 0,
                field: "kubernetes.leader_election".into(),
                message: format!(
                    "needs retry_period < renew_deadline < lease_duration, got {} < {} < {}",
                    gofe_core::duration::format(le.retry_period),
                    gofe_core::duration::format(le.renew_deadline),
                    gofe_core::duration::format(le.lease_duration)
                ),
            });
        }
    }
    let q = config.signals.latency_quantile;
    if !(0.0..=1.0).contains(&q) {
        return Err(ConfigError::Invalid {
            file: name.to_owned(),
            line: 0,
            column: 0,
            field: "signals.latency_quantile".into(),
            message: format!("must be between 0 and 1, got {q}"),
        });
    }
    if let Err(e) = gofe_prom::validate_url(&config.signals.prometheus.url) {
        return Err(ConfigError::Invalid {
            file: name.to_owned(),
            line: 0,
            column: 0,
            field: "signals.prometheus.url".into(),
            message: e.to_string(),
        });
    }
    Ok(config)
}

/// Reads the controller file and the proxy configuration it names.
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let controller = parse(&path.display().to_string(), &text)?;
    let proxy_path = path
        .parent()
        .unwrap_or(Path::new("."))
        .join(&controller.proxy_config.value);
    let proxy = gofe_proxy::config::load(&proxy_path)?;
    Ok(Loaded { controller, proxy })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c = parse(
            "c.yaml",
            "proxy_config: p.yaml\npolicy: { max_ejection_percent: 50, failure_percentage_threshold: 40 }\nclusters:\n  web: { base_ejection_time: \"10s\" }\n",
        )
        .unwrap();
        assert_eq!(c.interval, Duration::from_secs(5));
        assert_eq!(c.signals.source, SourceKind::Embedded);
        let base = c.policy.resolve(&Policy::default());
        assert_eq!(base.max_ejection_percent, 50);
        assert!((base.failure_percentage_threshold - 0.4).abs() < 1e-12);
        let web = c.clusters["web"].resolve(&base);
        assert_eq!(web.base_ejection_time, Duration::from_secs(10));
        assert_eq!(web.max_ejection_percent, 50, "inherits the default policy");
    }

    #[test]
    fn errors_name_line_and_field() {
        let e = parse("c.yaml", "proxy_config: p.yaml\nsignals:\n  windw: 5s\n").unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("c.yaml:3:3: signals.windw: unknown field"),
            "{text}"
        );
        let e = parse("c.yaml", "proxy_config: p.yaml\ninterval: 5\n").unwrap_err();
        assert!(e.to_string().starts_with("c.yaml:2:11: interval:"), "{e}");
    }
}
