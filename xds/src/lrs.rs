//! The Load Reporting Service: clients stream per-endpoint load to the control plane
//! (`envoy.service.load_stats.v3.LoadReportingService/StreamLoadStats`), on the same port as
//! ADS.
//!
//! ```text
//!   proxy ══ StreamLoadStats ══▶ AdsServer ──read_request (bounded)──▶ LoadStore
//!         ◀═ LoadStatsResponse { send_all_clusters, interval } ═╛        │ window()
//!                                                                      ▼
//!                                                             the controller's signals
//! ```
//!
//! A stream is answered once, at its start, with the clusters wanted (all) and the reporting
//! interval; then every report the client sends is kept, per stream, cluster and endpoint, in a
//! ring of the last reports covering the signal window. When the stream ends its data is
//! dropped: a proxy that is gone no longer speaks for an endpoint.
//!
//! Everything kept is bounded ([`LoadReportingOptions`]): streams, endpoints per stream, reports
//! per endpoint, and what one report may carry ([`gofe_proto::load::LoadLimits`]). What is over
//! a bound is dropped and counted, never stored.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gofe_proto::load::{EndpointLoad, LoadLimits};
use tokio::time::Instant;

use crate::cache::lock;

/// How the server takes load reports.
#[derive(Clone, Debug)]
pub struct LoadReportingOptions {
    /// How often clients report (`load_reporting_interval`). Default 1 s.
    pub interval: Duration,
    /// How far back reports are kept: the signal window. Default 30 s.
    pub window: Duration,
    /// Streams reporting at once; more are refused (`RESOURCE_EXHAUSTED`). Default 1024.
    pub max_streams: usize,
    /// Distinct (cluster, endpoint) pairs one stream may report; new ones beyond are dropped.
    /// Default 4096.
    pub max_endpoints_per_stream: usize,
    /// Distinct (cluster, endpoint) pairs all streams together may report; new ones beyond
    /// are dropped. With the ring per pair (at most `window / interval + 2` reports, 600 at
    /// most, ~90 bytes each) this bounds the store's memory. Default 65536 (≈ 190 MB at the
    /// default 30 s window and 1 s interval, if every pair were taken).
    pub max_endpoints: usize,
    /// What one report may carry.
    pub limits: LoadLimits,
}

impl Default for LoadReportingOptions {
    fn default() -> Self {
        LoadReportingOptions {
            interval: Duration::from_secs(1),
            window: Duration::from_secs(30),
            max_streams: 1024,
            max_endpoints_per_stream: 4096,
            max_endpoints: 65536,
            limits: LoadLimits::default(),
        }
    }
}

/// Most reports kept per endpoint and stream, whatever window and interval say.
const MAX_RING: usize = 600;

/// One report of one endpoint, as kept.
#[derive(Clone, Copy, Debug)]
struct Sample {
    at: Instant,
    /// What the counts cover.
    covers: Duration,
    successful: u64,
    errors: u64,
    issued: u64,
    in_progress: u64,
    latency_count: u64,
    latency_ms_total: f64,
}

/// One endpoint's load over the window, added up over every stream that reported it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WindowLoad {
    /// Requests finished without error.
    pub successful: u64,
    /// Requests finished in error.
    pub errors: u64,
    /// Requests issued.
    pub issued: u64,
    /// Requests in progress at the newest report of each stream.
    pub in_progress: u64,
    /// Requests with a latency, and their latencies added up (ms).
    pub latency_count: u64,
    /// See `latency_count`.
    pub latency_ms_total: f64,
    /// Finished requests per second: each stream's finished requests over the time its reports
    /// cover, added up.
    pub rps: f64,
    /// How long ago the newest report arrived.
    pub age: Duration,
    /// Streams (proxies) that reported it.
    pub reporters: usize,
}

impl WindowLoad {
    /// Finished requests.
    pub fn finished(&self) -> u64 {
        self.successful.saturating_add(self.errors)
    }

    /// The mean latency, seconds (`None` without any latency reported).
    pub fn mean_latency(&self) -> Option<f64> {
        (self.latency_count > 0).then(|| self.latency_ms_total / self.latency_count as f64 / 1e3)
    }
}

/// The open streams, and how many (cluster, endpoint) pairs they hold between them.
#[derive(Default)]
struct Streams {
    by_id: HashMap<u64, StreamLoads>,
    endpoints: usize,
}

