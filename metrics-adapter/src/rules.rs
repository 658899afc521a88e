//! Rules: which metric names exist, and the PromQL each one runs for a namespace and selector.
//!
//! Two kinds of rule end up as the same [`Rule`]:
//!
//! - **built-in** rules over the gofe proxy's metrics, always present unless disabled. The
//!   HPA's selector key `service` is the proxy's `cluster` label: `service=api` becomes
//!   `cluster="api"` in PromQL, and a result's `cluster` label is reported as `service`.
//! - **external** rules in prometheus-adapter's format. Their metric names come from
//!   discovery: the `seriesQuery` is listed in Prometheus and each series name that passes the
//!   filters is turned into a metric name by `name.matches`/`name.as` ([`ExternalRule::instantiate`]).
//!
//! Ejection-aware rules wrap the query so that its value is multiplied, per service, by
//! `total endpoints / serving endpoints`, read from [`EJECTED_METRIC`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::selector::{Matcher, Selector, SelectorError};
use gofe_core::forecast::{ForecastPolicy, MethodName};

/// The ejection state the gofe controller exports: `gofe_endpoint_ejected{cluster,endpoint}`,
/// a gauge that is 1 while an endpoint is ejected (not serving) and 0 while it serves.
pub const EJECTED_METRIC: &str = "gofe_endpoint_ejected";

/// Names of the built-in metrics.
pub const BUILTIN_NAMES: &[&str] = &[
    "http_requests_per_second",
    "http_requests_per_second_ejection_aware",
    "http_request_duration_seconds_p50",
    "http_request_duration_seconds_p90",
    "http_request_duration_seconds_p99",
    "http_error_ratio",
    "http_requests_active",
];

/// What to answer when Prometheus has no usable value (no series, NaN, or unreachable).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "policy")]
pub enum MissingData {
    /// Answer an error (the HPA keeps its current scale). The default.
    #[default]
    Error,
    /// Answer 0 when the query succeeded but matched nothing. Prometheus being unreachable is
    /// still an error: an outage is not zero traffic.
    Zero,
    /// Answer the last good value while it is younger than `max_age`, then an error.
    HoldLast {
        /// The oldest value still served.
        #[serde(rename = "maxAge", serialize_with = "ser_duration")]
        max_age: Duration,
    },
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&gofe_yaml::duration::format(*d))
}

/// Forecasting options of a rule.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Forecast {
    /// How far ahead the served value looks.
    #[serde(serialize_with = "ser_duration")]
    pub lead: Duration,
    /// History fetched for the fit.
    #[serde(serialize_with = "ser_duration")]
    pub window: Duration,
    /// Spacing of the history samples.
    #[serde(serialize_with = "ser_duration")]
    pub step: Duration,
    /// `holt` or `holt-winters`.
    pub method: MethodName,
    /// The checked policy: the model, its factors and the spike path.
    #[serde(skip)]
    pub policy: ForecastPolicy,
}

/// The built-in metrics that may have the `queueing` option.
pub const QUEUEING_NAMES: &[&str] = &[
    "http_requests_per_second",
    "http_requests_per_second_ejection_aware",
];

/// The queueing option of a built-in request rate: the rule serves
/// `max(rate, in flight / target)` ([`gofe_core::queueing::pressure`]), the proxy's request
/// rate and its latency sum's rate (in flight, Little's law) per service.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Queueing {
    /// The mean latency the service should keep, seconds.
    pub target: f64,
}

/// Ejection-aware scaling options of a rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EjectionAware {
    /// The Prometheus label that names the mesh service (the proxy's cluster) in the rule's
    /// result and in [`EJECTED_METRIC`].
    pub label: String,
}

/// gofe's per-rule options.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleOptions {
    /// Missing-data policy.
    pub missing: MissingData,
    /// Forecasting, when enabled.
    pub forecast: Option<Forecast>,
    /// Ejection awareness, when enabled.
    pub ejection_aware: Option<EjectionAware>,
    /// Queueing pressure instead of the rate (built-in request rates only), when enabled.
    pub queueing: Option<Queueing>,
}

