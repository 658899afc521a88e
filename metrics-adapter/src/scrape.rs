//! The scrape source: the built-in rules answered from gofe proxies' own `/metrics`, scraped
//! directly, for a mesh with no Prometheus (`gofe up`, a laptop, a small cluster).
//!
//! Every `interval` each target is scraped into a [`History`] that keeps the rule window
//! (`builtinRules.rateWindow`); a request is answered from what changed over that window,
//! summed over the targets and grouped by `cluster`, exactly what the built-in PromQL computes
//! from Prometheus: `http_requests_per_second` (and `_ejection_aware`, without the ejection
//! correction: that needs the controller's `gofe_endpoint_ejected` series from Prometheus),
//! `http_error_ratio`, and the latency quantiles (interpolated in buckets as
//! `histogram_quantile` does).
//!
//! What it does not do: external rules (they are PromQL over any series: they need
//! Prometheus, and are refused at start with the scrape source), the `forecast` option (it
//! needs a history of the rate, which is Prometheus' `query_range`), `http_requests_active`
//! (a gauge the exposition reader does not keep). Each of those is refused when asked, never
//! answered with a guess. Until every target has been scraped twice there is no rate: the
//! answer is "unavailable" (503), as a Prometheus that is still starting would be.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gofe_prom::exposition::{Delta, History, Scraper};
use gofe_prom::Sample;

use crate::rules::Rule;
use crate::selector::{Operator, Selector};

/// Why the scrape source has no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScrapeError {
    /// No target has answered twice within the window yet, or none answers now.
    #[error("the scraped proxies have no rate yet: {0}")]
    Unavailable(String),
    /// The metric cannot be computed from the proxies' own series.
    #[error("metric {0:?} needs Prometheus; the scrape source serves http_requests_per_second, http_error_ratio and the latency quantiles")]
    Unsupported(String),
}

/// The proxies scraped and what they reported over the window.
pub struct ScrapeSource {
    targets: Vec<String>,
    scraper: Scraper,
    state: Mutex<State>,
}

