//! Local rate limiting over real sockets: a burst of `max_tokens` requests goes through, the
//! rest get 429 with Envoy's `x-ratelimit-*` headers and the `RL` flag, never reaching the
//! backend. (The bucket's refill over time is a paused-clock unit test: `src/ratelimit.rs`.)

use std::time::{Duration, Instant};

use crate::support::*;

#[tokio::test]
async fn a_burst_past_max_tokens_is_answered_429_with_the_headers() {
    let path = std::env::temp_dir().join(format!("gofe-ratelimit-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let (b, vars) = backends(&["b0"]).await;
    let yaml = format!(
        r#"
admin: {{ address: "127.0.0.1:0" }}
listeners:
  - address: "127.0.0.1:0"
    access_log:
      - path: "{path}"
        format: "%REQ(:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS%\n"
    filters:
      - type: router
        config:
          virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
                - name: limited
                  match: {{ prefix: "/limited" }}
                  route: {{ cluster: web }}
                  local_ratelimit:
                    token_bucket: {{ max_tokens: 5, tokens_per_fill: 5, fill_interval: "1h" }}
                    filter_enabled: {{ numerator: 100 }}
                    filter_enforced: {{ numerator: 100 }}
                    enable_x_ratelimit_headers: DRAFT_VERSION_03
                - name: plain
                  match: {{ prefix: "/plain" }}
                  route: {{ cluster: web }}
clusters:
  - {{ name: web, endpoints: [{{ address: "{{B0}}" }}] }}
"#,
        path = path.display()
    );
    let h = Harness::start(&fill(&yaml, &vars)).await;
    let c = h1_client();
    for left in (0..5).rev() {
        let r = get(&c, &h.url("/limited"), "x", &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["x-ratelimit-limit"], "5");
        assert_eq!(
            r.headers["x-ratelimit-remaining"],
            left.to_string().as_str()
        );
        let reset: u64 = r.headers["x-ratelimit-reset"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=3600).contains(&reset), "{reset}");
    }
    for _ in 0..3 {
        let r = get(&c, &h.url("/limited"), "x", &[]).await;
        assert_eq!(r.status, 429);
        assert_eq!(r.text(), "local_rate_limited");
        assert_eq!(r.headers["x-ratelimit-limit"], "5");
        assert_eq!(r.headers["x-ratelimit-remaining"], "0");
        assert_eq!(r.backend(), "");
    }
    // Another route has no limit, and no headers.
    let r = get(&c, &h.url("/plain"), "x", &[]).await;
    assert_eq!(r.status, 200);
    assert!(r.headers.get("x-ratelimit-limit").is_none());
    assert_eq!(
        b[0].served(),
        6,
        "limited requests never reached the backend"
    );

    let admin = h.admin.unwrap();
    let m = get(&c, &format!("http://{admin}/metrics"), "admin", &[])
        .await
        .text();
    assert_eq!(
        metric(&m, r#"gofe_ratelimit_allowed_total{route="limited"}"#),
        Some(5.0)
    );
    assert_eq!(
        metric(&m, r#"gofe_ratelimit_limited_total{route="limited"}"#),
        Some(3.0)
    );
    assert_eq!(
        metric(&m, r#"gofe_ratelimit_enforced_total{route="limited"}"#),
        Some(3.0)
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    let lines = loop {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.lines().count() >= 9 {
            break text;
        }
        assert!(Instant::now() < deadline, "lines: {text:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let lines: Vec<&str> = lines.lines().collect();
    assert_eq!(lines.iter().filter(|l| **l == "/limited 200 -").count(), 5);
    assert_eq!(lines.iter().filter(|l| **l == "/limited 429 RL").count(), 3);
    h.proxy.shutdown(Duration::from_secs(1)).await;
    for b in b {
        b.stop().await;
    }
    let _ = std::fs::remove_file(&path);
}
