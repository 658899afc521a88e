//! Clusters: discovery, balancing, connection options, circuit breakers (with retry budgets),
//! outlier detection and panic mode.

use envoy_types::pb::envoy::r#type::v3::Percent;

use super::endpoints::{load_assignment_from_wire, Addresses};
use super::listeners::protocol_options_idle_timeout;
use super::*;

/// Envoy's default upstream `idle_timeout` (when the wire leaves it unset).
const ENVOY_UPSTREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// The failure-percentage threshold gofe reads when Envoy's failure-percentage ejection is off
/// (`enforcing_failure_percentage` 0) and gofe's metadata says no other: above 100, which
/// disables the rule.
const FAILURE_PERCENTAGE_OFF: u32 = 101;

/// A cluster's values that have no Envoy form.
pub(super) fn check_publishable(c: &ClusterConfig, base: &str) -> Result<(), ConvertError> {
    let positive = |d: Duration, field: &str, what: &str| {
        check_pb_duration(d, format!("{base}.{field}"))?;
        if d.is_zero() {
            Err(not_publishable(
                format!("{base}.{field}"),
                format!("0s has no Envoy form ({what})"),
            ))
        } else {
            Ok(())
        }
    };
    positive(
        c.connect_timeout,
        "connect_timeout",
        "Envoy's connect_timeout is longer than 0s",
    )?;
    if let Some(l) = &c.local_ratelimit {
        super::ratelimits::check_publishable(l, &format!("{base}.local_ratelimit"))?;
    }
    positive(
        c.idle_timeout,
        "idle_timeout",
        "gofe closes idle connections at once; Envoy's 0s keeps them forever",
    )?;
    if let Some(o) = &c.outlier_detection {
        check_pb_duration(o.interval, format!("{base}.outlier_detection.interval"))?;
        positive(
            o.base_ejection_time,
            "outlier_detection.base_ejection_time",
            "Envoy's is longer than 0s",
        )?;
        positive(
            o.max_ejection_time,
            "outlier_detection.max_ejection_time",
            "Envoy's is longer than 0s",
        )?;
    }
    Ok(())
}

/// A cluster named `name` with every other setting at its default and no endpoints. The one
/// place outside `cluster_from_wire` that builds a `ClusterConfig` field by field, so new
/// fields of it are added here and there only.
pub fn empty_cluster(name: &str) -> ClusterConfig {
    ClusterConfig {
        name: String::from(name),
        discovery: gofe_model::DiscoveryType::default(),
        lb_policy: LbPolicy::default(),
        connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        http2_protocol_options: None,
        endpoints: Vec::new(),
        circuit_breakers: gofe_model::CircuitBreakersConfig::default(),
        outlier_detection: None,
        healthy_panic_threshold: gofe_model::DEFAULT_PANIC_THRESHOLD,
        idle_timeout: gofe_model::DEFAULT_IDLE_TIMEOUT,
        local_ratelimit: None,
        locality_lb: gofe_model::LocalityLbConfig::default(),
        tls: None,
    }
}

/// The wire settings of a proxy cluster configuration, for [`ClusterResource`]'s informational
/// fields.
pub(super) fn resilience_of(
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
            failure_percentage_threshold: (o.failure_percentage_threshold <= 100)
                .then_some(o.failure_percentage_threshold),
            failure_percentage_request_volume: Some(o.failure_percentage_request_volume),
        });
    (cb, od)
}

// === to wire ===

/// An `original_dst` cluster: type ORIGINAL_DST with Envoy's required CLUSTER_PROVIDED
/// balancing, and no endpoints.
fn original_dst_to_wire(out: &mut cluster::Cluster) {
    use cluster::cluster::{ClusterDiscoveryType, DiscoveryType};
    out.cluster_discovery_type = Some(ClusterDiscoveryType::Type(
        DiscoveryType::OriginalDst as i32,
    ));
    out.lb_policy = cluster::cluster::LbPolicy::ClusterProvided as i32;
    out.load_assignment = None;
    out.eds_cluster_config = None;
}

