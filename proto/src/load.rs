//! Load reports: Envoy's Load Reporting Service (`envoy.service.load_stats.v3`), as gofe's own
//! small types.
//!
//! A client (gofe's proxy, Envoy, a gRPC client) opens `StreamLoadStats`, sends its node, and
//! then every `load_reporting_interval` a `LoadStatsRequest` with one `ClusterStats` per cluster:
//! per endpoint (`upstream_locality_stats[].upstream_endpoint_stats[]`, by address) the requests
//! that finished successfully and in error, those issued, and those in progress, all counted
//! since the previous report. The server's `LoadStatsResponse` says which clusters it wants and
//! how often.
//!
//! Latency is not a field of Envoy's report. gofe's convention is a `load_metric_stats` entry
//! named [`LATENCY_METRIC`] (`gofe.latency_ms`): `num_requests_finished_with_metric` requests
//! took `total_metric_value` milliseconds between them (so their mean is the quotient). Other
//! clients' reports simply have no latency.
//!
//! [`EndpointLoad`] and [`ClusterLoad`] are what gofe reads and writes; [`read_request`] takes
//! whatever a client sent and keeps at most [`LoadLimits`] of it, so a hostile client cannot
//! make the server hold more than that per report.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::service::load_stats::v3::{LoadStatsRequest, LoadStatsResponse};

/// The name of gofe's latency entry in `load_metric_stats`: values in milliseconds.
pub const LATENCY_METRIC: &str = "gofe.latency_ms";

/// One endpoint's load over one reporting interval (counts since the previous report).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EndpointLoad {
    /// `host:port` (`[v6]:port`), as the endpoint is configured.
    pub address: String,
    /// Requests that finished with a response other than 5xx (`total_successful_requests`).
    pub successful: u64,
    /// Requests that finished with a 5xx or no response at all (`total_error_requests`).
    pub errors: u64,
    /// Requests in flight when the report was taken (`total_requests_in_progress`, a gauge).
    pub in_progress: u64,
    /// Requests sent to the endpoint in the interval (`total_issued_requests`).
    pub issued: u64,
    /// Requests with a latency (the [`LATENCY_METRIC`] entry's `num_requests_finished_with_metric`).
    pub latency_count: u64,
    /// Their latencies added up, milliseconds (`total_metric_value`).
    pub latency_ms_total: f64,
}

impl EndpointLoad {
    /// Requests that finished in the interval.
    pub fn finished(&self) -> u64 {
        self.successful.saturating_add(self.errors)
    }
}

/// One cluster's report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterLoad {
    /// `cluster_name`.
    pub cluster: String,
    /// Per endpoint.
    pub endpoints: Vec<EndpointLoad>,
    /// What the counts cover (`load_report_interval`). Zero when the client did not say.
    pub interval: Duration,
}

/// How much of one request [`read_request`] keeps. What is beyond is dropped (and counted in
/// [`LoadRequest::dropped`]), never stored.
#[derive(Clone, Copy, Debug)]
pub struct LoadLimits {
    /// Clusters per request. Default 256.
    pub clusters: usize,
    /// Endpoints per cluster (across its localities). Default 1024.
    pub endpoints: usize,
    /// Longest cluster name or endpoint address, bytes. Default 256.
    pub name_len: usize,
}

impl Default for LoadLimits {
    fn default() -> Self {
        LoadLimits {
            clusters: 256,
            endpoints: 1024,
            name_len: 256,
        }
    }
}

/// A request as [`read_request`] kept it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoadRequest {
    /// `node.id`, when the request carries a node (the first of a stream must).
    pub node_id: Option<String>,
    /// The clusters' reports, within the limits.
    pub clusters: Vec<ClusterLoad>,
    /// Clusters and endpoints left out: over the limits, or without a usable name or address.
    pub dropped: usize,
}

/// What the server asks of a client (`LoadStatsResponse`).
#[derive(Clone, Debug, PartialEq)]
pub struct LoadReporting {
    /// Report every cluster (`send_all_clusters`); otherwise only `clusters`.
    pub all_clusters: bool,
    /// The clusters to report when not all of them.
    pub clusters: Vec<String>,
    /// How often to report (`load_reporting_interval`).
    pub interval: Duration,
}

/// The first message of a client's stream: its node, with the capability to be sent
/// `send_all_clusters` (Envoy's `envoy.lrs.supports_send_all_clusters`) and no stats yet.
pub fn hello(node: core::Node) -> LoadStatsRequest {
    let mut node = node;
    let feature = "envoy.lrs.supports_send_all_clusters";
    if !node.client_features.iter().any(|f| f == feature) {
        node.client_features.push(feature.into());
    }
    LoadStatsRequest {
        node: Some(node),
        cluster_stats: Vec::new(),
    }
}

/// The wire form of a report (no node: it went with the stream's first message).
pub fn request(clusters: &[ClusterLoad]) -> LoadStatsRequest {
    LoadStatsRequest {
        node: None,
        cluster_stats: clusters.iter().map(cluster_to_wire).collect(),
    }
}

