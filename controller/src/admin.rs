//! The controller's HTTP endpoint: `/decisions`, `/debug/queries`, `/metrics`, `/ready`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::Shared;

/// The admin routes over the controller's shared state.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/decisions", get(decisions))
        .route("/decisions/{cluster}", get(cluster_decisions))
        .route("/debug/queries", get(queries))
        .route("/metrics", get(metrics))
        .route("/ready", get(ready))
        .with_state(shared)
}

/// Serves the admin routes on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    if let Err(e) = axum::serve(listener, router(shared)).await {
        tracing::error!(error = %e, "controller admin server stopped");
    }
}

async fn decisions(State(s): State<Arc<Shared>>) -> Response {
    match s.decisions.read() {
        Ok(d) => Json(d.clone()).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn cluster_decisions(State(s): State<Arc<Shared>>, Path(cluster): Path<String>) -> Response {
    let Ok(d) = s.decisions.read() else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    match d.clusters.get(&cluster) {
        Some(c) => Json(c.clone()).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no cluster {cluster:?}\n")).into_response(),
    }
}

async fn queries(State(s): State<Arc<Shared>>) -> Response {
    match s.queries.read() {
        Ok(q) => Json(q.clone()).into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics_text(),
    )
        .into_response()
}

async fn ready(State(s): State<Arc<Shared>>) -> Response {
    let decided = s
        .decisions
        .read()
        .map(|d| d.decided_at_unix > 0)
        .unwrap_or(false);
    if decided {
        (StatusCode::OK, "READY\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "NO DECISION YET\n").into_response()
    }
}
