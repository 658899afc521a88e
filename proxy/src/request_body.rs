//! The body of a client's request on its way to an endpoint, and why it can fail.
//!
//! A [`RequestBody`] is what the proxy sends upstream: the client's body streamed straight
//! through (never buffered whole, held to the route's `max_request_bytes`), or nothing (a
//! retry, which only bodiless requests get). Whatever goes wrong while reading it is the
//! client's doing — it went away, reset its stream, sent a chunked body that is not one, or
//! sent more than the route allows — so its error is always a [`DownstreamError`]. That is what
//! lets an attempt say whose fault its failure was: the HTTP/1.1 codec gets this error back from
//! the body it polls, and for hyper's HTTP/2 client, which reads the body on a task of its own
//! and keeps the error to itself, a [`BodyWatch`] records it.
//!
//! A body may also be *teed* ([`BodyTee`]): each data frame that goes upstream is shown to the
//! tee as it passes, and the tee learns whether the body ended whole. That is how a mirrored
//! request's copy gets its body without the main request waiting for anything.
//!
//! A leaf of the request path, like [`crate::ctx`]: it imports nothing from the proxy.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// A request body from the client, or none.
pub(crate) struct RequestBody {
    inner: Inner,
}

enum Inner {
    Empty,
    /// Bytes the proxy holds (a mirrored copy's body), sent once.
    Full(Option<Bytes>),
    Client {
        body: Incoming,
        /// Bytes still allowed by the route's limit (`u64::MAX` without one).
        remaining: u64,
        /// Where a failure is recorded, when someone needs to learn of it that way.
        watch: Option<Arc<BodyWatch>>,
        /// Counts the bytes read, for an access log that writes them.
        received: Option<Arc<AtomicU64>>,
        /// Sees the body go by, for the copies of a mirrored request.
        tee: Option<Box<dyn BodyTee>>,
    },
}

/// What sees a client's body go by on its way upstream (a mirrored request's copies).
///
/// It is shown every data frame that passes the route's limit, then told the body ended
/// whole ([`BodyTee::end`]). A body that broke, or was dropped before its end (its upstream
/// answered or failed first, the client went away), drops its tee without a word.
pub(crate) trait BodyTee: Send {
    /// A data frame went by. `false`: the tee wants no more (it is dropped at once).
    fn data(&mut self, data: &Bytes) -> bool;
    /// The body ended whole.
    fn end(self: Box<Self>);
}

/// What broke a client's request body (each variant's cause says more).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyFault {
    /// More bytes than the route's `max_request_bytes`.
    TooLarge,
    /// Not a valid body: a bad chunk size, chunk extensions over hyper's limit, and the like
    /// (RFC 9112 §7.1). The client can still be told (400).
    Malformed,
    /// The client went away (closed or reset its connection, reset its HTTP/2 stream) before
    /// its body was complete. No response can reach it.
    Aborted,
}

/// Why a client's request body could not be read whole: always the client's fault.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DownstreamError {
    /// More bytes than the route's `max_request_bytes`.
    #[error("request body exceeds the route's max_request_bytes")]
    TooLarge,
    /// The body is not valid HTTP framing.
    #[error("malformed request body from the client")]
    Malformed(#[source] hyper::Error),
    /// The client went away mid-body.
    #[error("client went away before its request body was complete")]
    Aborted(#[source] hyper::Error),
}

impl DownstreamError {
    /// Sorts an error hyper gave while reading the client's body: a body whose framing hyper
    /// refused (`InvalidInput`, `InvalidData`, which is what its HTTP/1.1 decoder reports) is
    /// malformed; anything else (an unexpected end of the stream, a reset, an HTTP/2 stream
    /// reset) means the client went away.
    fn from_hyper(error: hyper::Error) -> Self {
        let mut cause = std::error::Error::source(&error);
        while let Some(e) = cause {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if matches!(
                    io.kind(),
                    std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
                ) {
                    return DownstreamError::Malformed(error);
                }
                break;
            }
            cause = e.source();
        }
        DownstreamError::Aborted(error)
    }

    /// Which kind of fault this is.
    pub(crate) fn fault(&self) -> BodyFault {
        match self {
            DownstreamError::TooLarge => BodyFault::TooLarge,
            DownstreamError::Malformed(_) => BodyFault::Malformed,
            DownstreamError::Aborted(_) => BodyFault::Aborted,
        }
    }
}

