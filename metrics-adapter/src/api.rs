//! The HTTP API: `external.metrics.k8s.io/v1beta1`, `custom.metrics.k8s.io/v1beta2` (and
//! `v1beta1`) and `metrics.k8s.io/v1beta1` (see [`crate::custom_api`]) as the aggregation
//! layer and the HPA controller read them, health endpoints, OpenAPI documents and
//! `/debug/rules`.
//!
//! [`router`] is the whole API as an axum `Router`; the server wraps it with TLS and hands each
//! request the verified client certificate ([`ClientCert`]) so [`authenticate`] can decide
//! whether the user headers (`X-Remote-User`, `X-Remote-Group`, or the ones the cluster's
//! request-header settings name) are to be believed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::json;

use rustls::pki_types::CertificateDer;

use crate::provider::{FetchError, Provider};
use crate::requestheader::{FrontProxyState, RequestHeaderConfig};
use crate::selector::Selector;

/// The API group served.
pub const GROUP: &str = "external.metrics.k8s.io";
/// The version served.
pub const VERSION: &str = "v1beta1";
const GROUP_VERSION: &str = "external.metrics.k8s.io/v1beta1";

/// Who may call the API.
#[derive(Clone, Debug)]
pub enum AuthPolicy {
    /// Development: anyone, and `X-Remote-*` headers are ignored.
    None,
    /// Cluster: only clients with a certificate verified against the request-header client CA
    /// in force, and (when the list is not empty) whose common name is listed; their user
    /// headers name the end user. The settings change at run time (CA rotation); until the
    /// first are loaded every API request is refused.
    FrontProxy(Arc<FrontProxyState>),
}

/// The verified client certificate of a TLS connection, inserted by the server.
#[derive(Clone, Debug)]
pub struct ClientCert {
    /// The subject's common name, when it has one.
    pub common_name: Option<String>,
    /// The chain the client presented, leaf first (re-verified when the settings changed
    /// since the handshake).
    pub chain: Arc<[CertificateDer<'static>]>,
    /// The [`FrontProxy::generation`](crate::requestheader::FrontProxy) the handshake
    /// verified it under.
    pub generation: u64,
}

/// The end user a verified front proxy vouched for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteUser {
    /// `X-Remote-User`.
    pub name: String,
    /// Every `X-Remote-Group`.
    pub groups: Vec<String>,
}

/// State shared by the handlers.
#[derive(Clone)]
pub struct AppState {
    /// Values and rules.
    pub provider: Arc<Provider>,
    /// Who may call.
    pub auth: AuthPolicy,
    /// The adapter's own metrics.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Lists the Kubernetes objects custom and resource metrics are asked for by selector.
    pub objects: Arc<crate::objects::ObjectLister>,
}

// === errors ===

/// An API error, rendered as a Kubernetes `Status`. The message is safe for clients;
/// internal detail is logged where the error is made.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 404: unknown metric, or no data under the `error` policy.
    #[error("{0}")]
    NotFound(String),
    /// 400: a malformed selector.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no verified client certificate.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: a certificate whose name is not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// 503: Prometheus unavailable.
    #[error("{0}")]
    ServiceUnavailable(String),
    /// 500: a rule's query failed.
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    fn code_and_reason(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "NotFound"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "BadRequest"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "Unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "Forbidden"),
            ApiError::ServiceUnavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable")
            }
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
        }
    }
}

