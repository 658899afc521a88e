//! The provider: from (metric, namespace, selector) to values, through the cache.
//!
//! ```text
//! request ─▶ rule lookup ─▶ render PromQL ─▶ cache (fresh? share) ─▶ single flight ─▶ Prometheus
//!                                                  ▲                        │
//!                                                  └── last good value ◀────┘ missing-data policy
//! ```
//!
//! Every (metric, namespace, canonical selector) has one cache slot. A slot holds a
//! `OnceCell` for its current answer: the first request starts the query, concurrent requests
//! await the same cell (single flight), and later requests reuse the answer until it is older
//! than the freshness. Errors are cached the same way, so an unreachable Prometheus is asked at
//! most once per key and interval too. The slot also keeps the last *good* answer for the
//! `hold-last` policy. The number of slots is bounded; when full, expired slots go first, then
//! the oldest.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gofe_prom::{Client as PrometheusClient, Error as PromError, Sample};
use serde::Serialize;
use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::custom::{CustomMetric, Objects, ResourceRules, ResourceTarget};
use crate::quantity::MilliQuantity;
use crate::rules::{MissingData, Rule, RuleBook, RuleOptions, RuleSource};
use crate::scrape::{ScrapeError, ScrapeSource};
use crate::selector::{Selector, SelectorError};

/// One value of an external metric.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MetricValue {
    /// The series' labels, with selector key names (e.g. `service`, not `cluster`).
    pub labels: BTreeMap<String, String>,
    /// When the value was measured (or forecast from), Unix seconds.
    pub timestamp: f64,
    /// The value in milli-units.
    #[serde(serialize_with = "ser_quantity")]
    pub value: MilliQuantity,
}

fn ser_quantity<S: serde::Serializer>(q: &MilliQuantity, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(q)
}

/// A successful answer.
#[derive(Clone, Debug, Serialize)]
pub struct Answer {
    /// The values (at least one).
    pub items: Vec<MetricValue>,
    /// `true` when the `hold-last` policy served an earlier answer.
    pub held: bool,
    /// `true` when the `zero` policy made up the value for no data.
    pub zero_filled: bool,
    #[serde(skip)]
    fetched_at: Instant,
}

impl Answer {
    /// An answer with no values (a resource metrics list with nothing to show).
    pub fn empty() -> Self {
        Answer {
            items: Vec::new(),
            held: false,
            zero_filled: false,
            fetched_at: Instant::now(),
        }
    }
}

/// Why a metric has no value.
#[derive(Clone, Debug, thiserror::Error)]
pub enum FetchError {
    /// No rule defines this metric.
    #[error("metric {0:?} is not served by this adapter")]
    UnknownMetric(String),
    /// The selector is malformed or cannot be expressed in PromQL.
    #[error(transparent)]
    BadSelector(#[from] SelectorError),
    /// The query succeeded but no usable value matched (and the policy did not fill one in).
    #[error("no data for metric {metric:?} and selector {selector:?}")]
    NoData {
        /// The metric.
        metric: String,
        /// The canonical selector.
        selector: String,
    },
    /// Prometheus could not be reached (and the policy did not hold a value).
    #[error(transparent)]
    Unavailable(PromError),
    /// The scrape source has no value (no rate yet, or the metric needs Prometheus).
    #[error(transparent)]
    Scrape(#[from] ScrapeError),
    /// Prometheus rejected the rule's query or answered nonsense: a rule or server problem.
    #[error("rule for metric {metric:?} failed: {source}")]
    Rule {
        /// The metric.
        metric: String,
        /// The Prometheus error.
        #[source]
        source: PromError,
    },
}

type Outcome = Result<Arc<Answer>, FetchError>;

#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct Key {
    metric: String,
    namespace: String,
    selector: String,
}

struct Slot {
    cell: Arc<OnceCell<Outcome>>,
    created: Instant,
    last_good: Option<Arc<Answer>>,
}

/// Cache settings.
#[derive(Clone, Copy, Debug)]
pub struct CacheConfig {
    /// How long an answer is reused. `0s` disables reuse (in-flight sharing stays). Default 10 s.
    pub freshness: Duration,
    /// Most (metric, namespace, selector) slots kept. Default 10 000.
    pub capacity: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            freshness: Duration::from_secs(10),
            capacity: 10_000,
        }
    }
}

