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

/// A listener whose route `/limited` allows `max_tokens` an hour; `extra` adds a route after it.
fn limited(max_tokens: u32, extra: &str) -> String {
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
                - match: {{ prefix: "/limited" }}
                  route: {{ cluster: web }}
                  local_ratelimit:
                    token_bucket: {{ max_tokens: {max_tokens}, fill_interval: "1h" }}
                    filter_enabled: {{ numerator: 100 }}
                    filter_enforced: {{ numerator: 100 }}
{extra}
clusters:
  - {{ name: web, endpoints: [{{ address: "{{B0}}" }}] }}
"#
    )
}

#[tokio::test]
async fn a_reload_that_leaves_the_bucket_alone_keeps_it_and_a_new_bucket_starts_full() {
    let (b, vars) = backends(&["b0"]).await;
    let h = Harness::start(&fill(&limited(2, ""), &vars)).await;
    let c = h1_client();
    let statuses = |n: usize| {
        let c = c.clone();
        let url = h.url("/limited");
        async move {
            let mut out = Vec::new();
            for _ in 0..n {
                out.push(get(&c, &url, "x", &[]).await.status.as_u16());
            }
            out
        }
    };
    assert_eq!(statuses(3).await, [200, 200, 429]);
    // Another route added after it: the bucket stays empty.
    let other = "                - match: { prefix: \"/other\" }\n                  route: { cluster: web }";
    h.apply(&fill(&limited(2, other), &vars)).await;
    assert_eq!(statuses(1).await, [429]);
    // The bucket changed: a new one, full.
    h.apply(&fill(&limited(3, other), &vars)).await;
    assert_eq!(statuses(4).await, [200, 200, 200, 429]);
    h.proxy.shutdown(Duration::from_secs(1)).await;
    for b in b {
        b.stop().await;
    }
}

#[tokio::test]
async fn a_virtual_host_s_limit_is_one_bucket_for_its_routes_without_their_own() {
    let (b, vars) = backends(&["b0"]).await;
    let yaml = r#"
listeners:
  - address: "127.0.0.1:0"
    filters:
      - type: router
        config:
          virtual_hosts:
            - name: all
              domains: ["*"]
              local_ratelimit:
                token_bucket: { max_tokens: 3, fill_interval: "1h" }
                filter_enabled: { numerator: 100 }
                filter_enforced: { numerator: 100 }
              routes:
                - match: { prefix: "/a" }
                  route: { cluster: web }
                - match: { prefix: "/b" }
                  route: { cluster: web }
                - match: { prefix: "/own" }
                  route: { cluster: web }
                  local_ratelimit:
                    token_bucket: { max_tokens: 1, fill_interval: "1h" }
                    filter_enabled: { numerator: 100 }
                    filter_enforced: { numerator: 100 }
                - match: { prefix: "/free" }
                  route: { cluster: web }
                  local_ratelimit:
                    token_bucket: { max_tokens: 1, fill_interval: "1h" }
clusters:
  - { name: web, endpoints: [{ address: "{B0}" }] }
"#;
    let h = Harness::start(&fill(yaml, &vars)).await;
    let c = h1_client();
    let mut statuses = Vec::new();
    for path in [
        "/a", "/b", "/a", "/b", "/a", "/own", "/own", "/free", "/free", "/free",
    ] {
        statuses.push((path, get(&c, &h.url(path), "x", &[]).await.status.as_u16()));
    }
    assert_eq!(
        statuses,
        [
            // /a and /b share the host's three tokens.
            ("/a", 200),
            ("/b", 200),
            ("/a", 200),
            ("/b", 429),
            ("/a", 429),
            // A route's own bucket is its own.
            ("/own", 200),
            ("/own", 429),
            // A limit that looks at nothing (filter_enabled 0) opts the route out.
            ("/free", 200),
            ("/free", 200),
            ("/free", 200),
        ]
    );
    // A reload that leaves the host's bucket alone keeps it (empty).
    h.apply(&fill(yaml, &vars)).await;
    assert_eq!(get(&c, &h.url("/b"), "x", &[]).await.status, 429);
    h.proxy.shutdown(Duration::from_secs(1)).await;
    for b in b {
        b.stop().await;
    }
}

#[tokio::test]
async fn a_cluster_s_limit_counts_every_attempt_to_it_whatever_the_route() {
    let (b, vars) = backends(&["b0", "b1"]).await;
    let yaml = r#"
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
                - match: { prefix: "/a" }
                  route: { cluster: web }
                - match: { prefix: "/b" }
                  route: { cluster: web }
                - match: { prefix: "/retry" }
                  route:
                    cluster: flaky
                    retry_policy: { retry_on: "5xx", num_retries: 1 }
clusters:
  - name: web
    endpoints: [{ address: "{B0}" }]
    local_ratelimit:
      token_bucket: { max_tokens: 3, fill_interval: "1h" }
      filter_enabled: { numerator: 100 }
      filter_enforced: { numerator: 100 }
  - name: flaky
    endpoints: [{ address: "{B1}" }]
    local_ratelimit:
      token_bucket: { max_tokens: 3, fill_interval: "1h" }
      filter_enabled: { numerator: 100 }
      filter_enforced: { numerator: 100 }
"#;
    let h = Harness::start(&fill(yaml, &vars)).await;
    let c = h1_client();
    let mut statuses = Vec::new();
    for path in ["/a", "/b", "/a", "/b"] {
        statuses.push(get(&c, &h.url(path), "x", &[]).await.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429], "one bucket for both routes");
    assert_eq!(b[0].served(), 3);
    // Each attempt takes a token: the first request's attempt and retry take two, the
    // second's attempt the last one and its retry is not sent; the third is answered 429.
    let fail = [("x-demo-status", "503")];
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(get(&c, &h.url("/retry"), "x", &fail).await.status.as_u16());
    }
    assert_eq!(statuses, [503, 503, 429]);
    assert_eq!(
        b[1].served(),
        3,
        "the refused retry never reached the endpoint"
    );
    let m = get(
        &c,
        &format!("http://{}/metrics", h.admin.unwrap()),
        "admin",
        &[],
    )
    .await
    .text();
    for (name, want) in [
        (
            r#"gofe_cluster_ratelimit_allowed_total{cluster="flaky"}"#,
            3.0,
        ),
        (
            r#"gofe_cluster_ratelimit_limited_total{cluster="flaky"}"#,
            2.0,
        ),
        (
            r#"gofe_cluster_ratelimit_enforced_total{cluster="flaky"}"#,
            2.0,
        ),
        (
            r#"gofe_cluster_ratelimit_allowed_total{cluster="web"}"#,
            3.0,
        ),
    ] {
        assert_eq!(metric(&m, name), Some(want), "{name}");
    }
    h.proxy.shutdown(Duration::from_secs(1)).await;
    for b in b {
        b.stop().await;
    }
}
