//! The proxy's xDS client: one ADS (state-of-the-world) stream to the control plane, whose
//! resources are assembled with the static configuration and applied to a running
//! [`Proxy`](crate::Proxy).
//!
//! Every response is decoded and validated resource by resource, as Envoy does: the valid
//! resources are applied, and each one gofe cannot honour keeps its previous version and is
//! listed by name in the NACK's `error_detail` (the version stays the last fully accepted one).
//! If the assembled configuration is refused as a whole (the proxy cannot apply it), nothing
//! of the response is applied and it is NACKed with the reason. When the stream breaks, the
//! proxy keeps serving its last configuration (fail static) and the client reconnects with
//! jittered exponential backoff.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::{Proxy, ProxyConfig};
use gofe_proto::wire::{
    AggregatedDiscoveryServiceClient, DiscoveryRequest, DiscoveryResponse, Node, Status,
};
use gofe_proto::{assemble, ListenerKind, ResourceType, Resources, RouteSource};
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use super::status;

use gofe_tls::TlsError;

/// Envoy's default `initial_fetch_timeout`: how long each stage of the first fetch may keep
/// `/ready` at 503.
pub const DEFAULT_INITIAL_FETCH_TIMEOUT: Duration = Duration::from_secs(15);

/// TLS to the control plane (PEM files).
#[derive(Clone, Debug)]
pub struct ClientTls {
    /// CA certificates that sign the control plane's certificate.
    pub ca: PathBuf,
    /// The name to verify in the control plane's certificate. Default: the address's host.
    pub server_name: Option<String>,
    /// Client certificate chain and key, for mutual TLS. Default: none.
    pub identity: Option<(PathBuf, PathBuf)>,
    /// The workload identity from the mesh CA, for mutual TLS: each handshake presents the
    /// certificate in force in this store (rotated there). Takes the place of `identity`.
    /// Default: none.
    pub workload: Option<Arc<crate::identity::SecretStore>>,
}

/// How the client connects and what it starts from.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// `node.id`.
    pub node_id: String,
    /// `node.cluster`.
    pub node_cluster: String,
    /// The control plane, `host:port`.
    pub server: String,
    /// TLS to the control plane. Default: plaintext.
    pub tls: Option<ClientTls>,
    /// The static part of the configuration (bootstrap listeners, clusters, admin).
    pub base: ProxyConfig,
    /// How long a removed listener's connections may drain.
    pub drain: Duration,
    /// First reconnect delay. Default 250 ms.
    pub backoff_initial: Duration,
    /// Longest reconnect delay. Default 30 s.
    pub backoff_max: Duration,
    /// Report per-endpoint load to the control plane over its Load Reporting Service
    /// (`StreamLoadStats`, see [`crate::xds::load`]). Default `false`.
    pub load_reporting: bool,
}

/// How far the first fetch from the control plane has come: what `/ready` waits for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InitialFetch {
    /// CDS and LDS have been answered (accepted or rejected).
    pub clusters_and_listeners: bool,
    /// Every EDS and RDS resource the accepted clusters and listeners name has arrived (or
    /// its type's response was rejected).
    pub endpoints_and_routes: bool,
}

/// What the client is doing, for tests and `/config_dump`-like views.
#[derive(Clone, Debug, Default)]
pub struct ClientStatus {
    /// A stream is open.
    pub connected: bool,
    /// Configurations applied from xDS so far.
    pub applied: u64,
    /// The last accepted version of each type.
    pub versions: HashMap<ResourceType, String>,
    /// The error_detail of the last NACK sent, if any.
    pub last_nack: Option<String>,
    /// NACKs sent so far.
    pub nacks: u64,
    /// Why the last connection attempt or stream failed, if one did.
    pub last_error: Option<String>,
    /// How far the first fetch has come.
    pub initial_fetch: InitialFetch,
}

/// Why the client could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// TLS settings could not be loaded.
    #[error("xds client TLS: {0}")]
    Tls(#[from] TlsError),
}

/// A handle on a running client.
pub struct XdsClient {
    status: watch::Receiver<ClientStatus>,
    task: tokio::task::JoinHandle<()>,
    readiness: tokio::task::JoinHandle<()>,
}

impl XdsClient {
    /// Starts the client for `proxy`. The static part of the configuration is applied at once,
    /// then again with every accepted xDS update.
    ///
    /// `/ready` answers 503 until the first snapshot is serving or
    /// [`DEFAULT_INITIAL_FETCH_TIMEOUT`] (15 s, as Envoy) has run out for a stage; see
    /// [`start_with_initial_fetch_timeout`](Self::start_with_initial_fetch_timeout).
    pub fn start(proxy: Proxy, options: ClientOptions) -> Result<XdsClient, ClientError> {
        Self::start_with_initial_fetch_timeout(proxy, options, DEFAULT_INITIAL_FETCH_TIMEOUT)
    }

