//! The feedback loop's reaction to faults, loop on vs off.
//!
//! Four backends behind a gofe proxy balancing by plain round robin (no outlier detection in
//! the proxy, so what changes is the controller's doing), an open-loop client at 400 req/s, and
//! one fault in the middle of the run:
//!
//! * `failing_half` — one backend fails half its requests with 500 for 20 s, then recovers;
//! * `slow_10x` — every backend answers in 2 ms, one in 20 ms, for 20 s, then recovers.
//!
//! For each case it runs `off` (round robin alone) and `on` (the controller with the embedded
//! signal source, deciding every second, publishing to the proxy) and reports the client-seen
//! error rate and p99 during the fault, the share of the fault's requests the faulty backend
//! served, and — with the loop on — the time from the fault to new
//! weights at the proxy (the endpoint unhealthy, or its weight halved) and from the recovery
//! to its full weight back.
//!
//! Run: `cargo bench --bench fault_cases -- [CASE…] [--seconds N]`.
//! Everything runs on 127.0.0.1 in this process and stops by itself.

#![allow(missing_docs)]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gofe_proxy::config::HealthStatus;
use gofe_proxy::demo::DemoBackend;
use gofe_proxy::Proxy;
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const BACKENDS: usize = 4;
const RPS: u64 = 400;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

fn proxy_yaml(addrs: &[String]) -> String {
    let eps: Vec<String> = addrs
        .iter()
        .map(|a| format!("      - {{ address: \"{a}\" }}"))
        .collect();
    format!(
        "listeners:\n  - address: \"127.0.0.1:0\"\n    filters:\n      - type: router\n        config:\n          virtual_hosts:\n            - name: all\n              domains: [\"*\"]\n              routes: [{{ match: {{ prefix: \"/\" }}, route: {{ cluster: web }} }}]\nclusters:\n  - name: web\n    lb_policy: round_robin\n    circuit_breakers: {{ max_requests: 100000, max_pending_requests: 100000, max_connections: 100000 }}\n    endpoints:\n{}\nadmin: {{ address: \"127.0.0.1:0\" }}\n",
        eps.join("\n")
    )
}

#[derive(Default)]
struct Outcome {
    sent_fault: u64,
    failed_fault: u64,
    p99_fault_ms: f64,
    p99_all_ms: f64,
    reacted_ms: Option<u64>,
    restored_ms: Option<u64>,
    /// Share of the fault's requests the faulty backend served.
    faulty_share: f64,
}

/// The faulty endpoint as the proxy has it now: (weight, healthy).
fn at_proxy(proxy: &Proxy, ep: &str) -> Option<(u32, bool)> {
    let active = proxy.active();
    let e = active.config.clusters[0]
        .endpoints
        .iter()
        .find(|e| e.address == ep)?;
    Some((e.weight, e.health_status == HealthStatus::Healthy))
}

