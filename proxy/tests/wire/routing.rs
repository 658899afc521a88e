//! Virtual hosts, routes, local replies, forwarding headers, metrics.

use crate::support::*;

const CONFIG: &str = r#"
listeners:
  - address: "127.0.0.1:0"
    filters:
      - type: router
        config:
          virtual_hosts:
            - name: api
              domains: ["api.example.com"]
              routes:
                - match: { path: "/exact" }
                  route: { cluster: two }
                - match:
                    prefix: "/v1"
                    headers: [{ name: x-canary, string_match: { exact: "true" } }]
                  route: { cluster: three }
                - match: { prefix: "/v1" }
                  route: { cluster: one }
            - name: wildcard
              domains: ["*.example.com"]
              routes: [{ match: { prefix: "/" }, route: { cluster: two } }]
            - name: prefixed
              domains: ["web.*"]
              routes: [{ match: { prefix: "/" }, route: { cluster: three } }]
clusters:
  - { name: one, endpoints: [{ address: "{B0}" }] }
  - { name: two, endpoints: [{ address: "{B1}" }] }
  - { name: three, endpoints: [{ address: "{B2}" }] }
  - { name: dead, endpoints: [{ address: "127.0.0.1:1" }] }
admin: { address: "127.0.0.1:0" }
"#;

#[tokio::test]
async fn routing_table_cases() {
    let (_b, vars) = backends(&["one", "two", "three"]).await;
    let h = Harness::start(&fill(CONFIG, &vars)).await;
    let c = h1_client();
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)], Option<&'a str>);
    let cases: &[Case] = &[
        ("api.example.com", "/v1/users", &[], Some("one")),
        ("API.EXAMPLE.com:8080", "/v1", &[], Some("one")),
        (
            "api.example.com",
            "/v1/x",
            &[("x-canary", "true")],
            Some("three"),
        ),
        (
            "api.example.com",
            "/v1/x",
            &[("x-canary", "false")],
            Some("one"),
        ),
        ("api.example.com", "/exact", &[], Some("two")),
        ("api.example.com", "/exact/more", &[], None),
        ("api.example.com", "/v2", &[], None),
        ("shop.example.com", "/anything", &[], Some("two")),
        ("web.internal", "/", &[], Some("three")),
        ("example.com", "/", &[], None),
        ("unknown.test", "/v1", &[], None),
    ];
    for (host, path, headers, want) in cases {
        let r = get(&c, &h.url(path), host, headers).await;
        match want {
            Some(backend) => {
                assert_eq!(r.status, 200, "{host}{path}: {r:?}");
                assert_eq!(r.backend(), *backend, "{host}{path}");
            }
            None => {
                assert_eq!(r.status, 404, "{host}{path} should find no route");
                assert_eq!(r.backend(), "", "a 404 is the proxy's own");
            }
        }
    }
}

#[tokio::test]
async fn forwarding_headers_as_envoy_sets_them() {
    let (_b, vars) = backends(&["one", "two", "three"]).await;
    let h = Harness::start(&fill(CONFIG, &vars)).await;
    let c = h1_client();
    let r = get(
        &c,
        &h.url("/v1/headers"),
        "api.example.com",
        &[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-proto", "https"),
            ("x-request-id", "keep-me"),
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "secret"),
        ],
    )
    .await;
    let seen = r.text();
    assert!(
        seen.contains("x-forwarded-for: 203.0.113.7, 127.0.0.1\n"),
        "{seen}"
    );
    assert!(
        seen.contains("x-forwarded-proto: http\n"),
        "spoofed proto replaced: {seen}"
    );
    assert!(
        seen.contains("x-request-id: keep-me\n"),
        "internal client keeps its id: {seen}"
    );
    assert!(
        !seen.contains("x-hop"),
        "headers named by Connection are dropped: {seen}"
    );
    assert!(seen.contains("host: api.example.com\n"), "{seen}");

    let r = get(&c, &h.url("/v1/headers"), "api.example.com", &[]).await;
    let id = r
        .text()
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: ").map(str::to_owned))
        .expect("a request id is generated");
    assert_eq!(id.len(), 36, "a UUID: {id}");
}

#[tokio::test]
async fn upstream_failures_get_gateway_statuses_and_metrics() {
    let (_b, vars) = backends(&["one", "two", "three"]).await;
    let cfg =
        fill(CONFIG, &vars).replace("route: { cluster: two } }]", "route: { cluster: dead } }]");
    let h = Harness::start(&cfg).await;
    let c = h1_client();
    let r = get(&c, &h.url("/"), "shop.example.com", &[]).await;
    assert_eq!(r.status, 503, "connection refused is a connect failure");

    let r = get(
        &c,
        &h.url("/v1"),
        "api.example.com",
        &[("x-demo-status", "500")],
    )
    .await;
    assert_eq!(r.status, 500, "an upstream 500 passes through");
    assert_eq!(r.backend(), "one");

    let metrics = reqwest_metrics(h.admin.unwrap()).await;
    let one = vars["{B0}"].as_str();
    assert_eq!(
        metric(
            &metrics,
            &format!(
                r#"gofe_upstream_requests_total{{cluster="one",code_class="5xx",endpoint="{one}"}}"#
            )
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            r#"gofe_upstream_connect_failures_total{cluster="dead",endpoint="127.0.0.1:1"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            &format!(
                r#"gofe_upstream_request_duration_seconds_count{{cluster="one",endpoint="{one}"}}"#
            )
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            r#"gofe_downstream_requests_total{code_class="5xx",listener="127.0.0.1:0"}"#
        ),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            &format!(r#"gofe_upstream_requests_active{{cluster="one",endpoint="{one}"}}"#)
        ),
        Some(0.0),
        "finished requests are no longer active"
    );
}

async fn reqwest_metrics(admin: std::net::SocketAddr) -> String {
    let c = h1_client();
    let r = get(&c, &format!("http://{admin}/metrics"), "admin", &[]).await;
    assert_eq!(r.status, 200);
    r.text()
}

#[tokio::test]
async fn admin_ready_and_config_dump() {
    let (_b, vars) = backends(&["one", "two", "three"]).await;
    let h = Harness::start(&fill(CONFIG, &vars)).await;
    let c = h1_client();
    let admin = h.admin.unwrap();
    let r = get(&c, &format!("http://{admin}/ready"), "admin", &[]).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "LIVE\n"));
    let r = get(&c, &format!("http://{admin}/config_dump"), "admin", &[]).await;
    let dump: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(dump["version"], 1);
    assert_eq!(dump["config"]["clusters"][0]["name"], "one");
    let r = get(&c, &format!("http://{admin}/nope"), "admin", &[]).await;
    assert_eq!(r.status, 404);
}
