//! The adapter's rules file: prometheus-adapter's format (`rules`, `resourceRules`,
//! `externalRules`) plus gofe's per-rule options, loaded and validated in one step.
//!
//! An existing prometheus-adapter configuration loads unchanged; what gofe does not support
//! (template functions beyond `<<.Series>>`, `<<.LabelMatchers>>`, `<<.GroupBy>>`,
//! `<<.GroupBySlice>>`, an unknown field) is a load error naming the file, line and field,
//! never a silent skip. Every template is rendered with placeholder values and parsed as
//! PromQL, so a typo in a query fails at start. [`load`] returns *every* problem it finds.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::custom::{CustomRule, ResourceMapping, ResourceRule, ResourceRules};
use crate::rules::{
    BuiltinSettings, EjectionAware, ExternalRule, Forecast, MissingData, RuleBook, RuleOptions,
    Template,
};

/// The whole rules file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AdapterConfig {
    /// prometheus-adapter's external metrics rules. Default: none.
    #[serde(default)]
    pub external_rules: Vec<ExternalRuleConfig>,
    /// gofe's built-in mesh metrics. Default: enabled, 2 m rate window, not namespaced.
    #[serde(default)]
    pub builtin_rules: Option<BuiltinRulesConfig>,
    /// prometheus-adapter's custom-metrics rules (`custom.metrics.k8s.io`). Default: none.
    /// The same shape as `externalRules`; `resources.namespaced` and `ejectionAware` are
    /// refused (they mean nothing for objects).
    #[serde(default)]
    pub rules: Vec<ExternalRuleConfig>,
    /// prometheus-adapter's resource-metrics rules (`metrics.k8s.io`). Default: none.
    #[serde(default)]
    pub resource_rules: Option<ResourceRulesConfig>,
}

/// prometheus-adapter's `resourceRules`: CPU and memory of pods' containers and of nodes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResourceRulesConfig {
    /// CPU usage, in cores.
    pub cpu: ResourceRuleConfig,
    /// Memory usage (working set), in bytes.
    pub memory: ResourceRuleConfig,
    /// The window the queries' rates cover, reported as each value's `window`.
    pub window: DurationText,
}

/// One of `resourceRules.cpu` / `.memory`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResourceRuleConfig {
    /// Template of the per-container query (`<<.LabelMatchers>>`, `<<.GroupBy>>`).
    pub container_query: String,
    /// Template of the per-node query.
    pub node_query: String,
    /// Label ↔ resource mapping; must name the pod, namespace and node labels.
    #[serde(default)]
    pub resources: ResourcesConfig,
    /// The label naming a container in the container query's result.
    pub container_label: String,
}

/// Settings of the built-in rules.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BuiltinRulesConfig {
    /// Serve the built-in metrics. Default `true`.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// The `rate()` window of the built-in queries. Default `2m`.
    #[serde(default)]
    pub rate_window: Option<DurationText>,
    /// When set, the built-in rules are namespaced: the HPA's namespace must equal this
    /// Prometheus label. Default: unset (the mesh's service names are global).
    #[serde(default)]
    pub namespace_label: Option<String>,
    /// gofe options per built-in metric name (missing data, forecast, ejection awareness).
    #[serde(default)]
    pub metrics: BTreeMap<String, RuleOptionsConfig>,
    /// Serve the built-in metrics per Pod too (`custom.metrics.k8s.io`: `pods/METRIC`, and
    /// `namespaces/METRIC`), from proxies that run as sidecars and whose series Prometheus
    /// labels with their pod and namespace. Default: off.
    #[serde(default)]
    pub pods: Option<BuiltinPodsConfig>,
}

/// `builtinRules.pods`: the labels that name a sidecar proxy's pod and namespace.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BuiltinPodsConfig {
    /// The label naming the pod. Default `pod` (what Prometheus's Kubernetes service
    /// discovery relabelling usually writes).
    #[serde(default)]
    pub pod_label: Option<String>,
    /// The label naming the pod's namespace. Default `namespace`.
    #[serde(default)]
    pub namespace_label: Option<String>,
}

/// One rule in prometheus-adapter's `externalRules` format, plus gofe's options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExternalRuleConfig {
    /// Series selector used to discover which metric names the rule serves.
    pub series_query: String,
    /// Filters on discovered series names. Default: none.
    #[serde(default)]
    pub series_filters: Vec<SeriesFilterConfig>,
    /// Label-to-resource mapping; only the namespace mapping has an effect on external metrics.
    #[serde(default)]
    pub resources: ResourcesConfig,
    /// How a series name becomes a metric name. Default: the series name.
    #[serde(default)]
    pub name: Option<NameConfig>,
    /// The PromQL template.
    pub metrics_query: String,
    /// gofe extension: what to serve when Prometheus returns no usable value. Default
    /// `policy: error`.
    #[serde(default)]
    pub missing_data: Option<MissingDataConfig>,
    /// gofe extension: serve a forecast instead of the current value. Default: off.
    #[serde(default)]
    pub forecast: Option<ForecastConfig>,
    /// gofe extension: scale the value by total/serving endpoints. Default: off.
    #[serde(default)]
    pub ejection_aware: Option<EjectionAwareConfig>,
}

