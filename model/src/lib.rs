//! gofe-model: the mesh model every gofe part shares — listeners, routes, clusters, endpoints
//! and their policies (circuit breakers, outlier detection, retries) as plain data.
//!
//! ```text
//!   YAML file ──gofe_yaml::load──▶ ┐
//!   xDS resources ──gofe-proto───▶ ├─▶ ProxyConfig (this crate) ──▶ gofe-proxy (serves it)
//!   controller decisions ────────▶ ┘                             ──▶ gofe-proto (publishes it)
//! ```
//!
//! The types are what a proxy serves, whoever wrote them: a YAML file, an xDS control plane, or
//! the controller. They carry no source positions; [`validate`] checks everything serde cannot
//! (references, uniqueness, address and domain syntax) and names each problem by its field
//! path, and `gofe-yaml` turns those paths into file lines and columns when the value came from
//! a file. The `listeners` part accepts the shape gofe users already write (see the
//! repository's `examples/`); `clusters` use Envoy's field names where Envoy has the concept.
//!
//! This crate does not run anything, open sockets or know about YAML positions, protobuf or
//! hyper: the proxy serves these types, `gofe-proto` converts them to and from Envoy's
//! messages, the controller builds them.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use gofe_yaml::duration::parse as parse_duration;

pub mod access_log;
pub use access_log::AccessLogConfig;
pub mod fault;
pub use fault::{FaultConfig, FractionalPercent};
pub mod filter_chain;
pub use filter_chain::{CidrRange, FilterChainConfig, FilterChainMatchConfig, SourceType};
pub mod local_ratelimit;
pub mod schema;
pub use local_ratelimit::LocalRateLimitConfig;
pub mod mirror;
pub mod route;
pub use mirror::RequestMirrorPolicyConfig;
pub mod rbac;
pub use rbac::RbacConfig;
pub use route::{
    DirectResponseConfig, HeaderAppendAction, HeaderValueOptionConfig, RedirectConfig,
    RegexRewriteConfig,
};
pub mod tracing;
pub use tracing::TracingConfig;
pub mod upstream_tls;
pub use upstream_tls::UpstreamTlsConfig;

/// Default upstream request timeout per route (Envoy's default).
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);
/// Default upstream connect timeout per cluster (Envoy's default).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The whole proxy configuration file.
#[derive(Clone, Debug, PartialEq, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProxyConfig {
    /// Downstream listeners (sockets the proxy accepts on). Default: none.
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    /// Upstream clusters routes can name. Default: none.
    #[serde(default)]
    pub clusters: Vec<ClusterConfig>,
    /// The admin listener (`/metrics`, `/ready`, `/config_dump`). Default: none (no admin).
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// Where this proxy runs (Envoy's bootstrap `node.locality`; with xDS, the bootstrap's
    /// `node.locality` sets it): clusters with `locality_lb.failover_by_proximity` prefer
    /// endpoints near it. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<LocalityConfig>,
}

/// A downstream listener.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Name used in metrics and logs. Default: the address.
    #[serde(default)]
    pub name: Option<String>,
    /// Socket address to bind, `ip:port`.
    pub address: String,
    /// Application protocol: `"http"` (HTTP/1.1 and HTTP/2, routed by `filters`) or `"tcp"`
    /// (bytes copied both ways to the `tcp_proxy`'s cluster, Envoy's
    /// `envoy.filters.network.tcp_proxy`). Default `"http"`.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// TLS termination. When set, the listener speaks TLS and offers `h2` and `http/1.1` by ALPN;
    /// when absent it speaks cleartext HTTP/1.1 and HTTP/2 with prior knowledge (h2c).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// The filter chain of an `http` listener: exactly one `router` filter. A `tcp` listener
    /// has none. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<FilterConfig>,
    /// What a `tcp` listener proxies its connections to (required there, refused on `http`).
    /// Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_proxy: Option<TcpProxyConfig>,
    /// A capture listener (Envoy's `use_original_dst`): each accepted connection's original
    /// destination (before an iptables `REDIRECT`, read once at accept time with
    /// `SO_ORIGINAL_DST`) picks the listener that serves it: the `bind_to_port: false`
    /// listener at exactly that `ip:port`, else the one at `0.0.0.0:port` (`[::]:port` for
    /// IPv6), else this listener itself (typically a `tcp` passthrough to an `original_dst`
    /// cluster). Default `false`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub use_original_dst: bool,
    /// Whether the proxy binds the address (Envoy's `bind_to_port`). `false` makes a virtual
    /// listener: never bound, it serves only the connections a `use_original_dst` listener
    /// hands it (captured traffic whose original destination is its address). Default `true`.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub bind_to_port: bool,
    /// Most client connections open at once; more are closed as soon as accepted (counted in
    /// `gofe_downstream_connections_overflow_total`). Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Largest request header block, in KiB (Envoy's `max_request_headers_kb`); larger → 431.
    /// Default 60.
    #[serde(default = "default_max_request_headers_kb")]
    pub max_request_headers_kb: u32,
    /// Time a client has to send a request's headers, counted from the head's first byte (and
    /// for a new connection's first request, from the connection's start); a slower one is
    /// disconnected. An idle kept-alive connection is the `idle_timeout`'s business. `"0s"`
    /// disables it. Default 10 s.
    #[serde(
        default = "default_request_headers_timeout",
        with = "gofe_yaml::duration::text"
    )]
    #[schemars(with = "crate::schema::DurationText")]
    pub request_headers_timeout: Duration,
    /// How long a client connection may stay open with no request in flight before the proxy
    /// closes it (Envoy's `common_http_protocol_options.idle_timeout`): HTTP/2 connections get
    /// a GOAWAY, HTTP/1.1 connections are closed between requests. Checked every quarter of the
    /// timeout, so a connection goes after between 1 and 1.5 × this much idleness. `"0s"`
    /// disables it. Default 1 h.
    #[serde(
        default = "default_listener_idle_timeout",
        with = "gofe_yaml::duration::text"
    )]
    #[schemars(with = "crate::schema::DurationText")]
    pub idle_timeout: Duration,
    /// Access logs (the connection manager's `access_log` in Envoy): every request's line goes
    /// to each of them, off the request path (a full buffer drops lines and counts them in
    /// `gofe_access_log_dropped_total`). Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_log: Vec<AccessLogConfig>,
    /// Distributed tracing (the connection manager's `tracing` in Envoy, with its
    /// OpenTelemetry provider): W3C (or B3) context read and passed on, a span per request
    /// and per upstream attempt, exported over OTLP/HTTP off the request path (a full queue
    /// drops spans and counts them in `gofe_tracing_spans_dropped_total`). Default: none
    /// (a request pays one branch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingConfig>,
    /// Further filter chains (Envoy's `filter_chains`), each with its own protocol, TLS and
    /// filters, picked once per connection by its `filter_chain_match` in Envoy's order
    /// (destination port, destination IP, server name, transport protocol, application
    /// protocols, direct source IP, source type, source IP, source port; the most specific
    /// match wins at each step). The listener's own `protocol`, `tls`, `filters` and
    /// `tcp_proxy` are the chain used when none matches (Envoy's `default_filter_chain`); an
    /// `http` listener with `filter_chains` and no `filters` has none, and a connection no
    /// chain matches is closed (counted in `gofe_downstream_connections_no_filter_chain_total`).
    /// The other settings (limits, timeouts, access logs, tracing) are the listener's, for
    /// every chain. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filter_chains: Vec<FilterChainConfig>,
    /// Peek at each connection's first bytes for a TLS ClientHello, without consuming them
    /// (Envoy's `envoy.filters.listener.tls_inspector`): sets the transport protocol (`tls` or
    /// `raw_buffer`), the server name (SNI) and the application protocols (ALPN) that
    /// `filter_chains` match on. Without it every connection is `raw_buffer` with neither.
    /// Default `false`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub tls_inspector: bool,
    /// Peek at a plaintext connection's first bytes for HTTP (Envoy's
    /// `envoy.filters.listener.http_inspector`): sets its application protocol to `http/1.1`,
    /// `http/1.0` or `h2c` for `filter_chains` to match on. Default `false`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub http_inspector: bool,
    /// Authorization of each request by who sends it and what it asks (Envoy's
    /// `envoy.filters.http.rbac`, before the router): a denied request gets 403
    /// `RBAC: access denied`, counted in `gofe_rbac_denied_total`, its policy in the access
    /// log's `%RESPONSE_CODE_DETAILS%`. Default: none (every request passes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rbac: Option<RbacConfig>,
}

/// Default `max_request_headers_kb` of a listener.
pub const DEFAULT_MAX_REQUEST_HEADERS_KB: u32 = 60;
/// Default `request_headers_timeout` of a listener.
pub const DEFAULT_REQUEST_HEADERS_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `idle_timeout` of a listener's client connections.
pub const DEFAULT_LISTENER_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);
/// Default `healthy_panic_threshold` of a cluster, in percent.
pub const DEFAULT_PANIC_THRESHOLD: u32 = 50;
/// Default `idle_timeout` of a cluster's upstream connections.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

fn default_max_request_headers_kb() -> u32 {
    DEFAULT_MAX_REQUEST_HEADERS_KB
}

fn default_request_headers_timeout() -> Duration {
    DEFAULT_REQUEST_HEADERS_TIMEOUT
}

fn default_listener_idle_timeout() -> Duration {
    DEFAULT_LISTENER_IDLE_TIMEOUT
}

fn default_protocol() -> String {
    "http".to_owned()
}

fn default_true() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A `tcp` listener's proxying (Envoy's `envoy.filters.network.tcp_proxy`): each client
/// connection gets one upstream connection, and bytes are copied both ways until both sides
/// have closed (a side's end of stream is passed on as a half-close, so the other direction
/// keeps flowing). Exactly one of `cluster` or `weighted_clusters`; a cluster of type
/// `original_dst` makes a passthrough to each connection's original destination.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TcpProxyConfig {
    /// The label of the listener's `gofe_tcp_proxy_*` series (Envoy's `stat_prefix`).
    /// Default: the listener's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stat_prefix: Option<String>,
    /// Every connection to this cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Connections split across clusters by weight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weighted_clusters: Option<WeightedClustersConfig>,
    /// Close both connections after this long without a byte in either direction (checked
    /// every quarter of it). `"0s"` disables it. Default 1 h (Envoy's).
    #[serde(
        default = "default_tcp_idle_timeout",
        with = "gofe_yaml::duration::text",
        skip_serializing_if = "is_default_tcp_idle_timeout"
    )]
    #[schemars(with = "crate::schema::DurationText")]
    pub idle_timeout: Duration,
}

/// Default `idle_timeout` of a `tcp_proxy` (Envoy's).
pub const DEFAULT_TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

fn default_tcp_idle_timeout() -> Duration {
    DEFAULT_TCP_IDLE_TIMEOUT
}

fn is_default_tcp_idle_timeout(d: &Duration) -> bool {
    *d == DEFAULT_TCP_IDLE_TIMEOUT
}

/// TLS of a listener (Envoy's `DownstreamTlsContext`): its certificate files (PEM) and, with a
/// `validation_context`, client certificates.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Path of the PEM certificate chain, leaf first.
    pub certificate_chain: String,
    /// Path of the PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub private_key: String,
    /// The application protocols offered by ALPN, in order of preference: `"h2"` and
    /// `"http/1.1"` (Envoy's `common_tls_context.alpn_protocols`). Empty offers none: the
    /// client then speaks HTTP/1.1, or HTTP/2 with prior knowledge, which the listener detects
    /// either way. Default `["h2", "http/1.1"]`.
    #[serde(
        default = "default_alpn_protocols",
        skip_serializing_if = "is_default_alpn_protocols"
    )]
    pub alpn_protocols: Vec<String>,
    /// Client certificates (Envoy's `common_tls_context.validation_context`): a certificate a
    /// client presents must chain to `trusted_ca` and match `match_typed_subject_alt_names`,
    /// or the handshake fails. Default: none (no client certificate is asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_context: Option<Box<TlsValidationConfig>>,
    /// Refuse clients that present no certificate (Envoy's `require_client_certificate`).
    /// When `false`, a certificate is verified if presented but not required. Needs a
    /// `validation_context`. Default `false`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub require_client_certificate: bool,
}

