//! Listeners: the socket, its one filter chain (an optional connection limit, then the HTTP
//! connection manager with the fault, local rate limit, buffer and router filters), TLS from certificate files.

use envoy_types::pb::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::connection_limit::v3::ConnectionLimit;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use envoy_types::pb::google::protobuf::UInt64Value;
use gofe_model::TlsConfig;

use super::access_logs::{access_logs_from_wire, access_logs_to_wire};
use super::tracers::{tracing_from_wire, tracing_to_wire};
use super::*;

/// The protocols gofe's TLS listeners can offer by ALPN.
const ALPN: [&str; 2] = gofe_model::DEFAULT_ALPN_PROTOCOLS;

/// Largest `max_request_headers_kb` Envoy accepts.
const MAX_REQUEST_HEADERS_KB: u32 = 8192;

/// A placeholder `max_request_bytes` for the buffer filter's listener-level configuration,
/// which Envoy requires but never uses: the filter is disabled by default and every route that
/// enables it brings its own limit.
const UNUSED_BUFFER_LIMIT: u32 = u32::MAX;

/// A listener's values that have no Envoy form.
pub(super) fn check_publishable(l: &ListenerConfig, base: &str) -> Result<(), ConvertError> {
    if !l.filter_chains.is_empty() {
        return Err(not_publishable(
            format!("{base}.filter_chains"),
            "several filter chains are not published over xDS by gofe yet",
        ));
    }
    if l.tls_inspector || l.http_inspector {
        return Err(not_publishable(
            format!("{base}.tls_inspector"),
            "listener filters are not published over xDS by gofe yet",
        ));
    }
    if l.max_connections == Some(0) {
        return Err(not_publishable(
            format!("{base}.max_connections"),
            "0 has no Envoy form (the connection_limit filter's max_connections is at least 1)",
        ));
    }
    if !(1..=MAX_REQUEST_HEADERS_KB).contains(&l.max_request_headers_kb) {
        return Err(not_publishable(
            format!("{base}.max_request_headers_kb"),
            "Envoy's max_request_headers_kb is 1..=8192",
        ));
    }
    check_pb_duration(
        l.request_headers_timeout,
        format!("{base}.request_headers_timeout"),
    )?;
    if let Some(t) = &l.tracing {
        super::tracers::check_publishable(t, &format!("{base}.tracing"))?;
    }
    check_pb_duration(l.idle_timeout, format!("{base}.idle_timeout"))
}

// === to wire ===

/// The canonical wire form of a listener.
pub fn listener_to_wire(l: &ListenerResource) -> Result<listener::Listener, ConvertError> {
    let res = format!("Listener {:?}", l.name);
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
    let router_filter = hcm::HttpFilter {
        name: ROUTER_FILTER_NAME.into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(to_any(
            &Router::default(),
        ))),
        ..Default::default()
    };
    let mut manager = hcm::HttpConnectionManager {
        stat_prefix: l.name.clone(),
        http_filters: vec![router_filter],
        route_specifier: Some(route_specifier),
        ..Default::default()
    };
    let mut out = listener::Listener {
        name: l.name.clone(),
        ..Default::default()
    };
    let (address, settings) = match &l.kind {
        ListenerKind::Api => {
            // A proxyless client's connection manager: routes only, no gofe settings.
            out.api_listener = Some(listener::ApiListener {
                api_listener: Some(to_any(&manager)),
            });
            return Ok(out);
        }
        ListenerKind::Socket { address, settings } => (address, settings),
    };
    let addr: SocketAddr = address.parse().map_err(|_| {
        invalid(
            &res,
            "address",
            format!("invalid socket address {address:?}"),
        )
    })?;
    if settings.max_connections == Some(0) {
        return Err(invalid(&res, "max_connections", "0 has no Envoy form"));
    }
    if let Some(t) = &settings.tcp_proxy {
        return Ok(tcp_listener_to_wire(l, &addr, settings, t));
    }
    if !(1..=MAX_REQUEST_HEADERS_KB).contains(&settings.max_request_headers_kb) {
        return Err(invalid(
            &res,
            "max_request_headers_kb",
            "Envoy's is 1..=8192",
        ));
    }
    if settings.local_ratelimit_filter {
        manager
            .http_filters
            .insert(0, super::ratelimits::filter_to_wire());
    }
    if settings.fault_filter {
        manager
            .http_filters
            .insert(0, super::faults::filter_to_wire());
    }
    if let Some(r) = &settings.rbac {
        let filter = super::rbac::filter_to_wire(r).map_err(|e| invalid(&res, "rbac", e))?;
        manager.http_filters.insert(0, filter);
    }
    if settings.buffer_filter {
        manager.http_filters.insert(
            manager.http_filters.len() - 1,
            hcm::HttpFilter {
                name: BUFFER_FILTER_NAME.into(),
                disabled: true,
                config_type: Some(hcm::http_filter::ConfigType::TypedConfig(to_any(
                    &buffer::Buffer {
                        max_request_bytes: u32v(UNUSED_BUFFER_LIMIT),
                    },
                ))),
                ..Default::default()
            },
        );
    }
    manager.max_request_headers_kb = u32v(settings.max_request_headers_kb);
    manager.access_log = access_logs_to_wire(&settings.access_log);
    manager.tracing = settings.tracing.as_deref().map(tracing_to_wire);
    manager.request_headers_timeout = Some(pb_duration(settings.request_headers_timeout));
    manager.common_http_protocol_options = Some(core::HttpProtocolOptions {
        idle_timeout: Some(pb_duration(settings.idle_timeout)),
        ..Default::default()
    });
    // gofe acts as the edge: it appends the client's address to x-forwarded-for.
    manager.use_remote_address = Some(BoolValue { value: true });
    let mut filters = Vec::new();
    if let Some(max) = settings.max_connections {
        filters.push(listener::Filter {
            name: CONNECTION_LIMIT_FILTER_NAME.into(),
            config_type: Some(listener::filter::ConfigType::TypedConfig(to_any(
                &ConnectionLimit {
                    stat_prefix: l.name.clone(),
                    max_connections: Some(UInt64Value { value: max.into() }),
                    ..Default::default()
                },
            ))),
        });
    }
    filters.push(listener::Filter {
        name: HCM_FILTER_NAME.into(),
        config_type: Some(listener::filter::ConfigType::TypedConfig(to_any(&manager))),
    });
    out.address = Some(socket_address(&addr.ip().to_string(), addr.port()));
    out.filter_chains = vec![listener::FilterChain {
        filters,
        transport_socket: settings.tls.as_ref().map(tls_to_wire),
        ..Default::default()
    }];
    out.metadata = gofe_metadata(if settings.unnamed {
        vec![("unnamed", value::Kind::BoolValue(true))]
    } else {
        Vec::new()
    });
    tcp_proxies::capture_to_wire(settings, &mut out);
    Ok(out)
}

