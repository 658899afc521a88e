//! Distributed tracing of a listener's requests: context read and passed on, a SERVER span
//! per downstream request and a CLIENT span per upstream attempt, exported off the request
//! path by `gofe_trace`'s exporter.
//!
//! ```text
//!   request ──Tracer::start──▶ TraceHandle (trace id, SERVER span id, sampled?)
//!     each attempt ──TraceHandle::attempt──▶ traceparent / b3 of the attempt's CLIENT span
//!                                            into the upstream request's headers
//!     attempt retried ─▶ its CLIENT span ends (sent to the exporter)
//!     response body done / dropped ─▶ the last CLIENT span and the SERVER span end
//! ```
//!
//! A listener without `tracing` has no [`Tracer`]: a request tests one `Option`. With one, an
//! unsampled request still gets fresh span ids written into its upstream headers (so the next
//! hop continues the trace, unsampled) but allocates nothing; a sampled one allocates its
//! record (one box) and, at its end, its spans' attribute lists.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use gofe_trace::context::{self, B3};
use gofe_trace::{Exporter, ExporterConfig, Kind, Sampler, Span, SpanId, TraceId, Value};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Version};

use crate::access_log::Flags;
use crate::cluster::{Cluster, Endpoint};
use crate::config::tracing::{parse_collector_uri, Propagation};
use crate::config::TracingConfig;
use crate::forward::AttemptEnd;

static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
static B3_SINGLE: HeaderName = HeaderName::from_static("b3");
static B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
static B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
static B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
static B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
static B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");
static CLIENT_TRACE_ID: HeaderName = HeaderName::from_static("x-client-trace-id");

// === impl Tracer ===

/// A listener's tracing, compiled: its sampler, formats and exporter.
pub(crate) struct Tracer {
    sampler: Sampler,
    /// Formats read, in order (the first present wins).
    read: Box<[Propagation]>,
    /// Formats written to upstreams.
    write_w3c: bool,
    write_b3: bool,
    write_b3_multi: bool,
    exporter: Exporter,
}

impl Tracer {
    /// Compiles `config` and starts its exporter (on the current runtime).
    pub(crate) fn build(
        config: &TracingConfig,
        counters: gofe_trace::Counters,
    ) -> Result<Arc<Tracer>, String> {
        let otel = &config.provider.opentelemetry;
        let uri = &otel.http_service.http_uri;
        let collector = parse_collector_uri(&uri.uri).map_err(|m| format!("tracing: {m}"))?;
        let target: http::Uri =
            format!("http://{}{}", collector.authority, collector.path_and_query)
                .parse()
                .map_err(|e| format!("tracing: collector URL: {e}"))?;
        let exporter = Exporter::start(
            ExporterConfig {
                uri: target,
                timeout: uri.timeout,
                service_name: otel.service_name.clone(),
                queue: otel.max_cache_size as usize,
                max_batch: config.batch.max_export_batch_size as usize,
                schedule_delay: config.batch.schedule_delay,
            },
            counters,
        );
        Ok(Arc::new(Tracer {
            sampler: Sampler::new(
                config.client_sampling.value,
                config.random_sampling.value,
                config.overall_sampling.value,
            ),
            read: config.propagation.clone().into(),
            write_w3c: config.propagation.contains(&Propagation::Tracecontext),
            write_b3: config.propagation.contains(&Propagation::B3),
            write_b3_multi: config.propagation.contains(&Propagation::B3multi),
            exporter,
        }))
    }

    /// Waits (at most `timeout`) until the spans ended so far are exported.
    pub(crate) async fn flush(&self, timeout: std::time::Duration) -> bool {
        self.exporter.flush(timeout).await
    }

