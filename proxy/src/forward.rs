//! The request path: route, admit, rewrite, attempt (and retry), account.
//!
//! This is the proxy's hot path. Everything that can be decided ahead of time was decided when
//! the configuration was applied (route table, balancer order, metric handles, the client's
//! forwarded-for value per connection); per request this only reads an `ArcSwap`, matches
//! prepared strings, bumps atomics and edits headers in place.
//!
//! [`serve`] is the whole of it, in the order a request meets them:
//!
//! ```text
//!   framing check ─▶ route ─▶ fault (delay, abort) ─▶ local rate limit ─▶ breakers::admit
//!        ─▶ headers::rewrite_request
//!        ─▶ ┌ pick an endpoint ─▶ attempt::run ─▶ attempt::account ─▶ retry::Retries::again ┐
//!           └───────────────────────────── retry ◀──────────────────────────────────────────┘
//!        ─▶ Attempt::into_response
//! ```
//!
//! A failed attempt says whose fault it was (see [`attempt`]): a client that breaks its own
//! request body is answered 400 (or, gone, not at all) and counted on its listener, never
//! against the endpoint.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme, Uri};
use http::{HeaderMap, Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use prometheus::IntCounter;

use crate::access_log::{AccessLog, Flags, LogHandle, Record};
use crate::body::{ProxyBody, RequestTimer};
use crate::cluster::{Cluster, Endpoint};
use crate::ctx::{ActiveGuard, ConnContext, StreamGuard};
use crate::metrics::{class_index, ListenerStats};
use crate::ratelimit::{RateLimitHeaders, Verdict};
use crate::rbac::{Rbac, Subject};
use crate::request_body::{BodyFault, BodyWatch, RequestBody};
use crate::route::{mutation, Action, HostRewrite, Route, RouteTable};
use crate::tracer::{TraceHandle, Tracer};

mod attempt;
mod breakers;
mod deadline;
mod headers;
mod reply;
mod retry;

use self::attempt::{Attempt, ClientGone};
use self::reply::{closing_reply, local_reply};
use self::retry::{Refused, Retries};

/// What a request is served with: its listener's routes and counters of the moment (the
/// listener's state, which this module does not otherwise know).
pub(crate) trait Serving: Send + Sync + 'static {
    /// The listener's route table.
    fn routes(&self) -> &RouteTable;
    /// The listener's request counters.
    fn stats(&self) -> &ListenerStats;
    /// The listener's access logs, if it has any.
    fn access_log(&self) -> Option<&Arc<AccessLog>>;
    /// The listener's tracer, if it traces.
    fn tracer(&self) -> Option<&Arc<Tracer>>;
    /// The listener's RBAC rules, if it has them.
    fn rbac(&self) -> Option<&Rbac>;
}

/// How an upstream attempt ended, as its span says.
#[derive(Clone, Copy, Debug)]
pub(crate) enum AttemptEnd {
    /// The endpoint answered with this status.
    Status(u16),
    /// It did not answer: why (OpenTelemetry's `error.type`).
    Failed(&'static str),
}

/// Where a request finds its listener's current state.
pub(crate) trait Listener: Send + Sync + 'static {
    /// The state a request is served with.
    type State: Serving;
    /// The state of the moment (read once per request).
    fn current(&self) -> Arc<Self::State>;
}

