//! The ADS server: state-of-the-world and delta streams over one gRPC endpoint.
//!
//! Each stream is one task. It reads requests and watches the snapshot of its node; per type
//! it remembers what it subscribed to, what it last sent and the nonce of that response. A
//! request whose nonce is not the latest is stale and ignored; a NACK (error_detail set) is
//! logged and exported, and the client stays on what it had: the rejected version is not sent
//! again, only a newer snapshot is. A response is sent only when the resources the stream
//! subscribed to actually changed.
//!
//! State-of-the-world responses are encoded once per (snapshot, type, subscription) and the
//! bytes shared by every stream that gets them (see [`crate::grpc`]); a stream adds only its
//! nonce. Subscriptions are interned, so a thousand proxies watching the same clusters hold
//! one set of names between them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gofe_proto::wire::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, Node, Resource,
};
use gofe_proto::ResourceType;
use prost::Message as _;
use rustls::pki_types::CertificateDer;
use tokio::sync::{mpsc, watch};
use tonic::{Status, Streaming};

use crate::cache::{index, NodeKey, Snapshot, SnapshotCache, Subscription, Subscriptions};
use crate::grpc::{self, Message, ResponseBody};
use crate::lrs::{LoadReportingOptions, LoadStore};
use crate::metrics::ServerMetrics;

/// The field number of `nonce` in both `DiscoveryResponse` and `DeltaDiscoveryResponse`.
const NONCE_FIELD: u8 = 5;

/// How many responses may wait for a slow client before its stream task waits (it then
/// skips straight to the newest snapshot when the client catches up).
const STREAM_QUEUE: usize = 4;

/// The client certificate of a TLS connection, put into each request's extensions by
/// [`crate::serve()`].
#[derive(Clone, Debug)]
pub struct PeerCertificate(pub CertificateDer<'static>);

/// Options of an [`AdsServer`].
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// Debounce window: snapshots are published at most once per window. A change after a
    /// quiet window goes out at once; changes within the window after a publication are held
    /// and published together at its end (see [`SnapshotCache`]). Default 10 ms.
    pub debounce: Duration,
    /// Refuse streams that come without a client certificate. Whenever a client certificate is
    /// presented (mutual TLS), the node id must be one of its names (a URI SAN, a DNS SAN, or
    /// the CN of a certificate without SANs: see [`crate::identity`]), whatever this says. Set it with mutual TLS so no stream can skip the check. Default `false`.
    pub require_identity: bool,
    /// Serve the Load Reporting Service (`StreamLoadStats`) on the same port, keeping reports
    /// in a [`LoadStore`]. Default: off (the method answers `UNIMPLEMENTED`).
    pub load_reporting: Option<LoadReportingOptions>,
    /// Serve the mesh CA's `CreateCertificate` ([`crate::ca`]) on the same port, answered by
    /// this authority. Default: off (the method answers `UNIMPLEMENTED`).
    pub authority: Option<crate::ca::SharedAuthority>,
}

impl std::fmt::Debug for dyn crate::ca::CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertificateAuthority")
    }
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            debounce: Duration::from_millis(10),
            require_identity: false,
            load_reporting: None,
            authority: None,
        }
    }
}

/// The ADS service and its snapshot cache. Cheap to clone.
#[derive(Clone)]
pub struct AdsServer {
    pub(crate) inner: Arc<ServerInner>,
}

pub(crate) struct ServerInner {
    cache: SnapshotCache,
    pub(crate) metrics: ServerMetrics,
    require_identity: bool,
    subscriptions: Subscriptions,
    load: Option<LoadStore>,
    pub(crate) authority: Option<crate::ca::SharedAuthority>,
}

impl AdsServer {
    /// A server with an empty cache. Must be created inside a Tokio runtime.
    pub fn new(options: ServerOptions) -> AdsServer {
        AdsServer {
            inner: Arc::new(ServerInner {
                cache: SnapshotCache::new(options.debounce),
                metrics: ServerMetrics::new(),
                require_identity: options.require_identity,
                subscriptions: Subscriptions::default(),
                load: options.load_reporting.map(LoadStore::new),
                authority: options.authority,
            }),
        }
    }