// === templates ===

/// Why a template was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `<<` without `>>`.
    #[error("unclosed '<<' at byte {0}")]
    Unclosed(usize),
    /// An action other than the supported fields.
    #[error("unsupported template action <<{0}>>: gofe supports <<.Series>>, <<.LabelMatchers>>, <<.GroupBy>> and <<.GroupBySlice>> (and <<.Resource>>, <<.Group>> in resources.template)")]
    Unsupported(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Series,
    LabelMatchers,
    GroupBy,
    GroupBySlice,
}

/// A parsed `resources.template` (e.g. `kube_<<.Resource>>`): from a (group, singular
/// resource) to a label name. As in prometheus-adapter, the group's dots become underscores so
/// the result is a label name (`apps`, `cheese_io`; empty for core).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceTemplate {
    source: String,
    /// Ok(text) or Err(action).
    parts: Vec<Result<String, String>>,
}

impl ResourceTemplate {
    /// The label naming objects of `resource` (singular) in `group`.
    pub fn render(&self, group: &str, resource: &str) -> String {
        let group = group.replace('.', "_");
        self.parts
            .iter()
            .map(|p| match p {
                Ok(t) => t.as_str(),
                Err(a) if a == ".Resource" => resource,
                Err(_) => group.as_str(),
            })
            .collect()
    }

    /// The template as written.
    pub fn source(&self) -> &str {
        &self.source
    }
}

impl Serialize for ResourceTemplate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

/// A parsed `metricsQuery`: Go-template text with `<<`/`>>` delimiters, restricted to the
/// fields an external metric query has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    source: String,
    pieces: Vec<Piece>,
}

fn split_actions(text: &str) -> Result<Vec<Result<String, String>>, TemplateError> {
    // Ok(text) or Err(action)
    let mut out = Vec::new();
    let mut rest = text;
    let mut offset = 0;
    while let Some(start) = rest.find("<<") {
        out.push(Ok(rest[..start].to_owned()));
        let after = &rest[start + 2..];
        let end = after
            .find(">>")
            .ok_or(TemplateError::Unclosed(offset + start))?;
        out.push(Err(after[..end].trim().to_owned()));
        offset += start + 2 + end + 2;
        rest = &after[end + 2..];
    }
    out.push(Ok(rest.to_owned()));
    Ok(out)
}

impl Template {
    /// Parses a `metricsQuery`.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let pieces = split_actions(text)?
            .into_iter()
            .map(|p| match p {
                Ok(t) => Ok(Piece::Text(t)),
                Err(a) => match a.as_str() {
                    ".Series" => Ok(Piece::Series),
                    ".LabelMatchers" => Ok(Piece::LabelMatchers),
                    ".GroupBy" => Ok(Piece::GroupBy),
                    ".GroupBySlice" => Ok(Piece::GroupBySlice),
                    _ => Err(TemplateError::Unsupported(a)),
                },
            })
            .collect::<Result<_, _>>()?;
        Ok(Template {
            source: text.to_owned(),
            pieces,
        })
    }

    /// Parses a `resources.template` (e.g. `kube_<<.Resource>>`): see [`ResourceTemplate`].
    pub fn parse_resource(text: &str) -> Result<ResourceTemplate, TemplateError> {
        let parts = split_actions(text)?;
        for p in &parts {
            if let Err(a) = p {
                if a != ".Resource" && a != ".Group" {
                    return Err(TemplateError::Unsupported(a.clone()));
                }
            }
        }
        Ok(ResourceTemplate {
            source: text.to_owned(),
            parts,
        })
    }

    /// The template text as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the template uses `<<.LabelMatchers>>`.
    pub fn uses_label_matchers(&self) -> bool {
        self.pieces.contains(&Piece::LabelMatchers)
    }

    /// Renders the query, as prometheus-adapter's Go template would: `<<.LabelMatchers>>` is
    /// the matchers comma-separated, `<<.GroupBy>>` the labels comma-separated, and
    /// `<<.GroupBySlice>>` the labels as Go prints a `[]string` (`[pod container]`).
    pub fn render(&self, series: &str, matchers: &[Matcher], group_by: &[String]) -> String {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Series => out.push_str(series),
                Piece::LabelMatchers => {
                    for (i, m) in matchers.iter().enumerate() {
                        if i > 0 {
                            out.push(',');
                        }
                        let _ = write!(out, "{m}");
                    }
                }
                Piece::GroupBy => out.push_str(&group_by.join(",")),
                Piece::GroupBySlice => {
                    out.push('[');
                    out.push_str(&group_by.join(" "));
                    out.push(']');
                }
            }
        }
        out
    }
}