/// A filter on discovered series names: exactly one of `is` or `isNot`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SeriesFilterConfig {
    /// Keep only names matching this regex.
    #[serde(default)]
    pub is: Option<String>,
    /// Drop names matching this regex.
    #[serde(default)]
    pub is_not: Option<String>,
}

/// prometheus-adapter's `resources` block.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ResourcesConfig {
    /// Prometheus label name to Kubernetes resource.
    #[serde(default)]
    pub overrides: BTreeMap<String, GroupResourceConfig>,
    /// Label name template, e.g. `kube_<<.Resource>>`.
    #[serde(default)]
    pub template: Option<String>,
    /// Whether the HPA's namespace filters the query. Default `true`.
    #[serde(default)]
    pub namespaced: Option<bool>,
}

/// A Kubernetes group and resource.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GroupResourceConfig {
    /// API group; empty for the core group.
    #[serde(default)]
    pub group: String,
    /// Resource, e.g. `namespace`.
    pub resource: String,
}

/// prometheus-adapter's `name` block.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NameConfig {
    /// Regex applied to the series name (unanchored). Default: matches everything.
    #[serde(default)]
    pub matches: Option<String>,
    /// Replacement (`$1`, `${name}`). Default `$0`, or `$1` when `matches` has one group.
    #[serde(default, rename = "as")]
    pub as_: Option<String>,
}

/// gofe's per-rule options.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleOptionsConfig {
    /// What to serve when Prometheus returns no usable value. Default `policy: error`.
    #[serde(default)]
    pub missing_data: Option<MissingDataConfig>,
    /// Serve a forecast instead of the current value. Default: off.
    #[serde(default)]
    pub forecast: Option<ForecastConfig>,
    /// Scale the value by total/serving endpoints. Default: off.
    #[serde(default)]
    pub ejection_aware: Option<EjectionAwareConfig>,
    /// Serve the queueing pressure instead of the rate (`http_requests_per_second` and
    /// `http_requests_per_second_ejection_aware` only). Default: off.
    #[serde(default)]
    pub queueing: Option<QueueingConfig>,
}

/// The missing-data policy of a rule.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MissingDataConfig {
    /// `error` (default), `zero`, or `hold-last`.
    pub policy: PolicyName,
    /// For `hold-last`: the oldest value still served. Default `5m`.
    #[serde(default)]
    pub max_age: Option<DurationText>,
}

/// Missing-data policy names.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyName {
    /// Answer an error; the HPA keeps its current scale.
    Error,
    /// Answer 0.
    Zero,
    /// Answer the last good value while it is younger than `maxAge`.
    HoldLast,
}

/// Forecast options: `lead` (required), `method` (`holt`, default, or `holt-winters`),
/// `window`, `step`, `alpha`, `beta`, and for Holt-Winters `gamma`, `period`, `fallback`; `spike`
/// for the spike-aware fast path; `floor` (`latest`, default, or `none`). The simulator's `external_rps.forecast` is the same type;
/// defaults and limits are [`gofe_core::forecast::ForecastConfig::resolve`]'s.
pub type ForecastConfig = gofe_core::forecast::ForecastConfig<DurationText>;

/// The queueing option of the built-in request rates: `target`, the mean latency the service
/// should keep; the value served is `max(rate, in flight / target)`
/// ([`gofe_core::queueing`]). The simulator's `external_rps.queueing` is the same type.
pub type QueueingConfig = gofe_core::queueing::QueueingConfig<DurationText>;

/// Ejection-aware scaling options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EjectionAwareConfig {
    /// The Prometheus label of the rule's result that names the mesh service (the proxy's
    /// cluster). Default `cluster`.
    #[serde(default)]
    pub label: Option<String>,
}

pub use gofe_yaml::duration::Text as DurationText;

// === loading ===

pub use gofe_yaml::{ConfigError, Problem};

/// Reads, parses and validates a rules file into a [`RuleBook`].
pub fn load(path: &Path) -> Result<RuleBook, ConfigError> {
    parse(&path.display().to_string(), &gofe_yaml::read(path)?)
}

