//! Access logs: a line per request, in Envoy's format language, written off the request path.
//!
//! ```text
//!   request path                               writer thread (one per listener's logs)
//!   ────────────                               ─────────────
//!   Record::start (only with a log)             recv ─▶ batch ─▶ format each sink's lines
//!     forward fills in flags, cluster, host         into its reusable buffer ─▶ write_all
//!   response body done / dropped ─▶ try_send ──▶ (bounded queue; full: dropped, counted)
//! ```
//!
//! A listener without access logs has no [`AccessLog`]: the request path tests one `Option`
//! and does nothing else. With one, a request allocates its [`Record`] (the values its formats
//! name: a few header values, which are reference-counted, never copied) and, when its
//! response body is finished or dropped, hands it to the writer thread over a bounded channel
//! without waiting: a full queue drops the line and counts it in
//! `gofe_access_log_dropped_total`. The writer formats (the format strings were compiled to
//! [`Piece`]s when the configuration was applied) and writes, so a slow disk slows only it.
//!
//! Response flags ([`Flags`]) are Envoy's short codes, set by the request path from its own
//! classification of what happened (the attempt's error, the retry decision, the route match,
//! the balancer's pick), never guessed from the status code.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, Version};
use prometheus::IntCounter;

use crate::cluster::{Cluster, Endpoint};
use crate::config::access_log::{self as model, HeaderRef, Operator, Segment};
use crate::config::AccessLogConfig;

/// Lines waiting for a listener's writer; more are dropped (and counted).
pub(crate) const QUEUE_LINES: usize = 8192;
/// Most records formatted and written in one batch.
const BATCH: usize = 256;

// === impl Flags ===

/// Envoy's response flags: why the proxy answered as it did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Flags(u16);

impl Flags {
    /// `UH`: no healthy upstream.
    pub(crate) const NO_HEALTHY_UPSTREAM: Flags = Flags(1);
    /// `UF`: the connection to the upstream failed.
    pub(crate) const UPSTREAM_CONNECT_FAILURE: Flags = Flags(1 << 1);
    /// `UO`: a circuit breaker refused the request.
    pub(crate) const UPSTREAM_OVERFLOW: Flags = Flags(1 << 2);
    /// `NR`: no route (or virtual host) matched.
    pub(crate) const NO_ROUTE: Flags = Flags(1 << 3);
    /// `URX`: the retry limit was reached.
    pub(crate) const RETRY_LIMIT_EXCEEDED: Flags = Flags(1 << 4);
    /// `UC`: the upstream connection was terminated.
    pub(crate) const UPSTREAM_CONNECTION_TERMINATION: Flags = Flags(1 << 5);
    /// `DC`: the downstream connection was terminated.
    pub(crate) const DOWNSTREAM_CONNECTION_TERMINATION: Flags = Flags(1 << 6);
    /// `UT`: the upstream request timed out.
    pub(crate) const UPSTREAM_REQUEST_TIMEOUT: Flags = Flags(1 << 7);
    /// `UPE`: the upstream answered something that is not HTTP.
    pub(crate) const UPSTREAM_PROTOCOL_ERROR: Flags = Flags(1 << 8);
    /// `DI`: the fault filter delayed the request.
    pub(crate) const DELAY_INJECTED: Flags = Flags(1 << 9);
    /// `FI`: the fault filter aborted the request.
    pub(crate) const FAULT_INJECTED: Flags = Flags(1 << 10);
    /// `RL`: the local rate limit refused the request.
    pub(crate) const RATE_LIMITED: Flags = Flags(1 << 11);

