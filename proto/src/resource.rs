//! The validated, gofe-side form of each xDS resource.

use std::time::Duration;

use gofe_model::{ClusterConfig, EndpointConfig, RouterConfig, TlsConfig};

/// The four resource types gofe serves and consumes, in the order an xDS client should
/// subscribe to them (clusters and their endpoints before the listeners and routes that use
/// them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    /// `envoy.config.cluster.v3.Cluster` (CDS).
    Cluster,
    /// `envoy.config.endpoint.v3.ClusterLoadAssignment` (EDS).
    Endpoints,
    /// `envoy.config.listener.v3.Listener` (LDS).
    Listener,
    /// `envoy.config.route.v3.RouteConfiguration` (RDS).
    Route,
}

impl ResourceType {
    /// All of them, in subscription order.
    pub const ALL: [ResourceType; 4] = [
        ResourceType::Cluster,
        ResourceType::Endpoints,
        ResourceType::Listener,
        ResourceType::Route,
    ];

    /// The type URL, as Envoy writes it in `type_url` and `Any`.
    pub const fn type_url(self) -> &'static str {
        match self {
            ResourceType::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            ResourceType::Endpoints => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
            ResourceType::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            ResourceType::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        }
    }

    /// The type for a type URL, if it is one of the four.
    pub fn from_type_url(url: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// Whether an empty subscription means "everything" (LDS and CDS) rather than "nothing".
    pub const fn wildcard_by_default(self) -> bool {
        matches!(self, ResourceType::Cluster | ResourceType::Listener)
    }

    /// Short name for logs and metric labels: `cds`, `eds`, `lds`, `rds`.
    pub const fn short(self) -> &'static str {
        match self {
            ResourceType::Cluster => "cds",
            ResourceType::Endpoints => "eds",
            ResourceType::Listener => "lds",
            ResourceType::Route => "rds",
        }
    }
}

/// A Listener resource.
#[derive(Clone, Debug)]
pub struct ListenerResource {
    /// The resource name.
    pub name: String,
    /// A socket the proxy binds, or an API listener for proxyless gRPC clients.
    pub kind: ListenerKind,
    /// Where the listener's routes come from.
    pub routes: RouteSource,
}

/// What a listener is.
#[derive(Clone, Debug, PartialEq)]
// Built once per received listener, never on a request path: the size of a socket listener's
// settings costs nothing worth a box at every construction site.
#[allow(clippy::large_enum_variant)]
pub enum ListenerKind {
    /// A TCP socket, `ip:port`, with one HTTP connection manager filter chain.
    Socket {
        /// `ip:port`.
        address: String,
        /// Everything else of the proxy's listener that the Envoy listener carries.
        settings: SocketSettings,
    },
    /// An `api_listener` (no socket): the HTTP connection manager a proxyless gRPC client uses
    /// for an `xds:///NAME` target whose listener is named `NAME`. gofe's proxy ignores these.
    Api,
}

