//! The proxy's configuration file: YAML types, loading, and validation.
//!
//! The `listeners` part accepts the shape gofe users already write (see the repository's
//! `examples/`); `clusters` and `admin` use Envoy's field names where Envoy has the concept.
//! [`load`] parses and validates in one step and returns *every* problem it finds, each naming
//! the file, line, column and field path, so an operator fixes a config in one round trip. A
//! config that fails here never reaches the running proxy.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_saphyr::Spanned;

pub use gofe_core::duration::parse as parse_duration;

/// Default upstream request timeout per route (Envoy's default).
pub const DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);
/// Default upstream connect timeout per cluster (Envoy's default).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The whole proxy configuration file.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
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
}

/// A downstream listener.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Name used in metrics and logs. Default: the address.
    #[serde(default)]
    pub name: Option<Spanned<String>>,
    /// Socket address to bind, `ip:port`.
    pub address: Spanned<String>,
    /// Application protocol. Only `"http"` (HTTP/1.1 and HTTP/2) today. Default `"http"`.
    #[serde(default = "default_protocol")]
    pub protocol: Spanned<String>,
    /// TLS termination. When set, the listener speaks TLS and offers `h2` and `http/1.1` by ALPN;
    /// when absent it speaks cleartext HTTP/1.1 and HTTP/2 with prior knowledge (h2c).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// The filter chain. Exactly one `router` filter today.
    pub filters: Vec<FilterConfig>,
}

fn default_protocol() -> Spanned<String> {
    unspanned("http".to_owned())
}

/// TLS files of a listener (PEM).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Path of the PEM certificate chain, leaf first.
    pub certificate_chain: Spanned<String>,
    /// Path of the PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub private_key: Spanned<String>,
}

/// One filter of a listener's chain.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// The filter's type. Only `"router"` today.
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    /// The router's configuration.
    pub config: RouterConfig,
}

/// The router filter: virtual hosts and their routes.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouterConfig {
    /// Virtual hosts, selected by the request's Host / `:authority`.
    #[serde(default)]
    pub virtual_hosts: Vec<VirtualHostConfig>,
}

/// A virtual host: a set of domains and the routes for them.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualHostConfig {
    /// Name used in logs and `/config_dump`.
    pub name: Spanned<String>,
    /// Domains this host serves: exact (`api.example.com`), suffix wildcard (`*.example.com`),
    /// prefix wildcard (`api.*`) or `*`. Matching ignores case and any `:port`. Most specific
    /// wins: exact, then the longest suffix wildcard, then the longest prefix wildcard, then `*`.
    pub domains: Vec<Spanned<String>>,
    /// Routes, tried in order; the first that matches wins.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

/// A route: a match and what to do with requests that match.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// What requests this route takes.
    #[serde(rename = "match")]
    pub matcher: RouteMatchConfig,
    /// Where they go.
    pub route: RouteActionConfig,
}

/// A route's match: exactly one of `prefix` or `path`, plus optional header conditions.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteMatchConfig {
    /// Path prefix (case-sensitive). `"/"` matches everything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<Spanned<String>>,
    /// Exact path (case-sensitive, query string excluded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<Spanned<String>>,
    /// Header conditions; all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<HeaderMatcherConfig>,
}

/// A condition on one request header (Envoy's `HeaderMatcher`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatcherConfig {
    /// Header name (case-insensitive).
    pub name: Spanned<String>,
    /// Compare the value. Exactly one of `string_match` or `present_match`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string_match: Option<StringMatchConfig>,
    /// `true`: the header must be present; `false`: it must be absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub present_match: Option<bool>,
    /// Invert the result. Default `false`.
    #[serde(default)]
    pub invert_match: bool,
}

/// How a header value is compared (Envoy's `StringMatcher`): exactly one field.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
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
}

/// A route's action: exactly one of `cluster` or `weighted_clusters`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RouteActionConfig {
    /// Send every request to this cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<Spanned<String>>,
    /// Split requests across clusters by weight (canary releases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weighted_clusters: Option<WeightedClustersConfig>,
    /// Time allowed for the upstream to start its response (headers); past it the client gets
    /// 504. `"0s"` disables it. Default 15 s.
    #[serde(
        default = "default_route_timeout",
        with = "duration_text",
        skip_serializing_if = "is_default_route_timeout"
    )]
    pub timeout: Duration,
}

