//! Conversions between Envoy v3 resources and gofe's configuration, both ways, in one place.
//!
//! `*_from_wire` validates: anything gofe would not honour exactly as Envoy does (a regex match,
//! a redirect, an unknown load-balancing policy, a header mutation, …) is a [`ConvertError`]
//! naming the resource and the Envoy field path, so the client NACKs it instead of serving
//! something else. Each message is taken apart field by field (an exhaustive destructuring,
//! so a field added to Envoy's protos fails the build until someone decides about it): every
//! field is read, refused when set to anything but its default, or ignored by design — the
//! list, with reasons, is `proto/README.md`.
//!
//! `*_to_wire` writes the canonical Envoy form gofe's control plane serves: listeners with one
//! HTTP connection manager taking its routes from RDS over ADS and ending in the router filter,
//! EDS clusters over ADS, and one locality per endpoint carrying its weight (see
//! [`endpoints_to_wire`]). Every field of the proxy's configuration travels in Envoy's own
//! field for it; the few values Envoy cannot express (an endpoint weight of 0, a half-open
//! trial count, an unnamed listener) ride in `metadata.filter_metadata["gofe"]`, which Envoy
//! ignores, next to the closest Envoy form. [`from_proxy_config`] refuses, with the field's
//! path, a value that has no Envoy form at all.
//!
//! [`Resources::accept_response`] takes a state-of-the-world response into the resources a
//! client holds the way Envoy does: the valid resources are taken, each refused one keeps its
//! previous version, and the refusals are listed by resource name for the NACK.

mod access_logs;
mod api_listeners;
mod clusters;
mod endpoints;
mod faults;
mod listeners;
mod ratelimits;
mod rbac;
mod route_actions;
mod routes;
mod tcp_proxies;
mod tracers;
mod upstream_tls;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::http::buffer::v3 as buffer;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as upstream_http;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::google::protobuf::{
    value, Any, BoolValue, Duration as PbDuration, Struct, UInt32Value, Value,
};
use gofe_model::{
    ClusterConfig, ClusterWeightConfig, EndpointConfig, FilterConfig, HeaderMatcherConfig,
    HealthStatus, Http2ProtocolOptions, LbPolicy, ListenerConfig, LocalityConfig, Problem,
    ProxyConfig, RetryPolicyConfig, RouteActionConfig, RouteConfig, RouteMatchConfig, RouterConfig,
    StringMatchConfig, VirtualHostConfig, WeightedClustersConfig, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_ROUTE_TIMEOUT,
};
use prost::{Message, Name};

use crate::resource::*;

pub use access_logs::{FILE_ACCESS_LOG_NAME, STDOUT_ACCESS_LOG_NAME};
pub use api_listeners::{
    add_api_listeners, api_listener_resources, ApiListener, ApiListenerSkipped,
};
pub use clusters::{cluster_from_wire, cluster_to_wire, empty_cluster};
pub use endpoints::{endpoints_from_wire, endpoints_to_wire};
pub use faults::FAULT_FILTER_NAME;
pub use listeners::{listener_from_wire, listener_to_wire};
pub use ratelimits::LOCAL_RATELIMIT_FILTER_NAME;
pub use rbac::RBAC_FILTER_NAME;
pub use routes::{route_from_wire, route_to_wire};
pub use tcp_proxies::{ORIGINAL_DST_FILTER_NAME, TCP_PROXY_FILTER_NAME};
pub use tracers::OPENTELEMETRY_TRACER_NAME;

/// Name of the HTTP connection manager network filter.
pub const HCM_FILTER_NAME: &str = "envoy.filters.network.http_connection_manager";
/// Name of the connection limit network filter (a listener's `max_connections`).
pub const CONNECTION_LIMIT_FILTER_NAME: &str = "envoy.filters.network.connection_limit";
/// Name of the router HTTP filter.
pub const ROUTER_FILTER_NAME: &str = "envoy.filters.http.router";
/// Name of the buffer HTTP filter (a route's `max_request_bytes`, configured per route).
pub const BUFFER_FILTER_NAME: &str = "envoy.filters.http.buffer";
/// Name of the retry host predicate that steers a retry away from the endpoints already tried.
pub const PREVIOUS_HOSTS_PREDICATE: &str = "envoy.retry_host_predicates.previous_hosts";
/// Name of the TLS transport socket.
pub const TLS_TRANSPORT_SOCKET_NAME: &str = "envoy.transport_sockets.tls";
/// Key of the upstream HTTP protocol options in `typed_extension_protocol_options`.
pub const HTTP_PROTOCOL_OPTIONS_KEY: &str =
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";
/// The `filter_metadata` namespace of the values only gofe reads (Envoy ignores it).
pub const GOFE_METADATA: &str = "gofe";

