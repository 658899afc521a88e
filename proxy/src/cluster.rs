//! Upstream clusters: endpoints, the balancer's pick, and pooled upstream connections.
//!
//! A [`Cluster`] is immutable once built. A configuration change builds a new one and swaps it in
//! whole, so a request that already picked an endpoint keeps its `Arc`s and finishes untouched.
//! Connection pools ([`UpstreamClient`]) outlive these swaps: the proxy hands the same pool to the
//! next `Cluster` of the same name when its connection settings did not change.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use gofe_core::balance::{
    effective_locality_weight, least_request, priority_load, proximity_priority, Candidate,
    LevelHealth, WeightedSequence,
};
use gofe_core::outlier::{in_panic, max_ejectable, EjectReason};
use http::uri::Authority;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus::IntGauge;
use tokio::sync::Semaphore;

use crate::config::{CircuitBreakersConfig, ClusterConfig, HealthStatus, LbPolicy, LocalityConfig};
use crate::health::{
    now_ms, Eligibility, EndpointHealth, HealthSource, Outcome, OutlierPolicy, OutlierState,
    TrialGuard, HEALTH_GENERATION,
};
use crate::metrics::{ClusterStats, EndpointStats, Metrics};
use crate::request_body::RequestBody;
use crate::upstream::{ConnectFailed, EndpointPool, H1Pools};
use crate::upstream_tls::{TlsFailure, UpstreamIo, UpstreamTls};

/// A cluster's upstream connections: the proxy's own per-endpoint HTTP/1.1 pools, or, for an
/// HTTP/2 cluster (where one connection multiplexes), a hyper-util client per endpoint.
#[derive(Clone)]
pub(crate) struct UpstreamClient {
    pub(crate) h2: Option<Arc<H2Clients>>,
    pub(crate) h1: Arc<H1Pools>,
}

/// An HTTP/2 upstream client that always connects to one endpoint, whatever authority a
/// request carries: so `:authority` can be the one the request was routed by.
pub(crate) type H2Client = Client<CountingConnector, RequestBody>;

/// The HTTP/2 clients of a cluster's endpoints, kept across configuration swaps (like
/// [`H1Pools`]); only [`Cluster::build`] takes the lock.
pub(crate) struct H2Clients {
    http: HttpConnector,
    cluster: Arc<str>,
    idle_timeout: Duration,
    connect_timeout: Duration,
    metrics: Arc<Metrics>,
    tls: Option<Arc<UpstreamTls>>,
    endpoints: Mutex<HashMap<Box<str>, H2Client>>,
}

impl H2Clients {
    /// The clients of `addresses`, in order, reusing those that exist and forgetting the rest.
    pub(crate) fn for_endpoints(&self, addresses: &[&str]) -> Vec<Option<H2Client>> {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        endpoints.retain(|address, _| addresses.contains(&&**address));
        addresses
            .iter()
            .map(|&address| {
                if let Some(c) = endpoints.get(address) {
                    return Some(c.clone());
                }
                let target: http::Uri = format!("http://{address}/").parse().ok()?;
                let client = Client::builder(TokioExecutor::new())
                    .http2_only(true)
                    .pool_idle_timeout(self.idle_timeout)
                    .build(CountingConnector {
                        http: self.http.clone(),
                        cluster: Arc::clone(&self.cluster),
                        endpoint: address.into(),
                        target,
                        metrics: Arc::clone(&self.metrics),
                        tls: self.tls.as_ref().map(|tls| {
                            let name = tls.server_name(address);
                            (Arc::clone(tls), name)
                        }),
                        connect_timeout: self.connect_timeout,
                    });
                endpoints.insert(address.into(), client.clone());
                Some(client)
            })
            .collect()
    }
}

/// What decides whether two cluster versions can share a connection pool.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    pub(crate) cluster: String,
    pub(crate) http2: bool,
    pub(crate) connect_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    /// Upstream TLS (its files are read when the pool is built).
    pub(crate) tls: Option<crate::config::UpstreamTlsConfig>,
}

impl PoolKey {
    pub(crate) fn of(config: &ClusterConfig) -> Self {
        PoolKey {
            cluster: config.name.clone(),
            http2: config.http2_protocol_options.is_some(),
            connect_timeout: config.connect_timeout,
            idle_timeout: config.idle_timeout,
            tls: config.tls.clone(),
        }
    }
}

/// Builds the pooled client for a cluster (reading its TLS material, if any).
pub(crate) fn new_client(key: &PoolKey, metrics: &Arc<Metrics>) -> Result<UpstreamClient, String> {
    let tls = match &key.tls {
        Some(t) => {
            if t.trusted_ca.is_none() {
                tracing::warn!(
                    cluster = %key.cluster,
                    "upstream TLS without trusted_ca: the endpoints' certificates are not verified (as in Envoy without a validation context)"
                );
            }
            Some(Arc::new(
                UpstreamTls::build(t, key.http2)
                    .map_err(|e| format!("cluster {:?}: {e}", key.cluster))?,
            ))
        }
        None => None,
    };
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(key.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let h2 = key.http2.then(|| {
        Arc::new(H2Clients {
            http,
            cluster: key.cluster.as_str().into(),
            idle_timeout: key.idle_timeout,
            connect_timeout: key.connect_timeout,
            metrics: Arc::clone(metrics),
            tls: tls.clone(),
            endpoints: Mutex::default(),
        })
    });
    Ok(UpstreamClient {
        h2,
        h1: Arc::new(H1Pools::new(
            &key.cluster,
            key.connect_timeout,
            key.idle_timeout,
            metrics,
            tls,
        )),
    })
}

/// A cluster's circuit-breaker counters. Like connection pools, they outlive configuration
/// swaps (keyed by cluster name), so a limit holds across a reload.
pub(crate) struct ClusterLimits {
    /// Requests in flight (for `max_requests`).
    pub(crate) active: Arc<AtomicU32>,
    /// Requests waiting for a connection slot (for `max_pending_requests`).
    pub(crate) pending: Arc<AtomicU32>,
    /// Retries in flight (for `max_retries` / the retry budget).
    pub(crate) retries: Arc<AtomicU32>,
    /// Mirrored copies in flight to this cluster as a shadow (held to `max_requests` apart
    /// from its own requests, so mirroring never makes it refuse them).
    pub(crate) shadows: Arc<AtomicU32>,
    /// HTTP/1.1 connection slots (`max_connections`): one per request being exchanged.
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) slot_count: u32,
}

