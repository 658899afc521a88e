//! Custom and resource metrics rules: prometheus-adapter's `rules` (served as
//! `custom.metrics.k8s.io`) and `resourceRules` (served as `metrics.k8s.io`), validated, and
//! the PromQL they run for a set of Kubernetes objects.
//!
//! A custom rule's metric names come from discovery, as for external rules, but each metric is
//! also tied to the Kubernetes resources its series carry labels for: a series
//! `http_requests_total{namespace="a",pod="p"}` under the overrides `namespace → namespace`,
//! `pod → pod` becomes `pods/http_requests` (namespaced) and `namespaces/http_requests`.
//! A request for objects renders the rule's `metricsQuery` with
//!
//! - `<<.Series>>`: the series name,
//! - `<<.LabelMatchers>>`: the namespace matcher (namespaced resources), the resource label
//!   matching the objects' names (`pod="p"` for one, `pod=~"p1|p2"` for several), then the
//!   `metricLabelSelector`'s matchers,
//! - `<<.GroupBy>>`: the resource label (`pod`); for resource metrics' container queries the
//!   resource label and the container label (`pod,container`),
//! - `<<.GroupBySlice>>`: the same labels as Go prints a `[]string`,
//!
//! which is what prometheus-adapter documents for them.
//!
//! Which Kubernetes resources there are (group, version, plural, singular, kind) comes from the
//! cluster's discovery documents ([`crate::resources`], what client-go's RESTMapper gives
//! prometheus-adapter), so a CRD or an irregular plural (`networkpolicies`, `ingresses`) is
//! served under its real name and described by its real kind; while discovery is unavailable,
//! gofe's built-in table [`KNOWN_RESOURCES`] stands in, and a resource not in it is not served
//! (no plural is guessed).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::rules::{ResourceTemplate, RuleOptions, Template};
use crate::selector::{Matcher, Selector, SelectorError};

/// A Kubernetes resource objects of which metrics describe.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    /// API group, empty for the core group.
    pub group: String,
    /// Version its objects are read at (`v1`).
    pub version: String,
    /// Plural resource name (`pods`).
    pub plural: String,
    /// Singular resource name (`pod`), what `<<.Resource>>` renders.
    pub singular: String,
    /// Kind (`Pod`); empty when unknown (a resource gofe has no table entry for).
    pub kind: String,
    /// Whether its objects live in namespaces.
    pub namespaced: bool,
}

impl Resource {
    /// `pods`, or `deployments.apps` outside the core group: how discovery documents and URLs
    /// name it.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// `v1`, or `apps/v1`: the `apiVersion` of its objects.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// Whether this is the `namespaces` resource.
    pub fn is_namespace(&self) -> bool {
        self.group.is_empty() && self.plural == "namespaces"
    }
}

/// The Kubernetes resources gofe knows without asking the cluster, used while the cluster's
/// discovery is unavailable: (group, version, plural, singular, kind, namespaced).
pub const KNOWN_RESOURCES: &[(&str, &str, &str, &str, &str, bool)] = &[
    ("", "v1", "pods", "pod", "Pod", true),
    ("", "v1", "nodes", "node", "Node", false),
    ("", "v1", "namespaces", "namespace", "Namespace", false),
    ("", "v1", "services", "service", "Service", true),
    ("", "v1", "endpoints", "endpoints", "Endpoints", true),
    (
        "",
        "v1",
        "persistentvolumeclaims",
        "persistentvolumeclaim",
        "PersistentVolumeClaim",
        true,
    ),
    (
        "",
        "v1",
        "persistentvolumes",
        "persistentvolume",
        "PersistentVolume",
        false,
    ),
    (
        "",
        "v1",
        "replicationcontrollers",
        "replicationcontroller",
        "ReplicationController",
        true,
    ),
    (
        "apps",
        "v1",
        "deployments",
        "deployment",
        "Deployment",
        true,
    ),
    (
        "apps",
        "v1",
        "statefulsets",
        "statefulset",
        "StatefulSet",
        true,
    ),
    ("apps", "v1", "daemonsets", "daemonset", "DaemonSet", true),
    (
        "apps",
        "v1",
        "replicasets",
        "replicaset",
        "ReplicaSet",
        true,
    ),
    ("batch", "v1", "jobs", "job", "Job", true),
    ("batch", "v1", "cronjobs", "cronjob", "CronJob", true),
    (
        "networking.k8s.io",
        "v1",
        "ingresses",
        "ingress",
        "Ingress",
        true,
    ),
    (
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        "networkpolicy",
        "NetworkPolicy",
        true,
    ),
];