/// Why a resource was refused, or a configuration cannot be published.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// The bytes are not a valid message of the announced type.
    #[error("{type_url}: cannot decode: {source}")]
    Decode {
        /// The type URL.
        type_url: String,
        /// The decoder's error.
        #[source]
        source: prost::DecodeError,
    },
    /// Not one of the four resource types, or not the type the response announced.
    #[error("unexpected resource type {0:?}")]
    UnexpectedType(String),
    /// Decoded, but invalid or not supported by gofe.
    #[error("{resource}: {field}: {message}")]
    Invalid {
        /// Which resource, e.g. `Cluster "web"`.
        resource: String,
        /// The Envoy field path inside it.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A resource whose nested message could not be read (a decode error or an unexpected
    /// type inside it), named.
    #[error("{resource}: {source}")]
    InResource {
        /// Which resource, e.g. `Listener "ingress"`.
        resource: String,
        /// What went wrong inside it.
        #[source]
        source: Box<ConvertError>,
    },
    /// Several refusals of one resource, each naming its field (a NACK lists every one, so a
    /// control plane's operator sees them all at once).
    #[error("{}", join_errors(.0))]
    Several(Vec<ConvertError>),
    /// A value of the proxy's configuration that no Envoy field can carry, so it cannot be
    /// published over xDS (it would be lost on the way).
    #[error("{field}: {message}")]
    Unpublishable {
        /// The field path in the proxy's configuration, e.g. `listeners[0].max_connections`.
        field: String,
        /// Why it has no Envoy form.
        message: String,
    },
}

fn join_errors(errors: &[ConvertError]) -> String {
    let parts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    parts.join("; ")
}

/// Collects the refusals of the independent parts of one resource, so that all of them are
/// reported, not only the first.
#[derive(Default)]
struct Refusals(Vec<ConvertError>);

impl Refusals {
    /// The value, or `None` with its refusal kept.
    fn take<T>(&mut self, r: Result<T, ConvertError>) -> Option<T> {
        match r {
            Ok(t) => Some(t),
            Err(e) => {
                self.push(e);
                None
            }
        }
    }

    fn push(&mut self, e: ConvertError) {
        match e {
            ConvertError::Several(all) => self.0.extend(all),
            e => self.0.push(e),
        }
    }

    /// `Ok(())` when nothing was refused; else the one refusal, or all of them.
    fn finish(mut self) -> Result<(), ConvertError> {
        match self.0.len() {
            0 => Ok(()),
            1 => Err(self.0.remove(0)),
            _ => Err(ConvertError::Several(self.0)),
        }
    }

    /// `value` when nothing was refused (it is then `Some`); else the refusals.
    fn finish_with<T>(self, value: Option<T>) -> Result<T, ConvertError> {
        self.finish()?;
        value.ok_or_else(|| invalid("", "", "a part was refused without a reason"))
    }
}

fn invalid(resource: &str, field: &str, message: impl Into<String>) -> ConvertError {
    ConvertError::Invalid {
        resource: resource.to_owned(),
        field: field.to_owned(),
        message: message.into(),
    }
}

fn unsupported(resource: &str, field: &str) -> ConvertError {
    invalid(resource, field, "not supported by gofe")
}

fn not_publishable(field: impl Into<String>, message: impl Into<String>) -> ConvertError {
    ConvertError::Unpublishable {
        field: field.into(),
        message: message.into(),
    }
}

/// `base.name`, or `name` when `base` is empty.
fn join(base: &str, name: &str) -> String {
    if base.is_empty() {
        name.to_owned()
    } else {
        format!("{base}.{name}")
    }
}

/// Collects the fields of one message that gofe does not support, so they are refused
/// together, each by its Envoy path.
struct Unsupported<'a> {
    resource: &'a str,
    base: String,
    fields: Vec<String>,
}

impl<'a> Unsupported<'a> {
    fn new(resource: &'a str, base: &str) -> Self {
        Unsupported {
            resource,
            base: base.to_owned(),
            fields: Vec::new(),
        }
    }

    /// Refuses `field` when it is set to anything but its protobuf default.
    fn set<T: Default + PartialEq>(&mut self, field: &str, value: &T) -> &mut Self {
        self.when(field, *value != T::default())
    }

    /// Refuses `field` when `refused`.
    fn when(&mut self, field: &str, refused: bool) -> &mut Self {
        if refused {
            self.fields.push(join(&self.base, field));
        }
        self
    }

    /// A `BoolValue` whose default is `false`: refused when `true`.
    fn truthy(&mut self, field: &str, value: &Option<BoolValue>) -> &mut Self {
        self.when(field, value.as_ref().is_some_and(|b| b.value))
    }

    fn finish(&mut self) -> Result<(), ConvertError> {
        if self.fields.is_empty() {
            return Ok(());
        }
        Err(invalid(
            self.resource,
            &std::mem::take(&mut self.fields).join(", "),
            "not supported by gofe",
        ))
    }
}