impl ClusterLimits {
    pub(crate) fn new(max_connections: u32) -> Self {
        ClusterLimits {
            active: Arc::default(),
            pending: Arc::default(),
            retries: Arc::default(),
            shadows: Arc::default(),
            slots: Arc::new(Semaphore::new(max_connections as usize)),
            slot_count: max_connections,
        }
    }
}

/// One upstream endpoint as the balancer sees it.
pub(crate) struct Endpoint {
    /// `host:port` as configured; the `endpoint` metric label.
    pub(crate) address: Box<str>,
    /// The same, parsed once for building upstream URIs.
    pub(crate) authority: Authority,
    pub(crate) weight: u32,
    /// Health as configured (the control plane's view).
    pub(crate) status: HealthStatus,
    /// Who configured `status`.
    pub(crate) source: HealthSource,
    /// Health as outlier detection sees it (shared across snapshots).
    pub(crate) health: Arc<EndpointHealth>,
    pub(crate) stats: EndpointStats,
    /// Idle HTTP/1.1 connections to this endpoint (unused by an HTTP/2 cluster).
    pub(crate) pool: Arc<EndpointPool>,
    /// An HTTP/2 cluster's client for this endpoint.
    pub(crate) h2: Option<H2Client>,
    /// The priority the balancer gives it (configured, or by proximity to the proxy).
    pub(crate) priority: u32,
    /// Where it runs, as configured.
    pub(crate) locality: Option<LocalityConfig>,
}

/// An immutable snapshot of a cluster.
pub(crate) struct Cluster {
    pub(crate) name: Box<str>,
    pub(crate) endpoints: Box<[Arc<Endpoint>]>,
    pub(crate) policy: LbPolicy,
    /// Every endpoint, for the plain weighted pick (`None` when `tiers` is set).
    all: Option<Group>,
    pub(crate) http2: bool,
    pub(crate) stats: ClusterStats,
    pub(crate) outlier: Option<OutlierPolicy>,
    pub(crate) breakers: CircuitBreakersConfig,
    pub(crate) limits: Arc<ClusterLimits>,
    /// The cluster's local rate limit, consulted per upstream attempt.
    pub(crate) ratelimit: Option<crate::ratelimit::LocalRateLimit>,
    panic_threshold: u32,
    /// Endpoints with weight that are not draining (the base of the panic threshold).
    serving: usize,
    /// Of those, how many configuration marks unhealthy.
    configured_unhealthy: usize,
    /// Serializes ejection decisions, so `max_ejection_percent` holds under concurrency.
    eject_lock: Mutex<()>,
    /// Priority levels and localities, when there is more than one of either to choose from;
    /// `None` for the common single-group cluster (the pick is then the plain weighted one).
    tiers: Option<Tiers>,
}

// === impl Tiers ===

/// A set of endpoints the balancer picks within: a priority level, or a locality of one.
struct Group {
    /// Endpoint indices of the cluster, in configuration order.
    members: Box<[u32]>,
    /// Smooth weighted round robin over the members (indices into the cluster's endpoints).
    order: WeightedSequence,
    ticket: AtomicU64,
}

impl Group {
    fn new(members: Vec<u32>, weights: &[u32]) -> Self {
        let mut w = vec![0u32; weights.len()];
        for &m in &members {
            w[m as usize] = weights[m as usize];
        }
        Group {
            members: members.into_boxed_slice(),
            order: WeightedSequence::new(&w),
            ticket: AtomicU64::new(fastrand::u64(..)),
        }
    }
}

/// A locality of a priority level, with its configured weight.
struct Locality {
    group: Group,
    weight: u32,
}

/// One priority level.
struct Level {
    all: Group,
    /// Its localities, when locality-weighted balancing is on and there are several.
    localities: Box<[Locality]>,
    /// Cumulative effective locality weights (see `effective_locality_weight`), recomputed
    /// when health changes.
    locality_cumulative: Box<[AtomicU64]>,
}

/// Envoy's priority levels and locality weights over a cluster's endpoints.
///
/// The priority load (how many percent of requests each level gets) and the localities'
/// effective weights depend on health, so they are kept in atomics and recomputed when health
/// changes: a configuration swap builds them anew; a breaker transition anywhere in the proxy
/// bumps [`HEALTH_GENERATION`], and the next pick that sees the bump recomputes (one thread at
/// a time, the others keep picking by the previous figures), as does the first pick after an
/// ejection ends (an ejected endpoint may get no request that would notice). A pick itself is
/// atomic loads and a draw: no lock, no allocation.
struct Tiers {
    levels: Box<[Level]>,
    overprovisioning: u32,
    panic_threshold: u32,
    /// Cumulative priority load in percent (`cumulative[i]` = the load of levels `0..=i`).
    cumulative: Box<[AtomicU32]>,
    /// Whether each level is in panic (balance over all its endpoints).
    panic: Box<[AtomicBool]>,
    /// The [`HEALTH_GENERATION`] the figures were computed at.
    computed: AtomicU64,
    /// When the earliest ejection among the endpoints ends (ms, [`now_ms`]); `u64::MAX` when
    /// none is ejected.
    next_unejection_ms: AtomicU64,
    /// Set while one thread recomputes.
    busy: AtomicBool,
}

