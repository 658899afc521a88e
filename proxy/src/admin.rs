//! The admin listener: `/metrics`, `/ready`, `/config_dump`.
//!
//! Plain HTTP/1.1 on an operator-chosen address (keep it off public networks). It reads the
//! proxy's shared state and never blocks the data plane.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::body::ProxyBody;
use crate::Shared;

/// A bound, serving admin listener.
pub(crate) struct RunningAdmin {
    pub(crate) local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RunningAdmin {
    pub(crate) fn bind(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<Self> {
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(std_listener)?;
        let local_addr = listener.local_addr()?;
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    _ = stopped.changed() => break,
                    accepted = listener.accept() => match accepted {
                        Ok(pair) => pair,
                        Err(e) => {
                            tracing::warn!(error = %e, "admin accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let shared = Arc::clone(&shared);
                        async move { Ok::<_, Infallible>(handle(&shared, req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Ok(RunningAdmin {
            local_addr,
            stop,
            task,
        })
    }

    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn handle(shared: &Shared, req: Request<Incoming>) -> Response<ProxyBody> {
    const TEXT: &str = "text/plain; charset=utf-8";
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "use GET\n");
    }
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            shared.metrics.render(),
        ),
        "/ready" => {
            if shared.draining.load(Ordering::Relaxed) {
                reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "DRAINING\n")
            } else if shared.active.load().version == 0 {
                reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, "NO CONFIG\n")
            } else {
                reply(StatusCode::OK, TEXT, "LIVE\n")
            }
        }
        "/config_dump" => {
            let active = shared.active.load();
            let body = serde_json::to_vec_pretty(&**active)
                .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}").into_bytes());
            reply(StatusCode::OK, "application/json", body)
        }
        "/" => reply(
            StatusCode::OK,
            TEXT,
            "gofe proxy admin\n  /metrics      Prometheus metrics\n  /ready        readiness (200 LIVE, 503 when draining)\n  /config_dump  active configuration and its version (JSON)\n",
        ),
        _ => reply(StatusCode::NOT_FOUND, TEXT, "not found (see /)\n"),
    }
}