/// A `tcp` listener: its address, capture settings and tcp_proxy chain.
fn tcp_listener_to_wire(
    l: &ListenerResource,
    addr: &SocketAddr,
    settings: &SocketSettings,
    t: &gofe_model::TcpProxyConfig,
) -> listener::Listener {
    let limit = settings.max_connections.map(|max| listener::Filter {
        name: CONNECTION_LIMIT_FILTER_NAME.into(),
        config_type: Some(listener::filter::ConfigType::TypedConfig(to_any(
            &ConnectionLimit {
                stat_prefix: l.name.clone(),
                max_connections: Some(UInt64Value { value: max.into() }),
                ..Default::default()
            },
        ))),
    });
    let mut out = listener::Listener {
        name: l.name.clone(),
        address: Some(socket_address(&addr.ip().to_string(), addr.port())),
        filter_chains: vec![tcp_proxies::tcp_chain_to_wire(&l.name, t, settings, limit)],
        metadata: gofe_metadata(if settings.unnamed {
            vec![("unnamed", value::Kind::BoolValue(true))]
        } else {
            Vec::new()
        }),
        ..Default::default()
    };
    tcp_proxies::capture_to_wire(settings, &mut out);
    out
}

fn tls_to_wire(t: &TlsConfig) -> core::TransportSocket {
    let file = |path: &str| {
        Some(core::DataSource {
            specifier: Some(core::data_source::Specifier::Filename(path.to_owned())),
            ..Default::default()
        })
    };
    let validation = t.validation_context.as_ref().map(|v| {
        let trusted_ca = match (&v.trusted_ca.filename, &v.trusted_ca.inline_string) {
            (Some(path), _) => file(path),
            (None, Some(pem)) => Some(core::DataSource {
                specifier: Some(core::data_source::Specifier::InlineString(pem.clone())),
                ..Default::default()
            }),
            (None, None) => None,
        };
        let sans = v
            .match_typed_subject_alt_names
            .iter()
            .filter_map(|m| {
                use tls::subject_alt_name_matcher::SanType as S;
                let san_type = match m.san_type {
                    gofe_model::SanType::Uri => S::Uri,
                    gofe_model::SanType::Dns => S::Dns,
                };
                Some(tls::SubjectAltNameMatcher {
                    san_type: san_type as i32,
                    matcher: Some(super::rbac::string_match_to_wire(&m.matcher).ok()?),
                    oid: String::new(),
                })
            })
            .collect();
        tls::common_tls_context::ValidationContextType::ValidationContext(
            tls::CertificateValidationContext {
                trusted_ca,
                match_typed_subject_alt_names: sans,
                ..Default::default()
            },
        )
    });
    let context = tls::DownstreamTlsContext {
        common_tls_context: Some(tls::CommonTlsContext {
            tls_certificates: vec![tls::TlsCertificate {
                certificate_chain: file(&t.certificate_chain),
                private_key: file(&t.private_key),
                ..Default::default()
            }],
            alpn_protocols: t.alpn_protocols.clone(),
            validation_context_type: validation,
            ..Default::default()
        }),
        require_client_certificate: t
            .require_client_certificate
            .then_some(BoolValue { value: true }),
        ..Default::default()
    };
    core::TransportSocket {
        name: TLS_TRANSPORT_SOCKET_NAME.into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(to_any(
            &context,
        ))),
    }
}

// === from wire ===

/// The name a Listener is held under: its own, or for an unnamed socket listener its address
/// (`ip:port`; empty when that does not read).
pub(super) fn listener_key(l: &listener::Listener) -> String {
    if !l.name.is_empty() || l.api_listener.is_some() {
        return l.name.clone();
    }
    address_from_wire(l.address.as_ref(), "", "").unwrap_or_default()
}

/// Validates a Listener: an `api_listener`, or a socket with exactly one filter chain (in
/// `filter_chains` or `default_filter_chain`) holding an optional connection limit and an HTTP
/// connection manager.
pub fn listener_from_wire(l: &listener::Listener) -> Result<ListenerResource, ConvertError> {
    listener_from_wire_checked(l).map(|(r, _)| r)
}

/// The listener, and the clusters its inline route configuration requires (Envoy validates an
/// inline route configuration's clusters by default).
#[allow(deprecated)]
pub(super) fn listener_from_wire_checked(
    l: &listener::Listener,
) -> Result<(ListenerResource, ClusterRefs), ConvertError> {
    let res = format!("Listener {:?}", l.name);
    let listener::Listener {
        name,
        address,
        additional_addresses,
        stat_prefix: _,
        stats_matcher: _,
        filter_chains,
        fcds_config,
        filter_chain_matcher,
        use_original_dst,
        default_filter_chain,
        // Flow-control buffer sizes: gofe streams bodies with its own bounded buffers.
        per_connection_buffer_limit_bytes: _,
        per_connection_buffer_high_watermark_timeout,
        metadata,
        deprecated_v1,
        // How a listener update drains connections: gofe drains a changed listener its own way.
        drain_type: _,
        listener_filters,
        listener_filters_timeout: _,
        continue_on_listener_filters_timeout: _,
        transparent,
        freebind,
        socket_options,
        tcp_fast_open_queue_length,
        // Informational (inbound or outbound).
        traffic_direction: _,
        udp_listener_config,
        api_listener,
        connection_balance_config,
        // Socket tuning: gofe has one accept loop per listener.
        reuse_port: _,
        enable_reuse_port: _,
        access_log,
        tcp_backlog_size: _,
        max_connections_to_accept_per_socket_event: _,
        bind_to_port,
        enable_mptcp,
        // gofe has no global connection limit or overload manager to bypass.
        ignore_global_conn_limit: _,
        bypass_overload_manager: _,
        tcp_keepalive,
        listener_specifier,
    } = l;
    let mut refusals = Refusals::default();
    let top = Unsupported::new(&res, "")
        .set("additional_addresses", additional_addresses)
        .set("fcds_config", fcds_config)
        .set("filter_chain_matcher", filter_chain_matcher)
        .set(
            "per_connection_buffer_high_watermark_timeout",
            per_connection_buffer_high_watermark_timeout,
        )
        .set("deprecated_v1", deprecated_v1)
        .truthy("transparent", transparent)
        .truthy("freebind", freebind)
        .set("socket_options", socket_options)
        .set("tcp_fast_open_queue_length", tcp_fast_open_queue_length)
        .set("udp_listener_config", udp_listener_config)
        .set("connection_balance_config", connection_balance_config)
        .set("enable_mptcp", enable_mptcp)
        // Connection-level logs: gofe logs requests, in the connection manager's access_log.
        .set("access_log", access_log)
        .set("tcp_keepalive", tcp_keepalive)
        .set(
            "listener_specifier (internal listeners)",
            listener_specifier,
        )
        .finish();
    refusals.take(top);
    if let Some(api) = api_listener {
        // A proxyless client finds its API listener by name (`xds:///NAME`).
        if name.is_empty() {
            return Err(invalid(&res, "name", "an api_listener needs a name"));
        }
        let any = api
            .api_listener
            .as_ref()
            .ok_or_else(|| invalid(&res, "api_listener", "empty"))?;
        refusals.finish()?;
        let manager: hcm::HttpConnectionManager = from_any(any)?;
        let (routes, _) = hcm_routes(&manager, &res, "api_listener.api_listener")?;
        return Ok((
            ListenerResource {
                name: name.clone(),
                kind: ListenerKind::Api,
                routes,
            },
            Vec::new(),
        ));
    }
    for (i, f) in listener_filters.iter().enumerate() {
        // The inspectors only inform filter-chain matching, which a single chain does not do.
        let harmless = match &f.config_type {
            Some(listener::listener_filter::ConfigType::TypedConfig(a)) => {
                a.type_url == TlsInspector::type_url() || a.type_url == HttpInspector::type_url()
            }
            _ => false,
        } || tcp_proxies::is_original_dst_filter(f);
        if !harmless {
            refusals.push(invalid(
                &res,
                &format!("listener_filters[{i}]"),
                format!(
                    "listener filter {:?} not supported by gofe (only the TLS and HTTP inspectors and original_dst)",
                    f.name
                ),
            ));
        }
    }
    let address = refusals.take(address_from_wire(address.as_ref(), &res, "address"));
    let address = address.and_then(|a| match a.parse::<SocketAddr>() {
        Ok(_) => Some(a),
        Err(_) => {
            refusals.push(invalid(
                &res,
                "address.socket_address.address",
                format!("{a:?}: a listener binds an IP address"),
            ));
            None
        }
    });
    let address = address.unwrap_or_default();
    // An unnamed listener is named by the proxy (Envoy gives it a generated name): gofe's
    // name for it is its address, stable across updates, as for its own unnamed listeners.
    let unnamed = name.is_empty();
    let name = if unnamed { &address } else { name };
    let unmatched = |c: &listener::FilterChain| {
        c.filter_chain_match
            .as_ref()
            .is_none_or(|m| *m == Default::default())
    };
    let inspectors: Vec<String> = listener_filters
        .iter()
        .filter_map(|f| match &f.config_type {
            Some(listener::listener_filter::ConfigType::TypedConfig(a)) => Some(a.type_url.clone()),
            _ => None,
        })
        .collect();
    let read = match (filter_chains.as_slice(), default_filter_chain) {
        ([only], None) if unmatched(only) => {
            one_chain_from_wire(name, only, &res, "filter_chains[0]")
        }
        ([], Some(default)) => one_chain_from_wire(name, default, &res, "default_filter_chain"),
        ([], None) => Err(invalid(&res, "filter_chains", "needs a filter chain")),
        (chains, default) => chains_from_wire(name, chains, default.as_ref(), &res),
    };
    let read = refusals.take(read);
    let (routes, mut settings, required) = refusals.finish_with(read)?;
    settings.tls_inspector = inspectors.contains(&TlsInspector::type_url());
    settings.http_inspector = inspectors.contains(&HttpInspector::type_url());
    settings.unnamed = unnamed || GofeMetadata::of(metadata).bool("unnamed");
    settings.use_original_dst = use_original_dst.as_ref().is_some_and(|b| b.value);
    settings.bind_to_port = bind_to_port.as_ref().is_none_or(|b| b.value);
    Ok((
        ListenerResource {
            name: name.clone(),
            kind: ListenerKind::Socket { address, settings },
            routes,
        },
        required,
    ))
}