// === rules ===

/// Where a rule came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum RuleSource {
    /// A built-in rule over the gofe proxy's metrics.
    Builtin,
    /// `externalRules[index]` of the rules file, for one discovered series.
    External {
        /// Position in `externalRules`.
        index: usize,
        /// The series name that became this metric.
        series: String,
    },
    /// `rules[index]`: a custom metric of a resource.
    Custom {
        /// Position in `rules`.
        index: usize,
        /// The series name that became this metric.
        series: String,
        /// The resource (`pods`, `deployments.apps`).
        resource: String,
    },
    /// `resourceRules.cpu` or `.memory`.
    Resource {
        /// `cpu` or `memory`.
        name: String,
    },
}

/// One served metric: everything needed to build its query.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    /// The metric name the HPA asks for.
    pub metric: String,
    /// Where the rule came from.
    pub source: RuleSource,
    /// The `metricsQuery` template text.
    #[serde(rename = "metricsQuery")]
    pub template_text: String,
    #[serde(skip)]
    template: Template,
    #[serde(skip)]
    series: String,
    /// When set, the HPA's namespace is matched on this Prometheus label.
    pub namespace_label: Option<String>,
    /// Selector keys that are spelled differently in Prometheus: (selector key, Prometheus
    /// label). Result labels are renamed back.
    pub label_map: Vec<(String, String)>,
    /// gofe's options.
    pub options: RuleOptions,
}

impl Rule {
    /// A rule whose query is rendered elsewhere (custom and resource metrics): what the
    /// provider's cache and missing-data policy need of it.
    pub fn prepared(
        metric: String,
        source: RuleSource,
        template_text: String,
        options: RuleOptions,
    ) -> Self {
        Rule {
            metric,
            source,
            template: Template {
                source: template_text.clone(),
                pieces: Vec::new(),
            },
            template_text,
            series: String::new(),
            namespace_label: None,
            label_map: Vec::new(),
            options,
        }
    }

    /// The Prometheus label for a selector key.
    fn prometheus_label<'a>(&'a self, key: &'a str) -> &'a str {
        self.label_map
            .iter()
            .find(|(k, _)| k == key)
            .map_or(key, |(_, p)| p.as_str())
    }

    /// The selector key for a Prometheus result label.
    pub fn metric_label<'a>(&'a self, label: &'a str) -> &'a str {
        self.label_map
            .iter()
            .find(|(_, p)| p == label)
            .map_or(label, |(k, _)| k.as_str())
    }