/// Packs a message into an `Any` with its Envoy type URL.
pub fn to_any<M: Message + Name>(message: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

fn from_any<M: Message + Name + Default>(any: &Any) -> Result<M, ConvertError> {
    if any.type_url != M::type_url() {
        return Err(ConvertError::UnexpectedType(any.type_url.clone()));
    }
    M::decode(any.value.as_slice()).map_err(|source| ConvertError::Decode {
        type_url: any.type_url.clone(),
        source,
    })
}

/// The longest duration a `google.protobuf.Duration` may hold (10 000 years).
const MAX_PB_SECONDS: u64 = 315_576_000_000;

/// A duration of the proxy's configuration that a `google.protobuf.Duration` cannot hold.
fn check_pb_duration(d: Duration, field: String) -> Result<(), ConvertError> {
    if d.as_secs() > MAX_PB_SECONDS {
        return Err(not_publishable(
            field,
            "longer than the 10 000 years a protobuf Duration holds",
        ));
    }
    Ok(())
}

fn pb_duration(d: Duration) -> PbDuration {
    PbDuration {
        seconds: d.as_secs().min(MAX_PB_SECONDS) as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn duration_from_pb(d: &PbDuration, resource: &str, field: &str) -> Result<Duration, ConvertError> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(invalid(resource, field, "negative or malformed duration"));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
}

/// An optional wire duration, or `default` when unset.
fn duration_or(
    d: &Option<PbDuration>,
    default: Duration,
    resource: &str,
    field: &str,
) -> Result<Duration, ConvertError> {
    d.as_ref()
        .map_or(Ok(default), |d| duration_from_pb(d, resource, field))
}

fn u32v(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

fn ads_config_source() -> core::ConfigSource {
    core::ConfigSource {
        resource_api_version: core::ApiVersion::V3 as i32,
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
            core::AggregatedConfigSource {},
        )),
        ..Default::default()
    }
}

/// gofe subscribes to everything over the one ADS stream: ADS and `self` are the sources it
/// can follow.
fn check_config_source(
    source: Option<&core::ConfigSource>,
    resource: &str,
    field: &str,
) -> Result<(), ConvertError> {
    use core::config_source::ConfigSourceSpecifier as S;
    match source.and_then(|s| s.config_source_specifier.as_ref()) {
        Some(S::Ads(_)) | Some(S::Self_(_)) => Ok(()),
        _ => Err(invalid(
            resource,
            field,
            "only ADS (`ads: {}`) or `self` config sources are supported",
        )),
    }
}

fn socket_address(host: &str, port: u16) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: host.to_owned(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(port.into())),
            ..Default::default()
        })),
    }
}

/// `host:port` (`[v6]:port`) of a TCP socket address.
fn address_from_wire(
    a: Option<&core::Address>,
    resource: &str,
    field: &str,
) -> Result<String, ConvertError> {
    let Some(core::address::Address::SocketAddress(sa)) = a.and_then(|a| a.address.as_ref()) else {
        return Err(invalid(resource, field, "needs a socket_address"));
    };
    let core::SocketAddress {
        protocol,
        address,
        resolver_name,
        // Dual-stack binding of `::` follows the operating system's default.
        ipv4_compat: _,
        network_namespace_filepath,
        port_specifier,
    } = sa;
    let sfield = join(field, "socket_address");
    Unsupported::new(resource, &sfield)
        .set("resolver_name", resolver_name)
        .set("network_namespace_filepath", network_namespace_filepath)
        .finish()?;
    if *protocol != core::socket_address::Protocol::Tcp as i32 {
        return Err(invalid(
            resource,
            &join(&sfield, "protocol"),
            "only TCP is supported",
        ));
    }
    let port = match port_specifier {
        Some(core::socket_address::PortSpecifier::PortValue(p)) if *p <= 65535 => *p,
        _ => {
            return Err(invalid(
                resource,
                &join(&sfield, "port_value"),
                "needs a port_value in 0..=65535 (named ports are not supported)",
            ))
        }
    };
    if address.is_empty() {
        return Err(invalid(resource, &join(&sfield, "address"), "empty"));
    }
    Ok(if address.contains(':') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
    })
}

fn split_host_port(address: &str) -> (&str, u16) {
    match address.rsplit_once(':') {
        Some((host, port)) => (
            host.trim_start_matches('[').trim_end_matches(']'),
            port.parse().unwrap_or(0),
        ),
        None => (address, 0),
    }
}

// === gofe metadata ===

/// `metadata.filter_metadata["gofe"]` holding `fields`, or `None` when there are none.
fn gofe_metadata(fields: Vec<(&str, value::Kind)>) -> Option<core::Metadata> {
    if fields.is_empty() {
        return None;
    }
    let s = Struct {
        fields: fields
            .into_iter()
            .map(|(k, v)| (k.to_owned(), Value { kind: Some(v) }))
            .collect(),
    };
    Some(core::Metadata {
        filter_metadata: HashMap::from([(GOFE_METADATA.to_owned(), s)]),
        ..Default::default()
    })
}

/// Reads gofe's metadata values; other namespaces (and typed metadata) are not gofe's and are
/// ignored, as Envoy ignores gofe's.
struct GofeMetadata<'a>(Option<&'a Struct>);

impl<'a> GofeMetadata<'a> {
    fn of(m: &'a Option<core::Metadata>) -> Self {
        GofeMetadata(
            m.as_ref()
                .and_then(|m| m.filter_metadata.get(GOFE_METADATA)),
        )
    }

    fn kind(&self, key: &str) -> Option<&'a value::Kind> {
        self.0?.fields.get(key)?.kind.as_ref()
    }

    fn u32(&self, key: &str, resource: &str, field: &str) -> Result<Option<u32>, ConvertError> {
        match self.kind(key) {
            None => Ok(None),
            Some(value::Kind::NumberValue(n))
                if n.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(n) =>
            {
                Ok(Some(*n as u32))
            }
            Some(_) => Err(invalid(
                resource,
                &format!("{field}.filter_metadata[\"gofe\"].{key}"),
                "must be a whole number in 0..=4294967295",
            )),
        }
    }

    fn bool(&self, key: &str) -> bool {
        matches!(self.kind(key), Some(value::Kind::BoolValue(true)))
    }

    fn str(&self, key: &str) -> Option<&'a str> {
        match self.kind(key) {
            Some(value::Kind::StringValue(s)) => Some(s),
            _ => None,
        }
    }
}

// === decode any ===

