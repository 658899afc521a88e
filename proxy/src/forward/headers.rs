//! Header rewriting: what changes between the client's request and the one an endpoint gets
//! (and between the endpoint's response and the one the client gets).
//!
//! Hop-by-hop headers go both ways (RFC 9110 §7.6.1); a request gains `x-forwarded-for`,
//! `x-forwarded-proto` and an `x-request-id`, as Envoy sets them at the edge; a request that
//! arrived over HTTP/2 keeps its authority as a `Host` header for an HTTP/1.1 endpoint.

use std::sync::atomic::Ordering;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::uri::{Authority, PathAndQuery};
use http::{Request, Version};

use crate::ctx::ConnContext;
use crate::framing::CONFLICT_FLAG;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Whether request number `number` of `conn` carried both `Content-Length` and
/// `Transfer-Encoding`, which is how requests are smuggled (RFC 9112 §6.1). hyper frames such a
/// request by `Transfer-Encoding` and drops `Content-Length` before we see it; the connection's
/// framing watch saw the raw head.
pub(crate) fn both_framings<B>(req: &Request<B>, conn: &ConnContext, number: u32) -> bool {
    req.headers().contains_key(header::TRANSFER_ENCODING)
        && (req.headers().contains_key(header::CONTENT_LENGTH)
            || conn.framing_conflict.load(Ordering::Relaxed) == CONFLICT_FLAG | u64::from(number))
}

/// The authority a request is routed by, or why it is refused with 400 (RFC 9112 §3.2,
/// §3.2.2; RFC 9113 §8.3.1). Whatever is returned here is what the endpoint gets as `Host`
/// ([`rewrite_request`] writes it), so the backend never sees a host other than the one the
/// route was chosen by:
///
/// - more than one `Host` header, or one whose value is no authority: refused (any version
///   without `:authority`; HTTP/1.x always);
/// - a target with an authority (HTTP/1.1 absolute form, HTTP/2 `:authority`): that authority;
///   HTTP/1.1's `Host` is ignored and replaced, HTTP/2's `host` header dropped (as Envoy does);
/// - otherwise the `Host` header; HTTP/1.1 and HTTP/2 without one are refused (HTTP/1.0 may
///   omit it, and matches only a catch-all virtual host).
pub(crate) fn routing_authority<B>(req: &Request<B>) -> Result<&str, &'static str> {
    let h2 = req.version() >= Version::HTTP_2;
    if let Some(a) = req.uri().authority() {
        if h2 {
            return Ok(a.as_str());
        }
    }
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err("more than one host header\n");
    }
    if let Some(a) = req.uri().authority() {
        return Ok(a.as_str());
    }
    match host {
        Some(v) => match v.to_str() {
            Ok(h) if is_authority(h.as_bytes()) => Ok(h),
            _ => Err("invalid host header\n"),
        },
        None if req.version() == Version::HTTP_10 => Ok(""),
        None => Err("missing host header\n"),
    }
}

/// Whether `b` can be a URI authority without user information (RFC 3986 §3.2: reg-name,
/// IPv4 or bracketed IPv6 host, optional port); empty is allowed (RFC 9112 §3.2).
fn is_authority(b: &[u8]) -> bool {
    let table = &*AUTHORITY_BYTES;
    b.iter().all(|&c| table[usize::from(c)])
}

/// [`gofe_model::is_authority_byte`] for every byte, looked up once: a Host header is checked
/// on every request, a table load per byte instead of the function's chain of comparisons.
static AUTHORITY_BYTES: std::sync::LazyLock<[bool; 256]> = std::sync::LazyLock::new(|| {
    let mut table = [false; 256];
    for (b, allowed) in (0..=u8::MAX).zip(table.iter_mut()) {
        *allowed = gofe_model::is_authority_byte(b);
    }
    table
});

/// Turns the client's request head into the one an endpoint gets (`http2`: the cluster speaks
/// HTTP/2); returns the path and query to send.
pub(crate) fn rewrite_request(parts: &mut Parts, conn: &ConnContext, http2: bool) -> PathAndQuery {
    // A target with an authority (HTTP/2's :authority, HTTP/1.1's absolute form) is what the
    // request was routed by (`routing_authority`): it becomes the one Host header, replacing
    // whatever the client sent (RFC 9112 §3.2.2, RFC 9113 §8.3.1). The URI itself is about to
    // be replaced by the endpoint's.
    if let Some(a) = parts.uri.authority() {
        if let Ok(v) = HeaderValue::from_str(a.as_str()) {
            parts.headers.insert(header::HOST, v);
        }
    }
    parts.version = if http2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    strip_hop_by_hop(&mut parts.headers);
    set_forwarding_headers(&mut parts.headers, conn);
    parts
        .uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
}

