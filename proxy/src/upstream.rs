//! HTTP/1.1 upstream connections: one pool per endpoint, driven by the request that uses them.
//!
//! hyper-util's pooled client runs every upstream connection as a task of its own and hands it
//! each request over a channel, so a proxied request wakes two tasks and crosses two channels
//! before its response reaches the client. Here an idle connection ([`H1Conn`]: a socket and
//! its buffers) sits in its endpoint's pool; a request checks it out, and the task serving the
//! client runs the exchange itself with the codec in [`crate::h1`]: it writes the request head
//! and body, reads the response head, then hands the connection to the response body
//! ([`UpstreamBody`], carried by `ProxyBody`), which reads the rest as the client takes it.
//! When the body is complete and the connection can take another request it goes back to the
//! pool; in every other case (an error, a body left unread, `Connection: close`, a request
//! body cut short) it is dropped and closed.
//!
//! A connection that was idle longer than the cluster's `idle_timeout` is closed: a sweeper per
//! pool counts ticks of a quarter of the timeout, and a connection parked four ticks ago or more
//! is gone (no clock is read per request). The pools outlive configuration swaps, as the
//! clusters' connection pools always have.
//!
//! HTTP/2 clusters keep hyper-util's client: there one connection multiplexes every request.
//!
//! A cluster with upstream TLS ([`crate::upstream_tls`]) runs the same codec over a TLS stream
//! ([`UpstreamIo`]); the handshake is part of opening the connection, so a pooled connection
//! is reused without another one.
//!
//! An exchange that fails says which side failed ([`ExchangeError`]): the endpoint (no
//! connection, a broken connection, a response that is not HTTP/1.1) or the client, whose
//! request body broke while it was being sent.

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Request, Response};
use http_body::{Body as _, Frame};
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;

use crate::ctx::ActiveGuard;
use crate::h1::{
    self, BodyFraming, ChunkedDecoder, Decoded, H1Error, RequestFraming, ResponseHead, Span,
};
use crate::metrics::Metrics;
use crate::request_body::{DownstreamError, RequestBody};
use crate::upstream_tls::{TlsFailure, UpstreamIo, UpstreamTls};