/// Records the first fault of a request body, for whoever cannot see the body's error itself.
#[derive(Debug, Default)]
pub(crate) struct BodyWatch(AtomicU8);

const FAULTS: [BodyFault; 3] = [
    BodyFault::TooLarge,
    BodyFault::Malformed,
    BodyFault::Aborted,
];

impl BodyWatch {
    fn record(&self, fault: BodyFault) {
        let code = FAULTS.iter().position(|f| *f == fault).map_or(0, |i| i + 1) as u8;
        let _ = self
            .0
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The fault recorded, if any.
    pub(crate) fn fault(&self) -> Option<BodyFault> {
        let code = usize::from(self.0.load(Ordering::Acquire));
        code.checked_sub(1).and_then(|i| FAULTS.get(i).copied())
    }
}

impl RequestBody {
    /// No body.
    pub(crate) fn empty() -> Self {
        RequestBody {
            inner: Inner::Empty,
        }
    }

    /// Bytes held by the proxy, sent as the whole body.
    pub(crate) fn full(bytes: Bytes) -> Self {
        RequestBody {
            inner: Inner::Full((!bytes.is_empty()).then_some(bytes)),
        }
    }

    /// The client's body, failing with [`DownstreamError::TooLarge`] past `limit` bytes (if
    /// any), and recording its fault in `watch` (if any).
    pub(crate) fn client(
        body: Incoming,
        limit: Option<u64>,
        watch: Option<Arc<BodyWatch>>,
    ) -> Self {
        RequestBody {
            inner: Inner::Client {
                body,
                remaining: limit.unwrap_or(u64::MAX),
                watch,
                received: None,
                tee: None,
            },
        }
    }

    /// Shows the body to `tee` as it goes by, when one is given (a client's body only).
    pub(crate) fn teed(mut self, with: Option<Box<dyn BodyTee>>) -> Self {
        if let Inner::Client { tee, .. } = &mut self.inner {
            *tee = with;
        }
        self
    }

