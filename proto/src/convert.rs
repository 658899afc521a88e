//! Conversions between Envoy v3 resources and gofe's configuration, both ways, in one place.
//!
//! `*_from_wire` validates: anything gofe would not honour exactly as Envoy does (a regex match,
//! a redirect, an unknown load-balancing policy, TLS on a listener, …) is a [`ConvertError`]
//! naming the resource and field, so the client NACKs it instead of serving something else.
//! `*_to_wire` writes the canonical Envoy form gofe's control plane serves: listeners with one
//! HTTP connection manager taking its routes from RDS over ADS and ending in the router filter,
//! EDS clusters over ADS, and one locality per endpoint carrying its weight (see
//! [`endpoints_to_wire`]).

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as upstream_http;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::google::protobuf::{Any, Duration as PbDuration, UInt32Value};
use gofe_model::{
    ClusterConfig, ClusterWeightConfig, EndpointConfig, FilterConfig, HeaderMatcherConfig,
    HealthStatus, Http2ProtocolOptions, LbPolicy, ListenerConfig, ProxyConfig, RouteActionConfig,
    RouteConfig, RouteMatchConfig, RouterConfig, StringMatchConfig, VirtualHostConfig,
    WeightedClustersConfig, DEFAULT_CONNECT_TIMEOUT, DEFAULT_ROUTE_TIMEOUT,
};
use prost::{Message, Name};

use crate::resource::*;

/// Name of the HTTP connection manager network filter.
pub const HCM_FILTER_NAME: &str = "envoy.filters.network.http_connection_manager";
/// Name of the router HTTP filter.
pub const ROUTER_FILTER_NAME: &str = "envoy.filters.http.router";
/// Key of the upstream HTTP protocol options in `typed_extension_protocol_options`.
pub const HTTP_PROTOCOL_OPTIONS_KEY: &str =
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Why a resource was refused.
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
        /// The field path inside it.
        field: String,
        /// What is wrong.
        message: String,
    },
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

fn pb_duration(d: Duration) -> PbDuration {
    PbDuration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn duration_from_pb(d: &PbDuration, resource: &str, field: &str) -> Result<Duration, ConvertError> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(invalid(resource, field, "negative or malformed duration"));
    }
    Ok(Duration::new(d.seconds as u64, d.nanos as u32))
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

// === decode any ===

/// Decodes and validates one resource of the given type.
pub fn decode_resource(expected: ResourceType, any: &Any) -> Result<DecodedResource, ConvertError> {
    if any.type_url != expected.type_url() {
        return Err(ConvertError::UnexpectedType(any.type_url.clone()));
    }
    Ok(match expected {
        ResourceType::Listener => DecodedResource::Listener(listener_from_wire(&from_any(any)?)?),
        ResourceType::Route => DecodedResource::Route(route_from_wire(&from_any(any)?)?),
        ResourceType::Cluster => DecodedResource::Cluster(cluster_from_wire(&from_any(any)?)?),
        ResourceType::Endpoints => {
            DecodedResource::Endpoints(endpoints_from_wire(&from_any(any)?)?)
        }
    })
}

// === listeners ===

/// The canonical wire form of a listener.
pub fn listener_to_wire(l: &ListenerResource) -> Result<listener::Listener, ConvertError> {
    let route_specifier = match &l.routes {
        RouteSource::Rds(name) => hcm::http_connection_manager::RouteSpecifier::Rds(hcm::Rds {
            config_source: Some(ads_config_source()),
            route_config_name: name.clone(),
        }),
        RouteSource::Inline(router) => hcm::http_connection_manager::RouteSpecifier::RouteConfig(
            route_to_wire(&RouteResource {
                name: l.name.clone(),
                router: router.clone(),
            })?,
        ),
    };
    let manager = hcm::HttpConnectionManager {
        stat_prefix: l.name.clone(),
        http_filters: vec![hcm::HttpFilter {
            name: ROUTER_FILTER_NAME.into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(to_any(
                &Router::default(),
            ))),
            ..Default::default()
        }],
        route_specifier: Some(route_specifier),
        ..Default::default()
    };
    let mut out = listener::Listener {
        name: l.name.clone(),
        ..Default::default()
    };
    match &l.kind {
        ListenerKind::Api => {
            out.api_listener = Some(listener::ApiListener {
                api_listener: Some(to_any(&manager)),
            });
        }
        ListenerKind::Socket { address } => {
            let addr: SocketAddr = address.parse().map_err(|_| {
                invalid(
                    &format!("Listener {:?}", l.name),
                    "address",
                    format!("invalid socket address {address:?}"),
                )
            })?;
            out.address = Some(socket_address(&addr.ip().to_string(), addr.port()));
            out.filter_chains = vec![listener::FilterChain {
                filters: vec![listener::Filter {
                    name: HCM_FILTER_NAME.into(),
                    config_type: Some(listener::filter::ConfigType::TypedConfig(to_any(&manager))),
                }],
                ..Default::default()
            }];
        }
    }
    Ok(out)
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

/// `host:port` (`[v6]:port`) of a socket address.
fn address_from_wire(
    a: Option<&core::Address>,
    resource: &str,
    field: &str,
) -> Result<String, ConvertError> {
    let Some(core::address::Address::SocketAddress(sa)) = a.and_then(|a| a.address.as_ref()) else {
        return Err(invalid(resource, field, "needs a socket_address"));
    };
    if sa.protocol != core::socket_address::Protocol::Tcp as i32 {
        return Err(invalid(resource, field, "only TCP is supported"));
    }
    let port = match sa.port_specifier {
        Some(core::socket_address::PortSpecifier::PortValue(p)) if p <= 65535 => p,
        _ => return Err(invalid(resource, field, "needs a port_value in 0..=65535")),
    };
    if sa.address.is_empty() {
        return Err(invalid(resource, field, "empty address"));
    }
    Ok(if sa.address.contains(':') {
        format!("[{}]:{port}", sa.address)
    } else {
        format!("{}:{port}", sa.address)
    })
}

