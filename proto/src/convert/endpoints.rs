//! Load assignments: endpoints, their weights and health, and gofe's weight 0 (drained).

use super::*;

fn health_name(h: HealthStatus) -> &'static str {
    match h {
        HealthStatus::Healthy => "healthy",
        HealthStatus::Unhealthy => "unhealthy",
        HealthStatus::Draining => "draining",
    }
}

/// The wire form of a load assignment.
///
/// An endpoint without a locality gets a locality of its own, in order, with the endpoint's
/// weight both as its `load_balancing_weight` and as the locality's (and `sub_zone` = its
/// address, so each is distinct). Envoy balances on endpoint weights; proxyless gRPC balances
/// across localities by locality weight (it ignores endpoint weights), so this layout gives
/// both the same split. Endpoints with a locality are grouped, in order of first appearance,
/// into one `LocalityLbEndpoints` per priority and locality, whose weight is their
/// `locality_weight` (default the sum of their weights): gRPC then splits by locality and
/// round-robins within one. Each group carries its priority; the cluster's overprovisioning
/// factor is `policy.overprovisioning_factor` (omitted at Envoy's default, 140).
///
/// Weight 0 (gofe's drain) has no Envoy form (weights are at least 1): it is written as weight 1
/// and, unless the endpoint is unhealthy, as DRAINING (an endpoint of its own locality also
/// leaves that locality without weight), so Envoy and gRPC send it nothing new;
/// `metadata.filter_metadata["gofe"]` keeps the weight (and the health, when DRAINING stands in
/// for `healthy`), so gofe reads back exactly what was sent.
pub fn endpoints_to_wire(e: &EndpointsResource) -> endpoint::ClusterLoadAssignment {
    let mut localities: Vec<endpoint::LocalityLbEndpoints> = Vec::new();
    // Each (priority, locality) group: its index in `localities`, the sum of its weights and
    // its explicit locality weight.
    type Group<'a> = ((u32, &'a LocalityConfig), usize, u32, Option<u32>);
    let mut groups: Vec<Group<'_>> = Vec::new();
    for ep in &e.endpoints {
        let Some(locality) = &ep.locality else {
            localities.push(own_locality_to_wire(ep));
            continue;
        };
        let key = (ep.priority, locality);
        match groups.iter_mut().find(|(k, ..)| *k == key) {
            Some((_, at, sum, explicit)) => {
                localities[*at].lb_endpoints.push(lb_endpoint_to_wire(ep));
                *sum = sum.saturating_add(ep.weight);
                *explicit = explicit.or(ep.locality_weight);
            }
            None => {
                groups.push((key, localities.len(), ep.weight, ep.locality_weight));
                localities.push(endpoint::LocalityLbEndpoints {
                    locality: Some(core::Locality {
                        region: locality.region.clone(),
                        zone: locality.zone.clone(),
                        sub_zone: locality.sub_zone.clone(),
                    }),
                    lb_endpoints: vec![lb_endpoint_to_wire(ep)],
                    priority: ep.priority,
                    ..Default::default()
                });
            }
        }
    }
    for (_, at, sum, explicit) in groups {
        let weight = explicit.unwrap_or(sum);
        localities[at].load_balancing_weight =
            (weight > 0).then_some(UInt32Value { value: weight });
    }
    let policy =
        (e.overprovisioning_factor != gofe_model::DEFAULT_OVERPROVISIONING_FACTOR).then(|| {
            endpoint::cluster_load_assignment::Policy {
                overprovisioning_factor: u32v(e.overprovisioning_factor),
                ..Default::default()
            }
        });
    endpoint::ClusterLoadAssignment {
        cluster_name: e.cluster_name.clone(),
        endpoints: localities,
        policy,
        ..Default::default()
    }
}

