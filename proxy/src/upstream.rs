//! HTTP/1.1 upstream connections: one pool per endpoint, driven by the request that uses them.
//!
//! hyper-util's pooled client runs every upstream connection as a task of its own and hands it
//! each request over a channel, so a proxied request wakes two tasks and crosses two channels
//! before its response reaches the client. Here an idle connection (a hyper
//! `client::conn::http1` pair) sits in its endpoint's pool; a request checks it out, and the
//! task serving the client polls the connection itself: first while waiting for the response
//! head, then from the response body ([`Lease`], carried by `ProxyBody`) until the body has
//! been read. When the body is complete and the connection can take another request it goes
//! back to the pool; in every other case (an error, a body left unread, `Connection: close`)
//! it is dropped and closed.
//!
//! A connection that was idle longer than the cluster's `idle_timeout` is closed: a sweeper per
//! pool counts ticks of a quarter of the timeout, and a connection parked four ticks ago or more
//! is gone (no clock is read per request). The pools outlive configuration swaps, as the
//! clusters' connection pools always have.
//!
//! HTTP/2 clusters keep hyper-util's client: there one connection multiplexes every request.

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::body::ProxyBody;
use crate::cluster::{ConnectFailed, Counted};
use crate::metrics::Metrics;

/// The error of an upstream exchange.
pub(crate) type UpstreamError = Box<dyn std::error::Error + Send + Sync>;

/// Ticks of the idle sweeper after which a parked connection is closed.
const IDLE_TICKS: u64 = 4;

/// The HTTP/1.1 pools of one cluster's endpoints, by address.
pub(crate) struct H1Pools {
    cluster: Arc<str>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    metrics: Arc<Metrics>,
    endpoints: Mutex<HashMap<Box<str>, Arc<EndpointPool>>>,
}

impl H1Pools {
    pub(crate) fn new(
        cluster: &str,
        connect_timeout: Duration,
        idle_timeout: Duration,
        metrics: &Arc<Metrics>,
    ) -> Self {
        H1Pools {
            cluster: cluster.into(),
            connect_timeout,
            idle_timeout,
            metrics: Arc::clone(metrics),
            endpoints: Mutex::default(),
        }
    }

    /// The pool of each of `addresses`, in order (existing ones are kept). Pools of addresses
    /// no longer listed are forgotten: requests still using them finish, and their idle
    /// connections close with the idle timeout.
    pub(crate) fn for_endpoints(&self, addresses: &[&str]) -> Vec<Arc<EndpointPool>> {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        endpoints.retain(|address, _| addresses.contains(&&**address));
        addresses
            .iter()
            .map(|&address| {
                Arc::clone(endpoints.entry(address.into()).or_insert_with(|| {
                    Arc::new(EndpointPool {
                        address: address.into(),
                        cluster: Arc::clone(&self.cluster),
                        connect_timeout: self.connect_timeout,
                        idle_timeout: self.idle_timeout,
                        metrics: Arc::clone(&self.metrics),
                        idle: Mutex::default(),
                        tick: AtomicU64::new(0),
                        sweeping: AtomicBool::new(false),
                    })
                }))
            })
            .collect()
    }
}

/// Idle HTTP/1.1 connections to one endpoint.
pub(crate) struct EndpointPool {
    address: Box<str>,
    cluster: Arc<str>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    metrics: Arc<Metrics>,
    /// Most recently parked last.
    idle: Mutex<Vec<Parked>>,
    /// Sweeper ticks so far.
    tick: AtomicU64,
    sweeping: AtomicBool,
}

struct Parked {
    conn: Box<H1Conn>,
    tick: u64,
}

/// One HTTP/1.1 connection: the handle to send on and the connection state machine.
pub(crate) struct H1Conn {
    send: http1::SendRequest<ProxyBody>,
    /// `None` once the connection has ended.
    conn: Option<http1::Connection<Counted, ProxyBody>>,
}

impl H1Conn {
    /// Lets the connection make progress (read, write, notice a close). Returns whether it is
    /// still open.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(conn) = &mut self.conn else {
            return false;
        };
        match Pin::new(conn).poll(cx) {
            Poll::Pending => true,
            Poll::Ready(result) => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "upstream connection ended");
                }
                self.conn = None;
                false
            }
        }
    }
}

/// A checked-out connection travelling with a response body, which drives it.
pub(crate) struct Lease {
    conn: Box<H1Conn>,
    pool: Arc<EndpointPool>,
}

impl Lease {
    /// Lets the connection make progress while its response body is read.
    pub(crate) fn drive(&mut self, cx: &mut Context<'_>) {
        self.conn.drive(cx);
    }

