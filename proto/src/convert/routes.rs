//! Route configurations: virtual hosts, routes, their matches and actions, retry policies,
//! request mirror policies and per-route body limits (the buffer filter's per-route
//! configuration).
//!
//! Mirror policies (`request_mirror_policies`) are read at all three levels, the most specific
//! non-empty list winning whole, as in Envoy: `cluster`, `runtime_fraction.default_value`
//! (absent: 100 %), `disable_shadow_host_suffix_append`. `runtime_fraction.runtime_key` is
//! ignored (gofe has no runtime: the default value applies, as in an Envoy whose runtime lacks
//! the key); `cluster_header`, `trace_sampled`, `request_headers_mutations` and
//! `host_rewrite_literal` are refused.

use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use gofe_model::RequestMirrorPolicyConfig;

use super::faults::{percent_from_wire, percent_to_wire};
use super::route_actions::*;
use super::*;

/// How many times Envoy re-picks an endpoint for a retry to find one not tried yet, in the
/// retry policies gofe writes (gofe itself always picks another when the cluster has one).
const HOST_SELECTION_ATTEMPTS: i64 = 5;

/// Envoy's retry backoff defaults, which are gofe's (jittered, 25 ms base, 250 ms cap).
const RETRY_BASE_INTERVAL: Duration = Duration::from_millis(25);
const RETRY_MAX_INTERVAL: Duration = Duration::from_millis(250);

/// A route's values that have no Envoy form.
pub(super) fn check_publishable(r: &RouteConfig, base: &str) -> Result<(), ConvertError> {
    check_pb_duration(r.route.timeout, format!("{base}.route.timeout"))?;
    if let Some(d) = r
        .route
        .retry_policy
        .as_ref()
        .and_then(|p| p.per_try_timeout)
    {
        check_pb_duration(d, format!("{base}.route.retry_policy.per_try_timeout"))?;
    }
    match r.route.max_request_bytes {
        Some(0) => Err(not_publishable(
            format!("{base}.route.max_request_bytes"),
            "0 has no Envoy form (the buffer filter's max_request_bytes is at least 1)",
        )),
        Some(n) if n > u64::from(u32::MAX) => Err(not_publishable(
            format!("{base}.route.max_request_bytes"),
            "above 4294967295 has no Envoy form (the buffer filter's limit is a uint32)",
        )),
        _ => Ok(()),
    }?;
    if let Some(f) = &r.fault {
        faults::check_publishable(f, &format!("{base}.fault"))?;
    }
    if let Some(l) = &r.local_ratelimit {
        ratelimits::check_publishable(l, &format!("{base}.local_ratelimit"))?;
    }
    Ok(())
}

/// A virtual host's values that have no Envoy form.
pub(super) fn check_host_publishable(
    vh: &VirtualHostConfig,
    base: &str,
) -> Result<(), ConvertError> {
    if let Some(f) = &vh.fault {
        faults::check_publishable(f, &format!("{base}.fault"))?;
    }
    if let Some(l) = &vh.local_ratelimit {
        ratelimits::check_publishable(l, &format!("{base}.local_ratelimit"))?;
    }
    Ok(())
}

/// The clusters a router names, each with its Envoy path under `base`.
pub(super) fn cluster_refs(router: &RouterConfig, base: &str) -> ClusterRefs {
    let mut out = Vec::new();
    for (hi, vh) in router.virtual_hosts.iter().enumerate() {
        for (ri, r) in vh.routes.iter().enumerate() {
            let rbase = join(base, &format!("virtual_hosts[{hi}].routes[{ri}].route"));
            if let Some(c) = &r.route.cluster {
                out.push((join(&rbase, "cluster"), c.clone()));
            }
            for (ci, c) in r
                .route
                .weighted_clusters
                .iter()
                .flat_map(|w| w.clusters.iter())
                .enumerate()
            {
                out.push((
                    join(&rbase, &format!("weighted_clusters.clusters[{ci}].name")),
                    c.name.clone(),
                ));
            }
            for (pi, p) in r.route.request_mirror_policies.iter().enumerate() {
                out.push((
                    join(&rbase, &format!("request_mirror_policies[{pi}].cluster")),
                    p.cluster.clone(),
                ));
            }
        }
    }
    out
}

/// Whether a domain ends in `:port` (`svc:9080`, `[::1]:80`; not `::1`).
fn has_port(domain: &str) -> bool {
    domain.rsplit_once(':').is_some_and(|(host, port)| {
        !port.is_empty()
            && port.bytes().all(|b| b.is_ascii_digit())
            && (!host.contains(':') || host.ends_with(']'))
    })
}

// === to wire ===

/// The wire form of a route configuration.
pub fn route_to_wire(r: &RouteResource) -> Result<route::RouteConfiguration, ConvertError> {
    let res = format!("RouteConfiguration {:?}", r.name);
    let mut virtual_hosts = Vec::new();
    let mut any_port = false;
    for vh in &r.router.virtual_hosts {
        let mut routes = Vec::new();
        for rt in &vh.routes {
            routes.push(route_entry_to_wire(rt, &res)?);
        }
        any_port |= vh.domains.iter().any(|d| has_port(d));
        virtual_hosts.push(route::VirtualHost {
            name: vh.name.clone(),
            domains: vh.domains.to_vec(),
            routes,
            typed_per_filter_config: filters_to_wire(&vh.fault, &vh.local_ratelimit),
            request_headers_to_add: header_options_to_wire(&vh.request_headers_to_add),
            request_headers_to_remove: vh.request_headers_to_remove.clone(),
            response_headers_to_add: header_options_to_wire(&vh.response_headers_to_add),
            response_headers_to_remove: vh.response_headers_to_remove.clone(),
            ..Default::default()
        });
    }
    Ok(route::RouteConfiguration {
        name: r.name.clone(),
        virtual_hosts,
        // gofe matches a domain without a port whatever the request's port; Envoy does so with
        // this flag, which would however also blind it to domains that have a port.
        ignore_port_in_host_matching: !any_port,
        request_headers_to_add: header_options_to_wire(&r.router.request_headers_to_add),
        request_headers_to_remove: r.router.request_headers_to_remove.clone(),
        response_headers_to_add: header_options_to_wire(&r.router.response_headers_to_add),
        response_headers_to_remove: r.router.response_headers_to_remove.clone(),
        most_specific_header_mutations_wins: r.router.most_specific_header_mutations_wins,
        ..Default::default()
    })
}

