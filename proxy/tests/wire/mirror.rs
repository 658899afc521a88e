//! Request mirroring over real sockets: the copy a shadow backend receives (the `-shadow` host,
//! method, path, headers, body), main requests untouched by a shadow that holds its requests
//! or fails them, `runtime_fraction` within a binomial bound, bodies over the bound not
//! mirrored, the per-cluster in-flight bound, and `gofe_shadow_requests_total`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use crate::support::*;

/// Liveness bound of the waits below (not a pass/fail threshold: a healthy run takes
/// milliseconds).
const PATIENCE: Duration = Duration::from_secs(20);

/// Envoy's bound on a mirrored body, as the model states it.
const BOUND: usize = gofe_proxy::config::mirror::MAX_MIRRORED_BODY_BYTES;

/// One request as the shadow backend saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    /// The request's authority: HTTP/2's `:authority`, or else its `Host` header.
    authority: String,
    path: String,
    version: http::Version,
    headers: HeaderMap,
    body: Bytes,
}

/// What the shadow backend does once it has read a request whole.
#[derive(Clone, Copy)]
enum Mode {
    /// Answer at once with this status.
    Answer(u16),
    /// Hold the request until [`ShadowBackend::release`], then answer 200.
    Hold,
}

/// An HTTP/1.1 and h2c backend on 127.0.0.1 that records every request (head and whole body).
struct ShadowBackend {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    arrived: watch::Receiver<usize>,
    answered: Arc<AtomicUsize>,
    release: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl ShadowBackend {
    async fn start(mode: Mode) -> ShadowBackend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (arrivals, arrived) = watch::channel(0usize);
        let arrivals = Arc::new(arrivals);
        let answered = Arc::new(AtomicUsize::new(0));
        let (release, released) = watch::channel(false);
        let (s, a) = (Arc::clone(&seen), Arc::clone(&answered));
        let task = tokio::spawn(async move {
            // Dropped with this task (on stop): every connection goes with it.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (seen, answered) = (Arc::clone(&s), Arc::clone(&a));
                let (arrivals, released) = (Arc::clone(&arrivals), released.clone());
                let service = service_fn(move |req: Request<Incoming>| {
                    let (seen, answered) = (Arc::clone(&seen), Arc::clone(&answered));
                    let (arrivals, mut released) = (Arc::clone(&arrivals), released.clone());
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let authority = match parts.uri.authority() {
                            Some(a) => a.to_string(),
                            None => parts
                                .headers
                                .get("host")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned(),
                        };
                        seen.lock().unwrap().push(Seen {
                            method: parts.method.to_string(),
                            authority,
                            path: parts
                                .uri
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_default(),
                            version: parts.version,
                            headers: parts.headers,
                            body,
                        });
                        arrivals.send_modify(|n| *n += 1);
                        let status = match mode {
                            Mode::Answer(status) => status,
                            Mode::Hold => {
                                let _ = released.wait_for(|r| *r).await;
                                200
                            }
                        };
                        answered.fetch_add(1, Ordering::SeqCst);
                        let mut resp = Response::new(Full::new(Bytes::from_static(b"shadow")));
                        *resp.status_mut() = StatusCode::from_u16(status).unwrap();
                        Ok::<_, Infallible>(resp)
                    }
                });
                conns.spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        ShadowBackend {
            addr,
            seen,
            arrived,
            answered,
            release,
            task,
        }
    }

    /// Waits (bounded) until `n` requests have arrived; returns them.
    async fn wait_seen(&self, n: usize) -> Vec<Seen> {
        let mut arrived = self.arrived.clone();
        tokio::time::timeout(PATIENCE, arrived.wait_for(|k| *k >= n))
            .await
            .unwrap_or_else(|_| panic!("{} of {n} copies arrived", *self.arrived.borrow()))
            .unwrap();
        self.seen.lock().unwrap().clone()
    }

    fn seen_count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }

    /// Lets every held request (and any later one) be answered.
    fn release(&self) {
        let _ = self.release.send(true);
    }