/// Serves one downstream request with `listener`'s current routes, counting it in its stats.
/// Never fails: every problem becomes a response. A request whose client went away before it
/// could be answered (this future dropped, or its body cut off) counts as aborted.
///
/// This is the connection's service future itself, and the service only makes it: the state
/// is read here, not by the service. hyper builds the future into its slot for the request
/// when the service is small enough to be inlined there; a service that does more (reading
/// the state, or wrapping this future in one of its own) was not, and hyper then copied the
/// whole request future, over 3 KiB, once more per request (see BENCHMARKS.md).
pub(crate) async fn serve<L: Listener>(
    req: Request<Incoming>,
    conn: Arc<ConnContext>,
    listener: Arc<L>,
) -> Result<Response<ProxyBody>, Infallible> {
    let state = listener.current();
    drop(listener);
    let stats = state.stats();
    let listener_guard = ActiveGuard::new(&stats.active);
    let mut unanswered = Unanswered(Some(&stats.aborted));
    // Without an access log, this is all the logging a request costs.
    let mut log = state.access_log().map(|log| {
        let record = Record::start(log, &req, conn.peer, conn.scheme);
        LogHandle::new(Arc::clone(log), record)
    });
    // Without tracing, likewise.
    let mut trace = state
        .tracer()
        .map(|t| t.start(&req, conn.peer, conn.scheme));
    let (stream, number) = StreamGuard::new(conn);
    let start = Instant::now();
    let (mut limit_headers, mut timer) = (None, None);
    // The RBAC filter, before the router as in Envoy; a listener without one pays this branch.
    let denied = match state.rbac() {
        Some(rbac) => authorize(rbac, &req, stream.conn(), log.as_mut()),
        None => None,
    };
    let forwarded = match denied {
        Some(reply) => Ok(reply),
        None => {
            forward(
                req,
                stream.conn(),
                number,
                state.routes(),
                (log.as_mut(), trace.as_mut()),
                &mut limit_headers,
                &mut timer,
            )
            .await
        }
    };
    let mut response = match forwarded {
        Ok(mut response) => {
            unanswered.0 = None;
            if let Some(h) = limit_headers {
                h.write(response.headers_mut());
            }
            stats.requests[class_index(response.status().as_u16())].inc();
            if let Some(log) = &mut log {
                log.respond(response.status().as_u16(), response.headers());
            }
            if let Some(trace) = &mut trace {
                trace.respond(response.status().as_u16());
            }
            response
        }
        // Should the client still read, this is what its request was.
        Err(ClientGone) => {
            if let Some(log) = &mut log {
                log.flag(Flags::DOWNSTREAM_CONNECTION_TERMINATION);
            }
            if let Some(trace) = &mut trace {
                trace.flag(Flags::DOWNSTREAM_CONNECTION_TERMINATION);
                trace.respond(StatusCode::BAD_REQUEST.as_u16());
            }
            closing_reply(StatusCode::BAD_REQUEST, "request body incomplete\n")
        }
    };
    let guards = response.body_mut().guards();
    guards.listener = Some(listener_guard);
    guards.stream = Some(stream);
    guards.log = log;
    guards.trace = trace;
    guards.timer = timer.map(|histogram| RequestTimer { histogram, start });
    Ok(response)
}

/// The RBAC filter's answer for a denied request (403 `RBAC: access denied`, counted, and its
/// policy in the access log's `%RESPONSE_CODE_DETAILS%`), `None` for one that may pass.
fn authorize(
    rbac: &Rbac,
    req: &Request<Incoming>,
    conn: &ConnContext,
    log: Option<&mut LogHandle>,
) -> Option<Response<ProxyBody>> {
    let subject = Subject {
        method: req.method(),
        uri: req.uri(),
        headers: req.headers(),
        scheme: conn.scheme,
        peer: conn.peer.ip(),
        local_port: conn.local_port,
        identity: conn.identity.as_deref(),
        authenticated: conn.authenticated,
    };
    let denial = rbac.check(&subject)?;
    denial.counter.inc();
    tracing::debug!(peer = %conn.peer, identity = ?conn.identity, details = %denial.details, "RBAC denied a request");
    if let Some(log) = log {
        log.details(&denial.details);
    }
    Some(local_reply(StatusCode::FORBIDDEN, crate::rbac::DENIED_BODY))
}

/// Counts a request as aborted when dropped armed.
struct Unanswered<'a>(Option<&'a IntCounter>);

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if let Some(aborted) = self.0 {
            aborted.inc();
        }
    }
}

/// Adds `flags` to the request's access-log record and SERVER span, if it has them.
fn flag(log: &mut Option<&mut LogHandle>, trace: &mut Option<&mut TraceHandle>, flags: Flags) {
    if let Some(log) = log {
        log.flag(flags);
    }
    if let Some(trace) = trace {
        trace.flag(flags);
    }
}

