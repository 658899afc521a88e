//! The HTTP handlers of `custom.metrics.k8s.io` (`v1beta2`, and `v1beta1`) and
//! `metrics.k8s.io/v1beta1`, on top of [`crate::provider::Provider::get_custom`] and
//! [`crate::provider::Provider::get_resource`].
//!
//! | path (custom.metrics.k8s.io/VERSION/…) | objects |
//! |---|---|
//! | `namespaces/NS/RESOURCE/NAME/METRIC` | one namespaced object |
//! | `namespaces/NS/RESOURCE/*/METRIC?labelSelector=…` | the objects the selector selects |
//! | `RESOURCE/NAME/METRIC`, `RESOURCE/*/METRIC` | cluster-scoped objects (`nodes`) |
//! | `namespaces/NS/metrics/METRIC` | the namespace NS itself |
//!
//! `metricLabelSelector` filters the series (its matchers join `<<.LabelMatchers>>`).

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, Query, State};
use axum::Json;
use serde_json::{json, Value};

use crate::api::{rfc3339, ApiError, AppState};
use crate::custom::{core, go_duration, Objects, Resource, ResourceTarget};
use crate::objects::ListError;
use crate::selector::Selector;

/// The custom metrics API group.
pub const CUSTOM_GROUP: &str = "custom.metrics.k8s.io";
/// Its versions, preferred first.
pub const CUSTOM_VERSIONS: &[&str] = &["v1beta2", "v1beta1"];
/// The resource metrics API group.
pub const RESOURCE_GROUP: &str = "metrics.k8s.io";
/// Its version.
pub const RESOURCE_VERSION: &str = "v1beta1";

impl From<ListError> for ApiError {
    fn from(e: ListError) -> Self {
        tracing::warn!(error = %e, "listing objects failed");
        ApiError::ServiceUnavailable(e.to_string())
    }
}

fn selector_param(query: &HashMap<String, String>, name: &str) -> Result<Selector, ApiError> {
    let text = query.get(name).map_or("", String::as_str);
    Selector::parse(text).map_err(|e| ApiError::BadRequest(format!("{name}: {e}")))
}

fn check_version(version: &str) -> Result<(), ApiError> {
    if CUSTOM_VERSIONS.contains(&version) {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!(
            "{CUSTOM_GROUP}/{version} is not served (versions: {})",
            CUSTOM_VERSIONS.join(", ")
        )))
    }
}

/// `APIResourceList` of a custom metrics version: `RESOURCE/METRIC` per discovered metric.
pub async fn custom_resource_list(
    State(state): State<AppState>,
    Path(version): Path<String>,
) -> Result<Json<Value>, ApiError> {
    check_version(&version)?;
    let resources: Vec<Value> = state
        .provider
        .custom_metrics()
        .iter()
        .map(|((resource, metric), m)| {
            json!({
                "name": format!("{resource}/{metric}"),
                "singularName": "",
                "namespaced": m.namespaced,
                "kind": "MetricValueList",
                "verbs": ["get"],
            })
        })
        .collect();
    Ok(Json(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{CUSTOM_GROUP}/{version}"),
        "resources": resources,
    })))
}

/// What a custom metrics path asks for.
struct CustomRequest {
    /// The resource as the URL names it (`pods`, `widgets.example.com`); `None`: the
    /// namespace itself (`namespaces/NS/metrics/METRIC`).
    resource: Option<String>,
    namespace: Option<String>,
    /// `None` for `*`.
    name: Option<String>,
    metric: String,
}

fn parse_custom_path(rest: &str) -> Result<CustomRequest, ApiError> {
    let parts: Vec<&str> = rest.trim_matches('/').split('/').collect();
    let bad = || ApiError::NotFound("the server could not find the requested resource".into());
    let name = |n: &str| (n != "*").then(|| n.to_owned());
    match parts.as_slice() {
        ["namespaces", ns, "metrics", metric] => Ok(CustomRequest {
            resource: None,
            namespace: None,
            name: Some((*ns).to_owned()),
            metric: (*metric).to_owned(),
        }),
        ["namespaces", ns, res, n, metric] => Ok(CustomRequest {
            resource: Some((*res).to_owned()),
            namespace: Some((*ns).to_owned()),
            name: name(n),
            metric: (*metric).to_owned(),
        }),
        [res, n, metric] => Ok(CustomRequest {
            resource: Some((*res).to_owned()),
            namespace: None,
            name: name(n),
            metric: (*metric).to_owned(),
        }),
        _ => Err(bad()),
    }
}

