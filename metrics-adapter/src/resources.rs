//! The cluster's resources, as its API server's discovery documents list them: what client-go's
//! RESTMapper gives prometheus-adapter. A rule's `resources` (overrides naming `widget`,
//! `networkpolicy` or `Ingress`, or a template) and a request's URL (`widgets.example.com`)
//! are mapped through it to a group, version, plural, singular and kind, so CRDs and irregular
//! plurals are served under their real names and `describedObject` carries their real `kind`
//! and `apiVersion`.
//!
//! ```text
//!  /api, /api/v1, /apis, /apis/GROUP/VERSION ──▶ ResourceMapper ──▶ ResourceTable ──▶ rules' mappings
//!   (read at start, every interval, and on an     │ no client or discovery failing:  and request URLs
//!    unknown resource, at most once per gap)       └─▶ built-in table (KNOWN_RESOURCES)
//! ```
//!
//! - Priority, as the RESTMapper's: the core group first, then groups in the order `/apis`
//!   lists them; in a group the preferred version first, then the others for resources the
//!   preferred one lacks. A name without a group (`resource: pod`) is looked up in the core
//!   group first, then in every group in that order.
//! - Names match plural, singular (discovery's `singularName`, or the lower-cased kind when a
//!   server leaves it empty) or kind, case-insensitively; subresources (`pods/log`) are not
//!   resources.
//! - The metrics APIs (`custom.metrics.k8s.io`, `external.metrics.k8s.io`, `metrics.k8s.io`)
//!   are not read: their entries are metrics, not objects, and one of them may be this adapter
//!   behind the aggregator.
//! - While discovery is unavailable (no Kubernetes client, or `/api`/`/apis` failing before
//!   the first success), gofe's built-in table stands in: logged once, and visible as
//!   `gofe_adapter_resource_table{source="builtin"} 1`. After a success a failing refresh
//!   keeps the last table read. A group version that fails alone is left out, as client-go
//!   leaves out a failing aggregated API.
//!
//! What it does not do: it does not watch CRDs (a new one is seen at the next interval, or at
//! the first request naming it), and it does not use the aggregated discovery format.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList;
use tokio::time::Instant;

use crate::custom::{Resource, KNOWN_RESOURCES};

/// API groups not read: their resources are metrics, not objects.
pub const SKIPPED_GROUPS: &[&str] = &[
    "custom.metrics.k8s.io",
    "external.metrics.k8s.io",
    "metrics.k8s.io",
];

/// Where a [`ResourceTable`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TableSource {
    /// The cluster's discovery documents.
    Cluster,
    /// gofe's built-in table ([`KNOWN_RESOURCES`]).
    Builtin,
}

impl TableSource {
    /// `cluster` or `builtin`, as logs and metrics name it.
    pub fn as_str(self) -> &'static str {
        match self {
            TableSource::Cluster => "cluster",
            TableSource::Builtin => "builtin",
        }
    }
}

/// The resources of a cluster, in priority order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceTable {
    source: TableSource,
    resources: Vec<Resource>,
}

impl ResourceTable {
    /// gofe's built-in table.
    pub fn builtin() -> Self {
        ResourceTable {
            source: TableSource::Builtin,
            resources: KNOWN_RESOURCES
                .iter()
                .map(|&(g, v, plural, singular, kind, namespaced)| Resource {
                    group: g.to_owned(),
                    version: v.to_owned(),
                    plural: plural.to_owned(),
                    singular: singular.to_owned(),
                    kind: kind.to_owned(),
                    namespaced,
                })
                .collect(),
        }
    }

    /// The table of discovery documents, in priority order: the core group's lists first,
    /// then each group's, preferred version first. A later list's resource of a group an
    /// earlier list already gave is left out.
    pub fn from_lists<'a>(lists: impl IntoIterator<Item = &'a APIResourceList>) -> Self {
        let mut resources: Vec<Resource> = Vec::new();
        for list in lists {
            let (group, version) = match list.group_version.split_once('/') {
                Some((g, v)) => (g, v),
                None => ("", list.group_version.as_str()),
            };
            for r in &list.resources {
                if r.name.is_empty() || r.name.contains('/') || r.kind.is_empty() {
                    continue;
                }
                if resources
                    .iter()
                    .any(|e| e.group == group && e.plural == r.name)
                {
                    continue;
                }
                let singular = if r.singular_name.is_empty() {
                    r.kind.to_ascii_lowercase()
                } else {
                    r.singular_name.clone()
                };
                resources.push(Resource {
                    group: group.to_owned(),
                    version: version.to_owned(),
                    plural: r.name.clone(),
                    singular,
                    kind: r.kind.clone(),
                    namespaced: r.namespaced,
                });
            }
        }
        ResourceTable {
            source: TableSource::Cluster,
            resources,
        }
    }

    /// Where it came from.
    pub fn source(&self) -> TableSource {
        self.source
    }

    /// Every resource, in priority order.
    pub fn resources(&self) -> &[Resource] {
        &self.resources
    }

    /// The resource `name` (plural, singular or kind, any case) of `group`; with an empty
    /// group, of the core group first, then of any group in priority order.
    pub fn find(&self, group: &str, name: &str) -> Option<&Resource> {
        let matches = |r: &&Resource| {
            name.eq_ignore_ascii_case(&r.plural)
                || name.eq_ignore_ascii_case(&r.singular)
                || name.eq_ignore_ascii_case(&r.kind)
        };
        let in_group = |g: &str| self.resources.iter().filter(|r| r.group == g).find(matches);
        if group.is_empty() {
            in_group("").or_else(|| self.resources.iter().find(matches))
        } else {
            in_group(group)
        }
    }

    /// The resource a URL names (`pods`, `deployments.apps`, `widgets.example.com`).
    pub fn from_url(&self, qualified: &str) -> Option<&Resource> {
        match qualified.split_once('.') {
            Some((name, group)) => self.find(group, name),
            None => self.find("", qualified),
        }
    }
}