/// The resource `name` (plural, singular or kind) of `group` in gofe's built-in table
/// ([`KNOWN_RESOURCES`]), if it is there.
pub fn builtin_resource(group: &str, name: &str) -> Option<Resource> {
    crate::resources::ResourceTable::builtin()
        .find(group, name)
        .cloned()
}

/// One of the core resources gofe always needs (`pods`, `nodes`, `namespaces`).
pub(crate) fn core(plural: &str) -> Resource {
    let &(g, v, plural, singular, kind, namespaced) = KNOWN_RESOURCES
        .iter()
        .find(|r| r.0.is_empty() && r.2 == plural)
        .unwrap_or(&KNOWN_RESOURCES[0]);
    Resource {
        group: g.to_owned(),
        version: v.to_owned(),
        plural: plural.to_owned(),
        singular: singular.to_owned(),
        kind: kind.to_owned(),
        namespaced,
    }
}

/// One entry of `resources.overrides`: a Prometheus label naming objects of a resource.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Override {
    /// The Prometheus label.
    pub label: String,
    /// The API group as written; empty is the core group first, then any group (as
    /// client-go's RESTMapper resolves a resource without a group).
    pub group: String,
    /// The resource as written: plural, singular or kind (`pod`, `networkpolicies`, `Widget`).
    pub resource: String,
}

/// prometheus-adapter's `resources` block as written: which Prometheus labels name which
/// resources' objects. It is resolved against the cluster's resources
/// ([`crate::resources::ResourceTable`]) each time those are read, so a CRD installed later
/// is mapped then.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceMapping {
    /// `overrides`, label by label.
    pub overrides: Vec<Override>,
    /// `template`, rendered for every resource of the table (overrides win).
    pub template: Option<ResourceTemplate>,
}

/// A [`ResourceMapping`] resolved against one table of resources.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedMapping {
    /// Label → resource.
    pub labels: BTreeMap<String, Resource>,
    /// Overrides naming a resource the table does not have.
    pub unresolved: Vec<Override>,
}

impl ResourceMapping {
    /// The mapping of `overrides` (label, group, resource) and an optional parsed `template`.
    pub fn new(overrides: &[(String, String, String)], template: Option<ResourceTemplate>) -> Self {
        ResourceMapping {
            overrides: overrides
                .iter()
                .map(|(label, group, resource)| Override {
                    label: label.clone(),
                    group: group.clone(),
                    resource: resource.clone(),
                })
                .collect(),
            template,
        }
    }

    /// Whether it maps nothing at all (neither overrides nor a template).
    pub fn is_empty(&self) -> bool {
        self.overrides.is_empty() && self.template.is_none()
    }

    /// The labels of this mapping among `table`'s resources: the template rendered for each
    /// resource in the table's priority order (the first resource to give a label keeps it),
    /// then the overrides.
    pub fn resolve(&self, table: &crate::resources::ResourceTable) -> ResolvedMapping {
        let mut labels = BTreeMap::new();
        if let Some(template) = &self.template {
            for r in table.resources() {
                labels
                    .entry(template.render(&r.group, &r.singular))
                    .or_insert_with(|| r.clone());
            }
        }
        let mut unresolved = Vec::new();
        for o in &self.overrides {
            match table.find(&o.group, &o.resource) {
                Some(r) => {
                    labels.insert(o.label.clone(), r.clone());
                }
                None => unresolved.push(o.clone()),
            }
        }
        ResolvedMapping { labels, unresolved }
    }
}

impl ResolvedMapping {
    /// The label holding `resource`'s object names.
    pub fn label_for(&self, resource: &Resource) -> Option<&str> {
        self.labels
            .iter()
            .find(|(_, r)| r.group == resource.group && r.plural == resource.plural)
            .map(|(l, _)| l.as_str())
    }

