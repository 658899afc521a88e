//! gofe-proxy: the data plane every other gofe part steers.
//!
//! An HTTP/1.1 and HTTP/2 reverse proxy (cleartext with h2c prior knowledge, or TLS with ALPN)
//! that routes by virtual host and path, balances over weighted endpoints (smooth weighted round
//! robin or weighted least-request, both from `gofe-core`), and exports per-endpoint metrics in
//! Prometheus format for the controller and the metrics adapter.
//!
//! ```text
//!   config file ──load/validate──▶ ProxyConfig ──Proxy::apply──▶ clusters + route tables
//!   (SIGHUP, file watch)                                             │  (ArcSwap, per listener)
//!                                                                     ▼
//!   client ──▶ listener ──▶ forward::serve ──route──▶ Cluster::pick ──▶ upstream (pooled)
//!                                     └── metrics (pre-resolved atomics) ──▶ admin /metrics
//! ```
//!
//! Downstream connections are served by hyper (HTTP/1.1 and HTTP/2). Upstream, HTTP/2 clusters
//! use hyper-util's client; HTTP/1.1 clusters use the proxy's own codec (`h1`) on per-endpoint
//! pools (`upstream`), run by the task serving the client, so a request crosses no channel and
//! wakes no second task on its way. [`config`] owns the file format and its validation; [`Proxy`] turns a valid configuration
//! into running listeners and swaps it atomically while traffic flows (in-flight requests keep
//! the snapshot they started with); [`run`] is the process lifecycle around it (signals, reload,
//! drain). [`demo`] is a tiny backend for `gofe up`, benchmarks and tests. [`xds`] is the
//! proxy's xDS client (`gofe proxy --bootstrap`); the controller's decisions live in
//! `gofe-controller`, the pure outlier and balancing math in `gofe-core`.
//!
//! The admin listener serves `/metrics` (and Envoy's `/stats/prometheus`), `/ready` (200 once
//! the configuration is serving: at once for a file, after the first snapshot or
//! `initial_fetch_timeout` for xDS; 503 after `POST /healthcheck/fail` until
//! `POST /healthcheck/ok`), `/config_dump` (the configuration, every endpoint's configured and
//! passive health, and the xDS client's state), `/clusters` and `/server_info` (Envoy's forms).
//! Listeners may write access logs (`access_log`), off the request path, and trace requests
//! (`tracing`: W3C or B3 context passed on, spans exported over OTLP/HTTP by `gofe-trace`). Routes may inject
//! faults (`fault`, Envoy's fault filter) and limit their rate (`local_ratelimit`, Envoy's local
//! rate limit filter), both compiled when the configuration is applied, and mirror a fraction
//! of their requests to shadow clusters, fire and forget (`request_mirror_policies`, see
//! `mirror`).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use serde::Serialize;

mod access_log;
mod admin;
mod body;
mod capture;
mod chain;
mod cluster;
pub use gofe_model as config;
mod ctx;
pub mod demo;
mod fault;
mod forward;
mod framing;
mod h1;
mod health;
pub mod identity;
mod listener;
mod metrics;
mod mirror;
mod ratelimit;
mod rbac;
mod request_body;
mod route;
pub mod run;
mod tcp;
mod tls;
mod tracer;
mod upstream;
mod upstream_tls;
pub mod xds;

pub use admin::{install_log_control, LogControl};
pub use body::ProxyBody;
pub use config::ProxyConfig;

use crate::admin::RunningAdmin;
use crate::cluster::{Cluster, ClusterLimits, PoolKey, UpstreamClient};
use crate::health::{EndpointHealth, HealthSource};
use crate::listener::{ListenerLimits, ListenerShared, ListenerState, RunningListener};
use crate::metrics::Metrics;
use crate::route::RouteTable;