/// Why the cluster's discovery could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// No Kubernetes client is configured.
    #[error("no Kubernetes client (in-cluster service account or KUBECONFIG)")]
    NoClient,
    /// `/api` or `/apis` failed.
    #[error("reading {path}")]
    Api {
        /// The document.
        path: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
}

/// When the resources are read again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// How often discovery is read again. Default 10 min (prometheus-adapter's
    /// `--discovery-interval`).
    pub interval: Duration,
    /// A request naming a resource the table lacks reads discovery again, at most once per
    /// this gap. Default 30 s.
    pub miss_gap: Duration,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            interval: Duration::from_secs(600),
            miss_gap: Duration::from_secs(30),
        }
    }
}

/// Keeps the cluster's [`ResourceTable`] and reads it again when asked.
pub struct ResourceMapper {
    client: Option<kube::Client>,
    table: ArcSwap<ResourceTable>,
    config: DiscoveryConfig,
    /// When a request's miss last read discovery.
    last_miss: Mutex<Option<Instant>>,
    /// One read at a time.
    reading: tokio::sync::Mutex<()>,
    /// Whether the fall-back to the built-in table has been logged.
    fallback_logged: AtomicBool,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl std::fmt::Debug for ResourceMapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourceMapper")
            .field("source", &self.table.load().source())
            .finish_non_exhaustive()
    }
}

impl ResourceMapper {
    /// A mapper reading discovery through `client` (none: the built-in table, always),
    /// serving the built-in table until the first read succeeds.
    pub fn new(client: Option<kube::Client>, config: DiscoveryConfig) -> Self {
        ResourceMapper {
            client,
            table: ArcSwap::from_pointee(ResourceTable::builtin()),
            config,
            last_miss: Mutex::new(None),
            reading: tokio::sync::Mutex::new(()),
            fallback_logged: AtomicBool::new(false),
            metrics: None,
        }
    }

    /// Reports the table's source and every read on `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        metrics.set_resource_source(TableSource::Builtin);
        self.metrics = Some(metrics);
        self
    }

    /// When discovery is read again.
    pub fn config(&self) -> DiscoveryConfig {
        self.config
    }

    /// The table in force.
    pub fn current(&self) -> Arc<ResourceTable> {
        self.table.load_full()
    }

    /// Reads discovery again; returns whether the table changed. A failure is logged (the
    /// first fall-back to the built-in table once) and keeps the table in force.
    pub async fn refresh(&self) -> bool {
        let _reading = self.reading.lock().await;
        let result = self.read().await;
        if let Some(m) = &self.metrics {
            m.resource_discovery
                .with_label_values(&[if result.is_ok() { "ok" } else { "error" }])
                .inc();
        }
        match result {
            Ok(table) => {
                let current = self.table.load();
                if current.source() == TableSource::Builtin
                    && self.fallback_logged.swap(false, Ordering::Relaxed)
                {
                    tracing::info!(
                        resources = table.resources().len(),
                        "resource discovery succeeded; the cluster's resources replace the built-in table"
                    );
                }
                if let Some(m) = &self.metrics {
                    m.set_resource_source(TableSource::Cluster);
                }
                if **current == table {
                    return false;
                }
                tracing::debug!(resources = table.resources().len(), "resources discovered");
                self.table.store(Arc::new(table));
                true
            }
            Err(e) => {
                if self.table.load().source() == TableSource::Cluster {
                    tracing::warn!(error = %e, cause = %source_text(&e), "resource discovery failed; keeping the resources read last");
                } else if !self.fallback_logged.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, cause = %source_text(&e), "resource discovery unavailable; serving gofe's built-in resource table (CRDs and resources outside it are not served) until it succeeds");
                }
                false
            }
        }
    }

    /// After a request named a resource the table lacks: reads discovery again unless a miss
    /// did within [`DiscoveryConfig::miss_gap`]; returns whether the table changed.
    pub async fn refresh_on_miss(&self) -> bool {
        {
            let Ok(mut last) = self.last_miss.lock() else {
                return false;
            };
            if last.is_some_and(|at| at.elapsed() < self.config.miss_gap) {
                return false;
            }
            *last = Some(Instant::now());
        }
        self.refresh().await
    }

    async fn read(&self) -> Result<ResourceTable, DiscoveryError> {
        let client = self.client.as_ref().ok_or(DiscoveryError::NoClient)?;
        let api = |path: &str| {
            let path = path.to_owned();
            move |source| DiscoveryError::Api { path, source }
        };
        let core = client.list_core_api_versions().await.map_err(api("/api"))?;
        let groups = client.list_api_groups().await.map_err(api("/apis"))?;
        let mut versions: Vec<(bool, String)> =
            core.versions.iter().map(|v| (true, v.clone())).collect();
        for g in &groups.groups {
            if SKIPPED_GROUPS.contains(&g.name.as_str()) {
                continue;
            }
            let preferred = g
                .preferred_version
                .as_ref()
                .map(|p| p.group_version.clone());
            if let Some(p) = &preferred {
                versions.push((false, p.clone()));
            }
            for v in &g.versions {
                if Some(&v.group_version) != preferred.as_ref() {
                    versions.push((false, v.group_version.clone()));
                }
            }
        }
        let mut lists = Vec::with_capacity(versions.len());
        for (is_core, gv) in versions {
            let listed = if is_core {
                client.list_core_api_resources(&gv).await
            } else {
                client.list_api_group_resources(&gv).await
            };
            match listed {
                Ok(list) => lists.push(list),
                Err(e) => {
                    tracing::warn!(group_version = %gv, error = %e, "resource discovery: a group version failed; its resources are left out")
                }
            }
        }
        Ok(ResourceTable::from_lists(&lists))
    }
}