async fn run(case: &str, on: bool, seconds: u64) -> Outcome {
    let mesh = support::Mesh::start(BACKENDS, proxy_yaml).await;
    if case == "slow_10x" {
        for b in &mesh.backends {
            b.set_delay(Duration::from_millis(2));
        }
    }
    let (backends, addrs, proxy, listen, admin) = (
        &mesh.backends,
        &mesh.addrs,
        mesh.proxy.clone(),
        mesh.listen,
        mesh.admin,
    );
    let controller = on.then(|| {
        support::Running::start(
            &mesh,
            &format!(
                "proxy_config: unused.yaml\ninterval: \"1s\"\nsignals: {{ source: embedded, window: \"3s\", latency_quantile: 0.9, embedded: {{ targets: [\"{admin}\"] }} }}\npolicy: {{ max_ejection_percent: 25, base_ejection_time: \"5s\", failure_percentage_threshold: 20, half_open_weight_percent: 10, slow_start_window: \"5s\", latency_half_life: \"1s\", max_step_percent: 80, min_weight_percent: 5 }}\nadmin: {{ address: \"127.0.0.1:0\" }}\n"
            ),
        )
    });

    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build_http();
    let uri: http::Uri = format!("http://{listen}/").parse().unwrap();
    let fault_from = Duration::from_secs(seconds / 4);
    let fault_to = fault_from + Duration::from_secs(20.min(seconds / 2));
    let start = Instant::now();
    let faulty_ep = addrs[BACKENDS - 1].clone();

    // Reaction timers: the proxy's view of the faulty endpoint, sampled every 10 ms.
    let watcher = {
        let proxy = proxy.clone();
        let ep = faulty_ep.clone();
        let case = case.to_owned();
        tokio::spawn(async move {
            let (mut reacted, mut restored) = (None, None);
            let (fault_at, recover_at) = (start + fault_from, start + fault_to);
            let limit = start + Duration::from_secs(seconds);
            while Instant::now() < limit {
                tokio::time::sleep(Duration::from_millis(10)).await;
                let now = Instant::now();
                let Some((weight, healthy)) = at_proxy(&proxy, &ep) else {
                    continue;
                };
                if now >= fault_at && reacted.is_none() {
                    let changed = if case == "failing_half" {
                        !healthy
                    } else {
                        weight <= 50
                    };
                    if changed {
                        reacted = Some(now.duration_since(fault_at).as_millis() as u64);
                    }
                }
                if now >= recover_at
                    && reacted.is_some()
                    && restored.is_none()
                    && healthy
                    && weight >= 90
                {
                    restored = Some(now.duration_since(recover_at).as_millis() as u64);
                }
            }
            (reacted, restored)
        })
    };

    let sent_fault = Arc::new(AtomicU64::new(0));
    let failed_fault = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::<(bool, f64)>::new()));
    let mut faulty = false;
    let mut served_marks = Vec::new();
    support::open_loop(RPS, start, seconds, |t| {
        let in_fault = t >= fault_from && t < fault_to;
        if in_fault != faulty {
            faulty = in_fault;
            let b = &backends[BACKENDS - 1];
            let all: u64 = backends.iter().map(DemoBackend::served).sum();
            served_marks.push((b.served(), all));
            match (case, faulty) {
                ("failing_half", true) => b.set_failure(0.5, 500),
                ("failing_half", false) => b.set_failure(0.0, 200),
                (_, true) => b.set_delay(Duration::from_millis(20)),
                (_, false) => b.set_delay(Duration::from_millis(2)),
            }
        }
        let (client, uri) = (client.clone(), uri.clone());
        let (sf, ff, lat) = (
            Arc::clone(&sent_fault),
            Arc::clone(&failed_fault),
            Arc::clone(&latencies),
        );
        async move {
            let began = Instant::now();
            let answered = support::get_within(&client, uri, CLIENT_TIMEOUT).await;
            let ok = answered.is_some_and(|s| s.is_success());
            if in_fault {
                sf.fetch_add(1, Ordering::Relaxed);
                if !ok {
                    ff.fetch_add(1, Ordering::Relaxed);
                }
            }
            if let Ok(mut l) = lat.lock() {
                l.push((in_fault, began.elapsed().as_secs_f64() * 1000.0));
            }
        }
    })
    .await;
    if let Some(c) = controller {
        c.stop().await;
    }
    let (reacted_ms, restored_ms) = watcher.await.unwrap_or((None, None));
    let faulty_share = match served_marks.as_slice() {
        [(b0, a0), (b1, a1), ..] => (b1 - b0) as f64 / (a1 - a0).max(1) as f64,
        _ => 0.0,
    };
    mesh.stop().await;
    let l = latencies.lock().unwrap().clone();
    let p99 = |filter: &dyn Fn(&(bool, f64)) -> bool| {
        let mut v: Vec<f64> = l.iter().filter(|x| filter(x)).map(|x| x.1).collect();
        v.sort_by(f64::total_cmp);
        support::quantile(&v, 0.99)
    };
    Outcome {
        sent_fault: sent_fault.load(Ordering::Relaxed),
        failed_fault: failed_fault.load(Ordering::Relaxed),
        p99_fault_ms: p99(&|x| x.0),
        p99_all_ms: p99(&|_| true),
        reacted_ms: if on { reacted_ms } else { None },
        restored_ms: if on { restored_ms } else { None },
        faulty_share,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seconds = support::seconds(&args, 60);
    let mut cases: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|a| ["failing_half", "slow_10x"].contains(a))
        .collect();
    if cases.is_empty() {
        cases = vec!["failing_half", "slow_10x"];
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "fault cases: {BACKENDS} backends, round robin, {RPS} req/s open loop, fault from {}s to {}s of {seconds}s",
        seconds / 4,
        seconds / 4 + 20.min(seconds / 2)
    );
    println!(
        "{:<13} {:<4} {:>12} {:>14} {:>12} {:>14} {:>12} {:>13} {:>13}",
        "case",
        "loop",
        "sent(fault)",
        "errors(fault)",
        "faulty share",
        "p99 fault ms",
        "p99 all ms",
        "reacted ms",
        "restored ms"
    );
    for case in cases {
        for on in [false, true] {
            let o = rt.block_on(run(case, on, seconds));
            println!(
                "{:<13} {:<4} {:>12} {:>13.3}% {:>11.1}% {:>14.1} {:>12.1} {:>13} {:>13}",
                case,
                if on { "on" } else { "off" },
                o.sent_fault,
                100.0 * o.failed_fault as f64 / o.sent_fault.max(1) as f64,
                100.0 * o.faulty_share,
                o.p99_fault_ms,
                o.p99_all_ms,
                o.reacted_ms.map_or("-".into(), |v| v.to_string()),
                o.restored_ms.map_or("-".into(), |v| v.to_string()),
            );
        }
    }
}
