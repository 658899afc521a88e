//! gofe-controller: the feedback loop's decision maker.
//!
//! Every `interval` the controller reads per-endpoint signals (requests, success rate, latency)
//! as the mesh measured them, runs `gofe_core::policy::decide` for every cluster, and publishes
//! the resulting endpoint weights and health to the proxies:
//!
//! ```text
//!   signals::Source ──Snapshot──▶ policy::decide (gofe-core, pure) ──▶ ProxyConfig ──▶ Publisher
//!   (Prometheus or                  per cluster, with state              base config     (in-process
//!    embedded scraper)              carried between steps                + weights        proxy today)
//! ```
//!
//! With `signals.lrs` on, the proxies' load reports (Envoy's Load Reporting Service, kept by the
//! xDS server's `gofe_xds::LoadStore`) are a second, faster source: an endpoint with fresh
//! reports is decided on them, every other on the configured source ([`signals::combine`]).
//!
//! What it does not do: it never measures traffic itself (the proxies do), never decides in
//! its I/O code (the policy is a pure function shared with the simulator), and never treats
//! missing data as zero traffic (stale data holds decisions; see `gofe_core::policy`). Its
//! admin endpoint shows every decision with its inputs and reason (`/decisions`), the rendered
//! queries (`/debug/queries`) and its own metrics (`/metrics`), including
//! `gofe_endpoint_ejected`, which the metrics adapter reads for ejection-aware scaling. With
//! `tracing` in its file, each step is also a trace (a span per phase and per cluster, with the
//! inputs `/decisions` shows), exported over OTLP/HTTP by `gofe-trace`, the proxy's exporter.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use gofe_core::policy::{self, ClusterState, Decision, Event, Mode, Policy, Status};
use gofe_model::ProxyConfig;
use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use serde::Serialize;

pub mod admin;
pub mod ca;
pub mod config;
pub mod kubernetes;
pub mod publication;
pub mod signals;
pub mod state;
mod trace;
pub mod webhook;

use publication::Published;

use signals::Source;

/// Where decisions go.
#[derive(Clone)]
pub enum Publisher {
    /// Proxies and other Envoy-protocol clients, over ADS: every node gets the snapshot.
    Xds(gofe_xds::AdsServer),
    /// Nowhere: decide and explain only (dry run).
    DryRun,
}

impl Publisher {
    /// Publishes `config` and the API listeners `api` beside it; returns the API listeners
    /// that had to be left out (a name the proxies' resources have, a missing cluster).
    async fn publish(
        &self,
        config: ProxyConfig,
        _version: u64,
        api: &[gofe_proto::convert::ApiListener],
    ) -> Result<Vec<gofe_proto::convert::ApiListenerSkipped>, String> {
        match self {
            Publisher::Xds(server) => {
                let mut resources =
                    gofe_proto::convert::from_proxy_config(&config).map_err(|e| e.to_string())?;
                let skipped = gofe_proto::convert::add_api_listeners(&mut resources, api);
                let snapshot =
                    gofe_xds::Snapshot::from_resources(&resources).map_err(|e| e.to_string())?;
                server
                    .cache()
                    .set_snapshot(gofe_xds::NodeKey::Default, snapshot);
                Ok(skipped)
            }
            Publisher::DryRun => Ok(Vec::new()),
        }
    }
}

/// The controller's metrics.
struct Metrics {
    registry: Registry,
    ejected: IntGaugeVec,
    weight: IntGaugeVec,
    mode: IntGaugeVec,
    decisions: IntCounter,
    signal_errors: IntCounterVec,
    ejections: IntCounterVec,
    version: IntGauge,
    last_decision: IntGauge,
    spans_exported: IntCounter,
    spans_dropped: IntCounter,
    spans_failed: IntCounter,
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        registry
            .register(Box::new(gofe_prom::process::ProcessCollector::new(
                "controller",
            )))
            .expect("unique metrics");
        let gv = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let cv = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let ejected = gv(
            "gofe_endpoint_ejected",
            "1 while the controller has an endpoint ejected (weight 0, unhealthy), else 0.",
            &["cluster", "endpoint"],
        );
        let weight = gv(
            "gofe_controller_endpoint_weight",
            "Weight the controller publishes for an endpoint (hundredths of its base weight).",
            &["cluster", "endpoint"],
        );
        let mode = gv(
            "gofe_controller_cluster_mode",
            "1 for a cluster's current decision mode (normal, fail_static, relaxed, panic).",
            &["cluster", "mode"],
        );
        let decisions = IntCounter::new("gofe_controller_decisions_total", "Decision steps.")
            .expect("valid metric");
        registry
            .register(Box::new(decisions.clone()))
            .expect("unique metric");
        let signal_errors = cv(
            "gofe_controller_signal_errors_total",
            "Steps whose signals could not be fetched, by source.",
            &["reason"],
        );
        let ejections = cv(
            "gofe_controller_ejections_total",
            "Ejections decided, by reason.",
            &["cluster", "reason"],
        );
        let version = IntGauge::new(
            "gofe_controller_config_version",
            "Version of the configuration last published.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(version.clone()))
            .expect("unique metric");
        let last_decision = IntGauge::new(
            "gofe_controller_last_decision_timestamp_seconds",
            "Unix time of the last decision step.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(last_decision.clone()))
            .expect("unique metric");
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let spans_exported = counter(
            "gofe_controller_spans_exported_total",
            "Decision-step spans the OTLP collector accepted.",
        );
        let spans_dropped = counter(
            "gofe_controller_spans_dropped_total",
            "Decision-step spans dropped because the export queue was full.",
        );
        let spans_failed = counter(
            "gofe_controller_spans_failed_total",
            "Decision-step spans lost because their export failed.",
        );
        Metrics {
            spans_exported,
            spans_dropped,
            spans_failed,
            registry,
            ejected,
            weight,
            mode,
            decisions,
            signal_errors,
            ejections,
            version,
            last_decision,
        }
    }

    fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    }
}

/// One endpoint's decision as `/decisions` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct EndpointView {
    /// Address.
    pub endpoint: String,
    /// Operator's base weight.
    pub base_weight: u32,
    /// Published weight (hundredths of the base unit).
    pub weight: u32,
    /// Published health.
    pub healthy: bool,
    /// `serving`, `ejected`, `half_open`, `ramping`, `held`, `relaxed`.
    pub state: &'static str,
    /// Latency multiplier.
    pub multiplier: f64,
    /// Why.
    pub reason: String,
    /// Inputs: requests in the window, rps, success rate, latency (s).
    pub inputs: Option<Inputs>,
}

/// The signals a decision used.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Inputs {
    /// Requests in the window.
    pub requests: f64,
    /// Requests per second.
    pub rps: f64,
    /// Success rate (0–1).
    pub success_rate: f64,
    /// Latency (s) at the configured quantile (from load reports: their mean).
    pub latency_seconds: f64,
    /// Where they came from: `lrs` (the proxies' load reports), or the configured source
    /// (`embedded`, `prometheus`).
    pub source: &'static str,
}