/// Longest wait at shutdown for a listener's access-log writer to write what it holds.
const ACCESS_LOG_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait at shutdown for a listener's span exporter to export what it holds.
const TRACING_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The configuration the proxy is serving, as `/config_dump` shows it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ActiveConfig {
    /// Increments with every applied configuration; 0 before the first.
    pub version: u64,
    /// Where it came from (a file path, `embedded`, …).
    pub source: String,
    /// When it was applied, in seconds since the Unix epoch.
    pub applied_at_unix: u64,
    /// The configuration itself.
    pub config: ProxyConfig,
}

/// Why a (valid) configuration could not be put into service. The previous one keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// A listener or the admin address could not be bound.
    #[error("cannot bind {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A listener's TLS files could not be loaded.
    #[error("listener {listener}: TLS: {message}")]
    Tls {
        /// The listener's name.
        listener: String,
        /// What went wrong.
        message: String,
    },
    /// A listener's access log could not be set up (its file cannot be opened, say).
    #[error("listener {listener}: {message}")]
    AccessLog {
        /// The listener's name.
        listener: String,
        /// What went wrong.
        message: String,
    },
    /// A listener's tracing could not be set up.
    #[error("listener {listener}: {message}")]
    Tracing {
        /// The listener's name.
        listener: String,
        /// What went wrong.
        message: String,
    },
    /// The configuration did not pass validation.
    #[error("invalid configuration:\n{0}")]
    Invalid(String),
}

pub(crate) struct Shared {
    metrics: Arc<Metrics>,
    active: ArcSwap<ActiveConfig>,
    draining: AtomicBool,
    /// Set while an xDS client waits for its first snapshot: `/ready` says 503 until then.
    warming: AtomicBool,
    /// Set by the admin's `/healthcheck/fail` (cleared by `/healthcheck/ok`): `/ready` says
    /// 503 `DRAINING` so load balancers take the proxy out, while it goes on serving.
    health_failed: AtomicBool,
    /// When the proxy started (for `/server_info`'s uptime).
    started: std::time::Instant,
    /// The clusters being served, by name, for `/config_dump` (never read per request).
    clusters: ArcSwap<Vec<Arc<Cluster>>>,
    /// With an xDS client: the names of the bootstrap's static clusters (their endpoints'
    /// health is the configuration's; every other cluster's is the control plane's).
    static_clusters: std::sync::Mutex<Option<Arc<HashSet<String>>>>,
    /// With an xDS client: its state, for `/config_dump`.
    xds: std::sync::Mutex<Option<xds::status::XdsView>>,
}

impl Shared {
    /// Who configured the endpoints of cluster `name`.
    fn health_source(statics: Option<&HashSet<String>>, name: &str) -> HealthSource {
        match statics {
            Some(s) if !s.contains(name) => HealthSource::Controller,
            _ => HealthSource::Config,
        }
    }
}

/// What only the (serialized) apply path touches.
#[derive(Default)]
struct Control {
    listeners: HashMap<SocketAddr, RunningListener>,
    /// The `bind_to_port: false` listeners, by address (kept across swaps, as bound ones are,
    /// so their connections see each new state).
    virtuals: HashMap<SocketAddr, Arc<ListenerShared>>,
    /// The filter chains of listeners that have them, by listener address and chain index
    /// (`usize::MAX`: the default chain), kept across swaps as virtual listeners are.
    chains: HashMap<(SocketAddr, usize), Arc<ListenerShared>>,
    admin: Option<(SocketAddr, RunningAdmin)>,
    pools: HashMap<PoolKey, UpstreamClient>,
    /// Outlier-detection state per (cluster, endpoint), kept across swaps.
    health: HashMap<(String, String), Arc<EndpointHealth>>,
    /// Circuit-breaker counters per cluster, kept across swaps.
    limits: HashMap<String, Arc<ClusterLimits>>,
    /// Each cluster's outlier-detection interval and when its beat started, kept across swaps
    /// that leave the interval unchanged.
    interval_epochs: HashMap<String, (Duration, tokio::time::Instant)>,
    /// Each rate-limited cluster's bucket with the configuration it was built from, kept
    /// across swaps that leave it unchanged.
    cluster_buckets: HashMap<
        String,
        (
            config::local_ratelimit::TokenBucketConfig,
            Arc<ratelimit::TokenBucket>,
        ),
    >,
    /// Each listener's access logs with the configuration they were built from, kept across
    /// swaps that leave it unchanged (the writer thread and open files stay).
    access_logs: HashMap<Arc<str>, (Vec<config::AccessLogConfig>, Arc<access_log::AccessLog>)>,
    /// Each listener's tracer with the configuration it was built from, kept across swaps
    /// that leave it unchanged (the exporter task and its queue stay).
    tracers: HashMap<Arc<str>, (config::TracingConfig, Arc<tracer::Tracer>)>,
    /// Routes' filter state (active faults, rate-limit buckets), kept across swaps that leave
    /// it unchanged.
    filters: route::FilterState,
    clusters: HashSet<String>,
    version: u64,
}