fn default_route_timeout() -> Duration {
    DEFAULT_ROUTE_TIMEOUT
}

fn is_default_route_timeout(d: &Duration) -> bool {
    *d == DEFAULT_ROUTE_TIMEOUT
}

/// A weighted split across clusters.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedClustersConfig {
    /// The clusters and their weights; at least one weight must be non-zero.
    pub clusters: Vec<ClusterWeightConfig>,
}

/// One cluster of a weighted split.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterWeightConfig {
    /// The cluster's name.
    pub name: Spanned<String>,
    /// Its share, relative to the others. 0 sends it nothing.
    pub weight: u32,
}

/// Load-balancing policy of a cluster (Envoy's `lb_policy`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
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

/// An upstream cluster.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Unique name, referenced by routes.
    pub name: Spanned<String>,
    /// Balancing policy. Default `round_robin`.
    #[serde(default)]
    pub lb_policy: LbPolicy,
    /// Time allowed to open a TCP connection to an endpoint. Default 5 s.
    #[serde(default = "default_connect_timeout", with = "duration_text")]
    pub connect_timeout: Duration,
    /// When present, upstream connections speak HTTP/2 (prior knowledge); otherwise HTTP/1.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2_protocol_options: Option<Http2ProtocolOptions>,
    /// The endpoints.
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
}

fn default_connect_timeout() -> Duration {
    DEFAULT_CONNECT_TIMEOUT
}

/// Upstream HTTP/2 options (none yet: presence alone selects HTTP/2).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Http2ProtocolOptions {}

/// One upstream endpoint.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// `host:port`, where host is an IP address or a DNS name.
    pub address: Spanned<String>,
    /// Load-balancing weight. 0 drains the endpoint (no new requests). Default 1.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// The admin listener.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Socket address to bind, `ip:port`. Keep it on loopback or a private network.
    pub address: Spanned<String>,
}

fn unspanned<T>(value: T) -> Spanned<T> {
    Spanned::new(
        value,
        serde_saphyr::Location::UNKNOWN,
        serde_saphyr::Location::UNKNOWN,
    )
}

/// Serde adapter for durations written as text (`"30s"`, `"250ms"`).
mod duration_text {
    use super::*;

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        gofe_core::duration::parse(&text).map_err(serde::de::Error::custom)
    }

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&gofe_core::duration::format(*d))
    }
}

// === errors ===

/// One thing wrong with a configuration, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
    /// Path of the field, e.g. `clusters[0].endpoints[1].address`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    /// `LINE:COLUMN: FIELD: MESSAGE`, leaving out what is unknown. Prefixed with the file name
    /// and a colon, this is the `file:line:column:` form editors and terminals link to.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "{line}:")?;
            if let Some(column) = self.column {
                write!(f, "{column}:")?;
            }
            f.write_str(" ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

impl Problem {
    /// `FILE:LINE:COLUMN: FIELD: MESSAGE`.
    pub fn in_file(&self, file: &str) -> String {
        if self.line.is_some() {
            format!("{file}:{self}")
        } else {
            format!("{file}: {self}")
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read config: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file was read but is not a valid configuration.
    #[error("{}", render_problems(.source_name, .problems))]
    Invalid {
        /// The file (or other source) name.
        source_name: String,
        /// Every problem found, in file order.
        problems: Vec<Problem>,
    },
}

fn render_problems(source_name: &str, problems: &[Problem]) -> String {
    let lines: Vec<String> = problems.iter().map(|p| p.in_file(source_name)).collect();
    lines.join("\n")
}

impl ConfigError {
    /// The individual problems (empty for a read error).
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Read { .. } => &[],
            ConfigError::Invalid { problems, .. } => problems,
        }
    }
}

// === loading ===

/// Reads, parses and validates a configuration file.
pub fn load(path: &Path) -> Result<ProxyConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&path.display().to_string(), &text)
}

