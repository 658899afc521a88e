//! A finished span, as the exporter receives it.

use std::borrow::Cow;
use std::sync::Arc;

use crate::{SpanId, TraceId};

/// Which side of a call a span is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A request received (the proxy's downstream side).
    Server,
    /// A request sent (one upstream attempt).
    Client,
    /// Work inside one process (the controller's decision steps).
    Internal,
}

/// An attribute's value. Strings are shared or static where they can be, so that a span costs
/// as few copies as it can on the request path; the exporter copies them into OTLP.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A string known at compile time.
    Static(&'static str),
    /// A string the configuration already holds (a cluster or route name).
    Shared(Arc<str>),
    /// A string of this request.
    Owned(Box<str>),
    /// A number.
    Int(i64),
}

/// A finished span.
#[derive(Clone, Debug, PartialEq)]
pub struct Span {
    /// Its trace.
    pub trace_id: TraceId,
    /// Its id.
    pub span_id: SpanId,
    /// Its parent's id; `None` for a trace's root.
    pub parent: Option<SpanId>,
    /// The W3C `tracestate` it was received with, if any.
    pub trace_state: Option<Box<str>>,
    /// The operation (for HTTP: the method).
    pub name: Cow<'static, str>,
    /// Server or client.
    pub kind: Kind,
    /// When it started, nanoseconds since the Unix epoch.
    pub start_unix_nanos: u64,
    /// When it ended, nanoseconds since the Unix epoch.
    pub end_unix_nanos: u64,
    /// Attributes by OpenTelemetry's semantic-convention names (and `gofe.*`).
    pub attributes: Vec<(&'static str, Value)>,
    /// Set when the span failed (status ERROR), with why.
    pub error: Option<Cow<'static, str>>,
}