    /// The label holding namespace names.
    pub fn namespace_label(&self) -> Option<&str> {
        self.labels
            .iter()
            .find(|(_, r)| r.is_namespace())
            .map(|(l, _)| l.as_str())
    }
}

/// A validated prometheus-adapter custom-metrics rule (`rules[index]`), before discovery.
#[derive(Clone, Debug)]
pub struct CustomRule {
    /// Position in `rules` (for a built-in rule, after the file's).
    pub index: usize,
    /// One of gofe's built-in metrics served per Pod (`builtinRules.pods`), not the file's.
    pub builtin: bool,
    /// The discovery series selector.
    pub series_query: String,
    /// `seriesFilters` `is` regexes.
    pub keep: Vec<regex::Regex>,
    /// `seriesFilters` `isNot` regexes.
    pub drop: Vec<regex::Regex>,
    /// `name.matches`; `None` matches every name.
    pub matches: Option<regex::Regex>,
    /// `name.as`.
    pub replacement: String,
    /// The `metricsQuery`.
    pub template: Template,
    /// Label ↔ resource mapping.
    pub mapping: ResourceMapping,
    /// gofe's options (missing data, forecast).
    pub options: RuleOptions,
}

/// One served custom metric: a metric name on one resource.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CustomMetric {
    /// The metric name.
    pub metric: String,
    /// The resource whose objects it describes.
    pub resource: Resource,
    /// Whether it is asked for per namespace (the series carry the namespace label and the
    /// resource is namespaced).
    pub namespaced: bool,
    /// `rules[index]`.
    pub rule: usize,
    /// A built-in metric served per Pod (`builtinRules.pods`), not a rule of the file.
    pub builtin: bool,
    /// The series name that became this metric.
    pub series: String,
    /// The label holding the objects' names.
    pub resource_label: String,
    /// The label holding namespace names, when namespaced.
    pub namespace_label: Option<String>,
    /// The `metricsQuery` as written.
    pub metrics_query: String,
    #[serde(skip)]
    template: Template,
    /// gofe's options.
    pub options: RuleOptions,
}

impl CustomRule {
    /// The metric name series `name` becomes, or `None` when filtered out.
    pub fn metric_name(&self, name: &str) -> Option<String> {
        if !self.keep.iter().all(|r| r.is_match(name)) || self.drop.iter().any(|r| r.is_match(name))
        {
            return None;
        }
        let caps = match &self.matches {
            None => regex::Regex::new("^.*$").ok()?.captures(name)?,
            Some(re) => re.captures(name)?,
        };
        let mut out = String::new();
        caps.expand(&self.replacement, &mut out);
        (!out.is_empty()).then_some(out)
    }

    /// The custom metrics one discovered series stands for: one per resource it has a label
    /// for (the namespace itself included), as prometheus-adapter registers them; `mapping` is
    /// this rule's [`CustomRule::mapping`] resolved against the cluster's resources.
    pub fn instantiate(
        &self,
        labels: &BTreeMap<String, String>,
        mapping: &ResolvedMapping,
    ) -> Vec<CustomMetric> {
        let Some(series) = labels.get("__name__") else {
            return Vec::new();
        };
        let Some(metric) = self.metric_name(series) else {
            return Vec::new();
        };
        let namespace_label = mapping
            .namespace_label()
            .filter(|l| labels.contains_key(*l))
            .map(str::to_owned);
        mapping
            .labels
            .iter()
            .filter(|(label, _)| labels.contains_key(*label))
            .map(|(label, resource)| {
                let namespaced =
                    resource.namespaced && !resource.is_namespace() && namespace_label.is_some();
                CustomMetric {
                    metric: metric.clone(),
                    resource: resource.clone(),
                    namespaced,
                    rule: self.index,
                    builtin: self.builtin,
                    series: series.clone(),
                    resource_label: label.clone(),
                    namespace_label: if namespaced {
                        namespace_label.clone()
                    } else {
                        None
                    },
                    metrics_query: self.template.source().to_owned(),
                    template: self.template.clone(),
                    options: self.options.clone(),
                }
            })
            .collect()
    }
}

