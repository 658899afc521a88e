//! Load generator for `bench/run.sh`: N concurrent HPA-like pollers, each asking the adapter for
//! an external metric in a closed loop, and the response latency percentiles they saw.
//!
//! ```text
//! cargo run --release -p gofe-metrics-adapter --example hpa_pollers -- \
//!     ADAPTER_URL CONCURRENCY SECONDS DISTINCT_SELECTORS [PROMETHEUS_URL]
//! ```
//!
//! Poller `i` asks for `http_requests_per_second` with `labelSelector=service=svc-(i mod
//! DISTINCT_SELECTORS)`. With PROMETHEUS_URL, the Prometheus queries per second are read from
//! Prometheus' own `prometheus_http_requests_total{handler="/api/v1/query"}` counter.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>;

async fn fetch(client: &HttpClient, url: &str) -> Result<(u16, Bytes), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let resp = client.get(uri).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}

async fn prometheus_queries(client: &HttpClient, prom: &str) -> Option<f64> {
    let url = format!(
        "{prom}/api/v1/query?query=sum(prometheus_http_requests_total%7Bhandler%3D%22%2Fapi%2Fv1%2Fquery%22%7D)"
    );
    let (_, body) = fetch(client, &url).await.ok()?;
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        return Err("usage: hpa_pollers ADAPTER_URL CONCURRENCY SECONDS DISTINCT_SELECTORS [PROMETHEUS_URL]".into());
    }
    let base = args[0].trim_end_matches('/').to_owned();
    let concurrency: usize = args[1].parse().map_err(|e| format!("CONCURRENCY: {e}"))?;
    let seconds: u64 = args[2].parse().map_err(|e| format!("SECONDS: {e}"))?;
    let distinct: usize = args[3].parse().map_err(|e| format!("DISTINCT_SELECTORS: {e}"))?;
    let prom = args.get(4).cloned();
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build_http();

    // Warm up: one request per selector, so the first measured requests are not all misses.
    for i in 0..distinct {
        let url = format!("{base}/apis/external.metrics.k8s.io/v1beta1/namespaces/default/http_requests_per_second?labelSelector=service%3Dsvc-{i}");
        let (status, body) = fetch(&client, &url).await?;
        if status != 200 {
            return Err(format!("warm-up {url}: HTTP {status}: {}", String::from_utf8_lossy(&body)));
        }
    }

    let prom_before = match &prom {
        Some(p) => prometheus_queries(&client, p).await,
        None => None,
    };
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..concurrency)
        .map(|i| {
            let client = client.clone();
            let url = format!(
                "{base}/apis/external.metrics.k8s.io/v1beta1/namespaces/default/http_requests_per_second?labelSelector=service%3Dsvc-{}",
                i % distinct
            );
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                while Instant::now() < end {
                    let t = Instant::now();
                    match fetch(&client, &url).await {
                        Ok((200, _)) => latencies.push(t.elapsed()),
                        _ => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.map_err(|e| e.to_string())?;
        all.extend(l);
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let prom_after = match &prom {
        Some(p) => prometheus_queries(&client, p).await,
        None => None,
    };
    all.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let qps = match (prom_before, prom_after) {
        // The "after" read is itself one query.
        (Some(b), Some(a)) => format!("{:.1}", (a - b - 1.0).max(0.0) / elapsed),
        _ => "n/a".into(),
    };
    println!(
        "requests={} errors={} rps={:.0} p50_ms={:.3} p90_ms={:.3} p99_ms={:.3} max_ms={:.3} prometheus_qps={}",
        all.len(),
        errors,
        all.len() as f64 / elapsed,
        ms(percentile(&all, 50.0)),
        ms(percentile(&all, 90.0)),
        ms(percentile(&all, 99.0)),
        ms(all.last().copied().unwrap_or_default()),
        qps,
    );
    Ok(())
}