    /// The PromQL this metric runs for `namespace` and `selector`.
    pub fn render(&self, namespace: &str, selector: &Selector) -> Result<String, SelectorError> {
        let mut matchers = Vec::with_capacity(selector.requirements.len() + 1);
        if let Some(label) = &self.namespace_label {
            matchers.push(Matcher::equals(label, namespace));
        }
        for r in &selector.requirements {
            matchers.push(r.to_matcher(self.prometheus_label(&r.key))?);
        }
        let query = self.template.render(&self.series, &matchers, &[]);
        Ok(match &self.options.ejection_aware {
            None => query,
            Some(e) => {
                let l = &e.label;
                let own: Vec<String> = matchers
                    .iter()
                    .filter(|m| &m.label == l)
                    .map(|m| m.to_string())
                    .collect();
                let ejected = format!("{EJECTED_METRIC}{{{}}}", own.join(","));
                format!(
                    "({query}) * on({l}) group_left() ((count by ({l}) ({ejected}) / clamp_min(count by ({l}) ({ejected}) - sum by ({l}) ({ejected}), 1)) or on({l}) (count by ({l}) ({query}) * 0 + 1))"
                )
            }
        })
    }
}

/// Settings of the built-in rules.
#[derive(Clone, Debug, PartialEq)]
pub struct BuiltinSettings {
    /// Serve them. Default `true`.
    pub enabled: bool,
    /// `rate()` window. Default 2 minutes.
    pub rate_window: Duration,
    /// Namespace label, when the built-ins are namespaced. Default: not namespaced.
    pub namespace_label: Option<String>,
    /// Options per built-in metric name. Default: `missingData: error`, no forecast;
    /// `http_requests_per_second_ejection_aware` is ejection-aware on `cluster`.
    pub options: BTreeMap<String, RuleOptions>,
    /// With these labels, the built-in metrics are served per Pod too. Default: not.
    pub pods: Option<PodLabels>,
}

/// The Prometheus labels naming a sidecar proxy's pod and its namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodLabels {
    /// The pod's label (`pod`).
    pub pod: String,
    /// The namespace's label (`namespace`).
    pub namespace: String,
}

impl Default for BuiltinSettings {
    fn default() -> Self {
        BuiltinSettings {
            enabled: true,
            rate_window: Duration::from_secs(120),
            namespace_label: None,
            options: BTreeMap::new(),
            pods: None,
        }
    }
}

impl BuiltinSettings {
    /// The built-in metrics per Pod (and per namespace), as custom-metrics rules numbered from
    /// `first_index`: each discovers the proxies' series that carry the pod and namespace
    /// labels, and asks for the same quantities as the built-in external metrics, summed by
    /// pod instead of by cluster. A sidecar's upstream is its pod's application, so these are
    /// the pod's own request rate, latency, errors and requests in flight. None unless
    /// [`BuiltinSettings::pods`] is set (and the built-ins are enabled).
    pub fn pod_rules(&self, first_index: usize) -> Vec<crate::custom::CustomRule> {
        let Some(labels) = self.pods.as_ref().filter(|_| self.enabled) else {
            return Vec::new();
        };
        let w = promql_duration(self.rate_window);
        let has = format!("{}!=\"\",{}!=\"\"", labels.pod, labels.namespace);
        let rate =
            |series: &str, extra: &str| format!("rate({series}{{{extra}<<.LabelMatchers>>}}[{w}])");
        let total = rate("gofe_upstream_requests_total", "");
        let rps = format!("sum by (<<.GroupBy>>) ({total})");
        let errors = format!(
            "(sum by (<<.GroupBy>>) ({}) or {rps} * 0) / {rps}",
            rate("gofe_upstream_requests_total", "code_class=\"5xx\",")
        );
        let quantile = |q: &str| {
            format!(
                "histogram_quantile({q}, sum by (<<.GroupBy>>, le) ({}))",
                rate("gofe_upstream_request_duration_seconds_bucket", "")
            )
        };
        let requests = format!("gofe_upstream_requests_total{{{has}}}");
        let buckets = format!("gofe_upstream_request_duration_seconds_bucket{{{has}}}");
        let defs: [(&str, &str, String); 6] = [
            ("http_requests_per_second", &requests, rps),
            (
                "http_request_duration_seconds_p50",
                &buckets,
                quantile("0.5"),
            ),
            (
                "http_request_duration_seconds_p90",
                &buckets,
                quantile("0.9"),
            ),
            (
                "http_request_duration_seconds_p99",
                &buckets,
                quantile("0.99"),
            ),
            ("http_error_ratio", &requests, errors),
            (
                "http_requests_active",
                &format!("gofe_upstream_requests_active{{{has}}}"),
                "sum by (<<.GroupBy>>) (gofe_upstream_requests_active{<<.LabelMatchers>>})"
                    .to_owned(),
            ),
        ];
        let mapping = crate::custom::ResourceMapping::new(
            &[
                (labels.pod.clone(), String::new(), "pod".to_owned()),
                (
                    labels.namespace.clone(),
                    String::new(),
                    "namespace".to_owned(),
                ),
            ],
            None,
        );
        defs.into_iter()
            .enumerate()
            .filter_map(|(k, (name, series_query, text))| {
                let mut options = self.options.get(name).cloned().unwrap_or_default();
                // Ejection awareness is about a service's endpoints, not one pod's value.
                options.ejection_aware = None;
                let text = match options.queueing {
                    Some(q) if name == "http_requests_per_second" => {
                        with_queueing(&text, "<<.GroupBy>>", &w, q.target)
                    }
                    _ => text,
                };
                Some(crate::custom::CustomRule {
                    index: first_index + k,
                    builtin: true,
                    series_query: series_query.to_owned(),
                    keep: Vec::new(),
                    drop: Vec::new(),
                    matches: None,
                    replacement: name.to_owned(),
                    template: Template::parse(&text).ok()?,
                    mapping: mapping.clone(),
                    options,
                })
            })
            .collect()
    }