/// For an HTTP/2 endpoint, after [`rewrite_request`]: takes the `Host` header out (the
/// endpoint gets the authority as `:authority` alone, RFC 9113 §8.3.1) and returns the
/// authority the request was routed by, or `None` when it had none.
pub(crate) fn upstream_authority(parts: &mut Parts) -> Option<Authority> {
    let host = parts.headers.remove(header::HOST);
    // HTTP/2 and absolute-form requests: the target's own (a reference count, no copy).
    if let Some(a) = parts.uri.authority() {
        return Some(a.clone());
    }
    Authority::try_from(host?.as_bytes()).ok()
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

    fn conn(ip: &str) -> ConnContext {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        ConnContext::new((ip, 1).into(), false)
    }

    #[test]
    fn the_authority_table_is_the_models_definition() {
        for b in 0..=u8::MAX {
            assert_eq!(
                is_authority(&[b]),
                gofe_model::is_authority_byte(b),
                "byte {b:#04x}"
            );
        }
    }

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
    fn forwarding_headers_as_envoy_sets_them() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.7".parse().unwrap());
        h.insert("x-request-id", "mine".parse().unwrap());
        set_forwarding_headers(&mut h, &conn("10.0.0.2"));
        assert_eq!(h["x-forwarded-for"], "203.0.113.7, 10.0.0.2");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-request-id"], "mine", "an internal client's id is kept");

        let mut h = HeaderMap::new();
        h.insert("x-request-id", "mine".parse().unwrap());
        set_forwarding_headers(&mut h, &conn("8.8.8.8"));
        assert_eq!(h["x-forwarded-for"], "8.8.8.8");
        assert_ne!(
            h["x-request-id"], "mine",
            "an external client's id is replaced"
        );
    }

    #[test]
    fn an_http2_request_keeps_its_authority_for_an_http1_endpoint() {
        let req = Request::get("http://shop.example.com/a/b?c=d")
            .version(Version::HTTP_2)
            .header("connection", "x-hop")
            .header("x-hop", "1")
            .body(())
            .unwrap();
        let (mut parts, ()) = req.into_parts();
        let pq = rewrite_request(&mut parts, &conn("127.0.0.1"), false);
        assert_eq!(pq.as_str(), "/a/b?c=d");
        assert_eq!(parts.version, Version::HTTP_11);
        assert_eq!(parts.headers["host"], "shop.example.com");
        assert!(!parts.headers.contains_key("x-hop"));
        assert!(parts.headers.contains_key("x-request-id"));
    }

    #[test]
    fn the_routing_authority_follows_rfc_9112_and_9113() {
        let req = |version: Version, target: &str, hosts: &[&str]| {
            let mut r = Request::get(target).version(version);
            for h in hosts {
                r = r.header("host", *h);
            }
            r.body(()).unwrap()
        };
        let h11 = Version::HTTP_11;
        assert_eq!(
            routing_authority(&req(h11, "/", &["a.example"])),
            Ok("a.example")
        );
        assert_eq!(
            routing_authority(&req(h11, "/", &[])),
            Err("missing host header\n")
        );
        assert_eq!(
            routing_authority(&req(h11, "/", &["a", "b"])),
            Err("more than one host header\n")
        );
        assert_eq!(
            routing_authority(&req(h11, "/", &["a@b"])),
            Err("invalid host header\n")
        );
        assert_eq!(
            routing_authority(&req(h11, "/", &["a b"])),
            Err("invalid host header\n")
        );
        assert_eq!(routing_authority(&req(h11, "/", &[""])), Ok(""));
        assert_eq!(routing_authority(&req(Version::HTTP_10, "/", &[])), Ok(""));
        // Absolute form: the target's authority, whatever Host says; two Hosts still refused.
        assert_eq!(
            routing_authority(&req(h11, "http://a.example/x", &["b.example"])),
            Ok("a.example")
        );
        assert_eq!(
            routing_authority(&req(h11, "http://a.example/x", &["b", "c"])),
            Err("more than one host header\n")
        );
        // HTTP/2: :authority wins, a host header is dropped.
        let h2 = Version::HTTP_2;
        assert_eq!(
            routing_authority(&req(h2, "http://a.example/x", &["b.example", "c"])),
            Ok("a.example")
        );
        assert_eq!(
            routing_authority(&req(h2, "/x", &["b.example"])),
            Ok("b.example")
        );
        assert_eq!(
            routing_authority(&req(h2, "/x", &[])),
            Err("missing host header\n")
        );

        // What the endpoint gets is what was routed by: one Host, the target's authority.
        let (mut parts, ()) = req(h11, "http://a.example/x", &["b.example"]).into_parts();
        rewrite_request(&mut parts, &conn("127.0.0.1"), false);
        let hosts: Vec<_> = parts.headers.get_all("host").iter().collect();
        assert_eq!(hosts, ["a.example"]);
        let (mut parts, ()) = req(h2, "http://a.example/x", &["B.example"]).into_parts();
        rewrite_request(&mut parts, &conn("127.0.0.1"), false);
        let hosts: Vec<_> = parts.headers.get_all("host").iter().collect();
        assert_eq!(hosts, ["a.example"]);
    }

    #[test]
    fn both_framings_are_seen_in_the_head_or_by_the_framing_watch() {
        let c = conn("127.0.0.1");
        let chunked = || {
            Request::post("/")
                .header("transfer-encoding", "chunked")
                .body(())
                .unwrap()
        };
        assert!(!both_framings(&chunked(), &c, 1));
        let mut both = chunked();
        both.headers_mut()
            .insert("content-length", "4".parse().unwrap());
        assert!(both_framings(&both, &c, 1));
        c.framing_conflict
            .store(CONFLICT_FLAG | 2, Ordering::Relaxed);
        assert!(!both_framings(&chunked(), &c, 1), "another request's");
        assert!(both_framings(&chunked(), &c, 2));
    }
}