/// Parses and validates rules text; `source_name` names it in errors (every problem, each with
/// its line, column and field). Empty text is the default configuration (built-in rules only).
pub fn parse(source_name: &str, text: &str) -> Result<RuleBook, ConfigError> {
    if gofe_yaml::is_blank(text) {
        return Ok(Checker {
            problems: &mut gofe_yaml::Validator::default(),
        }
        .book(&AdapterConfig::default()));
    }
    gofe_yaml::parse_with(source_name, text, |config: AdapterConfig, problems| {
        Checker { problems }.book(&config)
    })
}

// === validation ===

/// Converts a parsed file into a [`RuleBook`], reporting every problem by field path.
struct Checker<'a> {
    problems: &'a mut gofe_yaml::Validator,
}

impl Checker<'_> {
    fn error(&mut self, field: String, message: impl Into<String>) {
        self.problems.error(field, message);
    }

    fn regex(&mut self, text: &str, field: String) -> Option<regex::Regex> {
        match regex::Regex::new(text) {
            Ok(r) => Some(r),
            Err(e) => {
                self.error(field, format!("invalid regex: {e}"));
                None
            }
        }
    }

    fn book(&mut self, c: &AdapterConfig) -> RuleBook {
        let builtin = self.builtins(c.builtin_rules.as_ref());
        let external = c
            .external_rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| self.external(i, r))
            .collect();
        let mut custom: Vec<CustomRule> = c
            .rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| self.custom(i, r))
            .collect();
        // After the file's: a metric the file defines for pods is the file's.
        custom.extend(builtin.pod_rules(c.rules.len()));
        let resource = c
            .resource_rules
            .as_ref()
            .and_then(|r| self.resource_rules(r));
        RuleBook {
            builtin,
            external,
            custom,
            resource,
        }
    }

    /// A `metricsQuery`-like template, parsed and its PromQL checked with placeholders.
    fn template(&mut self, text: &str, field: String) -> Option<Template> {
        match Template::parse(text) {
            Ok(t) => {
                if let Err(e) = crate::promql::check_template(&t) {
                    self.error(field, e.to_string());
                    return None;
                }
                Some(t)
            }
            Err(e) => {
                self.error(field, e.to_string());
                None
            }
        }
    }

    /// `seriesFilters` and `name` of a discovery rule: (keep, drop, matches, replacement).
    #[allow(clippy::type_complexity)]
    fn naming(
        &mut self,
        field: &str,
        filters: &[SeriesFilterConfig],
        name: Option<&NameConfig>,
    ) -> (
        Vec<regex::Regex>,
        Vec<regex::Regex>,
        Option<regex::Regex>,
        String,
    ) {
        let mut keep = Vec::new();
        let mut drop = Vec::new();
        for (j, f) in filters.iter().enumerate() {
            let ff = format!("{field}.seriesFilters[{j}]");
            match (&f.is, &f.is_not) {
                (Some(is), None) => keep.extend(self.regex(is, format!("{ff}.is"))),
                (None, Some(not)) => drop.extend(self.regex(not, format!("{ff}.isNot"))),
                _ => self.error(ff, "exactly one of is or isNot is required"),
            }
        }
        let (matches, replacement) = match name {
            None => (None, "$0".to_owned()),
            Some(n) => {
                let matches = n
                    .matches
                    .as_ref()
                    .and_then(|m| self.regex(m, format!("{field}.name.matches")));
                let groups = matches.as_ref().map_or(0, |m| m.captures_len() - 1);
                let replacement = match &n.as_ {
                    Some(a) if !a.is_empty() => a.clone(),
                    _ if groups == 0 => "$0".to_owned(),
                    _ if groups == 1 => "$1".to_owned(),
                    _ => {
                        self.error(
                            format!("{field}.name.as"),
                            "required when name.matches has more than one capture group",
                        );
                        String::new()
                    }
                };
                (matches, replacement)
            }
        };
        (keep, drop, matches, replacement)
    }

    /// A `resources` block as a label ↔ resource mapping.
    fn mapping(&mut self, field: &str, c: &ResourcesConfig) -> ResourceMapping {
        let mut overrides = Vec::new();
        for (label, gr) in &c.overrides {
            if !crate::selector::is_prometheus_label(label) {
                self.error(
                    format!("{field}.resources.overrides.{label}"),
                    "not a Prometheus label name",
                );
            }
            if gr.resource.trim().is_empty() {
                self.error(
                    format!("{field}.resources.overrides.{label}.resource"),
                    "must not be empty",
                );
            }
            overrides.push((label.clone(), gr.group.clone(), gr.resource.clone()));
        }
        match &c.template {
            None => ResourceMapping::new(&overrides, None),
            Some(t) => match Template::parse_resource(t) {
                Ok(render) => ResourceMapping::new(&overrides, Some(render)),
                Err(e) => {
                    self.error(format!("{field}.resources.template"), e.to_string());
                    ResourceMapping::new(&overrides, None)
                }
            },
        }
    }

    fn custom(&mut self, i: usize, c: &ExternalRuleConfig) -> Option<CustomRule> {
        let field = format!("rules[{i}]");
        let before = self.problems.len();
        let template = self.template(&c.metrics_query, format!("{field}.metricsQuery"));
        if c.series_query.trim().is_empty() {
            self.error(format!("{field}.seriesQuery"), "must not be empty");
        }
        let (keep, drop, matches, replacement) =
            self.naming(&field, &c.series_filters, c.name.as_ref());
        let mapping = self.mapping(&field, &c.resources);
        if c.resources.namespaced.is_some() {
            self.error(
                format!("{field}.resources.namespaced"),
                "only externalRules have namespaced: a custom metric is namespaced when its resource is",
            );
        }
        if mapping.is_empty() {
            self.error(
                format!("{field}.resources"),
                "a custom-metrics rule needs resources.overrides or resources.template to tie its series to Kubernetes objects",
            );
        }
        if c.ejection_aware.is_some() {
            self.error(
                format!("{field}.ejectionAware"),
                "only for externalRules and builtinRules (it scales a service's value, not an object's)",
            );
        }
        let options = self.options(&c.missing_data, &c.forecast, &None, &field);
        if self.problems.len() != before {
            return None;
        }
        Some(CustomRule {
            index: i,
            builtin: false,
            series_query: c.series_query.clone(),
            keep,
            drop,
            matches,
            replacement,
            template: template?,
            mapping,
            options,
        })
    }

    fn resource_rules(&mut self, c: &ResourceRulesConfig) -> Option<ResourceRules> {
        let before = self.problems.len();
        let cpu = self.resource_rule("resourceRules.cpu", &c.cpu);
        let memory = self.resource_rule("resourceRules.memory", &c.memory);
        if c.window.0 < Duration::from_secs(1) {
            self.error("resourceRules.window".into(), "must be at least 1s");
        }
        if self.problems.len() != before {
            return None;
        }
        Some(ResourceRules {
            cpu: cpu?,
            memory: memory?,
            window: c.window.0,
        })
    }

    fn resource_rule(&mut self, field: &str, c: &ResourceRuleConfig) -> Option<ResourceRule> {
        let container_query = self.template(&c.container_query, format!("{field}.containerQuery"));
        let node_query = self.template(&c.node_query, format!("{field}.nodeQuery"));
        // Pods, namespaces and nodes are core resources: the built-in table has them.
        let mapping = self
            .mapping(field, &c.resources)
            .resolve(&crate::resources::ResourceTable::builtin());
        for (what, r) in [
            ("pod", crate::custom::core("pods")),
            ("namespace", crate::custom::core("namespaces")),
            ("node", crate::custom::core("nodes")),
        ] {
            if mapping.label_for(&r).is_none() {
                self.error(
                    format!("{field}.resources"),
                    format!("no label is mapped to the {what} resource (add it to resources.overrides, e.g. {what}: {{resource: {what}}})"),
                );
            }
        }
        if c.resources.namespaced.is_some() {
            self.error(
                format!("{field}.resources.namespaced"),
                "only externalRules have namespaced",
            );
        }
        if !crate::selector::is_prometheus_label(&c.container_label) {
            self.error(
                format!("{field}.containerLabel"),
                "not a Prometheus label name",
            );
        }
        Some(ResourceRule {
            container_query: container_query?,
            node_query: node_query?,
            mapping,
            container_label: c.container_label.clone(),
        })
    }

    fn builtins(&mut self, c: Option<&BuiltinRulesConfig>) -> BuiltinSettings {
        let mut settings = BuiltinSettings::default();
        let Some(c) = c else {
            return settings;
        };
        settings.enabled = c.enabled.unwrap_or(true);
        if let Some(w) = &c.rate_window {
            if w.0 < Duration::from_secs(1) {
                self.error("builtinRules.rateWindow".into(), "must be at least 1s");
            }
            settings.rate_window = w.0;
        }
        if let Some(l) = &c.namespace_label {
            if !crate::selector::is_prometheus_label(l) {
                self.error(
                    "builtinRules.namespaceLabel".into(),
                    "not a Prometheus label name",
                );
            }
            settings.namespace_label = Some(l.clone());
        }
        let known = crate::rules::BUILTIN_NAMES;
        for (name, options) in &c.metrics {
            let field = format!("builtinRules.metrics.{name}");
            if !known.contains(&name.as_str()) {
                self.error(
                    field.clone(),
                    format!(
                        "no built-in metric of this name (known: {})",
                        known.join(", ")
                    ),
                );
            }
            let queueing = options.queueing.as_ref().and_then(|q| {
                if !crate::rules::QUEUEING_NAMES.contains(&name.as_str()) {
                    self.error(
                        format!("{field}.queueing"),
                        format!(
                            "only {} have queueing (it needs the proxy's request rate and latency sum)",
                            crate::rules::QUEUEING_NAMES.join(" and ")
                        ),
                    );
                }
                match q.resolve() {
                    Ok(target) => Some(crate::rules::Queueing { target }),
                    Err((name, message)) => {
                        self.error(format!("{field}.queueing.{name}"), message);
                        None
                    }
                }
            });
            let mut options = self.options(
                &options.missing_data,
                &options.forecast,
                &options.ejection_aware,
                &field,
            );
            options.queueing = queueing;
            settings.options.insert(name.clone(), options);
        }
        if let Some(p) = &c.pods {
            let mut label = |value: &Option<String>, default: &str, field: &str| {
                let l = value.clone().unwrap_or_else(|| default.to_owned());
                if !crate::selector::is_prometheus_label(&l) {
                    self.error(
                        format!("builtinRules.pods.{field}"),
                        "not a Prometheus label name",
                    );
                }
                l
            };
            let pod = label(&p.pod_label, "pod", "podLabel");
            let namespace = label(&p.namespace_label, "namespace", "namespaceLabel");
            if pod == namespace {
                self.error(
                    "builtinRules.pods.podLabel".into(),
                    "must differ from namespaceLabel",
                );
            }
            settings.pods = Some(crate::rules::PodLabels { pod, namespace });
        }
        settings
    }

    fn options(
        &mut self,
        missing_data: &Option<MissingDataConfig>,
        forecast: &Option<ForecastConfig>,
        ejection_aware: &Option<EjectionAwareConfig>,
        field: &str,
    ) -> RuleOptions {
        let missing = match missing_data {
            None => MissingData::Error,
            Some(m) => match (m.policy, &m.max_age) {
                (PolicyName::Error, None) => MissingData::Error,
                (PolicyName::Zero, None) => MissingData::Zero,
                (PolicyName::HoldLast, age) => MissingData::HoldLast {
                    max_age: age.as_ref().map_or(Duration::from_secs(300), |a| a.0),
                },
                (_, Some(_)) => {
                    self.error(
                        format!("{field}.missingData.maxAge"),
                        "only the hold-last policy has a maxAge",
                    );
                    MissingData::Error
                }
            },
        };
        let forecast = forecast.as_ref().and_then(|f| match f.resolve() {
            Ok(policy) => Some(Forecast {
                lead: policy.lead,
                window: policy.window,
                step: policy.step,
                method: f.method,
                policy,
            }),
            Err(problems) => {
                for (name, message) in problems {
                    self.error(format!("{field}.forecast.{name}"), message);
                }
                None
            }
        });
        let ejection_aware = ejection_aware.as_ref().map(|e| {
            let label = e
                .label
                .as_ref()
                .map_or_else(|| "cluster".to_owned(), |l| l.clone());
            if let Some(l) = &e.label {
                if !crate::selector::is_prometheus_label(l) {
                    self.error(
                        format!("{field}.ejectionAware.label"),
                        "not a Prometheus label name",
                    );
                }
            }
            EjectionAware { label }
        });
        RuleOptions {
            missing,
            forecast,
            ejection_aware,
            queueing: None,
        }
    }

    fn external(&mut self, i: usize, c: &ExternalRuleConfig) -> Option<ExternalRule> {
        let field = format!("externalRules[{i}]");
        let before = self.problems.len();
        let template = self.template(&c.metrics_query, format!("{field}.metricsQuery"));
        if c.series_query.trim().is_empty() {
            self.error(format!("{field}.seriesQuery"), "must not be empty");
        }
        let (keep, drop, matches, replacement) =
            self.naming(&field, &c.series_filters, c.name.as_ref());
        let mut namespace_label = None;
        for (label, gr) in &c.resources.overrides {
            if !crate::selector::is_prometheus_label(label) {
                self.error(
                    format!("{field}.resources.overrides.{label}"),
                    "not a Prometheus label name",
                );
            }
            if gr.group.is_empty() && matches!(gr.resource.as_str(), "namespace" | "namespaces") {
                namespace_label = Some(label.clone());
            }
        }
        if namespace_label.is_none() {
            if let Some(t) = &c.resources.template {
                match Template::parse_resource(t) {
                    Ok(render) => namespace_label = Some(render.render("", "namespace")),
                    Err(e) => self.error(format!("{field}.resources.template"), e.to_string()),
                }
            }
        }
        let namespaced = c.resources.namespaced.unwrap_or(true);
        let options = self.options(&c.missing_data, &c.forecast, &c.ejection_aware, &field);
        if self.problems.len() != before {
            return None;
        }
        Some(ExternalRule {
            index: i,
            series_query: c.series_query.clone(),
            keep,
            drop,
            matches,
            replacement,
            template: template?,
            namespace_label: namespaced
                .then(|| namespace_label.unwrap_or_else(|| "namespace".to_owned())),
            options,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROMETHEUS_ADAPTER: &str = r#"
externalRules:
- seriesQuery: '{__name__=~"^.*_queue_(length|size)$",namespace!=""}'
  resources:
    overrides:
      namespace: {resource: namespace}
  name:
    matches: ^.*_queue_(length|size)$
    as: "$0"
  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)
- seriesQuery: 'http_requests_total{namespace!=""}'
  seriesFilters:
  - isNot: ^.*_bucket$
  resources:
    namespaced: false
  name:
    matches: ^(.*)_total$
  metricsQuery: sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m]))