    /// The load reports clients stream to this server (`None`: load reporting is off).
    pub fn load_store(&self) -> Option<&LoadStore> {
        self.inner.load.as_ref()
    }

    /// The snapshot cache the controller sets snapshots in.
    pub fn cache(&self) -> &SnapshotCache {
        &self.inner.cache
    }

    /// The metrics in Prometheus text format (what `/metrics` serves).
    pub fn metrics_text(&self) -> String {
        self.inner.metrics.render()
    }

    /// Every connected node's last ACKed version of each type and when it first ACKed it (what
    /// `gofe_xds_acked_version_info` exports), ordered by node and type.
    pub fn node_acks(&self) -> Vec<crate::metrics::NodeAck> {
        self.inner.metrics.node_acks()
    }

    /// How many ACKs of `ty` responses this server has processed since it started (what
    /// `gofe_xds_acks_total` counts).
    pub fn acks(&self, ty: ResourceType) -> u64 {
        self.inner
            .metrics
            .acks
            .with_label_values(&[ty.short()])
            .get()
    }

    /// Refuses a stream whose node id its client certificate does not name (the rules of
    /// [`crate::identity`]), or that has no certificate when one is required. Each refusal is
    /// logged and counted in `gofe_xds_refused_streams_total{reason}`; nothing is sent.
    fn check_identity(&self, node: &Node, peer: Option<&PeerCertificate>) -> Result<(), Status> {
        let refuse = |reason: &'static str, status: Status, names: &str| {
            self.inner
                .metrics
                .refused
                .with_label_values(&[reason])
                .inc();
            tracing::warn!(node = %node.id, reason, certificate = %names, "xDS stream refused");
            Err(status)
        };
        // A client certificate, when there is one, always has to name the node; without one,
        // the stream is refused only if identity is required.
        let Some(PeerCertificate(der)) = peer else {
            if self.inner.require_identity {
                return refuse(
                    "no_client_certificate",
                    Status::unauthenticated("a client certificate is required"),
                    "none",
                );
            }
            return Ok(());
        };
        let Some(names) = crate::identity::CertIdentity::of(der) else {
            return refuse(
                "unreadable_certificate",
                Status::unauthenticated("unreadable client certificate"),
                "unreadable",
            );
        };
        if crate::identity::matches(&node.id, der) {
            return Ok(());
        }
        refuse(
            "identity_mismatch",
            Status::permission_denied(format!(
                "node id {:?} is not a name in the client certificate",
                node.id
            )),
            &names.describe(),
        )
    }
}

/// The gRPC paths of the two ADS methods.
const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";
/// The gRPC path of the Load Reporting Service's one method.
const LRS_PATH: &str = "/envoy.service.load_stats.v3.LoadReportingService/StreamLoadStats";

impl AdsServer {
    /// Answers one HTTP/2 request to the ADS endpoint: either ADS method, or a gRPC
    /// `UNIMPLEMENTED` status. `peer` is the client certificate of a mutual-TLS connection.
    pub(crate) async fn handle(
        &self,
        request: http::Request<hyper::body::Incoming>,
        peer: Option<PeerCertificate>,
    ) -> http::Response<ResponseBody> {
        let result = match request.uri().path() {
            SOTW_PATH => self.start_sotw(request, peer).await,
            DELTA_PATH => self.start_delta(request, peer).await,
            LRS_PATH => self.start_lrs(request, peer).await,
            gofe_proto::ca::CREATE_CERTIFICATE_PATH => {
                return self.create_certificate(request, peer).await
            }
            other => Err(Status::unimplemented(format!("no gRPC method at {other}"))),
        };
        result.unwrap_or_else(grpc::status_response)
    }