impl Tiers {
    /// The tiers of `endpoints`, or `None` when a plain weighted pick is all there is.
    fn build(endpoints: &[Arc<Endpoint>], config: &ClusterConfig) -> Option<Self> {
        let lb = &config.locality_lb;
        let levels_n = endpoints
            .iter()
            .map(|e| e.priority as usize + 1)
            .max()
            .unwrap_or(0);
        let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
        let mut levels = Vec::with_capacity(levels_n);
        let mut any_localities = false;
        for p in 0..levels_n as u32 {
            let members: Vec<u32> = (0..endpoints.len() as u32)
                .filter(|&i| endpoints[i as usize].priority == p)
                .collect();
            let mut localities: Vec<(Option<&LocalityConfig>, Vec<u32>, Option<u32>)> = Vec::new();
            if lb.locality_weighted {
                for &m in &members {
                    let ep = &endpoints[m as usize];
                    let key = ep.locality.as_ref();
                    let explicit = config.endpoints[m as usize].locality_weight;
                    match localities.iter_mut().find(|(k, _, _)| *k == key) {
                        Some((_, ms, w)) => {
                            ms.push(m);
                            *w = w.or(explicit);
                        }
                        None => localities.push((key, vec![m], explicit)),
                    }
                }
            }
            if localities.len() < 2 {
                localities.clear();
            }
            any_localities |= !localities.is_empty();
            let localities: Vec<Locality> = localities
                .into_iter()
                .map(|(_, ms, explicit)| {
                    let weight = explicit.unwrap_or_else(|| {
                        ms.iter()
                            .map(|&m| weights[m as usize])
                            .fold(0u32, u32::saturating_add)
                    });
                    Locality {
                        group: Group::new(ms, &weights),
                        weight,
                    }
                })
                .collect();
            levels.push(Level {
                all: Group::new(members, &weights),
                locality_cumulative: localities.iter().map(|_| AtomicU64::new(0)).collect(),
                localities: localities.into_boxed_slice(),
            });
        }
        if levels.len() < 2 && !any_localities {
            return None;
        }
        let n = levels.len();
        let tiers = Tiers {
            levels: levels.into_boxed_slice(),
            overprovisioning: lb.overprovisioning_factor.max(1),
            panic_threshold: config.healthy_panic_threshold,
            cumulative: (0..n).map(|_| AtomicU32::new(0)).collect(),
            panic: (0..n).map(|_| AtomicBool::new(false)).collect(),
            computed: AtomicU64::new(u64::MAX),
            next_unejection_ms: AtomicU64::new(u64::MAX),
            busy: AtomicBool::new(false),
        };
        Some(tiers)
    }

    /// Recomputes the figures if health changed since they were computed.
    #[inline]
    fn refresh(&self, endpoints: &[Arc<Endpoint>], outlier: bool) {
        let wake = self.next_unejection_ms.load(Ordering::Relaxed);
        let due = wake != u64::MAX && now_ms() >= wake;
        if !due
            && self.computed.load(Ordering::Acquire) == HEALTH_GENERATION.load(Ordering::Acquire)
        {
            return;
        }
        self.recompute(endpoints, outlier);
    }

    #[cold]
    fn recompute(&self, endpoints: &[Arc<Endpoint>], outlier: bool) {
        if self
            .busy
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        if outlier {
            // Ejections that have ended become half-open (eligible for trials), so a level
            // whose every endpoint was ejected gets requests again.
            let now = now_ms();
            for ep in endpoints {
                ep.health.poll_if_expired(now);
            }
        }
        let generation = HEALTH_GENERATION.load(Ordering::Acquire);
        let mut wake = u64::MAX;
        let mut health = [LevelHealth::default(); gofe_model::MAX_PRIORITIES as usize];
        let n = self.levels.len().min(health.len());
        let counted = |i: u32| {
            let ep = &endpoints[i as usize];
            ep.weight > 0 && ep.status != HealthStatus::Draining
        };
        let mut healthy_of = |i: u32| {
            let ep = &endpoints[i as usize];
            if ep.status != HealthStatus::Healthy {
                return false;
            }
            if !outlier {
                return true;
            }
            match ep.health.open_until() {
                None => true,
                Some(until) => {
                    wake = wake.min(until);
                    false
                }
            }
        };
        for (p, level) in self.levels.iter().take(n).enumerate() {
            for &m in level.all.members.iter() {
                if counted(m) {
                    health[p].hosts += 1;
                    health[p].healthy += u32::from(healthy_of(m));
                }
            }
        }
        let mut load = [0u32; gofe_model::MAX_PRIORITIES as usize];
        let mut panic = [false; gofe_model::MAX_PRIORITIES as usize];
        priority_load(
            &health[..n],
            self.overprovisioning,
            self.panic_threshold,
            &mut load[..n],
            &mut panic[..n],
        );
        let mut sum = 0;
        for p in 0..n {
            sum += load[p];
            self.cumulative[p].store(sum, Ordering::Relaxed);
            self.panic[p].store(panic[p], Ordering::Relaxed);
            let level = &self.levels[p];
            let mut total = 0u64;
            for (l, locality) in level.localities.iter().enumerate() {
                let mut lh = LevelHealth::default();
                for &m in locality.group.members.iter() {
                    if counted(m) {
                        lh.hosts += 1;
                        lh.healthy += u32::from(healthy_of(m));
                    }
                }
                total += effective_locality_weight(locality.weight, lh, self.overprovisioning);
                level.locality_cumulative[l].store(total, Ordering::Relaxed);
            }
        }
        self.next_unejection_ms.store(wake, Ordering::Relaxed);
        self.computed.store(generation, Ordering::Release);
        self.busy.store(false, Ordering::Release);
    }