/// Validates a Listener: an `api_listener` or a socket with exactly one filter chain holding
/// exactly one HTTP connection manager whose last HTTP filter is the router.
pub fn listener_from_wire(l: &listener::Listener) -> Result<ListenerResource, ConvertError> {
    let res = format!("Listener {:?}", l.name);
    if l.name.is_empty() {
        return Err(invalid(&res, "name", "empty name"));
    }
    if let Some(api) = &l.api_listener {
        let any = api
            .api_listener
            .as_ref()
            .ok_or_else(|| invalid(&res, "api_listener", "empty"))?;
        let manager: hcm::HttpConnectionManager = from_any(any)?;
        return Ok(ListenerResource {
            name: l.name.clone(),
            kind: ListenerKind::Api,
            routes: hcm_routes(&manager, &res)?,
        });
    }
    let address = address_from_wire(l.address.as_ref(), &res, "address")?;
    if l.filter_chains.len() != 1 {
        return Err(invalid(
            &res,
            "filter_chains",
            "exactly one filter chain is supported",
        ));
    }
    let chain = &l.filter_chains[0];
    if chain.filter_chain_match.is_some() {
        return Err(unsupported(&res, "filter_chains[0].filter_chain_match"));
    }
    if chain.transport_socket.is_some() {
        return Err(unsupported(
            &res,
            "filter_chains[0].transport_socket (TLS over xDS)",
        ));
    }
    if !l.listener_filters.is_empty() {
        return Err(unsupported(&res, "listener_filters"));
    }
    if chain.filters.len() != 1 {
        return Err(invalid(
            &res,
            "filter_chains[0].filters",
            "exactly one http_connection_manager filter is supported",
        ));
    }
    let filter = &chain.filters[0];
    let Some(listener::filter::ConfigType::TypedConfig(any)) = &filter.config_type else {
        return Err(invalid(
            &res,
            "filter_chains[0].filters[0]",
            "needs a typed_config",
        ));
    };
    if any.type_url != hcm::HttpConnectionManager::type_url() {
        return Err(invalid(
            &res,
            "filter_chains[0].filters[0].typed_config",
            format!("unsupported network filter {:?}", any.type_url),
        ));
    }
    let manager: hcm::HttpConnectionManager = from_any(any)?;
    Ok(ListenerResource {
        name: l.name.clone(),
        kind: ListenerKind::Socket { address },
        routes: hcm_routes(&manager, &res)?,
    })
}

fn hcm_routes(m: &hcm::HttpConnectionManager, res: &str) -> Result<RouteSource, ConvertError> {
    let field = "http_connection_manager.http_filters";
    match m.http_filters.as_slice() {
        [only] => {
            let is_router = match &only.config_type {
                Some(hcm::http_filter::ConfigType::TypedConfig(a)) => {
                    a.type_url == Router::type_url()
                }
                None => only.name == ROUTER_FILTER_NAME,
                _ => false,
            };
            if !is_router {
                return Err(invalid(res, field, "only the router filter is supported"));
            }
        }
        _ => {
            return Err(invalid(
                res,
                field,
                "exactly one filter, the router, is supported",
            ))
        }
    }
    use hcm::http_connection_manager::RouteSpecifier as R;
    match &m.route_specifier {
        Some(R::Rds(rds)) => {
            check_config_source(
                rds.config_source.as_ref(),
                res,
                "http_connection_manager.rds.config_source",
            )?;
            if rds.route_config_name.is_empty() {
                return Err(invalid(
                    res,
                    "http_connection_manager.rds.route_config_name",
                    "empty",
                ));
            }
            Ok(RouteSource::Rds(rds.route_config_name.clone()))
        }
        Some(R::RouteConfig(rc)) => Ok(RouteSource::Inline(route_from_wire(rc)?.router)),
        _ => Err(invalid(
            res,
            "http_connection_manager",
            "needs rds or route_config (scoped routes are not supported)",
        )),
    }
}

// === routes ===

/// The wire form of a route configuration.
pub fn route_to_wire(r: &RouteResource) -> Result<route::RouteConfiguration, ConvertError> {
    let res = format!("RouteConfiguration {:?}", r.name);
    let mut virtual_hosts = Vec::new();
    for vh in &r.router.virtual_hosts {
        let mut routes = Vec::new();
        for rt in &vh.routes {
            routes.push(route_entry_to_wire(rt, &res)?);
        }
        virtual_hosts.push(route::VirtualHost {
            name: vh.name.clone(),
            domains: vh.domains.to_vec(),
            routes,
            ..Default::default()
        });
    }
    Ok(route::RouteConfiguration {
        name: r.name.clone(),
        virtual_hosts,
        ..Default::default()
    })
}

