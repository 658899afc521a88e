//! The ADS server: state-of-the-world and delta streams over one gRPC endpoint.
//!
//! Each stream is one task. It reads requests and watches the snapshot of its node; per type
//! it remembers what it subscribed to, what it last sent (names and per-resource versions) and
//! the nonce of that response. A request whose nonce is not the latest is stale and ignored;
//! a NACK (error_detail set) is logged and exported, and the client stays on what it had: the
//! rejected version is not sent again, only a newer snapshot is. A response is sent only when
//! the resources the stream subscribed to actually changed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use gofe_proto::wire::{
    AggregatedDiscoveryService, DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest,
    DiscoveryResponse, Node, Resource,
};
use gofe_proto::ResourceType;
use rustls::pki_types::CertificateDer;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::cache::{NodeKey, Snapshot, SnapshotCache};
use crate::metrics::ServerMetrics;

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
    /// Debounce window for snapshot changes. Default 10 ms.
    pub debounce: Duration,
    /// Refuse streams that come without a client certificate. Whenever a client certificate is
    /// presented (mutual TLS), the node id must be a DNS name it is valid for, whatever this
    /// says. Set it with mutual TLS so no stream can skip the check. Default `false`.
    pub require_identity: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            debounce: Duration::from_millis(10),
            require_identity: false,
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
}

impl AdsServer {
    /// A server with an empty cache. Must be created inside a Tokio runtime.
    pub fn new(options: ServerOptions) -> AdsServer {
        AdsServer {
            inner: Arc::new(ServerInner {
                cache: SnapshotCache::new(options.debounce),
                metrics: ServerMetrics::new(),
                require_identity: options.require_identity,
            }),
        }
    }

    /// The snapshot cache the controller sets snapshots in.
    pub fn cache(&self) -> &SnapshotCache {
        &self.inner.cache
    }

    /// The metrics in Prometheus text format (what `/metrics` serves).
    pub fn metrics_text(&self) -> String {
        self.inner.metrics.render()
    }

    /// The gRPC service, for a tonic or hyper server.
    pub fn service(&self) -> gofe_proto::wire::AggregatedDiscoveryServiceServer<AdsServer> {
        gofe_proto::wire::AggregatedDiscoveryServiceServer::new(self.clone())
            .max_decoding_message_size(16 << 20)
    }

    fn check_identity(&self, node: &Node, peer: Option<&PeerCertificate>) -> Result<(), Status> {
        // A client certificate, when there is one, always has to name the node; without one,
        // the stream is refused only if identity is required.
        let Some(PeerCertificate(der)) = peer else {
            if self.inner.require_identity {
                return Err(Status::unauthenticated("a client certificate is required"));
            }
            return Ok(());
        };
        let name = rustls::pki_types::ServerName::try_from(node.id.as_str())
            .map_err(|_| Status::permission_denied("node id is not a DNS name"))?;
        let cert = webpki::EndEntityCert::try_from(der)
            .map_err(|_| Status::unauthenticated("unreadable client certificate"))?;
        cert.verify_is_valid_for_subject_name(&name).map_err(|_| {
            Status::permission_denied(format!(
                "node id {:?} is not a name in the client certificate",
                node.id
            ))
        })
    }
}