    /// The level a request goes to first: a draw against the cumulative priority load.
    #[inline]
    fn choose_level(&self) -> usize {
        let draw = fastrand::u32(..100);
        self.cumulative
            .iter()
            .position(|c| draw < c.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// The locality of `level` a request goes to first, when it has localities with weight.
    #[inline]
    fn choose_locality(&self, level: &Level) -> Option<usize> {
        let total = level.locality_cumulative.last()?.load(Ordering::Relaxed);
        if total == 0 {
            return None;
        }
        let draw = fastrand::u64(..total);
        level
            .locality_cumulative
            .iter()
            .position(|c| draw < c.load(Ordering::Relaxed))
    }
}

/// One endpoint as `/config_dump` shows it: configured health next to the proxy's own view.
#[derive(Debug, serde::Serialize)]
pub(crate) struct EndpointView<'a> {
    pub(crate) cluster: &'a str,
    pub(crate) address: &'a str,
    /// Configured weight.
    pub(crate) weight: u32,
    /// Configured health (`healthy`, `unhealthy`, `draining`).
    pub(crate) health_status: HealthStatus,
    /// Who configured it: `config` (a file, or the bootstrap's static resources) or
    /// `controller` (xDS).
    pub(crate) health_source: HealthSource,
    /// Passive outlier detection.
    pub(crate) outlier: OutlierView,
    /// The weight the balancer gives it now (0 when it may not serve; panic mode aside).
    pub(crate) effective_weight: u32,
}

/// An endpoint's outlier-detection state, as `/config_dump` shows it.
#[derive(Debug, serde::Serialize)]
pub(crate) struct OutlierView {
    /// Whether the cluster has outlier detection at all.
    pub(crate) enabled: bool,
    /// `closed` (serving), `open` (ejected) or `half_open` (trial requests only).
    pub(crate) state: OutlierState,
    /// While open: how long the ejection has left, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) ejected_for_ms: Option<u64>,
    /// Past ejections that still count towards the next ejection's length.
    pub(crate) times_ejected: u32,
}

/// What [`Cluster::pick`] chose.
pub(crate) struct Picked {
    pub(crate) index: usize,
    /// Set when the endpoint is half-open and this request is one of its trials.
    pub(crate) trial: Option<TrialGuard>,
}

impl Cluster {
    /// Builds a snapshot of `config`, whose endpoints' health was configured by `source`.
    // Each argument is a different piece the snapshot shares with the proxy or its previous
    // snapshots; bundling them would only move the list.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn build(
        config: &ClusterConfig,
        source: HealthSource,
        client: UpstreamClient,
        metrics: &Metrics,
        health: &mut dyn FnMut(&str) -> Arc<EndpointHealth>,
        limits: Arc<ClusterLimits>,
        bucket: Option<Arc<crate::ratelimit::TokenBucket>>,
        own_locality: Option<&LocalityConfig>,
    ) -> Result<Self, String> {
        let name = config.name.as_str();
        let addresses: Vec<&str> = config
            .endpoints
            .iter()
            .map(|ep| ep.address.as_str())
            .collect();
        let mut pools = client.h1.for_endpoints(&addresses).into_iter();
        let mut h2 = client
            .h2
            .as_ref()
            .map(|c| c.for_endpoints(&addresses).into_iter());
        let priorities = priorities(config, own_locality);
        let mut endpoints = Vec::with_capacity(config.endpoints.len());
        for (ep, &priority) in config.endpoints.iter().zip(&priorities) {
            let address = ep.address.as_str();
            let authority: Authority = address
                .parse()
                .map_err(|e| format!("cluster {name:?}: endpoint {address:?}: {e}"))?;
            let healthy = ep.health_status == HealthStatus::Healthy;
            let health = health(address);
            health.set_configured_weight(if healthy { ep.weight } else { 0 });
            endpoints.push(Arc::new(Endpoint {
                address: address.into(),
                authority,
                weight: ep.weight,
                status: ep.health_status,
                source,
                health,
                stats: metrics.endpoint(name, address, ep.weight, healthy, source),
                pool: pools.next().expect("one pool per endpoint"),
                h2: h2.as_mut().and_then(|clients| clients.next().flatten()),
                priority,
                locality: ep.locality.clone(),
            }));
        }
        let tiers = Tiers::build(&endpoints, config);
        let ratelimit = match (&config.local_ratelimit, bucket) {
            (Some(l), Some(bucket)) => Some(crate::ratelimit::LocalRateLimit::build(
                l,
                bucket,
                metrics.cluster_ratelimit(name),
            )?),
            (Some(l), None) => Some(crate::ratelimit::LocalRateLimit::build(
                l,
                Arc::new(crate::ratelimit::TokenBucket::from_config(&l.token_bucket)),
                metrics.cluster_ratelimit(name),
            )?),
            (None, _) => None,
        };
        let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
        let serving = endpoints
            .iter()
            .filter(|e| e.weight > 0 && e.status != HealthStatus::Draining)
            .count();
        let configured_unhealthy = endpoints
            .iter()
            .filter(|e| e.weight > 0 && e.status == HealthStatus::Unhealthy)
            .count();
        Ok(Cluster {
            name: name.into(),
            endpoints: endpoints.into_boxed_slice(),
            policy: config.lb_policy,
            // Each group starts at a random point of its cycle so that proxies (and
            // successive snapshots) do not all begin on the same endpoint.
            all: tiers
                .is_none()
                .then(|| Group::new((0..weights.len() as u32).collect(), &weights)),
            http2: config.http2_protocol_options.is_some(),
            stats: metrics.cluster(name),
            outlier: config.outlier_detection.as_ref().map(OutlierPolicy::new),
            breakers: config.circuit_breakers.clone(),
            limits,
            ratelimit,
            panic_threshold: config.healthy_panic_threshold,
            serving,
            configured_unhealthy,
            eject_lock: Mutex::new(()),
            tiers,
        })
    }

    /// A cluster with its own fresh health and limits, outside any proxy (benchmarks, tests).
    pub(crate) fn standalone(
        config: &ClusterConfig,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, String> {
        let client = new_client(&PoolKey::of(config), metrics)?;
        let name = config.name.clone();
        Cluster::build(
            config,
            HealthSource::Config,
            client,
            metrics,
            &mut |addr| {
                Arc::new(EndpointHealth::new(
                    &name,
                    addr,
                    metrics.health(&name, addr),
                ))
            },
            Arc::new(ClusterLimits::new(config.circuit_breakers.max_connections)),
            None,
            None,
        )
    }

    /// Every endpoint as `/config_dump` shows it.
    pub(crate) fn views(&self) -> impl Iterator<Item = EndpointView<'_>> {
        self.endpoints.iter().map(|ep| {
            let (state, ejected_for_ms) = ep.health.outlier_state();
            let serving = ep.status == HealthStatus::Healthy && state == OutlierState::Closed;
            EndpointView {
                cluster: &self.name,
                address: &ep.address,
                weight: ep.weight,
                health_status: ep.status,
                health_source: ep.source,
                outlier: OutlierView {
                    enabled: self.outlier.is_some(),
                    state,
                    ejected_for_ms,
                    times_ejected: ep.health.times_ejected(),
                },
                effective_weight: if serving { ep.weight } else { 0 },
            }
        })
    }