/// How client certificates are verified (Envoy's `CertificateValidationContext`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsValidationConfig {
    /// The CA certificates (PEM) a client certificate must chain to.
    pub trusted_ca: DataSourceConfig,
    /// A client certificate must have a subject alternative name matching one of these.
    /// Default: none (any certificate from `trusted_ca`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_typed_subject_alt_names: Vec<SanMatcherConfig>,
}

/// Where some data comes from (Envoy's `DataSource`): exactly one field.
#[derive(Clone, Debug, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DataSourceConfig {
    /// A file's path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    /// The data itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline_string: Option<String>,
}

/// A condition on one kind of subject alternative name (Envoy's `SubjectAltNameMatcher`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SanMatcherConfig {
    /// Which names are compared.
    pub san_type: SanType,
    /// How they are compared (one name of the type must match).
    pub matcher: StringMatchConfig,
}

/// The kinds of subject alternative name gofe matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
pub enum SanType {
    /// URI names (SPIFFE ids).
    #[serde(rename = "URI")]
    Uri,
    /// DNS names.
    #[serde(rename = "DNS")]
    Dns,
}

/// The ALPN protocols a TLS listener offers by default.
pub const DEFAULT_ALPN_PROTOCOLS: [&str; 2] = ["h2", "http/1.1"];

fn default_alpn_protocols() -> Vec<String> {
    DEFAULT_ALPN_PROTOCOLS.map(String::from).to_vec()
}

fn is_default_alpn_protocols(p: &[String]) -> bool {
    p == DEFAULT_ALPN_PROTOCOLS
}

/// One filter of a listener's chain.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// The filter's type. Only `"router"` today.
    #[serde(rename = "type")]
    pub kind: String,
    /// The router's configuration.
    pub config: RouterConfig,
}

/// The router filter: virtual hosts and their routes.
#[derive(Clone, Debug, PartialEq, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// Virtual hosts, selected by the request's Host / `:authority`.
    #[serde(default)]
    pub virtual_hosts: Vec<VirtualHostConfig>,
    /// Headers added to each request this level routes, after those of more specific levels
    /// (see `most_specific_header_mutations_wins`). Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_add: Vec<HeaderValueOptionConfig>,
    /// Headers removed from each request this level routes (before this level adds any).
    /// Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_remove: Vec<String>,
    /// Headers added to each response of this level's routes (upstream or direct). Default:
    /// none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_add: Vec<HeaderValueOptionConfig>,
    /// Headers removed from each response of this level's routes. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_remove: Vec<String>,
    /// Evaluate header mutations from the least specific level (this one) to the most
    /// specific (the route), so that the route's win; by default the route's are evaluated
    /// first and this level's last, as in Envoy. Default `false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub most_specific_header_mutations_wins: bool,
}

/// A virtual host: a set of domains and the routes for them.
#[derive(Clone, Debug, PartialEq, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VirtualHostConfig {
    /// Name used in logs and `/config_dump`.
    pub name: String,
    /// Domains this host serves, read as Envoy reads them: `*` alone matches any host; a
    /// leading `*` makes a suffix wildcard (`*.example.com`) and a trailing one a prefix
    /// wildcard (`api.*`), each matching at least one character; any other domain is exact,
    /// including one with a `*` inside (`db.ingress.*:8080` matches only itself). Matching
    /// ignores case. A domain with a port (`svc:9080`, `*.svc:9080`) needs a host with that
    /// port, as in Envoy; a domain without one matches the host whatever its port (Envoy's
    /// `ignore_port_in_host_matching`). Most specific wins: exact (the host as sent, then
    /// without its port), then the longest suffix wildcard, then the longest prefix wildcard,
    /// then `*`. Each domain appears once per router.
    pub domains: Vec<String>,
    /// Routes, tried in order; the first that matches wins.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// Fault injection for the host's routes that have no `fault` of their own (Envoy's fault
    /// filter configured on the virtual host: the most specific level wins, the two are not
    /// merged). A route opts out with a fault that injects nothing (`fault: {}`). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultConfig>,
    /// Local rate limiting for the host's routes that have no `local_ratelimit` of their own:
    /// **one** token bucket shared by all of those routes, as Envoy's virtual-host
    /// `LocalRateLimit` is one limiter (a route's own limit has its own bucket). A route opts
    /// out with a limit that looks at nothing (`filter_enabled` 0). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_ratelimit: Option<LocalRateLimitConfig>,
    /// Headers added to each request this level routes, after those of more specific levels
    /// (see `most_specific_header_mutations_wins`). Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_add: Vec<HeaderValueOptionConfig>,
    /// Headers removed from each request this level routes (before this level adds any).
    /// Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_remove: Vec<String>,
    /// Headers added to each response of this level's routes (upstream or direct). Default:
    /// none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_add: Vec<HeaderValueOptionConfig>,
    /// Headers removed from each response of this level's routes. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_remove: Vec<String>,
}

/// A route: a match and what to do with requests that match.
#[derive(Clone, Debug, PartialEq, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The route's name (Envoy's `Route.name`), for logs: what `%ROUTE_NAME%` writes.
    /// Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// What requests this route takes.
    #[serde(rename = "match")]
    pub matcher: RouteMatchConfig,
    /// Where they go. Exactly one of a `route` with a cluster, `redirect` or
    /// `direct_response`.
    #[serde(
        default = "RouteActionConfig::none",
        skip_serializing_if = "RouteActionConfig::is_none"
    )]
    pub route: RouteActionConfig,
    /// Answer with a redirect instead (Envoy's `Route.redirect`). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<RedirectConfig>,
    /// Answer with this response instead (Envoy's `Route.direct_response`). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponseConfig>,
    /// Fault injection (Envoy's HTTP fault filter configured for this route): delays and
    /// aborts for a fraction of its requests. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultConfig>,
    /// Local rate limiting (Envoy's `local_ratelimit` filter configured for this route): a
    /// token bucket shared by all of the route's requests, after any fault. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_ratelimit: Option<LocalRateLimitConfig>,
    /// Headers added to each request this level routes, after those of more specific levels
    /// (see `most_specific_header_mutations_wins`). Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_add: Vec<HeaderValueOptionConfig>,
    /// Headers removed from each request this level routes (before this level adds any).
    /// Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_headers_to_remove: Vec<String>,
    /// Headers added to each response of this level's routes (upstream or direct). Default:
    /// none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_add: Vec<HeaderValueOptionConfig>,
    /// Headers removed from each response of this level's routes. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub response_headers_to_remove: Vec<String>,
}

/// A route's match: exactly one of `prefix`, `path`, `safe_regex` or `path_separated_prefix`,
/// plus optional header and query parameter conditions.
#[derive(Clone, Debug, PartialEq, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteMatchConfig {
    /// Path prefix (case-sensitive). `"/"` matches everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Exact path (case-sensitive, query string excluded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A regular expression the whole path (query string excluded) matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safe_regex: Option<String>,
    /// A prefix that ends at a path segment: `/api` matches `/api`, `/api/x`, `/api?q`, not
    /// `/apix`. Starts with `/`, does not end with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_separated_prefix: Option<String>,
    /// Header conditions; all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatcherConfig>,
    /// Query parameter conditions (on the raw, undecoded value of the first parameter of that
    /// name); all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_parameters: Vec<QueryParameterMatcherConfig>,
    /// Cookie conditions (on the `Cookie` headers' first cookie of that name, its quotes
    /// removed); all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cookies: Vec<CookieMatcherConfig>,
}

/// A condition on one cookie (Envoy's `CookieMatcher`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CookieMatcherConfig {
    /// The cookie's name (case-sensitive).
    pub name: String,
    /// How its value is compared; a missing cookie does not match.
    pub string_match: StringMatchConfig,
    /// Invert the result (a missing cookie then matches). Default `false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invert_match: bool,
}

/// A condition on one query parameter (Envoy's `QueryParameterMatcher`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryParameterMatcherConfig {
    /// The parameter's name (case-sensitive).
    pub name: String,
    /// Compare the value. Exactly one of `string_match` or `present_match`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string_match: Option<StringMatchConfig>,
    /// `true`: the parameter must be present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present_match: Option<bool>,
}

/// A range of integers, `start` included, `end` excluded (Envoy's `Int64Range`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Int64RangeConfig {
    /// The smallest value in the range.
    pub start: i64,
    /// The first value past the range.
    pub end: i64,
}

/// A condition on one request header (Envoy's `HeaderMatcher`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatcherConfig {
    /// Header name (case-insensitive).
    pub name: String,
    /// Compare the value. Exactly one of `string_match`, `present_match` or `range_match`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string_match: Option<StringMatchConfig>,
    /// `true`: the header must be present; `false`: it must be absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present_match: Option<bool>,
    /// The value is an integer in this range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_match: Option<Int64RangeConfig>,
    /// Invert the result. Default `false`.
    #[serde(default)]
    pub invert_match: bool,
}

/// How a header value is compared (Envoy's `StringMatcher`): exactly one field.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, Default, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct StringMatchConfig {
    /// The value equals this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// The value starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// The value ends with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    /// The value contains this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
    /// A regular expression the whole value matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safe_regex: Option<String>,
    /// Compare ASCII letters without case (not for `safe_regex`, as in Envoy). Default
    /// `false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ignore_case: bool,
}

/// A route's action: exactly one of `cluster` or `weighted_clusters`.
#[derive(Clone, Debug, PartialEq, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteActionConfig {
    /// Send every request to this cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Split requests across clusters by weight (canary releases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weighted_clusters: Option<WeightedClustersConfig>,
    /// Time allowed for the upstream to start its response (headers); past it the client gets
    /// 504. `"0s"` disables it. Default 15 s.
    #[serde(
        default = "default_route_timeout",
        with = "gofe_yaml::duration::text",
        skip_serializing_if = "is_default_route_timeout"
    )]
    #[schemars(with = "crate::schema::DurationText")]
    pub timeout: Duration,
    /// Retries of failed attempts. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_policy: Option<RetryPolicyConfig>,
    /// Largest request body accepted, in bytes; larger → 413. Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_bytes: Option<u64>,
    /// Copies of the route's requests to shadow clusters (Envoy's `request_mirror_policies`),
    /// fire and forget: see [`mirror`]. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_mirror_policies: Vec<RequestMirrorPolicyConfig>,
    /// Replaces the part of the path the route's `prefix`, `path` or `path_separated_prefix`
    /// matched. At most one of `prefix_rewrite` or `regex_rewrite`. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_rewrite: Option<String>,
    /// Rewrites the path (query string excluded) with a regular expression. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex_rewrite: Option<RegexRewriteConfig>,
    /// The `Host` / `:authority` the upstream gets. At most one of `host_rewrite_literal` or
    /// `host_rewrite_header`. Default: the request's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_rewrite_literal: Option<String>,
    /// The upstream gets the value of this request header as its host, when the request has
    /// it. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_rewrite_header: Option<String>,
}

impl RouteActionConfig {
    /// No action: what a redirect or direct-response route has as `route`.
    pub fn none() -> Self {
        RouteActionConfig {
            timeout: DEFAULT_ROUTE_TIMEOUT,
            ..Default::default()
        }
    }

    /// Whether this is [`RouteActionConfig::none`].
    pub fn is_none(&self) -> bool {
        *self == Self::none()
    }
}