/// Decodes and validates one resource of the given type.
pub fn decode_resource(expected: ResourceType, any: &Any) -> Result<DecodedResource, ConvertError> {
    decode_checked(expected, any)
        .map(|c| c.resource)
        .map_err(|(_, e)| e)
}

/// Clusters a resource names, each as `(Envoy path of the reference, cluster name)`.
type ClusterRefs = Vec<(String, String)>;

/// A decoded resource and the clusters it requires to exist (`validate_clusters`).
struct Checked {
    resource: DecodedResource,
    required_clusters: ClusterRefs,
}

/// Decodes and validates one resource; a refusal carries the resource's name when the bytes
/// decoded far enough to have one.
fn decode_checked(
    expected: ResourceType,
    any: &Any,
) -> Result<Checked, (Option<String>, ConvertError)> {
    if any.type_url != expected.type_url() {
        return Err((None, ConvertError::UnexpectedType(any.type_url.clone())));
    }
    let no_name = |e| (None, e);
    Ok(match expected {
        ResourceType::Listener => {
            let l: listener::Listener = from_any(any).map_err(no_name)?;
            let (resource, required_clusters) = listeners::listener_from_wire_checked(&l)
                .map_err(|e| (Some(listeners::listener_key(&l)), e))?;
            Checked {
                resource: DecodedResource::Listener(resource),
                required_clusters,
            }
        }
        ResourceType::Route => {
            let r: route::RouteConfiguration = from_any(any).map_err(no_name)?;
            let res = format!("RouteConfiguration {:?}", r.name);
            let (resource, validate) =
                routes::route_from_wire_in(&r, &res, "").map_err(|e| (Some(r.name.clone()), e))?;
            let required_clusters = if validate {
                routes::cluster_refs(&resource.router, "")
            } else {
                Vec::new()
            };
            Checked {
                resource: DecodedResource::Route(resource),
                required_clusters,
            }
        }
        ResourceType::Cluster => {
            let c: cluster::Cluster = from_any(any).map_err(no_name)?;
            Checked {
                resource: DecodedResource::Cluster(
                    cluster_from_wire(&c).map_err(|e| (Some(c.name.clone()), e))?,
                ),
                required_clusters: Vec::new(),
            }
        }
        ResourceType::Endpoints => {
            let e: endpoint::ClusterLoadAssignment = from_any(any).map_err(no_name)?;
            Checked {
                resource: DecodedResource::Endpoints(
                    endpoints_from_wire(&e).map_err(|err| (Some(e.cluster_name.clone()), err))?,
                ),
                required_clusters: Vec::new(),
            }
        }
    })
}

/// Runs the proxy configuration's own checks on one converted resource (as a part of a
/// configuration, so references to clusters defined elsewhere are fine) and refuses the
/// resource with the first problem. The conversions check the same things with Envoy paths
/// first; this is the backstop that keeps one bad resource from failing a whole assembly.
fn model_check(
    piece: &ProxyConfig,
    resource: &str,
    strip: &str,
    base: &str,
) -> Result<(), ConvertError> {
    let mut v = gofe_yaml::Validator::default();
    piece.validate_partial(&mut v);
    match v.finish().into_iter().next() {
        None => Ok(()),
        Some(p) => {
            let field = p.field.strip_prefix(strip).unwrap_or(&p.field);
            Err(invalid(resource, &join(base, field), p.message))
        }
    }
}

// === whole configurations ===

/// Every resource a client may hold, keyed by name.
#[derive(Clone, Debug, Default)]
pub struct Resources {
    /// Listeners.
    pub listeners: BTreeMap<String, ListenerResource>,
    /// Route configurations.
    pub routes: BTreeMap<String, RouteResource>,
    /// Clusters.
    pub clusters: BTreeMap<String, ClusterResource>,
    /// Load assignments, by EDS service name.
    pub endpoints: BTreeMap<String, EndpointsResource>,
    /// Route configurations refused on their first arrival (no version to keep): a listener
    /// naming one over RDS is served with no routes (404) until a valid version arrives, as
    /// Envoy readies such a listener (`RdsRouteConfigSubscription::onConfigUpdateFailed`).
    pub refused_routes: BTreeSet<String>,
}

/// What one state-of-the-world response does to the resources a client holds.
#[derive(Debug)]
pub struct ResponseUpdate {
    /// The resources after the response: each valid resource of it in place and, for LDS and
    /// CDS, the ones it leaves out removed; each refused resource at its previous version (or
    /// absent if it had none).
    pub resources: Resources,
    /// Every refused resource with why, naming it (Envoy's NACK lists these but applies the
    /// rest). Empty when the whole response was taken.
    pub refused: Vec<ConvertError>,
}

impl Resources {
    /// The encoded resources of one type, by name.
    pub fn encode(&self, t: ResourceType) -> Result<BTreeMap<String, Any>, ConvertError> {
        let mut out = BTreeMap::new();
        match t {
            ResourceType::Listener => {
                for (n, l) in &self.listeners {
                    out.insert(n.clone(), to_any(&listener_to_wire(l)?));
                }
            }
            ResourceType::Route => {
                for (n, r) in &self.routes {
                    out.insert(n.clone(), to_any(&route_to_wire(r)?));
                }
            }
            ResourceType::Cluster => {
                for (n, c) in &self.clusters {
                    out.insert(n.clone(), to_any(&cluster_to_wire(c)?));
                }
            }
            ResourceType::Endpoints => {
                for (n, e) in &self.endpoints {
                    out.insert(n.clone(), to_any(&endpoints_to_wire(e)));
                }
            }
        }
        Ok(out)
    }