fn route_entry_to_wire(rt: &RouteConfig, res: &str) -> Result<route::Route, ConvertError> {
    use route::route_match::PathSpecifier;
    let m = &rt.matcher;
    let path_specifier = match (&m.prefix, &m.path, &m.safe_regex, &m.path_separated_prefix) {
        (Some(p), None, None, None) => PathSpecifier::Prefix(p.clone()),
        (None, Some(p), None, None) => PathSpecifier::Path(p.clone()),
        (None, None, Some(r), None) => PathSpecifier::SafeRegex(regex_to_wire(r)),
        (None, None, None, Some(p)) => PathSpecifier::PathSeparatedPrefix(p.clone()),
        _ => {
            return Err(invalid(
                res,
                "match",
                "needs exactly one of prefix, path, safe_regex or path_separated_prefix",
            ))
        }
    };
    let query_parameters = m
        .query_parameters
        .iter()
        .map(query_to_wire)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|msg| invalid(res, "match.query_parameters", msg))?;
    let cookies = m
        .cookies
        .iter()
        .map(cookie_to_wire)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|msg| invalid(res, "match.cookies", msg))?;
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
        _ if rt.redirect.is_some() || rt.direct_response.is_some() => None,
        (Some(c), None) => Some(ClusterSpecifier::Cluster(c.clone())),
        (None, Some(wc)) => Some(ClusterSpecifier::WeightedClusters(route::WeightedCluster {
            clusters: wc
                .clusters
                .iter()
                .map(|c| route::weighted_cluster::ClusterWeight {
                    name: c.name.clone(),
                    weight: u32v(c.weight),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })),
        _ => {
            return Err(invalid(
                res,
                "route",
                "needs exactly one of cluster or weighted_clusters",
            ))
        }
    };
    let mut typed_per_filter_config = HashMap::new();
    if let Some(limit) = a.max_request_bytes {
        let limit = u32::try_from(limit)
            .ok()
            .filter(|l| *l > 0)
            .ok_or_else(|| invalid(res, "route.max_request_bytes", "out of Envoy's range"))?;
        let per_route = buffer::BufferPerRoute {
            r#override: Some(buffer::buffer_per_route::Override::Buffer(buffer::Buffer {
                max_request_bytes: u32v(limit),
            })),
        };
        // The listener's buffer filter is disabled by default; this enables it here.
        typed_per_filter_config.insert(
            BUFFER_FILTER_NAME.to_owned(),
            to_any(&route::FilterConfig {
                config: Some(to_any(&per_route)),
                is_optional: false,
                disabled: false,
            }),
        );
    }
    typed_per_filter_config.extend(filters_to_wire(&rt.fault, &rt.local_ratelimit));
    use route::route::Action;
    use route::route_action::HostRewriteSpecifier;
    let action = match (&rt.redirect, &rt.direct_response, cluster_specifier) {
        (Some(r), ..) => Action::Redirect(redirect_to_wire(r)),
        (None, Some(d), _) => Action::DirectResponse(direct_response_to_wire(d)),
        (None, None, cluster_specifier) => Action::Route(route::RouteAction {
            cluster_specifier,
            timeout: (a.timeout != DEFAULT_ROUTE_TIMEOUT).then(|| pb_duration(a.timeout)),
            retry_policy: a.retry_policy.as_ref().map(retry_policy_to_wire),
            request_mirror_policies: a
                .request_mirror_policies
                .iter()
                .map(mirror_policy_to_wire)
                .collect(),
            prefix_rewrite: a.prefix_rewrite.clone().unwrap_or_default(),
            regex_rewrite: a.regex_rewrite.as_ref().map(regex_rewrite_to_wire),
            host_rewrite_specifier: match (&a.host_rewrite_literal, &a.host_rewrite_header) {
                (Some(h), _) => Some(HostRewriteSpecifier::HostRewriteLiteral(h.clone())),
                (None, Some(h)) => Some(HostRewriteSpecifier::HostRewriteHeader(h.clone())),
                (None, None) => None,
            },
            ..Default::default()
        }),
    };
    Ok(route::Route {
        name: rt.name.clone().unwrap_or_default(),
        r#match: Some(route::RouteMatch {
            path_specifier: Some(path_specifier),
            headers,
            query_parameters,
            cookies,
            ..Default::default()
        }),
        action: Some(action),
        typed_per_filter_config,
        request_headers_to_add: header_options_to_wire(&rt.request_headers_to_add),
        request_headers_to_remove: rt.request_headers_to_remove.clone(),
        response_headers_to_add: header_options_to_wire(&rt.response_headers_to_add),
        response_headers_to_remove: rt.response_headers_to_remove.clone(),
        ..Default::default()
    })
}

/// A route's or virtual host's fault and local rate limit as `typed_per_filter_config`.
fn filters_to_wire(
    fault: &Option<gofe_model::FaultConfig>,
    limit: &Option<gofe_model::LocalRateLimitConfig>,
) -> HashMap<String, Any> {
    let mut out = HashMap::new();
    if let Some(f) = fault {
        out.insert(FAULT_FILTER_NAME.to_owned(), faults::per_route_to_wire(f));
    }
    if let Some(r) = limit {
        out.insert(
            LOCAL_RATELIMIT_FILTER_NAME.to_owned(),
            ratelimits::per_route_to_wire(r),
        );
    }
    out
}

fn mirror_policy_to_wire(
    p: &RequestMirrorPolicyConfig,
) -> route::route_action::RequestMirrorPolicy {
    route::route_action::RequestMirrorPolicy {
        cluster: p.cluster.clone(),
        // Absent is Envoy's 100 %.
        runtime_fraction: (!gofe_model::mirror::is_all(&p.runtime_fraction)).then(|| {
            core::RuntimeFractionalPercent {
                default_value: Some(percent_to_wire(&p.runtime_fraction)),
                runtime_key: String::new(),
            }
        }),
        disable_shadow_host_suffix_append: p.disable_shadow_host_suffix_append,
        ..Default::default()
    }
}

fn retry_policy_to_wire(r: &RetryPolicyConfig) -> route::RetryPolicy {
    route::RetryPolicy {
        retry_on: r.retry_on.clone(),
        num_retries: u32v(r.num_retries),
        per_try_timeout: r.per_try_timeout.map(pb_duration),
        retry_host_predicate: vec![route::retry_policy::RetryHostPredicate {
            name: PREVIOUS_HOSTS_PREDICATE.into(),
            config_type: Some(
                route::retry_policy::retry_host_predicate::ConfigType::TypedConfig(to_any(
                    &PreviousHostsPredicate {},
                )),
            ),
        }],
        host_selection_retry_max_attempts: HOST_SELECTION_ATTEMPTS,
        ..Default::default()
    }
}