/// When and how often a route retries (Envoy's `RetryPolicy`).
///
/// Only requests without a body are retried: bodies stream through and are not kept for a
/// replay. Each retry goes to a different endpoint when the cluster has one, after a jittered
/// backoff (25 ms base), and is refused when the cluster's retry limit or budget is spent.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicyConfig {
    /// Comma-separated conditions: `5xx` (any 5xx, reset, connect failure or per-try timeout),
    /// `gateway-error` (502, 503, 504, reset, connect failure, per-try timeout),
    /// `connect-failure`, `reset`. Default `"gateway-error"`.
    #[serde(default = "default_retry_on")]
    pub retry_on: String,
    /// Retries after the first attempt. Default 1.
    #[serde(default = "default_num_retries")]
    pub num_retries: u32,
    /// Time limit of each attempt (the route `timeout` still bounds them all). Default: none.
    #[serde(
        default,
        with = "gofe_yaml::duration::optional_text",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<crate::schema::DurationText>")]
    pub per_try_timeout: Option<Duration>,
}

fn default_retry_on() -> String {
    "gateway-error".to_owned()
}

fn default_num_retries() -> u32 {
    1
}

fn default_route_timeout() -> Duration {
    DEFAULT_ROUTE_TIMEOUT
}

fn is_default_route_timeout(d: &Duration) -> bool {
    *d == DEFAULT_ROUTE_TIMEOUT
}

/// A weighted split across clusters.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WeightedClustersConfig {
    /// The clusters and their weights; at least one weight must be non-zero.
    pub clusters: Vec<ClusterWeightConfig>,
}

/// One cluster of a weighted split.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterWeightConfig {
    /// The cluster's name.
    pub name: String,
    /// Its share, relative to the others. 0 sends it nothing.
    pub weight: u32,
}

/// The parsed `retry_on` conditions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// Any 5xx response, reset, connect failure or per-try timeout.
    pub any_5xx: bool,
    /// 502, 503, 504, reset, connect failure, per-try timeout.
    pub gateway_error: bool,
    /// A connection could not be opened.
    pub connect_failure: bool,
    /// The upstream reset or broke the connection before a response.
    pub reset: bool,
}

impl RetryOn {
    /// Parses `"5xx,gateway-error,connect-failure,reset"`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut on = RetryOn::default();
        for token in text.split(',').map(str::trim) {
            match token {
                "5xx" => on.any_5xx = true,
                "gateway-error" => on.gateway_error = true,
                "connect-failure" => on.connect_failure = true,
                "reset" => on.reset = true,
                other => {
                    return Err(format!(
                        "unknown retry condition {other:?} (supported: 5xx, gateway-error, connect-failure, reset)"
                    ))
                }
            }
        }
        Ok(on)
    }
}

/// Load-balancing policy of a cluster (Envoy's `lb_policy`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum LbPolicy {
    /// Smooth weighted round robin. The default.
    #[default]
    #[serde(alias = "ROUND_ROBIN")]
    RoundRobin,
    /// Weighted least-request with power-of-two choices.
    #[serde(alias = "LEAST_REQUEST")]
    LeastRequest,
}

/// How a cluster finds its endpoints.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum DiscoveryType {
    /// The configured (or EDS-delivered) endpoints. The default.
    #[default]
    #[serde(alias = "STATIC")]
    Static,
    /// Each connection's original destination (Envoy's `ORIGINAL_DST`, Istio's
    /// `PassthroughCluster`): captured traffic to unknown destinations passes through.
    #[serde(alias = "ORIGINAL_DST")]
    OriginalDst,
}

impl DiscoveryType {
    fn is_static(&self) -> bool {
        *self == DiscoveryType::Static
    }
}

/// An upstream cluster.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Unique name, referenced by routes.
    pub name: String,
    /// How the cluster finds its endpoints (Envoy's cluster `type`): `static` (the
    /// `endpoints` list, or EDS) or `original_dst` (no endpoints: each connection goes to its
    /// own original destination; only a `tcp_proxy` may use it). Default `static`.
    #[serde(
        default,
        rename = "type",
        skip_serializing_if = "DiscoveryType::is_static"
    )]
    pub discovery: DiscoveryType,
    /// Balancing policy. Default `round_robin`.
    #[serde(default)]
    pub lb_policy: LbPolicy,
    /// Time allowed to open a TCP connection to an endpoint. Default 5 s.
    #[serde(
        default = "default_connect_timeout",
        with = "gofe_yaml::duration::text"
    )]
    #[schemars(with = "crate::schema::DurationText")]
    pub connect_timeout: Duration,
    /// When present, upstream connections speak HTTP/2 (prior knowledge); otherwise HTTP/1.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_protocol_options: Option<Http2ProtocolOptions>,
    /// The endpoints.
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
    /// Overload limits; over one, a request fails fast with 503. Envoy's defaults.
    #[serde(default)]
    pub circuit_breakers: CircuitBreakersConfig,
    /// Passive outlier detection (ejecting endpoints that fail). Default: off; an empty
    /// `outlier_detection: {}` turns it on with the defaults of its fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetectionConfig>,
    /// Below this percentage of healthy endpoints the cluster is in panic mode and balances
    /// over all endpoints, healthy or not (Envoy's `healthy_panic_threshold`). 0 disables
    /// panic mode. Default 50.
    #[serde(default = "default_panic_threshold", alias = "health_panic_threshold")]
    pub healthy_panic_threshold: u32,
    /// How long an idle upstream connection stays in the pool. Default 60 s.
    #[serde(default = "default_idle_timeout", with = "gofe_yaml::duration::text")]
    #[schemars(with = "crate::schema::DurationText")]
    pub idle_timeout: Duration,
    /// Local rate limiting of the cluster (Envoy's `local_ratelimit` as an upstream HTTP filter
    /// of the cluster): one token bucket for every request sent to it, whatever route sent it,
    /// consulted per upstream attempt as Envoy's upstream filters are. A first attempt finding
    /// the bucket empty is answered with the limit's `status` and never reaches an endpoint; a
    /// retry finding it empty is not made (the last attempt's answer stands). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_ratelimit: Option<LocalRateLimitConfig>,
    /// Priority and locality balancing over the endpoints' `priority` and `locality` (Envoy's
    /// priority levels, overprovisioning factor and locality-weighted balancing). Default:
    /// overprovisioning factor 140, no locality weighting, configured priorities.
    #[serde(default, skip_serializing_if = "LocalityLbConfig::is_default")]
    pub locality_lb: LocalityLbConfig,
    /// TLS to the endpoints (Envoy's `UpstreamTlsContext` transport socket). Default: none,
    /// plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTlsConfig>,
}

/// Default `locality_lb.overprovisioning_factor` of a cluster, in percent (Envoy's 1.4).
pub const DEFAULT_OVERPROVISIONING_FACTOR: u32 = 140;

/// How a cluster spreads requests over its endpoints' priorities and localities.
///
/// Requests go to the most preferred priority (0) while it is healthy enough. A priority's
/// health is its healthy share of endpoints (configured unhealthy, ejected by the controller or
/// by outlier detection all count as unhealthy; draining ones are not counted at all) times
/// `overprovisioning_factor`, capped at 100 %; what the preferred priorities cannot take spills
/// to the next ones, exactly as Envoy's priority load (`gofe_core::balance::priority_load`).
/// With `overprovisioning_factor: 140` a priority keeps all its traffic until fewer than 72 %
/// of its endpoints are healthy.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LocalityLbConfig {
    /// Percent by which a priority's (and, with `locality_weighted`, a locality's) healthy
    /// share is multiplied before traffic spills over (EDS `policy.overprovisioning_factor`).
    /// At least 1. Default 140.
    #[serde(default = "default_overprovisioning_factor")]
    pub overprovisioning_factor: u32,
    /// Within a priority, pick a locality first, by its weight (`locality_weight`, default
    /// the sum of its endpoints' weights) times its healthy share × `overprovisioning_factor`
    /// (capped at 1), then an endpoint of it (Envoy's `locality_weighted_lb_config`). Default
    /// false: endpoints are balanced by their own weights whatever their locality.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub locality_weighted: bool,
    /// Ignore the endpoints' configured `priority` and give each one by proximity to the
    /// proxy's own `locality` (Istio's locality failover): same region and zone → 0, same
    /// region → 1, anything else (or an endpoint without locality) → 2. Computed by the proxy
    /// when it builds the cluster, so one configuration serves proxies in every zone. Needs
    /// the proxy's `locality` (the top-level `locality`, or the xDS bootstrap's
    /// `node.locality`); a proxy without one keeps the configured priorities. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failover_by_proximity: bool,
}

impl Default for LocalityLbConfig {
    fn default() -> Self {
        LocalityLbConfig {
            overprovisioning_factor: DEFAULT_OVERPROVISIONING_FACTOR,
            locality_weighted: false,
            failover_by_proximity: false,
        }
    }
}

impl LocalityLbConfig {
    /// True when every field has its default.
    pub fn is_default(&self) -> bool {
        *self == LocalityLbConfig::default()
    }
}

fn default_overprovisioning_factor() -> u32 {
    DEFAULT_OVERPROVISIONING_FACTOR
}

/// Where an endpoint (or a proxy) runs: Envoy's `core.Locality`. Kubernetes discovery fills
/// `region` and `zone` from `topology.kubernetes.io/region` and `/zone`.
#[derive(
    Clone,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Deserialize,
    Serialize,
    schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct LocalityConfig {
    /// Region (`topology.kubernetes.io/region`). Default empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub region: String,
    /// Zone within the region (`topology.kubernetes.io/zone`). Default empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub zone: String,
    /// Sub-zone within the zone (for example a rack). Default empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sub_zone: String,
}

impl LocalityConfig {
    /// True when region, zone and sub-zone are all empty.
    pub fn is_empty(&self) -> bool {
        self.region.is_empty() && self.zone.is_empty() && self.sub_zone.is_empty()
    }
}

impl std::fmt::Display for LocalityConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.region, self.zone, self.sub_zone)
    }
}

fn default_connect_timeout() -> Duration {
    DEFAULT_CONNECT_TIMEOUT
}

fn default_panic_threshold() -> u32 {
    DEFAULT_PANIC_THRESHOLD
}

fn default_idle_timeout() -> Duration {
    DEFAULT_IDLE_TIMEOUT
}

/// A cluster's overload limits (Envoy's `circuit_breakers` thresholds, default priority).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakersConfig {
    /// Most upstream connections (HTTP/1.1: also most requests being sent at once; more wait
    /// as pending). Default 1024.
    #[serde(default = "default_limit")]
    pub max_connections: u32,
    /// Most requests waiting for a connection. Default 1024.
    #[serde(default = "default_limit")]
    pub max_pending_requests: u32,
    /// Most requests in flight to the cluster. Default 1024.
    #[serde(default = "default_limit")]
    pub max_requests: u32,
    /// Most retries in flight to the cluster. Default 3. Ignored when `retry_budget` is set.
    #[serde(default = "default_max_retries")]
    pub max_retries: u32,
    /// Retries in flight limited to a share of the requests in flight. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudgetConfig>,
}

impl Default for CircuitBreakersConfig {
    fn default() -> Self {
        CircuitBreakersConfig {
            max_connections: default_limit(),
            max_pending_requests: default_limit(),
            max_requests: default_limit(),
            max_retries: default_max_retries(),
            retry_budget: None,
        }
    }
}

fn default_limit() -> u32 {
    1024
}

fn default_max_retries() -> u32 {
    3
}

/// Retries allowed in flight: `budget_percent` of the requests in flight, but at least
/// `min_retry_concurrency` (Envoy's `RetryBudget`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetConfig {
    /// Percent of active requests. Default 20.
    #[serde(default = "default_budget_percent")]
    pub budget_percent: f64,
    /// Floor on concurrent retries. Default 3.
    #[serde(default = "default_min_retry_concurrency")]
    pub min_retry_concurrency: u32,
}

fn default_budget_percent() -> f64 {
    20.0
}

fn default_min_retry_concurrency() -> u32 {
    3
}