    /// [`start`](Self::start), with the time each stage of the first fetch (CDS and LDS, then
    /// the EDS and RDS resources they name) may take before the proxy reports ready with what
    /// it has: Envoy's `initial_fetch_timeout`. Zero waits without limit.
    pub fn start_with_initial_fetch_timeout(
        proxy: Proxy,
        options: ClientOptions,
        initial_fetch_timeout: Duration,
    ) -> Result<XdsClient, ClientError> {
        let tls = options.tls.as_ref().map(client_tls_config).transpose()?;
        let (status_tx, status) = watch::channel(ClientStatus::default());
        status::attach(&proxy, &options, initial_fetch_timeout);
        let readiness = tokio::spawn(status::readiness(
            proxy.clone(),
            status.clone(),
            initial_fetch_timeout,
        ));
        let task = tokio::spawn(run(proxy, options, tls, status_tx));
        Ok(XdsClient {
            status,
            task,
            readiness,
        })
    }

    /// The client's status, updated as it changes.
    pub fn status(&self) -> watch::Receiver<ClientStatus> {
        self.status.clone()
    }

    /// Stops the client (the proxy keeps serving its configuration).
    pub fn stop(self) {
        self.task.abort();
        self.readiness.abort();
    }
}

fn client_tls_config(t: &ClientTls) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(gofe_tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid(e.to_string()))?
        .with_root_certificates(gofe_tls::roots(&t.ca)?);
    let mut config = match (&t.workload, &t.identity) {
        (Some(store), _) => builder.with_client_cert_resolver(store.client_resolver()),
        (None, None) => builder.with_no_client_auth(),
        (None, Some((chain, key))) => builder
            .with_client_auth_cert(gofe_tls::certs(chain)?, gofe_tls::key(key)?)
            .map_err(|e| TlsError::Invalid(e.to_string()))?,
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

pub(super) struct Connector {
    pub(super) address: String,
    pub(super) tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
}

pub(super) type Io = TokioIo<Box<dyn IoStream>>;
pub(super) trait IoStream:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin
{
}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> IoStream for T {}

impl tower_service::Service<http::Uri> for Connector {
    type Response = Io;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Io, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let address = self.address.clone();
        let tls = self.tls.clone();
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect(&address).await?;
            let _ = tcp.set_nodelay(true);
            let io: Box<dyn IoStream> = match tls {
                None => Box::new(tcp),
                Some((config, name)) => Box::new(
                    tokio_rustls::TlsConnector::from(config)
                        .connect(name, tcp)
                        .await?,
                ),
            };
            Ok(TokioIo::new(io))
        })
    }
}