/// A running proxy: its listeners, clusters and admin endpoint.
///
/// Cheap to clone; clones control the same proxy. Must be used inside a Tokio runtime.
#[derive(Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
    control: Arc<tokio::sync::Mutex<Control>>,
}

impl Default for Proxy {
    fn default() -> Self {
        Self::new()
    }
}

impl Proxy {
    /// A proxy with no configuration (nothing listening yet).
    pub fn new() -> Self {
        Proxy {
            shared: Arc::new(Shared {
                metrics: Arc::new(Metrics::new()),
                active: ArcSwap::from_pointee(ActiveConfig::default()),
                draining: AtomicBool::new(false),
                warming: AtomicBool::new(false),
                health_failed: AtomicBool::new(false),
                started: std::time::Instant::now(),
                clusters: ArcSwap::default(),
                static_clusters: std::sync::Mutex::new(None),
                xds: std::sync::Mutex::new(None),
            }),
            control: Arc::default(),
        }
    }

    /// Puts `config` into service and returns its version.
    ///
    /// Listeners whose address stays keep their socket and connections and switch to the new
    /// routes atomically; new addresses are bound; removed ones stop accepting and drain for up
    /// to `drain`. Connection pools of unchanged clusters are kept. On any error nothing changes.
    pub async fn apply(
        &self,
        config: ProxyConfig,
        source: &str,
        drain: Duration,
    ) -> Result<u64, ApplyError> {
        let problems = config::validate(&config);
        if !problems.is_empty() {
            let text: Vec<String> = problems.iter().map(|p| p.in_file(source)).collect();
            return Err(ApplyError::Invalid(text.join("\n")));
        }
        let metrics = &self.shared.metrics;
        let statics = self
            .shared
            .static_clusters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let mut control = self.control.lock().await;

        // Clusters, reusing connection pools, health and limits of what stays.
        let mut pools = HashMap::new();
        let mut clusters = HashMap::new();
        let mut health = HashMap::new();
        let mut limits = HashMap::new();
        let mut cluster_buckets = HashMap::new();
        let mut access_logs = HashMap::new();
        let mut tracers = HashMap::new();
        let mut filter_state = route::FilterState::default();
        for c in &config.clusters {
            let name = c.name.clone();
            let key = PoolKey::of(c);
            let client = control
                .pools
                .get(&key)
                .cloned()
                .map_or_else(|| cluster::new_client(&key, metrics), Ok)
                .map_err(ApplyError::Invalid)?;
            pools.insert(key, client.clone());
            let max_connections = c.circuit_breakers.max_connections;
            let cluster_limits = match control.limits.get(&name) {
                Some(l) if l.slot_count == max_connections => Arc::clone(l),
                _ => Arc::new(ClusterLimits::new(max_connections)),
            };
            limits.insert(name.clone(), Arc::clone(&cluster_limits));
            let bucket = c.local_ratelimit.as_ref().map(|l| {
                let bucket = match control.cluster_buckets.get(&name) {
                    Some((was, b)) if *was == l.token_bucket => Arc::clone(b),
                    _ => Arc::new(ratelimit::TokenBucket::from_config(&l.token_bucket)),
                };
                cluster_buckets.insert(name.clone(), (l.token_bucket.clone(), Arc::clone(&bucket)));
                bucket
            });
            let previous = &control.health;
            let built = Cluster::build(
                c,
                Shared::health_source(statics.as_deref(), &name),
                client,
                metrics,
                &mut |address| {
                    let key = (name.clone(), address.to_owned());
                    let h = previous.get(&key).cloned().unwrap_or_else(|| {
                        Arc::new(EndpointHealth::new(
                            &name,
                            address,
                            metrics.health(&name, address),
                        ))
                    });
                    health.insert(key, Arc::clone(&h));
                    h
                },
                cluster_limits,
                bucket,
                config.locality.as_ref(),
            )
            .map_err(ApplyError::Invalid)?;
            clusters.insert(name, Arc::new(built));
        }

        // Listener states: one per listener, and one per filter chain of a listener that has
        // them (each chain is served as the listener would be with that chain alone).
        let mut build = |l: &config::ListenerConfig| -> Result<ListenerState, ApplyError> {
            let name: Arc<str> = l
                .name
                .as_ref()
                .map_or(l.address.as_str(), |n| n.as_str())
                .into();
            let mut routes = None;
            let mut filters =
                route::Filters::new(metrics, &name, &control.filters, &mut filter_state);
            for f in &l.filters {
                routes = Some(
                    RouteTable::build(&f.config, &clusters, &mut filters)
                        .map_err(ApplyError::Invalid)?,
                );
            }
            let tcp = match &l.tcp_proxy {
                None => None,
                Some(t) => {
                    // A tcp listener routes nothing: an empty table keeps the state's shape.
                    routes = Some(
                        RouteTable::build(
                            &config::RouterConfig::default(),
                            &clusters,
                            &mut filters,
                        )
                        .map_err(ApplyError::Invalid)?,
                    );
                    Some(build_tcp_proxy(t, &name, &config, &clusters, metrics)?)
                }
            };
            let wants_original_dst =
                l.use_original_dst || tcp.as_ref().is_some_and(tcp::TcpProxy::passthrough);
            let tls = match &l.tls {
                None => None,
                Some(t) => Some(tls::acceptor(t).map_err(|message| ApplyError::Tls {
                    listener: name.to_string(),
                    message,
                })?),
            };
            let stats = metrics.listener(&name);
            let access_log = match control.access_logs.get(&name) {
                Some((built_from, log)) if *built_from == l.access_log => Some(Arc::clone(log)),
                _ => access_log::AccessLog::build(
                    &l.access_log,
                    metrics.access_log_dropped.with_label_values(&[&*name]),
                )
                .map_err(|e| ApplyError::AccessLog {
                    listener: name.to_string(),
                    message: e.to_string(),
                })?,
            };
            if let Some(log) = &access_log {
                access_logs.insert(Arc::clone(&name), (l.access_log.clone(), Arc::clone(log)));
            }
            let tracer = match (&l.tracing, control.tracers.get(&name)) {
                (None, _) => None,
                (Some(t), Some((built_from, tracer))) if built_from == t => {
                    Some(Arc::clone(tracer))
                }
                (Some(t), _) => {
                    let label = [&*name];
                    let counters = gofe_trace::Counters {
                        exported: metrics.tracing_exported.with_label_values(&label),
                        dropped: metrics.tracing_dropped.with_label_values(&label),
                        failed: metrics.tracing_failed.with_label_values(&label),
                    };
                    Some(tracer::Tracer::build(t, counters).map_err(|message| {
                        ApplyError::Tracing {
                            listener: name.to_string(),
                            message,
                        }
                    })?)
                }
            };
            if let (Some(t), Some(tracer)) = (&l.tracing, &tracer) {
                tracers.insert(Arc::clone(&name), (t.clone(), Arc::clone(tracer)));
            }
            let rbac = l
                .rbac
                .as_ref()
                .map(|r| rbac::Rbac::build(r, &name, &metrics.rbac_denied).map(Arc::new))
                .transpose()
                .map_err(ApplyError::Invalid)?;
            Ok(ListenerState {
                routes: routes
                    .ok_or_else(|| ApplyError::Invalid("listener without router".into()))?,
                tls,
                stats,
                name,
                limits: ListenerLimits {
                    max_connections: l.max_connections,
                    max_header_bytes: (l.max_request_headers_kb as usize).saturating_mul(1024),
                    header_timeout: (!l.request_headers_timeout.is_zero())
                        .then_some(l.request_headers_timeout),
                    idle_timeout: (!l.idle_timeout.is_zero()).then_some(l.idle_timeout),
                },
                access_log,
                tracer,
                rbac,
                tcp,
                capture: None,
                wants_original_dst,
                chains: None,
            })
        };
        let mut states = Vec::with_capacity(config.listeners.len());
        let mut chain_holders = HashMap::new();
        let mut chain_updates = Vec::new();
        for l in &config.listeners {
            let addr: SocketAddr = l
                .address
                .parse()
                .map_err(|_| ApplyError::Invalid(format!("bad address {}", l.address)))?;
            if l.filter_chains.is_empty() {
                states.push((addr, build(l)?, l.bind_to_port, l.use_original_dst));
                continue;
            }
            // What stays keeps its holder (by listener address and chain index), its new state
            // stored at commit, so its connections see each new state.
            let mut holder = |index: usize, state: ListenerState| {
                let key = (addr, index);
                let h = match control.chains.get(&key) {
                    Some(existing) => {
                        chain_updates.push((Arc::clone(existing), state));
                        Arc::clone(existing)
                    }
                    None => RunningListener::virtual_listener(state),
                };
                chain_holders.insert(key, Arc::clone(&h));
                h
            };
            let own = config::ListenerConfig {
                filter_chains: Vec::new(),
                ..l.clone()
            };
            let default = match l.has_default_chain() {
                true => Some(holder(usize::MAX, build(&own)?)),
                false => None,
            };
            let mut chains = Vec::with_capacity(l.filter_chains.len());
            for c in &l.filter_chains {
                let state = build(&l.chain_view(c))?;
                chains.push((c.filter_chain_match.clone(), state));
            }
            let wants_original_dst = l.use_original_dst
                || default
                    .as_ref()
                    .is_some_and(|d| d.state.load().wants_original_dst)
                || chains.iter().any(|(_, s)| s.wants_original_dst);
            let chains: Vec<_> = chains
                .into_iter()
                .enumerate()
                .map(|(i, (m, state))| (m, holder(i, state)))
                .collect();
            // The listener's own state serves no connection: its limits, statistics and capture
            // table apply before a chain is picked.
            let mut state = if l.has_default_chain() {
                build(&own)?
            } else {
                build(&config::ListenerConfig {
                    protocol: "http".into(),
                    tls: None,
                    tcp_proxy: None,
                    filters: vec![config::FilterConfig {
                        kind: "router".into(),
                        config: config::RouterConfig::default(),
                    }],
                    ..own
                })?
            };
            state.wants_original_dst = wants_original_dst;
            state.chains = Some(Arc::new(chain::Chains::new(
                chains,
                default,
                l.tls_inspector,
                l.http_inspector,
            )));
            states.push((addr, state, l.bind_to_port, l.use_original_dst));
        }

        // Virtual (bind_to_port: false) listeners: what stays keeps its holder, its new state
        // stored at commit; capture listeners get the table of all of them.
        let mut virtuals = HashMap::new();
        let mut virtual_updates = Vec::new();
        let mut bound_states = Vec::with_capacity(states.len());
        for (addr, state, bind, capture) in states {
            if bind {
                bound_states.push((addr, state, capture));
                continue;
            }
            match control.virtuals.get(&addr) {
                Some(existing) => {
                    virtuals.insert(addr, Arc::clone(existing));
                    virtual_updates.push((Arc::clone(existing), state));
                }
                None => {
                    virtuals.insert(addr, RunningListener::virtual_listener(state));
                }
            }
        }
        let handoff = Arc::new(capture::Handoff::new(
            virtuals.iter().map(|(a, v)| (*a, Arc::clone(v))),
        ));
        let states: Vec<(SocketAddr, ListenerState)> = bound_states
            .into_iter()
            .map(|(addr, mut state, capture)| {
                if capture && !handoff.is_empty() {
                    state.capture = Some(Arc::clone(&handoff));
                }
                (addr, state)
            })
            .collect();

        // Bind what is new before touching anything that serves.
        let mut bound = Vec::new();
        let mut updates = Vec::new();
        for (addr, state) in states {
            if control.listeners.contains_key(&addr) {
                updates.push((addr, state));
            } else {
                match RunningListener::bind(addr, state) {
                    Ok(l) => bound.push((addr, l)),
                    Err(source) => {
                        for (_, l) in bound {
                            l.stop(Duration::ZERO).await;
                        }
                        return Err(ApplyError::Bind {
                            address: addr,
                            source,
                        });
                    }
                }
            }
        }
        let admin_addr =
            match &config.admin {
                Some(a) => Some(a.address.parse::<SocketAddr>().map_err(|_| {
                    ApplyError::Invalid(format!("bad admin address {}", a.address))
                })?),
                None => None,
            };
        let mut new_admin = None;
        if admin_addr != control.admin.as_ref().map(|(a, _)| *a) {
            if let Some(addr) = admin_addr {
                match RunningAdmin::bind(addr, Arc::clone(&self.shared)) {
                    Ok(a) => new_admin = Some((addr, a)),
                    Err(source) => {
                        for (_, l) in bound {
                            l.stop(Duration::ZERO).await;
                        }
                        return Err(ApplyError::Bind {
                            address: addr,
                            source,
                        });
                    }
                }
            }
        }

        // Commit: swap states, start new listeners, retire old ones.
        let keep: HashSet<SocketAddr> = updates
            .iter()
            .map(|(a, _)| *a)
            .chain(bound.iter().map(|(a, _)| *a))
            .collect();
        for (addr, state) in updates {
            if let Some(l) = control.listeners.get(&addr) {
                l.shared.state.store(Arc::new(state));
            }
        }
        for (holder, state) in virtual_updates.into_iter().chain(chain_updates) {
            holder.state.store(Arc::new(state));
        }
        control.virtuals = virtuals;
        control.chains = chain_holders;
        control.listeners.extend(bound);
        let retired: Vec<SocketAddr> = control
            .listeners
            .keys()
            .filter(|a| !keep.contains(a))
            .copied()
            .collect();
        for addr in retired {
            if let Some(l) = control.listeners.remove(&addr) {
                tracing::info!(%addr, "listener removed; draining");
                tokio::spawn(l.stop(drain));
            }
        }
        if admin_addr != control.admin.as_ref().map(|(a, _)| *a) {
            if let Some((_, old)) = control.admin.take() {
                old.stop().await;
            }
            control.admin = new_admin;
        }

        // Forget the state and series of what left.
        for (key, h) in &control.health {
            if !health.contains_key(key) {
                h.retire();
                metrics.forget_endpoint(&key.0, &key.1);
            }
        }
        let cluster_names: HashSet<String> = clusters.keys().cloned().collect();
        for gone in control.clusters.difference(&cluster_names) {
            metrics.forget_cluster(gone);
        }
        // Each cluster's detection interval keeps the beat of its first snapshot with that
        // interval (see `Cluster::start_interval`).
        let mut interval_epochs = HashMap::new();
        for (name, c) in &clusters {
            let Some(every) = c.outlier.as_ref().map(|o| o.interval) else {
                continue;
            };
            let epoch = match control.interval_epochs.get(name) {
                Some((was, epoch)) if *was == every => *epoch,
                _ => tokio::time::Instant::now(),
            };
            interval_epochs.insert(name.clone(), (every, epoch));
            c.start_interval(epoch);
        }
        control.interval_epochs = interval_epochs;
        control.health = health;
        control.limits = limits;
        control.cluster_buckets = cluster_buckets;
        control.access_logs = access_logs;
        control.tracers = tracers;
        control.filters = filter_state;
        control.clusters = cluster_names;
        control.pools = pools;
        let mut serving: Vec<Arc<Cluster>> = clusters.values().cloned().collect();
        serving.sort_by(|a, b| a.name.cmp(&b.name));
        self.shared.clusters.store(Arc::new(serving));
        control.version += 1;
        let version = control.version;
        self.shared.active.store(Arc::new(ActiveConfig {
            version,
            source: source.to_owned(),
            applied_at_unix: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            config,
        }));
        metrics.config_version.set(version as i64);
        Ok(version)
    }