pub(super) fn header_to_wire(h: &HeaderMatcherConfig) -> Result<route::HeaderMatcher, String> {
    use route::header_matcher::HeaderMatchSpecifier as H;
    let spec = match (&h.string_match, h.present_match, &h.range_match) {
        (Some(sm), None, None) => H::StringMatch(string_match_to_wire(sm)?),
        (None, Some(present), None) => H::PresentMatch(present),
        (None, None, Some(r)) => H::RangeMatch(range_to_wire(r)),
        _ => return Err("needs exactly one of string_match, present_match or range_match".into()),
    };
    Ok(route::HeaderMatcher {
        name: h.name.clone(),
        invert_match: h.invert_match,
        header_match_specifier: Some(spec),
        ..Default::default()
    })
}

// === from wire ===

/// Validates a route configuration into gofe's router form.
pub fn route_from_wire(r: &route::RouteConfiguration) -> Result<RouteResource, ConvertError> {
    let res = format!("RouteConfiguration {:?}", r.name);
    route_from_wire_in(r, &res, "").map(|(r, _)| r)
}

/// A route's `max_request_bytes` as a level of the configuration says it: a limit, or "no
/// limit" (the buffer filter disabled there).
#[derive(Clone, Copy)]
enum BufferSetting {
    Limit(u64),
    Disabled,
}

/// Validates a route configuration found in `res` at `base` (empty for an RDS resource).
/// Returns it and whether it asks for its clusters to be validated (`validate_clusters`,
/// which the caller defaults).
pub(super) fn route_from_wire_in(
    r: &route::RouteConfiguration,
    res: &str,
    base: &str,
) -> Result<(RouteResource, bool), ConvertError> {
    let route::RouteConfiguration {
        name,
        virtual_hosts,
        vhds,
        internal_only_headers,
        response_headers_to_add,
        response_headers_to_remove,
        request_headers_to_add,
        request_headers_to_remove,
        most_specific_header_mutations_wins,
        validate_clusters,
        max_direct_response_body_size_bytes,
        cluster_specifier_plugins,
        request_mirror_policies,
        // gofe matches domains without a port whatever the request's port, and domains with a
        // port with it (see the model's `domains`), with or without this flag.
        ignore_port_in_host_matching: _,
        vhost_header,
        ignore_path_parameters_in_path_matching,
        typed_per_filter_config,
        metadata: _,
        route_specifiers,
    } = r;
    let top = Unsupported::new(res, base)
        .set("vhds", vhds)
        .set("internal_only_headers", internal_only_headers)
        .when(
            "max_direct_response_body_size_bytes (gofe's limit is Envoy's default, 4096)",
            max_direct_response_body_size_bytes
                .as_ref()
                .is_some_and(|m| {
                    m.value as usize != gofe_model::route::DEFAULT_MAX_DIRECT_RESPONSE_BODY_BYTES
                }),
        )
        .set("cluster_specifier_plugins", cluster_specifier_plugins)
        .set("vhost_header", vhost_header)
        .set(
            "ignore_path_parameters_in_path_matching",
            ignore_path_parameters_in_path_matching,
        )
        .set("route_specifiers", route_specifiers)
        .finish();
    // Every refusal is collected (each virtual host and route on its own), so a NACK names
    // them all.
    let mut refusals = Refusals::default();
    refusals.take(top);
    let config_filters = per_filter_settings(typed_per_filter_config, res, base)
        .and_then(|f| refuse_shared_bucket(&f, res, base).map(|()| f));
    let config_filters = refusals.take(config_filters).unwrap_or_default();
    let config_mirrors = mirror_policies_from_wire(request_mirror_policies, res, base);
    let config_mirrors = refusals.take(config_mirrors).unwrap_or_default();
    let mut out = Vec::new();
    for (hi, vh) in virtual_hosts.iter().enumerate() {
        let vh = virtual_host_from_wire(
            vh,
            res,
            &join(base, &format!("virtual_hosts[{hi}]")),
            &config_filters,
            &config_mirrors,
        );
        out.extend(refusals.take(vh));
    }
    let mutations = refusals.take(mutations_from_wire(
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        res,
        base,
    ));
    let mutations = refusals.finish_with(mutations)?;
    let router = RouterConfig {
        virtual_hosts: out,
        request_headers_to_add: mutations.request_add,
        request_headers_to_remove: mutations.request_remove,
        response_headers_to_add: mutations.response_add,
        response_headers_to_remove: mutations.response_remove,
        most_specific_header_mutations_wins: *most_specific_header_mutations_wins,
    };
    // The proxy's own checks (domain syntax and uniqueness, header names, weights, …), named
    // by the same paths: gofe's router fields are Envoy's.
    let piece = ProxyConfig {
        listeners: vec![ListenerConfig {
            name: None,
            address: "127.0.0.1:0".into(),
            protocol: "http".into(),
            tls: None,
            filters: vec![FilterConfig {
                kind: "router".into(),
                config: router,
            }],
            access_log: Vec::new(),
            tracing: None,
            rbac: None,
            tcp_proxy: None,
            use_original_dst: false,
            bind_to_port: true,
            max_connections: None,
            max_request_headers_kb: gofe_model::DEFAULT_MAX_REQUEST_HEADERS_KB,
            request_headers_timeout: gofe_model::DEFAULT_REQUEST_HEADERS_TIMEOUT,
            idle_timeout: gofe_model::DEFAULT_LISTENER_IDLE_TIMEOUT,
            filter_chains: Vec::new(),
            tls_inspector: false,
            http_inspector: false,
        }],
        ..Default::default()
    };
    model_check(&piece, res, "listeners[0].filters[0].config.", base)?;
    let router = piece
        .listeners
        .into_iter()
        .next()
        .and_then(|l| l.filters.into_iter().next())
        .map(|f| f.config)
        .unwrap_or_default();
    Ok((
        RouteResource {
            name: name.clone(),
            router,
        },
        validate_clusters.as_ref().is_some_and(|b| b.value),
    ))
}