async fn forward(
    req: Request<Incoming>,
    conn: &ConnContext,
    number: u32,
    routes: &RouteTable,
    // What records the request: its access-log line and its trace, when it has them.
    (mut log, mut trace): (Option<&mut LogHandle>, Option<&mut TraceHandle>),
    limit_headers: &mut Option<RateLimitHeaders>,
    timer: &mut Option<prometheus::Histogram>,
) -> Result<Response<ProxyBody>, ClientGone> {
    // Refuse a request that would be smuggled, as Envoy does, and close.
    if headers::both_framings(&req, conn, number) {
        return Ok(closing_reply(
            StatusCode::BAD_REQUEST,
            "both content-length and transfer-encoding\n",
        ));
    }
    let authority = match headers::routing_authority(&req) {
        Ok(a) => a,
        Err(why) => return Ok(local_reply(StatusCode::BAD_REQUEST, why)),
    };
    let Some(vhost) = routes.find_host(authority) else {
        flag(&mut log, &mut trace, Flags::NO_ROUTE);
        return Ok(local_reply(
            StatusCode::NOT_FOUND,
            "no virtual host matches this authority\n",
        ));
    };
    let Some(route) = vhost.find_route(req.uri().path(), req.uri().query(), req.headers()) else {
        tracing::debug!(vhost = %vhost.name, path = req.uri().path(), "no route");
        flag(&mut log, &mut trace, Flags::NO_ROUTE);
        return Ok(local_reply(
            StatusCode::NOT_FOUND,
            "no route matches this request\n",
        ));
    };
    *timer = Some(route.duration.clone());
    // None for a route that answers itself (a redirect or a direct response).
    let cluster = route.action.pick().map(Arc::clone);
    if let Some(cluster) = &cluster {
        if let Some(log) = &mut log {
            log.routed(route.name.as_ref(), cluster);
        }
        if let Some(trace) = &mut trace {
            trace.routed(route.name.as_ref(), cluster);
        }
    }
    // The route's filters: fault injection (maybe a delay, then maybe an abort, which never
    // reaches an upstream), then local rate limiting (a request finding the route's bucket
    // empty is answered here), as Envoy's fault and local_ratelimit filters in that order. A
    // route with neither costs this one branch.
    let mut faulted = None;
    if let Some(filters) = &route.filters {
        if let Some(fault) = &filters.fault {
            if let Some(delay) = fault.delay(req.headers(), &mut faulted) {
                flag(&mut log, &mut trace, Flags::DELAY_INJECTED);
                // Boxed: the timer is in this (hot, large) future only for a delayed request.
                Box::pin(tokio::time::sleep(delay)).await;
            }
            if let Some(reply) = fault.abort(req.headers(), &mut faulted) {
                flag(&mut log, &mut trace, Flags::FAULT_INJECTED);
                return Ok(reply);
            }
        }
        if let Some(limit) = &filters.ratelimit {
            match limit.check() {
                Verdict::Pass(headers) => *limit_headers = headers,
                Verdict::Limited(headers) => {
                    flag(&mut log, &mut trace, Flags::RATE_LIMITED);
                    return Ok(limit.reply(req.headers(), headers));
                }
            }
        }
    }
    // The router: a route that answers itself does so here, after the filters, as Envoy's
    // router filter (the last one) does.
    let Some(cluster) = cluster else {
        let mut response = match &route.action {
            Action::Redirect(r) => {
                let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
                r.reply(conn.scheme, authority, target)
            }
            Action::Direct(d) => d.reply(),
            Action::Cluster(_) | Action::Weighted { .. } => {
                local_reply(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
            }
        };
        if route.response_mutations {
            let ctx = mutation_context(conn, req.version(), route, None);
            for level in route.mutations.iter() {
                level.response(response.headers_mut(), &ctx);
            }
        }
        return Ok(response);
    };
    // The cluster's local rate limit (Envoy's upstream filter): the first attempt takes a token
    // or is answered here (a retry's is taken in `Retries::again`).
    if let Some(limit) = &cluster.ratelimit {
        match limit.check() {
            Verdict::Pass(headers) => {
                if headers.is_some() {
                    *limit_headers = headers;
                }
            }
            Verdict::Limited(headers) => {
                flag(&mut log, &mut trace, Flags::RATE_LIMITED);
                return Ok(limit.reply(req.headers(), headers));
            }
        }
    }
    // One clock read serves the route's deadline and the first attempt's start.
    let received = Instant::now();
    let deadline = route.timeout.map(|t| received + t);
    let limit = route.max_request_bytes;
    if let Some(limit) = limit {
        let declared = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit) {
            return Ok(local_reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large\n",
            ));
        }
    }
    let admitted = match breakers::admit(&cluster, deadline).await {
        Ok(admitted) => admitted,
        Err(refused) => {
            // A breaker's refusal, or the route's deadline passing while waiting for one.
            let why = if refused.timed_out {
                Flags::UPSTREAM_REQUEST_TIMEOUT
            } else {
                Flags::UPSTREAM_OVERFLOW
            };
            flag(&mut log, &mut trace, why);
            return Ok(refused.reply);
        }
    };

    // In a block, so that the head and body taken apart here are not kept in this future
    // beside the `first` request they go into.
    let version = req.version();
    let (path_and_query, routed, mut retries, template, watch, mut first) = {
        let (mut parts, body) = req.into_parts();
        let mut path_and_query = headers::rewrite_request(&mut parts, conn, cluster.http2);
        // The route's header mutations, then its rewrites (Envoy's router does both before
        // the upstream request); a route with neither costs these two branches.
        if !route.mutations.is_empty() {
            let mut ctx = mutation_context(conn, version, route, Some(&cluster));
            ctx.method = Some(&parts.method);
            ctx.path = Some(path_and_query.as_str());
            for level in route.mutations.iter() {
                level.request(&mut parts.headers, &ctx);
            }
        }
        if let Some(rewrite) = &route.rewrite {
            if let Some(p) = &rewrite.path {
                let mut target = p.apply(path_and_query.path());
                if let Some(q) = path_and_query.query() {
                    target.push('?');
                    target.push_str(q);
                }
                match PathAndQuery::try_from(target) {
                    Ok(pq) => path_and_query = pq,
                    Err(_) => {
                        return Ok(local_reply(
                            StatusCode::BAD_REQUEST,
                            "rewritten path is not a valid request target\n",
                        ))
                    }
                }
            }
            let host = match &rewrite.host {
                Some(HostRewrite::Literal(v)) => Some(v.clone()),
                Some(HostRewrite::Header(name)) => parts.headers.get(name).cloned(),
                None => None,
            };
            if let Some(host) = host {
                parts.headers.insert(header::HOST, host);
                // An HTTP/2 request's authority is in its target, which `upstream_authority`
                // prefers: the rewrite replaces it there too.
                if parts.uri.authority().is_some() {
                    parts.uri = Uri::from(path_and_query.clone());
                }
            }
        }
        // The route's mirrors copy the request as its upstream gets it; a route without any
        // costs this one branch.
        let tee = match &route.mirrors {
            Some(m) => m.start(&parts, &path_and_query, body.is_end_stream()),
            None => None,
        };
        let received = match &mut log {
            Some(log) => {
                log.rewritten(&parts.headers);
                log.count_received()
            }
            None => None,
        };
        let routed = if cluster.http2 {
            headers::upstream_authority(&mut parts)
        } else {
            None
        };
        let retries = Retries::new(route.retry, body.is_end_stream());
        let template = retries
            .possible()
            .then(|| (parts.method.clone(), parts.headers.clone()));
        // Where the body says how it broke, for whoever cannot tell from its error: this
        // request (was the limit broken?) and hyper's HTTP/2 client (which keeps the body's
        // errors to itself). An HTTP/1.1 request without a limit needs none.
        let watch = (limit.is_some() || (cluster.http2 && !body.is_end_stream()))
            .then(|| Arc::new(BodyWatch::default()));
        let first = Some((
            parts,
            RequestBody::client(body, limit, watch.clone())
                .counted(received)
                .teed(tee),
        ));
        (path_and_query, routed, retries, template, watch, first)
    };

    let mut attempt_start = Some(received);
    let mut avoid = None;
    loop {
        let Some(picked) = cluster.pick(avoid) else {
            cluster.stats.no_healthy.inc();
            flag(&mut log, &mut trace, Flags::NO_HEALTHY_UPSTREAM);
            return Ok(local_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy upstream\n",
            ));
        };
        let index = picked.index;
        let endpoint = Arc::clone(&cluster.endpoints[index]);
        let active = ActiveGuard::new(&endpoint.stats.active);
        let started = attempt_start.take().unwrap_or_else(Instant::now);
        let until = deadline::earliest(retries.per_try_deadline(started), deadline);
        // The attempt's request is built in this block, so that nothing of it but what the
        // attempt's future holds stays in this future while the attempt runs.
        let attempt = {
            let Some(uri) = upstream_uri(&cluster, &endpoint, routed.as_ref(), &path_and_query)
            else {
                return Ok(local_reply(StatusCode::BAD_REQUEST, "bad request target\n"));
            };
            let mut upstream_req = match first.take() {
                Some((mut parts, body)) => {
                    parts.uri = uri;
                    Request::from_parts(parts, body)
                }
                None => {
                    // A retry always has the first request's head; were it missing, that would
                    // be the proxy's fault.
                    let Some((method, headers)) = &template else {
                        return Ok(local_reply(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "internal error\n",
                        ));
                    };
                    again(method, headers, uri, cluster.http2)
                }
            };
            with_host(&mut upstream_req, &cluster, &endpoint);
            if let Some(trace) = &mut trace {
                trace.attempt(upstream_req.headers_mut(), &endpoint, retries.done());
            }
            attempt::run(
                &cluster,
                &endpoint,
                upstream_req,
                conn,
                until,
                watch.as_deref(),
            )
        }
        .await;
        let elapsed = started.elapsed();
        if watch.as_ref().and_then(|w| w.fault()) == Some(BodyFault::TooLarge) {
            // The client's body broke the limit; that is not the endpoint's failure.
            return Ok(local_reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large\n",
            ));
        }
        let outcome = attempt.outcome();
        attempt::account(&cluster, picked, &attempt, elapsed);
        if let Some(log) = &mut log {
            log.endpoint(&endpoint);
        }

        let again = retries.again(&cluster, outcome, deadline);
        if let Some(trace) = &mut trace {
            trace.attempt_ended(attempt.end(), again);
        }
        if again {
            avoid = Some(index);
            tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.address, ?outcome, retry = retries.done(), "retrying");
            drop(attempt);
            drop(active);
            tokio::time::sleep(retries.backoff(deadline)).await;
            continue;
        }
        if let Attempt::Failed(e) = &attempt {
            if let Some(f) = e.response_flag() {
                flag(&mut log, &mut trace, f);
            }
            if let (Some(log), Some(cause)) = (&mut log, e.connect_cause()) {
                log.failure_reason(cause);
            }
        }
        match retries.refused() {
            Some(Refused::LimitExceeded) => flag(&mut log, &mut trace, Flags::RETRY_LIMIT_EXCEEDED),
            Some(Refused::Overflow) => flag(&mut log, &mut trace, Flags::UPSTREAM_OVERFLOW),
            Some(Refused::RateLimited) => flag(&mut log, &mut trace, Flags::RATE_LIMITED),
            None => {}
        }
        let mut response = attempt.into_response(&cluster, &endpoint, active, admitted)?;
        if route.response_mutations {
            let ctx = mutation_context(conn, version, route, Some(&cluster));
            for level in route.mutations.iter() {
                level.response(response.headers_mut(), &ctx);
            }
        }
        // A faulted request stays active until its response ends, as in Envoy.
        response.body_mut().guards().fault = faulted;
        return Ok(response);
    }
}

