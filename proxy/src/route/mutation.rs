//! Header mutations of routes (Envoy's `request_headers_to_add`, `…_to_remove`,
//! `response_headers_to_add`, `…_to_remove`), compiled: names parsed, values without operators
//! made into `HeaderValue`s once (adding one per request is a reference count), values with
//! operators split into parts.
//!
//! A level removes its headers, then adds its own; levels apply in the order the route
//! compiled them (Envoy's: route, virtual host, route configuration; reversed by
//! `most_specific_header_mutations_wins`).

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::SystemTime;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Version};

use crate::config::access_log::{HeaderRef, Operator};
use crate::config::route::{parse_header_value, ValuePart};
use crate::config::{HeaderAppendAction, HeaderValueOptionConfig};

/// One level's mutations.
#[derive(Default)]
pub(crate) struct Level {
    request_remove: Box<[HeaderName]>,
    request_add: Box<[Add]>,
    response_remove: Box<[HeaderName]>,
    response_add: Box<[Add]>,
}

struct Add {
    name: HeaderName,
    value: Value,
    action: HeaderAppendAction,
    keep_empty: bool,
}

enum Value {
    /// No operators: the value itself.
    Fixed(HeaderValue),
    /// Written per request.
    Parts(Box<[Part]>),
}

enum Part {
    Text(Box<str>),
    Hostname,
    Op(Operator, Option<usize>),
}

/// What a header value's operators read: the request as it leaves (its head and the
/// downstream connection) and where it was routed.
pub(crate) struct Request<'a> {
    pub(crate) peer: SocketAddr,
    /// The downstream protocol.
    pub(crate) version: Version,
    /// The request's method and target (`None` for responses, whose values do not read them).
    pub(crate) method: Option<&'a Method>,
    pub(crate) path: Option<&'a str>,
    pub(crate) scheme: &'a str,
    pub(crate) route_name: Option<&'a str>,
    pub(crate) cluster: Option<&'a str>,
}

/// The machine's host name, read once (`%HOSTNAME%`).
static HOSTNAME: LazyLock<Box<str>> = LazyLock::new(|| {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "-".to_owned())
        .into_boxed_str()
});

