//! The controller's configuration file.
//!
//! ```yaml
//! proxy_config: "proxy.yaml"     # listeners, routes, clusters and base weights served to proxies
//! interval: "2s"                 # decision interval
//! signals:
//!   source: embedded             # or: prometheus
//!   window: "6s"                 # default: 2 scrape intervals + 1 decision interval
//!   latency_quantile: 0.9
//!   embedded: { targets: ["127.0.0.1:9901"] }         # proxies' admin addresses
//!   prometheus: { url: "http://127.0.0.1:9090", scrape_interval: "15s" }   # queries have working defaults
//!   lrs: { enabled: true, interval: "1s", window: "5s" }  # proxies' load reports (needs xds)
//! policy: { max_ejection_percent: 50 }                # defaults for every cluster
//! clusters: { web: { base_ejection_time: "10s" } }    # per-cluster overrides
//! admin: { address: "127.0.0.1:9902" }                # /decisions, /debug/queries, /metrics
//! xds:                                               # ADS for the proxies
//!   address: "0.0.0.0:18000"
//!   tls:                                              # optional; plaintext when absent
//!     cert_file: "xds.crt"                            # relative to this file
//!     key_file: "xds.key"
//!     client_ca_file: "proxies-ca.crt"                # mutual TLS: node ids checked against certificates
//!     require_client_certificate: true                # default true with client_ca_file
//!     reload_interval: "10s"                          # files re-read; rotation needs no restart
//!   api_listeners:                                    # for proxyless gRPC clients (xds:///NAME)
//!     all_clusters: false                             # one per cluster, named after it
//!     services: [{ name: greeter, cluster: greeter-backends }]
//! tracing:                                            # a span per decision step (off by default)
//!   provider: { opentelemetry: { service_name: gofe-controller, http_service: { http_uri: { uri: "http://127.0.0.1:4318/v1/traces" } } } }
//! kubernetes: { namespace: shop }                     # discover endpoints (off by default)
//!   # cluster_name: east, clusters: [{ name: west, secret: { name: istio-remote-secret-west } }]
//! webhook:                                            # sidecar injection (off by default)
//!   address: "0.0.0.0:9443"
//!   cert_file: "tls.crt"                              # relative to this file
//!   key_file: "tls.key"
//!   failure_policy: Ignore                            # or Fail
//!   sidecar: { image: "REGISTRY/gofe:0.1.0", xds_address: "gofe-controller.gofe-system.svc:18000" }
//! ```
//!
//! Errors name the file, line and field, like the proxy's.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use gofe_core::policy::Policy;
use gofe_yaml::{Validate, Validator};
use serde::{Deserialize, Serialize};

/// The whole controller configuration.
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ControllerConfig {
    /// A gofe proxy configuration file: what the controller serves to proxies. Its clusters'
    /// endpoints and weights are the base the controller adjusts. Relative to this file.
    pub proxy_config: String,
    /// Time between decisions. Default 2 s (with the default window, a fault shows in the
    /// decisions within about two scrape intervals plus two decision intervals).
    #[serde(default = "default_interval", with = "gofe_yaml::duration::text")]
    #[schemars(with = "gofe_model::schema::DurationText")]
    pub interval: Duration,
    /// Where signals come from.
    #[serde(default)]
    pub signals: SignalsConfig,
    /// Policy for every cluster.
    #[serde(default)]
    pub policy: PolicyConfig,
    /// Per-cluster policies, replacing `policy` for that cluster.
    #[serde(default)]
    pub clusters: BTreeMap<String, PolicyConfig>,
    /// The controller's own HTTP endpoint. Default `127.0.0.1:9902`.
    #[serde(default)]
    pub admin: AdminConfig,
    /// Serve the decisions over xDS (ADS) to proxies (`gofe proxy --bootstrap`) and other
    /// Envoy-protocol clients. Default: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xds: Option<XdsConfig>,
    /// A file where the controller keeps its decision state (ejections, ramps, latency
    /// multipliers, the last publication) so that a restart resumes them instead of
    /// readmitting ejected endpoints. Relative to this file. Written after every publication,
    /// atomically. Default: none (a restart starts fresh, and says so in its log).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_file: Option<String>,
    /// Kubernetes mode: endpoints from the EndpointSlices of the Services that `TrafficPolicy`
    /// resources select, policies from those resources, leader election on a Lease. Default:
    /// off (file mode: clusters and endpoints from `proxy_config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesConfig>,
    /// The sidecar-injection admission webhook (`POST /inject` over HTTPS; see
    /// `crate::webhook`). Default: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookConfig>,
    /// The controller's own traces: a span per decision step (signals, each cluster's
    /// decision with its inputs, the publication), exported over OTLP/HTTP like the proxy's.
    /// Default: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<ControllerTracingConfig>,
    /// The mesh CA: the controller signs each proxy's workload certificate (a SPIFFE id) from
    /// a CSR sent to its xDS port with a token, and serves the xDS port itself over mutual TLS
    /// with a certificate of its own from the same root, so nobody manages certificates by
    /// hand (see `crate::ca`). Needs `xds`, and replaces `xds.tls`. Default: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityConfig>,
}

/// `identity`: the mesh CA.
///
/// A proxy calls `istio.v1.auth.IstioCertificateService/CreateCertificate` on the xDS port
/// (no client certificate needed) with `authorization: Bearer TOKEN` and a CSR of a key it
/// made itself; the controller checks the token (a `tokens_file` entry, or a Kubernetes
/// ServiceAccount token through a TokenReview), and signs a certificate for
/// `spiffe://TRUST_DOMAIN/ns/NS/sa/SA` (plus, as DNS SANs, the node ids the token lists that
/// the CSR asks for). Such a certificate passes the xDS port's node check
/// (`gofe_xds::identity`) for the node id that is the SPIFFE id itself, an Istio node id
/// `TYPE~IP~POD.NS~NS.svc.DOMAIN` of namespace `NS`, or a node id listed for the token.
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// The SPIFFE trust domain of every identity issued. Default `cluster.local`.
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// The trust root (PEM, relative to this file). When both files exist they are the root
    /// (user-supplied; in Kubernetes a Secret mounted as files); when neither does, the
    /// controller generates a root at its first start and writes both (the key with mode
    /// 0600), so a restart keeps it. Default `mesh-ca/root.crt` and `mesh-ca/root.key`.
    #[serde(default)]
    pub root: CaRootConfig,
    /// Lifetime of a workload certificate; a CSR may ask for less, not more. Default 24 h.
    #[serde(default = "default_workload_ttl", with = "gofe_yaml::duration::text")]
    #[schemars(with = "gofe_model::schema::DurationText")]
    pub workload_ttl: Duration,
    /// The shortest lifetime issued (a shorter request gets this). Default 1 h; tests lower it.
    #[serde(
        default = "default_min_workload_ttl",
        with = "gofe_yaml::duration::text"
    )]
    #[schemars(with = "gofe_model::schema::DurationText")]
    pub min_workload_ttl: Duration,
    /// How far before its issue a certificate is valid from (clocks of the proxies may be a
    /// little behind the controller's). Default 1 min.
    #[serde(default = "default_clock_skew", with = "gofe_yaml::duration::text")]
    #[schemars(with = "gofe_model::schema::DurationText")]
    pub clock_skew: Duration,
    /// File mode: the bootstrap tokens (YAML, relative to this file; read again at every
    /// request, so tokens can be added and revoked while the controller runs):
    /// `tokens: [{ token: "…", namespace: NS, service_account: SA, node_ids: ["proxy-1"] }]`.
    /// Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_file: Option<String>,
    /// Kubernetes mode: a request's token is a ServiceAccount token, checked with a
    /// TokenReview against the API server; the identity is the account's. Default `false`.
    #[serde(default)]
    pub token_review: bool,
    /// Audiences a reviewed token must be for. Default: none (the API server's own).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub token_audiences: Vec<String>,
    /// The names (DNS names or IP addresses) in the certificate the xDS port serves, which
    /// the mesh CA issues to the controller itself and renews at half its lifetime. Default
    /// `localhost` and `127.0.0.1`.
    #[serde(default = "default_server_names")]
    pub server_names: Vec<String>,
}

/// `identity.root`: the CA's certificate and key files.
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CaRootConfig {
    /// PEM certificate of the root. Also the trust bundle proxies verify the xDS port with.
    pub cert_file: String,
    /// PEM private key of the root.
    pub key_file: String,
}

impl Default for CaRootConfig {
    fn default() -> Self {
        CaRootConfig {
            cert_file: "mesh-ca/root.crt".into(),
            key_file: "mesh-ca/root.key".into(),
        }
    }
}

fn default_trust_domain() -> String {
    "cluster.local".into()
}

fn default_workload_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_min_workload_ttl() -> Duration {
    Duration::from_secs(3600)
}

fn default_clock_skew() -> Duration {
    Duration::from_secs(60)
}

fn default_server_names() -> Vec<String> {
    vec!["localhost".into(), "127.0.0.1".into()]
}