    /// The built-in rules.
    pub fn rules(&self) -> Vec<Rule> {
        if !self.enabled {
            return Vec::new();
        }
        let w = promql_duration(self.rate_window);
        let total = format!("rate(gofe_upstream_requests_total{{<<.LabelMatchers>>}}[{w}])");
        let rps = format!("sum by (cluster) ({total})");
        let quantile = |q: &str| {
            format!("histogram_quantile({q}, sum by (cluster, le) (rate(gofe_upstream_request_duration_seconds_bucket{{<<.LabelMatchers>>}}[{w}])))")
        };
        let errors = format!(
            "(sum by (cluster) (rate(gofe_upstream_requests_total{{code_class=\"5xx\",<<.LabelMatchers>>}}[{w}])) or {rps} * 0) / {rps}"
        );
        let defs: [(&str, String); 7] = [
            ("http_requests_per_second", rps.clone()),
            ("http_requests_per_second_ejection_aware", rps),
            ("http_request_duration_seconds_p50", quantile("0.5")),
            ("http_request_duration_seconds_p90", quantile("0.9")),
            ("http_request_duration_seconds_p99", quantile("0.99")),
            ("http_error_ratio", errors),
            (
                "http_requests_active",
                "sum by (cluster) (gofe_upstream_requests_active{<<.LabelMatchers>>})".to_owned(),
            ),
        ];
        defs.into_iter()
            .filter_map(|(name, text)| {
                let mut options = self.options.get(name).cloned().unwrap_or_default();
                let text = match options.queueing {
                    Some(q) if QUEUEING_NAMES.contains(&name) => {
                        with_queueing(&text, "cluster", &w, q.target)
                    }
                    _ => text,
                };
                let template = Template::parse(&text).ok()?;
                if name == "http_requests_per_second_ejection_aware"
                    && options.ejection_aware.is_none()
                {
                    options.ejection_aware = Some(EjectionAware {
                        label: "cluster".into(),
                    });
                }
                Some(Rule {
                    metric: name.to_owned(),
                    source: RuleSource::Builtin,
                    template_text: text,
                    template,
                    series: String::new(),
                    namespace_label: self.namespace_label.clone(),
                    label_map: vec![("service".into(), "cluster".into())],
                    options,
                })
            })
            .collect()
    }
}