fn lb_endpoint_to_wire(ep: &EndpointConfig) -> endpoint::LbEndpoint {
    let (host, port) = split_host_port(&ep.address);
    let wire_health = match ep.health_status {
        HealthStatus::Unhealthy => core::HealthStatus::Unhealthy,
        HealthStatus::Draining => core::HealthStatus::Draining,
        HealthStatus::Healthy if ep.weight == 0 => core::HealthStatus::Draining,
        HealthStatus::Healthy => core::HealthStatus::Healthy,
    };
    let mut gofe = Vec::new();
    if ep.weight == 0 {
        gofe.push(("weight", value::Kind::NumberValue(0.0)));
        if ep.health_status == HealthStatus::Healthy {
            gofe.push((
                "health_status",
                value::Kind::StringValue(health_name(ep.health_status).into()),
            ));
        }
    }
    endpoint::LbEndpoint {
        health_status: wire_health as i32,
        metadata: gofe_metadata(gofe),
        load_balancing_weight: u32v(ep.weight.max(1)),
        host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
            endpoint::Endpoint {
                address: Some(socket_address(host, port)),
                ..Default::default()
            },
        )),
    }
}

/// An endpoint without a locality, in a locality of its own named by its address.
fn own_locality_to_wire(ep: &EndpointConfig) -> endpoint::LocalityLbEndpoints {
    endpoint::LocalityLbEndpoints {
        locality: Some(core::Locality {
            sub_zone: ep.address.clone(),
            ..Default::default()
        }),
        lb_endpoints: vec![lb_endpoint_to_wire(ep)],
        load_balancing_weight: (ep.weight > 0).then_some(UInt32Value { value: ep.weight }),
        priority: ep.priority,
        ..Default::default()
    }
}

/// Which endpoint addresses a load assignment may hold.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Addresses {
    /// IP addresses only: EDS and STATIC clusters (Envoy resolves nothing there).
    Ip,
    /// IP addresses or DNS names: STRICT_DNS and LOGICAL_DNS clusters.
    Dns,
}

/// Validates an EDS load assignment (endpoint addresses must be IP addresses, as in Envoy).
pub fn endpoints_from_wire(
    c: &endpoint::ClusterLoadAssignment,
) -> Result<EndpointsResource, ConvertError> {
    let res = format!("ClusterLoadAssignment {:?}", c.cluster_name);
    if c.cluster_name.is_empty() {
        return Err(invalid(&res, "cluster_name", "empty"));
    }
    let (endpoints, overprovisioning_factor) =
        load_assignment_from_wire(c, &res, "", Addresses::Ip)?;
    let out = EndpointsResource {
        cluster_name: c.cluster_name.clone(),
        endpoints,
        overprovisioning_factor,
    };
    // Priorities without gaps, locality weights that agree: what the proxy will check.
    let mut cluster = super::clusters::empty_cluster(&out.cluster_name);
    cluster.endpoints = out.endpoints.clone();
    cluster.locality_lb.overprovisioning_factor = overprovisioning_factor;
    check_localities(&cluster, &res, &c.endpoints)?;
    Ok(out)
}

/// The model's checks of priorities and locality weights, each problem named by the wire
/// field it came from (`endpoints[i]` of the model is a flattened index; the wire's locality
/// and endpoint indices are recovered from `localities`).
fn check_localities(
    cluster: &ClusterConfig,
    res: &str,
    localities: &[endpoint::LocalityLbEndpoints],
) -> Result<(), ConvertError> {
    let problems = gofe_model::validate(&ProxyConfig {
        clusters: vec![cluster.clone()],
        ..Default::default()
    });
    let Some(p) = problems.first() else {
        return Ok(());
    };
    let field = p.field.strip_prefix("clusters[0].").unwrap_or(&p.field);
    let wire_field = match field
        .strip_prefix("endpoints[")
        .and_then(|rest| rest.split_once(']'))
    {
        Some((index, tail)) => {
            let flat: usize = index.parse().unwrap_or(0);
            let mut seen = 0;
            let mut at = None;
            for (li, l) in localities.iter().enumerate() {
                if flat < seen + l.lb_endpoints.len() {
                    at = Some((li, flat - seen));
                    break;
                }
                seen += l.lb_endpoints.len();
            }
            match (at, tail) {
                (Some((li, _)), ".priority") => format!("endpoints[{li}].priority"),
                (Some((li, _)), ".locality_weight") => {
                    format!("endpoints[{li}].load_balancing_weight")
                }
                (Some((li, ei)), _) => format!("endpoints[{li}].lb_endpoints[{ei}]"),
                (None, _) => String::from("endpoints"),
            }
        }
        None if field == "locality_lb.overprovisioning_factor" => {
            String::from("policy.overprovisioning_factor")
        }
        None => String::from(field),
    };
    Err(invalid(res, &wire_field, p.message.clone()))
}