/// Parses and validates configuration text; `source_name` names it in errors.
pub fn parse(source_name: &str, text: &str) -> Result<ProxyConfig, ConfigError> {
    let invalid = |problems| ConfigError::Invalid {
        source_name: source_name.to_owned(),
        problems,
    };
    let mut field = String::new();
    let parsed: Result<ProxyConfig, serde_saphyr::Error> =
        serde_saphyr::with_deserializer_from_str(text, |de| {
            serde_path_to_error::deserialize(de).map_err(|e| {
                field = e.path().to_string();
                e.into_inner()
            })
        });
    let config = match parsed {
        Ok(config) => config,
        Err(e) => {
            let location = e.location();
            if field == "." {
                field.clear();
            }
            return Err(invalid(vec![Problem {
                line: location.map(|l| l.line() as usize),
                column: location.map(|l| l.column() as usize),
                field,
                message: first_line(&e.without_snippet().to_string()),
            }]));
        }
    };
    let problems = validate(&config);
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(invalid(problems))
    }
}

/// saphyr renders "error: line L column C: message" and a snippet; keep the message alone.
fn first_line(rendered: &str) -> String {
    let line = rendered.lines().next().unwrap_or_default();
    let line = line.strip_prefix("error: ").unwrap_or(line);
    let message = match line.split_once(": ") {
        Some((head, rest)) if head.starts_with("line ") => rest,
        _ => line,
    };
    // Some messages repeat the location at the end; it is already in front.
    match message.rfind(" at line ") {
        Some(i) if message[i..].contains(", column ") => message[..i].to_owned(),
        _ => message.to_owned(),
    }
}

// === validation ===

struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    fn at<T>(&mut self, spanned: &Spanned<T>, field: String, message: impl Into<String>) {
        let loc = spanned.referenced;
        let known = loc.line() > 0;
        self.problems.push(Problem {
            line: known.then(|| loc.line() as usize),
            column: known.then(|| loc.column() as usize),
            field,
            message: message.into(),
        });
    }

    fn nowhere(&mut self, field: String, message: impl Into<String>) {
        self.problems.push(Problem {
            line: None,
            column: None,
            field,
            message: message.into(),
        });
    }
}

/// Checks everything serde cannot: references, uniqueness, address and domain syntax.
/// Returns every problem found, ordered by position in the file.
pub fn validate(config: &ProxyConfig) -> Vec<Problem> {
    let mut v = Validator {
        problems: Vec::new(),
    };

    let mut cluster_names: HashMap<&str, usize> = HashMap::new();
    for (ci, cluster) in config.clusters.iter().enumerate() {
        let base = format!("clusters[{ci}]");
        if cluster.name.value.is_empty() {
            v.at(&cluster.name, format!("{base}.name"), "must not be empty");
        } else if let Some(first) = cluster_names.insert(&cluster.name.value, ci) {
            v.at(
                &cluster.name,
                format!("{base}.name"),
                format!(
                    "duplicate cluster name {:?} (also clusters[{first}])",
                    cluster.name.value
                ),
            );
        }
        let mut seen = HashSet::new();
        for (ei, ep) in cluster.endpoints.iter().enumerate() {
            let field = format!("{base}.endpoints[{ei}].address");
            if let Err(msg) = check_endpoint_address(&ep.address.value) {
                v.at(&ep.address, field, msg);
            } else if !seen.insert(ep.address.value.to_ascii_lowercase()) {
                v.at(
                    &ep.address,
                    field,
                    format!("duplicate endpoint {:?} in this cluster", ep.address.value),
                );
            }
        }
    }

    let mut addresses: HashMap<SocketAddr, usize> = HashMap::new();
    let mut listener_names: HashMap<&str, usize> = HashMap::new();
    for (li, listener) in config.listeners.iter().enumerate() {
        let base = format!("listeners[{li}]");
        match listener.address.value.parse::<SocketAddr>() {
            Err(_) => v.at(
                &listener.address,
                format!("{base}.address"),
                format!(
                    "invalid socket address {:?} (expected ip:port, e.g. \"0.0.0.0:8080\")",
                    listener.address.value
                ),
            ),
            Ok(addr) => {
                if let Some(first) = addresses.insert(addr, li) {
                    v.at(
                        &listener.address,
                        format!("{base}.address"),
                        format!("address {addr} is already used by listeners[{first}]"),
                    );
                }
            }
        }
        if let Some(name) = &listener.name {
            if let Some(first) = listener_names.insert(&name.value, li) {
                v.at(
                    name,
                    format!("{base}.name"),
                    format!(
                        "duplicate listener name {:?} (also listeners[{first}])",
                        name.value
                    ),
                );
            }
        }
        if listener.protocol.value != "http" {
            v.at(
                &listener.protocol,
                format!("{base}.protocol"),
                format!(
                    "unsupported protocol {:?} (supported: \"http\")",
                    listener.protocol.value
                ),
            );
        }
        if listener.filters.len() != 1 {
            v.nowhere(
                format!("{base}.filters"),
                format!(
                    "expected exactly one filter (a router), found {}",
                    listener.filters.len()
                ),
            );
        }
        for (fi, filter) in listener.filters.iter().enumerate() {
            let fbase = format!("{base}.filters[{fi}]");
            if filter.kind.value != "router" {
                v.at(
                    &filter.kind,
                    format!("{fbase}.type"),
                    format!(
                        "unknown filter type {:?} (supported: \"router\")",
                        filter.kind.value
                    ),
                );
            }
            validate_router(
                &mut v,
                &filter.config,
                &format!("{fbase}.config"),
                &cluster_names,
            );
        }
    }

    if let Some(admin) = &config.admin {
        if let Ok(addr) = admin.address.value.parse::<SocketAddr>() {
            // Port 0 asks the OS for a free port: it cannot collide.
            if let Some(li) = addresses.get(&addr).filter(|_| addr.port() != 0) {
                v.at(
                    &admin.address,
                    "admin.address".into(),
                    format!("address {addr} is already used by listeners[{li}]"),
                );
            }
        } else {
            v.at(
                &admin.address,
                "admin.address".into(),
                format!(
                    "invalid socket address {:?} (expected ip:port, e.g. \"127.0.0.1:9901\")",
                    admin.address.value
                ),
            );
        }
    }

    v.problems
        .sort_by_key(|p| (p.line.unwrap_or(usize::MAX), p.column.unwrap_or(0)));
    v.problems
}

