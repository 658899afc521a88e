//! `gofe controller explain [CLUSTER]`: a running controller's decisions as a table a person
//! reads — per endpoint its inputs, weight, state and why — and the xDS nodes with what they
//! have ACKed.

use serde_json::Value;

/// Renders `/decisions` for `cluster`, or the list of clusters when none is given. An unknown
/// cluster is an error that lists the known ones.
pub(crate) fn render(view: &Value, cluster: Option<&str>) -> Result<String, String> {
    let clusters: Vec<&str> = view["clusters"]
        .as_object()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let known = || {
        if clusters.is_empty() {
            "none yet (no decision made)".to_owned()
        } else {
            clusters.join(", ")
        }
    };
    let mut out = String::new();
    let Some(name) = cluster else {
        out.push_str(&format!("clusters: {}\n", known()));
        out.push_str(&nodes(view));
        out.push_str("explain one with: gofe controller explain CLUSTER\n");
        return Ok(out);
    };
    let Some(c) = view["clusters"].get(name) else {
        return Err(format!("no cluster {name:?} (known: {})", known()));
    };
    out.push_str(&format!(
        "cluster {name}: mode {} · {} · published version {}\n",
        c["mode"].as_str().unwrap_or("?"),
        view["role"].as_str().unwrap_or("?"),
        view["version"]
    ));
    if let Some(e) = view["signal_error"].as_str() {
        out.push_str(&format!("signals: unavailable ({e})\n"));
    }
    let mut rows = vec![[
        "endpoint", "weight", "healthy", "state", "req/s", "success", "latency", "signals",
        "reason",
    ]
    .map(str::to_owned)];
    for e in c["endpoints"].as_array().into_iter().flatten() {
        let i = &e["inputs"];
        let requests = i["requests"].as_f64().unwrap_or(0.0);
        let traffic = requests > 0.0;
        let num = |v: &Value, p: usize| v.as_f64().map_or("-".to_owned(), |x| format!("{x:.p$}"));
        rows.push([
            e["endpoint"].as_str().unwrap_or("?").to_owned(),
            e["weight"].to_string(),
            if e["healthy"].as_bool() == Some(true) {
                "yes".into()
            } else {
                "no".into()
            },
            e["state"].as_str().unwrap_or("?").to_owned(),
            num(&i["rps"], 1),
            if traffic {
                num(&i["success_rate"], 3)
            } else {
                "no traffic".into()
            },
            if traffic {
                i["latency_seconds"]
                    .as_f64()
                    .map_or("-".into(), |s| format!("{:.1}ms", s * 1000.0))
            } else {
                "-".into()
            },
            i["source"].as_str().unwrap_or("-").to_owned(),
            e["reason"].as_str().unwrap_or("").to_owned(),
        ]);
    }
    let widths: Vec<usize> = (0..9)
        .map(|col| {
            rows.iter()
                .map(|r| r[col].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in &rows {
        let mut line = String::new();
        for (col, cell) in row.iter().enumerate() {
            let pad = widths[col].saturating_sub(cell.chars().count());
            match col {
                8 => line.push_str(cell),
                // Numbers right-aligned, words left-aligned.
                1 | 4 | 5 | 6 => line.push_str(&format!("{}{cell}  ", " ".repeat(pad))),
                _ => line.push_str(&format!("{cell}{}  ", " ".repeat(pad))),
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.push_str(
        "weight: hundredths of the endpoint's base weight unit (100 = configured weight 1); \
         success and latency over the signal window; signals: where they came from (lrs: the \
         proxies' load reports, whose latency is a mean)\n",
    );
    out.push_str(&nodes(view));
    Ok(out)
}

/// The xDS nodes and what they ACKed.
fn nodes(view: &Value) -> String {
    let Some(proxies) = view["proxies"].as_array().filter(|p| !p.is_empty()) else {
        return "xds nodes: none connected\n".to_owned();
    };
    let mut out = String::from("xds nodes:\n");
    for p in proxies {
        let acked: Vec<String> = p["acked"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("?")))
                    .collect()
            })
            .unwrap_or_default();
        let caught_up = if p["caught_up"].as_bool() == Some(true) {
            "has the newest weights"
        } else {
            "behind the last publication"
        };
        let convergence = p["convergence_ms"]
            .as_u64()
            .map_or(String::new(), |ms| format!(", converged in {ms} ms"));
        out.push_str(&format!(
            "  {}: {caught_up}{convergence}; acked {}\n",
            p["node"].as_str().unwrap_or("?"),
            acked.join(" ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> Value {
        serde_json::json!({
            "role": "leader", "version": 7, "signal_error": null,
            "clusters": {"web": {"mode": "normal", "endpoints": [
                {"endpoint": "127.0.0.1:9101", "weight": 100, "healthy": true, "state": "serving",
                 "reason": "healthy", "inputs": {"requests": 50.0, "rps": 10.0, "success_rate": 1.0, "latency_seconds": 0.0042, "source": "lrs"}},
                {"endpoint": "127.0.0.1:9102", "weight": 0, "healthy": false, "state": "ejected",
                 "reason": "failure percentage 100% ≥ 30%", "inputs": {"requests": 0.0, "rps": 0.0, "success_rate": 1.0, "latency_seconds": 0.0}}
            ]}},
            "proxies": [{"node": "proxy-1", "acked": {"eds": "abc"}, "caught_up": true, "convergence_ms": 12}]
        })
    }

    #[test]
    fn a_cluster_is_a_table_with_units_no_traffic_and_nodes() {
        let text = render(&view(), Some("web")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "cluster web: mode normal · leader · published version 7"
        );
        // Columns line up: every row has its weight column ending at the same place.
        let header_at = lines[1].find("weight").unwrap() + "weight".len();
        assert_eq!(&lines[2][header_at - 3..header_at], "100");
        assert_eq!(&lines[3][header_at - 1..header_at], "0");
        assert!(lines[2].contains("4.2ms"), "{text}");
        assert!(
            lines[2].contains(" lrs ") && lines[1].contains(" signals "),
            "which source each endpoint's signals came from: {text}"
        );
        assert!(lines[3].contains("no traffic"), "{text}");
        assert!(
            !lines[3].contains("1.000"),
            "an endpoint with no requests shows no success rate"
        );
        assert!(
            lines[3].ends_with("failure percentage 100% ≥ 30%"),
            "{text}"
        );
        assert!(text.contains("weight: hundredths"), "{text}");
        assert!(text.contains("proxy-1: has the newest weights, converged in 12 ms; acked eds=abc"));
    }

    #[test]
    fn no_or_an_unknown_cluster_lists_the_clusters() {
        let text = render(&view(), None).unwrap();
        assert!(text.starts_with("clusters: web\n"), "{text}");
        let e = render(&view(), Some("api")).unwrap_err();
        assert_eq!(e, "no cluster \"api\" (known: web)");
        let empty = serde_json::json!({"clusters": {}});
        assert!(render(&empty, None).unwrap().contains("none yet"));
    }
}