/// The settings of a socket listener besides its address and routes, each where Envoy keeps it
/// (the wire form in brackets). `Default` is gofe's defaults, as a listener in a configuration
/// file gets them.
#[derive(Clone, Debug, PartialEq)]
pub struct SocketSettings {
    /// TLS termination with certificate files (the filter chain's `transport_socket`, a
    /// `DownstreamTlsContext` with `filename` data sources). Default: none (cleartext).
    pub tls: Option<TlsConfig>,
    /// Most client connections open at once (an `envoy.filters.network.connection_limit`
    /// filter before the connection manager). Default: no limit.
    pub max_connections: Option<u32>,
    /// Largest request header block, KiB (`max_request_headers_kb`). Default 60.
    pub max_request_headers_kb: u32,
    /// Time a client has to send a request's headers (`request_headers_timeout`); zero
    /// disables it. Default 10 s (Envoy's default, when the wire leaves it unset, is off).
    pub request_headers_timeout: Duration,
    /// Idle time after which a client connection is closed
    /// (`common_http_protocol_options.idle_timeout`); zero disables it. Default 1 h.
    pub idle_timeout: Duration,
    /// Whether the connection manager has the buffer filter (`envoy.filters.http.buffer`,
    /// disabled by default and enabled per route). Routes' `max_request_bytes` take effect
    /// only with it, as in Envoy. Default: yes.
    pub buffer_filter: bool,
    /// Whether the connection manager has the fault filter (`envoy.filters.http.fault`, empty
    /// and configured per route). Routes' `fault` take effect only with it, as in Envoy.
    /// Default: yes.
    pub fault_filter: bool,
    /// Whether the connection manager has the local rate limit filter
    /// (`envoy.filters.http.local_ratelimit`, without a bucket, configured per route). Routes'
    /// `local_ratelimit` take effect only with it, as in Envoy. Default: yes.
    pub local_ratelimit_filter: bool,
    /// The proxy's listener had no name of its own: its resource name is its address (metadata
    /// `gofe.unnamed`, which Envoy ignores). Default: no.
    pub unnamed: bool,
    /// Access logs (the connection manager's `access_log`: stdout and file loggers with a text
    /// or JSON `log_format`). Default: none.
    pub access_log: Vec<gofe_model::AccessLogConfig>,
    /// Tracing (the connection manager's `tracing` with the `envoy.tracers.opentelemetry`
    /// provider). Default: none.
    pub tracing: Option<Box<gofe_model::TracingConfig>>,
    /// Authorization (an `envoy.filters.http.rbac` filter first in the connection manager's
    /// `http_filters`). Default: none.
    pub rbac: Option<Box<gofe_model::RbacConfig>>,
    /// A capture listener (the listener's `use_original_dst`, with the
    /// `envoy.filters.listener.original_dst` listener filter). Default: no.
    pub use_original_dst: bool,
    /// Whether the proxy binds the address (`bind_to_port`; `false` makes a listener that only
    /// serves connections a capture listener hands it). Default: yes.
    pub bind_to_port: bool,
    /// A `tcp` listener: its filter chain is an `envoy.filters.network.tcp_proxy` instead of a
    /// connection manager (the routes and HTTP settings above are then unused, and its
    /// `access_log` is the tcp_proxy's). Default: none (an HTTP listener).
    pub tcp_proxy: Option<Box<gofe_model::TcpProxyConfig>>,
    /// Further filter chains, each picked by its `filter_chain_match` (the listener's
    /// `filter_chains` when there is more than one, or one with a match). The settings above
    /// (but `tls` and `tcp_proxy`) are every chain's. Default: none.
    pub filter_chains: Vec<ChainResource>,
    /// Whether the listener's own chain (`tls`, `tcp_proxy` and the resource's routes) serves
    /// the connections no chain matches (`default_filter_chain`, or the listener's only
    /// chain). Default: yes.
    pub default_chain: bool,
    /// The `envoy.filters.listener.tls_inspector` listener filter. Default: no.
    pub tls_inspector: bool,
    /// The `envoy.filters.listener.http_inspector` listener filter. Default: no.
    pub http_inspector: bool,
}

/// One of a listener's further filter chains.
#[derive(Clone, Debug, PartialEq)]
pub struct ChainResource {
    /// The chain's `name`.
    pub name: Option<String>,
    /// Its `filter_chain_match`.
    pub filter_chain_match: gofe_model::FilterChainMatchConfig,
    /// Its `transport_socket` (a `DownstreamTlsContext`). Default: none.
    pub tls: Option<TlsConfig>,
    /// Its connection manager's routes: a RouteConfiguration name over RDS, or inline.
    /// `None` for a tcp_proxy chain.
    pub rds: Option<String>,
    /// Inline routes (when `rds` is `None` and the chain is not a tcp_proxy).
    pub inline_routes: Option<RouterConfig>,
    /// Its `envoy.filters.network.tcp_proxy`, for a tcp chain.
    pub tcp_proxy: Option<Box<gofe_model::TcpProxyConfig>>,
}

impl Default for SocketSettings {
    fn default() -> Self {
        SocketSettings {
            tls: None,
            max_connections: None,
            max_request_headers_kb: gofe_model::DEFAULT_MAX_REQUEST_HEADERS_KB,
            request_headers_timeout: gofe_model::DEFAULT_REQUEST_HEADERS_TIMEOUT,
            idle_timeout: gofe_model::DEFAULT_LISTENER_IDLE_TIMEOUT,
            buffer_filter: true,
            fault_filter: true,
            local_ratelimit_filter: true,
            unnamed: false,
            access_log: Vec::new(),
            tracing: None,
            rbac: None,
            use_original_dst: false,
            bind_to_port: true,
            tcp_proxy: None,
            filter_chains: Vec::new(),
            default_chain: true,
            tls_inspector: false,
            http_inspector: false,
        }
    }
}

/// Where a listener's routes come from.
#[derive(Clone, Debug)]
pub enum RouteSource {
    /// RDS over ADS: the name of a `RouteConfiguration`.
    Rds(String),
    /// Inline in the listener.
    Inline(RouterConfig),
}

