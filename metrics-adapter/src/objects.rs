//! The Kubernetes objects custom and resource metrics are about: the HPA asks for
//! `pods/*/METRIC?labelSelector=app=web`, and only the API server knows which pods those are.
//! [`ObjectLister`] lists them (through the adapter's service account: `list` on the
//! resource), filters them by the selector again on its side, and keeps each answer for the
//! cache freshness so a hundred HPAs polling the same selector cost one list per interval.

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
type Listed = (Instant, Arc<Vec<String>>);

/// Lists objects' names by label selector, with a short cache.
pub struct ObjectLister {
    client: Option<kube::Client>,
    freshness: Duration,
    cache: Mutex<HashMap<Key, Listed>>,
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
    /// labels `selector` selects, sorted.
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
        if let Ok(cache) = self.cache.lock() {
            if let Some((at, names)) = cache.get(&key) {
                if at.elapsed() < self.freshness {
                    return Ok(names.clone());
                }
            }
        }
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
        let names = Arc::new(names);
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() > 10_000 {
                cache.clear();
            }
            cache.insert(key, (Instant::now(), names.clone()));
        }
        Ok(names)
    }
}
