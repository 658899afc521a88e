//! The ADS server's protocol rules, checked with a raw gRPC client on 127.0.0.1.

use std::net::SocketAddr;
use std::time::Duration;

use gofe_model::EndpointConfig;
use gofe_proto::wire::{
    AggregatedDiscoveryServiceClient, DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
    Node, Status,
};
use gofe_proto::{ClusterResource, EndpointsResource, ResourceType, Resources};
use gofe_xds::{AdsServer, NodeKey, ServerOptions, Snapshot};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const DEADLINE: Duration = Duration::from_secs(20);

fn s(v: impl Into<String>) -> String {
    v.into()
}

/// Clusters named `names`, each an EDS cluster whose single endpoint has `weight`.
fn resources(names: &[&str], weight: u32) -> Resources {
    let mut r = Resources::default();
    for n in names {
        r.clusters.insert(
            (*n).into(),
            ClusterResource {
                config: gofe_proto::convert::empty_cluster(n),
                eds_service_name: Some((*n).into()),
                circuit_breakers: None,
                outlier_detection: None,
            },
        );
        r.endpoints.insert(
            (*n).into(),
            EndpointsResource {
                cluster_name: (*n).into(),
                overprovisioning_factor: gofe_model::DEFAULT_OVERPROVISIONING_FACTOR,
                endpoints: vec![EndpointConfig {
                    address: s("10.0.0.1:80"),
                    weight,
                    health_status: Default::default(),
                    locality: None,
                    priority: 0,
                    locality_weight: None,
                }],
            },
        );
    }
    r
}

fn snapshot(r: &Resources) -> Snapshot {
    Snapshot::from_resources(r).unwrap()
}

async fn start(server: &AdsServer) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(gofe_xds::serve(
        listener,
        server.clone(),
        None,
        std::future::pending(),
    ));
    addr
}

fn server() -> AdsServer {
    AdsServer::new(ServerOptions {
        debounce: Duration::ZERO,
        ..Default::default()
    })
}

struct Sotw {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
    node: Node,
}

impl Sotw {
    async fn connect(addr: SocketAddr, node_id: &str) -> Sotw {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(8);
        let node = Node {
            id: node_id.into(),
            cluster: "c".into(),
            ..Default::default()
        };
        // The server answers once it has the first request, so send it before awaiting.
        let sotw_tx = tx.clone();
        let first = DiscoveryRequest {
            node: Some(node.clone()),
            type_url: ResourceType::Cluster.type_url().into(),
            ..Default::default()
        };
        sotw_tx.send(first).await.unwrap();
        let rx = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Sotw { tx, rx, node }
    }

