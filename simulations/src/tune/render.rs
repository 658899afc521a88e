//! The recommended autoscaling section as scenario YAML, to paste back into the scenario (and,
//! for `behavior`, `minReplicas`, `maxReplicas` and the targets, into the HPA itself).

use std::fmt::Write as _;

use crate::hpa_script::{Quantity, RulesJson};
use crate::scenario::{Autoscaling, Forecast, SimMetric};

/// `a` as an `autoscaling:` block of a scenario file (two-space indent, flow maps per metric
/// and policy). KEDA options are not written: the tuner does not change them.
pub fn autoscaling_yaml(a: &Autoscaling) -> String {
    let mut o = String::from("autoscaling:\n");
    let _ = writeln!(o, "  minReplicas: {}", a.min_replicas);
    let _ = writeln!(o, "  maxReplicas: {}", a.max_replicas);
    let _ = writeln!(o, "  tolerance: {}", number(a.tolerance));
    o.push_str("  metrics:\n");
    for m in &a.metrics {
        match m {
            SimMetric::ExternalRps {
                average_value,
                value,
                forecast,
                queueing,
            } => {
                let target = match (average_value, value) {
                    (Some(q), _) => format!("average_value: {}", quantity(*q)),
                    (None, Some(q)) => format!("value: {}", quantity(*q)),
                    (None, None) => String::new(),
                };
                let forecast = forecast
                    .as_ref()
                    .map_or(String::new(), |f| format!(", {}", forecast_yaml(f)));
                let forecast = match queueing {
                    Some(q) => format!(
                        "{forecast}, queueing: {{ target: {} }}",
                        gofe_yaml::duration::format(q.target.0)
                    ),
                    None => forecast,
                };
                let _ = writeln!(o, "    - external_rps: {{ {target}{forecast} }}");
            }
            SimMetric::PodsRps { average_value } => {
                let _ = writeln!(
                    o,
                    "    - pods_rps: {{ average_value: {} }}",
                    quantity(*average_value)
                );
            }
            SimMetric::Cpu {
                average_utilization,
            } => {
                let _ = writeln!(
                    o,
                    "    - cpu: {{ average_utilization: {average_utilization} }}"
                );
            }
        }
    }
    if let Some(b) = &a.behavior {
        o.push_str("  behavior:\n");
        for (name, r) in [("scaleUp", &b.scale_up), ("scaleDown", &b.scale_down)] {
            if let Some(r) = r {
                let _ = writeln!(o, "    {name}: {{ {} }}", rules_yaml(r));
            }
        }
        if b.scale_up.is_none() && b.scale_down.is_none() {
            o.truncate(o.len() - 1);
            o.push_str(" {}\n");
        }
    }
    if a.keda.is_some() {
        o.push_str("  # keda: as in the scenario\n");
    }
    o
}

fn rules_yaml(r: &RulesJson) -> String {
    let mut parts = Vec::new();
    if let Some(w) = r.stabilization_window_seconds {
        parts.push(format!("stabilizationWindowSeconds: {w}"));
    }
    if let Some(s) = &r.select_policy {
        parts.push(format!("selectPolicy: {s}"));
    }
    if let Some(list) = &r.policies {
        let items: Vec<String> = list
            .iter()
            .map(|p| {
                format!(
                    "{{ type: {}, value: {}, periodSeconds: {} }}",
                    p.kind, p.value, p.period_seconds
                )
            })
            .collect();
        parts.push(format!("policies: [{}]", items.join(", ")));
    }
    if let Some(t) = r.tolerance {
        parts.push(format!("tolerance: {}", quantity(t)));
    }
    parts.join(", ")
}

