//! The one body type the proxy moves in both directions.
//!
//! A request or response body is either streamed straight through from the other side
//! ([`hyper::body::Incoming`], never buffered whole), a small local reply, or empty. A response
//! body also carries the guards of the request it belongs to, so "active request" gauges fall
//! when the last byte has gone to the client (or the client went away), not when headers did.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use prometheus::IntGauge;

/// A streamed, local or empty HTTP body.
pub struct ProxyBody {
    inner: Inner,
    _guards: [Option<ActiveGuard>; 2],
}

enum Inner {
    Empty,
    Full(Option<Bytes>),
    Stream(Incoming),
}

/// Decrements a gauge when dropped.
pub(crate) struct ActiveGuard(IntGauge);

impl ActiveGuard {
    /// Increments `gauge` now and decrements it when the guard is dropped.
    pub(crate) fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        ActiveGuard(gauge.clone())
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
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

    fn from_inner(inner: Inner) -> Self {
        ProxyBody {
            inner,
            _guards: [None, None],
        }
    }

    /// Keeps `guard` alive until this body is finished or dropped.
    pub(crate) fn with_guard(mut self, guard: ActiveGuard) -> Self {
        if let Some(slot) = self._guards.iter_mut().find(|g| g.is_none()) {
            *slot = Some(guard);
        }
        self
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.inner {
            Inner::Empty => Poll::Ready(None),
            Inner::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Stream(incoming) => Pin::new(incoming).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Empty => true,
            Inner::Full(bytes) => bytes.is_none(),
            Inner::Stream(incoming) => incoming.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Empty => SizeHint::with_exact(0),
            Inner::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Inner::Stream(incoming) => incoming.size_hint(),
        }
    }
}

impl std::fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.inner {
            Inner::Empty => "empty",
            Inner::Full(_) => "full",
            Inner::Stream(_) => "stream",
        };
        f.debug_struct("ProxyBody").field("kind", &kind).finish()
    }
}