fn cluster_to_wire(c: &ClusterLoad) -> endpoint::ClusterStats {
    let mut locality = endpoint::UpstreamLocalityStats::default();
    let mut latency = (0u64, 0f64);
    for e in &c.endpoints {
        locality.total_successful_requests += e.successful;
        locality.total_error_requests += e.errors;
        locality.total_issued_requests += e.issued;
        locality.total_requests_in_progress += e.in_progress;
        latency = (latency.0 + e.latency_count, latency.1 + e.latency_ms_total);
        locality
            .upstream_endpoint_stats
            .push(endpoint::UpstreamEndpointStats {
                address: Some(socket_address(&e.address)),
                total_successful_requests: e.successful,
                total_error_requests: e.errors,
                total_requests_in_progress: e.in_progress,
                total_issued_requests: e.issued,
                load_metric_stats: latency_stats(e.latency_count, e.latency_ms_total),
                ..Default::default()
            });
    }
    locality.load_metric_stats = latency_stats(latency.0, latency.1);
    endpoint::ClusterStats {
        cluster_name: c.cluster.clone(),
        upstream_locality_stats: vec![locality],
        load_report_interval: Some(duration_to_wire(c.interval)),
        ..Default::default()
    }
}

fn latency_stats(count: u64, total_ms: f64) -> Vec<endpoint::EndpointLoadMetricStats> {
    if count == 0 {
        return Vec::new();
    }
    vec![endpoint::EndpointLoadMetricStats {
        metric_name: LATENCY_METRIC.into(),
        num_requests_finished_with_metric: count,
        total_metric_value: total_ms,
    }]
}

/// Reads a client's request, keeping at most `limits` of it. Endpoints are read from every
/// locality's `upstream_endpoint_stats`; a cluster reported only per locality (no endpoint
/// detail) contributes nothing. An address that is not a socket address, a non-finite or
/// negative latency, and names over the length limit are dropped.
pub fn read_request(req: &LoadStatsRequest, limits: &LoadLimits) -> LoadRequest {
    let mut out = LoadRequest {
        node_id: req.node.as_ref().map(|n| n.id.clone()),
        ..Default::default()
    };
    for (i, c) in req.cluster_stats.iter().enumerate() {
        if i >= limits.clusters
            || c.cluster_name.is_empty()
            || c.cluster_name.len() > limits.name_len
        {
            out.dropped += 1;
            continue;
        }
        let mut cluster = ClusterLoad {
            cluster: c.cluster_name.clone(),
            endpoints: Vec::new(),
            interval: c
                .load_report_interval
                .as_ref()
                .map_or(Duration::ZERO, duration_from_wire),
        };
        for e in c
            .upstream_locality_stats
            .iter()
            .flat_map(|l| &l.upstream_endpoint_stats)
        {
            let address = e.address.as_ref().and_then(address_from_wire);
            let Some(address) = address.filter(|a| a.len() <= limits.name_len) else {
                out.dropped += 1;
                continue;
            };
            if cluster.endpoints.len() >= limits.endpoints {
                out.dropped += 1;
                continue;
            }
            let (latency_count, latency_ms_total) = e
                .load_metric_stats
                .iter()
                .find(|m| m.metric_name == LATENCY_METRIC)
                .filter(|m| m.total_metric_value.is_finite() && m.total_metric_value >= 0.0)
                .map_or((0, 0.0), |m| {
                    (m.num_requests_finished_with_metric, m.total_metric_value)
                });
            cluster.endpoints.push(EndpointLoad {
                address,
                successful: e.total_successful_requests,
                errors: e.total_error_requests,
                in_progress: e.total_requests_in_progress,
                issued: e.total_issued_requests,
                latency_count,
                latency_ms_total,
            });
        }
        out.clusters.push(cluster);
    }
    out
}

/// The server's answer.
pub fn response(reporting: &LoadReporting) -> LoadStatsResponse {
    LoadStatsResponse {
        clusters: if reporting.all_clusters {
            Vec::new()
        } else {
            reporting.clusters.clone()
        },
        send_all_clusters: reporting.all_clusters,
        load_reporting_interval: Some(duration_to_wire(reporting.interval)),
        report_endpoint_granularity: true,
    }
}

/// Reads the server's answer. An interval that is missing or zero is `None`: the client has
/// no interval to report at and should wait for the next answer.
pub fn read_response(resp: &LoadStatsResponse) -> Option<LoadReporting> {
    let interval = resp
        .load_reporting_interval
        .as_ref()
        .map(duration_from_wire)
        .filter(|d| !d.is_zero())?;
    Some(LoadReporting {
        all_clusters: resp.send_all_clusters,
        clusters: resp.clusters.clone(),
        interval,
    })
}