/// Why an HTTP/1.1 exchange with an endpoint failed, and on which side.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExchangeError {
    /// No connection to the endpoint could be opened.
    #[error(transparent)]
    Connect(#[from] ConnectFailed),
    /// The connection to the endpoint failed (reset, refused a write, ...).
    #[error("upstream connection failed: {0}")]
    Io(#[source] std::io::Error),
    /// The endpoint closed the connection early or answered something that is not HTTP/1.1.
    #[error(transparent)]
    Protocol(#[from] H1Error),
    /// The client's request body broke while it was being sent: the client's fault, not the
    /// endpoint's.
    #[error("request body: {0}")]
    RequestBody(#[source] DownstreamError),
}

/// Ticks of the idle sweeper after which a parked connection is closed.
const IDLE_TICKS: u64 = 4;

/// The HTTP/1.1 pools of one cluster's endpoints, by address.
pub(crate) struct H1Pools {
    cluster: Arc<str>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    metrics: Arc<Metrics>,
    tls: Option<Arc<UpstreamTls>>,
    endpoints: Mutex<HashMap<Box<str>, Arc<EndpointPool>>>,
}

impl H1Pools {
    pub(crate) fn new(
        cluster: &str,
        connect_timeout: Duration,
        idle_timeout: Duration,
        metrics: &Arc<Metrics>,
        tls: Option<Arc<UpstreamTls>>,
    ) -> Self {
        H1Pools {
            cluster: cluster.into(),
            connect_timeout,
            idle_timeout,
            metrics: Arc::clone(metrics),
            tls,
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
                        tls: self.tls.as_ref().map(|tls| {
                            let name = tls.server_name(address);
                            (Arc::clone(tls), name)
                        }),
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
    /// The cluster's TLS client and the server name of this endpoint, when TLS is on.
    tls: Option<(Arc<UpstreamTls>, rustls::pki_types::ServerName<'static>)>,
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

/// One HTTP/1.1 connection to an endpoint, with its buffers (kept across requests so an
/// exchange allocates none of its own).
pub(crate) struct H1Conn {
    io: UpstreamIo,
    /// Bytes read and not yet used: the rest of a response head, body bytes.
    read: BytesMut,
    /// Bytes to write before anything else: a request head, chunk framing, small body data.
    write: Vec<u8>,
    /// How much of `write` is written.
    written: usize,
    /// Scratch space for the response head parser.
    spans: Vec<Span>,
    /// How much room the next read gets (grows while reads fill it).
    read_size: usize,
    /// Nothing on this connection (response body, request body) is half done, and the
    /// upstream allows another request on it.
    reusable: bool,
    _active: ActiveGuard,
}

/// Body data at most this large is copied next to its framing and written with it; larger
/// data is written from its own buffer.
const COALESCE_BYTES: usize = 4096;

impl H1Conn {
    /// Writes pending bytes, then the request body from `sending`; ready when the whole request
    /// is written.
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        sending: &mut Sending,
    ) -> Poll<Result<(), ExchangeError>> {
        loop {
            while self.written < self.write.len() {
                self.written +=
                    std::task::ready!(write_some(&mut self.io, cx, &self.write[self.written..]))?;
            }
            self.write.clear();
            self.written = 0;
            if let Some(data) = &mut sending.data {
                while !data.is_empty() {
                    let n = std::task::ready!(write_some(&mut self.io, cx, data))?;
                    data.advance(n);
                }
                sending.data = None;
                if sending.framing == RequestFraming::Chunked {
                    self.write.extend_from_slice(b"\r\n");
                    continue;
                }
            }
            if sending.done {
                // TLS may hold the last bytes (a plain socket's flush is nothing).
                std::task::ready!(Pin::new(&mut self.io).poll_flush(cx))
                    .map_err(ExchangeError::Io)?;
                return Poll::Ready(Ok(()));
            }
            match Pin::new(&mut sending.body).poll_frame(cx) {
                Poll::Pending => {
                    if self.write.is_empty() {
                        if let Poll::Ready(Err(e)) = Pin::new(&mut self.io).poll_flush(cx) {
                            return Poll::Ready(Err(ExchangeError::Io(e)));
                        }
                        return Poll::Pending;
                    }
                }
                Poll::Ready(None) => {
                    if sending.framing == RequestFraming::Chunked {
                        h1::encode_last_chunk(&mut self.write, None);
                    }
                    sending.done = true;
                }
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Err(ExchangeError::RequestBody(e)))
                }
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if data.is_empty() => {}
                    Ok(data) => {
                        let chunked = sending.framing == RequestFraming::Chunked;
                        if chunked {
                            h1::encode_chunk_size(&mut self.write, data.len());
                        }
                        if data.len() <= COALESCE_BYTES {
                            self.write.extend_from_slice(&data);
                            if chunked {
                                self.write.extend_from_slice(b"\r\n");
                            }
                        } else {
                            sending.data = Some(data);
                        }
                    }
                    Err(frame) => {
                        if sending.framing == RequestFraming::Chunked {
                            h1::encode_last_chunk(&mut self.write, frame.trailers_ref());
                        }
                        // Trailers end the body; with a length framing they have no place on
                        // the wire and are dropped, as hyper would.
                        sending.done = true;
                    }
                },
            }
        }
    }

    /// Reads more bytes into `read`; ready with how many (0 at the end of the stream).
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        if self.read.capacity() - self.read.len() < READ_MIN_SPARE {
            self.read.reserve(self.read_size);
        }
        let room = self.read.capacity() - self.read.len();
        // Through `AsyncRead` rather than `try_read_buf`: after a read that did not fill the
        // buffer Tokio marks the socket not readable, so the next exchange's first read
        // waits for readiness instead of costing a `recv` that finds nothing.
        let n = std::task::ready!(pin!(self.io.read_buf(&mut self.read)).poll(cx))?;
        // Large bodies are read in larger pieces (fewer reads, fewer frames to write on),
        // as hyper's adaptive read buffer does; small responses keep the buffer small.
        if n == room {
            self.read_size = (self.read_size * 2).min(READ_BUFFER_MAX);
        } else if n < room / 4 {
            self.read_size = (self.read_size / 2).max(READ_BUFFER);
        }
        Poll::Ready(Ok(n))
    }

    /// Reads until a whole response head has arrived.
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
        head_request: bool,
    ) -> Poll<Result<ResponseHead, ExchangeError>> {
        loop {
            if !self.read.is_empty() {
                if let Some(head) = h1::parse_head(&mut self.read, head_request, &mut self.spans)? {
                    return Poll::Ready(Ok(head));
                }
            }
            match std::task::ready!(self.poll_fill(cx)) {
                Ok(0) => return Poll::Ready(Err(H1Error::Closed.into())),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(ExchangeError::Io(e))),
            }
        }
    }

    /// Whether a parked connection can be used: the upstream has neither closed it nor sent
    /// anything unasked.
    fn still_open(&mut self) -> bool {
        self.io.still_open()
    }
}

