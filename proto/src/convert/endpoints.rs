//! Load assignments: endpoints, their weights and health, and gofe's weight 0 (drained).

use super::*;

fn health_name(h: HealthStatus) -> &'static str {
    match h {
        HealthStatus::Healthy => "healthy",
        HealthStatus::Unhealthy => "unhealthy",
        HealthStatus::Draining => "draining",
    }
}

/// The wire form of a load assignment: one locality per endpoint, in order, each with the
/// endpoint's weight both as its `load_balancing_weight` and as the locality's. Envoy balances
/// on endpoint weights; proxyless gRPC balances across localities by locality weight (it ignores
/// endpoint weights), so this layout gives both the same split.
///
/// Weight 0 (gofe's drain) has no Envoy form (weights are at least 1): it is written as weight 1
/// in a locality without weight and, unless the endpoint is unhealthy, as DRAINING, so Envoy
/// and gRPC send it nothing new; `metadata.filter_metadata["gofe"]` keeps the weight (and the
/// health, when DRAINING stands in for `healthy`), so gofe reads back exactly what was sent.
pub fn endpoints_to_wire(e: &EndpointsResource) -> endpoint::ClusterLoadAssignment {
    endpoint::ClusterLoadAssignment {
        cluster_name: e.cluster_name.clone(),
        endpoints: e.endpoints.iter().map(locality_to_wire).collect(),
        ..Default::default()
    }
}

fn locality_to_wire(ep: &EndpointConfig) -> endpoint::LocalityLbEndpoints {
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
    let lb = endpoint::LbEndpoint {
        health_status: wire_health as i32,
        metadata: gofe_metadata(gofe),
        load_balancing_weight: u32v(ep.weight.max(1)),
        host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
            endpoint::Endpoint {
                address: Some(socket_address(host, port)),
                ..Default::default()
            },
        )),
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
    Ok(EndpointsResource {
        cluster_name: c.cluster_name.clone(),
        endpoints: load_assignment_from_wire(c, &res, "", Addresses::Ip)?,
    })
}

/// The endpoints of a load assignment in `res` at `base`. Endpoints keep their order; a
/// locality's own weight is ignored, as Envoy ignores it without locality-weighted balancing
/// (which gofe refuses). Health: UNKNOWN and HEALTHY take traffic, DRAINING takes none new,
/// UNHEALTHY and TIMEOUT take none and count for panic mode.
pub(super) fn load_assignment_from_wire(
    c: &endpoint::ClusterLoadAssignment,
    res: &str,
    base: &str,
    addresses: Addresses,
) -> Result<Vec<EndpointConfig>, ConvertError> {
    let endpoint::ClusterLoadAssignment {
        cluster_name: _,
        endpoints: localities,
        named_endpoints,
        policy,
    } = c;
    Unsupported::new(res, base)
        .set("named_endpoints", named_endpoints)
        .finish()?;
    if let Some(p) = policy {
        let endpoint::cluster_load_assignment::Policy {
            drop_overloads,
            // Spill-over between priorities and localities, which gofe does not have (one
            // priority, no locality weighting).
            overprovisioning_factor: _,
            endpoint_stale_after,
            weighted_priority_health: _,
        } = p;
        Unsupported::new(res, &join(base, "policy"))
            .set("drop_overloads", drop_overloads)
            .set("endpoint_stale_after", endpoint_stale_after)
            .finish()?;
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for (li, locality) in localities.iter().enumerate() {
        let lbase = join(base, &format!("endpoints[{li}]"));
        let endpoint::LocalityLbEndpoints {
            locality: _,
            metadata: _,
            lb_endpoints,
            load_balancing_weight: _,
            priority,
            proximity: _,
            lb_config,
        } = locality;
        Unsupported::new(res, &lbase)
            .when("priority (gofe has no priority failover)", *priority != 0)
            .set("lb_config (LEDS)", lb_config)
            .finish()?;
        for (ei, lb) in lb_endpoints.iter().enumerate() {
            let field = join(&lbase, &format!("lb_endpoints[{ei}]"));
            let ep = lb_endpoint_from_wire(lb, res, &field, addresses)?;
            if !seen.insert(ep.address.to_ascii_lowercase()) {
                return Err(invalid(
                    res,
                    &field,
                    format!("duplicate endpoint {}", ep.address),
                ));
            }
            out.push(ep);
        }
    }
    Ok(out)
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
        address,
        weight,
        health_status: health,
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
