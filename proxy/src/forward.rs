//! The request path: route, pick, rewrite, forward, account.
//!
//! This is the proxy's hot path. Everything that can be decided ahead of time was decided when
//! the configuration was applied (route table, balancer order, metric handles, the client's
//! forwarded-for value per connection); per request this only reads an `ArcSwap`, matches
//! prepared strings, bumps atomics and edits headers in place.

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Scheme, Uri};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;

use crate::body::{ActiveGuard, ProxyBody};
use crate::listener::ListenerState;
use crate::metrics::class_index;

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
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Serves one downstream request. Never fails: every problem becomes a response.
pub(crate) async fn serve(
    req: Request<Incoming>,
    conn: Arc<ConnContext>,
) -> Result<Response<ProxyBody>, Infallible> {
    let state = conn.listener.state.load_full();
    let listener_guard = ActiveGuard::new(&state.stats.active);
    let response = forward(req, &conn, &state).await;
    state.stats.requests[class_index(response.status().as_u16())].inc();
    Ok(response.map(|body| body.with_guard(listener_guard)))
}

async fn forward(
    req: Request<Incoming>,
    conn: &ConnContext,
    state: &ListenerState,
) -> Response<ProxyBody> {
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
    let timeout = route.timeout;
    let Some(endpoint) = cluster.pick() else {
        cluster.stats.no_healthy.inc();
        return local_reply(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream\n");
    };
    let endpoint = Arc::clone(endpoint);

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
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(endpoint.authority.clone());
    uri.path_and_query = Some(path_and_query);
    parts.uri = match Uri::from_parts(uri) {
        Ok(u) => u,
        Err(_) => return local_reply(StatusCode::BAD_REQUEST, "bad request target\n"),
    };
    parts.version = if cluster.http2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    strip_hop_by_hop(&mut parts.headers);
    set_forwarding_headers(&mut parts.headers, conn);

    let upstream_req = Request::from_parts(parts, ProxyBody::stream(body));
    let active = ActiveGuard::new(&endpoint.stats.active);
    let pending = ActiveGuard::new(&cluster.stats.pending);
    let started = Instant::now();
    let sent = cluster.client.request(upstream_req);
    let result = match timeout {
        Some(t) => tokio::time::timeout(t, sent).await.map_err(|_| ()),
        None => Ok(sent.await),
    };
    drop(pending);
    let elapsed = started.elapsed();
    match result {
        Ok(Ok(response)) => {
            endpoint.stats.record(response.status().as_u16(), elapsed);
            let (mut parts, body) = response.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, ProxyBody::stream(body).with_guard(active))
        }
        Ok(Err(e)) => {
            let (status, text) = if e.is_connect() {
                (StatusCode::SERVICE_UNAVAILABLE, "upstream connect error\n")
            } else {
                (
                    StatusCode::BAD_GATEWAY,
                    "upstream reset or sent an invalid response\n",
                )
            };
            tracing::debug!(cluster = %cluster.name, endpoint = %endpoint.address, error = %e, "upstream request failed");
            endpoint.stats.record(status.as_u16(), elapsed);
            local_reply(status, text)
        }
        Err(()) => {
            cluster.stats.timeouts.inc();
            endpoint
                .stats
                .record(StatusCode::GATEWAY_TIMEOUT.as_u16(), elapsed);
            local_reply(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout\n")
        }
    }
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
    if headers.contains_key(header::CONNECTION) {
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
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::UPGRADE);
    headers.remove(header::TRAILER);
    if let Some(te) = headers.get(header::TE) {
        if !te.as_bytes().eq_ignore_ascii_case(b"trailers") {
            headers.remove(header::TE);
        }
    }
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
    let keep = conn.internal_client
        && headers
            .get(&X_REQUEST_ID)
            .is_some_and(|v| !v.is_empty() && v.len() <= 128);
    if !keep {
        headers.insert(&X_REQUEST_ID, new_request_id());
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
