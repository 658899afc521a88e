//! Compatibility: a proxyless gRPC client that was not written here (PyPI `grpcio`, which
//! carries gRPC's built-in xDS client) takes its listener, routes, cluster and weighted
//! endpoints from gofe's control plane and reaches gRPC backends through them.
//!
//! Needs `python3` with `grpcio` (`pip install grpcio==1.85.1`; `.ci/run` installs it). Set
//! `GOFE_SKIP_GRPCIO=1` to skip on a machine without Python.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use gofe_model::{
    EndpointConfig, RouteActionConfig, RouteConfig, RouteMatchConfig, RouterConfig,
    VirtualHostConfig, DEFAULT_ROUTE_TIMEOUT,
};
use gofe_proto::{
    ClusterResource, EndpointsResource, ListenerKind, ListenerResource, Resources, RouteResource,
    RouteSource,
};
use gofe_xds::{AdsServer, NodeKey, ServerOptions, Snapshot};

fn s(v: impl Into<String>) -> String {
    v.into()
}

fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// What a proxyless client of `xds:///greeter` needs: an API listener named `greeter` (its
/// HTTP connection manager takes routes over RDS), the routes, an EDS cluster, its endpoints.
fn greeter(endpoints: &[(SocketAddr, u32)]) -> Resources {
    let mut r = Resources::default();
    r.listeners.insert(
        "greeter".into(),
        ListenerResource {
            name: "greeter".into(),
            kind: ListenerKind::Api,
            routes: RouteSource::Rds("greeter-routes".into()),
        },
    );
    r.routes.insert(
        "greeter-routes".into(),
        RouteResource {
            name: "greeter-routes".into(),
            router: RouterConfig {
                virtual_hosts: vec![VirtualHostConfig {
                    name: s("greeter"),
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
                            cluster: Some(s("greeter-backends")),
                            timeout: DEFAULT_ROUTE_TIMEOUT,
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
        "greeter-backends".into(),
        ClusterResource {
            config: gofe_proto::convert::empty_cluster("greeter-backends"),
            eds_service_name: Some("greeter-backends".into()),
            circuit_breakers: None,
            outlier_detection: None,
        },
    );
    r.endpoints.insert(
        "greeter-backends".into(),
        EndpointsResource {
            cluster_name: "greeter-backends".into(),
            overprovisioning_factor: gofe_model::DEFAULT_OVERPROVISIONING_FACTOR,
            endpoints: endpoints
                .iter()
                .map(|(a, w)| EndpointConfig {
                    address: s(a.to_string()),
                    weight: *w,
                    health_status: Default::default(),
                    locality: None,
                    priority: 0,
                    locality_weight: None,
                })
                .collect(),
        },
    );
    r
}

fn parse_counts(line: &str) -> (u64, u64) {
    // {"phase": N, "counts": {"a": X, "b": Y}}
    let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line from the client");
    let c = &v["counts"];
    (c["a"].as_u64().unwrap_or(0), c["b"].as_u64().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_xds_client_follows_gofe_weighted_endpoints() {
    if std::env::var_os("GOFE_SKIP_GRPCIO").is_some() {
        eprintln!("GOFE_SKIP_GRPCIO set: skipping the grpcio interoperability test");
        return;
    }
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let has_grpcio = Command::new(&python)
        .args(["-c", "import grpc"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_grpcio,
        "{python} with grpcio is needed: pip install grpcio==1.85.1 (or set GOFE_SKIP_GRPCIO=1)"
    );

    let server = AdsServer::new(ServerOptions::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let cp = listener.local_addr().unwrap();
    tokio::spawn(gofe_xds::serve(
        listener,
        server.clone(),
        None,
        std::future::pending(),
    ));
    let (a, b) = (free_port(), free_port());
    server.cache().set_snapshot(
        NodeKey::Default,
        Snapshot::from_resources(&greeter(&[(a, 3), (b, 1)])).unwrap(),
    );

    // Looked up when the test runs, not when it was compiled: a build cache shared between
    // checkouts must not point the test at another checkout's files.
    let script = std::path::Path::new(
        &std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
    )
    .join("tests/fixtures/grpcio_xds_client.py");
    let mut child = Command::new(&python)
        .arg(script)
        .args([cp.port(), a.port(), b.port()].map(|p| p.to_string()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the grpcio client");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let next_line = |what: &str| {
        lines
            .recv_timeout(Duration::from_secs(90))
            .unwrap_or_else(|_| panic!("grpcio client gave no {what}"))
    };

    // Weights 3:1 (gRPC picks localities at random by weight: allow a wide margin).
    let (ca, cb) = parse_counts(&next_line("phase 1 result"));
    assert_eq!(ca + cb, 400);
    assert!(
        (250..=350).contains(&ca),
        "a={ca} b={cb}, expected about 300:100"
    );
    // The client ACKed the endpoints it uses (and is still connected).
    let m = server.metrics_text();
    assert!(
        m.contains("gofe_xds_acked_version_info{node=\"grpcio-client\",type=\"eds\""),
        "{m}"
    );

    // Drain a: every call goes to b.
    server.cache().set_snapshot(
        NodeKey::Default,
        Snapshot::from_resources(&greeter(&[(a, 0), (b, 1)])).unwrap(),
    );
    writeln!(stdin, "next").unwrap();
    let (ca, cb) = parse_counts(&next_line("phase 2 result"));
    assert_eq!((ca, cb), (0, 20), "after draining a");
    let _ = child.wait();
}