    async fn start_sotw(
        &self,
        request: http::Request<hyper::body::Incoming>,
        peer: Option<PeerCertificate>,
    ) -> Result<http::Response<ResponseBody>, Status> {
        let mut requests = grpc::requests::<DiscoveryRequest>(request)?;
        let first = match requests.message().await? {
            Some(first) => first,
            None => return Err(Status::cancelled("stream closed before its first request")),
        };
        let node = first.node.clone().unwrap_or_default();
        self.check_identity(&node, peer.as_ref())?;
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let server = self.clone();
        tokio::spawn(async move {
            let mut stream = SotwStream::new(&server, node);
            server.inner.metrics.connected.inc();
            let result = stream.run(first, requests, &tx).await;
            server.inner.metrics.connected.dec();
            server
                .inner
                .metrics
                .forget_stream(stream.watch.stream, &stream.watch.node_id);
            if let Err(e) = result {
                tracing::debug!(node = %stream.watch.node_id, error = %e, "ADS stream ended");
                let _ = tx.try_send(Err(e));
            }
        });
        Ok(grpc::stream_response(rx))
    }

    async fn start_delta(
        &self,
        request: http::Request<hyper::body::Incoming>,
        peer: Option<PeerCertificate>,
    ) -> Result<http::Response<ResponseBody>, Status> {
        let mut requests = grpc::requests::<DeltaDiscoveryRequest>(request)?;
        let first = match requests.message().await? {
            Some(first) => first,
            None => return Err(Status::cancelled("stream closed before its first request")),
        };
        let node = first.node.clone().unwrap_or_default();
        self.check_identity(&node, peer.as_ref())?;
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let server = self.clone();
        tokio::spawn(async move {
            let mut stream = DeltaStream::new(&server, node);
            server.inner.metrics.connected.inc();
            let result = stream.run(first, requests, &tx).await;
            server.inner.metrics.connected.dec();
            server
                .inner
                .metrics
                .forget_stream(stream.watch.stream, &stream.watch.node_id);
            if let Err(e) = result {
                tracing::debug!(node = %stream.watch.node_id, error = %e, "delta ADS stream ended");
                let _ = tx.try_send(Err(e));
            }
        });
        Ok(grpc::stream_response(rx))
    }
}

// === load reporting ===

impl AdsServer {
    /// A `StreamLoadStats` stream: the client's node first (checked as an ADS stream's is),
    /// answered once with what to report and how often, then its reports until it ends, kept
    /// in the [`LoadStore`] and forgotten when the stream ends.
    async fn start_lrs(
        &self,
        request: http::Request<hyper::body::Incoming>,
        peer: Option<PeerCertificate>,
    ) -> Result<http::Response<ResponseBody>, Status> {
        let Some(store) = self.inner.load.clone() else {
            return Err(Status::unimplemented(
                "load reporting is not enabled on this control plane",
            ));
        };
        let mut requests = grpc::requests::<gofe_proto::wire::LoadStatsRequest>(request)?;
        let first = match requests.message().await? {
            Some(first) => first,
            None => return Err(Status::cancelled("stream closed before its first request")),
        };
        let Some(node) = first.node.clone() else {
            return Err(Status::invalid_argument(
                "the first LoadStatsRequest must carry the node",
            ));
        };
        self.check_identity(&node, peer.as_ref())?;
        let stream = self.inner.metrics.next_stream();
        if !store.open(stream, &node.id) {
            tracing::warn!(node = %node.id, "refusing a load-report stream: too many open");
            return Err(Status::resource_exhausted("too many load-report streams"));
        }
        let limits = store.options().limits;
        let answer = gofe_proto::load::response(&gofe_proto::load::LoadReporting {
            all_clusters: true,
            clusters: Vec::new(),
            interval: store.options().interval,
        });
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.try_send(Ok(Message::new(&[], Bytes::from(answer.encode_to_vec()))));
        tokio::spawn(async move {
            /// Forgets the stream's reports however the task ends.
            struct Close(LoadStore, u64);
            impl Drop for Close {
                fn drop(&mut self) {
                    self.0.close(self.1);
                }
            }
            let _close = Close(store.clone(), stream);
            tracing::info!(node = %node.id, "load-report stream opened");
            let mut next = Some(first);
            loop {
                let req = match next.take() {
                    Some(r) => r,
                    None => tokio::select! {
                        r = requests.message() => match r {
                            Ok(Some(r)) => r,
                            Ok(None) => break,
                            Err(e) => {
                                tracing::debug!(node = %node.id, error = %e, "load-report stream ended");
                                break;
                            }
                        },
                        _ = tx.closed() => break,
                    },
                };
                let read = gofe_proto::load::read_request(&req, &limits);
                if read.dropped > 0 {
                    tracing::debug!(node = %node.id, dropped = read.dropped, "load report over its bounds: parts dropped");
                }
                store.record(
                    stream,
                    tokio::time::Instant::now(),
                    read.clusters,
                    read.dropped,
                );
            }
            tracing::info!(node = %node.id, "load-report stream closed: its reports are forgotten");
        });
        Ok(grpc::stream_response(rx))
    }
}

