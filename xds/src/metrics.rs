//! The control plane's Prometheus metrics.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::SystemTime;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::cache::lock;

/// Counters and gauges of one ADS server.
pub(crate) struct ServerMetrics {
    registry: Registry,
    pub(crate) connected: IntGauge,
    pub(crate) pushes: IntCounterVec,
    pub(crate) acks: IntCounterVec,
    pub(crate) nacks: IntCounterVec,
    pub(crate) push_latency: HistogramVec,
    nack_info: IntGaugeVec,
    last_nack: Mutex<HashMap<(String, &'static str), [String; 2]>>,
    version_info: IntGaugeVec,
    last_version: Mutex<HashMap<NodeType, (String, SystemTime)>>,
}

impl ServerMetrics {
    pub(crate) fn new() -> ServerMetrics {
        let registry = Registry::new();
        let connected = IntGauge::new(
            "gofe_xds_connected_proxies",
            "ADS streams currently open (SotW and delta).",
        )
        .expect("valid metric");
        let pushes = IntCounterVec::new(
            Opts::new("gofe_xds_pushes_total", "Responses sent, by resource type."),
            &["type"],
        )
        .expect("valid metric");
        let acks = IntCounterVec::new(
            Opts::new("gofe_xds_acks_total", "ACKs received, by resource type."),
            &["type"],
        )
        .expect("valid metric");
        let nacks = IntCounterVec::new(
            Opts::new("gofe_xds_nacks_total", "NACKs received, by resource type."),
            &["type"],
        )
        .expect("valid metric");
        let push_latency = HistogramVec::new(
            HistogramOpts::new(
                "gofe_xds_push_latency_seconds",
                "Time from a snapshot being set to the client's ACK of it, by resource type.",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["type"],
        )
        .expect("valid metric");
        let nack_info = IntGaugeVec::new(
            Opts::new(
                "gofe_xds_last_nack_info",
                "The last NACK of each node and type, with the client's error_detail (value 1).",
            ),
            &["node", "type", "version", "error"],
        )
        .expect("valid metric");
        let version_info = IntGaugeVec::new(
            Opts::new(
                "gofe_xds_acked_version_info",
                "The version each node last ACKed, per type (value 1).",
            ),
            &["node", "type", "version"],
        )
        .expect("valid metric");
        for c in [
            Box::new(connected.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(pushes.clone()),
            Box::new(acks.clone()),
            Box::new(nacks.clone()),
            Box::new(push_latency.clone()),
            Box::new(nack_info.clone()),
            Box::new(version_info.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        ServerMetrics {
            registry,
            connected,
            pushes,
            acks,
            nacks,
            push_latency,
            nack_info,
            last_nack: Mutex::default(),
            version_info,
            last_version: Mutex::default(),
        }
    }

    pub(crate) fn record_nack(&self, node: &str, ty: &'static str, version: &str, error: &str) {
        self.nacks.with_label_values(&[ty]).inc();
        let error: String = error.chars().take(256).collect();
        let mut last = lock(&self.last_nack);
        if let Some([v, e]) = last.get(&(node.to_owned(), ty)) {
            let _ = self.nack_info.remove_label_values(&[node, ty, v, e]);
        }
        self.nack_info
            .with_label_values(&[node, ty, version, &error])
            .set(1);
        last.insert((node.to_owned(), ty), [version.to_owned(), error]);
    }

    pub(crate) fn record_ack(&self, node: &str, ty: &'static str, version: &str) {
        self.acks.with_label_values(&[ty]).inc();
        let mut last = lock(&self.last_version);
        if let Some((v, _)) = last.get(&(node.to_owned(), ty)) {
            if v == version {
                return;
            }
            let _ = self.version_info.remove_label_values(&[node, ty, v]);
        }
        self.version_info
            .with_label_values(&[node, ty, version])
            .set(1);
        last.insert(
            (node.to_owned(), ty),
            (version.to_owned(), SystemTime::now()),
        );
    }

    /// Every connected node's last ACKed version per type, and when it first ACKed it.
    pub(crate) fn node_acks(&self) -> Vec<NodeAck> {
        let mut out: Vec<NodeAck> = lock(&self.last_version)
            .iter()
            .map(|((node, ty), (version, at))| NodeAck {
                node: node.clone(),
                type_short: ty,
                version: version.clone(),
                acked_at: *at,
            })
            .collect();
        out.sort_by(|a, b| (&a.node, a.type_short).cmp(&(&b.node, b.type_short)));
        out
    }

    /// Drops the per-node series of a node whose stream ended (so a fleet that churns does not
    /// grow the exposition forever).
    pub(crate) fn forget_node(&self, node: &str) {
        lock(&self.last_version).retain(|(n, ty), (v, _)| {
            if n == node {
                let _ = self.version_info.remove_label_values(&[node, ty, v]);
            }
            n != node
        });
    }

    pub(crate) fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// A node id and a resource type's short name.
type NodeType = (String, &'static str);

/// A node's last ACK of one resource type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeAck {
    /// `node.id`.
    pub node: String,
    /// `cds`, `eds`, `lds` or `rds`.
    pub type_short: &'static str,
    /// The version it ACKed (`version_info`, or the nonce for delta streams).
    pub version: String,
    /// When it first ACKed that version.
    pub acked_at: SystemTime,
}