fn validate_router(
    v: &mut Validator,
    router: &RouterConfig,
    base: &str,
    clusters: &HashMap<&str, usize>,
) {
    let mut vhost_names: HashSet<&str> = HashSet::new();
    let mut domains: HashMap<String, usize> = HashMap::new();
    for (hi, vhost) in router.virtual_hosts.iter().enumerate() {
        let hbase = format!("{base}.virtual_hosts[{hi}]");
        if !vhost_names.insert(&vhost.name.value) {
            v.at(
                &vhost.name,
                format!("{hbase}.name"),
                format!("duplicate virtual host name {:?}", vhost.name.value),
            );
        }
        if vhost.domains.is_empty() {
            v.nowhere(
                format!("{hbase}.domains"),
                "needs at least one domain (\"*\" matches any)",
            );
        }
        for (di, domain) in vhost.domains.iter().enumerate() {
            let field = format!("{hbase}.domains[{di}]");
            if let Err(msg) = check_domain(&domain.value) {
                v.at(domain, field, msg);
            } else if let Some(first) = domains.insert(domain.value.to_ascii_lowercase(), hi) {
                v.at(
                    domain,
                    field,
                    format!(
                        "domain {:?} is already served by virtual_hosts[{first}]",
                        domain.value
                    ),
                );
            }
        }
        for (ri, route) in vhost.routes.iter().enumerate() {
            validate_route(v, route, &format!("{hbase}.routes[{ri}]"), clusters);
        }
    }
}

