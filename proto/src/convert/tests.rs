use super::*;

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

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).unwrap()
}

fn u32v(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

/// The CLA Envoy's docs would write for cluster v1: one locality per endpoint.
fn golden_cla_v1() -> endpoint::ClusterLoadAssignment {
    let locality = |host: &str, health: core::HealthStatus, weight: u32, lw: Option<u32>| {
        endpoint::LocalityLbEndpoints {
            locality: Some(core::Locality {
                sub_zone: format!("{host}:9000"),
                ..Default::default()
            }),
            load_balancing_weight: lw.and_then(u32v),
            lb_endpoints: vec![endpoint::LbEndpoint {
                health_status: health as i32,
                load_balancing_weight: u32v(weight),
                host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
                    endpoint::Endpoint {
                        address: Some(socket_address(host, 9000)),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            }],
            ..Default::default()
        }
    };
    endpoint::ClusterLoadAssignment {
        cluster_name: "v1".into(),
        endpoints: vec![
            locality("10.0.0.1", core::HealthStatus::Healthy, 3, Some(3)),
            locality("10.0.0.2", core::HealthStatus::Draining, 1, None),
        ],
        ..Default::default()
    }
}

fn golden_cluster_v1() -> cluster::Cluster {
    use cluster::cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig};
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
        ..Default::default()
    }
}

#[test]
fn golden_wire_forms_of_the_sample() {
    let r = from_proxy_config(&sample()).unwrap();
    assert_eq!(endpoints_to_wire(&r.endpoints["v1"]), golden_cla_v1());
    assert_eq!(cluster_to_wire(&r.clusters["v1"]), golden_cluster_v1());

    let v2 = cluster_to_wire(&r.clusters["v2"]);
    let opts = &v2.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS_KEY];
    assert_eq!(
        opts.type_url,
        "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
    );

    let l = listener_to_wire(&r.listeners["public"]).unwrap();
    assert_eq!(l.name, "public");
    assert_eq!(l.address, Some(socket_address("127.0.0.1", 8080)));
    let filter = &l.filter_chains[0].filters[0];
    assert_eq!(filter.name, HCM_FILTER_NAME);
    let Some(listener::filter::ConfigType::TypedConfig(any)) = &filter.config_type else {
        panic!("no typed config")
    };
    assert_eq!(
        any.type_url,
        "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
    );
    let m: hcm::HttpConnectionManager = from_any(any).unwrap();
    let Some(hcm::http_connection_manager::RouteSpecifier::Rds(rds)) = &m.route_specifier else {
        panic!("not rds")
    };
    assert_eq!(rds.route_config_name, "public");
    assert_eq!(rds.config_source, Some(ads_config_source()));
    assert_eq!(m.http_filters[0].name, ROUTER_FILTER_NAME);

    let rc = route_to_wire(&r.routes["public"]).unwrap();
    let vh = &rc.virtual_hosts[0];
    assert_eq!(vh.domains, ["api.example.com", "*.api.example.com"]);
    let Some(route::route::Action::Route(a)) = &vh.routes[0].action else {
        panic!()
    };
    assert_eq!(
        a.timeout,
        Some(PbDuration {
            seconds: 2,
            nanos: 0
        })
    );
    let Some(route::route::Action::Route(a)) = &vh.routes[2].action else {
        panic!()
    };
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
    let e = endpoints_from_wire(&golden_cla_v1()).unwrap();
    let got: Vec<(&str, u32)> = e
        .endpoints
        .iter()
        .map(|e| (e.address.as_str(), e.weight))
        .collect();
    assert_eq!(got, [("10.0.0.1:9000", 3), ("10.0.0.2:9000", 0)]);
}

