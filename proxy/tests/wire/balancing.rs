//! Weighted round robin, weighted least-request, weighted clusters, draining.

use std::collections::HashMap;

use statrs::distribution::{ChiSquared, ContinuousCDF};

use crate::support::*;

fn config(lb: &str, weights: [u32; 3]) -> String {
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
                - match: {{ prefix: "/split" }}
                  route:
                    weighted_clusters:
                      clusters: [{{ name: web, weight: 3 }}, {{ name: canary, weight: 1 }}]
                - match: {{ prefix: "/" }}
                  route: {{ cluster: web }}
clusters:
  - name: web
    lb_policy: {lb}
    endpoints:
      - {{ address: "{{B0}}", weight: {} }}
      - {{ address: "{{B1}}", weight: {} }}
      - {{ address: "{{B2}}", weight: {} }}
  - name: canary
    endpoints: [{{ address: "{{B3}}" }}]
"#,
        weights[0], weights[1], weights[2]
    )
}

async fn tally(h: &Harness, path: &str, n: usize) -> (HashMap<String, usize>, Vec<String>) {
    let c = h1_client();
    let mut counts = HashMap::new();
    let mut order = Vec::with_capacity(n);
    for _ in 0..n {
        let r = get(&c, &h.url(path), "any", &[]).await;
        assert_eq!(r.status, 200);
        *counts.entry(r.backend().to_owned()).or_default() += 1;
        order.push(r.backend().to_owned());
    }
    (counts, order)
}

#[tokio::test]
async fn round_robin_is_exactly_weighted_and_smooth() {
    let (_b, vars) = backends(&["a", "b", "c", "canary"]).await;
    let h = Harness::start(&fill(&config("round_robin", [1, 2, 5]), &vars)).await;
    // Sequential requests walk the cycle: 25 full cycles of 8 give exact counts.
    let (counts, order) = tally(&h, "/", 200).await;
    assert_eq!(counts["a"], 25);
    assert_eq!(counts["b"], 50);
    assert_eq!(counts["c"], 125);
    // Smooth: weight 5 of 8 never gets more than 3 picks in a row (a bursty WRR gives 5).
    let longest = order
        .chunk_by(|x, y| x == y)
        .map(<[String]>::len)
        .max()
        .unwrap();
    assert!(longest <= 3, "burst of {longest}: {order:?}");
}

#[tokio::test]
async fn least_request_idle_cluster_follows_weights() {
    // With one request at a time every endpoint is idle when picked, so each pick is a draw in
    // proportion to weight: a chi-squared goodness-of-fit test against weights 1:2:5.
    // False-failure probability: 1e-6 (the p-value threshold).
    let (_b, vars) = backends(&["a", "b", "c", "canary"]).await;
    let h = Harness::start(&fill(&config("least_request", [1, 2, 5]), &vars)).await;
    let n = 1600;
    let (counts, _) = tally(&h, "/", n).await;
    let expected = [n as f64 / 8.0, n as f64 * 2.0 / 8.0, n as f64 * 5.0 / 8.0];
    let observed = [counts["a"], counts["b"], counts["c"]];
    let chi2: f64 = observed
        .iter()
        .zip(expected)
        .map(|(&o, e)| (o as f64 - e).powi(2) / e)
        .sum();
    let p_value = 1.0 - ChiSquared::new(2.0).unwrap().cdf(chi2);
    assert!(
        p_value > 1e-6,
        "counts {observed:?} vs expected {expected:?}: chi2 {chi2}, p {p_value}"
    );
}

#[tokio::test]
async fn least_request_steers_away_from_a_slow_endpoint() {
    // a answers in 200 ms, b at once. Under 16 concurrent clients a accumulates requests in
    // flight, so P2C sends it only the picks where both draws land on it (1 in 8 with two
    // endpoints and one redraw); round robin would send it exactly half. The threshold (a gets
    // under 30% of requests) is 6+ standard deviations from the expected 12.5% over 480
    // requests: a false failure has probability below 1e-9.
    let (backs, vars) = backends(&["a", "b", "c", "canary"]).await;
    backs[0].set_delay(std::time::Duration::from_millis(200));
    let h = std::sync::Arc::new(
        Harness::start(&fill(&config("least_request", [1, 1, 0]), &vars)).await,
    );
    let c = h1_client();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (c, url) = (c.clone(), h.url("/"));
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..30 {
                let r = get(&c, &url, "any", &[]).await;
                assert_eq!(r.status, 200);
                seen.push(r.backend().to_owned());
            }
            seen
        }));
    }
    let mut to_a = 0;
    let mut total = 0;
    for t in tasks {
        for b in t.await.unwrap() {
            total += 1;
            to_a += usize::from(b == "a");
        }
    }
    assert_eq!(total, 480);
    assert!(
        (to_a as f64) < 0.30 * total as f64,
        "slow endpoint got {to_a} of {total}"
    );
}

#[tokio::test]
async fn weighted_clusters_split_and_zero_weight_drains() {
    let (_b, vars) = backends(&["a", "b", "c", "canary"]).await;
    let h = Harness::start(&fill(&config("round_robin", [1, 0, 1]), &vars)).await;
    let (counts, _) = tally(&h, "/split", 400).await;
    assert_eq!(
        counts["canary"], 100,
        "3:1 split over 100 full cycles: {counts:?}"
    );
    assert_eq!(counts["a"] + counts["c"], 300);
    assert!(
        !counts.contains_key("b"),
        "weight 0 gets nothing: {counts:?}"
    );

    h.apply(&fill(&config("round_robin", [0, 0, 0]), &vars))
        .await;
    let c = h1_client();
    let r = get(&c, &h.url("/"), "any", &[]).await;
    assert_eq!(
        r.status, 503,
        "a fully drained cluster has no healthy upstream"
    );
}