    /// The addresses the listeners are bound to (useful with port 0), keyed by the configured
    /// address.
    pub async fn listener_addrs(&self) -> HashMap<SocketAddr, SocketAddr> {
        let control = self.control.lock().await;
        control
            .listeners
            .iter()
            .map(|(configured, l)| (*configured, l.local_addr))
            .collect()
    }

    /// The address the admin listener is bound to, if any.
    pub async fn admin_addr(&self) -> Option<SocketAddr> {
        let control = self.control.lock().await;
        control.admin.as_ref().map(|(_, a)| a.local_addr)
    }

    /// The active configuration.
    pub fn active(&self) -> Arc<ActiveConfig> {
        self.shared.active.load_full()
    }

    /// The metrics in Prometheus text format (what the admin `/metrics` serves).
    pub fn metrics_text(&self) -> String {
        self.shared.metrics.render()
    }

    /// Counts a configuration load attempt in `gofe_config_reloads_total`.
    pub fn count_reload(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.shared
            .metrics
            .config_reloads
            .with_label_values(&[result])
            .inc();
    }

    /// Stops accepting on every listener, reports not-ready, lets in-flight requests finish for
    /// up to `drain`, then stops the admin listener.
    pub async fn shutdown(&self, drain: Duration) {
        self.shared.draining.store(true, Ordering::Relaxed);
        let mut control = self.control.lock().await;
        let listeners: Vec<RunningListener> = control.listeners.drain().map(|(_, l)| l).collect();
        let stops: Vec<_> = listeners
            .into_iter()
            .map(|l| tokio::spawn(l.stop(drain)))
            .collect();
        for s in stops {
            let _ = s.await;
        }
        // Every line of the requests served is written before the process goes.
        let logs: Vec<_> = control
            .access_logs
            .drain()
            .map(|(name, (_, log))| (name, log))
            .collect();
        if !logs.is_empty() {
            let flushed = tokio::task::spawn_blocking(move || {
                logs.into_iter()
                    .filter(|(_, log)| !log.flush_blocking(ACCESS_LOG_FLUSH_TIMEOUT))
                    .map(|(name, _)| name)
                    .collect::<Vec<_>>()
            })
            .await;
            if let Ok(late) = flushed {
                for listener in late {
                    tracing::warn!(%listener, "access log not flushed at shutdown; its last lines may be lost");
                }
            }
        }
        // And every span of them is exported (or its export failed).
        for (listener, (_, tracer)) in control.tracers.drain() {
            if !tracer.flush(TRACING_FLUSH_TIMEOUT).await {
                tracing::warn!(%listener, "spans not exported at shutdown; the last ones may be lost");
            }
        }
        if let Some((_, admin)) = control.admin.take() {
            admin.stop().await;
        }
    }
}

