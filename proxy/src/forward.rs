//! The request path: route, pick, rewrite, forward, account.
//!
//! This is the proxy's hot path. Everything that can be decided ahead of time was decided when
//! the configuration was applied (route table, balancer order, metric handles, the client's
//! forwarded-for value per connection); per request this only reads an `ArcSwap`, matches
//! prepared strings, bumps atomics and edits headers in place.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::net::IpAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme, Uri};
use http::{Request, Response, StatusCode, Version};
use http_body::Body as _;
use hyper::body::Incoming;

use crate::body::{ActiveGuard, ProxyBody};
use crate::cluster::{Admission, Cluster, Endpoint};
use crate::config::RetryOn;
use crate::health::Outcome;
use crate::listener::ListenerState;
use crate::metrics::class_index;
use crate::upstream::UpstreamError;

/// What the proxy knows about one downstream connection.
pub(crate) struct ConnContext {
    /// The listener's current routes, metrics and TLS settings.
    pub(crate) listener: Arc<crate::listener::ListenerShared>,
    /// The client's IP, ready to append to `x-forwarded-for`.
    pub(crate) client_ip: HeaderValue,
    /// Whether the client is on loopback or a private network (Envoy's "internal" request):
    /// only then is a client-supplied `x-request-id` kept.
    pub(crate) internal_client: bool,
    /// `http` or `https`, for `x-forwarded-proto`.
    pub(crate) scheme: &'static str,
    /// Set by the connection's [`crate::framing::FramingWatch`] to the request whose head
    /// carried both `Content-Length` and `Transfer-Encoding` (which hyper hides from us).
    pub(crate) framing_conflict: crate::framing::ConflictCell,
    /// Requests started (high 32 bits, wrapping) and in flight (low 32 bits), in one word so
    /// that a request costs one atomic add at each end.
    streams: AtomicU64,
    /// The connection's reusable attempt timer (see [`TimerSlot`]).
    timer: TimerSlot,
}

/// One timer kept per connection and reused by its requests' attempt deadlines.
///
/// A fresh Tokio timer per request costs an allocation-free but locked insert into the timer
/// wheel and a locked removal when the response comes first, which it nearly always does. A
/// timer that is *moved later* while still registered costs one compare-and-swap instead (the
/// wheel finds the new deadline when the old one comes up). HTTP/1.1 requests on a connection
/// run one after another, so they all reuse the connection's timer; a request that finds it in
/// use (concurrent HTTP/2 streams, a retry's second attempt) gets a timer of its own.
#[derive(Default)]
struct TimerSlot(Mutex<Option<Pin<Box<tokio::time::Sleep>>>>);

/// A timer taken from a [`TimerSlot`], put back when dropped.
struct Timer<'a> {
    slot: &'a TimerSlot,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl TimerSlot {
    /// A timer that fires at `deadline`.
    fn arm(&self, deadline: Instant) -> Timer<'_> {
        let deadline = tokio::time::Instant::from_std(deadline);
        let reused = self.0.try_lock().ok().and_then(|mut s| s.take());
        let sleep = match reused {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        Timer {
            slot: self,
            sleep: Some(sleep),
        }
    }
}

impl Timer<'_> {
    fn poll_fired(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        self.sleep
            .as_mut()
            .is_some_and(|s| s.as_mut().poll(cx).is_ready())
    }
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        if let Ok(mut slot) = self.slot.0.try_lock() {
            if slot.is_none() {
                *slot = self.sleep.take();
            }
        }
    }
}

/// A connection's request counters at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Streams {
    /// Requests started so far (wrapping).
    pub(crate) started: u32,
    /// Requests whose response has not finished yet.
    pub(crate) open: u32,
}

const ONE_STARTED_AND_OPEN: u64 = (1 << 32) | 1;

impl ConnContext {
    /// The request counters (for the idle timeout).
    pub(crate) fn streams(&self) -> Streams {
        let v = self.streams.load(Ordering::Relaxed);
        Streams {
            started: (v >> 32) as u32,
            open: v as u32,
        }
    }
}