    /// Takes a state-of-the-world response of type `ty` into these resources, resource by
    /// resource, as Envoy does: a resource that does not decode, that gofe cannot honour, that
    /// repeats a name of the response, that binds an address another listener (or `base`'s
    /// admin) already has, or that asks for `validate_clusters` and names a cluster nobody
    /// defines, is refused and keeps its previous version; the others are taken. `base` is the
    /// static configuration the resources are assembled with.
    pub fn accept_response(
        &self,
        ty: ResourceType,
        response: &[Any],
        base: &ProxyConfig,
    ) -> ResponseUpdate {
        let mut refused = Vec::new();
        // In response order: the name, and the new version when it was accepted.
        let mut entries: Vec<(String, Option<Checked>)> = Vec::new();
        let mut seen = HashSet::new();
        // A resource refused before its name could be read (bytes that do not decode).
        let mut unnamed = false;
        for any in response {
            match decode_checked(ty, any) {
                Ok(c) => {
                    let name = c.resource.name().to_owned();
                    if !seen.insert(name.clone()) {
                        refused.push(invalid(
                            &resource_label(ty, &name),
                            "name",
                            "the response holds this resource twice",
                        ));
                        continue;
                    }
                    entries.push((name, Some(c)));
                }
                Err((name, e)) => {
                    refused.push(match (&name, e) {
                        (
                            Some(n),
                            e @ (ConvertError::Decode { .. } | ConvertError::UnexpectedType(_)),
                        ) => ConvertError::InResource {
                            resource: resource_label(ty, n),
                            source: Box::new(e),
                        },
                        (_, e) => e,
                    });
                    unnamed |= name.is_none();
                    if let Some(name) = name.filter(|n| seen.insert(n.clone())) {
                        entries.push((name, None));
                    }
                }
            }
        }
        let mut next = self.clone();
        // The response is the whole set: what it does not name is gone — unless one of its
        // resources could not even be named, when the set is unknown and nothing is removed
        // (a resource that fails to decode must not delete the one it was meant to update;
        // Envoy rejects such a response whole).
        if ty.wildcard_by_default() && !unnamed {
            let named: HashSet<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
            match ty {
                ResourceType::Listener => next.listeners.retain(|n, _| named.contains(n.as_str())),
                _ => next.clusters.retain(|n, _| named.contains(n.as_str())),
            }
        }
        let known_clusters: HashSet<String> = base
            .clusters
            .iter()
            .map(|c| c.name.clone())
            .chain(next.clusters.keys().cloned())
            .chain(
                entries
                    .iter()
                    .filter(|_| ty == ResourceType::Cluster)
                    .filter_map(|(n, c)| c.as_ref().map(|_| n.clone())),
            )
            .collect();
        // Addresses bound by the static listeners, the admin listener, and the dynamic
        // listeners that keep their version.
        let mut taken: HashMap<SocketAddr, String> = HashMap::new();
        if ty == ResourceType::Listener {
            let static_names: HashSet<String> = base.listeners.iter().map(listener_name).collect();
            for l in &base.listeners {
                if let Ok(a) = l.address.parse::<SocketAddr>() {
                    taken.insert(a, format!("static listener {:?}", listener_name(l)));
                }
            }
            if let Some(a) = base
                .admin
                .as_ref()
                .and_then(|a| a.address.parse::<SocketAddr>().ok())
                .filter(|a| a.port() != 0)
            {
                taken.insert(a, "the admin listener".into());
            }
            // Listeners named like a static one are not served (the static one wins).
            entries.retain(|(n, _)| !static_names.contains(n));
            for (name, c) in &entries {
                if c.is_none() {
                    if let Some(a) = next.listeners.get(name).and_then(socket_of) {
                        taken.insert(a, format!("listener {name:?}"));
                    }
                }
            }
        }
        for (name, checked) in entries {
            let Some(Checked {
                resource,
                required_clusters,
            }) = checked
            else {
                if ty == ResourceType::Route && !next.routes.contains_key(&name) {
                    next.refused_routes.insert(name);
                }
                continue;
            };
            let label = resource_label(ty, &name);
            if let Some((field, missing)) = required_clusters
                .iter()
                .find(|(_, c)| !known_clusters.contains(c))
            {
                refused.push(invalid(
                    &label,
                    field,
                    format!("unknown cluster {missing:?} (validate_clusters is set)"),
                ));
                if ty == ResourceType::Route && !next.routes.contains_key(&name) {
                    next.refused_routes.insert(name);
                }
                continue;
            }
            match resource {
                DecodedResource::Listener(l) => {
                    if let Some(a) = socket_of(&l) {
                        if let Some(holder) = taken.get(&a) {
                            refused.push(invalid(
                                &label,
                                "address",
                                format!("{a} is already bound by {holder}"),
                            ));
                            if let Some(old) = next.listeners.get(&name).and_then(socket_of) {
                                taken
                                    .entry(old)
                                    .or_insert_with(|| format!("listener {name:?}"));
                            }
                            continue;
                        }
                        taken.insert(a, format!("listener {name:?}"));
                    }
                    next.listeners.insert(name, l);
                }
                DecodedResource::Route(r) => {
                    next.refused_routes.remove(&name);
                    next.routes.insert(name, r);
                }
                DecodedResource::Cluster(c) => drop(next.clusters.insert(name, c)),
                DecodedResource::Endpoints(e) => drop(next.endpoints.insert(name, e)),
            }
        }
        ResponseUpdate {
            resources: next,
            refused,
        }
    }
}