    /// The response body was read to its end: the connection may serve another request.
    pub(crate) fn release(self) {
        self.pool.park(self.conn);
    }
}

impl EndpointPool {
    /// Sends `req` (origin-form URI, `Host` set) on an idle connection or a new one.
    pub(crate) async fn send(
        self: &Arc<Self>,
        mut req: Request<ProxyBody>,
    ) -> Result<(Response<Incoming>, Lease), UpstreamError> {
        loop {
            let (mut conn, reused) = match self.checkout().await {
                Some(c) => (c, true),
                // Boxed: connecting is rare, and its future would otherwise swell every
                // request's future.
                None => (Box::pin(self.connect()).await?, false),
            };
            let sent = pin!(conn.send.try_send_request(req));
            let mut sent = sent;
            let result = poll_fn(|cx| {
                conn.drive(cx);
                sent.as_mut().poll(cx)
            })
            .await;
            match result {
                Ok(response) => {
                    return Ok((
                        response,
                        Lease {
                            conn,
                            pool: Arc::clone(self),
                        },
                    ))
                }
                Err(mut e) => match e.take_message() {
                    // A parked connection that closed before the request went out: nothing
                    // was sent, so the request can go on a fresh connection.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }

    /// The most recently parked connection that is still usable, if any.
    async fn checkout(&self) -> Option<Box<H1Conn>> {
        loop {
            let (candidate, expired) = {
                let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                let now = self.tick.load(Ordering::Relaxed);
                match idle.pop() {
                    None => return None,
                    Some(p) if now.saturating_sub(p.tick) >= IDLE_TICKS => {
                        // Parked too long, and everything parked before it even longer.
                        (None, std::mem::take(&mut *idle))
                    }
                    Some(p) => (Some(p.conn), Vec::new()),
                }
            };
            drop(expired);
            let mut conn = candidate?;
            // Let it notice a close by the endpoint, or finish the previous exchange.
            let open = poll_fn(|cx| Poll::Ready(conn.drive(cx))).await;
            if open && conn.send.is_ready() {
                return Some(conn);
            }
        }
    }

    async fn connect(&self) -> Result<Box<H1Conn>, UpstreamError> {
        let labels = [&*self.cluster, &*self.address];
        let connecting = tokio::time::timeout(self.connect_timeout, async {
            let tcp = TcpStream::connect(&*self.address).await?;
            tcp.set_nodelay(true)?;
            Ok::<_, std::io::Error>(tcp)
        })
        .await;
        let tcp = match connecting {
            Ok(Ok(tcp)) => tcp,
            failed => {
                self.metrics
                    .upstream_connect_failures
                    .with_label_values(&labels)
                    .inc();
                let cause: UpstreamError = match failed {
                    Ok(Err(e)) => e.into(),
                    _ => "connect timed out".into(),
                };
                return Err(ConnectFailed::new(cause).into());
            }
        };
        let io = Counted::new(TokioIo::new(tcp), &self.metrics, &labels);
        let (send, conn) = http1::handshake(io).await?;
        Ok(Box::new(H1Conn {
            send,
            conn: Some(conn),
        }))
    }

    /// Parks a connection whose exchange is complete, if it can take another request.
    fn park(self: &Arc<Self>, conn: Box<H1Conn>) {
        if conn.conn.is_none() || conn.send.is_closed() {
            return;
        }
        if !self.sweeping.swap(true, Ordering::Relaxed) {
            self.start_sweeper();
        }
        let tick = self.tick.load(Ordering::Relaxed);
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Parked { conn, tick });
    }

    /// Every quarter of the idle timeout: one more tick, and connections parked four ticks ago
    /// are closed. Stops when the pool is dropped.
    fn start_sweeper(self: &Arc<Self>) {
        let every = (self.idle_timeout / IDLE_TICKS as u32).max(Duration::from_millis(1));
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                interval.tick().await;
                let Some(pool) = weak.upgrade() else { return };
                let now = pool.tick.fetch_add(1, Ordering::Relaxed) + 1;
                let expired: Vec<Parked> = {
                    let mut idle = pool.idle.lock().unwrap_or_else(|e| e.into_inner());
                    if idle.is_empty() {
                        continue;
                    }
                    let (expired, keep) = std::mem::take(&mut *idle)
                        .into_iter()
                        .partition(|p| now.saturating_sub(p.tick) >= IDLE_TICKS);
                    *idle = keep;
                    expired
                };
                // Closing sockets happens outside the lock.
                drop(expired);
            }
        });
    }
}