/// The wire form of a cluster, written from `config`: EDS over ADS when `eds_service_name` is
/// set, otherwise the endpoints inline (STATIC when every endpoint is an IP address,
/// STRICT_DNS when one is a DNS name).
pub fn cluster_to_wire(c: &ClusterResource) -> Result<cluster::Cluster, ConvertError> {
    use cluster::cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig};
    let cfg = &c.config;
    check_publishable(cfg, &format!("Cluster {:?}", cfg.name))?;
    let mut out = cluster::Cluster {
        name: cfg.name.clone(),
        connect_timeout: Some(pb_duration(cfg.connect_timeout)),
        lb_policy: match cfg.lb_policy {
            LbPolicy::RoundRobin => cluster::cluster::LbPolicy::RoundRobin as i32,
            LbPolicy::LeastRequest => cluster::cluster::LbPolicy::LeastRequest as i32,
        },
        circuit_breakers: (cfg.circuit_breakers != gofe_model::CircuitBreakersConfig::default())
            .then(|| circuit_breakers_to_wire(&cfg.circuit_breakers)),
        outlier_detection: cfg
            .outlier_detection
            .as_ref()
            .map(outlier_detection_to_wire),
        common_lb_config: (cfg.healthy_panic_threshold != gofe_model::DEFAULT_PANIC_THRESHOLD
            || cfg.locality_lb.locality_weighted)
            .then(|| cluster::cluster::CommonLbConfig {
                healthy_panic_threshold: (cfg.healthy_panic_threshold
                    != gofe_model::DEFAULT_PANIC_THRESHOLD)
                    .then_some(Percent {
                        value: f64::from(cfg.healthy_panic_threshold),
                    }),
                locality_config_specifier: cfg.locality_lb.locality_weighted.then_some(
                    cluster::cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(
                        Default::default(),
                    ),
                ),
                ..Default::default()
            }),
        ..Default::default()
    };
    let mut gofe = Vec::new();
    if let Some(o) = &cfg.outlier_detection {
        if o.half_open_trial_requests != 1 {
            gofe.push((
                "half_open_trial_requests",
                value::Kind::NumberValue(o.half_open_trial_requests.into()),
            ));
        }
        if o.failure_percentage_threshold > 100 {
            gofe.push((
                "failure_percentage_threshold",
                value::Kind::NumberValue(o.failure_percentage_threshold.into()),
            ));
        }
    }
    if cfg.locality_lb.failover_by_proximity {
        gofe.push(("failover_by_proximity", value::Kind::BoolValue(true)));
    }
    out.metadata = gofe_metadata(gofe);
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
            let all_ip = cfg
                .endpoints
                .iter()
                .all(|e| e.address.parse::<SocketAddr>().is_ok());
            let discovery = if all_ip {
                DiscoveryType::Static
            } else {
                DiscoveryType::StrictDns
            };
            out.cluster_discovery_type = Some(ClusterDiscoveryType::Type(discovery as i32));
            out.load_assignment = Some(endpoints_to_wire(&EndpointsResource {
                cluster_name: cfg.name.clone(),
                endpoints: cfg.endpoints.clone(),
                overprovisioning_factor: cfg.locality_lb.overprovisioning_factor,
            }));
        }
    }
    if cfg.discovery == gofe_model::DiscoveryType::OriginalDst {
        original_dst_to_wire(&mut out);
    }
    use upstream_http::http_protocol_options::explicit_http_config::ProtocolConfig;
    use upstream_http::http_protocol_options::{ExplicitHttpConfig, UpstreamProtocolOptions};
    let protocol = if cfg.http2_protocol_options.is_some() {
        ProtocolConfig::Http2ProtocolOptions(core::Http2ProtocolOptions::default())
    } else {
        ProtocolConfig::HttpProtocolOptions(core::Http1ProtocolOptions::default())
    };
    let options = upstream_http::HttpProtocolOptions {
        common_http_protocol_options: Some(core::HttpProtocolOptions {
            idle_timeout: Some(pb_duration(cfg.idle_timeout)),
            ..Default::default()
        }),
        http_filters: cfg
            .local_ratelimit
            .as_ref()
            .map(super::ratelimits::cluster_filters_to_wire)
            .unwrap_or_default(),
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(protocol),
            },
        )),
        ..Default::default()
    };
    out.typed_extension_protocol_options
        .insert(HTTP_PROTOCOL_OPTIONS_KEY.into(), to_any(&options));
    out.transport_socket = cfg
        .tls
        .as_ref()
        .map(super::upstream_tls::upstream_tls_to_wire);
    Ok(out)
}

