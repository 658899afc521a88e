//! A stand-in for the Kubernetes API server, for `bench/run.sh`'s custom-metrics runs (no API
//! server can run on the benchmark machine): it serves the discovery documents the adapter reads
//! (`/api`, `/api/v1`, `/apis`, `/apis/networking.k8s.io/v1`) and the Pods of namespace
//! `bench` — SERVICES services × PODS_PER_SERVICE pods named `svc-N-E`, labelled `app=svc-N` —
//! as a `PodList` filtered by `labelSelector` equalities (`app=svc-3`; other requirements are
//! left to the adapter, which filters again). `/stats` reports the Pod lists served.
//!
//! ```text
//! cargo run --release -p gofe-metrics-adapter --example api_stand_in -- ADDR SERVICES PODS_PER_SERVICE
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

struct Cluster {
    /// (name, app label) of every Pod.
    pods: Vec<(String, String)>,
    lists: AtomicU64,
}

fn resource(name: &str, singular: &str, kind: &str, namespaced: bool) -> Value {
    json!({"name": name, "singularName": singular, "namespaced": namespaced, "kind": kind,
           "verbs": ["get", "list", "watch"]})
}

/// `app=svc-3,tier==gold` → [("app", "svc-3"), ("tier", "gold")]; anything else is ignored.
fn equalities(selector: &str) -> Vec<(String, String)> {
    selector
        .split(',')
        .filter_map(|r| {
            let (k, v) = r.split_once("==").or_else(|| r.split_once('='))?;
            let k = k.trim();
            (!k.ends_with('!')).then(|| (k.to_owned(), v.trim().to_owned()))
        })
        .collect()
}

async fn pods(
    State(cluster): State<Arc<Cluster>>,
    Query(query): Query<HashMap<String, String>>,
) -> Json<Value> {
    cluster.lists.fetch_add(1, Ordering::Relaxed);
    let wanted = equalities(query.get("labelSelector").map_or("", String::as_str));
    let items: Vec<Value> = cluster
        .pods
        .iter()
        .filter(|(_, app)| wanted.iter().all(|(k, v)| k == "app" && v == app))
        .map(|(name, app)| {
            json!({"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": name, "namespace": "bench", "labels": {"app": app}}})
        })
        .collect();
    Json(
        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "1"},
                "items": items}),
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        return Err("usage: api_stand_in ADDR SERVICES PODS_PER_SERVICE".into());
    }
    let addr: SocketAddr = args[0].parse().map_err(|e| format!("ADDR: {e}"))?;
    let services: usize = args[1].parse().map_err(|e| format!("SERVICES: {e}"))?;
    let per: usize = args[2]
        .parse()
        .map_err(|e| format!("PODS_PER_SERVICE: {e}"))?;
    let cluster = Arc::new(Cluster {
        pods: (0..services)
            .flat_map(|s| (0..per).map(move |e| (format!("svc-{s}-{e}"), format!("svc-{s}"))))
            .collect(),
        lists: AtomicU64::new(0),
    });
    let core = json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "v1",
        "resources": [resource("namespaces", "namespace", "Namespace", false),
                      resource("pods", "pod", "Pod", true),
                      resource("nodes", "node", "Node", false)]});
    let networking = json!({"kind": "APIResourceList", "apiVersion": "v1",
        "groupVersion": "networking.k8s.io/v1",
        "resources": [resource("ingresses", "ingress", "Ingress", true)]});
    let gv = json!({"groupVersion": "networking.k8s.io/v1", "version": "v1"});
    let groups = json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": [
        {"name": "networking.k8s.io", "versions": [gv.clone()], "preferredVersion": gv}]});
    let app = Router::new()
        .route(
            "/api",
            get(|| async { Json(json!({"kind": "APIVersions", "versions": ["v1"]})) }),
        )
        .route("/api/v1", get(move || async move { Json(core) }))
        .route("/apis", get(move || async move { Json(groups) }))
        .route(
            "/apis/networking.k8s.io/v1",
            get(move || async move { Json(networking) }),
        )
        .route("/api/v1/namespaces/bench/pods", get(pods))
        .route(
            "/stats",
            get(|State(c): State<Arc<Cluster>>| async move {
                Json(json!({"podLists": c.lists.load(Ordering::Relaxed)}))
            }),
        )
        .with_state(cluster);
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("binding {addr}: {e}"))?;
    axum::serve(listener, app).await.map_err(|e| e.to_string())
}