/// One write of some of `buf`; a write of nothing is an error (the socket will take no more).
fn write_some(
    io: &mut UpstreamIo,
    cx: &mut Context<'_>,
    buf: &[u8],
) -> Poll<Result<usize, ExchangeError>> {
    match Pin::new(io).poll_write(cx, buf) {
        Poll::Ready(Ok(0)) => Poll::Ready(Err(ExchangeError::Io(std::io::Error::from(
            std::io::ErrorKind::WriteZero,
        )))),
        polled => polled.map_err(ExchangeError::Io),
    }
}

/// Reads ask for at least this much room in the read buffer ...
const READ_MIN_SPARE: usize = 2048;
/// ... and grow it by at least this much when there is less ...
const READ_BUFFER: usize = 16 * 1024;
/// ... and at most this much, after reads that kept filling it.
const READ_BUFFER_MAX: usize = 256 * 1024;

/// A request body on its way upstream.
pub(crate) struct Sending {
    body: RequestBody,
    framing: RequestFraming,
    /// Data being written from its own buffer (too large to coalesce).
    data: Option<Bytes>,
    /// The body has ended (its last framing may still be in the write buffer).
    done: bool,
}

/// A checked-out connection travelling with a response body, which drives it: the response
/// body is read from it and, when the upstream answered before the request body was all sent,
/// the rest of the request body is written from it too.
pub(crate) struct Lease {
    conn: Box<H1Conn>,
    pool: Arc<EndpointPool>,
    /// The rest of the request body, when the response came first.
    sending: Option<Box<Sending>>,
}

impl Lease {
    /// Lets the request body make progress while the response body is read.
    fn drive_send(&mut self, cx: &mut Context<'_>) {
        if let Some(sending) = &mut self.sending {
            match self.conn.poll_send(cx, sending) {
                Poll::Pending => {}
                Poll::Ready(Ok(())) => self.sending = None,
                Poll::Ready(Err(e)) => {
                    tracing::debug!(error = %e, "request body not fully sent upstream");
                    self.sending = None;
                    self.conn.reusable = false;
                }
            }
        }
    }

    /// The exchange is over: the connection may serve another request if nothing on it is
    /// half done.
    fn release(self) {
        if self.sending.is_none() && self.conn.reusable && self.conn.read.is_empty() {
            self.pool.park(self.conn);
        }
    }
}

/// A response body read from an HTTP/1.1 upstream connection.
pub(crate) struct UpstreamBody {
    /// `None` once the body is complete (the connection was released) or failed.
    lease: Option<Lease>,
    framing: BodyFraming,
    chunked: ChunkedDecoder,
}