impl From<FetchError> for ApiError {
    fn from(e: FetchError) -> Self {
        match e {
            FetchError::UnknownMetric(_) | FetchError::NoData { .. } => {
                ApiError::NotFound(e.to_string())
            }
            FetchError::BadSelector(e) => ApiError::BadRequest(e.to_string()),
            FetchError::Unavailable(e) => {
                tracing::warn!(error = %e, "prometheus unavailable");
                ApiError::ServiceUnavailable(
                    "prometheus is unavailable; no value is served rather than a guessed one"
                        .into(),
                )
            }
            FetchError::Scrape(e @ crate::scrape::ScrapeError::Unavailable(_)) => {
                tracing::warn!(error = %e, "scrape source unavailable");
                ApiError::ServiceUnavailable(format!(
                    "{e}; no value is served rather than a guessed one"
                ))
            }
            FetchError::Scrape(e @ crate::scrape::ScrapeError::Unsupported(_)) => {
                ApiError::NotFound(e.to_string())
            }
            FetchError::Rule { metric, source } => {
                tracing::error!(%metric, error = %source, "rule query failed");
                ApiError::Internal(format!(
                    "the query of metric {metric:?} failed; see the adapter's log"
                ))
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, reason) = self.code_and_reason();
        let body = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": reason,
            "code": code.as_u16(),
        });
        (code, Json(body)).into_response()
    }
}

// === router ===

/// The whole API.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/apis", get(api_group_list))
        .route("/apis/external.metrics.k8s.io", get(api_group))
        .route(
            "/apis/external.metrics.k8s.io/v1beta1",
            get(api_resource_list),
        )
        .route(
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}",
            get(metric_values),
        )
        .route("/apis/custom.metrics.k8s.io", get(custom_api_group))
        .route(
            "/apis/custom.metrics.k8s.io/{version}",
            get(crate::custom_api::custom_resource_list),
        )
        .route(
            "/apis/custom.metrics.k8s.io/{version}/{*rest}",
            get(crate::custom_api::custom_values),
        )
        .route("/apis/metrics.k8s.io", get(resource_api_group))
        .route(
            "/apis/metrics.k8s.io/v1beta1",
            get(crate::custom_api::resource_resource_list),
        )
        .route(
            "/apis/metrics.k8s.io/v1beta1/pods",
            get(crate::custom_api::pod_metrics_list),
        )
        .route(
            "/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods",
            get(crate::custom_api::pod_metrics_list),
        )
        .route(
            "/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods/{name}",
            get(crate::custom_api::pod_metrics_get),
        )
        .route(
            "/apis/metrics.k8s.io/v1beta1/nodes",
            get(crate::custom_api::node_metrics_list),
        )
        .route(
            "/apis/metrics.k8s.io/v1beta1/nodes/{name}",
            get(crate::custom_api::node_metrics_get),
        )
        .route("/openapi/v2", get(openapi_v2))
        .route("/openapi/v3", get(openapi_v3_index))
        .route(
            "/openapi/v3/apis/external.metrics.k8s.io/v1beta1",
            get(openapi_v3),
        )
        .route("/debug/rules", get(debug_rules))
        .fallback(|| async {
            ApiError::NotFound("the server could not find the requested resource".into())
        })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe));
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .merge(api)
        .with_state(state)
}

/// Counts and times every API request, refusals included.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let start = std::time::Instant::now();
    let path = request.uri().path();
    let group = if path.starts_with("/apis/external.metrics.k8s.io/") {
        "external"
    } else if path.starts_with("/apis/custom.metrics.k8s.io/") {
        "custom"
    } else if path.starts_with("/apis/metrics.k8s.io/") {
        "resource"
    } else {
        "other"
    };
    let response = next.run(request).await;
    state
        .metrics
        .duration
        .observe(start.elapsed().as_secs_f64());
    state
        .metrics
        .requests
        .with_label_values(&[group, response.status().as_str()])
        .inc();
    response
}

async fn metrics(State(state): State<AppState>) -> Response {
    let generation = match &state.auth {
        AuthPolicy::None => 0,
        AuthPolicy::FrontProxy(fp) => fp.current().map_or(0, |c| c.generation),
    };
    let m = &state.metrics;
    m.requestheader_generation
        .set(i64::try_from(generation).unwrap_or(i64::MAX));
    m.rules_ready.set(i64::from(state.provider.ready()));
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.render(),
    )
        .into_response()
}