// === snapshot selection ===

/// The three snapshot slots a node may take its resources from, most specific first.
struct NodeWatch {
    node_id: String,
    /// This stream's id: what it records is its own, not the whole node's.
    stream: u64,
    keys: [NodeKey; 2],
    slots: [watch::Receiver<Option<Arc<Snapshot>>>; 3],
    server: AdsServer,
}

impl NodeWatch {
    fn new(server: &AdsServer, node: &Node) -> NodeWatch {
        let cache = server.cache();
        let keys = [
            NodeKey::Id(node.id.clone()),
            NodeKey::Cluster(node.cluster.clone()),
        ];
        NodeWatch {
            node_id: node.id.clone(),
            stream: server.inner.metrics.next_stream(),
            slots: [
                cache.subscribe(keys[0].clone()),
                cache.subscribe(keys[1].clone()),
                cache.subscribe(NodeKey::Default),
            ],
            keys,
            server: server.clone(),
        }
    }

    fn current(&mut self) -> Option<Arc<Snapshot>> {
        self.slots
            .iter_mut()
            .find_map(|s| s.borrow_and_update().clone())
    }

    async fn changed(&mut self) {
        let [a, b, c] = &mut self.slots;
        tokio::select! {
            r = a.changed() => if r.is_err() { std::future::pending::<()>().await },
            r = b.changed() => if r.is_err() { std::future::pending::<()>().await },
            r = c.changed() => if r.is_err() { std::future::pending::<()>().await },
        }
    }

    fn metrics(&self) -> &ServerMetrics {
        &self.server.inner.metrics
    }

    /// The interned subscription a request with `names` asks for, reusing `current` when it is
    /// the same. Returns it and whether it differs from `current`.
    fn subscription(
        &self,
        ty: ResourceType,
        names: Vec<String>,
        current: Option<&Arc<Subscription>>,
    ) -> (Arc<Subscription>, bool) {
        let wildcard =
            names.iter().any(|n| n == "*") || (names.is_empty() && ty.wildcard_by_default());
        if let Some(current) = current.filter(|c| c.is(wildcard, &names)) {
            return (Arc::clone(current), false);
        }
        let names = (!wildcard).then(|| names.into_iter().collect::<BTreeSet<String>>());
        let new = self.server.inner.subscriptions.intern(names);
        let changed = current.is_none_or(|c| !Arc::ptr_eq(c, &new));
        (new, changed)
    }
}

impl Drop for NodeWatch {
    fn drop(&mut self) {
        for key in &self.keys {
            self.server.cache().release(key);
        }
    }
}

/// Whether `nonce` (from a request) is the decimal form of `sent` (what we sent; 0: nothing).
fn is_nonce(nonce: &str, sent: u64) -> bool {
    sent != 0
        && nonce.len() <= 20
        && nonce.bytes().all(|b| b.is_ascii_digit())
        && !nonce.starts_with('0')
        && nonce.parse() == Ok(sent)
}

/// A queued response: sent, or an error once the client has gone.
async fn send(tx: &mpsc::Sender<Result<Message, Status>>, message: Message) -> Result<(), Status> {
    tx.send(Ok(message))
        .await
        .map_err(|_| Status::cancelled("client went away"))
}

/// What the state-of-the-world and the delta streams have in common: one loop that answers the
/// client's requests and, when the node's snapshot changes, sends what changed.
trait AdsStream {
    /// The stream's request message.
    type Request;
    /// For the log line when a stream opens.
    const KIND: &'static str;

