//! End to end on 127.0.0.1: a control plane in the test steers a running gofe proxy in front of
//! demo backends over real ADS.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::google::protobuf::BoolValue;
use gofe_model::{
    EndpointConfig, RetryPolicyConfig, RouteActionConfig, RouteConfig, RouteMatchConfig,
    RouterConfig, VirtualHostConfig,
};
use gofe_proto::convert::{cluster_to_wire, empty_cluster, listener_to_wire, to_any};
use gofe_proto::wire::Any;
use gofe_proto::{
    ClusterResource, EndpointsResource, ListenerKind, ListenerResource, ResourceType, Resources,
    RouteResource, RouteSource, SocketSettings,
};
use gofe_proxy::demo::DemoBackend;
use gofe_proxy::xds::{ClientOptions, XdsClient};
use gofe_proxy::{Proxy, ProxyConfig};
use gofe_xds::{AdsServer, NodeKey, ServerOptions, Snapshot};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const DEADLINE: Duration = Duration::from_secs(20);

fn s(v: impl Into<String>) -> String {
    v.into()
}

/// A listener on `listen`, all paths to cluster `web`, whose endpoints are `endpoints`.
fn resources(
    listen: SocketAddr,
    endpoints: &[(SocketAddr, u32)],
    raw_extra: Option<&str>,
) -> Resources {
    let mut r = Resources::default();
    r.listeners.insert(
        "ingress".into(),
        ListenerResource {
            name: "ingress".into(),
            kind: ListenerKind::Socket {
                address: listen.to_string(),
                settings: SocketSettings::default(),
            },
            routes: RouteSource::Rds("ingress-routes".into()),
        },
    );
    r.routes.insert(
        "ingress-routes".into(),
        RouteResource {
            name: "ingress-routes".into(),
            router: RouterConfig {
                virtual_hosts: vec![VirtualHostConfig {
                    name: s("all"),
                    domains: vec![s("*")],
                    fault: None,
                    local_ratelimit: None,
                    routes: vec![RouteConfig {
                        name: None,
                        fault: None,
                        local_ratelimit: None,
                        matcher: RouteMatchConfig {
                            prefix: Some(s("/")),
                            ..Default::default()
                        },
                        route: RouteActionConfig {
                            cluster: Some(s("web")),
                            timeout: Duration::from_secs(5),
                            ..Default::default()
                        },
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            },
        },
    );
    r.clusters.insert(
        "web".into(),
        ClusterResource {
            config: empty_cluster("web"),
            eds_service_name: Some("web".into()),
            circuit_breakers: None,
            outlier_detection: None,
        },
    );
    let mut eps: Vec<EndpointConfig> = endpoints
        .iter()
        .map(|(a, w)| EndpointConfig {
            address: s(a.to_string()),
            weight: *w,
            health_status: Default::default(),
            locality: None,
            priority: 0,
            locality_weight: None,
        })
        .collect();
    if let Some(raw) = raw_extra {
        eps.push(EndpointConfig {
            address: s(raw),
            weight: 1,
            health_status: Default::default(),
            locality: None,
            priority: 0,
            locality_weight: None,
        });
    }
    r.endpoints.insert(
        "web".into(),
        EndpointsResource {
            cluster_name: "web".into(),
            overprovisioning_factor: gofe_model::DEFAULT_OVERPROVISIONING_FACTOR,
            endpoints: eps,
        },
    );
    r
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

struct ControlPlane {
    server: AdsServer,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl ControlPlane {
    async fn start(addr: SocketAddr) -> ControlPlane {
        let server = AdsServer::new(ServerOptions {
            debounce: Duration::from_millis(5),
            ..Default::default()
        });
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(gofe_xds::serve(listener, server.clone(), None, async {
            let _ = stopped.await;
        }));
        ControlPlane {
            server,
            addr,
            stop: Some(stop),
            task,
        }
    }

    fn push(&self, r: &Resources) {
        self.server
            .cache()
            .set_snapshot(NodeKey::Default, Snapshot::from_resources(r).unwrap());
    }

    async fn kill(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = self.task.await;
    }
}

fn client_options(server: SocketAddr) -> ClientOptions {
    ClientOptions {
        node_id: "proxy-1".into(),
        node_cluster: "test".into(),
        server: server.to_string(),
        tls: None,
        base: ProxyConfig::default(),
        drain: Duration::from_millis(100),
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        load_reporting: false,
    }
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<bytes::Bytes>>;

fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// Sends `n` requests and counts answers by `x-backend` (`"error"` for failures).
async fn split(client: &HttpClient, listen: SocketAddr, n: usize) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let uri: http::Uri = format!("http://{listen}/").parse().unwrap();
        let who = match client.get(uri).await {
            Ok(resp) if resp.status().is_success() => {
                let who = resp
                    .headers()
                    .get("x-backend")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("?")
                    .to_owned();
                let _ = resp.into_body().collect().await;
                who
            }
            Ok(resp) => format!("status {}", resp.status().as_u16()),
            Err(_) => "error".into(),
        };
        *counts.entry(who).or_insert(0) += 1;
    }
    counts
}

fn counts(pairs: &[(&str, usize)]) -> HashMap<String, usize> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

/// Polls until a window of `n` requests splits exactly as `want` (smooth weighted round robin
/// is exact over a whole cycle), or fails at the deadline with the last split seen.
async fn wait_for_split(
    client: &HttpClient,
    listen: SocketAddr,
    n: usize,
    want: &HashMap<String, usize>,
) {
    let start = Instant::now();
    let mut last = HashMap::new();
    while start.elapsed() < DEADLINE {
        last = split(client, listen, n).await;
        if &last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("split never became {want:?}; last {last:?}");
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < DEADLINE {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

struct Fixture {
    a: DemoBackend,
    b: DemoBackend,
    listen: SocketAddr,
    proxy: Proxy,
    client: XdsClient,
    http: HttpClient,
}

async fn fixture(cp: &ControlPlane) -> Fixture {
    let a = DemoBackend::start("127.0.0.1:0".parse().unwrap(), "a")
        .await
        .unwrap();
    let b = DemoBackend::start("127.0.0.1:0".parse().unwrap(), "b")
        .await
        .unwrap();
    let listen = free_port();
    let proxy = Proxy::new();
    let client = XdsClient::start(proxy.clone(), client_options(cp.addr)).unwrap();
    Fixture {
        a,
        b,
        listen,
        proxy,
        client,
        http: http_client(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_weights_steer_the_running_proxy() {
    let cp = ControlPlane::start("127.0.0.1:0".parse().unwrap()).await;
    let f = fixture(&cp).await;
    cp.push(&resources(
        f.listen,
        &[(f.a.addr(), 3), (f.b.addr(), 1)],
        None,
    ));
    wait_for_split(&f.http, f.listen, 40, &counts(&[("a", 30), ("b", 10)])).await;

    cp.push(&resources(
        f.listen,
        &[(f.a.addr(), 1), (f.b.addr(), 4)],
        None,
    ));
    wait_for_split(&f.http, f.listen, 50, &counts(&[("a", 10), ("b", 40)])).await;

    // Weight 0 drains an endpoint.
    cp.push(&resources(
        f.listen,
        &[(f.a.addr(), 0), (f.b.addr(), 1)],
        None,
    ));
    wait_for_split(&f.http, f.listen, 20, &counts(&[("b", 20)])).await;

    assert!(f.proxy.active().source == "xds");
    let metrics = cp.server.metrics_text();
    assert!(
        metrics.contains("gofe_xds_connected_proxies 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gofe_xds_pushes_total{type=\"eds\"}"),
        "{metrics}"
    );
    f.client.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_resource_is_nacked_and_the_proxy_keeps_serving() {
    let cp = ControlPlane::start("127.0.0.1:0".parse().unwrap()).await;
    let f = fixture(&cp).await;
    cp.push(&resources(
        f.listen,
        &[(f.a.addr(), 1), (f.b.addr(), 1)],
        None,
    ));
    wait_for_split(&f.http, f.listen, 20, &counts(&[("a", 10), ("b", 10)])).await;
    let mut status = f.client.status();
    let good_eds = status.borrow().versions[&gofe_proto::ResourceType::Endpoints].clone();

    // An endpoint address the proxy refuses: the client NACKs with the reason.
    cp.push(&resources(
        f.listen,
        &[(f.a.addr(), 1), (f.b.addr(), 3)],
        Some("bad host:80"),
    ));
    let start = Instant::now();
    while status.borrow().last_nack.is_none() {
        assert!(start.elapsed() < DEADLINE, "no NACK");
        let _ = tokio::time::timeout(Duration::from_millis(100), status.changed()).await;
    }
    let nack = status.borrow().last_nack.clone().unwrap();
    assert!(nack.contains("invalid endpoint address"), "{nack}");
    assert_eq!(
        status.borrow().versions[&gofe_proto::ResourceType::Endpoints],
        good_eds
    );
    let server = cp.server.clone();
    wait_until("the server to export the NACK", || {
        let m = server.metrics_text();
        m.contains("gofe_xds_nacks_total{type=\"eds\"} 1") && m.contains("invalid endpoint address")
    })
    .await;
    // Still the old split, and the bad version is not resent in a loop.
    assert_eq!(
        split(&f.http, f.listen, 20).await,
        counts(&[("a", 10), ("b", 10)])
    );
    assert_eq!(status.borrow().nacks, 1);

    // A good version afterwards is accepted.
    cp.push(&resources(
        f.listen,
        &[(f.a.addr(), 1), (f.b.addr(), 3)],
        None,
    ));
    wait_for_split(&f.http, f.listen, 20, &counts(&[("a", 5), ("b", 15)])).await;
    assert_eq!(status.borrow().nacks, 1);
    f.client.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_serves_through_a_control_plane_restart_and_resyncs() {
    let cp = ControlPlane::start("127.0.0.1:0".parse().unwrap()).await;
    let cp_addr = cp.addr;
    let f = fixture(&cp).await;
    cp.push(&resources(
        f.listen,
        &[(f.a.addr(), 1), (f.b.addr(), 1)],
        None,
    ));
    wait_for_split(&f.http, f.listen, 20, &counts(&[("a", 10), ("b", 10)])).await;
    let status = f.client.status();

    cp.kill().await;
    wait_until("the client to notice the outage", || {
        !status.borrow().connected
    })
    .await;
    // Fail static: every request still succeeds with the last configuration.
    assert_eq!(
        split(&f.http, f.listen, 20).await,
        counts(&[("a", 10), ("b", 10)])
    );

    let cp = ControlPlane::start(cp_addr).await;
    cp.push(&resources(
        f.listen,
        &[(f.a.addr(), 4), (f.b.addr(), 1)],
        None,
    ));
    wait_for_split(&f.http, f.listen, 50, &counts(&[("a", 40), ("b", 10)])).await;
    assert!(status.borrow().connected);
    f.client.stop();
    f.proxy.shutdown(Duration::ZERO).await;
    f.a.stop().await;
    f.b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_bootstrap_listener_with_dynamic_clusters() {
    let cp = ControlPlane::start("127.0.0.1:0".parse().unwrap()).await;
    let a = DemoBackend::start("127.0.0.1:0".parse().unwrap(), "a")
        .await
        .unwrap();
    let listen = free_port();
    // Static resources may route to clusters that arrive over CDS: not checked as a whole.
    let base: ProxyConfig = gofe_yaml::from_str(&format!(
        r#"
listeners:
  - name: "static-ingress"
    address: "{listen}"
    filters:
      - type: "router"
        config:
          virtual_hosts:
            - name: "all"
              domains: ["*"]
              routes:
                - match: {{ prefix: "/" }}
                  route: {{ cluster: "web" }}
"#
    ))
    .unwrap();
    let proxy = Proxy::new();
    let client = XdsClient::start(
        proxy.clone(),
        ClientOptions {
            base,
            ..client_options(cp.addr)
        },
    )
    .unwrap();
    let http = http_client();
    // Before the control plane says anything, the static listener serves (503: no cluster yet).
    wait_for_split(&http, listen, 2, &counts(&[("status 503", 2)])).await;
    // Dynamic cluster and endpoints only; the listener stays the static one.
    let mut r = resources(free_port(), &[(a.addr(), 1)], None);
    r.listeners.clear();
    r.routes.clear();
    cp.push(&r);
    wait_for_split(&http, listen, 5, &counts(&[("a", 5)])).await;
    let active = proxy.active();
    assert_eq!(active.config.listeners.len(), 1);
    assert_eq!(
        active.config.listeners[0].name.as_ref().unwrap(),
        "static-ingress"
    );
    client.stop();
}

/// What a control plane other than gofe's might send alongside good resources: a cluster with
/// a balancing policy gofe does not have, a listener asking for path normalization, and a load
/// assignment whose address is not an IP address.
fn with_bad_resources(r: &Resources, side: &ListenerResource) -> Snapshot {
    let mut encoded: HashMap<ResourceType, BTreeMap<String, Any>> = ResourceType::ALL
        .into_iter()
        .map(|t| (t, r.encode(t).unwrap()))
        .collect();
    let mut maglev = cluster_to_wire(&ClusterResource {
        config: empty_cluster("maglev"),
        eds_service_name: None,
        circuit_breakers: None,
        outlier_detection: None,
    })
    .unwrap();
    maglev.lb_policy = cluster::cluster::LbPolicy::Maglev as i32;
    encoded
        .get_mut(&ResourceType::Cluster)
        .unwrap()
        .insert("maglev".into(), to_any(&maglev));

    let mut l = listener_to_wire(side).unwrap();
    let filter = l.filter_chains[0].filters.last_mut().unwrap();
    let Some(listener::filter::ConfigType::TypedConfig(any)) = &filter.config_type else {
        panic!("no connection manager")
    };
    let mut manager = hcm::HttpConnectionManager::decode(any.value.as_slice()).unwrap();
    manager.normalize_path = Some(BoolValue { value: true });
    filter.config_type = Some(listener::filter::ConfigType::TypedConfig(to_any(&manager)));
    encoded
        .get_mut(&ResourceType::Listener)
        .unwrap()
        .insert(side.name.clone(), to_any(&l));

    let mut bad_eds = Resources::default();
    bad_eds.endpoints.insert(
        "extra".into(),
        EndpointsResource {
            cluster_name: "extra".into(),
            overprovisioning_factor: gofe_model::DEFAULT_OVERPROVISIONING_FACTOR,
            endpoints: vec![EndpointConfig {
                address: s("999.999.999.999:80"),
                weight: 1,
                health_status: Default::default(),
                locality: None,
                priority: 0,
                locality_weight: None,
            }],
        },
    );
    encoded
        .get_mut(&ResourceType::Endpoints)
        .unwrap()
        .extend(bad_eds.encode(ResourceType::Endpoints).unwrap());
    Snapshot::from_encoded(encoded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_resource_is_nacked_by_name_and_the_others_applied() {
    let cp = ControlPlane::start("127.0.0.1:0".parse().unwrap()).await;
    let f = fixture(&cp).await;
    let mut r = resources(f.listen, &[(f.a.addr(), 1), (f.b.addr(), 1)], None);
    // RouteAction.retry_policy travels to the proxy.
    r.routes
        .get_mut("ingress-routes")
        .unwrap()
        .router
        .virtual_hosts[0]
        .routes[0]
        .route
        .retry_policy = Some(RetryPolicyConfig {
        retry_on: s("5xx,reset"),
        num_retries: 2,
        per_try_timeout: Some(Duration::from_secs(1)),
    });
    r.clusters.insert(
        "extra".into(),
        ClusterResource {
            config: empty_cluster("extra"),
            eds_service_name: Some("extra".into()),
            circuit_breakers: None,
            outlier_detection: None,
        },
    );
    let side_addr = free_port();
    let side = ListenerResource {
        name: "side".into(),
        kind: ListenerKind::Socket {
            address: side_addr.to_string(),
            settings: SocketSettings::default(),
        },
        routes: RouteSource::Rds("ingress-routes".into()),
    };
    cp.server
        .cache()
        .set_snapshot(NodeKey::Default, with_bad_resources(&r, &side));

    // The good resources of each response serve.
    wait_for_split(&f.http, f.listen, 20, &counts(&[("a", 10), ("b", 10)])).await;
    let server = cp.server.clone();
    wait_until("a NACK of each type naming its bad resource", || {
        let m = server.metrics_text();
        ["cds", "lds", "eds"]
            .iter()
            .all(|t| m.contains(&format!("gofe_xds_nacks_total{{type=\"{t}\"}} 1")))
    })
    .await;
    let m = server.metrics_text();
    let nack_line = |t: &str| {
        m.lines()
            .find(|l| {
                l.starts_with("gofe_xds_last_nack_info") && l.contains(&format!("type=\"{t}\""))
            })
            .unwrap_or_else(|| panic!("no {t} NACK in {m}"))
            .to_owned()
    };
    let cds = nack_line("cds");
    assert!(cds.contains("Cluster \\\"maglev\\\": lb_policy"), "{cds}");
    let lds = nack_line("lds");
    assert!(
        lds.contains("Listener \\\"side\\\": ")
            && lds.contains("normalize_path: not supported by gofe"),
        "{lds}"
    );
    let eds = nack_line("eds");
    assert!(
        eds.contains("ClusterLoadAssignment \\\"extra\\\": ") && eds.contains("999.999.999.999"),
        "{eds}"
    );
    for line in [&cds, &lds, &eds] {
        assert!(
            !line.contains("\\\"web\\\"") && !line.contains("ingress"),
            "only the bad ones: {line}"
        );
    }

    let snapshot = f.proxy.active();
    let active = &snapshot.config;
    let listeners: Vec<&str> = active
        .listeners
        .iter()
        .filter_map(|l| l.name.as_deref())
        .collect();
    assert_eq!(listeners, ["ingress"]);
    let mut clusters: Vec<&str> = active.clusters.iter().map(|c| c.name.as_str()).collect();
    clusters.sort_unstable();
    assert_eq!(clusters, ["extra", "web"]);
    let extra = active.clusters.iter().find(|c| c.name == "extra").unwrap();
    assert!(
        extra.endpoints.is_empty(),
        "its load assignment was refused"
    );
    let retry = active.listeners[0].filters[0].config.virtual_hosts[0].routes[0]
        .route
        .retry_policy
        .clone()
        .expect("retry policy applied");
    assert_eq!(
        (retry.retry_on.as_str(), retry.num_retries),
        ("5xx,reset", 2)
    );

    // The control plane mends the listener: it is taken, and the other listener keeps serving.
    let status = f.client.status();
    let nacks = status.borrow().nacks;
    let mut fixed = r.clone();
    fixed.listeners.insert("side".into(), side.clone());
    cp.push(&fixed);
    wait_for_split(&f.http, side_addr, 4, &counts(&[("a", 2), ("b", 2)])).await;
    wait_for_split(&f.http, f.listen, 4, &counts(&[("a", 2), ("b", 2)])).await;
    assert_eq!(status.borrow().nacks, nacks, "the mended snapshot is ACKed");
    f.client.stop();
    f.proxy.shutdown(Duration::ZERO).await;
    f.a.stop().await;
    f.b.stop().await;
    cp.kill().await;
}

// === readiness, the client's state, health as the proxy sees it ===

/// A static admin listener on 127.0.0.1:0, as a bootstrap would give one.
fn with_admin(server: SocketAddr) -> ClientOptions {
    let base: ProxyConfig = gofe_yaml::from_str("admin: { address: \"127.0.0.1:0\" }\n").unwrap();
    ClientOptions {
        base,
        ..client_options(server)
    }
}

/// GET `path` on the admin listener: status and body.
async fn admin_get(http: &HttpClient, admin: SocketAddr, path: &str) -> (u16, String) {
    let uri: http::Uri = format!("http://{admin}{path}").parse().unwrap();
    let resp = http.get(uri).await.expect("the admin listener answers");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn admin_addr(proxy: &Proxy) -> SocketAddr {
    let start = Instant::now();
    loop {
        if let Some(a) = proxy.admin_addr().await {
            return a;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the static admin listener never came up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Polls `path` until `f` holds for its (status, body), or fails with the last answer.
async fn admin_until(
    http: &HttpClient,
    admin: SocketAddr,
    path: &str,
    what: &str,
    f: impl Fn(u16, &str) -> bool,
) -> String {
    let start = Instant::now();
    let mut last = (0, String::new());
    while start.elapsed() < DEADLINE {
        last = admin_get(http, admin, path).await;
        if f(last.0, &last.1) {
            return last.1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "timed out waiting for {what}; last {path}: {} {}",
        last.0, last.1
    );
}

/// The value of one sample line of a Prometheus text, e.g. `gofe_xds_connected`.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_the_first_snapshot_is_serving() {
    let cp = ControlPlane::start("127.0.0.1:0".parse().unwrap()).await;
    let a = DemoBackend::start("127.0.0.1:0".parse().unwrap(), "a")
        .await
        .unwrap();
    let listen = free_port();
    let proxy = Proxy::new();
    let client = XdsClient::start(proxy.clone(), with_admin(cp.addr)).unwrap();
    let http = http_client();
    let admin = admin_addr(&proxy).await;
    let status = client.status();
    wait_until("the ADS stream to open", || status.borrow().connected).await;

    // Connected, but the control plane has published nothing: not ready.
    let (code, body) = admin_get(&http, admin, "/ready").await;
    assert_eq!((code, body.as_str()), (503, "INITIALIZING\n"));
    let metrics = admin_get(&http, admin, "/metrics").await.1;
    assert_eq!(
        sample(&metrics, "gofe_xds_connected"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(&metrics, r#"gofe_xds_update_accepted_total{type="cds"}"#),
        Some(0.0),
        "{metrics}"
    );
    let dump: serde_json::Value =
        serde_json::from_str(&admin_get(&http, admin, "/config_dump").await.1).unwrap();
    assert_eq!(dump["ready"], "INITIALIZING");
    assert_eq!(dump["xds"]["connected"], true);
    assert_eq!(dump["xds"]["initial_fetch"], "waiting");
    assert_eq!(dump["xds"]["initial_fetch_timeout_ms"], 15000);

    cp.push(&resources(listen, &[(a.addr(), 1)], None));
    admin_until(&http, admin, "/ready", "ready", |c, _| c == 200).await;
    // Ready means the snapshot's listener and cluster serve, at once.
    assert_eq!(split(&http, listen, 3).await, counts(&[("a", 3)]));

    let metrics = admin_get(&http, admin, "/metrics").await.1;
    let versions = status.borrow().versions.clone();
    for (ty, short) in [
        (gofe_proto::ResourceType::Cluster, "cds"),
        (gofe_proto::ResourceType::Endpoints, "eds"),
        (gofe_proto::ResourceType::Listener, "lds"),
        (gofe_proto::ResourceType::Route, "rds"),
    ] {
        let version = &versions[&ty];
        assert_eq!(
            sample(
                &metrics,
                &format!(r#"gofe_xds_version_info{{type="{short}",version="{version}"}}"#)
            ),
            Some(1.0),
            "{metrics}"
        );
        assert!(
            sample(
                &metrics,
                &format!(r#"gofe_xds_update_accepted_total{{type="{short}"}}"#)
            )
            .unwrap()
                >= 1.0,
            "{metrics}"
        );
    }
    assert_eq!(
        sample(&metrics, "gofe_xds_init_fetch_timeout_total"),
        Some(0.0)
    );
    let dump: serde_json::Value =
        serde_json::from_str(&admin_get(&http, admin, "/config_dump").await.1).unwrap();
    assert_eq!(dump["ready"], "LIVE");
    assert_eq!(dump["xds"]["initial_fetch"], "done");
    assert_eq!(
        dump["xds"]["types"]["eds"]["version"],
        versions[&gofe_proto::ResourceType::Endpoints].as_str()
    );
    client.stop();
    proxy.shutdown(Duration::ZERO).await;
    a.stop().await;
    cp.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_answer_the_proxy_is_ready_after_the_initial_fetch_timeout() {
    // A control plane that never publishes: after initial_fetch_timeout the proxy reports
    // ready with what it has (its static admin listener), as Envoy does.
    let cp = ControlPlane::start("127.0.0.1:0".parse().unwrap()).await;
    let proxy = Proxy::new();
    let client = XdsClient::start_with_initial_fetch_timeout(
        proxy.clone(),
        with_admin(cp.addr),
        Duration::from_millis(200),
    )
    .unwrap();
    let http = http_client();
    let admin = admin_addr(&proxy).await;
    admin_until(&http, admin, "/ready", "ready after the timeout", |c, b| {
        c == 200 && b == "LIVE\n"
    })
    .await;
    let metrics = admin_get(&http, admin, "/metrics").await.1;
    assert_eq!(
        sample(&metrics, "gofe_xds_init_fetch_timeout_total"),
        Some(1.0),
        "{metrics}"
    );
    let dump: serde_json::Value =
        serde_json::from_str(&admin_get(&http, admin, "/config_dump").await.1).unwrap();
    assert_eq!(dump["xds"]["initial_fetch"], "timed_out");
    client.stop();
    proxy.shutdown(Duration::ZERO).await;
    cp.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_are_asked_for_only_by_the_names_listeners_reference() {
    let cp = ControlPlane::start("127.0.0.1:0".parse().unwrap()).await;
    let f = fixture(&cp).await;
    // Clusters and endpoints, no listener yet: nothing to ask RDS for.
    let mut r = resources(f.listen, &[(f.a.addr(), 1)], None);
    let routes = std::mem::take(&mut r.routes);
    let listeners = std::mem::take(&mut r.listeners);
    cp.push(&r);
    let status = f.client.status();
    wait_until("EDS to be accepted", || {
        status
            .borrow()
            .versions
            .contains_key(&gofe_proto::ResourceType::Endpoints)
    })
    .await;
    wait_until("LDS to be accepted", || {
        status
            .borrow()
            .versions
            .contains_key(&gofe_proto::ResourceType::Listener)
    })
    .await;
    assert_eq!(
        cp.server.acks(gofe_proto::ResourceType::Route),
        0,
        "no RDS request before a listener names a route configuration"
    );
    let metrics = cp.server.metrics_text();
    assert!(
        !metrics.contains(r#"gofe_xds_pushes_total{type="rds"}"#),
        "{metrics}"
    );

    // A listener names its routes: now RDS is asked for them, and they serve.
    r.routes = routes;
    r.listeners = listeners;
    cp.push(&r);
    wait_for_split(&f.http, f.listen, 4, &counts(&[("a", 4)])).await;
    assert!(cp.server.acks(gofe_proto::ResourceType::Route) >= 1);
    f.client.stop();
    f.proxy.shutdown(Duration::ZERO).await;
    f.a.stop().await;
    f.b.stop().await;
    cp.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_ejection_is_visible_at_the_proxy() {
    let cp = ControlPlane::start("127.0.0.1:0".parse().unwrap()).await;
    let a = DemoBackend::start("127.0.0.1:0".parse().unwrap(), "a")
        .await
        .unwrap();
    let b = DemoBackend::start("127.0.0.1:0".parse().unwrap(), "b")
        .await
        .unwrap();
    let listen = free_port();
    let proxy = Proxy::new();
    let client = XdsClient::start(proxy.clone(), with_admin(cp.addr)).unwrap();
    let http = http_client();
    let admin = admin_addr(&proxy).await;
    // The controller ejects `a`: EDS carries it UNHEALTHY (with its weight).
    let mut r = resources(listen, &[(a.addr(), 1), (b.addr(), 1)], None);
    r.endpoints.get_mut("web").unwrap().endpoints[0].health_status =
        gofe_model::HealthStatus::Unhealthy;
    cp.push(&r);
    wait_for_split(&http, listen, 6, &counts(&[("b", 6)])).await;

    let metrics = admin_get(&http, admin, "/metrics").await.1;
    let (ea, eb) = (a.addr().to_string(), b.addr().to_string());
    let series = |name: &str, ep: &str, extra: &str| {
        sample(
            &metrics,
            &format!(r#"{name}{{cluster="web",endpoint="{ep}"{extra}}}"#),
        )
    };
    let controller = r#",source="controller""#;
    let outlier = r#",source="outlier""#;
    assert_eq!(
        series("gofe_endpoint_weight", &ea, ""),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        series("gofe_endpoint_health", &ea, controller),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        series("gofe_endpoint_health", &ea, outlier),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        series("gofe_endpoint_effective_weight", &ea, ""),
        Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        series("gofe_endpoint_health", &eb, controller),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        series("gofe_endpoint_effective_weight", &eb, ""),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("gofe_endpoint_health{") && l.contains(r#"source="config""#)),
        "xDS clusters' health is the controller's: {metrics}"
    );

    let dump: serde_json::Value =
        serde_json::from_str(&admin_get(&http, admin, "/config_dump").await.1).unwrap();
    let endpoint = |addr: &str| {
        dump["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["cluster"] == "web" && e["address"] == addr)
            .cloned()
            .unwrap_or_else(|| panic!("{addr} in {dump}"))
    };
    let ja = endpoint(&ea);
    assert_eq!(ja["health_status"], "unhealthy", "{ja}");
    assert_eq!(ja["health_source"], "controller", "{ja}");
    assert_eq!(ja["outlier"]["state"], "closed", "{ja}");
    assert_eq!(ja["weight"], 1, "{ja}");
    assert_eq!(ja["effective_weight"], 0, "{ja}");
    assert_eq!(endpoint(&eb)["effective_weight"], 1);

    // The controller lets it back in.
    let r = resources(listen, &[(a.addr(), 1), (b.addr(), 1)], None);
    cp.push(&r);
    wait_for_split(&http, listen, 6, &counts(&[("a", 3), ("b", 3)])).await;
    let metrics = admin_get(&http, admin, "/metrics").await.1;
    assert_eq!(
        sample(
            &metrics,
            &format!(
                r#"gofe_endpoint_health{{cluster="web",endpoint="{ea}",source="controller"}}"#
            )
        ),
        Some(1.0)
    );
    client.stop();
    proxy.shutdown(Duration::ZERO).await;
    a.stop().await;
    b.stop().await;
    cp.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_log_pushed_over_xds_writes_the_proxys_lines() {
    let cp = ControlPlane::start("127.0.0.1:0".parse().unwrap()).await;
    let f = fixture(&cp).await;
    let path = std::env::temp_dir().join(format!("gofe-xds-access-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let mut r = resources(f.listen, &[(f.a.addr(), 1)], None);
    let Some(ListenerResource {
        kind: ListenerKind::Socket { settings, .. },
        ..
    }) = r.listeners.get_mut("ingress")
    else {
        panic!("a socket listener")
    };
    // Over the wire: a FileAccessLog with log_format.json_format.
    settings.access_log = vec![gofe_model::AccessLogConfig {
        path: Some(path.to_str().unwrap().to_owned()),
        format: None,
        json_format: Some(BTreeMap::from([
            ("code".to_owned(), "%RESPONSE_CODE%".to_owned()),
            ("upstream".to_owned(), "%UPSTREAM_HOST%".to_owned()),
        ])),
    }];
    cp.push(&r);
    wait_for_split(&f.http, f.listen, 2, &counts(&[("a", 2)])).await;
    let want = format!(r#"{{"code":200,"upstream":"{}"}}"#, f.a.addr());
    wait_until("a logged line", || {
        std::fs::read_to_string(&path).is_ok_and(|t| t.lines().any(|l| l == want))
    })
    .await;
    f.client.stop();
    let _ = std::fs::remove_file(&path);
}

/// The snapshot of `r` with its route configuration `ingress-routes` edited by `edit` on the
/// wire (as another control plane would write it).
fn with_wire_routes(
    r: &Resources,
    edit: impl FnOnce(&mut envoy_types::pb::envoy::config::route::v3::RouteConfiguration),
) -> Snapshot {
    let mut encoded: HashMap<ResourceType, BTreeMap<String, Any>> = ResourceType::ALL
        .into_iter()
        .map(|t| (t, r.encode(t).unwrap()))
        .collect();
    let mut rc = gofe_proto::convert::route_to_wire(&r.routes["ingress-routes"]).unwrap();
    edit(&mut rc);
    encoded
        .get_mut(&ResourceType::Route)
        .unwrap()
        .insert("ingress-routes".into(), to_any(&rc));
    Snapshot::from_encoded(encoded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_pushed_in_typed_per_filter_config_aborts_before_the_backend() {
    use envoy_types::pb::envoy::config::route::v3 as route;
    use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as fault;
    use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
    let cp = ControlPlane::start("127.0.0.1:0".parse().unwrap()).await;
    let f = fixture(&cp).await;
    let r = resources(f.listen, &[(f.a.addr(), 1)], None);
    cp.push(&r);
    wait_for_split(&f.http, f.listen, 2, &counts(&[("a", 2)])).await;
    // The virtual host's fault filter configuration, in a FilterConfig: every request
    // aborted with 503.
    let abort = fault::HttpFault {
        abort: Some(fault::FaultAbort {
            percentage: Some(FractionalPercent {
                numerator: 100,
                denominator: 0,
            }),
            error_type: Some(fault::fault_abort::ErrorType::HttpStatus(503)),
            ..Default::default()
        }),
        ..Default::default()
    };
    let snapshot = with_wire_routes(&r, |rc| {
        rc.virtual_hosts[0].typed_per_filter_config.insert(
            gofe_proto::convert::FAULT_FILTER_NAME.into(),
            to_any(&route::FilterConfig {
                config: Some(to_any(&abort)),
                ..Default::default()
            }),
        );
    });
    cp.server.cache().set_snapshot(NodeKey::Default, snapshot);
    wait_for_split(&f.http, f.listen, 3, &counts(&[("status 503", 3)])).await;
    let served = f.a.served();
    assert_eq!(
        split(&f.http, f.listen, 20).await,
        counts(&[("status 503", 20)])
    );
    assert_eq!(
        f.a.served(),
        served,
        "aborted requests never reach the backend"
    );
    f.client.stop();
    f.a.stop().await;
    f.b.stop().await;
    cp.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_rate_limit_pushed_in_typed_per_filter_config_answers_429() {
    use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
    use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
    use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, TokenBucket};
    use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
    let cp = ControlPlane::start("127.0.0.1:0".parse().unwrap()).await;
    let f = fixture(&cp).await;
    let r = resources(f.listen, &[(f.a.addr(), 1)], None);
    cp.push(&r);
    wait_for_split(&f.http, f.listen, 2, &counts(&[("a", 2)])).await;
    // Envoy's documented per-route form: two tokens an hour, enabled and enforced for all.
    let all = || {
        Some(RuntimeFractionalPercent {
            default_value: Some(FractionalPercent {
                numerator: 100,
                denominator: 0,
            }),
            runtime_key: "local_rate_limit_enforced".into(),
        })
    };
    let limit = LocalRateLimit {
        stat_prefix: "http_local_rate_limiter".into(),
        token_bucket: Some(TokenBucket {
            max_tokens: 2,
            tokens_per_fill: Some(UInt32Value { value: 1 }),
            fill_interval: Some(PbDuration {
                seconds: 3600,
                nanos: 0,
            }),
        }),
        filter_enabled: all(),
        filter_enforced: all(),
        ..Default::default()
    };
    let snapshot = with_wire_routes(&r, |rc| {
        rc.virtual_hosts[0].routes[0]
            .typed_per_filter_config
            .insert(
                gofe_proto::convert::LOCAL_RATELIMIT_FILTER_NAME.into(),
                to_any(&limit),
            );
    });
    cp.server.cache().set_snapshot(NodeKey::Default, snapshot);
    // Once the limit is in force, its two tokens go and everything after is 429.
    wait_until_async("a 429", || async {
        split(&f.http, f.listen, 1).await.contains_key("status 429")
    })
    .await;
    let served = f.a.served();
    assert_eq!(
        split(&f.http, f.listen, 10).await,
        counts(&[("status 429", 10)])
    );
    assert_eq!(
        f.a.served(),
        served,
        "limited requests never reach the backend"
    );
    f.client.stop();
    f.a.stop().await;
    f.b.stop().await;
    cp.kill().await;
}

/// An HTTP/1.1 backend that answers 200 and records each request's `Host`.
async fn host_recorder() -> (
    SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hosts = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorded = std::sync::Arc::clone(&hosts);
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let recorded = std::sync::Arc::clone(&recorded);
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let host = req
                        .headers()
                        .get("host")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    recorded.lock().unwrap().push(host);
                    async move {
                        let _ = req.into_body().collect().await;
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            Empty::<bytes::Bytes>::new(),
                        ))
                    }
                });
            conns.spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, hosts, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_policy_pushed_on_a_virtual_host_copies_its_routes_requests() {
    use envoy_types::pb::envoy::config::route::v3::route_action::RequestMirrorPolicy;
    let cp = ControlPlane::start("127.0.0.1:0".parse().unwrap()).await;
    let f = fixture(&cp).await;
    let (shadow, hosts, shadow_task) = host_recorder().await;
    let mut r = resources(f.listen, &[(f.a.addr(), 1)], None);
    r.clusters.insert(
        "shadow".into(),
        ClusterResource {
            config: empty_cluster("shadow"),
            eds_service_name: Some("shadow".into()),
            circuit_breakers: None,
            outlier_detection: None,
        },
    );
    r.endpoints.insert(
        "shadow".into(),
        EndpointsResource {
            cluster_name: "shadow".into(),
            overprovisioning_factor: gofe_model::DEFAULT_OVERPROVISIONING_FACTOR,
            endpoints: vec![EndpointConfig {
                address: shadow.to_string(),
                weight: 1,
                health_status: Default::default(),
                locality: None,
                priority: 0,
                locality_weight: None,
            }],
        },
    );
    // Envoy's form: the virtual host's policies, for every route without its own.
    let mirrored = |policy: RequestMirrorPolicy| {
        with_wire_routes(&r, move |rc| {
            rc.virtual_hosts[0].request_mirror_policies = vec![policy];
        })
    };
    cp.server.cache().set_snapshot(
        NodeKey::Default,
        mirrored(RequestMirrorPolicy {
            cluster: "shadow".into(),
            ..Default::default()
        }),
    );
    wait_until_async("a copy at the shadow", || async {
        let _ = split(&f.http, f.listen, 1).await;
        !hosts.lock().unwrap().is_empty()
    })
    .await;
    let before = hosts.lock().unwrap().len();
    assert_eq!(split(&f.http, f.listen, 10).await, counts(&[("a", 10)]));
    wait_until("ten more copies", || {
        hosts.lock().unwrap().len() >= before + 10
    })
    .await;
    let expected = format!("127.0.0.1-shadow:{}", f.listen.port());
    assert!(
        hosts.lock().unwrap().iter().all(|h| *h == expected),
        "{:?}",
        hosts.lock().unwrap()
    );

    // What gofe cannot honour is NACKed by field, and the last good version keeps serving.
    let mut status = f.client.status();
    cp.server.cache().set_snapshot(
        NodeKey::Default,
        mirrored(RequestMirrorPolicy {
            cluster: "shadow".into(),
            cluster_header: "x-shadow-cluster".into(),
            ..Default::default()
        }),
    );
    let start = Instant::now();
    while status.borrow().last_nack.is_none() {
        assert!(start.elapsed() < DEADLINE, "no NACK");
        let _ = tokio::time::timeout(Duration::from_millis(100), status.changed()).await;
    }
    let nack = status.borrow().last_nack.clone().unwrap();
    assert!(
        nack.contains("virtual_hosts[0].request_mirror_policies[0].cluster_header"),
        "{nack}"
    );
    let before = hosts.lock().unwrap().len();
    assert_eq!(split(&f.http, f.listen, 5).await, counts(&[("a", 5)]));
    wait_until("the old policy's copies", || {
        hosts.lock().unwrap().len() >= before + 5
    })
    .await;

    f.client.stop();
    f.proxy.shutdown(Duration::ZERO).await;
    f.a.stop().await;
    f.b.stop().await;
    shadow_task.abort();
    let _ = shadow_task.await;
    cp.kill().await;
}

async fn wait_until_async<F: std::future::Future<Output = bool>>(
    what: &str,
    mut f: impl FnMut() -> F,
) {
    let start = Instant::now();
    while start.elapsed() < DEADLINE {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A minimal OTLP/HTTP collector: decodes each POSTed body as an `ExportTraceServiceRequest`
/// (gofe-trace's messages; the Python receiver of the wire tests is the independent decoder)
/// and keeps it.
async fn collector() -> (
    SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<gofe_trace::otlp::ExportTraceServiceRequest>>>,
    tokio::task::JoinHandle<()>,
) {
    use hyper::service::service_fn;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = std::sync::Arc::clone(&got);
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let kept = std::sync::Arc::clone(&kept);
            conns.spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let kept = std::sync::Arc::clone(&kept);
                    async move {
                        let body = req.into_body().collect().await?.to_bytes();
                        let status = match gofe_trace::otlp::ExportTraceServiceRequest::decode(body)
                        {
                            Ok(export) => {
                                kept.lock().unwrap().push(export);
                                200
                            }
                            Err(_) => 400,
                        };
                        let mut resp =
                            http::Response::new(http_body_util::Empty::<bytes::Bytes>::new());
                        *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Ok::<_, hyper::Error>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, got, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracing_pushed_over_xds_exports_the_proxys_spans() {
    let cp = ControlPlane::start("127.0.0.1:0".parse().unwrap()).await;
    let f = fixture(&cp).await;
    let (collector, exports, collector_task) = collector().await;
    let mut r = resources(f.listen, &[(f.a.addr(), 1)], None);
    let Some(ListenerResource {
        kind: ListenerKind::Socket { settings, .. },
        ..
    }) = r.listeners.get_mut("ingress")
    else {
        panic!("a socket listener")
    };
    // Over the wire: HttpConnectionManager.tracing with envoy.tracers.opentelemetry.
    let mut tracing =
        gofe_model::TracingConfig::to_collector(&format!("http://{collector}/v1/traces"));
    tracing.provider.opentelemetry.service_name = "xds-edge".into();
    settings.tracing = Some(Box::new(tracing));
    cp.push(&r);
    wait_for_split(&f.http, f.listen, 2, &counts(&[("a", 2)])).await;
    // A traced client.
    let client_trace = "0af7651916cd43dd8448eb211c80319c";
    let client_span = "b7ad6b7169203331";
    let req = http::Request::get(format!("http://{}/", f.listen))
        .header("traceparent", format!("00-{client_trace}-{client_span}-01"))
        .body(Empty::new())
        .unwrap();
    let resp = f.http.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let _ = resp.into_body().collect().await;
    f.client.stop();
    // Shutdown returns once the exporter has sent every span.
    f.proxy.shutdown(Duration::from_secs(5)).await;
    let exports = exports.lock().unwrap().clone();
    collector_task.abort();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut spans = Vec::new();
    for e in &exports {
        for rs in &e.resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .and_then(|kv| kv.value.clone());
            assert_eq!(
                service.and_then(|v| v.value),
                Some(gofe_trace::otlp::any_value::Value::StringValue(
                    "xds-edge".into()
                ))
            );
            for ss in &rs.scope_spans {
                spans.extend(ss.spans.iter().cloned());
            }
        }
    }
    let server = spans
        .iter()
        .find(|s| hex(&s.parent_span_id) == client_span)
        .expect("the traced request's SERVER span");
    assert_eq!(hex(&server.trace_id), client_trace);
    assert_eq!(server.kind, gofe_trace::otlp::SPAN_KIND_SERVER);
    let attempt = spans
        .iter()
        .find(|s| s.parent_span_id == server.span_id)
        .expect("its CLIENT span");
    assert_eq!(attempt.kind, gofe_trace::otlp::SPAN_KIND_CLIENT);
    let port = attempt
        .attributes
        .iter()
        .find(|kv| kv.key == "server.port")
        .and_then(|kv| kv.value.clone())
        .and_then(|v| v.value);
    assert_eq!(
        port,
        Some(gofe_trace::otlp::any_value::Value::IntValue(i64::from(
            f.a.addr().port()
        )))
    );
    cp.kill().await;
}

/// A `tcp` listener and its EDS cluster published over ADS: the proxy copies bytes both ways
/// to the endpoint (a server that is not HTTP), and serves a half-close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_listener_published_over_ads_proxies_bytes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Answers what it read, upper-cased, once the client half-closes.
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = upstream.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = upstream.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        s.write_all(&got.to_ascii_uppercase()).await.unwrap();
    });
    let cp = ControlPlane::start("127.0.0.1:0".parse().unwrap()).await;
    let listen = free_port();
    let mut r = Resources::default();
    r.listeners.insert(
        "db".into(),
        ListenerResource {
            name: "db".into(),
            kind: ListenerKind::Socket {
                address: listen.to_string(),
                settings: SocketSettings {
                    tcp_proxy: Some(Box::new(gofe_model::TcpProxyConfig {
                        stat_prefix: None,
                        cluster: Some(s("db")),
                        weighted_clusters: None,
                        idle_timeout: Duration::from_secs(60),
                    })),
                    ..SocketSettings::default()
                },
            },
            routes: RouteSource::Inline(RouterConfig::default()),
        },
    );
    r.clusters.insert(
        "db".into(),
        ClusterResource {
            config: empty_cluster("db"),
            eds_service_name: Some("db".into()),
            circuit_breakers: None,
            outlier_detection: None,
        },
    );
    r.endpoints.insert(
        "db".into(),
        EndpointsResource {
            cluster_name: "db".into(),
            overprovisioning_factor: gofe_model::DEFAULT_OVERPROVISIONING_FACTOR,
            endpoints: vec![EndpointConfig {
                address: up_addr.to_string(),
                weight: 1,
                health_status: Default::default(),
                locality: None,
                priority: 0,
                locality_weight: None,
            }],
        },
    );
    let proxy = Proxy::new();
    let client = XdsClient::start(proxy.clone(), client_options(cp.addr)).unwrap();
    cp.push(&r);
    let active = proxy.clone();
    wait_until("the tcp listener", || {
        active
            .active()
            .config
            .listeners
            .iter()
            .any(|l| l.protocol == "tcp")
    })
    .await;
    let mut c = tokio::net::TcpStream::connect(listen).await.unwrap();
    c.write_all(b"not http, just bytes").await.unwrap();
    c.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, c.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer, b"NOT HTTP, JUST BYTES");
    server.await.unwrap();
    client.stop();
    proxy.shutdown(Duration::from_millis(100)).await;
    cp.kill().await;
}