/// Passive outlier detection of a cluster (Envoy's `OutlierDetection` names).
///
/// Each endpoint is a breaker: closed → open (ejected for `base_ejection_time × times ejected`,
/// at most `max_ejection_time`) → half-open (up to `half_open_trial_requests` trial requests in
/// flight) → closed on a successful trial, open again for longer on a failed one. The defaults
/// are the familiar breaker profile: trip at ≥ 50% errors once ≥ 20 requests were seen in the
/// window, try again after 5 s.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetectionConfig {
    /// Eject after this many 5xx in a row (connect failures, resets and timeouts count). 0
    /// disables. Default 5.
    #[serde(default = "default_consecutive_5xx")]
    pub consecutive_5xx: u32,
    /// Eject after this many gateway failures (502, 503, 504, connect failure, reset, timeout)
    /// in a row. 0 disables. Default 0.
    #[serde(default)]
    pub consecutive_gateway_failure: u32,
    /// The failure-percentage window: counts restart every interval, and ejection counts decay
    /// by one per interval an endpoint stays healthy. Default 10 s.
    #[serde(default = "default_interval", with = "gofe_yaml::duration::text")]
    #[schemars(with = "crate::schema::DurationText")]
    pub interval: Duration,
    /// Length of a first ejection. Default 5 s.
    #[serde(default = "default_base_ejection", with = "gofe_yaml::duration::text")]
    #[schemars(with = "crate::schema::DurationText")]
    pub base_ejection_time: Duration,
    /// Longest ejection. Default 300 s.
    #[serde(default = "default_max_ejection", with = "gofe_yaml::duration::text")]
    #[schemars(with = "crate::schema::DurationText")]
    pub max_ejection_time: Duration,
    /// Most endpoints ejected at once, in percent of the cluster (at least one when non-zero).
    /// Default 10.
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
    /// Eject when at least this percentage of a window's requests failed. Over 100 disables.
    /// Default 50.
    #[serde(default = "default_failure_percentage")]
    pub failure_percentage_threshold: u32,
    /// …once the window holds at least this many requests. Default 20.
    #[serde(default = "default_request_volume")]
    pub failure_percentage_request_volume: u32,
    /// Trial requests in flight at once while half-open. Default 1.
    #[serde(default = "default_trials")]
    pub half_open_trial_requests: u32,
}

impl Default for OutlierDetectionConfig {
    fn default() -> Self {
        OutlierDetectionConfig {
            consecutive_5xx: default_consecutive_5xx(),
            consecutive_gateway_failure: 0,
            interval: default_interval(),
            base_ejection_time: default_base_ejection(),
            max_ejection_time: default_max_ejection(),
            max_ejection_percent: default_max_ejection_percent(),
            failure_percentage_threshold: default_failure_percentage(),
            failure_percentage_request_volume: default_request_volume(),
            half_open_trial_requests: default_trials(),
        }
    }
}

fn default_consecutive_5xx() -> u32 {
    5
}
fn default_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_base_ejection() -> Duration {
    Duration::from_secs(5)
}
fn default_max_ejection() -> Duration {
    Duration::from_secs(300)
}
fn default_max_ejection_percent() -> u32 {
    10
}
fn default_failure_percentage() -> u32 {
    50
}
fn default_request_volume() -> u32 {
    20
}
fn default_trials() -> u32 {
    1
}

/// Upstream HTTP/2 options (none yet: presence alone selects HTTP/2).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Http2ProtocolOptions {}

/// One upstream endpoint.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// `host:port`, where host is an IP address or a DNS name.
    pub address: String,
    /// Load-balancing weight. 0 drains the endpoint (no new requests). Default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Health as a control plane sees it (EDS `health_status`). Default `healthy`.
    #[serde(default, skip_serializing_if = "HealthStatus::is_healthy")]
    pub health_status: HealthStatus,
    /// Where the endpoint runs (EDS `LocalityLbEndpoints.locality`). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<LocalityConfig>,
    /// Priority level, 0 the most preferred (EDS `LocalityLbEndpoints.priority`): a priority
    /// takes traffic only when the ones before it are not healthy enough (see the cluster's
    /// `locality_lb`). The priorities in use must be 0, 1, 2, … without gaps. Default 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: u32,
    /// The weight of the endpoint's locality for locality-weighted balancing (EDS
    /// `LocalityLbEndpoints.load_balancing_weight`): endpoints of one locality and priority
    /// give the same value, or none. Needs a `locality`. At least 1. Default: the sum of the
    /// weights of the locality's endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_weight: Option<u32>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl EndpointConfig {
    /// An endpoint at `address` with weight `weight`, healthy, without locality, at priority 0.
    pub fn new(address: impl Into<String>, weight: u32) -> Self {
        EndpointConfig {
            address: address.into(),
            weight,
            health_status: HealthStatus::Healthy,
            locality: None,
            priority: 0,
            locality_weight: None,
        }
    }
}

/// An endpoint's health as set by configuration (the controller's ejections arrive this way).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Takes traffic (subject to passive outlier detection).
    #[default]
    #[serde(alias = "HEALTHY", alias = "UNKNOWN", alias = "unknown")]
    Healthy,
    /// Takes no traffic, and counts as unhealthy for panic mode.
    #[serde(alias = "UNHEALTHY")]
    Unhealthy,
    /// Takes no new traffic while it drains; not counted as unhealthy.
    #[serde(alias = "DRAINING")]
    Draining,
}

impl HealthStatus {
    fn is_healthy(&self) -> bool {
        *self == HealthStatus::Healthy
    }
}

fn default_weight() -> u32 {
    1
}

/// The admin listener.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Socket address to bind, `ip:port`. Keep it on loopback or a private network.
    pub address: String,
}

// === loading ===

pub use gofe_yaml::{ConfigError, Problem};

/// Reads and validates a proxy configuration file: every problem, each with its file, line,
/// column and field.
pub fn load(path: &Path) -> Result<ProxyConfig, ConfigError> {
    gofe_yaml::load(path)
}

/// Parses and validates proxy configuration YAML; `source_name` names it in errors.
pub fn parse(source_name: &str, text: &str) -> Result<ProxyConfig, ConfigError> {
    gofe_yaml::parse(source_name, text)
}

// === validation ===

use gofe_yaml::{Validate, Validator};

/// Checks everything serde cannot (references, uniqueness, address and domain syntax) on a
/// configuration built in code or converted from xDS: every problem, with field paths but no
/// file places.
pub fn validate(config: &ProxyConfig) -> Vec<Problem> {
    let mut v = Validator::default();
    config.validate(&mut v);
    v.finish()
}

impl Validate for ProxyConfig {
    fn validate(&self, v: &mut Validator) {
        validate_into(self, v, true);
    }
}

impl ProxyConfig {
    /// Checks a configuration that is only part of what the proxy will serve, such as a
    /// bootstrap's static resources: its routes may name clusters that arrive later over xDS
    /// (as Envoy allows), so references to clusters it does not define are not problems here.
    pub fn validate_partial(&self, v: &mut Validator) {
        validate_into(self, v, false);
    }
}

fn validate_into(config: &ProxyConfig, v: &mut Validator, check_refs: bool) {
    let mut cluster_names: HashMap<&str, usize> = HashMap::new();
    for (ci, cluster) in config.clusters.iter().enumerate() {
        let base = format!("clusters[{ci}]");
        if cluster.name.is_empty() {
            v.error(format!("{base}.name"), "must not be empty");
        } else if let Some(first) = cluster_names.insert(&cluster.name, ci) {
            v.error(
                format!("{base}.name"),
                format!(
                    "duplicate cluster name {:?} (also clusters[{first}])",
                    cluster.name
                ),
            );
        }
        check_route_filters(v, &None, &cluster.local_ratelimit, &base);
        if cluster.discovery == DiscoveryType::OriginalDst {
            if !cluster.endpoints.is_empty() {
                v.error(
                    format!("{base}.endpoints"),
                    "an original_dst cluster has no endpoints (each connection goes to its original destination)",
                );
            }
            if cluster.local_ratelimit.is_some() {
                v.error(
                    format!("{base}.local_ratelimit"),
                    "not supported on an original_dst cluster (only tcp_proxy listeners use one)",
                );
            }
        }
        if let Some(od) = &cluster.outlier_detection {
            if od.max_ejection_percent > 100 {
                v.error(
                    format!("{base}.outlier_detection.max_ejection_percent"),
                    "must be at most 100",
                );
            }
            if od.interval.is_zero() {
                v.error(
                    format!("{base}.outlier_detection.interval"),
                    "must be longer than 0s",
                );
            }
        }
        if cluster.healthy_panic_threshold > 100 {
            v.error(
                format!("{base}.healthy_panic_threshold"),
                "must be at most 100",
            );
        }
        if let Some(budget) = &cluster.circuit_breakers.retry_budget {
            if !(0.0..=100.0).contains(&budget.budget_percent) {
                v.error(
                    format!("{base}.circuit_breakers.retry_budget.budget_percent"),
                    "must be between 0 and 100",
                );
            }
        }
        let mut seen = HashSet::new();
        for (ei, ep) in cluster.endpoints.iter().enumerate() {
            let field = format!("{base}.endpoints[{ei}].address");
            if let Err(msg) = check_endpoint_address(&ep.address) {
                v.error(field, msg);
            } else if !seen.insert(ep.address.to_ascii_lowercase()) {
                v.error(
                    field,
                    format!("duplicate endpoint {:?} in this cluster", ep.address),
                );
            }
        }
        check_localities(v, cluster, &base);
        if let Some(tls) = &cluster.tls {
            tls.check(
                v,
                &format!("{base}.tls"),
                cluster.http2_protocol_options.is_some(),
            );
        }
    }

    let mut addresses: HashMap<SocketAddr, usize> = HashMap::new();
    let mut listener_names: HashMap<&str, usize> = HashMap::new();
    for (li, listener) in config.listeners.iter().enumerate() {
        let base = format!("listeners[{li}]");
        match listener.address.parse::<SocketAddr>() {
            Err(_) => v.error(
                format!("{base}.address"),
                format!(
                    "invalid socket address {:?} (expected ip:port, e.g. \"0.0.0.0:8080\")",
                    listener.address
                ),
            ),
            Ok(addr) => {
                if let Some(first) = addresses.insert(addr, li) {
                    v.error(
                        format!("{base}.address"),
                        format!("address {addr} is already used by listeners[{first}]"),
                    );
                }
            }
        }
        if let Some(name) = &listener.name {
            if let Some(first) = listener_names.insert(name, li) {
                v.error(
                    format!("{base}.name"),
                    format!(
                        "duplicate listener name {:?} (also listeners[{first}])",
                        name
                    ),
                );
            }
        }
        check_capture(v, listener, &base);
        for (ai, log) in listener.access_log.iter().enumerate() {
            for (field, message) in access_log::check(log) {
                v.error(format!("{base}.access_log[{ai}].{field}"), message);
            }
        }
        if let Some(t) = &listener.tracing {
            for (field, message) in tracing::check(t) {
                v.error(format!("{base}.tracing.{field}"), message);
            }
        }
        if let Some(r) = &listener.rbac {
            if listener.protocol == "tcp" {
                v.error(
                    format!("{base}.rbac"),
                    "an HTTP filter: not supported on a tcp listener",
                );
            }
            for (field, message) in rbac::check(r) {
                v.error(format!("{base}.rbac.{field}"), message);
            }
        }
        if listener.has_default_chain() {
            check_chain(v, config, listener, &base, check_refs, &cluster_names);
        }
        filter_chain::check_filter_chains(v, config, listener, &base, check_refs, &cluster_names);
    }

    if let Some(admin) = &config.admin {
        if let Ok(addr) = admin.address.parse::<SocketAddr>() {
            // Port 0 asks the OS for a free port: it cannot collide.
            if let Some(li) = addresses.get(&addr).filter(|_| addr.port() != 0) {
                v.error(
                    "admin.address",
                    format!("address {addr} is already used by listeners[{li}]"),
                );
            }
        } else {
            v.error(
                "admin.address",
                format!(
                    "invalid socket address {:?} (expected ip:port, e.g. \"127.0.0.1:9901\")",
                    admin.address
                ),
            );
        }
    }
}

