//! Fan-out benchmark: N simulated ADS clients on loopback, one endpoint-weight change, time
//! until every client has received and ACKed it; and the control plane's RSS per client.
//!
//! `cargo bench -p gofe-xds --bench fanout -- 100 1000 5000`
//!
//! The control plane runs in a child process (this binary with `--server`) so its RSS is its
//! own. Each simulated client is a real gRPC client on its own HTTP/2 connection, subscribed
//! to CDS (wildcard) and to the EDS of every cluster, ACKing every response as Envoy does.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gofe_proto::wire::{AggregatedDiscoveryServiceClient, DiscoveryRequest, Node};
use gofe_proto::{ClusterResource, EndpointsResource, ResourceType, Resources};
use gofe_proxy::config::EndpointConfig;
use gofe_xds::{AdsServer, NodeKey, ServerOptions, Snapshot};
use serde_saphyr::{Location, Spanned};
use tokio::sync::{mpsc, Barrier};
use tokio_stream::wrappers::ReceiverStream;

const CLUSTERS: usize = 20;
const ENDPOINTS: usize = 10;

fn s(v: String) -> Spanned<String> {
    Spanned::new(v, Location::UNKNOWN, Location::UNKNOWN)
}

/// 20 EDS clusters of 10 endpoints; cluster 0's weights depend on `generation`.
fn resources(generation: u32) -> Resources {
    let mut r = Resources::default();
    for c in 0..CLUSTERS {
        let name = format!("svc-{c}");
        r.clusters.insert(
            name.clone(),
            ClusterResource {
                config: gofe_proto::convert::empty_cluster(&name),
                eds_service_name: Some(name.clone()),
                circuit_breakers: None,
                outlier_detection: None,
            },
        );
        let endpoints = (0..ENDPOINTS)
            .map(|e| EndpointConfig {
                address: s(format!("10.{c}.0.{e}:8080")),
                weight: if c == 0 {
                    1 + (generation + e as u32) % 7
                } else {
                    1
                },
                health_status: Default::default(),
            })
            .collect();
        r.endpoints.insert(
            name.clone(),
            EndpointsResource {
                cluster_name: name,
                endpoints,
            },
        );
    }
    r
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The control plane: prints its port, then obeys `push` and `rss` lines on stdin.
async fn server() {
    let server = AdsServer::new(ServerOptions::default());
    server.cache().set_snapshot(
        NodeKey::Default,
        Snapshot::from_resources(&resources(0)).unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("{}", listener.local_addr().unwrap().port());
    tokio::spawn(gofe_xds::serve(
        listener,
        server.clone(),
        None,
        std::future::pending(),
    ));
    let mut generation = 0;
    let mut lines = BufReader::new(std::io::stdin()).lines();
    while let Some(Ok(line)) = tokio::task::block_in_place(|| lines.next()) {
        match line.as_str() {
            "push" => {
                generation += 1;
                server.cache().set_snapshot(
                    NodeKey::Default,
                    Snapshot::from_resources(&resources(generation)).unwrap(),
                );
                println!("ok");
            }
            "rss" => println!("{}", rss_kib()),
            _ => return,
        }
    }
}

/// One simulated Envoy. After its first EDS response it waits for all others; then it reports
/// on `done` the instant it ACKs the next EDS response (the pushed change).
async fn client(port: u16, id: usize, ready: Arc<Barrier>, done: mpsc::UnboundedSender<Instant>) {
    let mut grpc = loop {
        match AggregatedDiscoveryServiceClient::connect(format!("http://127.0.0.1:{port}")).await {
            Ok(c) => break c,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let (tx, rx) = mpsc::channel(8);
    let node = Node {
        id: format!("sim-{id}"),
        cluster: "bench".into(),
        ..Default::default()
    };
    let req =
        |ty: ResourceType, names: Vec<String>, version: String, nonce: String| DiscoveryRequest {
            version_info: version,
            node: Some(node.clone()),
            resource_names: names,
            type_url: ty.type_url().into(),
            response_nonce: nonce,
            ..Default::default()
        };
    let eds_names: Vec<String> = (0..CLUSTERS).map(|c| format!("svc-{c}")).collect();
    tx.send(req(
        ResourceType::Cluster,
        vec![],
        String::new(),
        String::new(),
    ))
    .await
    .unwrap();
    tx.send(req(
        ResourceType::Endpoints,
        eds_names.clone(),
        String::new(),
        String::new(),
    ))
    .await
    .unwrap();
    let mut stream = grpc
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut seen_eds = false;
    loop {
        let resp = match stream.message().await {
            Ok(Some(r)) => r,
            _ => return,
        };
        let Some(ty) = ResourceType::from_type_url(&resp.type_url) else {
            continue;
        };
        let names = if ty == ResourceType::Endpoints {
            eds_names.clone()
        } else {
            vec![]
        };
        tx.send(req(
            ty,
            names,
            resp.version_info.clone(),
            resp.nonce.clone(),
        ))
        .await
        .unwrap();
        if ty == ResourceType::Endpoints {
            if !seen_eds {
                seen_eds = true;
                ready.wait().await;
            } else {
                let _ = done.send(Instant::now());
            }
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn run(n: usize) -> String {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .arg("--server")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_server = child.stdin.take().unwrap();
    let mut from_server = BufReader::new(child.stdout.take().unwrap()).lines();
    let port: u16 = from_server.next().unwrap().unwrap().parse().unwrap();
    let mut ask = |cmd: &str| -> String {
        writeln!(to_server, "{cmd}").unwrap();
        from_server.next().unwrap().unwrap()
    };
    let rss_before: u64 = ask("rss").parse().unwrap();

    let ready = Arc::new(Barrier::new(n + 1));
    let (done_tx, mut done) = mpsc::unbounded_channel();
    for id in 0..n {
        tokio::spawn(client(port, id, Arc::clone(&ready), done_tx.clone()));
    }
    ready.wait().await;
    let rss_after: u64 = ask("rss").parse().unwrap();

    let start = Instant::now();
    ask("push");
    let mut latencies = Vec::with_capacity(n);
    while latencies.len() < n {
        match tokio::time::timeout(Duration::from_secs(60), done.recv()).await {
            Ok(Some(t)) => latencies.push(t.duration_since(start)),
            _ => break,
        }
    }
    latencies.sort();
    let _ = writeln!(to_server, "quit");
    let _ = child.kill();
    let _ = child.wait();
    let per_client = (rss_after.saturating_sub(rss_before)) as f64 / n as f64;
    format!(
        "| {n} | {} | {:.1} | {:.1} | {:.1} | {} | {} | {:.1} |",
        latencies.len(),
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
        rss_before,
        rss_after,
        per_client,
    )
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if args.iter().any(|a| a == "--server") {
        runtime.block_on(server());
        return;
    }
    let sizes: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() {
        vec![100, 1000, 5000]
    } else {
        sizes
    };
    println!(
        "{CLUSTERS} EDS clusters x {ENDPOINTS} endpoints per client; one cluster's weights change; debounce 10 ms"
    );
    println!("| clients | acked | p50 ms | p99 ms | max ms | CP RSS before KiB | CP RSS after KiB | KiB/client |");
    println!("|---|---|---|---|---|---|---|---|");
    for n in sizes {
        println!("{}", runtime.block_on(run(n)));
    }
}