/// One filter chain (a connection manager's or a tcp_proxy's), with `filter_chain_match`
/// left to the caller.
fn one_chain_from_wire(
    name: &str,
    chain: &listener::FilterChain,
    res: &str,
    base: &str,
) -> Result<(RouteSource, SocketSettings, ClusterRefs), ConvertError> {
    if tcp_proxies::is_tcp_chain(chain) {
        tcp_listener_from_wire(name, chain, res, base)
    } else {
        chain_from_wire(chain, res, base)
    }
}

/// Several filter chains, each with its `filter_chain_match`, and an optional default chain.
/// The listener-wide settings (limits, timeouts, access logs, tracing, HTTP filters) are the
/// default chain's, else the first chain's; a chain whose connection manager differs in them
/// is refused (gofe applies one set per listener).
fn chains_from_wire(
    name: &str,
    chains: &[listener::FilterChain],
    default: Option<&listener::FilterChain>,
    res: &str,
) -> Result<(RouteSource, SocketSettings, ClusterRefs), ConvertError> {
    let mut refusals = Refusals::default();
    if chains.len() > gofe_model::filter_chain::MAX_FILTER_CHAINS {
        return Err(invalid(
            res,
            "filter_chains",
            format!(
                "at most {} filter chains are supported by gofe",
                gofe_model::filter_chain::MAX_FILTER_CHAINS
            ),
        ));
    }
    let own = default.map(|d| one_chain_from_wire(name, d, res, "default_filter_chain"));
    let own = own.and_then(|r| refusals.take(r));
    let mut read = Vec::new();
    let mut seen: Vec<(gofe_model::FilterChainMatchConfig, usize)> = Vec::new();
    for (i, c) in chains.iter().enumerate() {
        let base = format!("filter_chains[{i}]");
        let m = chain_match_from_wire(
            c.filter_chain_match.as_ref(),
            res,
            &join(&base, "filter_chain_match"),
        );
        let m = refusals.take(m);
        let bare = listener::FilterChain {
            filter_chain_match: None,
            ..c.clone()
        };
        let chain = refusals.take(one_chain_from_wire(name, &bare, res, &base));
        if let Some(m) = &m {
            let key = m.normalized();
            if let Some((_, first)) = seen.iter().find(|(k, _)| *k == key) {
                refusals.push(invalid(
                    res,
                    &join(&base, "filter_chain_match"),
                    format!("the same match as filter_chains[{first}] (Envoy refuses it too)"),
                ));
            }
            seen.push((key, i));
        }
        if let (Some(m), Some(chain)) = (m, chain) {
            read.push((i, m, c.name.clone(), chain));
        }
    }
    // The listener-wide settings, and which chain they come from.
    let reference = own
        .as_ref()
        .map(|(_, s, _)| ("default_filter_chain".to_owned(), s.clone()))
        .or_else(|| {
            read.first()
                .map(|(i, _, _, (_, s, _))| (format!("filter_chains[{i}]"), s.clone()))
        });
    let shared = |s: &SocketSettings| SocketSettings {
        tls: None,
        tcp_proxy: None,
        ..s.clone()
    };
    if let Some((from, r)) = &reference {
        for (i, _, _, (_, s, _)) in &read {
            let same = if r.tcp_proxy.is_none() && s.tcp_proxy.is_none() {
                shared(s) == shared(r)
            } else {
                s.access_log == r.access_log && s.max_connections == r.max_connections
            };
            if !same {
                refusals.push(invalid(
                    res,
                    &format!("filter_chains[{i}]"),
                    format!(
                        "connection settings (limits, timeouts, access logs, tracing, HTTP \
                         filters) that differ from {from}'s are not supported by gofe (one set \
                         per listener)"
                    ),
                ));
            }
        }
    }
    refusals.finish()?;
    let Some((_, reference)) = reference else {
        return Err(invalid(res, "filter_chains", "needs a filter chain"));
    };
    let mut required = Vec::new();
    let mut out = Vec::with_capacity(read.len());
    for (_, m, chain_name, (routes, s, req)) in read {
        required.extend(req);
        let (rds, inline_routes) = match (routes, &s.tcp_proxy) {
            (_, Some(_)) => (None, None),
            (RouteSource::Rds(n), None) => (Some(n), None),
            (RouteSource::Inline(r), None) => (None, Some(r)),
        };
        out.push(ChainResource {
            name: (!chain_name.is_empty()).then_some(chain_name),
            filter_chain_match: m,
            tls: s.tls,
            rds,
            inline_routes,
            tcp_proxy: s.tcp_proxy,
        });
    }
    let (routes, mut settings) = match own {
        Some((routes, s, req)) => {
            required.extend(req);
            (routes, s)
        }
        None => (
            RouteSource::Inline(RouterConfig::default()),
            SocketSettings {
                tls: None,
                tcp_proxy: None,
                ..reference
            },
        ),
    };
    settings.default_chain = default.is_some();
    settings.filter_chains = out;
    Ok((routes, settings, required))
}