    async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// A free port on 127.0.0.1 that nothing listens on (connections to it are refused).
fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// An admin listener and one listener whose routes send everything to cluster `web` (`{B0}`):
/// `/plain` unmirrored, then the routes of `before` (YAML list items, or nothing), then every
/// other path with `mirror` (a YAML flow sequence of policies) and the route fields `fields`
/// (or nothing). `clusters` are the shadow clusters, as YAML flow mappings.
fn config(mirror: &str, before: &str, fields: &str, clusters: &[String]) -> String {
    let clusters: String = clusters.iter().map(|c| format!("  - {c}\n")).collect();
    format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - address: "127.0.0.1:0"
    filters:
      - type: router
        config:
          virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
                - name: plain
                  match: {{ prefix: "/plain" }}
                  route: {{ cluster: web }}
{before}
                - name: mirrored
                  match: {{ prefix: "/" }}
                  route: {{ cluster: web, timeout: "60s", request_mirror_policies: {mirror} }}
{fields}
clusters:
  - {{ name: web, endpoints: [{{ address: "{{B0}}" }}] }}
{clusters}"#
    )
}

fn shadow_cluster(name: &str, addr: SocketAddr, extra: &str) -> String {
    format!("{{ name: {name}, endpoints: [{{ address: \"{addr}\" }}]{extra} }}")
}

async fn metrics(h: &Harness) -> String {
    let admin = h.admin.expect("the test config has an admin listener");
    let r = get(
        &h1_client(),
        &format!("http://{admin}/metrics"),
        "admin",
        &[],
    )
    .await;
    assert_eq!(r.status, 200);
    r.text()
}

