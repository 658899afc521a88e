//! Fan-out benchmark: N simulated ADS clients on loopback, one endpoint-weight change, time
//! until every client has received and ACKed it; and the control plane's RSS per client.
//!
//! ```sh
//! cargo bench -p gofe-xds --bench fanout -- [--rounds R] [--debounce-ms D] 100 1000 5000
//! ```
//!
//! The control plane runs in a child process (this binary with `--server`) so that its RSS
//! and CPU time are its own; the clients and the driver share the parent process. Each
//! simulated client is a real gRPC client on its own HTTP/2 connection, subscribed to CDS
//! (wildcard) and to the EDS of every cluster, ACKing every response as Envoy does.
//!
//! Each round changes the weights of one cluster. Latency is measured twice, both from the
//! moment `set_snapshot` is called (so the debounce is included):
//! - by the control plane, to the moment it has *processed* the k-th ACK of the change
//!   (sampled every 100 µs; this is the headline figure);
//! - by the clients, to the moment each one has queued its ACK.

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

/// VmRSS of this process, KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU time consumed so far by every thread of this process (nanosecond resolution, from
/// `/proc/self/task/*/schedstat`; threads that have exited are not counted, and ours don't).
fn cpu_time() -> Duration {
    let mut ns = 0u64;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            let stat = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            ns += stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Duration::from_nanos(ns)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The control plane: prints its port, then obeys commands on stdin, one a line; every
/// answer of ours starts with "= " (a wrapper such as heaptrack may print lines of its own).
/// - `push N`: sets the next generation's snapshot, waits until N more EDS ACKs have been
///   processed, and answers the times (ms after `set_snapshot`) of the 50 %, 99 % and last.
/// - `rss`, `cpu`: VmRSS in KiB; CPU time in ms.
async fn server(debounce: Duration) {
    let server = AdsServer::new(ServerOptions {
        debounce,
        ..Default::default()
    });
    server.cache().set_snapshot(
        NodeKey::Default,
        Snapshot::from_resources(&resources(0)).unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("= {}", listener.local_addr().unwrap().port());
    tokio::spawn(gofe_xds::serve(
        listener,
        server.clone(),
        None,
        std::future::pending(),
    ));
    let mut generation = 0;
    let mut lines = BufReader::new(std::io::stdin()).lines();
    while let Some(Ok(line)) = tokio::task::block_in_place(|| lines.next()) {
        let mut words = line.split_whitespace();
        match (
            words.next(),
            words.next().and_then(|n| n.parse::<u64>().ok()),
        ) {
            (Some("push"), Some(n)) => {
                generation += 1;
                let snapshot = Snapshot::from_resources(&resources(generation)).unwrap();
                let base = server.acks(ResourceType::Endpoints);
                let marks = [n.div_ceil(2), (n * 99).div_ceil(100), n];
                let mut times = [Duration::ZERO; 3];
                let start = Instant::now();
                server.cache().set_snapshot(NodeKey::Default, snapshot);
                tokio::task::block_in_place(|| {
                    let mut next = 0;
                    while next < marks.len() && start.elapsed() < Duration::from_secs(60) {
                        let acked = server.acks(ResourceType::Endpoints) - base;
                        while next < marks.len() && acked >= marks[next] {
                            times[next] = start.elapsed();
                            next += 1;
                        }
                        std::thread::sleep(Duration::from_micros(100));
                    }
                });
                let [a, b, c] = times.map(ms);
                println!("= {a:.1} {b:.1} {c:.1}");
            }
            (Some("rss"), _) => println!("= {}", rss_kib()),
            (Some("cpu"), _) => println!("= {:.1}", ms(cpu_time())),
            _ => return,
        }
    }
}

/// One simulated Envoy. After its first EDS response it waits for all others; then it reports
/// on `done` the instant it has queued the ACK of each later EDS response.
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
    let first = [
        req(ResourceType::Cluster, vec![], String::new(), String::new()),
        req(
            ResourceType::Endpoints,
            eds_names.clone(),
            String::new(),
            String::new(),
        ),
    ];
    for r in first {
        tx.send(r).await.expect("the request stream is open");
    }
    let mut stream = match grpc
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
    {
        Ok(s) => s.into_inner(),
        Err(e) => panic!("client {id}: {e}"),
    };
    let mut seen_eds = false;
    while let Ok(Some(resp)) = stream.message().await {
        let Some(ty) = ResourceType::from_type_url(&resp.type_url) else {
            continue;
        };
        let names = if ty == ResourceType::Endpoints {
            eds_names.clone()
        } else {
            vec![]
        };
        if tx
            .send(req(ty, names, resp.version_info, resp.nonce))
            .await
            .is_err()
        {
            break;
        }
        if ty == ResourceType::Endpoints {
            if !seen_eds {
                seen_eds = true;
                ready.wait().await;
            } else {
                let _ = done.send(Instant::now());
            }
        }
    }
    if !seen_eds {
        panic!("client {id}: stream ended before the first EDS response");
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

struct Options {
    rounds: usize,
    debounce: Duration,
    sizes: Vec<usize>,
}

async fn run(n: usize, options: &Options) -> String {
    let exe = std::env::current_exe().unwrap();
    let wrap = std::env::var("FANOUT_SERVER_WRAP").unwrap_or_default();
    let mut argv: Vec<String> = wrap.split_whitespace().map(String::from).collect();
    argv.push(exe.display().to_string());
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .arg("--server")
        .arg(options.debounce.as_millis().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_server = child.stdin.take().unwrap();
    let mut from_server = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut answer = move || loop {
        let line = from_server.next().unwrap().unwrap();
        if let Some(a) = line.strip_prefix("= ") {
            return a.to_owned();
        }
    };
    let port: u16 = answer().parse().unwrap();
    let mut ask = |cmd: &str| -> String {
        writeln!(to_server, "{cmd}").unwrap();
        tokio::task::block_in_place(&mut answer)
    };
    let rss_before: f64 = ask("rss").parse().unwrap();

    let ready = Arc::new(Barrier::new(n + 1));
    let (done_tx, mut done) = mpsc::unbounded_channel();
    for id in 0..n {
        tokio::spawn(client(port, id, Arc::clone(&ready), done_tx.clone()));
    }
    ready.wait().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_synced: f64 = ask("rss").parse().unwrap();
    let server_cpu_before: f64 = ask("cpu").parse().unwrap();
    let client_cpu_before = cpu_time();

    let mut server_side = Vec::new();
    let mut client_side = Vec::with_capacity(n * options.rounds);
    for _ in 0..options.rounds {
        let start = Instant::now();
        let marks: Vec<f64> = ask(&format!("push {n}"))
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect();
        server_side.push(marks);
        let mut got = 0;
        while got < n {
            match tokio::time::timeout(Duration::from_secs(60), done.recv()).await {
                Ok(Some(t)) => client_side.push(t.duration_since(start)),
                _ => break,
            }
            got += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let server_cpu = ask("cpu").parse::<f64>().unwrap() - server_cpu_before;
    let client_cpu = ms(cpu_time() - client_cpu_before);
    let rss_after: f64 = ask("rss").parse().unwrap();
    let _ = writeln!(to_server, "quit");
    if wrap.is_empty() {
        let _ = child.kill();
    }
    let _ = child.wait();

    client_side.sort();
    // Server side: the median over rounds of each mark, and the worst round's last ACK.
    let column = |i: usize| {
        let mut v: Vec<f64> = server_side.iter().map(|m| m[i]).collect();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[v.len() - 1])
    };
    let (p50, _) = column(0);
    let (p99, p99_worst) = column(1);
    let (last, last_worst) = column(2);
    let rounds = options.rounds as f64;
    format!(
        "| {n} | {} | {p50:.1} | {p99:.1} ({p99_worst:.1}) | {last:.1} ({last_worst:.1}) \
         | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} | {:.1} | {:.1} |",
        client_side.len(),
        ms(percentile(&client_side, 0.5)),
        ms(percentile(&client_side, 0.99)),
        ms(*client_side.last().unwrap()),
        server_cpu / rounds,
        client_cpu / rounds,
        (rss_synced - rss_before) / n as f64,
        (rss_after - rss_before) / n as f64,
    )
}

fn parse_options() -> Options {
    let mut options = Options {
        rounds: 5,
        debounce: ServerOptions::default().debounce,
        sizes: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => options.rounds = args.next().and_then(|v| v.parse().ok()).unwrap_or(5),
            "--debounce-ms" => {
                let ms = args.next().and_then(|v| v.parse().ok()).unwrap_or(10);
                options.debounce = Duration::from_millis(ms);
            }
            // `cargo bench` passes `--bench`.
            _ => options.sizes.extend(a.parse::<usize>().ok()),
        }
    }
    if options.sizes.is_empty() {
        options.sizes = vec![100, 1000, 5000];
    }
    options.rounds = options.rounds.max(1);
    options
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if args.first().map(String::as_str) == Some("--server") {
        let debounce = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(10);
        runtime.block_on(server(Duration::from_millis(debounce)));
        return;
    }
    let options = parse_options();
    println!(
        "{CLUSTERS} EDS clusters x {ENDPOINTS} endpoints per client; one cluster's weights \
         change per round; {} rounds; debounce {} ms (included)",
        options.rounds,
        options.debounce.as_millis()
    );
    println!(
        "| clients | ACKs | CP p50 ms | CP p99 ms (worst round) | CP last ms (worst round) \
         | client p50 ms | client p99 ms | client max ms | CP CPU ms/round \
         | clients CPU ms/round | CP KiB/client synced | CP KiB/client after pushes |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &n in &options.sizes {
        println!("{}", runtime.block_on(run(n, &options)));
    }
}