/// The checks of one filter chain (the listener's own, or one of its `filter_chains` seen
/// as a listener by [`ListenerConfig::chain_view`]), named under `base`.
fn check_chain(
    v: &mut Validator,
    config: &ProxyConfig,
    listener: &ListenerConfig,
    base: &str,
    check_refs: bool,
    cluster_names: &HashMap<&str, usize>,
) {
    let tcp = listener.protocol == "tcp";
    if listener.protocol != "http" && !tcp {
        v.error(
            format!("{base}.protocol"),
            format!(
                "unsupported protocol {:?} (supported: \"http\", \"tcp\")",
                listener.protocol
            ),
        );
    }
    if let Some(tls) = &listener.tls {
        check_alpn(v, tls, &format!("{base}.tls"));
        check_tls(v, tls, &format!("{base}.tls"));
    }
    if tcp {
        check_tcp_listener(
            v,
            config,
            listener,
            base,
            check_refs.then_some(cluster_names),
        );
    }
    if !tcp && listener.filters.len() != 1 {
        v.error(
            format!("{base}.filters"),
            format!(
                "expected exactly one filter (a router), found {}",
                listener.filters.len()
            ),
        );
    }
    for (fi, filter) in listener.filters.iter().enumerate() {
        let fbase = format!("{base}.filters[{fi}]");
        if filter.kind != "router" {
            v.error(
                format!("{fbase}.type"),
                format!(
                    "unknown filter type {:?} (supported: \"router\")",
                    filter.kind
                ),
            );
        }
        validate_router(
            v,
            &filter.config,
            &format!("{fbase}.config"),
            check_refs.then_some(cluster_names),
        );
        if check_refs {
            check_http_refs_not_original_dst(v, config, &filter.config, &fbase);
        }
    }
}

// === capture and tcp listeners ===

/// A TLS listener offers only the protocols it speaks, each once.
fn check_alpn(v: &mut Validator, tls: &TlsConfig, base: &str) {
    for (i, p) in tls.alpn_protocols.iter().enumerate() {
        let field = format!("{base}.alpn_protocols[{i}]");
        if !DEFAULT_ALPN_PROTOCOLS.contains(&p.as_str()) {
            v.error(
                field,
                format!("unsupported protocol {p:?} (supported: \"h2\", \"http/1.1\")"),
            );
        } else if tls.alpn_protocols[..i].contains(p) {
            v.error(field, format!("{p:?} is listed twice"));
        }
    }
}

/// `use_original_dst` and `bind_to_port` of a listener.
fn check_capture(v: &mut Validator, listener: &ListenerConfig, base: &str) {
    if listener.use_original_dst && !listener.bind_to_port {
        v.error(
            format!("{base}.bind_to_port"),
            "a use_original_dst listener must be bound (it accepts the captured connections)",
        );
    }
    if !listener.bind_to_port {
        if let Ok(addr) = listener.address.parse::<SocketAddr>() {
            if addr.port() == 0 {
                v.error(
                    format!("{base}.address"),
                    "a bind_to_port: false listener needs a port (original destinations are matched by it)",
                );
            }
        }
        if listener.tls.is_some() {
            v.error(
                format!("{base}.tls"),
                "not supported on a bind_to_port: false listener",
            );
        }
    }
}

/// A listener's TLS: client-certificate settings that hang together.
fn check_tls(v: &mut Validator, t: &TlsConfig, base: &str) {
    let Some(vc) = &t.validation_context else {
        if t.require_client_certificate {
            v.error(
                format!("{base}.require_client_certificate"),
                "needs a validation_context (the CA client certificates must chain to)",
            );
        }
        return;
    };
    let ca = &vc.trusted_ca;
    let vbase = format!("{base}.validation_context");
    match (&ca.filename, &ca.inline_string) {
        (Some(f), None) if !f.is_empty() => {}
        (None, Some(s)) if !s.is_empty() => {}
        _ => v.error(
            format!("{vbase}.trusted_ca"),
            "set exactly one of filename or inline_string (not empty)",
        ),
    }
    for (i, m) in vc.match_typed_subject_alt_names.iter().enumerate() {
        let mut out = Vec::new();
        rbac::check_string_match(
            &m.matcher,
            &format!("{vbase}.match_typed_subject_alt_names[{i}].matcher"),
            &mut out,
        );
        for (field, message) in out {
            v.error(field, message);
        }
    }
}

/// The most priority levels a cluster may have (Envoy's `max` for `priority` is 128).
pub const MAX_PRIORITIES: u32 = 128;

/// A cluster's priorities and localities: priorities without gaps, locality weights that agree
/// within a locality and only where there is a locality, a usable overprovisioning factor.
fn check_localities(v: &mut Validator, cluster: &ClusterConfig, base: &str) {
    let lb = &cluster.locality_lb;
    if lb.overprovisioning_factor == 0 {
        v.error(
            format!("{base}.locality_lb.overprovisioning_factor"),
            "must be at least 1 (percent)",
        );
    }
    let mut present = HashSet::new();
    let mut weights: HashMap<(u32, &LocalityConfig), (u32, usize)> = HashMap::new();
    for (ei, ep) in cluster.endpoints.iter().enumerate() {
        let ebase = format!("{base}.endpoints[{ei}]");
        if ep.priority >= MAX_PRIORITIES {
            v.error(
                format!("{ebase}.priority"),
                format!("must be below {MAX_PRIORITIES}"),
            );
        }
        present.insert(ep.priority);
        let Some(w) = ep.locality_weight else {
            continue;
        };
        let Some(locality) = &ep.locality else {
            v.error(
                format!("{ebase}.locality_weight"),
                "needs a locality (the weight is the locality's)",
            );
            continue;
        };
        if w == 0 {
            v.error(format!("{ebase}.locality_weight"), "must be at least 1");
            continue;
        }
        if let Some((first, at)) = weights.insert((ep.priority, locality), (w, ei)) {
            if first != w {
                v.error(
                    format!("{ebase}.locality_weight"),
                    format!(
                        "{w} differs from {first} given by {base}.endpoints[{at}] for the same \
                         locality {locality} and priority {}",
                        ep.priority
                    ),
                );
            }
        }
    }
    if let Some(gap) = (0..present.len() as u32).find(|p| !present.contains(p)) {
        if let Some((ei, ep)) = cluster
            .endpoints
            .iter()
            .enumerate()
            .find(|(_, e)| e.priority > gap)
        {
            v.error(
                format!("{base}.endpoints[{ei}].priority"),
                format!(
                    "priority {} is used but priority {gap} has no endpoint (priorities \
                     must be 0, 1, 2, … without gaps, as in Envoy)",
                    ep.priority
                ),
            );
        }
    }
}

/// The parts of a `tcp` listener an `http` one does not have, and the ones it may not have.
fn check_tcp_listener(
    v: &mut Validator,
    config: &ProxyConfig,
    listener: &ListenerConfig,
    base: &str,
    clusters: Option<&HashMap<&str, usize>>,
) {
    if !listener.filters.is_empty() {
        v.error(
            format!("{base}.filters"),
            "a tcp listener has no filters (its tcp_proxy says where connections go)",
        );
    }
    if listener.tls.is_some() {
        v.error(
            format!("{base}.tls"),
            "not supported on a tcp listener (TLS passes through it as bytes)",
        );
    }
    if listener.tracing.is_some() {
        v.error(
            format!("{base}.tracing"),
            "not supported on a tcp listener (tracing is per HTTP request)",
        );
    }
    let Some(t) = &listener.tcp_proxy else {
        v.error(
            format!("{base}.tcp_proxy"),
            "a tcp listener needs a tcp_proxy (a cluster or weighted_clusters)",
        );
        return;
    };
    let tbase = format!("{base}.tcp_proxy");
    if t.stat_prefix.as_deref() == Some("") {
        v.error(format!("{tbase}.stat_prefix"), "must not be empty");
    }
    match (&t.cluster, &t.weighted_clusters) {
        (Some(c), None) => check_cluster_ref(v, c, format!("{tbase}.cluster"), clusters),
        (None, Some(wc)) => {
            if wc.clusters.is_empty() || wc.clusters.iter().all(|c| c.weight == 0) {
                v.error(
                    format!("{tbase}.weighted_clusters.clusters"),
                    "needs at least one cluster with a non-zero weight",
                );
            }
            let mut seen = HashSet::new();
            for (i, c) in wc.clusters.iter().enumerate() {
                let field = format!("{tbase}.weighted_clusters.clusters[{i}].name");
                if !seen.insert(c.name.as_str()) {
                    v.error(field, format!("cluster {:?} listed twice", c.name));
                } else {
                    check_cluster_ref(v, &c.name, field.clone(), clusters);
                    if clusters.is_some() && is_original_dst(config, &c.name) {
                        v.error(
                            field,
                            "an original_dst cluster cannot be one of weighted_clusters (name it as the cluster)",
                        );
                    }
                }
            }
        }
        (Some(_), Some(_)) => v.error(tbase, "set either cluster or weighted_clusters, not both"),
        (None, None) => v.error(tbase, "needs a cluster or weighted_clusters"),
    }
}

fn is_original_dst(config: &ProxyConfig, name: &str) -> bool {
    config
        .clusters
        .iter()
        .any(|c| c.name == name && c.discovery == DiscoveryType::OriginalDst)
}

/// Routes and mirrors may not send HTTP requests to an `original_dst` cluster.
fn check_http_refs_not_original_dst(
    v: &mut Validator,
    config: &ProxyConfig,
    router: &RouterConfig,
    fbase: &str,
) {
    if !config
        .clusters
        .iter()
        .any(|c| c.discovery == DiscoveryType::OriginalDst)
    {
        return;
    }
    for (hi, vhost) in router.virtual_hosts.iter().enumerate() {
        for (ri, route) in vhost.routes.iter().enumerate() {
            let rbase = format!("{fbase}.config.virtual_hosts[{hi}].routes[{ri}].route");
            let a = &route.route;
            let mut refs: Vec<(String, &str)> = Vec::new();
            if let Some(c) = &a.cluster {
                refs.push((format!("{rbase}.cluster"), c));
            }
            if let Some(wc) = &a.weighted_clusters {
                for (i, c) in wc.clusters.iter().enumerate() {
                    refs.push((
                        format!("{rbase}.weighted_clusters.clusters[{i}].name"),
                        &c.name,
                    ));
                }
            }
            for (i, m) in a.request_mirror_policies.iter().enumerate() {
                refs.push((
                    format!("{rbase}.request_mirror_policies[{i}].cluster"),
                    &m.cluster,
                ));
            }
            for (field, name) in refs {
                if is_original_dst(config, name) {
                    v.error(
                        field,
                        format!("cluster {name:?} is an original_dst cluster: only a tcp_proxy can use one"),
                    );
                }
            }
        }
    }
}

fn validate_router(
    v: &mut Validator,
    router: &RouterConfig,
    base: &str,
    clusters: Option<&HashMap<&str, usize>>,
) {
    let mut vhost_names: HashSet<&str> = HashSet::new();
    let mut domains: HashMap<String, usize> = HashMap::new();
    for (field, message) in route::check_header_mutations(
        &format!("{base}."),
        &router.request_headers_to_add,
        &router.request_headers_to_remove,
        &router.response_headers_to_add,
        &router.response_headers_to_remove,
    ) {
        v.error(field, message);
    }
    for (hi, vhost) in router.virtual_hosts.iter().enumerate() {
        let hbase = format!("{base}.virtual_hosts[{hi}]");
        if !vhost_names.insert(&vhost.name) {
            v.error(
                format!("{hbase}.name"),
                format!("duplicate virtual host name {:?}", vhost.name),
            );
        }
        if vhost.domains.is_empty() {
            v.error(
                format!("{hbase}.domains"),
                "needs at least one domain (\"*\" matches any)",
            );
        }
        for (di, domain) in vhost.domains.iter().enumerate() {
            let field = format!("{hbase}.domains[{di}]");
            if let Err(msg) = check_domain(domain) {
                v.error(field, msg);
            } else if let Some(first) = domains.insert(domain.to_ascii_lowercase(), hi) {
                v.error(
                    field,
                    format!(
                        "domain {:?} is already served by virtual_hosts[{first}]",
                        domain
                    ),
                );
            }
        }
        check_route_filters(v, &vhost.fault, &vhost.local_ratelimit, &hbase);
        for (field, message) in route::check_header_mutations(
            &format!("{hbase}."),
            &vhost.request_headers_to_add,
            &vhost.request_headers_to_remove,
            &vhost.response_headers_to_add,
            &vhost.response_headers_to_remove,
        ) {
            v.error(field, message);
        }
        for (ri, route) in vhost.routes.iter().enumerate() {
            validate_route(v, route, &format!("{hbase}.routes[{ri}]"), clusters);
        }
    }
}

