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
//! moment `set_snapshot` is called, so any debounce wait is included (rounds are more than
//! 100 ms apart, longer than the debounce window, so each change is published at once):
//! - by the control plane, to the moment it has *processed* the k-th ACK of the change
//!   (sampled every 500 µs; this is the headline figure);
//! - by the clients, to the moment each one has queued its ACK.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes};
use gofe_model::EndpointConfig;
use gofe_proto::wire::{DiscoveryRequest, Node};
use gofe_proto::{ClusterResource, EndpointsResource, ResourceType, Resources};
use gofe_xds::{AdsServer, NodeKey, ServerOptions, Snapshot};
use prost::Message as _;
use tokio::sync::{mpsc, Barrier};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

const CLUSTERS: usize = 20;
const ENDPOINTS: usize = 10;

fn s(v: String) -> String {
    v
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
                locality: None,
                priority: 0,
                locality_weight: None,
            })
            .collect();
        r.endpoints.insert(
            name.clone(),
            EndpointsResource {
                cluster_name: name,
                overprovisioning_factor: gofe_model::DEFAULT_OVERPROVISIONING_FACTOR,
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
                        std::thread::sleep(Duration::from_micros(500));
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

// === the simulated clients ===

/// What a simulated client reads of a response: its type, version and nonce. The resources
/// themselves are skipped, not decoded: the clients stand in for proxies on other machines,
/// and the less CPU they take from the control plane's two cores the more the figures say
/// about the control plane.
#[derive(Debug, Default)]
struct ResponseHead {
    type_url: String,
    version_info: String,
    nonce: String,
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    let mut value = 0;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = buf.split_first()?;
        *buf = rest;
        value |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(value);
        }
    }
    None
}

impl ResponseHead {
    /// Reads fields 1 (version_info), 4 (type_url) and 5 (nonce) of a `DiscoveryResponse`.
    fn decode(mut buf: &[u8]) -> Option<ResponseHead> {
        let mut head = ResponseHead::default();
        while !buf.is_empty() {
            let key = varint(&mut buf)?;
            match key & 7 {
                0 => {
                    varint(&mut buf)?;
                }
                1 => buf = buf.get(8..)?,
                5 => buf = buf.get(4..)?,
                2 => {
                    let len = usize::try_from(varint(&mut buf)?).ok()?;
                    let value = buf.get(..len)?;
                    buf = &buf[len..];
                    let text = || String::from_utf8(value.to_vec()).ok();
                    match key >> 3 {
                        1 => head.version_info = text()?,
                        4 => head.type_url = text()?,
                        5 => head.nonce = text()?,
                        _ => {}
                    }
                }
                _ => return None,
            }
        }
        Some(head)
    }
}

/// A request as the simulated client sends it: its constant part (type, resource names, and
/// the node in the first request) encoded once, then the version and nonce it acknowledges.
/// Concatenated protobuf encodings decode as one message.
struct Request {
    fixed: Bytes,
    version_info: String,
    response_nonce: String,
}

struct BenchCodec;

impl Codec for BenchCodec {
    type Encode = Request;
    type Decode = ResponseHead;
    type Encoder = BenchCodec;
    type Decoder = BenchCodec;

    fn encoder(&mut self) -> BenchCodec {
        BenchCodec
    }

    fn decoder(&mut self) -> BenchCodec {
        BenchCodec
    }
}

impl Encoder for BenchCodec {
    type Item = Request;
    type Error = tonic::Status;

    fn encode(&mut self, item: Request, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item.fixed);
        let varying = DiscoveryRequest {
            version_info: item.version_info,
            response_nonce: item.response_nonce,
            ..Default::default()
        };
        varying
            .encode(dst)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl Decoder for BenchCodec {
    type Item = ResponseHead;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<ResponseHead>, tonic::Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        ResponseHead::decode(&bytes)
            .map(Some)
            .ok_or_else(|| tonic::Status::internal("undecodable response"))
    }
}

const ADS_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";

/// A simulated client's open stream: the sender of its requests, the responses, and the
/// constant parts of its CDS and EDS requests.
struct Session {
    tx: mpsc::Sender<Request>,
    responses: tonic::Streaming<ResponseHead>,
    cds: Bytes,
    eds: Bytes,
}

impl Session {
    /// Connects, subscribes to CDS and EDS, and ACKs responses until the first EDS one.
    async fn open(port: u16, id: usize) -> Result<Session, tonic::Status> {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("a valid URI");
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let mut grpc = tonic::client::Grpc::new(channel);
        let (tx, rx) = mpsc::channel(8);
        let eds_names: Vec<String> = (0..CLUSTERS).map(|c| format!("svc-{c}")).collect();
        let fixed = |ty: ResourceType, node: Option<Node>| {
            let names = if ty == ResourceType::Endpoints {
                eds_names.clone()
            } else {
                vec![]
            };
            let request = DiscoveryRequest {
                node,
                resource_names: names,
                type_url: ty.type_url().into(),
                ..Default::default()
            };
            Bytes::from(request.encode_to_vec())
        };
        let node = Node {
            id: format!("sim-{id}"),
            cluster: "bench".into(),
            ..Default::default()
        };
        let (cds, eds) = (
            fixed(ResourceType::Cluster, None),
            fixed(ResourceType::Endpoints, None),
        );
        for fixed in [fixed(ResourceType::Cluster, Some(node)), eds.clone()] {
            let request = Request {
                fixed,
                version_info: String::new(),
                response_nonce: String::new(),
            };
            tx.send(request).await.expect("the receiver is alive");
        }
        grpc.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let call = grpc.streaming(
            tonic::Request::new(ReceiverStream::new(rx)),
            http::uri::PathAndQuery::from_static(ADS_PATH),
            BenchCodec,
        );
        let mut session = Session {
            tx,
            responses: call.await?.into_inner(),
            cds,
            eds,
        };
        while session.next().await? != ResourceType::Endpoints {}
        Ok(session)
    }