"#;

    #[test]
    fn a_prometheus_adapter_config_loads_unchanged() {
        let book = parse("adapter.yaml", PROMETHEUS_ADAPTER).unwrap();
        assert_eq!(book.external.len(), 2);
        assert_eq!(
            book.external[0].namespace_label.as_deref(),
            Some("namespace")
        );
        assert_eq!(book.external[1].namespace_label, None);
        assert_eq!(book.external[1].replacement, "$1");
        assert!(book.builtin.enabled);
    }

    #[test]
    fn gofe_options_parse() {
        let text = r#"
builtinRules:
  rateWindow: 1m
  metrics:
    http_requests_per_second:
      missingData: {policy: hold-last, maxAge: 2m}
      forecast: {lead: 60s, window: 5m, step: 10s}
externalRules:
- seriesQuery: 'queue_depth'
  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>})
  missingData: {policy: zero}
  ejectionAware: {label: svc}
"#;
        let book = parse("f.yaml", text).unwrap();
        assert_eq!(book.builtin.rate_window, Duration::from_secs(60));
        let o = &book.builtin.options["http_requests_per_second"];
        assert_eq!(
            o.missing,
            MissingData::HoldLast {
                max_age: Duration::from_secs(120)
            }
        );
        assert_eq!(o.forecast.as_ref().unwrap().lead, Duration::from_secs(60));
        assert_eq!(book.external[0].options.missing, MissingData::Zero);
        assert_eq!(
            book.external[0]
                .options
                .ejection_aware
                .as_ref()
                .unwrap()
                .label,
            "svc"
        );
    }

    #[test]
    fn seasonal_forecasts_spike_paths_and_queueing_parse() {
        let text = r#"
builtinRules:
  metrics:
    http_requests_per_second:
      forecast: {lead: 2m, method: holt-winters, period: 24h, gamma: 0.2, spike: {k: 5}}
    http_requests_per_second_ejection_aware:
      queueing: {target: 40ms}
externalRules:
- seriesQuery: 'queue_depth'
  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>})
  forecast: {lead: 60s, spike: {}, floor: none}