fn resource_label(ty: ResourceType, name: &str) -> String {
    let kind = match ty {
        ResourceType::Listener => "Listener",
        ResourceType::Route => "RouteConfiguration",
        ResourceType::Cluster => "Cluster",
        ResourceType::Endpoints => "ClusterLoadAssignment",
    };
    format!("{kind} {name:?}")
}

fn socket_of(l: &ListenerResource) -> Option<SocketAddr> {
    match &l.kind {
        ListenerKind::Socket { address, .. } => address.parse().ok(),
        ListenerKind::Api => None,
    }
}

/// A listener's name: its own, or its address.
fn listener_name(l: &ListenerConfig) -> String {
    l.name.as_ref().unwrap_or(&l.address).clone()
}

/// What of `config` is deliberately not published over xDS, as notes for the controller to log
/// or refuse: the `admin` listener belongs to each proxy's bootstrap, as in Envoy, where the
/// admin interface is not an xDS resource.
pub fn unpublishable(config: &ProxyConfig) -> Vec<Problem> {
    let mut notes = Vec::new();
    if config.admin.is_some() {
        notes.push(Problem {
            line: None,
            column: None,
            field: "admin".into(),
            message: "the admin listener is not an xDS resource and is not published: it \
                      belongs to each proxy's bootstrap (as in Envoy)"
                .into(),
        });
    }
    if config.locality.is_some() {
        notes.push(Problem {
            line: None,
            column: None,
            field: "locality".into(),
            message: "the proxy's own locality is not an xDS resource and is not published: \
                      it belongs to each proxy's bootstrap (node.locality, as in Envoy)"
                .into(),
        });
    }
    notes
}

/// Values of the proxy's configuration that no Envoy field can carry: the first, by its path.
fn check_publishable(config: &ProxyConfig) -> Result<(), ConvertError> {
    for (li, l) in config.listeners.iter().enumerate() {
        let base = format!("listeners[{li}]");
        listeners::check_publishable(l, &base)?;
        for (fi, f) in l.filters.iter().enumerate() {
            for (hi, vh) in f.config.virtual_hosts.iter().enumerate() {
                routes::check_host_publishable(
                    vh,
                    &format!("{base}.filters[{fi}].config.virtual_hosts[{hi}]"),
                )?;
                for (ri, r) in vh.routes.iter().enumerate() {
                    routes::check_publishable(
                        r,
                        &format!("{base}.filters[{fi}].config.virtual_hosts[{hi}].routes[{ri}]"),
                    )?;
                }
            }
        }
    }
    for (ci, c) in config.clusters.iter().enumerate() {
        clusters::check_publishable(c, &format!("clusters[{ci}]"))?;
    }
    Ok(())
}

/// Splits a gofe configuration into xDS resources, the way gofe's control plane serves it:
/// each listener named `NAME` (default: its address) gets a RouteConfiguration `NAME` over
/// RDS; each cluster whose endpoints are all IP addresses is an EDS cluster with a load
/// assignment of the same name, and one with a DNS name among its endpoints a STRICT_DNS
/// cluster with its endpoints inline (EDS carries IP addresses only).
///
/// Every field travels (see the crate's README for where each goes); a value Envoy has no form
/// for is refused with its path ([`ConvertError::Unpublishable`]), never dropped. The admin
/// listener is not an xDS resource: [`unpublishable`] says so.
pub fn from_proxy_config(config: &ProxyConfig) -> Result<Resources, ConvertError> {
    check_publishable(config)?;
    let mut out = Resources::default();
    let mut names: HashMap<String, usize> = HashMap::new();
    for (li, l) in config.listeners.iter().enumerate() {
        let name = listener_name(l);
        if let Some(first) = names.insert(name.clone(), li) {
            return Err(not_publishable(
                format!("listeners[{li}].name"),
                format!("resource name {name:?} is also listeners[{first}]'s"),
            ));
        }
        let mut router = RouterConfig::default();
        for f in &l.filters {
            let c = &f.config;
            router.virtual_hosts.extend(c.virtual_hosts.iter().cloned());
            // The route configuration's own header mutations (one router filter in practice).
            router
                .request_headers_to_add
                .extend(c.request_headers_to_add.iter().cloned());
            router
                .request_headers_to_remove
                .extend(c.request_headers_to_remove.iter().cloned());
            router
                .response_headers_to_add
                .extend(c.response_headers_to_add.iter().cloned());
            router
                .response_headers_to_remove
                .extend(c.response_headers_to_remove.iter().cloned());
            router.most_specific_header_mutations_wins |= c.most_specific_header_mutations_wins;
        }
        // A tcp listener has no routes: no RouteConfiguration for it.
        let routes = if l.tcp_proxy.is_some() {
            RouteSource::Inline(RouterConfig::default())
        } else {
            out.routes.insert(
                name.clone(),
                RouteResource {
                    name: name.clone(),
                    router,
                },
            );
            RouteSource::Rds(name.clone())
        };
        out.listeners.insert(
            name.clone(),
            ListenerResource {
                name: name.clone(),
                kind: ListenerKind::Socket {
                    address: l.address.clone(),
                    settings: SocketSettings {
                        access_log: l.access_log.clone(),
                        tracing: l.tracing.clone().map(Box::new),
                        rbac: l.rbac.clone().map(Box::new),
                        tls: l.tls.clone(),
                        max_connections: l.max_connections,
                        max_request_headers_kb: l.max_request_headers_kb,
                        request_headers_timeout: l.request_headers_timeout,
                        idle_timeout: l.idle_timeout,
                        buffer_filter: true,
                        fault_filter: true,
                        local_ratelimit_filter: true,
                        unnamed: l.name.is_none(),
                        use_original_dst: l.use_original_dst,
                        bind_to_port: l.bind_to_port,
                        tcp_proxy: l.tcp_proxy.clone().map(Box::new),
                        ..SocketSettings::default()
                    },
                },
                routes,
            },
        );
    }
    for c in &config.clusters {
        let name = c.name.clone();
        let mut config = c.clone();
        // An original_dst cluster has no endpoints to discover.
        let eds = c.discovery == gofe_model::DiscoveryType::Static
            && c.endpoints
                .iter()
                .all(|e| e.address.parse::<SocketAddr>().is_ok());
        if eds {
            out.endpoints.insert(
                name.clone(),
                EndpointsResource {
                    cluster_name: name.clone(),
                    endpoints: c.endpoints.clone(),
                    overprovisioning_factor: c.locality_lb.overprovisioning_factor,
                },
            );
            config.endpoints.clear();
        }
        let (circuit_breakers, outlier_detection) = clusters::resilience_of(&config);
        out.clusters.insert(
            name.clone(),
            ClusterResource {
                config,
                eds_service_name: eds.then_some(name),
                circuit_breakers,
                outlier_detection,
            },
        );
    }
    Ok(out)
}