/// Checks the caller against the [`AuthPolicy`] and records the [`RemoteUser`].
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    match &state.auth {
        AuthPolicy::None => {}
        AuthPolicy::FrontProxy(front_proxy) => {
            let Some(settings) = front_proxy.current() else {
                return ApiError::Unauthorized(
                    "the adapter has not loaded the request-header CA yet".into(),
                )
                .into_response();
            };
            let Some(cert) = request.extensions().get::<ClientCert>().cloned() else {
                return ApiError::Unauthorized(
                    "a client certificate signed by the request-header CA is required".into(),
                )
                .into_response();
            };
            // Verified in the handshake under other settings: the CA may have been rotated out.
            if cert.generation != settings.generation && !settings.verifies(&cert.chain) {
                tracing::info!(
                    common_name = cert.common_name.as_deref().unwrap_or(""),
                    "client certificate not signed by the current request-header CA"
                );
                return ApiError::Unauthorized(
                    "the client certificate is not signed by the current request-header CA".into(),
                )
                .into_response();
            }
            let allowed_names = &settings.config.allowed_names;
            if !allowed_names.is_empty()
                && !cert
                    .common_name
                    .as_ref()
                    .is_some_and(|cn| allowed_names.iter().any(|a| a == cn))
            {
                tracing::warn!(
                    common_name = cert.common_name.as_deref().unwrap_or(""),
                    "client certificate name not allowed"
                );
                return ApiError::Forbidden(
                    "this client certificate may not call the adapter".into(),
                )
                .into_response();
            }
            if let Some(user) = remote_user(request.headers(), &settings.config) {
                tracing::debug!(user = %user.name, groups = ?user.groups, path = %request.uri().path(), "request");
                request.extensions_mut().insert(user);
            }
        }
    }
    next.run(request).await
}

/// The end user the headers name: the first of the user-name headers present, and every value
/// of every group header.
fn remote_user(headers: &HeaderMap, config: &RequestHeaderConfig) -> Option<RemoteUser> {
    let name = config
        .username_headers
        .iter()
        .find_map(|h| headers.get(h.as_str())?.to_str().ok())?
        .to_owned();
    let groups = config
        .group_headers
        .iter()
        .flat_map(|h| headers.get_all(h.as_str()).iter())
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    Some(RemoteUser { name, groups })
}

async fn readyz(State(state): State<AppState>) -> Response {
    if let AuthPolicy::FrontProxy(front_proxy) = &state.auth {
        if front_proxy.current().is_none() {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "request-header CA not loaded yet",
            )
                .into_response();
        }
    }
    if state.provider.ready() {
        "ok".into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "external rules not discovered yet",
        )
            .into_response()
    }
}

/// An `APIGroup` (without kind) with `versions`, the first preferred.
fn group_of(name: &str, versions: &[&str]) -> serde_json::Value {
    let versions: Vec<serde_json::Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({
        "name": name,
        "versions": versions,
        "preferredVersion": versions[0],
    })
}

fn group() -> serde_json::Value {
    group_of(GROUP, &[VERSION])
}

fn custom_group() -> serde_json::Value {
    group_of(
        crate::custom_api::CUSTOM_GROUP,
        crate::custom_api::CUSTOM_VERSIONS,
    )
}

fn resource_group() -> serde_json::Value {
    group_of(
        crate::custom_api::RESOURCE_GROUP,
        &[crate::custom_api::RESOURCE_VERSION],
    )
}

/// The groups served: external always, custom with custom rules, metrics.k8s.io with
/// resource rules.
async fn api_group_list(State(state): State<AppState>) -> Json<serde_json::Value> {
    let mut groups = vec![group()];
    if state.provider.serves_custom() {
        groups.push(custom_group());
    }
    if state.provider.resource_rules().is_some() {
        groups.push(resource_group());
    }
    Json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
}

fn as_api_group(mut g: serde_json::Value) -> Json<serde_json::Value> {
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    Json(g)
}