#[allow(deprecated)]
fn virtual_host_from_wire(
    vh: &route::VirtualHost,
    res: &str,
    base: &str,
    config_filters: &PerFilter,
    config_mirrors: &[RequestMirrorPolicyConfig],
) -> Result<VirtualHostConfig, ConvertError> {
    let route::VirtualHost {
        name,
        domains,
        routes,
        matcher,
        require_tls,
        // Statistics only.
        virtual_clusters: _,
        rate_limits,
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        cors,
        typed_per_filter_config,
        include_request_attempt_count,
        include_attempt_count_in_response,
        retry_policy,
        retry_policy_typed_config,
        hedge_policy,
        include_is_timeout_retry_header,
        per_request_buffer_limit_bytes,
        request_body_buffer_limit,
        request_mirror_policies,
        metadata: _,
        route_specifiers,
    } = vh;
    let mut refusals = Refusals::default();
    let top = Unsupported::new(res, base)
        .set("matcher", matcher)
        .set("require_tls", require_tls)
        .set("rate_limits", rate_limits)
        .set("cors", cors)
        .set(
            "include_request_attempt_count",
            include_request_attempt_count,
        )
        .set(
            "include_attempt_count_in_response",
            include_attempt_count_in_response,
        )
        .set("retry_policy_typed_config", retry_policy_typed_config)
        .set("hedge_policy", hedge_policy)
        .set(
            "include_is_timeout_retry_header",
            include_is_timeout_retry_header,
        )
        .set(
            "per_request_buffer_limit_bytes",
            per_request_buffer_limit_bytes,
        )
        .set("request_body_buffer_limit", request_body_buffer_limit)
        .set("route_specifiers", route_specifiers)
        .finish();
    refusals.take(top);
    let vhost_mirrors = mirror_policies_from_wire(request_mirror_policies, res, base)?;
    // The most specific non-empty list wins whole (Envoy does not merge them).
    let vhost_mirrors = if vhost_mirrors.is_empty() {
        config_mirrors
    } else {
        &vhost_mirrors[..]
    };
    // The route configuration's settings are the virtual host's where it has none (gofe's
    // model has no level above the virtual host; a bucket there was refused above).
    let vhost_filters = per_filter_settings(typed_per_filter_config, res, base)?.or(config_filters);
    let vhost_retry = retry_policy
        .as_ref()
        .map(|r| retry_policy_from_wire(r, res, &join(base, "retry_policy")))
        .transpose()?;
    let mut out = Vec::new();
    for (ri, rt) in routes.iter().enumerate() {
        let rt = route_entry_from_wire(
            rt,
            res,
            &join(base, &format!("routes[{ri}]")),
            &vhost_filters,
            &vhost_retry,
            vhost_mirrors,
        );
        out.extend(refusals.take(rt));
    }
    let mutations = refusals.take(mutations_from_wire(
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        res,
        base,
    ));
    let mutations = refusals.finish_with(mutations)?;
    Ok(VirtualHostConfig {
        name: name.clone(),
        domains: domains.to_vec(),
        routes: out,
        fault: vhost_filters.fault(),
        local_ratelimit: vhost_filters.local_ratelimit(),
        request_headers_to_add: mutations.request_add,
        request_headers_to_remove: mutations.request_remove,
        response_headers_to_add: mutations.response_add,
        response_headers_to_remove: mutations.response_remove,
    })
}

#[allow(deprecated)]
fn route_entry_from_wire(
    rt: &route::Route,
    res: &str,
    base: &str,
    vhost_filters: &PerFilter,
    vhost_retry: &Option<Option<RetryPolicyConfig>>,
    vhost_mirrors: &[RequestMirrorPolicyConfig],
) -> Result<RouteConfig, ConvertError> {
    let route::Route {
        // Read for logs (`%ROUTE_NAME%`).
        name,
        r#match,
        metadata: _,
        // Tracing per route (a span name, sampling overrides, tags): gofe's tracing is the
        // connection manager's, so these are refused rather than ignored.
        decorator,
        typed_per_filter_config,
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        tracing,
        per_request_buffer_limit_bytes,
        stat_prefix: _,
        request_body_buffer_limit,
        route_specifiers,
        action,
    } = rt;
    let top = Unsupported::new(res, base)
        .set(
            "per_request_buffer_limit_bytes",
            per_request_buffer_limit_bytes,
        )
        .set("request_body_buffer_limit", request_body_buffer_limit)
        .set("route_specifiers", route_specifiers)
        .set("decorator", decorator)
        .set("tracing", tracing)
        .finish();
    let mut refusals = Refusals::default();
    refusals.take(top);
    let matcher = r#match
        .as_ref()
        .ok_or_else(|| invalid(res, &join(base, "match"), "missing"))
        .and_then(|m| match_from_wire(m, res, &join(base, "match")));
    let matcher = refusals.take(matcher);
    let own = refusals.take(per_filter_settings(typed_per_filter_config, res, base));
    let action = match action {
        Some(route::route::Action::Route(a)) => refusals
            .take(action_from_wire(a, res, &join(base, "route"), vhost_retry))
            .map(|out| (out, None, None)),
        Some(route::route::Action::Redirect(r)) => refusals
            .take(redirect_from_wire(r, res, &join(base, "redirect")))
            .map(|r| (RouteActionConfig::none(), Some(r), None)),
        Some(route::route::Action::DirectResponse(d)) => refusals
            .take(direct_response_from_wire(
                d,
                res,
                &join(base, "direct_response"),
            ))
            .map(|d| (RouteActionConfig::none(), None, Some(d))),
        _ => {
            refusals.push(invalid(
                res,
                base,
                "only route, redirect and direct_response actions are supported by gofe",
            ));
            None
        }
    };
    let mutations = refusals.take(mutations_from_wire(
        request_headers_to_add,
        request_headers_to_remove,
        response_headers_to_add,
        response_headers_to_remove,
        res,
        base,
    ));
    let (((matcher, (mut out, redirect, direct_response)), own), mutations) =
        refusals.finish_with(matcher.zip(action).zip(own).zip(mutations))?;
    let filters = own.clone().or(vhost_filters);
    if redirect.is_none() && direct_response.is_none() {
        if out.request_mirror_policies.is_empty() {
            out.request_mirror_policies = vhost_mirrors.to_vec();
        }
        out.max_request_bytes = match filters.buffer {
            Some(BufferSetting::Limit(n)) => Some(n),
            Some(BufferSetting::Disabled) | None => None,
        };
    }
    Ok(RouteConfig {
        name: (!name.is_empty()).then(|| name.clone()),
        matcher,
        route: out,
        redirect,
        direct_response,
        fault: own.fault_under(vhost_filters),
        local_ratelimit: own.local_ratelimit_under(vhost_filters),
        request_headers_to_add: mutations.request_add,
        request_headers_to_remove: mutations.request_remove,
        response_headers_to_add: mutations.response_add,
        response_headers_to_remove: mutations.response_remove,
    })
}

