//! `tcp` listeners over real sockets: a protocol that is not HTTP (the server speaks first),
//! half-closes in both directions, weighted clusters, the idle timeout, connect failures, and
//! a passthrough refusing to connect to the proxy itself; each counted in the metrics and
//! written to the access log.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::support::*;

/// Longest wait for anything in these tests (a bound, never a pass condition).
const PATIENCE: Duration = Duration::from_secs(10);

/// A line server that is not HTTP: it greets first (`HELLO <name>`), answers `PING` with
/// `PONG <name>` and `ECHO x` with `x`, and closes on `QUIT`.
struct LineServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl LineServer {
    async fn start(name: &'static str) -> LineServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let (r, mut w) = tcp.into_split();
                    let mut lines = BufReader::new(r).lines();
                    let _ = w.write_all(format!("HELLO {name}\n").as_bytes()).await;
                    while let Ok(Some(line)) = lines.next_line().await {
                        let answer = match line.split_once(' ') {
                            _ if line == "PING" => format!("PONG {name}\n"),
                            _ if line == "QUIT" => return,
                            Some(("ECHO", rest)) => format!("{rest}\n"),
                            _ => "ERR\n".to_owned(),
                        };
                        if w.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        LineServer { addr, task }
    }
}

impl Drop for LineServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A log file in the temp directory, removed when dropped.
struct LogFile(PathBuf);

impl LogFile {
    fn new(test: &str) -> LogFile {
        let path =
            std::env::temp_dir().join(format!("gofe-tcp-log-{test}-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&path);
        LogFile(path)
    }

    async fn lines(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let text = std::fs::read_to_string(&self.0).unwrap_or_default();
            let lines: Vec<String> = text.lines().map(str::to_owned).collect();
            if lines.len() >= n {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} lines: {text:?}",
                lines.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for LogFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

const LOG_FORMAT: &str = "%REQ(:METHOD)%|%PROTOCOL%|%RESPONSE_CODE%|%RESPONSE_FLAGS%|%UPSTREAM_CLUSTER%|%UPSTREAM_HOST%|%BYTES_RECEIVED%|%BYTES_SENT%|%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%\n";

/// A `tcp` listener on 127.0.0.1:0 whose `tcp_proxy` is `proxy` (YAML flow fields), logging to
/// `log`, with `clusters` (YAML list items).
fn config(proxy: &str, log: Option<&LogFile>, clusters: &str) -> String {
    let log = log
        .map(|l| {
            format!(
                "    access_log: [{{ path: \"{}\", format: \"{}\" }}]\n",
                l.0.display(),
                LOG_FORMAT.replace('\n', "\\n")
            )
        })
        .unwrap_or_default();
    format!(
        "listeners:\n  - name: tcp-in\n    address: \"127.0.0.1:0\"\n    protocol: tcp\n{log}    tcp_proxy: {{ {proxy} }}\nclusters:\n{clusters}"
    )
}

async fn read_line(r: &mut BufReader<TcpStream>) -> String {
    let mut line = String::new();
    tokio::time::timeout(PATIENCE, r.read_line(&mut line))
        .await
        .expect("a line in time")
        .expect("a line");
    line
}

/// Reads until the proxy closes the connection; what came before.
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut out))
        .await
        .expect("closed in time")
        .expect("a clean close");
    out
}

#[tokio::test]
async fn a_protocol_that_is_not_http_passes_both_ways_and_is_counted_and_logged() {
    let server = LineServer::start("db-1").await;
    let log = LogFile::new("line");
    let yaml = config(
        "cluster: db, stat_prefix: db-tcp",
        Some(&log),
        &format!(
            "  - {{ name: db, endpoints: [{{ address: \"{}\" }}] }}\n",
            server.addr
        ),
    );
    let h = Harness::start(&yaml).await;
    let mut c = BufReader::new(TcpStream::connect(h.addr).await.unwrap());
    // The server speaks first: no HTTP proxy would pass this on before a request.
    assert_eq!(read_line(&mut c).await, "HELLO db-1\n");
    c.get_mut().write_all(b"PING\n").await.unwrap();
    assert_eq!(read_line(&mut c).await, "PONG db-1\n");
    c.get_mut().write_all(b"ECHO over tcp\n").await.unwrap();
    assert_eq!(read_line(&mut c).await, "over tcp\n");
    c.get_mut().write_all(b"QUIT\n").await.unwrap();
    let rest = read_to_close(c.get_mut()).await;
    assert!(rest.is_empty(), "{rest:?}");
    // The server is gone; the line is written once the client is too.
    drop(c);

    let sent_up = "PING\nECHO over tcp\nQUIT\n".len();
    let sent_down = "HELLO db-1\nPONG db-1\nover tcp\n".len();
    let lines = log.lines(1).await;
    let f: Vec<&str> = lines[0].split('|').collect();
    assert_eq!(
        f,
        [
            "-",
            "-",
            "0",
            "-",
            "db",
            &server.addr.to_string(),
            &sent_up.to_string(),
            &sent_down.to_string(),
            "127.0.0.1"
        ],
        "{}",
        lines[0]
    );
    let text = h.proxy.metrics_text();
    let series = |name: &str| metric(&text, &format!("{name}{{stat_prefix=\"db-tcp\"}}"));
    assert_eq!(series("gofe_tcp_proxy_connections_total"), Some(1.0));
    assert_eq!(
        series("gofe_tcp_proxy_received_bytes_total"),
        Some(sent_up as f64)
    );
    assert_eq!(
        series("gofe_tcp_proxy_sent_bytes_total"),
        Some(sent_down as f64)
    );
    assert_eq!(
        metric(
            &text,
            "gofe_downstream_connections_total{listener=\"tcp-in\"}"
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn half_closes_pass_through_in_each_direction() {
    // The server reads to the client's end of stream, then answers with what it read, reversed,
    // and closes: the answer can only come if the proxy passed the half-close on.
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up_addr = upstream.local_addr().unwrap();
    let (late_tx, mut late_rx) = mpsc::channel::<Vec<u8>>(1);
    let server = tokio::spawn(async move {
        // First connection: client half-closes first.
        let (mut s, _) = upstream.accept().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        got.reverse();
        s.write_all(&got).await.unwrap();
        drop(s);
        // Second connection: the server half-closes first and still reads what follows.
        let (mut s, _) = upstream.accept().await.unwrap();
        s.write_all(b"bye now").await.unwrap();
        s.shutdown().await.unwrap();
        let mut late = Vec::new();
        s.read_to_end(&mut late).await.unwrap();
        late_tx.send(late).await.unwrap();
    });
    let yaml = config(
        "cluster: up",
        None,
        &format!("  - {{ name: up, endpoints: [{{ address: \"{up_addr}\" }}] }}\n"),
    );
    let h = Harness::start(&yaml).await;

    let mut c = TcpStream::connect(h.addr).await.unwrap();
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    c.write_all(&payload).await.unwrap();
    c.shutdown().await.unwrap();
    let answer = read_to_close(&mut c).await;
    let mut expected = payload.clone();
    expected.reverse();
    assert_eq!(answer.len(), expected.len());
    assert!(answer == expected, "the reversed payload, whole");

    let mut c = TcpStream::connect(h.addr).await.unwrap();
    let mut first = [0u8; 7];
    tokio::time::timeout(PATIENCE, c.read_exact(&mut first))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&first, b"bye now");
    // The server's end of stream reaches the client while the client can still write.
    let mut eof = [0u8; 1];
    let n = tokio::time::timeout(PATIENCE, c.read(&mut eof))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "the server's half-close");
    c.write_all(b"after your goodbye").await.unwrap();
    c.shutdown().await.unwrap();
    let late = tokio::time::timeout(PATIENCE, late_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(late, b"after your goodbye");
    server.await.unwrap();
}

#[tokio::test]
async fn weighted_clusters_split_connections_by_weight() {
    let a = LineServer::start("a").await;
    let b = LineServer::start("b").await;
    let yaml = config(
        "weighted_clusters: { clusters: [{ name: ca, weight: 3 }, { name: cb, weight: 1 }] }",
        None,
        &format!(
            "  - {{ name: ca, endpoints: [{{ address: \"{}\" }}] }}\n  - {{ name: cb, endpoints: [{{ address: \"{}\" }}] }}\n",
            a.addr, b.addr
        ),
    );
    let h = Harness::start(&yaml).await;
    let mut seen = std::collections::HashMap::new();
    // Two whole cycles of the smooth weighted order (3 + 1), wherever it starts.
    for _ in 0..8 {
        let mut c = BufReader::new(TcpStream::connect(h.addr).await.unwrap());
        let hello = read_line(&mut c).await;
        *seen.entry(hello).or_insert(0) += 1;
    }
    assert_eq!(seen.get("HELLO a\n"), Some(&6), "{seen:?}");
    assert_eq!(seen.get("HELLO b\n"), Some(&2), "{seen:?}");
}

#[tokio::test]
async fn an_idle_connection_is_closed_and_counted() {
    let server = LineServer::start("idle").await;
    let yaml = config(
        "cluster: db, idle_timeout: 200ms",
        None,
        &format!(
            "  - {{ name: db, endpoints: [{{ address: \"{}\" }}] }}\n",
            server.addr
        ),
    );
    let h = Harness::start(&yaml).await;
    let mut c = BufReader::new(TcpStream::connect(h.addr).await.unwrap());
    assert_eq!(read_line(&mut c).await, "HELLO idle\n");
    // Nothing more either way: the proxy closes it.
    let rest = read_to_close(c.get_mut()).await;
    assert!(rest.is_empty());
    let text = h.proxy.metrics_text();
    assert_eq!(
        metric(
            &text,
            "gofe_tcp_proxy_idle_timeouts_total{stat_prefix=\"tcp-in\"}"
        ),
        Some(1.0),
        "{text}"
    );
}

#[tokio::test]
async fn a_refused_upstream_closes_the_client_with_uf() {
    // A port nothing listens on: bind one, note it, free it.
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let log = LogFile::new("refused");
    let yaml = config(
        "cluster: gone",
        Some(&log),
        &format!("  - {{ name: gone, endpoints: [{{ address: \"{dead}\" }}] }}\n"),
    );
    let h = Harness::start(&yaml).await;
    let mut c = TcpStream::connect(h.addr).await.unwrap();
    assert!(read_to_close(&mut c).await.is_empty());
    let lines = log.lines(1).await;
    let f: Vec<&str> = lines[0].split('|').collect();
    assert_eq!(f[3], "UF", "{}", lines[0]);
    assert_eq!(f[5], dead.to_string());
    let text = h.proxy.metrics_text();
    assert_eq!(
        metric(
            &text,
            "gofe_tcp_proxy_failures_total{reason=\"connect_failure\",stat_prefix=\"tcp-in\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "gofe_tcp_proxy_connections_total{stat_prefix=\"tcp-in\"}"
        ),
        Some(0.0)
    );
}

#[tokio::test]
async fn a_passthrough_to_the_proxys_own_port_is_refused() {
    // Connected to directly (not captured), the original destination is the listener itself:
    // passing it through would connect the proxy to itself.
    let yaml = config(
        "cluster: passthrough",
        None,
        "  - { name: passthrough, type: original_dst }\n",
    );
    let h = Harness::start(&yaml).await;
    for _ in 0..2 {
        let mut c = TcpStream::connect(h.addr).await.unwrap();
        assert!(read_to_close(&mut c).await.is_empty());
    }
    let text = h.proxy.metrics_text();
    assert_eq!(
        metric(
            &text,
            "gofe_tcp_proxy_failures_total{reason=\"loop\",stat_prefix=\"tcp-in\"}"
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "gofe_downstream_connections_total{listener=\"tcp-in\"}"
        ),
        Some(2.0),
        "each was accepted once: no connection to itself"
    );
}