async fn api_group() -> Json<serde_json::Value> {
    as_api_group(group())
}

async fn custom_api_group() -> Json<serde_json::Value> {
    as_api_group(custom_group())
}

async fn resource_api_group() -> Json<serde_json::Value> {
    as_api_group(resource_group())
}

async fn api_resource_list(State(state): State<AppState>) -> Json<serde_json::Value> {
    let resources: Vec<serde_json::Value> = state
        .provider
        .rules()
        .keys()
        .map(|name| {
            json!({
                "name": name,
                "singularName": "",
                "namespaced": true,
                "kind": "ExternalMetricValueList",
                "verbs": ["get"],
            })
        })
        .collect();
    Json(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": GROUP_VERSION,
        "resources": resources,
    }))
}

fn parse_selector(query: &HashMap<String, String>) -> Result<Selector, ApiError> {
    let text = query.get("labelSelector").map_or("", String::as_str);
    Selector::parse(text).map_err(|e| ApiError::BadRequest(e.to_string()))
}

async fn metric_values(
    State(state): State<AppState>,
    Path((namespace, metric)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let selector = parse_selector(&query)?;
    let answer = state.provider.get(&metric, &namespace, &selector).await?;
    let items: Vec<serde_json::Value> = answer
        .items
        .iter()
        .map(|v| {
            json!({
                "metricName": metric,
                "metricLabels": v.labels,
                "timestamp": rfc3339(v.timestamp),
                "value": v.value.to_string(),
            })
        })
        .collect();
    Ok(Json(json!({
        "kind": "ExternalMetricValueList",
        "apiVersion": GROUP_VERSION,
        "metadata": {},
        "items": items,
    })))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DebugRule<'a> {
    metric: String,
    rule: &'a crate::rules::Rule,
    #[serde(skip_serializing_if = "Option::is_none")]
    rendered_query: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    render_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_result: Option<crate::provider::LastResult>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DebugCustom<'a> {
    /// `pods/METRIC`, as discovery lists it.
    name: String,
    #[serde(flatten)]
    metric: &'a crate::custom::CustomMetric,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_result: Option<crate::provider::LastResult>,
}

async fn debug_rules(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let selector = parse_selector(&query)?;
    let namespace = query.get("namespace").map_or("default", String::as_str);
    let last = state.provider.last_results();
    let all = state.provider.rules();
    let rules: Vec<DebugRule<'_>> = all
        .iter()
        .map(|(name, rule)| {
            let rendered = rule.render(namespace, &selector);
            DebugRule {
                metric: name.clone(),
                rule,
                render_error: rendered.as_ref().err().map(ToString::to_string),
                rendered_query: rendered.ok(),
                last_result: last.get(name).cloned(),
            }
        })
        .collect();
    let custom_all = state.provider.custom_metrics();
    let custom: Vec<DebugCustom<'_>> = custom_all
        .iter()
        .map(|((resource, metric), m)| {
            let name = format!("{resource}/{metric}");
            DebugCustom {
                last_result: last.get(&name).cloned(),
                name,
                metric: m,
            }
        })
        .collect();
    Ok(Json(json!({
        "namespace": namespace,
        "labelSelector": selector.to_string(),
        "prometheusQueries": state.provider.queries(),
        "cacheSlots": state.provider.cache_len(),
        "rules": rules,
        "customMetrics": custom,
        "resourceRules": state.provider.resource_rules(),
    })))
}

// === OpenAPI ===

fn definitions() -> serde_json::Value {
    json!({
        "io.k8s.metrics.pkg.apis.external_metrics.v1beta1.ExternalMetricValue": {
            "description": "A metric value for an external metric: one series of the metric, its labels, the time and the value.",
            "type": "object",
            "required": ["metricName", "metricLabels", "timestamp", "value"],
            "properties": {
                "metricName": {"type": "string"},
                "metricLabels": {"type": "object", "additionalProperties": {"type": "string"}},
                "timestamp": {"type": "string", "format": "date-time"},
                "window": {"type": "integer", "format": "int64"},
                "value": {"type": "string", "description": "A Kubernetes quantity."},
            },
        },
        "io.k8s.metrics.pkg.apis.external_metrics.v1beta1.ExternalMetricValueList": {
            "description": "A list of values of an external metric.",
            "type": "object",
            "required": ["items"],
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": {"type": "object"},
                "items": {"type": "array", "items": {"$ref": "#/definitions/io.k8s.metrics.pkg.apis.external_metrics.v1beta1.ExternalMetricValue"}},
            },
            "x-kubernetes-group-version-kind": [{"group": GROUP, "kind": "ExternalMetricValueList", "version": VERSION}],
        },
    })
}