/// Which objects a request is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Objects {
    /// Their namespace, for a namespaced resource.
    pub namespace: Option<String>,
    /// Their names, sorted (at least one).
    pub names: Vec<String>,
}

impl CustomMetric {
    /// The PromQL for `objects`, filtered by `metric_selector` (`metricLabelSelector`).
    pub fn render(
        &self,
        objects: &Objects,
        metric_selector: &Selector,
    ) -> Result<String, SelectorError> {
        let mut matchers = Vec::new();
        match (&self.namespace_label, &objects.namespace) {
            (Some(label), Some(ns)) => matchers.push(Matcher::equals(label, ns)),
            _ if self.resource.is_namespace() => {}
            _ => {}
        }
        matchers.push(Matcher::one_of(&self.resource_label, &objects.names));
        for r in &metric_selector.requirements {
            matchers.push(r.to_matcher(&r.key)?);
        }
        Ok(self.template.render(
            &self.series,
            &matchers,
            std::slice::from_ref(&self.resource_label),
        ))
    }
}

/// One of `resourceRules.cpu` / `.memory`, validated.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRule {
    /// The per-container query template.
    #[serde(serialize_with = "ser_template")]
    pub container_query: Template,
    /// The per-node query template.
    #[serde(serialize_with = "ser_template")]
    pub node_query: Template,
    /// Label ↔ resource mapping (pod, namespace, node labels), resolved against gofe's
    /// built-in table: these are core resources every cluster has.
    pub mapping: ResolvedMapping,
    /// The label naming the container.
    pub container_label: String,
}

fn ser_template<S: serde::Serializer>(t: &Template, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(t.source())
}

/// `resourceRules`, validated.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRules {
    /// CPU usage in cores.
    pub cpu: ResourceRule,
    /// Memory usage in bytes.
    pub memory: ResourceRule,
    /// The window the queries cover, reported as the metrics' `window`.
    #[serde(serialize_with = "ser_window")]
    pub window: Duration,
}

fn ser_window<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&go_duration(*d))
}

/// A duration as Go's `time.Duration.String()` writes it (`3m0s`, `1m30s`, `500ms`): how
/// `metav1.Duration` appears in JSON.
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs_f64();
    let h = (secs / 3600.0).floor() as u64;
    let m = ((secs - h as f64 * 3600.0) / 60.0).floor() as u64;
    let s = secs - h as f64 * 3600.0 - m as f64 * 60.0;
    let s = if s.fract() == 0.0 {
        format!("{}s", s as u64)
    } else {
        format!("{}s", (s * 1000.0).round() / 1000.0)
    };
    match (h, m) {
        (0, 0) => s,
        (0, m) => format!("{m}m{s}"),
        (h, m) => format!("{h}h{m}m{s}"),
    }
}

/// Pods or nodes, for resource metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceTarget {
    /// `containerQuery`, grouped by pod and container.
    Containers,
    /// `nodeQuery`, grouped by node.
    Nodes,
}

impl ResourceRule {
    /// The PromQL of this rule for `objects` (pods of one namespace, or nodes), grouped as
    /// prometheus-adapter groups them; `None` when the mapping names no label for the
    /// resource.
    pub fn render(&self, target: ResourceTarget, objects: &Objects) -> Option<String> {
        let mut matchers = Vec::new();
        match target {
            ResourceTarget::Containers => {
                let pod = self.mapping.label_for(&core("pods"))?;
                if let (Some(label), Some(ns)) =
                    (self.mapping.namespace_label(), &objects.namespace)
                {
                    matchers.push(Matcher::equals(label, ns));
                }
                matchers.push(Matcher::one_of(pod, &objects.names));
                let group_by = [pod.to_owned(), self.container_label.clone()];
                Some(self.container_query.render("", &matchers, &group_by))
            }
            ResourceTarget::Nodes => {
                let node = self.mapping.label_for(&core("nodes"))?;
                matchers.push(Matcher::one_of(node, &objects.names));
                Some(
                    self.node_query
                        .render("", &matchers, std::slice::from_ref(&node.to_owned())),
                )
            }
        }
    }

