//! `gofe sim fetch` against a real Prometheus (Debian's package) loaded with known counters by
//! `promtool tsdb create-blocks-from openmetrics`, as metrics-adapter/tests/wire.rs does; the
//! fetched file is then read back as a counter trace.

#![allow(unreachable_pub)]

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gofe_sim::fetch::{self, FetchRequest};
use gofe_sim::traffic::{TraceCurve, TraceOptions};

struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn require(tool: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("`{tool}` is not on PATH: this test needs a real Prometheus (Debian: apt-get install -y prometheus; it ships promtool too)")
        })
}

fn ready(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /-/ready HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.0 200") || buf.starts_with("HTTP/1.1 200")
}

/// Pod a counts 3 a second; pod b 4 a second and restarts at `RESET` (its counter is 4 there:
/// it counted 4 since the restart), so the summed rate is exactly 7 everywhere.
const SAMPLES: i64 = 12_100;
const RESET: i64 = 6_000;

fn a(i: i64) -> f64 {
    1_000.0 + 3.0 * i as f64
}

fn b(i: i64) -> f64 {
    if i < RESET {
        500.0 + 4.0 * i as f64
    } else {
        4.0 * (i - RESET + 1) as f64
    }
}

fn start_prometheus(t0: i64) -> Prometheus {
    let dir = std::env::temp_dir().join(format!("gofe-sim-fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut text = String::from("# TYPE trace_requests counter\n");
    for i in 0..SAMPLES {
        let _ = writeln!(
            text,
            "trace_requests_total{{pod=\"a\"}} {} {}",
            a(i),
            t0 + i
        );
    }
    for i in 0..SAMPLES {
        let _ = writeln!(
            text,
            "trace_requests_total{{pod=\"b\"}} {} {}",
            b(i),
            t0 + i
        );
    }
    text.push_str("# EOF\n");
    let input = dir.join("fixture.om");
    std::fs::write(&input, text).unwrap();
    let data = dir.join("data");
    let out = Command::new(require("promtool"))
        .args(["tsdb", "create-blocks-from", "openmetrics"])
        .arg(&input)
        .arg(&data)
        .output()
        .expect("running promtool");
    assert!(
        out.status.success(),
        "promtool failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, "global:\n  scrape_interval: 15s\n").unwrap();
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let child = Command::new(require("prometheus"))
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", data.display()))
        .arg(format!("--web.listen-address={addr}"))
        .arg("--storage.tsdb.retention.time=1y")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting prometheus");
    let mut p = Prometheus { child, addr, dir };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready(addr) {
        if let Ok(Some(status)) = p.child.try_wait() {
            panic!("prometheus exited: {status}");
        }
        assert!(Instant::now() < deadline, "prometheus not ready after 60 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    p
}

#[derive(serde::Deserialize)]
struct Answer {
    data: Data,
}
#[derive(serde::Deserialize)]
struct Data {
    result: Vec<Series>,
}
#[derive(serde::Deserialize)]
struct Series {
    metric: std::collections::BTreeMap<String, String>,
    values: Vec<(f64, String)>,
}

#[test]
fn fetch_chunks_past_11000_points_and_the_counter_trace_reads_back_exactly() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    // Five hours ago, on a minute: old enough to be in backfilled blocks, within retention.
    let t0 = now - 5 * 3600 - now % 60;
    let prom = start_prometheus(t0);
    let url = format!("http://{}", prom.addr);
    // 12,001 evaluation times at 1 s: more than one range query may hold.
    let (start, end) = (t0 + 50, t0 + 50 + 12_000);
    let req = FetchRequest {
        url: url.clone(),
        query: "trace_requests_total".into(),
        start: start as f64,
        end: end as f64,
        step: Duration::from_secs(1),
        timeout: Duration::from_secs(30),
        ca_file: None,
    };
    // Prometheus refuses the range in one query…
    let client = gofe_prom::Client::new(&gofe_prom::ClientConfig::new(url.clone())).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let whole = rt
        .block_on(client.query_range(&req.query, req.start, req.end, req.step))
        .unwrap_err()
        .to_string();
    assert!(whole.contains("11,000 points"), "{whole}");
    // …and fetch asks for it in two.
    let out_dir = prom.dir.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let file = out_dir.join("trace.json");
    let f = fetch::fetch_to_file(&req, &file).unwrap();
    assert_eq!(
        f,
        fetch::Fetched {
            series: 2,
            points: 2 * 12_001,
            queries: 2,
            non_finite: 0
        }
    );
    assert_eq!(
        std::fs::read_dir(&out_dir).unwrap().count(),
        1,
        "no temporary file left"
    );
    let answer: Answer = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(answer.data.result.len(), 2);
    for (series, value) in answer.data.result.iter().zip([a as fn(i64) -> f64, b]) {
        assert_eq!(series.metric["__name__"], "trace_requests_total");
        assert_eq!(series.values.len(), 12_001);
        for (k, (t, v)) in series.values.iter().enumerate() {
            let i = 50 + k as i64;
            assert_eq!(*t, (t0 + i) as f64, "{:?} point {k}", series.metric);
            assert_eq!(
                v.parse::<f64>().unwrap(),
                value(i),
                "{:?} point {k}",
                series.metric
            );
        }
    }
    // Read back as a counter: 3 + 4 = 7 per second everywhere, across b's reset; from 2 h in.
    let options = TraceOptions {
        counter: true,
        start: 7_200.0,
        ..TraceOptions::default()
    };
    assert_eq!(gofe_sim::traffic::check_trace(&file, &options).1, 0);
    assert_eq!(
        gofe_sim::traffic::trace_length(&file, &options).unwrap(),
        12_000.0 - 7_200.0
    );
    let mut curve = TraceCurve::open(&file, &options).unwrap();
    for s in 0..4_800 {
        assert_eq!(curve.at(f64::from(s) + 0.5).unwrap(), 7.0, "at {s}.5 s");
    }
    // Without `counter` the values are the summed counters themselves.
    let mut raw = TraceCurve::open(&file, &TraceOptions::default()).unwrap();
    assert_eq!(raw.at(0.0).unwrap(), a(50) + b(50));
    assert_eq!(
        raw.at(f64::from((RESET - 50) as i32)).unwrap(),
        a(RESET) + b(RESET)
    );
}