    /// Envoy's codes, in the order Envoy writes them (its `CoreResponseFlag` order).
    const CODES: [(Flags, &'static str); 12] = [
        (Flags::NO_HEALTHY_UPSTREAM, "UH"),
        (Flags::UPSTREAM_REQUEST_TIMEOUT, "UT"),
        (Flags::UPSTREAM_CONNECT_FAILURE, "UF"),
        (Flags::UPSTREAM_CONNECTION_TERMINATION, "UC"),
        (Flags::UPSTREAM_OVERFLOW, "UO"),
        (Flags::NO_ROUTE, "NR"),
        (Flags::DELAY_INJECTED, "DI"),
        (Flags::FAULT_INJECTED, "FI"),
        (Flags::RATE_LIMITED, "RL"),
        (Flags::DOWNSTREAM_CONNECTION_TERMINATION, "DC"),
        (Flags::RETRY_LIMIT_EXCEEDED, "URX"),
        (Flags::UPSTREAM_PROTOCOL_ERROR, "UPE"),
    ];

    /// Adds `other`'s flags.
    pub(crate) fn insert(&mut self, other: Flags) {
        self.0 |= other.0;
    }

    /// Whether all of `other`'s flags are set.
    pub(crate) fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Writes the codes, comma-separated, or `-` for none.
    pub(crate) fn write(self, out: &mut Vec<u8>) {
        if self.0 == 0 {
            out.push(b'-');
            return;
        }
        let mut first = true;
        for (flag, code) in Self::CODES {
            if self.contains(flag) {
                if !first {
                    out.push(b',');
                }
                first = false;
                out.extend_from_slice(code.as_bytes());
            }
        }
    }
}

// === impl AccessLog ===

/// A listener's access logs, compiled: what a request must capture, and the writer's queue.
pub(crate) struct AccessLog {
    queue: SyncSender<Message>,
    dropped: IntCounter,
    /// The request headers the formats name, captured by position.
    request_headers: Box<[HeaderName]>,
    /// The response headers the formats name, captured by position.
    response_headers: Box<[HeaderName]>,
    /// Whether a format writes `%BYTES_RECEIVED%` (so the request body is counted).
    counts_received: bool,
}

/// Why a listener's access logs could not be set up.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AccessLogError {
    /// A format did not parse (validation should have refused it first).
    #[error("access_log[{index}]: {message}")]
    Format {
        /// Which logger.
        index: usize,
        /// What is wrong.
        message: String,
    },
    /// The file could not be opened for appending.
    #[error("access_log[{index}]: cannot open {path}: {source}")]
    Open {
        /// Which logger.
        index: usize,
        /// Its path.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The writer thread could not be started.
    #[error("cannot start the access-log writer: {0}")]
    Thread(#[source] std::io::Error),
}

impl AccessLog {
    /// Compiles `configs` (a listener's `access_log`) and starts their writer thread; `None`
    /// when there are none.
    pub(crate) fn build(
        configs: &[AccessLogConfig],
        dropped: IntCounter,
    ) -> Result<Option<Arc<AccessLog>>, AccessLogError> {
        if configs.is_empty() {
            return Ok(None);
        }
        let mut names = Names::default();
        let mut sinks = Vec::with_capacity(configs.len());
        for (index, c) in configs.iter().enumerate() {
            let format = Format::compile(c, &mut names)
                .map_err(|message| AccessLogError::Format { index, message })?;
            let out: Box<dyn Write + Send> = match &c.path {
                None => Box::new(Stdout),
                Some(path) => Box::new(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .map_err(|source| AccessLogError::Open {
                            index,
                            path: path.clone(),
                            source,
                        })?,
                ),
            };
            sinks.push(Sink::new(format, out));
        }
        let queue = spawn_writer(sinks, QUEUE_LINES).map_err(AccessLogError::Thread)?;
        Ok(Some(Arc::new(AccessLog {
            queue,
            dropped,
            request_headers: names.request.into(),
            response_headers: names.response.into(),
            counts_received: names.received,
        })))
    }

    /// Hands a finished record to the writer, or drops it (counted) when the writer is behind.
    fn send(&self, record: Box<Record>) {
        match self.queue.try_send(Message::Line(record)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }

    /// Waits (blocking this thread, at most `timeout`) until the writer has written every line
    /// queued before this call; false if it did not in time. For shutdown, off the runtime.
    pub(crate) fn flush_blocking(&self, timeout: std::time::Duration) -> bool {
        let (done, flushed) = std::sync::mpsc::channel();
        let deadline = Instant::now() + timeout;
        let mut message = Message::Flush(done);
        // The queue may be full: wait for room, within the deadline.
        loop {
            match self.queue.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return true,
                Err(TrySendError::Full(m)) => {
                    if Instant::now() >= deadline {
                        return false;
                    }
                    message = m;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        flushed.recv_timeout(left).is_ok()
    }
}

/// What the writer thread is sent.
enum Message {
    /// A request's line.
    Line(Box<Record>),
    /// Answer once everything before this is written.
    Flush(std::sync::mpsc::Sender<()>),
}

/// Header names the formats of one listener name, each once.
#[derive(Default)]
struct Names {
    request: Vec<HeaderName>,
    response: Vec<HeaderName>,
    received: bool,
}

impl Names {
    fn index(list: &mut Vec<HeaderName>, name: &HeaderName) -> usize {
        match list.iter().position(|n| n == name) {
            Some(i) => i,
            None => {
                list.push(name.clone());
                list.len() - 1
            }
        }
    }
}

// === impl Record ===

/// What one request's access-log line is made of.
pub(crate) struct Record {
    start: SystemTime,
    started: Instant,
    finished: Option<Instant>,
    method: Method,
    uri: Uri,
    version: Version,
    scheme: &'static str,
    peer: SocketAddr,
    /// Values of the access log's `request_headers`, by position, then of its
    /// `response_headers` (one allocation for both).
    headers: Box<[Option<HeaderValue>]>,
    /// Where the response headers start in `headers`.
    response_at: usize,
    /// The status sent; 0 while none was.
    status: u16,
    /// Why the proxy answered as it did.
    pub(crate) flags: Flags,
    /// The cluster the route chose.
    pub(crate) cluster: Option<Arc<Cluster>>,
    /// The endpoint of the last attempt.
    pub(crate) endpoint: Option<Arc<Endpoint>>,
    /// The matched route's name.
    pub(crate) route_name: Option<Arc<str>>,
    /// Why the connection to the endpoint failed.
    pub(crate) failure_reason: Option<Box<str>>,
    /// Why the proxy answered itself, in Envoy's words (`%RESPONSE_CODE_DETAILS%`; today the
    /// RBAC filter's `rbac_access_denied_matched_policy[...]`).
    pub(crate) details: Option<Arc<str>>,
    /// Request body bytes, counted by the request body when a format wants them.
    pub(crate) received: Option<Arc<AtomicU64>>,
    sent: u64,
    /// A `tcp_proxy` connection's line: no request, method, path or protocol.
    tcp: bool,
    /// Where a passthrough connection went (it has no configured endpoint).
    upstream_addr: Option<SocketAddr>,
}

impl Record {
    /// Starts the record of a request (before it is routed or rewritten).
    pub(crate) fn start<B>(
        log: &AccessLog,
        req: &http::Request<B>,
        peer: SocketAddr,
        scheme: &'static str,
    ) -> Self {
        Record {
            start: SystemTime::now(),
            started: Instant::now(),
            finished: None,
            method: req.method().clone(),
            uri: req.uri().clone(),
            version: req.version(),
            scheme,
            peer,
            headers: log
                .request_headers
                .iter()
                .map(|n| req.headers().get(n).cloned())
                .chain(log.response_headers.iter().map(|_| None))
                .collect(),
            response_at: log.request_headers.len(),
            status: 0,
            flags: Flags::default(),
            cluster: None,
            endpoint: None,
            route_name: None,
            failure_reason: None,
            details: None,
            received: None,
            sent: 0,
            tcp: false,
            upstream_addr: None,
        }
    }

    /// Starts the record of a `tcp_proxy` connection from `peer` (its line is written when the
    /// connection ends; `%RESPONSE_CODE%` is 0 and the request operators have no value, as in
    /// Envoy).
    pub(crate) fn connection(peer: SocketAddr) -> Self {
        Record {
            start: SystemTime::now(),
            started: Instant::now(),
            finished: None,
            method: Method::GET,
            uri: Uri::default(),
            version: Version::default(),
            scheme: "tcp",
            peer,
            headers: Box::default(),
            response_at: 0,
            status: 0,
            flags: Flags::default(),
            cluster: None,
            endpoint: None,
            route_name: None,
            failure_reason: None,
            details: None,
            received: None,
            sent: 0,
            tcp: true,
            upstream_addr: None,
        }
    }

    /// The request headers again, as the proxy rewrote them (`x-forwarded-for`,
    /// `x-request-id`): what the line shows, as in Envoy.
    pub(crate) fn rewritten(&mut self, log: &AccessLog, headers: &HeaderMap) {
        for (slot, name) in self.headers.iter_mut().zip(log.request_headers.iter()) {
            *slot = headers.get(name).cloned();
        }
    }

    /// The response going to the client: its status and the headers the formats name.
    pub(crate) fn respond(&mut self, log: &AccessLog, status: u16, headers: &HeaderMap) {
        self.status = status;
        let response = self.headers.iter_mut().skip(self.response_at);
        for (slot, name) in response.zip(log.response_headers.iter()) {
            *slot = headers.get(name).cloned();
        }
    }

    /// A request body counter for `%BYTES_RECEIVED%`, when a format writes it.
    pub(crate) fn count_received(&mut self, log: &AccessLog) -> Option<Arc<AtomicU64>> {
        if !log.counts_received {
            return None;
        }
        let counter = Arc::new(AtomicU64::new(0));
        self.received = Some(Arc::clone(&counter));
        Some(counter)
    }
}

/// A request's record on its way to the log: written when dropped (with the response body, or
/// with the request when there is no response).
pub(crate) struct LogHandle {
    log: Arc<AccessLog>,
    /// `None` only once sent.
    record: Option<Box<Record>>,
    /// The endpoint's response body broke: the body's early end is not the client's doing.
    upstream_failed: bool,
    /// The response body said it had ended (a body read until the upstream closes cannot tell
    /// before).
    ended: bool,
}

impl LogHandle {
    /// A handle that writes `record` to `log`.
    pub(crate) fn new(log: Arc<AccessLog>, record: Record) -> Self {
        LogHandle {
            log,
            record: Some(Box::new(record)),
            upstream_failed: false,
            ended: false,
        }
    }

    /// Adds response flags.
    pub(crate) fn flag(&mut self, flags: Flags) {
        if let Some(r) = &mut self.record {
            r.flags.insert(flags);
        }
    }

    /// Why the proxy answered itself (`%RESPONSE_CODE_DETAILS%`).
    pub(crate) fn details(&mut self, details: &Arc<str>) {
        if let Some(r) = &mut self.record {
            r.details = Some(Arc::clone(details));
        }
    }

    /// The route matched (its name) and the cluster it chose.
    pub(crate) fn routed(&mut self, name: Option<&Arc<str>>, cluster: &Arc<Cluster>) {
        if let Some(r) = &mut self.record {
            r.route_name = name.cloned();
            r.cluster = Some(Arc::clone(cluster));
        }
    }

    /// The endpoint an attempt went to.
    pub(crate) fn endpoint(&mut self, endpoint: &Arc<Endpoint>) {
        if let Some(r) = &mut self.record {
            r.endpoint = Some(Arc::clone(endpoint));
        }
    }

    /// Why the connection to the endpoint failed: the innermost cause of `error` (the OS's
    /// word, e.g. `Connection refused (os error 111)`, or `connect timed out`).
    pub(crate) fn failure_reason(&mut self, error: &(dyn std::error::Error + 'static)) {
        if let Some(r) = &mut self.record {
            let mut innermost = error;
            while let Some(next) = innermost.source() {
                innermost = next;
            }
            r.failure_reason = Some(innermost.to_string().into());
        }
    }

    /// The request headers as the proxy rewrote them.
    pub(crate) fn rewritten(&mut self, headers: &HeaderMap) {
        if let Some(r) = &mut self.record {
            r.rewritten(&self.log, headers);
        }
    }

    /// The response going to the client.
    pub(crate) fn respond(&mut self, status: u16, headers: &HeaderMap) {
        if let Some(r) = &mut self.record {
            r.respond(&self.log, status, headers);
        }
    }

    /// A request body counter for `%BYTES_RECEIVED%`, when a format writes it.
    pub(crate) fn count_received(&mut self) -> Option<Arc<AtomicU64>> {
        let r = self.record.as_deref_mut()?;
        r.count_received(&self.log)
    }

    /// A connection's byte counter from the client, for `%BYTES_RECEIVED%`.
    pub(crate) fn connection_counters(&mut self, received: Arc<AtomicU64>) {
        if let Some(r) = &mut self.record {
            r.received = Some(received);
        }
    }

    /// Where a passthrough connection went, for `%UPSTREAM_HOST%`.
    pub(crate) fn upstream_addr(&mut self, addr: SocketAddr) {
        if let Some(r) = &mut self.record {
            r.upstream_addr = Some(addr);
        }
    }

    /// Counts response body bytes sent.
    pub(crate) fn sent(&mut self, bytes: usize) {
        if let Some(r) = &mut self.record {
            r.sent += bytes as u64;
        }
    }

    /// The response body has ended.
    pub(crate) fn ended(&mut self) {
        self.ended = true;
    }

    /// The endpoint's response body broke before its end (`UC`).
    pub(crate) fn upstream_body_failed(&mut self) {
        self.upstream_failed = true;
        self.flag(Flags::UPSTREAM_CONNECTION_TERMINATION);
    }

    /// The response body was dropped before its end: the client went away (`DC`), unless the
    /// endpoint's body broke first.
    pub(crate) fn cut_short(&mut self) {
        // A response to HEAD has a body hyper never sends.
        let head = self
            .record
            .as_ref()
            .is_some_and(|r| r.method == Method::HEAD);
        if !self.upstream_failed && !self.ended && !head {
            self.flag(Flags::DOWNSTREAM_CONNECTION_TERMINATION);
        }
    }
}

impl Drop for LogHandle {
    fn drop(&mut self) {
        if let Some(mut record) = self.record.take() {
            record.finished = Some(Instant::now());
            self.log.send(record);
        }
    }
}

// === impl Format ===

/// A value a compiled format writes.
#[derive(Clone, Debug)]
enum Value {
    StartTime,
    /// A request value: the first of the alternatives that is present.
    Request(Box<[Field]>),
    /// A response header by position: the first present.
    Response(Box<[usize]>),
    Protocol,
    ResponseCode,
    ResponseFlags,
    Duration,
    BytesReceived,
    BytesSent,
    UpstreamHost,
    UpstreamCluster,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    RouteName,
    UpstreamTransportFailureReason,
    ResponseCodeDetails,
}

/// Where a request value is found.
#[derive(Clone, Copy, Debug)]
enum Field {
    Path,
    Method,
    /// The URI's authority, else the `Host` header at this position.
    Authority(usize),
    Scheme,
    Header(usize),
}

/// A piece of a compiled format.
#[derive(Clone, Debug)]
enum Piece {
    Text(Box<[u8]>),
    Value {
        value: Value,
        max_len: Option<usize>,
        numeric: bool,
    },
}

/// A compiled format: a text line, or a JSON object with a format per key.
#[derive(Debug)]
enum Format {
    Text(Vec<Piece>),
    /// Each key (JSON-encoded, with its colon) and its value's pieces.
    Json(Vec<(Vec<u8>, Vec<Piece>)>),
}

impl Format {
    fn compile(c: &AccessLogConfig, names: &mut Names) -> Result<Format, String> {
        if let Some(map) = &c.json_format {
            let mut keys = Vec::with_capacity(map.len());
            for (key, value) in map {
                let mut encoded = serde_json::to_vec(key).map_err(|e| e.to_string())?;
                encoded.push(b':');
                keys.push((encoded, pieces(&model::parse_format(value)?, names)));
            }
            return Ok(Format::Json(keys));
        }
        let text = c.format.as_deref().unwrap_or(model::DEFAULT_FORMAT);
        let mut pieces = pieces(&model::parse_format(text)?, names);
        if !text.ends_with('\n') {
            pieces.push(Piece::Text(Box::new(*b"\n")));
        }
        Ok(Format::Text(pieces))
    }

    /// Appends `r`'s line to `out`.
    fn write(&self, r: &Record, out: &mut Vec<u8>) {
        match self {
            Format::Text(pieces) => {
                for p in pieces {
                    match p {
                        Piece::Text(t) => out.extend_from_slice(t),
                        Piece::Value { value, max_len, .. } => {
                            if !write_value(value, *max_len, r, out) {
                                out.push(b'-');
                            }
                        }
                    }
                }
            }
            Format::Json(keys) => {
                out.push(b'{');
                let mut scratch = Vec::new();
                for (i, (key, pieces)) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(key);
                    write_json_value(pieces, r, out, &mut scratch);
                }
                out.extend_from_slice(b"}\n");
            }
        }
    }
}

fn pieces(segments: &[Segment], names: &mut Names) -> Vec<Piece> {
    segments
        .iter()
        .map(|s| match s {
            Segment::Text(t) => Piece::Text(t.as_bytes().into()),
            Segment::Op { op, max_len } => Piece::Value {
                numeric: op.is_numeric(),
                value: value_of(op, names),
                max_len: *max_len,
            },
        })
        .collect()
}

fn value_of(op: &Operator, names: &mut Names) -> Value {
    let host = HeaderName::from_static("host");
    match op {
        Operator::StartTime => Value::StartTime,
        Operator::Req(refs) => Value::Request(
            refs.iter()
                .map(|r| match r {
                    HeaderRef::Path => Field::Path,
                    HeaderRef::Method => Field::Method,
                    HeaderRef::Scheme => Field::Scheme,
                    HeaderRef::Authority => {
                        Field::Authority(Names::index(&mut names.request, &host))
                    }
                    HeaderRef::Header(h) => Field::Header(Names::index(&mut names.request, h)),
                })
                .collect(),
        ),
        Operator::Resp(refs) => Value::Response(
            refs.iter()
                .filter_map(|r| match r {
                    HeaderRef::Header(h) => Some(Names::index(&mut names.response, h)),
                    // The parser allows no pseudo-header in a response.
                    _ => None,
                })
                .collect(),
        ),
        Operator::Protocol => Value::Protocol,
        Operator::ResponseCode => Value::ResponseCode,
        Operator::ResponseFlags => Value::ResponseFlags,
        Operator::Duration => Value::Duration,
        Operator::BytesReceived => {
            names.received = true;
            Value::BytesReceived
        }
        Operator::BytesSent => Value::BytesSent,
        Operator::UpstreamHost => Value::UpstreamHost,
        Operator::UpstreamCluster => Value::UpstreamCluster,
        Operator::DownstreamRemoteAddress => Value::DownstreamRemoteAddress,
        Operator::DownstreamRemoteAddressWithoutPort => Value::DownstreamRemoteAddressWithoutPort,
        Operator::RouteName => Value::RouteName,
        Operator::ResponseCodeDetails => Value::ResponseCodeDetails,
        Operator::UpstreamTransportFailureReason => Value::UpstreamTransportFailureReason,
    }
}

/// Appends `value` of `r` (at most `max_len` characters) to `out`; false when it has none.
fn write_value(value: &Value, max_len: Option<usize>, r: &Record, out: &mut Vec<u8>) -> bool {
    let from = out.len();
    let present = match value {
        Value::StartTime => {
            write_rfc3339_millis(r.start, out);
            true
        }
        Value::Request(_) if r.tcp => false,
        Value::Request(fields) => fields.iter().any(|f| {
            let bytes: Option<&[u8]> = match *f {
                Field::Path => r.uri.path_and_query().map(|pq| pq.as_str().as_bytes()),
                Field::Method => Some(r.method.as_str().as_bytes()),
                Field::Scheme => Some(r.scheme.as_bytes()),
                Field::Authority(host) => r
                    .uri
                    .authority()
                    .map(|a| a.as_str().as_bytes())
                    .or_else(|| header(&r.headers, host)),
                Field::Header(i) => header(&r.headers, i),
            };
            bytes.map(|b| out.extend_from_slice(b)).is_some()
        }),
        Value::Response(positions) => positions.iter().any(|&i| {
            header(&r.headers, r.response_at + i)
                .map(|b| out.extend_from_slice(b))
                .is_some()
        }),
        Value::Protocol if r.tcp => false,
        Value::Protocol => match r.version {
            Version::HTTP_09 => write_str(out, "HTTP/0.9"),
            Version::HTTP_10 => write_str(out, "HTTP/1.0"),
            Version::HTTP_11 => write_str(out, "HTTP/1.1"),
            Version::HTTP_2 => write_str(out, "HTTP/2"),
            Version::HTTP_3 => write_str(out, "HTTP/3"),
            _ => false,
        },
        Value::ResponseCode => write_display(out, r.status),
        Value::ResponseFlags => {
            r.flags.write(out);
            true
        }
        Value::Duration => match r.finished {
            Some(end) => write_display(out, end.saturating_duration_since(r.started).as_millis()),
            None => false,
        },
        Value::BytesReceived => write_display(
            out,
            r.received.as_ref().map_or(0, |c| c.load(Ordering::Relaxed)),
        ),
        Value::BytesSent => write_display(out, r.sent),
        Value::UpstreamHost => match (&r.endpoint, r.upstream_addr) {
            (Some(e), _) => write_str(out, &e.address),
            (None, Some(addr)) => write_display(out, addr),
            (None, None) => false,
        },
        Value::UpstreamCluster => r.cluster.as_ref().is_some_and(|c| write_str(out, &c.name)),
        Value::DownstreamRemoteAddress => write_display(out, r.peer),
        Value::DownstreamRemoteAddressWithoutPort => write_display(out, r.peer.ip()),
        Value::RouteName => r.route_name.as_deref().is_some_and(|n| write_str(out, n)),
        Value::ResponseCodeDetails => r.details.as_deref().is_some_and(|n| write_str(out, n)),
        Value::UpstreamTransportFailureReason => r
            .failure_reason
            .as_deref()
            .is_some_and(|f| write_str(out, f)),
    };
    if let Some(max) = max_len {
        truncate_chars(out, from, max);
    }
    present
}

/// Writes a JSON value for `pieces`: a number or `null` for one numeric operator alone, `null`
/// for one operator without a value, else a string.
fn write_json_value(pieces: &[Piece], r: &Record, out: &mut Vec<u8>, scratch: &mut Vec<u8>) {
    scratch.clear();
    if let [Piece::Value {
        value,
        max_len,
        numeric,
    }] = pieces
    {
        if !write_value(value, *max_len, r, scratch) {
            out.extend_from_slice(b"null");
        } else if *numeric {
            out.extend_from_slice(scratch);
        } else {
            write_json_string(scratch, out);
        }
        return;
    }
    for p in pieces {
        match p {
            Piece::Text(t) => scratch.extend_from_slice(t),
            Piece::Value { value, max_len, .. } => {
                if !write_value(value, *max_len, r, scratch) {
                    scratch.push(b'-');
                }
            }
        }
    }
    write_json_string(scratch, out);
}

fn write_json_string(bytes: &[u8], out: &mut Vec<u8>) {
    let text = String::from_utf8_lossy(bytes);
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &*text);
}

fn header(values: &[Option<HeaderValue>], i: usize) -> Option<&[u8]> {
    values.get(i)?.as_ref().map(HeaderValue::as_bytes)
}

fn write_str(out: &mut Vec<u8>, s: &str) -> bool {
    out.extend_from_slice(s.as_bytes());
    true
}

fn write_display(out: &mut Vec<u8>, v: impl std::fmt::Display) -> bool {
    let _ = write!(out, "{v}");
    true
}

/// Cuts what was written after `from` to `max` characters (whole UTF-8 sequences).
fn truncate_chars(out: &mut Vec<u8>, from: usize, max: usize) {
    let mut chars = 0;
    for (i, b) in out[from..].iter().enumerate() {
        // Count the first byte of each UTF-8 sequence (any byte that is not a continuation).
        if b & 0xC0 != 0x80 {
            if chars == max {
                out.truncate(from + i);
                return;
            }
            chars += 1;
        }
    }
}

/// `2026-12-01T15:04:05.123Z`: RFC 3339 in UTC with milliseconds, Envoy's `%START_TIME%`.
pub(crate) fn write_rfc3339_millis(t: SystemTime, out: &mut Vec<u8>) {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    );
}

/// The proleptic Gregorian date of `days` since 1970-01-01, by counting 400-year eras of
/// 146 097 days from 0000-03-01 (so the leap day falls at the end of a year).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

// === the writer ===

/// Where lines go: a file, stdout, or (in tests) anything that takes bytes.
struct Sink {
    format: Format,
    out: Box<dyn Write + Send>,
    buffer: Vec<u8>,
    /// Whether the last write failed (so a failing disk is reported once, not per batch).
    failing: bool,
}

impl Sink {
    fn new(format: Format, out: Box<dyn Write + Send>) -> Self {
        Sink {
            format,
            out,
            buffer: Vec::with_capacity(16 * 1024),
            failing: false,
        }
    }

    fn write_batch(&mut self, batch: &[Box<Record>]) {
        self.buffer.clear();
        for r in batch {
            self.format.write(r, &mut self.buffer);
        }
        // One write per batch: whole lines, so files two writers append to interleave by line.
        match self
            .out
            .write_all(&self.buffer)
            .and_then(|()| self.out.flush())
        {
            Ok(()) => self.failing = false,
            Err(e) => {
                if !self.failing {
                    tracing::warn!(error = %e, "access log write failed; its lines are lost until it recovers");
                }
                self.failing = true;
            }
        }
        // A buffer that grew for a burst does not stay large.
        if self.buffer.capacity() > 1024 * 1024 {
            self.buffer = Vec::with_capacity(16 * 1024);
        }
    }
}

/// stdout, locked for each batch.
struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        std::io::stdout().lock().write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        std::io::stdout().lock().write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stdout().lock().flush()
    }
}

/// Starts the thread that formats and writes `sinks`' lines; returns its queue of `capacity`
/// records. The thread ends when every sender is gone and the queue is empty.
fn spawn_writer(mut sinks: Vec<Sink>, capacity: usize) -> std::io::Result<SyncSender<Message>> {
    let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
    std::thread::Builder::new()
        .name("gofe-access-log".into())
        .spawn(move || run_writer(&rx, &mut sinks))?;
    Ok(tx)
}

/// The writer's pause between drains of the queue while lines keep coming ...
const DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(2);
/// ... and at most, while the queue stays empty (it doubles per empty drain).
const IDLE_DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(64);

/// The writer: sleeps between drains of the queue rather than blocking on it, so that a
/// request's `try_send` never has a thread to wake (on a busy core a wake-up per request, each
/// writing one line, cost more than the rest of the request); each drain writes what
/// accumulated, in batches of [`BATCH`]. Ends when every sender is gone and the queue is
/// empty.
fn run_writer(rx: &Receiver<Message>, sinks: &mut [Sink]) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut pause = DRAIN_EVERY;
    loop {
        let mut flush = Vec::new();
        let mut gone = false;
        let mut drained = 0usize;
        loop {
            match rx.try_recv() {
                Ok(Message::Line(r)) => {
                    batch.push(r);
                    drained += 1;
                    if batch.len() == BATCH {
                        write_batch(sinks, &batch);
                        batch.clear();
                    }
                }
                Ok(Message::Flush(done)) => {
                    write_batch(sinks, &batch);
                    batch.clear();
                    flush.push(done);
                }
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    gone = true;
                    break;
                }
            }
        }
        write_batch(sinks, &batch);
        batch.clear();
        for done in flush {
            let _ = done.send(());
        }
        if gone {
            return;
        }
        pause = if drained == 0 {
            (pause * 2).min(IDLE_DRAIN_EVERY)
        } else {
            DRAIN_EVERY
        };
        std::thread::sleep(pause);
    }
}