    fn watch(&mut self) -> &mut NodeWatch;

    /// Handles one request from the client.
    async fn on_request(
        &mut self,
        req: Self::Request,
        tx: &mpsc::Sender<Result<Message, Status>>,
    ) -> Result<(), Status>;

    /// Sends what the client is owed of type `ty` after a snapshot change.
    async fn on_change(
        &mut self,
        ty: ResourceType,
        tx: &mpsc::Sender<Result<Message, Status>>,
    ) -> Result<(), Status>;

    /// Serves the stream until the client ends it or goes away.
    async fn run(
        &mut self,
        first: Self::Request,
        mut requests: Streaming<Self::Request>,
        tx: &mpsc::Sender<Result<Message, Status>>,
    ) -> Result<(), Status>
    where
        Self::Request: prost::Message + Default + 'static,
    {
        tracing::info!(node = %self.watch().node_id, "{} stream opened", Self::KIND);
        self.on_request(first, tx).await?;
        loop {
            tokio::select! {
                req = requests.message() => match req? {
                    Some(req) => self.on_request(req, tx).await?,
                    None => return Ok(()),
                },
                _ = self.watch().changed() => {
                    for ty in ResourceType::ALL {
                        self.on_change(ty, tx).await?;
                    }
                }
            }
        }
    }
}

impl AdsStream for SotwStream {
    type Request = DiscoveryRequest;
    const KIND: &'static str = "ADS";

    fn watch(&mut self) -> &mut NodeWatch {
        &mut self.watch
    }

    async fn on_request(
        &mut self,
        req: DiscoveryRequest,
        tx: &mpsc::Sender<Result<Message, Status>>,
    ) -> Result<(), Status> {
        SotwStream::on_request(self, req, tx).await
    }

    async fn on_change(
        &mut self,
        ty: ResourceType,
        tx: &mpsc::Sender<Result<Message, Status>>,
    ) -> Result<(), Status> {
        self.maybe_send(ty, false, tx).await
    }
}

impl AdsStream for DeltaStream {
    type Request = DeltaDiscoveryRequest;
    const KIND: &'static str = "delta ADS";

    fn watch(&mut self) -> &mut NodeWatch {
        &mut self.watch
    }

    async fn on_request(
        &mut self,
        req: DeltaDiscoveryRequest,
        tx: &mpsc::Sender<Result<Message, Status>>,
    ) -> Result<(), Status> {
        DeltaStream::on_request(self, req, tx).await
    }

    async fn on_change(
        &mut self,
        ty: ResourceType,
        tx: &mpsc::Sender<Result<Message, Status>>,
    ) -> Result<(), Status> {
        self.maybe_send(ty, tx).await
    }
}

// === state of the world ===

#[derive(Default)]
struct SotwType {
    /// `None` until the client first asks for the type.
    subscription: Option<Arc<Subscription>>,
    /// Of the last response; 0: none sent yet.
    nonce: u64,
    /// Fingerprint of what was last sent.
    sent: Option<u64>,
    /// Version of the last response.
    version: Option<Arc<str>>,
    /// Snapshot time of the last send, for the latency histogram.
    sent_at: Option<std::time::Instant>,
}

struct SotwStream {
    watch: NodeWatch,
    types: [SotwType; 4],
    nonce: u64,
}

impl SotwStream {
    fn new(server: &AdsServer, node: Node) -> SotwStream {
        SotwStream {
            watch: NodeWatch::new(server, &node),
            types: Default::default(),
            nonce: 0,
        }
    }

