//! The classic slow-backend experiment, measured on gofe.
//!
//! 11 backends behind a gofe proxy, an open-loop client sending 1,000 requests per second with
//! a 1 s timeout, and one backend that answers in 2 s for 30 s in the middle of the run. The
//! client-seen success rate is compared across balancing setups run one after another:
//!
//! * `round_robin` — plain weighted round robin, no outlier detection;
//! * `least_request` — power-of-two-choices least-request, no outlier detection;
//! * `gofe` — least-request plus gofe's loop: passive outlier detection in the proxy, a
//!   per-try timeout with one retry on another endpoint, and the controller's latency weighting
//!   from the embedded signal source.
//!
//! It also reports how long after the fault began the proxy ejected the slow endpoint and the
//! controller first published a lower weight for it (`-` when that never happened).
//!
//! Run: `cargo bench --bench slow_backend -- [MODE…] [--seconds N]`.
//! Everything runs on 127.0.0.1 in this process; the run is bounded by `--seconds`.

#![allow(missing_docs)]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const BACKENDS: usize = 11;
const RPS: u64 = 1000;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(1);
const SLOW: Duration = Duration::from_secs(2);

fn proxy_yaml(mode: &str, addrs: &[String]) -> String {
    let (lb, extra, route_extra) = match mode {
        "round_robin" => ("round_robin", "", ""),
        "least_request" => ("least_request", "", ""),
        _ => (
            "least_request",
            "    outlier_detection: { consecutive_gateway_failure: 3, consecutive_5xx: 3, base_ejection_time: \"5s\", max_ejection_percent: 20 }\n",
            ", timeout: \"1s\", retry_policy: { retry_on: \"gateway-error\", num_retries: 1, per_try_timeout: \"300ms\" }",
        ),
    };
    let eps: Vec<String> = addrs
        .iter()
        .map(|a| format!("      - {{ address: \"{a}\" }}"))
        .collect();
    format!(
        "listeners:\n  - address: \"127.0.0.1:0\"\n    filters:\n      - type: router\n        config:\n          virtual_hosts:\n            - name: all\n              domains: [\"*\"]\n              routes: [{{ match: {{ prefix: \"/\" }}, route: {{ cluster: web{route_extra} }} }}]\nclusters:\n  - name: web\n    lb_policy: {lb}\n    circuit_breakers: {{ max_requests: 100000, max_pending_requests: 100000, max_connections: 100000 }}\n{extra}    endpoints:\n{}\nadmin: {{ address: \"127.0.0.1:0\" }}\n",
        eps.join("\n")
    )
}

struct Outcome {
    sent: u64,
    ok: u64,
    ok_during_fault: u64,
    sent_during_fault: u64,
    p50_ms: f64,
    p99_ms: f64,
    /// From the fault to the proxy's own ejection of the slow endpoint.
    ejected_after_ms: Option<u64>,
    /// From the fault to the controller's first decision lowering the slow endpoint.
    reweighted_after_ms: Option<u64>,
}

