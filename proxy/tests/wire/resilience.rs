//! Outlier ejection, half-open recovery, panic mode, circuit breakers and retries, against
//! real backends that fail on command.

use std::time::{Duration, Instant};

use gofe_proxy::demo::DemoBackend;

use tokio::io::AsyncWriteExt;

use crate::support::*;

fn config(cluster_extra: &str, route_extra: &str, statuses: [&str; 4]) -> String {
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
              routes:
                - match: {{ prefix: "/" }}
                  route: {{ cluster: web{route_extra} }}
clusters:
  - name: web
{cluster_extra}
    endpoints:
      - {{ address: "{{B0}}", health_status: {} }}
      - {{ address: "{{B1}}", health_status: {} }}
      - {{ address: "{{B2}}", health_status: {} }}
      - {{ address: "{{B3}}", health_status: {} }}
"#,
        statuses[0], statuses[1], statuses[2], statuses[3]
    )
}

const HEALTHY: [&str; 4] = ["healthy"; 4];

fn series(h: &Harness, name: &str) -> f64 {
    metric(&h.proxy.metrics_text(), name).unwrap_or(0.0)
}

async fn run(h: &Harness, n: usize) -> Vec<Reply> {
    let c = h1_client();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(get(&c, &h.url("/"), "any", &[]).await);
    }
    out
}

