//! Envoy's admin paths an operator reaches for, over the admin listener's real socket:
//! `/clusters`, `/server_info`, `/stats/prometheus`, `/healthcheck/fail` and `/healthcheck/ok`.

use bytes::Bytes;
use gofe_proxy::demo::Broken;
use http::Request;
use http_body_util::Full;

use crate::support::*;

const CONFIG: &str = r#"
admin: { address: "127.0.0.1:0" }
listeners:
  - address: "127.0.0.1:0"
    filters:
      - type: router
        config:
          virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
                - match: { prefix: "/bad" }
                  route: { cluster: bad }
                - match: { prefix: "/" }
                  route: { cluster: web }
clusters:
  - name: web
    circuit_breakers: { max_requests: 77 }
    endpoints:
      - { address: "{B0}", weight: 3 }
      - { address: "{B1}", weight: 2, health_status: unhealthy }
  - name: bad
    outlier_detection: { consecutive_5xx: 1, max_ejection_percent: 100, base_ejection_time: "300s" }
    healthy_panic_threshold: 0
    endpoints:
      - { address: "{B2}" }
"#;

async fn admin_get(h: &Harness, path: &str) -> Reply {
    let admin = h.admin.expect("an admin listener");
    get(&h1_client(), &format!("http://{admin}{path}"), "admin", &[]).await
}

async fn admin_post(h: &Harness, path: &str) -> Reply {
    let admin = h.admin.expect("an admin listener");
    let req = Request::post(format!("http://{admin}{path}"))
        .header("host", "admin")
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(&h1_client(), req).await
}

#[tokio::test]
async fn clusters_lists_limits_weights_health_breaker_state_and_requests() {
    let (b, vars) = backends(&["b0", "b1", "b2"]).await;
    b[2].set_broken(Broken::Reset);
    let h = Harness::start(&fill(CONFIG, &vars)).await;
    let c = h1_client();
    for _ in 0..3 {
        assert_eq!(get(&c, &h.url("/"), "any", &[]).await.status, 200);
    }
    // One reset ejects the only endpoint of `bad`.
    assert_eq!(get(&c, &h.url("/bad"), "any", &[]).await.status, 502);

    let r = admin_get(&h, "/clusters").await;
    assert_eq!(r.status, 200);
    let text = r.text();
    let (b0, b1, b2) = (b[0].addr(), b[1].addr(), b[2].addr());
    for line in [
        "web::default_priority::max_requests::77".to_owned(),
        "web::default_priority::max_connections::1024".to_owned(),
        format!("web::{b0}::weight::3"),
        format!("web::{b0}::health_flags::healthy"),
        format!("web::{b0}::rq_total::3"),
        format!("web::{b0}::rq_success::3"),
        format!("web::{b0}::rq_active::0"),
        format!("web::{b0}::outlier_state::closed"),
        format!("web::{b0}::effective_weight::3"),
        format!("web::{b1}::weight::2"),
        format!("web::{b1}::health_flags::/failed_eds_health"),
        format!("web::{b1}::effective_weight::0"),
        format!("bad::{b2}::health_flags::/failed_outlier_check"),
        format!("bad::{b2}::outlier_state::open"),
        format!("bad::{b2}::rq_error::1"),
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
    for b in b {
        b.stop().await;
    }
}

#[tokio::test]
async fn server_info_and_stats_prometheus() {
    let (b, vars) = backends(&["b0", "b1", "b2"]).await;
    let h = Harness::start(&fill(CONFIG, &vars)).await;
    let r = admin_get(&h, "/server_info").await;
    assert_eq!(r.status, 200);
    let info: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(info["state"], "LIVE");
    assert_eq!(info["config_version"], 1);
    assert!(
        info["version"].as_str().unwrap().starts_with("gofe/"),
        "{info}"
    );
    assert!(info["uptime_current_epoch"]
        .as_str()
        .unwrap()
        .ends_with('s'));

    let r = admin_get(&h, "/stats/prometheus").await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("gofe_config_version 1"), "{}", r.text());
    assert_eq!(
        r.headers["content-type"],
        admin_get(&h, "/metrics").await.headers["content-type"]
    );
    for b in b {
        b.stop().await;
    }
}

#[tokio::test]
async fn a_failed_health_check_drains_readiness_while_requests_are_served() {
    let (b, vars) = backends(&["b0", "b1", "b2"]).await;
    let h = Harness::start(&fill(CONFIG, &vars)).await;
    assert_eq!(admin_get(&h, "/ready").await.status, 200);

    // Envoy's mutating paths take POST only.
    assert_eq!(admin_get(&h, "/healthcheck/fail").await.status, 405);
    assert_eq!(admin_get(&h, "/ready").await.status, 200);

    assert_eq!(admin_post(&h, "/healthcheck/fail").await.status, 200);
    let r = admin_get(&h, "/ready").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (503, "DRAINING\n"));
    let info: serde_json::Value =
        serde_json::from_slice(&admin_get(&h, "/server_info").await.body).unwrap();
    assert_eq!(info["state"], "DRAINING");
    // The proxy goes on serving while load balancers take it out.
    assert_eq!(get(&h1_client(), &h.url("/"), "any", &[]).await.status, 200);

    assert_eq!(admin_post(&h, "/healthcheck/ok").await.status, 200);
    let r = admin_get(&h, "/ready").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "LIVE\n"));
    for b in b {
        b.stop().await;
    }
}

