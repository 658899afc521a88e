//! Upstream clusters: endpoints, the balancer's pick, and pooled upstream connections.
//!
//! A [`Cluster`] is immutable once built. A configuration change builds a new one and swaps it in
//! whole, so a request that already picked an endpoint keeps its `Arc`s and finishes untouched.
//! Connection pools ([`UpstreamClient`]) outlive these swaps: the proxy hands the same pool to the
//! next `Cluster` of the same name when its connection settings did not change.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use gofe_core::balance::{least_request, Candidate, WeightedSequence};
use http::uri::Authority;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus::IntGauge;
use tokio::net::TcpStream;

use crate::body::ProxyBody;
use crate::config::{ClusterConfig, LbPolicy};
use crate::metrics::{ClusterStats, EndpointStats, Metrics};

/// A pooled HTTP client for one cluster.
pub(crate) type UpstreamClient = Client<CountingConnector, ProxyBody>;

/// What decides whether two cluster versions can share a connection pool.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    pub(crate) cluster: String,
    pub(crate) http2: bool,
    pub(crate) connect_timeout: Duration,
}

impl PoolKey {
    pub(crate) fn of(config: &ClusterConfig) -> Self {
        PoolKey {
            cluster: config.name.value.clone(),
            http2: config.http2_protocol_options.is_some(),
            connect_timeout: config.connect_timeout,
        }
    }
}

/// Builds the pooled client for a cluster.
pub(crate) fn new_client(key: &PoolKey, metrics: &Arc<Metrics>) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(key.connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    let connector = CountingConnector {
        http,
        cluster: key.cluster.as_str().into(),
        metrics: Arc::clone(metrics),
    };
    Client::builder(TokioExecutor::new())
        .http2_only(key.http2)
        .pool_idle_timeout(Duration::from_secs(60))
        .build(connector)
}

/// One upstream endpoint as the balancer sees it.
pub(crate) struct Endpoint {
    /// `host:port` as configured; the `endpoint` metric label.
    pub(crate) address: Box<str>,
    /// The same, parsed once for building upstream URIs.
    pub(crate) authority: Authority,
    pub(crate) weight: u32,
    pub(crate) stats: EndpointStats,
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
    pub(crate) client: UpstreamClient,
    pub(crate) stats: ClusterStats,
}

impl Cluster {
    pub(crate) fn build(
        config: &ClusterConfig,
        client: UpstreamClient,
        metrics: &Metrics,
    ) -> Result<Self, String> {
        let name = config.name.value.as_str();
        let mut endpoints = Vec::with_capacity(config.endpoints.len());
        for ep in &config.endpoints {
            let address = ep.address.value.as_str();
            let authority: Authority = address
                .parse()
                .map_err(|e| format!("cluster {name:?}: endpoint {address:?}: {e}"))?;
            endpoints.push(Arc::new(Endpoint {
                address: address.into(),
                authority,
                weight: ep.weight,
                stats: metrics.endpoint(name, address, ep.weight),
            }));
        }
        let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
        Ok(Cluster {
            name: name.into(),
            endpoints: endpoints.into_boxed_slice(),
            policy: config.lb_policy,
            order: WeightedSequence::new(&weights),
            // Start each snapshot at a random point of the cycle so that proxies (and
            // successive snapshots) do not all begin on the same endpoint.
            ticket: AtomicU64::new(fastrand::u64(..)),
            http2: config.http2_protocol_options.is_some(),
            client,
            stats: metrics.cluster(name),
        })
    }

    /// Picks the endpoint for the next request, or `None` when no endpoint has weight.
    #[inline]
    pub(crate) fn pick(&self) -> Option<&Arc<Endpoint>> {
        match self.policy {
            LbPolicy::RoundRobin => {
                let ticket = self.ticket.fetch_add(1, Ordering::Relaxed);
                self.order.pick(ticket).map(|i| &self.endpoints[i])
            }
            LbPolicy::LeastRequest => {
                // Two draws in proportion to weight (a second try if both hit the same
                // endpoint), then the one with fewer requests in flight per unit of weight.
                let a = self.order.pick(fastrand::u64(..))?;
                let mut b = self.order.pick(fastrand::u64(..))?;
                if b == a {
                    b = self.order.pick(fastrand::u64(..))?;
                }
                let index = if least_request(self.candidate(a), self.candidate(b)) {
                    a
                } else {
                    b
                };
                Some(&self.endpoints[index])
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
}

// === impl CountingConnector ===

/// An [`HttpConnector`] that counts connections per endpoint in the proxy's metrics.
#[derive(Clone)]
pub(crate) struct CountingConnector {
    http: HttpConnector,
    cluster: Arc<str>,
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

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let endpoint = uri
            .authority()
            .map(|a| a.as_str().to_owned())
            .unwrap_or_default();
        let connecting = self.http.call(uri);
        let cluster = Arc::clone(&self.cluster);
        let metrics = Arc::clone(&self.metrics);
        Box::pin(async move {
            let labels = [&*cluster, endpoint.as_str()];
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
                    Err(e.into())
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