    /// Reads `req`'s context and decides whether it is traced.
    pub(crate) fn start<B>(
        self: &Arc<Self>,
        req: &Request<B>,
        peer: SocketAddr,
        scheme: &'static str,
    ) -> TraceHandle {
        let headers = req.headers();
        let mut parent = None;
        let mut decision = None;
        let mut w3c = false;
        for format in self.read.iter() {
            let found = match format {
                Propagation::Tracecontext => headers
                    .get(&TRACEPARENT)
                    .and_then(|v| context::parse_traceparent(v.as_bytes()))
                    .map(|p| {
                        w3c = true;
                        B3::Context {
                            trace_id: p.trace_id,
                            span_id: p.span_id,
                            sampled: Some(p.sampled),
                        }
                    }),
                Propagation::B3 | Propagation::B3multi => read_b3(headers),
            };
            match found {
                Some(B3::Context {
                    trace_id,
                    span_id,
                    sampled,
                }) => {
                    parent = Some((trace_id, span_id));
                    decision = sampled;
                    break;
                }
                Some(B3::Decision(d)) => {
                    decision.get_or_insert(d);
                }
                None => {}
            }
        }
        // The header is looked up only when it can change the decision.
        let client_forced = decision.is_none()
            && self.sampler.client != self.sampler.random
            && headers.contains_key(&CLIENT_TRACE_ID);
        let sampled = self.sampler.sample(decision, client_forced);
        let trace_id = parent.map_or_else(TraceId::random, |(t, _)| t);
        let server_id = SpanId::random();
        let record = sampled.then(|| {
            Box::new(Record {
                parent: parent.map(|(_, s)| s),
                trace_state: if w3c {
                    headers
                        .get(&TRACESTATE)
                        .and_then(|v| v.to_str().ok())
                        .map(Into::into)
                } else {
                    None
                },
                start_unix: unix_nanos(SystemTime::now()),
                started: Instant::now(),
                method: req.method().clone(),
                path: req.uri().path().into(),
                version: req.version(),
                scheme,
                peer,
                status: 0,
                flags: Flags::default(),
                route_name: None,
                cluster: None,
                attempt: None,
            })
        });
        TraceHandle {
            tracer: Arc::clone(self),
            trace_id,
            server_id,
            sampled,
            // W3C: a tracestate whose traceparent was not read does not go on.
            drop_tracestate: !w3c && self.write_w3c && headers.contains_key(&TRACESTATE),
            record,
        }
    }
}