/// A `filter_chain_match`, every field read.
#[allow(deprecated)]
fn chain_match_from_wire(
    m: Option<&listener::FilterChainMatch>,
    res: &str,
    base: &str,
) -> Result<gofe_model::FilterChainMatchConfig, ConvertError> {
    use gofe_model::{CidrRange, SourceType};
    use listener::filter_chain_match::ConnectionSourceType as S;
    let Some(m) = m else {
        return Ok(Default::default());
    };
    let listener::FilterChainMatch {
        destination_port,
        prefix_ranges,
        address_suffix,
        suffix_len,
        direct_source_prefix_ranges,
        source_type,
        source_prefix_ranges,
        source_ports,
        server_names,
        transport_protocol,
        application_protocols,
    } = m;
    let mut refusals = Refusals::default();
    let top = Unsupported::new(res, base)
        .set("address_suffix", address_suffix)
        .set("suffix_len", suffix_len)
        .finish();
    refusals.take(top);
    let mut ranges = |list: &[core::CidrRange], field: &str| -> Vec<CidrRange> {
        let mut out = Vec::new();
        for (i, r) in list.iter().enumerate() {
            let max = if r.address_prefix.contains(':') {
                128
            } else {
                32
            };
            let len = r.prefix_len.as_ref().map_or(max, |v| v.value);
            match (
                r.address_prefix.parse::<std::net::IpAddr>(),
                u8::try_from(len),
            ) {
                (Ok(ip), Ok(l)) if len <= max => out.push(CidrRange::new(ip, l)),
                _ => refusals.push(invalid(
                    res,
                    &join(base, &format!("{field}[{i}]")),
                    format!("{:?}/{len}: not an address range", r.address_prefix),
                )),
            }
        }
        out
    };
    let prefix = ranges(prefix_ranges, "prefix_ranges");
    let direct = ranges(direct_source_prefix_ranges, "direct_source_prefix_ranges");
    let source = ranges(source_prefix_ranges, "source_prefix_ranges");
    let destination_port = match destination_port.as_ref().map(|v| v.value) {
        None => None,
        Some(p) => match u16::try_from(p) {
            Ok(p) if p > 0 => Some(p),
            _ => {
                refusals.push(invalid(
                    res,
                    &join(base, "destination_port"),
                    "must be 1..=65535",
                ));
                None
            }
        },
    };
    let mut ports = Vec::new();
    for (i, p) in source_ports.iter().enumerate() {
        match u16::try_from(*p) {
            Ok(p) if p > 0 => ports.push(p),
            _ => refusals.push(invalid(
                res,
                &join(base, &format!("source_ports[{i}]")),
                "must be 1..=65535",
            )),
        }
    }
    let source_type = match S::try_from(*source_type) {
        Ok(S::Any) => SourceType::Any,
        Ok(S::SameIpOrLoopback) => SourceType::Local,
        Ok(S::External) => SourceType::External,
        Err(_) => {
            refusals.push(invalid(
                res,
                &join(base, "source_type"),
                "unknown source type",
            ));
            SourceType::Any
        }
    };
    for (i, n) in server_names.iter().enumerate() {
        let bad = n.is_empty()
            || n.contains(['/', ' ', ':'])
            || n.strip_prefix("*.").unwrap_or(n).contains('*');
        if bad {
            refusals.push(invalid(
                res,
                &join(base, &format!("server_names[{i}]")),
                format!("{n:?}: gofe matches a server name or a wildcard \"*.suffix\""),
            ));
        }
    }
    let transport_protocol = match transport_protocol.as_str() {
        "" => None,
        t @ ("tls" | "raw_buffer") => Some(t.to_owned()),
        t => {
            refusals.push(invalid(
                res,
                &join(base, "transport_protocol"),
                format!("{t:?} not supported by gofe (\"tls\" and \"raw_buffer\")"),
            ));
            None
        }
    };
    refusals.finish()?;
    Ok(gofe_model::FilterChainMatchConfig {
        destination_port,
        prefix_ranges: prefix,
        server_names: server_names.clone(),
        transport_protocol,
        application_protocols: application_protocols.clone(),
        direct_source_prefix_ranges: direct,
        source_type,
        source_prefix_ranges: source,
        source_ports: ports,
    })
}

/// A `tcp` listener's chain: no routes (an empty inline table), its tcp_proxy, no clusters
/// required up front (a tcp_proxy's cluster may arrive later, as in Envoy).
fn tcp_listener_from_wire(
    name: &str,
    chain: &listener::FilterChain,
    res: &str,
    base: &str,
) -> Result<(RouteSource, SocketSettings, ClusterRefs), ConvertError> {
    let mut settings = tcp_proxies::tcp_chain_from_wire(chain, res, base)?;
    if let Some(t) = &mut settings.tcp_proxy {
        // The default stat prefix is the listener's name (what the proxy labels it by).
        if t.stat_prefix.as_deref() == Some(name) {
            t.stat_prefix = None;
        }
        let piece = ProxyConfig {
            listeners: vec![ListenerConfig {
                name: Some(name.to_owned()),
                address: "127.0.0.1:0".into(),
                protocol: "tcp".into(),
                tls: None,
                filters: Vec::new(),
                tcp_proxy: Some((**t).clone()),
                use_original_dst: false,
                bind_to_port: true,
                max_connections: None,
                max_request_headers_kb: gofe_model::DEFAULT_MAX_REQUEST_HEADERS_KB,
                request_headers_timeout: gofe_model::DEFAULT_REQUEST_HEADERS_TIMEOUT,
                idle_timeout: gofe_model::DEFAULT_LISTENER_IDLE_TIMEOUT,
                access_log: settings.access_log.clone(),
                tracing: None,
                filter_chains: Vec::new(),
                tls_inspector: false,
                http_inspector: false,
                rbac: None,
            }],
            ..ProxyConfig::default()
        };
        let last = chain.filters.len().saturating_sub(1);
        let tbase = join(base, &format!("filters[{last}].typed_config"));
        super::model_check(&piece, res, "listeners[0].tcp_proxy.", &tbase)?;
    }
    Ok((
        RouteSource::Inline(RouterConfig::default()),
        settings,
        Vec::new(),
    ))
}