    async fn send(
        &self,
        ty: ResourceType,
        names: &[&str],
        version: &str,
        nonce: &str,
        error: Option<&str>,
    ) {
        self.tx
            .send(DiscoveryRequest {
                version_info: version.into(),
                node: Some(self.node.clone()),
                resource_names: names.iter().map(|n| (*n).into()).collect(),
                type_url: ty.type_url().into(),
                response_nonce: nonce.into(),
                error_detail: error.map(|m| Status {
                    code: 3,
                    message: m.into(),
                    details: vec![],
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }

    async fn recv(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(DEADLINE, self.rx.message())
            .await
            .expect("response in time")
            .unwrap()
            .unwrap()
    }
}

#[tokio::test]
async fn sotw_nack_keeps_the_client_on_its_version_and_is_not_resent() {
    let server = server();
    server
        .cache()
        .set_snapshot(NodeKey::Default, snapshot(&resources(&["a"], 1)));
    let addr = start(&server).await;
    let mut c = Sotw::connect(addr, "n1").await;
    let v1 = c.recv().await;
    assert_eq!(v1.type_url, ResourceType::Cluster.type_url());
    assert_eq!(v1.resources.len(), 1);
    c.send(
        ResourceType::Cluster,
        &[],
        &v1.version_info,
        &v1.nonce,
        None,
    )
    .await;

    server
        .cache()
        .set_snapshot(NodeKey::Default, snapshot(&resources(&["a", "b"], 1)));
    let v2 = c.recv().await;
    assert_eq!(v2.resources.len(), 2);
    // NACK v2: the client stays on v1.
    c.send(
        ResourceType::Cluster,
        &[],
        &v1.version_info,
        &v2.nonce,
        Some("cluster b is bad"),
    )
    .await;
    // A stale request (old nonce) is ignored too.
    c.send(
        ResourceType::Cluster,
        &[],
        &v1.version_info,
        &v1.nonce,
        None,
    )
    .await;

    // The next response is the next snapshot, not v2 again.
    server
        .cache()
        .set_snapshot(NodeKey::Default, snapshot(&resources(&["a", "c"], 1)));
    let v3 = c.recv().await;
    assert_ne!(v3.version_info, v2.version_info);
    assert_ne!(v3.nonce, v2.nonce);
    assert_eq!(v3.resources.len(), 2);
    let start = std::time::Instant::now();
    loop {
        let m = server.metrics_text();
        if m.contains("gofe_xds_nacks_total{type=\"cds\"} 1") && m.contains("cluster b is bad") {
            break;
        }
        assert!(start.elapsed() < DEADLINE, "NACK not exported: {m}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn only_streams_whose_resources_changed_get_a_push() {
    let server = server();
    server
        .cache()
        .set_snapshot(NodeKey::Id("n1".into()), snapshot(&resources(&["a"], 1)));
    server
        .cache()
        .set_snapshot(NodeKey::Id("n2".into()), snapshot(&resources(&["b"], 1)));
    server
        .cache()
        .set_snapshot(NodeKey::Default, snapshot(&resources(&["x", "y"], 1)));
    let addr = start(&server).await;
    let mut n1 = Sotw::connect(addr, "n1").await;
    let mut n2 = Sotw::connect(addr, "n2").await;
    let mut n3 = Sotw::connect(addr, "n3").await;
    let r1 = n1.recv().await;
    let r2 = n2.recv().await;
    let r3 = n3.recv().await;
    n1.send(
        ResourceType::Cluster,
        &[],
        &r1.version_info,
        &r1.nonce,
        None,
    )
    .await;
    n2.send(
        ResourceType::Cluster,
        &[],
        &r2.version_info,
        &r2.nonce,
        None,
    )
    .await;
    n3.send(
        ResourceType::Cluster,
        &[],
        &r3.version_info,
        &r3.nonce,
        None,
    )
    .await;
    // n3 watches only endpoints of x.
    n3.send(ResourceType::Endpoints, &["x"], "", "", None).await;
    let e1 = n3.recv().await;
    assert_eq!(e1.resources.len(), 1);
    n3.send(
        ResourceType::Endpoints,
        &["x"],
        &e1.version_info,
        &e1.nonce,
        None,
    )
    .await;

    // Change n1's snapshot, then n2's: n2's first push is its own change.
    server.cache().set_snapshot(
        NodeKey::Id("n1".into()),
        snapshot(&resources(&["a", "a2"], 1)),
    );
    server.cache().set_snapshot(
        NodeKey::Id("n2".into()),
        snapshot(&resources(&["b", "b2"], 1)),
    );
    assert_eq!(n1.recv().await.resources.len(), 2);
    let p2 = n2.recv().await;
    assert_eq!(p2.resources.len(), 2);

    // Change y's weight (n3 does not watch it), then x's: n3's first push is x's change.
    let mut r = resources(&["x", "y"], 1);
    r.endpoints.get_mut("y").unwrap().endpoints[0].weight = 5;
    server.cache().set_snapshot(NodeKey::Default, snapshot(&r));
    r.endpoints.get_mut("x").unwrap().endpoints[0].weight = 7;
    server.cache().set_snapshot(NodeKey::Default, snapshot(&r));
    let e2 = n3.recv().await;
    assert_eq!(e2.type_url, ResourceType::Endpoints.type_url());
    let decoded = gofe_proto::decode_resource(ResourceType::Endpoints, &e2.resources[0]).unwrap();
    let gofe_proto::DecodedResource::Endpoints(e) = decoded else {
        panic!()
    };
    assert_eq!(e.endpoints[0].weight, 7);
}

#[tokio::test]
async fn delta_sends_changes_and_removals_only() {
    let server = server();
    server
        .cache()
        .set_snapshot(NodeKey::Default, snapshot(&resources(&["a", "b", "c"], 1)));
    let addr = start(&server).await;
    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(8);
    let node = Node {
        id: "d1".into(),
        ..Default::default()
    };
    tx.send(DeltaDiscoveryRequest {
        node: Some(node.clone()),
        type_url: ResourceType::Endpoints.type_url().into(),
        resource_names_subscribe: vec!["a".into(), "b".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut rx = client
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let first = recv_delta(&mut rx).await;
    let mut names: Vec<&str> = first.resources.iter().map(|r| r.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["a", "b"]);
    tx.send(DeltaDiscoveryRequest {
        type_url: ResourceType::Endpoints.type_url().into(),
        response_nonce: first.nonce.clone(),
        ..Default::default()
    })
    .await
    .unwrap();

    // a changes, b goes away, c (not subscribed) changes.
    let mut r = resources(&["a", "c"], 1);
    r.endpoints.get_mut("a").unwrap().endpoints[0].weight = 9;
    r.endpoints.get_mut("c").unwrap().endpoints[0].weight = 9;
    server.cache().set_snapshot(NodeKey::Default, snapshot(&r));
    let second = recv_delta(&mut rx).await;
    let names: Vec<&str> = second.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["a"]);
    assert_eq!(second.removed_resources, ["b"]);
}

async fn recv_delta(
    rx: &mut tonic::Streaming<gofe_proto::wire::DeltaDiscoveryResponse>,
) -> gofe_proto::wire::DeltaDiscoveryResponse {
    tokio::time::timeout(DEADLINE, rx.message())
        .await
        .expect("in time")
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn first_response_is_sent_even_when_empty() {
    let server = server();
    let addr = start(&server).await;
    // Subscribed before any snapshot exists; then a snapshot without clusters arrives.
    let mut c = Sotw::connect(addr, "early").await;
    server
        .cache()
        .set_snapshot(NodeKey::Default, snapshot(&Resources::default()));
    let r = c.recv().await;
    assert_eq!(r.type_url, ResourceType::Cluster.type_url());
    assert!(r.resources.is_empty());
}

#[tokio::test]
async fn unknown_methods_and_compressed_requests_get_a_grpc_status() {
    let server = server();
    let addr = start(&server).await;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(tcp);
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let call = |method: &str, encoding: Option<&str>| {
        let mut request = http::Request::post(format!(
            "http://{addr}/envoy.service.discovery.v3.AggregatedDiscoveryService/{method}"
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
        if let Some(encoding) = encoding {
            request = request.header("grpc-encoding", encoding);
        }
        request
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    // 12 is UNIMPLEMENTED, sent as a trailers-only response.
    let response = sender.send_request(call("Nope", None)).await.unwrap();
    assert_eq!(response.headers()["grpc-status"], "12");
    let response = sender
        .send_request(call("StreamAggregatedResources", Some("gzip")))
        .await
        .unwrap();
    assert_eq!(response.headers()["grpc-status"], "12");
    conn.abort();
}