/// The last query of a metric, for `/debug/rules`.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LastResult {
    /// Namespace asked for.
    pub namespace: String,
    /// Canonical selector asked for.
    pub selector: String,
    /// The PromQL run.
    pub query: String,
    /// Unix seconds of the query.
    pub at: f64,
    /// The values, when it succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<MetricValue>>,
    /// The error, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A range query's points as the evenly spaced history a forecast reads: Prometheus leaves out
/// the steps where a series had no value, and a season's phase must not slip over them, so each
/// missing step is a NaN (a gap). Points are at `start + i·step`.
fn evenly_spaced(points: &[(f64, f64)], start: f64, step: f64) -> Vec<f64> {
    let mut xs = Vec::with_capacity(points.len());
    for &(t, v) in points {
        let i = ((t - start) / step).round();
        if i.is_nan() || !(0.0..1e7).contains(&i) {
            continue;
        }
        let i = i as usize;
        if i < xs.len() {
            continue;
        }
        xs.resize(i, f64::NAN);
        xs.push(v);
    }
    xs
}

/// Where values come from.
enum Source {
    Prometheus(PrometheusClient),
    Scrape(Arc<ScrapeSource>),
}

/// Why the scrape source cannot serve a rules file.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ScrapeRefusal {
    /// External rules are PromQL over any series.
    #[error("externalRules need Prometheus (--prometheus-url): the scrape source serves the built-in rules only")]
    ExternalRules,
    /// Custom and resource rules are PromQL over any series.
    #[error("rules and resourceRules need Prometheus (--prometheus-url): the scrape source serves the built-in rules only")]
    CustomRules,
    /// A built-in metric with the `forecast` option needs the rate's history.
    #[error("builtinRules.metrics.{0}.forecast needs Prometheus (--prometheus-url): the scrape source has no history of the rate")]
    Forecast(String),
    /// A built-in metric with the `queueing` option needs the latency sum's rate.
    #[error("builtinRules.metrics.{0}.queueing needs Prometheus (--prometheus-url): the scrape source serves the plain rate")]
    Queueing(String),
}

/// Custom metrics by (resource as URLs name it, e.g. `pods`, and metric name).
pub type CustomMetrics = BTreeMap<(String, String), Arc<CustomMetric>>;