#[derive(Default)]
struct StreamLoads {
    node_id: String,
    endpoints: HashMap<(Arc<str>, Arc<str>), VecDeque<Sample>>,
    /// When its previous report arrived (what a report without an interval covers).
    last_report: Option<Instant>,
}

/// The reports of every open stream. Cheap to clone.
#[derive(Clone)]
pub struct LoadStore {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    options: LoadReportingOptions,
    streams: Mutex<Streams>,
    dropped: std::sync::atomic::AtomicU64,
}

impl LoadStore {
    /// An empty store.
    pub fn new(options: LoadReportingOptions) -> LoadStore {
        LoadStore {
            inner: Arc::new(StoreInner {
                options,
                streams: Mutex::new(Streams::default()),
                dropped: Default::default(),
            }),
        }
    }

    /// The options it was made with.
    pub fn options(&self) -> &LoadReportingOptions {
        &self.inner.options
    }

    fn ring_len(&self) -> usize {
        let o = &self.inner.options;
        let per = o.interval.max(Duration::from_millis(1));
        let n = o.window.as_nanos() / per.as_nanos() + 2;
        usize::try_from(n).unwrap_or(MAX_RING).min(MAX_RING)
    }

    /// Registers stream `stream` of `node_id` (the server does, for each `StreamLoadStats`);
    /// `false` when the store holds its most streams.
    pub fn open(&self, stream: u64, node_id: &str) -> bool {
        let mut streams = lock(&self.inner.streams);
        if streams.by_id.len() >= self.inner.options.max_streams {
            return false;
        }
        if let Some(old) = streams.by_id.insert(
            stream,
            StreamLoads {
                node_id: node_id.to_owned(),
                ..Default::default()
            },
        ) {
            streams.endpoints -= old.endpoints.len();
        }
        true
    }

    /// Forgets everything stream `stream` reported.
    pub fn close(&self, stream: u64) {
        let mut streams = lock(&self.inner.streams);
        if let Some(old) = streams.by_id.remove(&stream) {
            streams.endpoints -= old.endpoints.len();
        }
    }