/// A RouteConfiguration resource.
#[derive(Clone, Debug)]
pub struct RouteResource {
    /// The resource name.
    pub name: String,
    /// Its virtual hosts, in gofe's router form.
    pub router: RouterConfig,
}

/// A Cluster resource.
#[derive(Clone, Debug)]
pub struct ClusterResource {
    /// The cluster, with the endpoints of an inline `load_assignment` (empty for EDS). This is
    /// what the wire form is written from.
    pub config: ClusterConfig,
    /// For an EDS cluster, the name of its `ClusterLoadAssignment` (`service_name`, defaulting
    /// to the cluster name); `None` for a cluster with inline endpoints (STATIC when every
    /// endpoint is an IP address, STRICT_DNS otherwise).
    pub eds_service_name: Option<String>,
    /// Informational: the default-priority `circuit_breakers` thresholds as the wire set them
    /// (`None` where Envoy's default applies), for views of what a control plane sent.
    /// [`cluster_to_wire`](crate::convert::cluster_to_wire) writes `config.circuit_breakers`.
    pub circuit_breakers: Option<CircuitBreakerThresholds>,
    /// Informational: `outlier_detection` as the wire set it (`None` where Envoy's default
    /// applies). [`cluster_to_wire`](crate::convert::cluster_to_wire) writes
    /// `config.outlier_detection`.
    pub outlier_detection: Option<OutlierDetectionSettings>,
}

/// `circuit_breakers.thresholds` at default priority, Envoy's names and meanings. `None` means
/// Envoy's default (1024 for each).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CircuitBreakerThresholds {
    /// Maximum connections to the cluster.
    pub max_connections: Option<u32>,
    /// Maximum requests waiting for a connection.
    pub max_pending_requests: Option<u32>,
    /// Maximum requests in flight.
    pub max_requests: Option<u32>,
    /// Maximum retries in flight.
    pub max_retries: Option<u32>,
}

/// `outlier_detection`, Envoy's names and meanings. `None` means Envoy's default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutlierDetectionSettings {
    /// Consecutive 5xx before ejection (Envoy default 5).
    pub consecutive_5xx: Option<u32>,
    /// Consecutive 502/503/504 before ejection (Envoy default 5).
    pub consecutive_gateway_failure: Option<u32>,
    /// Time between ejection sweeps (Envoy default 10 s).
    pub interval: Option<Duration>,
    /// Base ejection time, multiplied by the number of ejections (Envoy default 30 s).
    pub base_ejection_time: Option<Duration>,
    /// Cap on the ejection time (Envoy default 300 s).
    pub max_ejection_time: Option<Duration>,
    /// Maximum percentage of hosts ejected at once (Envoy default 10).
    pub max_ejection_percent: Option<u32>,
    /// Failure percentage at or above which a host is ejected (Envoy default 85).
    pub failure_percentage_threshold: Option<u32>,
    /// Minimum requests in an interval for failure-percentage ejection (Envoy default 50).
    pub failure_percentage_request_volume: Option<u32>,
}

/// A ClusterLoadAssignment resource.
#[derive(Clone, Debug)]
pub struct EndpointsResource {
    /// The resource name (the cluster's EDS service name).
    pub cluster_name: String,
    /// Its endpoints, with their weights and health (UNHEALTHY and TIMEOUT become
    /// `unhealthy`, DRAINING `draining`), priorities and localities.
    pub endpoints: Vec<EndpointConfig>,
    /// `policy.overprovisioning_factor`, in percent (Envoy's default 140 when unset): the
    /// cluster's `locality_lb.overprovisioning_factor`.
    pub overprovisioning_factor: u32,
}

/// Any one decoded resource.
// Decoded once per resource on the control path; boxing the cluster would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum DecodedResource {
    /// A listener.
    Listener(ListenerResource),
    /// A route configuration.
    Route(RouteResource),
    /// A cluster.
    Cluster(ClusterResource),
    /// A load assignment.
    Endpoints(EndpointsResource),
}

impl DecodedResource {
    /// The resource's name (what subscriptions and removals name).
    pub fn name(&self) -> &str {
        match self {
            DecodedResource::Listener(l) => &l.name,
            DecodedResource::Route(r) => &r.name,
            DecodedResource::Cluster(c) => &c.config.name,
            DecodedResource::Endpoints(e) => &e.cluster_name,
        }
    }
}
