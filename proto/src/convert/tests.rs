use super::*;

mod capture;
mod fuzz;
mod round_trip;
mod route_wire;
mod tls_rbac;
mod upstream_tls;
mod wire;

const SAMPLE: &str = r#"
listeners:
  - name: "public"
    address: "127.0.0.1:8080"
    filters:
      - type: "router"
        config:
          virtual_hosts:
            - name: "api"
              domains: ["api.example.com", "*.api.example.com"]
              routes:
                - match: { prefix: "/v1", headers: [{ name: "x-canary", string_match: { exact: "1" } }] }
                  route: { cluster: "v2", timeout: "2s" }
                - match: { path: "/health" }
                  route: { cluster: "v1" }
                - match: { prefix: "/" }
                  route:
                    weighted_clusters:
                      clusters: [{ name: "v1", weight: 90 }, { name: "v2", weight: 10 }]
clusters:
  - name: "v1"
    lb_policy: "least_request"
    connect_timeout: "250ms"
    endpoints:
      - { address: "10.0.0.1:9000", weight: 3 }
      - { address: "10.0.0.2:9000", weight: 0 }
  - name: "v2"
    http2_protocol_options: {}
    endpoints:
      - { address: "backend.svc:9000" }
"#;

fn sample() -> ProxyConfig {
    gofe_model::parse("sample.yaml", SAMPLE).unwrap()
}

fn u32w(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

fn secs(seconds: i64) -> Option<PbDuration> {
    Some(PbDuration { seconds, nanos: 0 })
}

/// The wire form of a configuration as gofe's control plane serves it: each type's resources
/// encoded to bytes and back, in subscription order.
fn to_xds(config: &ProxyConfig) -> Vec<(ResourceType, Vec<Any>)> {
    let resources = from_proxy_config(config).unwrap();
    ResourceType::ALL
        .into_iter()
        .map(|t| {
            let anys = resources
                .encode(t)
                .unwrap()
                .into_values()
                .map(|a| Any::decode(a.encode_to_vec().as_slice()).unwrap())
                .collect();
            (t, anys)
        })
        .collect()
}

/// What gofe's xDS client makes of it: each type's response taken as the client takes it
/// ([`Resources::accept_response`]), then assembled as the client assembles it.
fn from_xds(xds: &[(ResourceType, Vec<Any>)]) -> ProxyConfig {
    let base = ProxyConfig::default();
    let mut held = Resources::default();
    for (t, anys) in xds {
        let update = held.accept_response(*t, anys, &base);
        assert!(update.refused.is_empty(), "{:?}", update.refused);
        held = update.resources;
    }
    assemble(&base, &held)
}

/// xDS resources are a set keyed by name: the order of listeners and clusters is not carried.
/// Endpoints with a locality travel grouped by priority and locality (in order of first
/// appearance), and a locality weight equal to the sum of the group's weights is the default.
fn canonical(mut c: ProxyConfig) -> ProxyConfig {
    c.listeners.sort_by_key(listener_name);
    c.clusters.sort_by(|a, b| a.name.cmp(&b.name));
    for cluster in &mut c.clusters {
        let eps = std::mem::take(&mut cluster.endpoints);
        let mut out: Vec<EndpointConfig> = Vec::new();
        let mut done = vec![false; eps.len()];
        for i in 0..eps.len() {
            if done[i] {
                continue;
            }
            if eps[i].locality.is_none() {
                done[i] = true;
                out.push(eps[i].clone());
                continue;
            }
            let group: Vec<usize> = (i..eps.len())
                .filter(|&j| {
                    eps[j].locality == eps[i].locality && eps[j].priority == eps[i].priority
                })
                .collect();
            let sum = group
                .iter()
                .map(|&j| eps[j].weight)
                .fold(0u32, u32::saturating_add);
            for j in group {
                done[j] = true;
                let mut e = eps[j].clone();
                if e.locality_weight == Some(sum) {
                    e.locality_weight = None;
                }
                out.push(e);
            }
        }
        cluster.endpoints = out;
    }
    c
}

fn typed<M: Message + Name + Default>(any: &Any) -> M {
    from_any(any).unwrap()
}

fn hcm_of(l: &listener::Listener) -> hcm::HttpConnectionManager {
    let chain = l
        .filter_chains
        .first()
        .or(l.default_filter_chain.as_ref())
        .unwrap();
    let Some(listener::filter::ConfigType::TypedConfig(any)) =
        &chain.filters.last().unwrap().config_type
    else {
        panic!("no typed config")
    };
    typed(any)
}

fn set_hcm(l: &mut listener::Listener, f: impl FnOnce(&mut hcm::HttpConnectionManager)) {
    let mut m = hcm_of(l);
    f(&mut m);
    let chain = l.filter_chains.first_mut().unwrap();
    chain.filters.last_mut().unwrap().config_type =
        Some(listener::filter::ConfigType::TypedConfig(to_any(&m)));
}

fn action_of(r: &route::Route) -> &route::RouteAction {
    match &r.action {
        Some(route::route::Action::Route(a)) => a,
        _ => panic!("not a route action"),
    }
}

fn action_mut(r: &mut route::Route) -> &mut route::RouteAction {
    match &mut r.action {
        Some(route::route::Action::Route(a)) => a,
        _ => panic!("not a route action"),
    }
}

fn sample_wire() -> (
    Resources,
    listener::Listener,
    route::RouteConfiguration,
    cluster::Cluster,
) {
    let r = from_proxy_config(&sample()).unwrap();
    let l = listener_to_wire(&r.listeners["public"]).unwrap();
    let rc = route_to_wire(&r.routes["public"]).unwrap();
    let c = cluster_to_wire(&r.clusters["v1"]).unwrap();
    (r, l, rc, c)
}

fn err<T: std::fmt::Debug>(r: Result<T, ConvertError>) -> String {
    r.unwrap_err().to_string()
}

/// The CLA Envoy's docs would write for cluster v1: one locality per endpoint, the drained one
/// DRAINING with weight 1, and gofe's exact weight beside it.
fn golden_cla_v1() -> endpoint::ClusterLoadAssignment {
    let locality = |host: &str,
                    health: core::HealthStatus,
                    weight: u32,
                    lw: Option<u32>,
                    metadata: Option<core::Metadata>| {
        endpoint::LocalityLbEndpoints {
            locality: Some(core::Locality {
                sub_zone: format!("{host}:9000"),
                ..Default::default()
            }),
            load_balancing_weight: lw.and_then(u32w),
            lb_endpoints: vec![endpoint::LbEndpoint {
                health_status: health as i32,
                metadata,
                load_balancing_weight: u32w(weight),
                host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
                    endpoint::Endpoint {
                        address: Some(socket_address(host, 9000)),
                        ..Default::default()
                    },
                )),
            }],
            ..Default::default()
        }
    };
    let drained = gofe_metadata(vec![
        ("weight", value::Kind::NumberValue(0.0)),
        ("health_status", value::Kind::StringValue("healthy".into())),
    ]);
    endpoint::ClusterLoadAssignment {
        cluster_name: "v1".into(),
        endpoints: vec![
            locality("10.0.0.1", core::HealthStatus::Healthy, 3, Some(3), None),
            locality("10.0.0.2", core::HealthStatus::Draining, 1, None, drained),
        ],
        ..Default::default()
    }
}

