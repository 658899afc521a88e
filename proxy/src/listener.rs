//! Downstream listeners: accept loops, TLS, HTTP/1.1 and HTTP/2 connections, graceful drain.
//!
//! A listener's socket lives as long as its address stays in the configuration. What it serves
//! (routes, TLS certificate, metric labels) is a [`ListenerState`] behind an `ArcSwap`, replaced
//! whole on every configuration change; a connection reads the current state once per request.

use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::task::AtomicWaker;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::access_log::AccessLog;
use crate::capture::{self, Handoff};
use crate::chain::{self, Chains, Conn, Inspected};
use crate::ctx::{ActiveGuard, ConnContext};
use crate::forward;
use crate::framing::FramingWatch;
use crate::metrics::ListenerStats;
use crate::rbac::Rbac;
use crate::route::RouteTable;
use crate::tcp::{Accepted, TcpProxy};
use crate::tracer::Tracer;

/// Time allowed for a client to finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the listener filters (TLS and HTTP inspectors) wait for a connection's first bytes
/// before closing it (Envoy's default `listener_filters_timeout`).
const LISTENER_FILTERS_TIMEOUT: Duration = Duration::from_secs(15);

/// What a listener serves under one configuration version.
pub(crate) struct ListenerState {
    pub(crate) name: Arc<str>,
    pub(crate) routes: RouteTable,
    pub(crate) tls: Option<TlsAcceptor>,
    pub(crate) stats: ListenerStats,
    pub(crate) limits: ListenerLimits,
    pub(crate) access_log: Option<Arc<AccessLog>>,
    pub(crate) tracer: Option<Arc<Tracer>>,
    /// The RBAC filter's compiled rules, if the listener has them.
    pub(crate) rbac: Option<Arc<Rbac>>,
    /// A `tcp` listener's proxy (an `http` listener has none).
    pub(crate) tcp: Option<TcpProxy>,
    /// A `use_original_dst` listener's hand-off table.
    pub(crate) capture: Option<Arc<Handoff<Arc<ListenerShared>>>>,
    /// Whether accepted connections need their original destination (capture, passthrough):
    /// decided when the configuration is applied, so other listeners pay one branch.
    pub(crate) wants_original_dst: bool,
    /// A listener with `filter_chains`: each connection is served by the chain it picks
    /// (each chain's state is a listener of its own, kept across swaps).
    pub(crate) chains: Option<Arc<Chains<Arc<ListenerShared>>>>,
}

impl forward::Serving for ListenerState {
    fn routes(&self) -> &RouteTable {
        &self.routes
    }

    fn stats(&self) -> &ListenerStats {
        &self.stats
    }

    fn access_log(&self) -> Option<&Arc<AccessLog>> {
        self.access_log.as_ref()
    }

    fn tracer(&self) -> Option<&Arc<Tracer>> {
        self.tracer.as_ref()
    }

    fn rbac(&self) -> Option<&Rbac> {
        self.rbac.as_deref()
    }
}

/// Per-listener protections against hostile or broken clients.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ListenerLimits {
    pub(crate) max_connections: Option<u32>,
    /// Largest request header block in bytes (HTTP/1.1 read buffer, HTTP/2 header list).
    pub(crate) max_header_bytes: usize,
    pub(crate) header_timeout: Option<Duration>,
    /// Close a client connection after this long without a request in flight.
    pub(crate) idle_timeout: Option<Duration>,
}

impl ListenerLimits {
    /// hyper refuses read buffers under 8 KiB.
    const MIN_HEADER_BYTES: usize = 8192;

    fn http(&self) -> auto::Builder<TokioExecutor> {
        let mut http = auto::Builder::new(TokioExecutor::new());
        // The request-headers timeout is the framing watch's (`FramingWatch`): hyper's own
        // would arm a new timer for every request.
        http.http1()
            .keep_alive(true)
            .max_buf_size(self.max_header_bytes.max(Self::MIN_HEADER_BYTES))
            .header_read_timeout(None);
        http.http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX));
        http
    }
}

/// State shared by a listener's accept loop and its connections.
pub(crate) struct ListenerShared {
    pub(crate) state: ArcSwap<ListenerState>,
}

impl forward::Listener for ListenerShared {
    type State = ListenerState;

    fn current(&self) -> Arc<ListenerState> {
        self.state.load_full()
    }
}

/// A bound, serving listener.
pub(crate) struct RunningListener {
    pub(crate) shared: Arc<ListenerShared>,
    pub(crate) local_addr: SocketAddr,
    stop: watch::Sender<Option<Duration>>,
    task: JoinHandle<()>,
}

impl RunningListener {
    /// A `bind_to_port: false` listener's state holder: never bound, it serves what a capture
    /// listener hands it.
    pub(crate) fn virtual_listener(state: ListenerState) -> Arc<ListenerShared> {
        Arc::new(ListenerShared {
            state: ArcSwap::from_pointee(state),
        })
    }

