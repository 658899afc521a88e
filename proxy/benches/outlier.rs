//! One failing backend in four under steady load: the client-seen error rate with outlier
//! detection on and off, and how many requests failed before the ejection.
//!
//! Run: `cargo bench -p gofe-proxy --bench outlier -- [--seconds N]`. Four demo backends (one
//! answering every request with 500) behind a gofe proxy, and 32 closed-loop clients on
//! 127.0.0.1 for N seconds (default 10) per setting; everything runs in this process.

#![allow(missing_docs)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gofe_proxy::demo::DemoBackend;
use gofe_proxy::Proxy;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

async fn run(outlier: bool, seconds: u64) -> (u64, u64, u64) {
    let mut backends = Vec::new();
    for i in 0..4 {
        backends.push(
            DemoBackend::start("127.0.0.1:0".parse().unwrap(), &format!("b{i}"))
                .await
                .unwrap(),
        );
    }
    backends[3].set_failure(1.0, 500);
    let eps: Vec<String> = backends
        .iter()
        .map(|b| format!("      - {{ address: \"{}\" }}", b.addr()))
        .collect();
    let od = if outlier {
        "    outlier_detection: { consecutive_5xx: 5, base_ejection_time: \"30s\", max_ejection_percent: 50 }\n"
    } else {
        ""
    };
    let yaml = format!(
        "listeners:\n  - address: \"127.0.0.1:0\"\n    filters:\n      - type: router\n        config:\n          virtual_hosts:\n            - name: all\n              domains: [\"*\"]\n              routes: [{{ match: {{ prefix: \"/\" }}, route: {{ cluster: web }} }}]\nclusters:\n  - name: web\n{od}    endpoints:\n{}\n",
        eps.join("\n")
    );
    let proxy = Proxy::new();
    proxy
        .apply(
            gofe_proxy::config::parse("bench.yaml", &yaml).unwrap(),
            "bench.yaml",
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    let listen = proxy.listener_addrs().await[&"127.0.0.1:0".parse().unwrap()];
    let (total, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut clients = Vec::new();
    for _ in 0..32 {
        let (total, failed, stop) = (Arc::clone(&total), Arc::clone(&failed), Arc::clone(&stop));
        clients.push(tokio::spawn(async move {
            let c: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
            let uri: http::Uri = format!("http://{listen}/").parse().unwrap();
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                total.fetch_add(1, Ordering::Relaxed);
                match c.get(uri.clone()).await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.into_body().collect().await;
                    }
                    Ok(r) => {
                        let _ = r.into_body().collect().await;
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for c in clients {
        let _ = c.await;
    }
    stop.store(true, Ordering::Relaxed);
    let bad_served = backends[3].served();
    proxy.shutdown(Duration::from_secs(1)).await;
    for b in backends {
        b.stop().await;
    }
    (
        total.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        bad_served,
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let seconds = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(10u64);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!(
        "one failing backend (always 500) in four, 32 closed-loop clients, {seconds} s per setting"
    );
    println!(
        "{:<18} {:>9} {:>8} {:>11} {:>24}",
        "outlier detection", "requests", "failed", "error rate", "sent to the bad backend"
    );
    for outlier in [false, true] {
        let (total, failed, bad) = rt.block_on(run(outlier, seconds));
        println!(
            "{:<18} {:>9} {:>8} {:>10.4}% {:>24}",
            if outlier { "on" } else { "off" },
            total,
            failed,
            100.0 * failed as f64 / total.max(1) as f64,
            bad
        );
    }
}