fn golden_cluster_v1() -> cluster::Cluster {
    use cluster::cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig};
    use upstream_http::http_protocol_options::explicit_http_config::ProtocolConfig;
    use upstream_http::http_protocol_options::{ExplicitHttpConfig, UpstreamProtocolOptions};
    let options = upstream_http::HttpProtocolOptions {
        common_http_protocol_options: Some(core::HttpProtocolOptions {
            idle_timeout: secs(60),
            ..Default::default()
        }),
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::HttpProtocolOptions(Default::default())),
            },
        )),
        ..Default::default()
    };
    cluster::Cluster {
        name: "v1".into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads_config_source()),
            service_name: String::new(),
        }),
        connect_timeout: Some(PbDuration {
            seconds: 0,
            nanos: 250_000_000,
        }),
        lb_policy: cluster::cluster::LbPolicy::LeastRequest as i32,
        typed_extension_protocol_options: HashMap::from([(
            HTTP_PROTOCOL_OPTIONS_KEY.to_owned(),
            to_any(&options),
        )]),
        ..Default::default()
    }
}

#[test]
fn golden_wire_forms_of_the_sample() {
    let (r, l, rc, c) = sample_wire();
    assert_eq!(endpoints_to_wire(&r.endpoints["v1"]), golden_cla_v1());
    assert_eq!(c, golden_cluster_v1());

    // v2 has a DNS name among its endpoints: EDS carries IP addresses only, so it is a
    // STRICT_DNS cluster with its endpoints inline.
    assert!(!r.endpoints.contains_key("v2"));
    let v2 = cluster_to_wire(&r.clusters["v2"]).unwrap();
    assert_eq!(
        v2.cluster_discovery_type,
        Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::StrictDns as i32
        ))
    );
    let la = v2.load_assignment.as_ref().unwrap();
    assert_eq!(
        la.endpoints[0].locality.as_ref().unwrap().sub_zone,
        "backend.svc:9000"
    );
    let opts = &v2.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS_KEY];
    assert_eq!(
        opts.type_url,
        "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    );

    assert_eq!(l.name, "public");
    assert_eq!(l.address, Some(socket_address("127.0.0.1", 8080)));
    let filter = l.filter_chains[0].filters.last().unwrap();
    assert_eq!(filter.name, HCM_FILTER_NAME);
    let m = hcm_of(&l);
    let Some(hcm::http_connection_manager::RouteSpecifier::Rds(rds)) = &m.route_specifier else {
        panic!("not rds")
    };
    assert_eq!(rds.route_config_name, "public");
    assert_eq!(rds.config_source, Some(ads_config_source()));
    let names: Vec<&str> = m.http_filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            FAULT_FILTER_NAME,
            LOCAL_RATELIMIT_FILTER_NAME,
            BUFFER_FILTER_NAME,
            ROUTER_FILTER_NAME
        ]
    );
    assert!(!m.http_filters[0].disabled, "empty: routes configure it");
    assert!(
        !m.http_filters[1].disabled,
        "no bucket: routes bring theirs"
    );
    assert!(m.http_filters[2].disabled, "enabled per route only");
    assert_eq!(m.max_request_headers_kb, u32w(60));
    assert_eq!(m.request_headers_timeout, secs(10));
    assert_eq!(
        m.common_http_protocol_options
            .as_ref()
            .unwrap()
            .idle_timeout,
        secs(3600)
    );

    let vh = &rc.virtual_hosts[0];
    assert_eq!(vh.domains, ["api.example.com", "*.api.example.com"]);
    assert!(rc.ignore_port_in_host_matching, "no domain has a port");
    assert_eq!(action_of(&vh.routes[0]).timeout, secs(2));
    let a = action_of(&vh.routes[2]);
    let Some(route::route_action::ClusterSpecifier::WeightedClusters(wc)) = &a.cluster_specifier
    else {
        panic!()
    };
    let weights: Vec<(&str, u32)> = wc
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), c.weight.unwrap().value))
        .collect();
    assert_eq!(weights, [("v1", 90), ("v2", 10)]);
    assert_eq!(
        a.timeout, None,
        "default timeout is left to Envoy's default"
    );
}

