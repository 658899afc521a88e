//! An in-memory Kubernetes API server behind kube-rs's `Client::new(service, ..)`: the mock-service
//! style of kube-rs's own tests (no API server can run on this machine), grown into a small
//! fake that keeps objects so that several clients see each other's writes.
//!
//! It serves what gofe's controller uses: list and watch (with replay from a
//! `resourceVersion`), get, create (409 `AlreadyExists`), replace guarded by
//! `resourceVersion` (409 `Conflict`), JSON merge patch of objects and of their `status`
//! subresource, and delete; and fixed documents at exact paths (API discovery). Each client is
//! tagged so a test can tell who wrote what.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use serde_json::{json, Value};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// One request as the fake saw it.
#[derive(Clone, Debug)]
pub struct Logged {
    /// The client's tag.
    pub client: String,
    /// The method.
    pub method: Method,
    /// The path (no query).
    pub path: String,
    /// The JSON body, if any.
    pub body: Option<Value>,
}

#[derive(Default)]
struct State {
    /// (collection path without namespace, namespace, name) → object.
    objects: BTreeMap<(String, String, String), Value>,
    /// Every change: (resourceVersion, collection, namespace, watch event JSON).
    history: Vec<(u64, String, String, Value)>,
    watchers: Vec<(
        String,
        Option<String>,
        tokio::sync::mpsc::UnboundedSender<Bytes>,
    )>,
    rv: u64,
    log: Vec<Logged>,
    /// While set, every request is answered 503 and no watch stays open (an unreachable
    /// API server, as a remote cluster behind a broken link is).
    down: bool,
    /// Fixed documents by exact path (discovery: `/api`, `/apis/GROUP/VERSION`).
    documents: BTreeMap<String, Value>,
}

/// The fake API server.
#[derive(Clone, Default)]
pub struct FakeApi {
    state: Arc<Mutex<State>>,
}

/// A path taken apart: `/apis/GROUP/VERSION[/namespaces/NS]/RESOURCE[/NAME[/SUB]]`.
struct Parsed {
    collection: String,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse(path: &str) -> Option<Parsed> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (prefix, rest) = match *parts.first()? {
        "api" => (format!("/api/{}", parts.get(1)?), &parts[2..]),
        "apis" => (
            format!("/apis/{}/{}", parts.get(1)?, parts.get(2)?),
            &parts[3..],
        ),
        _ => return None,
    };
    let (namespace, rest) = if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        (Some(rest[1].to_owned()), &rest[2..])
    } else {
        (None, rest)
    };
    Some(Parsed {
        collection: format!("{prefix}/{}", rest.first()?),
        namespace,
        name: rest.get(1).map(|s| (*s).to_owned()),
        sub: rest.get(2).map(|s| (*s).to_owned()),
    })
}

fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                      "message": message, "reason": reason, "code": code.as_u16()});
    respond(code, &body)
}

fn respond(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed_unsync())
        .expect("response")
}

impl FakeApi {
    /// A client of this fake, tagged `tag` in the log.
    pub fn client(&self, tag: &str) -> kube::Client {
        kube::Client::new(
            FakeClient {
                api: self.clone(),
                tag: tag.to_owned(),
            },
            "default",
        )
    }

    /// Stores `object` (its `apiVersion`, `kind`, `metadata.namespace` and `metadata.name`
    /// say where) as a create or replace would, telling watchers.
    pub fn put(&self, collection: &str, object: Value) {
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        let mut st = self.state.lock().unwrap();
        let existed = st
            .objects
            .contains_key(&(collection.to_owned(), ns.clone(), name.clone()));
        st.store(
            collection,
            &ns,
            &name,
            object,
            if existed { "MODIFIED" } else { "ADDED" },
        );
    }