/// 404 for a resource the cluster does not serve, naming it (and saying when the cluster's
/// discovery is unavailable, so only gofe's built-in table is known).
fn unknown_resource(state: &AppState, named: &str) -> ApiError {
    let table = state.provider.resources().current();
    ApiError::NotFound(match table.source() {
        crate::resources::TableSource::Cluster => format!(
            "the server could not find the requested resource: {named:?} is not a resource of this cluster"
        ),
        crate::resources::TableSource::Builtin => format!(
            "the server could not find the requested resource: {named:?} is not in gofe's built-in resource table, and the cluster's discovery is unavailable"
        ),
    })
}

/// `MetricValueList` for a custom metric of one object or of the objects a label selector
/// selects.
pub async fn custom_values(
    State(state): State<AppState>,
    Path((version, rest)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    check_version(&version)?;
    let request = parse_custom_path(&rest)?;
    let selector = selector_param(&query, "labelSelector")?;
    let metric_selector = selector_param(&query, "metricLabelSelector")?;
    let resource = match &request.resource {
        None => core("namespaces"),
        Some(named) => state
            .provider
            .resolve_resource(named)
            .await
            .ok_or_else(|| unknown_resource(&state, named))?,
    };
    let qualified = resource.qualified();
    let metrics = state.provider.custom_metrics();
    let not_found = || {
        ApiError::NotFound(format!(
            "metric {:?} is not served for {qualified}{}",
            request.metric,
            if request.namespace.is_some() {
                " in a namespace"
            } else {
                " (cluster-scoped)"
            }
        ))
    };
    let metric = metrics
        .get(&(qualified.clone(), request.metric.clone()))
        .ok_or_else(not_found)?;
    if metric.namespaced != request.namespace.is_some() {
        return Err(not_found());
    }
    let resource = &metric.resource;
    let names: Vec<String> = match &request.name {
        Some(n) => vec![n.clone()],
        None if selector.requirements.is_empty() && !state.objects.has_client() => Vec::new(),
        None => {
            let listed = state
                .objects
                .names(resource, request.namespace.as_deref(), &selector)
                .await?;
            if listed.is_empty() {
                return Err(ApiError::NotFound(format!(
                    "no {qualified} match the label selector {selector:?}"
                )));
            }
            listed.to_vec()
        }
    };
    let objects = Objects {
        namespace: request.namespace.clone(),
        names,
    };
    let answer = state
        .provider
        .get_custom(metric, &objects, &metric_selector)
        .await?;
    let mut by_name: BTreeMap<&str, &crate::provider::MetricValue> = BTreeMap::new();
    for item in &answer.items {
        if let Some(name) = item.labels.get(&metric.resource_label) {
            if objects.names.is_empty() || objects.names.binary_search(name).is_ok() {
                by_name.entry(name.as_str()).or_insert(item);
            }
        }
    }
    if by_name.is_empty() {
        return Err(ApiError::NotFound(format!(
            "no data for metric {:?} of the {qualified} asked for",
            request.metric
        )));
    }
    let group_version = format!("{CUSTOM_GROUP}/{version}");
    let metric_selector_json =
        (!metric_selector.requirements.is_empty()).then(|| metric_selector.to_label_selector());
    let items: Vec<Value> = by_name
        .into_iter()
        .map(|(name, v)| {
            let mut described = json!({
                "kind": resource.kind,
                "name": name,
                "apiVersion": resource.api_version(),
            });
            let namespace = if resource.is_namespace() {
                None
            } else {
                request.namespace.as_deref()
            };
            if let Some(ns) = namespace {
                described["namespace"] = json!(ns);
            }
            let mut item = json!({
                "describedObject": described,
                "timestamp": rfc3339(v.timestamp),
                "value": v.value.to_string(),
            });
            if version == "v1beta1" {
                item["metricName"] = json!(request.metric);
                item["selector"] = metric_selector_json.clone().unwrap_or(Value::Null);
            } else {
                let mut id = json!({"name": request.metric});
                if let Some(s) = &metric_selector_json {
                    id["selector"] = s.clone();
                }
                item["metric"] = id;
            }
            item
        })
        .collect();
    Ok(Json(json!({
        "kind": "MetricValueList",
        "apiVersion": group_version,
        "metadata": {},
        "items": items,
    })))
}

// === metrics.k8s.io ===

/// `APIResourceList` of `metrics.k8s.io/v1beta1`: `nodes` and `pods`.
pub async fn resource_resource_list() -> Json<Value> {
    Json(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{RESOURCE_GROUP}/{RESOURCE_VERSION}"),
        "resources": [
            {"name": "nodes", "singularName": "", "namespaced": false, "kind": "NodeMetrics", "verbs": ["get", "list"]},
            {"name": "pods", "singularName": "", "namespaced": true, "kind": "PodMetrics", "verbs": ["get", "list"]},
        ],
    }))
}