    /// The balancer's choice in `group` ignoring health, or `None` when no endpoint has
    /// weight.
    #[inline]
    fn choose(&self, group: &Group) -> Option<usize> {
        match self.policy {
            LbPolicy::RoundRobin => {
                let ticket = group.ticket.fetch_add(1, Ordering::Relaxed);
                group.order.pick(ticket)
            }
            LbPolicy::LeastRequest => {
                // Two draws in proportion to weight (a second try if both hit the same
                // endpoint), then the one with fewer requests in flight per unit of weight.
                let a = group.order.pick(fastrand::u64(..))?;
                let mut b = group.order.pick(fastrand::u64(..))?;
                if b == a {
                    b = group.order.pick(fastrand::u64(..))?;
                }
                Some(if least_request(self.candidate(a), self.candidate(b)) {
                    a
                } else {
                    b
                })
            }
        }
    }

    fn candidate(&self, index: usize) -> Candidate {
        let ep = &self.endpoints[index];
        Candidate {
            active: ep.stats.active.get().max(0) as u64,
            weight: ep.weight,
        }
    }

    #[inline]
    fn eligibility(&self, index: usize) -> Eligibility {
        let ep = &self.endpoints[index];
        if ep.status != HealthStatus::Healthy {
            return Eligibility::No;
        }
        match &self.outlier {
            None => Eligibility::Yes,
            Some(policy) => ep.health.eligibility(policy.trials),
        }
    }

    /// Whether too few endpoints are healthy (Envoy's panic mode): then health is ignored and
    /// load spreads over every endpoint. Two loads of counters; no scan.
    #[inline]
    fn in_panic(&self) -> bool {
        let ejected = if self.outlier.is_some() {
            self.stats.ejections_active.get().max(0) as usize
        } else {
            0
        };
        let unhealthy = (self.configured_unhealthy + ejected).min(self.serving);
        unhealthy > 0 && in_panic(self.serving, self.serving - unhealthy, self.panic_threshold)
    }

    /// Picks the endpoint for the next request, preferring one other than `avoid` (a retry's
    /// previous endpoint). Ejected and unhealthy endpoints are skipped unless the cluster (or,
    /// with priorities, the chosen priority level) is in panic mode. `None` when no endpoint
    /// can take the request.
    ///
    /// With several priority levels, the level is drawn by the priority load and, with
    /// locality-weighted balancing, a locality of it by the effective locality weights; when
    /// the drawn group has no endpoint that can take the request (an ejection not yet counted,
    /// half-open endpoints whose trial slots are taken), the other localities of the level and
    /// then the other levels, most preferred first, are tried before giving up.
    pub(crate) fn pick(&self, avoid: Option<usize>) -> Option<Picked> {
        let Some(tiers) = &self.tiers else {
            let all = self.all.as_ref()?;
            if self.in_panic() {
                self.stats.panic.inc();
                return self.choose(all).map(|index| Picked { index, trial: None });
            }
            return self.pick_in(all, avoid, true);
        };
        tiers.refresh(&self.endpoints, self.outlier.is_some());
        let first = tiers.choose_level();
        let level = &tiers.levels[first];
        if tiers.panic[first].load(Ordering::Relaxed) {
            self.stats.panic.inc();
            return self
                .choose(&level.all)
                .map(|index| Picked { index, trial: None });
        }
        if let Some(l) = tiers.choose_locality(level) {
            if let Some(p) = self.pick_in(&level.localities[l].group, avoid, false) {
                return Some(p);
            }
        }
        if let Some(p) = self.pick_in(&level.all, avoid, false) {
            return Some(p);
        }
        for (i, other) in tiers.levels.iter().enumerate() {
            if i == first {
                continue;
            }
            if let Some(p) = self.pick_in(&other.all, avoid, false) {
                return Some(p);
            }
        }
        // Only `avoid` is left.
        let a = avoid?;
        self.take(a)
    }

    fn take(&self, index: usize) -> Option<Picked> {
        match self.eligibility(index) {
            Eligibility::Yes => Some(Picked { index, trial: None }),
            Eligibility::Trial(g) => Some(Picked {
                index,
                trial: Some(g),
            }),
            Eligibility::No => None,
        }
    }

    /// A healthy endpoint of `group` other than `avoid` (or `avoid` itself, when it is the only
    /// one and `fall_back_to_avoid`).
    #[inline]
    fn pick_in(
        &self,
        group: &Group,
        avoid: Option<usize>,
        fall_back_to_avoid: bool,
    ) -> Option<Picked> {
        let n = group.members.len();
        for _ in 0..n.min(8) + 1 {
            let index = self.choose(group)?;
            if Some(index) == avoid && n > 1 {
                continue;
            }
            if Some(index) == avoid && !fall_back_to_avoid {
                break;
            }
            if let Some(p) = self.take(index) {
                return Some(p);
            }
        }
        // Sampling met only endpoints that cannot take the request: look at each once.
        let start = fastrand::usize(..n.max(1));
        let mut fallback = None;
        for k in 0..n {
            let index = group.members[(start + k) % n] as usize;
            if self.endpoints[index].weight == 0 {
                continue;
            }
            if Some(index) == avoid {
                fallback = Some(index);
                continue;
            }
            if let Some(p) = self.take(index) {
                return Some(p);
            }
        }
        fallback
            .filter(|_| fall_back_to_avoid)
            .and_then(|i| self.take(i))
    }

    /// Feeds an attempt's outcome to outlier detection.
    pub(crate) fn record(&self, index: usize, outcome: Outcome, trial: Option<TrialGuard>) {
        let Some(policy) = &self.outlier else { return };
        let ep = &self.endpoints[index];
        if trial.is_some() {
            ep.health.record_trial(outcome, policy);
            return;
        }
        if let Some(reason) = ep.health.record(outcome, policy) {
            self.try_eject(index, reason, policy);
        }
    }

    fn try_eject(&self, index: usize, reason: EjectReason, policy: &OutlierPolicy) {
        let _serial = self.eject_lock.lock().unwrap_or_else(|e| e.into_inner());
        let out = self
            .endpoints
            .iter()
            .filter(|e| !e.health.is_closed())
            .count();
        if out >= max_ejectable(self.endpoints.len(), policy.max_ejection_percent) {
            self.stats.ejections_overflow.inc();
            tracing::debug!(
                cluster = %self.name,
                endpoint = %self.endpoints[index].address,
                reason = reason.as_str(),
                "not ejecting: max_ejection_percent reached"
            );
            return;
        }
        self.endpoints[index].health.eject(reason, policy);
    }