    async fn send(
        &self,
        fixed: Bytes,
        version_info: String,
        response_nonce: String,
    ) -> Result<(), tonic::Status> {
        let request = Request {
            fixed,
            version_info,
            response_nonce,
        };
        self.tx
            .send(request)
            .await
            .map_err(|_| tonic::Status::cancelled("request stream closed"))
    }

    /// Receives the next response and ACKs it; returns its type.
    async fn next(&mut self) -> Result<ResourceType, tonic::Status> {
        loop {
            let resp = self
                .responses
                .message()
                .await?
                .ok_or_else(|| tonic::Status::cancelled("response stream ended"))?;
            let Some(ty) = ResourceType::from_type_url(&resp.type_url) else {
                continue;
            };
            let fixed = if ty == ResourceType::Endpoints {
                self.eds.clone()
            } else {
                self.cds.clone()
            };
            self.send(fixed, resp.version_info, resp.nonce).await?;
            return Ok(ty);
        }
    }
}

/// One simulated Envoy. Once it has ACKed its first EDS response it waits for all others;
/// then it reports on `done` the instant it has queued the ACK of each later EDS response.
/// Like Envoy configured by Istio (`set_node_on_first_message_only`) and gRPC's xDS clients,
/// it sends its node in the first request only. Connecting is retried (1,000 clients
/// connecting at once may overflow the listen backlog).
async fn client(port: u16, id: usize, ready: Arc<Barrier>, done: mpsc::UnboundedSender<Instant>) {
    let mut attempts = 0;
    let mut session = loop {
        match Session::open(port, id).await {
            Ok(s) => break s,
            Err(e) if attempts < 100 => {
                attempts += 1;
                tracing::debug!(client = id, error = %e, "retrying");
                tokio::time::sleep(Duration::from_millis(20 + fastrand::u64(0..80))).await;
            }
            Err(e) => panic!("client {id}: {e}"),
        }
    };
    ready.wait().await;
    while let Ok(ty) = session.next().await {
        if ty == ResourceType::Endpoints {
            let _ = done.send(Instant::now());
        }
    }
}

// === the driver ===

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
    // The child's pipes belong to a thread of their own, so the clients' runtime never blocks.
    let mut to_server = child.stdin.take().unwrap();
    let mut from_server = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut answer = move || loop {
        let line = from_server.next().unwrap().unwrap();
        if let Some(a) = line.strip_prefix("= ") {
            return a.to_owned();
        }
    };
    let port: u16 = answer().parse().unwrap();
    type Ask = (String, tokio::sync::oneshot::Sender<String>);
    let (commands, inbox) = std::sync::mpsc::channel::<Ask>();
    let pipes = std::thread::spawn(move || {
        for (cmd, reply) in inbox {
            writeln!(to_server, "{cmd}").unwrap();
            if cmd == "quit" {
                return;
            }
            let _ = reply.send(answer());
        }
    });
    let ask = |cmd: &str| {
        let (reply, answer) = tokio::sync::oneshot::channel();
        commands.send((cmd.to_owned(), reply)).unwrap();
        async move { answer.await.unwrap_or_default() }
    };
    let rss_before: f64 = ask("rss").await.parse().unwrap();

    let ready = Arc::new(Barrier::new(n + 1));
    let (done_tx, mut done) = mpsc::unbounded_channel();
    for id in 0..n {
        tokio::spawn(client(port, id, Arc::clone(&ready), done_tx.clone()));
    }
    ready.wait().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rss_synced: f64 = ask("rss").await.parse().unwrap();
    let server_cpu_before: f64 = ask("cpu").await.parse().unwrap();
    let client_cpu_before = cpu_time();

    let mut server_side = Vec::new();
    let mut client_side = Vec::with_capacity(n * options.rounds);
    for _ in 0..options.rounds {
        let start = Instant::now();
        let marks: Vec<f64> = ask(&format!("push {n}"))
            .await
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect();
        if std::env::var_os("FANOUT_VERBOSE").is_some() {
            eprintln!("n={n} round: {marks:?}");
        }
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
    let server_cpu = ask("cpu").await.parse::<f64>().unwrap() - server_cpu_before;
    let client_cpu = ms(cpu_time() - client_cpu_before);
    let rss_after: f64 = ask("rss").await.parse().unwrap();
    ask("quit").await;
    let _ = pipes.join();
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
    // Both processes: a multi-threaded runtime, one worker per core (as the control plane is
    // deployed; a single-threaded client runtime made no difference to the clients' CPU time
    // and left them one core).
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
         change per round; {} rounds; debounce window {} ms",
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