/// Where the controller's decision spans go: the proxy's `tracing.provider` and `batch`
/// (gofe_model::tracing), without sampling (every step is traced; there is one per
/// `interval`).
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ControllerTracingConfig {
    /// The OTLP/HTTP collector (`opentelemetry.service_name` defaults to
    /// `unknown_service:gofe`; `gofe-controller` is a good name).
    pub provider: gofe_model::tracing::TracingProvider,
    /// Batching. Default: 512 spans or 5 s.
    #[serde(default)]
    pub batch: gofe_model::tracing::BatchConfig,
}

/// The sidecar-injection webhook's listener and what it injects.
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `ip:port` of its HTTPS listener.
    pub address: String,
    /// PEM certificate chain it serves (relative to this file). Re-read every
    /// `reload_interval`.
    pub cert_file: String,
    /// PEM private key (relative to this file).
    pub key_file: String,
    /// A Pod that cannot be injected (a bad `gofe.io/*` annotation, a port clash) is admitted
    /// unchanged (`Ignore`) or refused (`Fail`), with a warning either way. Default `Ignore`.
    /// The MutatingWebhookConfiguration's own `failurePolicy` covers the webhook being down.
    #[serde(default)]
    pub failure_policy: gofe_inject::admission::FailurePolicy,
    /// The sidecar: image, controller address, resources (`gofe_inject::InjectConfig`; every
    /// field optional, defaults there).
    #[serde(default)]
    pub sidecar: gofe_inject::InjectConfig,
    /// How often the certificate files are read again. Default 30 s.
    #[serde(default = "default_webhook_reload", with = "gofe_yaml::duration::text")]
    #[schemars(with = "gofe_model::schema::DurationText")]
    pub reload_interval: Duration,
}

fn default_webhook_reload() -> Duration {
    Duration::from_secs(30)
}

/// Kubernetes mode.
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// Watch `TrafficPolicy` and `EndpointSlice` objects of this namespace only. Default: all
    /// namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Leader election among the controller's replicas.
    #[serde(default)]
    pub leader_election: LeaderElectionConfig,
    /// The name of the cluster the controller runs in (where its `TrafficPolicy` objects and
    /// Lease are), as the other clusters' endpoints are told apart from its own in logs,
    /// metrics and `.status` (a remote endpoint's pod is shown as `CLUSTER/POD`). Default
    /// `local`.
    #[serde(default = "default_local_cluster")]
    pub cluster_name: String,
    /// The network of the cluster the controller runs in. gofe assumes one flat network: every
    /// remote cluster must be on the same one (east-west gateways are not supported). Default
    /// empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub network: String,
    /// Remote clusters whose EndpointSlices (and Nodes, for localities) are watched beside the
    /// local ones, as Istio's remote secrets add clusters to a mesh: a Service's endpoints are
    /// the ready endpoints of the Service of the same namespace and name in every cluster,
    /// each with its locality. A remote that cannot be reached keeps its last endpoints, is
    /// logged, and counted down in `gofe_controller_kubernetes_cluster_up{cluster}`; it never
    /// stops the controller. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<RemoteClusterConfig>,
}

impl Default for KubernetesConfig {
    fn default() -> Self {
        KubernetesConfig {
            namespace: None,
            leader_election: LeaderElectionConfig::default(),
            cluster_name: default_local_cluster(),
            network: String::new(),
            clusters: Vec::new(),
        }
    }
}

fn default_local_cluster() -> String {
    "local".into()
}

/// A remote cluster: its name, its network, and how to reach its API server (a kubeconfig
/// file and context, or a Secret holding a kubeconfig, exactly one).
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoteClusterConfig {
    /// Unique name (not the local `cluster_name`).
    pub name: String,
    /// Its network; must be the local `network` (one flat network). Default empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub network: String,
    /// A kubeconfig file (relative to this file). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<String>,
    /// The kubeconfig's context to use. Default: its `current-context`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// A Secret of the local cluster holding the kubeconfig (Istio's remote secret: created by
    /// `istioctl create-remote-secret`, which gofe reads too). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<KubeconfigSecretConfig>,
}