fn openapi_path() -> serde_json::Value {
    json!({
        "get": {
            "description": "The values of an external metric in a namespace, filtered by labelSelector.",
            "operationId": "listExternalMetricValue",
            "produces": ["application/json"],
            "parameters": [
                {"name": "namespace", "in": "path", "required": true, "type": "string"},
                {"name": "metric", "in": "path", "required": true, "type": "string"},
                {"name": "labelSelector", "in": "query", "required": false, "type": "string"},
            ],
            "responses": {"200": {"description": "OK", "schema": {"$ref": "#/definitions/io.k8s.metrics.pkg.apis.external_metrics.v1beta1.ExternalMetricValueList"}}},
        }
    })
}

async fn openapi_v2() -> Json<serde_json::Value> {
    Json(json!({
        "swagger": "2.0",
        "info": {"title": "gofe metrics adapter", "version": env!("CARGO_PKG_VERSION")},
        "paths": {"/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}": openapi_path()},
        "definitions": definitions(),
    }))
}

async fn openapi_v3_index() -> Json<serde_json::Value> {
    Json(json!({
        "paths": {
            "apis/external.metrics.k8s.io/v1beta1": {
                "serverRelativeURL": "/openapi/v3/apis/external.metrics.k8s.io/v1beta1"
            }
        }
    }))
}

async fn openapi_v3() -> Json<serde_json::Value> {
    let schemas: BTreeMap<String, serde_json::Value> = definitions()
        .as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    let schemas = serde_json::to_string(&schemas)
        .unwrap_or_default()
        .replace("#/definitions/", "#/components/schemas/");
    let schemas: serde_json::Value = serde_json::from_str(&schemas).unwrap_or_default();
    Json(json!({
        "openapi": "3.0.0",
        "info": {"title": "gofe metrics adapter", "version": env!("CARGO_PKG_VERSION")},
        "paths": {
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}": {
                "get": {
                    "operationId": "listExternalMetricValue",
                    "parameters": [
                        {"name": "namespace", "in": "path", "required": true, "schema": {"type": "string"}},
                        {"name": "metric", "in": "path", "required": true, "schema": {"type": "string"}},
                        {"name": "labelSelector", "in": "query", "schema": {"type": "string"}},
                    ],
                    "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/io.k8s.metrics.pkg.apis.external_metrics.v1beta1.ExternalMetricValueList"}}}}},
                }
            }
        },
        "components": {"schemas": schemas},
    }))
}

// === time ===

