//! Load reports to the control plane over Envoy's Load Reporting Service (`StreamLoadStats`),
//! when the bootstrap asks for it (`xds_server.load_stats: true`, what Envoy's
//! `cluster_manager.load_stats_config` pointing at the xDS cluster does).
//!
//! ```text
//!   EndpointStats (the counters the hot path bumps anyway)
//!        │  every load_reporting_interval: read, minus what the previous report read
//!        ▼
//!   LoadStatsRequest { cluster_stats[] } ══ StreamLoadStats ══▶ control plane
//!                                        ◀═ LoadStatsResponse { clusters | all, interval }
//! ```
//!
//! Nothing here runs per request: a report reads each endpoint's counters once per interval
//! and subtracts the previous reading. The stream is its own task and its own connection; when
//! it breaks it is opened again with jittered backoff, and the data plane never waits for it.
//! What a report covers starts at the control plane's answer, so a reconnect does not bill the
//! time the stream was down to the first interval after it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use gofe_proto::load::{ClusterLoad, EndpointLoad, LoadReporting};
use gofe_proto::wire::{LoadReportingServiceClient, LoadStatsRequest, Node};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use crate::cluster::Cluster;
use crate::metrics::LoadTotals;
use crate::Proxy;

use super::client::{backoff, ClientOptions, ControlPlane};

/// What an endpoint did between two readings of its counters. A counter smaller than before
/// (its series was removed and created again) counts from zero.
pub(crate) fn delta(now: LoadTotals, before: Option<LoadTotals>, address: &str) -> EndpointLoad {
    let before = before
        .filter(|b| {
            now.finished >= b.finished
                && now.errors >= b.errors
                && now.latency_count >= b.latency_count
        })
        .unwrap_or(LoadTotals {
            active: now.active,
            ..Default::default()
        });
    let finished = now.finished - before.finished;
    let errors = (now.errors - before.errors).min(finished);
    let latency_ms = ((now.latency_seconds - before.latency_seconds) * 1e3).max(0.0);
    EndpointLoad {
        address: address.to_owned(),
        successful: finished - errors,
        errors,
        in_progress: now.active,
        // Issued in the interval = finished in it + the growth of what is in flight.
        issued: (finished + now.active).saturating_sub(before.active),
        latency_count: now.latency_count - before.latency_count,
        latency_ms_total: latency_ms,
    }
}

/// The previous reading of every endpoint's counters.
#[derive(Default)]
pub(crate) struct Readings {
    previous: HashMap<(Box<str>, Box<str>), LoadTotals>,
}

impl Readings {
    /// Takes the current counters as the start of the next report.
    pub(crate) fn baseline(&mut self, clusters: &[Arc<Cluster>]) {
        self.previous.clear();
        for c in clusters {
            for e in c.endpoints.iter() {
                self.previous
                    .insert((c.name.clone(), e.address.clone()), e.stats.load_totals());
            }
        }
    }

    /// The report of what every wanted cluster's endpoints did since the previous reading,
    /// which it replaces. Endpoints no longer configured are forgotten.
    pub(crate) fn report(
        &mut self,
        clusters: &[Arc<Cluster>],
        wanted: &Wanted,
        covers: Duration,
    ) -> Vec<ClusterLoad> {
        let mut next = HashMap::with_capacity(self.previous.len());
        let mut out = Vec::new();
        for c in clusters {
            let mut load = ClusterLoad {
                cluster: c.name.to_string(),
                endpoints: Vec::with_capacity(c.endpoints.len()),
                interval: covers,
            };
            for e in c.endpoints.iter() {
                let key = (c.name.clone(), e.address.clone());
                let now = e.stats.load_totals();
                let before = self.previous.get(&key).copied();
                if wanted.wants(&c.name) {
                    load.endpoints.push(delta(now, before, &e.address));
                }
                next.insert(key, now);
            }
            if wanted.wants(&c.name) && !load.endpoints.is_empty() {
                out.push(load);
            }
        }
        self.previous = next;
        out
    }
}