/// A Secret holding a kubeconfig.
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KubeconfigSecretConfig {
    /// The Secret's name.
    pub name: String,
    /// Its namespace. Default: `$POD_NAMESPACE`, else `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The data key holding the kubeconfig. Default: the cluster's name (Istio's layout), else
    /// the Secret's only key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Leader election on a `coordination.k8s.io/v1` Lease; the settings and defaults of
/// Kubernetes' own controllers (client-go's leader election).
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaderElectionConfig {
    /// Off: this replica always decides (run one replica only). Default on.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The Lease's name. Default `gofe-controller`.
    #[serde(default = "default_lease_name")]
    pub lease_name: String,
    /// The Lease's namespace. Default: `$POD_NAMESPACE`, else `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_namespace: Option<String>,
    /// This replica's identity. Default: `$POD_NAME`, else the host name, with the process id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    /// How long a lease holds without renewal. Default 15 s.
    #[serde(default = "default_lease_duration", with = "gofe_yaml::duration::text")]
    #[schemars(with = "gofe_model::schema::DurationText")]
    pub lease_duration: Duration,
    /// The leader stops deciding when it could not renew for this long. Default 10 s.
    #[serde(default = "default_renew_deadline", with = "gofe_yaml::duration::text")]
    #[schemars(with = "gofe_model::schema::DurationText")]
    pub renew_deadline: Duration,
    /// Time between attempts to acquire or renew. Default 2 s.
    #[serde(default = "default_retry_period", with = "gofe_yaml::duration::text")]
    #[schemars(with = "gofe_model::schema::DurationText")]
    pub retry_period: Duration,
}

impl Default for LeaderElectionConfig {
    fn default() -> Self {
        LeaderElectionConfig {
            enabled: true,
            lease_name: default_lease_name(),
            lease_namespace: None,
            identity: None,
            lease_duration: default_lease_duration(),
            renew_deadline: default_renew_deadline(),
            retry_period: default_retry_period(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_lease_name() -> String {
    "gofe-controller".into()
}
fn default_lease_duration() -> Duration {
    Duration::from_secs(15)
}
fn default_renew_deadline() -> Duration {
    Duration::from_secs(10)
}
fn default_retry_period() -> Duration {
    Duration::from_secs(2)
}

/// The controller's xDS server.
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct XdsConfig {
    /// `ip:port` for ADS over gRPC (`/metrics` on the same port).
    pub address: String,
    /// TLS, and with `client_ca_file` mutual TLS with node identities checked against client
    /// certificates. Default: plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<XdsServerTlsConfig>,
    /// API listeners for proxyless gRPC clients (`xds:///NAME`). Default: none.
    #[serde(default, skip_serializing_if = "ApiListenersConfig::is_empty")]
    pub api_listeners: ApiListenersConfig,
}

/// `xds.api_listeners`: what a proxyless gRPC client (gRPC's built-in xDS client, target
/// `xds:///NAME`) needs to reach a cluster — a Listener `NAME` with Envoy's `api_listener` (an
/// HTTP connection manager taking route configuration `NAME` over RDS, router filter last)
/// and that route configuration (every authority and path to the cluster), published beside
/// the proxies' resources with the same cluster, endpoints and weights. A name that one of
/// the proxies' listeners or route configurations already has is left to the proxies (logged).
/// gofe's proxy ignores API listeners; Envoy takes them only from its bootstrap, so leave
/// them off where Envoy sidecars subscribe to every listener.
#[derive(Clone, Debug, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiListenersConfig {
    /// One API listener per cluster, named after it (`xds:///CLUSTER`). In Kubernetes mode a
    /// cluster a `TrafficPolicy` steers is named `SERVICE.NAMESPACE` instead (its Service's,
    /// so `xds:///reviews.shop` reaches the endpoints of Service `reviews` in `shop`). Default
    /// `false`.
    #[serde(default)]
    pub all_clusters: bool,
    /// Declared API listeners, each `xds:///NAME` to a cluster. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ApiListenerConfig>,
}

impl ApiListenersConfig {
    /// Whether it publishes nothing.
    pub fn is_empty(&self) -> bool {
        !self.all_clusters && self.services.is_empty()
    }
}

/// One declared API listener.
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiListenerConfig {
    /// The name a client's target uses (`xds:///NAME`): the Listener's and its route
    /// configuration's resource name.
    pub name: String,
    /// The cluster its calls go to. Default: `name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

impl ApiListenerConfig {
    /// The cluster (`cluster`, else `name`).
    pub fn cluster(&self) -> &str {
        self.cluster.as_deref().unwrap_or(&self.name)
    }
}

/// `xds.tls`: the xDS port's certificate and, with `client_ca_file`, mutual TLS. With mutual
/// TLS each stream's `node.id` must be a name in its client certificate — a URI SAN (a SPIFFE
/// id `spiffe://TRUST_DOMAIN/ns/NS/sa/SA`, or an Istio node id `sidecar~IP~POD.NS~NS.svc.…` of
/// that namespace), a DNS SAN, or the CN of a certificate without SANs — else the stream is
/// refused with `PERMISSION_DENIED` before anything is sent, logged and counted in
/// `gofe_xds_refused_streams_total{reason}`. The files are read again every `reload_interval`:
/// new handshakes use new material, connections already open keep theirs, and a changed file
/// that does not load keeps the previous material (logged, counted in
/// `gofe_xds_tls_reloads_total{result="failed"}`).
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct XdsServerTlsConfig {
    /// PEM certificate chain the xDS port serves, leaf first (relative to this file).
    pub cert_file: String,
    /// PEM private key of `cert_file` (relative to this file).
    pub key_file: String,
    /// PEM CA bundle client certificates must chain to: mutual TLS (relative to this file).
    /// Default: none (server-only TLS; any client may claim any node id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_file: Option<String>,
    /// Refuse a client without a certificate at the handshake (it can then subscribe to
    /// nothing). Needs `client_ca_file`. Default: `true` when `client_ca_file` is set. `false`
    /// lets certificate-less clients in (for a migration), while a certificate that is
    /// presented must still be valid and name the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_client_certificate: Option<bool>,
    /// How often the three files are read again. Default 10 s.
    #[serde(default = "default_xds_reload", with = "gofe_yaml::duration::text")]
    #[schemars(with = "gofe_model::schema::DurationText")]
    pub reload_interval: Duration,
}

impl XdsServerTlsConfig {
    /// Whether a client certificate is required (`require_client_certificate`, defaulting to
    /// whether `client_ca_file` is set).
    pub fn requires_client_certificate(&self) -> bool {
        self.require_client_certificate
            .unwrap_or(self.client_ca_file.is_some())
    }

    /// The files as the xDS server takes them.
    pub fn files(&self) -> gofe_xds::ServerTlsFiles {
        gofe_xds::ServerTlsFiles {
            cert_chain: self.cert_file.clone().into(),
            private_key: self.key_file.clone().into(),
            client_ca: self.client_ca_file.clone().map(Into::into),
            require_client_certificate: self.requires_client_certificate(),
        }
    }
}

fn default_xds_reload() -> Duration {
    Duration::from_secs(10)
}

fn default_interval() -> Duration {
    Duration::from_secs(2)
}

/// The controller's admin listener.
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `ip:port`.
    pub address: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            address: "127.0.0.1:9902".into(),
        }
    }
}

/// Which signal source to use.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// Scrape the proxies' `/metrics` directly and compute rates (no Prometheus needed).
    #[default]
    Embedded,
    /// Query Prometheus.
    Prometheus,
}

/// Signals: source, window, and each source's settings.
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalsConfig {
    /// Which source. Default `embedded`.
    #[serde(default)]
    pub source: SourceKind,
    /// The rate window. Default: two scrape intervals plus one decision interval, the
    /// shortest window that always holds two samples of every series (what a rate needs):
    /// with `embedded`, which scrapes once per decision, three decision intervals (6 s at the
    /// default 2 s); with `prometheus`, twice `prometheus.scrape_interval` plus the interval
    /// (32 s at Prometheus' usual 15 s). A shorter window reacts sooner to a fault and sees
    /// fewer requests per decision. See [`SignalsConfig::window`].
    #[serde(
        default,
        with = "gofe_yaml::duration::optional_text",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<gofe_model::schema::DurationText>")]
    pub window: Option<Duration>,
    /// The latency quantile the policy weighs by (0–1). Default 0.9.
    #[serde(default = "default_quantile")]
    pub latency_quantile: f64,
    /// The embedded scraper.
    #[serde(default)]
    pub embedded: EmbeddedConfig,
    /// Prometheus.
    #[serde(default)]
    pub prometheus: PrometheusConfig,
    /// The fast path: load reports the proxies stream over Envoy's Load Reporting Service.
    /// Default: off.
    #[serde(default)]
    pub lrs: LrsConfig,
}

impl Default for SignalsConfig {
    fn default() -> Self {
        SignalsConfig {
            source: SourceKind::default(),
            window: None,
            latency_quantile: default_quantile(),
            embedded: EmbeddedConfig::default(),
            prometheus: PrometheusConfig::default(),
            lrs: LrsConfig::default(),
        }
    }
}

impl SignalsConfig {
    /// How often the source's series get a new sample: each decision for `embedded`, the
    /// configured `prometheus.scrape_interval` for `prometheus`.
    pub fn scrape_interval(&self, interval: Duration) -> Duration {
        match self.source {
            SourceKind::Embedded => interval,
            SourceKind::Prometheus => self.prometheus.scrape_interval,
        }
    }

    /// The rate window at decision interval `interval`: the configured one, else two scrape
    /// intervals plus one decision interval.
    pub fn window(&self, interval: Duration) -> Duration {
        self.window
            .unwrap_or_else(|| 2 * self.scrape_interval(interval) + interval)
    }

    /// The window load reports are added up over at decision interval `interval`
    /// (`signals.lrs.window`, else the signal window).
    pub fn lrs_window(&self, interval: Duration) -> Duration {
        self.lrs.window.unwrap_or_else(|| self.window(interval))
    }
}

/// `signals.lrs`: proxies stream per-endpoint load to the controller's xDS port
/// (`StreamLoadStats`); an endpoint with fresh reports is decided on them (over the signal
/// window), every other endpoint on `source`. Needs `xds`.
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LrsConfig {
    /// Take load reports and decide on them. Default `false`.
    #[serde(default)]
    pub enabled: bool,
    /// How often proxies report (the `load_reporting_interval` the controller answers with).
    /// An endpoint's reports are fresh while the newest is at most 3 intervals old. Default 1 s.
    #[serde(default = "default_lrs_interval", with = "gofe_yaml::duration::text")]
    #[schemars(with = "gofe_model::schema::DurationText")]
    pub interval: Duration,
    /// The window load reports are added up over: shorter than `signals.window` lets a
    /// decision follow a fault within a few reports while Prometheus keeps its longer window.
    /// Default: `signals.window`.
    #[serde(
        default,
        with = "gofe_yaml::duration::optional_text",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<gofe_model::schema::DurationText>")]
    pub window: Option<Duration>,
}

impl Default for LrsConfig {
    fn default() -> Self {
        LrsConfig {
            enabled: false,
            interval: default_lrs_interval(),
            window: None,
        }
    }
}

fn default_lrs_interval() -> Duration {
    Duration::from_secs(1)
}

fn default_quantile() -> f64 {
    0.9
}

/// The embedded scraper's settings.
#[derive(Clone, Debug, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedConfig {
    /// Admin addresses (`host:port`) of the proxies to scrape.
    #[serde(default)]
    pub targets: Vec<String>,
}

/// Prometheus settings. Each query is a template: `{window}` becomes the window (e.g. `30s`)
/// and `{quantile}` the latency quantile; results must carry `cluster` and `endpoint` labels.
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PrometheusConfig {
    /// Base URL of the Prometheus HTTP API. Default `http://127.0.0.1:9090`.
    #[serde(default = "default_prometheus_url")]
    pub url: String,
    /// Requests in the window.
    #[serde(default = "default_q_requests")]
    pub requests: String,
    /// Requests per second.
    #[serde(default = "default_q_rps")]
    pub rps: String,
    /// Success rate (0–1).
    #[serde(default = "default_q_success")]
    pub success_rate: String,
    /// Latency in seconds.
    #[serde(default = "default_q_latency")]
    pub latency: String,
    /// Timestamp (s) of each endpoint's newest sample, for staleness.
    #[serde(default = "default_q_timestamp")]
    pub last_sample: String,
    /// Request timeout. Default 5 s.
    #[serde(default = "default_query_timeout", with = "gofe_yaml::duration::text")]
    #[schemars(with = "gofe_model::schema::DurationText")]
    pub timeout: Duration,
    /// How often Prometheus scrapes the proxies (its `scrape_interval` for their job): the
    /// default `signals.window` follows it, and a window that cannot hold two of its samples
    /// is refused (a rate over it would always be empty). Default 15 s.
    #[serde(
        default = "default_scrape_interval",
        with = "gofe_yaml::duration::text"
    )]
    #[schemars(with = "gofe_model::schema::DurationText")]
    pub scrape_interval: Duration,
}

fn default_scrape_interval() -> Duration {
    Duration::from_secs(15)
}

impl Default for PrometheusConfig {
    fn default() -> Self {
        PrometheusConfig {
            url: default_prometheus_url(),
            requests: default_q_requests(),
            rps: default_q_rps(),
            success_rate: default_q_success(),
            latency: default_q_latency(),
            last_sample: default_q_timestamp(),
            timeout: default_query_timeout(),
            scrape_interval: default_scrape_interval(),
        }
    }
}

