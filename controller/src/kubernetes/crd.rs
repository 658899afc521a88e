//! The `TrafficPolicy` custom resource: which Service gofe steers, and how.
//!
//! ```yaml
//! apiVersion: gofe.io/v1alpha1
//! kind: TrafficPolicy
//! metadata: { name: api, namespace: shop }
//! spec:
//!   host: api-service          # a Service in this namespace (or api-service.shop.svc.cluster.local)
//!   port: http                 # the Service port, by name or number; default: its only port
//!   outlierDetection: { baseEjectionTime: 10s, maxEjectionPercent: 50 }
//!   loadBalancer: { slowStartWindow: 30s }
//! ```
//!
//! Field names are the camelCase forms of the controller file's policy fields, which follow
//! Envoy's outlier detection; where Istio's `DestinationRule` has the same concept the name is
//! Istio's (`baseEjectionTime`, `maxEjectionPercent`, `minHealthPercent`). The leader writes
//! `.status`: every endpoint's weight and state, the ejected endpoints, and when it decided.

use std::time::Duration;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::config::PolicyConfig;

/// What a `TrafficPolicy` asks for.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "gofe.io",
    version = "v1alpha1",
    kind = "TrafficPolicy",
    namespaced,
    status = "TrafficPolicyStatus",
    shortname = "tp",
    doc = "Steers a Service's endpoints by the mesh's measurements: gofe's controller ejects failing endpoints and weighs the rest by latency, as this policy says.",
    category = "gofe",
    printcolumn = r#"{"name":"Host","type":"string","jsonPath":".spec.host"}"#,
    printcolumn = r#"{"name":"Endpoints","type":"integer","jsonPath":".status.endpointCount"}"#,
    printcolumn = r#"{"name":"Ejected","type":"integer","jsonPath":".status.ejectedCount"}"#,
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".status.mode"}"#,
    printcolumn = r#"{"name":"Decided","type":"date","jsonPath":".status.lastDecisionTime"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicySpec {
    /// The Service whose endpoints this policy steers: a name in the policy's namespace, or
    /// `NAME.NAMESPACE.svc.cluster.local` (the namespace must be the policy's).
    pub host: String,
    /// The Service port, by name or number. Default: the Service's only port (an error when it
    /// has several).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "int_or_string")]
    pub port: Option<PortSelector>,
    /// The cluster name the proxies (and their `cluster` metric label) know the Service by.
    /// Default: the Service name, which is what the metrics adapter's `service` selector matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Ejection rules and breakers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetectionSpec>,
    /// Latency weighting and slow start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancerSpec>,
}

/// A Service port by name or number.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(untagged)]
pub enum PortSelector {
    /// The port's number (the Service port, or the target port the EndpointSlices carry).
    Number(u16),
    /// The port's name.
    Name(String),
}

/// Ejection rules (Envoy's outlier detection, decided by the controller from the mesh's
/// signals) and the breaker each endpoint goes through.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetectionSpec {
    /// Success-rate rule: hosts with enough volume needed before it applies (Envoy: 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate_minimum_hosts: Option<u32>,
    /// Success-rate rule: requests in the window for a host to count (Envoy: 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate_request_volume: Option<f64>,
    /// Success-rate rule: eject below `mean − factor × stdev` (Envoy: 1.9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub success_rate_stdev_factor: Option<f64>,
    /// Failure percentage (0–100) at or above which an endpoint is ejected (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_percentage_threshold: Option<f64>,
    /// Failure-percentage rule: hosts with enough volume needed (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_percentage_minimum_hosts: Option<u32>,
    /// Failure-percentage rule: requests in the window for a host to count (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_percentage_request_volume: Option<f64>,
    /// Length of a first ejection, e.g. `30s` (Istio's name; default 30 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub base_ejection_time: Option<String>,
    /// Longest ejection, e.g. `5m` (default 300 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub max_ejection_time: Option<String>,
    /// Most endpoints out at once, in percent (Istio's name; default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    pub max_ejection_percent: Option<u32>,
    /// Below this percentage of healthy endpoints the proxies balance over all (panic mode) and
    /// the controller ejects no more (Istio's name for Envoy's `healthy_panic_threshold`;
    /// default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    pub min_health_percent: Option<u32>,
    /// Trial weight of a half-open endpoint, in percent of its base weight (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half_open_weight_percent: Option<u32>,
    /// Requests a half-open endpoint must serve before it is judged (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half_open_min_requests: Option<f64>,
    /// Signals older than this are stale: decisions hold (default 30 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub stale_after: Option<String>,
    /// With no fresh signals for this long, weights relax to the base (default 300 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub relax_after: Option<String>,
}