async fn run(
    proxy: Proxy,
    options: ClientOptions,
    tls: Option<Arc<rustls::ClientConfig>>,
    status: watch::Sender<ClientStatus>,
) {
    let mut state = State::new(options.clone());
    // Static resources (and the admin listener) serve from the start, before the control
    // plane answers.
    if let Err(e) = state.apply(&proxy, &state.resources.clone(), &status).await {
        tracing::error!(error = %e, "the static configuration cannot be applied yet");
    }
    let host = options
        .server
        .rsplit_once(':')
        .map_or(options.server.as_str(), |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let server_name = options
        .tls
        .as_ref()
        .and_then(|t| t.server_name.clone())
        .unwrap_or(host);
    let tls = match (tls, rustls::pki_types::ServerName::try_from(server_name)) {
        (Some(c), Ok(name)) => Some((c, name)),
        (Some(_), Err(e)) => {
            tracing::error!(error = %e, "invalid control-plane server name; not connecting");
            return;
        }
        (None, _) => None,
    };
    let control_plane = ControlPlane {
        address: options.server.clone(),
        tls: tls.map(|(c, name)| (Arc::new(std::sync::Mutex::new(c)), name)),
        files: options.tls.clone(),
    };
    // Load reports go on their own stream and connection, beside ADS: neither waits for the
    // other, and both end when this task is stopped.
    let load = async {
        if options.load_reporting {
            super::load::run(proxy.clone(), options.clone(), control_plane.clone()).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let ads = async {
        let mut attempt: u32 = 0;
        loop {
            let outcome: Result<(), String> = match control_plane.channel().await {
                Err(e) => Err(e),
                Ok(channel) => {
                    let got_response = state.stream(&proxy, channel, &status).await;
                    if got_response.0 {
                        attempt = 0;
                    }
                    Err(got_response.1)
                }
            };
            status::disconnected(&proxy, &status, outcome.as_ref().err());
            if let Err(e) = outcome {
                let delay = backoff(attempt, options.backoff_initial, options.backoff_max);
                tracing::warn!(server = %options.server, error = %e, retry_in = ?delay,
                    "control plane unreachable; serving the last configuration");
                attempt = attempt.saturating_add(1);
                tokio::time::sleep(delay).await;
            }
        }
    };
    tokio::join!(ads, load);
}

/// Where the control plane is and how to reach it.
#[derive(Clone)]
pub(super) struct ControlPlane {
    address: String,
    /// The last TLS configuration that loaded, and the name to verify.
    tls: Option<(
        Arc<std::sync::Mutex<Arc<rustls::ClientConfig>>>,
        rustls::pki_types::ServerName<'static>,
    )>,
    /// The files it is read from, again at every connection.
    files: Option<ClientTls>,
}

impl ControlPlane {
    /// A new HTTP/2 connection to it. With TLS, the CA and client certificate files are read
    /// again first, so a rotated client certificate is used from the next connection on; files
    /// that no longer load leave the last good material in use (logged).
    pub(super) async fn channel(&self) -> Result<tonic::transport::Channel, String> {
        let tls = self.tls.as_ref().map(|(config, name)| {
            let fresh = self.files.as_ref().map(client_tls_config);
            let config = match fresh {
                Some(Ok(fresh)) => {
                    *config.lock().unwrap_or_else(|e| e.into_inner()) = Arc::clone(&fresh);
                    fresh
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "control-plane TLS files do not load; connecting with the last good ones");
                    Arc::clone(&config.lock().unwrap_or_else(|e| e.into_inner()))
                }
                None => Arc::clone(&config.lock().unwrap_or_else(|e| e.into_inner())),
            };
            (config, name.clone())
        });
        let connector = Connector {
            address: self.address.clone(),
            tls,
        };
        tonic::transport::Endpoint::from_static("http://xds.invalid")
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .connect_with_connector(connector)
            .await
            .map_err(|e| format!("connect: {}", chain(&e)))
    }
}

/// An error and its sources, `outer: inner: …`.
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Exponential backoff with jitter: a random delay in [d/2, d], d = initial × 2^attempt ≤ max.
pub fn backoff(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let d = initial.saturating_mul(1u32 << attempt.min(16)).min(max);
    d / 2 + d.mul_f64(fastrand::f64() / 2.0)
}

struct State {
    options: ClientOptions,
    resources: Resources,
    versions: HashMap<ResourceType, String>,
    nonces: HashMap<ResourceType, String>,
    /// Names requested for EDS and RDS.
    interest: HashMap<ResourceType, BTreeSet<String>>,
    applied_json: Option<String>,
}

impl State {
    fn new(options: ClientOptions) -> State {
        State {
            options,
            resources: Resources::default(),
            versions: HashMap::new(),
            nonces: HashMap::new(),
            interest: HashMap::new(),
            applied_json: None,
        }
    }

    fn node(&self) -> Node {
        Node {
            id: self.options.node_id.clone(),
            cluster: self.options.node_cluster.clone(),
            user_agent_name: "gofe".into(),
            // The bootstrap's `node.locality`, as Envoy sends it (a control plane may assign
            // priorities by it).
            locality: self
                .options
                .base
                .locality
                .as_ref()
                .map(|l| gofe_proto::wire::Locality {
                    region: l.region.clone(),
                    zone: l.zone.clone(),
                    sub_zone: l.sub_zone.clone(),
                }),
            ..Default::default()
        }
    }

    fn request(&self, ty: ResourceType, nonce: &str, error: Option<String>) -> DiscoveryRequest {
        DiscoveryRequest {
            version_info: self.versions.get(&ty).cloned().unwrap_or_default(),
            node: Some(self.node()),
            resource_names: self
                .interest
                .get(&ty)
                .map(|n| n.iter().cloned().collect())
                .unwrap_or_default(),
            type_url: ty.type_url().into(),
            response_nonce: nonce.into(),
            error_detail: error.map(|message| Status {
                code: 3, // INVALID_ARGUMENT
                message,
                details: Vec::new(),
            }),
            ..Default::default()
        }
    }

    /// The EDS and RDS names the accepted clusters and listeners need.
    fn wanted(resources: &Resources) -> HashMap<ResourceType, BTreeSet<String>> {
        let eds = resources
            .clusters
            .values()
            .filter_map(|c| c.eds_service_name.clone())
            .collect();
        let rds = resources
            .listeners
            .values()
            .filter_map(|l| match &l.kind {
                ListenerKind::Socket { settings, .. } => Some((l, settings)),
                ListenerKind::Api => None,
            })
            .flat_map(|(l, settings)| {
                let own = match &l.routes {
                    RouteSource::Rds(n) => Some(n.clone()),
                    RouteSource::Inline(_) => None,
                };
                // Each filter chain's connection manager may take its routes from RDS.
                own.into_iter()
                    .chain(settings.filter_chains.iter().filter_map(|c| c.rds.clone()))
            })
            .collect();
        HashMap::from([(ResourceType::Endpoints, eds), (ResourceType::Route, rds)])
    }

    /// Runs one stream until it breaks. Returns whether any response arrived, and why it ended.
    async fn stream(
        &mut self,
        proxy: &Proxy,
        channel: tonic::transport::Channel,
        status: &watch::Sender<ClientStatus>,
    ) -> (bool, String) {
        let mut client =
            AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20);
        let (tx, rx) = mpsc::channel(16);
        self.nonces.clear();
        // Subscribe: clusters and listeners (wildcard), then what they need.
        for ty in [ResourceType::Cluster, ResourceType::Listener] {
            let _ = tx.send(self.request(ty, "", None)).await;
        }
        for ty in [ResourceType::Endpoints, ResourceType::Route] {
            if self.interest.get(&ty).is_some_and(|n| !n.is_empty()) {
                let _ = tx.send(self.request(ty, "", None)).await;
            }
        }
        let mut responses = match client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
        {
            Ok(r) => r.into_inner(),
            Err(e) => return (false, format!("stream: {e}")),
        };
        tracing::info!(server = %self.options.server, "ADS stream open");
        status::connected(proxy, status);
        let mut got = false;
        loop {
            let response = match responses.message().await {
                Ok(Some(r)) => r,
                Ok(None) => return (got, "stream closed by the control plane".into()),
                Err(e) => return (got, format!("stream: {e}")),
            };
            got = true;
            let Some(ty) = ResourceType::from_type_url(&response.type_url) else {
                let _ = tx
                    .send(DiscoveryRequest {
                        type_url: response.type_url.clone(),
                        response_nonce: response.nonce.clone(),
                        error_detail: Some(Status {
                            code: 3,
                            message: "gofe does not use this resource type".into(),
                            details: Vec::new(),
                        }),
                        ..Default::default()
                    })
                    .await;
                continue;
            };
            self.nonces.insert(ty, response.nonce.clone());
            let outcome = self.accept(proxy, ty, &response, status).await;
            if outcome.is_ok() {
                // New interest in endpoints or routes: ask for them (also after a response
                // that was taken in part).
                for t in self.update_interest() {
                    let nonce = self.nonces.get(&t).cloned().unwrap_or_default();
                    let _ = tx.send(self.request(t, &nonce, None)).await;
                }
            }
            // A response taken in part is NACKed with the refused resources, as Envoy does.
            let outcome = outcome.and_then(|refused| refused.map_or(Ok(()), Err));
            match outcome {
                Ok(()) => {
                    self.versions.insert(ty, response.version_info.clone());
                    status::accepted(proxy, status, ty, &response.version_info);
                    if tx
                        .send(self.request(ty, &response.nonce, None))
                        .await
                        .is_err()
                    {
                        return (got, "request stream closed".into());
                    }
                }
                Err(error) => {
                    tracing::warn!(r#type = ty.short(), version = %response.version_info, %error,
                        "NACK: keeping the last good configuration");
                    status::rejected(proxy, status, ty, &error);
                    let _ = tx
                        .send(self.request(ty, &response.nonce, Some(error)))
                        .await;
                }
            }
            status::progress(
                proxy,
                status,
                &self.resources,
                &Self::wanted(&self.resources),
            );
        }
    }

    /// Takes the EDS and RDS names the accepted clusters and listeners need as the interest;
    /// returns the types whose subscription must be sent again. Like Envoy, a type is first
    /// asked for once a name of it is needed: a request with no names would ask a control plane
    /// that reads an empty list as a wildcard for everything.
    fn update_interest(&mut self) -> Vec<ResourceType> {
        let mut wanted = Self::wanted(&self.resources);
        let mut changed = Vec::new();
        for t in [ResourceType::Endpoints, ResourceType::Route] {
            let names = wanted.remove(&t).unwrap_or_default();
            let before = self.interest.get(&t);
            if before == Some(&names) {
                continue;
            }
            // Subscribed before: an empty list now unsubscribes. Never subscribed: nothing to
            // say until a name is needed.
            let subscribed = before.is_some_and(|b| !b.is_empty());
            if subscribed || !names.is_empty() {
                changed.push(t);
            }
            self.interest.insert(t, names);
        }
        changed
    }

    /// Decodes, assembles and applies one response, resource by resource. `Ok(None)`: all of
    /// it was taken; `Ok(Some(detail))`: the valid resources were applied and `detail` lists
    /// the refused ones, by name, for the NACK; `Err(detail)`: nothing was applied.
    async fn accept(
        &mut self,
        proxy: &Proxy,
        ty: ResourceType,
        response: &DiscoveryResponse,
        status: &watch::Sender<ClientStatus>,
    ) -> Result<Option<String>, String> {
        let update = self
            .resources
            .accept_response(ty, &response.resources, &self.options.base);
        let mut refused: Vec<String> = update.refused.iter().map(|e| e.to_string()).collect();
        let mut next = update.resources;
        if ty == ResourceType::Cluster {
            refused.extend(self.refuse_unloadable_tls(&mut next));
        }
        // Forget endpoints and routes nothing refers to any more.
        let wanted = Self::wanted(&next);
        next.endpoints
            .retain(|n, _| wanted[&ResourceType::Endpoints].contains(n));
        next.routes
            .retain(|n, _| wanted[&ResourceType::Route].contains(n));
        next.refused_routes
            .retain(|n| wanted[&ResourceType::Route].contains(n));
        if let Err(e) = self.apply(proxy, &next, status).await {
            return Err(refused
                .into_iter()
                .chain([e])
                .collect::<Vec<_>>()
                .join("; "));
        }
        self.resources = next;
        Ok((!refused.is_empty()).then(|| refused.join("; ")))
    }

    /// Refuses, by name, each new or changed cluster of `next` whose upstream TLS material
    /// cannot be loaded (a missing file, a bad PEM): it keeps its previous version, or is left
    /// out, as any refused resource is, instead of failing the whole response when applied.
    fn refuse_unloadable_tls(&self, next: &mut Resources) -> Vec<String> {
        let mut refused = Vec::new();
        let mut failed = Vec::new();
        for (name, c) in &next.clusters {
            let Some(tls) = &c.config.tls else { continue };
            let previous = self.resources.clusters.get(name);
            if previous.is_some_and(|p| p.config.tls.as_ref() == Some(tls)) {
                continue;
            }
            let http2 = c.config.http2_protocol_options.is_some();
            if let Err(e) = crate::upstream_tls::UpstreamTls::build(tls, http2) {
                refused.push(format!("Cluster {name:?}: transport_socket ({e})"));
                failed.push(name.clone());
            }
        }
        for name in failed {
            match self.resources.clusters.get(&name) {
                Some(previous) => {
                    next.clusters.insert(name, previous.clone());
                }
                None => {
                    next.clusters.remove(&name);
                }
            }
        }
        refused
    }

    async fn apply(
        &mut self,
        proxy: &Proxy,
        resources: &Resources,
        status: &watch::Sender<ClientStatus>,
    ) -> Result<(), String> {
        let config = assemble(&self.options.base, resources);
        let problems = crate::config::validate(&config);
        if !problems.is_empty() {
            let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            return Err(text.join("; "));
        }
        let json = serde_json::to_string(&config).map_err(|e| e.to_string())?;
        if self.applied_json.as_ref() == Some(&json) {
            return Ok(());
        }
        let version = proxy
            .apply(config, "xds", self.options.drain)
            .await
            .map_err(|e| e.to_string())?;
        proxy.count_reload(true);
        self.applied_json = Some(json);
        status.send_modify(|s| s.applied += 1);
        tracing::info!(version, "xDS configuration applied");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_stays_under_the_cap() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_secs(2));
        for attempt in 0..40 {
            let ceiling = initial.saturating_mul(1 << attempt.min(16)).min(max);
            for _ in 0..50 {
                let d = backoff(attempt, initial, max);
                assert!(d >= ceiling / 2 && d <= ceiling, "attempt {attempt}: {d:?}");
            }
        }
        // Jitter: not every client retries at the same instant.
        let samples: std::collections::HashSet<Duration> =
            (0..20).map(|_| backoff(3, initial, max)).collect();
        assert!(samples.len() > 1);
    }
}
