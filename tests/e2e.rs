//! End-to-end tests of the `gofe` binary as a separate process: the things only a real process
//! shows (signals, file reloads, exit codes, memory use, the README's first command).

#![allow(unreachable_pub)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gofe_proxy::demo::DemoBackend;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

mod support;

use support::process::{free_port, tempdir, Proc};

fn config(listen: u16, admin: u16, backend: SocketAddr) -> String {
    format!(
        r#"listeners:
  - address: "127.0.0.1:{listen}"
    filters:
      - type: router
        config:
          virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: web }} }}]
clusters:
  - name: web
    endpoints: [{{ address: "{backend}" }}]
admin: {{ address: "127.0.0.1:{admin}" }}
"#
    )
}

fn write(path: &Path, text: &str) {
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

type TestClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// GET; `None` when the connection fails.
async fn get(c: &TestClient, url: &str, headers: &[(&str, &str)]) -> Option<(u16, String)> {
    let mut req = http::Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = c
        .request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Polls `url` until `check` holds, for at most 20 s.
async fn until(
    c: &TestClient,
    url: &str,
    what: &str,
    check: impl Fn(&(u16, String)) -> bool,
) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(r) = get(c, url, &[]).await {
            if check(&r) {
                return r;
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what} at {url}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn sighup_reloads_and_a_bad_file_keeps_the_running_config() {
    let a = DemoBackend::start("127.0.0.1:0".parse().unwrap(), "a")
        .await
        .unwrap();
    let b = DemoBackend::start("127.0.0.1:0".parse().unwrap(), "b")
        .await
        .unwrap();
    let dir = tempdir();
    let file = dir.join("gofe.yaml");
    let (listen, admin) = (free_port(), free_port());
    write(&file, &config(listen, admin, a.addr()));
    let proc_ = Proc::start(&["proxy", "--config", file.to_str().unwrap()], &dir);
    let c = client();
    let url = format!("http://127.0.0.1:{listen}/");
    until(&c, &url, "backend a", |r| r.1 == "hello from a\n").await;

    write(&file, &config(listen, admin, b.addr()));
    proc_.signal("HUP");
    until(&c, &url, "backend b after SIGHUP", |r| {
        r.1 == "hello from b\n"
    })
    .await;

    // A file with a typo: refused with its line and field, and b keeps serving.
    let broken = config(listen, admin, a.addr()).replace("endpoints:", "endpoint:");
    write(&file, &broken);
    proc_.signal("HUP");
    let metrics = format!("http://127.0.0.1:{admin}/metrics");
    until(&c, &metrics, "a failed reload", |r| {
        r.1.contains("gofe_config_reloads_total{result=\"failure\"} 1")
    })
    .await;
    assert_eq!(get(&c, &url, &[]).await.unwrap().1, "hello from b\n");
    let logs = proc_.logs();
    assert!(
        logs.contains(&format!(
            "{}:12:5: clusters[0].endpoint: unknown field `endpoint`, expected one of name,",
            file.display()
        )),
        "{logs}"
    );
    let dump = get(&c, &format!("http://127.0.0.1:{admin}/config_dump"), &[])
        .await
        .unwrap()
        .1;
    assert!(dump.contains("\"version\": 2"), "{dump}");
}

#[tokio::test]
async fn watch_reloads_when_the_file_changes() {
    let a = DemoBackend::start("127.0.0.1:0".parse().unwrap(), "a")
        .await
        .unwrap();
    let b = DemoBackend::start("127.0.0.1:0".parse().unwrap(), "b")
        .await
        .unwrap();
    let dir = tempdir();
    let file = dir.join("gofe.yaml");
    let (listen, admin) = (free_port(), free_port());
    write(&file, &config(listen, admin, a.addr()));
    let _proc = Proc::start(
        &["proxy", "--config", file.to_str().unwrap(), "--watch"],
        &dir,
    );
    let c = client();
    let url = format!("http://127.0.0.1:{listen}/");
    until(&c, &url, "backend a", |r| r.1 == "hello from a\n").await;
    // Replace the file the way a ConfigMap update does: write aside, rename over.
    let aside = dir.join("gofe.yaml.new");
    write(&aside, &config(listen, admin, b.addr()));
    std::fs::rename(&aside, &file).unwrap();
    until(&c, &url, "backend b after the file changed", |r| {
        r.1 == "hello from b\n"
    })
    .await;
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let slow = DemoBackend::start("127.0.0.1:0".parse().unwrap(), "slow")
        .await
        .unwrap();
    let dir = tempdir();
    let file = dir.join("gofe.yaml");
    let (listen, admin) = (free_port(), free_port());
    write(&file, &config(listen, admin, slow.addr()));
    let mut proc_ = Proc::start(
        &[
            "proxy",
            "--config",
            file.to_str().unwrap(),
            "--drain-timeout",
            "10s",
        ],
        &dir,
    );
    let c = client();
    let url = format!("http://127.0.0.1:{listen}/");
    until(&c, &url, "the proxy", |r| r.0 == 200).await;

    slow.set_delay(Duration::from_millis(1500));
    let in_flight = {
        let c = c.clone();
        let url = url.clone();
        tokio::spawn(async move { get(&c, &url, &[]).await })
    };
    let metrics = format!("http://127.0.0.1:{admin}/metrics");
    until(&c, &metrics, "the request in flight", |r| {
        r.1.lines()
            .any(|l| l.starts_with("gofe_upstream_requests_active{") && l.ends_with(" 1"))
    })
    .await;
    proc_.signal("TERM");
    let answered = in_flight.await.unwrap();
    assert_eq!(
        answered,
        Some((200, "hello from slow\n".to_owned())),
        "the in-flight request finished"
    );
    let code = tokio::task::spawn_blocking(move || {
        let code = proc_.wait_exit(Duration::from_secs(20));
        (code, proc_)
    })
    .await
    .unwrap();
    assert_eq!(code.0, Some(0), "{}", code.1.logs());
    assert!(
        get(&c, &url, &[]).await.is_none(),
        "nothing listens after shutdown"
    );
}

#[tokio::test]
async fn a_body_larger_than_the_proxys_memory_streams_through() {
    // 256 MiB up and 256 MiB back through /echo while the proxy's peak RSS stays under 64 MiB:
    // nothing buffers a whole body.
    let echo = DemoBackend::start("127.0.0.1:0".parse().unwrap(), "echo")
        .await
        .unwrap();
    let dir = tempdir();
    let file = dir.join("gofe.yaml");
    let (listen, admin) = (free_port(), free_port());
    write(&file, &config(listen, admin, echo.addr()));
    let proc_ = Proc::start(&["proxy", "--config", file.to_str().unwrap()], &dir);
    let c = client();
    let url = format!("http://127.0.0.1:{listen}/echo");
    until(
        &c,
        &format!("http://127.0.0.1:{listen}/"),
        "the proxy",
        |r| r.0 == 200,
    )
    .await;

    const CHUNK: usize = 256 * 1024;
    const CHUNKS: usize = 1024;
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::convert::Infallible>>(2);
    tokio::spawn(async move {
        let chunk = Bytes::from(vec![42u8; CHUNK]);
        for _ in 0..CHUNKS {
            if tx.send(Ok(Frame::data(chunk.clone()))).await.is_err() {
                return;
            }
        }
    });
    let body = StreamBody::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    let streaming: Client<_, StreamBody<_>> = Client::builder(TokioExecutor::new()).build_http();
    let resp = streaming
        .request(http::Request::post(&url).body(body).unwrap())
        .await
        .expect("response");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut received = 0usize;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("streams").into_data() {
            received += data.len();
        }
    }
    assert_eq!(received, CHUNK * CHUNKS);
    let peak = proc_.peak_rss_kib();
    assert!(
        peak < 64 * 1024,
        "proxy peak RSS {peak} KiB for a 256 MiB body"
    );
}

#[test]
fn check_names_file_line_and_field() {
    let dir = tempdir();
    let file = dir.join("bad.yaml");
    let text = config(1, 2, "127.0.0.1:3".parse().unwrap())
        .replace("cluster: web", "cluster: missing")
        .replace("127.0.0.1:3", "127.0.0.1:99999");
    write(&file, &text);
    let out = Command::new(env!("CARGO_BIN_EXE_gofe"))
        .args(["check", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let f = file.display();
    assert!(
        stderr.contains(&format!(
            "{f}:9:68: listeners[0].filters[0].config.virtual_hosts[0].routes[0].route.cluster: unknown cluster \"missing\""
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{f}:12:28: clusters[0].endpoints[0].address: invalid endpoint address"
        )),
        "{stderr}"
    );

    write(&file, &config(1, 2, "127.0.0.1:3".parse().unwrap()));
    let out = Command::new(env!("CARGO_BIN_EXE_gofe"))
        .args(["check", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `gofe check` on a file of each kind it knows: the kind detected, every problem of a bad one
/// named, an empty file refused.
#[test]
fn check_detects_every_file_kind_and_the_examples_pass() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let check = |file: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_gofe"))
            .args(["check", file.to_str().unwrap()])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for (file, kind) in [
        ("examples/up.yaml", "proxy"),
        ("examples/controller.yaml", "controller"),
        ("examples/loop/proxy.yaml", "proxy"),
        ("examples/loop/controller.yaml", "controller"),
        ("examples/loop/bootstrap.yaml", "bootstrap"),
        ("simulations/scenarios/heterogeneous.yaml", "scenario"),
    ] {
        let path = root.join(file);
        let (ok, stdout, stderr) = check(&path);
        assert!(ok, "{file}: {stderr}");
        assert!(stdout.contains(&format!("ok ({kind})")), "{file}: {stdout}");
    }
    let dir = tempdir();
    let bad = dir.join("bootstrap.yaml");
    write(
        &bad,
        "node: { id: \"\" }\nxds_server: { address: \"nowhere\" }\n",
    );
    let (ok, _, stderr) = check(&bad);
    assert!(!ok);
    let f = bad.display();
    assert!(
        stderr.contains(&format!("{f}:1:13: node.id: must not be empty")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{f}:2:24: xds_server.address:")),
        "{stderr}"
    );
    let empty = dir.join("empty.yaml");
    write(&empty, "# nothing\n");
    let (ok, _, stderr) = check(&empty);
    assert!(!ok && stderr.contains("the file is empty"), "{stderr}");
}

#[tokio::test]
async fn up_runs_the_demo_with_embedded_defaults() {
    // The README's first command. It uses fixed ports (8080, 9101-9103, 9901).
    let dir = tempdir();
    let mut proc_ = Proc::start(&["up"], &dir);
    let c = client();
    until(
        &c,
        "http://127.0.0.1:9901/ready",
        "gofe up to be ready",
        |r| r.0 == 200,
    )
    .await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        let (status, body) = get(&c, "http://127.0.0.1:8080/", &[])
            .await
            .expect("proxy answers");
        assert_eq!(status, 200);
        seen.insert(body);
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["hello from web-1\n", "hello from web-2\n"],
        "the demo's round robin over web-1 and web-2"
    );
    proc_.signal("INT");
    let code = tokio::task::spawn_blocking(move || proc_.wait_exit(Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(code, Some(0));
}

/// `--service-node` makes the proxy its own xDS node whatever the bootstrap says (each replica
/// of a Deployment shares one bootstrap file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_node_overrides_the_bootstraps_node_id() {
    let server = gofe_xds::AdsServer::new(gofe_xds::ServerOptions::default());
    // An empty state of the world: the proxy ACKs it, naming its node.
    server.cache().set_snapshot(
        gofe_xds::NodeKey::Default,
        gofe_xds::Snapshot::from_encoded(std::collections::HashMap::new()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(gofe_xds::serve(listener, server.clone(), None, async {
        let _ = stop_rx.await;
    }));
    let dir = std::env::temp_dir().join(format!("gofe-e2e-node-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bootstrap = dir.join("bootstrap.yaml");
    std::fs::write(
        &bootstrap,
        format!("node: {{ id: \"from-the-file\", cluster: \"mesh\" }}\nxds_server: {{ address: \"{addr}\" }}\n"),
    )
    .unwrap();
    let proc = Proc::start(
        &[
            "proxy",
            "--bootstrap",
            bootstrap.to_str().unwrap(),
            "--service-node",
            "pod-7",
        ],
        &dir,
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = server.metrics_text();
        if text.contains("node=\"pod-7\"") {
            assert!(!text.contains("from-the-file"), "{text}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the proxy never subscribed as pod-7: {}\n{text}",
            proc.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(proc);
    let _ = stop_tx.send(());
    let _ = serving.await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// POST with an empty body; `None` when the connection fails.
async fn post(c: &TestClient, url: &str) -> Option<(u16, String)> {
    let req = http::Request::post(url)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = c.request(req).await.ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// The proxy's log filter changes at run time through its admin's `/logging` (Envoy's): a
/// debug line that `info` keeps out appears once `level=debug` is posted, and goes again with
/// a narrower filter; a level that is none is refused with 400.
#[tokio::test]
async fn the_log_filter_changes_at_run_time_through_the_admin() {
    let b = DemoBackend::start("127.0.0.1:0".parse().unwrap(), "a")
        .await
        .unwrap();
    let dir = tempdir();
    let file = dir.join("gofe.yaml");
    let (listen, admin) = (free_port(), free_port());
    // Only /api is routed: anything else is a 404 with a debug line saying "no route".
    let text = config(listen, admin, b.addr()).replace(r#"prefix: "/" }"#, r#"prefix: "/api" }"#);
    assert!(text.contains("/api"));
    write(&file, &text);
    let proc_ = Proc::start(&["proxy", "--config", file.to_str().unwrap()], &dir);
    let c = client();
    let logging = format!("http://127.0.0.1:{admin}/logging");
    until(
        &c,
        &format!("http://127.0.0.1:{admin}/ready"),
        "ready",
        |r| r.0 == 200,
    )
    .await;
    assert_eq!(
        get(&c, &logging, &[]).await.unwrap(),
        (200, "info\n".into())
    );

    let unrouted = |path: &str| format!("http://127.0.0.1:{listen}{path}");
    assert_eq!(get(&c, &unrouted("/at-info"), &[]).await.unwrap().0, 404);
    assert_eq!(
        post(&c, &format!("{logging}?level=debug")).await.unwrap(),
        (200, "debug\n".into())
    );
    assert_eq!(get(&c, &unrouted("/at-debug"), &[]).await.unwrap().0, 404);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !proc_.logs().contains("/at-debug") {
        assert!(
            Instant::now() < deadline,
            "no debug line:\n{}",
            proc_.logs()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let logs = proc_.logs();
    assert!(logs.contains("no route"), "{logs}");
    assert!(!logs.contains("/at-info"), "logged at info: {logs}");
    assert!(
        logs.contains("log filter set from the admin endpoint"),
        "{logs}"
    );

    // A narrower filter, by directives; then a level that is none.
    let (status, body) = post(&c, &format!("{logging}?filter=gofe_proxy%3Dwarn%2Cinfo"))
        .await
        .unwrap();
    assert_eq!((status, body.as_str()), (200, "gofe_proxy=warn,info\n"));
    assert_eq!(
        get(&c, &unrouted("/after-narrowing"), &[]).await.unwrap().0,
        404
    );
    let (status, body) = post(&c, &format!("{logging}?level=loud")).await.unwrap();
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        get(&c, &logging, &[]).await.unwrap(),
        (200, "gofe_proxy=warn,info\n".into()),
        "a refused change keeps the filter"
    );
    // A request after the refusal: its debug line would come after this one if any.
    assert_eq!(get(&c, &unrouted("/last"), &[]).await.unwrap().0, 404);
    assert_eq!(
        get(&c, &format!("http://127.0.0.1:{admin}/ready"), &[])
            .await
            .unwrap()
            .0,
        200
    );
    let logs = proc_.logs();
    assert!(
        !logs.contains("/after-narrowing") && !logs.contains("/last"),
        "{logs}"
    );
}
