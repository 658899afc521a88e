//! The HTTP API: `external.metrics.k8s.io/v1beta1` as the aggregation layer and the HPA
//! controller read it, health endpoints, OpenAPI documents and `/debug/rules`.
//!
//! [`router`] is the whole API as an axum `Router`; the server wraps it with TLS and hands each
//! request the verified client certificate ([`ClientCert`]) so [`authenticate`] can decide
//! whether the `X-Remote-User`/`X-Remote-Group` headers are to be believed.

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

use crate::provider::{FetchError, Provider};
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
    /// Cluster: only clients with a certificate verified against the request-header client CA,
    /// and (when the list is not empty) whose common name is listed; their `X-Remote-User` and
    /// `X-Remote-Group` headers name the end user.
    FrontProxy {
        /// Allowed common names (`--requestheader-allowed-names`); empty allows any.
        allowed_names: Vec<String>,
    },
}

/// The verified client certificate of a TLS connection, inserted by the server.
#[derive(Clone, Debug)]
pub struct ClientCert {
    /// The subject's common name, when it has one.
    pub common_name: Option<String>,
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
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .merge(api)
        .with_state(state)
}

/// Checks the caller against the [`AuthPolicy`] and records the [`RemoteUser`].
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    match &state.auth {
        AuthPolicy::None => {}
        AuthPolicy::FrontProxy { allowed_names } => {
            let Some(cert) = request.extensions().get::<ClientCert>().cloned() else {
                return ApiError::Unauthorized(
                    "a client certificate signed by the request-header CA is required".into(),
                )
                .into_response();
            };
            if !allowed_names.is_empty()
                && !cert
                    .common_name
                    .as_ref()
                    .is_some_and(|cn| allowed_names.iter().any(|a| a == cn))
            {
                tracing::warn!(common_name = ?cert.common_name, "client certificate name not allowed");
                return ApiError::Forbidden(
                    "this client certificate may not call the adapter".into(),
                )
                .into_response();
            }
            if let Some(user) = remote_user(request.headers()) {
                tracing::debug!(user = %user.name, groups = ?user.groups, path = %request.uri().path(), "request");
                request.extensions_mut().insert(user);
            }
        }
    }
    next.run(request).await
}

fn remote_user(headers: &HeaderMap) -> Option<RemoteUser> {
    let name = headers.get("x-remote-user")?.to_str().ok()?.to_owned();
    let groups = headers
        .get_all("x-remote-group")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    Some(RemoteUser { name, groups })
}

async fn readyz(State(state): State<AppState>) -> Response {
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

fn group_version() -> serde_json::Value {
    json!({"groupVersion": GROUP_VERSION, "version": VERSION})
}

fn group() -> serde_json::Value {
    json!({
        "name": GROUP,
        "versions": [group_version()],
        "preferredVersion": group_version(),
    })
}

async fn api_group_list() -> Json<serde_json::Value> {
    Json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [group()]}))
}

async fn api_group() -> Json<serde_json::Value> {
    let mut g = group();
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    Json(g)
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
    rendered_query: Result<String, String>,
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
        .map(|(name, rule)| DebugRule {
            metric: name.clone(),
            rule,
            rendered_query: rule.render(namespace, &selector).map_err(|e| e.to_string()),
            last_result: last.get(name).cloned(),
        })
        .collect();
    Ok(Json(json!({
        "namespace": namespace,
        "labelSelector": selector.to_string(),
        "prometheusQueries": state.provider.queries(),
        "cacheSlots": state.provider.cache_len(),
        "rules": rules,
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
        }
    }

    async fn call(
        auth: AuthPolicy,
        uri: &str,
        cert: Option<&str>,
    ) -> (StatusCode, serde_json::Value) {
        let mut req = axum::http::Request::get(uri).body(Body::empty()).unwrap();
        if let Some(cn) = cert {
            req.extensions_mut().insert(ClientCert {
                common_name: Some(cn.to_owned()),
            });
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
        let policy = AuthPolicy::FrontProxy {
            allowed_names: vec!["front-proxy-client".into()],
        };
        let (s, _) = call(policy.clone(), "/apis", None).await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, _) = call(policy.clone(), "/apis", Some("someone-else")).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
        let (s, _) = call(policy.clone(), "/apis", Some("front-proxy-client")).await;
        assert_eq!(s, StatusCode::OK);
        let (s, _) = call(policy, "/healthz", None).await;
        assert_eq!(s, StatusCode::OK);
    }

    #[test]
    fn remote_user_headers() {
        let mut h = HeaderMap::new();
        h.insert("x-remote-user", "alice".parse().unwrap());
        h.append("x-remote-group", "dev".parse().unwrap());
        h.append("x-remote-group", "system:authenticated".parse().unwrap());
        assert_eq!(
            remote_user(&h),
            Some(RemoteUser {
                name: "alice".into(),
                groups: vec!["dev".into(), "system:authenticated".into()]
            })
        );
    }
}