/// Which clusters the control plane wants reports of.
#[derive(Default)]
pub(crate) struct Wanted {
    all: bool,
    names: HashSet<String>,
}

impl Wanted {
    fn of(r: &LoadReporting) -> Wanted {
        Wanted {
            all: r.all_clusters,
            names: r.clusters.iter().cloned().collect(),
        }
    }

    fn wants(&self, cluster: &str) -> bool {
        self.all || self.names.contains(cluster)
    }
}

fn node(options: &ClientOptions) -> Node {
    Node {
        id: options.node_id.clone(),
        cluster: options.node_cluster.clone(),
        user_agent_name: "gofe".into(),
        ..Default::default()
    }
}

/// Reports load until the task is dropped, reconnecting with backoff.
pub(super) async fn run(proxy: Proxy, options: ClientOptions, control_plane: ControlPlane) {
    let mut attempt: u32 = 0;
    loop {
        let (reported, why) = match control_plane.channel().await {
            Err(e) => (false, e),
            Ok(channel) => stream(&proxy, &options, channel).await,
        };
        if reported {
            attempt = 0;
        }
        let delay = backoff(attempt, options.backoff_initial, options.backoff_max);
        tracing::warn!(server = %options.server, error = %why, retry_in_ms = delay.as_millis() as u64,
            "load-report stream down; reconnecting");
        attempt = attempt.saturating_add(1);
        tokio::time::sleep(delay).await;
    }
}

