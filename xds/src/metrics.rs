//! The control plane's Prometheus metrics.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// Streams refused before any resource was sent, by reason (`no_client_certificate`,
    /// `unreadable_certificate`, `identity_mismatch`).
    pub(crate) refused: IntCounterVec,
    /// TLS handshakes that failed (no or an untrusted client certificate, plaintext on a TLS
    /// port, a protocol error).
    pub(crate) handshake_failures: prometheus::IntCounter,
    /// Certificate reloads, by result (`applied`, `failed`).
    pub(crate) tls_reloads: IntCounterVec,
    /// Mesh CA certificate requests, by result (`issued`, `unauthenticated`,
    /// `invalid_argument`, `permission_denied`, `unimplemented`, `error`).
    pub(crate) ca_requests: IntCounterVec,
    nack_info: IntGaugeVec,
    /// Per stream, node and type: the last NACK's version and error.
    last_nack: Mutex<HashMap<StreamType, [String; 2]>>,
    version_info: IntGaugeVec,
    /// Per stream, node and type: the last ACKed version and when it was first ACKed. Kept by
    /// stream, not by node: two streams claiming one node id (a restarted proxy whose old
    /// stream has not ended yet, two proxies sharing an id, an impostor) each keep their own,
    /// and one ending forgets only its own.
    last_version: Mutex<HashMap<StreamType, (String, SystemTime)>>,
    next_stream: AtomicU64,
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
        let refused = IntCounterVec::new(
            Opts::new(
                "gofe_xds_refused_streams_total",
                "xDS and load-report streams refused before any resource was sent, by reason \
                 (no_client_certificate, unreadable_certificate, identity_mismatch).",
            ),
            &["reason"],
        )
        .expect("valid metric");
        for reason in [
            "no_client_certificate",
            "unreadable_certificate",
            "identity_mismatch",
        ] {
            refused.with_label_values(&[reason]);
        }
        let handshake_failures = prometheus::IntCounter::new(
            "gofe_xds_tls_handshake_failures_total",
            "TLS handshakes on the xDS port that failed (a missing or untrusted client \
             certificate, plaintext on a TLS port).",
        )
        .expect("valid metric");
        let tls_reloads = IntCounterVec::new(
            Opts::new(
                "gofe_xds_tls_reloads_total",
                "Changed certificate files read again, by result: applied (new handshakes use \
                 them) or failed (the previous material stays).",
            ),
            &["result"],
        )
        .expect("valid metric");
        for result in ["applied", "failed"] {
            tls_reloads.with_label_values(&[result]);
        }
        let ca_requests = IntCounterVec::new(
            Opts::new(
                "gofe_ca_certificate_requests_total",
                "Mesh CA CreateCertificate calls, by result: issued, unauthenticated (no or a \
                 bad token), invalid_argument (an unreadable CSR or a name not granted), \
                 permission_denied, unimplemented (no mesh CA), error.",
            ),
            &["result"],
        )
        .expect("valid metric");
        for result in ["issued", "unauthenticated", "invalid_argument"] {
            ca_requests.with_label_values(&[result]);
        }
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
            Box::new(refused.clone()),
            Box::new(handshake_failures.clone()),
            Box::new(tls_reloads.clone()),
            Box::new(ca_requests.clone()),
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
            refused,
            handshake_failures,
            tls_reloads,
            ca_requests,
            nack_info,
            last_nack: Mutex::default(),
            version_info,
            last_version: Mutex::default(),
            next_stream: AtomicU64::new(0),
        }
    }

    /// A new stream's id.
    pub(crate) fn next_stream(&self) -> u64 {
        self.next_stream.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn record_nack(
        &self,
        stream: u64,
        node: &str,
        ty: &'static str,
        version: &str,
        error: &str,
    ) {
        self.nacks.with_label_values(&[ty]).inc();
        let error: String = error.chars().take(256).collect();
        let mut last = lock(&self.last_nack);
        let before = nack_series(&last, node);
        last.insert((stream, node.to_owned(), ty), [version.to_owned(), error]);
        sync(&self.nack_info, node, &before, &nack_series(&last, node));
    }

    pub(crate) fn record_ack(&self, stream: u64, node: &str, ty: &'static str, version: &str) {
        self.acks.with_label_values(&[ty]).inc();
        let mut last = lock(&self.last_version);
        let key = (stream, node.to_owned(), ty);
        if last.get(&key).is_some_and(|(v, _)| v == version) {
            return;
        }
        let before = version_series(&last, node);
        last.insert(key, (version.to_owned(), SystemTime::now()));
        sync(
            &self.version_info,
            node,
            &before,
            &version_series(&last, node),
        );
    }

    /// Every connected node's last ACKed version per type, and when it first ACKed it. A node
    /// with several streams shows its most recent ACK of each type.
    pub(crate) fn node_acks(&self) -> Vec<NodeAck> {
        let mut newest: HashMap<(String, &'static str), (String, SystemTime)> = HashMap::new();
        for ((_, node, ty), (version, at)) in lock(&self.last_version).iter() {
            let entry = newest
                .entry((node.clone(), ty))
                .or_insert_with(|| (version.clone(), *at));
            if *at > entry.1 {
                *entry = (version.clone(), *at);
            }
        }
        let mut out: Vec<NodeAck> = newest
            .into_iter()
            .map(|((node, type_short), (version, acked_at))| NodeAck {
                node,
                type_short,
                version,
                acked_at,
            })
            .collect();
        out.sort_by(|a, b| (&a.node, a.type_short).cmp(&(&b.node, b.type_short)));
        out
    }

    /// Drops what one stream of `node` recorded when it ends (so a fleet that churns does not
    /// grow the exposition forever); the node's other streams keep theirs.
    pub(crate) fn forget_stream(&self, stream: u64, node: &str) {
        {
            let mut last = lock(&self.last_version);
            let before = version_series(&last, node);
            last.retain(|(s, n, _), _| !(*s == stream && n == node));
            sync(
                &self.version_info,
                node,
                &before,
                &version_series(&last, node),
            );
        }
        let mut last = lock(&self.last_nack);
        let before = nack_series(&last, node);
        last.retain(|(s, n, _), _| !(*s == stream && n == node));
        sync(&self.nack_info, node, &before, &nack_series(&last, node));
    }

    pub(crate) fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// A stream id, its node id and a resource type's short name.
type StreamType = (u64, String, &'static str);

/// The label values after `node` that `node`'s streams export for versions: (type, version).
fn version_series(
    last: &HashMap<StreamType, (String, SystemTime)>,
    node: &str,
) -> BTreeSet<Vec<String>> {
    last.iter()
        .filter(|((_, n, _), _)| n == node)
        .map(|((_, _, ty), (v, _))| vec![(*ty).to_owned(), v.clone()])
        .collect()
}

/// The label values after `node` that `node`'s streams export for NACKs: (type, version, error).
fn nack_series(last: &HashMap<StreamType, [String; 2]>, node: &str) -> BTreeSet<Vec<String>> {
    last.iter()
        .filter(|((_, n, _), _)| n == node)
        .map(|((_, _, ty), [v, e])| vec![(*ty).to_owned(), v.clone(), e.clone()])
        .collect()
}

/// Makes the info gauge's series of `node` go from `before` to `after`.
fn sync(
    gauge: &IntGaugeVec,
    node: &str,
    before: &BTreeSet<Vec<String>>,
    after: &BTreeSet<Vec<String>>,
) {
    fn labels<'a>(node: &'a str, rest: &'a [String]) -> Vec<&'a str> {
        std::iter::once(node)
            .chain(rest.iter().map(String::as_str))
            .collect()
    }
    for gone in before.difference(after) {
        let _ = gauge.remove_label_values(&labels(node, gone));
    }
    for new in after.difference(before) {
        gauge.with_label_values(&labels(node, new)).set(1);
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_sharing_a_node_id_keep_their_own_state() {
        let m = ServerMetrics::new();
        let (real, other) = (m.next_stream(), m.next_stream());
        m.record_ack(real, "proxy-1", "eds", "v1");
        m.record_ack(other, "proxy-1", "eds", "v0");
        m.record_nack(other, "proxy-1", "lds", "v9", "bad listener");
        let text = m.render();
        assert!(
            text.contains(
                r#"gofe_xds_acked_version_info{node="proxy-1",type="eds",version="v1"} 1"#
            ),
            "{text}"
        );
        assert!(text.contains(r#"version="v0""#), "{text}");
        assert!(text.contains("bad listener"), "{text}");

        // The impostor's stream ends: the real proxy stays, and its NACK entry goes with it.
        m.forget_stream(other, "proxy-1");
        let acks = m.node_acks();
        assert_eq!(acks.len(), 1, "{acks:?}");
        assert_eq!(
            (acks[0].node.as_str(), acks[0].version.as_str()),
            ("proxy-1", "v1")
        );
        let text = m.render();
        assert!(text.contains(r#"version="v1""#), "{text}");
        assert!(!text.contains(r#"version="v0""#), "{text}");
        assert!(
            !text.contains("bad listener"),
            "a stale NACK entry is gone: {text}"
        );

        m.forget_stream(real, "proxy-1");
        assert!(m.node_acks().is_empty());
        assert!(!m.render().contains("gofe_xds_acked_version_info{"));
    }
}