#[allow(deprecated)]
fn chain_from_wire(
    chain: &listener::FilterChain,
    res: &str,
    base: &str,
) -> Result<(RouteSource, SocketSettings, ClusterRefs), ConvertError> {
    let listener::FilterChain {
        filter_chain_match,
        filters,
        use_proxy_proto,
        metadata: _,
        transport_socket,
        transport_socket_connect_timeout,
        name: _,
    } = chain;
    let mut refusals = Refusals::default();
    let top = Unsupported::new(res, base)
        // An empty match matches every connection, as no match does.
        .when(
            "filter_chain_match",
            filter_chain_match
                .as_ref()
                .is_some_and(|m| *m != Default::default()),
        )
        .truthy("use_proxy_proto", use_proxy_proto)
        .set(
            "transport_socket_connect_timeout",
            transport_socket_connect_timeout,
        )
        .finish();
    refusals.take(top);
    let tls = transport_socket
        .as_ref()
        .map(|t| tls_from_wire(t, res, &join(base, "transport_socket")))
        .transpose();
    let tls = refusals.take(tls);
    let (limit, manager_filter, mi) = match filters.as_slice() {
        [m] => (None, m, 0),
        [c, m] => (Some(c), m, 1),
        _ => {
            refusals.push(invalid(
                res,
                &join(base, "filters"),
                "expected an http_connection_manager, optionally after a connection_limit",
            ));
            return Err(refusals.finish().unwrap_err());
        }
    };
    let max_connections = limit
        .map(|f| connection_limit_from_wire(f, res, &join(base, "filters[0]")))
        .transpose();
    let max_connections = refusals.take(max_connections);
    let mbase = join(base, &format!("filters[{mi}].typed_config"));
    let any = match &manager_filter.config_type {
        Some(listener::filter::ConfigType::TypedConfig(any))
            if any.type_url == hcm::HttpConnectionManager::type_url() =>
        {
            any
        }
        _ => {
            refusals.push(invalid(
                res,
                &join(base, &format!("filters[{mi}]")),
                format!(
                    "network filter {:?} not supported by gofe (the last filter must be an \
                     http_connection_manager with a typed_config)",
                    manager_filter.name
                ),
            ));
            return Err(refusals.finish().unwrap_err());
        }
    };
    let manager: Option<hcm::HttpConnectionManager> = refusals.take(from_any(any));
    let Some(manager) = manager else {
        return Err(refusals.finish().unwrap_err());
    };
    let routes = refusals.take(hcm_routes(&manager, res, &mbase));
    let settings = refusals.take(hcm_settings(&manager, res, &mbase));
    let ((routes, required), mut settings) = refusals.finish_with(routes.zip(settings))?;
    settings.tls = tls.flatten();
    settings.max_connections = max_connections.flatten();
    Ok((routes, settings, required))
}

pub(super) fn connection_limit_from_wire(
    f: &listener::Filter,
    res: &str,
    base: &str,
) -> Result<u32, ConvertError> {
    let Some(listener::filter::ConfigType::TypedConfig(any)) = &f.config_type else {
        return Err(invalid(res, base, "needs a typed_config"));
    };
    if any.type_url != ConnectionLimit::type_url() {
        return Err(invalid(
            res,
            base,
            format!(
                "network filter {:?} not supported by gofe (only connection_limit before the \
                 http_connection_manager)",
                f.name
            ),
        ));
    }
    let ConnectionLimit {
        stat_prefix: _,
        max_connections,
        delay,
        runtime_enabled,
    } = from_any(any)?;
    let cbase = join(base, "typed_config");
    Unsupported::new(res, &cbase)
        .set("delay", &delay)
        .set("runtime_enabled", &runtime_enabled)
        .finish()?;
    match max_connections.map(|v| v.value) {
        Some(n @ 1..=0xFFFF_FFFF) => Ok(n as u32),
        _ => Err(invalid(
            res,
            &join(&cbase, "max_connections"),
            "needs a value in 1..=4294967295",
        )),
    }
}

fn tls_from_wire(
    t: &core::TransportSocket,
    res: &str,
    base: &str,
) -> Result<TlsConfig, ConvertError> {
    let any = match &t.config_type {
        Some(core::transport_socket::ConfigType::TypedConfig(a))
            if a.type_url == tls::DownstreamTlsContext::type_url() =>
        {
            a
        }
        _ => {
            return Err(invalid(
                res,
                base,
                format!(
                    "transport socket {:?} not supported by gofe (only a DownstreamTlsContext)",
                    t.name
                ),
            ))
        }
    };
    let base = join(base, "typed_config");
    let tls::DownstreamTlsContext {
        common_tls_context,
        require_client_certificate,
        require_sni,
        disable_stateful_session_resumption,
        session_timeout,
        ocsp_staple_policy,
        full_scan_certs_on_sni_mismatch,
        prefer_client_ciphers,
        session_ticket_keys_type,
    } = from_any(any)?;
    Unsupported::new(res, &base)
        .truthy("require_sni", &require_sni)
        .set(
            "disable_stateful_session_resumption",
            &disable_stateful_session_resumption,
        )
        .set("session_timeout", &session_timeout)
        .set("ocsp_staple_policy", &ocsp_staple_policy)
        .truthy(
            "full_scan_certs_on_sni_mismatch",
            &full_scan_certs_on_sni_mismatch,
        )
        .set("prefer_client_ciphers", &prefer_client_ciphers)
        .set("session_ticket_keys_type", &session_ticket_keys_type)
        .finish()?;
    let cbase = join(&base, "common_tls_context");
    #[allow(deprecated)]
    let tls::CommonTlsContext {
        tls_params,
        tls_certificates,
        tls_certificate_sds_secret_configs,
        tls_certificate_provider_instance,
        custom_tls_certificate_selector,
        tls_certificate_certificate_provider,
        tls_certificate_certificate_provider_instance,
        alpn_protocols,
        custom_handshaker,
        key_log,
        validation_context_type,
    } = common_tls_context.unwrap_or_default();
    Unsupported::new(res, &cbase)
        .set("tls_params", &tls_params)
        .set(
            "tls_certificate_sds_secret_configs",
            &tls_certificate_sds_secret_configs,
        )
        .set(
            "tls_certificate_provider_instance",
            &tls_certificate_provider_instance,
        )
        .set(
            "custom_tls_certificate_selector",
            &custom_tls_certificate_selector,
        )
        .set(
            "tls_certificate_certificate_provider",
            &tls_certificate_certificate_provider,
        )
        .set(
            "tls_certificate_certificate_provider_instance",
            &tls_certificate_certificate_provider_instance,
        )
        .set("custom_handshaker", &custom_handshaker)
        .set("key_log", &key_log)
        .finish()?;
    let validation_context = validation_context_type
        .as_ref()
        .map(|v| validation_from_wire(v, res, &cbase).map(Box::new))
        .transpose()?;
    let require_client_certificate = require_client_certificate.is_some_and(|b| b.value);
    if require_client_certificate && validation_context.is_none() {
        return Err(invalid(
            res,
            &join(&base, "require_client_certificate"),
            "needs a common_tls_context.validation_context with a trusted_ca",
        ));
    }
    for (i, p) in alpn_protocols.iter().enumerate() {
        if !ALPN.contains(&p.as_str()) || alpn_protocols[..i].contains(p) {
            return Err(invalid(
                res,
                &join(&cbase, &format!("alpn_protocols[{i}]")),
                format!("gofe offers {ALPN:?} (each at most once, or none), got {p:?}"),
            ));
        }
    }
    let [cert] = tls_certificates.as_slice() else {
        return Err(invalid(
            res,
            &join(&cbase, "tls_certificates"),
            "exactly one certificate is supported",
        ));
    };
    let kbase = join(&cbase, "tls_certificates[0]");
    let tls::TlsCertificate {
        certificate_chain,
        private_key,
        pkcs12,
        watched_directory,
        private_key_provider,
        password,
        ocsp_staple,
        signed_certificate_timestamp,
        tls_params,
    } = cert;
    Unsupported::new(res, &kbase)
        .set("pkcs12", pkcs12)
        .set("watched_directory", watched_directory)
        .set("private_key_provider", private_key_provider)
        .set("password", password)
        .set("ocsp_staple", ocsp_staple)
        .set("signed_certificate_timestamp", signed_certificate_timestamp)
        .set("tls_params", tls_params)
        .finish()?;
    let file = |d: &Option<core::DataSource>, f: &str| -> Result<String, ConvertError> {
        match d {
            Some(core::DataSource {
                watched_directory: None,
                specifier: Some(core::data_source::Specifier::Filename(path)),
            }) if !path.is_empty() => Ok(path.clone()),
            _ => Err(invalid(
                res,
                &join(&kbase, f),
                "needs a filename (inline and environment data sources are not supported by gofe)",
            )),
        }
    };
    Ok(TlsConfig {
        certificate_chain: file(certificate_chain, "certificate_chain")?,
        private_key: file(private_key, "private_key")?,
        alpn_protocols,
        validation_context,
        require_client_certificate,
    })
}