/// The endpoints of a load assignment in `res` at `base`, and its overprovisioning factor.
/// Endpoints keep their order. A locality named only by its sole endpoint's address (gofe's
/// own per-endpoint form) gives endpoints without locality; any other gives its endpoints its
/// region, zone and sub-zone and, when it differs from the sum of their weights, its weight as
/// their `locality_weight` (used with locality-weighted balancing, as in Envoy). Each
/// locality's priority is its endpoints'. Health: UNKNOWN and HEALTHY take traffic, DRAINING
/// takes none new, UNHEALTHY and TIMEOUT take none and count as unhealthy for priority load and
/// panic mode.
pub(super) fn load_assignment_from_wire(
    c: &endpoint::ClusterLoadAssignment,
    res: &str,
    base: &str,
    addresses: Addresses,
) -> Result<(Vec<EndpointConfig>, u32), ConvertError> {
    let endpoint::ClusterLoadAssignment {
        cluster_name: _,
        endpoints: localities,
        named_endpoints,
        policy,
    } = c;
    Unsupported::new(res, base)
        .set("named_endpoints", named_endpoints)
        .finish()?;
    let mut overprovisioning_factor = gofe_model::DEFAULT_OVERPROVISIONING_FACTOR;
    if let Some(p) = policy {
        let endpoint::cluster_load_assignment::Policy {
            drop_overloads,
            overprovisioning_factor: factor,
            endpoint_stale_after,
            weighted_priority_health,
        } = p;
        Unsupported::new(res, &join(base, "policy"))
            .set("drop_overloads", drop_overloads)
            .set("endpoint_stale_after", endpoint_stale_after)
            .when(
                "weighted_priority_health (gofe counts a priority's health by endpoints)",
                *weighted_priority_health,
            )
            .finish()?;
        if let Some(UInt32Value { value }) = factor {
            if *value == 0 {
                return Err(invalid(
                    res,
                    &join(base, "policy.overprovisioning_factor"),
                    "must be at least 1 (percent)",
                ));
            }
            overprovisioning_factor = *value;
        }
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (li, locality) in localities.iter().enumerate() {
        let lbase = join(base, &format!("endpoints[{li}]"));
        let endpoint::LocalityLbEndpoints {
            locality,
            // Informational (Envoy uses it for nothing but stats and matching).
            metadata: _,
            lb_endpoints,
            load_balancing_weight,
            priority,
            // Not implemented by Envoy either.
            proximity: _,
            lb_config,
        } = locality;
        Unsupported::new(res, &lbase)
            .set("lb_config (LEDS)", lb_config)
            .finish()?;
        let first = out.len();
        for (ei, lb) in lb_endpoints.iter().enumerate() {
            let field = join(&lbase, &format!("lb_endpoints[{ei}]"));
            let mut ep = lb_endpoint_from_wire(lb, res, &field, addresses)?;
            if !seen.insert(ep.address.to_ascii_lowercase()) {
                return Err(invalid(
                    res,
                    &field,
                    format!("duplicate endpoint {}", ep.address),
                ));
            }
            ep.priority = *priority;
            out.push(ep);
        }
        let named = locality.as_ref().map(|l| LocalityConfig {
            region: l.region.clone(),
            zone: l.zone.clone(),
            sub_zone: l.sub_zone.clone(),
        });
        let own = match (&named, &out[first..]) {
            (None, _) => true,
            (Some(l), [only]) => {
                l.region.is_empty() && l.zone.is_empty() && l.sub_zone == only.address
            }
            (Some(l), _) => l.is_empty(),
        };
        if own {
            continue;
        }
        let sum = out[first..]
            .iter()
            .map(|e| e.weight)
            .fold(0u32, u32::saturating_add);
        let weight = match load_balancing_weight {
            Some(UInt32Value { value: 0 }) => {
                return Err(invalid(
                    res,
                    &join(&lbase, "load_balancing_weight"),
                    "must be at least 1",
                ))
            }
            Some(UInt32Value { value }) if *value != sum => Some(*value),
            _ => None,
        };
        for ep in &mut out[first..] {
            ep.locality = named.clone();
            ep.locality_weight = weight;
        }
    }
    Ok((out, overprovisioning_factor))
}

fn lb_endpoint_from_wire(
    lb: &endpoint::LbEndpoint,
    res: &str,
    field: &str,
    addresses: Addresses,
) -> Result<EndpointConfig, ConvertError> {
    let endpoint::LbEndpoint {
        health_status,
        metadata,
        load_balancing_weight,
        host_identifier,
    } = lb;
    let ep = match host_identifier {
        Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(ep)) => ep,
        _ => {
            return Err(invalid(
                res,
                field,
                "needs an endpoint (endpoint_name is not supported)",
            ))
        }
    };
    let endpoint::Endpoint {
        address,
        // Active health checking is refused, so its per-endpoint settings never apply.
        health_check_config: _,
        // Used by host rewriting and health checks, both refused.
        hostname: _,
        additional_addresses,
        // A name for statistics and logs.
        observability_name: _,
    } = ep;
    Unsupported::new(res, &join(field, "endpoint"))
        .set("additional_addresses", additional_addresses)
        .finish()?;
    let afield = join(field, "endpoint.address");
    let address = address_from_wire(address.as_ref(), res, &afield)?;
    check_endpoint_address(&address, addresses, res, &afield)?;
    let mut weight = match load_balancing_weight {
        None => 1,
        Some(UInt32Value { value: 0 }) => {
            return Err(invalid(
                res,
                &join(field, "load_balancing_weight"),
                "must be at least 1",
            ))
        }
        Some(UInt32Value { value }) => *value,
    };
    let mut health = match core::HealthStatus::try_from(*health_status) {
        Ok(core::HealthStatus::Unknown | core::HealthStatus::Healthy) => HealthStatus::Healthy,
        Ok(core::HealthStatus::Draining) => HealthStatus::Draining,
        Ok(core::HealthStatus::Unhealthy | core::HealthStatus::Timeout) => HealthStatus::Unhealthy,
        Ok(core::HealthStatus::Degraded) => {
            return Err(invalid(
                res,
                &join(field, "health_status"),
                "DEGRADED not supported by gofe (it has no degraded tier)",
            ))
        }
        Err(_) => {
            return Err(invalid(
                res,
                &join(field, "health_status"),
                format!("unknown health status {health_status}"),
            ))
        }
    };
    // What only gofe wrote: the exact weight and health behind the Envoy form.
    let gofe = GofeMetadata::of(metadata);
    let mfield = join(field, "metadata");
    if let Some(w) = gofe.u32("weight", res, &mfield)? {
        weight = w;
    }
    match gofe.str("health_status") {
        None => {}
        Some("healthy") => health = HealthStatus::Healthy,
        Some("unhealthy") => health = HealthStatus::Unhealthy,
        Some("draining") => health = HealthStatus::Draining,
        Some(other) => {
            return Err(invalid(
                res,
                &format!("{mfield}.filter_metadata[\"gofe\"].health_status"),
                format!("unknown health status {other:?}"),
            ))
        }
    }
    Ok(EndpointConfig {
        health_status: health,
        ..EndpointConfig::new(address, weight)
    })
}

fn check_endpoint_address(
    address: &str,
    allowed: Addresses,
    res: &str,
    field: &str,
) -> Result<(), ConvertError> {
    let (host, port) = split_host_port(address);
    if port == 0 {
        return Err(invalid(
            res,
            field,
            format!("invalid endpoint address {address:?}: needs a port in 1..=65535"),
        ));
    }
    if address.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let valid_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let dns_name = host.len() <= 253 && host.split('.').all(valid_label);
    match allowed {
        Addresses::Dns if dns_name => Ok(()),
        Addresses::Dns => Err(invalid(
            res,
            field,
            format!("invalid endpoint address {address:?} (an IP address or a DNS name)"),
        )),
        Addresses::Ip => Err(invalid(
            res,
            field,
            format!(
                "invalid endpoint address {address:?}: EDS and STATIC endpoints are IP \
                 addresses (Envoy resolves no names there)"
            ),
        )),
    }
}