/// Writes `batch` to every sink (nothing for an empty one); the caller clears it.
fn write_batch(sinks: &mut [Sink], batch: &[Box<Record>]) {
    if batch.is_empty() {
        return;
    }
    for sink in sinks.iter_mut() {
        sink.write_batch(batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    fn log_with(configs: &[AccessLogConfig]) -> (AccessLog, Vec<Format>) {
        let mut names = Names::default();
        let formats = configs
            .iter()
            .map(|c| Format::compile(c, &mut names).unwrap())
            .collect();
        let (queue, _rx) = std::sync::mpsc::sync_channel(1);
        let log = AccessLog {
            queue,
            dropped: IntCounter::new("d", "d").unwrap(),
            request_headers: names.request.into(),
            response_headers: names.response.into(),
            counts_received: names.received,
        };
        (log, formats)
    }

    fn request() -> http::Request<()> {
        http::Request::get("/a/b?c=d")
            .header("host", "api.example.com")
            .header("user-agent", "curl/8.5.0")
            .header("x-request-id", "abc")
            .body(())
            .unwrap()
    }

    fn record(log: &AccessLog) -> Record {
        let mut r = Record::start(log, &request(), "10.1.2.3:4567".parse().unwrap(), "http");
        r.start = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_764_601_445_123);
        r.finished = Some(r.started + std::time::Duration::from_millis(42));
        r
    }

    fn text(format: &str) -> AccessLogConfig {
        AccessLogConfig {
            format: Some(format.into()),
            ..Default::default()
        }
    }

    fn line(format: &Format, r: &Record) -> String {
        let mut out = Vec::new();
        format.write(r, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn the_default_format_reads_like_envoys() {
        let (log, formats) = log_with(&[AccessLogConfig::default()]);
        let mut r = record(&log);
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        r.respond(&log, 200, &headers);
        r.sent = 12;
        assert_eq!(
            line(&formats[0], &r),
            "[2025-12-01T15:04:05.123Z] \"GET /a/b?c=d HTTP/1.1\" 200 - 0 12 42 - \"-\" \"curl/8.5.0\" \"abc\" \"api.example.com\" \"-\"\n"
        );
    }

    #[test]
    fn values_alternatives_truncation_and_missing_ones() {
        let (log, formats) = log_with(&[text(
            "%REQ(X-MISSING?USER-AGENT):4% %RESP(X-NONE)% %DOWNSTREAM_REMOTE_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %REQ(:SCHEME)% %ROUTE_NAME% 100%%",
        )]);
        let r = record(&log);
        assert_eq!(
            line(&formats[0], &r),
            "curl - 10.1.2.3:4567 10.1.2.3 http - 100%\n"
        );
    }

    #[test]
    fn flags_are_envoys_codes_in_envoys_order() {
        let mut f = Flags::default();
        let mut out = Vec::new();
        f.write(&mut out);
        assert_eq!(out, b"-");
        f.insert(Flags::UPSTREAM_REQUEST_TIMEOUT);
        f.insert(Flags::RETRY_LIMIT_EXCEEDED);
        f.insert(Flags::NO_HEALTHY_UPSTREAM);
        out.clear();
        f.write(&mut out);
        assert_eq!(out, b"UH,UT,URX");
        let mut f = Flags::default();
        f.insert(Flags::FAULT_INJECTED);
        f.insert(Flags::RATE_LIMITED);
        f.insert(Flags::DELAY_INJECTED);
        out.clear();
        f.write(&mut out);
        assert_eq!(out, b"DI,FI,RL");
    }

    #[test]
    fn json_lines_keep_numbers_numbers_and_missing_values_null() {
        let (log, formats) = log_with(&[AccessLogConfig {
            json_format: Some(BTreeMap::from([
                ("code".into(), "%RESPONSE_CODE%".into()),
                ("path".into(), "%REQ(:PATH)%".into()),
                ("upstream".into(), "%UPSTREAM_HOST%".into()),
                ("flags".into(), "%RESPONSE_FLAGS%".into()),
                (
                    "said".into(),
                    "\"%REQ(USER-AGENT)%\" on %UPSTREAM_HOST%".into(),
                ),
            ])),
            ..Default::default()
        }]);
        let mut r = record(&log);
        r.respond(&log, 503, &HeaderMap::new());
        r.flags.insert(Flags::NO_HEALTHY_UPSTREAM);
        let text = line(&formats[0], &r);
        assert!(text.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["code"], 503);
        assert_eq!(v["path"], "/a/b?c=d");
        assert_eq!(v["upstream"], serde_json::Value::Null);
        assert_eq!(v["flags"], "UH");
        assert_eq!(v["said"], "\"curl/8.5.0\" on -");
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        let mut out = b"ab\xc3\xa9cd".to_vec();
        truncate_chars(&mut out, 1, 2);
        assert_eq!(out, "ab\u{e9}".as_bytes());
    }

    #[test]
    fn dates_are_the_civil_calendars() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(20_423), (2025, 12, 1));
        let mut out = Vec::new();
        write_rfc3339_millis(SystemTime::UNIX_EPOCH, &mut out);
        assert_eq!(out, b"1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn a_flush_returns_once_everything_before_it_is_written() {
        let written = Arc::new(Mutex::new(Vec::new()));
        let mut names = Names::default();
        let format = Format::compile(&text("%RESPONSE_CODE%"), &mut names).unwrap();
        let sink = Sink::new(format, Box::new(Shared(Arc::clone(&written))));
        let log = Arc::new(AccessLog {
            queue: spawn_writer(vec![sink], 16).unwrap(),
            dropped: IntCounter::new("dropped", "dropped").unwrap(),
            request_headers: names.request.into(),
            response_headers: names.response.into(),
            counts_received: false,
        });
        for status in [200, 503] {
            let mut r = record(&log);
            r.status = status;
            drop(LogHandle::new(Arc::clone(&log), r));
        }
        assert!(log.flush_blocking(std::time::Duration::from_secs(10)));
        assert_eq!(&*written.lock().unwrap(), b"200\n503\n");
    }

    /// A sink writing into a shared buffer.
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// A sink that tells when a write starts, then waits until it is let go.
    struct Stall {
        entered: std::sync::mpsc::Sender<()>,
        release: Arc<Mutex<std::sync::mpsc::Receiver<()>>>,
        written: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Stall {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.entered.send(());
            let _ = self.release.lock().unwrap().recv();
            self.written.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_writer_drops_lines_and_counts_them_without_blocking() {
        let (entered_tx, entered) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel();
        let written = Arc::new(Mutex::new(Vec::new()));
        let mut names = Names::default();
        let format = Format::compile(&text("%RESPONSE_CODE%"), &mut names).unwrap();
        let sink = Sink::new(
            format,
            Box::new(Stall {
                entered: entered_tx,
                release: Arc::new(Mutex::new(release_rx)),
                written: Arc::clone(&written),
            }),
        );
        let capacity = 2;
        let queue = spawn_writer(vec![sink], capacity).unwrap();
        let log = Arc::new(AccessLog {
            queue,
            dropped: IntCounter::new("dropped", "dropped").unwrap(),
            request_headers: names.request.into(),
            response_headers: names.response.into(),
            counts_received: false,
        });
        let send = |status: u16| {
            let mut r = record(&log);
            r.status = status;
            drop(LogHandle::new(Arc::clone(&log), r));
        };
        // The first line reaches the writer, which stalls in its write.
        send(200);
        entered.recv().unwrap();
        // The queue takes `capacity` more; the rest are dropped at once, and counted.
        for status in [201, 202, 203, 204, 205] {
            send(status);
        }
        assert_eq!(log.dropped.get(), 3);
        // Let every write through; the queued lines are written after the first.
        drop(release);
        drop(log);
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
            if text == "200\n201\n202\n" {
                break;
            }
            assert!(Instant::now() < deadline, "written: {text:?}");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}