/// One stream, until it breaks: whether any report went out, and why it ended.
async fn stream(
    proxy: &Proxy,
    options: &ClientOptions,
    channel: tonic::transport::Channel,
) -> (bool, String) {
    let mut client = LoadReportingServiceClient::new(channel);
    let (tx, rx) = mpsc::channel::<LoadStatsRequest>(2);
    if tx
        .send(gofe_proto::load::hello(node(options)))
        .await
        .is_err()
    {
        return (false, "request stream closed".into());
    }
    let mut responses = match client.stream_load_stats(ReceiverStream::new(rx)).await {
        Ok(r) => r.into_inner(),
        Err(e) => return (false, format!("stream: {e}")),
    };
    let mut readings = Readings::default();
    let mut settings: Option<(Wanted, Duration)> = None;
    let mut since = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    let mut reported = false;
    loop {
        tokio::select! {
            r = responses.message() => match r {
                Ok(Some(resp)) => {
                    let Some(reporting) = gofe_proto::load::read_response(&resp) else {
                        tracing::debug!("load-report answer without an interval: waiting for the next");
                        continue;
                    };
                    if settings.is_none() {
                        // What the reports cover starts now.
                        readings.baseline(&proxy.shared.clusters.load());
                        since = Instant::now();
                        tracing::info!(server = %options.server, interval_ms = reporting.interval.as_millis() as u64,
                            "reporting load to the control plane");
                    }
                    tick = tokio::time::interval_at(Instant::now() + reporting.interval, reporting.interval);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    settings = Some((Wanted::of(&reporting), reporting.interval));
                }
                Ok(None) => return (reported, "stream closed by the control plane".into()),
                Err(e) => return (reported, format!("stream: {e}")),
            },
            _ = tick.tick(), if settings.is_some() => {
                let Some((wanted, _)) = &settings else { continue };
                let now = Instant::now();
                let clusters = readings.report(&proxy.shared.clusters.load(), wanted, now - since);
                since = now;
                if tx.send(gofe_proto::load::request(&clusters)).await.is_err() {
                    return (reported, "request stream closed".into());
                }
                reported = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(finished: u64, errors: u64, active: u64, seconds: f64) -> LoadTotals {
        LoadTotals {
            finished,
            errors,
            latency_count: finished,
            latency_seconds: seconds,
            active,
        }
    }

    #[test]
    fn a_report_is_what_happened_since_the_previous_reading() {
        let before = totals(100, 10, 3, 1.0);
        let now = totals(130, 25, 5, 1.6);
        let d = delta(now, Some(before), "10.0.0.1:80");
        assert_eq!(d.address, "10.0.0.1:80");
        assert_eq!((d.successful, d.errors), (15, 15));
        assert_eq!(d.in_progress, 5);
        // 30 finished, and two more in flight than before.
        assert_eq!(d.issued, 32);
        assert_eq!(d.latency_count, 30);
        assert!((d.latency_ms_total - 600.0).abs() < 1e-6, "{d:?}");
        assert_eq!(d.finished(), 30);
    }

    #[test]
    fn a_new_or_reset_series_counts_from_zero_and_nothing_goes_negative() {
        let now = totals(7, 2, 1, 0.07);
        for before in [None, Some(totals(50, 3, 0, 1.0))] {
            let d = delta(now, before, "e");
            assert_eq!(
                (d.successful, d.errors, d.latency_count),
                (5, 2, 7),
                "{before:?}"
            );
            assert_eq!(d.issued, 7, "what is in flight now was there at the start");
        }
        // Fewer in flight than before: issued is what finished less the drop.
        let d = delta(totals(10, 0, 0, 0.0), Some(totals(8, 0, 5, 0.0)), "e");
        assert_eq!(d.issued, 0);
        let d = delta(totals(10, 0, 0, 0.0), Some(totals(10, 0, 0, 0.0)), "e");
        assert_eq!(
            (d.successful, d.errors, d.issued, d.latency_count),
            (0, 0, 0, 0)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn reports_read_the_endpoints_own_counters_as_deltas_per_interval() {
        let config: crate::ProxyConfig = gofe_yaml::from_str(
            "clusters:\n  - name: web\n    endpoints: [{ address: \"127.0.0.1:1\" }, { address: \"127.0.0.1:2\" }]\n  - name: api\n    endpoints: [{ address: \"127.0.0.1:3\" }]\n",
        )
        .unwrap();
        let proxy = Proxy::new();
        proxy
            .apply(config, "test", Duration::from_millis(10))
            .await
            .unwrap();
        let clusters = proxy.shared.clusters.load_full();
        let web = clusters.iter().find(|c| &*c.name == "web").unwrap();
        let record = |i: usize, status: u16, n: usize| {
            for _ in 0..n {
                web.endpoints[i]
                    .stats
                    .record(status, Duration::from_millis(4));
            }
        };
        // Before the stream: not billed to the first report.
        record(0, 200, 50);
        let mut readings = Readings::default();
        readings.baseline(&clusters);
        record(0, 200, 8);
        record(0, 503, 2);
        record(1, 200, 5);
        let only_web = Wanted {
            all: false,
            names: HashSet::from(["web".to_owned()]),
        };
        let first = readings.report(&clusters, &only_web, Duration::from_secs(1));
        assert_eq!(first.len(), 1, "only the wanted cluster");
        assert_eq!(first[0].cluster, "web");
        assert_eq!(first[0].interval, Duration::from_secs(1));
        let e0 = &first[0].endpoints[0];
        assert_eq!(e0.address, "127.0.0.1:1");
        assert_eq!((e0.successful, e0.errors, e0.latency_count), (8, 2, 10));
        assert!((e0.latency_ms_total - 40.0).abs() < 1e-6, "{e0:?}");
        assert_eq!(first[0].endpoints[1].successful, 5);

        // The next interval reports only what happened in it.
        record(1, 500, 3);
        let second = readings.report(&clusters, &only_web, Duration::from_secs(1));
        let (e0, e1) = (&second[0].endpoints[0], &second[0].endpoints[1]);
        assert_eq!((e0.successful, e0.errors), (0, 0));
        assert_eq!((e1.successful, e1.errors), (0, 3));
    }

    #[test]
    fn only_the_wanted_clusters_are_reported() {
        let w = Wanted::of(&LoadReporting {
            all_clusters: false,
            clusters: vec!["web".into()],
            interval: Duration::from_secs(1),
        });
        assert!(w.wants("web") && !w.wants("api"));
        assert!(Wanted::of(&LoadReporting {
            all_clusters: true,
            clusters: Vec::new(),
            interval: Duration::from_secs(1),
        })
        .wants("api"));
    }
}