/// Polls until `check` holds (bounded), sending requests meanwhile.
async fn until(h: &Harness, what: &str, check: impl Fn(&Harness) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check(h) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        run(h, 1).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_after_the_configured_count() {
    let (b, vars) = backends(&["a", "b", "c", "bad"]).await;
    b[3].set_failure(1.0, 500);
    let od = "    outlier_detection: { consecutive_5xx: 3, base_ejection_time: \"60s\", max_ejection_percent: 50 }";
    let h = Harness::start(&fill(&config(od, "", HEALTHY), &vars)).await;
    let replies = run(&h, 40).await;
    let failed = replies.iter().filter(|r| r.status == 500).count();
    assert_eq!(
        failed, 3,
        "exactly consecutive_5xx failures reach the client"
    );
    assert_eq!(b[3].served(), 3, "then the endpoint gets nothing");
    run(&h, 100)
        .await
        .iter()
        .for_each(|r| assert_eq!(r.status, 200));
    assert_eq!(b[3].served(), 3, "still nothing while ejected");
    let bad = &vars["{B3}"];
    assert_eq!(
        series(
            &h,
            &format!(
                r#"gofe_outlier_ejections_total{{cluster="web",endpoint="{bad}",reason="consecutive_5xx"}}"#
            )
        ),
        1.0
    );
    assert_eq!(
        series(
            &h,
            &format!(r#"gofe_endpoint_breaker_state{{cluster="web",endpoint="{bad}"}}"#)
        ),
        1.0
    );
    assert_eq!(
        series(&h, r#"gofe_outlier_ejections_active{cluster="web"}"#),
        1.0
    );

    // A config change (here: new weights) keeps the ejection.
    let cfg = fill(&config(od, "", HEALTHY), &vars)
        .replace(&format!("\"{bad}\""), &format!("\"{bad}\", weight: 2"));
    h.apply(&cfg).await;
    run(&h, 20).await;
    assert_eq!(b[3].served(), 3, "a reload does not un-eject");
}

#[tokio::test]
async fn an_ejected_endpoint_comes_back_through_half_open() {
    let (b, vars) = backends(&["a", "b", "c", "bad"]).await;
    b[3].set_failure(1.0, 503);
    let od = "    outlier_detection: { consecutive_5xx: 2, base_ejection_time: \"300ms\", max_ejection_percent: 50 }";
    let h = Harness::start(&fill(&config(od, "", HEALTHY), &vars)).await;
    let bad = vars["{B3}"].clone();
    let state = format!(r#"gofe_endpoint_breaker_state{{cluster="web",endpoint="{bad}"}}"#);
    run(&h, 12).await;
    assert_eq!(series(&h, &state), 1.0, "ejected");

    // Still failing at the trial: ejected again, for longer.
    until(&h, "a failed trial", |h| {
        series(h, &format!(r#"gofe_outlier_ejections_total{{cluster="web",endpoint="{bad}",reason="failed_trial"}}"#)) >= 1.0
    })
    .await;
    assert_eq!(series(&h, &state), 1.0);

    // Healthy again: the next trial closes the breaker and traffic returns.
    b[3].set_failure(0.0, 200);
    until(&h, "the breaker to close", |h| series(h, &state) == 0.0).await;
    let before = b[3].served();
    let replies = run(&h, 40).await;
    assert!(replies.iter().all(|r| r.status == 200));
    assert_eq!(b[3].served() - before, 10, "a quarter of round robin again");
}

#[tokio::test]
async fn max_ejection_percent_holds_when_every_endpoint_fails() {
    let (b, vars) = backends(&["a", "b", "c", "d"]).await;
    for x in &b {
        x.set_failure(1.0, 500);
    }
    let od = "    outlier_detection: { consecutive_5xx: 1, base_ejection_time: \"60s\", max_ejection_percent: 50 }";
    let h = Harness::start(&fill(&config(od, "", HEALTHY), &vars)).await;
    let replies = run(&h, 60).await;
    assert!(
        replies.iter().all(|r| r.status == 500),
        "the failing answers pass through"
    );
    assert_eq!(
        series(&h, r#"gofe_outlier_ejections_active{cluster="web"}"#),
        2.0,
        "never more than half"
    );
    assert!(
        series(
            &h,
            r#"gofe_outlier_ejections_overflow_total{cluster="web"}"#
        ) > 0.0
    );
    let served: Vec<u64> = b.iter().map(DemoBackend::served).collect();
    assert_eq!(
        served.iter().filter(|&&s| s > 2).count(),
        2,
        "two endpoints keep serving: {served:?}"
    );
}

#[tokio::test]
async fn panic_mode_balances_over_all_endpoints() {
    let (b, vars) = backends(&["a", "b", "c", "d"]).await;
    // Three of four marked unhealthy by the control plane: 25% healthy is under the default
    // 50% panic threshold, so all four share the traffic.
    let statuses = ["healthy", "unhealthy", "unhealthy", "unhealthy"];
    let h = Harness::start(&fill(&config("", "", statuses), &vars)).await;
    let replies = run(&h, 40).await;
    assert!(replies.iter().all(|r| r.status == 200));
    assert!(
        b.iter().all(|x| x.served() > 0),
        "panic mode uses every endpoint"
    );
    assert!(series(&h, r#"gofe_upstream_panic_total{cluster="web"}"#) > 0.0);

    // With panic mode off, only the healthy endpoint serves.
    let h2 = Harness::start(&fill(
        &config("    healthy_panic_threshold: 0", "", statuses),
        &vars,
    ))
    .await;
    let before: Vec<u64> = b.iter().map(DemoBackend::served).collect();
    run(&h2, 20).await;
    let after: Vec<u64> = b.iter().map(DemoBackend::served).collect();
    assert_eq!(after[0] - before[0], 20);
    assert_eq!(after[1..], before[1..]);
}

#[tokio::test]
async fn circuit_breakers_overflow_with_503_under_concurrency() {
    let (b, vars) = backends(&["a", "b", "c", "d"]).await;
    for x in &b {
        x.set_delay(Duration::from_millis(1500));
    }
    let cb = "    circuit_breakers: { max_requests: 4 }";
    let h = std::sync::Arc::new(Harness::start(&fill(&config(cb, "", HEALTHY), &vars)).await);
    let c = h1_client();
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let (c, url) = (c.clone(), h.url("/"));
        tasks.push(tokio::spawn(async move { get(&c, &url, "any", &[]).await }));
    }
    let mut ok = 0;
    let mut overloaded = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status.as_u16() {
            200 => ok += 1,
            503 => {
                assert_eq!(r.headers.get("x-gofe-overloaded").unwrap(), "true");
                overloaded += 1;
            }
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!(ok + overloaded, 12);
    assert!(
        ok >= 4 && overloaded >= 1,
        "ok {ok}, overloaded {overloaded}"
    );
    assert_eq!(
        series(
            &h,
            r#"gofe_circuit_breaker_overflows_total{cluster="web",kind="requests"}"#
        ),
        overloaded as f64
    );
}

#[tokio::test]
async fn pending_requests_wait_for_a_connection_slot_and_overflow_past_the_limit() {
    let (b, vars) = backends(&["a", "b", "c", "d"]).await;
    for x in &b {
        x.set_delay(Duration::from_millis(300));
    }
    let cb = "    circuit_breakers: { max_connections: 1, max_pending_requests: 2 }";
    let h = std::sync::Arc::new(Harness::start(&fill(&config(cb, "", HEALTHY), &vars)).await);
    let c = h1_client();
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (c, url) = (c.clone(), h.url("/"));
        tasks.push(tokio::spawn(async move {
            get(&c, &url, "any", &[]).await.status.as_u16()
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    let ok = codes.iter().filter(|&&s| s == 200).count();
    let refused = codes.iter().filter(|&&s| s == 503).count();
    assert_eq!(ok + refused, 8, "{codes:?}");
    assert!(
        ok >= 3,
        "one in flight and two pending all complete: {codes:?}"
    );
    assert!(refused >= 1, "{codes:?}");
    assert_eq!(
        series(
            &h,
            r#"gofe_circuit_breaker_overflows_total{cluster="web",kind="pending"}"#
        ),
        refused as f64
    );
}

#[tokio::test]
async fn retries_recover_a_request_from_a_failed_host() {
    let (b, vars) = backends(&["a", "b", "c", "d"]).await;
    b[0].set_failure(1.0, 503);
    b[1].set_broken(gofe_proxy::demo::Broken::Reset);
    let retry = r#", retry_policy: { retry_on: "gateway-error", num_retries: 2 }"#;
    let h = Harness::start(&fill(&config("", retry, HEALTHY), &vars)).await;
    let replies = run(&h, 40).await;
    let codes: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    assert!(codes.iter().all(|&s| s == 200), "{codes:?}");
    let retries = series(&h, r#"gofe_upstream_retries_total{cluster="web"}"#);
    assert!(
        retries >= 20.0,
        "half the first attempts fail and are retried: {retries}"
    );
    assert!(replies
        .iter()
        .all(|r| r.backend() == "c" || r.backend() == "d"));
}

#[tokio::test]
async fn retries_respect_the_retry_limit() {
    let (b, vars) = backends(&["a", "b", "c", "d"]).await;
    for x in &b {
        x.set_failure(1.0, 503);
    }
    let retry = r#", retry_policy: { retry_on: "5xx", num_retries: 3 }"#;
    let cb = "    circuit_breakers: { max_retries: 0 }";
    let h = Harness::start(&fill(&config(cb, retry, HEALTHY), &vars)).await;
    let replies = run(&h, 10).await;
    assert!(replies.iter().all(|r| r.status == 503));
    let served: u64 = b.iter().map(DemoBackend::served).sum();
    assert_eq!(served, 10, "no retry went out");
    assert_eq!(
        series(
            &h,
            r#"gofe_circuit_breaker_overflows_total{cluster="web",kind="retries"}"#
        ),
        10.0
    );

    // With a budget, a lone request may retry (min_retry_concurrency) up to num_retries.
    let cb =
        "    circuit_breakers: { retry_budget: { budget_percent: 20, min_retry_concurrency: 1 } }";
    let h = Harness::start(&fill(&config(cb, retry, HEALTHY), &vars)).await;
    let before: u64 = b.iter().map(DemoBackend::served).sum();
    let r = run(&h, 1).await;
    assert_eq!(r[0].status, 503);
    let after: u64 = b.iter().map(DemoBackend::served).sum();
    assert_eq!(after - before, 4, "one attempt and three retries");
}

#[tokio::test]
async fn a_request_with_a_body_is_not_retried() {
    let (b, vars) = backends(&["a", "b", "c", "d"]).await;
    for x in &b {
        x.set_failure(1.0, 503);
    }
    let retry = r#", retry_policy: { retry_on: "5xx", num_retries: 3 }"#;
    let h = Harness::start(&fill(&config("", retry, HEALTHY), &vars)).await;
    let req = http::Request::post(h.url("/"))
        .header("host", "any")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"payload",
        )))
        .unwrap();
    let r = send(&h1_client(), req).await;
    assert_eq!(r.status, 503);
    assert_eq!(b.iter().map(DemoBackend::served).sum::<u64>(), 1);
}

/// A backend that answers one request per connection and then closes it without saying so
/// (no `Connection: close`), as a server whose keep-alive timeout fired would.
async fn one_shot_backend() -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n")
                    .await;
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_pooled_connection_the_backend_closed_is_not_used() {
    let (addr, backend) = one_shot_backend().await;
    let mut vars = std::collections::HashMap::new();
    vars.insert("{B0}".to_owned(), addr.to_string());
    let yaml = fill(
        &catch_all("web", "", r#"endpoints: [{ address: "{B0}" }]"#),
        &vars,
    );
    let h = Harness::start(&yaml).await;
    let c = h1_client();
    for i in 0..10 {
        let r = get(&c, &h.url("/"), "any", &[]).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        // Give the backend's close time to arrive, as it would between real requests.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    backend.abort();
}

#[tokio::test]
async fn a_route_timeout_answers_504_and_the_proxy_keeps_serving() {
    let (b, vars) = backends(&["a", "b", "c", "d"]).await;
    for x in &b {
        x.set_delay(Duration::from_secs(5));
    }
    let h = Harness::start(&fill(&config("", r#", timeout: "200ms""#, HEALTHY), &vars)).await;
    let c = h1_client();
    let r = get(&c, &h.url("/"), "any", &[]).await;
    assert_eq!(r.status.as_u16(), 504, "{}", r.text());
    // Fast again: the next request is served.
    for x in &b {
        x.set_delay(Duration::ZERO);
    }
    assert_eq!(get(&c, &h.url("/"), "any", &[]).await.status.as_u16(), 200);
}

#[tokio::test]
async fn route_timeouts_fire_again_on_a_reused_connection() {
    // The attempt timer is one per client connection and reused by its requests: it must fire
    // for every slow request and never for a fast one, however they alternate.
    let (b, vars) = backends(&["a", "b", "c", "d"]).await;
    let h = Harness::start(&fill(&config("", r#", timeout: "200ms""#, HEALTHY), &vars)).await;
    let mut s = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    for (round, slow) in [false, true, false, false, true, true, false]
        .into_iter()
        .enumerate()
    {
        for x in &b {
            x.set_delay(if slow {
                Duration::from_secs(5)
            } else {
                Duration::ZERO
            });
        }
        s.write_all(b"GET / HTTP/1.1\r\nHost: any\r\n\r\n")
            .await
            .unwrap();
        let status = read_status(&mut s).await;
        assert_eq!(
            status,
            if slow { 504 } else { 200 },
            "round {round} (slow: {slow})"
        );
    }
}

#[tokio::test]
async fn a_per_try_timeout_is_retried_on_another_host() {
    let (b, vars) = backends(&["a", "b", "c", "d"]).await;
    b[0].set_delay(Duration::from_secs(5));
    let retry = r#", timeout: "10s", retry_policy: { retry_on: "gateway-error", num_retries: 1, per_try_timeout: "150ms" }"#;
    let h = Harness::start(&fill(&config("", retry, HEALTHY), &vars)).await;
    let replies = run(&h, 8).await;
    let codes: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    assert!(codes.iter().all(|&s| s == 200), "{codes:?}");
    assert!(
        replies.iter().all(|r| r.backend() != "a"),
        "the slow host never answers in time"
    );
    assert!(series(&h, r#"gofe_upstream_retries_total{cluster="web"}"#) >= 1.0);
}