/// Serves metric values from rules, Prometheus (or scraped proxies) and the cache.
pub struct Provider {
    metrics: Option<Arc<crate::metrics::Metrics>>,
    source: Source,
    book: RuleBook,
    rules: RwLock<Arc<BTreeMap<String, Arc<Rule>>>>,
    custom: RwLock<Arc<CustomMetrics>>,
    /// Custom rules' series as last listed, by series query: re-read when the cluster's
    /// resources change, without asking Prometheus again.
    custom_series: Mutex<Arc<HashMap<String, Arc<Vec<gofe_prom::Labels>>>>>,
    /// The cluster's resources the custom rules' labels map to.
    resources: Arc<crate::resources::ResourceMapper>,
    /// Overrides already reported as naming a resource the cluster lacks.
    unresolved_logged: Mutex<std::collections::BTreeSet<(usize, String, &'static str)>>,
    discovered: AtomicBool,
    cache: Mutex<HashMap<Key, Slot>>,
    cache_config: CacheConfig,
    queries: AtomicU64,
    last: Mutex<HashMap<String, LastResult>>,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Provider {
    /// A provider serving the built-in rules at once and external rules after
    /// [`Provider::discover`].
    pub fn new(prom: PrometheusClient, book: RuleBook, cache_config: CacheConfig) -> Self {
        Self::with_source(Source::Prometheus(prom), book, cache_config)
    }

    /// A provider answering the built-in rules from proxies scraped by `scrape` (see
    /// [`crate::scrape`]); a rules file with external rules or forecasts is refused.
    pub fn scraping(
        scrape: Arc<ScrapeSource>,
        book: RuleBook,
        cache_config: CacheConfig,
    ) -> Result<Self, ScrapeRefusal> {
        if !book.external.is_empty() {
            return Err(ScrapeRefusal::ExternalRules);
        }
        if !book.custom.is_empty() || book.resource.is_some() {
            return Err(ScrapeRefusal::CustomRules);
        }
        if let Some(rule) = book
            .builtin
            .rules()
            .into_iter()
            .find(|r| r.options.forecast.is_some())
        {
            return Err(ScrapeRefusal::Forecast(rule.metric));
        }
        if let Some(rule) = book
            .builtin
            .rules()
            .into_iter()
            .find(|r| r.options.queueing.is_some())
        {
            return Err(ScrapeRefusal::Queueing(rule.metric));
        }
        Ok(Self::with_source(
            Source::Scrape(scrape),
            book,
            cache_config,
        ))
    }

    fn with_source(source: Source, book: RuleBook, cache_config: CacheConfig) -> Self {
        let builtins = book
            .builtin
            .rules()
            .into_iter()
            .map(|r| (r.metric.clone(), Arc::new(r)))
            .collect();
        Provider {
            metrics: None,
            source,
            discovered: AtomicBool::new(book.external.is_empty() && book.custom.is_empty()),
            book,
            rules: RwLock::new(Arc::new(builtins)),
            custom: RwLock::new(Arc::new(BTreeMap::new())),
            custom_series: Mutex::new(Arc::new(HashMap::new())),
            resources: Arc::new(crate::resources::ResourceMapper::new(
                None,
                Default::default(),
            )),
            unresolved_logged: Mutex::new(Default::default()),
            cache: Mutex::new(HashMap::new()),
            cache_config,
            queries: AtomicU64::new(0),
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Records cache hits and Prometheus query latency and errors in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Maps custom rules' labels and request URLs through `mapper` (default: the built-in
    /// table, no client).
    pub fn with_resources(mut self, mapper: Arc<crate::resources::ResourceMapper>) -> Self {
        self.resources = mapper;
        self
    }

    /// The cluster's resources in force.
    pub fn resources(&self) -> &Arc<crate::resources::ResourceMapper> {
        &self.resources
    }

    /// Reads the cluster's resources again ([`crate::resources::ResourceMapper::refresh`]);
    /// when they changed, the custom metrics are rebuilt from the series listed last.
    pub async fn refresh_resources(&self) -> bool {
        let changed = self.resources.refresh().await;
        if changed {
            self.rebuild_custom();
        }
        changed
    }

    /// The resource a request URL names (`pods`, `widgets.example.com`), through the
    /// cluster's resources. One the table lacks reads discovery again first (at most once per
    /// [`crate::resources::DiscoveryConfig::miss_gap`]), so a CRD installed since is found.
    pub async fn resolve_resource(&self, qualified: &str) -> Option<crate::custom::Resource> {
        if let Some(r) = self.resources.current().from_url(qualified) {
            return Some(r.clone());
        }
        if self.resources.refresh_on_miss().await {
            self.rebuild_custom();
        }
        self.resources.current().from_url(qualified).cloned()
    }

    /// The current rules, by metric name.
    pub fn rules(&self) -> Arc<BTreeMap<String, Arc<Rule>>> {
        match self.rules.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The current custom metrics, by (resource as URLs name it, metric).
    pub fn custom_metrics(&self) -> Arc<CustomMetrics> {
        match self.custom.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Whether `custom.metrics.k8s.io` is served (there are custom rules).
    pub fn serves_custom(&self) -> bool {
        !self.book.custom.is_empty()
    }

    /// The resource-metrics rules, when configured.
    pub fn resource_rules(&self) -> Option<&ResourceRules> {
        self.book.resource.as_ref()
    }

    /// Whether external and custom rules have been discovered at least once (always true
    /// without them).
    pub fn ready(&self) -> bool {
        self.discovered.load(Ordering::Relaxed)
    }

    /// Prometheus queries made so far (instant and range; discovery excluded).
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    /// The last query of each metric.
    pub fn last_results(&self) -> HashMap<String, LastResult> {
        self.last.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Lists the external rules' series in Prometheus and rebuilds the metric names. On
    /// failure the previous names stay.
    pub async fn discover(&self, lookback: Duration) -> Result<usize, PromError> {
        if self.book.external.is_empty() && self.book.custom.is_empty() {
            return Ok(self.rules().len());
        }
        let Source::Prometheus(prom) = &self.source else {
            return Ok(self.rules().len());
        };
        let start = unix_now() - lookback.as_secs_f64();
        let mut rules: BTreeMap<String, Arc<Rule>> = self
            .book
            .builtin
            .rules()
            .into_iter()
            .map(|r| (r.metric.clone(), Arc::new(r)))
            .collect();
        // Rules sharing a seriesQuery share one listing, as in prometheus-adapter.
        let mut listed: HashMap<&str, Arc<Vec<gofe_prom::Labels>>> = HashMap::new();
        for query in self
            .book
            .external
            .iter()
            .map(|r| r.series_query.as_str())
            .chain(self.book.custom.iter().map(|r| r.series_query.as_str()))
        {
            if !listed.contains_key(query) {
                listed.insert(query, Arc::new(prom.series(query, start).await?));
            }
        }
        let series: HashMap<String, Arc<Vec<gofe_prom::Labels>>> = self
            .book
            .custom
            .iter()
            .map(|r| {
                (
                    r.series_query.clone(),
                    listed[r.series_query.as_str()].clone(),
                )
            })
            .collect();
        if let Ok(mut s) = self.custom_series.lock() {
            *s = Arc::new(series);
        }
        self.rebuild_custom();
        for ext in &self.book.external {
            let series = listed[ext.series_query.as_str()].clone();
            let mut names: Vec<&str> = series
                .iter()
                .filter_map(|labels| labels.get("__name__").map(String::as_str))
                .collect();
            names.sort_unstable();
            names.dedup();
            for name in names {
                let Some(rule) = ext.instantiate(name) else {
                    continue;
                };
                if let Some(existing) = rules.get(&rule.metric) {
                    let kept = match &existing.source {
                        RuleSource::Builtin => "builtin".to_owned(),
                        RuleSource::External { index, .. } => format!("externalRules[{index}]"),
                        other => format!("{other:?}"),
                    };
                    tracing::warn!(metric = %rule.metric, series = name, rule = ext.index, %kept, "metric name defined twice; keeping the first");
                    continue;
                }
                rules.insert(rule.metric.clone(), Arc::new(rule));
            }
        }
        let count = rules.len();
        match self.rules.write() {
            Ok(mut r) => *r = Arc::new(rules),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(rules),
        }
        self.discovered.store(true, Ordering::Relaxed);
        Ok(count)
    }

    /// Rebuilds the custom metrics from the series listed last and the cluster's resources in
    /// force. An override naming a resource the cluster lacks is logged once (per rule, label
    /// and table source), and its label ties no metric.
    fn rebuild_custom(&self) {
        let table = self.resources.current();
        let series = self
            .custom_series
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        let mut custom: CustomMetrics = BTreeMap::new();
        for rule in &self.book.custom {
            let mapping = rule.mapping.resolve(&table);
            for o in &mapping.unresolved {
                let fresh = self.unresolved_logged.lock().is_ok_and(|mut l| {
                    l.insert((rule.index, o.label.clone(), table.source().as_str()))
                });
                if fresh {
                    let group = if o.group.is_empty() {
                        "(core or any)"
                    } else {
                        o.group.as_str()
                    };
                    tracing::warn!(rule = rule.index, label = %o.label, group, resource = %o.resource, resources = table.source().as_str(), "a resources override names a resource the cluster does not serve; its label ties no custom metric");
                }
            }
            let Some(listed) = series.get(&rule.series_query) else {
                continue;
            };
            for labels in listed.iter() {
                for m in rule.instantiate(labels, &mapping) {
                    let key = (m.resource.qualified(), m.metric.clone());
                    match custom.get(&key) {
                        Some(existing) if existing.rule != m.rule => {
                            tracing::warn!(metric = %m.metric, resource = %key.0, rule = m.rule, kept_rule = existing.rule, "custom metric defined by two rules; keeping the first");
                        }
                        Some(existing) if existing.series != m.series => {
                            tracing::warn!(metric = %m.metric, resource = %key.0, series = %m.series, kept_series = %existing.series, "two series give one custom metric name; keeping the first");
                        }
                        // The same metric from another series of the same name: a namespaced
                        // one wins (a series with the namespace label).
                        Some(existing) if existing.namespaced || !m.namespaced => {}
                        _ => {
                            custom.insert(key, Arc::new(m));
                        }
                    }
                }
            }
        }
        match self.custom.write() {
            Ok(mut c) => *c = Arc::new(custom),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(custom),
        }
    }

    /// The rule and rendered PromQL for a metric, namespace and selector.
    pub fn plan(
        &self,
        metric: &str,
        namespace: &str,
        selector: &Selector,
    ) -> Result<(Arc<Rule>, String), FetchError> {
        let rule = self
            .rules()
            .get(metric)
            .cloned()
            .ok_or_else(|| FetchError::UnknownMetric(metric.to_owned()))?;
        let query = rule.render(namespace, selector)?;
        Ok((rule, query))
    }

    /// The values of `metric` in `namespace` for `selector`.
    pub async fn get(
        &self,
        metric: &str,
        namespace: &str,
        selector: &Selector,
    ) -> Result<Arc<Answer>, FetchError> {
        let (rule, query) = self.plan(metric, namespace, selector)?;
        let key = Key {
            metric: metric.to_owned(),
            namespace: namespace.to_owned(),
            selector: selector.to_string(),
        };
        self.cached(&rule, key, query, selector).await
    }

    async fn cached(&self, rule: &Rule, key: Key, query: String, selector: &Selector) -> Outcome {
        let (cell, last_good) = self.slot(&key);
        let hit = cell.initialized();
        let outcome = cell
            .get_or_init(|| self.fetch(rule, &key, query, selector, last_good))
            .await
            .clone();
        if let Some(m) = &self.metrics {
            m.cache
                .with_label_values(&[if hit { "hit" } else { "miss" }])
                .inc();
        }
        outcome
    }

    /// The values of custom metric `metric` for `objects`, filtered by `metric_selector`
    /// (`metricLabelSelector`). Each item's labels are the result series' labels; the one
    /// named [`CustomMetric::resource_label`] names the object. When the rule's `zero` policy
    /// fills in missing data, every object gets a 0.
    pub async fn get_custom(
        &self,
        metric: &CustomMetric,
        objects: &Objects,
        metric_selector: &Selector,
    ) -> Result<Arc<Answer>, FetchError> {
        let query = metric.render(objects, metric_selector)?;
        let rule = Rule::prepared(
            format!("{}/{}", metric.resource.qualified(), metric.metric),
            if metric.builtin {
                RuleSource::Builtin
            } else {
                RuleSource::Custom {
                    index: metric.rule,
                    series: metric.series.clone(),
                    resource: metric.resource.qualified(),
                }
            },
            metric.metrics_query.clone(),
            metric.options.clone(),
        );
        let key = Key {
            metric: rule.metric.clone(),
            namespace: objects.namespace.clone().unwrap_or_default(),
            selector: query.clone(),
        };
        let answer = self.cached(&rule, key, query, &Selector::default()).await?;
        if !answer.zero_filled {
            return Ok(answer);
        }
        let items = objects
            .names
            .iter()
            .map(|name| MetricValue {
                labels: BTreeMap::from([(metric.resource_label.clone(), name.clone())]),
                timestamp: answer.items.first().map_or_else(unix_now, |i| i.timestamp),
                value: MilliQuantity(0),
            })
            .collect();
        Ok(Arc::new(Answer {
            items,
            held: false,
            zero_filled: true,
            fetched_at: answer.fetched_at,
        }))
    }

    /// CPU (cores) and memory (bytes) of `objects` by `resourceRules`: containers of pods in
    /// one namespace, or nodes. Missing data is an error (404), an outage 503.
    pub async fn get_resource(
        &self,
        target: ResourceTarget,
        objects: &Objects,
    ) -> Result<(Arc<Answer>, Arc<Answer>), FetchError> {
        let Some(rules) = &self.book.resource else {
            return Err(FetchError::UnknownMetric("resourceRules".into()));
        };
        let what = match target {
            ResourceTarget::Containers => "pods",
            ResourceTarget::Nodes => "nodes",
        };
        let mut answers = Vec::with_capacity(2);
        for (name, rule) in [("cpu", &rules.cpu), ("memory", &rules.memory)] {
            let Some(query) = rule.render(target, objects) else {
                return Err(FetchError::UnknownMetric(format!("{what}/{name}")));
            };
            let prepared = Rule::prepared(
                format!("{what}/{name}"),
                RuleSource::Resource { name: name.into() },
                match target {
                    ResourceTarget::Containers => rule.container_query.source().to_owned(),
                    ResourceTarget::Nodes => rule.node_query.source().to_owned(),
                },
                RuleOptions::default(),
            );
            let key = Key {
                metric: prepared.metric.clone(),
                namespace: objects.namespace.clone().unwrap_or_default(),
                selector: query.clone(),
            };
            answers.push(
                self.cached(&prepared, key, query, &Selector::default())
                    .await?,
            );
        }
        let memory = answers.pop().expect("two answers");
        let cpu = answers.pop().expect("two answers");
        Ok((cpu, memory))
    }

    fn slot(&self, key: &Key) -> (Arc<OnceCell<Outcome>>, Option<Arc<Answer>>) {
        let now = Instant::now();
        let freshness = self.cache_config.freshness;
        let mut cache = match self.cache.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(slot) = cache.get_mut(key) {
            let usable = match slot.cell.get() {
                None => true, // in flight: share it
                Some(_) => now.duration_since(slot.created) < freshness,
            };
            if !usable {
                if let Some(Ok(answer)) = slot.cell.get() {
                    if !answer.held && !answer.zero_filled {
                        slot.last_good = Some(answer.clone());
                    }
                }
                slot.cell = Arc::new(OnceCell::new());
                slot.created = now;
            }
            return (slot.cell.clone(), slot.last_good.clone());
        }
        if cache.len() >= self.cache_config.capacity {
            cache
                .retain(|_, s| s.cell.get().is_none() || now.duration_since(s.created) < freshness);
            if cache.len() >= self.cache_config.capacity {
                let oldest = cache
                    .iter()
                    .min_by_key(|(_, s)| s.created)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    cache.remove(&k);
                }
            }
        }
        let cell = Arc::new(OnceCell::new());
        cache.insert(
            key.clone(),
            Slot {
                cell: cell.clone(),
                created: now,
                last_good: None,
            },
        );
        (cell, None)
    }

    /// Number of cache slots in use.
    pub fn cache_len(&self) -> usize {
        self.cache.lock().map(|c| c.len()).unwrap_or(0)
    }

    async fn fetch(
        &self,
        rule: &Rule,
        key: &Key,
        query: String,
        selector: &Selector,
        last_good: Option<Arc<Answer>>,
    ) -> Outcome {
        let now = unix_now();
        self.queries.fetch_add(1, Ordering::Relaxed);
        let prom = match &self.source {
            Source::Prometheus(prom) => prom,
            Source::Scrape(scrape) => {
                let raw = scrape.evaluate(rule, selector).map_err(FetchError::Scrape);
                return self.finish(rule, key, query, selector, last_good, now, raw);
            }
        };
        let started = std::time::Instant::now();
        let raw = match &rule.options.forecast {
            None => prom.query(&query, None).await,
            Some(f) => {
                let start = now - f.window.as_secs_f64();
                prom.query_range(&query, start, now, f.step)
                    .await
                    .map(|series| {
                        series
                            .into_iter()
                            .filter_map(|s| {
                                let xs = evenly_spaced(&s.points, start, f.step.as_secs_f64());
                                let t = s.points.last().map_or(now, |p| p.0);
                                match f.policy.serve(&xs) {
                                    Ok(served) => {
                                        if served.spike || served.fell_back {
                                            tracing::debug!(metric = %key.metric, labels = ?s.labels, spike = served.spike, fell_back = served.fell_back, value = served.value, "forecast");
                                        }
                                        Some(Sample {
                                            labels: s.labels,
                                            timestamp: t,
                                            value: served.value,
                                        })
                                    }
                                    Err(e) => {
                                        tracing::warn!(metric = %key.metric, labels = ?s.labels, error = %e, "no forecast of this series");
                                        None
                                    }
                                }
                            })
                            .collect()
                    })
            }
        };
        if let Some(m) = &self.metrics {
            m.prometheus_duration
                .observe(started.elapsed().as_secs_f64());
            if let Err(e) = &raw {
                m.prometheus_errors.with_label_values(&[e.kind()]).inc();
            }
        }
        let raw = raw.map_err(|e| {
            if e.is_unavailable() {
                FetchError::Unavailable(e)
            } else {
                FetchError::Rule {
                    metric: key.metric.clone(),
                    source: e,
                }
            }
        });
        self.finish(rule, key, query, selector, last_good, now, raw)
    }

    /// Applies the rule's missing-data policy to what the source returned and records it.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        rule: &Rule,
        key: &Key,
        query: String,
        selector: &Selector,
        last_good: Option<Arc<Answer>>,
        now: f64,
        raw: Result<Vec<Sample>, FetchError>,
    ) -> Outcome {
        let outcome = self.apply_policy(rule, key, raw, selector, last_good);
        tracing::debug!(metric = %key.metric, namespace = %key.namespace, selector = %key.selector, %query, ok = outcome.is_ok(), "queried prometheus");
        if let Ok(mut last) = self.last.lock() {
            last.insert(
                key.metric.clone(),
                LastResult {
                    namespace: key.namespace.clone(),
                    selector: key.selector.clone(),
                    query,
                    at: now,
                    items: outcome.as_ref().ok().map(|a| a.items.clone()),
                    error: outcome.as_ref().err().map(|e| e.to_string()),
                },
            );
        }
        outcome
    }

    fn apply_policy(
        &self,
        rule: &Rule,
        key: &Key,
        raw: Result<Vec<Sample>, FetchError>,
        selector: &Selector,
        last_good: Option<Arc<Answer>>,
    ) -> Outcome {
        let fetched_at = Instant::now();
        let failure = match raw {
            Ok(samples) => {
                let items: Vec<MetricValue> = samples
                    .into_iter()
                    .filter_map(|s| {
                        let value = MilliQuantity::from_f64(s.value).ok()?;
                        let labels = s
                            .labels
                            .iter()
                            .filter(|(k, _)| k.as_str() != "__name__")
                            .map(|(k, v)| (rule.metric_label(k).to_owned(), v.clone()))
                            .collect();
                        Some(MetricValue {
                            labels,
                            timestamp: s.timestamp,
                            value,
                        })
                    })
                    .collect();
                if !items.is_empty() {
                    return Ok(Arc::new(Answer {
                        items,
                        held: false,
                        zero_filled: false,
                        fetched_at,
                    }));
                }
                FetchError::NoData {
                    metric: key.metric.clone(),
                    selector: key.selector.clone(),
                }
            }
            Err(
                e @ (FetchError::Unavailable(_) | FetchError::Scrape(ScrapeError::Unavailable(_))),
            ) => e,
            Err(e) => {
                tracing::warn!(metric = %key.metric, error = %e, "rule query failed");
                return Err(e);
            }
        };
        match (rule.options.missing, &failure) {
            (MissingData::Zero, FetchError::NoData { .. }) => Ok(Arc::new(Answer {
                items: vec![MetricValue {
                    labels: selector
                        .equalities()
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .collect(),
                    timestamp: unix_now(),
                    value: MilliQuantity(0),
                }],
                held: false,
                zero_filled: true,
                fetched_at,
            })),
            (MissingData::HoldLast { max_age }, _) => match last_good {
                Some(last) if fetched_at.duration_since(last.fetched_at) <= max_age => {
                    tracing::info!(metric = %key.metric, selector = %key.selector, reason = %failure, "holding the last value");
                    Ok(Arc::new(Answer {
                        items: last.items.clone(),
                        held: true,
                        zero_filled: false,
                        fetched_at: last.fetched_at,
                    }))
                }
                _ => Err(failure),
            },
            _ => Err(failure),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::{BuiltinSettings, RuleOptions};
    use std::time::Duration;

    fn provider(freshness: Duration, capacity: usize, options: RuleOptions) -> Provider {
        let prom = PrometheusClient::new(&gofe_prom::ClientConfig {
            timeout: Duration::from_millis(100),
            ..gofe_prom::ClientConfig::new("http://127.0.0.1:1")
        })
        .unwrap();
        let mut book = RuleBook {
            builtin: BuiltinSettings::default(),
            ..RuleBook::default()
        };
        book.builtin
            .options
            .insert("http_requests_per_second".into(), options);
        Provider::new(
            prom,
            book,
            CacheConfig {
                freshness,
                capacity,
            },
        )
    }

    fn key(i: usize) -> Key {
        Key {
            metric: "http_requests_per_second".into(),
            namespace: "default".into(),
            selector: format!("service=s{i}"),
        }
    }

    fn answer(milli: i64) -> Outcome {
        Ok(Arc::new(Answer {
            items: vec![MetricValue {
                labels: BTreeMap::new(),
                timestamp: 0.0,
                value: MilliQuantity(milli),
            }],
            held: false,
            zero_filled: false,
            fetched_at: Instant::now(),
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn in_flight_and_fresh_answers_are_shared_stale_ones_replaced() {
        let p = provider(Duration::from_secs(10), 100, RuleOptions::default());
        let (first, last_good) = p.slot(&key(0));
        assert!(last_good.is_none());
        let (in_flight, _) = p.slot(&key(0));
        assert!(
            Arc::ptr_eq(&first, &in_flight),
            "in-flight queries are shared"
        );
        first.set(answer(5)).unwrap();
        tokio::time::advance(Duration::from_secs(9)).await;
        let (fresh, _) = p.slot(&key(0));
        assert!(Arc::ptr_eq(&first, &fresh), "fresh answers are reused");
        tokio::time::advance(Duration::from_secs(2)).await;
        let (stale, last_good) = p.slot(&key(0));
        assert!(!Arc::ptr_eq(&first, &stale), "stale answers are replaced");
        assert_eq!(last_good.unwrap().items[0].value, MilliQuantity(5));
        let (other, _) = p.slot(&key(1));
        assert!(!Arc::ptr_eq(&stale, &other), "keys do not share");
    }

    #[tokio::test(start_paused = true)]
    async fn the_cache_is_bounded() {
        let p = provider(Duration::from_secs(10), 3, RuleOptions::default());
        for i in 0..10 {
            let (cell, _) = p.slot(&key(i));
            cell.set(answer(1)).unwrap();
            tokio::time::advance(Duration::from_millis(1)).await;
            assert!(p.cache_len() <= 3);
        }
        // The newest keys survive.
        let (cell, _) = p.slot(&key(9));
        assert!(cell.get().is_some());
    }

    fn outage() -> Result<Vec<Sample>, FetchError> {
        Err(FetchError::Unavailable(PromError::Unavailable {
            status: 503,
            error_type: None,
            message: "test".into(),
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn hold_last_serves_until_max_age_then_fails() {
        let options = RuleOptions {
            missing: MissingData::HoldLast {
                max_age: Duration::from_secs(60),
            },
            ..RuleOptions::default()
        };
        let p = provider(Duration::from_secs(10), 10, options);
        let rule = p.rules()["http_requests_per_second"].clone();
        let sel = Selector::parse("service=s0").unwrap();
        let last = answer(2500).ok();
        tokio::time::advance(Duration::from_secs(59)).await;
        let held = p
            .apply_policy(&rule, &key(0), outage(), &sel, last.clone())
            .unwrap();
        assert!(held.held);
        assert_eq!(held.items[0].value.to_string(), "2500m");
        let no_data = p.apply_policy(&rule, &key(0), Ok(vec![]), &sel, last.clone());
        assert!(no_data.unwrap().held);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(matches!(
            p.apply_policy(&rule, &key(0), outage(), &sel, last),
            Err(FetchError::Unavailable(_))
        ));
        assert!(matches!(
            p.apply_policy(&rule, &key(0), outage(), &sel, None),
            Err(FetchError::Unavailable(_))
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_fills_no_data_but_not_an_outage_and_nan_is_no_data() {
        let options = RuleOptions {
            missing: MissingData::Zero,
            ..RuleOptions::default()
        };
        let p = provider(Duration::from_secs(10), 10, options);
        let rule = p.rules()["http_requests_per_second"].clone();
        let sel = Selector::parse("service=s0,endpoint!=x").unwrap();
        let nan = vec![Sample {
            labels: BTreeMap::from([("cluster".to_owned(), "s0".to_owned())]),
            timestamp: 1.0,
            value: f64::NAN,
        }];
        let zero = p.apply_policy(&rule, &key(0), Ok(nan), &sel, None).unwrap();
        assert!(zero.zero_filled);
        assert_eq!(zero.items[0].value, MilliQuantity(0));
        assert_eq!(
            zero.items[0].labels,
            BTreeMap::from([("service".to_owned(), "s0".to_owned())])
        );
        assert!(p
            .apply_policy(&rule, &key(0), outage(), &sel, None)
            .is_err());

        let strict = provider(Duration::from_secs(10), 10, RuleOptions::default());
        let rule = strict.rules()["http_requests_per_second"].clone();
        assert!(matches!(
            strict.apply_policy(&rule, &key(0), Ok(vec![]), &sel, None),
            Err(FetchError::NoData { .. })
        ));
        let ok = strict
            .apply_policy(
                &rule,
                &key(0),
                Ok(vec![Sample {
                    labels: BTreeMap::from([
                        ("__name__".to_owned(), "gofe_rps".to_owned()),
                        ("cluster".to_owned(), "s0".to_owned()),
                    ]),
                    timestamp: 1.0,
                    value: 1.25,
                }]),
                &sel,
                None,
            )
            .unwrap();
        assert_eq!(ok.items[0].value.to_string(), "1250m");
        assert_eq!(
            ok.items[0].labels,
            BTreeMap::from([("service".to_owned(), "s0".to_owned())]),
            "the series name is not a label of the value"
        );
    }
}