fn resource_metadata(state: &AppState) -> Result<&crate::custom::ResourceRules, ApiError> {
    state.provider.resource_rules().ok_or_else(|| {
        ApiError::NotFound("resource metrics are not configured (resourceRules)".into())
    })
}

/// The objects of a list request: the listed names, or (no client, no selector) any.
async fn list_names(
    state: &AppState,
    resource: &Resource,
    namespace: Option<&str>,
    selector: &Selector,
) -> Result<Option<Vec<String>>, ApiError> {
    if selector.requirements.is_empty() && !state.objects.has_client() {
        return Ok(Some(Vec::new()));
    }
    let names = state.objects.names(resource, namespace, selector).await?;
    Ok((!names.is_empty()).then(|| names.to_vec()))
}

/// One pod's containers: (namespace, pod) → container → (cpu, memory, timestamp).
type PodUsage = BTreeMap<(String, String), BTreeMap<String, (Option<String>, Option<String>, f64)>>;

async fn pod_metrics(
    state: &AppState,
    namespace: Option<String>,
    names: Vec<String>,
) -> Result<Vec<Value>, ApiError> {
    let rules = resource_metadata(state)?;
    let objects = Objects { namespace, names };
    let (cpu, memory) = state
        .provider
        .get_resource(ResourceTarget::Containers, &objects)
        .await
        .or_else(|e| match e {
            crate::provider::FetchError::NoData { .. } => Ok((
                std::sync::Arc::new(crate::provider::Answer::empty()),
                std::sync::Arc::new(crate::provider::Answer::empty()),
            )),
            e => Err(e),
        })?;
    let mut pods: PodUsage = BTreeMap::new();
    for (answer, rule, is_cpu) in [(&cpu, &rules.cpu, true), (&memory, &rules.memory, false)] {
        let (ns_label, pod_label, _) = rule.labels();
        for item in &answer.items {
            let pod = pod_label.as_ref().and_then(|l| item.labels.get(l));
            let container = item.labels.get(&rule.container_label);
            let ns = ns_label
                .as_ref()
                .and_then(|l| item.labels.get(l))
                .cloned()
                .or_else(|| objects.namespace.clone())
                .unwrap_or_default();
            let (Some(pod), Some(container)) = (pod, container) else {
                continue;
            };
            if !objects.names.is_empty() && objects.names.binary_search(pod).is_err() {
                continue;
            }
            let entry = pods
                .entry((ns, pod.clone()))
                .or_default()
                .entry(container.clone())
                .or_insert((None, None, item.timestamp));
            if is_cpu {
                entry.0 = Some(item.value.to_string());
                entry.2 = item.timestamp;
            } else {
                entry.1 = Some(item.value.to_string());
            }
        }
    }
    let window = go_duration(rules.window);
    Ok(pods
        .into_iter()
        .filter_map(|((ns, pod), containers)| {
            let mut timestamp = 0.0_f64;
            let containers: Vec<Value> = containers
                .into_iter()
                .filter_map(|(name, (cpu, memory, t))| {
                    timestamp = timestamp.max(t);
                    Some(json!({"name": name, "usage": {"cpu": cpu?, "memory": memory?}}))
                })
                .collect();
            (!containers.is_empty()).then(|| {
                json!({
                    "kind": "PodMetrics",
                    "apiVersion": format!("{RESOURCE_GROUP}/{RESOURCE_VERSION}"),
                    "metadata": {"name": pod, "namespace": ns, "creationTimestamp": rfc3339(timestamp)},
                    "timestamp": rfc3339(timestamp),
                    "window": window,
                    "containers": containers,
                })
            })
        })
        .collect())
}