#[test]
fn golden_wire_forms_decode_to_gofe_types() {
    let c = cluster_from_wire(&golden_cluster_v1()).unwrap();
    assert_eq!(c.eds_service_name.as_deref(), Some("v1"));
    assert_eq!(c.config.lb_policy, LbPolicy::LeastRequest);
    assert_eq!(c.config.connect_timeout, Duration::from_millis(250));
    assert_eq!(c.config.idle_timeout, Duration::from_secs(60));
    let e = endpoints_from_wire(&golden_cla_v1()).unwrap();
    let got: Vec<(&str, u32, HealthStatus)> = e
        .endpoints
        .iter()
        .map(|e| (e.address.as_str(), e.weight, e.health_status))
        .collect();
    assert_eq!(
        got,
        [
            ("10.0.0.1:9000", 3, HealthStatus::Healthy),
            ("10.0.0.2:9000", 0, HealthStatus::Healthy)
        ]
    );
}

#[test]
fn sample_round_trips_through_the_wire_bytes() {
    let config = sample();
    let back = from_xds(&to_xds(&config));
    assert!(gofe_model::validate(&back).is_empty());
    assert_eq!(canonical(back), canonical(config));
}

#[test]
fn api_listener_for_proxyless_grpc() {
    let l = ListenerResource {
        name: "greeter".into(),
        kind: ListenerKind::Api,
        routes: RouteSource::Rds("greeter-routes".into()),
    };
    let wire = listener_to_wire(&l).unwrap();
    assert!(wire.address.is_none() && wire.filter_chains.is_empty());
    let Some(any) = wire
        .api_listener
        .as_ref()
        .and_then(|a| a.api_listener.as_ref())
    else {
        panic!("no api listener")
    };
    let m: hcm::HttpConnectionManager = typed(any);
    assert_eq!(
        m.http_filters.len(),
        1,
        "proxyless clients get the router only"
    );
    let back = listener_from_wire(&wire).unwrap();
    assert_eq!(back.kind, ListenerKind::Api);
    assert!(matches!(&back.routes, RouteSource::Rds(n) if n == "greeter-routes"));
    // The proxy does not bind API listeners.
    let mut r = Resources::default();
    r.listeners.insert("greeter".into(), back);
    assert!(assemble(&ProxyConfig::default(), &r).listeners.is_empty());
}