/// Latency-aware weighting and slow start.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerSpec {
    /// Weigh endpoints by their latency relative to the cluster (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_weighting: Option<bool>,
    /// Lowest latency multiplier, in percent of the base weight (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_weight_percent: Option<u32>,
    /// Highest latency multiplier, in percent of the base weight (default 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_weight_percent: Option<u32>,
    /// Largest change of the multiplier in one step, in percent (default 50).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_step_percent: Option<u32>,
    /// Target changes smaller than this percentage are ignored (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hysteresis_percent: Option<u32>,
    /// Half-life of the latency EWMA, e.g. `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub latency_half_life: Option<String>,
    /// Requests in the window before an endpoint's latency is trusted (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_min_requests: Option<f64>,
    /// Time a recovered or new endpoint takes to ramp to full weight (Envoy's
    /// `slow_start_window`; default 30 s; `0s` disables).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub slow_start_window: Option<String>,
}

/// What the leader last decided for a `TrafficPolicy`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicyStatus {
    /// The `metadata.generation` this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The cluster name used for the Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// `normal`, `fail_static`, `relaxed` or `panic`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// When the leader last changed a weight or a state (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_decision_time: Option<String>,
    /// Number of endpoints.
    #[serde(default)]
    pub endpoint_count: u32,
    /// Number of ejected endpoints.
    #[serde(default)]
    pub ejected_count: u32,
    /// Addresses of the ejected endpoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ejected: Vec<String>,
    /// Every endpoint's published weight and state.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointStatus>,
    /// `Ready` (the policy is applied) with a reason and message when it is not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One endpoint in `.status`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointStatus {
    /// `ip:port`.
    pub address: String,
    /// The Pod behind it, when the EndpointSlice names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Published weight, in hundredths of the base weight.
    pub weight: u32,
    /// Published health.
    pub healthy: bool,
    /// `serving`, `ejected`, `half_open`, `ramping`, `held` or `relaxed`.
    pub state: String,
    /// Why.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// A status condition (the shape of `metav1.Condition`).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type, e.g. `Ready`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// One CamelCase word.
    pub reason: String,
    /// Human-readable details.
    #[serde(default)]
    pub message: String,
    /// When the status last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
}

/// Kubernetes' structural form of "a number or a name" (as `IntOrString` fields use).
fn int_or_string(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({ "x-kubernetes-int-or-string": true, "nullable": true })
}

