//! The Kubernetes objects custom and resource metrics are about: the HPA asks for
//! `pods/*/METRIC?labelSelector=app=web`, and only the API server knows which pods those are.
//! [`ObjectLister`] lists them (through the adapter's service account: `list` on the
//! resource), filters them by the selector again on its side, and keeps each answer for the
//! cache freshness so a hundred HPAs polling the same selector cost one list per interval;
//! concurrent requests for a selector whose answer is being listed wait for that list (single
//! flight), so a burst costs one list too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{Api, DynamicObject, ListParams};
use kube::core::ApiResource;
use tokio::time::Instant;

use crate::custom::Resource;
use crate::selector::Selector;

/// Why objects could not be listed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ListError {
    /// The adapter runs without a Kubernetes client (`--insecure-local` with no kubeconfig).
    #[error("listing {0} by label selector needs the Kubernetes API, and the adapter has no client (in-cluster service account or KUBECONFIG)")]
    NoClient(String),
    /// The API server refused or failed.
    #[error("listing {resource}: {message}")]
    Api {
        /// The resource listed.
        resource: String,
        /// The API error.
        message: String,
    },
}

type Key = (String, String, String);
type Listed = Result<Arc<Vec<String>>, ListError>;

/// One selector's list: when it started, and its answer once there (shared by every request
/// that finds it in flight or fresh).
struct Entry {
    started: Instant,
    answer: Arc<tokio::sync::OnceCell<Listed>>,
}

/// Lists objects' names by label selector, with a short cache.
pub struct ObjectLister {
    client: Option<kube::Client>,
    freshness: Duration,
    cache: Mutex<HashMap<Key, Entry>>,
}

impl ObjectLister {
    /// A lister over `client` (none: every list by selector fails with
    /// [`ListError::NoClient`]), reusing answers for `freshness`.
    pub fn new(client: Option<kube::Client>, freshness: Duration) -> Self {
        ObjectLister {
            client,
            freshness,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a Kubernetes client is configured.
    pub fn has_client(&self) -> bool {
        self.client.is_some()
    }

    /// The names of `resource`'s objects in `namespace` (all namespaces when `None`) whose
    /// labels `selector` selects, sorted. An answer (or failure) is reused for the freshness
    /// from when its list started, and shared while it is in flight.
    pub async fn names(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
        selector: &Selector,
    ) -> Result<Arc<Vec<String>>, ListError> {
        let key = (
            resource.qualified(),
            namespace.unwrap_or_default().to_owned(),
            selector.to_string(),
        );
        let answer = match self.cache.lock() {
            Ok(mut cache) => match cache.get(&key) {
                Some(e) if e.started.elapsed() < self.freshness || !e.answer.initialized() => {
                    e.answer.clone()
                }
                _ => {
                    if cache.len() > 10_000 {
                        cache.retain(|_, e| !e.answer.initialized());
                    }
                    let answer = Arc::new(tokio::sync::OnceCell::new());
                    cache.insert(
                        key,
                        Entry {
                            started: Instant::now(),
                            answer: answer.clone(),
                        },
                    );
                    answer
                }
            },
            Err(_) => Arc::new(tokio::sync::OnceCell::new()),
        };
        answer
            .get_or_init(|| self.list(resource, namespace, selector))
            .await
            .clone()
    }

    async fn list(
        &self,
        resource: &Resource,
        namespace: Option<&str>,
        selector: &Selector,
    ) -> Listed {
        let Some(client) = &self.client else {
            return Err(ListError::NoClient(resource.qualified()));
        };
        let ar = ApiResource {
            group: resource.group.clone(),
            version: resource.version.clone(),
            api_version: resource.api_version(),
            kind: resource.kind.clone(),
            plural: resource.plural.clone(),
        };
        let api: Api<DynamicObject> = match namespace {
            Some(ns) if resource.namespaced => Api::namespaced_with(client.clone(), ns, &ar),
            _ => Api::all_with(client.clone(), &ar),
        };
        let mut params = ListParams::default();
        let text = selector.to_string();
        if !text.is_empty() {
            params = params.labels(&text);
        }
        let list = api.list(&params).await.map_err(|e| ListError::Api {
            resource: resource.qualified(),
            message: e.to_string(),
        })?;
        // Filtered here too: the selector is ours, whatever the server made of it.
        let none = std::collections::BTreeMap::new();
        let mut names: Vec<String> = list
            .items
            .into_iter()
            .filter(|o| selector.matches(o.metadata.labels.as_ref().unwrap_or(&none)))
            .filter_map(|o| o.metadata.name)
            .collect();
        names.sort();
        names.dedup();
        Ok(Arc::new(names))
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};

    use http_body_util::{BodyExt, Full};

    use super::*;

    /// An API server stand-in whose Pod lists wait for `gate` and are counted.
    #[derive(Clone)]
    struct Gated {
        lists: Arc<AtomicUsize>,
        gate: Arc<tokio::sync::Semaphore>,
    }

    type Body = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, Infallible>;

    impl tower_service::Service<http::Request<kube::client::Body>> for Gated {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<kube::client::Body>) -> Self::Future {
            let this = self.clone();
            Box::pin(async move {
                this.lists.fetch_add(1, Ordering::SeqCst);
                let _open = this.gate.acquire().await;
                let list = serde_json::json!({"apiVersion": "v1", "kind": "PodList",
                    "metadata": {"resourceVersion": "1"}, "items": [
                        {"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"name": "web-1", "namespace": "shop", "labels": {"app": "web"}}},
                        {"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"name": "api-1", "namespace": "shop", "labels": {"app": "api"}}}]});
                Ok(http::Response::builder()
                    .header("content-type", "application/json")
                    .body(Full::new(bytes::Bytes::from(list.to_string())).boxed_unsync())
                    .expect("response"))
            })
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn concurrent_requests_for_one_selector_share_one_list() {
        let gated = Gated {
            lists: Arc::new(AtomicUsize::new(0)),
            gate: Arc::new(tokio::sync::Semaphore::new(0)),
        };
        let lister = Arc::new(ObjectLister::new(
            Some(kube::Client::new(gated.clone(), "default")),
            Duration::from_secs(3600),
        ));
        let selector = Selector::parse("app=web").unwrap();
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (lister, selector) = (lister.clone(), selector.clone());
                tokio::spawn(async move {
                    lister
                        .names(&crate::custom::core("pods"), Some("shop"), &selector)
                        .await
                })
            })
            .collect();
        // Every task runs up to its wait on the list in flight (or, without single flight,
        // on a list of its own) before the stand-in answers.
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        gated.gate.add_permits(1000);
        for t in tasks {
            assert_eq!(*t.await.unwrap().unwrap(), vec!["web-1".to_owned()]);
        }
        assert_eq!(gated.lists.load(Ordering::SeqCst), 1);
        // Fresh: no second list; another selector: its own.
        lister
            .names(&crate::custom::core("pods"), Some("shop"), &selector)
            .await
            .unwrap();
        lister
            .names(
                &crate::custom::core("pods"),
                Some("shop"),
                &Selector::parse("app=api").unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(gated.lists.load(Ordering::SeqCst), 2);
    }
}
