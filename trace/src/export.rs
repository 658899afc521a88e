//! The exporter: a bounded queue the request path hands spans to without waiting, and a task
//! that batches them and POSTs OTLP/HTTP protobuf to the collector.
//!
//! ```text
//!   request path                        exporter task (one per tracer)
//!   ────────────                        ─────────────
//!   span ended ─▶ try_send ──▶ queue ──▶ drain every few ms ─▶ batch ─▶ full batch, or its
//!                 (full: dropped,        (no wake-up per span)          oldest span waited
//!                  counted)                                             schedule_delay ─▶ POST
//! ```
//!
//! The task sleeps between drains instead of waiting on the queue, so that a request's
//! `try_send` never has a task to wake (the access log learned this the hard way: a wake-up
//! per request cost more than the request). An export that fails (refused, timed out, not
//! 2xx) is not retried: its spans are counted as failed, and the next batch is tried anew.

use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prometheus::IntCounter;

use crate::span::Span;

/// Where and how an exporter sends.
#[derive(Clone, Debug)]
pub struct ExporterConfig {
    /// The collector's URL (`http://host:port/v1/traces`).
    pub uri: http::Uri,
    /// Time allowed for one export.
    pub timeout: Duration,
    /// The `service.name` of the spans.
    pub service_name: String,
    /// Most spans waiting; more are dropped.
    pub queue: usize,
    /// Most spans per export.
    pub max_batch: usize,
    /// Longest a span waits for its batch.
    pub schedule_delay: Duration,
}

/// The exporter's counters (the proxy labels them by listener).
#[derive(Clone, Debug)]
pub struct Counters {
    /// Spans the collector accepted.
    pub exported: IntCounter,
    /// Spans dropped because the queue was full.
    pub dropped: IntCounter,
    /// Spans whose export failed.
    pub failed: IntCounter,
}

enum Message {
    Span(Span),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The request path's end of an exporter. Dropping the last one lets the task export what it
/// holds and end.
pub struct Exporter {
    queue: SyncSender<Message>,
    dropped: IntCounter,
}

impl Exporter {
    /// Starts the exporter task (on the current Tokio runtime).
    pub fn start(config: ExporterConfig, counters: Counters) -> Self {
        let (queue, rx) = std::sync::mpsc::sync_channel(config.queue.max(1));
        let dropped = counters.dropped.clone();
        tokio::spawn(run(rx, config, counters));
        Exporter { queue, dropped }
    }

    /// Hands a finished span to the exporter, or drops it (counted) when the queue is full.
    pub fn send(&self, span: Span) {
        match self.queue.try_send(Message::Span(span)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }

    /// Waits (at most `timeout`) until every span queued before this call was exported (or
    /// its export failed); false if that did not happen in time.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let (done, flushed) = tokio::sync::oneshot::channel();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut message = Message::Flush(done);
        loop {
            match self.queue.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return true,
                Err(TrySendError::Full(m)) => {
                    if tokio::time::Instant::now() >= deadline {
                        return false;
                    }
                    message = m;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
        tokio::time::timeout_at(deadline, flushed).await.is_ok()
    }
}

/// The pause between drains while spans keep coming ...
const DRAIN_EVERY: Duration = Duration::from_millis(5);
/// ... and at most, while none come (it doubles per empty drain).
const IDLE_DRAIN_EVERY: Duration = Duration::from_millis(100);

async fn run(rx: Receiver<Message>, config: ExporterConfig, counters: Counters) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut post = Post {
        client,
        config: &config,
        counters: &counters,
        failing: false,
    };
    let mut batch: Vec<Span> = Vec::with_capacity(config.max_batch.min(4096));
    let mut oldest: Option<Instant> = None;
    let idle = IDLE_DRAIN_EVERY.min(config.schedule_delay).max(DRAIN_EVERY);
    let mut pause = DRAIN_EVERY;
    loop {
        let mut drained = 0usize;
        let mut flushes = Vec::new();
        let mut gone = false;
        loop {
            match rx.try_recv() {
                Ok(Message::Span(s)) => {
                    drained += 1;
                    oldest.get_or_insert_with(Instant::now);
                    batch.push(s);
                    if batch.len() >= config.max_batch {
                        post.send(&mut batch).await;
                        oldest = None;
                    }
                }
                Ok(Message::Flush(done)) => {
                    post.send(&mut batch).await;
                    oldest = None;
                    flushes.push(done);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    gone = true;
                    break;
                }
            }
        }
        if gone || oldest.is_some_and(|t| t.elapsed() >= config.schedule_delay) {
            post.send(&mut batch).await;
            oldest = None;
        }
        for done in flushes {
            let _ = done.send(());
        }
        if gone {
            return;
        }
        pause = if drained == 0 {
            (pause * 2).min(idle)
        } else {
            DRAIN_EVERY
        };
        tokio::time::sleep(pause).await;
    }
}

struct Post<'a> {
    client: Client<HttpConnector, Full<Bytes>>,
    config: &'a ExporterConfig,
    counters: &'a Counters,
    /// Whether the last export failed (so a down collector is reported once, not per batch).
    failing: bool,
}

impl Post<'_> {
    /// Exports `batch` (in pieces of at most `max_batch`) and empties it.
    async fn send(&mut self, batch: &mut Vec<Span>) {
        let max = self.config.max_batch.max(1);
        for chunk in batch.chunks(max) {
            let body = crate::otlp::encode(&self.config.service_name, chunk);
            let n = chunk.len() as u64;
            match self.post(body).await {
                Ok(()) => {
                    self.counters.exported.inc_by(n);
                    if self.failing {
                        tracing::info!(collector = %self.config.uri, "span export recovered");
                    }
                    self.failing = false;
                }
                Err(why) => {
                    self.counters.failed.inc_by(n);
                    if !self.failing {
                        tracing::warn!(collector = %self.config.uri, error = %why, spans = n, "span export failed; its spans are lost until the collector answers");
                    }
                    self.failing = true;
                }
            }
        }
        batch.clear();
        if batch.capacity() > 16 * 1024 {
            batch.shrink_to(4096);
        }
    }