"#;
        let book = parse("f.yaml", text).unwrap();
        let f = book.builtin.options["http_requests_per_second"]
            .forecast
            .clone()
            .unwrap();
        assert_eq!(f.method, gofe_core::forecast::MethodName::HoltWinters);
        // Two days of history at the finest step Prometheus answers in one range query.
        assert_eq!(
            (f.window, f.step),
            (Duration::from_secs(172_800), Duration::from_secs(16))
        );
        let gofe_core::forecast::Method::HoltWinters(hw, _) = f.policy.method else {
            panic!("{:?}", f.policy.method)
        };
        assert_eq!((hw.season, hw.gamma), (5_400, 0.2));
        assert_eq!(f.policy.spike.unwrap().k, 5.0);
        assert_eq!(
            f.policy.floor,
            gofe_core::forecast::Floor::Latest,
            "the default"
        );
        let q = book.builtin.options["http_requests_per_second_ejection_aware"].queueing;
        assert_eq!(q, Some(crate::rules::Queueing { target: 0.04 }));
        let rule = book
            .builtin
            .rules()
            .into_iter()
            .find(|r| r.metric == "http_requests_per_second_ejection_aware")
            .unwrap();
        assert!(
            rule.template_text
                .contains("gofe_upstream_request_duration_seconds_sum")
                && rule.template_text.contains("/ 0.04"),
            "{}",
            rule.template_text
        );
        let spike = book.external[0].options.forecast.as_ref().unwrap();
        assert_eq!(spike.policy.spike.unwrap().k, 4.0);
        assert_eq!(spike.policy.floor, gofe_core::forecast::Floor::None);
    }

    #[test]
    fn every_forecast_and_queueing_problem_names_file_line_column_and_field() {
        let text = r#"builtinRules:
  metrics:
    http_requests_per_second:
      forecast: {lead: 60s, method: holt-winters, period: 24h, step: 15s}
    http_error_ratio:
      queueing: {target: 0s}
externalRules:
- seriesQuery: 'queue_depth'
  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>})
  forecast: {lead: 60s, gamma: 0.3, spike: {k: 0}}
