//! The one body type the proxy moves in both directions.
//!
//! A request or response body is either streamed straight through from the other side
//! ([`hyper::body::Incoming`], never buffered whole), a small local reply, or empty. A response
//! body also carries the guards of the request it belongs to, so "active request" gauges fall
//! when the last byte has gone to the client (or the client went away), not when headers did.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use prometheus::IntGauge;
use tokio::sync::OwnedSemaphorePermit;

use crate::cluster::Admission;
use crate::upstream::UpstreamBody;

/// The error a body yields: the peer's, or "too large" from a size limit.
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
    pub(crate) stream: Option<crate::forward::StreamGuard>,
}

enum Inner {
    Empty,
    Full(Option<Bytes>),
    Stream(Incoming),
    /// A response body read straight from an HTTP/1.1 upstream connection.
    Upstream(UpstreamBody),
    Limited {
        body: Incoming,
        remaining: u64,
        exceeded: Arc<AtomicBool>,
    },
}

/// A body went over its size limit.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the route's max_request_bytes")]
pub(crate) struct TooLarge;

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

    /// A streamed body that fails with [`TooLarge`] (and sets `exceeded`) past `limit` bytes.
    pub(crate) fn limited(incoming: Incoming, limit: u64, exceeded: Arc<AtomicBool>) -> Self {
        Self::from_inner(Inner::Limited {
            body: incoming,
            remaining: limit,
            exceeded,
        })
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
        self.poll_inner(cx)
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
            Inner::Stream(incoming) | Inner::Limited { body: incoming, .. } => incoming.size_hint(),
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
            Inner::Upstream(body) => body.poll_frame(cx),
            Inner::Limited {
                body,
                remaining,
                exceeded,
            } => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                    if len > *remaining {
                        exceeded.store(true, Ordering::Release);
                        return Poll::Ready(Some(Err(TooLarge.into())));
                    }
                    *remaining -= len;
                    Poll::Ready(Some(Ok(frame)))
                }
                other => other.map_err(Into::into),
            },
        }
    }

    fn inner_is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Empty => true,
            Inner::Full(bytes) => bytes.is_none(),
            Inner::Stream(incoming) | Inner::Limited { body: incoming, .. } => {
                incoming.is_end_stream()
            }
            Inner::Upstream(body) => body.is_complete(),
        }
    }
}

impl std::fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.inner {
            Inner::Empty => "empty",
            Inner::Full(_) => "full",
            Inner::Stream(_) | Inner::Limited { .. } | Inner::Upstream(_) => "stream",
        };
        f.debug_struct("ProxyBody").field("kind", &kind).finish()
    }
}