impl Level {
    /// Compiles a level; `None` when it mutates nothing.
    pub(crate) fn build(
        request_add: &[HeaderValueOptionConfig],
        request_remove: &[String],
        response_add: &[HeaderValueOptionConfig],
        response_remove: &[String],
    ) -> Result<Option<Arc<Level>>, String> {
        if request_add.is_empty()
            && request_remove.is_empty()
            && response_add.is_empty()
            && response_remove.is_empty()
        {
            return Ok(None);
        }
        let names = |list: &[String]| {
            list.iter()
                .map(|n| {
                    HeaderName::from_bytes(n.as_bytes())
                        .map_err(|_| format!("invalid header name {n:?}"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Vec::into_boxed_slice)
        };
        let adds = |list: &[HeaderValueOptionConfig], request: bool| {
            list.iter()
                .map(|h| Add::build(h, request))
                .collect::<Result<Vec<_>, _>>()
                .map(Vec::into_boxed_slice)
        };
        Ok(Some(Arc::new(Level {
            request_remove: names(request_remove)?,
            request_add: adds(request_add, true)?,
            response_remove: names(response_remove)?,
            response_add: adds(response_add, false)?,
        })))
    }

    /// Applies this level to a request's headers.
    pub(crate) fn request(&self, headers: &mut HeaderMap, req: &Request<'_>) {
        for name in self.request_remove.iter() {
            headers.remove(name);
        }
        for add in self.request_add.iter() {
            add.apply(headers, req, true);
        }
    }

    /// Applies this level to a response's headers.
    pub(crate) fn response(&self, headers: &mut HeaderMap, req: &Request<'_>) {
        for name in self.response_remove.iter() {
            headers.remove(name);
        }
        for add in self.response_add.iter() {
            add.apply(headers, req, false);
        }
    }

    /// Whether the level changes responses.
    pub(crate) fn has_response(&self) -> bool {
        !self.response_remove.is_empty() || !self.response_add.is_empty()
    }
}

impl Add {
    fn build(h: &HeaderValueOptionConfig, request: bool) -> Result<Self, String> {
        let name = HeaderName::from_bytes(h.key.as_bytes())
            .map_err(|_| format!("invalid header name {:?}", h.key))?;
        let parts = parse_header_value(&h.value, request)?;
        let value = match &parts[..] {
            [] => Value::Fixed(HeaderValue::from_static("")),
            [ValuePart::Text(t)] => Value::Fixed(
                HeaderValue::from_str(t).map_err(|_| format!("invalid header value {t:?}"))?,
            ),
            _ => Value::Parts(
                parts
                    .into_iter()
                    .map(|p| match p {
                        ValuePart::Text(t) => Part::Text(t.into_boxed_str()),
                        ValuePart::Hostname => Part::Hostname,
                        ValuePart::Op { op, max_len } => Part::Op(op, max_len),
                    })
                    .collect(),
            ),
        };
        Ok(Add {
            name,
            value,
            action: h.append_action,
            keep_empty: h.keep_empty_value,
        })
    }

    fn apply(&self, headers: &mut HeaderMap, req: &Request<'_>, request: bool) {
        let value = match &self.value {
            Value::Fixed(v) => v.clone(),
            Value::Parts(parts) => {
                let mut out = Vec::with_capacity(64);
                for part in parts.iter() {
                    write_part(part, headers, req, request, &mut out);
                }
                // Operators write what the request holds: a value that no header can carry
                // (it was checked as text) is dropped.
                match HeaderValue::from_bytes(&out) {
                    Ok(v) => v,
                    Err(_) => return,
                }
            }
        };
        if value.is_empty() && !self.keep_empty {
            return;
        }
        match self.action {
            HeaderAppendAction::AppendIfExistsOrAdd => {
                headers.append(&self.name, value);
            }
            HeaderAppendAction::AddIfAbsent => {
                if !headers.contains_key(&self.name) {
                    headers.insert(&self.name, value);
                }
            }
            HeaderAppendAction::OverwriteIfExistsOrAdd => {
                headers.insert(&self.name, value);
            }
            HeaderAppendAction::OverwriteIfExists => {
                if headers.contains_key(&self.name) {
                    headers.insert(&self.name, value);
                }
            }
        }
    }
}

fn write_part(
    part: &Part,
    headers: &HeaderMap,
    req: &Request<'_>,
    request: bool,
    out: &mut Vec<u8>,
) {
    let from = out.len();
    let max = match part {
        Part::Text(t) => {
            out.extend_from_slice(t.as_bytes());
            return;
        }
        Part::Hostname => {
            out.extend_from_slice(HOSTNAME.as_bytes());
            return;
        }
        Part::Op(op, max) => {
            write_op(op, headers, req, request, out);
            *max
        }
    };
    if let Some(max) = max {
        // Operators' values are ASCII here but for header values, which may hold any byte:
        // cut by bytes that begin a character, as the access log does.
        let mut chars = 0;
        let mut cut = None;
        for (i, b) in out[from..].iter().enumerate() {
            if b & 0xC0 != 0x80 {
                if chars == max {
                    cut = Some(from + i);
                    break;
                }
                chars += 1;
            }
        }
        if let Some(cut) = cut {
            out.truncate(cut);
        }
    }
}

fn write_op(
    op: &Operator,
    headers: &HeaderMap,
    req: &Request<'_>,
    request: bool,
    out: &mut Vec<u8>,
) {
    use std::io::Write as _;
    match op {
        Operator::StartTime => crate::access_log::write_rfc3339_millis(SystemTime::now(), out),
        Operator::Protocol => out.extend_from_slice(match req.version {
            Version::HTTP_09 => b"HTTP/0.9",
            Version::HTTP_10 => b"HTTP/1.0",
            Version::HTTP_2 => b"HTTP/2",
            Version::HTTP_3 => b"HTTP/3",
            _ => b"HTTP/1.1",
        }),
        Operator::DownstreamRemoteAddress => {
            let _ = write!(out, "{}", req.peer);
        }
        Operator::DownstreamRemoteAddressWithoutPort => {
            let _ = write!(out, "{}", req.peer.ip());
        }
        Operator::RouteName => out.extend_from_slice(req.route_name.unwrap_or("").as_bytes()),
        Operator::UpstreamCluster => out.extend_from_slice(req.cluster.unwrap_or("").as_bytes()),
        // Only in request headers (checked when the value was parsed): the first of the
        // names the request has.
        Operator::Req(names) if request => {
            for name in names {
                let found: Option<&[u8]> = match name {
                    HeaderRef::Path => req.path.map(str::as_bytes),
                    HeaderRef::Method => req.method.map(|m| m.as_str().as_bytes()),
                    HeaderRef::Scheme => Some(req.scheme.as_bytes()),
                    HeaderRef::Authority => headers.get(header::HOST).map(HeaderValue::as_bytes),
                    HeaderRef::Header(h) => headers.get(h).map(HeaderValue::as_bytes),
                };
                if let Some(v) = found {
                    out.extend_from_slice(v);
                    break;
                }
            }
        }
        // Refused when the configuration was checked.
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(key: &str, value: &str, action: HeaderAppendAction) -> HeaderValueOptionConfig {
        HeaderValueOptionConfig {
            key: key.into(),
            value: value.into(),
            append_action: action,
            keep_empty_value: false,
        }
    }

    fn req() -> Request<'static> {
        static GET: Method = Method::GET;
        Request {
            peer: "10.0.0.7:5555".parse().unwrap(),
            version: Version::HTTP_2,
            method: Some(&GET),
            path: Some("/a?b"),
            scheme: "http",
            route_name: Some("r1"),
            cluster: Some("web"),
        }
    }

    #[test]
    fn append_actions_do_what_envoy_says() {
        use HeaderAppendAction::*;
        let level = Level::build(
            &[
                add("x-append", "2", AppendIfExistsOrAdd),
                add("x-absent", "new", AddIfAbsent),
                add("x-present", "new", AddIfAbsent),
                add("x-over", "new", OverwriteIfExistsOrAdd),
                add("x-over-new", "new", OverwriteIfExistsOrAdd),
                add("x-if", "new", OverwriteIfExists),
                add("x-if-missing", "new", OverwriteIfExists),
            ],
            &["x-gone".into(), "x-append".into()],
            &[],
            &[],
        )
        .unwrap()
        .unwrap();
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x-append", "1"),
            ("x-present", "old"),
            ("x-over", "old"),
            ("x-over", "older"),
            ("x-if", "old"),
            ("x-gone", "x"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        level.request(&mut h, &req());
        let all =
            |k: &str| -> Vec<&str> { h.get_all(k).iter().map(|v| v.to_str().unwrap()).collect() };
        // Removal comes first: x-append's old value is gone before the add.
        assert_eq!(all("x-append"), ["2"]);
        assert_eq!(all("x-absent"), ["new"]);
        assert_eq!(all("x-present"), ["old"]);
        assert_eq!(all("x-over"), ["new"]);
        assert_eq!(all("x-over-new"), ["new"]);
        assert_eq!(all("x-if"), ["new"]);
        assert!(all("x-if-missing").is_empty());
        assert!(all("x-gone").is_empty());
    }

    #[test]
    fn operators_are_written_per_request_and_empty_values_skipped() {
        use HeaderAppendAction::*;
        let mut keep = add("x-keep", "%REQ(x-none)%", AppendIfExistsOrAdd);
        keep.keep_empty_value = true;
        let level = Level::build(
            &[
                add(
                    "x-client",
                    "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% via %PROTOCOL% 100%%",
                    AppendIfExistsOrAdd,
                ),
                add("x-peer", "%DOWNSTREAM_REMOTE_ADDRESS%", AppendIfExistsOrAdd),
                add(
                    "x-copy",
                    "%REQ(x-in)%|%REQ(:PATH)%|%REQ(x-in):2%",
                    AppendIfExistsOrAdd,
                ),
                add(
                    "x-where",
                    "%ROUTE_NAME%/%UPSTREAM_CLUSTER%",
                    AppendIfExistsOrAdd,
                ),
                add("x-empty", "%REQ(x-none)%", AppendIfExistsOrAdd),
                keep,
                add("x-time", "%START_TIME%", AppendIfExistsOrAdd),
            ],
            &[],
            &[],
            &[],
        )
        .unwrap()
        .unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-in", HeaderValue::from_static("hello"));
        level.request(&mut h, &req());
        assert_eq!(h["x-client"], "10.0.0.7 via HTTP/2 100%");
        assert_eq!(h["x-peer"], "10.0.0.7:5555");
        assert_eq!(h["x-copy"], "hello|/a?b|he");
        assert_eq!(h["x-where"], "r1/web");
        assert!(!h.contains_key("x-empty"));
        assert_eq!(h["x-keep"], "");
        let t = h["x-time"].to_str().unwrap();
        assert!(t.len() == 24 && t.ends_with('Z'), "{t}");
    }

    #[test]
    fn an_empty_level_is_none() {
        assert!(Level::build(&[], &[], &[], &[]).unwrap().is_none());
    }
}
