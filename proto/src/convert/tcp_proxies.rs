//! `tcp` listeners and capture listeners: the `envoy.filters.network.tcp_proxy` filter chain,
//! `use_original_dst` with the `envoy.filters.listener.original_dst` listener filter, and
//! `bind_to_port: false`.

use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use gofe_model::{ClusterWeightConfig, TcpProxyConfig, WeightedClustersConfig};

use super::access_logs::{access_logs_from_wire, access_logs_to_wire};
use super::*;

/// Name of the TCP proxy network filter (a `tcp` listener).
pub const TCP_PROXY_FILTER_NAME: &str = "envoy.filters.network.tcp_proxy";
/// Name of the original destination listener filter (on a `use_original_dst` listener).
pub const ORIGINAL_DST_FILTER_NAME: &str = "envoy.filters.listener.original_dst";

// === to wire ===

/// Writes a listener's capture settings: `use_original_dst` with the original destination
/// listener filter (as Istio's `virtualOutbound` has both), and `bind_to_port: false`.
pub(super) fn capture_to_wire(settings: &SocketSettings, out: &mut listener::Listener) {
    if settings.use_original_dst {
        out.use_original_dst = Some(BoolValue { value: true });
        out.listener_filters.push(listener::ListenerFilter {
            name: ORIGINAL_DST_FILTER_NAME.into(),
            config_type: Some(listener::listener_filter::ConfigType::TypedConfig(to_any(
                &OriginalDst {},
            ))),
            ..Default::default()
        });
    }
    if !settings.bind_to_port {
        out.bind_to_port = Some(BoolValue { value: false });
    }
}

/// The filter chain of a `tcp` listener: an optional connection limit, then the tcp_proxy.
pub(super) fn tcp_chain_to_wire(
    name: &str,
    t: &TcpProxyConfig,
    settings: &SocketSettings,
    limit: Option<listener::Filter>,
) -> listener::FilterChain {
    use tcp::tcp_proxy::ClusterSpecifier;
    let cluster_specifier = match (&t.cluster, &t.weighted_clusters) {
        (Some(c), _) => Some(ClusterSpecifier::Cluster(c.clone())),
        (None, Some(wc)) => Some(ClusterSpecifier::WeightedClusters(
            tcp::tcp_proxy::WeightedCluster {
                clusters: wc
                    .clusters
                    .iter()
                    .map(|c| tcp::tcp_proxy::weighted_cluster::ClusterWeight {
                        name: c.name.clone(),
                        weight: c.weight,
                        metadata_match: None,
                    })
                    .collect(),
            },
        )),
        (None, None) => None,
    };
    let proxy = tcp::TcpProxy {
        stat_prefix: t.stat_prefix.clone().unwrap_or_else(|| name.to_owned()),
        cluster_specifier,
        idle_timeout: Some(pb_duration(t.idle_timeout)),
        access_log: access_logs_to_wire(&settings.access_log),
        ..Default::default()
    };
    let mut filters: Vec<listener::Filter> = limit.into_iter().collect();
    filters.push(listener::Filter {
        name: TCP_PROXY_FILTER_NAME.into(),
        config_type: Some(listener::filter::ConfigType::TypedConfig(to_any(&proxy))),
    });
    listener::FilterChain {
        filters,
        ..Default::default()
    }
}

// === from wire ===

/// Whether a listener filter is the original destination filter (gofe reads the original
/// destination itself, on every listener that uses it).
pub(super) fn is_original_dst_filter(f: &listener::ListenerFilter) -> bool {
    matches!(
        &f.config_type,
        Some(listener::listener_filter::ConfigType::TypedConfig(a))
            if a.type_url == OriginalDst::type_url()
    )
}

/// Whether a filter chain ends in a tcp_proxy (rather than a connection manager).
pub(super) fn is_tcp_chain(chain: &listener::FilterChain) -> bool {
    matches!(
        chain.filters.last().and_then(|f| f.config_type.as_ref()),
        Some(listener::filter::ConfigType::TypedConfig(a)) if a.type_url == tcp::TcpProxy::type_url()
    )
}