/// A cluster's decision as `/decisions` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterView {
    /// `normal`, `fail_static`, `relaxed`, `panic`.
    pub mode: &'static str,
    /// Per endpoint.
    pub endpoints: Vec<EndpointView>,
}

/// A breaker transition decided in a step.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EventView {
    /// The cluster.
    pub cluster: String,
    /// The endpoint.
    pub endpoint: String,
    /// `ejected`, `half_open` or `recovered`.
    pub kind: &'static str,
    /// Why (for an ejection: the rule and how long).
    pub reason: String,
}

impl EventView {
    fn of(cluster: &str, event: &Event, now_ms: u64) -> Self {
        let (endpoint, kind, reason) = match event {
            Event::Ejected {
                endpoint,
                reason,
                until_ms,
            } => (
                endpoint,
                "ejected",
                format!(
                    "{} (for {} s)",
                    reason.as_str(),
                    until_ms.saturating_sub(now_ms).div_ceil(1000)
                ),
            ),
            Event::HalfOpen { endpoint } => (endpoint, "half_open", "trial weight".to_owned()),
            Event::Recovered { endpoint } => (endpoint, "recovered", "ramping back".to_owned()),
        };
        EventView {
            cluster: cluster.to_owned(),
            endpoint: endpoint.clone(),
            kind,
            reason,
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Everything `/decisions` shows.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DecisionsView {
    /// `leader` (this replica decides) or `follower` (it serves the leader's decisions).
    pub role: &'static str,
    /// Unix time of the step.
    pub decided_at_unix: u64,
    /// Version last published.
    pub version: u64,
    /// Signal error of the step, if any.
    pub signal_error: Option<String>,
    /// Clusters with endpoints for which the source returned no series at all this step
    /// (a query that matches nothing, a scrape that misses the proxies): their decisions hold.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub no_signals: Vec<String>,
    /// Per cluster.
    pub clusters: BTreeMap<String, ClusterView>,
    /// Breaker transitions of the step.
    pub events: Vec<EventView>,
    /// When the version was published over xDS (Unix ms); absent without an xDS publisher.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published_at_unix_ms: Option<u64>,
    /// Every xDS node connected to this replica: what it ACKed and how long it took.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub proxies: Vec<ProxyView>,
    /// With `signals.lrs` on: every load-report stream open now.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub load_reporters: Vec<LoadReporterView>,
}

/// One open load-report stream as `/decisions` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReporterView {
    /// `node.id` of the stream's first message.
    pub node: String,
    /// (cluster, endpoint) pairs it reported within the window.
    pub endpoints: usize,
}

/// One xDS node as `/decisions` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct ProxyView {
    /// `node.id`.
    pub node: String,
    /// Per type (`cds`, `eds`, `lds`, `rds`): the version it last ACKed.
    pub acked: BTreeMap<&'static str, String>,
    /// Whether it ACKed anything at or after the last publication: a weight change reaches a
    /// proxy as an `eds` response, so this is "it has the newest weights".
    pub caught_up: bool,
    /// Time from the last publication to its last ACK after it (ms): the convergence time.
    pub convergence_ms: Option<u64>,
}

fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The xDS nodes' ACKs, joined with the time of the last publication.
fn proxies_view(
    server: &gofe_xds::AdsServer,
    published: Option<std::time::SystemTime>,
) -> Vec<ProxyView> {
    let mut by_node: BTreeMap<String, ProxyView> = BTreeMap::new();
    for ack in server.node_acks() {
        let view = by_node
            .entry(ack.node.clone())
            .or_insert_with(|| ProxyView {
                node: ack.node.clone(),
                acked: BTreeMap::new(),
                caught_up: false,
                convergence_ms: None,
            });
        view.acked.insert(ack.type_short, ack.version.clone());
        if let Some(p) = published {
            if ack.acked_at >= p {
                view.caught_up = true;
                let ms = ack
                    .acked_at
                    .duration_since(p)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                view.convergence_ms = Some(view.convergence_ms.map_or(ms, |m| m.max(ms)));
            }
        }
    }
    by_node.into_values().collect()
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Normal => "normal",
        Mode::FailStatic => "fail_static",
        Mode::Relaxed => "relaxed",
        Mode::Panic => "panic",
    }
}

fn state_name(s: Status) -> &'static str {
    match s {
        Status::Serving => "serving",
        Status::Ejected { .. } => "ejected",
        Status::HalfOpen => "half_open",
        Status::Ramping { .. } => "ramping",
        Status::Held => "held",
        Status::Relaxed => "relaxed",
    }
}

/// Shared between the loop and the admin endpoint.
pub struct Shared {
    /// The last step's decisions.
    pub decisions: RwLock<DecisionsView>,
    /// The source's rendered queries.
    pub queries: RwLock<BTreeMap<String, String>>,
    metrics: Metrics,
    /// The xDS server decisions are published on, whose series (`gofe_xds_*`: streams,
    /// pushes, ACKs, refused streams, TLS reloads) the admin `/metrics` shows too.
    xds: Option<gofe_xds::AdsServer>,
}

impl Shared {
    /// The controller's metrics in Prometheus text format, then its xDS server's.
    pub fn metrics_text(&self) -> String {
        let mut text = self.metrics.render();
        if let Some(server) = &self.xds {
            text.push_str(&server.metrics_text());
        }
        text
    }
}

/// The controller: configuration, signal source, per-cluster state, publisher.
pub struct Controller {
    /// The proxy configuration the file names (Kubernetes discovery starts from it).
    file_base: ProxyConfig,
    /// The configuration steered now: the file's, or the file's with discovered endpoints.
    base: ProxyConfig,
    default_policy: Policy,
    file_overrides: BTreeMap<String, config::PolicyConfig>,
    policies: BTreeMap<String, Policy>,
    source: Source,
    states: BTreeMap<String, ClusterState>,
    publisher: Publisher,
    /// What the last publication carried per endpoint.
    published: Option<Vec<Published>>,
    published_at: Option<std::time::SystemTime>,
    version: u64,
    started: tokio::time::Instant,
    /// Added to the time since `started`: the decision clock of a resumed state goes on.
    clock_offset_ms: u64,
    /// Where decision state is kept across restarts.
    state_file: Option<std::path::PathBuf>,
    /// A resumed state's last publication, published again before the first decision.
    resume: Option<ProxyConfig>,
    /// Signals were unavailable on the last step (one log line when lost, one when back).
    signals_lost: bool,
    /// Clusters the source returned nothing for on the last step (logged when the set changes).
    no_signals: Vec<String>,
    /// The controller settings it runs with (a reload compares against them).
    running: config::ControllerConfig,
    /// Kubernetes mode: cluster → the API listener name of its Service (`SERVICE.NAMESPACE`).
    api_listener_names: BTreeMap<String, String>,
    /// The API listeners the last publication left out (logged when the set changes).
    api_skipped: Vec<String>,
    shared: Arc<Shared>,
    /// A span per decision step, when the file asks for them.
    tracer: Option<trace::StepTracer>,
    /// With `signals.lrs` on: the load reports the xDS server keeps, and how old the newest
    /// report of an endpoint may be for its signals to come from them.
    lrs: Option<(gofe_xds::LoadStore, Duration)>,
    /// Where each endpoint's signals came from on the last step.
    origins: signals::Origins,
}