    /// The stored object.
    pub fn get(&self, collection: &str, ns: &str, name: &str) -> Option<Value> {
        self.state
            .lock()
            .unwrap()
            .objects
            .get(&(collection.to_owned(), ns.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Serves `document` at GET `path` exactly, before any object route (discovery
    /// documents: `/api`, `/api/v1`, `/apis`, `/apis/GROUP/VERSION`); replaces an earlier one.
    pub fn serve(&self, path: &str, document: Value) {
        self.state
            .lock()
            .unwrap()
            .documents
            .insert(path.to_owned(), document);
    }

    /// Makes the server unreachable (`true`: open watches end, every request gets 503) or
    /// reachable again (`false`); the objects stay.
    pub fn set_down(&self, down: bool) {
        let mut st = self.state.lock().unwrap();
        st.down = down;
        if down {
            st.watchers.clear();
        }
    }

    /// Every request so far.
    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    async fn handle(&self, tag: &str, req: Request<kube::client::Body>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let bytes = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let json: Option<Value> = serde_json::from_slice(&bytes).ok();
        let path = parts.uri.path().to_owned();
        let query = parts.uri.query().unwrap_or_default().to_owned();
        if self.state.lock().unwrap().down {
            return status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "the API server is down",
            );
        }
        if parts.method == Method::GET {
            let mut st = self.state.lock().unwrap();
            if let Some(doc) = st.documents.get(&path).cloned() {
                st.log.push(Logged {
                    client: tag.to_owned(),
                    method: parts.method.clone(),
                    path: path.clone(),
                    body: None,
                });
                return respond(StatusCode::OK, &doc);
            }
        }
        let Some(p) = parse(&path) else {
            return status(StatusCode::NOT_FOUND, "NotFound", "no such path");
        };
        let mut st = self.state.lock().unwrap();
        st.log.push(Logged {
            client: tag.to_owned(),
            method: parts.method.clone(),
            path: path.clone(),
            body: json.clone(),
        });
        let ns = p.namespace.clone().unwrap_or_default();
        match (&parts.method, &p.name) {
            (&Method::GET, None) => {
                let param = |k: &str| {
                    query
                        .split('&')
                        .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
                        .map(str::to_owned)
                };
                if param("watch").as_deref() == Some("true") {
                    let since: u64 = param("resourceVersion")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Bytes>();
                    for (rv, coll, ons, event) in &st.history {
                        if *rv > since
                            && *coll == p.collection
                            && p.namespace.as_ref().is_none_or(|n| n == ons)
                        {
                            let _ = tx.send(Bytes::from(format!("{event}\n")));
                        }
                    }
                    st.watchers
                        .push((p.collection.clone(), p.namespace.clone(), tx));
                    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                        rx.recv()
                            .await
                            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
                    });
                    return Response::builder()
                        .status(StatusCode::OK)
                        .header("content-type", "application/json")
                        .body(StreamBody::new(stream).boxed_unsync())
                        .expect("response");
                }
                let items: Vec<Value> = st
                    .objects
                    .iter()
                    .filter(|((c, ons, _), _)| {
                        *c == p.collection && p.namespace.as_ref().is_none_or(|n| n == ons)
                    })
                    .map(|(_, v)| v.clone())
                    .collect();
                let rv = st.rv.to_string();
                respond(
                    StatusCode::OK,
                    &json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": rv}, "items": items}),
                )
            }
            (&Method::GET, Some(name)) => {
                match st
                    .objects
                    .get(&(p.collection.clone(), ns.clone(), name.clone()))
                {
                    Some(o) => respond(StatusCode::OK, o),
                    None => status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        &format!("{name} not found"),
                    ),
                }
            }
            (&Method::POST, None) => {
                let Some(mut obj) = json else {
                    return status(StatusCode::BAD_REQUEST, "BadRequest", "no body");
                };
                let name = obj["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                if name.is_empty() {
                    // Events are created with generateName-less names by kube's recorder; give
                    // nameless objects one.
                    let n = format!("generated-{}", st.rv + 1);
                    obj["metadata"]["name"] = json!(n);
                    obj["metadata"]["namespace"] = json!(ns);
                    let stored = st.store(&p.collection, &ns, &n, obj, "ADDED");
                    return respond(StatusCode::CREATED, &stored);
                }
                if st
                    .objects
                    .contains_key(&(p.collection.clone(), ns.clone(), name.clone()))
                {
                    return status(
                        StatusCode::CONFLICT,
                        "AlreadyExists",
                        &format!("{name} already exists"),
                    );
                }
                obj["metadata"]["namespace"] = json!(ns);
                let stored = st.store(&p.collection, &ns, &name, obj, "ADDED");
                respond(StatusCode::CREATED, &stored)
            }
            (&Method::PUT, Some(name)) => {
                let Some(obj) = json else {
                    return status(StatusCode::BAD_REQUEST, "BadRequest", "no body");
                };
                let key = (p.collection.clone(), ns.clone(), name.clone());
                let Some(current) = st.objects.get(&key) else {
                    return status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        &format!("{name} not found"),
                    );
                };
                if obj["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"] {
                    return status(
                        StatusCode::CONFLICT,
                        "Conflict",
                        "the object has been modified; please apply your changes to the latest version and try again",
                    );
                }
                let stored = st.store(&p.collection, &ns, name, obj, "MODIFIED");
                respond(StatusCode::OK, &stored)
            }
            (&Method::PATCH, Some(name)) => {
                let Some(patch) = json else {
                    return status(StatusCode::BAD_REQUEST, "BadRequest", "no body");
                };
                let key = (p.collection.clone(), ns.clone(), name.clone());
                let Some(mut obj) = st.objects.get(&key).cloned() else {
                    return status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        &format!("{name} not found"),
                    );
                };
                if p.sub.as_deref() == Some("status") {
                    merge(&mut obj, &json!({"status": patch["status"].clone()}));
                } else {
                    let mut patch = patch.clone();
                    if let Some(m) = patch.as_object_mut() {
                        m.remove("status");
                    }
                    merge(&mut obj, &patch);
                }
                let stored = st.store(&p.collection, &ns, name, obj, "MODIFIED");
                respond(StatusCode::OK, &stored)
            }
            (&Method::DELETE, Some(name)) => {
                let key = (p.collection.clone(), ns.clone(), name.clone());
                match st.objects.remove(&key) {
                    Some(obj) => {
                        st.rv += 1;
                        let rv = st.rv;
                        st.notify(
                            rv,
                            &p.collection,
                            &ns,
                            json!({"type": "DELETED", "object": obj}),
                        );
                        respond(StatusCode::OK, &obj)
                    }
                    None => status(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        &format!("{name} not found"),
                    ),
                }
            }
            _ => status(
                StatusCode::METHOD_NOT_ALLOWED,
                "MethodNotAllowed",
                "not supported",
            ),
        }
    }

    /// Deletes an object, telling watchers.
    pub fn delete(&self, collection: &str, ns: &str, name: &str) {
        let mut st = self.state.lock().unwrap();
        if let Some(obj) =
            st.objects
                .remove(&(collection.to_owned(), ns.to_owned(), name.to_owned()))
        {
            st.rv += 1;
            let rv = st.rv;
            st.notify(
                rv,
                collection,
                ns,
                json!({"type": "DELETED", "object": obj}),
            );
        }
    }
}

