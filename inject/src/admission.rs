//! The mutating admission webhook's decision, as a pure function: an `admission.k8s.io/v1`
//! AdmissionReview in, the AdmissionReview to answer out (with a base64 JSONPatch when the
//! Pod is injected). The controller serves it over HTTPS (`gofe_controller::webhook`).
//!
//! Which Pods reach the webhook is the MutatingWebhookConfiguration's business (the chart's
//! namespace and object selectors on the `gofe.io/inject` label); here a Pod annotated or
//! labelled `gofe.io/inject: disabled` is still let through unchanged, and so is anything that
//! is not a Pod being created.

use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::{inject_template, InjectConfig, Outcome};

/// What the webhook does with a Pod it cannot inject (Kubernetes' `failurePolicy` names).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize, schemars::JsonSchema,
)]
pub enum FailurePolicy {
    /// Admit it unchanged, with a warning. The default.
    #[default]
    Ignore,
    /// Refuse it, with the reason.
    Fail,
}

impl FailurePolicy {
    /// Kubernetes' name for it (`Ignore`, `Fail`).
    pub const fn as_str(self) -> &'static str {
        match self {
            FailurePolicy::Ignore => "Ignore",
            FailurePolicy::Fail => "Fail",
        }
    }
}

/// A request body that is not an AdmissionReview the webhook can answer: HTTP 400 with this
/// message.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("bad AdmissionReview: {0}")]
pub struct BadReview(pub String);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Review {
    api_version: String,
    kind: String,
    request: Option<Request>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Request {
    uid: String,
    kind: Option<GroupVersionKind>,
    #[serde(default)]
    operation: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    object: Option<Value>,
}

#[derive(Deserialize)]
struct GroupVersionKind {
    #[serde(default)]
    group: String,
    kind: String,
}

/// What the webhook answered, for its log and metrics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Patched.
    Injected,
    /// Allowed unchanged: not a Pod creation, opted out, or already injected.
    Skipped(&'static str),
    /// Could not be injected; allowed or denied by the failure policy.
    Failed {
        /// Why.
        reason: String,
        /// Whether it was allowed (failure policy `Ignore`).
        allowed: bool,
    },
}

/// Answers one AdmissionReview (`body`, JSON). `Err` only for a body that is not one.
pub fn review(
    body: &[u8],
    config: &InjectConfig,
    policy: FailurePolicy,
) -> Result<(Value, Verdict), BadReview> {
    let review: Review = serde_json::from_slice(body).map_err(|e| BadReview(e.to_string()))?;
    if review.api_version != "admission.k8s.io/v1" || review.kind != "AdmissionReview" {
        return Err(BadReview(format!(
            "expected apiVersion admission.k8s.io/v1 and kind AdmissionReview, got {:?} {:?}",
            review.api_version, review.kind
        )));
    }
    let request = review
        .request
        .ok_or_else(|| BadReview("no request".into()))?;
    if request.uid.is_empty() {
        return Err(BadReview("request.uid is empty".into()));
    }
    let uid = request.uid.clone();
    let answer = |response: Map<String, Value>| {
        let mut response = response;
        response.insert("uid".into(), Value::String(uid.clone()));
        json!({ "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response })
    };
    let allow = || {
        let mut m = Map::new();
        m.insert("allowed".into(), Value::Bool(true));
        m
    };
    let is_pod = request
        .kind
        .as_ref()
        .is_some_and(|k| k.group.is_empty() && k.kind == "Pod");
    if !is_pod || request.operation != "CREATE" {
        return Ok((answer(allow()), Verdict::Skipped("not a Pod being created")));
    }
    let Some(original) = request.object else {
        return Err(BadReview(
            "request.object is missing for a Pod CREATE".into(),
        ));
    };
    let mut pod = original.clone();
    let name = pod
        .pointer("/metadata/name")
        .or_else(|| pod.pointer("/metadata/generateName"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    match inject_template(&mut pod, config) {
        Ok(Outcome::Injected) => {
            let patch = diff_patch(&original, &pod);
            let encoded = base64::engine::general_purpose::STANDARD
                .encode(serde_json::to_vec(&patch).unwrap_or_default());
            let mut response = allow();
            response.insert("patchType".into(), Value::String("JSONPatch".into()));
            response.insert("patch".into(), Value::String(encoded));
            Ok((answer(response), Verdict::Injected))
        }
        Ok(Outcome::AlreadyInjected) => Ok((answer(allow()), Verdict::Skipped("already injected"))),
        Ok(Outcome::Disabled) => Ok((
            answer(allow()),
            Verdict::Skipped("gofe.io/inject: disabled"),
        )),
        Err(e) => {
            let reason = format!(
                "gofe: cannot inject the proxy into pod {}/{name}: {e}",
                request.namespace
            );
            let mut response = Map::new();
            let allowed = policy == FailurePolicy::Ignore;
            response.insert("allowed".into(), Value::Bool(allowed));
            let warning = if allowed {
                format!("{reason} (admitted without it: failure_policy Ignore)")
            } else {
                reason.clone()
            };
            response.insert("warnings".into(), json!([warning]));
            if !allowed {
                response.insert(
                    "status".into(),
                    json!({ "code": 400, "reason": "BadRequest", "message": reason }),
                );
            }
            Ok((answer(response), Verdict::Failed { reason, allowed }))
        }
    }
}

/// A JSON pointer token (RFC 6901: `~` as `~0`, `/` as `~1`).
fn token(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The RFC 6902 patch turning `from` into `to`, member by member of `metadata` and `spec`
/// (whole values below them: the containers list, the annotations map), then of the root.
pub fn diff_patch(from: &Value, to: &Value) -> Vec<Value> {
    let mut ops = Vec::new();
    diff_members("", from, to, 2, &mut ops);
    ops
}

fn diff_members(at: &str, from: &Value, to: &Value, depth: usize, ops: &mut Vec<Value>) {
    let (Some(a), Some(b)) = (from.as_object(), to.as_object()) else {
        if from != to {
            ops.push(json!({ "op": "replace", "path": at, "value": to }));
        }
        return;
    };
    for (key, new) in b {
        let path = format!("{at}/{}", token(key));
        match a.get(key) {
            None => ops.push(json!({ "op": "add", "path": path, "value": new })),
            Some(old) if old == new => {}
            Some(old) if depth > 1 && old.is_object() && new.is_object() => {
                diff_members(&path, old, new, depth - 1, ops)
            }
            Some(_) => ops.push(json!({ "op": "replace", "path": path, "value": new })),
        }
    }
    for key in a.keys().filter(|k| !b.contains_key(*k)) {
        ops.push(json!({ "op": "remove", "path": format!("{at}/{}", token(key)) }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(annotations: Value) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "generateName": "web-", "namespace": "shop", "annotations": annotations, "labels": { "app": "web" } },
            "spec": { "containers": [{ "name": "web", "image": "nginx", "ports": [{ "containerPort": 8080 }] }] }
        })
    }

    fn request(object: Value) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": { "group": "", "version": "v1", "kind": "Pod" },
                "resource": { "group": "", "version": "v1", "resource": "pods" },
                "operation": "CREATE", "namespace": "shop", "object": object
            }
        }))
        .unwrap()
    }