fn source_text(e: &DiscoveryError) -> String {
    std::error::Error::source(e)
        .map(ToString::to_string)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(gv: &str, resources: serde_json::Value) -> APIResourceList {
        serde_json::from_value(serde_json::json!({
            "kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv,
            "resources": resources,
        }))
        .unwrap()
    }

    fn table() -> ResourceTable {
        ResourceTable::from_lists(&[
            list(
                "v1",
                serde_json::json!([
                    {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod", "verbs": ["get"]},
                    {"name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]},
                ]),
            ),
            list(
                "networking.k8s.io/v1",
                serde_json::json!([
                    {"name": "networkpolicies", "singularName": "networkpolicy", "namespaced": true, "kind": "NetworkPolicy", "verbs": ["get"]},
                ]),
            ),
            list(
                "example.com/v2",
                serde_json::json!([
                    {"name": "widgets", "singularName": "", "namespaced": true, "kind": "Widget", "verbs": ["get"]},
                ]),
            ),
            list(
                "example.com/v1",
                serde_json::json!([
                    {"name": "widgets", "singularName": "widget", "namespaced": true, "kind": "Widget", "verbs": ["get"]},
                    {"name": "gizmata", "singularName": "gizmo", "namespaced": false, "kind": "Gizmo", "verbs": ["get"]},
                ]),
            ),
        ])
    }

    #[test]
    fn names_map_to_the_discovered_resource_in_priority_order() {
        let t = table();
        let widget = t.find("example.com", "widget").unwrap();
        assert_eq!(
            (
                widget.api_version(),
                widget.plural.as_str(),
                widget.kind.as_str()
            ),
            ("example.com/v2".to_owned(), "widgets", "Widget"),
            "the preferred (first) version, its singular from the kind"
        );
        let gizmo = t.find("example.com", "Gizmo").unwrap();
        assert_eq!(
            (gizmo.qualified(), gizmo.api_version(), gizmo.namespaced),
            (
                "gizmata.example.com".to_owned(),
                "example.com/v1".to_owned(),
                false
            ),
            "a resource only the other version has"
        );
        assert_eq!(
            t.find("", "networkpolicy").unwrap().qualified(),
            "networkpolicies.networking.k8s.io",
            "no group: core first, then any group"
        );
        assert_eq!(t.find("", "pod").unwrap().api_version(), "v1");
        assert!(t.find("", "pods/log").is_none());
        assert!(t.find("apps", "networkpolicy").is_none());
        assert_eq!(
            t.from_url("widgets.example.com").map(|r| r.kind.as_str()),
            Some("Widget")
        );
        assert!(t.from_url("sprockets.example.com").is_none());
        assert_eq!(t.source(), TableSource::Cluster);
    }

    #[test]
    fn the_builtin_table_knows_core_and_irregular_plurals_but_guesses_nothing() {
        let t = ResourceTable::builtin();
        assert_eq!(t.source(), TableSource::Builtin);
        assert_eq!(
            t.from_url("ingresses.networking.k8s.io")
                .map(|r| r.kind.as_str()),
            Some("Ingress")
        );
        assert_eq!(
            t.find("", "networkpolicy").map(|r| r.qualified()),
            Some("networkpolicies.networking.k8s.io".to_owned())
        );
        assert!(t.from_url("widgets.example.com").is_none());
        assert!(t.find("cheese.io", "brand").is_none());
    }

    #[tokio::test]
    async fn without_a_client_the_builtin_table_serves() {
        let m = ResourceMapper::new(None, DiscoveryConfig::default());
        assert!(!m.refresh().await);
        assert_eq!(m.current().source(), TableSource::Builtin);
        assert!(!m.refresh_on_miss().await);
    }
}
