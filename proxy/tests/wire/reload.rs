//! Configuration swaps while traffic flows.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::support::*;

fn config(endpoints: &[&str], weights: &[u32]) -> String {
    let eps: Vec<String> = endpoints
        .iter()
        .zip(weights)
        .map(|(e, w)| format!("      - {{ address: \"{e}\", weight: {w} }}"))
        .collect();
    format!(
        r#"
listeners:
  - address: "127.0.0.1:0"
    filters:
      - type: router
        config:
          virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{{ match: {{ prefix: "/" }}, route: {{ cluster: web }} }}]
clusters:
  - name: web
    endpoints:
{}
"#,
        eps.join("\n")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_swaps_under_load_fail_no_request() {
    let (backs, vars) = backends(&["a", "b", "c"]).await;
    // Slow answers keep requests in flight across every swap.
    for b in &backs {
        b.set_delay(Duration::from_millis(5));
    }
    let (a, b, c) = (&vars["{B0}"], &vars["{B1}"], &vars["{B2}"]);
    let sets: Vec<String> = vec![
        config(&[a, b], &[1, 1]),
        config(&[b, c], &[3, 1]),
        config(&[c], &[1]),
        config(&[a, b, c], &[1, 0, 5]),
        config(&[a], &[2]),
    ];
    let h = Arc::new(Harness::start(&sets[0]).await);
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for i in 0..8 {
        let (h, stop, ok) = (Arc::clone(&h), Arc::clone(&stop), Arc::clone(&ok));
        let client = if i % 2 == 0 {
            h1_client()
        } else {
            h2c_client()
        };
        clients.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = get(&client, &h.url("/"), "any", &[]).await;
                if r.status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failures.push(r.status);
                }
            }
            failures
        }));
    }
    let mut last_version = 1;
    for round in 0..25 {
        // Let traffic flow between swaps: wait for some successes rather than a fixed time.
        let before = ok.load(Ordering::Relaxed);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while ok.load(Ordering::Relaxed) < before + 20 {
            assert!(tokio::time::Instant::now() < deadline, "traffic stalled");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        last_version = h.apply(&sets[(round + 1) % sets.len()]).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.await.unwrap());
    }
    assert_eq!(last_version, 26);
    assert!(
        failures.is_empty(),
        "failed requests during swaps: {failures:?}"
    );
    assert!(ok.load(Ordering::Relaxed) >= 500);
}

#[tokio::test]
async fn an_invalid_config_never_replaces_the_running_one() {
    let (_backs, vars) = backends(&["a"]).await;
    let h = Harness::start(&config(&[&vars["{B0}"]], &[1])).await;
    let bad = config(&[&vars["{B0}"]], &[1]).replace("cluster: web", "cluster: nope");
    let parsed = gofe_proxy::config::parse("bad.yaml", &bad);
    let err = parsed.expect_err("a route naming a missing cluster is refused");
    assert!(err.to_string().contains("bad.yaml:10:"), "{err}");

    // A config that validates but cannot be served (port taken) is refused whole, too.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut cfg = gofe_proxy::config::parse("ok.yaml", &config(&[&vars["{B0}"]], &[1])).unwrap();
    let mut second = cfg.listeners[0].clone();
    second.address = format!("127.0.0.1:{port}");
    cfg.listeners.push(second);
    let e = h
        .proxy
        .apply(cfg, "ok.yaml", Duration::from_secs(1))
        .await
        .expect_err("bind fails");
    assert!(e.to_string().contains("cannot bind"), "{e}");
    assert_eq!(h.proxy.active().version, 1, "still on the first config");
    let r = get(&h1_client(), &h.url("/"), "any", &[]).await;
    assert_eq!(r.status, 200);
}