fn match_from_wire(
    m: &route::RouteMatch,
    res: &str,
    base: &str,
) -> Result<RouteMatchConfig, ConvertError> {
    use route::route_match::PathSpecifier;
    let route::RouteMatch {
        case_sensitive,
        runtime_fraction,
        headers,
        query_parameters,
        cookies,
        grpc,
        tls_context,
        dynamic_metadata,
        filter_state,
        path_specifier,
    } = m;
    Unsupported::new(res, base)
        .when(
            "case_sensitive",
            case_sensitive.as_ref().is_some_and(|c| !c.value),
        )
        .set("runtime_fraction", runtime_fraction)
        .set("grpc", grpc)
        .set("tls_context", tls_context)
        .set("dynamic_metadata", dynamic_metadata)
        .set("filter_state", filter_state)
        .finish()?;
    let mut out = RouteMatchConfig::default();
    let slash = |p: &str, which: &str| -> Result<String, ConvertError> {
        if p.starts_with('/') {
            Ok(p.to_owned())
        } else {
            Err(invalid(
                res,
                &join(base, which),
                format!("{p:?} can match no path: gofe needs it to start with '/'"),
            ))
        }
    };
    match path_specifier {
        // An empty prefix matches every path, as "/" does.
        Some(PathSpecifier::Prefix(p)) if p.is_empty() => out.prefix = Some("/".into()),
        Some(PathSpecifier::Prefix(p)) => out.prefix = Some(slash(p, "prefix")?),
        Some(PathSpecifier::Path(p)) => out.path = Some(slash(p, "path")?),
        Some(PathSpecifier::SafeRegex(r)) => {
            out.safe_regex = Some(regex_from_wire(r, res, &join(base, "safe_regex"))?)
        }
        Some(PathSpecifier::PathSeparatedPrefix(p)) => {
            out.path_separated_prefix = Some(slash(p, "path_separated_prefix")?)
        }
        Some(_) => {
            return Err(unsupported(
                res,
                &join(
                    base,
                    "path_specifier (only prefix, path, safe_regex and path_separated_prefix)",
                ),
            ))
        }
        None => return Err(invalid(res, &join(base, "path_specifier"), "missing")),
    }
    for (i, h) in headers.iter().enumerate() {
        out.headers.push(
            header_from_wire(h)
                .map_err(|msg| invalid(res, &join(base, &format!("headers[{i}]")), msg))?,
        );
    }
    for (i, c) in cookies.iter().enumerate() {
        out.cookies.push(
            cookie_from_wire(c)
                .map_err(|msg| invalid(res, &join(base, &format!("cookies[{i}]")), msg))?,
        );
    }
    for (i, q) in query_parameters.iter().enumerate() {
        out.query_parameters
            .push(query_from_wire(q).map_err(|msg| {
                invalid(res, &join(base, &format!("query_parameters[{i}]")), msg)
            })?);
    }
    Ok(out)
}

#[allow(deprecated)]
fn action_from_wire(
    a: &route::RouteAction,
    res: &str,
    base: &str,
    vhost_retry: &Option<Option<RetryPolicyConfig>>,
) -> Result<RouteActionConfig, ConvertError> {
    use route::route_action::{ClusterNotFoundResponseCode, ClusterSpecifier};
    let route::RouteAction {
        cluster_not_found_response_code,
        metadata_match,
        prefix_rewrite,
        regex_rewrite,
        path_rewrite_policy,
        path_rewrite,
        append_x_forwarded_host,
        timeout,
        idle_timeout,
        flush_timeout,
        early_data_policy,
        retry_policy,
        retry_policy_typed_config,
        request_mirror_policies,
        priority,
        rate_limits,
        include_vh_rate_limits,
        // Used only by hash-based balancers (ring hash, Maglev), which are refused: Envoy ignores
        // it under round robin and least request too.
        hash_policy: _,
        cors,
        max_grpc_timeout,
        grpc_timeout_offset,
        upgrade_configs,
        internal_redirect_policy,
        internal_redirect_action,
        max_internal_redirects,
        hedge_policy,
        max_stream_duration,
        cluster_specifier,
        host_rewrite_specifier,
    } = a;
    Unsupported::new(res, base)
        .when(
            "cluster_not_found_response_code (gofe answers 503)",
            *cluster_not_found_response_code
                != ClusterNotFoundResponseCode::ServiceUnavailable as i32,
        )
        .set("metadata_match", metadata_match)
        .when(
            "prefix_rewrite (with regex_rewrite: set one)",
            !prefix_rewrite.is_empty() && regex_rewrite.is_some(),
        )
        .set("path_rewrite_policy", path_rewrite_policy)
        .set("path_rewrite", path_rewrite)
        .set("append_x_forwarded_host", append_x_forwarded_host)
        .set("idle_timeout", idle_timeout)
        .set("flush_timeout", flush_timeout)
        .set("early_data_policy", early_data_policy)
        .set("retry_policy_typed_config", retry_policy_typed_config)
        .when(
            "priority HIGH",
            *priority != core::RoutingPriority::Default as i32,
        )
        .set("rate_limits", rate_limits)
        .set("include_vh_rate_limits", include_vh_rate_limits)
        .set("cors", cors)
        .set("max_grpc_timeout", max_grpc_timeout)
        .set("grpc_timeout_offset", grpc_timeout_offset)
        .set("upgrade_configs", upgrade_configs)
        .set("internal_redirect_policy", internal_redirect_policy)
        .set("internal_redirect_action", internal_redirect_action)
        .set("max_internal_redirects", max_internal_redirects)
        .set("hedge_policy", hedge_policy)
        .set("max_stream_duration", max_stream_duration)
        .finish()?;
    use route::route_action::HostRewriteSpecifier as Host;
    let (host_rewrite_literal, host_rewrite_header) = match host_rewrite_specifier {
        None => (None, None),
        Some(Host::HostRewriteLiteral(h)) if h.is_empty() => (None, None),
        Some(Host::HostRewriteLiteral(h)) => (Some(h.clone()), None),
        Some(Host::HostRewriteHeader(h)) if h.is_empty() => (None, None),
        Some(Host::HostRewriteHeader(h)) => (None, Some(h.to_ascii_lowercase())),
        Some(Host::AutoHostRewrite(b)) if !b.value => (None, None),
        Some(Host::AutoHostRewrite(_)) => {
            return Err(unsupported(res, &join(base, "auto_host_rewrite")))
        }
        Some(Host::HostRewritePathRegex(_)) => {
            return Err(unsupported(res, &join(base, "host_rewrite_path_regex")))
        }
        Some(Host::HostRewrite(_)) => return Err(unsupported(res, &join(base, "host_rewrite"))),
    };
    let mut out = RouteActionConfig {
        timeout: duration_or(timeout, DEFAULT_ROUTE_TIMEOUT, res, &join(base, "timeout"))?,
        // A route's own policy replaces its virtual host's (Envoy does not merge them).
        retry_policy: match retry_policy {
            Some(r) => retry_policy_from_wire(r, res, &join(base, "retry_policy"))?,
            None => vhost_retry.clone().flatten(),
        },
        request_mirror_policies: mirror_policies_from_wire(request_mirror_policies, res, base)?,
        prefix_rewrite: (!prefix_rewrite.is_empty()).then(|| prefix_rewrite.clone()),
        regex_rewrite: regex_rewrite
            .as_ref()
            .map(|r| regex_rewrite_from_wire(r, res, &join(base, "regex_rewrite")))
            .transpose()?,
        host_rewrite_literal,
        host_rewrite_header,
        ..Default::default()
    };
    match cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) if !c.is_empty() => out.cluster = Some(c.clone()),
        Some(ClusterSpecifier::WeightedClusters(wc)) => {
            out.weighted_clusters = Some(weighted_from_wire(
                wc,
                res,
                &join(base, "weighted_clusters"),
            )?);
        }
        _ => {
            return Err(unsupported(
                res,
                &join(
                    base,
                    "cluster_specifier (only cluster and weighted_clusters)",
                ),
            ))
        }
    }
    Ok(out)
}