- seriesQuery: 'queue_depth'
  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>})
  forecast: {lead: 60s, method: holt-winters}
"#;
        let err = parse("f.yaml", text).unwrap_err();
        let got: Vec<String> = err.problems().iter().map(|p| p.in_file("f.yaml")).collect();
        let want = [
            ("f.yaml:4:70: builtinRules.metrics.http_requests_per_second.forecast.step", "a window of 48h at step 15s is 11520 steps; Prometheus answers at most 11000: use step 16s or more"),
            ("f.yaml:6:", "builtinRules.metrics.http_error_ratio.queueing: only http_requests_per_second and http_requests_per_second_ejection_aware have queueing"),
            ("f.yaml:6:", "builtinRules.metrics.http_error_ratio.queueing.target: must be above 0"),
            ("f.yaml:10:", "externalRules[0].forecast.gamma: only method holt-winters has it"),
            ("f.yaml:10:", "externalRules[0].forecast.spike.k: must be a number above 0"),
            ("f.yaml:13:", "externalRules[1].forecast.period: method holt-winters needs a period"),
        ];
        assert_eq!(got.len(), want.len(), "{err}");
        for (g, (at, what)) in got.iter().zip(want) {
            assert!(
                g.starts_with(at) && g.contains(what),
                "{g}\nwanted {at} … {what}"
            );
        }
    }

    #[test]
    fn unsupported_things_are_errors_with_lines() {
        let text = r#"
rules:
- {seriesQuery: x, metricsQuery: "sum(x)", resources: {namespaced: true, template: "<<.Resource>>"}}
externalRules:
- seriesQuery: 'x'
  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>}) by (<<index .LabelValuesByName "a">>)