impl UpstreamBody {
    /// Reads the next frame of the body.
    pub(crate) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        let Some(lease) = &mut self.lease else {
            return Poll::Ready(None);
        };
        lease.drive_send(cx);
        let conn = &mut lease.conn;
        loop {
            let frame = match &mut self.framing {
                BodyFraming::Empty => None,
                BodyFraming::Length(0) => None,
                BodyFraming::Length(left) => {
                    if conn.read.is_empty() {
                        Some(Decoded::NeedMore)
                    } else {
                        let n = usize::try_from(*left)
                            .unwrap_or(usize::MAX)
                            .min(conn.read.len());
                        *left -= n as u64;
                        Some(Decoded::Data(conn.read.split_to(n).freeze()))
                    }
                }
                BodyFraming::Chunked => match self.chunked.decode(&mut conn.read) {
                    Ok(Decoded::End(None)) => None,
                    Ok(decoded) => Some(decoded),
                    Err(e) => return self.fail(e.into()),
                },
                BodyFraming::UntilClose => {
                    if conn.read.is_empty() {
                        Some(Decoded::NeedMore)
                    } else {
                        Some(Decoded::Data(conn.read.split().freeze()))
                    }
                }
            };
            match frame {
                None => {
                    self.finish();
                    return Poll::Ready(None);
                }
                Some(Decoded::Data(data)) => {
                    if self.is_complete() {
                        // The last bytes: hand the connection back now, not when the body is
                        // dropped (hyper does not poll a body it knows has ended).
                        self.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Decoded::End(trailers)) => {
                    self.finish();
                    return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                }
                Some(Decoded::NeedMore) => match std::task::ready!(conn.poll_fill(cx)) {
                    Ok(0) if self.framing == BodyFraming::UntilClose => {
                        conn.reusable = false;
                        self.finish();
                        return Poll::Ready(None);
                    }
                    Ok(0) => return self.fail(H1Error::Closed.into()),
                    Ok(_) => {}
                    Err(e) => return self.fail(ExchangeError::Io(e)),
                },
            }
        }
    }

    fn fail(&mut self, e: ExchangeError) -> Poll<Option<Result<Frame<Bytes>, ExchangeError>>> {
        tracing::debug!(error = %e, "upstream response body failed");
        self.lease = None;
        Poll::Ready(Some(Err(e)))
    }

    /// Whether the whole body has been read.
    pub(crate) fn is_complete(&self) -> bool {
        match self.framing {
            BodyFraming::Empty | BodyFraming::Length(0) => true,
            BodyFraming::Chunked => self.chunked == ChunkedDecoder::Done,
            BodyFraming::Length(_) | BodyFraming::UntilClose => false,
        }
    }

    fn finish(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
    }

    /// The body's exact length, when the framing says it.
    pub(crate) fn exact_len(&self) -> Option<u64> {
        match self.framing {
            BodyFraming::Empty => Some(0),
            BodyFraming::Length(n) => Some(n),
            BodyFraming::Chunked | BodyFraming::UntilClose => None,
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // A body dropped after its last byte still frees its connection; one dropped earlier
        // closes it (the rest of the response would otherwise be read as the next one).
        if self.is_complete() {
            self.finish();
        }
    }
}

impl EndpointPool {
    /// Sends `req` (origin-form URI, `Host` set) on an idle connection or a new one; the
    /// response's body is read from that connection as it is polled.
    pub(crate) async fn send(
        self: &Arc<Self>,
        req: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, ExchangeError> {
        let (parts, body) = req.into_parts();
        let head_request = parts.method == Method::HEAD;
        let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let mut conn = match self.checkout() {
            Some(c) => c,
            // Boxed: connecting is rare, and its future would otherwise swell every
            // request's future.
            None => Box::pin(self.connect()).await?,
        };
        conn.write.clear();
        conn.written = 0;
        let framing = h1::encode_head(
            &mut conn.write,
            &parts.method,
            target,
            &parts.headers,
            body.is_end_stream(),
        );
        let mut sending = Sending {
            done: framing == RequestFraming::None,
            body,
            framing,
            data: None,
        };
        let mut sent = false;
        // Why the request could not be written, once it could not: the upstream may have
        // answered before it stopped reading (413 and a close, or an answer that needs no
        // body), and that answer, if one arrives, is the result.
        let mut send_error: Option<ExchangeError> = None;
        let head = poll_fn(|cx| {
            // The answer first: once the upstream has answered, the rest of the body is
            // written beside the response body (or not at all), and an answer already here
            // is taken before a write could make the upstream reset the connection.
            if let Poll::Ready(r) = conn.poll_head(cx, head_request) {
                return Poll::Ready(match (r, send_error.take()) {
                    (Ok(head), failed) => Ok((head, failed.is_some())),
                    // No answer came: the failed write is what went wrong.
                    (Err(_), Some(e)) => Err(e),
                    (Err(e), None) => Err(e),
                });
            }
            if !sent && send_error.is_none() {
                match conn.poll_send(cx, &mut sending) {
                    Poll::Ready(Ok(())) => sent = true,
                    // The client's body broke: nothing more will come, and an upstream
                    // waiting for the rest would never answer.
                    Poll::Ready(Err(e @ ExchangeError::RequestBody(_))) => {
                        return Poll::Ready(Err(e))
                    }
                    // The upstream stopped taking the request: keep reading until its
                    // answer or the end of the connection.
                    Poll::Ready(Err(e)) => {
                        send_error = Some(e);
                        cx.waker().wake_by_ref();
                    }
                    Poll::Pending => {}
                }
            }
            Poll::Pending
        })
        .await;
        let (head, send_failed) = match head {
            Ok(h) => h,
            Err(e) => return Err(e),
        };
        conn.reusable = head.keep_alive && !send_failed;
        let lease = Lease {
            conn,
            pool: Arc::clone(self),
            sending: (!sent && !send_failed).then(|| Box::new(sending)),
        };
        let mut response = Response::new(UpstreamBody {
            lease: Some(lease),
            framing: head.framing,
            chunked: ChunkedDecoder::Size,
        });
        *response.status_mut() = head.status;
        *response.headers_mut() = head.headers;
        Ok(response)
    }

    /// The most recently parked connection that is still usable, if any.
    fn checkout(&self) -> Option<Box<H1Conn>> {
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
            if conn.still_open() {
                return Some(conn);
            }
        }
    }