    /// The labels of a container query's result naming (namespace, pod, container), and of a
    /// node query's naming the node.
    pub fn labels(&self) -> (Option<String>, Option<String>, Option<String>) {
        (
            self.mapping.namespace_label().map(str::to_owned),
            self.mapping.label_for(&core("pods")).map(str::to_owned),
            self.mapping.label_for(&core("nodes")).map(str::to_owned),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping() -> ResourceMapping {
        ResourceMapping::new(
            &[
                ("namespace".into(), "".into(), "namespace".into()),
                ("pod".into(), "".into(), "pod".into()),
            ],
            None,
        )
    }

    fn rule() -> CustomRule {
        CustomRule {
            builtin: false,
            index: 0,
            series_query: "x".into(),
            keep: vec![],
            drop: vec![],
            matches: Some(regex::Regex::new("^(.*)_total$").unwrap()),
            replacement: "${1}_per_second".into(),
            template: Template::parse(
                "sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)",
            )
            .unwrap(),
            mapping: mapping(),
            options: RuleOptions::default(),
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_series_becomes_one_metric_per_resource_label() {
        let builtin = crate::resources::ResourceTable::builtin();
        let found = rule().instantiate(
            &labels(&[
                ("__name__", "http_requests_total"),
                ("namespace", "a"),
                ("pod", "p"),
            ]),
            &rule().mapping.resolve(&builtin),
        );
        let names: Vec<(String, bool)> = found
            .iter()
            .map(|m| {
                (
                    format!("{}/{}", m.resource.qualified(), m.metric),
                    m.namespaced,
                )
            })
            .collect();
        assert_eq!(
            names,
            vec![
                ("namespaces/http_requests_per_second".to_owned(), false),
                ("pods/http_requests_per_second".to_owned(), true)
            ]
        );
        let pods = &found[1];
        let q = pods
            .render(
                &Objects {
                    namespace: Some("a".into()),
                    names: vec!["p-1".into(), "p.2".into()],
                },
                &Selector::parse("verb=GET").unwrap(),
            )
            .unwrap();
        assert_eq!(
            q,
            r#"sum(rate(http_requests_total{namespace="a",pod=~"p-1|p\\.2",verb="GET"}[2m])) by (pod)"#
        );
        let ns = &found[0];
        let q = ns
            .render(
                &Objects {
                    namespace: None,
                    names: vec!["a".into()],
                },
                &Selector::default(),
            )
            .unwrap();
        assert_eq!(
            q,
            r#"sum(rate(http_requests_total{namespace="a"}[2m])) by (namespace)"#
        );
        // Filtered out by name.matches: nothing.
        assert!(rule()
            .instantiate(
                &labels(&[("__name__", "up"), ("pod", "p")]),
                &rule().mapping.resolve(&builtin)
            )
            .is_empty());
    }

    #[test]
    fn templates_map_labels_to_resources() {
        let builtin = crate::resources::ResourceTable::builtin();
        let render = Template::parse_resource("<<.Resource>>").unwrap();
        let m = ResourceMapping::new(&[], Some(render)).resolve(&builtin);
        assert_eq!(m.labels["pod"].kind, "Pod");
        assert_eq!(m.labels["deployment"].api_version(), "apps/v1");
        assert_eq!(m.labels["networkpolicy"].plural, "networkpolicies");
        assert!(!m.labels["node"].namespaced);
        assert_eq!(m.namespace_label(), Some("namespace"));
        // A CRD the table lacks is unresolved, not guessed.
        let m = ResourceMapping::new(
            &[
                ("brand".into(), "cheese.io".into(), "brand".into()),
                ("ing".into(), "".into(), "Ingress".into()),
            ],
            None,
        )
        .resolve(&builtin);
        assert_eq!(m.labels["ing"].qualified(), "ingresses.networking.k8s.io");
        assert!(!m.labels.contains_key("brand"));
        assert_eq!(m.unresolved.len(), 1);
        assert_eq!(
            builtin_resource("apps", "deployments").map(|r| r.kind),
            Some("Deployment".to_owned())
        );
    }

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::from_secs(180)), "3m0s");
        assert_eq!(go_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(go_duration(Duration::from_secs(30)), "30s");
        assert_eq!(go_duration(Duration::from_secs(3661)), "1h1m1s");
        assert_eq!(go_duration(Duration::from_millis(500)), "500ms");
    }
}
