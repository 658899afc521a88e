//! Shared pieces of the wire tests: a proxy on 127.0.0.1, demo backends, and clients.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use gofe_proxy::demo::DemoBackend;
use gofe_proxy::Proxy;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// A proxy serving one listener on an ephemeral port.
pub struct Harness {
    pub proxy: Proxy,
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
}

impl Harness {
    /// Starts a proxy on `yaml`, whose listener must be `127.0.0.1:0`.
    pub async fn start(yaml: &str) -> Harness {
        let proxy = Proxy::new();
        let config = gofe_proxy::config::parse("test.yaml", yaml).expect("test config is valid");
        proxy
            .apply(config, "test.yaml", Duration::from_secs(5))
            .await
            .expect("test config applies");
        let addrs = proxy.listener_addrs().await;
        let addr = *addrs
            .get(&"127.0.0.1:0".parse().unwrap())
            .expect("listener on 127.0.0.1:0");
        let admin = proxy.admin_addr().await;
        Harness { proxy, addr, admin }
    }

    /// Applies another configuration text.
    pub async fn apply(&self, yaml: &str) -> u64 {
        let config = gofe_proxy::config::parse("test.yaml", yaml).expect("test config is valid");
        self.proxy
            .apply(config, "test.yaml", Duration::from_secs(5))
            .await
            .expect("test config applies")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

/// Starts demo backends named `names`; returns them and a map `{B0}`, `{B1}`, … → address.
pub async fn backends(names: &[&str]) -> (Vec<DemoBackend>, HashMap<String, String>) {
    let mut started = Vec::new();
    let mut vars = HashMap::new();
    for (i, name) in names.iter().enumerate() {
        let b = DemoBackend::start("127.0.0.1:0".parse().unwrap(), name)
            .await
            .expect("backend binds");
        vars.insert(format!("{{B{i}}}"), b.addr().to_string());
        started.push(b);
    }
    (started, vars)
}

/// Replaces `{B0}`-style placeholders.
pub fn fill(template: &str, vars: &HashMap<String, String>) -> String {
    let mut out = template.to_owned();
    for (k, v) in vars {
        out = out.replace(k, v);
    }
    out
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn h1_client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2c_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// A finished response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub version: http::Version,
}

impl Reply {
    pub fn backend(&self) -> &str {
        self.headers
            .get("x-backend")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// GET `url` with a Host header and extra headers.
pub async fn get(client: &TestClient, url: &str, host: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = Request::get(url).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(client, req.body(Full::new(Bytes::new())).unwrap()).await
}

pub async fn send(client: &TestClient, req: Request<Full<Bytes>>) -> Reply {
    let resp = client
        .request(req)
        .await
        .expect("request reaches the proxy");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body completes").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
        version: parts.version,
    }
}

/// The value of one sample line of the admin `/metrics` output, e.g.
/// `gofe_upstream_requests_total{cluster="a",code_class="2xx",endpoint="127.0.0.1:1"}`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Reads one response with a `Content-Length` body from `s`; returns its status.
pub async fn read_status(s: &mut tokio::net::TcpStream) -> u16 {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + length {
                return head.split(' ').nth(1).unwrap().parse().unwrap();
            }
        }
        let n = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncReadExt::read(s, &mut chunk),
        )
        .await
        .expect("a response in time")
        .unwrap();
        assert!(n > 0, "closed before a whole response: {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A listener on 127.0.0.1:0 whose one route sends every request to the cluster `name`:
/// `listener_fields` are added to the listener (e.g. `idle_timeout: "200ms"`, or nothing),
/// `cluster_fields` make up the rest of the cluster entry (its endpoints, at least).
pub fn catch_all(name: &str, listener_fields: &str, cluster_fields: &str) -> String {
    let listener_fields = if listener_fields.is_empty() {
        String::new()
    } else {
        format!("    {listener_fields}\n")
    };
    format!(
        r#"
listeners:
  - address: "127.0.0.1:0"
{listener_fields}    filters:
      - type: router
        config:
          virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
                - match: {{ prefix: "/" }}
                  route: {{ cluster: {name} }}
clusters:
  - {{ name: {name}, {cluster_fields} }}
"#
    )
}

/// An HTTP/1.1 backend on 127.0.0.1 that records the head of every request it gets (bodiless
/// requests only) and answers each `200` with `x-backend: NAME`, keeping connections alive.
/// `stop` ends it and every connection it has.
pub struct Capture {
    pub addr: std::net::SocketAddr,
    heads: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Capture {
    pub async fn start(name: &str) -> Capture {
        Capture::start_failing(name, 0).await
    }

    /// Like [`Capture::start`], but its first `failures` requests are answered `503`.
    pub async fn start_failing(name: &str, failures: usize) -> Capture {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = std::sync::Arc::clone(&heads);
        let reply = format!("HTTP/1.1 200 OK\r\nx-backend: {name}\r\ncontent-length: 0\r\n\r\n");
        let failed = format!(
            "HTTP/1.1 503 Service Unavailable\r\nx-backend: {name}\r\ncontent-length: 0\r\n\r\n"
        );
        let left = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(failures));
        let task = tokio::spawn(async move {
            // Dropped with this task (on stop): every connection goes with it.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    continue;
                };
                let recorded = std::sync::Arc::clone(&recorded);
                let reply = reply.clone();
                let failed = failed.clone();
                let left = std::sync::Arc::clone(&left);
                conns.spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                            buf.drain(..end + 4);
                            recorded.lock().unwrap().push(head);
                            let fail = left
                                .fetch_update(
                                    std::sync::atomic::Ordering::SeqCst,
                                    std::sync::atomic::Ordering::SeqCst,
                                    |n| n.checked_sub(1),
                                )
                                .is_ok();
                            let answer = if fail { &failed } else { &reply };
                            if s.write_all(answer.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        Capture { addr, heads, task }
    }

    /// The request target of each request received so far, in order.
    pub fn targets(&self) -> Vec<String> {
        self.heads
            .lock()
            .unwrap()
            .iter()
            .map(|head| {
                let line = head.lines().next().unwrap_or_default();
                line.split(' ').nth(1).unwrap_or_default().to_owned()
            })
            .collect()
    }

    /// The `Host` values of each request received so far, in order.
    pub fn hosts(&self) -> Vec<Vec<String>> {
        self.header("host")
    }

    /// The values of header `wanted` of each request received so far, in order.
    pub fn header(&self, wanted: &str) -> Vec<Vec<String>> {
        self.heads
            .lock()
            .unwrap()
            .iter()
            .map(|head| {
                head.lines()
                    .filter_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case(wanted)
                            .then(|| value.trim().to_owned())
                    })
                    .collect()
            })
            .collect()
    }

    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// A fresh temporary folder.
pub fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "gofe-test-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
