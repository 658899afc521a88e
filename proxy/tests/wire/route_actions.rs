//! Route matchers, rewrites, redirects, direct responses and header mutations, end to end:
//! what the backend gets and what the client gets back.

use crate::support::*;

const CONFIG: &str = r#"
listeners:
  - address: "127.0.0.1:0"
    filters:
      - type: router
        config:
          request_headers_to_add:
            - { key: x-order, value: config, append_action: OVERWRITE_IF_EXISTS_OR_ADD }
          virtual_hosts:
            - name: api
              domains: ["*"]
              response_headers_to_add:
                - { key: x-vhost, value: vh }
              request_headers_to_add:
                - { key: x-order, value: vhost, append_action: OVERWRITE_IF_EXISTS_OR_ADD }
              routes:
                - match: { safe_regex: "/api/v[0-9]+/.*" }
                  route:
                    cluster: web
                    regex_rewrite: { pattern: "^/api/(v[0-9]+)/", substitution: "/\\1/" }
                    host_rewrite_literal: backend.internal
                  request_headers_to_add:
                    - { key: x-client, value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT% %PROTOCOL% 100%%" }
                    - { key: x-copy, value: "%REQ(x-in)%" }
                    - { key: x-order, value: route, append_action: OVERWRITE_IF_EXISTS_OR_ADD }
                  request_headers_to_remove: [x-internal]
                  response_headers_to_add:
                    - { key: x-served-by, value: gofe }
                - match:
                    path_separated_prefix: /shop
                    query_parameters: [{ name: debug, present_match: true }]
                  route: { cluster: web, prefix_rewrite: /store }
                - match:
                    prefix: /h
                    headers:
                      - { name: x-tier, string_match: { exact: GOLD, ignore_case: true } }
                      - { name: x-n, range_match: { start: 1, end: 10 } }
                  route: { cluster: web, host_rewrite_header: x-target }
                - match: { prefix: /old }
                  redirect: { scheme_redirect: https, prefix_rewrite: /new, response_code: 308 }
                - match: { path: /healthz }
                  direct_response: { status: 200, body: "ok\n" }
clusters:
  - { name: web, endpoints: [{ address: "{WEB}" }] }
"#;

#[tokio::test]
async fn rewrites_mutations_redirects_and_direct_responses() {
    let web = Capture::start("web").await;
    let mut vars = std::collections::HashMap::new();
    vars.insert("{WEB}".to_owned(), web.addr.to_string());
    let h = Harness::start(&fill(CONFIG, &vars)).await;
    let c = h1_client();

    // A regex route: its path and host rewritten, its headers mutated in Envoy's order (the
    // route's first, the virtual host's and the configuration's after: the last overwrite
    // wins).
    let r = get(
        &c,
        &h.url("/api/v2/users?x=1"),
        "api.test",
        &[("x-internal", "secret"), ("x-in", "hello")],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.headers["x-served-by"], "gofe");
    assert_eq!(r.headers["x-vhost"], "vh");
    assert_eq!(web.targets(), ["/v2/users?x=1"]);
    assert_eq!(web.hosts(), [["backend.internal"]]);
    assert_eq!(web.header("x-client"), [["127.0.0.1 HTTP/1.1 100%"]]);
    assert_eq!(web.header("x-copy"), [["hello"]]);
    assert_eq!(web.header("x-order"), [["config"]]);
    assert!(web.header("x-internal")[0].is_empty(), "removed");

    // A path-separated prefix with a query condition, and its prefix rewrite.
    let r = get(&c, &h.url("/shop/cart?debug"), "api.test", &[]).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(web.targets()[1], "/store/cart?debug");
    for miss in ["/shopping?debug", "/shop/cart", "/shop/cart?nodebug=1"] {
        let r = get(&c, &h.url(miss), "api.test", &[]).await;
        assert_eq!(r.status, 404, "{miss}");
    }

    // Case-insensitive and range header matches; the host from a request header.
    let r = get(
        &c,
        &h.url("/h"),
        "api.test",
        &[
            ("x-tier", "gold"),
            ("x-n", "9"),
            ("x-target", "other.internal"),
        ],
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(web.hosts()[2], ["other.internal"]);
    let r = get(
        &c,
        &h.url("/h"),
        "api.test",
        &[("x-tier", "gold"), ("x-n", "10")],
    )
    .await;
    assert_eq!(r.status, 404, "the range excludes its end");

    // A redirect: no upstream request; the virtual host's response headers still apply.
    let r = get(&c, &h.url("/old/page?q=1"), "api.test:80", &[]).await;
    assert_eq!(r.status, 308);
    assert_eq!(r.headers["location"], "https://api.test/new/page?q=1");
    assert_eq!(r.headers["x-vhost"], "vh");
    // A direct response.
    let r = get(&c, &h.url("/healthz"), "api.test", &[]).await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok\n"));
    assert_eq!(r.headers["content-type"], "text/plain");
    assert_eq!(
        web.targets().len(),
        3,
        "redirects and direct responses stay local"
    );
    web.stop().await;
}