/// Counts a request as in flight on its connection until dropped (with the response body).
pub(crate) struct StreamGuard(Arc<ConnContext>);

impl StreamGuard {
    /// Counts a new request; also returns its number on the connection (from 1, wrapping).
    fn new(conn: Arc<ConnContext>) -> (Self, u32) {
        let before = conn
            .streams
            .fetch_add(ONE_STARTED_AND_OPEN, Ordering::Relaxed);
        let number = ((before >> 32) as u32).wrapping_add(1);
        (StreamGuard(conn), number)
    }
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ConnContext {
    pub(crate) fn new(
        listener: Arc<crate::listener::ListenerShared>,
        client: IpAddr,
        tls: bool,
    ) -> Self {
        let client_ip = HeaderValue::from_str(&client.to_string())
            .expect("an IP address is a valid header value");
        ConnContext {
            listener,
            client_ip,
            internal_client: is_internal(client),
            scheme: if tls { "https" } else { "http" },
            framing_conflict: Arc::default(),
            streams: AtomicU64::new(0),
            timer: TimerSlot::default(),
        }
    }
}

fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private() || v4.is_link_local(),
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| is_internal(IpAddr::V4(v4)))
        }
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Serves one downstream request. Never fails: every problem becomes a response.
pub(crate) async fn serve(
    req: Request<Incoming>,
    conn: Arc<ConnContext>,
) -> Result<Response<ProxyBody>, Infallible> {
    let state = conn.listener.state.load_full();
    let listener_guard = ActiveGuard::new(&state.stats.active);
    let (stream, number) = StreamGuard::new(conn);
    let mut response = forward(req, &stream.0, number, &state).await;
    state.stats.requests[class_index(response.status().as_u16())].inc();
    let guards = response.body_mut().guards();
    guards.listener = Some(listener_guard);
    guards.stream = Some(stream);
    Ok(response)
}

/// How one attempt ended.
// The response is the common case by far; boxing it would cost an allocation per request.
#[allow(clippy::large_enum_variant)]
enum Attempt {
    Response(Response<ProxyBody>),
    Failed(Outcome, UpstreamError),
    TimedOut,
}

impl Attempt {
    fn outcome(&self) -> Outcome {
        match self {
            Attempt::Response(r) if r.status().is_server_error() => {
                Outcome::Status(r.status().as_u16())
            }
            Attempt::Response(..) => Outcome::Success,
            Attempt::Failed(outcome, _) => *outcome,
            Attempt::TimedOut => Outcome::Timeout,
        }
    }
}

fn retry_wanted(on: RetryOn, outcome: Outcome) -> bool {
    match outcome {
        Outcome::Success => false,
        Outcome::Status(s) => on.any_5xx || (on.gateway_error && matches!(s, 502..=504)),
        Outcome::ConnectFailure => on.any_5xx || on.gateway_error || on.connect_failure,
        Outcome::Reset => on.any_5xx || on.gateway_error || on.reset,
        Outcome::Timeout => on.any_5xx || on.gateway_error,
    }
}

/// A reply for a request refused by a circuit breaker.
fn overloaded(text: &'static str) -> Response<ProxyBody> {
    let mut r = local_reply(StatusCode::SERVICE_UNAVAILABLE, text);
    r.headers_mut()
        .insert(&X_GOFE_OVERLOADED, HeaderValue::from_static("true"));
    r
}

static X_GOFE_OVERLOADED: HeaderName = HeaderName::from_static("x-gofe-overloaded");

fn remaining(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}

/// The earlier of two optional deadlines.
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