    /// Starts the outlier-detection interval (window resets, ejection decay) for this
    /// snapshot, on the beat that started at `epoch` (the cluster's first snapshot with this
    /// interval): a new snapshot keeps the beat, so configuration pushes more frequent than the
    /// interval (a controller's every couple of seconds) neither postpone the next window
    /// forever nor add one. It stops by itself when the snapshot is dropped.
    pub(crate) fn start_interval(self: &Arc<Self>, epoch: tokio::time::Instant) {
        let Some(policy) = &self.outlier else { return };
        let every = policy.interval.max(Duration::from_millis(1));
        let weak = Arc::downgrade(self);
        let first = next_beat(epoch, every, tokio::time::Instant::now());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(first, every);
            loop {
                tick.tick().await;
                let Some(cluster) = weak.upgrade() else {
                    return;
                };
                for ep in cluster.endpoints.iter() {
                    ep.health.next_interval(every);
                }
            }
        });
    }
}

/// Each endpoint's priority level: as configured or, with `failover_by_proximity` and a
/// proxy locality, by proximity (0 same zone, 1 same region, 2 elsewhere), renumbered without
/// gaps (only the order matters).
fn priorities(config: &ClusterConfig, own: Option<&LocalityConfig>) -> Vec<u32> {
    let Some(own) = own.filter(|_| config.locality_lb.failover_by_proximity) else {
        return config.endpoints.iter().map(|e| e.priority).collect();
    };
    let by_proximity: Vec<u32> = config
        .endpoints
        .iter()
        .map(|ep| {
            proximity_priority(
                (&own.region, &own.zone),
                ep.locality
                    .as_ref()
                    .map(|l| (l.region.as_str(), l.zone.as_str())),
            )
        })
        .collect();
    let mut used = by_proximity.clone();
    used.sort_unstable();
    used.dedup();
    by_proximity
        .iter()
        .map(|p| used.iter().position(|u| u == p).unwrap_or(0) as u32)
        .collect()
}

/// The first beat of a period-`every` clock started at `epoch` that is after `now`.
fn next_beat(
    epoch: tokio::time::Instant,
    every: Duration,
    now: tokio::time::Instant,
) -> tokio::time::Instant {
    let elapsed = now.saturating_duration_since(epoch).as_nanos();
    let beats = elapsed / every.as_nanos() + 1;
    epoch + every * u32::try_from(beats).unwrap_or(u32::MAX)
}

// === impl CountingConnector ===

/// An [`HttpConnector`] bound to one endpoint (whatever the request's authority) that counts
/// its connections in the proxy's metrics.
#[derive(Clone)]
pub(crate) struct CountingConnector {
    http: HttpConnector,
    cluster: Arc<str>,
    endpoint: Arc<str>,
    /// `http://ENDPOINT/`: what the connector connects to.
    target: http::Uri,
    metrics: Arc<Metrics>,
    /// The cluster's TLS client and this endpoint's server name, when TLS is on.
    tls: Option<(Arc<UpstreamTls>, rustls::pki_types::ServerName<'static>)>,
    /// For the TLS handshake (the connector's own timeout covers the TCP connect).
    connect_timeout: Duration,
}

type ConnectFuture =
    Pin<Box<dyn Future<Output = Result<Counted, Box<dyn std::error::Error + Send + Sync>>> + Send>>;

impl tower_service::Service<http::Uri> for CountingConnector {
    type Response = Counted;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, _routed: http::Uri) -> Self::Future {
        let connecting = self.http.call(self.target.clone());
        let endpoint = Arc::clone(&self.endpoint);
        let cluster = Arc::clone(&self.cluster);
        let metrics = Arc::clone(&self.metrics);
        let tls = self.tls.clone();
        let connect_timeout = self.connect_timeout;
        Box::pin(async move {
            let labels = [&*cluster, &*endpoint];
            let failed = |e: Box<dyn std::error::Error + Send + Sync>| {
                metrics
                    .upstream_connect_failures
                    .with_label_values(&labels)
                    .inc();
                Box::new(ConnectFailed::new(e)) as Box<dyn std::error::Error + Send + Sync>
            };
            let tcp = match connecting.await {
                Ok(io) => io.into_inner(),
                Err(e) => return Err(failed(e.into())),
            };
            let io = match tls {
                None => UpstreamIo::Plain(tcp),
                Some((tls, name)) => {
                    let handshake = tls.handshake(tcp, name, &cluster, &metrics);
                    match tokio::time::timeout(connect_timeout, handshake).await {
                        Ok(Ok(stream)) => UpstreamIo::Tls(Box::new(stream)),
                        Ok(Err(e)) => return Err(failed(e.into())),
                        Err(_) => {
                            let e = TlsFailure::timeout();
                            tls.count(&e, &cluster, &metrics);
                            return Err(failed(e.into()));
                        }
                    }
                }
            };
            metrics.upstream_cx_total.with_label_values(&labels).inc();
            let gauge = metrics.upstream_cx_active.with_label_values(&labels);
            gauge.inc();
            Ok(Counted {
                io: TokioIo::new(io),
                gauge,
            })
        })
    }
}