/// Checks the fault and the local rate limit of a route or a virtual host at `base`.
fn check_route_filters(
    v: &mut Validator,
    fault: &Option<FaultConfig>,
    limit: &Option<LocalRateLimitConfig>,
    base: &str,
) {
    if let Some(fault) = fault {
        for (field, message) in fault::check(fault) {
            v.error(format!("{base}.fault.{field}"), message);
        }
    }
    if let Some(limit) = limit {
        for (field, message) in local_ratelimit::check(limit) {
            v.error(format!("{base}.local_ratelimit.{field}"), message);
        }
    }
}

fn validate_route(
    v: &mut Validator,
    route: &RouteConfig,
    base: &str,
    clusters: Option<&HashMap<&str, usize>>,
) {
    let m = &route.matcher;
    let specifiers: Vec<(&str, &String)> = [
        ("prefix", &m.prefix),
        ("path", &m.path),
        ("safe_regex", &m.safe_regex),
        ("path_separated_prefix", &m.path_separated_prefix),
    ]
    .into_iter()
    .filter_map(|(k, o)| o.as_ref().map(|p| (k, p)))
    .collect();
    match specifiers[..] {
        [] => v.error(
            format!("{base}.match"),
            "needs a prefix, path, safe_regex or path_separated_prefix (prefix \"/\" matches everything)",
        ),
        [(which, p)] => match which {
            "safe_regex" => {
                if let Err(msg) = route::full_match_regex(p) {
                    v.error(format!("{base}.match.safe_regex"), msg);
                }
            }
            _ if !p.starts_with('/') => v.error(
                format!("{base}.match.{which}"),
                format!("must start with '/', got {:?}", p),
            ),
            "path_separated_prefix" if p.len() > 1 && p.ends_with('/') || p.contains(['?', '#']) => v.error(
                format!("{base}.match.path_separated_prefix"),
                format!("must not end with '/' nor hold '?' or '#', got {p:?}"),
            ),
            _ => {}
        },
        [_, (which, _), ..] => v.error(
            format!("{base}.match.{which}"),
            "set one of prefix, path, safe_regex, path_separated_prefix, not several",
        ),
    }
    for (i, h) in m.headers.iter().enumerate() {
        let field = format!("{base}.match.headers[{i}]");
        if http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
            v.error(
                format!("{field}.name"),
                format!("invalid header name {:?}", h.name),
            );
        }
        let kinds = usize::from(h.string_match.is_some())
            + usize::from(h.present_match.is_some())
            + usize::from(h.range_match.is_some());
        if kinds != 1 {
            v.error(
                field.clone(),
                "set exactly one of string_match, present_match or range_match",
            );
        }
        if let Some(sm) = &h.string_match {
            check_string_match(v, sm, &format!("{field}.string_match"));
        }
        if let Some(r) = &h.range_match {
            if r.start >= r.end {
                v.error(format!("{field}.range_match"), "start must be below end");
            }
        }
    }
    for (i, q) in m.query_parameters.iter().enumerate() {
        let field = format!("{base}.match.query_parameters[{i}]");
        if q.name.is_empty() {
            v.error(format!("{field}.name"), "empty");
        }
        match (&q.string_match, q.present_match) {
            (Some(sm), None) => check_string_match(v, sm, &format!("{field}.string_match")),
            (None, Some(_)) => {}
            _ => v.error(field, "set exactly one of string_match or present_match"),
        }
    }
    for (i, c) in m.cookies.iter().enumerate() {
        let field = format!("{base}.match.cookies[{i}]");
        if c.name.is_empty() {
            v.error(format!("{field}.name"), "empty");
        }
        check_string_match(v, &c.string_match, &format!("{field}.string_match"));
    }
    let a = &route.route;
    let prefix_matched = m.safe_regex.is_none();
    let actions = usize::from(!a.is_none())
        + usize::from(route.redirect.is_some())
        + usize::from(route.direct_response.is_some());
    if actions > 1 {
        v.error(
            base.to_owned(),
            "set exactly one of route, redirect or direct_response",
        );
    }
    if let Some(r) = &route.redirect {
        for (field, message) in
            route::check_redirect(r, &format!("{base}.redirect."), prefix_matched)
        {
            v.error(field, message);
        }
    }
    if let Some(d) = &route.direct_response {
        for (field, message) in route::check_direct_response(d, &format!("{base}.direct_response."))
        {
            v.error(field, message);
        }
    }
    for (field, message) in route::check_header_mutations(
        &format!("{base}."),
        &route.request_headers_to_add,
        &route.request_headers_to_remove,
        &route.response_headers_to_add,
        &route.response_headers_to_remove,
    ) {
        v.error(field, message);
    }
    if route.redirect.is_some() || route.direct_response.is_some() {
        check_route_filters(v, &route.fault, &route.local_ratelimit, base);
        return;
    }
    let mut problems = Vec::new();
    if a.prefix_rewrite.is_some() && a.regex_rewrite.is_some() {
        problems.push((
            format!("{base}.route.regex_rewrite"),
            "set at most one of prefix_rewrite or regex_rewrite".to_owned(),
        ));
    }
    if let Some(p) = &a.prefix_rewrite {
        if !prefix_matched {
            problems.push((
                format!("{base}.route.prefix_rewrite"),
                "needs a route matching by prefix, path or path_separated_prefix".to_owned(),
            ));
        }
        if !p.bytes().all(|b| b.is_ascii_graphic() && b != b'#') {
            problems.push((
                format!("{base}.route.prefix_rewrite"),
                format!("{p:?} is not a path"),
            ));
        }
    }
    if let Some(r) = &a.regex_rewrite {
        route::check_regex_rewrite(r, &format!("{base}.route.regex_rewrite."), &mut problems);
    }
    if a.host_rewrite_literal.is_some() && a.host_rewrite_header.is_some() {
        problems.push((
            format!("{base}.route.host_rewrite_header"),
            "set at most one of host_rewrite_literal or host_rewrite_header".to_owned(),
        ));
    }
    if let Some(h) = &a.host_rewrite_literal {
        if h.is_empty() || !h.bytes().all(is_authority_byte) {
            problems.push((
                format!("{base}.route.host_rewrite_literal"),
                format!("{h:?} is not a host"),
            ));
        }
    }
    if let Some(h) = &a.host_rewrite_header {
        if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            problems.push((
                format!("{base}.route.host_rewrite_header"),
                format!("invalid header name {h:?}"),
            ));
        }
    }
    for (field, message) in problems {
        v.error(field, message);
    }
    check_route_filters(v, &route.fault, &route.local_ratelimit, base);
    for (i, p) in a.request_mirror_policies.iter().enumerate() {
        let field = format!("{base}.route.request_mirror_policies[{i}]");
        for (sub, message) in mirror::check(p) {
            v.error(format!("{field}.{sub}"), message);
        }
        if !p.cluster.is_empty() {
            check_cluster_ref(v, &p.cluster, format!("{field}.cluster"), clusters);
        }
    }
    if let Some(retry) = &a.retry_policy {
        if let Err(msg) = RetryOn::parse(&retry.retry_on) {
            v.error(format!("{base}.route.retry_policy.retry_on"), msg);
        }
    }
    match (&a.cluster, &a.weighted_clusters) {
        (Some(c), None) => check_cluster_ref(v, c, format!("{base}.route.cluster"), clusters),
        (None, Some(wc)) => {
            if wc.clusters.is_empty() || wc.clusters.iter().all(|c| c.weight == 0) {
                v.error(
                    format!("{base}.route.weighted_clusters.clusters"),
                    "needs at least one cluster with a non-zero weight",
                );
            }
            let mut seen = HashSet::new();
            for (i, c) in wc.clusters.iter().enumerate() {
                let field = format!("{base}.route.weighted_clusters.clusters[{i}].name");
                if !seen.insert(c.name.as_str()) {
                    v.error(field, format!("cluster {:?} listed twice", c.name));
                } else {
                    check_cluster_ref(v, &c.name, field, clusters);
                }
            }
        }
        (Some(_), Some(_)) => v.error(
            format!("{base}.route"),
            "set either cluster or weighted_clusters, not both",
        ),
        (None, None) => v.error(
            format!("{base}.route"),
            "needs a cluster or weighted_clusters",
        ),
    }
}

/// Checks a string matcher at `field`: exactly one pattern, a regex that compiles.
fn check_string_match(v: &mut Validator, sm: &StringMatchConfig, field: &str) {
    let n = [
        &sm.exact,
        &sm.prefix,
        &sm.suffix,
        &sm.contains,
        &sm.safe_regex,
    ]
    .iter()
    .filter(|o| o.is_some())
    .count();
    if n != 1 {
        v.error(
            field.to_owned(),
            "set exactly one of exact, prefix, suffix, contains, safe_regex",
        );
    }
    if let Some(r) = &sm.safe_regex {
        if let Err(msg) = route::full_match_regex(r) {
            v.error(format!("{field}.safe_regex"), msg);
        }
    }
}

fn check_cluster_ref(
    v: &mut Validator,
    name: &str,
    field: String,
    clusters: Option<&HashMap<&str, usize>>,
) {
    let Some(clusters) = clusters else {
        return;
    };
    if !clusters.contains_key(name) {
        let mut known: Vec<&str> = clusters.keys().copied().collect();
        known.sort_unstable();
        v.error(
            field,
            format!(
                "unknown cluster {:?} (defined: {})",
                name,
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ),
        );
    }
}

/// `host:port` with a non-empty host (IP, `[v6]` or DNS name) and a port in 1..=65535.
fn check_endpoint_address(address: &str) -> Result<(), String> {
    if address.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let bad = || format!("invalid endpoint address {address:?} (expected host:port)");
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(bad()),
    }
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.is_empty() || host.len() > 253 || !host.split('.').all(valid_label) {
        return Err(bad());
    }
    Ok(())
}

/// Whether `b` may appear in a URI authority without user information (RFC 3986 §3.2: a
/// reg-name, an IPv4 or bracketed IPv6 host, an optional port): what a Host header and a
/// virtual-host domain are made of.
#[inline]
pub fn is_authority_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'['
                | b']'
                | b'%'
        )
}