/// `max(rate, in flight / target)` per `by` group in PromQL: `rate` is the request-rate query;
/// in flight is the rate of the proxy's latency sum (Little's law). A group without latency
/// data keeps its rate.
fn with_queueing(rate: &str, by: &str, w: &str, target: f64) -> String {
    let flying = format!(
        "sum by ({by}) (rate(gofe_upstream_request_duration_seconds_sum{{<<.LabelMatchers>>}}[{w}])) / {target}"
    );
    format!("({rate} >= {flying}) or ({flying}) or ({rate})")
}

/// A duration in PromQL syntax, whole units where possible (`2m`, `90s`, `1500ms`).
pub fn promql_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".to_owned(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
    }
}

/// A validated prometheus-adapter external rule, before discovery.
#[derive(Clone, Debug)]
pub struct ExternalRule {
    /// Position in `externalRules`.
    pub index: usize,
    /// The discovery series selector.
    pub series_query: String,
    /// `seriesFilters` `is` regexes.
    pub keep: Vec<regex::Regex>,
    /// `seriesFilters` `isNot` regexes.
    pub drop: Vec<regex::Regex>,
    /// `name.matches`; `None` matches every name.
    pub matches: Option<regex::Regex>,
    /// `name.as`, with `$n` references.
    pub replacement: String,
    /// The `metricsQuery`.
    pub template: Template,
    /// Namespace label when namespaced.
    pub namespace_label: Option<String>,
    /// gofe's options.
    pub options: RuleOptions,
}

impl ExternalRule {
    /// The rule for series `series`, or `None` when the filters or `name.matches` reject it.
    pub fn instantiate(&self, series: &str) -> Option<Rule> {
        if !self.keep.iter().all(|r| r.is_match(series))
            || self.drop.iter().any(|r| r.is_match(series))
        {
            return None;
        }
        let metric = match &self.matches {
            None => {
                let all = regex::Regex::new("^.*$").ok()?;
                expand(&all, series, &self.replacement)?
            }
            Some(re) => expand(re, series, &self.replacement)?,
        };
        if metric.is_empty() {
            return None;
        }
        Some(Rule {
            metric,
            source: RuleSource::External {
                index: self.index,
                series: series.to_owned(),
            },
            template_text: self.template.source().to_owned(),
            template: self.template.clone(),
            series: series.to_owned(),
            namespace_label: self.namespace_label.clone(),
            label_map: Vec::new(),
            options: self.options.clone(),
        })
    }
}

fn expand(re: &regex::Regex, name: &str, replacement: &str) -> Option<String> {
    let caps = re.captures(name)?;
    let mut out = String::new();
    caps.expand(replacement, &mut out);
    Some(out)
}

/// Everything the rules file defines.
#[derive(Clone, Debug, Default)]
pub struct RuleBook {
    /// Built-in rule settings.
    pub builtin: BuiltinSettings,
    /// External rules awaiting discovery.
    pub external: Vec<ExternalRule>,
    /// Custom-metrics rules awaiting discovery.
    pub custom: Vec<crate::custom::CustomRule>,
    /// Resource-metrics rules, when configured.
    pub resource: Option<crate::custom::ResourceRules>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn builtin(name: &str) -> Rule {
        BuiltinSettings::default()
            .rules()
            .into_iter()
            .find(|r| r.metric == name)
            .unwrap()
    }

    fn sel(s: &str) -> Selector {
        Selector::parse(s).unwrap()
    }

    #[test]
    fn builtin_rps_maps_service_to_cluster() {
        let q = builtin("http_requests_per_second")
            .render("default", &sel("service=api-service"))
            .unwrap();
        assert_eq!(
            q,
            "sum by (cluster) (rate(gofe_upstream_requests_total{cluster=\"api-service\"}[2m]))"
        );
        let r = builtin("http_requests_per_second");
        assert_eq!(r.metric_label("cluster"), "service");
        assert_eq!(r.metric_label("endpoint"), "endpoint");
    }

