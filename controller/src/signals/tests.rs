//! The Prometheus source against a scripted Prometheus on 127.0.0.1, and its errors.

use std::error::Error as _;
use std::net::SocketAddr;

use axum::http::StatusCode;

use super::*;
use crate::config;

/// A Prometheus that answers each query (the form body `query=<name>`) from `answers`;
/// unknown queries get an empty vector.
async fn scripted(answers: Vec<(&'static str, StatusCode, &'static str)>) -> SocketAddr {
    let handler = move |body: String| {
        let answers = answers.clone();
        async move {
            let query = body
                .split('&')
                .find_map(|kv| kv.strip_prefix("query="))
                .unwrap_or_default()
                .to_owned();
            match answers.iter().find(|(q, _, _)| *q == query) {
                Some((_, status, body)) => (*status, body.to_string()),
                None => (
                    StatusCode::OK,
                    r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#.into(),
                ),
            }
        }
    };
    let app = axum::Router::new().route("/api/v1/query", axum::routing::post(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn vector(items: &str) -> String {
    format!(r#"{{"status":"success","data":{{"resultType":"vector","result":[{items}]}}}}"#)
}

fn item(cluster: &str, endpoint: &str, value: &str) -> String {
    format!(
        r#"{{"metric":{{"cluster":"{cluster}","endpoint":"{endpoint}"}},"value":[1,"{value}"]}}"#
    )
}

fn source(url: &str) -> Prometheus {
    let config = PrometheusConfig {
        url: url.to_owned(),
        requests: "q_requests".into(),
        rps: "q_rps".into(),
        success_rate: "q_success".into(),
        latency: "q_latency".into(),
        last_sample: "q_last".into(),
        timeout: Duration::from_secs(10),
        scrape_interval: Duration::from_secs(15),
    };
    Prometheus::new(&config, Duration::from_secs(30), 0.9).unwrap()
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

#[tokio::test]
async fn prometheus_answers_become_signals_per_endpoint() {
    let ok = StatusCode::OK;
    let requests = vector(
        &[
            item("web", "10.0.0.1:80", "10"),
            item("web", "10.0.0.2:80", "20"),
            item("web", "10.0.0.3:80", "30"),
            item("api", "10.0.1.1:80", "5"),
            r#"{"metric":{"cluster":"web"},"value":[1,"99"]}"#.to_owned(),
        ]
        .join(","),
    );
    let rps = vector(&item("web", "10.0.0.1:80", "0.5"));
    let success = vector(
        &[
            item("web", "10.0.0.1:80", "NaN"),
            item("web", "10.0.0.2:80", "0.75"),
        ]
        .join(","),
    );
    let latency = vector(
        &[
            item("web", "10.0.0.1:80", "+Inf"),
            item("web", "10.0.0.2:80", "0.2"),
        ]
        .join(","),
    );
    // 10.0.0.3 has no newest-sample time; 10.0.1.1's is the epoch (very old).
    let last = vector(
        &[
            item("web", "10.0.0.1:80", "1e12"),
            item("web", "10.0.0.2:80", "1e12"),
            item("api", "10.0.1.1:80", "0"),
        ]
        .join(","),
    );
    let addr = scripted(vec![
        ("q_requests", ok, leak(requests)),
        ("q_rps", ok, leak(rps)),
        ("q_success", ok, leak(success)),
        ("q_latency", ok, leak(latency)),
        ("q_last", ok, leak(last)),
    ])
    .await;
    let mut prom = source(&format!("http://{addr}"));
    let snapshot = prom.fetch(5_000).await.unwrap();

    let web = &snapshot["web"];
    assert_eq!(
        web.keys().collect::<Vec<_>>(),
        ["10.0.0.1:80", "10.0.0.2:80"],
        "series without an endpoint label or a newest-sample time are left out"
    );
    let one = &web["10.0.0.1:80"];
    assert_eq!((one.requests, one.rps), (10.0, 0.5));
    assert_eq!(
        one.success_rate, 1.0,
        "NaN (no requests) is no data, not failure"
    );
    assert_eq!(one.latency, 0.0, "a non-finite latency is no data");
    assert_eq!(one.sampled_at_ms, 5_000, "sampled now");
    let two = &web["10.0.0.2:80"];
    assert_eq!((two.requests, two.rps), (20.0, 0.0));
    assert_eq!((two.success_rate, two.latency), (0.75, 0.2));
    assert_eq!(snapshot["api"]["10.0.1.1:80"].sampled_at_ms, 0, "stale");
}

#[tokio::test]
async fn bad_promql_is_a_rejected_query_with_prometheus_reason() {
    let addr = scripted(vec![(
        "q_latency",
        StatusCode::BAD_REQUEST,
        r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#,
    )])
    .await;
    let e = source(&format!("http://{addr}"))
        .fetch(0)
        .await
        .unwrap_err();
    match &e {
        SignalError::Prometheus {
            name,
            query,
            source: gofe_prom::Error::Rejected { error_type, .. },
        } => {
            assert_eq!((name.as_str(), query.as_str()), ("latency", "q_latency"));
            assert_eq!(error_type, "bad_data");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        e.to_string(),
        "prometheus query \"latency\" failed: prometheus rejected the query (bad_data): parse error (query: q_latency)"
    );
    assert_eq!(e.metric_label(), "prometheus");
}

#[tokio::test]
async fn an_unreachable_prometheus_says_connection_refused() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let e = source(&format!("http://{addr}"))
        .fetch(0)
        .await
        .unwrap_err();
    assert!(
        matches!(
            &e,
            SignalError::Prometheus {
                source: gofe_prom::Error::Refused { .. },
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("connection refused"), "{e}");
    let cause = e.source().expect("the typed cause is kept");
    assert_eq!(
        cause
            .downcast_ref::<gofe_prom::Error>()
            .map(|c| c.metric_label()),
        Some("refused")
    );
}

#[test]
fn a_prometheus_url_without_a_scheme_fails_at_load() {
    let e = config::parse(
        "c.yaml",
        "proxy_config: p.yaml\nsignals:\n  source: prometheus\n  prometheus: { url: \"prometheus:9090\" }\n",
    )
    .unwrap_err();
    let problems = e.problems();
    assert_eq!(problems.len(), 1, "{e}");
    assert_eq!(problems[0].field, "signals.prometheus.url");
    assert!(problems[0].message.contains("no scheme"), "{e}");
    assert!(
        e.to_string()
            .starts_with("c.yaml:4:22: signals.prometheus.url: "),
        "{e}"
    );
    let ok = config::parse(
        "c.yaml",
        "proxy_config: p.yaml\nsignals:\n  prometheus: { url: \"http://prometheus:9090/prefix\" }\n",
    );
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn an_https_prometheus_without_a_ca_fails_when_the_source_is_built() {
    let config = SignalsConfig {
        source: SourceKind::Prometheus,
        prometheus: PrometheusConfig {
            url: "https://prometheus:9090".into(),
            ..PrometheusConfig::default()
        },
        ..SignalsConfig::default()
    };
    let e = Source::new(&config, Duration::from_secs(32))
        .err()
        .expect("refused");
    assert!(
        matches!(
            e,
            SignalError::PrometheusClient(gofe_prom::BuildError::MissingCa { .. })
        ),
        "{e:?}"
    );
}

fn load_report(endpoint: &str, ok: u64, err: u64) -> Vec<gofe_proto::load::ClusterLoad> {
    vec![gofe_proto::load::ClusterLoad {
        cluster: "web".into(),
        endpoints: vec![gofe_proto::load::EndpointLoad {
            address: endpoint.into(),
            successful: ok,
            errors: err,
            in_progress: 0,
            issued: ok + err,
            latency_count: ok + err,
            latency_ms_total: 20.0 * (ok + err) as f64,
        }],
        interval: Duration::from_secs(1),
    }]
}

#[tokio::test(start_paused = true)]
async fn fresh_load_reports_replace_the_configured_source_per_endpoint_and_stale_ones_do_not() {
    let store = gofe_xds::LoadStore::new(gofe_xds::LoadReportingOptions {
        window: Duration::from_secs(5),
        ..Default::default()
    });
    assert!(store.open(1, "proxy-1"));
    let start = tokio::time::Instant::now();
    for _ in 0..3 {
        store.record(
            1,
            tokio::time::Instant::now(),
            load_report("10.0.0.1:80", 2, 8),
            0,
        );
        store.record(
            1,
            tokio::time::Instant::now(),
            load_report("10.0.0.3:80", 10, 0),
            0,
        );
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    // 10.0.0.3 stops being reported: its newest report ages past three intervals.
    for _ in 0..3 {
        store.record(
            1,
            tokio::time::Instant::now(),
            load_report("10.0.0.1:80", 2, 8),
            0,
        );
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    let now_ms = 100_000;
    let now = tokio::time::Instant::now();
    assert_eq!(now - start, Duration::from_secs(6));
    let lrs = from_load_reports(&store, now, now_ms, Duration::from_secs(3));
    let bad = lrs["web"]["10.0.0.1:80"];
    // Reports at t = 1..=5 are in the 5 s window ending at t = 6.
    assert_eq!(bad.requests, 50.0);
    assert!((bad.success_rate - 0.2).abs() < 1e-9, "{bad:?}");
    assert!((bad.rps - 10.0).abs() < 1e-9, "{bad:?}");
    assert!(
        (bad.latency - 0.02).abs() < 1e-9,
        "the mean latency: {bad:?}"
    );
    assert_eq!(
        bad.sampled_at_ms,
        now_ms - 1000,
        "stamped with its newest report"
    );
    assert!(!lrs["web"].contains_key("10.0.0.3:80"), "4 s old: stale");

    let base_signals = |success_rate| Signals {
        requests: 100.0,
        rps: 3.0,
        success_rate,
        latency: 0.5,
        sampled_at_ms: now_ms - 15_000,
    };
    let base = Snapshot::from([(
        "web".to_owned(),
        BTreeMap::from([
            ("10.0.0.1:80".to_owned(), base_signals(1.0)),
            ("10.0.0.2:80".to_owned(), base_signals(0.99)),
            ("10.0.0.3:80".to_owned(), base_signals(0.98)),
        ]),
    )]);
    let (signals, origins) = combine(base, "prometheus", lrs);
    assert_eq!(
        signals["web"]["10.0.0.1:80"], bad,
        "the fault, from load reports"
    );
    assert_eq!(signals["web"]["10.0.0.2:80"].success_rate, 0.99);
    assert_eq!(signals["web"]["10.0.0.3:80"].success_rate, 0.98);
    let o: Vec<(&str, &str)> = origins["web"]
        .iter()
        .map(|(e, s)| (e.as_str(), *s))
        .collect();
    assert_eq!(
        o,
        [
            ("10.0.0.1:80", "lrs"),
            ("10.0.0.2:80", "prometheus"),
            ("10.0.0.3:80", "prometheus")
        ]
    );

    // The proxy's stream ends: nothing of it is used any more.
    store.close(1);
    assert!(from_load_reports(&store, now, now_ms, Duration::from_secs(3)).is_empty());
}