/// A `CommonTlsContext`'s client-certificate validation: a `validation_context` with a
/// `trusted_ca` (a file or inline PEM) and `match_typed_subject_alt_names` of URI and DNS
/// names; the rest refused by name.
#[allow(deprecated)]
fn validation_from_wire(
    v: &tls::common_tls_context::ValidationContextType,
    res: &str,
    cbase: &str,
) -> Result<gofe_model::TlsValidationConfig, ConvertError> {
    use tls::common_tls_context::ValidationContextType as V;
    let context = match v {
        V::ValidationContext(c) => c,
        V::ValidationContextSdsSecretConfig(_) => {
            return Err(unsupported(
                res,
                &join(cbase, "validation_context_sds_secret_config"),
            ))
        }
        V::CombinedValidationContext(_) => {
            return Err(unsupported(
                res,
                &join(cbase, "combined_validation_context"),
            ))
        }
        V::ValidationContextCertificateProvider(_) => {
            return Err(unsupported(
                res,
                &join(cbase, "validation_context_certificate_provider"),
            ))
        }
        V::ValidationContextCertificateProviderInstance(_) => {
            return Err(unsupported(
                res,
                &join(cbase, "validation_context_certificate_provider_instance"),
            ))
        }
    };
    let vbase = join(cbase, "validation_context");
    let tls::CertificateValidationContext {
        trusted_ca,
        ca_certificate_provider_instance,
        system_root_certs,
        watched_directory,
        verify_certificate_spki,
        verify_certificate_hash,
        match_typed_subject_alt_names,
        match_subject_alt_names,
        require_signed_certificate_timestamp,
        crl,
        allow_expired_certificate,
        trust_chain_verification,
        custom_validator_config,
        only_verify_leaf_cert_crl,
        max_verify_depth,
        suppress_client_ca_list,
    } = context;
    Unsupported::new(res, &vbase)
        .set(
            "ca_certificate_provider_instance",
            ca_certificate_provider_instance,
        )
        .set("system_root_certs", system_root_certs)
        .set("watched_directory", watched_directory)
        .set("verify_certificate_spki", verify_certificate_spki)
        .set("verify_certificate_hash", verify_certificate_hash)
        .set("match_subject_alt_names", match_subject_alt_names)
        .set(
            "require_signed_certificate_timestamp",
            require_signed_certificate_timestamp,
        )
        .set("crl", crl)
        .set("allow_expired_certificate", allow_expired_certificate)
        .set("trust_chain_verification", trust_chain_verification)
        .set("custom_validator_config", custom_validator_config)
        .set("only_verify_leaf_cert_crl", only_verify_leaf_cert_crl)
        .set("max_verify_depth", max_verify_depth)
        .set("suppress_client_ca_list", suppress_client_ca_list)
        .finish()?;
    let cabase = join(&vbase, "trusted_ca");
    let trusted_ca = match trusted_ca {
        Some(core::DataSource {
            watched_directory: None,
            specifier: Some(s),
        }) => match s {
            core::data_source::Specifier::Filename(path) if !path.is_empty() => {
                gofe_model::DataSourceConfig {
                    filename: Some(path.clone()),
                    inline_string: None,
                }
            }
            core::data_source::Specifier::InlineString(pem) if !pem.is_empty() => {
                gofe_model::DataSourceConfig {
                    filename: None,
                    inline_string: Some(pem.clone()),
                }
            }
            core::data_source::Specifier::InlineBytes(pem) if !pem.is_empty() => {
                gofe_model::DataSourceConfig {
                    filename: None,
                    inline_string: Some(String::from_utf8(pem.clone()).map_err(|_| {
                        invalid(res, &join(&cabase, "inline_bytes"), "not PEM text")
                    })?),
                }
            }
            _ => {
                return Err(invalid(
                    res,
                    &cabase,
                    "needs a filename, inline_string or inline_bytes (environment variables \
                     are not supported by gofe)",
                ))
            }
        },
        Some(core::DataSource {
            watched_directory: Some(_),
            ..
        }) => return Err(unsupported(res, &join(&cabase, "watched_directory"))),
        _ => {
            return Err(invalid(
                res,
                &cabase,
                "needs the CA certificates client certificates must chain to",
            ))
        }
    };
    let mut sans = Vec::with_capacity(match_typed_subject_alt_names.len());
    for (i, m) in match_typed_subject_alt_names.iter().enumerate() {
        use tls::subject_alt_name_matcher::SanType as S;
        let mbase = join(&vbase, &format!("match_typed_subject_alt_names[{i}]"));
        Unsupported::new(res, &mbase).set("oid", &m.oid).finish()?;
        let san_type = match S::try_from(m.san_type) {
            Ok(S::Uri) => gofe_model::SanType::Uri,
            Ok(S::Dns) => gofe_model::SanType::Dns,
            _ => {
                return Err(invalid(
                    res,
                    &join(&mbase, "san_type"),
                    "only URI and DNS are supported by gofe",
                ))
            }
        };
        let Some(sm) = &m.matcher else {
            return Err(invalid(res, &join(&mbase, "matcher"), "needs a matcher"));
        };
        sans.push(gofe_model::SanMatcherConfig {
            san_type,
            matcher: super::rbac::string_match_from_wire(sm, res, &join(&mbase, "matcher"))?,
        });
    }
    Ok(gofe_model::TlsValidationConfig {
        trusted_ca,
        match_typed_subject_alt_names: sans,
    })
}

/// Where the connection manager's routes come from, and the clusters an inline route
/// configuration requires (`validate_clusters`, true by default for inline routes).
fn hcm_routes(
    m: &hcm::HttpConnectionManager,
    res: &str,
    base: &str,
) -> Result<(RouteSource, ClusterRefs), ConvertError> {
    use hcm::http_connection_manager::RouteSpecifier as R;
    match &m.route_specifier {
        Some(R::Rds(rds)) => {
            check_config_source(
                rds.config_source.as_ref(),
                res,
                &join(base, "rds.config_source"),
            )?;
            if rds.route_config_name.is_empty() {
                return Err(invalid(res, &join(base, "rds.route_config_name"), "empty"));
            }
            Ok((RouteSource::Rds(rds.route_config_name.clone()), Vec::new()))
        }
        Some(R::RouteConfig(rc)) => {
            let rbase = join(base, "route_config");
            let (r, _) = routes::route_from_wire_in(rc, res, &rbase)?;
            let validate = rc.validate_clusters.as_ref().is_none_or(|b| b.value);
            let required = if validate {
                routes::cluster_refs(&r.router, &rbase)
            } else {
                Vec::new()
            };
            Ok((RouteSource::Inline(r.router), required))
        }
        _ => Err(invalid(
            res,
            base,
            "needs rds or route_config (scoped routes are not supported)",
        )),
    }
}