/// A `tcp` listener's filter chain: an optional connection limit, then a tcp_proxy; every
/// field gofe does not honour refused by name.
#[allow(deprecated)]
pub(super) fn tcp_chain_from_wire(
    chain: &listener::FilterChain,
    res: &str,
    base: &str,
) -> Result<SocketSettings, ConvertError> {
    let listener::FilterChain {
        filter_chain_match,
        filters,
        use_proxy_proto,
        metadata: _,
        transport_socket,
        transport_socket_connect_timeout,
        name: _,
    } = chain;
    Unsupported::new(res, base)
        .when(
            "filter_chain_match",
            filter_chain_match
                .as_ref()
                .is_some_and(|m| *m != Default::default()),
        )
        .truthy("use_proxy_proto", use_proxy_proto)
        .set(
            "transport_socket (TLS on a tcp_proxy chain)",
            transport_socket,
        )
        .set(
            "transport_socket_connect_timeout",
            transport_socket_connect_timeout,
        )
        .finish()?;
    let (limit, proxy_filter, pi) = match filters.as_slice() {
        [p] => (None, p, 0),
        [c, p] => (Some(c), p, 1),
        _ => {
            return Err(invalid(
                res,
                &join(base, "filters"),
                "expected a tcp_proxy, optionally after a connection_limit",
            ))
        }
    };
    let max_connections = limit
        .map(|f| super::listeners::connection_limit_from_wire(f, res, &join(base, "filters[0]")))
        .transpose()?;
    let pbase = join(base, &format!("filters[{pi}].typed_config"));
    let Some(listener::filter::ConfigType::TypedConfig(any)) = &proxy_filter.config_type else {
        return Err(invalid(res, &pbase, "needs a typed_config"));
    };
    let proxy: tcp::TcpProxy = from_any(any)?;
    let (t, access_log) = tcp_proxy_from_wire(&proxy, res, &pbase)?;
    Ok(SocketSettings {
        max_connections,
        access_log,
        tcp_proxy: Some(Box::new(t)),
        ..SocketSettings::default()
    })
}

#[allow(deprecated)]
fn tcp_proxy_from_wire(
    p: &tcp::TcpProxy,
    res: &str,
    base: &str,
) -> Result<(TcpProxyConfig, Vec<gofe_model::AccessLogConfig>), ConvertError> {
    use tcp::tcp_proxy::ClusterSpecifier;
    let tcp::TcpProxy {
        stat_prefix,
        on_demand,
        metadata_match,
        idle_timeout,
        downstream_idle_timeout,
        upstream_idle_timeout,
        access_log,
        max_connect_attempts,
        backoff_options,
        hash_policy,
        tunneling_config,
        max_downstream_connection_duration,
        max_downstream_connection_duration_jitter_percentage,
        access_log_flush_interval,
        flush_access_log_on_connected,
        access_log_options,
        proxy_protocol_tlvs,
        proxy_protocol_tlv_merge_policy,
        upstream_connect_mode,
        max_early_data_bytes,
        check_drain_close,
        cluster_specifier,
    } = p;
    Unsupported::new(res, base)
        .set("on_demand", on_demand)
        .set("metadata_match", metadata_match)
        .set("downstream_idle_timeout", downstream_idle_timeout)
        .set("upstream_idle_timeout", upstream_idle_timeout)
        .when(
            "max_connect_attempts",
            max_connect_attempts.as_ref().is_some_and(|v| v.value != 1),
        )
        .set("backoff_options", backoff_options)
        .set("hash_policy", hash_policy)
        .set("tunneling_config", tunneling_config)
        .set(
            "max_downstream_connection_duration",
            max_downstream_connection_duration,
        )
        .set(
            "max_downstream_connection_duration_jitter_percentage",
            max_downstream_connection_duration_jitter_percentage,
        )
        .set("access_log_flush_interval", access_log_flush_interval)
        .when(
            "flush_access_log_on_connected",
            *flush_access_log_on_connected,
        )
        .set("access_log_options", access_log_options)
        .set("proxy_protocol_tlvs", proxy_protocol_tlvs)
        .set(
            "proxy_protocol_tlv_merge_policy",
            proxy_protocol_tlv_merge_policy,
        )
        .set("upstream_connect_mode", upstream_connect_mode)
        .set("max_early_data_bytes", max_early_data_bytes)
        .set("check_drain_close", check_drain_close)
        .finish()?;
    if stat_prefix.is_empty() {
        return Err(invalid(
            res,
            &join(base, "stat_prefix"),
            "must not be empty",
        ));
    }
    let (cluster, weighted_clusters) = match cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) if !c.is_empty() => (Some(c.clone()), None),
        Some(ClusterSpecifier::WeightedClusters(wc)) => {
            let mut clusters = Vec::with_capacity(wc.clusters.len());
            for (i, c) in wc.clusters.iter().enumerate() {
                if c.metadata_match.is_some() {
                    return Err(unsupported(
                        res,
                        &join(
                            base,
                            &format!("weighted_clusters.clusters[{i}].metadata_match"),
                        ),
                    ));
                }
                clusters.push(ClusterWeightConfig {
                    name: c.name.clone(),
                    weight: c.weight,
                });
            }
            (None, Some(WeightedClustersConfig { clusters }))
        }
        _ => return Err(invalid(res, base, "needs a cluster or weighted_clusters")),
    };
    let idle_timeout = duration_or(
        idle_timeout,
        gofe_model::DEFAULT_TCP_IDLE_TIMEOUT,
        res,
        &join(base, "idle_timeout"),
    )?;
    let access_log = access_logs_from_wire(access_log, res, base)?;
    Ok((
        TcpProxyConfig {
            stat_prefix: Some(stat_prefix.clone()),
            cluster,
            weighted_clusters,
            idle_timeout,
        },
        access_log,
    ))
}