fn validate_route(
    v: &mut Validator,
    route: &RouteConfig,
    base: &str,
    clusters: &HashMap<&str, usize>,
) {
    let m = &route.matcher;
    match (&m.prefix, &m.path) {
        (Some(_), Some(path)) => v.at(
            path,
            format!("{base}.match.path"),
            "set either prefix or path, not both",
        ),
        (None, None) => v.nowhere(
            format!("{base}.match"),
            "needs a prefix or a path (prefix \"/\" matches everything)",
        ),
        (Some(p), None) | (None, Some(p)) => {
            if !p.value.starts_with('/') {
                let which = if m.prefix.is_some() { "prefix" } else { "path" };
                v.at(
                    p,
                    format!("{base}.match.{which}"),
                    format!("must start with '/', got {:?}", p.value),
                );
            }
        }
    }
    for (i, h) in m.headers.iter().enumerate() {
        let field = format!("{base}.match.headers[{i}]");
        if http::HeaderName::from_bytes(h.name.value.as_bytes()).is_err() {
            v.at(
                &h.name,
                format!("{field}.name"),
                format!("invalid header name {:?}", h.name.value),
            );
        }
        let kinds = usize::from(h.string_match.is_some()) + usize::from(h.present_match.is_some());
        if kinds != 1 {
            v.at(
                &h.name,
                field.clone(),
                "set exactly one of string_match or present_match",
            );
        }
        if let Some(sm) = &h.string_match {
            let n = [&sm.exact, &sm.prefix, &sm.suffix, &sm.contains]
                .iter()
                .filter(|o| o.is_some())
                .count();
            if n != 1 {
                v.at(
                    &h.name,
                    format!("{field}.string_match"),
                    "set exactly one of exact, prefix, suffix, contains",
                );
            }
        }
    }
    let a = &route.route;
    match (&a.cluster, &a.weighted_clusters) {
        (Some(c), None) => check_cluster_ref(v, c, format!("{base}.route.cluster"), clusters),
        (None, Some(wc)) => {
            if wc.clusters.is_empty() || wc.clusters.iter().all(|c| c.weight == 0) {
                v.nowhere(
                    format!("{base}.route.weighted_clusters.clusters"),
                    "needs at least one cluster with a non-zero weight",
                );
            }
            let mut seen = HashSet::new();
            for (i, c) in wc.clusters.iter().enumerate() {
                let field = format!("{base}.route.weighted_clusters.clusters[{i}].name");
                if !seen.insert(c.name.value.as_str()) {
                    v.at(
                        &c.name,
                        field,
                        format!("cluster {:?} listed twice", c.name.value),
                    );
                } else {
                    check_cluster_ref(v, &c.name, field, clusters);
                }
            }
        }
        (Some(c), Some(_)) => v.at(
            c,
            format!("{base}.route"),
            "set either cluster or weighted_clusters, not both",
        ),
        (None, None) => v.nowhere(
            format!("{base}.route"),
            "needs a cluster or weighted_clusters",
        ),
    }
}

fn check_cluster_ref(
    v: &mut Validator,
    name: &Spanned<String>,
    field: String,
    clusters: &HashMap<&str, usize>,
) {
    if !clusters.contains_key(name.value.as_str()) {
        let mut known: Vec<&str> = clusters.keys().copied().collect();
        known.sort_unstable();
        v.at(
            name,
            field,
            format!(
                "unknown cluster {:?} (defined: {})",
                name.value,
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

fn check_domain(domain: &str) -> Result<(), String> {
    if domain == "*" {
        return Ok(());
    }
    let core = domain
        .strip_prefix('*')
        .or_else(|| domain.strip_suffix('*'))
        .unwrap_or(domain);
    if core.is_empty()
        || core.contains('*')
        || !core
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(format!(
            "invalid domain {domain:?} (use a name, \"*.suffix\", \"prefix.*\" or \"*\")"
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
    fn accepts_the_users_shape() {
        let c = parse("sample.yaml", SAMPLE).unwrap();
        assert_eq!(c.listeners.len(), 1);
        let vh = &c.listeners[0].filters[0].config.virtual_hosts[0];
        assert_eq!(vh.domains[0].value, "api.example.com");
        assert_eq!(
            vh.routes[0].route.cluster.as_ref().unwrap().value,
            "backend-v1"
        );
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
    fn bad_lb_policy_and_syntax_errors_have_lines() {
        let p = problems(&SAMPLE.replace("round_robin", "random"));
        assert_eq!(p[0].line, Some(16));
        assert_eq!(p[0].field, "clusters[0].lb_policy");
        let p = problems("listeners: [\n");
        assert!(p[0].line.is_some());
    }

    #[test]
    fn domain_and_endpoint_syntax() {
        for ok in ["*", "*.example.com", "api.*", "api.example.com"] {
            assert!(check_domain(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a*b", "*.*", "**", "exa mple.com", "localhost:8080"] {
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

    #[test]
    fn config_round_trips_through_json() {
        let c = parse("sample.yaml", SAMPLE).unwrap();
        let json = serde_json::to_string(&c).unwrap();
        let back: ProxyConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
        assert!(validate(&back).is_empty());
    }
}