fn route_entry_to_wire(rt: &RouteConfig, res: &str) -> Result<route::Route, ConvertError> {
    use route::route_match::PathSpecifier;
    let path_specifier = match (&rt.matcher.prefix, &rt.matcher.path) {
        (Some(p), None) => PathSpecifier::Prefix(p.clone()),
        (None, Some(p)) => PathSpecifier::Path(p.clone()),
        _ => return Err(invalid(res, "match", "needs exactly one of prefix or path")),
    };
    let headers = rt
        .matcher
        .headers
        .iter()
        .map(header_to_wire)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|m| invalid(res, "match.headers", m))?;
    use route::route_action::ClusterSpecifier;
    let a = &rt.route;
    let cluster_specifier = match (&a.cluster, &a.weighted_clusters) {
        (Some(c), None) => ClusterSpecifier::Cluster(c.clone()),
        (None, Some(wc)) => ClusterSpecifier::WeightedClusters(route::WeightedCluster {
            clusters: wc
                .clusters
                .iter()
                .map(|c| route::weighted_cluster::ClusterWeight {
                    name: c.name.clone(),
                    weight: Some(UInt32Value { value: c.weight }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }),
        _ => {
            return Err(invalid(
                res,
                "route",
                "needs exactly one of cluster or weighted_clusters",
            ))
        }
    };
    Ok(route::Route {
        r#match: Some(route::RouteMatch {
            path_specifier: Some(path_specifier),
            headers,
            ..Default::default()
        }),
        action: Some(route::route::Action::Route(route::RouteAction {
            cluster_specifier: Some(cluster_specifier),
            timeout: (a.timeout != DEFAULT_ROUTE_TIMEOUT).then(|| pb_duration(a.timeout)),
            ..Default::default()
        })),
        ..Default::default()
    })
}

fn header_to_wire(h: &HeaderMatcherConfig) -> Result<route::HeaderMatcher, String> {
    use matcher::string_matcher::MatchPattern;
    use route::header_matcher::HeaderMatchSpecifier as H;
    let spec = match (&h.string_match, h.present_match) {
        (Some(sm), None) => {
            let pattern = match (&sm.exact, &sm.prefix, &sm.suffix, &sm.contains) {
                (Some(v), None, None, None) => MatchPattern::Exact(v.clone()),
                (None, Some(v), None, None) => MatchPattern::Prefix(v.clone()),
                (None, None, Some(v), None) => MatchPattern::Suffix(v.clone()),
                (None, None, None, Some(v)) => MatchPattern::Contains(v.clone()),
                _ => return Err("string_match needs exactly one pattern".into()),
            };
            H::StringMatch(matcher::StringMatcher {
                match_pattern: Some(pattern),
                ignore_case: false,
            })
        }
        (None, Some(present)) => H::PresentMatch(present),
        _ => return Err("needs exactly one of string_match or present_match".into()),
    };
    Ok(route::HeaderMatcher {
        name: h.name.clone(),
        invert_match: h.invert_match,
        header_match_specifier: Some(spec),
        ..Default::default()
    })
}

/// Validates a route configuration into gofe's router form.
pub fn route_from_wire(r: &route::RouteConfiguration) -> Result<RouteResource, ConvertError> {
    let res = format!("RouteConfiguration {:?}", r.name);
    if r.vhds.is_some() {
        return Err(unsupported(&res, "vhds"));
    }
    let mut virtual_hosts = Vec::new();
    for (hi, vh) in r.virtual_hosts.iter().enumerate() {
        let base = format!("virtual_hosts[{hi}]");
        if vh.require_tls != 0 {
            return Err(unsupported(&res, &format!("{base}.require_tls")));
        }
        let mut routes = Vec::new();
        for (ri, rt) in vh.routes.iter().enumerate() {
            routes.push(route_entry_from_wire(
                rt,
                &res,
                &format!("{base}.routes[{ri}]"),
            )?);
        }
        virtual_hosts.push(VirtualHostConfig {
            name: String::from(&vh.name),
            domains: vh.domains.to_vec(),
            routes,
        });
    }
    Ok(RouteResource {
        name: r.name.clone(),
        router: RouterConfig { virtual_hosts },
    })
}