fn default_prometheus_url() -> String {
    "http://127.0.0.1:9090".into()
}
fn default_q_requests() -> String {
    "sum by (cluster, endpoint) (increase(gofe_upstream_requests_total[{window}]))".into()
}
fn default_q_rps() -> String {
    "sum by (cluster, endpoint) (rate(gofe_upstream_requests_total[{window}]))".into()
}
fn default_q_success() -> String {
    "sum by (cluster, endpoint) (rate(gofe_upstream_requests_total{code_class!=\"5xx\"}[{window}])) / sum by (cluster, endpoint) (rate(gofe_upstream_requests_total[{window}]))".into()
}
fn default_q_latency() -> String {
    "histogram_quantile({quantile}, sum by (cluster, endpoint, le) (rate(gofe_upstream_request_duration_seconds_bucket[{window}])))".into()
}
fn default_q_timestamp() -> String {
    "max by (cluster, endpoint) (timestamp(gofe_upstream_requests_total))".into()
}
fn default_query_timeout() -> Duration {
    Duration::from_secs(5)
}

/// A cluster's decision policy as written in YAML: every field optional, defaulting to
/// [`Policy::default`]. Percentages are whole percents, as in Envoy.
#[derive(Clone, Debug, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// See [`Policy::success_rate_minimum_hosts`].
    pub success_rate_minimum_hosts: Option<usize>,
    /// See [`Policy::success_rate_request_volume`].
    pub success_rate_request_volume: Option<f64>,
    /// See [`Policy::success_rate_stdev_factor`].
    pub success_rate_stdev_factor: Option<f64>,
    /// Failure percentage (0–100) that ejects.
    pub failure_percentage_threshold: Option<f64>,
    /// See [`Policy::failure_percentage_minimum_hosts`].
    pub failure_percentage_minimum_hosts: Option<usize>,
    /// See [`Policy::failure_percentage_request_volume`].
    pub failure_percentage_request_volume: Option<f64>,
    /// See [`Policy::base_ejection_time`].
    #[serde(default, with = "gofe_yaml::duration::optional_text")]
    #[schemars(with = "Option<gofe_model::schema::DurationText>")]
    pub base_ejection_time: Option<Duration>,
    /// See [`Policy::max_ejection_time`].
    #[serde(default, with = "gofe_yaml::duration::optional_text")]
    #[schemars(with = "Option<gofe_model::schema::DurationText>")]
    pub max_ejection_time: Option<Duration>,
    /// See [`Policy::max_ejection_percent`].
    pub max_ejection_percent: Option<u32>,
    /// See [`Policy::half_open_weight_percent`].
    pub half_open_weight_percent: Option<u32>,
    /// See [`Policy::half_open_min_requests`].
    pub half_open_min_requests: Option<f64>,
    /// See [`Policy::slow_start_window`].
    #[serde(default, with = "gofe_yaml::duration::optional_text")]
    #[schemars(with = "Option<gofe_model::schema::DurationText>")]
    pub slow_start_window: Option<Duration>,
    /// See [`Policy::latency_weighting`].
    pub latency_weighting: Option<bool>,
    /// See [`Policy::min_weight_percent`].
    pub min_weight_percent: Option<u32>,
    /// See [`Policy::max_weight_percent`].
    pub max_weight_percent: Option<u32>,
    /// See [`Policy::max_step_percent`].
    pub max_step_percent: Option<u32>,
    /// See [`Policy::hysteresis_percent`].
    pub hysteresis_percent: Option<u32>,
    /// See [`Policy::latency_half_life`].
    #[serde(default, with = "gofe_yaml::duration::optional_text")]
    #[schemars(with = "Option<gofe_model::schema::DurationText>")]
    pub latency_half_life: Option<Duration>,
    /// See [`Policy::latency_min_requests`].
    pub latency_min_requests: Option<f64>,
    /// See [`Policy::panic_threshold_percent`] (Envoy's `healthy_panic_threshold`).
    pub healthy_panic_threshold: Option<u32>,
    /// See [`Policy::stale_after`].
    #[serde(default, with = "gofe_yaml::duration::optional_text")]
    #[schemars(with = "Option<gofe_model::schema::DurationText>")]
    pub stale_after: Option<Duration>,
    /// See [`Policy::relax_after`].
    #[serde(default, with = "gofe_yaml::duration::optional_text")]
    #[schemars(with = "Option<gofe_model::schema::DurationText>")]
    pub relax_after: Option<Duration>,
}

impl PolicyConfig {
    /// `self` over `base`: fields set here win.
    pub fn resolve(&self, base: &Policy) -> Policy {
        let d = base.clone();
        Policy {
            success_rate_minimum_hosts: self
                .success_rate_minimum_hosts
                .unwrap_or(d.success_rate_minimum_hosts),
            success_rate_request_volume: self
                .success_rate_request_volume
                .unwrap_or(d.success_rate_request_volume),
            success_rate_stdev_factor: self
                .success_rate_stdev_factor
                .unwrap_or(d.success_rate_stdev_factor),
            failure_percentage_threshold: self
                .failure_percentage_threshold
                .map_or(d.failure_percentage_threshold, |p| p / 100.0),
            failure_percentage_minimum_hosts: self
                .failure_percentage_minimum_hosts
                .unwrap_or(d.failure_percentage_minimum_hosts),
            failure_percentage_request_volume: self
                .failure_percentage_request_volume
                .unwrap_or(d.failure_percentage_request_volume),
            base_ejection_time: self.base_ejection_time.unwrap_or(d.base_ejection_time),
            max_ejection_time: self.max_ejection_time.unwrap_or(d.max_ejection_time),
            max_ejection_percent: self.max_ejection_percent.unwrap_or(d.max_ejection_percent),
            half_open_weight_percent: self
                .half_open_weight_percent
                .unwrap_or(d.half_open_weight_percent),
            half_open_min_requests: self
                .half_open_min_requests
                .unwrap_or(d.half_open_min_requests),
            slow_start_window: self.slow_start_window.unwrap_or(d.slow_start_window),
            latency_weighting: self.latency_weighting.unwrap_or(d.latency_weighting),
            min_weight_percent: self.min_weight_percent.unwrap_or(d.min_weight_percent),
            max_weight_percent: self.max_weight_percent.unwrap_or(d.max_weight_percent),
            max_step_percent: self.max_step_percent.unwrap_or(d.max_step_percent),
            hysteresis_percent: self.hysteresis_percent.unwrap_or(d.hysteresis_percent),
            latency_half_life: self.latency_half_life.unwrap_or(d.latency_half_life),
            latency_min_requests: self.latency_min_requests.unwrap_or(d.latency_min_requests),
            panic_threshold_percent: self
                .healthy_panic_threshold
                .unwrap_or(d.panic_threshold_percent),
            stale_after: self.stale_after.unwrap_or(d.stale_after),
            relax_after: self.relax_after.unwrap_or(d.relax_after),
            decay_interval: d.decay_interval,
            signal_window: d.signal_window,
        }
    }
}

// === validation ===

