//! Kubernetes mode end to end against an in-memory API server (kube-rs's mock-service style;
//! see `fake_api`): TrafficPolicy and EndpointSlice watches drive a real gofe proxy in front of
//! real backends, the leader writes `.status` and Events, and followers serve its weights.

#![allow(unreachable_pub)]

mod fake_api;
mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fake_api::FakeApi;
use gofe_controller::config::{self, Loaded};
use gofe_controller::{kubernetes, Controller, Publisher};
use gofe_proxy::demo::DemoBackend;
use gofe_proxy::Proxy;
use http_body_util::{BodyExt, Empty};
use serde_json::{json, Value};
use support::XdsProxy;

const POLICIES: &str = "/apis/gofe.io/v1alpha1/trafficpolicies";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const LEASES: &str = "/apis/coordination.k8s.io/v1/leases";

const PROXY: &str = r#"
listeners:
  - address: "127.0.0.1:0"
    filters:
      - type: router
        config:
          virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{ match: { prefix: "/" }, route: { cluster: api } }]
clusters:
  - name: api
    connect_timeout: "1s"
admin: { address: "127.0.0.1:0" }
"#;

fn controller_yaml(targets: &str, identity: &str) -> String {
    format!(
        r#"
proxy_config: "unused.yaml"
interval: "500ms"
signals:
  source: embedded
  embedded: {{ targets: [{targets}] }}
  window: "3s"
  latency_quantile: 0.5
policy:
  failure_percentage_threshold: 30
  failure_percentage_request_volume: 10
  max_ejection_percent: 50
  latency_weighting: false
kubernetes:
  leader_election:
    identity: "{identity}"
    lease_namespace: gofe-system
    lease_duration: "2s"
    renew_deadline: "1500ms"
    retry_period: "200ms"
"#
    )
}

fn policy(spec: Value) -> Value {
    json!({"apiVersion": "gofe.io/v1alpha1", "kind": "TrafficPolicy",
           "metadata": {"name": "api", "namespace": "shop"}, "spec": spec})
}

fn slice(port: u16, ips: &[&str]) -> Value {
    let endpoints: Vec<Value> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| json!({"addresses": [ip], "conditions": {"ready": true},
                              "targetRef": {"kind": "Pod", "name": format!("api-{i}"), "namespace": "shop"}}))
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": "api-x1", "namespace": "shop",
                        "labels": {"kubernetes.io/service-name": "api"}},
           "addressType": "IPv4", "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
           "endpoints": endpoints})
}

/// Backends on 127.0.0.1, .2 and .3, all on one port, as Pods of one Service would be.
async fn backends() -> (u16, Vec<DemoBackend>) {
    for _ in 0..20 {
        let first = DemoBackend::start("127.0.0.1:0".parse().unwrap(), "api-0")
            .await
            .unwrap();
        let port = first.addr().port();
        let mut all = vec![first];
        for i in 2..=3 {
            let addr: SocketAddr = format!("127.0.0.{i}:{port}").parse().unwrap();
            if let Ok(b) = DemoBackend::start(addr, &format!("api-{}", i - 1)).await {
                all.push(b);
            }
        }
        if all.len() == 3 {
            return (port, all);
        }
        for b in all {
            b.stop().await;
        }
    }
    panic!("no port free on 127.0.0.1-3");
}

async fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The proxy's endpoints of `api`: address, the weight it balances by (an endpoint that is not
/// healthy gets no traffic whatever its weight, and EDS weights are at least 1), and health.
fn endpoints_of(proxy: &Proxy) -> Vec<(String, u32, bool)> {
    let active = proxy.active();
    active
        .config
        .clusters
        .iter()
        .find(|c| c.name == "api")
        .map(|c| {
            c.endpoints
                .iter()
                .map(|e| {
                    let healthy = e.health_status == gofe_proxy::config::HealthStatus::Healthy;
                    (
                        e.address.clone(),
                        if healthy { e.weight } else { 0 },
                        healthy,
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn start_proxy(node: &str) -> (XdsProxy, SocketAddr, SocketAddr) {
    let cfg = gofe_proxy::config::parse("proxy.yaml", PROXY).unwrap();
    let proxy = XdsProxy::start(&cfg, node).await;
    let listen = proxy.listener("127.0.0.1:0").await;
    let admin = proxy.admin;
    (proxy, listen, admin)
}

fn controller(
    targets: &str,
    identity: &str,
    publisher: Publisher,
) -> (Controller, config::KubernetesConfig) {
    let c = config::parse("controller.yaml", &controller_yaml(targets, identity)).unwrap();
    let k = c.kubernetes.clone().unwrap();
    let loaded = Loaded {
        controller: c,
        proxy: gofe_proxy::config::parse("proxy.yaml", PROXY).unwrap(),
    };
    (Controller::new(loaded, publisher).unwrap(), k)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_steers_discovered_endpoints_and_reports_on_the_policy() {
    let (port, backends) = backends().await;
    let (mesh, listen, admin) = start_proxy("proxy-1").await;
    let proxy = mesh.proxy.clone();
    let api = FakeApi::default();
    api.put(
        POLICIES,
        policy(json!({"host": "api", "port": "http",
                      "outlierDetection": {"baseEjectionTime": "7s", "maxEjectionPercent": 50}})),
    );
    api.put(SLICES, slice(port, &["127.0.0.1", "127.0.0.2"]));

    let (c, settings) = controller(&format!("\"{admin}\""), "replica-a", mesh.publisher());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let driver = tokio::spawn(kubernetes::drive(
        c,
        api.client("replica-a"),
        settings,
        Duration::from_millis(500),
        async {
            let _ = stop_rx.await;
        },
    ));

    // Discovery: the Service's ready endpoints reach the proxy.
    let ep = |i: u8| format!("127.0.0.{i}:{port}");
    wait_for(
        "two discovered endpoints at the proxy",
        Duration::from_secs(20),
        || {
            let e = endpoints_of(&proxy);
            (e.len() == 2 && e[0].0 == ep(1) && e[1].0 == ep(2)).then_some(())
        },
    )
    .await;

    // Steady traffic through the proxy.
    let running = Arc::new(AtomicBool::new(true));
    let traffic = {
        let running = Arc::clone(&running);
        tokio::spawn(async move {
            let client: hyper_util::client::legacy::Client<_, Empty<Bytes>> =
                hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http();
            let url: http::Uri = format!("http://{listen}/").parse().unwrap();
            let deadline = Instant::now() + Duration::from_secs(90);
            while running.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Ok(r) = client.get(url.clone()).await {
                    let _ = r.into_body().collect().await;
                }
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };

    // A new Pod becomes ready: the proxy gets it.
    api.put(
        SLICES,
        slice(port, &["127.0.0.1", "127.0.0.2", "127.0.0.3"]),
    );
    wait_for(
        "the third endpoint at the proxy",
        Duration::from_secs(20),
        || {
            endpoints_of(&proxy)
                .iter()
                .any(|e| e.0 == ep(3))
                .then_some(())
        },
    )
    .await;
    wait_for(
        "the new endpoint to take traffic",
        Duration::from_secs(20),
        || (backends[2].served() > 20).then_some(()),
    )
    .await;

    // One Pod fails every request: the leader ejects it, the proxy stops sending it traffic,
    // and the policy's status and an Event say so.
    backends[1].set_failure(1.0, 500);
    let status = wait_for(
        "the failing endpoint ejected in .status",
        Duration::from_secs(30),
        || {
            let s = api.get(POLICIES, "shop", "api")?["status"].clone();
            (s["ejected"] == json!([ep(2)])).then_some(s)
        },
    )
    .await;
    assert_eq!(status["cluster"], "api");
    assert_eq!(status["endpointCount"], 3);
    assert_eq!(status["ejectedCount"], 1);
    assert_eq!(status["observedGeneration"], 1);
    assert!(status["lastDecisionTime"].is_string());
    assert_eq!(status["conditions"][0]["type"], "Ready");
    assert_eq!(status["conditions"][0]["status"], "True");
    let failing = status["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == json!(ep(2)))
        .unwrap();
    assert_eq!(failing["pod"], "api-1");
    assert_eq!(failing["state"], "ejected");
    assert_eq!(failing["weight"], 0);
    support::wait_for(&proxy, "the ejection published to the proxy", |p| {
        endpoints_of(p)
            .iter()
            .any(|e| e.0 == ep(2) && !e.2 && e.1 == 0)
    })
    .await;
    let before = backends[1].served();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        backends[1].served(),
        before,
        "no traffic to the ejected Pod"
    );

    let event = wait_for("an Ejected event", Duration::from_secs(10), || {
        api.log().into_iter().find(|l| {
            l.method == http::Method::POST
                && l.path == "/apis/events.k8s.io/v1/namespaces/shop/events"
                && l.body.as_ref().is_some_and(|b| b["reason"] == "Ejected")
        })
    })
    .await;
    let body = event.body.unwrap();
    assert_eq!(body["type"], "Warning");
    assert_eq!(body["regarding"]["kind"], "TrafficPolicy");
    assert_eq!(body["regarding"]["name"], "api");
    let note = body["note"].as_str().unwrap();
    assert!(
        note.contains(&ep(2)) && note.contains("pod api-1"),
        "{note}"
    );
    assert!(
        note.contains("for 7 s"),
        "the policy's baseEjectionTime applies: {note}"
    );

    // The lease is this replica's; stopping releases it.
    let lease = api.get(LEASES, "gofe-system", "gofe-controller").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "replica-a");
    running.store(false, Ordering::Relaxed);
    let _ = traffic.await;
    stop_tx.send(()).unwrap();
    driver.await.unwrap();
    let lease = api.get(LEASES, "gofe-system", "gofe-controller").unwrap();
    assert!(
        lease["spec"]["holderIdentity"].is_null(),
        "released: {lease}"
    );

    // The policy's status was only ever written through the status subresource.
    assert!(api
        .log()
        .iter()
        .filter(|l| l.method == http::Method::PATCH && l.path.contains("trafficpolicies"))
        .all(|l| l.path.ends_with("/status")));
    mesh.stop().await;
    for b in backends {
        b.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_serve_the_leaders_weights_and_take_over_an_expired_lease() {
    let api = FakeApi::default();
    api.put(POLICIES, policy(json!({"host": "api"})));
    api.put(SLICES, slice(8080, &["10.0.0.1", "10.0.0.2"]));
    // Another replica ("z") leads and has decided: 10.0.0.1 heavier, 10.0.0.2 ejected.
    let mut with_status = api.get(POLICIES, "shop", "api").unwrap();
    with_status["status"] = json!({"cluster": "api", "mode": "normal", "endpointCount": 2, "ejectedCount": 1,
        "ejected": ["10.0.0.2:8080"],
        "endpoints": [
            {"address": "10.0.0.1:8080", "weight": 150, "healthy": true, "state": "serving"},
            {"address": "10.0.0.2:8080", "weight": 0, "healthy": false, "state": "ejected"}]});
    api.put(POLICIES, with_status);
    let now = k8s_openapi::jiff::Timestamp::now().to_string();
    api.put(
        LEASES,
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "gofe-controller", "namespace": "gofe-system"},
               "spec": {"holderIdentity": "z", "leaseDurationSeconds": 2, "renewTime": now, "acquireTime": now,
                        "leaseTransitions": 4}}),
    );

    let mut replicas = Vec::new();
    let mut proxies = Vec::new();
    for id in ["replica-a", "replica-b"] {
        let (mesh, _, _) = start_proxy(&format!("proxy-{id}")).await;
        let (c, settings) = controller("", id, mesh.publisher());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let driver = tokio::spawn(kubernetes::drive(
            c,
            api.client(id),
            settings,
            Duration::from_millis(300),
            async {
                let _ = stop_rx.await;
            },
        ));
        replicas.push((stop_tx, driver));
        proxies.push(mesh);
    }

    // While "z" holds the lease both replicas follow: their proxies get z's weights.
    for proxy in &proxies {
        wait_for(
            "the leader's weights at a follower's proxy",
            Duration::from_secs(10),
            || {
                let e = endpoints_of(&proxy.proxy);
                (e == vec![
                    ("10.0.0.1:8080".to_owned(), 150, true),
                    ("10.0.0.2:8080".to_owned(), 0, false),
                ])
                .then_some(())
            },
        )
        .await;
    }
    let lease = api.get(LEASES, "gofe-system", "gofe-controller").unwrap();
    if lease["spec"]["holderIdentity"] == "z" {
        assert!(
            !api.log().iter().any(|l| l.path.ends_with("/status")),
            "followers never write status"
        );
    }

    // "z" stops renewing: after the lease duration, by their own clocks, exactly one replica
    // takes over; it decides (no signals: the operator's base weights) and writes status.
    let holder = wait_for(
        "a replica to take the lease",
        Duration::from_secs(20),
        || {
            let l = api.get(LEASES, "gofe-system", "gofe-controller")?;
            let h = l["spec"]["holderIdentity"].as_str()?.to_owned();
            (h != "z").then_some((h, l["spec"]["leaseTransitions"].clone()))
        },
    )
    .await;
    assert!(
        holder.0 == "replica-a" || holder.0 == "replica-b",
        "{holder:?}"
    );
    assert_eq!(holder.1, 5, "a takeover counts a transition");
    wait_for("the new leader's status", Duration::from_secs(20), || {
        let s = api.get(POLICIES, "shop", "api")?["status"].clone();
        (s["ejectedCount"] == 0 && s["endpoints"][0]["weight"] == 100).then_some(())
    })
    .await;
    let writers: std::collections::BTreeSet<String> = api
        .log()
        .into_iter()
        .filter(|l| l.path.ends_with("/status"))
        .map(|l| l.client)
        .collect();
    assert_eq!(
        writers,
        std::collections::BTreeSet::from([holder.0.clone()]),
        "only the leader writes status"
    );
    // Both proxies converge on the new leader's weights.
    for proxy in &proxies {
        wait_for(
            "the new weights everywhere",
            Duration::from_secs(10),
            || {
                endpoints_of(&proxy.proxy)
                    .iter()
                    .all(|e| e.1 == 100 && e.2)
                    .then_some(())
            },
        )
        .await;
    }
    for (stop, driver) in replicas {
        let _ = stop.send(());
        driver.await.unwrap();
    }
    for p in proxies {
        p.stop().await;
    }
    // The paths the fake served are the real API's.
    assert!(api.log().iter().any(|l| l
        .path
        .starts_with("/apis/coordination.k8s.io/v1/namespaces/gofe-system/leases")));
}

const NODES: &str = "/api/v1/nodes";

fn node(name: &str, region: &str, zone: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Node",
           "metadata": {"name": name, "labels": {"topology.kubernetes.io/region": region,
                                                  "topology.kubernetes.io/zone": zone}}})
}

/// An EndpointSlice named `name` whose endpoints run on `node`.
fn slice_on(name: &str, node: &str, port: u16, ips: &[&str]) -> Value {
    let mut s = slice(port, ips);
    s["metadata"]["name"] = json!(name);
    for ep in s["endpoints"].as_array_mut().unwrap() {
        ep["nodeName"] = json!(node);
    }
    s
}

/// The proxy's endpoints of `api` with their (region, zone).
fn localities_of(proxy: &Proxy) -> Vec<(String, String, String)> {
    let active = proxy.active();
    active
        .config
        .clusters
        .iter()
        .find(|c| c.name == "api")
        .map(|c| {
            c.endpoints
                .iter()
                .map(|e| {
                    let l = e.locality.clone().unwrap_or_default();
                    (e.address.clone(), l.region, l.zone)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// `gofe_controller_kubernetes_cluster_up{cluster}` as the controller's `/metrics` shows it.
fn cluster_up(shared: &gofe_controller::Shared, cluster: &str) -> Option<i64> {
    let prefix = format!("gofe_controller_kubernetes_cluster_up{{cluster=\"{cluster}\"}} ");
    shared
        .metrics_text()
        .lines()
        .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_of_two_clusters_merge_with_localities_and_a_lost_remote_keeps_its_own() {
    let (mesh, _, admin) = start_proxy("proxy-mc").await;
    let proxy = mesh.proxy.clone();
    // Two API servers: the local one (policies, Lease) and a remote one.
    let local = FakeApi::default();
    let remote = FakeApi::default();
    local.put(POLICIES, policy(json!({"host": "api", "port": "http"})));
    local.put(NODES, node("east-1", "eu", "eu-1a"));
    local.put(SLICES, slice_on("api-east", "east-1", 8080, &["10.0.0.1"]));
    remote.put(NODES, node("west-1", "eu", "eu-1b"));
    remote.put(SLICES, slice_on("api-west", "west-1", 8080, &["10.1.0.1"]));

    let (c, mut settings) = controller(&format!("\"{admin}\""), "replica-mc", mesh.publisher());
    settings.cluster_name = "east".into();
    let registry = c.shared();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let driver = tokio::spawn(kubernetes::drive_clusters(
        c,
        local.client("replica-mc"),
        settings,
        vec![kubernetes::Remote {
            name: "west".into(),
            source: kubernetes::RemoteSource::Client(remote.client("replica-mc")),
        }],
        Duration::from_millis(300),
        async {
            let _ = stop_rx.await;
        },
    ));

    // Merged: one endpoint per cluster, each with its Node's region and zone.
    let both = vec![
        (
            "10.0.0.1:8080".to_string(),
            "eu".to_string(),
            "eu-1a".to_string(),
        ),
        (
            "10.1.0.1:8080".to_string(),
            "eu".to_string(),
            "eu-1b".to_string(),
        ),
    ];
    wait_for(
        "both clusters' endpoints at the proxy",
        Duration::from_secs(30),
        || (localities_of(&proxy) == both).then_some(()),
    )
    .await;
    assert_eq!(cluster_up(&registry, "west"), Some(1));
    assert_eq!(cluster_up(&registry, "east"), Some(1));
    // The remote's endpoint is in the policy's status, its pod named with its cluster.
    let status = wait_for("the status lists both", Duration::from_secs(20), || {
        let s = local.get(POLICIES, "shop", "api")?["status"].clone();
        (s["endpointCount"] == 2).then_some(s)
    })
    .await;
    let west = status["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["address"] == "10.1.0.1:8080")
        .unwrap()
        .clone();
    assert_eq!(west["pod"], "west/api-0");
    assert!(
        remote.log().iter().all(|l| l.method == http::Method::GET),
        "nothing is written to a remote"
    );

    // The remote goes away: reported down, its endpoint kept, and the local cluster's changes
    // still go out.
    remote.set_down(true);
    wait_for("the remote reported down", Duration::from_secs(30), || {
        (cluster_up(&registry, "west") == Some(0)).then_some(())
    })
    .await;
    local.put(
        SLICES,
        slice_on("api-east", "east-1", 8080, &["10.0.0.1", "10.0.0.2"]),
    );
    let with_new = vec![
        both[0].clone(),
        (
            "10.0.0.2:8080".to_string(),
            "eu".to_string(),
            "eu-1a".to_string(),
        ),
        both[1].clone(),
    ];
    wait_for(
        "the local change published beside the remote's last endpoints",
        Duration::from_secs(30),
        || (localities_of(&proxy) == with_new).then_some(()),
    )
    .await;

    // It comes back with a change: the proxy follows and the remote is up again.
    remote.put(SLICES, slice_on("api-west", "west-1", 8080, &["10.1.0.2"]));
    remote.set_down(false);
    wait_for("the remote's new endpoint", Duration::from_secs(60), || {
        localities_of(&proxy)
            .iter()
            .any(|e| e.0 == "10.1.0.2:8080" && e.2 == "eu-1b")
            .then_some(())
    })
    .await;
    assert!(
        !localities_of(&proxy).iter().any(|e| e.0 == "10.1.0.1:8080"),
        "the old remote endpoint is gone"
    );
    wait_for("the remote reported up", Duration::from_secs(30), || {
        (cluster_up(&registry, "west") == Some(1)).then_some(())
    })
    .await;

    stop_tx.send(()).unwrap();
    driver.await.unwrap();
    mesh.stop().await;
}
