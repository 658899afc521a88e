//! From what the API server holds to what the controller steers: a pure function of the
//! `TrafficPolicy` objects, the `EndpointSlice`s and the controller file's proxy configuration.
//!
//! Each policy names a Service; its cluster's endpoints become the ready endpoints of that
//! Service's slices on the chosen port. A cluster the file already declares keeps its settings
//! (timeouts, breakers, lb policy) and gets the discovered endpoints; other clusters are added
//! with the proxy's defaults so Envoy-protocol clients can use them. Every policy gets a verdict
//! (`Ready` or why not) for its `.status`.
//!
//! With several clusters ([`build_clusters`]), a Service's endpoints are those of the Service
//! of the same namespace and name in every cluster (Istio's namespace sameness), the local
//! cluster first. Each endpoint gets its locality: `zone` from the EndpointSlice endpoint (or
//! its Node's `topology.kubernetes.io/zone`), `region` from its Node's
//! `topology.kubernetes.io/region`, `sub_zone` from the Node's `topology.istio.io/subzone`.
//! An endpoint is known by its address alone (the controller's decisions — weights,
//! ejections — are per address, whatever the cluster): gofe assumes one flat network, where
//! two clusters never give the same Pod IP; if they do, the first cluster's endpoint is kept
//! and the other is reported in [`Binding::duplicates`].

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;

use gofe_model::{ClusterConfig, EndpointConfig, LocalityConfig, ProxyConfig};

use super::crd::{PortSelector, TrafficPolicy};
use crate::config::PolicyConfig;

/// The label EndpointSlices carry to name their Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// A Node's region label.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
/// A Node's zone label.
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// A Node's sub-zone label (Istio's).
pub const SUBZONE_LABEL: &str = "topology.istio.io/subzone";

/// One cluster's discovered objects.
#[derive(Clone, Copy, Debug)]
pub struct ClusterObjects<'a> {
    /// The cluster's name (`kubernetes.cluster_name`, or a remote's).
    pub name: &'a str,
    /// Whether it is the controller's own cluster (its Pods are shown without a prefix).
    pub local: bool,
    /// Its EndpointSlices.
    pub slices: &'a [EndpointSlice],
    /// Its Nodes (for regions, and zones a slice's endpoint lacks); may be empty.
    pub nodes: &'a [Node],
}

/// What one `TrafficPolicy` resolved to.
#[derive(Clone, Debug, PartialEq)]
pub struct Binding {
    /// The policy's namespace.
    pub namespace: String,
    /// The policy's name.
    pub name: String,
    /// The policy's `metadata.generation`.
    pub generation: Option<i64>,
    /// The Service it steers.
    pub service: String,
    /// The cluster name, when the policy applies.
    pub cluster: Option<String>,
    /// Why it does not apply (`reason`, `message`), for the `Ready` condition.
    pub problem: Option<(String, String)>,
    /// Endpoint address → Pod name, for `.status` (`CLUSTER/POD` for a remote cluster's).
    pub pods: BTreeMap<String, String>,
    /// Endpoint address → the cluster it was discovered in.
    pub clusters: BTreeMap<String, String>,
    /// Endpoints left out because an earlier cluster gave the same address: (address, the
    /// cluster whose endpoint was left out).
    pub duplicates: Vec<(String, String)>,
}

/// The controller's view of the cluster for one step.
#[derive(Clone, Debug)]
pub struct Topology {
    /// The proxy configuration with discovered endpoints.
    pub config: ProxyConfig,
    /// Per cluster, the policy a `TrafficPolicy` sets.
    pub overrides: BTreeMap<String, PolicyConfig>,
    /// Every policy's resolution, ordered by (namespace, name).
    pub bindings: Vec<Binding>,
}

/// Parses `spec.host`: a Service name, or its DNS name in the policy's namespace.
fn service_of(host: &str, namespace: &str) -> Result<String, String> {
    let mut parts = host.split('.');
    let name = parts.next().unwrap_or_default();
    if name.is_empty() {
        return Err("spec.host is empty".into());
    }
    if let Some(ns) = parts.next() {
        if ns != namespace {
            return Err(format!(
                "spec.host {host:?} names namespace {ns:?}, but a TrafficPolicy steers Services of its own namespace ({namespace:?})"
            ));
        }
        let rest: Vec<&str> = parts.collect();
        if !(rest.is_empty() || rest[0] == "svc") {
            return Err(format!(
                "spec.host {host:?} is not NAME, NAME.NAMESPACE or NAME.NAMESPACE.svc[.DOMAIN]"
            ));
        }
    }
    Ok(name.to_owned())
}