/// Unix seconds as RFC 3339 UTC with second precision, as Kubernetes writes `metav1.Time`.
pub fn rfc3339(unix: f64) -> String {
    let secs = if unix.is_finite() {
        unix.floor() as i64
    } else {
        0
    };
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::CacheConfig;
    use axum::body::Body;
    use http_body_util::BodyExt;
    use std::time::Duration;
    use tower::ServiceExt;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(0.0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400.5), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_646_096.0), "2026-11-25T22:34:56Z");
    }

    fn state(auth: AuthPolicy) -> AppState {
        // Nothing listens on port 1: every query is "unavailable".
        let prom = gofe_prom::Client::new(&gofe_prom::ClientConfig {
            timeout: Duration::from_millis(200),
            ..gofe_prom::ClientConfig::new("http://127.0.0.1:1")
        })
        .unwrap();
        AppState {
            provider: Arc::new(Provider::new(
                prom,
                Default::default(),
                CacheConfig::default(),
            )),
            auth,
            metrics: Default::default(),
            objects: Arc::new(crate::objects::ObjectLister::new(None, Duration::ZERO)),
        }
    }

    /// A certificate as the server hands it on: verified under the settings of `generation`.
    fn cert(cn: &str, generation: u64) -> ClientCert {
        ClientCert {
            common_name: Some(cn.to_owned()),
            chain: Arc::from(Vec::new()),
            generation,
        }
    }

    fn ca_pem() -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    async fn call(
        auth: AuthPolicy,
        uri: &str,
        cert: Option<ClientCert>,
    ) -> (StatusCode, serde_json::Value) {
        let mut req = axum::http::Request::get(uri).body(Body::empty()).unwrap();
        if let Some(cert) = cert {
            req.extensions_mut().insert(cert);
        }
        let resp = router(state(auth)).oneshot(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    #[tokio::test]
    async fn discovery_documents() {
        let (s, b) = call(AuthPolicy::None, "/apis", None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            b["groups"][0]["preferredVersion"]["groupVersion"],
            GROUP_VERSION
        );
        let (_, b) = call(AuthPolicy::None, "/apis/external.metrics.k8s.io", None).await;
        assert_eq!(b["kind"], "APIGroup");
        let (_, b) = call(
            AuthPolicy::None,
            "/apis/external.metrics.k8s.io/v1beta1",
            None,
        )
        .await;
        assert_eq!(b["kind"], "APIResourceList");
        let names: Vec<&str> = b["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"http_requests_per_second"), "{names:?}");
        let (s, b) = call(AuthPolicy::None, "/openapi/v2", None).await;
        assert_eq!((s, b["swagger"].as_str()), (StatusCode::OK, Some("2.0")));
    }

    #[tokio::test]
    async fn errors_are_status_objects() {
        let base = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default";
        let (s, b) = call(AuthPolicy::None, &format!("{base}/nope"), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert_eq!(
            (b["kind"].as_str(), b["reason"].as_str(), b["code"].as_u64()),
            (Some("Status"), Some("NotFound"), Some(404))
        );
        let (s, b) = call(
            AuthPolicy::None,
            &format!("{base}/http_requests_per_second?labelSelector=service%3D%22x%22%7D"),
            None,
        )
        .await;
        assert_eq!(
            (s, b["reason"].as_str()),
            (StatusCode::BAD_REQUEST, Some("BadRequest"))
        );
        let (s, b) = call(
            AuthPolicy::None,
            &format!("{base}/http_requests_per_second?labelSelector=service%3Dapi"),
            None,
        )
        .await;
        assert_eq!(
            (s, b["code"].as_u64()),
            (StatusCode::SERVICE_UNAVAILABLE, Some(503))
        );
        assert!(
            !b["message"].as_str().unwrap().contains("127.0.0.1"),
            "internal detail leaked: {b}"
        );
    }

    #[tokio::test]
    async fn front_proxy_auth() {
        let front_proxy = Arc::new(FrontProxyState::new());
        let policy = AuthPolicy::FrontProxy(front_proxy.clone());
        // Before the settings are loaded: nobody, and not ready.
        let (s, b) = call(policy.clone(), "/apis", Some(cert("front-proxy-client", 0))).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
        assert!(b["message"].as_str().unwrap().contains("not loaded"), "{b}");
        let (s, _) = call(policy.clone(), "/readyz", None).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);

        let g = front_proxy
            .set(
                "test",
                RequestHeaderConfig::new(ca_pem(), vec!["front-proxy-client".into()]),
            )
            .unwrap()
            .unwrap()
            .generation;
        let (s, _) = call(policy.clone(), "/apis", None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, _) = call(policy.clone(), "/apis", Some(cert("someone-else", g))).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, _) = call(policy.clone(), "/apis", Some(cert("front-proxy-client", g))).await;
        assert_eq!(s, StatusCode::OK);
        let (s, _) = call(policy.clone(), "/healthz", None).await;
        assert_eq!(s, StatusCode::OK);

        // Verified under older settings: re-verified against the current CA, which did not
        // sign it (here: an empty chain).
        let (s, b) = call(
            policy.clone(),
            "/apis",
            Some(cert("front-proxy-client", g - 1)),
        )
        .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
        assert!(b["message"].as_str().unwrap().contains("current"), "{b}");

        // Names now come from the new settings: any name the CA signs.
        let g = front_proxy
            .set("test", RequestHeaderConfig::new(ca_pem(), vec![]))
            .unwrap()
            .unwrap()
            .generation;
        let (s, _) = call(policy, "/apis", Some(cert("someone-else", g))).await;
        assert_eq!(s, StatusCode::OK);
    }

    #[tokio::test]
    async fn api_requests_are_counted_by_code_and_metrics_need_no_certificate() {
        let front_proxy = Arc::new(FrontProxyState::new());
        let state = state(AuthPolicy::FrontProxy(front_proxy.clone()));
        let app = router(state.clone());
        let get = |uri: &str| axum::http::Request::get(uri).body(Body::empty()).unwrap();
        let text = |app: Router| async move {
            let resp = app.oneshot(get("/metrics")).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            String::from_utf8(
                resp.into_body()
                    .collect()
                    .await
                    .unwrap()
                    .to_bytes()
                    .to_vec(),
            )
            .unwrap()
        };
        assert!(text(app.clone())
            .await
            .contains("gofe_adapter_requestheader_generation 0"));
        for _ in 0..2 {
            let resp = app.clone().oneshot(get("/apis")).await.unwrap();
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        }
        let resp = app.clone().oneshot(get("/healthz")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        front_proxy
            .set("test", RequestHeaderConfig::new(ca_pem(), vec![]))
            .unwrap();
        let t = text(app).await;
        assert!(
            t.contains(r#"gofe_adapter_requests_total{code="401",group="other"} 2"#),
            "{t}"
        );
        assert!(
            !t.contains(r#"code="200""#),
            "health checks are not API requests: {t}"
        );
        assert!(
            t.contains("gofe_adapter_request_duration_seconds_count 2"),
            "{t}"
        );
        assert!(t.contains("gofe_adapter_requestheader_generation 1"), "{t}");
        assert!(t.contains("gofe_adapter_external_rules_ready"), "{t}");
    }

    #[test]
    fn remote_user_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-remote-user", "alice".parse().unwrap());
        h.append("x-remote-group", "dev".parse().unwrap());
        h.append("x-remote-group", "system:authenticated".parse().unwrap());
        h.insert("x-proxy-user", "bob".parse().unwrap());
        h.insert("x-proxy-groups", "ops".parse().unwrap());
        let defaults = RequestHeaderConfig::new(String::new(), vec![]);
        assert_eq!(
            remote_user(&h, &defaults),
            Some(RemoteUser {
                name: "alice".into(),
                groups: vec!["dev".into(), "system:authenticated".into()]
            })
        );
        // The cluster's own header names (requestheader-username-headers, ...).
        let custom = RequestHeaderConfig {
            username_headers: vec!["X-Absent".into(), "X-Proxy-User".into()],
            group_headers: vec!["X-Proxy-Groups".into()],
            ..defaults.clone()
        };
        assert_eq!(
            remote_user(&h, &custom),
            Some(RemoteUser {
                name: "bob".into(),
                groups: vec!["ops".into()]
            })
        );
        let none = RequestHeaderConfig {
            username_headers: vec![],
            ..defaults
        };
        assert_eq!(remote_user(&h, &none), None);
    }
}