async fn forward(
    req: Request<Incoming>,
    conn: &ConnContext,
    number: u32,
    state: &ListenerState,
) -> Response<ProxyBody> {
    // Both framings at once is how requests are smuggled (RFC 9112 §6.1). hyper frames such
    // a request by Transfer-Encoding and drops Content-Length before we see it; the
    // connection's framing watch saw the raw head. Refuse it, as Envoy does, and close.
    if req.headers().contains_key(header::TRANSFER_ENCODING)
        && (req.headers().contains_key(header::CONTENT_LENGTH)
            || conn.framing_conflict.load(Ordering::Relaxed)
                == crate::framing::CONFLICT_FLAG | u64::from(number))
    {
        let mut r = local_reply(
            StatusCode::BAD_REQUEST,
            "both content-length and transfer-encoding\n",
        );
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return r;
    }
    let authority = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => match req.headers().get(header::HOST).map(|h| h.to_str()) {
            Some(Ok(host)) => host,
            _ => "",
        },
    };
    let Some(vhost) = state.routes.find_host(authority) else {
        return local_reply(
            StatusCode::NOT_FOUND,
            "no virtual host matches this authority\n",
        );
    };
    let Some(route) = vhost.find_route(req.uri().path(), req.headers()) else {
        tracing::debug!(vhost = %vhost.name, path = req.uri().path(), "no route");
        return local_reply(StatusCode::NOT_FOUND, "no route matches this request\n");
    };
    let cluster = Arc::clone(route.action.pick());
    // One clock read serves the route's deadline and the first attempt's start.
    let received = Instant::now();
    let deadline = route.timeout.map(|t| received + t);
    let retry = route.retry;
    let max_request_bytes = route.max_request_bytes;
    if let Some(limit) = max_request_bytes {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit) {
            return local_reply(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
        }
    }

    // Circuit breakers: requests in flight, then (HTTP/1.1) a connection slot.
    let limits = &cluster.limits;
    let Some(admitted) = Admission::try_new(&limits.active, cluster.breakers.max_requests) else {
        cluster.stats.overflow[2].inc();
        return overloaded("upstream overloaded: max_requests\n");
    };
    let slot = if cluster.http2 {
        None
    } else {
        match Arc::clone(&limits.slots).try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                cluster.stats.overflow[0].inc();
                let Some(_pending) =
                    Admission::try_new(&limits.pending, cluster.breakers.max_pending_requests)
                else {
                    cluster.stats.overflow[1].inc();
                    return overloaded("upstream overloaded: max_pending_requests\n");
                };
                let _waiting = ActiveGuard::new(&cluster.stats.pending);
                let acquire = Arc::clone(&limits.slots).acquire_owned();
                let permit = match remaining(deadline) {
                    Some(left) => match tokio::time::timeout(left, acquire).await {
                        Ok(p) => p,
                        Err(_) => {
                            cluster.stats.timeouts.inc();
                            return local_reply(
                                StatusCode::GATEWAY_TIMEOUT,
                                "upstream request timeout\n",
                            );
                        }
                    },
                    None => acquire.await,
                };
                match permit {
                    Ok(p) => Some(p),
                    Err(_) => return overloaded("upstream overloaded\n"),
                }
            }
        }
    };

    let (mut parts, body) = req.into_parts();
    // An HTTP/2 client sends no Host header, only :authority in the URI we are about to
    // replace; keep the original authority for an HTTP/1.1 upstream.
    if !parts.headers.contains_key(header::HOST) {
        if let Some(a) = parts.uri.authority() {
            if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                parts.headers.insert(header::HOST, v);
            }
        }
    }
    let path_and_query = parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    parts.version = if cluster.http2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    strip_hop_by_hop(&mut parts.headers);
    set_forwarding_headers(&mut parts.headers, conn);

    // Only a request without a body can be sent again: bodies stream and are not kept.
    let retry = retry.filter(|r| r.num_retries > 0 && body.is_end_stream());
    let template = retry.map(|_| (parts.method.clone(), parts.headers.clone()));
    let exceeded = max_request_bytes.map(|_| Arc::new(AtomicBool::new(false)));
    let mut first = Some((
        parts,
        match (max_request_bytes, &exceeded) {
            (Some(limit), Some(flag)) => ProxyBody::limited(body, limit, Arc::clone(flag)),
            _ => ProxyBody::stream(body),
        },
    ));

    let mut retries_done = 0;
    let mut attempt_start = Some(received);
    let mut avoid = None;
    let mut _retry_admission = None;
    loop {
        let Some(picked) = cluster.pick(avoid) else {
            cluster.stats.no_healthy.inc();
            return local_reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream\n");
        };
        let endpoint = Arc::clone(&cluster.endpoints[picked.index]);
        let uri = if cluster.http2 {
            let mut uri = http::uri::Parts::default();
            uri.scheme = Some(Scheme::HTTP);
            uri.authority = Some(endpoint.authority.clone());
            uri.path_and_query = Some(path_and_query.clone());
            let Ok(uri) = Uri::from_parts(uri) else {
                return local_reply(StatusCode::BAD_REQUEST, "bad request target\n");
            };
            uri
        } else {
            // HTTP/1.1 upstream: origin form; the Host header carries the authority.
            Uri::from(path_and_query.clone())
        };
        let mut upstream_req = match first.take() {
            Some((mut parts, body)) => {
                parts.uri = uri;
                Request::from_parts(parts, body)
            }
            None => {
                let Some((method, headers)) = &template else {
                    return local_reply(StatusCode::BAD_GATEWAY, "upstream failed\n");
                };
                let mut r = Request::new(ProxyBody::empty());
                *r.method_mut() = method.clone();
                *r.uri_mut() = uri;
                *r.version_mut() = if cluster.http2 {
                    Version::HTTP_2
                } else {
                    Version::HTTP_11
                };
                *r.headers_mut() = headers.clone();
                r
            }
        };
        if !cluster.http2 && !upstream_req.headers().contains_key(header::HOST) {
            if let Ok(host) = HeaderValue::from_str(endpoint.authority.as_str()) {
                upstream_req.headers_mut().insert(header::HOST, host);
            }
        }

        let active = ActiveGuard::new(&endpoint.stats.active);
        let pending = ActiveGuard::new(&cluster.stats.pending);
        let started = attempt_start.take().unwrap_or_else(Instant::now);
        let per_try = retry.and_then(|r| r.per_try_timeout).map(|t| started + t);
        let sent = send(&cluster, &endpoint, upstream_req);
        let attempt = match earliest(per_try, deadline) {
            Some(at) => {
                let mut timer = conn.timer.arm(at);
                let mut sent = pin!(sent);
                poll_fn(|cx| {
                    if let Poll::Ready(r) = sent.as_mut().poll(cx) {
                        Poll::Ready(classify(r))
                    } else if timer.poll_fired(cx) {
                        Poll::Ready(Attempt::TimedOut)
                    } else {
                        Poll::Pending
                    }
                })
                .await
            }
            None => classify(sent.await),
        };
        drop(pending);
        let elapsed = started.elapsed();
        let outcome = attempt.outcome();
        let status = match &attempt {
            Attempt::Response(r) => r.status(),
            Attempt::Failed(Outcome::ConnectFailure, _) => StatusCode::SERVICE_UNAVAILABLE,
            Attempt::Failed(..) => StatusCode::BAD_GATEWAY,
            Attempt::TimedOut => StatusCode::GATEWAY_TIMEOUT,
        };
        if exceeded.as_ref().is_some_and(|f| f.load(Ordering::Acquire)) {
            // The client's body broke the limit; that is not the endpoint's failure.
            return local_reply(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n");
        }
        endpoint.stats.record(status.as_u16(), elapsed);
        cluster.record(picked.index, outcome, picked.trial);

        if let Some(policy) = retry {
            let time_left = remaining(deadline).is_none_or(|d| !d.is_zero());
            if retries_done < policy.num_retries && retry_wanted(policy.on, outcome) && time_left {
                let allowed = match &cluster.breakers.retry_budget {
                    Some(b) => {
                        let active = limits.active.load(Ordering::Relaxed);
                        ((f64::from(active) * b.budget_percent / 100.0) as u32)
                            .max(b.min_retry_concurrency)
                    }
                    None => cluster.breakers.max_retries,
                };
                // This request's previous retry (if any) is over: it no longer counts.
                _retry_admission = None;
                match Admission::try_new(&limits.retries, allowed) {
                    Some(a) => {
                        _retry_admission = Some(a);
                        retries_done += 1;
                        avoid = Some(picked.index);
                        cluster.stats.retries.inc();
                        tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.address, ?outcome, retry = retries_done, "retrying");
                        drop(attempt);
                        drop(active);
                        let backoff = retry_backoff(retries_done);
                        let backoff = remaining(deadline).map_or(backoff, |d| backoff.min(d));
                        tokio::time::sleep(backoff).await;
                        continue;
                    }
                    None => {
                        cluster.stats.overflow[3].inc();
                    }
                }
            }
        }

        return match attempt {
            Attempt::Response(response) => {
                let (mut parts, mut body) = response.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                let guards = body.guards();
                guards.endpoint = Some(active);
                guards.cluster = Some(admitted);
                guards.slot = slot;
                Response::from_parts(parts, body)
            }
            Attempt::Failed(outcome, e) => {
                tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.address, error = %e, ?outcome, "upstream request failed");
                if outcome == Outcome::ConnectFailure {
                    local_reply(status, "upstream connect error\n")
                } else {
                    local_reply(status, "upstream reset or sent an invalid response\n")
                }
            }
            Attempt::TimedOut => {
                cluster.stats.timeouts.inc();
                local_reply(status, "upstream request timeout\n")
            }
        };
    }
}