/// `/metrics` carries the process's own series (as Prometheus's client libraries name them)
/// and which gofe is serving.
#[tokio::test]
async fn metrics_show_the_process_and_the_build() {
    let (_b, vars) = backends(&["b0", "b1", "b2"]).await;
    let h = Harness::start(&fill(CONFIG, &vars)).await;
    let r = admin_get(&h, "/metrics").await;
    assert_eq!(r.status, 200);
    let text = r.text();
    for series in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_threads",
        "process_start_time_seconds",
    ] {
        let v = metric(&text, series).unwrap_or_else(|| panic!("{series} in:\n{text}"));
        assert!(v > 0.0, "{series} {v}");
    }
    assert!(metric(&text, "process_cpu_seconds_total").is_some_and(|v| v >= 0.0));
    let info = format!(
        "gofe_build_info{{component=\"proxy\",version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(metric(&text, &info), Some(1.0), "{text}");
}

/// `/logging` reads and sets the process's log filter through the installed control: Envoy's
/// `level=` (with its `warning` and `critical` names), or `filter=` directives; a level that
/// is none, an unknown parameter, nothing to set, or directives the control refuses get 400
/// and change nothing. (Across processes, with the real subscriber: `tests/e2e.rs`.)
#[tokio::test]
async fn logging_reads_and_sets_the_filter_through_the_control() {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(vec!["info".to_owned()]));
    let s = std::sync::Arc::clone(&seen);
    gofe_proxy::install_log_control(Box::new(move |wanted| {
        let mut seen = s.lock().unwrap();
        if let Some(w) = wanted {
            if w.contains("bad") {
                return Err(format!("filter {w:?}: invalid"));
            }
            seen.push(w.to_owned());
        }
        Ok(seen.last().unwrap().clone())
    }));
    let (_b, vars) = backends(&["b0", "b1", "b2"]).await;
    let h = Harness::start(&fill(CONFIG, &vars)).await;
    let r = admin_get(&h, "/logging").await;
    assert_eq!((r.status.as_u16(), r.text()), (200, "info\n".to_owned()));
    for (query, status, now) in [
        ("level=debug", 200, "debug"),
        ("level=warning", 200, "warn"),
        ("level=critical", 200, "error"),
        (
            "filter=gofe_proxy%3Ddebug%2Cinfo",
            200,
            "gofe_proxy=debug,info",
        ),
        ("level=loud", 400, "gofe_proxy=debug,info"),
        ("colour=red", 400, "gofe_proxy=debug,info"),
        ("", 400, "gofe_proxy=debug,info"),
        ("filter=bad", 400, "gofe_proxy=debug,info"),
    ] {
        let r = admin_post(&h, &format!("/logging?{query}")).await;
        assert_eq!(r.status.as_u16(), status, "{query}: {}", r.text());
        if status == 200 {
            assert_eq!(r.text(), format!("{now}\n"), "{query}");
        }
        let r = admin_get(&h, "/logging").await;
        assert_eq!(r.text(), format!("{now}\n"), "after {query}");
    }
    let req = Request::put(format!("http://{}/logging", h.admin.unwrap()))
        .header("host", "admin")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&h1_client(), req).await.status, 405);
}

/// `gofe_downstream_request_duration_seconds{listener,route}` times each routed request until
/// its response is sent: a request the backend holds for 200 ms is in no bucket below it.
#[tokio::test]
async fn requests_are_timed_per_listener_and_route() {
    let (_b, vars) = backends(&["b0", "b1", "b2"]).await;
    let h = Harness::start(&fill(CONFIG, &vars)).await;
    let c = h1_client();
    for _ in 0..3 {
        assert_eq!(get(&c, &h.url("/"), "any", &[]).await.status, 200);
    }
    let slow = get(&c, &h.url("/"), "any", &[("x-demo-delay", "200ms")]).await;
    assert_eq!(slow.status, 200);
    let text = h.proxy.metrics_text();
    let series = |suffix: &str, extra: &str| {
        format!(
            "gofe_downstream_request_duration_seconds_{suffix}{{listener=\"127.0.0.1:0\",route=\"all/1\"{extra}}}"
        )
    };
    assert_eq!(metric(&text, &series("count", "")), Some(4.0), "{text}");
    assert_eq!(
        metric(&text, &series("bucket", ",le=\"0.1\"")),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, &series("bucket", ",le=\"0.25\"")).map(|v| v >= 3.0),
        Some(true)
    );
    assert!(
        metric(&text, &series("sum", "")).is_some_and(|s| s >= 0.2),
        "{text}"
    );
    // The other route has its own series, with nothing in it.
    let other =
        "gofe_downstream_request_duration_seconds_count{listener=\"127.0.0.1:0\",route=\"all/0\"}";
    assert_eq!(metric(&text, other), Some(0.0), "{text}");
}