/// B3 context from the single header, else the multi headers.
fn read_b3(headers: &HeaderMap) -> Option<B3> {
    if let Some(single) = headers.get(&B3_SINGLE) {
        if let Some(b3) = context::parse_b3_single(single.as_bytes()) {
            return Some(b3);
        }
    }
    let get = |n: &HeaderName| headers.get(n).map(HeaderValue::as_bytes);
    context::parse_b3_multi(
        get(&B3_TRACE_ID),
        get(&B3_SPAN_ID),
        get(&B3_SAMPLED),
        get(&B3_FLAGS),
    )
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

// === impl TraceHandle ===

/// A request's trace: its context, and (sampled only) what its spans will say. Its spans end
/// when it is dropped (with the response body, or with the request when there is none).
pub(crate) struct TraceHandle {
    tracer: Arc<Tracer>,
    trace_id: TraceId,
    /// This request's SERVER span, the parent of its attempts.
    server_id: SpanId,
    sampled: bool,
    /// The request's `tracestate` belongs to no context gofe read: it is not passed on.
    drop_tracestate: bool,
    /// `None` when not sampled.
    record: Option<Box<Record>>,
}

/// A sampled request's SERVER span, in the making.
struct Record {
    parent: Option<SpanId>,
    trace_state: Option<Box<str>>,
    start_unix: u64,
    started: Instant,
    method: Method,
    path: Box<str>,
    version: Version,
    scheme: &'static str,
    peer: SocketAddr,
    status: u16,
    flags: Flags,
    route_name: Option<Arc<str>>,
    cluster: Option<Arc<Cluster>>,
    /// The attempt under way (or the last one, which ends with the response body).
    attempt: Option<AttemptRecord>,
}

/// An upstream attempt's CLIENT span, in the making.
struct AttemptRecord {
    span_id: SpanId,
    start_unix: u64,
    started: Instant,
    endpoint: Arc<Endpoint>,
    /// Retries before this attempt (`http.request.resend_count`).
    resends: u32,
    status: u16,
    error: Option<&'static str>,
}

impl TraceHandle {
    /// An attempt to `endpoint` starts: writes its context into the upstream request's
    /// headers (the attempt's own span id as the parent the next hop sees).
    pub(crate) fn attempt(
        &mut self,
        headers: &mut HeaderMap,
        endpoint: &Arc<Endpoint>,
        resends: u32,
    ) {
        let span_id = SpanId::random();
        let t = &*self.tracer;
        if t.write_w3c {
            let tp = context::format_traceparent(&self.trace_id, &span_id, self.sampled);
            if let Ok(v) = HeaderValue::from_bytes(&tp) {
                headers.insert(&TRACEPARENT, v);
            }
            if self.drop_tracestate {
                headers.remove(&TRACESTATE);
            }
        }
        if t.write_b3 {
            let b3 = context::format_b3_single(&self.trace_id, &span_id, self.sampled);
            if let Ok(v) = HeaderValue::from_bytes(&b3) {
                headers.insert(&B3_SINGLE, v);
            }
        }
        if t.write_b3_multi {
            let trace = context::format_trace_hex(&self.trace_id);
            let span = context::format_span_hex(&span_id);
            let parent = context::format_span_hex(&self.server_id);
            for (name, value) in [
                (&B3_TRACE_ID, &trace[..]),
                (&B3_SPAN_ID, &span[..]),
                (&B3_PARENT_SPAN_ID, &parent[..]),
                (&B3_SAMPLED, if self.sampled { b"1" } else { b"0" }),
            ] {
                if let Ok(v) = HeaderValue::from_bytes(value) {
                    headers.insert(name, v);
                }
            }
            headers.remove(&B3_FLAGS);
        }
        if let Some(r) = &mut self.record {
            // A previous attempt's span, were it still open, ends here.
            if let Some(previous) = r.attempt.take() {
                self.tracer
                    .exporter
                    .send(client_span(self.trace_id, self.server_id, r, previous));
            }
            r.attempt = Some(AttemptRecord {
                span_id,
                start_unix: unix_nanos(SystemTime::now()),
                started: Instant::now(),
                endpoint: Arc::clone(endpoint),
                resends,
                status: 0,
                error: None,
            });
        }
    }

    /// The attempt under way ended as `end`; when it is retried its span ends now.
    pub(crate) fn attempt_ended(&mut self, end: AttemptEnd, retried: bool) {
        let Some(r) = &mut self.record else {
            return;
        };
        if let Some(a) = &mut r.attempt {
            match end {
                AttemptEnd::Status(s) => a.status = s,
                AttemptEnd::Failed(why) => a.error = Some(why),
            }
        }
        if retried {
            if let Some(a) = r.attempt.take() {
                self.tracer
                    .exporter
                    .send(client_span(self.trace_id, self.server_id, r, a));
            }
        }
    }

    /// Adds response flags to the SERVER span.
    pub(crate) fn flag(&mut self, flags: Flags) {
        if let Some(r) = &mut self.record {
            r.flags.insert(flags);
        }
    }

    /// The route matched (its name) and the cluster it chose.
    pub(crate) fn routed(&mut self, name: Option<&Arc<str>>, cluster: &Arc<Cluster>) {
        if let Some(r) = &mut self.record {
            r.route_name = name.cloned();
            r.cluster = Some(Arc::clone(cluster));
        }
    }

    /// The status sent to the client.
    pub(crate) fn respond(&mut self, status: u16) {
        if let Some(r) = &mut self.record {
            r.status = status;
        }
    }
}

impl Drop for TraceHandle {
    fn drop(&mut self) {
        let Some(mut r) = self.record.take() else {
            return;
        };
        let exporter = &self.tracer.exporter;
        if let Some(a) = r.attempt.take() {
            exporter.send(client_span(self.trace_id, self.server_id, &r, a));
        }
        exporter.send(server_span(self.trace_id, self.server_id, *r));
    }
}

/// The span name for `method` (OpenTelemetry's HTTP convention without a route template: the
/// method alone).
fn method_name(method: &Method) -> Cow<'static, str> {
    match *method {
        Method::GET => Cow::Borrowed("GET"),
        Method::POST => Cow::Borrowed("POST"),
        Method::PUT => Cow::Borrowed("PUT"),
        Method::DELETE => Cow::Borrowed("DELETE"),
        Method::HEAD => Cow::Borrowed("HEAD"),
        Method::PATCH => Cow::Borrowed("PATCH"),
        Method::OPTIONS => Cow::Borrowed("OPTIONS"),
        _ => Cow::Borrowed("HTTP"),
    }
}

fn method_value(method: &Method) -> Value {
    match method_name(method) {
        Cow::Borrowed("HTTP") => Value::Owned(method.as_str().into()),
        Cow::Borrowed(m) => Value::Static(m),
        Cow::Owned(m) => Value::Owned(m.into()),
    }
}