    /// Keeps one report of stream `stream`, received `at`: per cluster, its endpoints.
    pub fn record(
        &self,
        stream: u64,
        at: Instant,
        clusters: Vec<gofe_proto::load::ClusterLoad>,
        dropped: usize,
    ) {
        let ring = self.ring_len();
        let o = &self.inner.options;
        let (max_endpoints, max_total, window) =
            (o.max_endpoints_per_stream, o.max_endpoints, o.window);
        // Reports closer together than half an interval are added to the previous one, so a
        // client reporting faster than asked holds no more reports than one that does not.
        let coalesce = o.interval / 2;
        let mut over = dropped;
        let mut guard = lock(&self.inner.streams);
        let streams = &mut *guard;
        let Some(s) = streams.by_id.get_mut(&stream) else {
            return;
        };
        let since_last = s.last_report.map(|l| at.saturating_duration_since(l));
        s.last_report = Some(at);
        for cluster in clusters {
            let name: Arc<str> = cluster.cluster.into();
            // A client that does not say what its counts cover covers the time since its
            // previous report (or, for the first, one interval).
            let covers = if cluster.interval.is_zero() {
                since_last.unwrap_or(o.interval)
            } else {
                cluster.interval
            };
            for e in cluster.endpoints {
                let EndpointLoad {
                    address,
                    successful,
                    errors,
                    in_progress,
                    issued,
                    latency_count,
                    latency_ms_total,
                } = e;
                let key = (Arc::clone(&name), Arc::<str>::from(address));
                let len = s.endpoints.len();
                let samples = match s.endpoints.get_mut(&key) {
                    Some(samples) => samples,
                    None if len < max_endpoints && streams.endpoints < max_total => {
                        streams.endpoints += 1;
                        s.endpoints.entry(key).or_default()
                    }
                    None => {
                        over += 1;
                        continue;
                    }
                };
                // (Also a pair listed twice in one report: it is added up.)
                if let Some(last) = samples
                    .back_mut()
                    .filter(|l| at.saturating_duration_since(l.at) < coalesce)
                {
                    last.successful = last.successful.saturating_add(successful);
                    last.errors = last.errors.saturating_add(errors);
                    last.issued = last.issued.saturating_add(issued);
                    last.in_progress = in_progress;
                    last.latency_count = last.latency_count.saturating_add(latency_count);
                    last.latency_ms_total += latency_ms_total;
                    last.covers = last.covers.saturating_add(covers).min(window);
                    continue;
                }
                if samples.len() >= ring {
                    samples.pop_front();
                }
                samples.push_back(Sample {
                    at,
                    covers,
                    successful,
                    errors,
                    issued,
                    in_progress,
                    latency_count,
                    latency_ms_total,
                });
            }
        }
        // Endpoints with nothing in the window any more are forgotten, so the bound on
        // endpoints is a bound on what is reported now, not on what ever was.
        let before = s.endpoints.len();
        s.endpoints.retain(|_, samples| {
            samples
                .back()
                .is_some_and(|last| at.saturating_duration_since(last.at) <= window)
        });
        streams.endpoints -= before - s.endpoints.len();
        drop(guard);
        if over > 0 {
            self.inner
                .dropped
                .fetch_add(over as u64, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Parts of reports dropped so far for being over a bound.
    pub fn dropped(&self) -> u64 {
        self.inner
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Node ids of the streams reporting now, with how many endpoints each reports.
    pub fn reporters(&self) -> Vec<(String, usize)> {
        let mut out: Vec<(String, usize)> = lock(&self.inner.streams)
            .by_id
            .values()
            .map(|s| (s.node_id.clone(), s.endpoints.len()))
            .collect();
        out.sort();
        out
    }

    /// Every endpoint's load over the window ending `now`, by cluster then endpoint address.
    /// An endpoint with no report in the window is absent.
    pub fn window(&self, now: Instant) -> BTreeMap<String, BTreeMap<String, WindowLoad>> {
        let window = self.inner.options.window;
        let mut out: BTreeMap<String, BTreeMap<String, WindowLoad>> = BTreeMap::new();
        let streams = lock(&self.inner.streams);
        for s in streams.by_id.values() {
            for ((cluster, endpoint), samples) in &s.endpoints {
                let mut inside = samples
                    .iter()
                    .filter(|x| now.saturating_duration_since(x.at) <= window)
                    .peekable();
                if inside.peek().is_none() {
                    continue;
                }
                let mut sum = WindowLoad::default();
                let mut covered = Duration::ZERO;
                let mut newest = None;
                for x in inside {
                    sum.successful = sum.successful.saturating_add(x.successful);
                    sum.errors = sum.errors.saturating_add(x.errors);
                    sum.issued = sum.issued.saturating_add(x.issued);
                    sum.latency_count = sum.latency_count.saturating_add(x.latency_count);
                    sum.latency_ms_total += x.latency_ms_total;
                    covered = covered.saturating_add(x.covers);
                    newest = Some(x);
                }
                let Some(newest) = newest else { continue };
                let covered = covered.min(window).max(Duration::from_millis(1));
                let total = out
                    .entry(cluster.to_string())
                    .or_default()
                    .entry(endpoint.to_string())
                    .or_insert_with(|| WindowLoad {
                        age: Duration::MAX,
                        ..Default::default()
                    });
                total.successful = total.successful.saturating_add(sum.successful);
                total.errors = total.errors.saturating_add(sum.errors);
                total.issued = total.issued.saturating_add(sum.issued);
                total.in_progress = total.in_progress.saturating_add(newest.in_progress);
                total.latency_count = total.latency_count.saturating_add(sum.latency_count);
                total.latency_ms_total += sum.latency_ms_total;
                total.rps += sum.finished() as f64 / covered.as_secs_f64();
                total.age = total.age.min(now.saturating_duration_since(newest.at));
                total.reporters += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gofe_proto::load::ClusterLoad;

    fn report(endpoint: &str, ok: u64, err: u64) -> Vec<ClusterLoad> {
        vec![ClusterLoad {
            cluster: "web".into(),
            endpoints: vec![EndpointLoad {
                address: endpoint.into(),
                successful: ok,
                errors: err,
                in_progress: 2,
                issued: ok + err,
                latency_count: ok + err,
                latency_ms_total: 10.0 * (ok + err) as f64,
            }],
            interval: Duration::from_secs(1),
        }]
    }

    fn store(window: Duration) -> LoadStore {
        LoadStore::new(LoadReportingOptions {
            window,
            max_endpoints_per_stream: 2,
            max_streams: 2,
            ..Default::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_adds_up_the_reports_inside_it_and_forgets_older_ones() {
        let s = store(Duration::from_secs(3));
        assert!(s.open(1, "proxy-1"));
        for _ in 0..5 {
            s.record(1, Instant::now(), report("10.0.0.1:80", 10, 0), 0);
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        // The fault: the next two reports are all errors.
        for _ in 0..2 {
            s.record(1, Instant::now(), report("10.0.0.1:80", 0, 10), 0);
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        let w = s.window(Instant::now())["web"]["10.0.0.1:80"];
        // Reports at t = 4 (ok), 5 and 6 (errors) are within 3 s of t = 7; t = 3 is not.
        assert_eq!((w.successful, w.errors), (10, 20));
        assert_eq!(w.in_progress, 2);
        assert_eq!(w.rps, 10.0);
        assert_eq!(w.mean_latency(), Some(0.01));
        assert_eq!(w.age, Duration::from_secs(1));
        assert_eq!(w.reporters, 1);
        // The ring keeps no more than the window needs (3 s / 1 s + 2).
        assert_eq!(
            lock(&s.inner.streams).by_id[&1]
                .endpoints
                .values()
                .next()
                .unwrap()
                .len(),
            5
        );

        // Nothing more arrives: the endpoint falls out of the window.
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(s.window(Instant::now()).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn two_proxies_add_up_and_a_closed_stream_no_longer_counts() {
        let s = store(Duration::from_secs(10));
        assert!(s.open(1, "proxy-1"));
        assert!(s.open(2, "proxy-2"));
        assert!(!s.open(3, "proxy-3"), "at most two streams");
        s.record(1, Instant::now(), report("10.0.0.1:80", 5, 5), 0);
        s.record(2, Instant::now(), report("10.0.0.1:80", 10, 0), 0);
        let w = s.window(Instant::now())["web"]["10.0.0.1:80"];
        assert_eq!((w.successful, w.errors, w.reporters), (15, 5, 2));
        assert_eq!(w.rps, 20.0);
        s.close(1);
        let w = s.window(Instant::now())["web"]["10.0.0.1:80"];
        assert_eq!((w.successful, w.errors, w.reporters), (10, 0, 1));
        assert_eq!(s.reporters(), [("proxy-2".to_owned(), 1)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_reporting_faster_than_asked_holds_no_more_reports() {
        let s = store(Duration::from_secs(3));
        assert!(s.open(1, "flood"));
        for _ in 0..1000 {
            s.record(1, Instant::now(), report("10.0.0.1:80", 1, 0), 0);
            tokio::time::advance(Duration::from_millis(10)).await;
        }
        // 10 s of reports every 10 ms: kept as one report per half interval at most, within
        // the ring (3 s / 1 s + 2).
        let kept = lock(&s.inner.streams).by_id[&1]
            .endpoints
            .values()
            .next()
            .unwrap()
            .len();
        assert!(kept <= 5, "{kept}");
        let w = s.window(Instant::now())["web"]["10.0.0.1:80"];
        assert!(w.successful > 0 && w.successful <= 1000, "{w:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_bound_on_all_streams_endpoints_holds_and_is_given_back_when_one_closes() {
        let s = LoadStore::new(LoadReportingOptions {
            max_endpoints: 3,
            ..Default::default()
        });
        assert!(s.open(1, "a") && s.open(2, "b"));
        s.record(1, Instant::now(), report("10.0.0.1:80", 1, 0), 0);
        s.record(1, Instant::now(), report("10.0.0.2:80", 1, 0), 0);
        s.record(2, Instant::now(), report("10.0.0.3:80", 1, 0), 0);
        s.record(2, Instant::now(), report("10.0.0.4:80", 1, 0), 0);
        assert_eq!(s.window(Instant::now())["web"].len(), 3);
        assert_eq!(s.dropped(), 1);
        s.close(1);
        s.record(2, Instant::now(), report("10.0.0.4:80", 1, 0), 0);
        assert_eq!(s.reporters(), [("b".to_owned(), 2)]);
    }

    #[tokio::test(start_paused = true)]
    async fn endpoints_beyond_the_per_stream_bound_are_dropped_and_counted() {
        let s = store(Duration::from_secs(10));
        assert!(s.open(1, "proxy-1"));
        for i in 0..5 {
            s.record(
                1,
                Instant::now(),
                report(&format!("10.0.0.{i}:80"), 1, 0),
                1,
            );
        }
        assert_eq!(s.window(Instant::now())["web"].len(), 2);
        assert_eq!(s.dropped(), 3 + 5);
        // A stream that was never opened (or has closed) keeps nothing.
        s.record(9, Instant::now(), report("10.0.0.9:80", 1, 0), 0);
        assert_eq!(s.reporters().len(), 1);
    }
}