/// Builds the proxy configuration from the static part of the bootstrap and the dynamic
/// resources held.
///
/// Envoy's warming rules, simplified: a socket listener whose RDS route configuration has not
/// arrived yet is left out (it is added when it arrives), and one whose route configuration was
/// refused on its first arrival is served with no routes (every request 404) until a valid one
/// arrives; an EDS cluster whose load assignment
/// has not arrived has no endpoints yet; a cluster named by a route but not (yet) defined is
/// added empty, so requests to it fail with 503 as in Envoy rather than the whole configuration
/// being refused. Static clusters and listeners win over dynamic ones of the same name; API
/// listeners (for proxyless clients) are not served by the proxy. A route's `max_request_bytes`
/// takes effect only on a listener whose connection manager has the buffer filter, and a route's
/// `fault` only on one with the fault filter and its `local_ratelimit` only on one with the local
/// rate limit filter, as in Envoy.
pub fn assemble(base: &ProxyConfig, dynamic: &Resources) -> ProxyConfig {
    let mut out = base.clone();
    let mut cluster_names: HashSet<String> = out.clusters.iter().map(|c| c.name.clone()).collect();
    for (name, c) in &dynamic.clusters {
        if cluster_names.contains(name) {
            continue;
        }
        let mut config = c.config.clone();
        if let Some(service) = &c.eds_service_name {
            if let Some(e) = dynamic.endpoints.get(service) {
                config.endpoints = e.endpoints.clone();
                config.locality_lb.overprovisioning_factor = e.overprovisioning_factor;
            } else {
                config.endpoints.clear();
            }
        }
        cluster_names.insert(name.clone());
        out.clusters.push(config);
    }
    let listener_names: HashSet<String> = out.listeners.iter().map(listener_name).collect();
    for (name, l) in &dynamic.listeners {
        let ListenerKind::Socket { address, settings } = &l.kind else {
            continue;
        };
        if listener_names.contains(name) {
            continue;
        }
        let Some(chains) = chains_of(settings, dynamic) else {
            continue;
        };
        if settings.tcp_proxy.is_some() {
            let mut l = tcp_listener_config(name, address, settings);
            attach_chains(&mut l, settings, chains);
            out.listeners.push(l);
            continue;
        }
        let mut router = match &l.routes {
            RouteSource::Inline(r) => r.clone(),
            RouteSource::Rds(route_name) => match dynamic.routes.get(route_name) {
                Some(r) => r.router.clone(),
                // Refused on its first arrival: served with no routes (404), as in Envoy.
                None if dynamic.refused_routes.contains(route_name) => RouterConfig::default(),
                None => continue,
            },
        };
        strip_filters(&mut router, settings);
        let unnamed = settings.unnamed && name == address;
        out.listeners.push(ListenerConfig {
            name: (!unnamed).then(|| String::from(name)),
            address: String::from(address),
            protocol: String::from("http"),
            tls: settings.tls.clone(),
            filters: vec![FilterConfig {
                kind: String::from("router"),
                config: router,
            }],
            max_connections: settings.max_connections,
            max_request_headers_kb: settings.max_request_headers_kb,
            request_headers_timeout: settings.request_headers_timeout,
            idle_timeout: settings.idle_timeout,
            access_log: settings.access_log.clone(),
            tracing: settings.tracing.as_deref().cloned(),
            rbac: settings.rbac.as_deref().cloned(),
            tcp_proxy: None,
            use_original_dst: settings.use_original_dst,
            bind_to_port: settings.bind_to_port,
            filter_chains: Vec::new(),
            tls_inspector: false,
            http_inspector: false,
        });
        if let Some(l) = out.listeners.last_mut() {
            attach_chains(l, settings, chains);
        }
    }
    // Clusters referenced but not defined: present and empty (503), as in Envoy.
    let mut missing = Vec::new();
    let views: Vec<ListenerConfig> = out
        .listeners
        .iter()
        .flat_map(|l| l.filter_chains.iter().map(|c| l.chain_view(c)))
        .collect();
    for l in out.listeners.iter().chain(&views) {
        for f in &l.filters {
            for (_, n) in routes::cluster_refs(&f.config, "") {
                if !cluster_names.contains(&n) {
                    cluster_names.insert(n.clone());
                    missing.push(n);
                }
            }
        }
        for n in tcp_cluster_refs(l) {
            if !cluster_names.contains(n) {
                cluster_names.insert(n.to_owned());
                missing.push(n.to_owned());
            }
        }
    }
    for name in missing {
        out.clusters.push(empty_cluster(&name));
    }
    out
}