/// A level's `request_mirror_policies` (`base` is the message holding them).
fn mirror_policies_from_wire(
    policies: &[route::route_action::RequestMirrorPolicy],
    res: &str,
    base: &str,
) -> Result<Vec<RequestMirrorPolicyConfig>, ConvertError> {
    policies
        .iter()
        .enumerate()
        .map(|(i, p)| {
            mirror_policy_from_wire(
                p,
                res,
                &join(base, &format!("request_mirror_policies[{i}]")),
            )
        })
        .collect()
}

fn mirror_policy_from_wire(
    p: &route::route_action::RequestMirrorPolicy,
    res: &str,
    base: &str,
) -> Result<RequestMirrorPolicyConfig, ConvertError> {
    let route::route_action::RequestMirrorPolicy {
        cluster,
        cluster_header,
        runtime_fraction,
        trace_sampled,
        disable_shadow_host_suffix_append,
        request_headers_mutations,
        host_rewrite_literal,
    } = p;
    Unsupported::new(res, base)
        .set("cluster_header", cluster_header)
        .set("trace_sampled", trace_sampled)
        .set("request_headers_mutations", request_headers_mutations)
        .set("host_rewrite_literal", host_rewrite_literal)
        .finish()?;
    if cluster.is_empty() {
        return Err(invalid(
            res,
            &join(base, "cluster"),
            "needs a cluster (gofe does not support cluster_header)",
        ));
    }
    let runtime_fraction = match runtime_fraction {
        // Envoy: every request.
        None => gofe_model::mirror::all(),
        // The runtime_key is ignored: gofe has no runtime, so the default value applies.
        Some(f) => match &f.default_value {
            None => {
                return Err(invalid(
                    res,
                    &join(base, "runtime_fraction.default_value"),
                    "missing (Envoy requires it)",
                ))
            }
            Some(_) => percent_from_wire(
                &f.default_value,
                res,
                &join(base, "runtime_fraction.default_value"),
            )?,
        },
    };
    Ok(RequestMirrorPolicyConfig {
        cluster: cluster.clone(),
        runtime_fraction,
        disable_shadow_host_suffix_append: *disable_shadow_host_suffix_append,
    })
}

#[allow(deprecated)]
fn weighted_from_wire(
    wc: &route::WeightedCluster,
    res: &str,
    base: &str,
) -> Result<WeightedClustersConfig, ConvertError> {
    let route::WeightedCluster {
        clusters,
        total_weight,
        runtime_key_prefix,
        random_value_specifier,
    } = wc;
    Unsupported::new(res, base)
        .set("runtime_key_prefix", runtime_key_prefix)
        .set("random_value_specifier", random_value_specifier)
        .finish()?;
    let mut out = Vec::new();
    for (i, c) in clusters.iter().enumerate() {
        let cbase = join(base, &format!("clusters[{i}]"));
        let route::weighted_cluster::ClusterWeight {
            name,
            cluster_header,
            weight,
            metadata_match,
            request_headers_to_add,
            request_headers_to_remove,
            response_headers_to_add,
            response_headers_to_remove,
            typed_per_filter_config,
            host_rewrite_specifier,
        } = c;
        Unsupported::new(res, &cbase)
            .set("cluster_header", cluster_header)
            .set("metadata_match", metadata_match)
            .set("request_headers_to_add", request_headers_to_add)
            .set("request_headers_to_remove", request_headers_to_remove)
            .set("response_headers_to_add", response_headers_to_add)
            .set("response_headers_to_remove", response_headers_to_remove)
            .set("typed_per_filter_config", typed_per_filter_config)
            .set("host_rewrite_specifier", host_rewrite_specifier)
            .finish()?;
        if name.is_empty() {
            return Err(invalid(res, &join(&cbase, "name"), "empty"));
        }
        out.push(ClusterWeightConfig {
            name: name.clone(),
            weight: weight.map_or(0, |w| w.value),
        });
    }
    if out.iter().all(|c| c.weight == 0) {
        return Err(invalid(
            res,
            &join(base, "clusters"),
            "needs a cluster with a non-zero weight",
        ));
    }
    let sum: u64 = out.iter().map(|c| u64::from(c.weight)).sum();
    if let Some(total) = total_weight {
        if u64::from(total.value) != sum {
            return Err(invalid(
                res,
                &join(base, "total_weight"),
                format!("{} is not the sum of the weights ({sum})", total.value),
            ));
        }
    }
    Ok(WeightedClustersConfig { clusters: out })
}