fn protocol_version(v: Version) -> &'static str {
    match v {
        Version::HTTP_10 => "1.0",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

fn client_span(trace_id: TraceId, server_id: SpanId, r: &Record, a: AttemptRecord) -> Span {
    let end_unix = a.start_unix + a.started.elapsed().as_nanos() as u64;
    let mut attributes = Vec::with_capacity(8);
    attributes.push(("http.request.method", method_value(&r.method)));
    let (host, port) = split_host_port(&a.endpoint.address);
    attributes.push(("server.address", Value::Owned(host.into())));
    if let Some(port) = port {
        attributes.push(("server.port", Value::Int(i64::from(port))));
    }
    if let Some(c) = &r.cluster {
        attributes.push(("gofe.upstream_cluster", Value::Owned(c.name.clone())));
    }
    if a.resends > 0 {
        attributes.push((
            "http.request.resend_count",
            Value::Int(i64::from(a.resends)),
        ));
    }
    let mut error = None;
    if a.status != 0 {
        attributes.push(("http.response.status_code", Value::Int(i64::from(a.status))));
        if a.status >= 400 {
            error = Some(Cow::Borrowed("error status"));
        }
    }
    if let Some(why) = a.error {
        attributes.push(("error.type", Value::Static(why)));
        error = Some(Cow::Borrowed(why));
    }
    Span {
        trace_id,
        span_id: a.span_id,
        parent: Some(server_id),
        trace_state: r.trace_state.clone(),
        name: method_name(&r.method),
        kind: Kind::Client,
        start_unix_nanos: a.start_unix,
        end_unix_nanos: end_unix,
        attributes,
        error,
    }
}

fn server_span(trace_id: TraceId, server_id: SpanId, r: Record) -> Span {
    let end_unix = r.start_unix + r.started.elapsed().as_nanos() as u64;
    let mut attributes = Vec::with_capacity(10);
    attributes.push(("http.request.method", method_value(&r.method)));
    attributes.push(("url.path", Value::Owned(r.path)));
    attributes.push(("url.scheme", Value::Static(r.scheme)));
    attributes.push((
        "network.protocol.version",
        Value::Static(protocol_version(r.version)),
    ));
    attributes.push((
        "client.address",
        Value::Owned(r.peer.ip().to_string().into()),
    ));
    if r.status != 0 {
        attributes.push(("http.response.status_code", Value::Int(i64::from(r.status))));
    }
    let mut flags = Vec::new();
    r.flags.write(&mut flags);
    if let Ok(text) = String::from_utf8(flags) {
        attributes.push(("gofe.response_flags", Value::Owned(text.into())));
    }
    if let Some(name) = r.route_name {
        attributes.push(("gofe.route_name", Value::Shared(name)));
    }
    if let Some(c) = &r.cluster {
        attributes.push(("gofe.upstream_cluster", Value::Owned(c.name.clone())));
    }
    // OpenTelemetry: a server span is an error for a 5xx (a 4xx is the client's).
    let error = (r.status >= 500 || r.status == 0).then_some(Cow::Borrowed(if r.status == 0 {
        "no response"
    } else {
        "server error status"
    }));
    Span {
        trace_id,
        span_id: server_id,
        parent: r.parent,
        trace_state: r.trace_state,
        name: method_name(&r.method),
        kind: Kind::Server,
        start_unix_nanos: r.start_unix,
        end_unix_nanos: end_unix,
        attributes,
        error,
    }
}

/// `host` and `port` of an endpoint's `host:port` (`[v6]:port` too).
fn split_host_port(address: &str) -> (&str, Option<u16>) {
    match address.rsplit_once(':') {
        Some((host, port)) => (
            host.trim_start_matches('[').trim_end_matches(']'),
            port.parse().ok(),
        ),
        None => (address, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_addresses_split() {
        assert_eq!(split_host_port("10.0.0.1:80"), ("10.0.0.1", Some(80)));
        assert_eq!(split_host_port("[::1]:8080"), ("::1", Some(8080)));
        assert_eq!(split_host_port("svc"), ("svc", None));
    }

    #[test]
    fn unknown_methods_keep_their_name() {
        assert_eq!(method_value(&Method::GET), Value::Static("GET"));
        let purge = Method::from_bytes(b"PURGE").unwrap();
        assert_eq!(method_value(&purge), Value::Owned("PURGE".into()));
        assert_eq!(method_name(&purge), "HTTP");
    }
}