/// Compiles a listener's `tcp_proxy` against the clusters being applied.
fn build_tcp_proxy(
    t: &config::TcpProxyConfig,
    listener: &Arc<str>,
    config: &ProxyConfig,
    clusters: &HashMap<String, Arc<Cluster>>,
    metrics: &Metrics,
) -> Result<tcp::TcpProxy, ApplyError> {
    let lookup = |name: &str| {
        let built = clusters.get(name).cloned();
        let conf = config.clusters.iter().find(|c| c.name == name);
        match (built, conf) {
            (Some(c), Some(conf)) => Ok((c, conf)),
            _ => Err(ApplyError::Invalid(format!(
                "listener {listener}: tcp_proxy names unknown cluster {name:?}"
            ))),
        }
    };
    let target = match (&t.cluster, &t.weighted_clusters) {
        (Some(name), _) => {
            let (cluster, conf) = lookup(name)?;
            if conf.discovery == config::DiscoveryType::OriginalDst {
                tcp::Target::Passthrough {
                    cluster,
                    connect_timeout: conf.connect_timeout,
                }
            } else {
                tcp::TcpProxy::clusters(vec![(cluster, conf.connect_timeout, 1)])
            }
        }
        (None, Some(wc)) => {
            let mut list = Vec::with_capacity(wc.clusters.len());
            for c in &wc.clusters {
                let (cluster, conf) = lookup(&c.name)?;
                list.push((cluster, conf.connect_timeout, c.weight));
            }
            tcp::TcpProxy::clusters(list)
        }
        (None, None) => {
            return Err(ApplyError::Invalid(format!(
                "listener {listener}: tcp_proxy without a cluster"
            )))
        }
    };
    let prefix = t.stat_prefix.as_deref().unwrap_or(listener);
    Ok(tcp::TcpProxy::new(
        target,
        (!t.idle_timeout.is_zero()).then_some(t.idle_timeout),
        metrics.tcp(prefix),
    ))
}