- seriesQuery: 'y'
  metricsQuery: <<.Series>>
  name: {matches: "(a", as: x}
"#;
        let err = parse("f.yaml", text).unwrap_err();
        let p = err.problems();
        assert_eq!(p.len(), 3, "{err}");
        assert_eq!(
            (p[0].line, p[0].field.as_str()),
            (Some(3), "rules[0].resources.namespaced")
        );
        assert_eq!(p[1].line, Some(6));
        assert_eq!(p[1].field, "externalRules[0].metricsQuery");
        assert!(
            p[1].message.contains("LabelValuesByName"),
            "{}",
            p[1].message
        );
        assert_eq!(p[2].line, Some(9));
        assert_eq!(p[2].field, "externalRules[1].name.matches");
        assert!(err.to_string().starts_with("f.yaml:3:"), "{err}");
    }

    #[test]
    fn unknown_fields_and_bad_values_name_line_and_field() {
        let err = parse(
            "f.yaml",
            "externalRules:\n- seriesQuery: x\n  metricsQuery: y\n  metricQuery: z\n",
        )
        .unwrap_err();
        let p = &err.problems()[0];
        assert_eq!(p.line, Some(4), "{err}");
        assert!(p.message.contains("metricQuery"), "{err}");
        let err = parse(
            "f.yaml",
            "builtinRules:\n  metrics:\n    http_requests_per_second:\n      missingData: {policy: guess}\n",
        )
        .unwrap_err();
        let p = &err.problems()[0];
        assert_eq!(p.line, Some(4), "{err}");
        assert!(p.field.contains("missingData"), "{err}");
        let err = parse(
            "f.yaml",
            "externalRules:\n- seriesQuery: x\n  metricsQuery: y\n  missingData: {policy: hold-last, maxAge: 5x}\n",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "f.yaml:4:44: externalRules[0].missingData.maxAge: invalid duration \"5x\": unknown unit (write e.g. \"30s\", \"250ms\", \"1m30s\")"
        );
    }

    #[test]
    fn prometheus_adapters_documented_configs_load() {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/prometheus-adapter"
        );
        let sample = load(Path::new(&format!("{dir}/sample-config.yaml"))).unwrap();
        assert_eq!(
            (sample.custom.len(), sample.external.len()),
            (4, 2),
            "every rule of every section"
        );
        let resource = sample.resource.as_ref().unwrap();
        assert_eq!(resource.window, Duration::from_secs(60));
        assert_eq!(resource.cpu.labels().2.as_deref(), Some("instance"));
        let brand = sample.custom[3]
            .mapping
            .overrides
            .iter()
            .find(|o| o.label == "brand")
            .unwrap();
        assert_eq!(
            (brand.group.as_str(), brand.resource.as_str()),
            ("cheese.io", "brand")
        );
        let helm = load(Path::new(&format!("{dir}/helm-chart-defaults.yaml"))).unwrap();
        assert_eq!(helm.custom.len(), 6);
        assert_eq!(
            helm.custom[0].replacement, "$1",
            "as: \"\" with one group is $1"
        );
        assert_eq!(helm.custom[3].replacement, "$0");
        let walkthrough = load(Path::new(&format!("{dir}/walkthrough.yaml"))).unwrap();
        assert_eq!(walkthrough.custom[0].replacement, "${1}_per_second");
    }

    #[test]
    fn built_in_metrics_per_pod_are_custom_rules_after_the_files() {
        let off = parse("f.yaml", "").unwrap();
        assert!(off.custom.is_empty(), "off by default");
        let text = "rules:\n- seriesQuery: 'x{pod!=\"\"}'\n  metricsQuery: sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)\n  resources: {overrides: {pod: {resource: pod}}}\nbuiltinRules:\n  rateWindow: 1m\n  pods: { podLabel: kubernetes_pod_name }\n";
        let book = parse("f.yaml", text).unwrap();
        assert_eq!(book.custom.len(), 1 + 6);
        assert!(!book.custom[0].builtin);
        let builtin = &book.custom[1..];
        assert!(builtin.iter().all(|r| r.builtin));
        let names: Vec<&str> = builtin.iter().map(|r| r.replacement.as_str()).collect();
        assert_eq!(
            names,
            [
                "http_requests_per_second",
                "http_request_duration_seconds_p50",
                "http_request_duration_seconds_p90",
                "http_request_duration_seconds_p99",
                "http_error_ratio",
                "http_requests_active"
            ]
        );
        assert_eq!(
            builtin[0].series_query,
            "gofe_upstream_requests_total{kubernetes_pod_name!=\"\",namespace!=\"\"}"
        );
        assert!(builtin[0].template.source().contains("[1m]"));
        let labels: Vec<&str> = builtin[0]
            .mapping
            .overrides
            .iter()
            .map(|o| o.label.as_str())
            .collect();
        assert_eq!(labels, ["kubernetes_pod_name", "namespace"]);
        let disabled = parse("f.yaml", "builtinRules:\n  enabled: false\n  pods: {}\n").unwrap();
        assert!(disabled.custom.is_empty(), "the built-ins are off");

        let err = parse("f.yaml", "builtinRules:\n  pods:\n    colour: red\n").unwrap_err();
        let p = &err.problems()[0];
        assert!(
            p.to_string().contains("colour") && p.line == Some(3),
            "{err}"
        );
        let err = parse(
            "f.yaml",
            "builtinRules:\n  pods:\n    podLabel: \"a pod\"\n",
        )
        .unwrap_err();
        assert_eq!(
            err.problems()[0].field,
            "builtinRules.pods.podLabel",
            "{err}"
        );
        assert_eq!(err.problems()[0].line, Some(3), "{err}");
        let err = parse(
            "f.yaml",
            "builtinRules:\n  pods: { podLabel: ns, namespaceLabel: ns }\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("must differ"), "{err}");
    }

    #[test]
    fn custom_and_resource_rule_problems_name_line_and_field() {
        let text = r#"
rules:
- seriesQuery: 'http_requests_total'
  metricsQuery: sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m]) by (<<.GroupBy>>)
  resources: {overrides: {pod: {resource: pod}}}