    /// Counts the bytes read in `counter`, when one is given.
    pub(crate) fn counted(mut self, counter: Option<Arc<AtomicU64>>) -> Self {
        if let Inner::Client { received, .. } = &mut self.inner {
            *received = counter;
        }
        self
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = DownstreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, DownstreamError>>> {
        let (body, remaining, watch, received, tee) = match &mut self.inner {
            Inner::Client {
                body,
                remaining,
                watch,
                received,
                tee,
            } => (body, remaining, watch, received, tee),
            Inner::Full(bytes) => return Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Empty => return Poll::Ready(None),
        };
        let failed = match std::task::ready!(Pin::new(&mut *body).poll_frame(cx)) {
            None => {
                if let Some(t) = tee.take() {
                    t.end();
                }
                return Poll::Ready(None);
            }
            Some(Ok(frame)) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                if len <= *remaining {
                    *remaining -= len;
                    if let Some(received) = received {
                        received.fetch_add(len, Ordering::Relaxed);
                    }
                    if let Some(t) = tee {
                        let more = frame.data_ref().is_none_or(|d| t.data(d));
                        if !more {
                            *tee = None;
                        } else if body.is_end_stream() {
                            if let Some(t) = tee.take() {
                                t.end();
                            }
                        }
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                DownstreamError::TooLarge
            }
            Some(Err(e)) => DownstreamError::from_hyper(e),
        };
        *tee = None;
        if let Some(watch) = watch {
            watch.record(failed.fault());
        }
        Poll::Ready(Some(Err(failed)))
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Empty => true,
            Inner::Full(bytes) => bytes.is_none(),
            Inner::Client { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Empty => SizeHint::with_exact(0),
            Inner::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Inner::Client { body, .. } => body.size_hint(),
        }
    }
}

impl std::fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &self.inner {
            Inner::Empty => "empty",
            Inner::Full(_) => "full",
            Inner::Client { .. } => "client",
        };
        f.debug_struct("RequestBody").field("kind", &kind).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use http_body_util::BodyExt;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves `raw` (one request) to hyper's HTTP/1.1 server over an in-memory pipe, reads the
    /// request's body as a [`RequestBody`] with `limit`, and returns how reading it ended.
    async fn read_body(raw: &[u8], close: bool, limit: Option<u64>) -> Result<usize, BodyFault> {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tx = std::sync::Mutex::new(Some(tx));
        let serving = tokio::spawn(async move {
            let service = service_fn(move |req: http::Request<Incoming>| {
                let tx = tx.lock().unwrap().take();
                async move {
                    let watch = Arc::new(BodyWatch::default());
                    let body =
                        RequestBody::client(req.into_body(), limit, Some(Arc::clone(&watch)));
                    let read = match body.collect().await {
                        Ok(b) => Ok(b.to_bytes().len()),
                        Err(e) => {
                            assert_eq!(watch.fault(), Some(e.fault()), "the watch saw it");
                            Err(e.fault())
                        }
                    };
                    if let Some(tx) = tx {
                        let _ = tx.send(read);
                    }
                    Ok::<_, std::convert::Infallible>(http::Response::new(String::new()))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(server), service)
                .await;
        });
        let (mut read_half, mut write_half) = tokio::io::split(client);
        write_half.write_all(raw).await.unwrap();
        if close {
            write_half.shutdown().await.unwrap();
        }
        let draining = tokio::spawn(async move {
            let mut sink = Vec::new();
            let _ = read_half.read_to_end(&mut sink).await;
        });
        let read = rx.await.expect("the body was read");
        if !close {
            // The end of the stream lets hyper end the connection.
            let _ = write_half.shutdown().await;
        }
        let _ = draining.await;
        let _ = serving.await;
        read
    }

    fn chunked(size_line: &str) -> Vec<u8> {
        format!(
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{size_line}\r\nhello\r\n0\r\n\r\n"
        )
        .into_bytes()
    }

    #[tokio::test]
    async fn a_good_body_reads_whole() {
        assert_eq!(read_body(&chunked("5"), false, None).await, Ok(5));
        assert_eq!(read_body(&chunked("5;ext=1"), false, Some(5)).await, Ok(5));
    }

    #[tokio::test]
    async fn bad_chunk_sizes_are_malformed() {
        let huge_extension = format!("5;{}", "e".repeat(20 * 1024));
        for size in [
            "zz",
            "-1",
            "0x10",
            "100000000000000000",
            &huge_extension,
            "5\r\nhello\r\nzz",
        ] {
            assert_eq!(
                read_body(&chunked(size), false, None).await,
                Err(BodyFault::Malformed),
                "{size:.20}"
            );
        }
    }

    #[tokio::test]
    async fn a_body_cut_short_by_the_client_is_aborted() {
        let length = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nonly part";
        assert_eq!(read_body(length, true, None).await, Err(BodyFault::Aborted));
        let chunk =
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n40\r\nonly part";
        assert_eq!(read_body(chunk, true, None).await, Err(BodyFault::Aborted));
        let size_line = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4";
        assert_eq!(
            read_body(size_line, true, None).await,
            Err(BodyFault::Aborted)
        );
    }

    #[tokio::test]
    async fn a_body_over_the_limit_is_too_large() {
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\n\r\nabcdef";
        assert_eq!(
            read_body(raw, false, Some(5)).await,
            Err(BodyFault::TooLarge)
        );
        assert_eq!(read_body(raw, false, Some(6)).await, Ok(6));
    }

    #[test]
    fn a_watch_keeps_the_first_fault() {
        let w = BodyWatch::default();
        assert_eq!(w.fault(), None);
        w.record(BodyFault::Aborted);
        w.record(BodyFault::TooLarge);
        assert_eq!(w.fault(), Some(BodyFault::Aborted));
    }

    #[test]
    fn an_empty_body_ends_at_once() {
        let b = RequestBody::empty();
        assert!(b.is_end_stream());
        assert_eq!(b.size_hint().exact(), Some(0));
    }
}