    async fn connect(&self) -> Result<Box<H1Conn>, ConnectFailed> {
        let labels = [&*self.cluster, &*self.address];
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        let connecting = tokio::time::timeout_at(deadline, async {
            let tcp = TcpStream::connect(&*self.address).await?;
            tcp.set_nodelay(true)?;
            Ok::<_, std::io::Error>(tcp)
        })
        .await;
        let failed = |cause: Box<dyn std::error::Error + Send + Sync>| {
            self.metrics
                .upstream_connect_failures
                .with_label_values(&labels)
                .inc();
            ConnectFailed::new(cause)
        };
        let tcp = match connecting {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(failed(e.into())),
            Err(_) => return Err(failed("connect timed out".into())),
        };
        let io = match &self.tls {
            None => UpstreamIo::Plain(tcp),
            Some((tls, name)) => {
                let handshake = tls.handshake(tcp, name.clone(), &self.cluster, &self.metrics);
                match tokio::time::timeout_at(deadline, handshake).await {
                    Ok(Ok(stream)) => UpstreamIo::Tls(Box::new(stream)),
                    Ok(Err(e)) => return Err(failed(e.into())),
                    Err(_) => {
                        let e = TlsFailure::timeout();
                        tls.count(&e, &self.cluster, &self.metrics);
                        return Err(failed(e.into()));
                    }
                }
            }
        };
        self.metrics
            .upstream_cx_total
            .with_label_values(&labels)
            .inc();
        let active = self.metrics.upstream_cx_active.with_label_values(&labels);
        Ok(Box::new(H1Conn {
            io,
            read: BytesMut::with_capacity(READ_BUFFER),
            write: Vec::with_capacity(1024),
            written: 0,
            spans: Vec::new(),
            read_size: READ_BUFFER,
            reusable: true,
            _active: ActiveGuard::new(&active),
        }))
    }

    /// Parks a connection whose exchange is complete, if it can take another request.
    fn park(self: &Arc<Self>, conn: Box<H1Conn>) {
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

/// A connection to an endpoint could not be opened. hyper's client reports some failures on
/// a freshly opened connection as connect errors too; this marks the real ones.
#[derive(Debug, thiserror::Error)]
#[error("connect failed: {0}")]
pub(crate) struct ConnectFailed(#[source] Box<dyn std::error::Error + Send + Sync>);

impl ConnectFailed {
    /// A failed connect, for `cause`.
    pub(crate) fn new(cause: Box<dyn std::error::Error + Send + Sync>) -> Self {
        ConnectFailed(cause)
    }

    /// Whether `error` (or anything it was caused by) is a failed connect.
    pub(crate) fn caused(error: &(dyn std::error::Error + 'static)) -> bool {
        let mut current = Some(error);
        while let Some(e) = current {
            if e.is::<ConnectFailed>() {
                return true;
            }
            current = e.source();
        }
        false
    }
}