#[test]
fn sample_round_trips_through_the_wire_bytes() {
    let config = sample();
    let resources = from_proxy_config(&config).unwrap();
    let mut decoded = Resources::default();
    for t in ResourceType::ALL {
        for (name, any) in resources.encode(t).unwrap() {
            let bytes = any.encode_to_vec();
            let any = Any::decode(bytes.as_slice()).unwrap();
            let r = decode_resource(t, &any).unwrap();
            assert_eq!(r.name(), name);
            match r {
                DecodedResource::Listener(l) => drop(decoded.listeners.insert(name, l)),
                DecodedResource::Route(r) => drop(decoded.routes.insert(name, r)),
                DecodedResource::Cluster(c) => drop(decoded.clusters.insert(name, c)),
                DecodedResource::Endpoints(e) => drop(decoded.endpoints.insert(name, e)),
            }
        }
    }
    let back = assemble(&ProxyConfig::default(), &decoded);
    assert!(gofe_model::validate(&back).is_empty());
    // Weight 0 travels as DRAINING and comes back as 0; everything else is exact.
    assert_eq!(json(&back), json(&config));
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
    let back = listener_from_wire(&wire).unwrap();
    assert_eq!(back.kind, ListenerKind::Api);
    assert!(matches!(&back.routes, RouteSource::Rds(n) if n == "greeter-routes"));
    // The proxy does not bind API listeners.
    let mut r = Resources::default();
    r.listeners.insert("greeter".into(), back);
    assert!(assemble(&ProxyConfig::default(), &r).listeners.is_empty());
}

#[test]
fn circuit_breakers_and_outlier_detection_round_trip() {
    let mut c = from_proxy_config(&sample()).unwrap().clusters["v1"].clone();
    c.circuit_breakers = Some(CircuitBreakerThresholds {
        max_connections: Some(100),
        max_pending_requests: Some(10),
        max_requests: None,
        max_retries: Some(3),
    });
    c.outlier_detection = Some(OutlierDetectionSettings {
        consecutive_5xx: Some(7),
        consecutive_gateway_failure: None,
        interval: Some(Duration::from_secs(5)),
        base_ejection_time: Some(Duration::from_secs(30)),
        max_ejection_time: Some(Duration::from_secs(300)),
        max_ejection_percent: Some(50),
        failure_percentage_threshold: Some(85),
        failure_percentage_request_volume: Some(20),
    });
    let wire = cluster_to_wire(&c);
    let t = &wire.circuit_breakers.as_ref().unwrap().thresholds[0];
    assert_eq!(t.max_connections, u32v(100));
    assert_eq!(t.max_requests, None);
    let o = wire.outlier_detection.as_ref().unwrap();
    assert_eq!(o.consecutive_5xx, u32v(7));
    assert_eq!(
        o.interval,
        Some(PbDuration {
            seconds: 5,
            nanos: 0
        })
    );
    let back = cluster_from_wire(&wire).unwrap();
    assert_eq!(back.circuit_breakers, c.circuit_breakers);
    assert_eq!(back.outlier_detection, c.outlier_detection);
}

#[test]
fn unsupported_and_invalid_resources_are_refused_with_a_reason() {
    let mut c = golden_cluster_v1();
    c.lb_policy = cluster::cluster::LbPolicy::Maglev as i32;
    let e = cluster_from_wire(&c).unwrap_err().to_string();
    assert!(e.contains("Cluster \"v1\": lb_policy"), "{e}");

    let mut cla = golden_cla_v1();
    cla.endpoints[0].lb_endpoints[0].load_balancing_weight = u32v(0);
    let e = endpoints_from_wire(&cla).unwrap_err().to_string();
    assert!(
        e.contains("load_balancing_weight: must be at least 1"),
        "{e}"
    );

    let mut cla = golden_cla_v1();
    cla.endpoints[0].lb_endpoints[0].host_identifier = None;
    assert!(endpoints_from_wire(&cla).is_err());

    let mut rc = route_to_wire(&from_proxy_config(&sample()).unwrap().routes["public"]).unwrap();
    rc.virtual_hosts[0].routes[0].action =
        Some(route::route::Action::DirectResponse(Default::default()));
    let e = route_from_wire(&rc).unwrap_err().to_string();
    assert!(e.contains("virtual_hosts[0].routes[0]"), "{e}");

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