impl Validate for ControllerConfig {
    fn validate(&self, v: &mut Validator) {
        if self.state_file.as_deref() == Some("") {
            v.error("state_file", "must name a file (or leave it out)");
        }
        if self.proxy_config.is_empty() {
            v.error("proxy_config", "must name a proxy configuration file");
        }
        if self.interval.is_zero() {
            v.error("interval", "must be longer than 0s");
        }
        let s = &self.signals;
        if s.window.is_some_and(|w| w.is_zero()) {
            v.error("signals.window", "must be longer than 0s");
        }
        if s.source == SourceKind::Prometheus {
            let scrape = s.prometheus.scrape_interval;
            if scrape.is_zero() {
                v.error(
                    "signals.prometheus.scrape_interval",
                    "must be longer than 0s",
                );
            } else if let Some(w) = s.window.filter(|w| *w < 2 * scrape) {
                v.error(
                    "signals.window",
                    format!(
                        "{} holds fewer than two of Prometheus' samples at its {} scrape \
                         interval (signals.prometheus.scrape_interval): a rate over it is always \
                         empty; use at least {} or leave it out (default {})",
                        gofe_yaml::duration::format(w),
                        gofe_yaml::duration::format(scrape),
                        gofe_yaml::duration::format(2 * scrape),
                        gofe_yaml::duration::format(2 * scrape + self.interval),
                    ),
                );
            }
        }
        if !(0.0..=1.0).contains(&s.latency_quantile) {
            v.error(
                "signals.latency_quantile",
                format!("must be between 0 and 1, got {}", s.latency_quantile),
            );
        }
        for (i, t) in s.embedded.targets.iter().enumerate() {
            if t.rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
            {
                v.error(
                    format!("signals.embedded.targets[{i}]"),
                    format!("expected a proxy's admin address host:port, got {t:?}"),
                );
            }
        }
        check_url(v, "signals.prometheus.url", &s.prometheus.url);
        if s.prometheus.timeout.is_zero() {
            v.error("signals.prometheus.timeout", "must be longer than 0s");
        }
        if s.lrs.window.is_some_and(|w| w.is_zero()) {
            v.error("signals.lrs.window", "must be longer than 0s");
        }
        if s.lrs.interval.is_zero() {
            v.error("signals.lrs.interval", "must be longer than 0s");
        } else if s.lrs.interval > s.lrs_window(self.interval) {
            v.error(
                "signals.lrs.interval",
                format!(
                    "must not be longer than the window load reports are added up over ({}): it would hold no report",
                    gofe_yaml::duration::format(s.lrs_window(self.interval))
                ),
            );
        }
        if s.lrs.enabled && self.xds.is_none() {
            v.error(
                "signals.lrs.enabled",
                "needs xds.address: proxies report load on the controller's xDS port",
            );
        }
        check_socket(v, "admin.address", &self.admin.address);
        if let Some(id) = &self.identity {
            v.within("identity", |v| id.validate(v));
            match &self.xds {
                None => v.error(
                    "identity",
                    "needs xds.address: proxies ask for certificates on the controller's xDS port",
                ),
                Some(x) if x.tls.is_some() => v.error(
                    "xds.tls",
                    "leave it out with identity: the mesh CA issues the xDS port's certificate \
                     and verifies client certificates against its own root",
                ),
                Some(_) => {}
            }
            if id.token_review && self.kubernetes.is_none() {
                v.error(
                    "identity.token_review",
                    "needs kubernetes: tokens are reviewed by the API server",
                );
            }
        }
        if let Some(x) = &self.xds {
            check_socket(v, "xds.address", &x.address);
            if let Some(t) = &x.tls {
                v.within("xds.tls", |v| t.validate(v));
            }
            let mut names = std::collections::BTreeSet::new();
            for (i, a) in x.api_listeners.services.iter().enumerate() {
                let field = format!("xds.api_listeners.services[{i}]");
                if a.name.is_empty() {
                    v.error(format!("{field}.name"), "must not be empty");
                } else if !names.insert(a.name.as_str()) {
                    v.error(
                        format!("{field}.name"),
                        format!("{:?} is declared twice", a.name),
                    );
                }
                if a.cluster.as_deref() == Some("") {
                    v.error(
                        format!("{field}.cluster"),
                        "must name a cluster (or leave it out)",
                    );
                }
            }
        }
        if let Some(w) = &self.webhook {
            check_socket(v, "webhook.address", &w.address);
            for (field, value) in [
                ("webhook.cert_file", &w.cert_file),
                ("webhook.key_file", &w.key_file),
            ] {
                if value.is_empty() {
                    v.error(field, "must name a PEM file");
                }
            }
            if w.reload_interval.is_zero() {
                v.error("webhook.reload_interval", "must be longer than 0s");
            }
            v.within("webhook.sidecar", |v| w.sidecar.validate(v));
        }
        if let Some(t) = &self.tracing {
            for (field, message) in gofe_model::tracing::check_export(&t.provider, &t.batch) {
                v.error(format!("tracing.{field}"), message);
            }
        }
        v.within("policy", |v| self.policy.validate(v));
        for (name, p) in &self.clusters {
            v.within(&format!("clusters.{name}"), |v| p.validate(v));
        }
        if let Some(k) = &self.kubernetes {
            if k.cluster_name.is_empty() {
                v.error("kubernetes.cluster_name", "must not be empty");
            }
            let mut names = std::collections::HashMap::new();
            for (i, c) in k.clusters.iter().enumerate() {
                let base = format!("kubernetes.clusters[{i}]");
                if c.name.is_empty() {
                    v.error(format!("{base}.name"), "must not be empty");
                } else if c.name == k.cluster_name {
                    v.error(
                        format!("{base}.name"),
                        format!("{:?} is the local cluster_name", c.name),
                    );
                } else if let Some(first) = names.insert(c.name.as_str(), i) {
                    v.error(
                        format!("{base}.name"),
                        format!(
                            "duplicate cluster name {:?} (also kubernetes.clusters[{first}])",
                            c.name
                        ),
                    );
                }
                if c.network != k.network {
                    v.error(
                        format!("{base}.network"),
                        format!(
                            "{:?} differs from the local network {:?}: gofe reaches remote \
                             endpoints directly (one flat network); east-west gateways are not \
                             supported",
                            c.network, k.network
                        ),
                    );
                }
                match (&c.kubeconfig, &c.secret) {
                    (Some(_), Some(_)) => v.error(
                        base.clone(),
                        "set kubeconfig (with context) or secret, not both",
                    ),
                    (None, None) => v.error(base.clone(), "needs a kubeconfig or a secret"),
                    (None, Some(_)) if c.context.is_some() => v.error(
                        format!("{base}.context"),
                        "needs kubeconfig (a secret's kubeconfig is used at its current-context)",
                    ),
                    _ => {}
                }
            }
            let le = &k.leader_election;
            if !(le.retry_period < le.renew_deadline && le.renew_deadline < le.lease_duration) {
                v.error(
                    "kubernetes.leader_election",
                    format!(
                        "needs retry_period < renew_deadline < lease_duration, got {} < {} < {}",
                        gofe_yaml::duration::format(le.retry_period),
                        gofe_yaml::duration::format(le.renew_deadline),
                        gofe_yaml::duration::format(le.lease_duration)
                    ),
                );
            }
        }
    }
}

impl Validate for IdentityConfig {
    fn validate(&self, v: &mut Validator) {
        let td = &self.trust_domain;
        let td_ok = !td.is_empty()
            && td.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
            });
        if !td_ok {
            v.error(
                "trust_domain",
                format!("must be a SPIFFE trust domain (lowercase letters, digits, '.', '-', '_'), got {td:?}"),
            );
        }
        for (field, value) in [
            ("root.cert_file", &self.root.cert_file),
            ("root.key_file", &self.root.key_file),
        ] {
            if value.is_empty() {
                v.error(field, "must name a PEM file");
            }
        }
        if self.min_workload_ttl < Duration::from_secs(1) {
            v.error("min_workload_ttl", "must be at least 1s");
        }
        if self.workload_ttl < self.min_workload_ttl {
            v.error(
                "workload_ttl",
                format!(
                    "must be at least min_workload_ttl ({})",
                    gofe_yaml::duration::format(self.min_workload_ttl)
                ),
            );
        }
        if self.tokens_file.as_deref() == Some("") {
            v.error("tokens_file", "must name a file (or leave it out)");
        }
        if self.tokens_file.is_none() && !self.token_review {
            v.error(
                "tokens_file",
                "set tokens_file or token_review: true, else no request can be authenticated",
            );
        }
        if self.server_names.is_empty() {
            v.error(
                "server_names",
                "must name at least one DNS name or IP address",
            );
        }
        for (i, name) in self.server_names.iter().enumerate() {
            if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
                v.error(
                    format!("server_names[{i}]"),
                    format!("{name:?} is neither a DNS name nor an IP address"),
                );
            }
        }
    }
}

impl Validate for XdsServerTlsConfig {
    fn validate(&self, v: &mut Validator) {
        for (field, value) in [
            ("cert_file", Some(&self.cert_file)),
            ("key_file", Some(&self.key_file)),
            ("client_ca_file", self.client_ca_file.as_ref()),
        ] {
            if value.is_some_and(String::is_empty) {
                v.error(field, "must name a PEM file");
            }
        }
        if self.require_client_certificate == Some(true) && self.client_ca_file.is_none() {
            v.error(
                "require_client_certificate",
                "needs client_ca_file: client certificates are verified against it",
            );
        }
        if self.reload_interval.is_zero() {
            v.error("reload_interval", "must be longer than 0s");
        }
    }
}

impl Validate for PolicyConfig {
    fn validate(&self, v: &mut Validator) {
        let percent = |v: &mut Validator, field: &str, value: Option<u32>| {
            if let Some(p) = value.filter(|p| *p > 100) {
                v.error(field, format!("must be at most 100, got {p}"));
            }
        };
        percent(v, "max_ejection_percent", self.max_ejection_percent);
        percent(v, "half_open_weight_percent", self.half_open_weight_percent);
        percent(v, "healthy_panic_threshold", self.healthy_panic_threshold);
        percent(v, "hysteresis_percent", self.hysteresis_percent);
        if let Some(p) = self.failure_percentage_threshold {
            if !(0.0..=100.0).contains(&p) {
                v.error(
                    "failure_percentage_threshold",
                    format!("must be between 0 and 100, got {p}"),
                );
            }
        }
        if let (Some(lo), Some(hi)) = (self.min_weight_percent, self.max_weight_percent) {
            if lo > hi {
                v.error(
                    "min_weight_percent",
                    format!("must not exceed max_weight_percent ({lo} > {hi})"),
                );
            }
        }
        if let (Some(base), Some(max)) = (self.base_ejection_time, self.max_ejection_time) {
            if base > max {
                v.error(
                    "base_ejection_time",
                    "must not be longer than max_ejection_time",
                );
            }
        }
        for (field, value) in [
            (
                "success_rate_request_volume",
                self.success_rate_request_volume,
            ),
            ("success_rate_stdev_factor", self.success_rate_stdev_factor),
            (
                "failure_percentage_request_volume",
                self.failure_percentage_request_volume,
            ),
            ("half_open_min_requests", self.half_open_min_requests),
            ("latency_min_requests", self.latency_min_requests),
        ] {
            if let Some(x) = value.filter(|x| !x.is_finite() || *x < 0.0) {
                v.error(field, format!("must be a number of at least 0, got {x}"));
            }
        }
    }
}

