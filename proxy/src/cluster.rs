//! Upstream clusters: endpoints, the balancer's pick, and pooled upstream connections.
//!
//! A [`Cluster`] is immutable once built. A configuration change builds a new one and swaps it in
//! whole, so a request that already picked an endpoint keeps its `Arc`s and finishes untouched.
//! Connection pools ([`UpstreamClient`]) outlive these swaps: the proxy hands the same pool to the
//! next `Cluster` of the same name when its connection settings did not change.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use gofe_core::balance::{least_request, Candidate, WeightedSequence};
use gofe_core::outlier::{in_panic, max_ejectable, EjectReason};
use http::uri::Authority;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus::IntGauge;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::config::{CircuitBreakersConfig, ClusterConfig, HealthStatus, LbPolicy};
use crate::health::{
    Eligibility, EndpointHealth, HealthSource, Outcome, OutlierPolicy, OutlierState, TrialGuard,
};
use crate::metrics::{ClusterStats, EndpointStats, Metrics};
use crate::request_body::RequestBody;
use crate::upstream::{ConnectFailed, EndpointPool, H1Pools};

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
    metrics: Arc<Metrics>,
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
}

impl PoolKey {
    pub(crate) fn of(config: &ClusterConfig) -> Self {
        PoolKey {
            cluster: config.name.clone(),
            http2: config.http2_protocol_options.is_some(),
            connect_timeout: config.connect_timeout,
            idle_timeout: config.idle_timeout,
        }
    }
}

/// Builds the pooled client for a cluster.
pub(crate) fn new_client(key: &PoolKey, metrics: &Arc<Metrics>) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(key.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let h2 = key.http2.then(|| {
        Arc::new(H2Clients {
            http,
            cluster: key.cluster.as_str().into(),
            idle_timeout: key.idle_timeout,
            metrics: Arc::clone(metrics),
            endpoints: Mutex::default(),
        })
    });
    UpstreamClient {
        h2,
        h1: Arc::new(H1Pools::new(
            &key.cluster,
            key.connect_timeout,
            key.idle_timeout,
            metrics,
        )),
    }
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
}

/// An immutable snapshot of a cluster.
pub(crate) struct Cluster {
    pub(crate) name: Box<str>,
    pub(crate) endpoints: Box<[Arc<Endpoint>]>,
    pub(crate) policy: LbPolicy,
    /// Smooth weighted round-robin order over `endpoints`.
    order: WeightedSequence,
    ticket: AtomicU64,
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
    pub(crate) fn build(
        config: &ClusterConfig,
        source: HealthSource,
        client: UpstreamClient,
        metrics: &Metrics,
        health: &mut dyn FnMut(&str) -> Arc<EndpointHealth>,
        limits: Arc<ClusterLimits>,
        bucket: Option<Arc<crate::ratelimit::TokenBucket>>,
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
        let mut endpoints = Vec::with_capacity(config.endpoints.len());
        for ep in &config.endpoints {
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
            }));
        }
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
            order: WeightedSequence::new(&weights),
            // Start each snapshot at a random point of the cycle so that proxies (and
            // successive snapshots) do not all begin on the same endpoint.
            ticket: AtomicU64::new(fastrand::u64(..)),
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
        })
    }

    /// A cluster with its own fresh health and limits, outside any proxy (benchmarks, tests).
    pub(crate) fn standalone(
        config: &ClusterConfig,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, String> {
        let client = new_client(&PoolKey::of(config), metrics);
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

    /// The balancer's choice ignoring health, or `None` when no endpoint has weight.
    #[inline]
    fn choose(&self) -> Option<usize> {
        match self.policy {
            LbPolicy::RoundRobin => {
                let ticket = self.ticket.fetch_add(1, Ordering::Relaxed);
                self.order.pick(ticket)
            }
            LbPolicy::LeastRequest => {
                // Two draws in proportion to weight (a second try if both hit the same
                // endpoint), then the one with fewer requests in flight per unit of weight.
                let a = self.order.pick(fastrand::u64(..))?;
                let mut b = self.order.pick(fastrand::u64(..))?;
                if b == a {
                    b = self.order.pick(fastrand::u64(..))?;
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
    /// previous endpoint). Ejected and unhealthy endpoints are skipped unless the cluster is in
    /// panic mode. `None` when no endpoint can take the request.
    pub(crate) fn pick(&self, avoid: Option<usize>) -> Option<Picked> {
        if self.in_panic() {
            self.stats.panic.inc();
            return self.choose().map(|index| Picked { index, trial: None });
        }
        let n = self.endpoints.len();
        for _ in 0..n.min(8) + 1 {
            let index = self.choose()?;
            if Some(index) == avoid && n > 1 {
                continue;
            }
            match self.eligibility(index) {
                Eligibility::Yes => return Some(Picked { index, trial: None }),
                Eligibility::Trial(g) => {
                    return Some(Picked {
                        index,
                        trial: Some(g),
                    })
                }
                Eligibility::No => {}
            }
        }
        // Sampling met only endpoints that cannot take the request: look at each once.
        let start = fastrand::usize(..n.max(1));
        let mut fallback = None;
        for k in 0..n {
            let index = (start + k) % n;
            if self.endpoints[index].weight == 0 {
                continue;
            }
            if Some(index) == avoid {
                fallback = Some(index);
                continue;
            }
            match self.eligibility(index) {
                Eligibility::Yes => return Some(Picked { index, trial: None }),
                Eligibility::Trial(g) => {
                    return Some(Picked {
                        index,
                        trial: Some(g),
                    })
                }
                Eligibility::No => {}
            }
        }
        match fallback.map(|i| (i, self.eligibility(i))) {
            Some((index, Eligibility::Yes)) => Some(Picked { index, trial: None }),
            Some((index, Eligibility::Trial(g))) => Some(Picked {
                index,
                trial: Some(g),
            }),
            _ => None,
        }
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
        Box::pin(async move {
            let labels = [&*cluster, &*endpoint];
            match connecting.await {
                Ok(io) => {
                    metrics.upstream_cx_total.with_label_values(&labels).inc();
                    let gauge = metrics.upstream_cx_active.with_label_values(&labels);
                    gauge.inc();
                    Ok(Counted { io, gauge })
                }
                Err(e) => {
                    metrics
                        .upstream_connect_failures
                        .with_label_values(&labels)
                        .inc();
                    Err(Box::new(ConnectFailed::new(e.into()))
                        as Box<dyn std::error::Error + Send + Sync>)
                }
            }
        })
    }
}

/// An upstream connection that keeps the `connections_active` gauge honest.
pub(crate) struct Counted {
    io: TokioIo<TcpStream>,
    gauge: IntGauge,
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

impl Connection for Counted {
    fn connected(&self) -> Connected {
        self.io.connected()
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
        let client = new_client(&PoolKey::of(c), metrics);
        let cluster = Arc::new(
            Cluster::build(
                c,
                HealthSource::Config,
                client,
                metrics,
                &mut |_| Arc::clone(health),
                Arc::new(ClusterLimits::new(c.circuit_breakers.max_connections)),
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