fn route_entry_from_wire(
    rt: &route::Route,
    res: &str,
    base: &str,
) -> Result<RouteConfig, ConvertError> {
    use route::route_match::PathSpecifier;
    let m = rt
        .r#match
        .as_ref()
        .ok_or_else(|| invalid(res, &format!("{base}.match"), "missing"))?;
    let f = |x: &str| format!("{base}.match.{x}");
    if m.case_sensitive.as_ref().is_some_and(|c| !c.value) {
        return Err(unsupported(res, &f("case_sensitive=false")));
    }
    if m.runtime_fraction.is_some() {
        return Err(unsupported(res, &f("runtime_fraction")));
    }
    if !m.query_parameters.is_empty() {
        return Err(unsupported(res, &f("query_parameters")));
    }
    if m.grpc.is_some() || m.tls_context.is_some() || !m.dynamic_metadata.is_empty() {
        return Err(unsupported(res, &f("grpc/tls_context/dynamic_metadata")));
    }
    let mut matcher = RouteMatchConfig::default();
    match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) => {
            matcher.prefix = Some(String::from(if p.is_empty() { "/" } else { p.as_str() }))
        }
        Some(PathSpecifier::Path(p)) => matcher.path = Some(String::from(p)),
        Some(_) => {
            return Err(unsupported(
                res,
                &f("path_specifier (only prefix and path)"),
            ))
        }
        None => return Err(invalid(res, &f("path_specifier"), "missing")),
    }
    for (i, h) in m.headers.iter().enumerate() {
        matcher.headers.push(
            header_from_wire(h).map_err(|msg| invalid(res, &f(&format!("headers[{i}]")), msg))?,
        );
    }
    let action = match &rt.action {
        Some(route::route::Action::Route(a)) => a,
        _ => {
            return Err(unsupported(
                res,
                &format!("{base} action (only route actions; not redirect, direct_response, …)"),
            ))
        }
    };
    let af = |x: &str| format!("{base}.route.{x}");
    if !action.prefix_rewrite.is_empty()
        || action.regex_rewrite.is_some()
        || action.host_rewrite_specifier.is_some()
    {
        return Err(unsupported(res, &af("rewrites")));
    }
    if action.retry_policy.is_some() {
        return Err(unsupported(res, &af("retry_policy")));
    }
    use route::route_action::ClusterSpecifier;
    let mut out = RouteActionConfig {
        timeout: match &action.timeout {
            Some(d) => duration_from_pb(d, res, &af("timeout"))?,
            None => DEFAULT_ROUTE_TIMEOUT,
        },
        ..Default::default()
    };
    match &action.cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) if !c.is_empty() => out.cluster = Some(String::from(c)),
        Some(ClusterSpecifier::WeightedClusters(wc)) => {
            let mut clusters = Vec::new();
            for (i, c) in wc.clusters.iter().enumerate() {
                if c.name.is_empty() {
                    return Err(invalid(
                        res,
                        &af(&format!("weighted_clusters.clusters[{i}].name")),
                        "empty (cluster_header is not supported)",
                    ));
                }
                clusters.push(ClusterWeightConfig {
                    name: String::from(&c.name),
                    weight: c.weight.map_or(0, |w| w.value),
                });
            }
            if clusters.iter().all(|c| c.weight == 0) {
                return Err(invalid(
                    res,
                    &af("weighted_clusters"),
                    "needs a cluster with a non-zero weight",
                ));
            }
            out.weighted_clusters = Some(WeightedClustersConfig { clusters });
        }
        _ => {
            return Err(unsupported(
                res,
                &af("cluster_specifier (only cluster and weighted_clusters)"),
            ))
        }
    }
    Ok(RouteConfig {
        matcher,
        route: out,
    })
}

// The deprecated `*_match` forms are still valid Envoy v3 and are accepted.
#[allow(deprecated)]
fn header_from_wire(h: &route::HeaderMatcher) -> Result<HeaderMatcherConfig, String> {
    use matcher::string_matcher::MatchPattern;
    use route::header_matcher::HeaderMatchSpecifier as H;
    let mut sm = StringMatchConfig::default();
    let mut present_match = None;
    match &h.header_match_specifier {
        Some(H::ExactMatch(v)) => sm.exact = Some(v.clone()),
        Some(H::PrefixMatch(v)) => sm.prefix = Some(v.clone()),
        Some(H::SuffixMatch(v)) => sm.suffix = Some(v.clone()),
        Some(H::ContainsMatch(v)) => sm.contains = Some(v.clone()),
        Some(H::PresentMatch(p)) => present_match = Some(*p),
        Some(H::StringMatch(m)) => {
            if m.ignore_case {
                return Err("string_match.ignore_case is not supported by gofe".into());
            }
            match &m.match_pattern {
                Some(MatchPattern::Exact(v)) => sm.exact = Some(v.clone()),
                Some(MatchPattern::Prefix(v)) => sm.prefix = Some(v.clone()),
                Some(MatchPattern::Suffix(v)) => sm.suffix = Some(v.clone()),
                Some(MatchPattern::Contains(v)) => sm.contains = Some(v.clone()),
                _ => return Err(
                    "only exact, prefix, suffix and contains string matches are supported by gofe"
                        .into(),
                ),
            }
        }
        // Envoy: no specifier means "present".
        None => present_match = Some(true),
        Some(_) => return Err("regex and range header matches are not supported by gofe".into()),
    }
    if h.treat_missing_header_as_empty {
        return Err("treat_missing_header_as_empty is not supported by gofe".into());
    }
    Ok(HeaderMatcherConfig {
        name: String::from(&h.name),
        string_match: present_match.is_none().then_some(sm),
        present_match,
        invert_match: h.invert_match,
    })
}

// === clusters ===

/// The wire form of a cluster: EDS over ADS when `eds_service_name` is set, otherwise STATIC
/// with the endpoints inline.
pub fn cluster_to_wire(c: &ClusterResource) -> cluster::Cluster {
    use cluster::cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig};
    let cfg = &c.config;
    let mut out = cluster::Cluster {
        name: cfg.name.clone(),
        connect_timeout: Some(pb_duration(cfg.connect_timeout)),
        lb_policy: match cfg.lb_policy {
            LbPolicy::RoundRobin => cluster::cluster::LbPolicy::RoundRobin as i32,
            LbPolicy::LeastRequest => cluster::cluster::LbPolicy::LeastRequest as i32,
        },
        circuit_breakers: c.circuit_breakers.map(circuit_breakers_to_wire),
        outlier_detection: c.outlier_detection.map(|o| outlier_detection_to_wire(&o)),
        ..Default::default()
    };
    match &c.eds_service_name {
        Some(service) => {
            out.cluster_discovery_type =
                Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32));
            out.eds_cluster_config = Some(EdsClusterConfig {
                eds_config: Some(ads_config_source()),
                service_name: if *service == cfg.name {
                    String::new()
                } else {
                    service.clone()
                },
            });
        }
        None => {
            out.cluster_discovery_type =
                Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32));
            out.load_assignment = Some(endpoints_to_wire(&EndpointsResource {
                cluster_name: cfg.name.clone(),
                endpoints: cfg.endpoints.clone(),
            }));
        }
    }
    if cfg.http2_protocol_options.is_some() {
        use upstream_http::http_protocol_options::explicit_http_config::ProtocolConfig;
        use upstream_http::http_protocol_options::{ExplicitHttpConfig, UpstreamProtocolOptions};
        let options = upstream_http::HttpProtocolOptions {
            upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                        core::Http2ProtocolOptions::default(),
                    )),
                },
            )),
            ..Default::default()
        };
        out.typed_extension_protocol_options
            .insert(HTTP_PROTOCOL_OPTIONS_KEY.into(), to_any(&options));
    }
    out
}