/// A retry policy; `None` when its `retry_on` is empty (Envoy then never retries).
fn retry_policy_from_wire(
    r: &route::RetryPolicy,
    res: &str,
    base: &str,
) -> Result<Option<RetryPolicyConfig>, ConvertError> {
    let route::RetryPolicy {
        retry_on,
        num_retries,
        per_try_timeout,
        per_try_idle_timeout,
        retry_priority,
        retry_host_predicate,
        retry_options_predicates,
        // How often Envoy re-picks to satisfy the predicates; gofe always picks another
        // endpoint when there is one.
        host_selection_retry_max_attempts: _,
        retriable_status_codes,
        retry_back_off,
        rate_limited_retry_back_off,
        retriable_headers,
        retriable_request_headers,
        refresh_cluster_on_retry,
    } = r;
    let default_backoff = retry_back_off.as_ref().is_none_or(|b| {
        b.base_interval
            .as_ref()
            .map(|d| duration_from_pb(d, res, base).ok())
            == Some(Some(RETRY_BASE_INTERVAL))
            && b.max_interval
                .as_ref()
                .is_none_or(|d| duration_from_pb(d, res, base).ok() == Some(RETRY_MAX_INTERVAL))
    });
    let predicates_ok = retry_host_predicate.iter().all(|p| match &p.config_type {
        Some(route::retry_policy::retry_host_predicate::ConfigType::TypedConfig(a)) => {
            a.type_url == PreviousHostsPredicate::type_url()
        }
        None => p.name == PREVIOUS_HOSTS_PREDICATE,
    });
    Unsupported::new(res, base)
        .set("per_try_idle_timeout", per_try_idle_timeout)
        .set("retry_priority", retry_priority)
        .when("retry_host_predicate (only previous_hosts)", !predicates_ok)
        .set("retry_options_predicates", retry_options_predicates)
        .set("retriable_status_codes", retriable_status_codes)
        .when(
            "retry_back_off (gofe's is Envoy's default: 25ms base, 250ms max)",
            !default_backoff,
        )
        .set("rate_limited_retry_back_off", rate_limited_retry_back_off)
        .set("retriable_headers", retriable_headers)
        .set("retriable_request_headers", retriable_request_headers)
        .set("refresh_cluster_on_retry", refresh_cluster_on_retry)
        .finish()?;
    let tokens: Vec<&str> = retry_on
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect();
    if tokens.is_empty() {
        return Ok(None);
    }
    if let Some(t) = tokens
        .iter()
        .find(|t| !matches!(**t, "5xx" | "gateway-error" | "connect-failure" | "reset"))
    {
        return Err(invalid(
            res,
            &join(base, "retry_on"),
            format!(
                "{t:?} not supported by gofe (supported: 5xx, gateway-error, connect-failure, reset)"
            ),
        ));
    }
    Ok(Some(RetryPolicyConfig {
        retry_on: if retry_on.split(',').any(|t| t.trim().is_empty()) {
            tokens.join(",")
        } else {
            retry_on.clone()
        },
        num_retries: num_retries.map_or(1, |n| n.value),
        per_try_timeout: per_try_timeout
            .as_ref()
            .map(|d| duration_from_pb(d, res, &join(base, "per_try_timeout")))
            .transpose()?,
    }))
}

/// A level's fault setting: a configuration, or "none here" (the filter disabled there).
#[derive(Clone)]
enum FaultSetting {
    Config(gofe_model::FaultConfig),
    Disabled,
}

/// What one level's `typed_per_filter_config` says for the filters gofe has.
#[derive(Clone, Default)]
struct PerFilter {
    buffer: Option<BufferSetting>,
    fault: Option<FaultSetting>,
    /// `Some(None)`: no limit here (disabled, or a `LocalRateLimit` without a bucket).
    ratelimit: Option<Option<gofe_model::LocalRateLimitConfig>>,
}

impl PerFilter {
    /// This level's settings, the less specific level's where this one says nothing.
    fn or(self, outer: &PerFilter) -> PerFilter {
        PerFilter {
            buffer: self.buffer.or(outer.buffer),
            fault: self.fault.or_else(|| outer.fault.clone()),
            ratelimit: self.ratelimit.or_else(|| outer.ratelimit.clone()),
        }
    }

    fn local_ratelimit(&self) -> Option<gofe_model::LocalRateLimitConfig> {
        self.ratelimit.clone().flatten()
    }

    fn fault(&self) -> Option<gofe_model::FaultConfig> {
        match &self.fault {
            Some(FaultSetting::Config(f)) => Some(f.clone()),
            Some(FaultSetting::Disabled) | None => None,
        }
    }

    /// A route's own fault (this level) below its virtual host's (`outer`): its own
    /// configuration; where it disables the filter and the host has a fault, a fault that
    /// injects nothing (what overrides the host's in gofe's model); else none (the host's
    /// applies, or there is none).
    fn fault_under(&self, outer: &PerFilter) -> Option<gofe_model::FaultConfig> {
        match &self.fault {
            Some(FaultSetting::Config(f)) => Some(f.clone()),
            Some(FaultSetting::Disabled) => {
                outer.fault().map(|_| gofe_model::FaultConfig::default())
            }
            None => None,
        }
    }

    /// A route's own local rate limit below its virtual host's (`outer`), as
    /// [`PerFilter::fault_under`]: disabling the filter under a host's bucket is a limit that
    /// looks at nothing.
    fn local_ratelimit_under(&self, outer: &PerFilter) -> Option<gofe_model::LocalRateLimitConfig> {
        match &self.ratelimit {
            Some(Some(l)) => Some(l.clone()),
            Some(None) => outer
                .local_ratelimit()
                .map(|l| gofe_model::LocalRateLimitConfig {
                    filter_enabled: gofe_model::FractionalPercent::default(),
                    filter_enforced: gofe_model::FractionalPercent::default(),
                    enable_x_ratelimit_headers: Default::default(),
                    ..l
                }),
            None => None,
        }
    }
}

/// In Envoy a `LocalRateLimit` on a route configuration is one bucket shared by every route of
/// every virtual host that inherits it; gofe's buckets are per route or per virtual host, so
/// such a bucket is refused rather than split. (One that limits nothing is fine.)
fn refuse_shared_bucket(level: &PerFilter, res: &str, base: &str) -> Result<(), ConvertError> {
    if matches!(level.ratelimit, Some(Some(_))) {
        return Err(invalid(
            res,
            &join(
                base,
                &format!("typed_per_filter_config[{LOCAL_RATELIMIT_FILTER_NAME:?}]"),
            ),
            "a token bucket shared by several virtual hosts is not supported by gofe: \
             configure the local rate limit on each virtual host or route",
        ));
    }
    Ok(())
}