/// A virtual-host domain as Envoy accepts one (`*`, `*.suffix`, `prefix.*`, or an exact name,
/// each with an optional `:port`; a `*` elsewhere is a literal character of an exact domain),
/// limited to the characters a Host header can carry, so that every domain can match a request.
fn check_domain(domain: &str) -> Result<(), String> {
    if domain.is_empty() || !domain.bytes().all(is_authority_byte) {
        return Err(format!(
            "invalid domain {domain:?} (use a host name with an optional :port, \"*.suffix\", \"prefix.*\" or \"*\")"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
listeners:
  - address: "0.0.0.0:8080"
    protocol: "http"
    filters:
      - type: "router"
        config:
          virtual_hosts:
            - name: "api-service"
              domains: ["api.example.com"]
              routes:
                - match: { prefix: "/v1" }
                  route: { cluster: "backend-v1" }
clusters:
  - name: "backend-v1"
    lb_policy: "round_robin"
    endpoints:
      - { address: "10.0.0.11:9000", weight: 1 }
      - { address: "10.0.0.12:9000", weight: 1 }
admin: { address: "127.0.0.1:9901" }
"#;

    fn problems(text: &str) -> Vec<Problem> {
        match parse("test.yaml", text) {
            Ok(_) => panic!("config should be refused"),
            Err(e) => e.problems().to_vec(),
        }
    }

    #[test]
    fn client_certificates_and_rbac_are_checked_with_their_place() {
        let text = r#"
listeners:
  - address: "127.0.0.1:8443"
    tls:
      certificate_chain: c.pem
      private_key: k.pem
      require_client_certificate: true
    rbac:
      rules:
        policies:
          p:
            permissions: [{ url_path: { path: { prefix: /a, exact: /b } } }]
            principals: []
    filters:
      - type: router
        config:
          virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{ match: { prefix: "/" }, route: { cluster: web } }]
  - address: "127.0.0.1:8444"
    tls:
      certificate_chain: c.pem
      private_key: k.pem
      validation_context:
        trusted_ca: {}
        match_typed_subject_alt_names: [{ san_type: URI, matcher: {} }]
    rbac:
      rules:
        policies:
          q:
            permissions: [{ any: true }]
            principals: [{ not_id: { direct_remote_ip: { address_prefix: 10.0.0.0, prefix_len: 33 } } }]
    filters:
      - type: router
        config:
          virtual_hosts:
            - name: all
              domains: ["*"]
              routes: [{ match: { prefix: "/" }, route: { cluster: web } }]
clusters:
  - name: web
    endpoints: [{ address: "10.0.0.1:80" }]
"#;
        let p = problems(text);
        let fields: Vec<&str> = p.iter().map(|p| p.field.as_str()).collect();
        for f in [
            "listeners[0].tls.require_client_certificate",
            "listeners[0].rbac.rules.policies.p.principals",
            "listeners[0].rbac.rules.policies.p.permissions[0].url_path.path",
            "listeners[1].tls.validation_context.trusted_ca",
            "listeners[1].tls.validation_context.match_typed_subject_alt_names[0].matcher",
            "listeners[1].rbac.rules.policies.q.principals[0].not_id.direct_remote_ip",
        ] {
            assert!(fields.contains(&f), "{f} in {fields:?}");
        }
        assert!(p.iter().all(|p| p.line.is_some()), "{p:?}");
    }

    #[test]
    fn priorities_and_localities_are_read_and_checked_with_their_place() {
        let ok = parse(
            "t.yaml",
            "locality: { region: eu, zone: eu-1 }
clusters:
  - name: web
    locality_lb: { overprovisioning_factor: 120, locality_weighted: true }
    endpoints:
      - { address: \"10.0.0.1:80\", locality: { region: eu, zone: eu-1 }, locality_weight: 4 }
      - { address: \"10.0.0.2:80\", priority: 1 }
",
        )
        .unwrap();
        assert_eq!(ok.locality.as_ref().unwrap().zone, "eu-1");
        let c = &ok.clusters[0];
        assert_eq!(c.locality_lb.overprovisioning_factor, 120);
        assert!(c.locality_lb.locality_weighted);
        assert_eq!(c.endpoints[0].locality_weight, Some(4));
        assert_eq!(c.endpoints[1].priority, 1);
        // Defaults: Envoy's 140, no weighting, no proximity.
        let d = parse(
            "t.yaml",
            "clusters: [{ name: web }]
",
        )
        .unwrap();
        assert!(d.clusters[0].locality_lb.is_default());
        assert_eq!(d.clusters[0].locality_lb.overprovisioning_factor, 140);

        let text = "clusters:
  - name: web
    locality_lb: { overprovisioning_factor: 0 }
    endpoints:
      - { address: \"10.0.0.1:80\", locality: { zone: a }, locality_weight: 2 }
      - { address: \"10.0.0.2:80\", locality: { zone: a }, locality_weight: 3 }
      - { address: \"10.0.0.3:80\", locality_weight: 3 }
      - { address: \"10.0.0.4:80\", priority: 2 }
";
        let p = problems(text);
        let fields: Vec<&str> = p.iter().map(|p| p.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "clusters[0].locality_lb.overprovisioning_factor",
                "clusters[0].endpoints[1].locality_weight",
                "clusters[0].endpoints[2].locality_weight",
                "clusters[0].endpoints[3].priority",
            ]
        );
        // Each with its file place.
        let shown = p[3].in_file("t.yaml");
        assert!(shown.starts_with("t.yaml:8:"), "{shown}");
        assert!(
            p[3].message.contains("priority 1 has no endpoint"),
            "{}",
            p[3].message
        );
        assert!(p[1].message.contains("differs from 2"), "{}", p[1].message);
    }

    #[test]
    fn route_action_mistakes_name_their_lines_and_fields() {
        let text = "listeners:
  - address: \"127.0.0.1:80\"
    filters:
      - type: router
        config:
          request_headers_to_add: [{ key: host, value: x }]
          virtual_hosts:
            - name: a
              domains: [\"*\"]
              routes:
                - match: { safe_regex: \"(\" }
                  route: { cluster: web }
                - match: { prefix: /, path_separated_prefix: /x }
                  route: { cluster: web }
                - match: { safe_regex: \"/a.*\" }
                  route: { cluster: web, prefix_rewrite: /b }
                - match: { prefix: / }
                  redirect: { response_code: 300 }
                - match: { prefix: / }
                  route: { cluster: web }
                  direct_response: { status: 200 }
                - match: { prefix: / }
                  direct_response: { status: 200 }
                  response_headers_to_add: [{ key: x-a, value: \"%REQ(x-b)%\" }]
clusters: [{ name: web, endpoints: [{ address: \"127.0.0.1:81\" }] }]
";
        let p = problems(text);
        let r = "listeners[0].filters[0].config.";
        let fields: Vec<String> = p.iter().map(|p| p.field.replace(r, "")).collect();
        assert_eq!(
            fields,
            [
                "request_headers_to_add[0].key",
                "virtual_hosts[0].routes[0].match.safe_regex",
                "virtual_hosts[0].routes[1].match.path_separated_prefix",
                "virtual_hosts[0].routes[2].route.prefix_rewrite",
                "virtual_hosts[0].routes[3].redirect.response_code",
                "virtual_hosts[0].routes[4]",
                "virtual_hosts[0].routes[5].response_headers_to_add[0].value",
            ],
            "{p:?}"
        );
        assert_eq!(p[1].line, Some(11), "{}", p[1]);
        assert!(p[1].message.contains("gofe can compile"), "{}", p[1]);
        assert!(p[6].message.contains("REQ(...)"), "{}", p[6]);
    }

    #[test]
    fn accepts_the_users_shape() {
        let c = parse("sample.yaml", SAMPLE).unwrap();
        assert_eq!(c.listeners.len(), 1);
        let vh = &c.listeners[0].filters[0].config.virtual_hosts[0];
        assert_eq!(vh.domains[0], "api.example.com");
        assert_eq!(vh.routes[0].route.cluster.as_ref().unwrap(), "backend-v1");
        assert_eq!(vh.routes[0].route.timeout, DEFAULT_ROUTE_TIMEOUT);
        assert_eq!(c.clusters[0].endpoints[1].weight, 1);
        assert_eq!(c.clusters[0].lb_policy, LbPolicy::RoundRobin);
    }

    #[test]
    fn unknown_field_names_line_and_path() {
        let text = SAMPLE.replace("weight: 1 }\n  ", "wieght: 1 }\n  ");
        let p = problems(&text);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].line, Some(18));
        assert_eq!(p[0].field, "clusters[0].endpoints[0].wieght");
        assert!(p[0].message.contains("unknown field `wieght`"), "{}", p[0]);
    }

    #[test]
    fn bad_duration_names_line_and_field() {
        let text = SAMPLE.replace(
            "lb_policy: \"round_robin\"",
            "lb_policy: \"round_robin\"\n    connect_timeout: \"5\"",
        );
        let p = problems(&text);
        assert_eq!(p[0].field, "clusters[0].connect_timeout");
        assert_eq!(p[0].line, Some(17));
        assert!(p[0].message.contains("missing unit"), "{}", p[0]);
    }

    #[test]
    fn missing_cluster_and_bad_address_are_all_reported() {
        let text = SAMPLE
            .replace("cluster: \"backend-v1\"", "cluster: \"backend-v2\"")
            .replace("0.0.0.0:8080", "0.0.0.0:99999");
        let p = problems(&text);
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p[0].line, Some(3));
        assert_eq!(p[0].field, "listeners[0].address");
        assert_eq!(p[1].line, Some(13));
        assert_eq!(
            p[1].field,
            "listeners[0].filters[0].config.virtual_hosts[0].routes[0].route.cluster"
        );
        assert!(p[1].message.contains("unknown cluster \"backend-v2\""));
        let rendered = parse("test.yaml", &text).unwrap_err().to_string();
        assert!(
            rendered.starts_with("test.yaml:3:14: listeners[0].address: invalid socket address"),
            "{rendered}"
        );
    }

    #[test]
    fn duplicates_are_refused() {
        let text = SAMPLE.replace(
            "admin:",
            "  - name: \"backend-v1\"\n    endpoints: []\nadmin:",
        );
        let p = problems(&text);
        assert_eq!(p[0].field, "clusters[1].name");
        assert!(p[0].message.contains("duplicate cluster name"));

        let text = SAMPLE.replace("10.0.0.12:9000", "10.0.0.11:9000");
        assert!(problems(&text)[0].message.contains("duplicate endpoint"));
    }

    #[test]
    fn an_unknown_access_log_operator_names_its_line_and_field() {
        let text = SAMPLE.replace(
            "    protocol: \"http\"\n",
            "    protocol: \"http\"\n    access_log:\n      - path: \"/tmp/a.log\"\n        format: \"%REQ(:PATH)% %RESPONSE_COD%\\n\"\n",
        );
        let p = problems(&text);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].field, "listeners[0].access_log[0].format");
        assert_eq!(p[0].line, Some(7));
        assert!(
            p[0].message
                .contains("column 14: unknown operator %RESPONSE_COD%"),
            "{}",
            p[0]
        );
        let ok = text.replace("RESPONSE_COD%", "RESPONSE_CODE%");
        let c = parse("ok.yaml", &ok).unwrap();
        assert_eq!(
            c.listeners[0].access_log[0].path.as_deref(),
            Some("/tmp/a.log")
        );
    }

    #[test]
    fn bad_tracing_settings_name_their_lines_and_fields() {
        let text = SAMPLE.replace(
            "    protocol: \"http\"\n",
            "    protocol: \"http\"\n    tracing:\n      random_sampling: { value: 150 }\n      provider:\n        opentelemetry:\n          http_service:\n            http_uri: { uri: \"https://collector:4318/v1/traces\" }\n",
        );
        let p = problems(&text);
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(p[0].field, "listeners[0].tracing.random_sampling.value");
        assert_eq!(p[0].line, Some(6));
        assert_eq!(
            p[1].field,
            "listeners[0].tracing.provider.opentelemetry.http_service.http_uri.uri"
        );
        assert_eq!(p[1].line, Some(10));
        assert!(p[1].message.contains("https collectors"), "{}", p[1]);
        let ok = text
            .replace("value: 150", "value: 1")
            .replace("https://", "http://");
        let c = parse("ok.yaml", &ok).unwrap();
        let t = c.listeners[0].tracing.as_ref().unwrap();
        assert_eq!(t.random_sampling.value, 1.0);
        assert_eq!(t.overall_sampling, tracing::Percent::all());
        assert_eq!(t.propagation, [tracing::Propagation::Tracecontext]);
        assert_eq!(
            t.provider.opentelemetry.service_name,
            "unknown_service:gofe"
        );
        assert_eq!(
            t.provider.opentelemetry.http_service.http_uri.timeout,
            tracing::DEFAULT_EXPORT_TIMEOUT
        );
    }

    #[test]
    fn a_fault_percentage_over_its_denominator_names_its_line_and_field() {
        let text = SAMPLE.replace(
            "route: { cluster: \"backend-v1\" }\n",
            "route: { cluster: \"backend-v1\" }\n                  fault:\n                    abort:\n                      http_status: 503\n                      percentage: { numerator: 101 }\n",
        );
        let p = problems(&text);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(
            p[0].field,
            "listeners[0].filters[0].config.virtual_hosts[0].routes[0].fault.abort.percentage.numerator"
        );
        assert_eq!(p[0].line, Some(17));
        assert!(p[0].message.contains("at most 100 %"), "{}", p[0]);
        let ok = text.replace("numerator: 101", "numerator: 25");
        let c = parse("ok.yaml", &ok).unwrap();
        let fault = c.listeners[0].filters[0].config.virtual_hosts[0].routes[0]
            .fault
            .clone()
            .unwrap();
        assert_eq!(
            fault.abort.unwrap().percentage,
            FractionalPercent::percent(25)
        );
    }

    #[test]
    fn a_virtual_host_s_fault_and_limit_are_checked_by_line_and_field() {
        let text = SAMPLE.replace(
            "              domains: [\"api.example.com\"]\n",
            "              domains: [\"api.example.com\"]\n              fault:\n                delay: { fixed_delay: \"5ms\", percentage: { numerator: 200 } }\n              local_ratelimit:\n                token_bucket: { max_tokens: 5, fill_interval: \"1ms\" }\n",
        );
        let p = problems(&text);
        let fields: Vec<(&str, Option<usize>)> =
            p.iter().map(|p| (p.field.as_str(), p.line)).collect();
        assert_eq!(
            fields,
            [
                (
                    "listeners[0].filters[0].config.virtual_hosts[0].fault.delay.percentage.numerator",
                    Some(12)
                ),
                (
                    "listeners[0].filters[0].config.virtual_hosts[0].local_ratelimit.token_bucket.fill_interval",
                    Some(14)
                )
            ],
            "{p:?}"
        );
        let ok = text
            .replace("numerator: 200", "numerator: 20")
            .replace("\"1ms\"", "\"1s\"");
        let c = parse("ok.yaml", &ok).unwrap();
        let vh = &c.listeners[0].filters[0].config.virtual_hosts[0];
        assert!(vh.fault.as_ref().unwrap().delay.is_some());
        assert_eq!(
            vh.local_ratelimit.as_ref().unwrap().token_bucket.max_tokens,
            5
        );
        assert!(vh.routes[0].fault.is_none() && vh.routes[0].local_ratelimit.is_none());
    }

    #[test]
    fn a_mirror_to_an_unknown_cluster_names_its_line_and_field() {
        let text = SAMPLE.replace(
            "route: { cluster: \"backend-v1\" }\n",
            "route:\n                    cluster: \"backend-v1\"\n                    request_mirror_policies:\n                      - cluster: \"backend-v1\"\n                        runtime_fraction: { numerator: 5, denominator: TEN_THOUSAND }\n                      - cluster: \"shadow\"\n                        disable_shadow_host_suffix_append: true\n",
        );
        let p = problems(&text);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(
            p[0].field,
            "listeners[0].filters[0].config.virtual_hosts[0].routes[0].route.request_mirror_policies[1].cluster"
        );
        assert_eq!(p[0].line, Some(18));
        assert!(
            p[0].message.contains("unknown cluster \"shadow\""),
            "{}",
            p[0]
        );
        let ok = text.replace("cluster: \"shadow\"", "cluster: \"backend-v1\"");
        let c = parse("ok.yaml", &ok).unwrap();
        let policies = &c.listeners[0].filters[0].config.virtual_hosts[0].routes[0]
            .route
            .request_mirror_policies;
        assert_eq!(
            policies[0].runtime_fraction,
            FractionalPercent {
                numerator: 5,
                denominator: fault::Denominator::TenThousand
            }
        );
        assert!(!policies[0].disable_shadow_host_suffix_append);
        assert_eq!(
            policies[1].runtime_fraction,
            mirror::all(),
            "Envoy's default"
        );
        assert!(policies[1].disable_shadow_host_suffix_append);
        let over = ok.replace("numerator: 5,", "numerator: 10001,");
        let p = problems(&over);
        assert_eq!(
            p[0].field,
            "listeners[0].filters[0].config.virtual_hosts[0].routes[0].route.request_mirror_policies[0].runtime_fraction.numerator"
        );
        assert_eq!(p[0].line, Some(17));
    }

    #[test]
    fn a_rate_limit_reads_envoys_shape_and_refuses_a_short_interval_by_line() {
        let text = SAMPLE.replace(
            "route: { cluster: \"backend-v1\" }\n",
            "route: { cluster: \"backend-v1\" }\n                  local_ratelimit:\n                    token_bucket: { max_tokens: 5, fill_interval: \"10ms\" }\n                    filter_enabled: { numerator: 100 }\n                    filter_enforced: { numerator: 100 }\n                    enable_x_ratelimit_headers: DRAFT_VERSION_03\n",
        );
        let p = problems(&text);
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(
            p[0].field,
            "listeners[0].filters[0].config.virtual_hosts[0].routes[0].local_ratelimit.token_bucket.fill_interval"
        );
        assert_eq!(p[0].line, Some(15));
        let ok = text.replace("\"10ms\"", "\"1s\"");
        let c = parse("ok.yaml", &ok).unwrap();
        let limit = c.listeners[0].filters[0].config.virtual_hosts[0].routes[0]
            .local_ratelimit
            .clone()
            .unwrap();
        assert_eq!(limit.token_bucket.tokens_per_fill, 1);
        assert_eq!(limit.status, 429);
        assert_eq!(
            limit.enable_x_ratelimit_headers,
            local_ratelimit::XRateLimitHeaders::DraftVersion03
        );
    }

    #[test]
    fn bad_lb_policy_and_syntax_errors_have_lines() {
        let p = problems(&SAMPLE.replace("round_robin", "random"));
        assert_eq!(p[0].line, Some(16));
        assert_eq!(p[0].field, "clusters[0].lb_policy");
        let p = problems("listeners: [\n");
        assert!(p[0].line.is_some());
    }

    #[test]
    fn domain_and_endpoint_syntax() {
        // Envoy's forms, ports included; a `*` inside is a literal of an exact domain.
        for ok in [
            "*",
            "*.example.com",
            "api.*",
            "api.example.com",
            "localhost:8080",
            "svc:9080",
            "*.svc:9080",
            "db.ingress.*:8080",
            "a*b",
            "[::1]:80",
        ] {
            assert!(check_domain(ok).is_ok(), "{ok}");
        }
        // No Host header can carry these.
        for bad in ["", "exa mple.com", "a\nb", "tab\there", "ümlaut.de", "a/b"] {
            assert!(check_domain(bad).is_err(), "{bad}");
        }
        for ok in [
            "10.0.0.1:80",
            "[::1]:8080",
            "backend.svc.cluster.local:9000",
        ] {
            assert!(check_endpoint_address(ok).is_ok(), "{ok}");
        }
        for bad in [
            "10.0.0.1",
            "host:0",
            ":80",
            "ho st:80",
            "host:99999",
            "-a:1",
        ] {
            assert!(check_endpoint_address(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,300}") {
            let _ = parse("fuzz.yaml", &text);
        }

        #[test]
        fn a_mutated_sample_never_panics(at in 0usize..600, junk in "[\\[\\]{}:,\"'*&!|>#\\- a-z0-9\n]{1,8}") {
            let mut text = SAMPLE.to_owned();
            let at = at.min(text.len());
            let at = (0..=at).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
            text.insert_str(at, &junk);
            if let Err(e) = parse("fuzz.yaml", &text) {
                // Every refusal says where, or at least which field.
                for p in e.problems() {
                    proptest::prop_assert!(p.line.is_some() || !p.field.is_empty(), "{}", p);
                }
            }
        }
    }

    const CAPTURE: &str = r#"
listeners:
  - name: outbound
    address: "0.0.0.0:15001"
    protocol: tcp
    use_original_dst: true
    tcp_proxy: { cluster: passthrough }
  - name: web-80
    address: "0.0.0.0:80"
    bind_to_port: false
    filters:
      - type: router
        config:
          virtual_hosts:
            - name: web
              domains: ["*"]
              routes:
                - match: { prefix: "/" }
                  route: { cluster: web }
  - name: db
    address: "10.0.0.9:5432"
    bind_to_port: false
    protocol: tcp
    tcp_proxy:
      weighted_clusters: { clusters: [{ name: web, weight: 1 }] }
      idle_timeout: 10m
clusters:
  - { name: passthrough, type: ORIGINAL_DST }
  - { name: web, endpoints: [{ address: "10.0.0.11:9000" }] }
"#;

    #[test]
    fn capture_listeners_and_tcp_proxies_read_envoys_shape() {
        let c = parse("capture.yaml", CAPTURE).unwrap();
        let out = &c.listeners[0];
        assert!(out.use_original_dst && out.bind_to_port && out.filters.is_empty());
        let t = out.tcp_proxy.as_ref().unwrap();
        assert_eq!(t.cluster.as_deref(), Some("passthrough"));
        assert_eq!(t.idle_timeout, DEFAULT_TCP_IDLE_TIMEOUT);
        assert!(!c.listeners[1].bind_to_port);
        let db = c.listeners[2].tcp_proxy.as_ref().unwrap();
        assert_eq!(db.idle_timeout, Duration::from_secs(600));
        assert_eq!(c.clusters[0].discovery, DiscoveryType::OriginalDst);
        assert_eq!(c.clusters[1].discovery, DiscoveryType::Static);
        let json = serde_json::to_string(&c).unwrap();
        let back: ProxyConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn every_capture_and_tcp_mistake_names_its_line_and_field() {
        let text = CAPTURE
            .replace(
                "    use_original_dst: true\n",
                "    use_original_dst: true\n    bind_to_port: false\n",
            )
            .replace("route: { cluster: web }", "route: { cluster: passthrough }")
            .replace(
                "weighted_clusters: { clusters: [{ name: web, weight: 1 }] }",
                "weighted_clusters: { clusters: [{ name: passthrough, weight: 1 }] }\n      cluster: web",
            )
            .replace(
                "{ name: passthrough, type: ORIGINAL_DST }",
                "{ name: passthrough, type: ORIGINAL_DST, endpoints: [{ address: \"10.0.0.1:1\" }] }",
            );
        let p = problems(&text);
        let got: Vec<(&str, Option<usize>)> =
            p.iter().map(|p| (p.field.as_str(), p.line)).collect();
        assert_eq!(
            got,
            [
                ("listeners[0].bind_to_port", Some(7)),
                (
                    "listeners[1].filters[0].config.virtual_hosts[0].routes[0].route.cluster",
                    Some(20)
                ),
                ("listeners[2].tcp_proxy", Some(26)),
                ("clusters[0].endpoints", Some(30)),
            ],
            "{p:?}"
        );
        let text = CAPTURE.replace(
            "    protocol: tcp\n    use_original_dst",
            "    use_original_dst",
        );
        let p = problems(&text);
        assert_eq!(p[0].field, "listeners[0].filters", "{p:?}");
        let text = CAPTURE.replace(
            "tcp_proxy: { cluster: passthrough }",
            "tcp_proxy: { cluster: nowhere }",
        );
        let p = problems(&text);
        assert_eq!(p[0].field, "listeners[0].tcp_proxy.cluster", "{p:?}");
        assert_eq!(p[0].line, Some(7));
        assert!(
            p[0].message.contains("unknown cluster \"nowhere\""),
            "{}",
            p[0]
        );
        let p = problems(&CAPTURE.replace("protocol: tcp\n    use", "protocol: udp\n    use"));
        let protocol = p.iter().find(|p| p.field == "listeners[0].protocol");
        assert!(
            protocol.is_some_and(|p| p.line == Some(5) && p.message.contains("\"tcp\"")),
            "{p:?}"
        );
    }

    #[test]
    fn config_round_trips_through_json() {
        let c = parse("sample.yaml", SAMPLE).unwrap();
        let json = serde_json::to_string(&c).unwrap();
        let back: ProxyConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
        assert!(validate(&back).is_empty());
    }
}