    /// Binds `addr` (synchronously, so a reload learns at once that an address is taken) and
    /// starts accepting. Must be called inside a Tokio runtime.
    pub(crate) fn bind(addr: SocketAddr, state: ListenerState) -> std::io::Result<Self> {
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(std_listener)?;
        let local_addr = listener.local_addr()?;
        let shared = Arc::new(ListenerShared {
            state: ArcSwap::from_pointee(state),
        });
        let (stop, stopped) = watch::channel(None);
        let task = tokio::spawn(accept_loop(listener, Arc::clone(&shared), stopped));
        Ok(RunningListener {
            shared,
            local_addr,
            stop,
            task,
        })
    }

    /// Stops accepting, asks every connection to finish its in-flight requests, and waits up to
    /// `drain` for them before closing whatever is left.
    pub(crate) async fn stop(self, drain: Duration) {
        let _ = self.stop.send(Some(drain));
        let _ = self.task.await;
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<ListenerShared>,
    mut stopped: watch::Receiver<Option<Duration>>,
) {
    // Every connection holds a receiver: `true` asks it to finish gracefully, and the sender's
    // `closed()` tells when the last one is gone.
    let (drain_tx, drain_rx) = watch::channel(false);
    let bound_port = listener.local_addr().map_or(0, |a| a.port());
    loop {
        let accepted = tokio::select! {
            _ = stopped.changed() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let mut state = shared.state.load();
        let mut serving = &shared;
        let mut dest = None;
        let mut local = None;
        if state.wants_original_dst {
            // Once per connection, at accept time.
            local = tcp.local_addr().ok();
            dest = capture::original_dst(&tcp, local).or(local);
            let handoff = state.capture.as_ref().zip(dest);
            if let Some(target) = handoff.and_then(|(table, d)| table.select(d)) {
                serving = target;
            }
        }
        let handed_off = !Arc::ptr_eq(serving, &shared);
        let serving = Arc::clone(serving);
        if handed_off {
            state = serving.state.load();
        }
        if let Some(max) = state.limits.max_connections {
            if state.stats.cx_active.get() >= i64::from(max) {
                state.stats.cx_overflow.inc();
                drop(tcp);
                continue;
            }
        }
        let _ = tcp.set_nodelay(true);
        if let Some(chains) = state.chains.clone() {
            let no_chain = state.stats.cx_no_chain.clone();
            drop(state);
            let local = local.or_else(|| tcp.local_addr().ok());
            let drain = drain_rx.clone();
            tokio::spawn(async move {
                let inspected = if chains.inspects() {
                    let seen = chain::inspect(
                        &tcp,
                        chains.tls_inspector,
                        chains.http_inspector,
                        LISTENER_FILTERS_TIMEOUT,
                    )
                    .await;
                    match seen {
                        Some(i) => i,
                        None => return,
                    }
                } else {
                    Inspected::default()
                };
                let Some(destination) = dest.or(local) else {
                    return;
                };
                let protocols: Vec<&[u8]> = inspected
                    .application_protocols
                    .iter()
                    .map(Vec::as_slice)
                    .collect();
                let conn = Conn {
                    destination,
                    source: peer,
                    server_name: inspected.server_name.as_deref(),
                    transport: inspected.transport(),
                    application_protocols: &protocols,
                };
                match chains.select(&conn) {
                    Some(chain) => {
                        let chain = Arc::clone(chain);
                        drop(protocols);
                        serve_accepted(tcp, peer, local, dest, bound_port, chain, drain).await;
                    }
                    None => {
                        no_chain.inc();
                        tracing::debug!(%peer, %destination, "no filter chain matches; closing");
                    }
                }
            });
            continue;
        }
        drop(state);
        tokio::spawn(serve_accepted(
            tcp,
            peer,
            local,
            dest,
            bound_port,
            serving,
            drain_rx.clone(),
        ));
    }
    drop(listener);
    drop(drain_rx);
    let drain = stopped.borrow().unwrap_or_default();
    let _ = drain_tx.send(true);
    if tokio::time::timeout(drain, drain_tx.closed())
        .await
        .is_err()
    {
        tracing::warn!(
            ?drain,
            "connections still open after the drain timeout; no longer waiting for them"
        );
    }
}

/// Serves one accepted connection with `listener`'s current state: its TCP proxy, or HTTP
/// after its TLS handshake when it has TLS.
async fn serve_accepted(
    tcp: TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    dest: Option<SocketAddr>,
    bound_port: u16,
    listener: Arc<ListenerShared>,
    drain: watch::Receiver<bool>,
) {
    let state = listener.state.load_full();
    state.stats.cx_total.inc();
    let stats_active = state.stats.cx_active.clone();
    let _open = ActiveGuard::new(&stats_active);
    if let Some(proxy) = &state.tcp {
        // Held so the listener's drain waits for the connection.
        let _drain = drain;
        let accepted = Accepted {
            tcp,
            peer,
            local,
            original_dst: dest,
        };
        proxy.serve(accepted, state.access_log.clone()).await;
        return;
    }
    let http = state.limits.http();
    let idle = state.limits.idle_timeout;
    let header_timeout = state.limits.header_timeout;
    let tls = state.tls.clone();
    let flood = state.stats.cx_flood.clone();
    let name = Arc::clone(&state.name);
    drop(state);
    let mut ctx = ConnContext::new(peer, tls.is_some());
    // The port the connection came in on (for RBAC's destination_port): its original
    // destination when it was captured, else the listener's.
    ctx.local_port = dest.or(local).map_or(bound_port, |d| d.port());
    let conflict = Arc::clone(&ctx.framing_conflict);
    let result = match tls {
        None => {
            let io = FramingWatch::new(tcp, conflict, header_timeout, flood);
            serve_connection(io, &http, listener, Arc::new(ctx), idle, drain).await
        }
        Some(acceptor) => {
            let handshake = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
            let stream = match handshake {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::debug!(listener = %name, %peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(listener = %name, %peer, "TLS handshake timed out");
                    return;
                }
            };
            // The client certificate's identity, once per connection.
            (ctx.authenticated, ctx.identity) = crate::tls::peer_identity(&stream);
            let io = FramingWatch::new(stream, conflict, header_timeout, flood);
            serve_connection(io, &http, listener, Arc::new(ctx), idle, drain).await
        }
    };
    if let Err(e) = result {
        tracing::debug!(listener = %name, %peer, error = %e, "connection ended with an error");
    }
}

/// Serves one client connection until it ends, each request with the listener's state of the
/// moment (read once per request). It is asked to finish gracefully (in-flight
/// requests complete, HTTP/2 gets a GOAWAY) when the listener drains or when it has been idle
/// for `idle`.
///
/// The drain and idle watches are polled only when one of them has been woken (see
/// [`ControlGate`]), not on each of the many wakes the connection's own I/O causes.
async fn serve_connection<I>(
    io: I,
    http: &auto::Builder<TokioExecutor>,
    listener: Arc<ListenerShared>,
    ctx: Arc<ConnContext>,
    idle: Option<Duration>,
    mut drain: watch::Receiver<bool>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service_ctx = Arc::clone(&ctx);
    let service =
        service_fn(move |req| forward::serve(req, Arc::clone(&service_ctx), Arc::clone(&listener)));
    let mut conn = pin!(http.serve_connection(TokioIo::new(io), service));
    let mut control = pin!(async {
        tokio::select! {
            _ = drain.changed() => {}
            _ = idle_for(&ctx, idle) => {
                tracing::debug!(?idle, "closing an idle client connection");
            }
        }
    });
    let gate = Arc::new(ControlGate::default());
    let control_waker = Waker::from(Arc::clone(&gate));
    let mut closing = false;
    poll_fn(|cx| {
        if let Poll::Ready(done) = conn.as_mut().poll(cx) {
            return Poll::Ready(done);
        }
        if !closing && gate.take(cx.waker()) {
            let mut control_cx = Context::from_waker(&control_waker);
            if control.as_mut().poll(&mut control_cx).is_ready() {
                closing = true;
                conn.as_mut().graceful_shutdown();
                return conn.as_mut().poll(cx);
            }
        }
        Poll::Pending
    })
    .await
}

/// Lets a connection task poll its control futures only after they were woken.
///
/// The control futures are polled with a waker of their own that raises `woken` and then wakes
/// the task; the task polls them again only if `woken` is up.
struct ControlGate {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Default for ControlGate {
    fn default() -> Self {
        ControlGate {
            // Up at first, so the control futures are polled once and register their wakers.
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        }
    }
}

impl ControlGate {
    /// Remembers the task's current waker; returns whether the control futures were woken
    /// since the last call (and lowers the flag).
    fn take(&self, task: &Waker) -> bool {
        self.task.register(task);
        self.woken.swap(false, Ordering::AcqRel)
    }
}

impl Wake for ControlGate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// Completes once the connection has had no request in flight and no new request for at least
/// `timeout` (checked every quarter of it); never when `timeout` is `None`.
async fn idle_for(ctx: &ConnContext, timeout: Option<Duration>) {
    let Some(timeout) = timeout else {
        return std::future::pending().await;
    };
    let quarter = (timeout / 4).max(Duration::from_millis(1));
    let mut seen = ctx.streams();
    let mut quiet = 0;
    loop {
        tokio::time::sleep(quarter).await;
        let now = ctx.streams();
        if now.open == 0 && now.started == seen.started {
            quiet += 1;
            // The first quiet check may follow a stream that ended just before it; four more
            // make a whole timeout.
            if quiet > 4 {
                return;
            }
        } else {
            quiet = 0;
        }
        seen = now;
    }
}