async fn run(mode: &str, seconds: u64) -> Outcome {
    let mesh = support::Mesh::start(BACKENDS, |addrs| proxy_yaml(mode, addrs)).await;
    let (backends, addrs, proxy, listen, admin) = (
        &mesh.backends,
        &mesh.addrs,
        mesh.proxy.clone(),
        mesh.listen,
        mesh.admin,
    );
    let controller = (mode == "gofe").then(|| {
        support::Running::start(
            &mesh,
            &format!(
                "proxy_config: unused.yaml\ninterval: \"1s\"\nsignals: {{ source: embedded, window: \"3s\", latency_quantile: 0.9, embedded: {{ targets: [\"{admin}\"] }} }}\npolicy: {{ max_ejection_percent: 20, base_ejection_time: \"5s\", min_weight_percent: 5, max_step_percent: 80, latency_half_life: \"1s\", slow_start_window: \"5s\" }}\nadmin: {{ address: \"127.0.0.1:0\" }}\n"
            ),
        )
    });
    let shared = controller
        .as_ref()
        .map(|c| std::sync::Arc::clone(&c.shared));

    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(2048)
        .build_http();
    let uri: http::Uri = format!("http://{listen}/").parse().unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let ok = Arc::new(AtomicU64::new(0));
    let fault_sent = Arc::new(AtomicU64::new(0));
    let fault_ok = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::with_capacity(
        (RPS * seconds) as usize,
    )));
    let fault_from = Duration::from_secs(seconds / 6);
    let fault_to = fault_from + Duration::from_secs(30.min(seconds / 2));
    let start = Instant::now();
    // Watch for the reactions to the fault: the proxy's ejection, the controller's new weight.
    let slow_ep = addrs[0].clone();
    let watcher = {
        let proxy = proxy.clone();
        let shared = shared.clone();
        let fault_at = start + fault_from;
        let limit = start + Duration::from_secs(seconds);
        tokio::spawn(async move {
            let (mut ejected, mut reweighted) = (None, None);
            let state =
                format!("gofe_endpoint_breaker_state{{cluster=\"web\",endpoint=\"{slow_ep}\"}} 1");
            while Instant::now() < limit
                && (ejected.is_none() || (shared.is_some() && reweighted.is_none()))
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let now = Instant::now();
                if now < fault_at {
                    continue;
                }
                let since =
                    u64::try_from(now.duration_since(fault_at).as_millis()).unwrap_or(u64::MAX);
                if ejected.is_none() && proxy.metrics_text().contains(&state) {
                    ejected = Some(since);
                }
                if let (None, Some(sh)) = (reweighted, &shared) {
                    let lowered = sh.decisions.read().ok().is_some_and(|d| {
                        d.clusters.get("web").is_some_and(|c| {
                            c.endpoints
                                .iter()
                                .any(|e| e.endpoint == slow_ep && (e.weight < 100 || !e.healthy))
                        })
                    });
                    if lowered {
                        reweighted = Some(since);
                    }
                }
            }
            (ejected, reweighted)
        })
    };
    let mut faulty = false;
    support::open_loop(RPS, start, seconds, |t| {
        let in_fault = t >= fault_from && t < fault_to;
        if in_fault != faulty {
            faulty = in_fault;
            backends[0].set_delay(if faulty { SLOW } else { Duration::ZERO });
        }
        let (client, uri) = (client.clone(), uri.clone());
        let (sent, ok, fs, fo, lat) = (
            Arc::clone(&sent),
            Arc::clone(&ok),
            Arc::clone(&fault_sent),
            Arc::clone(&fault_ok),
            Arc::clone(&latencies),
        );
        async move {
            sent.fetch_add(1, Ordering::Relaxed);
            if in_fault {
                fs.fetch_add(1, Ordering::Relaxed);
            }
            let began = Instant::now();
            let answered = support::get_within(&client, uri, CLIENT_TIMEOUT).await;
            if answered.is_some_and(|s| s.is_success()) {
                ok.fetch_add(1, Ordering::Relaxed);
                if in_fault {
                    fo.fetch_add(1, Ordering::Relaxed);
                }
            }
            if let Ok(mut l) = lat.lock() {
                l.push(began.elapsed().min(CLIENT_TIMEOUT).as_secs_f64() * 1000.0);
            }
        }
    })
    .await;
    if let Some(c) = controller {
        c.stop().await;
    }
    let (ejected_after_ms, reweighted_after_ms) = watcher.await.unwrap_or((None, None));
    mesh.stop().await;
    let mut l = latencies.lock().unwrap().clone();
    l.sort_by(f64::total_cmp);
    let q = |p: f64| support::quantile(&l, p);
    Outcome {
        sent: sent.load(Ordering::Relaxed),
        ok: ok.load(Ordering::Relaxed),
        ok_during_fault: fault_ok.load(Ordering::Relaxed),
        sent_during_fault: fault_sent.load(Ordering::Relaxed),
        p50_ms: q(0.5),
        p99_ms: q(0.99),
        ejected_after_ms,
        reweighted_after_ms,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seconds = support::seconds(&args, 60);
    let mut modes: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| ["round_robin", "least_request", "gofe"].contains(a))
        .collect();
    if modes.is_empty() {
        modes = vec!["round_robin", "least_request", "gofe"];
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "slow-backend experiment: {BACKENDS} backends, {RPS} req/s open loop, 1 s client timeout, one backend at 2 s for 30 s of a {seconds} s run"
    );
    println!(
        "{:<14} {:>8} {:>10} {:>16} {:>8} {:>8} {:>12} {:>14}",
        "mode",
        "sent",
        "success",
        "success (fault)",
        "p50 ms",
        "p99 ms",
        "ejected ms",
        "reweighted ms"
    );
    for mode in modes {
        let o = rt.block_on(run(mode, seconds));
        println!(
            "{:<14} {:>8} {:>9.3}% {:>15.3}% {:>8.1} {:>8.1} {:>12} {:>14}",
            mode,
            o.sent,
            100.0 * o.ok as f64 / o.sent.max(1) as f64,
            100.0 * o.ok_during_fault as f64 / o.sent_during_fault.max(1) as f64,
            o.p50_ms,
            o.p99_ms,
            o.ejected_after_ms.map_or("-".into(), |v| v.to_string()),
            o.reweighted_after_ms.map_or("-".into(), |v| v.to_string()),
        );
    }
}