fn circuit_breakers_to_wire(c: &gofe_model::CircuitBreakersConfig) -> cluster::CircuitBreakers {
    use cluster::circuit_breakers::{thresholds::RetryBudget, Thresholds};
    cluster::CircuitBreakers {
        thresholds: vec![Thresholds {
            priority: core::RoutingPriority::Default as i32,
            max_connections: u32v(c.max_connections),
            max_pending_requests: u32v(c.max_pending_requests),
            max_requests: u32v(c.max_requests),
            max_retries: u32v(c.max_retries),
            retry_budget: c.retry_budget.as_ref().map(|b| RetryBudget {
                budget_percent: Some(Percent {
                    value: b.budget_percent,
                }),
                min_retry_concurrency: u32v(b.min_retry_concurrency),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Every field explicit (gofe's defaults are not all Envoy's), and the rules gofe does not have
/// switched off, so an Envoy client ejects as gofe does.
fn outlier_detection_to_wire(o: &gofe_model::OutlierDetectionConfig) -> cluster::OutlierDetection {
    let enforcing = |on: bool| u32v(if on { 100 } else { 0 });
    let failure_percentage = o.failure_percentage_threshold <= 100;
    cluster::OutlierDetection {
        consecutive_5xx: u32v(o.consecutive_5xx),
        enforcing_consecutive_5xx: enforcing(o.consecutive_5xx > 0),
        consecutive_gateway_failure: u32v(o.consecutive_gateway_failure),
        enforcing_consecutive_gateway_failure: enforcing(o.consecutive_gateway_failure > 0),
        interval: Some(pb_duration(o.interval)),
        base_ejection_time: Some(pb_duration(o.base_ejection_time)),
        max_ejection_time: Some(pb_duration(o.max_ejection_time)),
        max_ejection_percent: u32v(o.max_ejection_percent),
        // gofe ejects one endpoint even where the percentage allows none.
        always_eject_one_host: (o.max_ejection_percent > 0).then_some(BoolValue { value: true }),
        enforcing_success_rate: u32v(0),
        failure_percentage_threshold: failure_percentage
            .then_some(o.failure_percentage_threshold)
            .and_then(u32v),
        enforcing_failure_percentage: enforcing(failure_percentage),
        failure_percentage_minimum_hosts: u32v(0),
        failure_percentage_request_volume: u32v(o.failure_percentage_request_volume),
        ..Default::default()
    }
}

// === from wire ===

/// Validates a cluster. The deprecated `http2_protocol_options` and
/// `common_http_protocol_options` fields are still accepted.
#[allow(deprecated)]
pub fn cluster_from_wire(c: &cluster::Cluster) -> Result<ClusterResource, ConvertError> {
    use cluster::cluster::{ClusterDiscoveryType, DiscoveryType};
    let res = format!("Cluster {:?}", c.name);
    let cluster::Cluster {
        transport_socket_matches,
        transport_socket_matcher,
        name,
        alt_stat_name: _,
        stats_matcher: _,
        eds_cluster_config,
        connect_timeout,
        // Flow-control buffer size: gofe streams bodies with its own bounded buffers.
        per_connection_buffer_limit_bytes: _,
        per_connection_buffer_high_watermark_timeout,
        lb_policy,
        load_assignment,
        health_checks,
        max_requests_per_connection,
        circuit_breakers,
        upstream_http_protocol_options,
        common_http_protocol_options,
        http_protocol_options,
        http2_protocol_options,
        typed_extension_protocol_options,
        // DNS timing: gofe resolves a name with the system resolver when it connects.
        dns_refresh_rate: _,
        dns_jitter: _,
        dns_failure_refresh_rate: _,
        respect_dns_ttl: _,
        dns_lookup_family: _,
        dns_resolvers,
        use_tcp_for_dns_lookups,
        dns_resolution_config,
        typed_dns_resolver_config,
        // Warming: gofe serves a cluster as soon as it is known (EDS may follow).
        wait_for_warm_on_init: _,
        outlier_detection,
        // ORIGINAL_DST only: gofe keeps no set of original-destination hosts to clean up.
        cleanup_interval: _,
        upstream_bind_config,
        lb_subset_config,
        common_lb_config,
        transport_socket,
        metadata,
        protocol_selection,
        upstream_connection_options,
        close_connections_on_host_health_failure,
        // Active health checking is refused, so nothing is removed for failing it.
        ignore_health_on_host_removal: _,
        filters,
        load_balancing_policy,
        lrs_server,
        lrs_report_endpoint_metrics,
        // Statistics only.
        track_timeout_budgets: _,
        upstream_config,
        track_cluster_stats: _,
        preconnect_policy,
        connection_pool_per_downstream_connection,
        queuing_policies,
        cluster_discovery_type,
        lb_config,
    } = c;
    if name.is_empty() {
        return Err(invalid(&res, "name", "empty name"));
    }
    Unsupported::new(&res, "")
        .set("transport_socket_matches", transport_socket_matches)
        .set("transport_socket_matcher", transport_socket_matcher)
        .set(
            "per_connection_buffer_high_watermark_timeout",
            per_connection_buffer_high_watermark_timeout,
        )
        .set("health_checks", health_checks)
        .set("max_requests_per_connection", max_requests_per_connection)
        .set(
            "upstream_http_protocol_options",
            upstream_http_protocol_options,
        )
        .set("http_protocol_options", http_protocol_options)
        .set("dns_resolvers", dns_resolvers)
        .set("use_tcp_for_dns_lookups", use_tcp_for_dns_lookups)
        .set("dns_resolution_config", dns_resolution_config)
        .set("typed_dns_resolver_config", typed_dns_resolver_config)
        .set("upstream_bind_config", upstream_bind_config)
        .set("lb_subset_config", lb_subset_config)
        .set("protocol_selection", protocol_selection)
        .set("upstream_connection_options", upstream_connection_options)
        .set(
            "close_connections_on_host_health_failure",
            close_connections_on_host_health_failure,
        )
        .set("filters", filters)
        .set("lrs_server", lrs_server)
        .set("lrs_report_endpoint_metrics", lrs_report_endpoint_metrics)
        .set("upstream_config", upstream_config)
        .set("preconnect_policy", preconnect_policy)
        .set(
            "connection_pool_per_downstream_connection",
            connection_pool_per_downstream_connection,
        )
        .set("queuing_policies", queuing_policies)
        .set("lb_config", lb_config)
        .finish()?;
    let original_dst = matches!(
        cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(t)) if *t == DiscoveryType::OriginalDst as i32
    );
    // `load_balancing_policy`, when set, takes precedence over `lb_policy` (as in Envoy).
    let typed = match load_balancing_policy {
        Some(p) => Some(typed_lb_policy_from_wire(p, &res)?),
        None => None,
    };
    let lb_policy = match (typed, cluster::cluster::LbPolicy::try_from(*lb_policy)) {
        (Some((policy, _)), _) => policy,
        // Envoy requires it on ORIGINAL_DST: the destination is the balancing.
        (None, Ok(cluster::cluster::LbPolicy::ClusterProvided)) if original_dst => {
            LbPolicy::RoundRobin
        }
        (None, Ok(cluster::cluster::LbPolicy::RoundRobin)) => LbPolicy::RoundRobin,
        (None, Ok(cluster::cluster::LbPolicy::LeastRequest)) => LbPolicy::LeastRequest,
        _ => {
            return Err(invalid(
                &res,
                "lb_policy",
                format!("{lb_policy} is not supported by gofe (ROUND_ROBIN, LEAST_REQUEST)"),
            ))
        }
    };
    let connect_timeout = duration_or(
        connect_timeout,
        DEFAULT_CONNECT_TIMEOUT,
        &res,
        "connect_timeout",
    )?;
    if connect_timeout.is_zero() {
        return Err(invalid(&res, "connect_timeout", "must be longer than 0s"));
    }
    let mut http2 = http2_protocol_options.is_some();
    if let Some(o) = http2_protocol_options {
        Unsupported::new(&res, "")
            .when(
                "http2_protocol_options (gofe has no HTTP/2 settings)",
                *o != Default::default(),
            )
            .finish()?;
    }
    let mut local_ratelimit = None;
    let mut idle_timeout = match common_http_protocol_options {
        None => ENVOY_UPSTREAM_IDLE_TIMEOUT,
        Some(o) => protocol_options_idle_timeout(
            o,
            ENVOY_UPSTREAM_IDLE_TIMEOUT,
            &res,
            "common_http_protocol_options",
        )?,
    };
    let mut keys: Vec<&String> = typed_extension_protocol_options.keys().collect();
    keys.sort();
    for key in keys {
        let field = format!("typed_extension_protocol_options[{key:?}]");
        if key != HTTP_PROTOCOL_OPTIONS_KEY {
            return Err(unsupported(&res, &field));
        }
        let options: upstream_http::HttpProtocolOptions =
            from_any(&typed_extension_protocol_options[key])?;
        let (h2, idle) = http_protocol_options_from_wire(&options, idle_timeout, &res, &field)?;
        if let Some(h2) = h2 {
            http2 = h2;
        }
        idle_timeout = idle;
        local_ratelimit = super::ratelimits::cluster_filters_from_wire(
            &options.http_filters,
            &res,
            &join(&field, "http_filters"),
        )?;
    }
    if idle_timeout.is_zero() {
        return Err(invalid(
            &res,
            "common_http_protocol_options.idle_timeout",
            "0s (never close idle connections) not supported by gofe: set a duration",
        ));
    }
    let discovery = match cluster_discovery_type {
        None => DiscoveryType::Static,
        Some(ClusterDiscoveryType::Type(t)) => DiscoveryType::try_from(*t)
            .map_err(|_| invalid(&res, "type", format!("unknown discovery type {t}")))?,
        Some(ClusterDiscoveryType::ClusterType(_)) => {
            return Err(unsupported(&res, "cluster_type"))
        }
    };
    let mut config = empty_cluster(name);
    config.lb_policy = lb_policy;
    config.connect_timeout = connect_timeout;
    config.http2_protocol_options = http2.then(Http2ProtocolOptions::default);
    config.idle_timeout = idle_timeout;
    config.local_ratelimit = local_ratelimit;
    config.tls = transport_socket
        .as_ref()
        .map(|t| super::upstream_tls::upstream_tls_from_wire(t, &res, "transport_socket"))
        .transpose()?;
    let inline = |addresses| -> Result<(Vec<EndpointConfig>, u32), ConvertError> {
        match load_assignment {
            None => Ok((Vec::new(), gofe_model::DEFAULT_OVERPROVISIONING_FACTOR)),
            Some(la) => load_assignment_from_wire(la, &res, "load_assignment", addresses),
        }
    };
    let eds_service_name = match discovery {
        DiscoveryType::Eds => {
            if load_assignment.is_some() {
                return Err(unsupported(&res, "load_assignment (on an EDS cluster)"));
            }
            let eds = eds_cluster_config.as_ref();
            check_config_source(
                eds.and_then(|e| e.eds_config.as_ref()),
                &res,
                "eds_cluster_config.eds_config",
            )?;
            Some(match eds.map(|e| e.service_name.as_str()) {
                Some(s) if !s.is_empty() => s.to_owned(),
                _ => name.clone(),
            })
        }
        DiscoveryType::Static => {
            (config.endpoints, config.locality_lb.overprovisioning_factor) = inline(Addresses::Ip)?;
            None
        }
        // gofe resolves DNS names in endpoint addresses itself, when it connects.
        DiscoveryType::StrictDns => {
            (config.endpoints, config.locality_lb.overprovisioning_factor) =
                inline(Addresses::Dns)?;
            None
        }
        DiscoveryType::LogicalDns => {
            (config.endpoints, config.locality_lb.overprovisioning_factor) =
                inline(Addresses::Dns)?;
            if config.endpoints.len() != 1 {
                return Err(invalid(
                    &res,
                    "load_assignment",
                    "a LOGICAL_DNS cluster has exactly one endpoint",
                ));
            }
            None
        }
        DiscoveryType::OriginalDst => {
            if load_assignment.is_some() {
                return Err(unsupported(
                    &res,
                    "load_assignment (on an ORIGINAL_DST cluster)",
                ));
            }
            config.discovery = gofe_model::DiscoveryType::OriginalDst;
            None
        }
    };
    let gofe = GofeMetadata::of(metadata);
    let (breakers, thresholds) = circuit_breakers_from_wire(circuit_breakers.as_ref(), &res)?;
    config.circuit_breakers = breakers;
    let (outlier, settings) = match outlier_detection {
        None => (None, None),
        Some(o) => {
            let (c, s) = outlier_detection_from_wire(o, &gofe, &res)?;
            (Some(c), Some(s))
        }
    };
    config.outlier_detection = outlier;
    if let Some(l) = common_lb_config {
        (
            config.healthy_panic_threshold,
            config.locality_lb.locality_weighted,
        ) = common_lb_from_wire(l, &res)?;
    }
    if let Some((_, locality_weighted)) = typed {
        config.locality_lb.locality_weighted |= locality_weighted;
    }
    config.locality_lb.failover_by_proximity = gofe.bool("failover_by_proximity");
    model_check(
        &ProxyConfig {
            clusters: vec![config.clone()],
            ..Default::default()
        },
        &res,
        "clusters[0].",
        "",
    )?;
    Ok(ClusterResource {
        config,
        eds_service_name,
        circuit_breakers: thresholds,
        outlier_detection: settings,
    })
}

/// The upstream HTTP protocol options: HTTP/1.1 or HTTP/2 (`Some(true)` for HTTP/2, `None`
/// when not said), and the idle timeout.
fn http_protocol_options_from_wire(
    o: &upstream_http::HttpProtocolOptions,
    idle_default: Duration,
    res: &str,
    base: &str,
) -> Result<(Option<bool>, Duration), ConvertError> {
    use upstream_http::http_protocol_options::explicit_http_config::ProtocolConfig;
    use upstream_http::http_protocol_options::UpstreamProtocolOptions;
    let upstream_http::HttpProtocolOptions {
        common_http_protocol_options,
        upstream_http_protocol_options,
        // The cluster's local rate limit (read by the caller).
        http_filters: _,
        header_validation_config,
        outlier_detection,
        request_mirror_policies,
        hash_policy,
        retry_policy,
        upstream_protocol_options,
    } = o;
    Unsupported::new(res, base)
        .set(
            "upstream_http_protocol_options",
            upstream_http_protocol_options,
        )
        .set("header_validation_config", header_validation_config)
        .set("outlier_detection", outlier_detection)
        .set("request_mirror_policies", request_mirror_policies)
        .set("hash_policy", hash_policy)
        .set("retry_policy", retry_policy)
        .finish()?;
    let idle = match common_http_protocol_options {
        None => idle_default,
        Some(c) => protocol_options_idle_timeout(
            c,
            idle_default,
            res,
            &join(base, "common_http_protocol_options"),
        )?,
    };
    let pbase = join(base, "explicit_http_config");
    let h2 = match upstream_protocol_options {
        None => None,
        Some(UpstreamProtocolOptions::ExplicitHttpConfig(e)) => match &e.protocol_config {
            Some(ProtocolConfig::Http2ProtocolOptions(h2)) => {
                Unsupported::new(res, &pbase)
                    .when(
                        "http2_protocol_options (gofe has no HTTP/2 settings)",
                        *h2 != Default::default(),
                    )
                    .finish()?;
                Some(true)
            }
            Some(ProtocolConfig::HttpProtocolOptions(h1)) => {
                Unsupported::new(res, &pbase)
                    .when(
                        "http_protocol_options (gofe has no HTTP/1.1 settings)",
                        *h1 != Default::default(),
                    )
                    .finish()?;
                Some(false)
            }
            _ => {
                return Err(unsupported(
                    res,
                    &join(&pbase, "protocol_config (HTTP/1.1 or HTTP/2 only)"),
                ))
            }
        },
        Some(_) => {
            return Err(unsupported(
                res,
                &join(
                    base,
                    "upstream_protocol_options (only explicit_http_config)",
                ),
            ))
        }
    };
    Ok((h2, idle))
}

/// The default-priority thresholds. HIGH-priority thresholds are accepted and unused: a route
/// of HIGH priority is refused, so no request ever counts against them.
fn circuit_breakers_from_wire(
    cb: Option<&cluster::CircuitBreakers>,
    res: &str,
) -> Result<
    (
        gofe_model::CircuitBreakersConfig,
        Option<CircuitBreakerThresholds>,
    ),
    ConvertError,
> {
    let mut out = gofe_model::CircuitBreakersConfig::default();
    let Some(cb) = cb else {
        return Ok((out, None));
    };
    let cluster::CircuitBreakers {
        thresholds,
        per_host_thresholds,
    } = cb;
    Unsupported::new(res, "circuit_breakers")
        .set("per_host_thresholds", per_host_thresholds)
        .finish()?;
    let mut seen = None;
    for (i, t) in thresholds.iter().enumerate() {
        let base = format!("circuit_breakers.thresholds[{i}]");
        let cluster::circuit_breakers::Thresholds {
            priority,
            max_connections,
            max_pending_requests,
            max_requests,
            max_retries,
            retry_budget,
            // Statistics only.
            track_remaining: _,
            max_connection_pools,
        } = t;
        if *priority != core::RoutingPriority::Default as i32 {
            continue;
        }
        if let Some(first) = seen.replace(i) {
            return Err(invalid(
                res,
                &base,
                format!("a second DEFAULT-priority entry (also thresholds[{first}])"),
            ));
        }
        Unsupported::new(res, &base)
            .set("max_connection_pools", max_connection_pools)
            .finish()?;
        out.max_connections = max_connections.map_or(out.max_connections, |v| v.value);
        out.max_pending_requests =
            max_pending_requests.map_or(out.max_pending_requests, |v| v.value);
        out.max_requests = max_requests.map_or(out.max_requests, |v| v.value);
        out.max_retries = max_retries.map_or(out.max_retries, |v| v.value);
        if let Some(b) = retry_budget {
            let cluster::circuit_breakers::thresholds::RetryBudget {
                budget_percent,
                budget_interval,
                min_retry_concurrency,
            } = b;
            let bbase = join(&base, "retry_budget");
            Unsupported::new(res, &bbase)
                .when(
                    "budget_interval",
                    budget_interval
                        .as_ref()
                        .is_some_and(|d| *d != PbDuration::default()),
                )
                .finish()?;
            let mut budget = gofe_model::RetryBudgetConfig {
                budget_percent: 20.0,
                min_retry_concurrency: 3,
            };
            if let Some(p) = budget_percent {
                if !(0.0..=100.0).contains(&p.value) {
                    return Err(invalid(
                        res,
                        &join(&bbase, "budget_percent"),
                        "must be between 0 and 100",
                    ));
                }
                budget.budget_percent = p.value;
            }
            if let Some(m) = min_retry_concurrency {
                budget.min_retry_concurrency = m.value;
            }
            out.retry_budget = Some(budget);
        }
    }
    let settings = seen.map(|_| CircuitBreakerThresholds {
        max_connections: Some(out.max_connections),
        max_pending_requests: Some(out.max_pending_requests),
        max_requests: Some(out.max_requests),
        max_retries: Some(out.max_retries),
    });
    Ok((out, settings))
}

/// Outlier detection with Envoy's defaults for what the wire leaves unset. An `enforcing_*`
/// percentage is honoured when it is 0 (the rule off) or 100 (on); gofe cannot eject with a
/// probability in between. Success-rate ejection is not implemented: an explicit non-zero
/// `enforcing_success_rate` is refused, and Envoy's default (100) is accepted as off.
fn outlier_detection_from_wire(
    o: &cluster::OutlierDetection,
    gofe: &GofeMetadata<'_>,
    res: &str,
) -> Result<(gofe_model::OutlierDetectionConfig, OutlierDetectionSettings), ConvertError> {
    let cluster::OutlierDetection {
        consecutive_5xx,
        interval,
        base_ejection_time,
        max_ejection_percent,
        enforcing_consecutive_5xx,
        enforcing_success_rate,
        // Success-rate ejection is not implemented (see above), so its settings are unused.
        success_rate_minimum_hosts: _,
        success_rate_request_volume: _,
        success_rate_stdev_factor: _,
        consecutive_gateway_failure,
        enforcing_consecutive_gateway_failure,
        split_external_local_origin_errors,
        // Used only with split_external_local_origin_errors, which is refused.
        consecutive_local_origin_failure: _,
        enforcing_consecutive_local_origin_failure: _,
        enforcing_local_origin_success_rate: _,
        enforcing_failure_percentage_local_origin: _,
        failure_percentage_threshold,
        enforcing_failure_percentage,
        failure_percentage_minimum_hosts,
        failure_percentage_request_volume,
        max_ejection_time,
        max_ejection_time_jitter,
        // Active health checking is refused, so no check ever unejects a host.
        successful_active_health_check_uneject_host: _,
        monitors,
        always_eject_one_host,
        detect_degraded_hosts,
    } = o;
    let base = "outlier_detection";
    let f = |name: &str| join(base, name);
    Unsupported::new(res, base)
        .when(
            "enforcing_success_rate (success-rate ejection)",
            enforcing_success_rate.is_some_and(|v| v.value > 0),
        )
        .set(
            "split_external_local_origin_errors",
            split_external_local_origin_errors,
        )
        .when(
            "max_ejection_time_jitter",
            max_ejection_time_jitter
                .as_ref()
                .is_some_and(|d| *d != PbDuration::default()),
        )
        .set("monitors", monitors)
        .truthy("detect_degraded_hosts", detect_degraded_hosts)
        .finish()?;
    let enforced =
        |v: &Option<UInt32Value>, default: u32, name: &str| match v.map_or(default, |v| v.value) {
            0 => Ok(false),
            100 => Ok(true),
            other => Err(invalid(
                res,
                &f(name),
                format!("{other} not supported by gofe: it enforces 0 (off) or 100 (on)"),
            )),
        };
    let percent =
        |v: &Option<UInt32Value>, default: u32, name: &str| match v.map_or(default, |v| v.value) {
            p @ 0..=100 => Ok(p),
            _ => Err(invalid(res, &f(name), "must be at most 100")),
        };
    let positive = |d: &Option<PbDuration>, default: Duration, name: &str| {
        let d = duration_or(d, default, res, &f(name))?;
        if d.is_zero() {
            Err(invalid(res, &f(name), "must be longer than 0s"))
        } else {
            Ok(d)
        }
    };
    let max_ejection_percent = percent(max_ejection_percent, 10, "max_ejection_percent")?;
    if always_eject_one_host.is_some_and(|b| b.value) && max_ejection_percent == 0 {
        return Err(invalid(
            res,
            &f("always_eject_one_host"),
            "with max_ejection_percent 0 not supported by gofe (it ejects none then)",
        ));
    }
    let failure_percentage = if enforced(
        enforcing_failure_percentage,
        0,
        "enforcing_failure_percentage",
    )? {
        let minimum = failure_percentage_minimum_hosts.map_or(5, |v| v.value);
        if minimum > 1 {
            return Err(invalid(
                res,
                &f("failure_percentage_minimum_hosts"),
                format!(
                    "{minimum} not supported by gofe: it applies the failure percentage to \
                     clusters of any size (set 0 or 1)"
                ),
            ));
        }
        percent(
            failure_percentage_threshold,
            85,
            "failure_percentage_threshold",
        )?
    } else {
        gofe.u32("failure_percentage_threshold", res, "metadata")?
            .filter(|t| *t > 100)
            .unwrap_or(FAILURE_PERCENTAGE_OFF)
    };
    let config = gofe_model::OutlierDetectionConfig {
        consecutive_5xx: if enforced(enforcing_consecutive_5xx, 100, "enforcing_consecutive_5xx")? {
            consecutive_5xx.map_or(5, |v| v.value)
        } else {
            0
        },
        consecutive_gateway_failure: if enforced(
            enforcing_consecutive_gateway_failure,
            0,
            "enforcing_consecutive_gateway_failure",
        )? {
            consecutive_gateway_failure.map_or(5, |v| v.value)
        } else {
            0
        },
        interval: positive(interval, Duration::from_secs(10), "interval")?,
        base_ejection_time: positive(
            base_ejection_time,
            Duration::from_secs(30),
            "base_ejection_time",
        )?,
        max_ejection_time: positive(
            max_ejection_time,
            Duration::from_secs(300),
            "max_ejection_time",
        )?,
        max_ejection_percent,
        failure_percentage_threshold: failure_percentage,
        failure_percentage_request_volume: failure_percentage_request_volume
            .map_or(50, |v| v.value),
        half_open_trial_requests: gofe
            .u32("half_open_trial_requests", res, "metadata")?
            .unwrap_or(1),
    };
    let settings = OutlierDetectionSettings {
        consecutive_5xx: consecutive_5xx.map(|v| v.value),
        consecutive_gateway_failure: consecutive_gateway_failure.map(|v| v.value),
        interval: interval.as_ref().map(|_| config.interval),
        base_ejection_time: base_ejection_time
            .as_ref()
            .map(|_| config.base_ejection_time),
        max_ejection_time: max_ejection_time.as_ref().map(|_| config.max_ejection_time),
        max_ejection_percent: o.max_ejection_percent.map(|v| v.value),
        failure_percentage_threshold: failure_percentage_threshold.map(|v| v.value),
        failure_percentage_request_volume: failure_percentage_request_volume.map(|v| v.value),
    };
    Ok((config, settings))
}

/// The type URLs of Envoy's own load-balancing policy extensions that gofe does not implement:
/// a cluster whose first known policy is one of them is refused (Envoy would balance with it).
const ENVOY_LB_POLICIES_NOT_IMPLEMENTED: &[&str] = &[
    "envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash",
    "envoy.extensions.load_balancing_policies.maglev.v3.Maglev",
    "envoy.extensions.load_balancing_policies.random.v3.Random",
    "envoy.extensions.load_balancing_policies.cluster_provided.v3.ClusterProvided",
    "envoy.extensions.load_balancing_policies.client_side_weighted_round_robin.v3.ClientSideWeightedRoundRobin",
    "envoy.extensions.load_balancing_policies.pick_first.v3.PickFirst",
    "envoy.extensions.load_balancing_policies.subset.v3.Subset",
    "envoy.extensions.load_balancing_policies.wrr_locality.v3.WrrLocality",
    "envoy.extensions.load_balancing_policies.override_host.v3.OverrideHost",
    "envoy.extensions.load_balancing_policies.load_aware_locality.v3.LoadAwareLocality",
    "envoy.extensions.load_balancing_policies.random_subsetting.v3.RandomSubsetting",
    "envoy.extensions.load_balancing_policies.dynamic_modules.v3.DynamicModuleLoadBalancerConfig",
];

/// `load_balancing_policy` (Envoy's typed policies): as Envoy, the first policy of the list
/// whose type is a load-balancing policy Envoy knows is the one used, and a type nobody knows
/// is passed over. `round_robin` and `least_request` are read (with `locality_lb_config`'s
/// locality-weighted balancing); any other Envoy policy first in the list is refused, and so
/// are the settings of the two that gofe does not honour (slow start, zone-aware routing,
/// least request's choice count other than 2, an active-request bias other than 1, full scan,
/// full-scan selection). Returns the policy and whether locality weights apply.
#[allow(deprecated)] // `enable_full_scan`: still on the wire, refused when set.
fn typed_lb_policy_from_wire(
    p: &cluster::LoadBalancingPolicy,
    res: &str,
) -> Result<(LbPolicy, bool), ConvertError> {
    use envoy_types::pb::envoy::extensions::load_balancing_policies::common::v3::locality_lb_config::LocalityConfigSpecifier;
    use envoy_types::pb::envoy::extensions::load_balancing_policies::common::v3::LocalityLbConfig;
    use envoy_types::pb::envoy::extensions::load_balancing_policies::least_request::v3::LeastRequest;
    use envoy_types::pb::envoy::extensions::load_balancing_policies::round_robin::v3::RoundRobin;
    let locality = |l: &Option<LocalityLbConfig>, field: &str| -> Result<bool, ConvertError> {
        match l
            .as_ref()
            .and_then(|l| l.locality_config_specifier.as_ref())
        {
            None => Ok(false),
            Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(_)) => Ok(true),
            Some(LocalityConfigSpecifier::ZoneAwareLbConfig(_)) => Err(unsupported(
                res,
                &join(
                    field,
                    "locality_lb_config.zone_aware_lb_config (zone-aware routing)",
                ),
            )),
        }
    };
    for (i, policy) in p.policies.iter().enumerate() {
        let field = format!("load_balancing_policy.policies[{i}].typed_extension_config");
        let Some(config) = policy.typed_extension_config.as_ref() else {
            return Err(invalid(res, &field, "missing"));
        };
        let Some(any) = config.typed_config.as_ref() else {
            return Err(invalid(res, &join(&field, "typed_config"), "missing"));
        };
        let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
        let field = join(&field, "typed_config");
        if any.type_url == RoundRobin::type_url() {
            let RoundRobin {
                slow_start_config,
                locality_lb_config,
            } = from_any(any)?;
            Unsupported::new(res, &field)
                .set("slow_start_config", &slow_start_config)
                .finish()?;
            return Ok((LbPolicy::RoundRobin, locality(&locality_lb_config, &field)?));
        }
        if any.type_url == LeastRequest::type_url() {
            let LeastRequest {
                choice_count,
                active_request_bias,
                slow_start_config,
                locality_lb_config,
                enable_full_scan,
                selection_method,
            } = from_any(any)?;
            let bias_default = active_request_bias
                .as_ref()
                .is_none_or(|b| b.default_value == 1.0 && b.runtime_key.is_empty());
            Unsupported::new(res, &field)
                .when(
                    "choice_count (gofe picks the better of 2)",
                    choice_count.is_some_and(|c| c.value != 2),
                )
                .when("active_request_bias (other than 1.0)", !bias_default)
                .set("slow_start_config", &slow_start_config)
                .when(
                    "enable_full_scan",
                    enable_full_scan.is_some_and(|f| f.value),
                )
                .when("selection_method (FULL_SCAN)", selection_method != 0)
                .finish()?;
            return Ok((
                LbPolicy::LeastRequest,
                locality(&locality_lb_config, &field)?,
            ));
        }
        if ENVOY_LB_POLICIES_NOT_IMPLEMENTED.contains(&type_name) {
            return Err(invalid(
                res,
                &field,
                format!(
                    "{type_name} is not supported by gofe (round_robin, least_request); Envoy \
                     would balance with it, as the first policy it knows"
                ),
            ));
        }
    }
    Err(invalid(
        res,
        "load_balancing_policy.policies",
        "no policy gofe knows (round_robin, least_request)",
    ))
}

/// `common_lb_config`: the panic threshold (whole percents; Envoy's default 50) and whether
/// locality-weighted balancing is on (`locality_weighted_lb_config`; zone-aware routing is
/// refused). The other fields are refused when set, except `update_merge_window` at 0 (what
/// gofe does: every update at once) or its default of 1 s (a batching delay for host updates,
/// not a behaviour).
fn common_lb_from_wire(
    l: &cluster::cluster::CommonLbConfig,
    res: &str,
) -> Result<(u32, bool), ConvertError> {
    use cluster::cluster::common_lb_config::LocalityConfigSpecifier;
    let cluster::cluster::CommonLbConfig {
        healthy_panic_threshold,
        update_merge_window,
        ignore_new_hosts_until_first_hc,
        close_connections_on_host_set_change,
        consistent_hashing_lb_config,
        override_host_status,
        locality_config_specifier,
    } = l;
    let base = "common_lb_config";
    let window_ok = update_merge_window.as_ref().is_none_or(|d| {
        matches!(
            duration_from_pb(d, res, base).ok(),
            Some(w) if w.is_zero() || w == Duration::from_secs(1)
        )
    });
    Unsupported::new(res, base)
        .when("update_merge_window (0s or 1s only)", !window_ok)
        .set(
            "ignore_new_hosts_until_first_hc",
            ignore_new_hosts_until_first_hc,
        )
        .set(
            "close_connections_on_host_set_change",
            close_connections_on_host_set_change,
        )
        .set("consistent_hashing_lb_config", consistent_hashing_lb_config)
        .set("override_host_status", override_host_status)
        .when(
            "locality_config_specifier.zone_aware_lb_config (zone-aware routing)",
            matches!(
                locality_config_specifier,
                Some(LocalityConfigSpecifier::ZoneAwareLbConfig(_))
            ),
        )
        .finish()?;
    let locality_weighted = matches!(
        locality_config_specifier,
        Some(LocalityConfigSpecifier::LocalityWeightedLbConfig(_))
    );
    match healthy_panic_threshold {
        None => Ok((gofe_model::DEFAULT_PANIC_THRESHOLD, locality_weighted)),
        Some(Percent { value }) if value.fract() == 0.0 && (0.0..=100.0).contains(value) => {
            Ok((*value as u32, locality_weighted))
        }
        Some(Percent { value }) => Err(invalid(
            res,
            &join(base, "healthy_panic_threshold"),
            format!("{value} not supported by gofe: a whole percentage in 0..=100"),
        )),
    }
}