/// The settings of the filters gofe has (buffer, fault, local rate limit) in a `typed_per_filter_config` map. A
/// configuration for a filter gofe does not have is refused unless it is marked optional (a
/// `FilterConfig` with `is_optional`).
fn per_filter_settings(
    map: &HashMap<String, Any>,
    res: &str,
    base: &str,
) -> Result<PerFilter, ConvertError> {
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    let mut out = PerFilter::default();
    for key in keys {
        let any = &map[key];
        let field = join(base, &format!("typed_per_filter_config[{key:?}]"));
        let wrapper = (any.type_url == route::FilterConfig::type_url())
            .then(|| from_any::<route::FilterConfig>(any))
            .transpose()?;
        if key == FAULT_FILTER_NAME {
            out.fault = Some(match &wrapper {
                Some(w) if w.disabled => FaultSetting::Disabled,
                Some(w) => {
                    let config = w.config.as_ref().ok_or_else(|| {
                        invalid(
                            res,
                            &join(&field, "config"),
                            "enabling the fault filter needs an HTTPFault",
                        )
                    })?;
                    FaultSetting::Config(faults::per_route_from_wire(
                        config,
                        res,
                        &join(&field, "config"),
                    )?)
                }
                None if faults::is_fault(any) => {
                    FaultSetting::Config(faults::per_route_from_wire(any, res, &field)?)
                }
                None => return Err(ConvertError::UnexpectedType(any.type_url.clone())),
            });
            continue;
        }
        if key == LOCAL_RATELIMIT_FILTER_NAME {
            out.ratelimit = Some(match &wrapper {
                Some(w) if w.disabled => None,
                Some(w) => {
                    let config = w.config.as_ref().ok_or_else(|| {
                        invalid(
                            res,
                            &join(&field, "config"),
                            "enabling the local rate limit filter needs a LocalRateLimit",
                        )
                    })?;
                    ratelimits::per_route_from_wire(config, res, &join(&field, "config"))?
                }
                None if ratelimits::is_local_ratelimit(any) => {
                    ratelimits::per_route_from_wire(any, res, &field)?
                }
                None => return Err(ConvertError::UnexpectedType(any.type_url.clone())),
            });
            continue;
        }
        if key == super::rbac::RBAC_FILTER_NAME {
            return Err(invalid(
                res,
                &field,
                "a per-route RBAC configuration (RBACPerRoute) is not supported by gofe: the \
                 listener's rules apply to every route",
            ));
        }
        if key != BUFFER_FILTER_NAME {
            if wrapper.is_some_and(|w| w.is_optional) {
                continue;
            }
            return Err(invalid(
                res,
                &field,
                "a per-route configuration for an HTTP filter gofe does not have (only the \
                 buffer, fault and local rate limit filters'; mark others is_optional)",
            ));
        }
        let per_route = match &wrapper {
            Some(w) if w.disabled => {
                out.buffer = Some(BufferSetting::Disabled);
                continue;
            }
            Some(w) => w.config.as_ref().ok_or_else(|| {
                invalid(
                    res,
                    &join(&field, "config"),
                    "enabling the buffer filter needs a BufferPerRoute with its limit",
                )
            })?,
            None => any,
        };
        let per_route: buffer::BufferPerRoute = from_any(per_route)?;
        out.buffer = Some(match per_route.r#override {
            Some(buffer::buffer_per_route::Override::Disabled(true)) => BufferSetting::Disabled,
            Some(buffer::buffer_per_route::Override::Buffer(b)) => match b.max_request_bytes {
                Some(UInt32Value { value }) if value > 0 => BufferSetting::Limit(value.into()),
                _ => {
                    return Err(invalid(
                        res,
                        &join(&field, "buffer.max_request_bytes"),
                        "needs a value of at least 1",
                    ))
                }
            },
            _ => {
                return Err(invalid(
                    res,
                    &field,
                    "needs disabled: true or a buffer with max_request_bytes",
                ))
            }
        });
    }
    Ok(out)
}

fn header_from_wire(h: &route::HeaderMatcher) -> Result<HeaderMatcherConfig, String> {
    header_matcher_from_wire(h, false)
}

/// A header matcher where `:path`, `:method`, `:authority` and `:scheme` may be named (RBAC's
/// `header` permission).
pub(super) fn header_from_wire_with_pseudo(
    h: &route::HeaderMatcher,
) -> Result<HeaderMatcherConfig, String> {
    header_matcher_from_wire(h, true)
}

// The deprecated `*_match` forms are still valid Envoy v3 and are accepted.
#[allow(deprecated)]
fn header_matcher_from_wire(
    h: &route::HeaderMatcher,
    pseudo: bool,
) -> Result<HeaderMatcherConfig, String> {
    use route::header_matcher::HeaderMatchSpecifier as H;
    let route::HeaderMatcher {
        name,
        invert_match,
        treat_missing_header_as_empty,
        header_match_specifier,
    } = h;
    let known_pseudo = matches!(
        name.as_str(),
        ":path" | ":method" | ":authority" | ":scheme"
    );
    if name.starts_with(':') && !(pseudo && known_pseudo) {
        return Err(format!(
            "pseudo-header {name:?} matching is not supported by gofe"
        ));
    }
    if *treat_missing_header_as_empty {
        return Err("treat_missing_header_as_empty is not supported by gofe".into());
    }
    let mut sm = StringMatchConfig::default();
    let mut present_match = None;
    let mut range_match = None;
    let regex = |r: &matcher::RegexMatcher| {
        if r.regex.is_empty() {
            Err("safe_regex_match.regex is empty".to_owned())
        } else {
            Ok(r.regex.clone())
        }
    };
    match header_match_specifier {
        Some(H::ExactMatch(v)) => sm.exact = Some(v.clone()),
        Some(H::PrefixMatch(v)) => sm.prefix = Some(v.clone()),
        Some(H::SuffixMatch(v)) => sm.suffix = Some(v.clone()),
        Some(H::ContainsMatch(v)) => sm.contains = Some(v.clone()),
        Some(H::SafeRegexMatch(r)) => sm.safe_regex = Some(regex(r)?),
        Some(H::PresentMatch(p)) => present_match = Some(*p),
        Some(H::RangeMatch(r)) => range_match = Some(range_from_wire(r)),
        Some(H::StringMatch(m)) => sm = string_match_from_wire(m)?,
        // Envoy: no specifier means "present".
        None => present_match = Some(true),
    }
    Ok(HeaderMatcherConfig {
        name: name.clone(),
        string_match: (present_match.is_none() && range_match.is_none()).then_some(sm),
        present_match,
        range_match,
        invert_match: *invert_match,
    })
}