fn u32v(v: Option<u32>) -> Option<UInt32Value> {
    v.map(|value| UInt32Value { value })
}

fn circuit_breakers_to_wire(t: CircuitBreakerThresholds) -> cluster::CircuitBreakers {
    cluster::CircuitBreakers {
        thresholds: vec![cluster::circuit_breakers::Thresholds {
            priority: core::RoutingPriority::Default as i32,
            max_connections: u32v(t.max_connections),
            max_pending_requests: u32v(t.max_pending_requests),
            max_requests: u32v(t.max_requests),
            max_retries: u32v(t.max_retries),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn outlier_detection_to_wire(o: &OutlierDetectionSettings) -> cluster::OutlierDetection {
    cluster::OutlierDetection {
        consecutive_5xx: u32v(o.consecutive_5xx),
        consecutive_gateway_failure: u32v(o.consecutive_gateway_failure),
        interval: o.interval.map(pb_duration),
        base_ejection_time: o.base_ejection_time.map(pb_duration),
        max_ejection_time: o.max_ejection_time.map(pb_duration),
        max_ejection_percent: u32v(o.max_ejection_percent),
        failure_percentage_threshold: u32v(o.failure_percentage_threshold),
        failure_percentage_request_volume: u32v(o.failure_percentage_request_volume),
        ..Default::default()
    }
}

/// Validates a cluster. The deprecated `http2_protocol_options` field is still accepted.
#[allow(deprecated)]
pub fn cluster_from_wire(c: &cluster::Cluster) -> Result<ClusterResource, ConvertError> {
    use cluster::cluster::{ClusterDiscoveryType, DiscoveryType};
    let res = format!("Cluster {:?}", c.name);
    if c.name.is_empty() {
        return Err(invalid(&res, "name", "empty name"));
    }
    let lb_policy = match cluster::cluster::LbPolicy::try_from(c.lb_policy) {
        Ok(cluster::cluster::LbPolicy::RoundRobin) => LbPolicy::RoundRobin,
        Ok(cluster::cluster::LbPolicy::LeastRequest) => LbPolicy::LeastRequest,
        _ => {
            return Err(invalid(
                &res,
                "lb_policy",
                format!(
                    "{} is not supported by gofe (ROUND_ROBIN, LEAST_REQUEST)",
                    c.lb_policy
                ),
            ))
        }
    };
    if c.transport_socket.is_some() || !c.transport_socket_matches.is_empty() {
        return Err(unsupported(&res, "transport_socket (upstream TLS)"));
    }
    if !c.health_checks.is_empty() {
        return Err(unsupported(&res, "health_checks"));
    }
    if c.lb_subset_config.is_some() || c.load_balancing_policy.is_some() {
        return Err(unsupported(&res, "lb_subset_config/load_balancing_policy"));
    }
    let connect_timeout = match &c.connect_timeout {
        Some(d) => duration_from_pb(d, &res, "connect_timeout")?,
        None => DEFAULT_CONNECT_TIMEOUT,
    };
    let mut http2 = c.http2_protocol_options.is_some();
    for (key, any) in &c.typed_extension_protocol_options {
        if key != HTTP_PROTOCOL_OPTIONS_KEY {
            return Err(unsupported(
                &res,
                &format!("typed_extension_protocol_options[{key:?}]"),
            ));
        }
        let options: upstream_http::HttpProtocolOptions = from_any(any)?;
        use upstream_http::http_protocol_options::explicit_http_config::ProtocolConfig;
        use upstream_http::http_protocol_options::UpstreamProtocolOptions;
        match &options.upstream_protocol_options {
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) => match &e.protocol_config {
                Some(ProtocolConfig::Http2ProtocolOptions(_)) => http2 = true,
                Some(ProtocolConfig::HttpProtocolOptions(_)) => http2 = false,
                _ => {
                    return Err(unsupported(
                        &res,
                        "explicit_http_config (HTTP/1.1 or HTTP/2 only)",
                    ))
                }
            },
            None => {}
            Some(_) => {
                return Err(unsupported(
                    &res,
                    "upstream_protocol_options (only explicit_http_config)",
                ))
            }
        }
    }
    let discovery = match c.cluster_discovery_type {
        None => DiscoveryType::Static,
        Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(t)
            .map_err(|_| invalid(&res, "type", format!("unknown discovery type {t}")))?,
        Some(ClusterDiscoveryType::ClusterType(_)) => {
            return Err(unsupported(&res, "cluster_type"))
        }
    };
    let mut config = empty_cluster(&c.name);
    config.lb_policy = lb_policy;
    config.connect_timeout = connect_timeout;
    config.http2_protocol_options = http2.then(Http2ProtocolOptions::default);
    let eds_service_name = match discovery {
        DiscoveryType::Eds => {
            let eds = c.eds_cluster_config.as_ref();
            check_config_source(
                eds.and_then(|e| e.eds_config.as_ref()),
                &res,
                "eds_cluster_config.eds_config",
            )?;
            Some(match eds.map(|e| e.service_name.as_str()) {
                Some(s) if !s.is_empty() => s.to_owned(),
                _ => c.name.clone(),
            })
        }
        // gofe resolves DNS names in endpoint addresses itself.
        DiscoveryType::Static | DiscoveryType::StrictDns | DiscoveryType::LogicalDns => {
            if let Some(la) = &c.load_assignment {
                config.endpoints = endpoints_from_wire(la)?.endpoints;
            }
            None
        }
        DiscoveryType::OriginalDst => return Err(unsupported(&res, "type ORIGINAL_DST")),
    };
    let circuit_breakers = match &c.circuit_breakers {
        None => None,
        Some(cb) => {
            if !cb.per_host_thresholds.is_empty() {
                return Err(unsupported(&res, "circuit_breakers.per_host_thresholds"));
            }
            let mut out = None;
            for (i, t) in cb.thresholds.iter().enumerate() {
                if t.priority != core::RoutingPriority::Default as i32 {
                    return Err(unsupported(
                        &res,
                        &format!("circuit_breakers.thresholds[{i}].priority HIGH"),
                    ));
                }
                if t.retry_budget.is_some() {
                    return Err(unsupported(
                        &res,
                        &format!("circuit_breakers.thresholds[{i}].retry_budget"),
                    ));
                }
                out = Some(CircuitBreakerThresholds {
                    max_connections: t.max_connections.map(|v| v.value),
                    max_pending_requests: t.max_pending_requests.map(|v| v.value),
                    max_requests: t.max_requests.map(|v| v.value),
                    max_retries: t.max_retries.map(|v| v.value),
                });
            }
            out
        }
    };
    let outlier_detection = match &c.outlier_detection {
        None => None,
        Some(o) => {
            let d = |v: &Option<PbDuration>, f: &str| -> Result<Option<Duration>, ConvertError> {
                v.as_ref()
                    .map(|d| duration_from_pb(d, &res, &format!("outlier_detection.{f}")))
                    .transpose()
            };
            let percent = |v: Option<UInt32Value>, f: &str| -> Result<Option<u32>, ConvertError> {
                match v {
                    Some(p) if p.value > 100 => Err(invalid(
                        &res,
                        &format!("outlier_detection.{f}"),
                        "must be at most 100",
                    )),
                    other => Ok(other.map(|p| p.value)),
                }
            };
            Some(OutlierDetectionSettings {
                consecutive_5xx: o.consecutive_5xx.map(|v| v.value),
                consecutive_gateway_failure: o.consecutive_gateway_failure.map(|v| v.value),
                interval: d(&o.interval, "interval")?,
                base_ejection_time: d(&o.base_ejection_time, "base_ejection_time")?,
                max_ejection_time: d(&o.max_ejection_time, "max_ejection_time")?,
                max_ejection_percent: percent(o.max_ejection_percent, "max_ejection_percent")?,
                failure_percentage_threshold: percent(
                    o.failure_percentage_threshold,
                    "failure_percentage_threshold",
                )?,
                failure_percentage_request_volume: o
                    .failure_percentage_request_volume
                    .map(|v| v.value),
            })
        }
    };
    apply_resilience(&mut config, circuit_breakers, outlier_detection);
    Ok(ClusterResource {
        config,
        eds_service_name,
        circuit_breakers,
        outlier_detection,
    })
}

// === endpoints ===

/// The wire form of a load assignment: one locality per endpoint, in order, each with the
/// endpoint's weight both as its `load_balancing_weight` and as the locality's. Envoy balances
/// on endpoint weights; proxyless gRPC balances across localities by locality weight (it ignores
/// endpoint weights), so this layout gives both the same split. Weight 0 is written as a
/// DRAINING endpoint in a locality without weight (both refuse weight 0).
pub fn endpoints_to_wire(e: &EndpointsResource) -> endpoint::ClusterLoadAssignment {
    let endpoints = e
        .endpoints
        .iter()
        .map(|ep| {
            let (host, port) = split_host_port(&ep.address);
            let lb = endpoint::LbEndpoint {
                health_status: match ep.health_status {
                    HealthStatus::Unhealthy => core::HealthStatus::Unhealthy as i32,
                    HealthStatus::Draining => core::HealthStatus::Draining as i32,
                    HealthStatus::Healthy if ep.weight == 0 => core::HealthStatus::Draining as i32,
                    HealthStatus::Healthy => core::HealthStatus::Healthy as i32,
                },
                load_balancing_weight: Some(UInt32Value {
                    value: ep.weight.max(1),
                }),
                host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
                    endpoint::Endpoint {
                        address: Some(socket_address(host, port)),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            };
            endpoint::LocalityLbEndpoints {
                locality: Some(core::Locality {
                    sub_zone: ep.address.clone(),
                    ..Default::default()
                }),
                lb_endpoints: vec![lb],
                load_balancing_weight: (ep.weight > 0).then_some(UInt32Value { value: ep.weight }),
                ..Default::default()
            }
        })
        .collect();
    endpoint::ClusterLoadAssignment {
        cluster_name: e.cluster_name.clone(),
        endpoints,
        ..Default::default()
    }
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

/// Validates a load assignment. Endpoints of priority 0 are used (gofe has no priority
/// failover); endpoints that are not healthy get weight 0 (drained).
pub fn endpoints_from_wire(
    c: &endpoint::ClusterLoadAssignment,
) -> Result<EndpointsResource, ConvertError> {
    let res = format!("ClusterLoadAssignment {:?}", c.cluster_name);
    if c.cluster_name.is_empty() {
        return Err(invalid(&res, "cluster_name", "empty"));
    }
    if !c.named_endpoints.is_empty() {
        return Err(unsupported(&res, "named_endpoints"));
    }
    let mut endpoints = Vec::new();
    let mut seen = HashSet::new();
    for (li, locality) in c.endpoints.iter().enumerate() {
        if locality.priority != 0 {
            continue;
        }
        if locality.lb_config.is_some() {
            return Err(unsupported(
                &res,
                &format!("endpoints[{li}].leds_cluster_locality_config"),
            ));
        }
        for (ei, lb) in locality.lb_endpoints.iter().enumerate() {
            let field = format!("endpoints[{li}].lb_endpoints[{ei}]");
            let ep = match &lb.host_identifier {
                Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(ep)) => ep,
                _ => {
                    return Err(invalid(
                        &res,
                        &field,
                        "needs an endpoint (endpoint_name is not supported)",
                    ))
                }
            };
            let address = address_from_wire(
                ep.address.as_ref(),
                &res,
                &format!("{field}.endpoint.address"),
            )?;
            let weight = match lb.load_balancing_weight {
                None => 1,
                Some(UInt32Value { value: 0 }) => {
                    return Err(invalid(
                        &res,
                        &format!("{field}.load_balancing_weight"),
                        "must be at least 1",
                    ))
                }
                Some(UInt32Value { value }) => value,
            };
            // DRAINING is gofe's weight 0 (the form `endpoints_to_wire` writes it in), so a
            // configuration round-trips exactly; UNHEALTHY and TIMEOUT stay unhealthy (the
            // controller's ejections), which the proxy counts for panic mode.
            let (weight, health_status) = match core::HealthStatus::try_from(lb.health_status) {
                Ok(
                    core::HealthStatus::Unknown
                    | core::HealthStatus::Healthy
                    | core::HealthStatus::Degraded,
                ) => (weight, HealthStatus::Healthy),
                Ok(core::HealthStatus::Draining) => (0, HealthStatus::Healthy),
                _ => (weight, HealthStatus::Unhealthy),
            };
            if !seen.insert(address.clone()) {
                return Err(invalid(
                    &res,
                    &field,
                    format!("duplicate endpoint {address}"),
                ));
            }
            endpoints.push(EndpointConfig {
                address,
                weight,
                health_status,
            });
        }
    }
    Ok(EndpointsResource {
        cluster_name: c.cluster_name.clone(),
        endpoints,
    })
}

/// A cluster named `name` with every other setting at its default and no endpoints. The one
/// place outside `cluster_from_wire` that builds a `ClusterConfig` field by field, so new
/// fields of it are added here and there only.
pub fn empty_cluster(name: &str) -> ClusterConfig {
    ClusterConfig {
        name: String::from(name),
        lb_policy: LbPolicy::default(),
        connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        http2_protocol_options: None,
        endpoints: Vec::new(),
        circuit_breakers: gofe_model::CircuitBreakersConfig::default(),
        outlier_detection: None,
        healthy_panic_threshold: gofe_model::DEFAULT_PANIC_THRESHOLD,
        idle_timeout: gofe_model::DEFAULT_IDLE_TIMEOUT,
    }
}

/// Puts Envoy's thresholds and outlier settings into the proxy's cluster configuration:
/// what the wire leaves unset keeps gofe's default.
fn apply_resilience(
    config: &mut ClusterConfig,
    cb: Option<CircuitBreakerThresholds>,
    od: Option<OutlierDetectionSettings>,
) {
    if let Some(t) = cb {
        let c = &mut config.circuit_breakers;
        c.max_connections = t.max_connections.unwrap_or(c.max_connections);
        c.max_pending_requests = t.max_pending_requests.unwrap_or(c.max_pending_requests);
        c.max_requests = t.max_requests.unwrap_or(c.max_requests);
        c.max_retries = t.max_retries.unwrap_or(c.max_retries);
    }
    if let Some(o) = od {
        let mut c = gofe_model::OutlierDetectionConfig::default();
        c.consecutive_5xx = o.consecutive_5xx.unwrap_or(c.consecutive_5xx);
        c.consecutive_gateway_failure = o
            .consecutive_gateway_failure
            .unwrap_or(c.consecutive_gateway_failure);
        c.interval = o.interval.unwrap_or(c.interval);
        c.base_ejection_time = o.base_ejection_time.unwrap_or(c.base_ejection_time);
        c.max_ejection_time = o.max_ejection_time.unwrap_or(c.max_ejection_time);
        c.max_ejection_percent = o.max_ejection_percent.unwrap_or(c.max_ejection_percent);
        c.failure_percentage_threshold = o
            .failure_percentage_threshold
            .unwrap_or(c.failure_percentage_threshold);
        c.failure_percentage_request_volume = o
            .failure_percentage_request_volume
            .unwrap_or(c.failure_percentage_request_volume);
        config.outlier_detection = Some(c);
    }
}

/// The wire settings of a proxy cluster configuration (the inverse of `apply_resilience`).
fn resilience_of(
    config: &ClusterConfig,
) -> (
    Option<CircuitBreakerThresholds>,
    Option<OutlierDetectionSettings>,
) {
    let c = &config.circuit_breakers;
    let cb =
        (*c != gofe_model::CircuitBreakersConfig::default()).then_some(CircuitBreakerThresholds {
            max_connections: Some(c.max_connections),
            max_pending_requests: Some(c.max_pending_requests),
            max_requests: Some(c.max_requests),
            max_retries: Some(c.max_retries),
        });
    let od = config
        .outlier_detection
        .as_ref()
        .map(|o| OutlierDetectionSettings {
            consecutive_5xx: Some(o.consecutive_5xx),
            consecutive_gateway_failure: Some(o.consecutive_gateway_failure),
            interval: Some(o.interval),
            base_ejection_time: Some(o.base_ejection_time),
            max_ejection_time: Some(o.max_ejection_time),
            max_ejection_percent: Some(o.max_ejection_percent),
            failure_percentage_threshold: Some(o.failure_percentage_threshold),
            failure_percentage_request_volume: Some(o.failure_percentage_request_volume),
        });
    (cb, od)
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
                    out.insert(n.clone(), to_any(&cluster_to_wire(c)));
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
}

/// Splits a gofe configuration into xDS resources, the way gofe's control plane serves it:
/// each listener named `NAME` (default: its address) gets a RouteConfiguration `NAME` over
/// RDS; each cluster is an EDS cluster with a load assignment of the same name. TLS listeners
/// are refused (TLS over xDS is not supported yet); the admin listener is not an xDS resource.
pub fn from_proxy_config(config: &ProxyConfig) -> Result<Resources, ConvertError> {
    let mut out = Resources::default();
    for l in &config.listeners {
        let name = l.name.as_ref().map_or(&l.address, |n| n).clone();
        if l.tls.is_some() {
            return Err(unsupported(&format!("Listener {name:?}"), "tls"));
        }
        let mut router = RouterConfig::default();
        for f in &l.filters {
            router
                .virtual_hosts
                .extend(f.config.virtual_hosts.iter().cloned());
        }
        out.routes.insert(
            name.clone(),
            RouteResource {
                name: name.clone(),
                router,
            },
        );
        out.listeners.insert(
            name.clone(),
            ListenerResource {
                name: name.clone(),
                kind: ListenerKind::Socket {
                    address: l.address.clone(),
                },
                routes: RouteSource::Rds(name),
            },
        );
    }
    for c in &config.clusters {
        let name = c.name.clone();
        out.endpoints.insert(
            name.clone(),
            EndpointsResource {
                cluster_name: name.clone(),
                endpoints: c.endpoints.clone(),
            },
        );
        let mut config = c.clone();
        config.endpoints.clear();
        let (circuit_breakers, outlier_detection) = resilience_of(&config);
        out.clusters.insert(
            name.clone(),
            ClusterResource {
                config,
                eds_service_name: Some(name),
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
/// arrived yet is left out (it is added when it arrives); an EDS cluster whose load assignment
/// has not arrived has no endpoints yet; a cluster named by a route but not (yet) defined is
/// added empty, so requests to it fail with 503 as in Envoy rather than the whole configuration
/// being refused. Static clusters and listeners win over dynamic ones of the same name; API
/// listeners (for proxyless clients) are not served by the proxy.
pub fn assemble(base: &ProxyConfig, dynamic: &Resources) -> ProxyConfig {
    let mut out = base.clone();
    let mut cluster_names: HashSet<String> = out.clusters.iter().map(|c| c.name.clone()).collect();
    for (name, c) in &dynamic.clusters {
        if cluster_names.contains(name) {
            continue;
        }
        let mut config = c.config.clone();
        if let Some(service) = &c.eds_service_name {
            config.endpoints = dynamic
                .endpoints
                .get(service)
                .map(|e| e.endpoints.clone())
                .unwrap_or_default();
        }
        cluster_names.insert(name.clone());
        out.clusters.push(config);
    }
    let listener_names: HashSet<String> = out
        .listeners
        .iter()
        .map(|l| l.name.as_ref().map_or(&l.address, |n| n).clone())
        .collect();
    for (name, l) in &dynamic.listeners {
        let ListenerKind::Socket { address } = &l.kind else {
            continue;
        };
        if listener_names.contains(name) {
            continue;
        }
        let router = match &l.routes {
            RouteSource::Inline(r) => r.clone(),
            RouteSource::Rds(route_name) => match dynamic.routes.get(route_name) {
                Some(r) => r.router.clone(),
                None => continue,
            },
        };
        out.listeners.push(ListenerConfig {
            name: Some(String::from(name)),
            address: String::from(address),
            protocol: String::from("http"),
            tls: None,
            filters: vec![FilterConfig {
                kind: String::from("router"),
                config: router,
            }],
            max_connections: None,
            max_request_headers_kb: gofe_model::DEFAULT_MAX_REQUEST_HEADERS_KB,
            request_headers_timeout: gofe_model::DEFAULT_REQUEST_HEADERS_TIMEOUT,
            idle_timeout: gofe_model::DEFAULT_LISTENER_IDLE_TIMEOUT,
        });
    }
    // Clusters referenced but not defined: present and empty (503), as in Envoy.
    let mut missing = Vec::new();
    for l in &out.listeners {
        for f in &l.filters {
            for vh in &f.config.virtual_hosts {
                for r in &vh.routes {
                    let names = r.route.cluster.iter().chain(
                        r.route
                            .weighted_clusters
                            .iter()
                            .flat_map(|w| w.clusters.iter().map(|c| &c.name)),
                    );
                    for n in names {
                        if !cluster_names.contains(n) {
                            cluster_names.insert(n.clone());
                            missing.push(n.clone());
                        }
                    }
                }
            }
        }
    }
    for name in missing {
        out.clusters.push(empty_cluster(&name));
    }
    out
}

#[cfg(test)]
mod tests;
