//! Request mirroring of a route (Envoy's `RouteAction.request_mirror_policies`): a copy of a
//! fraction of the route's requests goes to a shadow cluster, fire and forget. The client's
//! response is the main cluster's alone; the shadow's response is read and thrown away.
//!
//! The copy carries the request's method, path, headers (as the main upstream gets them, with
//! the host given Envoy's `-shadow` suffix: `api.example.com:8080` becomes
//! `api.example.com-shadow:8080`) and its body, when the body is at most
//! [`MAX_MIRRORED_BODY_BYTES`]. The proxy bounds each shadow cluster's copies in flight by
//! that cluster's `circuit_breakers.max_requests`, counted apart from its own requests.

use serde::{Deserialize, Serialize};

use crate::fault::{check_percent, Denominator, FractionalPercent};

/// Largest request body a copy carries, in bytes: Envoy's default per-connection buffer
/// limit, the most Envoy buffers for its shadows. A request with a larger body is not
/// mirrored (counted as `body_too_large`); the request itself goes on untouched. At most
/// `circuit_breakers.max_requests` copies of this size are held per shadow cluster.
pub const MAX_MIRRORED_BODY_BYTES: usize = 1024 * 1024;

/// One mirror policy of a route (Envoy's `RequestMirrorPolicy`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestMirrorPolicyConfig {
    /// The shadow cluster: a cluster of the configuration, balanced and pooled as for any
    /// route (its outlier detection sees only its own requests, never the copies).
    pub cluster: String,
    /// The fraction of the route's requests copied (Envoy's `runtime_fraction.default_value`;
    /// gofe has no runtime). Default 100 %, as in Envoy when the field is absent.
    #[serde(default = "all", skip_serializing_if = "is_all")]
    pub runtime_fraction: FractionalPercent,
    /// Keep the copy's `Host` / `:authority` as the request's, without the `-shadow` suffix.
    /// Default `false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_shadow_host_suffix_append: bool,
}

impl RequestMirrorPolicyConfig {
    /// Every request of the route to `cluster`, with the `-shadow` suffix.
    pub fn to(cluster: impl Into<String>) -> Self {
        RequestMirrorPolicyConfig {
            cluster: cluster.into(),
            runtime_fraction: all(),
            disable_shadow_host_suffix_append: false,
        }
    }
}

/// 100 out of a hundred: the default `runtime_fraction`.
pub fn all() -> FractionalPercent {
    FractionalPercent {
        numerator: 100,
        denominator: Denominator::Hundred,
    }
}

/// Whether `p` is the default `runtime_fraction` (100 out of a hundred, exactly).
pub fn is_all(p: &FractionalPercent) -> bool {
    *p == all()
}

/// Checks a mirror policy (its cluster is checked against the configuration by the caller):
/// `(field under the policy, message)` for each problem.
pub fn check(p: &RequestMirrorPolicyConfig) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if p.cluster.is_empty() {
        out.push(("cluster".to_owned(), "must not be empty".to_owned()));
    }
    check_percent(&p.runtime_fraction, "runtime_fraction", &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_envoys_and_fractions_are_checked() {
        let p: RequestMirrorPolicyConfig = serde_json::from_str(r#"{"cluster":"shadow"}"#).unwrap();
        assert_eq!(p, RequestMirrorPolicyConfig::to("shadow"));
        assert_eq!(
            serde_json::to_string(&p).unwrap(),
            r#"{"cluster":"shadow"}"#
        );
        assert!(check(&p).is_empty());
        let bad = RequestMirrorPolicyConfig {
            cluster: String::new(),
            runtime_fraction: FractionalPercent::percent(101),
            disable_shadow_host_suffix_append: true,
        };
        let fields: Vec<String> = check(&bad).into_iter().map(|(f, _)| f).collect();
        assert_eq!(fields, ["cluster", "runtime_fraction.numerator"]);
    }
}