/// A policy field the controller cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("spec.{field}: {message}")]
pub struct SpecError {
    /// The field path under `spec`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

fn duration(field: &str, text: &Option<String>) -> Result<Option<Duration>, SpecError> {
    text.as_deref()
        .map(|t| {
            gofe_yaml::duration::parse(t).map_err(|e| SpecError {
                field: field.to_owned(),
                message: e.to_string(),
            })
        })
        .transpose()
}

impl TrafficPolicySpec {
    /// The policy overrides this spec sets (unset fields inherit the controller's defaults).
    pub fn policy(&self) -> Result<PolicyConfig, SpecError> {
        let od = self.outlier_detection.clone().unwrap_or_default();
        let lb = self.load_balancer.clone().unwrap_or_default();
        let percent = |field: &str, v: Option<u32>| -> Result<Option<u32>, SpecError> {
            match v {
                Some(p) if p > 100 => Err(SpecError {
                    field: field.to_owned(),
                    message: format!("must be at most 100, got {p}"),
                }),
                _ => Ok(v),
            }
        };
        Ok(PolicyConfig {
            success_rate_minimum_hosts: od.success_rate_minimum_hosts.map(|v| v as usize),
            success_rate_request_volume: od.success_rate_request_volume,
            success_rate_stdev_factor: od.success_rate_stdev_factor,
            failure_percentage_threshold: od.failure_percentage_threshold,
            failure_percentage_minimum_hosts: od
                .failure_percentage_minimum_hosts
                .map(|v| v as usize),
            failure_percentage_request_volume: od.failure_percentage_request_volume,
            base_ejection_time: duration(
                "outlierDetection.baseEjectionTime",
                &od.base_ejection_time,
            )?,
            max_ejection_time: duration("outlierDetection.maxEjectionTime", &od.max_ejection_time)?,
            max_ejection_percent: percent(
                "outlierDetection.maxEjectionPercent",
                od.max_ejection_percent,
            )?,
            half_open_weight_percent: percent(
                "outlierDetection.halfOpenWeightPercent",
                od.half_open_weight_percent,
            )?,
            half_open_min_requests: od.half_open_min_requests,
            slow_start_window: duration("loadBalancer.slowStartWindow", &lb.slow_start_window)?,
            latency_weighting: lb.latency_weighting,
            min_weight_percent: lb.min_weight_percent,
            max_weight_percent: lb.max_weight_percent,
            max_step_percent: lb.max_step_percent,
            hysteresis_percent: lb.hysteresis_percent,
            latency_half_life: duration("loadBalancer.latencyHalfLife", &lb.latency_half_life)?,
            latency_min_requests: lb.latency_min_requests,
            healthy_panic_threshold: percent(
                "outlierDetection.minHealthPercent",
                od.min_health_percent,
            )?,
            stale_after: duration("outlierDetection.staleAfter", &od.stale_after)?,
            relax_after: duration("outlierDetection.relaxAfter", &od.relax_after)?,
        })
    }
}

/// The CustomResourceDefinition as YAML, for `kubectl apply -f -` (`gofe controller crd`).
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let crd = TrafficPolicy::crd();
    let mut out = String::from(
        "# The TrafficPolicy custom resource, generated by `gofe controller crd`. Do not edit.\n",
    );
    match serde_saphyr::to_string(&crd) {
        Ok(yaml) => out.push_str(&yaml),
        // The CRD is built from our own types; serialising it cannot fail in practice, but if it
        // did, JSON is valid YAML too.
        Err(_) => out.push_str(&serde_json::to_string_pretty(&crd).unwrap_or_default()),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_maps_to_the_controller_policy() {
        let spec: TrafficPolicySpec = serde_json::from_value(serde_json::json!({
            "host": "api",
            "port": "http",
            "outlierDetection": { "baseEjectionTime": "10s", "maxEjectionPercent": 50, "minHealthPercent": 30,
                                  "failurePercentageThreshold": 40 },
            "loadBalancer": { "slowStartWindow": "1m", "latencyWeighting": false }
        }))
        .unwrap();
        assert_eq!(spec.port, Some(PortSelector::Name("http".into())));
        let p = spec.policy().unwrap();
        assert_eq!(p.base_ejection_time, Some(Duration::from_secs(10)));
        assert_eq!(p.max_ejection_percent, Some(50));
        assert_eq!(p.healthy_panic_threshold, Some(30));
        assert_eq!(p.slow_start_window, Some(Duration::from_secs(60)));
        assert_eq!(p.latency_weighting, Some(false));
        let resolved = p.resolve(&gofe_core::policy::Policy::default());
        assert!((resolved.failure_percentage_threshold - 0.4).abs() < 1e-12);
        assert_eq!(resolved.panic_threshold_percent, 30);
    }

    #[test]
    fn bad_fields_are_named() {
        let spec = TrafficPolicySpec {
            host: "api".into(),
            outlier_detection: Some(OutlierDetectionSpec {
                base_ejection_time: Some("ten seconds".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let e = spec.policy().unwrap_err();
        assert_eq!(e.field, "outlierDetection.baseEjectionTime");
        let spec = TrafficPolicySpec {
            host: "api".into(),
            outlier_detection: Some(OutlierDetectionSpec {
                max_ejection_percent: Some(150),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(spec
            .policy()
            .unwrap_err()
            .to_string()
            .starts_with("spec.outlierDetection.maxEjectionPercent: must be at most 100"));
        let unknown: Result<TrafficPolicySpec, _> = serde_json::from_value(
            serde_json::json!({"host": "api", "outlierDetection": {"baseEjectionTme": "1s"}}),
        );
        assert!(unknown.is_err(), "unknown policy fields are refused");
    }

    #[test]
    fn the_shipped_example_is_a_usable_policy() {
        let p: TrafficPolicy =
            gofe_yaml::from_str(include_str!("../../../examples/trafficpolicy.yaml")).unwrap();
        assert_eq!(p.spec.host, "api-service");
        let c = p.spec.policy().unwrap();
        assert_eq!(c.max_ejection_percent, Some(20));
        assert_eq!(c.base_ejection_time, Some(Duration::from_secs(30)));
    }

    #[test]
    fn crd_is_valid_yaml_with_status_and_schema() {
        let text = crd_yaml();
        let v: serde_json::Value = gofe_yaml::from_str(&text).unwrap();
        assert_eq!(v["kind"], "CustomResourceDefinition");
        assert_eq!(v["metadata"]["name"], "trafficpolicies.gofe.io");
        assert_eq!(v["spec"]["scope"], "Namespaced");
        let version = &v["spec"]["versions"][0];
        assert_eq!(version["name"], "v1alpha1");
        assert!(version["subresources"]["status"].is_object());
        let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(spec["required"][0], "host");
        assert!(
            spec["properties"]["outlierDetection"]["properties"]["baseEjectionTime"].is_object()
        );
        let status = &version["schema"]["openAPIV3Schema"]["properties"]["status"];
        assert!(status["properties"]["endpoints"].is_object());
        assert!(status["properties"]["lastDecisionTime"].is_object());
    }
}