/// A forecast as written: every field the section sets, in the adapter's names.
fn forecast_yaml(f: &Forecast) -> String {
    use gofe_core::forecast::{Fallback, Floor, MethodName};
    let d = |d: crate::scenario::Dur| gofe_yaml::duration::format(d.0);
    let mut parts = vec![format!("lead: {}", d(f.lead))];
    if f.method == MethodName::HoltWinters {
        parts.push("method: holt-winters".into());
    }
    for (name, value) in [("window", f.window), ("step", f.step), ("period", f.period)] {
        if let Some(v) = value {
            parts.push(format!("{name}: {}", d(v)));
        }
    }
    for (name, value) in [("alpha", f.alpha), ("beta", f.beta), ("gamma", f.gamma)] {
        if let Some(v) = value {
            parts.push(format!("{name}: {}", number(v)));
        }
    }
    match f.fallback {
        Some(Fallback::Holt) => parts.push("fallback: holt".into()),
        Some(Fallback::None) => parts.push("fallback: none".into()),
        None => {}
    }
    match f.floor {
        Some(Floor::Latest) => parts.push("floor: latest".into()),
        Some(Floor::None) => parts.push("floor: none".into()),
        None => {}
    }
    if let Some(spike) = &f.spike {
        let mut sp = Vec::new();
        if let Some(k) = spike.k {
            sp.push(format!("k: {}", number(k)));
        }
        if let Some(w) = spike.window {
            sp.push(format!("window: {}", d(w)));
        }
        parts.push(format!("spike: {{ {} }}", sp.join(", ")));
    }
    format!("forecast: {{ {} }}", parts.join(", "))
}

/// A quantity as a decimal Kubernetes reads back exactly (`"76.7"`; milli-units have at most
/// three decimals).
fn quantity(q: Quantity) -> String {
    let (whole, milli) = (q.0.div_euclid(1000), q.0.rem_euclid(1000));
    if milli == 0 {
        format!("\"{whole}\"")
    } else {
        let frac = format!("{milli:03}");
        format!("\"{whole}.{}\"", frac.trim_end_matches('0'))
    }
}

/// A number that reads back the same (shortest round-trip form).
fn number(v: f64) -> String {
    format!("{v}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::hpa_spec;

    #[test]
    fn the_section_reads_back_as_the_same_hpa() {
        let text = "minReplicas: 3\nmaxReplicas: 40\ntolerance: 0.0391\nmetrics:\n  - external_rps: { average_value: \"76.7\", forecast: { lead: 95s, alpha: 0.25, beta: 0.125 } }\n  - cpu: { average_utilization: 65 }\n  - pods_rps: { average_value: \"50\" }\nbehavior:\n  scaleUp: { stabilizationWindowSeconds: 30, policies: [{ type: Percent, value: 260, periodSeconds: 30 }, { type: Pods, value: 17, periodSeconds: 30 }] }\n  scaleDown: { selectPolicy: Min, tolerance: \"0.05\" }\n";
        let a: Autoscaling = gofe_yaml::from_str(text).unwrap();
        let yaml = autoscaling_yaml(&a);
        let body: String = yaml
            .lines()
            .skip(1)
            .map(|l| format!("{}\n", l.strip_prefix("  ").unwrap_or(l)))
            .collect();
        let back: Autoscaling =
            gofe_yaml::from_str(&body).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        assert_eq!(hpa_spec(&back), hpa_spec(&a), "{yaml}");
        assert_eq!(back.tolerance, a.tolerance);
        let forecast = |a: &Autoscaling| match &a.metrics[0] {
            SimMetric::ExternalRps { forecast, .. } => forecast.clone(),
            _ => None,
        };
        assert_eq!(forecast(&back), forecast(&a));
        assert!(forecast(&a).is_some());
        let empty: Autoscaling = gofe_yaml::from_str(
            "maxReplicas: 4\nmetrics: [ { cpu: { average_utilization: 50 } } ]\nbehavior: {}\n",
        )
        .unwrap();
        assert!(autoscaling_yaml(&empty).contains("  behavior: {}\n"));
        assert_eq!(quantity(Quantity(87_200)), "\"87.2\"");
        assert_eq!(quantity(Quantity(5)), "\"0.005\"");
        assert_eq!(quantity(Quantity(3000)), "\"3\"");
    }
}