/// A route table as a connection manager without some of gofe's filters serves it: a route's
/// `max_request_bytes` needs the buffer filter, its `fault` the fault filter, its
/// `local_ratelimit` the local rate limit filter, as in Envoy.
fn strip_filters(router: &mut RouterConfig, settings: &SocketSettings) {
    if !settings.buffer_filter {
        for r in router
            .virtual_hosts
            .iter_mut()
            .flat_map(|vh| vh.routes.iter_mut())
        {
            r.route.max_request_bytes = None;
        }
    }
    if !settings.fault_filter {
        for vh in &mut router.virtual_hosts {
            vh.fault = None;
            for r in &mut vh.routes {
                r.fault = None;
            }
        }
    }
    if !settings.local_ratelimit_filter {
        for vh in &mut router.virtual_hosts {
            vh.local_ratelimit = None;
            for r in &mut vh.routes {
                r.local_ratelimit = None;
            }
        }
    }
}

/// A listener's further filter chains with their routes; `None` while a chain's RDS route
/// configuration has not arrived (the listener waits, as for its own).
fn chains_of(
    settings: &SocketSettings,
    dynamic: &Resources,
) -> Option<Vec<gofe_model::FilterChainConfig>> {
    let mut out = Vec::with_capacity(settings.filter_chains.len());
    for c in &settings.filter_chains {
        let filters = match (&c.rds, &c.inline_routes, &c.tcp_proxy) {
            (_, _, Some(_)) => Vec::new(),
            (Some(name), _, None) => {
                let mut router = match dynamic.routes.get(name) {
                    Some(r) => r.router.clone(),
                    None if dynamic.refused_routes.contains(name) => RouterConfig::default(),
                    None => return None,
                };
                strip_filters(&mut router, settings);
                vec![FilterConfig {
                    kind: String::from("router"),
                    config: router,
                }]
            }
            (None, inline, None) => {
                let mut router = inline.clone().unwrap_or_default();
                strip_filters(&mut router, settings);
                vec![FilterConfig {
                    kind: String::from("router"),
                    config: router,
                }]
            }
        };
        out.push(gofe_model::FilterChainConfig {
            name: c.name.clone(),
            filter_chain_match: c.filter_chain_match.clone(),
            protocol: String::from(if c.tcp_proxy.is_some() { "tcp" } else { "http" }),
            tls: c.tls.clone(),
            filters,
            tcp_proxy: c.tcp_proxy.as_deref().cloned(),
        });
    }
    Some(out)
}

/// Gives an assembled listener its further chains and listener filters; without a default
/// chain, its own chain is dropped.
fn attach_chains(
    l: &mut ListenerConfig,
    settings: &SocketSettings,
    chains: Vec<gofe_model::FilterChainConfig>,
) {
    l.tls_inspector = settings.tls_inspector;
    l.http_inspector = settings.http_inspector;
    if chains.is_empty() {
        return;
    }
    l.filter_chains = chains;
    if !settings.default_chain {
        l.protocol = String::from("http");
        l.tls = None;
        l.tcp_proxy = None;
        l.filters.clear();
    }
}

/// A `tcp` listener of the assembled configuration.
fn tcp_listener_config(name: &str, address: &str, settings: &SocketSettings) -> ListenerConfig {
    let unnamed = settings.unnamed && name == address;
    ListenerConfig {
        name: (!unnamed).then(|| String::from(name)),
        address: String::from(address),
        protocol: String::from("tcp"),
        tls: None,
        filters: Vec::new(),
        max_connections: settings.max_connections,
        max_request_headers_kb: settings.max_request_headers_kb,
        request_headers_timeout: settings.request_headers_timeout,
        idle_timeout: settings.idle_timeout,
        access_log: settings.access_log.clone(),
        tracing: None,
        rbac: None,
        tcp_proxy: settings.tcp_proxy.as_deref().cloned(),
        use_original_dst: settings.use_original_dst,
        bind_to_port: settings.bind_to_port,
        filter_chains: Vec::new(),
        tls_inspector: false,
        http_inspector: false,
    }
}

/// The clusters a `tcp` listener's tcp_proxy names.
fn tcp_cluster_refs(l: &ListenerConfig) -> Vec<&str> {
    let Some(t) = &l.tcp_proxy else {
        return Vec::new();
    };
    t.cluster
        .iter()
        .map(String::as_str)
        .chain(
            t.weighted_clusters
                .iter()
                .flat_map(|wc| wc.clusters.iter().map(|c| c.name.as_str())),
        )
        .collect()
}

#[cfg(test)]
mod tests;