    fn apply(original: &Value, response: &Value) -> Value {
        let encoded = response["response"]["patch"].as_str().expect("a patch");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        let mut doc = original.clone();
        json_patch::patch(&mut doc, &patch).unwrap();
        doc
    }

    #[test]
    fn a_pod_gets_a_jsonpatch_that_applies_to_exactly_the_injected_pod() {
        let original = pod(json!({ "team": "a/b~c" }));
        let (response, verdict) = review(
            &request(original.clone()),
            &InjectConfig::default(),
            FailurePolicy::Ignore,
        )
        .unwrap();
        assert_eq!(verdict, Verdict::Injected);
        let r = &response["response"];
        assert_eq!(r["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(r["allowed"], true);
        assert_eq!(r["patchType"], "JSONPatch");
        assert_eq!(response["apiVersion"], "admission.k8s.io/v1");
        let mut expected = original.clone();
        assert_eq!(
            inject_template(&mut expected, &InjectConfig::default()).unwrap(),
            Outcome::Injected
        );
        assert_eq!(apply(&original, &response), expected);
    }

    #[test]
    fn a_pod_without_annotations_or_init_containers_is_patched_too() {
        let original =
            json!({ "metadata": { "name": "p" }, "spec": { "containers": [{ "name": "a" }] } });
        let (response, _) = review(
            &request(original.clone()),
            &InjectConfig::default(),
            FailurePolicy::Ignore,
        )
        .unwrap();
        let patched = apply(&original, &response);
        assert_eq!(
            patched["metadata"]["annotations"]["gofe.io/injected"],
            "true"
        );
        assert_eq!(patched["spec"]["initContainers"][1]["name"], "gofe-proxy");
        assert_eq!(
            patched["spec"]["initContainers"][1]["restartPolicy"],
            "Always"
        );
    }

    #[test]
    fn opted_out_and_injected_pods_and_other_objects_are_allowed_unpatched() {
        let config = InjectConfig::default();
        let (r, v) = review(
            &request(pod(json!({ "gofe.io/inject": "disabled" }))),
            &config,
            FailurePolicy::Fail,
        )
        .unwrap();
        assert_eq!(v, Verdict::Skipped("gofe.io/inject: disabled"));
        assert_eq!(r["response"]["allowed"], true);
        assert!(r["response"].get("patch").is_none());
        let mut injected = pod(json!({}));
        inject_template(&mut injected, &config).unwrap();
        let (r, v) = review(&request(injected), &config, FailurePolicy::Fail).unwrap();
        assert_eq!(v, Verdict::Skipped("already injected"));
        assert!(r["response"].get("patch").is_none());
        let mut update: Value = serde_json::from_slice(&request(pod(json!({})))).unwrap();
        update["request"]["operation"] = json!("UPDATE");
        let (r, v) = review(
            &serde_json::to_vec(&update).unwrap(),
            &config,
            FailurePolicy::Fail,
        )
        .unwrap();
        assert_eq!(v, Verdict::Skipped("not a Pod being created"));
        assert_eq!(r["response"]["allowed"], true);
    }

    #[test]
    fn a_pod_that_cannot_be_injected_follows_the_failure_policy_with_a_warning() {
        let bad = pod(json!({ "gofe.io/proxy-cpu": "lots" }));
        let config = InjectConfig::default();
        let (r, v) = review(&request(bad.clone()), &config, FailurePolicy::Ignore).unwrap();
        assert!(matches!(v, Verdict::Failed { allowed: true, .. }), "{v:?}");
        assert_eq!(r["response"]["allowed"], true);
        assert!(r["response"].get("patch").is_none());
        let warning = r["response"]["warnings"][0].as_str().unwrap();
        assert!(
            warning
                .contains("metadata.annotations.gofe.io/proxy-cpu: expected a Kubernetes quantity"),
            "{warning}"
        );
        let (r, v) = review(&request(bad), &config, FailurePolicy::Fail).unwrap();
        assert!(matches!(v, Verdict::Failed { allowed: false, .. }), "{v:?}");
        assert_eq!(r["response"]["allowed"], false);
        assert_eq!(r["response"]["status"]["code"], 400);
        assert!(r["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("pod shop/web-"));
    }

    #[test]
    fn a_malformed_review_is_refused_with_what_is_wrong() {
        let config = InjectConfig::default();
        let refuse = |body: &[u8]| {
            review(body, &config, FailurePolicy::Ignore)
                .unwrap_err()
                .to_string()
        };
        assert!(
            refuse(b"not json").starts_with("bad AdmissionReview: expected ident"),
            "{}",
            refuse(b"not json")
        );
        assert!(
            refuse(br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#)
                .contains("expected apiVersion admission.k8s.io/v1")
        );
        assert_eq!(
            refuse(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#),
            "bad AdmissionReview: no request"
        );
        assert!(refuse(
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{}}"#
        )
        .contains("missing field `uid`"));
        let no_object = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"","version":"v1","kind":"Pod"},"operation":"CREATE"}}"#;
        assert_eq!(
            refuse(no_object),
            "bad AdmissionReview: request.object is missing for a Pod CREATE"
        );
    }

    #[test]
    fn the_patch_escapes_keys_and_removes_what_went() {
        let from = json!({ "metadata": { "annotations": { "a/b": "1" }, "gone": 1 }, "spec": {} });
        let to = json!({ "metadata": { "annotations": { "a/b": "2" } }, "spec": { "x~y": [1] } });
        assert_eq!(
            diff_patch(&from, &to),
            vec![
                json!({ "op": "replace", "path": "/metadata/annotations", "value": { "a/b": "2" } }),
                json!({ "op": "remove", "path": "/metadata/gone" }),
                json!({ "op": "add", "path": "/spec/x~0y", "value": [1] }),
            ]
        );
    }
}