fn shadow_series(cluster: &str, result: &str) -> String {
    format!(r#"gofe_shadow_requests_total{{cluster="{cluster}",result="{result}"}}"#)
}

fn active_series(cluster: &str) -> String {
    format!(r#"gofe_shadow_requests_active{{cluster="{cluster}"}}"#)
}

/// Waits (bounded) until `series` reads `want`; returns the last metrics text.
async fn metric_until(h: &Harness, series: &str, want: f64) -> String {
    let start = Instant::now();
    loop {
        let m = metrics(h).await;
        if metric(&m, series).unwrap_or(0.0) == want {
            return m;
        }
        assert!(
            start.elapsed() < PATIENCE,
            "{series} never became {want}: {:?}",
            metric(&m, series)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn header<'a>(seen: &'a Seen, name: &str) -> &'a str {
    seen.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// POSTs `body` to `path` with `Content-Length`.
async fn post(h: &Harness, path: &str, host: &str, body: Vec<u8>) -> Reply {
    let req = Request::post(h.url(path))
        .header("host", host)
        .header("x-trace", "abc")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    send(&h1_client(), req).await
}

/// Sends `body` to `path` chunked (no `Content-Length`), 64 KiB a chunk; returns the status.
async fn post_chunked(h: &Harness, path: &str, body: &[u8]) -> u16 {
    let mut s = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.chunks(64 * 1024) {
        s.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .unwrap();
        s.write_all(chunk).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    read_status(&mut s).await
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

#[tokio::test]
async fn a_copy_arrives_with_the_shadow_host_method_path_headers_and_body() {
    let (b, vars) = backends(&["b0"]).await;
    let shadow = ShadowBackend::start(Mode::Answer(200)).await;
    let shadow2 = ShadowBackend::start(Mode::Answer(200)).await;
    let yaml = config(
        "[{ cluster: shadow }, { cluster: shadow2 }]",
        r#"                - name: as-is
                  match: { prefix: "/as-is" }
                  route:
                    cluster: web
                    request_mirror_policies: [{ cluster: shadow, disable_shadow_host_suffix_append: true }]"#,
        "",
        &[
            shadow_cluster("shadow", shadow.addr, ""),
            shadow_cluster("shadow2", shadow2.addr, ", http2_protocol_options: {}"),
        ],
    );
    let h = Harness::start(&fill(&yaml, &vars)).await;

    // A body of several frames, with a Content-Length.
    let body = pattern(200_000);
    let r = post(&h, "/submit/count?x=1", "api.test:8080", body.clone()).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.backend(),
        "b0",
        "the client's answer is the main cluster's"
    );
    assert_eq!(
        r.text().trim(),
        "200000",
        "the main upstream got the whole body"
    );
    let seen = shadow.wait_seen(1).await;
    let copy = &seen[0];
    // Each policy's cluster gets its copy, over its own protocol: HTTP/1.1, and HTTP/2 with
    // the host as `:authority`.
    let copy2 = &shadow2.wait_seen(1).await[0];
    for (copy, version) in [
        (copy, http::Version::HTTP_11),
        (copy2, http::Version::HTTP_2),
    ] {
        assert_eq!(copy.version, version);
        assert_eq!(copy.method, "POST");
        assert_eq!(copy.path, "/submit/count?x=1");
        assert_eq!(
            copy.authority, "api.test-shadow:8080",
            "Envoy's suffix, before the port"
        );
        assert_eq!(header(copy, "x-trace"), "abc");
        assert_eq!(
            header(copy, "x-forwarded-for"),
            "127.0.0.1",
            "as the main upstream gets it"
        );
        assert_eq!(
            header(copy, "x-request-id"),
            header(&seen[0], "x-request-id")
        );
        assert!(!header(copy, "x-request-id").is_empty());
        assert_eq!(copy.body, body, "the whole body");
    }
    assert_eq!(header(copy2, "host"), "", "HTTP/2: the authority alone");

    // A chunked body is copied as it streams, and sent with its length.
    let chunked = pattern(150_000);
    assert_eq!(post_chunked(&h, "/chunked/count", &chunked).await, 200);
    let seen = shadow.wait_seen(2).await;
    assert_eq!(seen[1].body, chunked);
    assert_eq!(seen[1].authority, "api.test-shadow");
    assert_eq!(header(&seen[1], "content-length"), "150000");
    assert_eq!(header(&seen[1], "transfer-encoding"), "");

    // Without the suffix; a bodiless GET.
    let r = get(&h1_client(), &h.url("/as-is/x"), "api.test", &[]).await;
    assert_eq!(r.status, 200);
    let seen = shadow.wait_seen(3).await;
    assert_eq!(seen[2].method, "GET");
    assert_eq!(seen[2].authority, "api.test");
    assert!(seen[2].body.is_empty());

    // An HTTP/2 request: its `:authority` gets the suffix.
    let r = get(&h2c_client(), &h.url("/h2"), "ignored", &[]).await;
    assert_eq!(r.status, 200);
    let seen = shadow.wait_seen(4).await;
    assert_eq!(
        seen[3].authority,
        format!("127.0.0.1-shadow:{}", h.addr.port())
    );
    assert_eq!(seen[3].path, "/h2");

    // An unmirrored route sends nothing.
    assert_eq!(
        get(&h1_client(), &h.url("/plain"), "api.test", &[])
            .await
            .status,
        200
    );
    let m = metric_until(&h, &shadow_series("shadow", "ok"), 4.0).await;
    assert_eq!(metric(&m, &active_series("shadow")), Some(0.0));
    assert_eq!(shadow.seen_count(), 4, "nothing from the unmirrored route");
    // The copies are not the shadow's upstream requests.
    let endpoint = shadow.addr.to_string();
    assert_eq!(
        metric(
            &m,
            &format!(
                r#"gofe_upstream_requests_total{{cluster="shadow",code_class="2xx",endpoint="{endpoint}"}}"#
            )
        )
        .unwrap_or(0.0),
        0.0
    );

    h.proxy.shutdown(Duration::from_secs(1)).await;
    shadow.stop().await;
    shadow2.stop().await;
    for b in b {
        b.stop().await;
    }
}

#[tokio::test]
async fn a_shadow_that_holds_its_requests_never_delays_the_main_ones() {
    const N: usize = 20;
    let (b, vars) = backends(&["b0"]).await;
    let shadow = ShadowBackend::start(Mode::Hold).await;
    let yaml = config(
        "[{ cluster: shadow }]",
        "",
        "",
        &[shadow_cluster("shadow", shadow.addr, "")],
    );
    let h = Harness::start(&fill(&yaml, &vars)).await;
    let c = h1_client();
    // Bodiless and with a body. Request i is sent once the shadow holds the copies of all
    // before it, and answered while it still holds every one of them: no main request waits
    // for a copy.
    for i in 0..N {
        let r = if i % 2 == 0 {
            get(&c, &h.url("/a"), "api.test", &[]).await
        } else {
            post(&h, "/b/count", "api.test", pattern(1000)).await
        };
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.backend(), "b0");
        let plain = get(&c, &h.url("/plain"), "api.test", &[]).await;
        assert_eq!(
            plain.status, r.status,
            "the same status as without a mirror"
        );
        shadow.wait_seen(i + 1).await;
        assert_eq!(shadow.answered(), 0, "every copy so far still held");
    }
    let m = metrics(&h).await;
    assert_eq!(metric(&m, &active_series("shadow")), Some(N as f64));
    shadow.release();
    let m = metric_until(&h, &shadow_series("shadow", "ok"), N as f64).await;
    assert_eq!(metric(&m, &active_series("shadow")), Some(0.0));

    h.proxy.shutdown(Duration::from_secs(1)).await;
    shadow.stop().await;
    for b in b {
        b.stop().await;
    }
}

#[tokio::test]
async fn failing_shadows_leave_every_main_request_ok() {
    const N: usize = 20;
    let (b, vars) = backends(&["b0"]).await;
    let failing = ShadowBackend::start(Mode::Answer(500)).await;
    let refused = closed_port();
    // Outlier detection that would eject at the first 5xx, were copies counted.
    let od = ", outlier_detection: { consecutive_5xx: 1, max_ejection_percent: 100 }";
    let yaml = config(
        "[{ cluster: failing }, { cluster: refused }]",
        "",
        "",
        &[
            shadow_cluster("failing", failing.addr, od),
            shadow_cluster("refused", refused, od),
        ],
    );
    let h = Harness::start(&fill(&yaml, &vars)).await;
    let c = h1_client();
    for i in 0..N {
        let r = if i % 2 == 0 {
            get(&c, &h.url("/a"), "api.test", &[]).await
        } else {
            post(&h, "/b/count", "api.test", pattern(1000)).await
        };
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.backend(), "b0");
    }
    metric_until(&h, &shadow_series("failing", "5xx"), N as f64).await;
    let m = metric_until(&h, &shadow_series("refused", "failed"), N as f64).await;
    let main = vars["{B0}"].clone();
    assert_eq!(
        metric(
            &m,
            &format!(
                r#"gofe_upstream_requests_total{{cluster="web",code_class="2xx",endpoint="{main}"}}"#
            )
        ),
        Some(N as f64),
        "the main endpoint counts its own requests"
    );
    for (cluster, addr) in [("failing", failing.addr), ("refused", refused)] {
        let series = format!(
            r#"gofe_upstream_requests_total{{cluster="{cluster}",code_class="5xx",endpoint="{addr}"}}"#
        );
        assert_eq!(metric(&m, &series).unwrap_or(0.0), 0.0, "{series}");
        let breaker =
            format!(r#"gofe_endpoint_breaker_state{{cluster="{cluster}",endpoint="{addr}"}}"#);
        assert_eq!(metric(&m, &breaker), Some(0.0), "not ejected: {breaker}");
    }

    h.proxy.shutdown(Duration::from_secs(1)).await;
    failing.stop().await;
    for b in b {
        b.stop().await;
    }
}

#[tokio::test]
async fn runtime_fraction_mirrors_its_share_within_a_binomial_bound() {
    const N: u64 = 2000;
    const TASKS: u64 = 4;
    let (b, vars) = backends(&["b0"]).await;
    let shadow = ShadowBackend::start(Mode::Answer(200)).await;
    let yaml = config(
        "[{ cluster: shadow, runtime_fraction: { numerator: 2500, denominator: TEN_THOUSAND } }]",
        "",
        "",
        &[shadow_cluster("shadow", shadow.addr, "")],
    );
    let h = Arc::new(Harness::start(&fill(&yaml, &vars)).await);
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let h = Arc::clone(&h);
        tasks.push(tokio::spawn(async move {
            let c = h1_client();
            for _ in 0..N / TASKS {
                assert_eq!(get(&c, &h.url("/a"), "api.test", &[]).await.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Every copy was drawn before its main response; once none is in flight, all are counted.
    let m = metric_until(&h, &active_series("shadow"), 0.0).await;
    let mirrored = metric(&m, &shadow_series("shadow", "ok")).unwrap_or(0.0) as u64;
    // Binomial(N, 1/4): within six standard deviations (a false alarm about once in 500
    // million runs).
    let (mean, sd) = (N as f64 * 0.25, (N as f64 * 0.25 * 0.75).sqrt());
    assert!(
        (mirrored as f64 - mean).abs() <= 6.0 * sd,
        "{mirrored} of {N} mirrored at 25 %: expected {mean} ± {}",
        6.0 * sd
    );
    assert_eq!(
        shadow.wait_seen(mirrored as usize).await.len(),
        mirrored as usize
    );

    if let Ok(h) = Arc::try_unwrap(h) {
        h.proxy.shutdown(Duration::from_secs(1)).await;
    }
    shadow.stop().await;
    for b in b {
        b.stop().await;
    }
}

#[tokio::test]
async fn a_body_over_the_bound_is_not_mirrored_and_its_request_goes_on() {
    let (b, vars) = backends(&["b0"]).await;
    let shadow = ShadowBackend::start(Mode::Answer(200)).await;
    let yaml = config(
        "[{ cluster: shadow }]",
        "",
        "",
        &[shadow_cluster("shadow", shadow.addr, "")],
    );
    let h = Harness::start(&fill(&yaml, &vars)).await;
    let too_large = shadow_series("shadow", "body_too_large");

    // Declared too large: not copied at all.
    let r = post(&h, "/big/count", "api.test", pattern(BOUND + 1)).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.text().trim(),
        (BOUND + 1).to_string(),
        "the main upstream got it whole"
    );
    metric_until(&h, &too_large, 1.0).await;
    // Found too large while streaming (chunked): the copy is abandoned mid-way.
    assert_eq!(
        post_chunked(&h, "/big/count", &pattern(BOUND + 1)).await,
        200
    );
    metric_until(&h, &too_large, 2.0).await;
    assert_eq!(shadow.seen_count(), 0, "neither was mirrored");

    // Exactly the bound is mirrored.
    let r = post(&h, "/edge/count", "api.test", pattern(BOUND)).await;
    assert_eq!(r.status, 200);
    let seen = shadow.wait_seen(1).await;
    assert_eq!(seen[0].body.len(), BOUND);
    metric_until(&h, &shadow_series("shadow", "ok"), 1.0).await;

    h.proxy.shutdown(Duration::from_secs(1)).await;
    shadow.stop().await;
    for b in b {
        b.stop().await;
    }
}

#[tokio::test]
async fn copies_beyond_the_shadow_clusters_max_requests_are_dropped() {
    const N: usize = 5;
    const MAX: usize = 2;
    let (b, vars) = backends(&["b0"]).await;
    let shadow = ShadowBackend::start(Mode::Hold).await;
    let yaml = config(
        "[{ cluster: shadow }]",
        "",
        "",
        &[shadow_cluster(
            "shadow",
            shadow.addr,
            &format!(", circuit_breakers: {{ max_requests: {MAX} }}"),
        )],
    );
    let h = Harness::start(&fill(&yaml, &vars)).await;
    let c = h1_client();
    for i in 0..N {
        assert_eq!(
            get(&c, &h.url("/a"), "api.test", &[]).await.status,
            200,
            "request {i}"
        );
    }
    // The first MAX copies are held by the shadow; the others were never sent.
    let m = metrics(&h).await;
    assert_eq!(
        metric(&m, &shadow_series("shadow", "dropped")),
        Some((N - MAX) as f64)
    );
    assert_eq!(metric(&m, &active_series("shadow")), Some(MAX as f64));
    shadow.wait_seen(MAX).await;
    // The shadow cluster's own requests are not limited by its copies.
    assert_eq!(
        metric(
            &m,
            r#"gofe_circuit_breaker_overflows_total{cluster="shadow",kind="requests"}"#
        )
        .unwrap_or(0.0),
        0.0
    );
    shadow.release();
    metric_until(&h, &shadow_series("shadow", "ok"), MAX as f64).await;
    assert_eq!(shadow.seen_count(), MAX);
    // Room again once they are done.
    assert_eq!(get(&c, &h.url("/a"), "api.test", &[]).await.status, 200);
    metric_until(&h, &shadow_series("shadow", "ok"), MAX as f64 + 1.0).await;

    h.proxy.shutdown(Duration::from_secs(1)).await;
    shadow.stop().await;
    for b in b {
        b.stop().await;
    }
}

#[tokio::test]
async fn a_request_the_fault_filter_aborts_is_not_mirrored() {
    let (b, vars) = backends(&["b0"]).await;
    let shadow = ShadowBackend::start(Mode::Answer(200)).await;
    let yaml = config(
        "[{ cluster: shadow }]",
        "",
        "                  fault: { abort: { http_status: 503, percentage: { numerator: 100 } } }",
        &[shadow_cluster("shadow", shadow.addr, "")],
    );
    let h = Harness::start(&fill(&yaml, &vars)).await;
    for _ in 0..5 {
        let r = get(&h1_client(), &h.url("/a"), "api.test", &[]).await;
        assert_eq!(r.status, 503);
        assert_eq!(r.text(), "fault filter abort");
    }
    let m = metrics(&h).await;
    for result in ["ok", "5xx", "failed", "dropped"] {
        assert_eq!(
            metric(&m, &shadow_series("shadow", result)).unwrap_or(0.0),
            0.0,
            "{result}"
        );
    }
    assert_eq!(shadow.seen_count(), 0);

    h.proxy.shutdown(Duration::from_secs(1)).await;
    shadow.stop().await;
    for b in b {
        b.stop().await;
    }
}

#[tokio::test]
async fn a_body_is_mirrored_when_the_main_cluster_speaks_http2() {
    // hyper's HTTP/2 client reads the body on a task of its own: the tee goes with it.
    let (b, vars) = backends(&["b0"]).await;
    let shadow = ShadowBackend::start(Mode::Answer(200)).await;
    let yaml = config(
        "[{ cluster: shadow }]",
        "",
        "",
        &[shadow_cluster("shadow", shadow.addr, "")],
    )
    .replace(
        "{ name: web, endpoints",
        "{ name: web, http2_protocol_options: {}, endpoints",
    );
    let h = Harness::start(&fill(&yaml, &vars)).await;
    let body = pattern(300_000);
    let r = post(&h, "/up/count", "api.test", body.clone()).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.text().trim(),
        "300000",
        "the main upstream got the whole body"
    );
    let seen = shadow.wait_seen(1).await;
    assert_eq!(
        seen[0].version,
        http::Version::HTTP_11,
        "the shadow's own protocol"
    );
    assert_eq!(seen[0].authority, "api.test-shadow");
    assert_eq!(seen[0].body, body);
    metric_until(&h, &shadow_series("shadow", "ok"), 1.0).await;

    h.proxy.shutdown(Duration::from_secs(1)).await;
    shadow.stop().await;
    for b in b {
        b.stop().await;
    }
}