fn duration_to_wire(d: Duration) -> envoy_types::pb::google::protobuf::Duration {
    envoy_types::pb::google::protobuf::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn duration_from_wire(d: &envoy_types::pb::google::protobuf::Duration) -> Duration {
    if d.seconds < 0 || d.nanos < 0 {
        return Duration::ZERO;
    }
    Duration::new(d.seconds as u64, d.nanos.min(999_999_999) as u32)
}

fn socket_address(address: &str) -> core::Address {
    let (host, port) = match address.rsplit_once(':') {
        Some((h, p)) => (
            h.trim_start_matches('[').trim_end_matches(']'),
            p.parse().unwrap_or(0),
        ),
        None => (address, 0),
    };
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: host.to_owned(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

fn address_from_wire(a: &core::Address) -> Option<String> {
    let Some(core::address::Address::SocketAddress(sa)) = a.address.as_ref() else {
        return None;
    };
    let Some(core::socket_address::PortSpecifier::PortValue(port)) = sa.port_specifier else {
        return None;
    };
    if sa.address.is_empty() || port > 65535 {
        return None;
    }
    Some(if sa.address.contains(':') {
        format!("[{}]:{port}", sa.address)
    } else {
        format!("{}:{port}", sa.address)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;

    fn load(address: &str, ok: u64, err: u64) -> EndpointLoad {
        EndpointLoad {
            address: address.into(),
            successful: ok,
            errors: err,
            in_progress: 1,
            issued: ok + err,
            latency_count: ok + err,
            latency_ms_total: 2.5 * (ok + err) as f64,
        }
    }

    #[test]
    fn a_report_round_trips_through_the_wire_with_gofes_latency_convention() {
        let sent = vec![ClusterLoad {
            cluster: "web".into(),
            endpoints: vec![load("127.0.0.1:8080", 9, 1), load("[::1]:81", 3, 0)],
            interval: Duration::from_millis(1500),
        }];
        let wire = request(&sent);
        let bytes = wire.encode_to_vec();
        let decoded = LoadStatsRequest::decode(bytes.as_slice()).unwrap();
        let e = &decoded.cluster_stats[0].upstream_locality_stats[0].upstream_endpoint_stats[0];
        assert_eq!(e.load_metric_stats[0].metric_name, "gofe.latency_ms");
        assert_eq!(e.load_metric_stats[0].num_requests_finished_with_metric, 10);
        let locality = &decoded.cluster_stats[0].upstream_locality_stats[0];
        assert_eq!(locality.total_successful_requests, 12);
        let read = read_request(&decoded, &LoadLimits::default());
        assert_eq!(read.clusters, sent);
        assert_eq!((read.node_id, read.dropped), (None, 0));
    }

    #[test]
    fn a_request_beyond_the_limits_is_cut_to_them() {
        let endpoints: Vec<EndpointLoad> = (0..10)
            .map(|i| load(&format!("10.0.0.{i}:80"), 1, 0))
            .collect();
        let mut clusters: Vec<ClusterLoad> = (0..5)
            .map(|i| ClusterLoad {
                cluster: format!("c{i}"),
                endpoints: endpoints.clone(),
                interval: Duration::from_secs(1),
            })
            .collect();
        clusters[0].cluster = "x".repeat(300);
        let mut wire = request(&clusters);
        wire.cluster_stats[1].upstream_locality_stats[0].upstream_endpoint_stats[0].address = None;
        wire.cluster_stats[1].upstream_locality_stats[0].upstream_endpoint_stats[1]
            .load_metric_stats[0]
            .total_metric_value = f64::NAN;
        let limits = LoadLimits {
            clusters: 3,
            endpoints: 4,
            name_len: 256,
        };
        let read = read_request(&wire, &limits);
        let names: Vec<&str> = read.clusters.iter().map(|c| c.cluster.as_str()).collect();
        assert_eq!(names, ["c1", "c2"]);
        assert!(read.clusters.iter().all(|c| c.endpoints.len() == 4));
        assert_eq!(read.clusters[0].endpoints[0].address, "10.0.0.1:80");
        assert_eq!(
            read.clusters[0].endpoints[0].latency_count, 0,
            "NaN dropped"
        );
        // c0 (name too long), c3 and c4 (over the cluster limit), one address-less endpoint,
        // and 5 + 6 endpoints over the per-cluster limit.
        assert_eq!(read.dropped, 3 + 1 + 5 + 6);
    }

    #[test]
    fn the_servers_answer_round_trips_and_a_zero_interval_is_no_answer() {
        let r = LoadReporting {
            all_clusters: true,
            clusters: Vec::new(),
            interval: Duration::from_millis(250),
        };
        assert_eq!(read_response(&response(&r)), Some(r.clone()));
        let zero = LoadReporting {
            interval: Duration::ZERO,
            ..r
        };
        assert_eq!(read_response(&response(&zero)), None);
        assert!(hello(core::Node::default())
            .node
            .unwrap()
            .client_features
            .contains(&"envoy.lrs.supports_send_all_clusters".to_owned()));
    }
}
