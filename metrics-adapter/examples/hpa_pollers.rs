//! Load generator for `bench/run.sh`: N concurrent HPA-like pollers, each asking the adapter for
//! an external metric in a closed loop, and the response latency percentiles they saw.
//!
//! ```text
//! cargo run --release -p gofe-metrics-adapter --example hpa_pollers -- \
//!     ADAPTER_URL CONCURRENCY SECONDS DISTINCT_SELECTORS INTERVAL_MS [PROMETHEUS_URL]
//! ```
//!
//! Poller `i` asks for `http_requests_per_second` with `labelSelector=service=svc-(i mod
//! DISTINCT_SELECTORS)`, every INTERVAL_MS (paced, start times spread evenly), or as fast as it
//! gets answers when INTERVAL_MS is 0 (closed loop, i.e. saturation). With PROMETHEUS_URL, the
//! Prometheus queries per second are read from Prometheus' own
//! `prometheus_http_requests_total{handler=~"/api/v1/query.*"}` counters on its `/metrics`
//! (and reported as counts too: `prometheus_queries`, and `prometheus_series` for the
//! adapter's series listings).
//!
//! Environment, for custom metrics:
//! - `HPA_PATH`: the path each poller asks, `{i}` standing for its selector's number (default:
//!   the external metric above), e.g.
//!   `/apis/custom.metrics.k8s.io/v1beta2/namespaces/bench/pods/*/http_requests_per_second?labelSelector=app%3Dsvc-{i}`.
//! - `OBJECT_PATH`, `OBJECT_POLLERS`: that many more pollers, paced the same, asking this one
//!   path (an HPA's Object metric).
//! - `API_STATS_URL`: an API-server stand-in's `/stats` (`api_stand_in`): the Pod lists it
//!   served during the measured window are reported as `api_lists`.

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

/// Prometheus' own counts of (queries, instant and range; series listings).
async fn prometheus_queries(client: &HttpClient, prom: &str) -> Option<(f64, f64)> {
    let (_, body) = fetch(client, &format!("{prom}/metrics")).await.ok()?;
    let text = String::from_utf8_lossy(&body);
    let count = |handlers: &[&str]| -> f64 {
        text.lines()
            .filter(|l| {
                l.starts_with("prometheus_http_requests_total{")
                    && handlers
                        .iter()
                        .any(|h| l.contains(&format!("handler=\"{h}\"")))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    Some((
        count(&["/api/v1/query", "/api/v1/query_range"]),
        count(&["/api/v1/series"]),
    ))
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
    if args.len() < 5 {
        return Err("usage: hpa_pollers ADAPTER_URL CONCURRENCY SECONDS DISTINCT_SELECTORS INTERVAL_MS [PROMETHEUS_URL]".into());
    }
    let base = args[0].trim_end_matches('/').to_owned();
    let concurrency: usize = args[1].parse().map_err(|e| format!("CONCURRENCY: {e}"))?;
    let seconds: u64 = args[2].parse().map_err(|e| format!("SECONDS: {e}"))?;
    let distinct: usize = args[3]
        .parse()
        .map_err(|e| format!("DISTINCT_SELECTORS: {e}"))?;
    let interval_ms: u64 = args[4].parse().map_err(|e| format!("INTERVAL_MS: {e}"))?;
    let prom = args.get(5).cloned();
    let template = std::env::var("HPA_PATH").unwrap_or_else(|_| {
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/http_requests_per_second?labelSelector=service%3Dsvc-{i}".to_owned()
    });
    let object_path = std::env::var("OBJECT_PATH").ok();
    let object_pollers: usize = match (&object_path, std::env::var("OBJECT_POLLERS")) {
        (Some(_), Ok(n)) => n.parse().map_err(|e| format!("OBJECT_POLLERS: {e}"))?,
        (Some(_), Err(_)) => 1,
        (None, _) => 0,
    };
    let total = concurrency + object_pollers;
    let url_of = |i: usize| match &object_path {
        Some(path) if i >= concurrency => format!("{base}{path}"),
        _ => format!(
            "{base}{}",
            template.replace("{i}", &(i % distinct).to_string())
        ),
    };
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(total)
        .build_http();

    // Warm up: one request per selector, so the first measured requests are not all misses.
    for i in (0..distinct).chain((object_pollers > 0).then_some(concurrency)) {
        let url = url_of(i);
        let (status, body) = fetch(&client, &url).await?;
        if status != 200 {
            return Err(format!(
                "warm-up {url}: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            ));
        }
    }

    let api_stats = std::env::var("API_STATS_URL").ok();
    let api_lists = |client: HttpClient, url: Option<String>| async move {
        let (_, body) = fetch(&client, url.as_deref()?).await.ok()?;
        serde_json::from_slice::<serde_json::Value>(&body).ok()?["podLists"].as_f64()
    };
    let lists_before = api_lists(client.clone(), api_stats.clone()).await;
    let prom_before = match &prom {
        Some(p) => prometheus_queries(&client, p).await,
        None => None,
    };
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..total)
        .map(|i| {
            let client = client.clone();
            let url = url_of(i);
            let pace = (interval_ms > 0).then(|| {
                let period = Duration::from_millis(interval_ms);
                let offset = period * i as u32 / total as u32;
                let mut ticks =
                    tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                ticks
            });
            tokio::spawn(async move {
                let mut pace = pace;
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                while Instant::now() < end {
                    if let Some(ticks) = pace.as_mut() {
                        ticks.tick().await;
                        if Instant::now() >= end {
                            break;
                        }
                    }
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
    let lists = match (lists_before, api_lists(client.clone(), api_stats).await) {
        (Some(b), Some(a)) => format!("{}", a - b),
        _ => "n/a".into(),
    };
    all.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (qps, queries, series) = match (prom_before, prom_after) {
        (Some(b), Some(a)) => (
            format!("{:.1}", (a.0 - b.0) / elapsed),
            format!("{}", a.0 - b.0),
            format!("{}", a.1 - b.1),
        ),
        _ => ("n/a".into(), "n/a".into(), "n/a".into()),
    };
    println!(
        "requests={} errors={} rps={:.0} p50_ms={:.3} p90_ms={:.3} p99_ms={:.3} max_ms={:.3} prometheus_qps={} prometheus_queries={} prometheus_series={} api_lists={} seconds={:.1}",
        all.len(),
        errors,
        all.len() as f64 / elapsed,
        ms(percentile(&all, 50.0)),
        ms(percentile(&all, 90.0)),
        ms(percentile(&all, 99.0)),
        ms(all.last().copied().unwrap_or_default()),
        qps,
        queries,
        series,
        lists,
        elapsed,
    );
    Ok(())
}
