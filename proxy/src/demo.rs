//! A tiny HTTP backend for `gofe up`, benchmarks and tests.
//!
//! It speaks HTTP/1.1 and h2c and answers every request with `hello from NAME` and an
//! `x-backend: NAME` header, so a client can see where the proxy sent it. Request headers steer it:
//! `x-demo-status: 503` picks the status, `x-demo-delay: 250ms` delays the answer. `/echo`
//! streams the request body back as it arrives; `/headers` lists the request headers it received.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::body::ProxyBody;

/// A running demo backend.
pub struct DemoBackend {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl DemoBackend {
    /// Binds `addr` and starts serving as `name`. Must be called inside a Tokio runtime.
    pub async fn start(addr: SocketAddr, name: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let name: Arc<HeaderValue> = Arc::new(
            HeaderValue::from_str(name)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
        );
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let http = Arc::new(auto::Builder::new(TokioExecutor::new()));
            loop {
                let tcp = tokio::select! {
                    _ = stopped.changed() => break,
                    accepted = listener.accept() => match accepted {
                        Ok((tcp, _)) => tcp,
                        Err(_) => continue,
                    },
                };
                let _ = tcp.set_nodelay(true);
                let name = Arc::clone(&name);
                let http = Arc::clone(&http);
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| answer(req, Arc::clone(&name)));
                    let conn = http.serve_connection(TokioIo::new(tcp), service);
                    tokio::pin!(conn);
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        _ = stopped.changed() => {}
                    }
                });
            }
        });
        Ok(DemoBackend { addr, stop, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and closes open connections.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn answer(
    req: Request<Incoming>,
    name: Arc<HeaderValue>,
) -> Result<Response<ProxyBody>, Infallible> {
    let status = req
        .headers()
        .get("x-demo-status")
        .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    if let Some(delay) = req
        .headers()
        .get("x-demo-delay")
        .and_then(|v| gofe_core::duration::parse(v.to_str().ok()?).ok())
    {
        tokio::time::sleep(delay).await;
    }
    let body = match req.uri().path() {
        "/echo" => ProxyBody::stream(req.into_body()),
        "/headers" => {
            let mut text = String::new();
            for (k, v) in req.headers() {
                text.push_str(k.as_str());
                text.push_str(": ");
                text.push_str(&String::from_utf8_lossy(v.as_bytes()));
                text.push('\n');
            }
            ProxyBody::full(text)
        }
        _ => {
            let mut text = b"hello from ".to_vec();
            text.extend_from_slice(name.as_bytes());
            text.push(b'\n');
            ProxyBody::full(Bytes::from(text))
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert("x-backend", HeaderValue::clone(&name));
    Ok(response)
}