    #[test]
    fn builtin_latency_and_errors_render() {
        let q = builtin("http_request_duration_seconds_p99")
            .render("ns", &sel("service in (a,b)"))
            .unwrap();
        assert_eq!(q, "histogram_quantile(0.99, sum by (cluster, le) (rate(gofe_upstream_request_duration_seconds_bucket{cluster=~\"a|b\"}[2m])))");
        let q = builtin("http_error_ratio").render("ns", &sel("")).unwrap();
        assert!(q.starts_with("(sum by (cluster) (rate(gofe_upstream_requests_total{code_class=\"5xx\",}[2m])) or "), "{q}");
    }

    #[test]
    fn ejection_aware_wraps_the_query() {
        let q = builtin("http_requests_per_second_ejection_aware")
            .render("ns", &sel("service=api"))
            .unwrap();
        let base = "sum by (cluster) (rate(gofe_upstream_requests_total{cluster=\"api\"}[2m]))";
        let e = "gofe_endpoint_ejected{cluster=\"api\"}";
        assert_eq!(
            q,
            format!("({base}) * on(cluster) group_left() ((count by (cluster) ({e}) / clamp_min(count by (cluster) ({e}) - sum by (cluster) ({e}), 1)) or on(cluster) (count by (cluster) ({base}) * 0 + 1))")
        );
    }

    #[test]
    fn templates_accept_only_known_fields() {
        let t =
            Template::parse("sum(<<.Series>>{<< .LabelMatchers >>}) by (<<.GroupBy>>)").unwrap();
        let m = [
            Matcher::equals("namespace", "ns"),
            Matcher::equals("q", "x"),
        ];
        assert_eq!(
            t.render("queue", &m, &[]),
            "sum(queue{namespace=\"ns\",q=\"x\"}) by ()"
        );
        assert!(
            matches!(Template::parse("<<.Foo>>"), Err(TemplateError::Unsupported(a)) if a == ".Foo")
        );
        assert!(matches!(
            Template::parse("<<range .X>>"),
            Err(TemplateError::Unsupported(_))
        ));
        assert_eq!(
            Template::parse("a<<.Series"),
            Err(TemplateError::Unclosed(1))
        );
        let label = Template::parse_resource("kube_<<.Resource>>").unwrap();
        assert_eq!(label.render("", "namespace"), "kube_namespace");
        let label = Template::parse_resource("kube_<<.Group>>_<<.Resource>>").unwrap();
        assert_eq!(label.render("cheese.io", "brand"), "kube_cheese_io_brand");
        let t = Template::parse("sum(x) by (<<.GroupBy>>) <<.GroupBySlice>>").unwrap();
        assert_eq!(
            t.render("x", &[], &["pod".into(), "container".into()]),
            "sum(x) by (pod,container) [pod container]"
        );
    }

    #[test]
    fn external_rules_name_and_filter_series() {
        let rule = ExternalRule {
            index: 0,
            series_query: "x".into(),
            keep: vec![],
            drop: vec![regex::Regex::new("_bucket$").unwrap()],
            matches: Some(regex::Regex::new("^(.*)_total$").unwrap()),
            replacement: "${1}_per_second".into(),
            template: Template::parse("sum(rate(<<.Series>>{<<.LabelMatchers>>}[1m]))").unwrap(),
            namespace_label: Some("namespace".into()),
            options: RuleOptions::default(),
        };
        let r = rule.instantiate("jobs_total").unwrap();
        assert_eq!(r.metric, "jobs_per_second");
        assert_eq!(
            r.render("team-a", &sel("queue!=low")).unwrap(),
            "sum(rate(jobs_total{namespace=\"team-a\",queue!=\"low\"}[1m]))"
        );
        assert!(rule.instantiate("jobs_bucket").is_none());
        assert!(rule.instantiate("jobs_count").is_none());
    }
}