    async fn post(&self, body: Vec<u8>) -> Result<(), String> {
        let request = http::Request::post(self.config.uri.clone())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| error_chain(&e))?;
            let status = response.status();
            // Read the answer whole, so the connection can be used again.
            let _ = response.into_body().collect().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("collector answered {status}"))
            }
        };
        match tokio::time::timeout(self.config.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {:?}", self.config.timeout)),
        }
    }
}

/// An error and its causes, `outer: inner: innermost`.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        next = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::{Kind, SpanId, TraceId};

    fn span() -> Span {
        Span {
            trace_id: TraceId::random(),
            span_id: SpanId::random(),
            parent: None,
            trace_state: None,
            name: "GET".into(),
            kind: Kind::Server,
            start_unix_nanos: 1,
            end_unix_nanos: 2,
            attributes: Vec::new(),
            error: None,
        }
    }

    fn counters() -> Counters {
        let c = |n: &str| IntCounter::new(n, n).unwrap();
        Counters {
            exported: c("exported"),
            dropped: c("dropped"),
            failed: c("failed"),
        }
    }

    /// A collector that answers every POST 200 and records how many spans each carried.
    async fn collector() -> (
        http::Uri,
        Arc<Mutex<Vec<usize>>>,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("http://{}/v1/traces", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let batches = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&batches);
        let task = tokio::spawn(async move {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 8192];
            loop {
                if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    if buf.len() >= end + 4 + len {
                        let body: Vec<u8> = buf.drain(..end + 4 + len).skip(end + 4).collect();
                        let spans = crate::otlp::decode_spans(&body).unwrap();
                        seen.lock().unwrap().push(spans.len());
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                        if s.write_all(ok).await.is_err() {
                            return;
                        }
                        continue;
                    }
                }
                match s.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
        });
        (uri, batches, task)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_batch_goes_without_waiting_for_the_delay() {
        let (uri, batches, task) = collector().await;
        let c = counters();
        let exporter = Exporter::start(
            ExporterConfig {
                uri,
                timeout: Duration::from_secs(30),
                service_name: "t".into(),
                queue: 64,
                max_batch: 2,
                // Never, within this test: what is sent went because its batch was full.
                schedule_delay: Duration::from_secs(3600),
            },
            c.clone(),
        );
        for _ in 0..4 {
            exporter.send(span());
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while batches.lock().unwrap().len() < 2 {
            assert!(Instant::now() < deadline, "two full batches expected");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(*batches.lock().unwrap(), [2, 2]);
        // An odd one waits for its batch, or for a flush.
        exporter.send(span());
        assert!(exporter.flush(Duration::from_secs(30)).await);
        assert_eq!(*batches.lock().unwrap(), [2, 2, 1]);
        assert_eq!(
            (c.exported.get(), c.dropped.get(), c.failed.get()),
            (5, 0, 0)
        );
        task.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreachable_collector_counts_its_spans_as_failed() {
        // A port nothing listens on (bound, then closed).
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let c = counters();
        let exporter = Exporter::start(
            ExporterConfig {
                uri: format!("http://{addr}/v1/traces").parse().unwrap(),
                timeout: Duration::from_secs(30),
                service_name: "t".into(),
                queue: 64,
                max_batch: 512,
                schedule_delay: Duration::from_secs(3600),
            },
            c.clone(),
        );
        for _ in 0..3 {
            exporter.send(span());
        }
        assert!(exporter.flush(Duration::from_secs(30)).await);
        assert_eq!((c.exported.get(), c.failed.get()), (0, 3));
    }
}