struct State {
    history: History,
    /// The last round's failures, by target.
    failures: BTreeMap<String, String>,
    rounds: u64,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl ScrapeSource {
    /// A source over `targets` (`host:port` of proxies' admin listeners) keeping `window`.
    pub fn new(targets: Vec<String>, window: Duration) -> Self {
        ScrapeSource {
            targets,
            scraper: Scraper::new(Duration::from_secs(3)),
            state: Mutex::new(State {
                history: History::new(window),
                failures: BTreeMap::new(),
                rounds: 0,
            }),
        }
    }

    /// The targets.
    pub fn targets(&self) -> &[String] {
        &self.targets
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Scrapes every target once and records what it reported (a target that fails is
    /// forgotten until it answers again, so it contributes nothing stale).
    pub async fn scrape_once(&self) {
        let mut results = Vec::with_capacity(self.targets.len());
        for target in &self.targets {
            results.push((target, self.scraper.scrape(target).await));
        }
        let now = unix_ms();
        let mut state = self.state();
        state.rounds += 1;
        state.failures.clear();
        for (target, result) in results {
            match result {
                Ok(sample) => state.history.record(target, now, sample),
                Err(e) => {
                    tracing::warn!(error = %e, "scrape failed");
                    state.history.forget(target);
                    state.failures.insert(target.clone(), e);
                }
            }
        }
    }

    /// Scrapes every `interval` until the task is aborted.
    pub async fn run(self: std::sync::Arc<Self>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.scrape_once().await;
        }
    }

    /// The values of built-in `rule` for `selector`, one per `cluster` it matches, labelled
    /// `cluster` (the provider renames it back, as it does Prometheus' labels).
    pub fn evaluate(&self, rule: &Rule, selector: &Selector) -> Result<Vec<Sample>, ScrapeError> {
        let value: fn(&Delta, f64) -> Option<f64> = match rule.metric.as_str() {
            "http_requests_per_second" | "http_requests_per_second_ejection_aware" => {
                |d, span_s| Some(d.requests / span_s)
            }
            "http_error_ratio" => |d, _| (d.requests > 0.0).then(|| d.failures / d.requests),
            "http_request_duration_seconds_p50" => |d, _| d.quantile(0.5),
            "http_request_duration_seconds_p90" => |d, _| d.quantile(0.9),
            "http_request_duration_seconds_p99" => |d, _| d.quantile(0.99),
            other => return Err(ScrapeError::Unsupported(other.to_owned())),
        };
        let state = self.state();
        let (span_ms, deltas) = state.history.deltas();
        if span_ms == 0 {
            let why = if state.failures.is_empty() {
                format!("{} scrape round(s) so far", state.rounds)
            } else {
                state
                    .failures
                    .values()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            return Err(ScrapeError::Unavailable(why));
        }
        let mut per_cluster: BTreeMap<String, Delta> = BTreeMap::new();
        for ((cluster, _endpoint), d) in deltas {
            per_cluster.entry(cluster).or_default().add(&d);
        }
        let span_s = span_ms as f64 / 1000.0;
        let timestamp = unix_ms() as f64 / 1000.0;
        Ok(per_cluster
            .into_iter()
            .filter(|(cluster, _)| matches(rule, selector, cluster))
            .filter_map(|(cluster, d)| {
                let v = value(&d, span_s)?;
                v.is_finite().then(|| Sample {
                    labels: [("cluster".to_owned(), cluster)].into_iter().collect(),
                    timestamp,
                    value: v,
                })
            })
            .collect())
    }
}

/// Whether a series labelled only `cluster` satisfies every requirement of `selector` (with
/// the rule's selector-key renames; any other label is absent, as in PromQL).
fn matches(rule: &Rule, selector: &Selector, cluster: &str) -> bool {
    selector.requirements.iter().all(|r| {
        let label = rule
            .label_map
            .iter()
            .find(|(k, _)| *k == r.key)
            .map_or(r.key.as_str(), |(_, p)| p.as_str());
        let value = (label == "cluster").then_some(cluster);
        match &r.op {
            Operator::Equals(v) => value == Some(v.as_str()),
            Operator::NotEquals(v) => value != Some(v.as_str()),
            Operator::In(vs) => value.is_some_and(|x| vs.contains(x)),
            Operator::NotIn(vs) => !value.is_some_and(|x| vs.contains(x)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::BuiltinSettings;
    use gofe_prom::exposition::Sample as Scrape;

    fn rule(name: &str) -> Rule {
        BuiltinSettings::default()
            .rules()
            .into_iter()
            .find(|r| r.metric == name)
            .unwrap()
    }

    fn exposition(web_ok: u64, web_5xx: u64, api_ok: u64) -> Scrape {
        Scrape::parse(&format!(
            "gofe_upstream_requests_total{{cluster=\"web\",endpoint=\"a\",code_class=\"2xx\"}} {web_ok}\n\
             gofe_upstream_requests_total{{cluster=\"web\",endpoint=\"a\",code_class=\"5xx\"}} {web_5xx}\n\
             gofe_upstream_requests_total{{cluster=\"api\",endpoint=\"b\",code_class=\"2xx\"}} {api_ok}\n\
             gofe_upstream_request_duration_seconds_bucket{{cluster=\"api\",endpoint=\"b\",le=\"0.1\"}} {api_ok}\n\
             gofe_upstream_request_duration_seconds_bucket{{cluster=\"api\",endpoint=\"b\",le=\"+Inf\"}} {api_ok}\n"
        ))
    }

    fn source_with(samples: &[(&str, u64, Scrape)]) -> ScrapeSource {
        let s = ScrapeSource::new(vec![], Duration::from_secs(60));
        for (target, at, sample) in samples {
            s.state().history.record(target, *at, sample.clone());
        }
        s
    }

    fn values(s: &ScrapeSource, metric: &str, selector: &str) -> Vec<(String, f64)> {
        s.evaluate(&rule(metric), &Selector::parse(selector).unwrap())
            .unwrap()
            .into_iter()
            .map(|x| (x.labels["cluster"].clone(), x.value))
            .collect()
    }

    #[test]
    fn rates_are_the_window_increase_over_its_span_summed_over_proxies() {
        let s = source_with(&[
            ("p1", 0, exposition(100, 0, 10)),
            ("p1", 10_000, exposition(300, 50, 60)),
            ("p2", 0, exposition(0, 0, 0)),
            ("p2", 10_000, exposition(50, 0, 0)),
        ]);
        // web: (300-100) + 50 ok and 50 failed over 10 s on the two proxies.
        assert_eq!(
            values(&s, "http_requests_per_second", ""),
            vec![("api".into(), 5.0), ("web".into(), 30.0)]
        );
        assert_eq!(
            values(&s, "http_error_ratio", "service=web"),
            vec![("web".into(), 50.0 / 300.0)]
        );
        assert_eq!(
            values(
                &s,
                "http_requests_per_second",
                "service in (api),cluster!=web"
            ),
            vec![("api".into(), 5.0)]
        );
        assert!(values(&s, "http_requests_per_second", "pod=x").is_empty());
        assert_eq!(
            values(&s, "http_requests_per_second", "!pod,service=web"),
            vec![("web".into(), 30.0)]
        );
        // Every api request fell in the first bucket: p99 interpolates inside it.
        let p99 = values(&s, "http_request_duration_seconds_p99", "service=api");
        assert!((p99[0].1 - 0.099).abs() < 1e-9, "{p99:?}");
    }

    #[test]
    fn no_rate_before_two_scrapes_and_unsupported_metrics_are_refused() {
        let s = source_with(&[("p1", 0, exposition(1, 0, 1))]);
        let all = Selector::default();
        assert!(matches!(
            s.evaluate(&rule("http_requests_per_second"), &all),
            Err(ScrapeError::Unavailable(_))
        ));
        assert_eq!(
            s.evaluate(&rule("http_requests_active"), &all),
            Err(ScrapeError::Unsupported("http_requests_active".into()))
        );
    }
}