fn check_socket(v: &mut Validator, field: &str, address: &str) {
    if address.parse::<std::net::SocketAddr>().is_err() {
        v.error(
            field,
            format!(
                "invalid socket address {address:?} (expected ip:port, e.g. \"127.0.0.1:9902\")"
            ),
        );
    }
}

/// A URL the Prometheus client can use (`http://` or `https://`, a host, no credentials).
fn check_url(v: &mut Validator, field: &str, url: &str) {
    if let Err(e) = gofe_prom::validate_url(url) {
        v.error(field, e.to_string());
    }
}

// === loading ===

pub use gofe_yaml::ConfigError;

/// Refuses, with its file, line and field, a proxy configuration the controller could not
/// publish over xDS without losing something (a value no Envoy field can carry), and logs
/// what is deliberately not published (the admin listener, a bootstrap setting).
pub fn check_publishable(path: &Path, proxy: &gofe_model::ProxyConfig) -> Result<(), ConfigError> {
    for note in gofe_proto::convert::unpublishable(proxy) {
        tracing::warn!(file = %path.display(), field = %note.field, "{}", note.message);
    }
    match gofe_proto::convert::from_proxy_config(proxy) {
        Err(gofe_proto::convert::ConvertError::Unpublishable { field, message }) => {
            let mut problems = vec![gofe_yaml::Problem {
                line: None,
                column: None,
                field,
                message: format!("cannot be published over xDS: {message}"),
            }];
            if let Ok(text) = std::fs::read_to_string(path) {
                gofe_yaml::locate(&text, &mut problems);
            }
            Err(ConfigError::invalid(&path.display().to_string(), problems))
        }
        // Anything else is a bug in the conversion, reported when publishing.
        _ => Ok(()),
    }
}