/// An upstream connection that keeps the `connections_active` gauge honest.
pub(crate) struct Counted {
    io: TokioIo<UpstreamIo>,
    gauge: IntGauge,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl Connection for Counted {
    fn connected(&self) -> Connected {
        let connected = Connected::new();
        if self.io.inner().negotiated_h2() {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl Read for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod interval_tests {
    use super::*;
    use crate::config;

    const YAML: &str = "clusters:\n  - name: web\n    outlier_detection: { interval: 10s }\n    endpoints: [{ address: \"127.0.0.1:1\" }]\n";

    /// A snapshot of `web` over the shared `health`, its interval on the beat from `epoch`.
    fn snapshot(
        health: &Arc<EndpointHealth>,
        metrics: &Arc<Metrics>,
        epoch: tokio::time::Instant,
    ) -> Arc<Cluster> {
        let cfg = config::parse("t.yaml", YAML).unwrap();
        let c = &cfg.clusters[0];
        let client = new_client(&PoolKey::of(c), metrics).unwrap();
        let cluster = Arc::new(
            Cluster::build(
                c,
                HealthSource::Config,
                client,
                metrics,
                &mut |_| Arc::clone(health),
                Arc::new(ClusterLimits::new(c.circuit_breakers.max_connections)),
                None,
                None,
            )
            .unwrap(),
        );
        cluster.start_interval(epoch);
        cluster
    }

    #[tokio::test(start_paused = true)]
    async fn pushes_more_often_than_the_interval_keep_its_beat() {
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(EndpointHealth::new(
            "web",
            "127.0.0.1:1",
            metrics.health("web", "127.0.0.1:1"),
        ));
        let policy = OutlierPolicy::new(&Default::default());
        let epoch = tokio::time::Instant::now();
        let mut current = snapshot(&health, &metrics, epoch);
        let mut resets = 0;
        // A push every 2 s for 31 s: the window still starts anew at 10, 20 and 30 s.
        for step in 1..=31u64 {
            health.record(Outcome::Status(200), &policy);
            tokio::time::sleep(Duration::from_secs(1)).await;
            // Let the interval tasks run.
            tokio::task::yield_now().await;
            if health.window().0 == 0 {
                resets += 1;
                assert_eq!(
                    step % 10,
                    0,
                    "a window started at {step} s, off the 10 s beat"
                );
            }
            if step % 2 == 0 {
                // The old snapshot stays alive a moment (requests in flight hold it).
                let old = std::mem::replace(&mut current, snapshot(&health, &metrics, epoch));
                tokio::task::yield_now().await;
                drop(old);
            }
        }
        assert_eq!(
            resets, 3,
            "one window per 10 s, however often the config is pushed"
        );
    }

    #[test]
    fn the_next_beat_is_after_now_on_the_epoch_s_grid() {
        let epoch = tokio::time::Instant::now();
        let s = Duration::from_secs;
        assert_eq!(next_beat(epoch, s(10), epoch), epoch + s(10));
        assert_eq!(next_beat(epoch, s(10), epoch + s(4)), epoch + s(10));
        assert_eq!(next_beat(epoch, s(10), epoch + s(10)), epoch + s(20));
        assert_eq!(next_beat(epoch, s(10), epoch + s(29)), epoch + s(30));
    }
}

#[cfg(test)]
mod priority_tests {
    use super::*;
    use crate::config;

    /// A cluster of `p0` endpoints at priority 0 and `p1` at priority 1, the first
    /// `p0_unhealthy` of priority 0 configured unhealthy.
    fn two_levels(p0: usize, p1: usize, p0_unhealthy: usize, extra: &str) -> Arc<Cluster> {
        let mut yaml = format!("clusters:\n  - name: web\n{extra}    endpoints:\n");
        for i in 0..p0 + p1 {
            let health = if i < p0_unhealthy {
                ", health_status: unhealthy"
            } else {
                ""
            };
            let priority = u32::from(i >= p0);
            yaml.push_str(&format!(
                "      - {{ address: \"127.0.0.1:{}\", priority: {priority}{health} }}\n",
                1000 + i
            ));
        }
        let cfg = config::parse("t.yaml", &yaml).unwrap();
        let metrics = Arc::new(Metrics::new());
        Arc::new(Cluster::standalone(&cfg.clusters[0], &metrics).unwrap())
    }

    /// How many of `n` picks land on each priority level.
    fn per_level(c: &Cluster, n: usize) -> Vec<usize> {
        let levels = c.tiers.as_ref().map_or(1, |t| t.levels.len());
        let mut out = vec![0; levels];
        for _ in 0..n {
            let p = c.pick(None).expect("an endpoint");
            out[c.endpoints[p.index].priority as usize] += 1;
        }
        out
    }

    fn load(c: &Cluster) -> Vec<u32> {
        let t = c.tiers.as_ref().unwrap();
        t.refresh(&c.endpoints, c.outlier.is_some());
        let mut prev = 0;
        t.cumulative
            .iter()
            .map(|x| {
                let v = x.load(Ordering::Relaxed);
                let l = v - prev;
                prev = v;
                l
            })
            .collect()
    }

    #[test]
    fn a_single_level_cluster_keeps_the_plain_pick() {
        let c = two_levels(3, 0, 0, "");
        assert!(c.tiers.is_none());
        assert_eq!(per_level(&c, 30), [30]);
    }

    #[test]
    fn priority_load_follows_envoy_s_table() {
        // 100 endpoints per level make the percentages Envoy's table's.
        for (unhealthy, expect) in [
            (0, [100, 0]),
            (28, [100, 0]),
            (29, [99, 1]),
            (50, [70, 30]),
            (75, [35, 65]),
            (100, [0, 100]),
        ] {
            let c = two_levels(100, 100, unhealthy, "");
            assert_eq!(load(&c), expect, "{unhealthy} of 100 unhealthy in P0");
        }
    }

    #[test]
    fn requests_go_where_the_load_says() {
        fastrand::seed(20);
        // Fully healthy P0 (and P0 at 72 %): not one request to P1.
        assert_eq!(per_level(&two_levels(4, 2, 0, ""), 2000), [2000, 0]);
        assert_eq!(per_level(&two_levels(25, 2, 7, ""), 2000), [2000, 0]);
        // Nothing healthy in P0: everything to P1.
        assert_eq!(per_level(&two_levels(4, 2, 4, ""), 2000), [0, 2000]);
        // Half of P0 healthy: 70 % / 30 %.
        let split = per_level(&two_levels(4, 4, 2, ""), 10_000);
        assert!((6700..7300).contains(&split[0]), "{split:?}");
        // And none of those picks was an unhealthy endpoint.
        let c = two_levels(4, 4, 2, "");
        for _ in 0..2000 {
            let p = c.pick(None).unwrap();
            assert_eq!(c.endpoints[p.index].status, HealthStatus::Healthy);
        }
    }

    #[test]
    fn the_overprovisioning_factor_is_the_cluster_s() {
        // At 100 % (no overprovisioning) one unhealthy endpoint in ten already spills 10 %.
        let c = two_levels(
            10,
            10,
            1,
            "    locality_lb: { overprovisioning_factor: 100 }\n",
        );
        assert_eq!(load(&c), [90, 10]);
        let c = two_levels(10, 10, 1, "");
        assert_eq!(load(&c), [100, 0]);
    }

    #[tokio::test(start_paused = true)]
    async fn ejections_spill_to_the_next_level_and_their_end_brings_traffic_back() {
        let c = two_levels(
            2,
            2,
            0,
            "    outlier_detection: { consecutive_5xx: 1, max_ejection_percent: 100, base_ejection_time: 10s }\n",
        );
        assert_eq!(per_level(&c, 100), [100, 0]);
        // Both P0 endpoints fail once: ejected.
        for i in 0..2 {
            c.record(i, Outcome::Status(503), None);
        }
        assert!(!c.endpoints[0].health.is_closed() && !c.endpoints[1].health.is_closed());
        assert_eq!(load(&c), [0, 100]);
        assert_eq!(
            per_level(&c, 100),
            [0, 100],
            "no request to an ejected level"
        );
        // The ejection ends: nobody sent P0 a request, yet it is back (half-open, trials).
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(load(&c), [100, 0]);
        let p = c.pick(None).unwrap();
        assert_eq!(c.endpoints[p.index].priority, 0);
        let trial = p.trial;
        assert!(trial.is_some(), "the first request back is a trial");
        // While the trials are out, P0 takes nothing else: P1 takes the rest, no failure.
        let p2 = c.pick(None).unwrap();
        let p3 = c.pick(None).unwrap();
        let other_trial = [&p2, &p3]
            .iter()
            .filter(|p| c.endpoints[p.index].priority == 0)
            .count();
        assert!(other_trial <= 1, "one trial slot per P0 endpoint");
        c.record(p.index, Outcome::Success, trial);
        assert!(c.endpoints[p.index].health.is_closed());
    }

    #[test]
    fn every_level_in_panic_balances_by_host_count_over_all() {
        // Nothing healthy anywhere (panic threshold 50): total panic; load by host count
        // (2 and 6 hosts → 25/75), unhealthy endpoints picked.
        let mut yaml = String::from("clusters:\n  - name: web\n    endpoints:\n");
        for i in 0..8 {
            yaml.push_str(&format!(
                "      - {{ address: \"127.0.0.1:{}\", priority: {}, health_status: unhealthy }}\n",
                2000 + i,
                u32::from(i >= 2)
            ));
        }
        let cfg = config::parse("t.yaml", &yaml).unwrap();
        let metrics = Arc::new(Metrics::new());
        let c = Cluster::standalone(&cfg.clusters[0], &metrics).unwrap();
        assert_eq!(load(&c), [25, 75]);
        assert!(c.pick(None).is_some(), "panic mode serves the unhealthy");
    }

    #[test]
    fn locality_weights_split_a_level_by_weight_and_health() {
        fastrand::seed(7);
        let yaml = "clusters:\n  - name: web\n    locality_lb: { locality_weighted: true }\n    endpoints:\n\
            \x20     - { address: \"127.0.0.1:3001\", locality: { zone: a }, locality_weight: 3 }\n\
            \x20     - { address: \"127.0.0.1:3002\", locality: { zone: a }, locality_weight: 3, health_status: unhealthy }\n\
            \x20     - { address: \"127.0.0.1:3003\", locality: { zone: b }, locality_weight: 1 }\n";
        let cfg = config::parse("t.yaml", yaml).unwrap();
        let metrics = Arc::new(Metrics::new());
        let c = Cluster::standalone(&cfg.clusters[0], &metrics).unwrap();
        // Zone a: weight 3 × min(1, 1.4 × 1/2) = 2.1; zone b: 1 → a gets 2.1/3.1 = 67.7 %,
        // although an endpoint-weighted pick would give the healthy ones half each.
        let n = 10_000;
        let mut a = 0;
        for _ in 0..n {
            let p = c.pick(None).unwrap();
            assert_ne!(p.index, 1, "the unhealthy endpoint is never picked");
            a += usize::from(p.index == 0);
        }
        assert!((6400..7100).contains(&a), "zone a got {a} of {n}");
    }

    #[test]
    fn proximity_gives_zone_region_elsewhere() {
        let yaml = "clusters:\n  - name: web\n    locality_lb: { failover_by_proximity: true }\n    endpoints:\n\
            \x20     - { address: \"127.0.0.1:4001\", locality: { region: us, zone: us-1 } }\n\
            \x20     - { address: \"127.0.0.1:4002\", locality: { region: eu, zone: eu-2 } }\n\
            \x20     - { address: \"127.0.0.1:4003\", locality: { region: eu, zone: eu-1 }, priority: 0 }\n\
            \x20     - { address: \"127.0.0.1:4004\" }\n";
        let cfg = config::parse("t.yaml", yaml).unwrap();
        let metrics = Arc::new(Metrics::new());
        let own = LocalityConfig {
            region: "eu".into(),
            zone: "eu-1".into(),
            sub_zone: String::new(),
        };
        let c = &cfg.clusters[0];
        let cluster = Cluster::build(
            c,
            HealthSource::Config,
            new_client(&PoolKey::of(c), &metrics).unwrap(),
            &metrics,
            &mut |addr| {
                Arc::new(EndpointHealth::new(
                    "web",
                    addr,
                    metrics.health("web", addr),
                ))
            },
            Arc::new(ClusterLimits::new(1024)),
            None,
            Some(&own),
        )
        .unwrap();
        let p: Vec<u32> = cluster.endpoints.iter().map(|e| e.priority).collect();
        assert_eq!(p, [2, 1, 0, 2]);
        // Everything healthy: only the proxy's own zone serves.
        for _ in 0..100 {
            assert_eq!(cluster.pick(None).unwrap().index, 2);
        }
        // Without a proxy locality the configured priorities stand (all 0 here).
        let flat = Cluster::standalone(c, &metrics).unwrap();
        assert!(flat.endpoints.iter().all(|e| e.priority == 0));
    }
}