/// Sends one attempt: on the endpoint's own HTTP/1.1 pool, or through the HTTP/2 client.
async fn send(
    cluster: &Cluster,
    endpoint: &Arc<Endpoint>,
    req: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, UpstreamError> {
    match &cluster.client.h2 {
        // Boxed: hyper-util's request future is large, and only HTTP/2 clusters need it.
        Some(client) => Box::pin(client.request(req))
            .await
            .map(|r| r.map(ProxyBody::stream))
            .map_err(Into::into),
        None => endpoint.pool.send(req).await,
    }
}

fn classify(result: Result<Response<ProxyBody>, UpstreamError>) -> Attempt {
    match result {
        Ok(r) => Attempt::Response(r),
        Err(e) if crate::cluster::ConnectFailed::caused(&*e) => {
            Attempt::Failed(Outcome::ConnectFailure, e)
        }
        Err(e) => Attempt::Failed(Outcome::Reset, e),
    }
}

/// Jittered exponential backoff: uniformly up to 25 ms × 2^(n−1), at most 250 ms.
fn retry_backoff(n: u32) -> Duration {
    let ceiling = (25u64 << (n.saturating_sub(1)).min(4)).min(250);
    Duration::from_millis(fastrand::u64(1..=ceiling))
}

/// A response generated by the proxy itself.
pub(crate) fn local_reply(status: StatusCode, text: &'static str) -> Response<ProxyBody> {
    let mut response = Response::new(ProxyBody::full(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Removes headers that describe one connection, not the message (RFC 9110 §7.6.1), including
/// every header the `Connection` header names. `TE: trailers` survives (gRPC needs it).
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the few names present says which hop-by-hop headers there are (most
    // messages carry none, or only `Connection`); only those are then looked up and removed.
    let present = headers
        .keys()
        .fold(0u8, |bits, name| bits | hop_by_hop_bit(name));
    if present == 0 {
        return;
    }
    if present & CONNECTION_BIT != 0 {
        let mut named: Vec<HeaderName> = Vec::new();
        for value in headers.get_all(header::CONNECTION) {
            let Ok(text) = value.to_str() else { continue };
            for token in text.split(',').map(str::trim) {
                if token.is_empty()
                    || token.eq_ignore_ascii_case("close")
                    || token.eq_ignore_ascii_case("keep-alive")
                {
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    named.push(name);
                }
            }
        }
        headers.remove(header::CONNECTION);
        for name in named {
            headers.remove(name);
        }
    }
    for (i, name) in ALWAYS_STRIPPED.iter().enumerate() {
        if present & (ALWAYS_STRIPPED_FIRST_BIT << i) != 0 {
            headers.remove(name);
        }
    }
    if present & TE_BIT != 0 {
        if let Some(te) = headers.get(header::TE) {
            if !te.as_bytes().eq_ignore_ascii_case(b"trailers") {
                headers.remove(header::TE);
            }
        }
    }
}

const CONNECTION_BIT: u8 = 1;
const TE_BIT: u8 = 2;
const ALWAYS_STRIPPED_FIRST_BIT: u8 = 4;
/// Hop-by-hop headers removed whatever their value (bits 4, 8, ... in [`hop_by_hop_bit`]).
const ALWAYS_STRIPPED: [HeaderName; 5] = [
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TRAILER,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// The bit [`strip_hop_by_hop`] uses for `name`, or 0 when it is not a hop-by-hop header.
fn hop_by_hop_bit(name: &HeaderName) -> u8 {
    if name == header::CONNECTION {
        return CONNECTION_BIT;
    }
    if name == header::TE {
        return TE_BIT;
    }
    ALWAYS_STRIPPED
        .iter()
        .position(|n| n == name)
        .map_or(0, |i| ALWAYS_STRIPPED_FIRST_BIT << i)
}

/// `x-forwarded-for` gains the client's address, `x-forwarded-proto` is the scheme the client
/// used, and every request leaves with an `x-request-id` (a client's own is kept only when the
/// client is internal), as Envoy does at the edge.
fn set_forwarding_headers(headers: &mut HeaderMap, conn: &ConnContext) {
    match headers.entry(&X_FORWARDED_FOR) {
        header::Entry::Vacant(e) => {
            e.insert(conn.client_ip.clone());
        }
        header::Entry::Occupied(mut e) => {
            let mut joined = Vec::with_capacity(e.get().len() + 2 + conn.client_ip.len());
            joined.extend_from_slice(e.get().as_bytes());
            joined.extend_from_slice(b", ");
            joined.extend_from_slice(conn.client_ip.as_bytes());
            if let Ok(v) = HeaderValue::from_bytes(&joined) {
                e.insert(v);
            }
        }
    }
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(conn.scheme));
    match headers.entry(&X_REQUEST_ID) {
        header::Entry::Occupied(e)
            if conn.internal_client && !e.get().is_empty() && e.get().len() <= 128 => {}
        header::Entry::Occupied(mut e) => {
            e.insert(new_request_id());
        }
        header::Entry::Vacant(e) => {
            e.insert(new_request_id());
        }
    }
}

/// A random (version 4) UUID, formatted without touching the heap until the header value.
fn new_request_id() -> HeaderValue {
    let id = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = id.hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(text).expect("a UUID is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("transfer-encoding", "chunked".parse().unwrap());
        h.insert("te", "gzip".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));

        let mut h = HeaderMap::new();
        h.insert("te", "trailers".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert!(h.contains_key("te"));
    }

    proptest::proptest! {
        #[test]
        fn header_handling_never_panics(
            headers in proptest::collection::vec(("[a-z-]{1,12}", "[ -~]{0,40}"), 0..12),
            connection in "[ -~]{0,60}",
        ) {
            let mut h = HeaderMap::new();
            for (k, v) in &headers {
                if let (Ok(k), Ok(v)) = (HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
                    h.append(k, v);
                }
            }
            if let Ok(v) = HeaderValue::from_str(&connection) {
                h.insert(header::CONNECTION, v);
            }
            strip_hop_by_hop(&mut h);
            proptest::prop_assert!(!h.contains_key(header::CONNECTION));
            proptest::prop_assert!(!h.contains_key(header::TRANSFER_ENCODING));
            for token in connection.split(',').map(str::trim) {
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    proptest::prop_assert!(!h.contains_key(&name), "{} survived", name);
                }
            }
        }
    }

    #[test]
    fn request_ids_are_uuid_v4() {
        let a = new_request_id();
        let b = new_request_id();
        assert_ne!(a, b);
        let parsed = uuid::Uuid::parse_str(a.to_str().unwrap()).unwrap();
        assert_eq!(parsed.get_version_num(), 4);
    }

    #[test]
    fn internal_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.1",
            "::1",
            "fd00::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "2001:db8::1", "::ffff:8.8.8.8"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }
}