/// File mode: refuses, with its line and field, a declared API listener whose cluster the
/// proxy configuration does not have or whose name one of its listeners has (in Kubernetes
/// mode clusters are discovered, and such a listener is left out with a warning instead).
fn check_api_listeners(
    path: &Path,
    controller: &ControllerConfig,
    proxy: &gofe_model::ProxyConfig,
) -> Result<(), ConfigError> {
    let Some(x) = &controller.xds else {
        return Ok(());
    };
    let listeners: std::collections::BTreeSet<String> =
        gofe_proto::convert::from_proxy_config(proxy)
            .map(|r| {
                r.listeners
                    .into_keys()
                    .chain(r.routes.into_keys())
                    .collect()
            })
            .unwrap_or_default();
    let mut problems = Vec::new();
    for (i, a) in x.api_listeners.services.iter().enumerate() {
        let field = format!("xds.api_listeners.services[{i}]");
        if !proxy.clusters.iter().any(|c| c.name == a.cluster()) {
            problems.push(gofe_yaml::Problem {
                line: None,
                column: None,
                field: if a.cluster.is_some() {
                    format!("{field}.cluster")
                } else {
                    format!("{field}.name")
                },
                message: format!(
                    "{} has no cluster {:?}",
                    controller.proxy_config,
                    a.cluster()
                ),
            });
        }
        if listeners.contains(&a.name) {
            problems.push(gofe_yaml::Problem {
                line: None,
                column: None,
                field: format!("{field}.name"),
                message: format!(
                    "{:?} is already a listener or route configuration of {}",
                    a.name, controller.proxy_config
                ),
            });
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    if let Ok(text) = std::fs::read_to_string(path) {
        gofe_yaml::locate(&text, &mut problems);
    }
    Err(ConfigError::invalid(&path.display().to_string(), problems))
}

/// The files a loaded configuration names, checked where it runs (not by `load`, so that
/// `gofe check` can check a file written for another machine): the `xds.tls` files, with the
/// line and field of each problem in the controller file at `path`.
pub fn check_files(path: &Path, loaded: &Loaded) -> Result<(), ConfigError> {
    match loaded.controller.xds.as_ref().and_then(|x| x.tls.as_ref()) {
        Some(t) => check_tls_files(path, t),
        None => Ok(()),
    }
}

/// Refuses, with the line and field of each, `xds.tls` files that do not load: a file that
/// cannot be read or holds no PEM certificate (key, CA), and a key that is not the
/// certificate's. `tls` holds the resolved paths; `path` is the controller file.
fn check_tls_files(path: &Path, tls: &XdsServerTlsConfig) -> Result<(), ConfigError> {
    let problem = |field: &str, e: &dyn std::fmt::Display| gofe_yaml::Problem {
        line: None,
        column: None,
        field: format!("xds.tls.{field}"),
        message: e.to_string(),
    };
    let mut problems = Vec::new();
    if let Err(e) = gofe_tls::certs(Path::new(&tls.cert_file)) {
        problems.push(problem("cert_file", &e));
    }
    if let Err(e) = gofe_tls::key(Path::new(&tls.key_file)) {
        problems.push(problem("key_file", &e));
    }
    if let Some(ca) = &tls.client_ca_file {
        if let Err(e) = gofe_tls::roots(Path::new(ca)) {
            problems.push(problem("client_ca_file", &e));
        }
    }
    if problems.is_empty() {
        if let Err(e) = gofe_xds::LiveTls::load(tls.files()) {
            problems.push(problem("key_file", &e));
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    if let Ok(text) = std::fs::read_to_string(path) {
        gofe_yaml::locate(&text, &mut problems);
    }
    Err(ConfigError::invalid(&path.display().to_string(), problems))
}

/// A loaded configuration: the controller's settings and the proxy configuration it serves.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The controller's settings.
    pub controller: ControllerConfig,
    /// The proxy configuration (base weights).
    pub proxy: gofe_model::ProxyConfig,
}

/// Parses and validates controller YAML; `name` names it in errors (every problem, each with
/// its line, column and field).
pub fn parse(name: &str, text: &str) -> Result<ControllerConfig, ConfigError> {
    gofe_yaml::parse(name, text)
}

/// Reads the controller file and the proxy configuration it names (relative to it).
pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
    let mut controller: ControllerConfig = gofe_yaml::load(path)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let proxy_path = dir.join(&controller.proxy_config);
    if let Some(state) = &mut controller.state_file {
        *state = dir.join(&*state).display().to_string();
    }
    if let Some(k) = &mut controller.kubernetes {
        for c in &mut k.clusters {
            if let Some(path) = &mut c.kubeconfig {
                *path = dir.join(&*path).display().to_string();
            }
        }
    }
    if let Some(id) = &mut controller.identity {
        for file in [&mut id.root.cert_file, &mut id.root.key_file]
            .into_iter()
            .chain(id.tokens_file.as_mut())
        {
            *file = dir.join(&*file).display().to_string();
        }
    }
    if let Some(w) = &mut controller.webhook {
        w.cert_file = dir.join(&w.cert_file).display().to_string();
        w.key_file = dir.join(&w.key_file).display().to_string();
    }
    if let Some(t) = controller.xds.as_mut().and_then(|x| x.tls.as_mut()) {
        for file in [&mut t.cert_file, &mut t.key_file]
            .into_iter()
            .chain(t.client_ca_file.as_mut())
        {
            *file = dir.join(&*file).display().to_string();
        }
    }
    let proxy = gofe_model::load(&proxy_path)?;
    check_publishable(&proxy_path, &proxy)?;
    if controller.kubernetes.is_none() {
        check_api_listeners(path, &controller, &proxy)?;
    }
    Ok(Loaded { controller, proxy })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c = parse(
            "c.yaml",
            "proxy_config: p.yaml\npolicy: { max_ejection_percent: 50, failure_percentage_threshold: 40 }\nclusters:\n  web: { base_ejection_time: \"10s\" }\n",
        )
        .unwrap();
        assert_eq!(c.interval, Duration::from_secs(2));
        assert_eq!(c.signals.source, SourceKind::Embedded);
        assert_eq!(
            c.signals.window(c.interval),
            Duration::from_secs(6),
            "two scrapes (one per decision) plus a decision"
        );
        let base = c.policy.resolve(&Policy::default());
        assert_eq!(base.max_ejection_percent, 50);
        assert!((base.failure_percentage_threshold - 0.4).abs() < 1e-12);
        let web = c.clusters["web"].resolve(&base);
        assert_eq!(web.base_ejection_time, Duration::from_secs(10));
        assert_eq!(web.max_ejection_percent, 50, "inherits the default policy");
    }

    #[test]
    fn the_default_window_follows_prometheus_scrape_interval_and_a_window_too_short_for_it_is_refused(
    ) {
        let prom = |extra: &str| {
            parse(
                "c.yaml",
                &format!(
                    "proxy_config: p.yaml\ninterval: 1s\nsignals:\n  source: prometheus\n{extra}"
                ),
            )
        };
        let c = prom("").unwrap();
        assert_eq!(
            c.signals.window(c.interval),
            Duration::from_secs(31),
            "2 × 15 s + 1 s"
        );
        let c = prom("  prometheus: { scrape_interval: 5s }\n").unwrap();
        assert_eq!(c.signals.window(c.interval), Duration::from_secs(11));
        let c = prom("  window: 1m\n").unwrap();
        assert_eq!(
            c.signals.window(c.interval),
            Duration::from_secs(60),
            "as written"
        );
        let e = prom("  window: 20s\n").unwrap_err().to_string();
        assert!(
            e.starts_with(
                "c.yaml:5:11: signals.window: 20s holds fewer than two of Prometheus' samples"
            ),
            "{e}"
        );
        assert!(e.contains("use at least 30s"), "{e}");
        // The embedded scraper samples once per decision: any window longer than 0 s will do.
        let c = parse("c.yaml", "proxy_config: p.yaml\nsignals: { window: 3s }\n").unwrap();
        assert_eq!(c.signals.window(c.interval), Duration::from_secs(3));
    }

    #[test]
    fn errors_name_line_and_field() {
        let e = parse("c.yaml", "proxy_config: p.yaml\nsignals:\n  windw: 5s\n").unwrap_err();
        let text = e.to_string();
        assert!(
            text.starts_with("c.yaml:3:3: signals.windw: unknown field"),
            "{text}"
        );
        let e = parse("c.yaml", "proxy_config: p.yaml\ninterval: 5\n").unwrap_err();
        assert!(e.to_string().starts_with("c.yaml:2:11: interval:"), "{e}");
    }

    #[test]
    fn a_bad_tracing_collector_names_its_line_and_field() {
        let text = "proxy_config: p.yaml\ntracing:\n  provider:\n    opentelemetry:\n      http_service:\n        http_uri: { uri: \"https://c:4318/v1/traces\" }\n";
        let e = parse("c.yaml", text).unwrap_err().to_string();
        assert!(
            e.starts_with("c.yaml:6:26: tracing.provider.opentelemetry.http_service.http_uri.uri:"),
            "{e}"
        );
        let ok = parse("c.yaml", &text.replace("https", "http")).unwrap();
        assert_eq!(
            ok.tracing.unwrap().batch,
            gofe_model::tracing::BatchConfig::default()
        );
    }

    #[test]
    fn lrs_is_off_by_default_and_its_settings_are_checked_with_their_lines() {
        let c = parse("c.yaml", "proxy_config: p.yaml\n").unwrap();
        assert!(!c.signals.lrs.enabled);
        assert_eq!(c.signals.lrs.interval, Duration::from_secs(1));
        let c = parse(
            "c.yaml",
            "proxy_config: p.yaml\nsignals:\n  lrs: { enabled: true, interval: 500ms }\nxds: { address: \"127.0.0.1:18000\" }\n",
        )
        .unwrap();
        assert!(c.signals.lrs.enabled);
        assert_eq!(c.signals.lrs.interval, Duration::from_millis(500));
        assert_eq!(
            c.signals.lrs_window(c.interval),
            Duration::from_secs(6),
            "signals.window"
        );
        let text = "proxy_config: p.yaml\nsignals:\n  window: 5s\n  lrs: { enabled: true, interval: 10s }\n";
        let e = parse("c.yaml", text).unwrap_err();
        let lines: Vec<String> = e.problems().iter().map(|p| p.in_file("c.yaml")).collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[1].starts_with("c.yaml:4:35: signals.lrs.interval: must not be longer than the window load reports are added up over (5s)"),
            "{lines:?}"
        );
        assert!(
            lines[0].starts_with("c.yaml:4:19: signals.lrs.enabled: needs xds.address"),
            "{lines:?}"
        );
        let e = parse(
            "c.yaml",
            "proxy_config: p.yaml\nsignals: { lrs: { interval: 0s } }\n",
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("signals.lrs.interval: must be longer than 0s"),
            "{e}"
        );
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let text = "proxy_config: p.yaml\nsignals:\n  latency_quantile: 1.5\n  prometheus: { url: \"127.0.0.1:9090\" }\npolicy: { max_ejection_percent: 150 }\nclusters:\n  web: { min_weight_percent: 50, max_weight_percent: 10 }\nadmin: { address: \"localhost\" }\n";
        let e = parse("c.yaml", text).unwrap_err();
        let lines: Vec<String> = e.problems().iter().map(|p| p.in_file("c.yaml")).collect();
        assert_eq!(lines.len(), 5, "{lines:?}");
        assert!(
            lines[0].starts_with("c.yaml:3:21: signals.latency_quantile: must be between 0 and 1"),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with("c.yaml:4:22: signals.prometheus.url: invalid prometheus url"),
            "{lines:?}"
        );
        assert!(
            lines[2].starts_with("c.yaml:5:33: policy.max_ejection_percent: must be at most 100"),
            "{lines:?}"
        );
        assert!(
            lines[3].starts_with("c.yaml:7:30: clusters.web.min_weight_percent:"),
            "{lines:?}"
        );
        assert!(
            lines[4].starts_with("c.yaml:8:19: admin.address: invalid socket address"),
            "{lines:?}"
        );
    }

    #[test]
    fn the_webhook_section_is_validated_with_lines_and_fields() {
        let ok = parse(
            "c.yaml",
            "proxy_config: p.yaml\nwebhook:\n  address: \"127.0.0.1:9443\"\n  cert_file: tls.crt\n  key_file: tls.key\n  failure_policy: Fail\n  sidecar: { image: \"r/gofe:1\" }\n",
        )
        .unwrap();
        let w = ok.webhook.unwrap();
        assert_eq!(
            w.failure_policy,
            gofe_inject::admission::FailurePolicy::Fail
        );
        assert_eq!(w.sidecar.image, "r/gofe:1");
        assert_eq!(
            w.sidecar.proxy_cpu, "200m",
            "the sidecar's defaults fill the rest"
        );
        let text = "proxy_config: p.yaml\nwebhook:\n  address: \"9443\"\n  cert_file: \"\"\n  key_file: tls.key\n  sidecar:\n    proxy_memory: \"lots\"\n";
        let e = parse("c.yaml", text).unwrap_err();
        let lines: Vec<String> = e.problems().iter().map(|p| p.in_file("c.yaml")).collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(
            lines[0].starts_with("c.yaml:3:12: webhook.address: invalid socket address"),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with("c.yaml:4:14: webhook.cert_file: must name a PEM file"),
            "{lines:?}"
        );
        assert!(
            lines[2].starts_with(
                "c.yaml:7:19: webhook.sidecar.proxy_memory: expected a Kubernetes quantity"
            ),
            "{lines:?}"
        );
        let e = parse("c.yaml", "proxy_config: p.yaml\nwebhook: { address: \"127.0.0.1:1\", cert_file: a, key_file: b, failure_policy: Sometimes }\n").unwrap_err();
        assert!(e.to_string().starts_with("c.yaml:2:"), "{e}");
        assert!(e.to_string().contains("webhook.failure_policy"), "{e}");
    }

    #[test]
    fn a_proxy_config_that_cannot_travel_over_xds_is_refused_with_its_line() {
        let dir = std::env::temp_dir().join(format!("gofe-unpublishable-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("c.yaml"), "proxy_config: p.yaml\n").unwrap();
        std::fs::write(
            dir.join("p.yaml"),
            "listeners:\n  - address: \"127.0.0.1:8080\"\n    max_connections: 0\n    filters:\n      - type: router\n        config: { virtual_hosts: [] }\n",
        )
        .unwrap();
        let e = load(&dir.join("c.yaml")).unwrap_err().to_string();
        assert!(
            e.contains("p.yaml:3:22: listeners[0].max_connections: cannot be published over xDS"),
            "{e}"
        );
        std::fs::write(
            dir.join("p.yaml"),
            "listeners:\n  - address: \"127.0.0.1:8080\"\n    filters:\n      - type: router\n        config: { virtual_hosts: [] }\n",
        )
        .unwrap();
        assert!(load(&dir.join("c.yaml")).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn remote_clusters_are_checked_with_their_place() {
        let ok = parse(
            "c.yaml",
            "proxy_config: p.yaml\nkubernetes:\n  cluster_name: east\n  clusters:\n    - { name: west, kubeconfig: west.yaml, context: admin@west }\n    - { name: north, secret: { name: istio-remote-secret-north } }\n",
        )
        .unwrap();
        let k = ok.kubernetes.unwrap();
        assert_eq!(k.cluster_name, "east");
        assert_eq!(k.clusters.len(), 2);
        assert_eq!(
            k.clusters[1].secret.as_ref().unwrap().name,
            "istio-remote-secret-north"
        );
        let default = parse("c.yaml", "proxy_config: p.yaml\nkubernetes: {}\n").unwrap();
        assert_eq!(default.kubernetes.unwrap().cluster_name, "local");

        let text = "proxy_config: p.yaml\nkubernetes:\n  clusters:\n    - { name: local, kubeconfig: a }\n    - { name: w, network: other, secret: { name: s }, context: x }\n    - { name: w, kubeconfig: a, secret: { name: s } }\n    - { name: z }\n";
        let e = parse("c.yaml", text).unwrap_err().to_string();
        let lines: Vec<&str> = e.lines().collect();
        for want in [
            "c.yaml:4:",
            "kubernetes.clusters[0].name: \"local\" is the local cluster_name",
            "kubernetes.clusters[1].network: \"other\" differs from the local network",
            "kubernetes.clusters[1].context: needs kubeconfig",
            "kubernetes.clusters[2].name: duplicate cluster name \"w\"",
            "kubernetes.clusters[2]: set kubeconfig (with context) or secret, not both",
            "kubernetes.clusters[3]: needs a kubeconfig or a secret",
        ] {
            assert!(
                lines.iter().any(|l| l.contains(want)),
                "{want} not in:\n{e}"
            );
        }
    }

    #[test]
    fn identity_is_validated_with_lines_and_fields() {
        let c = parse(
            "c.yaml",
            "proxy_config: p.yaml\nxds: { address: \"127.0.0.1:1\" }\nidentity: { tokens_file: t.yaml }\n",
        )
        .unwrap();
        let id = c.identity.unwrap();
        assert_eq!(id.trust_domain, "cluster.local");
        assert_eq!(id.workload_ttl, Duration::from_secs(24 * 3600));
        assert_eq!(id.min_workload_ttl, Duration::from_secs(3600));
        assert_eq!(id.clock_skew, Duration::from_secs(60));
        assert_eq!(id.root.cert_file, "mesh-ca/root.crt");
        assert_eq!(id.server_names, ["localhost", "127.0.0.1"]);
        let text = "proxy_config: p.yaml\nxds:\n  address: \"127.0.0.1:1\"\n  tls: { cert_file: a, key_file: b }\nidentity:\n  trust_domain: \"Mesh/1\"\n  workload_ttl: 10m\n  token_review: true\n  server_names: [\"bad name\"]\n";
        let e = parse("c.yaml", text).unwrap_err();
        let lines: Vec<String> = e.problems().iter().map(|p| p.in_file("c.yaml")).collect();
        let find = |needle: &str| {
            lines
                .iter()
                .find(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("{needle} in {lines:?}"))
                .clone()
        };
        assert!(
            find("identity.trust_domain").starts_with("c.yaml:6:17:"),
            "{lines:?}"
        );
        assert!(
            find("identity.workload_ttl: must be at least min_workload_ttl (3600s)")
                .starts_with("c.yaml:7:17:")
        );
        assert!(
            find("identity.server_names[0]").starts_with("c.yaml:9:18:"),
            "{lines:?}"
        );
        assert!(find("identity.token_review: needs kubernetes").starts_with("c.yaml:8:17:"));
        assert!(
            find("xds.tls: leave it out with identity").starts_with("c.yaml:4:8:"),
            "{lines:?}"
        );
        let e = parse("c.yaml", "proxy_config: p.yaml\nidentity: {}\n").unwrap_err();
        let lines: Vec<String> = e.problems().iter().map(|p| p.in_file("c.yaml")).collect();
        assert!(
            lines
                .iter()
                .any(|l| l.contains("identity: needs xds.address")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("identity.tokens_file: set tokens_file or token_review")),
            "{lines:?}"
        );
    }

    #[test]
    fn xds_tls_is_validated_with_lines_and_fields() {
        let c = parse(
            "c.yaml",
            "proxy_config: p.yaml\nxds:\n  address: \"127.0.0.1:1\"\n  tls: { cert_file: a.crt, key_file: a.key, client_ca_file: ca.crt }\n",
        )
        .unwrap();
        let t = c.xds.unwrap().tls.unwrap();
        assert!(
            t.requires_client_certificate(),
            "on by default with a client CA"
        );
        assert_eq!(t.reload_interval, Duration::from_secs(10));
        let c = parse(
            "c.yaml",
            "proxy_config: p.yaml\nxds:\n  address: \"127.0.0.1:1\"\n  tls: { cert_file: a.crt, key_file: a.key }\n",
        )
        .unwrap();
        assert!(!c.xds.unwrap().tls.unwrap().requires_client_certificate());
        let text = "proxy_config: p.yaml\nxds:\n  address: \"127.0.0.1:1\"\n  tls:\n    cert_file: \"\"\n    key_file: a.key\n    require_client_certificate: true\n    reload_interval: 0s\n";
        let e = parse("c.yaml", text).unwrap_err();
        let lines: Vec<String> = e.problems().iter().map(|p| p.in_file("c.yaml")).collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(
            lines[0].starts_with("c.yaml:5:16: xds.tls.cert_file: must name a PEM file"),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with(
                "c.yaml:7:33: xds.tls.require_client_certificate: needs client_ca_file"
            ),
            "{lines:?}"
        );
        assert!(
            lines[2].starts_with("c.yaml:8:22: xds.tls.reload_interval: must be longer than 0s"),
            "{lines:?}"
        );
        let e = parse(
            "c.yaml",
            "proxy_config: p.yaml\nxds: { address: \"127.0.0.1:1\", tls: { cert_file: a, key_file: b, ca: c } }\n",
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with("c.yaml:2:"),
            "unknown fields are refused: {e}"
        );
    }

    #[test]
    fn xds_tls_files_that_do_not_load_are_refused_with_their_lines_relative_to_the_file() {
        let dir = std::env::temp_dir().join(format!("gofe-xds-tls-files-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("tls")).unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(dir.join("tls/xds.crt"), cert.cert.pem()).unwrap();
        std::fs::write(dir.join("tls/xds.key"), cert.key_pair.serialize_pem()).unwrap();
        std::fs::write(dir.join("tls/other.key"), other.key_pair.serialize_pem()).unwrap();
        std::fs::write(dir.join("tls/ca.crt"), "not a certificate\n").unwrap();
        std::fs::write(dir.join("p.yaml"), "clusters: []\n").unwrap();
        let write = |tls: &str| {
            std::fs::write(
                dir.join("c.yaml"),
                format!("proxy_config: p.yaml\nxds:\n  address: \"127.0.0.1:1\"\n  tls:\n{tls}"),
            )
            .unwrap();
            let loaded = load(&dir.join("c.yaml"))?;
            check_files(&dir.join("c.yaml"), &loaded).map(|()| loaded)
        };
        let loaded = write("    cert_file: tls/xds.crt\n    key_file: tls/xds.key\n").unwrap();
        let t = loaded.controller.xds.unwrap().tls.unwrap();
        assert_eq!(
            t.cert_file,
            dir.join("tls/xds.crt").display().to_string(),
            "relative to the controller file"
        );
        let e = write("    cert_file: tls/missing.crt\n    key_file: tls/xds.key\n    client_ca_file: tls/ca.crt\n")
            .unwrap_err();
        let lines: Vec<String> = e.problems().iter().map(|p| p.to_string()).collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with("5:16: xds.tls.cert_file:") && lines[0].contains("missing.crt"),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with("7:21: xds.tls.client_ca_file:")
                && lines[1].contains("no PEM certificate found"),
            "{lines:?}"
        );
        let e = write("    cert_file: tls/xds.crt\n    key_file: tls/other.key\n").unwrap_err();
        let lines: Vec<String> = e.problems().iter().map(|p| p.to_string()).collect();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with("6:15: xds.tls.key_file:"), "{lines:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn api_listeners_are_validated_with_lines_and_checked_against_the_proxy_config() {
        let text = "proxy_config: p.yaml\nxds:\n  address: \"127.0.0.1:1\"\n  api_listeners:\n    services:\n      - { name: \"\" }\n      - { name: a, cluster: \"\" }\n      - { name: a }\n";
        let e = parse("c.yaml", text).unwrap_err();
        let lines: Vec<String> = e.problems().iter().map(|p| p.in_file("c.yaml")).collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(
            lines[0]
                .starts_with("c.yaml:6:17: xds.api_listeners.services[0].name: must not be empty"),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with(
                "c.yaml:7:29: xds.api_listeners.services[1].cluster: must name a cluster"
            ),
            "{lines:?}"
        );
        assert!(
            lines[2].starts_with(
                "c.yaml:8:17: xds.api_listeners.services[2].name: \"a\" is declared twice"
            ),
            "{lines:?}"
        );

        let dir = std::env::temp_dir().join(format!("gofe-api-listeners-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("p.yaml"),
            "listeners:\n  - name: front\n    address: \"127.0.0.1:1\"\n    filters:\n      - type: router\n        config: { virtual_hosts: [] }\nclusters:\n  - name: web\n",
        )
        .unwrap();
        let write = |services: &str| {
            std::fs::write(
                dir.join("c.yaml"),
                format!("proxy_config: p.yaml\nxds:\n  address: \"127.0.0.1:1\"\n  api_listeners:\n    services:\n{services}"),
            )
            .unwrap();
            load(&dir.join("c.yaml"))
        };
        assert!(write("      - { name: web }\n").is_ok());
        assert!(write("      - { name: greeter, cluster: web }\n").is_ok());
        let e = write("      - { name: front, cluster: web }\n      - { name: db }\n").unwrap_err();
        let lines: Vec<String> = e.problems().iter().map(|p| p.to_string()).collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with(
                "6:17: xds.api_listeners.services[0].name: \"front\" is already a listener"
            ),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with(
                "7:17: xds.api_listeners.services[1].name: p.yaml has no cluster \"db\""
            ),
            "{lines:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