- seriesQuery: 'y'
  metricsQuery: sum(<<.Series>>)
  ejectionAware: {}
resourceRules:
  cpu:
    containerQuery: sum(x{<<.LabelMatchers>>}) by (<<.GroupBy>>)
    nodeQuery: sum(x{<<.LabelMatchers>>}) by (<<.GroupBy>>)
    resources: {overrides: {pod: {resource: pod}, namespace: {resource: namespace}}}
    containerLabel: container
  memory:
    containerQuery: sum(x{<<.LabelMatchers>>}) by (<<index .LabelValuesByName "pod">>)
    nodeQuery: sum(x{<<.LabelMatchers>>}) by (<<.GroupBy>>)
    resources: {overrides: {pod: {resource: pod}, namespace: {resource: namespace}, node: {resource: node}}}
    containerLabel: container
  window: 3m
"#;
        let err = parse("f.yaml", text).unwrap_err();
        let got: Vec<(Option<usize>, &str)> = err
            .problems()
            .iter()
            .map(|p| (p.line, p.field.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (Some(4), "rules[0].metricsQuery"),
                (Some(6), "rules[1].resources"),
                (Some(8), "rules[1].ejectionAware"),
                (Some(13), "resourceRules.cpu.resources"),
                (Some(16), "resourceRules.memory.containerQuery"),
            ],
            "{err}"
        );
        assert!(err.problems()[0].message.contains("PromQL"), "{err}");
        assert!(err.problems()[3].message.contains("node"), "{err}");
    }

    #[test]
    fn empty_text_is_builtins_only() {
        let book = parse("f.yaml", "").unwrap();
        assert!(book.builtin.enabled && book.external.is_empty());
    }
}
