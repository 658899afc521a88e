//! Endpoint health as the proxy sees it, over the admin listener's real socket: the configured
//! health (`source="config"` for a file) next to the proxy's own outlier detection, the
//! effective weight, and the same in `/config_dump`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
                - match: { prefix: "/" }
                  route: { cluster: web }
clusters:
  - name: web
    outlier_detection: { consecutive_5xx: 2, base_ejection_time: "60s", max_ejection_percent: 50 }
    endpoints:
      - { address: "{B0}", weight: 3 }
      - { address: "{B1}", weight: 2 }
      - { address: "{B2}", weight: 1, health_status: unhealthy }
"#;

/// GET `path` from the admin listener over a plain socket: status line's code and body.
async fn admin(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("the admin listener answers")
        .unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

#[tokio::test]
async fn configured_and_outlier_health_and_the_effective_weight_are_exported() {
    let (b, vars) = backends(&["a", "b", "c"]).await;
    b[1].set_failure(1.0, 500);
    let h = Harness::start(&fill(CONFIG, &vars)).await;
    let admin_addr = h.admin.expect("admin listener");
    let (a0, a1, a2) = (&vars["{B0}"], &vars["{B1}"], &vars["{B2}"]);

    // `b` fails until outlier detection ejects it.
    let client = h1_client();
    let start = Instant::now();
    loop {
        get(&client, &h.url("/"), "any", &[]).await;
        let text = h.proxy.metrics_text();
        if metric(
            &text,
            &format!(r#"gofe_endpoint_breaker_state{{cluster="web",endpoint="{a1}"}}"#),
        ) == Some(1.0)
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "never ejected: {text}"
        );
    }

    let (code, text) = admin(admin_addr, "/metrics").await;
    assert_eq!(code, 200);
    let health = |ep: &str, source: &str| {
        metric(
            &text,
            &format!(r#"gofe_endpoint_health{{cluster="web",endpoint="{ep}",source="{source}"}}"#),
        )
    };
    let effective = |ep: &str| {
        metric(
            &text,
            &format!(r#"gofe_endpoint_effective_weight{{cluster="web",endpoint="{ep}"}}"#),
        )
    };
    // a: healthy both ways, full weight.
    assert_eq!(health(a0, "config"), Some(1.0), "{text}");
    assert_eq!(health(a0, "outlier"), Some(1.0), "{text}");
    assert_eq!(effective(a0), Some(3.0), "{text}");
    // b: configured healthy, ejected by the proxy itself.
    assert_eq!(health(a1, "config"), Some(1.0), "{text}");
    assert_eq!(health(a1, "outlier"), Some(0.0), "{text}");
    assert_eq!(effective(a1), Some(0.0), "{text}");
    // c: configured unhealthy.
    assert_eq!(health(a2, "config"), Some(0.0), "{text}");
    assert_eq!(health(a2, "outlier"), Some(1.0), "{text}");
    assert_eq!(effective(a2), Some(0.0), "{text}");
    assert!(
        !text.contains(r#"source="controller"}"#),
        "a file's health is the configuration's: {text}"
    );

    let (code, body) = admin(admin_addr, "/config_dump").await;
    assert_eq!(code, 200);
    let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(dump["ready"], "LIVE");
    assert!(dump.get("xds").is_none(), "no xDS section without a client");
    let eps = dump["endpoints"].as_array().unwrap();
    let find = |addr: &str| eps.iter().find(|e| e["address"] == addr).unwrap().clone();
    let (ja, jb, jc) = (find(a0), find(a1), find(a2));
    assert_eq!(ja["effective_weight"], 3, "{ja}");
    assert_eq!(jb["health_status"], "healthy", "{jb}");
    assert_eq!(jb["health_source"], "config", "{jb}");
    assert_eq!(jb["outlier"]["enabled"], true, "{jb}");
    assert_eq!(jb["outlier"]["state"], "open", "{jb}");
    assert_eq!(jb["outlier"]["times_ejected"], 1, "{jb}");
    assert!(
        jb["outlier"]["ejected_for_ms"].as_u64().unwrap() > 0,
        "{jb}"
    );
    assert_eq!(jb["effective_weight"], 0, "{jb}");
    assert_eq!(jc["health_status"], "unhealthy", "{jc}");
    assert_eq!(jc["outlier"]["state"], "closed", "{jc}");
    assert_eq!(jc["effective_weight"], 0, "{jc}");
    // The configuration itself is still there, as before.
    assert_eq!(dump["config"]["clusters"][0]["name"], "web");

    // A reload that drops `b` drops its series too.
    let without_b =
        fill(CONFIG, &vars).replace(&format!("      - {{ address: \"{a1}\", weight: 2 }}\n"), "");
    h.apply(&without_b).await;
    let (_, text) = admin(admin_addr, "/metrics").await;
    for name in [
        "gofe_endpoint_health",
        "gofe_endpoint_effective_weight",
        "gofe_endpoint_weight",
    ] {
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with(&format!("{name}{{")) && l.contains(a1.as_str())),
            "{text}"
        );
    }

    h.proxy.shutdown(Duration::ZERO).await;
    for x in b {
        x.stop().await;
    }
}