/// The connection manager's settings, refusing every field gofe does not honour.
#[allow(deprecated)]
fn hcm_settings(
    m: &hcm::HttpConnectionManager,
    res: &str,
    base: &str,
) -> Result<SocketSettings, ConvertError> {
    use hcm::http_connection_manager::{CodecType, PathWithEscapedSlashesAction};
    let hcm::HttpConnectionManager {
        codec_type,
        stat_prefix: _,
        http_filters,
        add_user_agent,
        tracing,
        common_http_protocol_options,
        http1_safe_max_connection_duration,
        http_protocol_options,
        http2_protocol_options,
        http3_protocol_options,
        server_name,
        // gofe never writes a Server header, whatever the transformation.
        server_header_transformation: _,
        scheme_header_transformation,
        max_request_headers_kb,
        stream_idle_timeout,
        stream_flush_timeout,
        request_timeout,
        request_headers_timeout,
        // Graceful-close timing: gofe drains connections its own way.
        drain_timeout: _,
        drain_timeout_jitter: _,
        delayed_close_timeout: _,
        access_log,
        access_log_flush_interval,
        flush_access_log_on_new_request,
        access_log_options,
        // gofe always acts as the edge (appends the client's address to x-forwarded-for).
        use_remote_address: _,
        xff_num_trusted_hops,
        original_ip_detection_extensions,
        early_header_mutation_extensions,
        internal_address_config,
        skip_xff_append,
        via,
        generate_request_id,
        preserve_external_request_id,
        always_set_request_id_in_response,
        forward_client_cert_details,
        set_current_client_cert_details,
        forward_client_cert_matcher,
        proxy_100_continue,
        represent_ipv4_remote_address_as_ipv4_mapped_ipv6,
        upgrade_configs,
        normalize_path,
        merge_slashes,
        path_with_escaped_slashes_action,
        request_id_extension,
        local_reply_config,
        strip_matching_host_port,
        stream_error_on_invalid_http_message,
        path_normalization_options,
        strip_trailing_host_dot,
        proxy_status_config,
        typed_header_validation_config,
        append_x_forwarded_port,
        append_local_overload,
        add_proxy_protocol_connection_state,
        forward_proto_config,
        route_specifier: _,
        strip_port_mode,
    } = m;
    let escaped_ok = matches!(
        PathWithEscapedSlashesAction::try_from(*path_with_escaped_slashes_action),
        Ok(PathWithEscapedSlashesAction::ImplementationSpecificDefault
            | PathWithEscapedSlashesAction::KeepUnchanged)
    );
    let mut refusals = Refusals::default();
    let top = Unsupported::new(res, base)
        .when(
            "codec_type (gofe detects HTTP/1.1 and HTTP/2 itself: AUTO only)",
            *codec_type != CodecType::Auto as i32,
        )
        .truthy("add_user_agent", add_user_agent)
        .set(
            "http1_safe_max_connection_duration",
            http1_safe_max_connection_duration,
        )
        .set("http_protocol_options", http_protocol_options)
        .set("http2_protocol_options", http2_protocol_options)
        .set("http3_protocol_options", http3_protocol_options)
        .set("server_name", server_name)
        .set("scheme_header_transformation", scheme_header_transformation)
        // Zero disables it, which is what gofe does.
        .when(
            "stream_idle_timeout",
            stream_idle_timeout
                .as_ref()
                .is_some_and(|d| *d != PbDuration::default()),
        )
        .when(
            "stream_flush_timeout",
            stream_flush_timeout
                .as_ref()
                .is_some_and(|d| *d != PbDuration::default()),
        )
        .when(
            "request_timeout",
            request_timeout
                .as_ref()
                .is_some_and(|d| *d != PbDuration::default()),
        )
        .set("xff_num_trusted_hops", xff_num_trusted_hops)
        .set(
            "original_ip_detection_extensions",
            original_ip_detection_extensions,
        )
        .set(
            "early_header_mutation_extensions",
            early_header_mutation_extensions,
        )
        .set("internal_address_config", internal_address_config)
        .set("skip_xff_append", skip_xff_append)
        .set("via", via)
        .when(
            "generate_request_id (gofe always sets x-request-id)",
            generate_request_id.as_ref().is_some_and(|b| !b.value),
        )
        .set("preserve_external_request_id", preserve_external_request_id)
        .set(
            "always_set_request_id_in_response",
            always_set_request_id_in_response,
        )
        .set("forward_client_cert_details", forward_client_cert_details)
        .set(
            "set_current_client_cert_details",
            set_current_client_cert_details,
        )
        .set("forward_client_cert_matcher", forward_client_cert_matcher)
        .set("proxy_100_continue", proxy_100_continue)
        .set(
            "represent_ipv4_remote_address_as_ipv4_mapped_ipv6",
            represent_ipv4_remote_address_as_ipv4_mapped_ipv6,
        )
        .set("upgrade_configs", upgrade_configs)
        .truthy("normalize_path", normalize_path)
        .set("merge_slashes", merge_slashes)
        .when("path_with_escaped_slashes_action", !escaped_ok)
        .set("request_id_extension", request_id_extension)
        .set("local_reply_config", local_reply_config)
        .set("strip_matching_host_port", strip_matching_host_port)
        .truthy(
            "stream_error_on_invalid_http_message",
            stream_error_on_invalid_http_message,
        )
        .set("path_normalization_options", path_normalization_options)
        .set("strip_trailing_host_dot", strip_trailing_host_dot)
        .set("proxy_status_config", proxy_status_config)
        .set(
            "typed_header_validation_config",
            typed_header_validation_config,
        )
        .set("append_x_forwarded_port", append_x_forwarded_port)
        .set("append_local_overload", append_local_overload)
        .truthy(
            "add_proxy_protocol_connection_state",
            add_proxy_protocol_connection_state,
        )
        .set("forward_proto_config", forward_proto_config)
        // gofe writes a request's line once, when it is over.
        .set("access_log_flush_interval", access_log_flush_interval)
        .set(
            "flush_access_log_on_new_request",
            flush_access_log_on_new_request,
        )
        .set("access_log_options", access_log_options)
        .when(
            "strip_any_host_port",
            matches!(
                strip_port_mode,
                Some(hcm::http_connection_manager::StripPortMode::StripAnyHostPort(true))
            ),
        )
        .finish();
    refusals.take(top);
    let filters = refusals.take(http_filters_from_wire(http_filters, res, base));
    let idle_timeout = match common_http_protocol_options {
        None => Some(gofe_model::DEFAULT_LISTENER_IDLE_TIMEOUT),
        Some(o) => refusals.take(protocol_options_idle_timeout(
            o,
            gofe_model::DEFAULT_LISTENER_IDLE_TIMEOUT,
            res,
            &join(base, "common_http_protocol_options"),
        )),
    };
    let max_request_headers_kb = match max_request_headers_kb.map(|v| v.value) {
        None => gofe_model::DEFAULT_MAX_REQUEST_HEADERS_KB,
        Some(kb @ 1..=MAX_REQUEST_HEADERS_KB) => kb,
        Some(_) => {
            refusals.push(invalid(
                res,
                &join(base, "max_request_headers_kb"),
                "must be in 1..=8192",
            ));
            gofe_model::DEFAULT_MAX_REQUEST_HEADERS_KB
        }
    };
    let access_log = refusals.take(access_logs_from_wire(access_log, res, base));
    let tracing = match tracing {
        None => Some(None),
        Some(t) => refusals
            .take(tracing_from_wire(t, res, &join(base, "tracing")))
            .map(|t| t.map(Box::new)),
    };
    // Envoy's default: no request headers timeout.
    let request_headers_timeout = refusals.take(duration_or(
        request_headers_timeout,
        Duration::ZERO,
        res,
        &join(base, "request_headers_timeout"),
    ));
    let parts = filters
        .zip(idle_timeout)
        .zip(access_log.zip(tracing))
        .zip(request_headers_timeout);
    let (((filters, idle_timeout), (access_log, tracing)), request_headers_timeout) =
        refusals.finish_with(parts)?;
    Ok(SocketSettings {
        access_log,
        tracing,
        tls: None,
        max_connections: None,
        max_request_headers_kb,
        request_headers_timeout,
        idle_timeout,
        buffer_filter: filters.buffer,
        fault_filter: filters.fault,
        local_ratelimit_filter: filters.ratelimit,
        rbac: filters.rbac.map(Box::new),
        unnamed: false,
        ..SocketSettings::default()
    })
}

