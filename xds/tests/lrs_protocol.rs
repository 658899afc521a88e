//! The Load Reporting Service on the ADS port, checked with a raw gRPC client on 127.0.0.1:
//! the answer (all clusters, the configured interval), reports landing in the store, the
//! node-less first message and a server without load reporting refused, and a closed stream's
//! reports forgotten.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gofe_proto::load::{ClusterLoad, EndpointLoad};
use gofe_proto::wire::{LoadReportingServiceClient, LoadStatsRequest, Node};
use gofe_xds::{AdsServer, LoadReportingOptions, ServerOptions};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const DEADLINE: Duration = Duration::from_secs(20);

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

fn lrs_server() -> AdsServer {
    AdsServer::new(ServerOptions {
        load_reporting: Some(LoadReportingOptions {
            interval: Duration::from_millis(700),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn report(ok: u64, err: u64) -> LoadStatsRequest {
    gofe_proto::load::request(&[ClusterLoad {
        cluster: "web".into(),
        endpoints: vec![EndpointLoad {
            address: "10.0.0.1:80".into(),
            successful: ok,
            errors: err,
            issued: ok + err,
            ..Default::default()
        }],
        interval: Duration::from_millis(700),
    }])
}

async fn wait(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn reports_are_kept_per_stream_and_forgotten_when_it_ends() {
    let server = lrs_server();
    let addr = start(&server).await;
    let mut client = LoadReportingServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(4);
    let node = Node {
        id: "proxy-1".into(),
        ..Default::default()
    };
    tx.send(gofe_proto::load::hello(node)).await.unwrap();
    let mut answers = client
        .stream_load_stats(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let reporting = gofe_proto::load::read_response(&answer).unwrap();
    assert!(reporting.all_clusters);
    assert_eq!(reporting.interval, Duration::from_millis(700));

    let store = server.load_store().unwrap().clone();
    tx.send(report(7, 3)).await.unwrap();
    wait("the report in the store", || {
        store
            .window(tokio::time::Instant::now())
            .get("web")
            .and_then(|w| w.get("10.0.0.1:80"))
            .is_some_and(|w| (w.successful, w.errors) == (7, 3))
    })
    .await;
    assert_eq!(store.reporters(), [("proxy-1".to_owned(), 1)]);

    // The client ends its stream: what it reported no longer counts.
    drop(tx);
    wait("the stream's reports forgotten", || {
        store.reporters().is_empty() && store.window(tokio::time::Instant::now()).is_empty()
    })
    .await;
}

#[tokio::test]
async fn a_stream_without_a_node_and_a_server_without_load_reporting_are_refused() {
    let server = lrs_server();
    let addr = start(&server).await;
    let mut client = LoadReportingServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(1);
    tx.send(report(1, 0)).await.unwrap();
    let status = match client.stream_load_stats(ReceiverStream::new(rx)).await {
        Err(status) => status,
        Ok(r) => r.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status}");
    assert!(server.load_store().unwrap().reporters().is_empty());

    let off = AdsServer::new(ServerOptions::default());
    assert!(off.load_store().is_none());
    let addr = start(&off).await;
    let mut client = LoadReportingServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let (tx, rx) = mpsc::channel(1);
    tx.send(gofe_proto::load::hello(Node::default()))
        .await
        .unwrap();
    let status = match client.stream_load_stats(ReceiverStream::new(rx)).await {
        Err(status) => status,
        Ok(r) => r.into_inner().message().await.unwrap_err(),
    };
    assert_eq!(status.code(), tonic::Code::Unimplemented, "{status}");
}