#[test]
fn assemble_waits_for_rds_and_fills_unknown_clusters() {
    let mut r = from_proxy_config(&sample()).unwrap();
    r.routes.clear();
    let out = assemble(&ProxyConfig::default(), &r);
    assert!(out.listeners.is_empty(), "listener waits for its routes");
    let mut r = from_proxy_config(&sample()).unwrap();
    r.clusters.remove("v2");
    r.endpoints.clear();
    let out = assemble(&ProxyConfig::default(), &r);
    assert!(gofe_model::validate(&out).is_empty());
    let v2 = out.clusters.iter().find(|c| c.name == "v2").unwrap();
    assert!(v2.endpoints.is_empty());
    let v1 = out.clusters.iter().find(|c| c.name == "v1").unwrap();
    assert!(v1.endpoints.is_empty(), "EDS not received yet");
}

#[test]
fn a_route_configuration_refused_on_first_arrival_serves_its_listener_with_no_routes() {
    let base = ProxyConfig::default();
    let xds = to_xds(&sample());
    let mut held = Resources::default();
    for (t, anys) in xds.iter().filter(|(t, _)| *t != ResourceType::Route) {
        held = held.accept_response(*t, anys, &base).resources;
    }
    assert!(
        assemble(&base, &held).listeners.is_empty(),
        "still waiting for RDS"
    );
    // The route configuration arrives with a field gofe refuses.
    let (_, routes) = xds.iter().find(|(t, _)| *t == ResourceType::Route).unwrap();
    let mut bad: route::RouteConfiguration = from_any(&routes[0]).unwrap();
    bad.vhds = Some(Default::default());
    let update = held.accept_response(ResourceType::Route, &[to_any(&bad)], &base);
    assert_eq!(update.refused.len(), 1, "{:?}", update.refused);
    held = update.resources;
    assert!(held.refused_routes.contains("public"));
    let out = assemble(&base, &held);
    assert_eq!(out.listeners.len(), 1, "bound, as Envoy warms it");
    assert!(out.listeners[0].filters[0].config.virtual_hosts.is_empty());
    assert!(gofe_model::validate(&out).is_empty());
    // A valid version then replaces the empty table.
    held = held
        .accept_response(ResourceType::Route, routes, &base)
        .resources;
    assert!(held.refused_routes.is_empty());
    let out = assemble(&base, &held);
    assert_eq!(out, from_xds(&xds));
    // Refused again later, the valid version is kept (no empty table).
    held = held
        .accept_response(ResourceType::Route, &[to_any(&bad)], &base)
        .resources;
    assert!(held.refused_routes.is_empty());
    assert_eq!(assemble(&base, &held), from_xds(&xds));
}

#[test]
fn type_urls_match_envoys() {
    assert_eq!(
        ResourceType::Cluster.type_url(),
        cluster::Cluster::type_url()
    );
    assert_eq!(
        ResourceType::Listener.type_url(),
        listener::Listener::type_url()
    );
    assert_eq!(
        ResourceType::Route.type_url(),
        route::RouteConfiguration::type_url()
    );
    assert_eq!(
        ResourceType::Endpoints.type_url(),
        endpoint::ClusterLoadAssignment::type_url()
    );
}

#[test]
fn garbage_and_foreign_types_are_refused() {
    // Garbage bytes are a decode error, not a panic.
    let any = Any {
        type_url: ResourceType::Cluster.type_url().into(),
        value: vec![0xff, 0xff, 0xff],
    };
    assert!(matches!(
        decode_resource(ResourceType::Cluster, &any),
        Err(ConvertError::Decode { .. })
    ));
    // A resource of another type in a CDS response.
    let any = to_any(&golden_cla_v1());
    assert!(matches!(
        decode_resource(ResourceType::Cluster, &any),
        Err(ConvertError::UnexpectedType(_))
    ));
}