/// Entry points for the criterion benchmarks in `benches/` (not a stable API).
#[doc(hidden)]
pub mod bench_support {
    use std::collections::HashMap;
    use std::sync::Arc;

    use crate::cluster::Cluster;
    use crate::config::ProxyConfig;
    use crate::metrics::Metrics;
    use crate::route::RouteTable;

    /// A compiled route table and its clusters, outside any running proxy.
    pub struct Compiled {
        table: RouteTable,
        clusters: HashMap<String, Arc<Cluster>>,
    }

    impl Compiled {
        /// Compiles the first listener's routes and all clusters of `config`.
        pub fn new(config: &ProxyConfig) -> Self {
            let metrics = Arc::new(Metrics::new());
            let clusters: HashMap<String, Arc<Cluster>> = config
                .clusters
                .iter()
                .map(|c| {
                    let built = Cluster::standalone(c, &metrics).expect("cluster builds");
                    (c.name.clone(), Arc::new(built))
                })
                .collect();
            let table = RouteTable::build(
                &config.listeners[0].filters[0].config,
                &clusters,
                &mut crate::route::Filters::new(
                    &metrics,
                    &Arc::from("bench"),
                    &Default::default(),
                    &mut Default::default(),
                ),
            )
            .expect("routes build");
            Compiled { table, clusters }
        }

        /// Matches a request and returns the chosen cluster's name.
        pub fn route(&self, host: &str, path: &str, headers: &http::HeaderMap) -> Option<&str> {
            let vhost = self.table.find_host(host)?;
            let (path, query) = match path.split_once('?') {
                Some((p, q)) => (p, Some(q)),
                None => (path, None),
            };
            let route = vhost.find_route(path, query, headers)?;
            Some(&route.action.pick()?.name)
        }

        /// Picks an endpoint of `cluster` and returns its address.
        pub fn pick(&self, cluster: &str) -> Option<&str> {
            let c = self.clusters.get(cluster)?;
            Some(&c.endpoints[c.pick(None)?.index].address)
        }
    }
}