async fn node_metrics(state: &AppState, names: Vec<String>) -> Result<Vec<Value>, ApiError> {
    let rules = resource_metadata(state)?;
    let objects = Objects {
        namespace: None,
        names,
    };
    let (cpu, memory) = match state
        .provider
        .get_resource(ResourceTarget::Nodes, &objects)
        .await
    {
        Ok(a) => a,
        Err(crate::provider::FetchError::NoData { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut nodes: BTreeMap<String, (Option<String>, Option<String>, f64)> = BTreeMap::new();
    for (answer, rule, is_cpu) in [(&cpu, &rules.cpu, true), (&memory, &rules.memory, false)] {
        let (_, _, node_label) = rule.labels();
        for item in &answer.items {
            let Some(node) = node_label.as_ref().and_then(|l| item.labels.get(l)) else {
                continue;
            };
            if !objects.names.is_empty() && objects.names.binary_search(node).is_err() {
                continue;
            }
            let entry = nodes
                .entry(node.clone())
                .or_insert((None, None, item.timestamp));
            if is_cpu {
                entry.0 = Some(item.value.to_string());
                entry.2 = item.timestamp;
            } else {
                entry.1 = Some(item.value.to_string());
            }
        }
    }
    let window = go_duration(rules.window);
    Ok(nodes
        .into_iter()
        .filter_map(|(node, (cpu, memory, t))| {
            Some(json!({
                "kind": "NodeMetrics",
                "apiVersion": format!("{RESOURCE_GROUP}/{RESOURCE_VERSION}"),
                "metadata": {"name": node, "creationTimestamp": rfc3339(t)},
                "timestamp": rfc3339(t),
                "window": window,
                "usage": {"cpu": cpu?, "memory": memory?},
            }))
        })
        .collect())
}

fn list(kind: &str, items: Vec<Value>) -> Json<Value> {
    Json(json!({
        "kind": kind,
        "apiVersion": format!("{RESOURCE_GROUP}/{RESOURCE_VERSION}"),
        "metadata": {},
        "items": items,
    }))
}

/// `PodMetricsList` of a namespace (`/namespaces/NS/pods`) or of all (`/pods`).
pub async fn pod_metrics_list(
    State(state): State<AppState>,
    namespace: Option<Path<String>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    resource_metadata(&state)?;
    let selector = selector_param(&query, "labelSelector")?;
    let namespace = namespace.map(|Path(ns)| ns);
    let Some(names) = list_names(&state, &core("pods"), namespace.as_deref(), &selector).await?
    else {
        return Ok(list("PodMetricsList", Vec::new()));
    };
    Ok(list(
        "PodMetricsList",
        pod_metrics(&state, namespace, names).await?,
    ))
}

/// One pod's `PodMetrics`.
pub async fn pod_metrics_get(
    State(state): State<AppState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let items = pod_metrics(&state, Some(namespace.clone()), vec![name.clone()]).await?;
    items.into_iter().next().map(Json).ok_or_else(|| {
        ApiError::NotFound(format!(
            "podmetrics.metrics.k8s.io {namespace}/{name}: no data"
        ))
    })
}

/// `NodeMetricsList`.
pub async fn node_metrics_list(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    resource_metadata(&state)?;
    let selector = selector_param(&query, "labelSelector")?;
    let Some(names) = list_names(&state, &core("nodes"), None, &selector).await? else {
        return Ok(list("NodeMetricsList", Vec::new()));
    };
    Ok(list("NodeMetricsList", node_metrics(&state, names).await?))
}

/// One node's `NodeMetrics`.
pub async fn node_metrics_get(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let items = node_metrics(&state, vec![name.clone()]).await?;
    items
        .into_iter()
        .next()
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("nodemetrics.metrics.k8s.io {name}: no data")))
}