impl State {
    fn store(
        &mut self,
        collection: &str,
        ns: &str,
        name: &str,
        mut obj: Value,
        kind: &str,
    ) -> Value {
        self.rv += 1;
        let rv = self.rv;
        let key = (collection.to_owned(), ns.to_owned(), name.to_owned());
        let generation = self
            .objects
            .get(&key)
            .map(|o| {
                let g = o["metadata"]["generation"].as_i64().unwrap_or(1);
                if o.get("spec") != obj.get("spec") {
                    g + 1
                } else {
                    g
                }
            })
            .unwrap_or(1);
        if let Some(old) = self.objects.get(&key) {
            if obj.get("status").is_none() {
                if let Some(s) = old.get("status") {
                    obj["status"] = s.clone();
                }
            }
            obj["metadata"]["uid"] = old["metadata"]["uid"].clone();
        } else {
            obj["metadata"]["uid"] = json!(format!("uid-{rv}"));
        }
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        obj["metadata"]["generation"] = json!(generation);
        if !ns.is_empty() {
            obj["metadata"]["namespace"] = json!(ns);
        }
        self.objects.insert(key, obj.clone());
        self.notify(
            rv,
            collection,
            ns,
            json!({"type": kind, "object": obj.clone()}),
        );
        obj
    }

    fn notify(&mut self, rv: u64, collection: &str, ns: &str, event: Value) {
        self.history
            .push((rv, collection.to_owned(), ns.to_owned(), event.clone()));
        let line = Bytes::from(format!("{event}\n"));
        self.watchers.retain(|(c, wns, tx)| {
            if c != collection || wns.as_ref().is_some_and(|n| n != ns) {
                return !tx.is_closed();
            }
            tx.send(line.clone()).is_ok()
        });
    }
}

/// One tagged client's view of the fake.
#[derive(Clone)]
struct FakeClient {
    api: FakeApi,
    tag: String,
}

impl tower_service::Service<Request<kube::client::Body>> for FakeClient {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<kube::client::Body>) -> Self::Future {
        let api = self.api.clone();
        let tag = self.tag.clone();
        Box::pin(async move { Ok(api.handle(&tag, req).await) })
    }
}
