//! What a publication carries, endpoint by endpoint, and what changed between two of them: the
//! controller publishes only when something changed, and its log line says what.

use gofe_model::{EndpointConfig, HealthStatus, ProxyConfig};

/// One endpoint as published: its cluster, address, weight (hundredths of the base weight
/// unit) and health.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Published {
    /// The cluster.
    pub cluster: String,
    /// The endpoint's address.
    pub endpoint: String,
    /// The published weight.
    pub weight: u32,
    /// The published health.
    pub healthy: bool,
}

/// Gives `ep` of `cluster` its decided weight and health, and records them in `out`.
pub(crate) fn set_endpoint(
    cluster: &str,
    ep: &mut EndpointConfig,
    weight: u32,
    healthy: bool,
    out: &mut Vec<Published>,
) {
    ep.weight = weight;
    ep.health_status = if healthy {
        HealthStatus::Healthy
    } else {
        HealthStatus::Unhealthy
    };
    out.push(Published {
        cluster: cluster.to_owned(),
        endpoint: ep.address.clone(),
        weight,
        healthy,
    });
}

/// `base` with the decided `(weight, healthy)` of each endpoint, in the base's order (a
/// cluster `decided` does not name keeps its base), and what it publishes per endpoint.
pub(crate) fn weighted(
    base: &ProxyConfig,
    decided: impl Fn(&str, usize) -> Option<(u32, bool)>,
) -> (ProxyConfig, Vec<Published>) {
    let mut config = base.clone();
    let mut published = Vec::new();
    for cluster in &mut config.clusters {
        for (i, ep) in cluster.endpoints.iter_mut().enumerate() {
            if let Some((weight, healthy)) = decided(&cluster.name, i) {
                set_endpoint(&cluster.name, ep, weight, healthy, &mut published);
            }
        }
    }
    (config, published)
}

/// What changed from `before` (nothing published yet: `None`) to `after`, one phrase per
/// endpoint: `web/10.0.0.1:80 weight 100 → 50`, `… healthy → ejected`, `… added`, `… removed`.
pub fn changes(before: Option<&[Published]>, after: &[Published]) -> Vec<String> {
    let Some(before) = before else {
        return vec![format!("first publication ({} endpoints)", after.len())];
    };
    let key = |p: &Published| (p.cluster.clone(), p.endpoint.clone());
    let old: std::collections::BTreeMap<_, _> = before.iter().map(|p| (key(p), p)).collect();
    let new: std::collections::BTreeMap<_, _> = after.iter().map(|p| (key(p), p)).collect();
    let health = |h: bool| if h { "healthy" } else { "ejected" };
    let mut out = Vec::new();
    for ((cluster, endpoint), n) in &new {
        match old.get(&(cluster.clone(), endpoint.clone())) {
            None => out.push(format!("{cluster}/{endpoint} added at weight {}", n.weight)),
            Some(o) => {
                let mut parts = Vec::new();
                if o.weight != n.weight {
                    parts.push(format!("weight {} → {}", o.weight, n.weight));
                }
                if o.healthy != n.healthy {
                    parts.push(format!("{} → {}", health(o.healthy), health(n.healthy)));
                }
                if !parts.is_empty() {
                    out.push(format!("{cluster}/{endpoint} {}", parts.join(", ")));
                }
            }
        }
    }
    for (cluster, endpoint) in old.keys() {
        if !new.contains_key(&(cluster.clone(), endpoint.clone())) {
            out.push(format!("{cluster}/{endpoint} removed"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(endpoint: &str, weight: u32, healthy: bool) -> Published {
        Published {
            cluster: "web".into(),
            endpoint: endpoint.into(),
            weight,
            healthy,
        }
    }

    #[test]
    fn changes_name_each_endpoint_and_what_moved() {
        let before = [p("a", 100, true), p("b", 100, true), p("c", 100, true)];
        let after = [
            p("a", 50, true),
            p("b", 0, false),
            p("d", 100, true),
            p("c", 100, true),
        ];
        assert_eq!(
            changes(Some(&before), &after),
            vec![
                "web/a weight 100 → 50",
                "web/b weight 100 → 0, healthy → ejected",
                "web/d added at weight 100",
            ]
        );
        assert_eq!(
            changes(Some(&after[..2]), &after[..1]),
            vec!["web/b removed"]
        );
        assert!(changes(Some(&before), &before).is_empty());
        assert_eq!(
            changes(None, &before),
            vec!["first publication (3 endpoints)"]
        );
    }

    #[test]
    fn weighted_sets_only_what_was_decided() {
        let base = gofe_model::parse(
            "p.yaml",
            "clusters:\n  - name: web\n    endpoints: [{ address: \"10.0.0.1:80\" }, { address: \"10.0.0.2:80\", weight: 3 }]\n  - name: other\n    endpoints: [{ address: \"10.0.0.3:80\" }]\n",
        )
        .unwrap();
        let (config, published) = weighted(&base, |cluster, i| {
            (cluster == "web").then_some(if i == 0 { (0, false) } else { (250, true) })
        });
        assert_eq!(published.len(), 2);
        let web = &config.clusters[0].endpoints;
        assert_eq!(
            (web[0].weight, web[0].health_status),
            (0, HealthStatus::Unhealthy)
        );
        assert_eq!(
            (web[1].weight, web[1].health_status),
            (250, HealthStatus::Healthy)
        );
        assert_eq!(config.clusters[1].endpoints[0].weight, 1, "untouched");
    }
}