    async fn on_request(
        &mut self,
        req: DiscoveryRequest,
        tx: &mpsc::Sender<Result<Message, Status>>,
    ) -> Result<(), Status> {
        let Some(ty) = ResourceType::from_type_url(&req.type_url) else {
            tracing::debug!(node = %self.watch.node_id, type_url = %req.type_url, "ignoring unknown type");
            return Ok(());
        };
        let node_id = &self.watch.node_id;
        let stream_id = self.watch.stream;
        let metrics = self.watch.metrics();
        let state = &mut self.types[index(ty)];
        if !req.response_nonce.is_empty() {
            if !is_nonce(&req.response_nonce, state.nonce) {
                // Stale: an answer to a response that has been superseded. Nothing changes,
                // but a rejection is still worth knowing about.
                if let Some(status) = &req.error_detail {
                    tracing::warn!(node = %node_id, r#type = ty.short(),
                        error = %status.message, "NACK of a superseded response");
                    metrics.record_nack(
                        stream_id,
                        node_id,
                        ty.short(),
                        "superseded",
                        &status.message,
                    );
                }
                return Ok(());
            }
            match &req.error_detail {
                Some(status) => {
                    let rejected = state.version.as_deref().unwrap_or("");
                    tracing::warn!(
                        node = %node_id, r#type = ty.short(),
                        rejected = %rejected, kept = %req.version_info,
                        error = %status.message, "NACK: client kept its last good version"
                    );
                    metrics.record_nack(stream_id, node_id, ty.short(), rejected, &status.message);
                }
                None => {
                    metrics.record_ack(stream_id, node_id, ty.short(), &req.version_info);
                    if let Some(at) = state.sent_at.take() {
                        metrics
                            .push_latency
                            .with_label_values(&[ty.short()])
                            .observe(at.elapsed().as_secs_f64());
                    }
                }
            }
        }
        let (subscription, changed) =
            self.watch
                .subscription(ty, req.resource_names, state.subscription.as_ref());
        state.subscription = Some(subscription);
        if changed {
            self.maybe_send(ty, true, tx).await?;
        }
        Ok(())
    }

    async fn maybe_send(
        &mut self,
        ty: ResourceType,
        force: bool,
        tx: &mpsc::Sender<Result<Message, Status>>,
    ) -> Result<(), Status> {
        let state = &mut self.types[index(ty)];
        let Some(subscription) = &state.subscription else {
            return Ok(());
        };
        let Some(snapshot) = self.watch.current() else {
            return Ok(());
        };
        let encoded = snapshot.of(ty).sotw(ty, subscription);
        // The first response of a type is sent even when empty: a client waits for it.
        if state.sent == Some(encoded.fingerprint) && !force && state.nonce != 0 {
            return Ok(());
        }
        self.nonce += 1;
        let mut own = Vec::with_capacity(24);
        grpc::put_decimal_field(&mut own, NONCE_FIELD, self.nonce);
        state.nonce = self.nonce;
        state.sent = Some(encoded.fingerprint);
        state.version = Some(Arc::clone(&encoded.version));
        state.sent_at = Some(snapshot.created);
        self.watch
            .metrics()
            .pushes
            .with_label_values(&[ty.short()])
            .inc();
        send(tx, Message::new(&own, encoded.body.clone())).await
    }
}

// === delta ===

#[derive(Default)]
struct DeltaType {
    /// `None` until the client first asks for the type.
    subscription: Option<Arc<Subscription>>,
    /// What the client has: name → version.
    known: BTreeMap<String, String>,
    /// Of the last response; 0: none sent yet.
    nonce: u64,
    sent_at: Option<std::time::Instant>,
    /// `system_version_info` of the last response (what an ACK of it acknowledges).
    sent_version: String,
}

struct DeltaStream {
    watch: NodeWatch,
    types: [DeltaType; 4],
    nonce: u64,
}

impl DeltaStream {
    fn new(server: &AdsServer, node: Node) -> DeltaStream {
        DeltaStream {
            watch: NodeWatch::new(server, &node),
            types: Default::default(),
            nonce: 0,
        }
    }

