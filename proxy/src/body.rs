//! The body of every response the proxy sends a client.
//!
//! A response body is either streamed straight through from an endpoint (an HTTP/1.1
//! [`UpstreamBody`] read off the proxy's own connection, or hyper's [`Incoming`] from an
//! HTTP/2 one; never buffered whole), a small local reply, or empty. It also carries the guards
//! of the request it belongs to, so "active request" gauges fall when the last byte has gone to
//! the client (or the client went away), not when headers did. Request bodies on their way to
//! an endpoint are [`crate::request_body::RequestBody`].

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::OwnedSemaphorePermit;

use crate::access_log::LogHandle;
use crate::ctx::{ActiveGuard, Admission, StreamGuard};
use crate::fault::FaultGuard;
use crate::tracer::TraceHandle;
use crate::upstream::UpstreamBody;

/// The error a body yields: the endpoint's (or, for a demo backend's echo, the client's).
pub(crate) type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A streamed, local or empty HTTP body.
pub struct ProxyBody {
    inner: Inner,
    guards: Guards,
}

/// What a request holds until its response body is finished (or dropped).
#[derive(Default)]
pub(crate) struct Guards {
    pub(crate) listener: Option<ActiveGuard>,
    pub(crate) endpoint: Option<ActiveGuard>,
    pub(crate) cluster: Option<Admission>,
    pub(crate) slot: Option<OwnedSemaphorePermit>,
    /// The request's place in its connection's in-flight count (for the idle timeout).
    pub(crate) stream: Option<StreamGuard>,
    /// The request's access-log record, written when the body is done (only with a log).
    pub(crate) log: Option<LogHandle>,
    /// The request's trace, whose spans end when the body is done (only with tracing).
    pub(crate) trace: Option<TraceHandle>,
    /// The request's place among its listener's active faults (only when faulted).
    pub(crate) fault: Option<FaultGuard>,
    /// The routed request's duration, observed when the body is done.
    pub(crate) timer: Option<RequestTimer>,
}

/// Observes the time since `start` in `histogram` when dropped: when the response body has
/// been sent whole, or abandoned.
pub(crate) struct RequestTimer {
    pub(crate) histogram: prometheus::Histogram,
    pub(crate) start: std::time::Instant,
}

impl Drop for RequestTimer {
    fn drop(&mut self) {
        self.histogram.observe(self.start.elapsed().as_secs_f64());
    }
}

enum Inner {
    Empty,
    Full(Option<Bytes>),
    Stream(Incoming),
    /// A response body read straight from an HTTP/1.1 upstream connection.
    Upstream(UpstreamBody),
}

impl ProxyBody {
    /// An empty body.
    pub fn empty() -> Self {
        Self::from_inner(Inner::Empty)
    }

    /// A body of fixed bytes.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self::from_inner(Inner::Full(Some(bytes.into())))
    }

    /// A body streamed from the other side of the proxy.
    pub fn stream(incoming: Incoming) -> Self {
        Self::from_inner(Inner::Stream(incoming))
    }

    /// A response body read from an HTTP/1.1 upstream connection.
    pub(crate) fn upstream(body: UpstreamBody) -> Self {
        Self::from_inner(Inner::Upstream(body))
    }

    fn from_inner(inner: Inner) -> Self {
        ProxyBody {
            inner,
            guards: Guards::default(),
        }
    }

    /// The guards this body keeps alive until it is finished or dropped.
    pub(crate) fn guards(&mut self) -> &mut Guards {
        &mut self.guards
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let polled = self.poll_inner(cx);
        if let Some(log) = &mut self.guards.log {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => log.sent(frame.data_ref().map_or(0, Bytes::len)),
                // The endpoint's body broke mid-way (the proxy's bodies cannot).
                Poll::Ready(Some(Err(_))) => log.upstream_body_failed(),
                Poll::Ready(None) => log.ended(),
                _ => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner_is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Empty => SizeHint::with_exact(0),
            Inner::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Inner::Stream(incoming) => incoming.size_hint(),
            Inner::Upstream(body) => body
                .exact_len()
                .map_or_else(SizeHint::default, SizeHint::with_exact),
        }
    }
}

impl ProxyBody {
    fn poll_inner(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.inner {
            Inner::Empty => Poll::Ready(None),
            Inner::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Stream(incoming) => Pin::new(incoming).poll_frame(cx).map_err(Into::into),
            Inner::Upstream(body) => body.poll_frame(cx).map_err(Into::into),
        }
    }

    fn inner_is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Empty => true,
            Inner::Full(bytes) => bytes.is_none(),
            Inner::Stream(incoming) => incoming.is_end_stream(),
            Inner::Upstream(body) => body.is_complete(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // Dropped before its end: the client went away (or hyper gave up on it).
        if self.guards.log.is_some() && !self.inner_is_end_stream() {
            if let Some(log) = &mut self.guards.log {
                log.cut_short();
            }
        }
    }
}

impl std::fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.inner {
            Inner::Empty => "empty",
            Inner::Full(_) => "full",
            Inner::Stream(_) | Inner::Upstream(_) => "stream",
        };
        f.debug_struct("ProxyBody").field("kind", &kind).finish()
    }
}
