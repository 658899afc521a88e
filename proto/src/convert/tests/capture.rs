//! Capture listeners, tcp_proxy chains and ORIGINAL_DST clusters as Istio writes them, and
//! the fields of them gofe refuses by name.

use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;

use super::*;

/// Istio's `virtualOutbound`: port 15001, `use_original_dst`, the original_dst listener filter
/// and a tcp_proxy to the `PassthroughCluster`.
fn virtual_outbound(proxy: tcp::TcpProxy) -> listener::Listener {
    listener::Listener {
        name: "virtualOutbound".into(),
        address: Some(socket_address("0.0.0.0", 15001)),
        use_original_dst: Some(BoolValue { value: true }),
        listener_filters: vec![listener::ListenerFilter {
            name: ORIGINAL_DST_FILTER_NAME.into(),
            config_type: Some(listener::listener_filter::ConfigType::TypedConfig(to_any(
                &OriginalDst {},
            ))),
            ..Default::default()
        }],
        filter_chains: vec![listener::FilterChain {
            filters: vec![listener::Filter {
                name: TCP_PROXY_FILTER_NAME.into(),
                config_type: Some(listener::filter::ConfigType::TypedConfig(to_any(&proxy))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn passthrough_proxy() -> tcp::TcpProxy {
    tcp::TcpProxy {
        stat_prefix: "PassthroughCluster".into(),
        cluster_specifier: Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(
            "PassthroughCluster".into(),
        )),
        idle_timeout: Some(PbDuration {
            seconds: 600,
            nanos: 0,
        }),
        ..Default::default()
    }
}

fn passthrough_cluster() -> cluster::Cluster {
    use cluster::cluster::{ClusterDiscoveryType, DiscoveryType, LbPolicy};
    cluster::Cluster {
        name: "PassthroughCluster".into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(
            DiscoveryType::OriginalDst as i32,
        )),
        lb_policy: LbPolicy::ClusterProvided as i32,
        connect_timeout: Some(PbDuration {
            seconds: 10,
            nanos: 0,
        }),
        ..Default::default()
    }
}

#[test]
fn istios_virtual_outbound_and_passthrough_cluster_are_read() {
    let l = listener_from_wire(&virtual_outbound(passthrough_proxy())).unwrap();
    let ListenerKind::Socket { address, settings } = &l.kind else {
        panic!("a socket listener")
    };
    assert_eq!(address, "0.0.0.0:15001");
    assert!(settings.use_original_dst && settings.bind_to_port);
    let t = settings.tcp_proxy.as_ref().expect("a tcp listener");
    assert_eq!(t.cluster.as_deref(), Some("PassthroughCluster"));
    assert_eq!(t.stat_prefix.as_deref(), Some("PassthroughCluster"));
    assert_eq!(t.idle_timeout, Duration::from_secs(600));
    let c = cluster_from_wire(&passthrough_cluster()).unwrap();
    assert_eq!(c.config.discovery, gofe_model::DiscoveryType::OriginalDst);
    assert!(c.config.endpoints.is_empty() && c.eds_service_name.is_none());
    assert_eq!(c.config.connect_timeout, Duration::from_secs(10));

    // Assembled, it is a configuration the proxy accepts as it is.
    let mut dynamic = Resources::default();
    dynamic.listeners.insert(l.name.clone(), l);
    dynamic.clusters.insert(c.config.name.clone(), c);
    let config = assemble(&ProxyConfig::default(), &dynamic);
    assert!(gofe_model::validate(&config).is_empty(), "{config:?}");
    let out = &config.listeners[0];
    assert_eq!(out.protocol, "tcp");
    assert!(out.use_original_dst && out.filters.is_empty());
}

#[test]
fn a_virtual_listener_is_bind_to_port_false_and_a_missing_tcp_cluster_is_present_and_empty() {
    let mut proxy = passthrough_proxy();
    proxy.cluster_specifier = Some(tcp::tcp_proxy::ClusterSpecifier::WeightedClusters(
        tcp::tcp_proxy::WeightedCluster {
            clusters: vec![tcp::tcp_proxy::weighted_cluster::ClusterWeight {
                name: "db-v2".into(),
                weight: 3,
                metadata_match: None,
            }],
        },
    ));
    let mut wire = virtual_outbound(proxy);
    wire.name = "10.0.0.9_5432".into();
    wire.address = Some(socket_address("10.0.0.9", 5432));
    wire.use_original_dst = None;
    wire.listener_filters.clear();
    wire.bind_to_port = Some(BoolValue { value: false });
    let l = listener_from_wire(&wire).unwrap();
    let mut dynamic = Resources::default();
    dynamic.listeners.insert(l.name.clone(), l);
    let config = assemble(&ProxyConfig::default(), &dynamic);
    assert!(!config.listeners[0].bind_to_port);
    assert_eq!(config.clusters.len(), 1);
    assert_eq!(config.clusters[0].name, "db-v2");
    assert!(gofe_model::validate(&config).is_empty(), "{config:?}");
    // And back to the wire as it came.
    let again = listener_to_wire(&dynamic.listeners["10.0.0.9_5432"]).unwrap();
    assert_eq!(again.bind_to_port, Some(BoolValue { value: false }));
    assert_eq!(again.use_original_dst, None);
}

#[test]
fn tcp_proxy_fields_gofe_does_not_honour_are_refused_by_name() {
    type Mutation = Box<dyn Fn(&mut tcp::TcpProxy)>;
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "hash_policy",
            Box::new(|p| p.hash_policy = vec![Default::default()]),
        ),
        (
            "tunneling_config",
            Box::new(|p| p.tunneling_config = Some(Default::default())),
        ),
        (
            "max_connect_attempts",
            Box::new(|p| p.max_connect_attempts = u32w(3)),
        ),
        (
            "upstream_idle_timeout",
            Box::new(|p| {
                p.upstream_idle_timeout = Some(PbDuration {
                    seconds: 1,
                    nanos: 0,
                })
            }),
        ),
        (
            "on_demand",
            Box::new(|p| p.on_demand = Some(Default::default())),
        ),
        (
            "max_downstream_connection_duration",
            Box::new(|p| {
                p.max_downstream_connection_duration = Some(PbDuration {
                    seconds: 1,
                    nanos: 0,
                })
            }),
        ),
    ];
    for (want, mutate) in cases {
        let mut p = passthrough_proxy();
        mutate(&mut p);
        let e = listener_from_wire(&virtual_outbound(p))
            .err()
            .unwrap_or_else(|| panic!("{want}: accepted"))
            .to_string();
        assert!(
            e.contains("Listener \"virtualOutbound\"")
                && e.contains(&format!("filter_chains[0].filters[0].typed_config.{want}"))
                && e.contains("not supported by gofe"),
            "{want}: {e}"
        );
    }
    // TLS on a tcp_proxy chain, and a listener filter gofe does not run.
    let mut wire = virtual_outbound(passthrough_proxy());
    wire.filter_chains[0].transport_socket = Some(Default::default());
    let e = listener_from_wire(&wire).unwrap_err().to_string();
    assert!(e.contains("filter_chains[0].transport_socket"), "{e}");
    let mut wire = virtual_outbound(passthrough_proxy());
    wire.listener_filters[0].config_type = Some(
        listener::listener_filter::ConfigType::TypedConfig(Any {
            type_url: "type.googleapis.com/envoy.extensions.filters.listener.proxy_protocol.v3.ProxyProtocol".into(),
            value: Vec::new(),
        }),
    );
    let e = listener_from_wire(&wire).unwrap_err().to_string();
    assert!(e.contains("listener_filters[0]"), "{e}");
    // An ORIGINAL_DST cluster with endpoints or original_dst_lb_config.
    let mut c = passthrough_cluster();
    c.load_assignment = Some(Default::default());
    let e = cluster_from_wire(&c).unwrap_err().to_string();
    assert!(e.contains("load_assignment"), "{e}");
    let mut c = passthrough_cluster();
    c.lb_config = Some(cluster::cluster::LbConfig::OriginalDstLbConfig(
        Default::default(),
    ));
    let e = cluster_from_wire(&c).unwrap_err().to_string();
    assert!(
        e.contains("lb_config") && e.contains("not supported by gofe"),
        "{e}"
    );
}