/// What a route's header values read, without the request's method and target (set by the
/// caller for request headers).
fn mutation_context<'a>(
    conn: &'a ConnContext,
    version: Version,
    route: &'a Route,
    cluster: Option<&'a Cluster>,
) -> mutation::Request<'a> {
    mutation::Request {
        peer: conn.peer,
        version,
        method: None,
        path: None,
        scheme: conn.scheme,
        route_name: route.name.as_deref(),
        cluster: cluster.map(|c| &*c.name),
    }
}

/// The request target for `endpoint`: origin form for HTTP/1.1 (whose `Host` header carries
/// the authority); absolute for HTTP/2, with the `routed` authority as `:authority` (the
/// endpoint's own when the request had none). An HTTP/2 endpoint's client connects to the
/// endpoint whatever the authority says.
fn upstream_uri(
    cluster: &Cluster,
    endpoint: &Endpoint,
    routed: Option<&Authority>,
    path_and_query: &PathAndQuery,
) -> Option<Uri> {
    if !cluster.http2 {
        return Some(Uri::from(path_and_query.clone()));
    }
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(routed.unwrap_or(&endpoint.authority).clone());
    uri.path_and_query = Some(path_and_query.clone());
    Uri::from_parts(uri).ok()
}

/// A retry's request: the first one's method and headers, no body.
fn again(method: &Method, headers: &HeaderMap, uri: Uri, http2: bool) -> Request<RequestBody> {
    let mut r = Request::new(RequestBody::empty());
    *r.method_mut() = method.clone();
    *r.uri_mut() = uri;
    *r.version_mut() = if http2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    *r.headers_mut() = headers.clone();
    r
}

/// An HTTP/1.1 request without a `Host` header gets the endpoint's authority.
fn with_host(req: &mut Request<RequestBody>, cluster: &Cluster, endpoint: &Endpoint) {
    if !cluster.http2 && !req.headers().contains_key(header::HOST) {
        if let Ok(host) = HeaderValue::from_str(endpoint.authority.as_str()) {
            req.headers_mut().insert(header::HOST, host);
        }
    }
}