/// `common_http_protocol_options`, of which gofe honours `idle_timeout` (zero disables it)
/// and refuses the rest when set.
pub(super) fn protocol_options_idle_timeout(
    o: &core::HttpProtocolOptions,
    default: Duration,
    res: &str,
    base: &str,
) -> Result<Duration, ConvertError> {
    let core::HttpProtocolOptions {
        idle_timeout,
        max_connection_duration,
        max_connection_duration_jitter,
        max_headers_count,
        max_response_headers_kb,
        max_stream_duration,
        headers_with_underscores_action,
        max_requests_per_connection,
    } = o;
    Unsupported::new(res, base)
        .set("max_connection_duration", max_connection_duration)
        .set(
            "max_connection_duration_jitter",
            max_connection_duration_jitter,
        )
        .set("max_headers_count", max_headers_count)
        .set("max_response_headers_kb", max_response_headers_kb)
        .set("max_stream_duration", max_stream_duration)
        .set(
            "headers_with_underscores_action",
            headers_with_underscores_action,
        )
        .set("max_requests_per_connection", max_requests_per_connection)
        .finish()?;
    duration_or(idle_timeout, default, res, &join(base, "idle_timeout"))
}

/// Which of gofe's optional HTTP filters a connection manager has.
#[derive(Default)]
struct HttpFilters {
    rbac: Option<gofe_model::RbacConfig>,
    buffer: bool,
    fault: bool,
    ratelimit: bool,
}

/// The connection manager's HTTP filters: an optional fault filter with an empty configuration
/// (routes configure it), an optional local rate limit filter without a bucket (routes bring
/// theirs), an optional buffer filter disabled by default (each route enables it
/// with its limit), then the router, last, in that order. A filter gofe does not have is
/// skipped when marked `is_optional` (Envoy's rule for clients without it) and refused
/// otherwise.
fn http_filters_from_wire(
    filters: &[hcm::HttpFilter],
    res: &str,
    base: &str,
) -> Result<HttpFilters, ConvertError> {
    let Some((last, rest)) = filters.split_last() else {
        return Err(invalid(
            res,
            &join(base, "http_filters"),
            "needs the router filter",
        ));
    };
    let typed = |f: &hcm::HttpFilter| match &f.config_type {
        Some(hcm::http_filter::ConfigType::TypedConfig(a)) => Some(a.clone()),
        _ => None,
    };
    let mut refusals = Refusals::default();
    let last_base = join(base, &format!("http_filters[{}]", rest.len()));
    match typed(last) {
        Some(a) if a.type_url == Router::type_url() => {
            let router = from_any(&a)
                .and_then(|r| router_from_wire(&r, res, &join(&last_base, "typed_config")));
            refusals.take(router);
        }
        None if last.config_type.is_none() && last.name == ROUTER_FILTER_NAME => {}
        _ => refusals.push(invalid(
            res,
            &last_base,
            "the last HTTP filter must be the router",
        )),
    }
    let mut out = HttpFilters::default();
    // The rank of the last filter seen: gofe applies its filters in one order.
    let mut rank = 0;
    let mut in_order = |fbase: &str, r: u8, what: &str| {
        if r <= rank {
            return Err(invalid(
                res,
                fbase,
                format!(
                    "{what} out of gofe's order (RBAC, fault, local rate limit, buffer, then the router; each once)"
                ),
            ));
        }
        rank = r;
        Ok(())
    };
    for (i, f) in rest.iter().enumerate() {
        let fbase = join(base, &format!("http_filters[{i}]"));
        // Each filter is judged on its own, so that every refused one is named.
        let mut one = || -> Result<(), ConvertError> {
            match typed(f) {
                Some(a) if super::rbac::is_rbac(&a) => {
                    in_order(&fbase, 1, "the RBAC filter")?;
                    out.rbac = super::rbac::filter_from_wire(f, &a, res, &fbase)?;
                }
                Some(a) if super::faults::is_fault(&a) => {
                    in_order(&fbase, 2, "the fault filter")?;
                    super::faults::filter_from_wire(f, &a, res, &fbase)?;
                    out.fault = true;
                }
                Some(a) if super::ratelimits::is_local_ratelimit(&a) => {
                    in_order(&fbase, 3, "the local rate limit filter")?;
                    super::ratelimits::filter_from_wire(f, &a, res, &fbase)?;
                    out.ratelimit = true;
                }
                Some(a) if a.type_url == buffer::Buffer::type_url() => {
                    in_order(&fbase, 4, "the buffer filter")?;
                    if f.name != BUFFER_FILTER_NAME {
                        return Err(invalid(
                            res,
                            &join(&fbase, "name"),
                            format!(
                            "gofe reads the buffer filter under the name {BUFFER_FILTER_NAME:?}"
                        ),
                        ));
                    }
                    if !f.disabled {
                        return Err(invalid(
                            res,
                            &join(&fbase, "disabled"),
                            "a buffer filter enabled for every route is not supported by gofe: \
                         disable it here and enable it per route with its limit",
                        ));
                    }
                    let _: buffer::Buffer = from_any(&a)?;
                    out.buffer = true;
                }
                _ if f.is_optional => {}
                _ => {
                    return Err(invalid(
                        res,
                        &fbase,
                        format!(
                            "HTTP filter {:?} not supported by gofe (the RBAC, fault, local rate \
                         limit, buffer and router filters only)",
                            f.name
                        ),
                    ))
                }
            }
            Ok(())
        };
        let judged = one();
        refusals.take(judged);
    }
    refusals.finish()?;
    Ok(out)
}

#[allow(deprecated)]
fn router_from_wire(r: &Router, res: &str, base: &str) -> Result<(), ConvertError> {
    let Router {
        // Statistics: gofe counts requests its own way.
        dynamic_stats: _,
        start_child_span: _,
        upstream_log,
        upstream_log_options,
        // gofe adds no x-envoy-* headers, suppressed or not.
        suppress_envoy_headers: _,
        strict_check_headers,
        respect_expected_rq_timeout,
        suppress_grpc_request_failure_code_stats: _,
        upstream_http_filters,
        reject_connect_request_early_data: _,
    } = r;
    Unsupported::new(res, base)
        .set("strict_check_headers", strict_check_headers)
        .set("respect_expected_rq_timeout", respect_expected_rq_timeout)
        .set("upstream_http_filters", upstream_http_filters)
        // Per-attempt logs: gofe writes one line per request (the connection manager's).
        .set("upstream_log", upstream_log)
        .set("upstream_log_options", upstream_log_options)
        .finish()
}