type BoxStream<T> = Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsServer {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let peer = request.extensions().get::<PeerCertificate>().cloned();
        let mut requests = request.into_inner();
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
            let result = stream.run(first, requests, tx).await;
            server.inner.metrics.connected.dec();
            server.inner.metrics.forget_node(&stream.node_id);
            if let Err(e) = result {
                tracing::debug!(node = %stream.node_id, error = %e, "ADS stream ended");
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let peer = request.extensions().get::<PeerCertificate>().cloned();
        let mut requests = request.into_inner();
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
            let result = stream.run(first, requests, tx).await;
            server.inner.metrics.connected.dec();
            server.inner.metrics.forget_node(&stream.watch.node_id);
            if let Err(e) = result {
                tracing::debug!(node = %stream.watch.node_id, error = %e, "delta ADS stream ended");
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

// === snapshot selection ===

/// The three snapshot slots a node may take its resources from, most specific first.
struct NodeWatch {
    node_id: String,
    slots: [watch::Receiver<Option<Arc<Snapshot>>>; 3],
    server: AdsServer,
}

impl NodeWatch {
    fn new(server: &AdsServer, node: &Node) -> NodeWatch {
        let cache = server.cache();
        NodeWatch {
            node_id: node.id.clone(),
            slots: [
                cache.subscribe(NodeKey::Id(node.id.clone())),
                cache.subscribe(NodeKey::Cluster(node.cluster.clone())),
                cache.subscribe(NodeKey::Default),
            ],
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
}

fn new_nonce(counter: &mut u64) -> String {
    *counter += 1;
    counter.to_string()
}

/// The subset of a type's resources a subscription selects.
fn selected<'a>(
    snapshot: &'a Snapshot,
    ty: ResourceType,
    names: &Option<BTreeSet<String>>,
) -> BTreeMap<&'a str, &'a Arc<crate::cache::Entry>> {
    let all = &snapshot.of(ty).resources;
    match names {
        None => all.iter().map(|(n, e)| (n.as_str(), e)).collect(),
        Some(names) => names
            .iter()
            .filter_map(|n| all.get_key_value(n).map(|(k, e)| (k.as_str(), e)))
            .collect(),
    }
}

// === state of the world ===

#[derive(Default)]
struct SotwType {
    /// `None`: wildcard.
    names: Option<BTreeSet<String>>,
    subscribed: bool,
    nonce: String,
    version: String,
    /// Name → resource version of what was last sent.
    sent: BTreeMap<String, String>,
    /// Snapshot time of the last send, for the latency histogram.
    sent_at: Option<std::time::Instant>,
}

struct SotwStream {
    node_id: String,
    watch: NodeWatch,
    types: HashMap<ResourceType, SotwType>,
    nonce: u64,
}

impl SotwStream {
    fn new(server: &AdsServer, node: Node) -> SotwStream {
        SotwStream {
            node_id: node.id.clone(),
            watch: NodeWatch::new(server, &node),
            types: HashMap::new(),
            nonce: 0,
        }
    }

    async fn run(
        &mut self,
        first: DiscoveryRequest,
        mut requests: Streaming<DiscoveryRequest>,
        tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    ) -> Result<(), Status> {
        tracing::info!(node = %self.node_id, "ADS stream opened");
        self.on_request(first, &tx).await?;
        loop {
            tokio::select! {
                req = requests.message() => match req? {
                    Some(req) => self.on_request(req, &tx).await?,
                    None => return Ok(()),
                },
                _ = self.watch.changed() => {
                    let types: Vec<ResourceType> = self.types.keys().copied().collect();
                    for ty in ResourceType::ALL.into_iter().filter(|t| types.contains(t)) {
                        self.maybe_send(ty, false, &tx).await?;
                    }
                }
            }
        }
    }

    async fn on_request(
        &mut self,
        req: DiscoveryRequest,
        tx: &mpsc::Sender<Result<DiscoveryResponse, Status>>,
    ) -> Result<(), Status> {
        let Some(ty) = ResourceType::from_type_url(&req.type_url) else {
            tracing::debug!(node = %self.node_id, type_url = %req.type_url, "ignoring unknown type");
            return Ok(());
        };
        let state = self.types.entry(ty).or_default();
        if !req.response_nonce.is_empty() {
            if req.response_nonce != state.nonce {
                // Stale: an answer to a response that has been superseded. Nothing changes,
                // but a rejection is still worth knowing about.
                if let Some(status) = &req.error_detail {
                    tracing::warn!(node = %self.node_id, r#type = ty.short(),
                        error = %status.message, "NACK of a superseded response");
                    self.watch.metrics().record_nack(
                        &self.node_id,
                        ty.short(),
                        "superseded",
                        &status.message,
                    );
                }
                return Ok(());
            }
            let metrics = self.watch.metrics();
            match &req.error_detail {
                Some(status) => {
                    tracing::warn!(
                        node = %self.node_id, r#type = ty.short(),
                        rejected = %state.version, kept = %req.version_info,
                        error = %status.message, "NACK: client kept its last good version"
                    );
                    metrics.record_nack(&self.node_id, ty.short(), &state.version, &status.message);
                }
                None => {
                    metrics.record_ack(&self.node_id, ty.short(), &req.version_info);
                    if let Some(at) = state.sent_at.take() {
                        metrics
                            .push_latency
                            .with_label_values(&[ty.short()])
                            .observe(at.elapsed().as_secs_f64());
                    }
                }
            }
        }
        let names: BTreeSet<String> = req.resource_names.into_iter().collect();
        let wildcard = names.contains("*") || (names.is_empty() && ty.wildcard_by_default());
        let names = (!wildcard).then_some(names);
        let changed = !state.subscribed || state.names != names;
        state.subscribed = true;
        state.names = names;
        if changed {
            self.maybe_send(ty, true, tx).await?;
        }
        Ok(())
    }

    async fn maybe_send(
        &mut self,
        ty: ResourceType,
        force: bool,
        tx: &mpsc::Sender<Result<DiscoveryResponse, Status>>,
    ) -> Result<(), Status> {
        let Some(snapshot) = self.watch.current() else {
            return Ok(());
        };
        let Some(state) = self.types.get_mut(&ty) else {
            return Ok(());
        };
        let subset = selected(&snapshot, ty, &state.names);
        let unchanged = subset.len() == state.sent.len()
            && subset
                .iter()
                .all(|(n, e)| state.sent.get(*n) == Some(&e.version));
        // The first response of a type is sent even when empty: a client waits for it.
        if unchanged && !force && !state.nonce.is_empty() {
            return Ok(());
        }
        let response = DiscoveryResponse {
            version_info: snapshot.of(ty).version.clone(),
            resources: subset.values().map(|e| e.any.clone()).collect(),
            type_url: ty.type_url().to_owned(),
            nonce: new_nonce(&mut self.nonce),
            ..Default::default()
        };
        state.sent = subset
            .iter()
            .map(|(n, e)| ((*n).to_owned(), e.version.clone()))
            .collect();
        state.nonce = response.nonce.clone();
        state.version = response.version_info.clone();
        state.sent_at = Some(snapshot.created);
        self.watch
            .metrics()
            .pushes
            .with_label_values(&[ty.short()])
            .inc();
        tx.send(Ok(response))
            .await
            .map_err(|_| Status::cancelled("client went away"))
    }
}

// === delta ===

#[derive(Default)]
struct DeltaType {
    /// `None`: wildcard.
    names: Option<BTreeSet<String>>,
    /// What the client has: name → version.
    known: BTreeMap<String, String>,
    nonce: String,
    sent_at: Option<std::time::Instant>,
}

struct DeltaStream {
    watch: NodeWatch,
    types: HashMap<ResourceType, DeltaType>,
    nonce: u64,
}

impl DeltaStream {
    fn new(server: &AdsServer, node: Node) -> DeltaStream {
        DeltaStream {
            watch: NodeWatch::new(server, &node),
            types: HashMap::new(),
            nonce: 0,
        }
    }

    async fn run(
        &mut self,
        first: DeltaDiscoveryRequest,
        mut requests: Streaming<DeltaDiscoveryRequest>,
        tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    ) -> Result<(), Status> {
        tracing::info!(node = %self.watch.node_id, "delta ADS stream opened");
        self.on_request(first, &tx).await?;
        loop {
            tokio::select! {
                req = requests.message() => match req? {
                    Some(req) => self.on_request(req, &tx).await?,
                    None => return Ok(()),
                },
                _ = self.watch.changed() => {
                    let types: Vec<ResourceType> = self.types.keys().copied().collect();
                    for ty in ResourceType::ALL.into_iter().filter(|t| types.contains(t)) {
                        self.maybe_send(ty, &tx).await?;
                    }
                }
            }
        }
    }

    async fn on_request(
        &mut self,
        req: DeltaDiscoveryRequest,
        tx: &mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    ) -> Result<(), Status> {
        let Some(ty) = ResourceType::from_type_url(&req.type_url) else {
            return Ok(());
        };
        let node_id = self.watch.node_id.clone();
        let first_for_type = !self.types.contains_key(&ty);
        let state = self.types.entry(ty).or_default();
        if first_for_type {
            state.known = req.initial_resource_versions.into_iter().collect();
            let explicit: BTreeSet<String> = req.resource_names_subscribe.iter().cloned().collect();
            state.names =
                if explicit.contains("*") || (explicit.is_empty() && ty.wildcard_by_default()) {
                    None
                } else {
                    Some(explicit)
                };
        } else {
            if let Some(names) = &mut state.names {
                for n in &req.resource_names_subscribe {
                    if n == "*" {
                        state.names = None;
                        break;
                    }
                    names.insert(n.clone());
                }
            }
            if let Some(names) = &mut state.names {
                for n in &req.resource_names_unsubscribe {
                    names.remove(n);
                    state.known.remove(n);
                }
            }
        }
        if !req.response_nonce.is_empty() && req.response_nonce == state.nonce {
            let metrics = self.watch.metrics();
            match &req.error_detail {
                Some(status) => {
                    tracing::warn!(node = %node_id, r#type = ty.short(), error = %status.message,
                        "delta NACK: client kept its previous resources");
                    metrics.record_nack(&node_id, ty.short(), &state.nonce, &status.message);
                }
                None => {
                    metrics.record_ack(&node_id, ty.short(), &state.nonce);
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
        tx: &mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    ) -> Result<(), Status> {
        let Some(snapshot) = self.watch.current() else {
            return Ok(());
        };
        let Some(state) = self.types.get_mut(&ty) else {
            return Ok(());
        };
        let subset = selected(&snapshot, ty, &state.names);
        let resources: Vec<Resource> = subset
            .iter()
            .filter(|(n, e)| state.known.get(**n) != Some(&e.version))
            .map(|(n, e)| Resource {
                name: (*n).to_owned(),
                version: e.version.clone(),
                resource: Some(e.any.clone()),
                ..Default::default()
            })
            .collect();
        let removed: Vec<String> = state
            .known
            .keys()
            .filter(|n| !subset.contains_key(n.as_str()))
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
        let response = DeltaDiscoveryResponse {
            system_version_info: snapshot.of(ty).version.clone(),
            resources,
            type_url: ty.type_url().to_owned(),
            removed_resources: removed,
            nonce: new_nonce(&mut self.nonce),
            ..Default::default()
        };
        state.nonce = response.nonce.clone();
        state.sent_at = Some(snapshot.created);
        self.watch
            .metrics()
            .pushes
            .with_label_values(&[ty.short()])
            .inc();
        tx.send(Ok(response))
            .await
            .map_err(|_| Status::cancelled("client went away"))
    }
}