/// What one step decided for one cluster: the decision and the base weights it started from.
struct ClusterStep {
    decision: Decision,
    base: Vec<(String, u32)>,
}

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// Configuration.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The signal source could not be built.
    #[error(transparent)]
    Signals(#[from] signals::SignalError),
    /// Kubernetes mode could not start.
    #[error(transparent)]
    Kubernetes(#[from] kubernetes::KubernetesError),
    /// The state file exists but cannot be read: refused rather than silently forgotten.
    #[error(transparent)]
    State(#[from] state::StateError),
    /// The sidecar-injection webhook could not start.
    #[error(transparent)]
    Webhook(#[from] webhook::WebhookError),
    /// `signals.lrs.enabled` with a publisher that takes no load reports (no xDS server, or
    /// one started without load reporting).
    #[error("signals.lrs.enabled needs the controller's xDS server (set xds.address)")]
    LrsWithoutXds,
    /// The mesh CA could not start (its root).
    #[error(transparent)]
    Ca(#[from] ca::CaError),
    /// The `xds.tls` files do not make a TLS configuration.
    #[error("xds.tls: {0}")]
    XdsTls(#[source] gofe_xds::TlsError),
    /// The admin address could not be bound.
    #[error("cannot bind the admin address {address}: {source}")]
    Bind {
        /// The address.
        address: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The policy defaults for a controller's file: gofe-core's, on the file's signal window.
fn file_policy(c: &config::ControllerConfig) -> Policy {
    Policy {
        signal_window: c.signals.window(c.interval),
        ..Policy::default()
    }
}

impl Controller {
    /// A controller for `loaded`, publishing to `publisher`.
    pub fn new(loaded: config::Loaded, publisher: Publisher) -> Result<Self, ControllerError> {
        let default = loaded
            .controller
            .policy
            .resolve(&file_policy(&loaded.controller));
        let policies = loaded
            .proxy
            .clusters
            .iter()
            .map(|c| {
                let name = c.name.clone();
                let p = loaded
                    .controller
                    .clusters
                    .get(&name)
                    .map_or_else(|| default.clone(), |o| o.resolve(&default));
                (name, p)
            })
            .collect();
        let source = Source::new(
            &loaded.controller.signals,
            loaded.controller.signals.window(loaded.controller.interval),
        )?;
        let lrs_config = &loaded.controller.signals.lrs;
        let lrs = match (&publisher, lrs_config.enabled) {
            (_, false) => None,
            (Publisher::Xds(server), true) => Some((
                server
                    .load_store()
                    .cloned()
                    .ok_or(ControllerError::LrsWithoutXds)?,
                lrs_config.interval.saturating_mul(3),
            )),
            (Publisher::DryRun, true) => return Err(ControllerError::LrsWithoutXds),
        };
        let shared = Arc::new(Shared {
            decisions: RwLock::new(DecisionsView::default()),
            queries: RwLock::new(source.describe()),
            metrics: Metrics::new(),
            xds: match &publisher {
                Publisher::Xds(server) => Some(server.clone()),
                Publisher::DryRun => None,
            },
        });
        let state_file = loaded
            .controller
            .state_file
            .as_ref()
            .map(std::path::PathBuf::from);
        let mut controller = Controller {
            file_base: loaded.proxy.clone(),
            base: loaded.proxy,
            default_policy: default,
            file_overrides: loaded.controller.clusters.clone(),
            policies,
            source,
            states: BTreeMap::new(),
            publisher,
            published: None,
            published_at: None,
            version: 0,
            started: tokio::time::Instant::now(),
            clock_offset_ms: 0,
            state_file,
            resume: None,
            signals_lost: false,
            no_signals: Vec::new(),
            tracer: loaded.controller.tracing.clone().map(|t| {
                let m = &shared.metrics;
                trace::StepTracer::new(
                    t,
                    gofe_trace::Counters {
                        exported: m.spans_exported.clone(),
                        dropped: m.spans_dropped.clone(),
                        failed: m.spans_failed.clone(),
                    },
                )
            }),
            running: loaded.controller.clone(),
            api_listener_names: BTreeMap::new(),
            api_skipped: Vec::new(),
            shared,
            lrs,
            origins: signals::Origins::new(),
        };
        match &controller.state_file {
            Some(path) => {
                if let Some(saved) = state::load(path)? {
                    controller.resume_from(saved);
                } else {
                    tracing::info!(state_file = %path.display(), "no saved state yet: starting fresh");
                }
            }
            None => tracing::info!(
                "no state_file: a restart of this controller forgets its ejections and ramps"
            ),
        }
        Ok(controller)
    }

    /// What the admin endpoint reads.
    pub fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// The registry of the controller's metrics (`/metrics`), for parts that add their own
    /// series (Kubernetes discovery's per-cluster reachability).
    pub fn registry(&self) -> prometheus::Registry {
        self.shared.metrics.registry.clone()
    }

    /// The proxy configuration from the controller's file.
    pub fn file_base(&self) -> &ProxyConfig {
        &self.file_base
    }

    /// Steers `config` from now on (clusters and endpoints discovered since the last step):
    /// every cluster's policy is the default, then the file's override for it, then
    /// `overrides` (a `TrafficPolicy`'s). State of clusters that are gone is dropped; new
    /// endpoints start as the policy's slow start says.
    pub fn set_topology(
        &mut self,
        config: ProxyConfig,
        overrides: &BTreeMap<String, config::PolicyConfig>,
    ) {
        self.policies = config
            .clusters
            .iter()
            .map(|c| {
                let name = c.name.clone();
                let file = self.file_overrides.get(&name).map_or_else(
                    || self.default_policy.clone(),
                    |o| o.resolve(&self.default_policy),
                );
                let p = overrides
                    .get(&name)
                    .map_or(file.clone(), |o| o.resolve(&file));
                (name, p)
            })
            .collect();
        self.states
            .retain(|name, _| self.policies.contains_key(name));
        self.base = config;
    }

    /// Publishes weights decided elsewhere (by the leader) instead of deciding: `weights` maps
    /// cluster → endpoint → (weight in hundredths, healthy). Endpoints it does not name get
    /// their base weight. Nothing is published when nothing changed.
    pub async fn follow(
        &mut self,
        weights: &BTreeMap<String, BTreeMap<String, (u32, bool)>>,
    ) -> DecisionsView {
        let mut config = self.base.clone();
        let mut published = Vec::new();
        let mut view = DecisionsView {
            role: "follower",
            ..DecisionsView::default()
        };
        for cluster in &mut config.clusters {
            let decided = weights.get(&cluster.name);
            let mut endpoints = Vec::new();
            for ep in &mut cluster.endpoints {
                let (weight, healthy) = decided
                    .and_then(|d| d.get(&ep.address).copied())
                    .unwrap_or(((f64::from(ep.weight) * policy::WEIGHT_SCALE) as u32, true));
                endpoints.push(EndpointView {
                    endpoint: ep.address.clone(),
                    base_weight: ep.weight,
                    weight,
                    healthy,
                    state: if decided.is_some() {
                        "followed"
                    } else {
                        "base"
                    },
                    multiplier: 1.0,
                    reason: "decided by the leader".into(),
                    inputs: None,
                });
                publication::set_endpoint(&cluster.name, ep, weight, healthy, &mut published);
            }
            view.clusters.insert(
                cluster.name.clone(),
                ClusterView {
                    mode: "followed",
                    endpoints,
                },
            );
        }
        self.publish_if_changed(config, published).await;
        // A new leader starts from fresh state rather than from another replica's.
        self.states.clear();
        view.version = self.version;
        view.decided_at_unix = unix_now();
        if let Publisher::Xds(server) = &self.publisher {
            view.published_at_unix_ms = self.published_at.map(unix_ms);
            view.proxies = proxies_view(server, self.published_at);
        }
        if let Some((store, _)) = &self.lrs {
            view.load_reporters = store
                .reporters()
                .into_iter()
                .map(|(node, endpoints)| LoadReporterView { node, endpoints })
                .collect();
        }
        if let Ok(mut w) = self.shared.decisions.write() {
            *w = view.clone();
        }
        view
    }

    /// Continues from a saved state: the decision clock goes on from it, the breakers, ramps
    /// and multipliers are those it had, and its last publication is published again first.
    fn resume_from(&mut self, saved: state::Saved) {
        self.clock_offset_ms = saved.clock_now_ms();
        self.version = saved.version;
        self.states = saved
            .clusters
            .into_iter()
            .filter(|(name, _)| self.policies.contains_key(name))
            .collect();
        self.published = Some(saved.published);
        self.resume = Some(saved.config);
        tracing::info!(
            version = self.version,
            clusters = self.states.len(),
            "resumed the saved decision state"
        );
    }

    /// Publishes `config` unless it carries exactly what the last publication did; the log
    /// line names what changed. With a state file, the state is saved after each publication.
    async fn publish_if_changed(&mut self, config: ProxyConfig, published: Vec<Published>) {
        if self.published.as_ref() == Some(&published) {
            return;
        }
        let changes = publication::changes(self.published.as_deref(), &published);
        let version = self.version + 1;
        let api = self.api_listeners(&config);
        match self.publisher.publish(config.clone(), version, &api).await {
            Ok(skipped) => {
                self.note_skipped(skipped);
                self.version = version;
                self.published = Some(published);
                self.published_at = Some(std::time::SystemTime::now());
                self.shared.metrics.version.set(version as i64);
                tracing::info!(
                    version,
                    changes = changes.join("; "),
                    "published version {version}"
                );
                self.save_state(config);
            }
            Err(e) => tracing::error!(error = %e, "publishing failed; will retry next step"),
        }
    }

    /// The API listeners to publish beside `config`: the declared ones, then with
    /// `all_clusters` one per cluster (named as [`Controller::set_api_listener_names`] says,
    /// else after the cluster) that no declared one already names.
    fn api_listeners(&self, config: &ProxyConfig) -> Vec<gofe_proto::convert::ApiListener> {
        let Some(x) = &self.running.xds else {
            return Vec::new();
        };
        let mut out: Vec<gofe_proto::convert::ApiListener> = x
            .api_listeners
            .services
            .iter()
            .map(|a| gofe_proto::convert::ApiListener {
                name: a.name.clone(),
                cluster: a.cluster().to_owned(),
            })
            .collect();
        if x.api_listeners.all_clusters {
            for c in &config.clusters {
                let name = self
                    .api_listener_names
                    .get(&c.name)
                    .cloned()
                    .unwrap_or_else(|| c.name.clone());
                if !out.iter().any(|a| a.name == name) {
                    out.push(gofe_proto::convert::ApiListener {
                        name,
                        cluster: c.name.clone(),
                    });
                }
            }
        }
        out
    }

    /// Kubernetes mode: the API listener name of each cluster a `TrafficPolicy` steers
    /// (`SERVICE.NAMESPACE`), used by `xds.api_listeners.all_clusters`.
    pub fn set_api_listener_names(&mut self, names: BTreeMap<String, String>) {
        self.api_listener_names = names;
    }

    /// Logs the API listeners a publication left out, when that set changes.
    fn note_skipped(&mut self, skipped: Vec<gofe_proto::convert::ApiListenerSkipped>) {
        let text: Vec<String> = skipped.iter().map(ToString::to_string).collect();
        if text != self.api_skipped {
            for t in &text {
                tracing::warn!(reason = %t, "API listener not published");
            }
            self.api_skipped = text;
        }
    }

    /// Writes the decision state to the state file, when there is one.
    fn save_state(&self, config: ProxyConfig) {
        let Some(path) = &self.state_file else {
            return;
        };
        let saved = state::Saved::new(
            self.now_ms(),
            self.version,
            config,
            self.published.clone().unwrap_or_default(),
            self.states.clone(),
        );
        if let Err(e) = state::save(path, &saved) {
            tracing::error!(error = %e, "could not save the decision state");
        }
    }

    /// The decision clock: ms since this controller started, continuing a resumed state's.
    fn now_ms(&self) -> u64 {
        let elapsed = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.clock_offset_ms.saturating_add(elapsed)
    }

    /// One step: fetch signals, decide every cluster, publish if anything changed, record
    /// metrics and the explanation.
    pub async fn step(&mut self) -> DecisionsView {
        if let Some(config) = self.resume.take() {
            // What the proxies had from before the restart, before anything new.
            let api = self.api_listeners(&config);
            if let Err(e) = self.publisher.publish(config, self.version, &api).await {
                tracing::error!(error = %e, "republishing the saved configuration failed");
            }
            self.published_at = Some(std::time::SystemTime::now());
        }
        let now = self.now_ms();
        let mut trace = self.tracer.as_mut().map(trace::StepTracer::start);
        let fetching = trace::unix_nanos();
        let (snapshot, signal_error) = self.fetch_signals(now).await;
        if let Some(t) = &mut trace {
            let endpoints: usize = snapshot.values().map(BTreeMap::len).sum();
            t.phase(
                "controller.signals",
                None,
                (fetching, trace::unix_nanos()),
                vec![
                    (
                        "gofe.clusters_with_signals",
                        gofe_trace::Value::Int(snapshot.len() as i64),
                    ),
                    (
                        "gofe.endpoints_with_signals",
                        gofe_trace::Value::Int(endpoints as i64),
                    ),
                ],
                signal_error.clone(),
            );
        }
        if signal_error.is_none() {
            self.note_missing_clusters(&snapshot);
        }
        let deciding = trace::unix_nanos();
        let (decided, events) = self.decide_all(&snapshot, now);
        let (config, published) = publication::weighted(&self.base, |cluster, i| {
            let d = decided.get(cluster)?.decision.endpoints.get(i)?;
            Some((d.weight, d.healthy))
        });
        let publishing = trace::unix_nanos();
        let before = self.version;
        self.publish_if_changed(config, published).await;
        let published_at = trace::unix_nanos();
        self.record_metrics(&decided);
        let view = self.view(&decided, events, signal_error);
        if let Some(mut t) = trace {
            self.trace_step(&mut t, &view, (deciding, publishing, published_at), before);
            if let Some(tracer) = &self.tracer {
                tracer.send(
                    t,
                    vec![
                        ("gofe.version", gofe_trace::Value::Int(self.version as i64)),
                        ("gofe.role", gofe_trace::Value::Static(view.role)),
                    ],
                );
            }
        }
        if let Ok(mut w) = self.shared.decisions.write() {
            *w = view.clone();
        }
        view
    }

    /// The decide and publish spans of a step, from what `/decisions` shows of it: each
    /// cluster's mode and every endpoint's inputs, weight, state and reason.
    fn trace_step(
        &self,
        t: &mut trace::StepTrace,
        view: &DecisionsView,
        (deciding, publishing, published_at): (u64, u64, u64),
        version_before: u64,
    ) {
        use gofe_trace::Value;
        let json = |v: &dyn erased::Json| Value::Owned(v.json().into());
        let decide = t.phase(
            "controller.decide",
            None,
            (deciding, publishing),
            vec![
                ("gofe.clusters", Value::Int(view.clusters.len() as i64)),
                ("gofe.events", json(&view.events)),
            ],
            None,
        );
        for (name, cluster) in &view.clusters {
            t.phase(
                "controller.decide.cluster",
                Some(decide),
                (deciding, publishing),
                vec![
                    ("gofe.cluster", Value::Owned(name.as_str().into())),
                    ("gofe.mode", Value::Static(cluster.mode)),
                    ("gofe.endpoints", json(&cluster.endpoints)),
                ],
                None,
            );
        }
        t.phase(
            "controller.publish",
            None,
            (publishing, published_at),
            vec![
                ("gofe.version", Value::Int(self.version as i64)),
                (
                    "gofe.published",
                    Value::Int(i64::from(self.version != version_before)),
                ),
            ],
            None,
        );
    }

    /// Waits (at most `timeout`) until the decision spans of the steps so far are exported;
    /// true at once without tracing.
    pub async fn flush_traces(&self, timeout: Duration) -> bool {
        match &self.tracer {
            Some(t) => t.flush(timeout).await,
            None => true,
        }
    }

    /// This step's signals; when they cannot be had, an empty snapshot (every decision holds)
    /// and the error. One log line when signals are lost and one when they are back.
    async fn fetch_signals(&mut self, now: u64) -> (signals::Snapshot, Option<String>) {
        let (base, error) = match self.source.fetch(now).await {
            Ok(s) => {
                if std::mem::take(&mut self.signals_lost) {
                    tracing::info!("signals are back: deciding again");
                }
                (s, None)
            }
            Err(e) => {
                if !std::mem::replace(&mut self.signals_lost, true) {
                    if self.lrs.is_some() {
                        tracing::warn!(error = %e, "signals lost: deciding on fresh load reports alone, holding every other endpoint (fail static) until they return");
                    } else {
                        tracing::warn!(error = %e, "signals lost: holding decisions (fail static) until they return");
                    }
                }
                self.shared
                    .metrics
                    .signal_errors
                    .with_label_values(&[e.metric_label()])
                    .inc();
                (signals::Snapshot::new(), Some(e.to_string()))
            }
        };
        let lrs = match &self.lrs {
            Some((store, fresh_for)) => {
                signals::from_load_reports(store, tokio::time::Instant::now(), now, *fresh_for)
            }
            None => signals::Snapshot::new(),
        };
        let (snapshot, origins) = signals::combine(base, self.source.name(), lrs);
        self.origins = origins;
        (snapshot, error)
    }

    /// Names, once per change, the clusters with endpoints that the source returned nothing for:
    /// an empty answer is a problem to report (their decisions hold), not silence.
    fn note_missing_clusters(&mut self, snapshot: &signals::Snapshot) {
        let missing: Vec<String> = self
            .base
            .clusters
            .iter()
            .filter(|c| !c.endpoints.is_empty() && !snapshot.contains_key(&c.name))
            .map(|c| c.name.clone())
            .collect();
        if missing != self.no_signals {
            if missing.is_empty() {
                tracing::info!("every cluster has signals again");
            } else {
                tracing::warn!(
                    clusters = missing.join(", "),
                    "the signal source returned no series for these clusters: their decisions hold (check the queries at /debug/queries and that the proxies are scraped)"
                );
            }
        }
        self.no_signals = missing;
    }

    /// Runs the policy for every cluster on `snapshot`, keeping each cluster's new state;
    /// logs and counts the events.
    fn decide_all(
        &mut self,
        snapshot: &signals::Snapshot,
        now: u64,
    ) -> (BTreeMap<String, ClusterStep>, Vec<EventView>) {
        let empty = BTreeMap::new();
        let mut events = Vec::new();
        let mut decided = BTreeMap::new();
        for cluster in &self.base.clusters {
            let name = cluster.name.clone();
            let base: Vec<(String, u32)> = cluster
                .endpoints
                .iter()
                .map(|e| (e.address.clone(), e.weight))
                .collect();
            let previous = self.states.get(&name).cloned().unwrap_or_default();
            let decision = policy::decide(
                &self.policies[&name],
                &base,
                &previous,
                snapshot.get(&name).unwrap_or(&empty),
                now,
            );
            for event in &decision.events {
                events.push(EventView::of(&name, event, now));
                self.log_event(&name, event, now);
            }
            self.states.insert(name.clone(), decision.state.clone());
            decided.insert(name, ClusterStep { decision, base });
        }
        (decided, events)
    }

    fn log_event(&self, cluster: &str, event: &Event, now: u64) {
        match event {
            Event::Ejected {
                endpoint,
                reason,
                until_ms,
            } => {
                tracing::warn!(%cluster, %endpoint, reason = reason.as_str(), ejected_for_s = until_ms.saturating_sub(now) / 1000, "controller ejected endpoint");
                self.shared
                    .metrics
                    .ejections
                    .with_label_values(&[cluster, reason.as_str()])
                    .inc();
            }
            Event::HalfOpen { endpoint } => {
                tracing::info!(%cluster, %endpoint, "endpoint half-open: trial weight")
            }
            Event::Recovered { endpoint } => {
                tracing::info!(%cluster, %endpoint, "endpoint recovered: ramping back")
            }
        }
    }

    /// The controller's own metrics for this step's decisions.
    fn record_metrics(&self, decided: &BTreeMap<String, ClusterStep>) {
        let m = &self.shared.metrics;
        m.decisions.inc();
        m.last_decision.set(unix_now() as i64);
        for (name, step) in decided {
            let d = &step.decision;
            for mode in [Mode::Normal, Mode::FailStatic, Mode::Relaxed, Mode::Panic] {
                m.mode
                    .with_label_values(&[name.as_str(), mode_name(mode)])
                    .set(i64::from(mode == d.mode));
            }
            for e in &d.endpoints {
                m.weight
                    .with_label_values(&[name.as_str(), e.endpoint.as_str()])
                    .set(i64::from(e.weight));
                m.ejected
                    .with_label_values(&[name.as_str(), e.endpoint.as_str()])
                    .set(i64::from(
                        matches!(e.status, Status::Ejected { .. })
                            || (!e.healthy && e.status == Status::Held),
                    ));
            }
        }
    }

    /// The explanation `/decisions` and `gofe controller explain` show.
    fn view(
        &self,
        decided: &BTreeMap<String, ClusterStep>,
        events: Vec<EventView>,
        signal_error: Option<String>,
    ) -> DecisionsView {
        let mut view = DecisionsView {
            role: "leader",
            decided_at_unix: unix_now(),
            version: self.version,
            signal_error,
            no_signals: self.no_signals.clone(),
            clusters: BTreeMap::new(),
            events,
            published_at_unix_ms: None,
            proxies: Vec::new(),
            load_reporters: Vec::new(),
        };
        if let Publisher::Xds(server) = &self.publisher {
            view.published_at_unix_ms = self.published_at.map(unix_ms);
            view.proxies = proxies_view(server, self.published_at);
        }
        if let Some((store, _)) = &self.lrs {
            view.load_reporters = store
                .reporters()
                .into_iter()
                .map(|(node, endpoints)| LoadReporterView { node, endpoints })
                .collect();
        }
        for (name, step) in decided {
            let endpoints = step
                .decision
                .endpoints
                .iter()
                .zip(&step.base)
                .map(|(e, (_, base_weight))| EndpointView {
                    endpoint: e.endpoint.clone(),
                    base_weight: *base_weight,
                    weight: e.weight,
                    healthy: e.healthy,
                    state: state_name(e.status),
                    multiplier: e.multiplier,
                    reason: e.reason.clone(),
                    inputs: e.signals.map(|s| Inputs {
                        requests: s.requests,
                        rps: s.rps,
                        success_rate: s.success_rate,
                        latency_seconds: s.latency,
                        source: self
                            .origins
                            .get(name)
                            .and_then(|o| o.get(&e.endpoint))
                            .copied()
                            .unwrap_or(self.source.name()),
                    }),
                })
                .collect();
            view.clusters.insert(
                name.clone(),
                ClusterView {
                    mode: mode_name(step.decision.mode),
                    endpoints,
                },
            );
        }
        view
    }

    /// Runs steps every `interval` until `stop` resolves.
    pub async fn run_until(self, interval: Duration, stop: impl std::future::Future<Output = ()>) {
        let (_keep, reloads) = tokio::sync::mpsc::channel(1);
        self.run_with_reloads(interval, stop, reloads).await;
    }

    /// [`Controller::run_until`], applying each configuration that arrives on `reloads`
    /// (`SIGHUP`) before the next step.
    pub async fn run_with_reloads(
        mut self,
        interval: Duration,
        stop: impl std::future::Future<Output = ()>,
        mut reloads: tokio::sync::mpsc::Receiver<config::Loaded>,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = tick.tick() => { self.step().await; }
                Some(loaded) = reloads.recv() => self.reload(loaded),
                _ = &mut stop => return,
            }
        }
    }

    /// Takes a reloaded configuration: the proxy configuration (clusters, endpoints, base
    /// weights) and the policies apply from the next step, keeping the state of endpoints
    /// that remain. Settings that need a restart (signals, admin, xds, interval, kubernetes,
    /// state_file) are named in a warning and keep their running values.
    pub fn reload(&mut self, loaded: config::Loaded) {
        let restart: Vec<&str> = self.restart_settings_changed(&loaded.controller);
        if !restart.is_empty() {
            tracing::warn!(
                settings = restart.join(", "),
                "reload: these settings take effect only after a restart; the running values stay"
            );
        }
        self.default_policy = loaded
            .controller
            .policy
            .resolve(&file_policy(&loaded.controller));
        self.file_overrides = loaded.controller.clusters.clone();
        self.file_base = loaded.proxy.clone();
        self.set_topology(loaded.proxy, &BTreeMap::new());
        self.running = loaded.controller;
        tracing::info!("reload: configuration applied");
    }

    fn restart_settings_changed(&self, next: &config::ControllerConfig) -> Vec<&'static str> {
        let json = |v: &dyn erased::Json| v.json();
        let r = &self.running;
        [
            ("signals", json(&r.signals) != json(&next.signals)),
            ("admin", json(&r.admin) != json(&next.admin)),
            ("xds", json(&r.xds) != json(&next.xds)),
            ("interval", r.interval != next.interval),
            ("kubernetes", json(&r.kubernetes) != json(&next.kubernetes)),
            ("state_file", r.state_file != next.state_file),
            ("webhook", json(&r.webhook) != json(&next.webhook)),
            ("tracing", json(&r.tracing) != json(&next.tracing)),
        ]
        .into_iter()
        .filter_map(|(name, changed)| changed.then_some(name))
        .collect()
    }
}

/// Comparing configuration sections by their serialized form (they hold floats and durations,
/// and derive no `PartialEq`).
mod erased {
    /// A value as JSON.
    pub(crate) trait Json {
        fn json(&self) -> String;
    }

    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string(self).unwrap_or_default()
        }
    }
}

/// Runs a controller from its configuration file until SIGTERM/SIGINT, serving its admin
/// endpoint, publishing to `publisher`.
pub async fn run(path: &std::path::Path, publisher: Publisher) -> Result<(), ControllerError> {
    let loaded = config::load(path)?;
    config::check_files(path, &loaded)?;
    serve(loaded, publisher, shutdown_signal()).await
}

/// Runs a controller on an already loaded configuration until `stop` resolves.
pub async fn serve(
    loaded: config::Loaded,
    publisher: Publisher,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), ControllerError> {
    let (_keep, reloads) = tokio::sync::mpsc::channel(1);
    serve_with_reloads(loaded, publisher, stop, reloads).await
}

/// [`serve`], applying each configuration that arrives on `reloads` (file mode; in
/// Kubernetes mode policies come from TrafficPolicies and a reload is refused with a warning).
pub async fn serve_with_reloads(
    loaded: config::Loaded,
    publisher: Publisher,
    stop: impl std::future::Future<Output = ()>,
    mut reloads: tokio::sync::mpsc::Receiver<config::Loaded>,
) -> Result<(), ControllerError> {
    let interval = loaded.controller.interval;
    let kubernetes = match loaded.controller.kubernetes.clone() {
        Some(settings) => Some((kubernetes::client().await?, settings)),
        None => None,
    };
    let admin_addr = loaded.controller.admin.address.clone();
    let (xds_stop, xds_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut publisher = publisher;
    let mut xds_task = None;
    if let (Some(xds), Publisher::DryRun) = (&loaded.controller.xds, &publisher) {
        let mut options = server_options(&loaded.controller.signals, loaded.controller.interval);
        options.require_identity = xds
            .tls
            .as_ref()
            .is_some_and(config::XdsServerTlsConfig::requires_client_certificate);
        let mut tls = match &xds.tls {
            Some(t) => Some((
                Arc::new(gofe_xds::LiveTls::load(t.files()).map_err(ControllerError::XdsTls)?),
                t.reload_interval,
            )),
            None => None,
        };
        if let Some(identity) = &loaded.controller.identity {
            let authenticator = match (&identity.tokens_file, &kubernetes) {
                (_, Some((client, _))) if identity.token_review => ca::Authenticator::TokenReview {
                    client: client.clone(),
                    audiences: identity.token_audiences.clone(),
                },
                (Some(path), _) => ca::Authenticator::Tokens(path.into()),
                (None, _) => {
                    return Err(ControllerError::Ca(ca::CaError::Invalid(
                        "set tokens_file or token_review".into(),
                    )))
                }
            };
            let mesh = Arc::new(ca::MeshCa::start(identity, authenticator)?);
            let live = Arc::new(gofe_xds::LiveTls::fixed(xds_port_tls(
                &mesh,
                &identity.server_names,
            )?));
            tokio::spawn(renew_xds_certificate(
                Arc::clone(&mesh),
                Arc::clone(&live),
                identity.server_names.clone(),
            ));
            // A proxy asks for its first certificate without one: the handshake lets it in,
            // and ADS refuses a stream without a certificate.
            options.require_identity = true;
            options.authority = Some(mesh);
            tls = Some((live, Duration::from_secs(3600)));
        }
        let server = gofe_xds::AdsServer::new(options);
        let listener = tokio::net::TcpListener::bind(&xds.address)
            .await
            .map_err(|source| ControllerError::Bind {
                address: xds.address.clone(),
                source,
            })?;
        let mode = match &xds.tls {
            None if loaded.controller.identity.is_some() => "mutual TLS from the mesh CA",
            None => "plaintext",
            Some(t) if t.client_ca_file.is_none() => "TLS",
            Some(t) if t.requires_client_certificate() => "mutual TLS",
            Some(_) => "mutual TLS, client certificates optional",
        };
        tracing::info!(xds = %listener.local_addr().map_or(xds.address.clone(), |a| a.to_string()), mode, "serving ADS");
        let stopped = async {
            let _ = xds_stopped.await;
        };
        xds_task = Some(match tls {
            None => tokio::spawn(gofe_xds::serve(listener, server.clone(), None, stopped)),
            Some((live, every)) => tokio::spawn(gofe_xds::serve_reloading(
                listener,
                server.clone(),
                live,
                every,
                stopped,
            )),
        });
        publisher = Publisher::Xds(server);
    }
    let webhook_config = loaded.controller.webhook.clone();
    let controller = Controller::new(loaded, publisher)?;
    let shared = controller.shared();
    let webhook = match &webhook_config {
        Some(config) => Some(
            webhook::Webhook::start_with(
                config,
                webhook::WebhookMetrics::new(&shared.metrics.registry),
            )
            .await?,
        ),
        None => None,
    };
    let addr: SocketAddr = admin_addr.parse().map_err(|e| ControllerError::Bind {
        address: admin_addr.clone(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
    })?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ControllerError::Bind {
            address: admin_addr.clone(),
            source,
        })?;
    tracing::info!(admin = %listener.local_addr().map_or(admin_addr.clone(), |a| a.to_string()), "gofe controller running");
    let server = tokio::spawn(admin::serve(listener, shared));
    match kubernetes {
        Some((client, settings)) => {
            let refused = tokio::spawn(async move {
                while reloads.recv().await.is_some() {
                    tracing::warn!("reload: in Kubernetes mode clusters and policies come from TrafficPolicies and EndpointSlices; the file's other settings need a restart");
                }
            });
            kubernetes::drive(controller, client, settings, interval, stop).await;
            refused.abort();
        }
        None => controller.run_with_reloads(interval, stop, reloads).await,
    }
    server.abort();
    drop(webhook);
    let _ = xds_stop.send(());
    if let Some(t) = xds_task {
        let _ = t.await;
    }
    Ok(())
}

/// The controller's xDS server options: load reporting on when `signals.lrs` says so, at its
/// interval, kept over the signal window (`signals` of a controller deciding every
/// `interval`).
pub fn server_options(
    signals: &config::SignalsConfig,
    interval: Duration,
) -> gofe_xds::ServerOptions {
    gofe_xds::ServerOptions {
        load_reporting: signals.lrs.enabled.then(|| gofe_xds::LoadReportingOptions {
            interval: signals.lrs.interval,
            window: signals.lrs_window(interval),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The xDS port's TLS configuration with a fresh certificate from the mesh CA: client
/// certificates verified against its root, and optional at the handshake.
fn xds_port_tls(
    mesh: &ca::MeshCa,
    names: &[String],
) -> Result<Arc<rustls::ServerConfig>, ControllerError> {
    let (chain, key) = mesh.server_certificate(names)?;
    gofe_xds::server_tls_from_pem(&chain, &key, mesh.root_pem(), false)
        .map_err(ControllerError::XdsTls)
}

/// Renews the xDS port's certificate at half its lifetime, for as long as the controller runs
/// (new handshakes use the new one; connections already open keep theirs).
async fn renew_xds_certificate(
    mesh: Arc<ca::MeshCa>,
    live: Arc<gofe_xds::LiveTls>,
    names: Vec<String>,
) {
    let half = mesh.server_lifetime() / 2;
    let mut wait = half;
    loop {
        tokio::time::sleep(wait).await;
        match xds_port_tls(&mesh, &names) {
            Ok(config) => {
                live.replace(config);
                tracing::info!("mesh CA: renewed the xDS port's certificate");
                wait = half;
            }
            Err(e) => {
                tracing::error!(error = %e, "mesh CA: cannot renew the xDS port's certificate; retrying in 10s");
                wait = Duration::from_secs(10);
            }
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn controller(extra: &str) -> Controller {
        let proxy = gofe_model::parse(
            "p.yaml",
            "clusters:\n  - name: web\n    endpoints: [{ address: \"10.0.0.1:80\" }]\n  - name: idle\n    endpoints: []\n",
        )
        .unwrap();
        let controller = config::parse(
            "c.yaml",
            &format!("proxy_config: p.yaml\nsignals: {{ embedded: {{ targets: [\"127.0.0.1:1\"] }} }}\n{extra}"),
        )
        .unwrap();
        Controller::new(config::Loaded { controller, proxy }, Publisher::DryRun).unwrap()
    }

    #[test]
    fn api_listeners_are_the_declared_ones_then_one_per_cluster_named_by_its_service() {
        let api = |c: &Controller| -> Vec<(String, String)> {
            c.api_listeners(&c.base)
                .into_iter()
                .map(|a| (a.name, a.cluster))
                .collect()
        };
        let pair = |n: &str, c: &str| (n.to_owned(), c.to_owned());
        let c = controller("xds: { address: \"127.0.0.1:0\" }\n");
        assert!(api(&c).is_empty(), "none by default");
        let mut c = controller(
            "xds:\n  address: \"127.0.0.1:0\"\n  api_listeners:\n    all_clusters: true\n    services: [{ name: front, cluster: web }, { name: idle }]\n",
        );
        assert_eq!(
            api(&c),
            [
                pair("front", "web"),
                pair("idle", "idle"),
                pair("web", "web")
            ],
            "a cluster a declared listener already names is not repeated"
        );
        c.set_api_listener_names(BTreeMap::from([("web".to_owned(), "web.shop".to_owned())]));
        assert_eq!(
            api(&c),
            [
                pair("front", "web"),
                pair("idle", "idle"),
                pair("web.shop", "web")
            ]
        );
    }

    #[test]
    fn the_metrics_show_the_process_and_the_build() {
        let text = Metrics::new().render();
        for want in [
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_cpu_seconds_total ",
            "gofe_build_info{component=\"controller\",",
        ] {
            assert!(text.contains(want), "{want} missing:\n{text}");
        }
    }

    /// A collector on 127.0.0.1 that keeps every decoded `ExportTraceServiceRequest`.
    async fn collector() -> (
        String,
        Arc<std::sync::Mutex<Vec<gofe_trace::otlp::OtlpSpan>>>,
        tokio::task::JoinHandle<()>,
    ) {
        use http_body_util::BodyExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("http://{}/v1/traces", listener.local_addr().unwrap());
        let spans = Arc::new(std::sync::Mutex::new(Vec::new()));
        let kept = Arc::clone(&spans);
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let kept = Arc::clone(&kept);
                conns.spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let kept = Arc::clone(&kept);
                            async move {
                                let body = req.into_body().collect().await?.to_bytes();
                                let decoded = gofe_trace::otlp::decode_spans(&body);
                                kept.lock().unwrap().extend(decoded.unwrap_or_default());
                                Ok::<_, hyper::Error>(http::Response::new(http_body_util::Empty::<
                                    bytes::Bytes,
                                >::new(
                                )))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (uri, spans, task)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_decision_step_is_a_trace_with_its_inputs() {
        let (uri, spans, task) = collector().await;
        let mut c = controller(&format!(
            "tracing: {{ provider: {{ opentelemetry: {{ service_name: ctl, http_service: {{ http_uri: {{ uri: \"{uri}\" }} }} }} }}, batch: {{ schedule_delay: \"10ms\" }} }}\n"
        ));
        // Signals cannot be had (nothing listens on 127.0.0.1:1): the step holds, and says why.
        let view = c.step().await;
        assert!(c.flush_traces(Duration::from_secs(30)).await);
        let spans = spans.lock().unwrap().clone();
        task.abort();
        let named = |name: &str| -> Vec<&gofe_trace::otlp::OtlpSpan> {
            spans.iter().filter(|s| s.name == name).collect()
        };
        let root = named("controller.step");
        assert_eq!(root.len(), 1, "{spans:#?}");
        let root = root[0];
        assert!(root.parent_span_id.is_empty());
        let signals = named("controller.signals")[0];
        assert_eq!(signals.parent_span_id, root.span_id);
        assert_eq!(
            signals.status.as_ref().map(|s| s.code),
            Some(gofe_trace::otlp::STATUS_CODE_ERROR),
            "the lost signals are the span's error"
        );
        let decide = named("controller.decide")[0];
        assert_eq!(decide.parent_span_id, root.span_id);
        let clusters = named("controller.decide.cluster");
        assert_eq!(clusters.len(), 2, "web and idle");
        let attr = |s: &gofe_trace::otlp::OtlpSpan, key: &str| -> String {
            let v = s
                .attributes
                .iter()
                .find(|kv| kv.key == key)
                .and_then(|kv| kv.value.clone())
                .and_then(|v| v.value);
            match v {
                Some(gofe_trace::otlp::any_value::Value::StringValue(s)) => s,
                Some(gofe_trace::otlp::any_value::Value::IntValue(i)) => i.to_string(),
                None => String::new(),
            }
        };
        let web = clusters
            .iter()
            .find(|s| attr(s, "gofe.cluster") == "web")
            .expect("web's decision");
        assert_eq!(web.parent_span_id, decide.span_id);
        assert_eq!(
            attr(web, "gofe.mode"),
            view.clusters["web"].mode,
            "as /decisions says"
        );
        let endpoints: serde_json::Value =
            serde_json::from_str(&attr(web, "gofe.endpoints")).unwrap();
        assert_eq!(endpoints[0]["endpoint"], "10.0.0.1:80");
        assert_eq!(
            endpoints[0]["reason"],
            view.clusters["web"].endpoints[0].reason.as_str(),
            "{endpoints}"
        );
        let publish = named("controller.publish")[0];
        assert_eq!(publish.parent_span_id, root.span_id);
        assert_eq!(
            attr(publish, "gofe.published"),
            "1",
            "the first step publishes"
        );
        assert!(spans.iter().all(|s| s.trace_id == root.trace_id));
    }

    #[tokio::test]
    async fn a_cluster_the_source_returns_nothing_for_is_named() {
        let mut c = controller("");
        c.note_missing_clusters(&signals::Snapshot::new());
        assert_eq!(
            c.no_signals,
            vec!["web"],
            "a cluster without endpoints expects none"
        );
        let mut snapshot = signals::Snapshot::new();
        snapshot.insert("web".into(), BTreeMap::new());
        c.note_missing_clusters(&snapshot);
        assert!(c.no_signals.is_empty());
    }

    #[tokio::test]
    async fn a_reload_applies_clusters_and_policies_and_names_what_needs_a_restart() {
        let mut c = controller("");
        assert!(c.restart_settings_changed(&c.running.clone()).is_empty());
        let next = config::parse(
            "c.yaml",
            "proxy_config: p.yaml\ninterval: 9s\nsignals: { window: 7s, embedded: { targets: [\"127.0.0.1:1\"] } }\npolicy: { max_ejection_percent: 20 }\n",
        )
        .unwrap();
        assert_eq!(
            c.restart_settings_changed(&next),
            vec!["signals", "interval"]
        );
        let proxy = gofe_model::parse(
            "p.yaml",
            "clusters:\n  - name: api\n    endpoints: [{ address: \"10.0.0.9:80\" }]\n",
        )
        .unwrap();
        c.reload(config::Loaded {
            controller: next,
            proxy,
        });
        assert_eq!(c.policies.keys().collect::<Vec<_>>(), vec!["api"]);
        assert_eq!(c.policies["api"].max_ejection_percent, 20);
    }
}