    async fn on_request(
        &mut self,
        req: DeltaDiscoveryRequest,
        tx: &mpsc::Sender<Result<Message, Status>>,
    ) -> Result<(), Status> {
        let Some(ty) = ResourceType::from_type_url(&req.type_url) else {
            return Ok(());
        };
        let state = &mut self.types[index(ty)];
        match &state.subscription {
            None => {
                state.known = req.initial_resource_versions.into_iter().collect();
                let (subscription, _) =
                    self.watch
                        .subscription(ty, req.resource_names_subscribe, None);
                state.subscription = Some(subscription);
            }
            Some(current) => {
                if let Some(names) = &current.names {
                    if !req.resource_names_subscribe.is_empty()
                        || !req.resource_names_unsubscribe.is_empty()
                    {
                        // Subscribing to "*" makes the stream wildcard, and a wildcard
                        // stream ignores unsubscriptions.
                        let names = if req.resource_names_subscribe.iter().any(|n| n == "*") {
                            None
                        } else {
                            let mut names = names.clone();
                            names.extend(req.resource_names_subscribe);
                            for n in &req.resource_names_unsubscribe {
                                names.remove(n);
                                state.known.remove(n);
                            }
                            Some(names)
                        };
                        state.subscription =
                            Some(self.watch.server.inner.subscriptions.intern(names));
                    }
                }
            }
        }
        let node_id = &self.watch.node_id;
        let stream_id = self.watch.stream;
        if !req.response_nonce.is_empty() && is_nonce(&req.response_nonce, state.nonce) {
            let metrics = self.watch.metrics();
            let nonce = state.nonce.to_string();
            match &req.error_detail {
                Some(status) => {
                    tracing::warn!(node = %node_id, r#type = ty.short(), error = %status.message,
                        "delta NACK: client kept its previous resources");
                    metrics.record_nack(stream_id, node_id, ty.short(), &nonce, &status.message);
                }
                None => {
                    metrics.record_ack(stream_id, node_id, ty.short(), &state.sent_version);
                    if let Some(at) = state.sent_at.take() {
                        metrics
                            .push_latency
                            .with_label_values(&[ty.short()])
                            .observe(at.elapsed().as_secs_f64());
                    }
                }
            }
        }
        self.maybe_send(ty, tx).await
    }

    async fn maybe_send(
        &mut self,
        ty: ResourceType,
        tx: &mpsc::Sender<Result<Message, Status>>,
    ) -> Result<(), Status> {
        let state = &mut self.types[index(ty)];
        let Some(subscription) = &state.subscription else {
            return Ok(());
        };
        let Some(snapshot) = self.watch.current() else {
            return Ok(());
        };
        let all = &snapshot.of(ty).resources;
        let in_subscription = |name: &str| match &subscription.names {
            None => all.contains_key(name),
            Some(names) => names.contains(name) && all.contains_key(name),
        };
        let selected: Vec<(&String, &Arc<crate::cache::Entry>)> = match &subscription.names {
            None => all.iter().collect(),
            Some(names) => names.iter().filter_map(|n| all.get_key_value(n)).collect(),
        };
        let resources: Vec<Resource> = selected
            .iter()
            .filter(|(n, e)| state.known.get(n.as_str()) != Some(&e.version))
            .map(|(n, e)| Resource {
                name: (*n).clone(),
                version: e.version.clone(),
                resource: Some(e.any.clone()),
                ..Default::default()
            })
            .collect();
        let removed: Vec<String> = state
            .known
            .keys()
            .filter(|n| !in_subscription(n))
            .cloned()
            .collect();
        if resources.is_empty() && removed.is_empty() {
            return Ok(());
        }
        for r in &resources {
            state.known.insert(r.name.clone(), r.version.clone());
        }
        for n in &removed {
            state.known.remove(n);
        }
        self.nonce += 1;
        state.sent_version = snapshot.of(ty).version.clone();
        let response = DeltaDiscoveryResponse {
            system_version_info: snapshot.of(ty).version.clone(),
            resources,
            type_url: ty.type_url().to_owned(),
            removed_resources: removed,
            ..Default::default()
        };
        let mut own = Vec::with_capacity(24);
        grpc::put_decimal_field(&mut own, NONCE_FIELD, self.nonce);
        state.nonce = self.nonce;
        state.sent_at = Some(snapshot.created);
        self.watch
            .metrics()
            .pushes
            .with_label_values(&[ty.short()])
            .inc();
        send(
            tx,
            Message::new(&own, Bytes::from(response.encode_to_vec())),
        )
        .await
    }
}