/// `ip:port`, bracketing IPv6.
fn socket_address(ip: &str, port: i32) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// The slice's port for the policy, or why there is none.
fn pick_port(slice: &EndpointSlice, wanted: Option<&PortSelector>) -> Result<Option<i32>, String> {
    let ports = slice.ports.as_deref().unwrap_or_default();
    let found = match wanted {
        Some(PortSelector::Number(n)) => ports.iter().find(|p| p.port == Some(i32::from(*n))),
        Some(PortSelector::Name(name)) => ports
            .iter()
            .find(|p| p.name.as_deref().unwrap_or_default() == name),
        None if ports.len() > 1 => {
            return Err(format!(
                "the Service has {} ports; set spec.port to one of {}",
                ports.len(),
                ports
                    .iter()
                    .map(|p| p
                        .name
                        .clone()
                        .unwrap_or_else(|| p.port.map_or_else(String::new, |n| n.to_string())))
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
        None => ports.first(),
    };
    Ok(found.and_then(|p| p.port))
}

/// A cluster with the proxy's defaults.
fn default_cluster(name: &str) -> Option<ClusterConfig> {
    let yaml = format!("name: {}\n", serde_json::Value::String(name.to_owned()));
    gofe_yaml::from_str(&yaml).ok()
}

/// The locality of an endpoint on `node` with the slice's `zone`, if anything is known.
fn locality_of(zone: Option<&str>, node: Option<&Node>) -> Option<LocalityConfig> {
    let label = |key: &str| {
        node.and_then(|n| n.labels().get(key).cloned())
            .unwrap_or_default()
    };
    let locality = LocalityConfig {
        region: label(REGION_LABEL),
        zone: zone
            .filter(|z| !z.is_empty())
            .map(str::to_owned)
            .unwrap_or_else(|| label(ZONE_LABEL)),
        sub_zone: label(SUBZONE_LABEL),
    };
    (!locality.is_empty()).then_some(locality)
}

/// Resolves `policies` against `slices` over the file's `base` configuration (one cluster).
pub fn build(base: &ProxyConfig, policies: &[TrafficPolicy], slices: &[EndpointSlice]) -> Topology {
    build_clusters(
        base,
        policies,
        &[ClusterObjects {
            name: "local",
            local: true,
            slices,
            nodes: &[],
        }],
    )
}

/// Resolves `policies` against the objects of every cluster (the local one first) over the
/// file's `base` configuration.
pub fn build_clusters(
    base: &ProxyConfig,
    policies: &[TrafficPolicy],
    clusters: &[ClusterObjects<'_>],
) -> Topology {
    let mut ordered: Vec<&TrafficPolicy> = policies.iter().collect();
    ordered.sort_by(|a, b| {
        (a.creation_timestamp(), a.namespace(), a.name_any()).cmp(&(
            b.creation_timestamp(),
            b.namespace(),
            b.name_any(),
        ))
    });
    let mut config = base.clone();
    let mut overrides = BTreeMap::new();
    let mut bindings = Vec::new();
    let mut claimed: BTreeMap<String, String> = BTreeMap::new();
    for policy in ordered {
        let namespace = policy.namespace().unwrap_or_default();
        let name = policy.name_any();
        let mut binding = Binding {
            namespace: namespace.clone(),
            name: name.clone(),
            generation: policy.metadata.generation,
            service: String::new(),
            cluster: None,
            problem: None,
            pods: BTreeMap::new(),
            clusters: BTreeMap::new(),
            duplicates: Vec::new(),
        };
        let service = match service_of(&policy.spec.host, &namespace) {
            Ok(s) => s,
            Err(message) => {
                binding.problem = Some(("InvalidHost".into(), message));
                bindings.push(binding);
                continue;
            }
        };
        binding.service = service.clone();
        let cluster_name = policy
            .spec
            .cluster
            .clone()
            .unwrap_or_else(|| service.clone());
        if let Some(owner) = claimed.get(&cluster_name) {
            binding.problem = Some((
                "ClusterConflict".into(),
                format!("cluster {cluster_name:?} is already steered by TrafficPolicy {owner}; set spec.cluster to a unique name"),
            ));
            bindings.push(binding);
            continue;
        }
        let policy_config = match policy.spec.policy() {
            Ok(p) => p,
            Err(e) => {
                binding.problem = Some(("InvalidSpec".into(), e.to_string()));
                bindings.push(binding);
                continue;
            }
        };

        // The ready endpoints of the Service's slices in every cluster, deduplicated, in
        // address order, each with its locality.
        let mut found: BTreeMap<String, Option<LocalityConfig>> = BTreeMap::new();
        let mut port_problem = None;
        'clusters: for objects in clusters {
            let mut mine: BTreeSet<String> = BTreeSet::new();
            for slice in objects.slices.iter().filter(|s| {
                s.namespace().as_deref() == Some(namespace.as_str())
                    && s.labels().get(SERVICE_NAME_LABEL) == Some(&service)
                    && (s.address_type == "IPv4" || s.address_type == "IPv6")
            }) {
                let port = match pick_port(slice, policy.spec.port.as_ref()) {
                    Ok(Some(p)) => p,
                    Ok(None) => continue,
                    Err(message) => {
                        port_problem = Some(message);
                        break 'clusters;
                    }
                };
                for ep in &slice.endpoints {
                    let conditions = ep.conditions.as_ref();
                    // Kubernetes: an unknown readiness is to be read as ready; terminating
                    // endpoints are not ready.
                    let ready = conditions.and_then(|c| c.ready).unwrap_or(true)
                        && !conditions.and_then(|c| c.terminating).unwrap_or(false);
                    let Some(ip) = ep.addresses.first() else {
                        continue;
                    };
                    if !ready {
                        continue;
                    }
                    let address = socket_address(ip, port);
                    if found.contains_key(&address) && !mine.contains(&address) {
                        binding
                            .duplicates
                            .push((address.clone(), objects.name.to_owned()));
                        continue;
                    }
                    mine.insert(address.clone());
                    if let Some(pod) = ep
                        .target_ref
                        .as_ref()
                        .filter(|r| r.kind.as_deref() == Some("Pod"))
                        .and_then(|r| r.name.clone())
                    {
                        let shown = if objects.local {
                            pod
                        } else {
                            format!("{}/{pod}", objects.name)
                        };
                        binding.pods.insert(address.clone(), shown);
                    }
                    let node = ep
                        .node_name
                        .as_deref()
                        .and_then(|n| objects.nodes.iter().find(|node| node.name_any() == n));
                    binding
                        .clusters
                        .insert(address.clone(), objects.name.to_owned());
                    found.insert(address, locality_of(ep.zone.as_deref(), node));
                }
            }
        }
        if let Some(message) = port_problem {
            binding.problem = Some(("InvalidPort".into(), message));
            bindings.push(binding);
            continue;
        }
        let endpoints: Vec<EndpointConfig> = found
            .into_iter()
            .map(|(a, locality)| EndpointConfig {
                locality,
                ..EndpointConfig::new(a, 1)
            })
            .collect();
        match config.clusters.iter_mut().find(|c| c.name == cluster_name) {
            Some(existing) => existing.endpoints = endpoints,
            None => match default_cluster(&cluster_name) {
                Some(mut c) => {
                    c.endpoints = endpoints;
                    config.clusters.push(c);
                }
                None => {
                    binding.problem = Some((
                        "InvalidCluster".into(),
                        format!("{cluster_name:?} is not a usable cluster name"),
                    ));
                    bindings.push(binding);
                    continue;
                }
            },
        }
        claimed.insert(cluster_name.clone(), format!("{namespace}/{name}"));
        overrides.insert(cluster_name.clone(), policy_config);
        binding.cluster = Some(cluster_name);
        bindings.push(binding);
    }
    bindings.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Topology {
        config,
        overrides,
        bindings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubernetes::crd::TrafficPolicySpec;

    fn policy(ns: &str, name: &str, spec: serde_json::Value) -> TrafficPolicy {
        let spec: TrafficPolicySpec = serde_json::from_value(spec).unwrap();
        let mut p = TrafficPolicy::new(name, spec);
        p.metadata.namespace = Some(ns.into());
        p.metadata.generation = Some(3);
        p
    }

    fn slice(
        ns: &str,
        service: &str,
        ports: serde_json::Value,
        eps: serde_json::Value,
    ) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{service}-x"), "namespace": ns,
                         "labels": {SERVICE_NAME_LABEL: service}},
            "addressType": "IPv4", "ports": ports, "endpoints": eps
        }))
        .unwrap()
    }

    fn base() -> ProxyConfig {
        gofe_model::parse(
            "p.yaml",
            "listeners:\n  - name: web\n    address: 127.0.0.1:0\n    filters:\n      - type: router\n        config:\n          virtual_hosts:\n            - name: all\n              domains: [\"*\"]\n              routes:\n                - match: { prefix: / }\n                  route: { cluster: api }\nclusters:\n  - name: api\n    connect_timeout: 2s\n",
        )
        .unwrap()
    }

    #[test]
    fn ready_endpoints_of_the_chosen_port_fill_the_cluster() {
        let p = policy(
            "shop",
            "api",
            serde_json::json!({"host": "api", "port": "http"}),
        );
        let s = slice(
            "shop",
            "api",
            serde_json::json!([{"name": "grpc", "port": 9000}, {"name": "http", "port": 8080}]),
            serde_json::json!([
                {"addresses": ["10.0.0.2"], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": "api-b"}},
                {"addresses": ["10.0.0.1"], "targetRef": {"kind": "Pod", "name": "api-a"}},
                {"addresses": ["10.0.0.3"], "conditions": {"ready": false}},
                {"addresses": ["10.0.0.4"], "conditions": {"ready": true, "terminating": true}}
            ]),
        );
        // Another namespace's Service of the same name is not ours.
        let other = slice(
            "other",
            "api",
            serde_json::json!([{"name": "http", "port": 8080}]),
            serde_json::json!([{"addresses": ["10.9.9.9"]}]),
        );
        let t = build(&base(), &[p], &[s, other]);
        let api = t.config.clusters.iter().find(|c| c.name == "api").unwrap();
        let addrs: Vec<_> = api.endpoints.iter().map(|e| e.address.as_str()).collect();
        assert_eq!(addrs, ["10.0.0.1:8080", "10.0.0.2:8080"]);
        assert_eq!(
            api.connect_timeout,
            std::time::Duration::from_secs(2),
            "file settings kept"
        );
        let b = &t.bindings[0];
        assert_eq!(b.cluster.as_deref(), Some("api"));
        assert_eq!(b.pods["10.0.0.2:8080"], "api-b");
        assert!(b.problem.is_none());
        assert!(t.overrides.contains_key("api"));
    }

    #[test]
    fn new_clusters_get_defaults_and_problems_are_reported() {
        let ok = policy(
            "shop",
            "cart",
            serde_json::json!({"host": "cart.shop.svc.cluster.local"}),
        );
        let wrong_ns = policy("shop", "x", serde_json::json!({"host": "cart.other"}));
        let dup = policy("shop2", "cart", serde_json::json!({"host": "cart"}));
        let ports = policy("shop", "multi", serde_json::json!({"host": "multi"}));
        let bad = policy(
            "shop",
            "bad",
            serde_json::json!({"host": "y", "outlierDetection": {"relaxAfter": "soon"}}),
        );
        let s = slice(
            "shop",
            "cart",
            serde_json::json!([{"port": 7070}]),
            serde_json::json!([{"addresses": ["10.1.0.1"]}]),
        );
        let m = slice(
            "shop",
            "multi",
            serde_json::json!([{"name": "a", "port": 1}, {"name": "b", "port": 2}]),
            serde_json::json!([{"addresses": ["10.1.0.2"]}]),
        );
        let t = build(&base(), &[ok, wrong_ns, dup, ports, bad], &[s, m]);
        let cart = t.config.clusters.iter().find(|c| c.name == "cart").unwrap();
        assert_eq!(cart.endpoints[0].address, "10.1.0.1:7070");
        let by_name = |ns: &str, n: &str| {
            t.bindings
                .iter()
                .find(|b| b.namespace == ns && b.name == n)
                .unwrap()
        };
        assert_eq!(
            by_name("shop", "x").problem.as_ref().unwrap().0,
            "InvalidHost"
        );
        assert_eq!(
            by_name("shop2", "cart").problem.as_ref().unwrap().0,
            "ClusterConflict"
        );
        let multi = by_name("shop", "multi").problem.clone().unwrap();
        assert_eq!(multi.0, "InvalidPort");
        assert!(multi.1.contains("a, b"), "{}", multi.1);
        let bad = by_name("shop", "bad").problem.clone().unwrap();
        assert_eq!(bad.0, "InvalidSpec");
        assert!(
            bad.1.contains("spec.outlierDetection.relaxAfter"),
            "{}",
            bad.1
        );
        assert!(!t.config.clusters.iter().any(|c| c.name == "y"));
    }

    fn node(name: &str, region: &str, zone: &str) -> Node {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {REGION_LABEL: region, ZONE_LABEL: zone}}
        }))
        .unwrap()
    }

    #[test]
    fn a_service_s_endpoints_merge_across_clusters_with_their_localities() {
        let p = policy("shop", "api", serde_json::json!({"host": "api"}));
        let ports = serde_json::json!([{"port": 8080}]);
        let local = slice(
            "shop",
            "api",
            ports.clone(),
            serde_json::json!([
                // The slice's zone wins over the Node's; the region comes from the Node.
                {"addresses": ["10.0.0.1"], "zone": "eu-1a", "nodeName": "n1",
                 "targetRef": {"kind": "Pod", "name": "api-a"}},
                // No zone in the slice: the Node's.
                {"addresses": ["10.0.0.2"], "nodeName": "n2"},
                // Nothing known.
                {"addresses": ["10.0.0.3"]}
            ]),
        );
        let remote = slice(
            "shop",
            "api",
            ports,
            serde_json::json!([
                {"addresses": ["10.1.0.1"], "zone": "eu-1b", "nodeName": "r1",
                 "targetRef": {"kind": "Pod", "name": "api-r"}},
                // The same address as a local endpoint: the local one is kept.
                {"addresses": ["10.0.0.2"], "nodeName": "r1"}
            ]),
        );
        let local_nodes = [node("n1", "eu", "eu-1x"), node("n2", "eu", "eu-1a")];
        let remote_nodes = [node("r1", "eu", "eu-1b")];
        let t = build_clusters(
            &base(),
            &[p],
            &[
                ClusterObjects {
                    name: "east",
                    local: true,
                    slices: std::slice::from_ref(&local),
                    nodes: &local_nodes,
                },
                ClusterObjects {
                    name: "west",
                    local: false,
                    slices: std::slice::from_ref(&remote),
                    nodes: &remote_nodes,
                },
            ],
        );
        let api = t.config.clusters.iter().find(|c| c.name == "api").unwrap();
        let got: Vec<(&str, Option<(&str, &str)>)> = api
            .endpoints
            .iter()
            .map(|e| {
                (
                    e.address.as_str(),
                    e.locality
                        .as_ref()
                        .map(|l| (l.region.as_str(), l.zone.as_str())),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("10.0.0.1:8080", Some(("eu", "eu-1a"))),
                ("10.0.0.2:8080", Some(("eu", "eu-1a"))),
                ("10.0.0.3:8080", None),
                ("10.1.0.1:8080", Some(("eu", "eu-1b"))),
            ]
        );
        let b = &t.bindings[0];
        assert_eq!(b.clusters["10.1.0.1:8080"], "west");
        assert_eq!(b.clusters["10.0.0.2:8080"], "east");
        assert_eq!(b.pods["10.0.0.1:8080"], "api-a");
        assert_eq!(b.pods["10.1.0.1:8080"], "west/api-r");
        assert_eq!(
            b.duplicates,
            [("10.0.0.2:8080".to_string(), "west".to_string())]
        );
        assert!(gofe_model::validate(&t.config).is_empty());
    }
}
