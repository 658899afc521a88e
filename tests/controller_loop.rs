//! The feedback loop end to end: a real gofe proxy in front of four real backends, real traffic,
//! signals from a real Prometheus (Debian's package) scraping the proxy — or from the embedded
//! scraper — and the controller's decisions published back to the proxy.
//!
//! Faults are switched on in the backends; each scenario waits (bounded) for the controller's
//! decision and then checks what the proxy does with the traffic.

#![allow(unreachable_pub)]

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gofe_controller::config::{self, Loaded};
use gofe_controller::{Controller, DecisionsView, Publisher};
use gofe_proxy::demo::DemoBackend;
use gofe_proxy::Proxy;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::XdsProxy;

struct Prometheus {
    child: Child,
    addr: SocketAddr,
    _dir: PathBuf,
}

impl Prometheus {
    /// Starts Debian's prometheus scraping `target` every second.
    fn start(target: SocketAddr) -> Prometheus {
        let dir = std::env::temp_dir().join(format!(
            "gofe-prom-{}-{}",
            std::process::id(),
            fastrand_u64()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let port = support::process::free_port();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nscrape_configs:\n  - job_name: gofe\n    static_configs: [{{ targets: [\"{target}\"] }}]\n"
            ),
        )
        .unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the prometheus binary (Debian package `prometheus`; .ci/run installs it)");
        Prometheus {
            child,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
            _dir: dir,
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

fn fastrand_u64() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}

const PROXY: &str = r#"
listeners:
  - address: "127.0.0.1:0"
    filters:
      - type: router
        config:
          virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{ match: { prefix: "/" }, route: { cluster: web } }]
clusters:
  - name: web
    endpoints:
      - { address: "{B0}" }
      - { address: "{B1}" }
      - { address: "{B2}" }
      - { address: "{B3}" }
admin: { address: "127.0.0.1:0" }
"#;

fn controller_yaml(source: &str) -> String {
    format!(
        r#"
proxy_config: "unused.yaml"
interval: "1s"
signals:
{source}
  window: "4s"
  latency_quantile: 0.5
policy:
  failure_percentage_threshold: 30
  failure_percentage_request_volume: 10
  max_ejection_percent: 50
  base_ejection_time: "2s"
  half_open_min_requests: 3
  half_open_weight_percent: 20
  slow_start_window: "2s"
  latency_min_requests: 5
  stale_after: "10s"
"#
    )
}

struct Mesh {
    backends: Vec<DemoBackend>,
    proxy: XdsProxy,
    listen: SocketAddr,
    admin: SocketAddr,
    stop: Arc<AtomicBool>,
    traffic: Vec<tokio::task::JoinHandle<()>>,
}

impl Mesh {
    async fn start() -> Mesh {
        let mut backends = Vec::new();
        let mut yaml = PROXY.to_owned();
        for i in 0..4 {
            let b = DemoBackend::start("127.0.0.1:0".parse().unwrap(), &format!("b{i}"))
                .await
                .unwrap();
            yaml = yaml.replace(&format!("{{B{i}}}"), &b.addr().to_string());
            backends.push(b);
        }
        let cfg = gofe_proxy::config::parse("proxy.yaml", &yaml).unwrap();
        let proxy = XdsProxy::start(&cfg, "proxy-1").await;
        let listen = proxy.listener("127.0.0.1:0").await;
        let admin = proxy.admin;
        // Steady traffic: 4 clients, bounded by the test's lifetime (and 120 s at most).
        let stop = Arc::new(AtomicBool::new(false));
        let mut traffic = Vec::new();
        for _ in 0..4 {
            let stop = Arc::clone(&stop);
            traffic.push(tokio::spawn(async move {
                let client: Client<_, Empty<Bytes>> =
                    Client::builder(TokioExecutor::new()).build_http();
                let url: http::Uri = format!("http://{listen}/").parse().unwrap();
                let deadline = Instant::now() + Duration::from_secs(120);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    if let Ok(r) = client.get(url.clone()).await {
                        let _ = r.into_body().collect().await;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }));
        }
        Mesh {
            backends,
            proxy,
            listen,
            admin,
            stop,
            traffic,
        }
    }

    fn base_config(&self) -> gofe_proxy::ProxyConfig {
        let mut yaml = PROXY.to_owned();
        for (i, b) in self.backends.iter().enumerate() {
            yaml = yaml.replace(&format!("{{B{i}}}"), &b.addr().to_string());
        }
        gofe_proxy::config::parse("proxy.yaml", &yaml).unwrap()
    }

    fn endpoint(&self, i: usize) -> String {
        self.backends[i].addr().to_string()
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.traffic {
            t.abort();
        }
    }
}

/// Steps the controller until `check` holds for the decisions (at most `limit`).
async fn step_until(
    c: &mut Controller,
    what: &str,
    limit: Duration,
    check: impl Fn(&DecisionsView) -> bool,
) -> DecisionsView {
    let deadline = Instant::now() + limit;
    loop {
        let view = c.step().await;
        if check(&view) {
            return view;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; last decisions: {}",
            serde_json::to_string_pretty(&view).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn endpoint<'a>(v: &'a DecisionsView, ep: &str) -> &'a gofe_controller::EndpointView {
    v.clusters["web"]
        .endpoints
        .iter()
        .find(|e| e.endpoint == ep)
        .unwrap()
}

/// The scenarios both sources must pass: failing → ejected and drained; recovered → ramped
/// back; slow → loses weight.
async fn scenarios(mesh: &Mesh, c: &mut Controller) {
    let bad = mesh.endpoint(3);
    // Wait for healthy signals first.
    step_until(
        c,
        "fresh signals for every endpoint",
        Duration::from_secs(30),
        |v| {
            v.clusters["web"]
                .endpoints
                .iter()
                .all(|e| e.inputs.is_some_and(|i| i.requests >= 10.0))
        },
    )
    .await;

    // 1. Half of b3's requests fail: ejected, and its share goes to the others.
    mesh.backends[3].set_failure(0.5, 500);
    step_until(c, "b3 ejected", Duration::from_secs(30), |v| {
        endpoint(v, &bad).state == "ejected"
    })
    .await;
    mesh.proxy
        .wait_for("the ejection published to the proxy", |p| {
            p.active().config.clusters[0].endpoints.iter().any(|e| {
                e.address == bad && e.health_status == gofe_proxy::config::HealthStatus::Unhealthy
            })
        })
        .await;
    let before = mesh.backends[3].served();
    let others_before: u64 = mesh.backends[..3].iter().map(DemoBackend::served).sum();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        mesh.backends[3].served(),
        before,
        "no traffic while ejected"
    );
    let others_after: u64 = mesh.backends[..3].iter().map(DemoBackend::served).sum();
    assert!(others_after > others_before, "the others take its share");

    // 2. It recovers: half-open trial, then a ramp back to full weight.
    mesh.backends[3].set_failure(0.0, 200);
    step_until(
        c,
        "b3 serving at full weight again",
        Duration::from_secs(40),
        // Full weight, give or take the latency weighting that may nudge any endpoint.
        |v| {
            let e = endpoint(v, &bad);
            e.state == "serving" && e.healthy && e.weight >= 80
        },
    )
    .await;

    // 3. b2 becomes much slower than its peers: its weight falls.
    let slow = mesh.endpoint(2);
    mesh.backends[2].set_delay(Duration::from_millis(40));
    let v = step_until(c, "b2's weight to fall", Duration::from_secs(30), |v| {
        endpoint(v, &slow).weight <= 50
    })
    .await;
    assert!(
        endpoint(&v, &slow).reason.contains("latency"),
        "{}",
        endpoint(&v, &slow).reason
    );
    mesh.backends[2].set_delay(Duration::ZERO);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_with_a_real_prometheus() {
    let mesh = Mesh::start().await;
    let mut prom = Prometheus::start(mesh.admin);
    let source = format!(
        "  source: prometheus\n  prometheus: {{ url: \"http://{}\", scrape_interval: 1s }}",
        prom.addr
    );
    let loaded = Loaded {
        controller: config::parse("controller.yaml", &controller_yaml(&source)).unwrap(),
        proxy: mesh.base_config(),
    };
    let mut c = Controller::new(loaded, mesh.proxy.publisher()).unwrap();
    scenarios(&mesh, &mut c).await;

    // 4. Prometheus goes away: decisions hold (fail static), nothing is zeroed or ejected.
    let before = c.step().await;
    prom.stop();
    let v = step_until(&mut c, "fail static", Duration::from_secs(20), |v| {
        v.clusters["web"].mode == "fail_static"
    })
    .await;
    assert!(v.signal_error.is_some());
    for (a, b) in before.clusters["web"]
        .endpoints
        .iter()
        .zip(&v.clusters["web"].endpoints)
    {
        assert_eq!(
            (a.weight, a.healthy),
            (b.weight, b.healthy),
            "{} held",
            a.endpoint
        );
    }
    let _ = mesh.listen;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_with_the_embedded_scraper() {
    let mesh = Mesh::start().await;
    let source = format!(
        "  source: embedded\n  embedded: {{ targets: [\"{}\"] }}",
        mesh.admin
    );
    let loaded = Loaded {
        controller: config::parse("controller.yaml", &controller_yaml(&source)).unwrap(),
        proxy: mesh.base_config(),
    };
    let mut c = Controller::new(loaded, mesh.proxy.publisher()).unwrap();
    scenarios(&mesh, &mut c).await;

    // The scrape target disappears: hold.
    let proxy_admin_gone = Loaded {
        controller: config::parse(
            "controller.yaml",
            &controller_yaml("  source: embedded\n  embedded: { targets: [\"127.0.0.1:1\"] }"),
        )
        .unwrap(),
        proxy: mesh.base_config(),
    };
    let mut blind = Controller::new(proxy_admin_gone, Publisher::DryRun).unwrap();
    let v = blind.step().await;
    assert_eq!(
        v.clusters["web"].mode, "relaxed",
        "no data ever: base weights"
    );
    assert!(v.signal_error.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_reach_a_proxy_over_xds() {
    // The controller serves ADS; a separate gofe proxy takes everything but its admin endpoint
    // from it (`gofe proxy --bootstrap` in-process), and the controller reads that proxy's
    // metrics. A half-failing backend must be ejected at that proxy.
    let mut backends = Vec::new();
    let mut yaml = PROXY.to_owned();
    for i in 0..4 {
        let b = DemoBackend::start("127.0.0.1:0".parse().unwrap(), &format!("b{i}"))
            .await
            .unwrap();
        yaml = yaml.replace(&format!("{{B{i}}}"), &b.addr().to_string());
        backends.push(b);
    }
    let mut pushed = gofe_proxy::config::parse("proxy.yaml", &yaml).unwrap();
    pushed.admin = None;
    let server = gofe_xds::AdsServer::new(gofe_xds::ServerOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let xds_addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let ads = tokio::spawn(gofe_xds::serve(listener, server.clone(), None, async {
        let _ = stopped.await;
    }));

    let proxy = Proxy::new();
    let base =
        gofe_proxy::config::parse("base.yaml", "admin: { address: \"127.0.0.1:0\" }\n").unwrap();
    proxy
        .apply(base.clone(), "base.yaml", Duration::from_secs(1))
        .await
        .unwrap();
    let admin = proxy.admin_addr().await.unwrap();
    let client = gofe_proxy::xds::XdsClient::start(
        proxy.clone(),
        gofe_proxy::xds::ClientOptions {
            node_id: "proxy-1".into(),
            node_cluster: "test".into(),
            server: xds_addr.to_string(),
            tls: None,
            base,
            drain: Duration::from_millis(100),
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_millis(500),
            load_reporting: false,
        },
    )
    .unwrap();

    let source = format!("  source: embedded\n  embedded: {{ targets: [\"{admin}\"] }}");
    let loaded = Loaded {
        controller: config::parse("controller.yaml", &controller_yaml(&source)).unwrap(),
        proxy: pushed,
    };
    let mut c = Controller::new(loaded, Publisher::Xds(server)).unwrap();
    c.step().await;
    // The proxy's listener arrives over xDS.
    let deadline = Instant::now() + Duration::from_secs(20);
    let listen = loop {
        if let Some(a) = proxy.listener_addrs().await.values().next().copied() {
            break a;
        }
        assert!(Instant::now() < deadline, "no listener arrived over xDS");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let stop_traffic = Arc::new(AtomicBool::new(false));
    let traffic = {
        let stop_traffic = Arc::clone(&stop_traffic);
        tokio::spawn(async move {
            let http: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
            let url: http::Uri = format!("http://{listen}/").parse().unwrap();
            let deadline = Instant::now() + Duration::from_secs(90);
            while !stop_traffic.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Ok(r) = http.get(url.clone()).await {
                    let _ = r.into_body().collect().await;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    backends[3].set_failure(0.5, 500);
    let bad = backends[3].addr().to_string();
    step_until(&mut c, "b3 ejected", Duration::from_secs(40), |v| {
        endpoint(v, &bad).state == "ejected"
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let active = proxy.active();
        let unhealthy = active
            .config
            .clusters
            .iter()
            .flat_map(|c| &c.endpoints)
            .any(|e| {
                e.address == bad && e.health_status == gofe_proxy::config::HealthStatus::Unhealthy
            });
        if unhealthy {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the ejection never reached the proxy over xDS"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let before = backends[3].served();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        backends[3].served(),
        before,
        "no traffic to the ejected endpoint"
    );
    // /decisions joins the proxy's ACKs: it has the newest weights, and how long that took.
    let v = step_until(&mut c, "proxy-1 caught up", Duration::from_secs(10), |v| {
        v.proxies
            .iter()
            .any(|p| p.node == "proxy-1" && p.caught_up && p.acked.contains_key("eds"))
    })
    .await;
    assert!(v.published_at_unix_ms.is_some());
    let p = v.proxies.iter().find(|p| p.node == "proxy-1").unwrap();
    assert!(p.convergence_ms.is_some(), "{p:?}");
    stop_traffic.store(true, Ordering::Relaxed);
    let _ = traffic.await;
    client.stop();
    let _ = stop.send(());
    let _ = ads.await;
}
