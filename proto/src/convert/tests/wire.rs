//! Envoy's semantics over xDS: what gofe reads from messages other control planes write, what it
//! refuses by name, and which defaults it takes.

use envoy_types::pb::envoy::config::cluster::v3::circuit_breakers::thresholds::RetryBudget;
use envoy_types::pb::envoy::r#type::v3::Percent;

use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;

use super::*;

fn route_action(rc: &mut route::RouteConfiguration) -> &mut route::RouteAction {
    action_mut(&mut rc.virtual_hosts[0].routes[0])
}

fn any_of<M: Message + Name>(m: &M) -> Any {
    to_any(m)
}

/// A RouteConfiguration naming `clusters`, one route each.
fn routes_naming(name: &str, clusters: &[&str]) -> route::RouteConfiguration {
    route::RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![route::VirtualHost {
            name: "all".into(),
            domains: vec!["*".into()],
            routes: clusters
                .iter()
                .map(|c| route::Route {
                    r#match: Some(route::RouteMatch {
                        path_specifier: Some(route::route_match::PathSpecifier::Prefix(format!(
                            "/{c}"
                        ))),
                        ..Default::default()
                    }),
                    action: Some(route::route::Action::Route(route::RouteAction {
                        cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(
                            (*c).into(),
                        )),
                        ..Default::default()
                    })),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn retry_policy_is_read_with_envoy_defaults() {
    let (_, _, mut rc, _) = sample_wire();
    route_action(&mut rc).retry_policy = Some(route::RetryPolicy {
        retry_on: "5xx, reset".into(),
        per_try_timeout: Some(PbDuration {
            seconds: 0,
            nanos: 300_000_000,
        }),
        retry_back_off: Some(route::retry_policy::RetryBackOff {
            base_interval: Some(PbDuration {
                seconds: 0,
                nanos: 25_000_000,
            }),
            max_interval: None,
        }),
        host_selection_retry_max_attempts: 3,
        ..Default::default()
    });
    let r = route_from_wire(&rc).unwrap();
    let p = r.router.virtual_hosts[0].routes[0]
        .route
        .retry_policy
        .clone()
        .unwrap();
    assert_eq!(p.retry_on, "5xx, reset");
    assert_eq!(p.num_retries, 1, "Envoy's default");
    assert_eq!(p.per_try_timeout, Some(Duration::from_millis(300)));

    // gofe's own form carries a previous-hosts predicate and reads back.
    let mut c = sample();
    c.listeners[0].filters[0].config.virtual_hosts[0].routes[0]
        .route
        .retry_policy = Some(p.clone());
    let back = route_to_wire(&from_proxy_config(&c).unwrap().routes["public"]).unwrap();
    let wire = action_of(&back.virtual_hosts[0].routes[0])
        .retry_policy
        .clone()
        .unwrap();
    assert_eq!(wire.retry_host_predicate[0].name, PREVIOUS_HOSTS_PREDICATE);
    assert_eq!(wire.num_retries, u32w(1));

    // An empty retry_on retries nothing: no policy.
    route_action(&mut rc).retry_policy = Some(route::RetryPolicy::default());
    let r = route_from_wire(&rc).unwrap();
    assert!(r.router.virtual_hosts[0].routes[0]
        .route
        .retry_policy
        .is_none());
}

#[test]
fn a_virtual_hosts_retry_policy_applies_to_its_routes_without_one() {
    let (_, _, mut rc, _) = sample_wire();
    rc.virtual_hosts[0].retry_policy = Some(route::RetryPolicy {
        retry_on: "gateway-error".into(),
        num_retries: u32w(4),
        ..Default::default()
    });
    route_action(&mut rc).retry_policy = Some(route::RetryPolicy {
        retry_on: "reset".into(),
        ..Default::default()
    });
    let r = route_from_wire(&rc).unwrap();
    let routes = &r.router.virtual_hosts[0].routes;
    let own = routes[0].route.retry_policy.as_ref().unwrap();
    assert_eq!((own.retry_on.as_str(), own.num_retries), ("reset", 1));
    let inherited = routes[1].route.retry_policy.as_ref().unwrap();
    assert_eq!(
        (inherited.retry_on.as_str(), inherited.num_retries),
        ("gateway-error", 4)
    );
}

#[test]
fn unsupported_retry_fields_are_refused_by_name() {
    let cases: Vec<(&str, route::RetryPolicy)> = vec![
        (
            "retry_on: \"retriable-4xx\" not supported by gofe",
            route::RetryPolicy {
                retry_on: "5xx,retriable-4xx".into(),
                ..Default::default()
            },
        ),
        (
            "retry_policy.retriable_status_codes: not supported by gofe",
            route::RetryPolicy {
                retry_on: "5xx".into(),
                retriable_status_codes: vec![409],
                ..Default::default()
            },
        ),
        (
            "retry_policy.per_try_idle_timeout: not supported by gofe",
            route::RetryPolicy {
                retry_on: "5xx".into(),
                per_try_idle_timeout: secs(1),
                ..Default::default()
            },
        ),
        (
            "retry_policy.retry_back_off",
            route::RetryPolicy {
                retry_on: "5xx".into(),
                retry_back_off: Some(route::retry_policy::RetryBackOff {
                    base_interval: secs(1),
                    max_interval: None,
                }),
                ..Default::default()
            },
        ),
        (
            "retry_policy.retry_host_predicate",
            route::RetryPolicy {
                retry_on: "5xx".into(),
                retry_host_predicate: vec![route::retry_policy::RetryHostPredicate {
                    name: "envoy.retry_host_predicates.omit_canary_hosts".into(),
                    config_type: None,
                }],
                ..Default::default()
            },
        ),
    ];
    for (want, policy) in cases {
        let (_, _, mut rc, _) = sample_wire();
        route_action(&mut rc).retry_policy = Some(policy);
        let e = err(route_from_wire(&rc));
        assert!(
            e.starts_with("RouteConfiguration \"public\": virtual_hosts[0].routes[0].route."),
            "{e}"
        );
        assert!(e.contains(want), "{want}: {e}");
    }
}

#[test]
fn retry_budget_is_read_and_its_interval_refused() {
    let (_, _, _, mut c) = sample_wire();
    c.circuit_breakers = Some(cluster::CircuitBreakers {
        thresholds: vec![
            cluster::circuit_breakers::Thresholds {
                max_retries: u32w(7),
                retry_budget: Some(RetryBudget {
                    budget_percent: Some(Percent { value: 12.5 }),
                    min_retry_concurrency: None,
                    budget_interval: None,
                }),
                ..Default::default()
            },
            // HIGH priority: no gofe route can use it, so it is accepted and unused.
            cluster::circuit_breakers::Thresholds {
                priority: core::RoutingPriority::High as i32,
                max_requests: u32w(1),
                ..Default::default()
            },
        ],
        ..Default::default()
    });
    let r = cluster_from_wire(&c).unwrap();
    let cb = &r.config.circuit_breakers;
    assert_eq!(cb.max_retries, 7);
    assert_eq!(
        cb.max_requests, 1024,
        "the HIGH threshold is not the default's"
    );
    let budget = cb.retry_budget.as_ref().unwrap();
    assert_eq!(budget.budget_percent, 12.5);
    assert_eq!(budget.min_retry_concurrency, 3, "Envoy's default");

    let t = &mut c.circuit_breakers.as_mut().unwrap().thresholds[0];
    t.retry_budget.as_mut().unwrap().budget_interval = secs(1);
    let e = err(cluster_from_wire(&c));
    assert!(
        e.contains("circuit_breakers.thresholds[0].retry_budget.budget_interval: not supported"),
        "{e}"
    );
}

#[test]
fn domains_with_ports_are_accepted_and_bad_ones_named_by_envoy_path() {
    let (_, _, mut rc, _) = sample_wire();
    rc.virtual_hosts[0].domains = vec![
        "svc:9080".into(),
        "db.ingress.*:8080".into(),
        "*.mesh:15001".into(),
        "a*b".into(),
    ];
    let r = route_from_wire(&rc).unwrap();
    assert_eq!(r.router.virtual_hosts[0].domains.len(), 4);

    rc.virtual_hosts[0].domains = vec!["api.example.com".into(), "exa mple.com".into()];
    let e = err(route_from_wire(&rc));
    assert!(
        e.starts_with("RouteConfiguration \"public\": virtual_hosts[0].domains[1]: invalid domain"),
        "{e}"
    );
    // Inside a listener's inline route configuration, the path says so.
    let (_, mut l, _, _) = sample_wire();
    rc.virtual_hosts[0].domains = vec!["*".into(), "*".into()];
    set_hcm(&mut l, |m| {
        m.route_specifier = Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(
            rc.clone(),
        ))
    });
    let e = err(listener_from_wire(&l));
    assert!(
        e.starts_with(
            "Listener \"public\": filter_chains[0].filters[0].typed_config.route_config.\
             virtual_hosts[0].domains[1]: domain \"*\" is already served"
        ),
        "{e}"
    );
}

#[test]
fn a_listener_whose_one_chain_is_the_default_chain_is_accepted() {
    let (_, mut l, _, _) = sample_wire();
    l.default_filter_chain = Some(l.filter_chains.remove(0));
    let r = listener_from_wire(&l).unwrap();
    assert!(matches!(&r.kind, ListenerKind::Socket { address, .. } if address == "127.0.0.1:8080"));
    // A chain and the default chain: the chain (matching every connection) and the default.
    l.filter_chains
        .push(l.default_filter_chain.clone().unwrap());
    let r = listener_from_wire(&l).unwrap();
    let ListenerKind::Socket { settings, .. } = &r.kind else {
        panic!()
    };
    assert!(settings.default_chain);
    assert_eq!(settings.filter_chains.len(), 1);
    // No chain at all is refused.
    l.filter_chains.clear();
    l.default_filter_chain = None;
    assert!(err(listener_from_wire(&l)).contains("filter_chains: needs a filter chain"));
}

/// Each field gofe does not honour, set to a non-default value, is refused by its path.
#[test]
fn fields_gofe_does_not_honour_are_refused_by_name() {
    use hcm::http_connection_manager::{PathWithEscapedSlashesAction, UpgradeConfig};
    type Case = (&'static str, Box<dyn Fn(&mut Wire)>);
    let cases: Vec<Case> = vec![
        (
            "virtual_hosts[0].routes[0].match.grpc",
            Box::new(|w| {
                w.rc.virtual_hosts[0].routes[0]
                    .r#match
                    .as_mut()
                    .unwrap()
                    .grpc = Some(Default::default())
            }),
        ),
        (
            "internal_only_headers",
            Box::new(move |w| w.rc.internal_only_headers = vec!["x-internal".into()]),
        ),
        (
            "virtual_hosts[0].routes[0].route.upgrade_configs",
            Box::new(|w| {
                route_action(&mut w.rc).upgrade_configs = vec![Default::default()];
            }),
        ),
        (
            "typed_config.normalize_path",
            Box::new(|w| {
                set_hcm(&mut w.l, |m| {
                    m.normalize_path = Some(BoolValue { value: true })
                })
            }),
        ),
        (
            "typed_config.merge_slashes",
            Box::new(|w| set_hcm(&mut w.l, |m| m.merge_slashes = true)),
        ),
        (
            "typed_config.path_with_escaped_slashes_action",
            Box::new(|w| {
                set_hcm(&mut w.l, |m| {
                    m.path_with_escaped_slashes_action =
                        PathWithEscapedSlashesAction::UnescapeAndRedirect as i32
                })
            }),
        ),
        (
            "typed_config.common_http_protocol_options.headers_with_underscores_action",
            Box::new(|w| {
                set_hcm(&mut w.l, |m| {
                    m.common_http_protocol_options
                        .as_mut()
                        .unwrap()
                        .headers_with_underscores_action =
                        core::http_protocol_options::HeadersWithUnderscoresAction::RejectRequest
                            as i32
                })
            }),
        ),
        (
            "typed_config.common_http_protocol_options.max_requests_per_connection",
            Box::new(|w| {
                set_hcm(&mut w.l, |m| {
                    m.common_http_protocol_options
                        .as_mut()
                        .unwrap()
                        .max_requests_per_connection = u32w(100)
                })
            }),
        ),
        (
            "typed_config.upgrade_configs",
            Box::new(|w| {
                set_hcm(&mut w.l, |m| {
                    m.upgrade_configs = vec![UpgradeConfig {
                        upgrade_type: "websocket".into(),
                        ..Default::default()
                    }]
                })
            }),
        ),
        (
            "typed_config.local_reply_config",
            Box::new(|w| {
                set_hcm(&mut w.l, |m| {
                    m.local_reply_config = Some(Default::default())
                })
            }),
        ),
        (
            "typed_config.stream_idle_timeout",
            Box::new(|w| set_hcm(&mut w.l, |m| m.stream_idle_timeout = secs(300))),
        ),
        (
            "Listener \"public\": transparent",
            Box::new(|w| w.l.transparent = Some(BoolValue { value: true })),
        ),
        (
            "common_lb_config.close_connections_on_host_set_change",
            Box::new(|w| {
                w.c.common_lb_config = Some(cluster::cluster::CommonLbConfig {
                    close_connections_on_host_set_change: true,
                    ..Default::default()
                })
            }),
        ),
        (
            "common_lb_config.locality_config_specifier.zone_aware_lb_config",
            Box::new(|w| {
                w.c.common_lb_config = Some(cluster::cluster::CommonLbConfig {
                    locality_config_specifier: Some(
                        cluster::cluster::common_lb_config::LocalityConfigSpecifier::ZoneAwareLbConfig(
                            Default::default(),
                        ),
                    ),
                    ..Default::default()
                })
            }),
        ),
        (
            "common_lb_config.update_merge_window",
            Box::new(|w| {
                w.c.common_lb_config = Some(cluster::cluster::CommonLbConfig {
                    update_merge_window: secs(5),
                    ..Default::default()
                })
            }),
        ),
        (
            "Cluster \"v1\": max_requests_per_connection",
            Box::new(|w| {
                #[allow(deprecated)]
                {
                    w.c.max_requests_per_connection = u32w(10);
                }
            }),
        ),
        (
            "common_http_protocol_options.max_requests_per_connection",
            Box::new(|w| {
                let any =
                    w.c.typed_extension_protocol_options
                        .get_mut(HTTP_PROTOCOL_OPTIONS_KEY)
                        .unwrap();
                let mut o: upstream_http::HttpProtocolOptions = typed(any);
                o.common_http_protocol_options
                    .as_mut()
                    .unwrap()
                    .max_requests_per_connection = u32w(10);
                *any = to_any(&o);
            }),
        ),
        (
            "health_checks",
            Box::new(|w| w.c.health_checks = vec![Default::default()]),
        ),
        (
            "lb_config",
            Box::new(|w| {
                w.c.lb_config = Some(cluster::cluster::LbConfig::LeastRequestLbConfig(
                    Default::default(),
                ))
            }),
        ),
    ];
    for (want, mutate) in cases {
        let mut w = Wire::sample();
        mutate(&mut w);
        let e = w
            .first_error()
            .unwrap_or_else(|| panic!("{want}: accepted"));
        assert!(e.contains(want), "{want}: {e}");
        assert!(e.contains("not supported by gofe"), "{want}: {e}");
    }
}

/// The sample's listener, routes and cluster in wire form, to mutate.
struct Wire {
    l: listener::Listener,
    rc: route::RouteConfiguration,
    c: cluster::Cluster,
}

impl Wire {
    fn sample() -> Wire {
        let (_, l, rc, c) = sample_wire();
        Wire { l, rc, c }
    }

    fn first_error(&self) -> Option<String> {
        listener_from_wire(&self.l)
            .err()
            .or_else(|| route_from_wire(&self.rc).err())
            .or_else(|| cluster_from_wire(&self.c).err())
            .map(|e| e.to_string())
    }
}

#[test]
fn default_values_written_out_are_accepted() {
    use hcm::http_connection_manager::PathWithEscapedSlashesAction;
    let mut w = Wire::sample();
    set_hcm(&mut w.l, |m| {
        m.normalize_path = Some(BoolValue { value: false });
        m.merge_slashes = false;
        m.path_with_escaped_slashes_action = PathWithEscapedSlashesAction::KeepUnchanged as i32;
        m.generate_request_id = Some(BoolValue { value: true });
        m.stream_idle_timeout = secs(0);
        m.use_remote_address = Some(BoolValue { value: false });
        m.strip_port_mode =
            Some(hcm::http_connection_manager::StripPortMode::StripAnyHostPort(false));
    });
    w.l.bind_to_port = Some(BoolValue { value: true });
    w.rc.virtual_hosts[0].routes[0]
        .r#match
        .as_mut()
        .unwrap()
        .case_sensitive = Some(BoolValue { value: true });
    w.c.common_lb_config = Some(cluster::cluster::CommonLbConfig {
        healthy_panic_threshold: Some(Percent { value: 50.0 }),
        update_merge_window: secs(1),
        ..Default::default()
    });
    w.c.outlier_detection = Some(cluster::OutlierDetection {
        enforcing_consecutive_5xx: u32w(100),
        enforcing_failure_percentage: u32w(0),
        split_external_local_origin_errors: false,
        // Only used with split_external_local_origin_errors.
        consecutive_local_origin_failure: u32w(3),
        ..Default::default()
    });
    assert_eq!(w.first_error(), None);
}

#[test]
fn outlier_detection_left_unset_takes_envoys_defaults() {
    let (_, _, _, mut c) = sample_wire();
    c.outlier_detection = Some(cluster::OutlierDetection::default());
    let o = cluster_from_wire(&c)
        .unwrap()
        .config
        .outlier_detection
        .unwrap();
    assert_eq!(o.base_ejection_time, Duration::from_secs(30));
    assert_eq!(o.interval, Duration::from_secs(10));
    assert_eq!(o.max_ejection_time, Duration::from_secs(300));
    assert_eq!(o.max_ejection_percent, 10);
    assert_eq!(o.consecutive_5xx, 5);
    assert_eq!(
        o.consecutive_gateway_failure, 0,
        "enforcing_consecutive_gateway_failure defaults to 0"
    );
    assert!(
        o.failure_percentage_threshold > 100,
        "enforcing_failure_percentage defaults to 0: off"
    );
    assert_eq!(o.failure_percentage_request_volume, 50);
    assert_eq!(o.half_open_trial_requests, 1);

    // enforcing_* at 0 turns a rule off, at 100 on.
    c.outlier_detection = Some(cluster::OutlierDetection {
        enforcing_consecutive_5xx: u32w(0),
        enforcing_consecutive_gateway_failure: u32w(100),
        enforcing_failure_percentage: u32w(100),
        failure_percentage_minimum_hosts: u32w(0),
        ..Default::default()
    });
    let o = cluster_from_wire(&c)
        .unwrap()
        .config
        .outlier_detection
        .unwrap();
    assert_eq!(o.consecutive_5xx, 0);
    assert_eq!(o.consecutive_gateway_failure, 5);
    assert_eq!(o.failure_percentage_threshold, 85);

    let refused: Vec<(&str, cluster::OutlierDetection)> = vec![
        (
            "outlier_detection.enforcing_consecutive_5xx: 50 not supported by gofe",
            cluster::OutlierDetection {
                enforcing_consecutive_5xx: u32w(50),
                ..Default::default()
            },
        ),
        (
            "outlier_detection.failure_percentage_minimum_hosts: 5 not supported",
            cluster::OutlierDetection {
                enforcing_failure_percentage: u32w(100),
                ..Default::default()
            },
        ),
        (
            "outlier_detection.split_external_local_origin_errors: not supported",
            cluster::OutlierDetection {
                split_external_local_origin_errors: true,
                ..Default::default()
            },
        ),
        (
            "outlier_detection.enforcing_success_rate (success-rate ejection): not supported",
            cluster::OutlierDetection {
                enforcing_success_rate: u32w(100),
                ..Default::default()
            },
        ),
        (
            "outlier_detection.interval: must be longer than 0s",
            cluster::OutlierDetection {
                interval: secs(0),
                ..Default::default()
            },
        ),
        (
            "outlier_detection.max_ejection_percent: must be at most 100",
            cluster::OutlierDetection {
                max_ejection_percent: u32w(101),
                ..Default::default()
            },
        ),
    ];
    for (want, o) in refused {
        c.outlier_detection = Some(o);
        let e = err(cluster_from_wire(&c));
        assert!(e.contains(want), "{want}: {e}");
    }
}

#[test]
fn gofe_outlier_detection_is_written_for_envoy_to_eject_alike() {
    let mut c = sample();
    c.clusters[0].outlier_detection = Some(gofe_model::OutlierDetectionConfig {
        consecutive_5xx: 0,
        failure_percentage_threshold: 1000,
        half_open_trial_requests: 3,
        ..Default::default()
    });
    let r = from_proxy_config(&c).unwrap();
    let wire = cluster_to_wire(&r.clusters["v1"]).unwrap();
    let o = wire.outlier_detection.as_ref().unwrap();
    assert_eq!(o.enforcing_consecutive_5xx, u32w(0));
    assert_eq!(
        o.enforcing_success_rate,
        u32w(0),
        "gofe has no success-rate rule"
    );
    assert_eq!(o.enforcing_failure_percentage, u32w(0));
    assert_eq!(o.base_ejection_time, secs(5), "gofe's default, explicit");
    assert_eq!(o.always_eject_one_host, Some(BoolValue { value: true }));
    let back = cluster_from_wire(&wire).unwrap();
    assert_eq!(back.config, r.clusters["v1"].config);
}

#[test]
fn panic_threshold_and_idle_timeout_are_read() {
    let (_, _, _, mut c) = sample_wire();
    c.common_lb_config = Some(cluster::cluster::CommonLbConfig {
        healthy_panic_threshold: Some(Percent { value: 0.0 }),
        ..Default::default()
    });
    c.typed_extension_protocol_options.clear();
    let r = cluster_from_wire(&c).unwrap();
    assert_eq!(r.config.healthy_panic_threshold, 0);
    assert_eq!(
        r.config.idle_timeout,
        Duration::from_secs(3600),
        "Envoy's upstream default"
    );
    c.common_lb_config = Some(cluster::cluster::CommonLbConfig {
        healthy_panic_threshold: Some(Percent { value: 33.3 }),
        ..Default::default()
    });
    let e = err(cluster_from_wire(&c));
    assert!(
        e.contains("common_lb_config.healthy_panic_threshold: 33.3"),
        "{e}"
    );
}

#[test]
fn eds_addresses_must_be_ip_addresses() {
    for bad in ["999.999.999.999", "backend.svc"] {
        let mut cla = golden_cla_v1();
        cla.endpoints[0].lb_endpoints[0].host_identifier = Some(
            endpoint::lb_endpoint::HostIdentifier::Endpoint(endpoint::Endpoint {
                address: Some(socket_address(bad, 80)),
                ..Default::default()
            }),
        );
        let e = err(endpoints_from_wire(&cla));
        assert!(
            e.contains("endpoints[0].lb_endpoints[0].endpoint.address: invalid endpoint address"),
            "{bad}: {e}"
        );
    }
    // A DNS cluster resolves names.
    let r = from_proxy_config(&sample()).unwrap();
    let v2 = cluster_from_wire(&cluster_to_wire(&r.clusters["v2"]).unwrap()).unwrap();
    assert_eq!(v2.config.endpoints[0].address, "backend.svc:9000");
    // And a STATIC one does not.
    let mut wire = cluster_to_wire(&r.clusters["v2"]).unwrap();
    wire.cluster_discovery_type = Some(cluster::cluster::ClusterDiscoveryType::Type(
        cluster::cluster::DiscoveryType::Static as i32,
    ));
    assert!(err(cluster_from_wire(&wire)).contains("load_assignment.endpoints[0]"));
}

#[test]
fn other_refusals_name_resource_and_field() {
    let (_, _, mut rc, mut c) = sample_wire();
    c.lb_policy = cluster::cluster::LbPolicy::Maglev as i32;
    assert!(err(cluster_from_wire(&c)).contains("Cluster \"v1\": lb_policy"));

    let mut cla = golden_cla_v1();
    cla.endpoints[0].lb_endpoints[0].load_balancing_weight = u32w(0);
    let e = err(endpoints_from_wire(&cla));
    assert!(
        e.contains("load_balancing_weight: must be at least 1"),
        "{e}"
    );
    let mut cla = golden_cla_v1();
    cla.endpoints[0].lb_endpoints[0].health_status = core::HealthStatus::Degraded as i32;
    assert!(err(endpoints_from_wire(&cla)).contains("health_status: DEGRADED"));
    // Priorities 0 and 2 without 1: Envoy's levels have no gaps.
    let mut cla = golden_cla_v1();
    cla.endpoints[1].priority = 2;
    let e = err(endpoints_from_wire(&cla));
    assert!(e.contains("endpoints[1].priority"), "{e}");
    assert!(e.contains("priority 1 has no endpoint"), "{e}");
    let mut cla = golden_cla_v1();
    cla.policy = Some(endpoint::cluster_load_assignment::Policy {
        weighted_priority_health: true,
        ..Default::default()
    });
    let e = err(endpoints_from_wire(&cla));
    assert!(e.contains("policy.weighted_priority_health"), "{e}");
    let mut cla = golden_cla_v1();
    cla.policy = Some(endpoint::cluster_load_assignment::Policy {
        overprovisioning_factor: u32w(0),
        ..Default::default()
    });
    let e = err(endpoints_from_wire(&cla));
    assert!(
        e.contains("policy.overprovisioning_factor: must be at least 1"),
        "{e}"
    );

    rc.virtual_hosts[0].routes[0].action =
        Some(route::route::Action::DirectResponse(Default::default()));
    assert!(err(route_from_wire(&rc)).contains("virtual_hosts[0].routes[0]"));
}

#[test]
fn max_request_bytes_travel_as_the_buffer_filters_per_route_config() {
    let mut c = sample();
    c.listeners[0].filters[0].config.virtual_hosts[0].routes[1]
        .route
        .max_request_bytes = Some(4096);
    let r = from_proxy_config(&c).unwrap();
    let rc = route_to_wire(&r.routes["public"]).unwrap();
    let per_filter = &rc.virtual_hosts[0].routes[1].typed_per_filter_config;
    let wrapper: route::FilterConfig = typed(&per_filter[BUFFER_FILTER_NAME]);
    assert!(
        !wrapper.disabled,
        "enables the listener's disabled buffer filter"
    );
    let per_route: buffer::BufferPerRoute = typed(wrapper.config.as_ref().unwrap());
    assert_eq!(
        per_route.r#override,
        Some(buffer::buffer_per_route::Override::Buffer(buffer::Buffer {
            max_request_bytes: u32w(4096)
        }))
    );
    assert!(rc.virtual_hosts[0].routes[0]
        .typed_per_filter_config
        .is_empty());

    // Other control planes' forms: a bare BufferPerRoute on the virtual host, disabled on one
    // route.
    let mut rc = rc;
    rc.virtual_hosts[0].routes[1]
        .typed_per_filter_config
        .clear();
    rc.virtual_hosts[0].typed_per_filter_config.insert(
        BUFFER_FILTER_NAME.into(),
        any_of(&buffer::BufferPerRoute {
            r#override: Some(buffer::buffer_per_route::Override::Buffer(buffer::Buffer {
                max_request_bytes: u32w(100),
            })),
        }),
    );
    rc.virtual_hosts[0].routes[2]
        .typed_per_filter_config
        .insert(
            BUFFER_FILTER_NAME.into(),
            any_of(&buffer::BufferPerRoute {
                r#override: Some(buffer::buffer_per_route::Override::Disabled(true)),
            }),
        );
    let back = route_from_wire(&rc).unwrap();
    let limits: Vec<Option<u64>> = back.router.virtual_hosts[0]
        .routes
        .iter()
        .map(|r| r.route.max_request_bytes)
        .collect();
    assert_eq!(limits, [Some(100), Some(100), None]);

    // A filter gofe does not have: refused, unless optional.
    rc.virtual_hosts[0].routes[0]
        .typed_per_filter_config
        .insert(
            "envoy.filters.http.cors".into(),
            any_of(&route::FilterConfig::default()),
        );
    assert!(
        err(route_from_wire(&rc)).contains("typed_per_filter_config[\"envoy.filters.http.cors\"]")
    );
    rc.virtual_hosts[0].routes[0]
        .typed_per_filter_config
        .insert(
            "envoy.filters.http.cors".into(),
            any_of(&route::FilterConfig {
                is_optional: true,
                ..Default::default()
            }),
        );
    assert!(route_from_wire(&rc).is_ok());
}

#[test]
fn without_the_buffer_filter_route_limits_do_nothing_as_in_envoy() {
    let mut c = sample();
    c.listeners[0].filters[0].config.virtual_hosts[0].routes[1]
        .route
        .max_request_bytes = Some(4096);
    let mut xds = to_xds(&c);
    let (_, listeners) = xds
        .iter_mut()
        .find(|(t, _)| *t == ResourceType::Listener)
        .unwrap();
    let original: listener::Listener = typed(&listeners[0]);
    let mut l = original.clone();
    set_hcm(&mut l, |m| {
        m.http_filters.retain(|f| f.name != BUFFER_FILTER_NAME);
    });
    listeners[0] = to_any(&l);
    let back = from_xds(&xds);
    let route = &back.listeners[0].filters[0].config.virtual_hosts[0].routes[1];
    assert_eq!(route.route.max_request_bytes, None);

    // A buffer filter on for every route is refused: gofe's limits are per route.
    set_hcm(&mut l, |m| {
        m.http_filters.insert(
            0,
            hcm::HttpFilter {
                name: BUFFER_FILTER_NAME.into(),
                config_type: Some(hcm::http_filter::ConfigType::TypedConfig(to_any(
                    &buffer::Buffer {
                        max_request_bytes: u32w(10),
                    },
                ))),
                ..Default::default()
            },
        )
    });
    assert!(err(listener_from_wire(&l)).contains("http_filters[0].disabled"));
    // An HTTP filter gofe does not have: refused unless optional.
    set_hcm(&mut l, |m| {
        m.http_filters[0] = hcm::HttpFilter {
            name: "envoy.filters.http.cors".into(),
            ..Default::default()
        }
    });
    assert!(err(listener_from_wire(&l)).contains("HTTP filter \"envoy.filters.http.cors\""));
    set_hcm(&mut l, |m| m.http_filters[0].is_optional = true);
    assert!(listener_from_wire(&l).is_ok());
}

#[test]
fn listener_limits_and_tls_travel_in_envoys_fields() {
    let mut c = sample();
    let l = &mut c.listeners[0];
    l.max_connections = Some(500);
    l.tls = Some(gofe_model::TlsConfig {
        certificate_chain: "/etc/gofe/cert.pem".into(),
        private_key: "/etc/gofe/key.pem".into(),
        alpn_protocols: vec!["h2".into(), "http/1.1".into()],
        validation_context: None,
        require_client_certificate: false,
    });
    let r = from_proxy_config(&c).unwrap();
    let wire = listener_to_wire(&r.listeners["public"]).unwrap();
    let chain = &wire.filter_chains[0];
    assert_eq!(chain.filters[0].name, CONNECTION_LIMIT_FILTER_NAME);
    let Some(listener::filter::ConfigType::TypedConfig(limit)) = &chain.filters[0].config_type
    else {
        panic!()
    };
    let limit: envoy_types::pb::envoy::extensions::filters::network::connection_limit::v3::ConnectionLimit =
        typed(limit);
    assert_eq!(limit.max_connections.unwrap().value, 500);
    let ts = chain.transport_socket.as_ref().unwrap();
    assert_eq!(ts.name, TLS_TRANSPORT_SOCKET_NAME);
    let back = listener_from_wire(&wire).unwrap();
    let ListenerKind::Socket { settings, .. } = &back.kind else {
        panic!()
    };
    assert_eq!(settings.max_connections, Some(500));
    assert_eq!(settings.tls, c.listeners[0].tls);

    // A connection limit that delays the close is not gofe's.
    let mut delayed = limit.clone();
    delayed.delay = secs(1);
    let mut w = wire.clone();
    w.filter_chains[0].filters[0].config_type =
        Some(listener::filter::ConfigType::TypedConfig(to_any(&delayed)));
    assert!(err(listener_from_wire(&w)).contains("filters[0].typed_config.delay"));
}

#[test]
fn an_empty_alpn_list_is_envoys_default_and_offers_none() {
    let mut c = sample();
    c.listeners[0].tls = Some(gofe_model::TlsConfig {
        certificate_chain: "/etc/gofe/cert.pem".into(),
        private_key: "/etc/gofe/key.pem".into(),
        alpn_protocols: Vec::new(),
        validation_context: None,
        require_client_certificate: false,
    });
    let r = from_proxy_config(&c).unwrap();
    let mut wire = listener_to_wire(&r.listeners["public"]).unwrap();
    let back = listener_from_wire(&wire).unwrap();
    let ListenerKind::Socket { settings, .. } = &back.kind else {
        panic!()
    };
    assert_eq!(
        settings.tls.as_ref().unwrap().alpn_protocols,
        Vec::<String>::new()
    );
    // A protocol gofe does not speak is refused by its index.
    let ts = wire.filter_chains[0].transport_socket.as_mut().unwrap();
    let Some(core::transport_socket::ConfigType::TypedConfig(any)) = &mut ts.config_type else {
        panic!()
    };
    let mut ctx: envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::DownstreamTlsContext =
        from_any(any).unwrap();
    ctx.common_tls_context.as_mut().unwrap().alpn_protocols = vec!["h2".into(), "h3".into()];
    *any = to_any(&ctx);
    assert!(err(listener_from_wire(&wire)).contains("common_tls_context.alpn_protocols[1]"));
}

#[test]
fn an_unnamed_listener_is_named_by_its_address() {
    let (_, mut l, _, _) = sample_wire();
    l.name = String::new();
    let r = listener_from_wire(&l).unwrap();
    assert_eq!(r.name, "127.0.0.1:8080");
    let ListenerKind::Socket { address, settings } = &r.kind else {
        panic!()
    };
    assert_eq!(address, "127.0.0.1:8080");
    assert!(settings.unnamed);
    // Taken in a response under that name, it is served unnamed (named by its address).
    let base = ProxyConfig::default();
    let update = Resources::default().accept_response(ResourceType::Listener, &[to_any(&l)], &base);
    assert!(update.refused.is_empty(), "{:?}", update.refused);
    assert!(update.resources.listeners.contains_key("127.0.0.1:8080"));
    // An API listener still needs its name: clients look it up by it.
    let mut api = l.clone();
    api.api_listener = Some(listener::ApiListener::default());
    assert!(err(listener_from_wire(&api)).contains("name"));
}

#[test]
fn request_headers_timeout_left_unset_is_envoys_none() {
    let (_, mut l, _, _) = sample_wire();
    set_hcm(&mut l, |m| {
        m.request_headers_timeout = None;
        m.max_request_headers_kb = None;
        m.common_http_protocol_options = None;
    });
    let r = listener_from_wire(&l).unwrap();
    let ListenerKind::Socket { settings, .. } = &r.kind else {
        panic!()
    };
    assert_eq!(settings.request_headers_timeout, Duration::ZERO);
    assert_eq!(settings.max_request_headers_kb, 60);
    assert_eq!(settings.idle_timeout, Duration::from_secs(3600));
}

// === whole responses ===

fn listener_named(name: &str, address: &str, routes: &str) -> Any {
    let l = ListenerResource {
        name: name.into(),
        kind: ListenerKind::Socket {
            address: address.into(),
            settings: SocketSettings::default(),
        },
        routes: RouteSource::Rds(routes.into()),
    };
    to_any(&listener_to_wire(&l).unwrap())
}

#[test]
fn every_refusal_of_a_listener_is_named_not_only_the_first_stages() {
    let (_, mut l, _, _) = sample_wire();
    l.transparent = Some(BoolValue { value: true });
    set_hcm(&mut l, |m| {
        m.normalize_path = Some(BoolValue { value: true });
        m.common_http_protocol_options = Some(core::HttpProtocolOptions {
            headers_with_underscores_action: 1,
            ..Default::default()
        });
        m.http_filters.insert(
            0,
            hcm::HttpFilter {
                name: "envoy.filters.http.cors".into(),
                ..Default::default()
            },
        );
    });
    let e = err(listener_from_wire(&l));
    for field in [
        "transparent",
        "filter_chains[0].filters[0].typed_config.normalize_path",
        "common_http_protocol_options.headers_with_underscores_action",
        "http_filters[0]",
    ] {
        assert!(e.contains(field), "{field} not named in {e}");
    }
    // Each refusal is a clause of its own, naming the resource.
    assert_eq!(e.matches("Listener \"public\": ").count(), 4, "{e}");
}

#[test]
fn every_refused_route_of_a_route_configuration_is_named() {
    let (_, _, mut rc, _) = sample_wire();
    rc.vhds = Some(Default::default());
    let routes = &mut rc.virtual_hosts[0].routes;
    routes[0].decorator = Some(Default::default());
    routes[1].tracing = Some(Default::default());
    let e = err(route_from_wire(&rc));
    for field in ["vhds", "routes[0].decorator", "routes[1].tracing"] {
        assert!(e.contains(field), "{field} not named in {e}");
    }
}

/// The sample listener's chain with `m` as its match and its connection manager's routes
/// from the RouteConfiguration `routes`.
fn matched_chain(
    l: &listener::Listener,
    m: listener::FilterChainMatch,
    routes: &str,
) -> listener::FilterChain {
    let mut one = l.clone();
    set_hcm(&mut one, |h| {
        h.route_specifier = Some(hcm::http_connection_manager::RouteSpecifier::Rds(
            hcm::Rds {
                config_source: Some(ads_config_source()),
                route_config_name: routes.into(),
            },
        ))
    });
    let mut chain = one.filter_chains.remove(0);
    chain.filter_chain_match = Some(m);
    chain
}

#[test]
fn several_filter_chains_are_read_with_their_matches_and_assembled() {
    let (_, l, rc, _) = sample_wire();
    let mut wire = l.clone();
    let sni = |n: &str| listener::FilterChainMatch {
        server_names: vec![n.into()],
        ..Default::default()
    };
    wire.filter_chains = vec![
        matched_chain(&l, sni("a.example.com"), "a-routes"),
        matched_chain(
            &l,
            listener::FilterChainMatch {
                prefix_ranges: vec![core::CidrRange {
                    address_prefix: "10.0.0.0".into(),
                    prefix_len: u32w(8),
                }],
                transport_protocol: "raw_buffer".into(),
                source_type: 1,
                ..Default::default()
            },
            "public",
        ),
    ];
    wire.default_filter_chain = Some(l.filter_chains[0].clone());
    wire.listener_filters = vec![listener::ListenerFilter {
        name: "envoy.filters.listener.tls_inspector".into(),
        config_type: Some(listener::listener_filter::ConfigType::TypedConfig(to_any(
            &TlsInspector::default(),
        ))),
        ..Default::default()
    }];
    let r = listener_from_wire(&wire).unwrap();
    let ListenerKind::Socket { settings, .. } = &r.kind else {
        panic!()
    };
    assert!(settings.default_chain && settings.tls_inspector && !settings.http_inspector);
    assert_eq!(settings.filter_chains.len(), 2);
    assert_eq!(settings.filter_chains[0].rds.as_deref(), Some("a-routes"));
    let m = &settings.filter_chains[1].filter_chain_match;
    assert_eq!(m.prefix_ranges[0].to_string(), "10.0.0.0/8");
    assert_eq!(m.source_type, gofe_model::SourceType::Local);
    assert_eq!(m.transport_protocol.as_deref(), Some("raw_buffer"));

    // Taken and assembled: the listener waits for both route configurations.
    let base = ProxyConfig::default();
    let mut held = Resources::default()
        .accept_response(ResourceType::Listener, &[to_any(&wire)], &base)
        .resources;
    held = held
        .accept_response(ResourceType::Route, &[to_any(&rc)], &base)
        .resources;
    assert!(
        assemble(&base, &held).listeners.is_empty(),
        "a-routes not there yet"
    );
    let mut a = rc.clone();
    a.name = "a-routes".into();
    a.virtual_hosts.truncate(1);
    held = held
        .accept_response(ResourceType::Route, &[to_any(&rc), to_any(&a)], &base)
        .resources;
    let out = assemble(&base, &held);
    assert!(
        gofe_model::validate(&out).is_empty(),
        "{:?}",
        gofe_model::validate(&out)
    );
    let listener = &out.listeners[0];
    assert_eq!(listener.filter_chains.len(), 2);
    assert!(listener.tls_inspector && listener.has_default_chain());
    assert_eq!(
        listener.filter_chains[0].filters[0]
            .config
            .virtual_hosts
            .len(),
        1
    );

    // Without a default chain, the listener's own chain is gone.
    let mut no_default = wire.clone();
    no_default.default_filter_chain = None;
    let held2 = held
        .accept_response(ResourceType::Listener, &[to_any(&no_default)], &base)
        .resources;
    let out = assemble(&base, &held2);
    assert!(!out.listeners[0].has_default_chain());
    assert!(gofe_model::validate(&out).is_empty());
}

#[test]
fn filter_chains_gofe_cannot_tell_apart_or_serve_alike_are_refused_by_name() {
    let (_, l, _, _) = sample_wire();
    let sni = |n: &str| listener::FilterChainMatch {
        server_names: vec![n.into()],
        ..Default::default()
    };
    let mut wire = l.clone();
    let mut other_settings = matched_chain(&l, sni("b.example.com"), "public");
    let mut m = hcm_of(&listener::Listener {
        filter_chains: vec![other_settings.clone()],
        ..Default::default()
    });
    m.max_request_headers_kb = u32w(1);
    other_settings.filters.last_mut().unwrap().config_type =
        Some(listener::filter::ConfigType::TypedConfig(to_any(&m)));
    wire.filter_chains = vec![
        matched_chain(&l, sni("a.example.com"), "public"),
        matched_chain(&l, sni("a.example.com"), "public"),
        other_settings,
        matched_chain(
            &l,
            listener::FilterChainMatch {
                transport_protocol: "quic".into(),
                address_suffix: "x".into(),
                server_names: vec!["a*.example.com".into()],
                ..Default::default()
            },
            "public",
        ),
    ];
    let e = err(listener_from_wire(&wire));
    for field in [
        "filter_chains[1].filter_chain_match: the same match as filter_chains[0]",
        "filter_chains[2]: connection settings",
        "filter_chains[3].filter_chain_match.transport_protocol",
        "filter_chains[3].filter_chain_match.address_suffix",
        "filter_chains[3].filter_chain_match.server_names[0]",
    ] {
        assert!(e.contains(field), "{field} not named in {e}");
    }
}

#[test]
fn one_bad_listener_does_not_sink_the_response() {
    let base = ProxyConfig::default();
    let held = Resources::default()
        .accept_response(
            ResourceType::Listener,
            &[listener_named("b", "127.0.0.1:2", "r")],
            &base,
        )
        .resources;
    // "b" turns bad in the next response, "a" is new and good, "c" takes "a"'s address.
    let mut bad: listener::Listener = typed(&listener_named("b", "127.0.0.1:3", "r"));
    set_hcm(&mut bad, |m| {
        m.normalize_path = Some(BoolValue { value: true })
    });
    let u = held.accept_response(
        ResourceType::Listener,
        &[
            listener_named("a", "127.0.0.1:1", "r"),
            to_any(&bad),
            listener_named("c", "127.0.0.1:1", "r"),
        ],
        &base,
    );
    let names: Vec<&str> = u.resources.listeners.keys().map(String::as_str).collect();
    assert_eq!(names, ["a", "b"]);
    assert!(
        matches!(&u.resources.listeners["b"].kind, ListenerKind::Socket { address, .. } if address == "127.0.0.1:2"),
        "b keeps its previous version"
    );
    let refused: Vec<String> = u.refused.iter().map(|e| e.to_string()).collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(refused[0].starts_with("Listener \"b\": ") && refused[0].contains("normalize_path"));
    assert!(
        refused[1]
            .starts_with("Listener \"c\": address: 127.0.0.1:1 is already bound by listener \"a\""),
        "{}",
        refused[1]
    );
    // LDS is state of the world: a later response without "b" removes it.
    let u = u.resources.accept_response(
        ResourceType::Listener,
        &[listener_named("a", "127.0.0.1:1", "r")],
        &base,
    );
    assert!(u.refused.is_empty());
    assert_eq!(u.resources.listeners.len(), 1);
}

#[test]
fn a_resource_that_does_not_decode_removes_nothing_from_a_whole_set_response() {
    // Bytes that are no Listener (or Cluster): the resource cannot even be named, so the
    // response's set is unknown and nothing held may be removed for being "left out" (it was
    // the defect: the undecodable resource meant to update "a" deleted it).
    let base = ProxyConfig::default();
    let held = Resources::default()
        .accept_response(
            ResourceType::Listener,
            &[listener_named("a", "127.0.0.1:1", "r")],
            &base,
        )
        .resources;
    let garbage = |ty: ResourceType| Any {
        type_url: ty.type_url().into(),
        value: vec![0xff, 0xff, 0xff, 0xff, 0x0f],
    };
    let u = held.accept_response(
        ResourceType::Listener,
        &[
            garbage(ResourceType::Listener),
            listener_named("b", "127.0.0.1:2", "r"),
        ],
        &base,
    );
    assert_eq!(u.refused.len(), 1, "{:?}", u.refused);
    assert!(
        u.refused[0].to_string().contains("cannot decode"),
        "{}",
        u.refused[0]
    );
    let names: Vec<&str> = u.resources.listeners.keys().map(String::as_str).collect();
    assert_eq!(names, ["a", "b"], "a kept, b taken");

    let mut held = Resources::default();
    held.clusters.insert(
        "known".into(),
        from_proxy_config(&sample()).unwrap().clusters["v1"].clone(),
    );
    let u = held.accept_response(
        ResourceType::Cluster,
        &[garbage(ResourceType::Cluster)],
        &base,
    );
    assert_eq!(u.refused.len(), 1);
    assert!(
        u.resources.clusters.contains_key("known"),
        "the cluster is kept"
    );
    // A named resource that is left out is still removed.
    let u = u
        .resources
        .accept_response(ResourceType::Cluster, &[], &base);
    assert!(u.refused.is_empty() && u.resources.clusters.is_empty());
}

#[test]
fn validate_clusters_refuses_routes_naming_unknown_clusters() {
    let base = ProxyConfig::default();
    let mut held = Resources::default();
    held.clusters.insert(
        "known".into(),
        from_proxy_config(&sample()).unwrap().clusters["v1"].clone(),
    );
    let mut checked = routes_naming("checked", &["known", "missing"]);
    checked.validate_clusters = Some(BoolValue { value: true });
    let unchecked = routes_naming("unchecked", &["missing"]);
    let u = held.accept_response(
        ResourceType::Route,
        &[to_any(&checked), to_any(&unchecked)],
        &base,
    );
    assert_eq!(
        u.resources.routes.len(),
        1,
        "without the flag Envoy accepts"
    );
    assert!(u.resources.routes.contains_key("unchecked"));
    let e = u.refused[0].to_string();
    assert!(
        e.starts_with(
            "RouteConfiguration \"checked\": virtual_hosts[0].routes[1].route.cluster: \
             unknown cluster \"missing\""
        ),
        "{e}"
    );
    // Inline routes are validated unless they say otherwise (Envoy's default for them).
    let (_, mut l, _, _) = sample_wire();
    set_hcm(&mut l, |m| {
        m.route_specifier = Some(hcm::http_connection_manager::RouteSpecifier::RouteConfig(
            routes_naming("inline", &["missing"]),
        ))
    });
    let u = held.accept_response(ResourceType::Listener, &[to_any(&l)], &base);
    assert!(u.resources.listeners.is_empty());
    assert!(u.refused[0].to_string().contains("filter_chains[0].filters[0].typed_config.route_config.virtual_hosts[0].routes[0].route.cluster"));
}

#[test]
fn a_nested_message_that_does_not_decode_names_its_resource() {
    let mut l: listener::Listener = typed(&listener_named("garbled", "127.0.0.1:1", "r"));
    l.filter_chains[0].filters.last_mut().unwrap().config_type =
        Some(listener::filter::ConfigType::TypedConfig(Any {
            type_url: hcm::HttpConnectionManager::type_url(),
            value: vec![0xff, 0xff, 0xff],
        }));
    let u = Resources::default().accept_response(
        ResourceType::Listener,
        &[to_any(&l)],
        &ProxyConfig::default(),
    );
    let e = u.refused[0].to_string();
    assert!(
        e.starts_with("Listener \"garbled\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager: cannot decode"),
        "{e}"
    );
    assert!(std::error::Error::source(&u.refused[0]).is_some());
}

#[test]
fn a_response_naming_a_resource_twice_is_refused_for_the_second() {
    let u = Resources::default().accept_response(
        ResourceType::Listener,
        &[
            listener_named("a", "127.0.0.1:1", "r"),
            listener_named("a", "127.0.0.1:2", "r"),
        ],
        &ProxyConfig::default(),
    );
    assert_eq!(u.resources.listeners.len(), 1);
    assert!(u.refused[0].to_string().contains("twice"));
}

// === access logs ===

mod access_logs {
    use envoy_types::pb::envoy::config::accesslog::v3 as accesslog;
    use envoy_types::pb::envoy::config::core::v3::substitution_format_string::Format;
    use envoy_types::pb::envoy::extensions::access_loggers::file::v3::{
        file_access_log, FileAccessLog,
    };
    use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::{
        StderrAccessLog, StdoutAccessLog,
    };

    use super::*;

    fn logger(name: &str, typed: Any) -> accesslog::AccessLog {
        accesslog::AccessLog {
            name: name.into(),
            filter: None,
            config_type: Some(accesslog::access_log::ConfigType::TypedConfig(typed)),
        }
    }

    fn text_format(text: &str) -> core::SubstitutionFormatString {
        core::SubstitutionFormatString {
            format: Some(Format::TextFormatSource(core::DataSource {
                specifier: Some(core::data_source::Specifier::InlineString(text.into())),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn file(path: &str, format: Option<core::SubstitutionFormatString>) -> accesslog::AccessLog {
        logger(
            FILE_ACCESS_LOG_NAME,
            to_any(&FileAccessLog {
                path: path.into(),
                access_log_format: format.map(file_access_log::AccessLogFormat::LogFormat),
            }),
        )
    }

    fn with_logs(logs: Vec<accesslog::AccessLog>) -> Result<ListenerResource, ConvertError> {
        let (_, mut l, _, _) = sample_wire();
        set_hcm(&mut l, |m| m.access_log = logs);
        listener_from_wire(&l)
    }

    fn logs_of(r: &ListenerResource) -> &[gofe_model::AccessLogConfig] {
        let ListenerKind::Socket { settings, .. } = &r.kind else {
            panic!("a socket listener")
        };
        &settings.access_log
    }

    #[test]
    fn stdout_and_file_loggers_are_read_with_their_formats() {
        let json = core::SubstitutionFormatString {
            format: Some(Format::JsonFormat(Struct {
                fields: [(
                    "code".to_owned(),
                    Value {
                        kind: Some(value::Kind::StringValue("%RESPONSE_CODE%".into())),
                    },
                )]
                .into_iter()
                .collect(),
            })),
            ..Default::default()
        };
        let r = with_logs(vec![
            logger(STDOUT_ACCESS_LOG_NAME, to_any(&StdoutAccessLog::default())),
            file("/var/log/a.log", Some(text_format("%REQ(:PATH)%\n"))),
            file("/var/log/b.log", Some(json)),
        ])
        .unwrap();
        let logs = logs_of(&r);
        assert_eq!(logs.len(), 3);
        assert_eq!(logs[0], gofe_model::AccessLogConfig::default());
        assert_eq!(logs[1].path.as_deref(), Some("/var/log/a.log"));
        assert_eq!(logs[1].format.as_deref(), Some("%REQ(:PATH)%\n"));
        assert_eq!(
            logs[2].json_format.as_ref().unwrap()["code"],
            "%RESPONSE_CODE%"
        );
        // And written back the same way.
        let wire = listener_to_wire(&r).unwrap();
        assert_eq!(listener_from_wire(&wire).unwrap().kind, r.kind);
    }

    #[test]
    fn what_gofe_cannot_log_is_refused_by_name() {
        let base = "filter_chains[0].filters[0].typed_config.access_log[0]";
        let mut filtered = file("/a.log", None);
        filtered.filter = Some(accesslog::AccessLogFilter::default());
        let e = err(with_logs(vec![filtered]));
        assert!(e.contains(&format!("{base}.filter")), "{e}");

        let stderr = logger(
            "envoy.access_loggers.stderr",
            to_any(&StderrAccessLog::default()),
        );
        let e = err(with_logs(vec![stderr]));
        assert!(
            e.contains(&format!("{base}.typed_config")) && e.contains("not supported by gofe"),
            "{e}"
        );

        let e = err(with_logs(vec![file(
            "/a.log",
            Some(text_format("%BOGUS%")),
        )]));
        assert!(
            e.contains(&format!(
                "{base}.typed_config.log_format.text_format_source.inline_string"
            )) && e.contains("unknown operator %BOGUS%"),
            "{e}"
        );

        let mut omit = text_format("%PROTOCOL%");
        omit.omit_empty_values = true;
        let e = err(with_logs(vec![file("/a.log", Some(omit))]));
        assert!(
            e.contains(&format!("{base}.typed_config.log_format.omit_empty_values")),
            "{e}"
        );

        let e = err(with_logs(vec![file("", None)]));
        assert!(e.contains(&format!("{base}.typed_config.path")), "{e}");

        let (_, mut l, _, _) = sample_wire();
        set_hcm(&mut l, |m| {
            m.access_log_options = Some(hcm::http_connection_manager::HcmAccessLogOptions {
                access_log_flush_interval: secs(1),
                ..Default::default()
            })
        });
        let e = err(listener_from_wire(&l));
        assert!(e.contains("access_log_options"), "{e}");
    }
}

// === tracing ===

mod tracers {
    use envoy_types::pb::envoy::config::trace::v3 as trace;

    use super::*;

    type Tracing = hcm::http_connection_manager::Tracing;

    fn otel(uri: &str) -> trace::OpenTelemetryConfig {
        trace::OpenTelemetryConfig {
            http_service: Some(core::HttpService {
                http_uri: Some(core::HttpUri {
                    uri: uri.into(),
                    timeout: secs(2),
                    http_upstream_type: Some(core::http_uri::HttpUpstreamType::Cluster(
                        "otel".into(),
                    )),
                }),
                ..Default::default()
            }),
            service_name: "edge".into(),
            ..Default::default()
        }
    }

    fn provider(name: &str, typed: Any) -> Option<trace::tracing::Http> {
        Some(trace::tracing::Http {
            name: name.into(),
            config_type: Some(trace::tracing::http::ConfigType::TypedConfig(typed)),
        })
    }

    fn with_tracing(t: Tracing) -> Result<ListenerResource, ConvertError> {
        let (_, mut l, _, _) = sample_wire();
        set_hcm(&mut l, |m| m.tracing = Some(t));
        listener_from_wire(&l)
    }

    fn tracing_of(r: &ListenerResource) -> Option<&gofe_model::TracingConfig> {
        let ListenerKind::Socket { settings, .. } = &r.kind else {
            panic!("a socket listener")
        };
        settings.tracing.as_deref()
    }

    #[test]
    fn the_opentelemetry_tracer_is_read_as_envoy_writes_it() {
        let r = with_tracing(Tracing {
            random_sampling: Some(Percent { value: 1.5 }),
            provider: provider(
                OPENTELEMETRY_TRACER_NAME,
                to_any(&otel("http://127.0.0.1:4318/v1/traces")),
            ),
            ..Default::default()
        })
        .unwrap();
        let t = tracing_of(&r).expect("tracing");
        assert_eq!(t.random_sampling.value, 1.5);
        assert_eq!(t.client_sampling.value, 100.0, "Envoy's default");
        let otel = &t.provider.opentelemetry;
        assert_eq!(otel.service_name, "edge");
        assert_eq!(otel.http_service.http_uri.cluster.as_deref(), Some("otel"));
        assert_eq!(otel.http_service.http_uri.timeout, Duration::from_secs(2));
        assert_eq!(otel.max_cache_size, 1024);
        // Written back the same way.
        let wire = listener_to_wire(&r).unwrap();
        assert_eq!(listener_from_wire(&wire).unwrap().kind, r.kind);
        // No provider: Envoy traces nothing, and neither does gofe.
        let r = with_tracing(Tracing::default()).unwrap();
        assert!(tracing_of(&r).is_none());
    }

    #[test]
    fn what_gofe_cannot_trace_with_is_refused_by_name() {
        let base = "filter_chains[0].filters[0].typed_config.tracing";
        let ok = || Tracing {
            provider: provider(
                OPENTELEMETRY_TRACER_NAME,
                to_any(&otel("http://127.0.0.1:4318/v1/traces")),
            ),
            ..Default::default()
        };
        let mut grpc = otel("http://c:4318/v1/traces");
        grpc.grpc_service = Some(core::GrpcService::default());
        grpc.http_service = None;
        let mut sampler = otel("http://c:4318/v1/traces");
        sampler.sampler = Some(core::TypedExtensionConfig::default());
        for (t, field) in [
            (
                Tracing {
                    provider: provider(OPENTELEMETRY_TRACER_NAME, to_any(&grpc)),
                    ..ok()
                },
                format!("{base}.provider.typed_config.grpc_service"),
            ),
            (
                Tracing {
                    provider: provider(OPENTELEMETRY_TRACER_NAME, to_any(&sampler)),
                    ..ok()
                },
                format!("{base}.provider.typed_config.sampler"),
            ),
            (
                Tracing {
                    provider: provider(
                        OPENTELEMETRY_TRACER_NAME,
                        to_any(&otel("https://c/v1/traces")),
                    ),
                    ..ok()
                },
                format!("{base}.provider.typed_config.http_service.http_uri.uri"),
            ),
            (
                Tracing {
                    provider: provider(
                        "envoy.tracers.zipkin",
                        to_any(&trace::ZipkinConfig::default()),
                    ),
                    ..ok()
                },
                format!("{base}.provider.typed_config"),
            ),
            (
                Tracing {
                    custom_tags: vec![Default::default()],
                    ..ok()
                },
                format!("{base}.custom_tags"),
            ),
            (
                Tracing {
                    spawn_upstream_span: Some(BoolValue { value: false }),
                    ..ok()
                },
                format!("{base}.spawn_upstream_span: false"),
            ),
            (
                Tracing {
                    overall_sampling: Some(Percent { value: 120.0 }),
                    ..ok()
                },
                format!("{base}.overall_sampling.value"),
            ),
        ] {
            let e = err(with_tracing(t));
            assert!(e.contains(&field), "{field}: {e}");
        }
    }

    #[test]
    fn gofe_only_settings_are_not_published() {
        let mut config = sample();
        let mut t = gofe_model::TracingConfig::to_collector("http://127.0.0.1:4318/v1/traces");
        t.propagation = vec![gofe_model::tracing::Propagation::B3];
        config.listeners[0].tracing = Some(t);
        let e = from_proxy_config(&config).unwrap_err().to_string();
        assert!(e.contains("listeners[0].tracing.propagation"), "{e}");
    }
}

#[test]
fn faults_travel_as_the_fault_filters_per_route_config() {
    use envoy_types::pb::envoy::extensions::filters::common::fault::v3 as common_fault;
    use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as fault;
    use envoy_types::pb::envoy::r#type::v3::{fractional_percent, FractionalPercent};
    use gofe_model::fault::{FaultAbortConfig, FaultDelayConfig};

    let mut c = sample();
    let f = gofe_model::FaultConfig {
        delay: Some(FaultDelayConfig {
            fixed_delay: Some(Duration::from_millis(250)),
            percentage: gofe_model::FractionalPercent::percent(10),
            ..Default::default()
        }),
        abort: Some(FaultAbortConfig {
            http_status: Some(503),
            percentage: gofe_model::FractionalPercent::percent(25),
            ..Default::default()
        }),
        max_active_faults: Some(7),
    };
    c.listeners[0].filters[0].config.virtual_hosts[0].routes[1].fault = Some(f.clone());
    let r = from_proxy_config(&c).unwrap();
    let rc = route_to_wire(&r.routes["public"]).unwrap();
    let wire: fault::HttpFault =
        typed(&rc.virtual_hosts[0].routes[1].typed_per_filter_config[FAULT_FILTER_NAME]);
    assert_eq!(wire.max_active_faults, u32w(7));
    let abort = wire.abort.as_ref().unwrap();
    assert_eq!(
        abort.error_type,
        Some(fault::fault_abort::ErrorType::HttpStatus(503))
    );
    assert_eq!(abort.percentage.unwrap().numerator, 25);
    assert_eq!(
        route_from_wire(&rc).unwrap().router.virtual_hosts[0].routes[1].fault,
        Some(f)
    );

    // Another control plane's form: on the virtual host, in a FilterConfig, with a gRPC
    // status out of ten thousand; one route turns it off, another has its own.
    let mut rc = rc;
    for r in &mut rc.virtual_hosts[0].routes {
        r.typed_per_filter_config.clear();
    }
    let vh_fault = fault::HttpFault {
        abort: Some(fault::FaultAbort {
            percentage: Some(FractionalPercent {
                numerator: 2500,
                denominator: fractional_percent::DenominatorType::TenThousand as i32,
            }),
            error_type: Some(fault::fault_abort::ErrorType::GrpcStatus(14)),
            ..Default::default()
        }),
        abort_percent_runtime: "fault.http.abort.abort_percent".into(),
        ..Default::default()
    };
    rc.virtual_hosts[0].typed_per_filter_config.insert(
        FAULT_FILTER_NAME.into(),
        any_of(&route::FilterConfig {
            config: Some(any_of(&vh_fault)),
            ..Default::default()
        }),
    );
    rc.virtual_hosts[0].routes[1]
        .typed_per_filter_config
        .insert(
            FAULT_FILTER_NAME.into(),
            any_of(&route::FilterConfig {
                disabled: true,
                ..Default::default()
            }),
        );
    let own = fault::HttpFault {
        delay: Some(common_fault::FaultDelay {
            percentage: Some(FractionalPercent {
                numerator: 100,
                denominator: 0,
            }),
            fault_delay_secifier: Some(common_fault::fault_delay::FaultDelaySecifier::HeaderDelay(
                Default::default(),
            )),
        }),
        ..Default::default()
    };
    rc.virtual_hosts[0].routes[2]
        .typed_per_filter_config
        .insert(FAULT_FILTER_NAME.into(), any_of(&own));
    let back = route_from_wire(&rc).unwrap();
    let host = &back.router.virtual_hosts[0];
    let routes = &host.routes;
    let grpc = host.fault.as_ref().unwrap().abort.as_ref().unwrap();
    assert_eq!(grpc.grpc_status, Some(14));
    assert_eq!(grpc.percentage.numerator, 2500);
    assert_eq!(routes[0].fault, None, "the host's applies");
    assert_eq!(
        routes[1].fault,
        Some(Default::default()),
        "disabled on this route: a fault that injects nothing overrides the host's"
    );
    let own = routes[2].fault.as_ref().unwrap();
    assert!(own.abort.is_none(), "the route's own replaces the host's");
    assert!(own.delay.as_ref().unwrap().header_delay.is_some());

    // What gofe cannot honour is refused by field.
    let refuse = |f: fault::HttpFault, field: &str| {
        let mut rc = rc.clone();
        rc.virtual_hosts[0].routes[2]
            .typed_per_filter_config
            .insert(FAULT_FILTER_NAME.into(), any_of(&f));
        let e = err(route_from_wire(&rc));
        assert!(e.contains(field), "{field}: {e}");
    };
    refuse(
        fault::HttpFault {
            response_rate_limit: Some(Default::default()),
            ..own_abort()
        },
        "response_rate_limit",
    );
    refuse(
        fault::HttpFault {
            upstream_cluster: "web".into(),
            downstream_nodes: vec!["a".into()],
            ..own_abort()
        },
        "upstream_cluster, virtual_hosts[0].routes[2].typed_per_filter_config[\"envoy.filters.http.fault\"].downstream_nodes",
    );
    refuse(
        fault::HttpFault {
            delay_percent_runtime: "my.key".into(),
            ..own_abort()
        },
        "delay_percent_runtime",
    );
    let mut over = own_abort();
    over.abort.as_mut().unwrap().percentage = Some(FractionalPercent {
        numerator: 101,
        denominator: 0,
    });
    refuse(over, "abort.percentage.numerator");
    let mut bad = own_abort();
    bad.abort.as_mut().unwrap().error_type = Some(fault::fault_abort::ErrorType::HttpStatus(99));
    refuse(bad, "abort.http_status");
    let mut body = own_abort();
    body.abort.as_mut().unwrap().response_body = "no".into();
    refuse(body, "abort.response_body");
}

fn own_abort() -> envoy_types::pb::envoy::extensions::filters::http::fault::v3::HttpFault {
    use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as fault;
    fault::HttpFault {
        abort: Some(fault::FaultAbort {
            error_type: Some(fault::fault_abort::ErrorType::HttpStatus(503)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn the_fault_filter_is_configured_per_route_and_in_gofes_order() {
    use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as fault;
    let mut c = sample();
    c.listeners[0].filters[0].config.virtual_hosts[0].routes[1].fault = Some(Default::default());
    let mut xds = to_xds(&c);
    let (_, listeners) = xds
        .iter_mut()
        .find(|(t, _)| *t == ResourceType::Listener)
        .unwrap();
    let original: listener::Listener = typed(&listeners[0]);
    // Without the fault filter, routes' faults do nothing, as in Envoy.
    let mut l = original.clone();
    set_hcm(&mut l, |m| {
        m.http_filters.retain(|f| f.name != FAULT_FILTER_NAME)
    });
    listeners[0] = to_any(&l);
    let back = from_xds(&xds);
    assert_eq!(
        back.listeners[0].filters[0].config.virtual_hosts[0].routes[1].fault,
        None
    );
    // A fault for every route, at the connection manager, is refused: gofe's are per route.
    let mut l = original.clone();
    set_hcm(&mut l, |m| {
        m.http_filters[0].config_type = Some(hcm::http_filter::ConfigType::TypedConfig(to_any(
            &own_abort(),
        )))
    });
    assert!(err(listener_from_wire(&l)).contains("http_filters[0].typed_config"));
    let mut l = original.clone();
    set_hcm(&mut l, |m| m.http_filters[0].disabled = true);
    assert!(err(listener_from_wire(&l)).contains("http_filters[0].disabled"));
    // After the buffer filter: not the order gofe applies them in.
    let mut l = original.clone();
    set_hcm(&mut l, |m| m.http_filters.swap(0, 1));
    assert!(err(listener_from_wire(&l)).contains("http_filters[1]: the fault filter out of"));
    let mut l = original;
    set_hcm(&mut l, |m| {
        m.http_filters.insert(
            0,
            hcm::HttpFilter {
                name: FAULT_FILTER_NAME.into(),
                config_type: Some(hcm::http_filter::ConfigType::TypedConfig(to_any(
                    &fault::HttpFault::default(),
                ))),
                ..Default::default()
            },
        )
    });
    assert!(err(listener_from_wire(&l)).contains("http_filters[1]"));
}

#[test]
fn local_rate_limits_travel_as_the_filters_per_route_config() {
    use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
    use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
    use envoy_types::pb::envoy::r#type::v3::{FractionalPercent, TokenBucket};
    use gofe_model::local_ratelimit::{TokenBucketConfig, XRateLimitHeaders};

    let mut c = sample();
    let limit = gofe_model::LocalRateLimitConfig {
        token_bucket: TokenBucketConfig {
            max_tokens: 10,
            tokens_per_fill: 2,
            fill_interval: Duration::from_secs(1),
        },
        status: 503,
        filter_enabled: gofe_model::FractionalPercent::percent(100),
        filter_enforced: gofe_model::FractionalPercent::percent(50),
        enable_x_ratelimit_headers: XRateLimitHeaders::DraftVersion03,
    };
    c.listeners[0].filters[0].config.virtual_hosts[0].routes[1].local_ratelimit =
        Some(limit.clone());
    let r = from_proxy_config(&c).unwrap();
    let rc = route_to_wire(&r.routes["public"]).unwrap();
    let wire: LocalRateLimit =
        typed(&rc.virtual_hosts[0].routes[1].typed_per_filter_config[LOCAL_RATELIMIT_FILTER_NAME]);
    assert!(!wire.stat_prefix.is_empty(), "Envoy requires one");
    assert_eq!(wire.token_bucket.as_ref().unwrap().max_tokens, 10);
    assert_eq!(wire.status.unwrap().code, 503);
    assert_eq!(
        route_from_wire(&rc).unwrap().router.virtual_hosts[0].routes[1].local_ratelimit,
        Some(limit)
    );

    // Envoy's documented form, on a route in a FilterConfig, runtime keys and all; a virtual
    // host's bucketless one limits nothing, and one with a bucket (which Envoy shares among the
    // host's routes) is refused.
    let mut rc = rc;
    for r in &mut rc.virtual_hosts[0].routes {
        r.typed_per_filter_config.clear();
    }
    let pct = |n| {
        Some(RuntimeFractionalPercent {
            default_value: Some(FractionalPercent {
                numerator: n,
                denominator: 0,
            }),
            runtime_key: "local_rate_limit_enabled".into(),
        })
    };
    let envoy_doc = LocalRateLimit {
        stat_prefix: "http_local_rate_limiter".into(),
        token_bucket: Some(TokenBucket {
            max_tokens: 10000,
            tokens_per_fill: u32w(1000),
            fill_interval: secs(1),
        }),
        filter_enabled: pct(100),
        filter_enforced: pct(100),
        ..Default::default()
    };
    for r in [0, 2] {
        rc.virtual_hosts[0].routes[r]
            .typed_per_filter_config
            .insert(
                LOCAL_RATELIMIT_FILTER_NAME.into(),
                any_of(&route::FilterConfig {
                    config: Some(any_of(&envoy_doc)),
                    ..Default::default()
                }),
            );
    }
    rc.virtual_hosts[0].typed_per_filter_config.insert(
        LOCAL_RATELIMIT_FILTER_NAME.into(),
        any_of(&LocalRateLimit {
            stat_prefix: "none".into(),
            ..Default::default()
        }),
    );
    let back = route_from_wire(&rc).unwrap();
    let routes = &back.router.virtual_hosts[0].routes;
    let l = routes[0].local_ratelimit.as_ref().unwrap();
    assert_eq!(l.token_bucket.tokens_per_fill, 1000);
    assert_eq!(l.status, 429, "Envoy's default");
    assert_eq!(
        l.filter_enforced,
        gofe_model::FractionalPercent::percent(100)
    );
    assert_eq!(
        routes[1].local_ratelimit, None,
        "a bucketless config limits nothing"
    );
    assert!(routes[2].local_ratelimit.is_some());
    assert_eq!(back.router.virtual_hosts[0].local_ratelimit, None);
    // A virtual host's bucket is the host's, for the routes without their own; a route that
    // disables the filter below it gets a limit that looks at nothing.
    let mut shared = rc.clone();
    shared.virtual_hosts[0]
        .typed_per_filter_config
        .insert(LOCAL_RATELIMIT_FILTER_NAME.into(), any_of(&envoy_doc));
    shared.virtual_hosts[0].routes[2]
        .typed_per_filter_config
        .insert(
            LOCAL_RATELIMIT_FILTER_NAME.into(),
            any_of(&route::FilterConfig {
                disabled: true,
                ..Default::default()
            }),
        );
    let back = route_from_wire(&shared).unwrap();
    let host = &back.router.virtual_hosts[0];
    assert_eq!(
        host.local_ratelimit
            .as_ref()
            .unwrap()
            .token_bucket
            .max_tokens,
        10000
    );
    assert_eq!(host.routes[1].local_ratelimit, None, "the host's applies");
    let off = host.routes[2].local_ratelimit.as_ref().unwrap();
    assert_eq!(off.filter_enabled.numerator, 0, "looks at nothing");
    assert!(host.routes[0].local_ratelimit.is_some(), "its own");
    // One bucket for every virtual host of a route configuration is refused.
    shared.virtual_hosts[0].typed_per_filter_config.clear();
    shared
        .typed_per_filter_config
        .insert(LOCAL_RATELIMIT_FILTER_NAME.into(), any_of(&envoy_doc));
    assert!(err(route_from_wire(&shared)).contains("a token bucket shared"));

    let refuse = |l: LocalRateLimit, field: &str| {
        let mut rc = rc.clone();
        rc.virtual_hosts[0].routes[2]
            .typed_per_filter_config
            .insert(LOCAL_RATELIMIT_FILTER_NAME.into(), any_of(&l));
        let e = err(route_from_wire(&rc));
        assert!(e.contains(field), "{field}: {e}");
    };
    refuse(
        LocalRateLimit {
            descriptors: vec![Default::default()],
            ..envoy_doc.clone()
        },
        "descriptors",
    );
    refuse(
        LocalRateLimit {
            rate_limited_as_resource_exhausted: true,
            local_rate_limit_per_downstream_connection: true,
            ..envoy_doc.clone()
        },
        "local_rate_limit_per_downstream_connection",
    );
    let mut short = envoy_doc.clone();
    short.token_bucket.as_mut().unwrap().fill_interval = Some(PbDuration {
        seconds: 0,
        nanos: 10_000_000,
    });
    refuse(short, "token_bucket.fill_interval");
    refuse(
        LocalRateLimit {
            status: Some(envoy_types::pb::envoy::r#type::v3::HttpStatus { code: 200 }),
            ..envoy_doc.clone()
        },
        "status.code",
    );
    refuse(
        LocalRateLimit {
            filter_enabled: pct(101),
            ..envoy_doc.clone()
        },
        "filter_enabled.default_value.numerator",
    );

    // A bucket for the whole connection manager is refused: gofe's are per route.
    let mut xds = to_xds(&c);
    let (_, listeners) = xds
        .iter_mut()
        .find(|(t, _)| *t == ResourceType::Listener)
        .unwrap();
    let mut l: listener::Listener = typed(&listeners[0]);
    set_hcm(&mut l, |m| {
        m.http_filters[1].config_type = Some(hcm::http_filter::ConfigType::TypedConfig(to_any(
            &envoy_doc,
        )))
    });
    assert!(err(listener_from_wire(&l)).contains("http_filters[1].typed_config.token_bucket"));
    // Without the filter, routes' limits do nothing, as in Envoy.
    set_hcm(&mut l, |m| {
        m.http_filters
            .retain(|f| f.name != LOCAL_RATELIMIT_FILTER_NAME)
    });
    listeners[0] = to_any(&l);
    let back = from_xds(&xds);
    assert_eq!(
        back.listeners[0].filters[0].config.virtual_hosts[0].routes[1].local_ratelimit,
        None
    );
}

#[test]
fn a_clusters_local_rate_limit_travels_as_its_upstream_filter() {
    use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
    use envoy_types::pb::envoy::extensions::filters::http::upstream_codec::v3::UpstreamCodec;
    let mut c = sample();
    let limit = gofe_model::LocalRateLimitConfig {
        token_bucket: gofe_model::local_ratelimit::TokenBucketConfig {
            max_tokens: 7,
            tokens_per_fill: 2,
            fill_interval: Duration::from_secs(1),
        },
        status: 503,
        filter_enabled: gofe_model::FractionalPercent::percent(100),
        filter_enforced: gofe_model::FractionalPercent::percent(50),
        enable_x_ratelimit_headers: Default::default(),
    };
    c.clusters[0].local_ratelimit = Some(limit.clone());
    let r = from_proxy_config(&c).unwrap();
    let name = c.clusters[0].name.clone();
    let wire = cluster_to_wire(&r.clusters[&name]).unwrap();
    let options: upstream_http::HttpProtocolOptions =
        typed(&wire.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS_KEY]);
    let names: Vec<&str> = options
        .http_filters
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(
        names,
        [
            LOCAL_RATELIMIT_FILTER_NAME,
            "envoy.filters.http.upstream_codec"
        ],
        "the limit, then the codec Envoy requires last"
    );
    assert_eq!(
        cluster_from_wire(&wire).unwrap().config.local_ratelimit,
        Some(limit)
    );

    // Other control planes' forms and mistakes, by field.
    let with = |filters: Vec<hcm::HttpFilter>| {
        let mut w = wire.clone();
        let mut o = options.clone();
        o.http_filters = filters;
        w.typed_extension_protocol_options
            .insert(HTTP_PROTOCOL_OPTIONS_KEY.into(), to_any(&o));
        cluster_from_wire(&w)
    };
    let filter = |name: &str, any: Any| hcm::HttpFilter {
        name: name.into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any)),
        ..Default::default()
    };
    let codec = || filter("codec", any_of(&UpstreamCodec {}));
    let limit_filter = || options.http_filters[0].clone();
    assert_eq!(with(vec![codec()]).unwrap().config.local_ratelimit, None);
    let bucketless = filter(
        "rl",
        any_of(&LocalRateLimit {
            stat_prefix: "x".into(),
            ..Default::default()
        }),
    );
    assert_eq!(
        with(vec![bucketless, codec()])
            .unwrap()
            .config
            .local_ratelimit,
        None,
        "a limit without a bucket limits nothing"
    );
    let field = "typed_extension_protocol_options[\"envoy.extensions.upstreams.http.v3.HttpProtocolOptions\"].http_filters";
    for (filters, want) in [
        (
            vec![limit_filter()],
            format!("{field}[0]: the last upstream filter must be the upstream codec"),
        ),
        (
            vec![codec(), limit_filter()],
            format!("{field}[0]: the upstream codec must be the last"),
        ),
        (
            vec![limit_filter(), limit_filter(), codec()],
            format!("{field}[1]: one local rate limit per cluster"),
        ),
        (
            vec![filter("buf", any_of(&buffer::Buffer::default())), codec()],
            format!("{field}[0]: upstream filter \"buf\""),
        ),
    ] {
        let e = err(with(filters));
        assert!(e.contains(&want), "want {want:?} in {e}");
    }
}

#[test]
fn mirror_policies_travel_in_the_route_action_and_the_most_specific_list_wins() {
    use envoy_types::pb::envoy::config::core::v3::RuntimeFractionalPercent;
    use envoy_types::pb::envoy::r#type::v3::FractionalPercent;
    use gofe_model::RequestMirrorPolicyConfig;
    use route::route_action::RequestMirrorPolicy;

    let mut c = sample();
    let tenth = RequestMirrorPolicyConfig {
        cluster: "v1".into(),
        runtime_fraction: gofe_model::FractionalPercent {
            numerator: 1000,
            denominator: gofe_model::fault::Denominator::TenThousand,
        },
        disable_shadow_host_suffix_append: true,
    };
    c.listeners[0].filters[0].config.virtual_hosts[0].routes[1]
        .route
        .request_mirror_policies = vec![RequestMirrorPolicyConfig::to("v2"), tenth.clone()];
    let r = from_proxy_config(&c).unwrap();
    let rc = route_to_wire(&r.routes["public"]).unwrap();
    let wire = &action_of(&rc.virtual_hosts[0].routes[1]).request_mirror_policies;
    assert_eq!(wire.len(), 2);
    assert_eq!(wire[0].cluster, "v2");
    assert_eq!(
        wire[0].runtime_fraction, None,
        "Envoy's 100 % is the field's absence"
    );
    assert!(!wire[0].disable_shadow_host_suffix_append);
    let f = wire[1].runtime_fraction.as_ref().unwrap();
    assert_eq!(f.default_value.unwrap().numerator, 1000);
    assert!(wire[1].disable_shadow_host_suffix_append);
    assert_eq!(
        route_from_wire(&rc).unwrap().router.virtual_hosts[0].routes[1]
            .route
            .request_mirror_policies,
        [RequestMirrorPolicyConfig::to("v2"), tenth]
    );

    // Envoy's other levels: a route without its own list takes its virtual host's, else its
    // route configuration's; lists are not merged. A runtime key is read as its default.
    let policy = |cluster: &str| RequestMirrorPolicy {
        cluster: cluster.into(),
        runtime_fraction: Some(RuntimeFractionalPercent {
            default_value: Some(FractionalPercent {
                numerator: 50,
                denominator: 0,
            }),
            runtime_key: "mirror.enabled".into(),
        }),
        ..Default::default()
    };
    let mut rc = rc;
    rc.request_mirror_policies = vec![policy("v1")];
    let mut second = rc.virtual_hosts[0].clone();
    second.name = "other".into();
    second.domains = vec!["other.example.com".into()];
    rc.virtual_hosts[0].request_mirror_policies = vec![policy("v2")];
    rc.virtual_hosts.push(second);
    let back = route_from_wire(&rc).unwrap();
    let clusters = |hi: usize, ri: usize| -> Vec<String> {
        back.router.virtual_hosts[hi].routes[ri]
            .route
            .request_mirror_policies
            .iter()
            .map(|p| p.cluster.clone())
            .collect()
    };
    assert_eq!(clusters(0, 0), ["v2"], "the virtual host's");
    assert_eq!(clusters(0, 1), ["v2", "v1"], "the route's own, whole");
    assert_eq!(clusters(1, 0), ["v1"], "the route configuration's");
    assert_eq!(
        back.router.virtual_hosts[0].routes[0]
            .route
            .request_mirror_policies[0]
            .runtime_fraction,
        gofe_model::FractionalPercent::percent(50)
    );

    // What gofe cannot honour is refused, by field.
    let refuse = |p: RequestMirrorPolicy, field: &str| {
        let mut rc = rc.clone();
        action_mut(&mut rc.virtual_hosts[0].routes[2]).request_mirror_policies = vec![p];
        let e = err(route_from_wire(&rc));
        assert!(
            e.contains(&format!(
                "virtual_hosts[0].routes[2].route.request_mirror_policies[0].{field}"
            )),
            "{field}: {e}"
        );
    };
    refuse(
        RequestMirrorPolicy {
            cluster: String::new(),
            cluster_header: "x-shadow".into(),
            ..Default::default()
        },
        "cluster_header",
    );
    refuse(RequestMirrorPolicy::default(), "cluster");
    refuse(
        RequestMirrorPolicy {
            trace_sampled: Some(BoolValue { value: false }),
            ..policy("v1")
        },
        "trace_sampled",
    );
    refuse(
        RequestMirrorPolicy {
            host_rewrite_literal: "shadow.example.com".into(),
            ..policy("v1")
        },
        "host_rewrite_literal",
    );
    refuse(
        RequestMirrorPolicy {
            request_headers_mutations: vec![Default::default()],
            ..policy("v1")
        },
        "request_headers_mutations",
    );
    refuse(
        RequestMirrorPolicy {
            runtime_fraction: Some(RuntimeFractionalPercent {
                default_value: None,
                runtime_key: "k".into(),
            }),
            ..policy("v1")
        },
        "runtime_fraction.default_value",
    );
    refuse(
        RequestMirrorPolicy {
            runtime_fraction: Some(RuntimeFractionalPercent {
                default_value: Some(FractionalPercent {
                    numerator: 101,
                    denominator: 0,
                }),
                runtime_key: String::new(),
            }),
            ..policy("v1")
        },
        "runtime_fraction.default_value.numerator",
    );
    let mut at_vhost = rc.clone();
    at_vhost.virtual_hosts[1].request_mirror_policies = vec![RequestMirrorPolicy {
        cluster_header: "x".into(),
        ..policy("v1")
    }];
    assert!(err(route_from_wire(&at_vhost))
        .contains("virtual_hosts[1].request_mirror_policies[0].cluster_header"));

    // A shadow cluster is a cluster the routes name: one not defined is served empty.
    let mut xds = to_xds(&c);
    let (_, routes) = xds
        .iter_mut()
        .find(|(t, _)| *t == ResourceType::Route)
        .unwrap();
    let mut wire_rc: route::RouteConfiguration = typed(&routes[0]);
    action_mut(&mut wire_rc.virtual_hosts[0].routes[1])
        .request_mirror_policies
        .push(policy("shadow"));
    routes[0] = to_any(&wire_rc);
    let back = from_xds(&xds);
    let shadow = back.clusters.iter().find(|c| c.name == "shadow").unwrap();
    assert!(shadow.endpoints.is_empty());
}

/// A load assignment as Istio writes one for a proxy in eu-west-1a: its zone at priority 0,
/// the region's other zone at 1, weights per locality, a factor of its own.
fn istio_style_cla() -> endpoint::ClusterLoadAssignment {
    let lb = |host: &str| endpoint::LbEndpoint {
        health_status: core::HealthStatus::Healthy as i32,
        load_balancing_weight: u32w(1),
        host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
            endpoint::Endpoint {
                address: Some(socket_address(host, 80)),
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let locality =
        |zone: &str, priority: u32, weight: u32, hosts: &[&str]| endpoint::LocalityLbEndpoints {
            locality: Some(core::Locality {
                region: "eu-west".into(),
                zone: zone.into(),
                ..Default::default()
            }),
            lb_endpoints: hosts.iter().map(|h| lb(h)).collect(),
            load_balancing_weight: u32w(weight),
            priority,
            ..Default::default()
        };
    endpoint::ClusterLoadAssignment {
        cluster_name: "web".into(),
        endpoints: vec![
            locality("eu-west-1a", 0, 2, &["10.0.0.1", "10.0.0.2"]),
            locality("eu-west-1b", 1, 7, &["10.0.1.1"]),
        ],
        policy: Some(endpoint::cluster_load_assignment::Policy {
            overprovisioning_factor: u32w(120),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn priorities_localities_and_the_factor_are_read() {
    let e = endpoints_from_wire(&istio_style_cla()).unwrap();
    assert_eq!(e.overprovisioning_factor, 120);
    let got: Vec<(&str, u32, Option<&str>, Option<u32>)> = e
        .endpoints
        .iter()
        .map(|ep| {
            (
                ep.address.as_str(),
                ep.priority,
                ep.locality.as_ref().map(|l| l.zone.as_str()),
                ep.locality_weight,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            // Weight 2 is the sum of the locality's endpoint weights: the default.
            ("10.0.0.1:80", 0, Some("eu-west-1a"), None),
            ("10.0.0.2:80", 0, Some("eu-west-1a"), None),
            ("10.0.1.1:80", 1, Some("eu-west-1b"), Some(7)),
        ]
    );
    assert!(e
        .endpoints
        .iter()
        .all(|ep| ep.locality.as_ref().unwrap().region == "eu-west"));
    // Written back, it is the same message (one locality entry per priority and locality).
    let back = endpoints_to_wire(&e);
    assert_eq!(back, istio_style_cla());
}

#[test]
fn endpoints_without_locality_keep_a_locality_each_for_grpc() {
    // gofe's own form: one locality per endpoint named by its address, weighted by it, now
    // with its priority.
    let mut a = EndpointConfig::new("10.0.0.1:80", 3);
    a.priority = 0;
    let mut b = EndpointConfig::new("10.0.0.2:80", 5);
    b.priority = 1;
    let e = EndpointsResource {
        cluster_name: "c".into(),
        endpoints: vec![a, b],
        overprovisioning_factor: gofe_model::DEFAULT_OVERPROVISIONING_FACTOR,
    };
    let wire = endpoints_to_wire(&e);
    assert_eq!(wire.policy, None, "Envoy's default factor is not written");
    let l: Vec<(String, Option<u32>, u32)> = wire
        .endpoints
        .iter()
        .map(|l| {
            (
                l.locality.as_ref().unwrap().sub_zone.clone(),
                l.load_balancing_weight.map(|w| w.value),
                l.priority,
            )
        })
        .collect();
    assert_eq!(
        l,
        [
            ("10.0.0.1:80".to_string(), Some(3), 0),
            ("10.0.0.2:80".to_string(), Some(5), 1)
        ]
    );
    let back = endpoints_from_wire(&wire).unwrap();
    assert_eq!(back.endpoints, e.endpoints);
    assert!(back.endpoints.iter().all(|ep| ep.locality.is_none()));
}

#[test]
fn locality_weighted_balancing_is_read_and_written() {
    let (_, _, _, mut c) = sample_wire();
    c.common_lb_config = Some(cluster::cluster::CommonLbConfig {
        locality_config_specifier: Some(
            cluster::cluster::common_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(
                Default::default(),
            ),
        ),
        ..Default::default()
    });
    let r = cluster_from_wire(&c).unwrap();
    assert!(r.config.locality_lb.locality_weighted);
    assert_eq!(
        r.config.healthy_panic_threshold,
        gofe_model::DEFAULT_PANIC_THRESHOLD
    );
    let again = cluster_to_wire(&r).unwrap();
    assert_eq!(again.common_lb_config, c.common_lb_config);
}

#[test]
fn typed_load_balancing_policies_take_precedence_and_the_first_known_one_is_used() {
    use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
    use envoy_types::pb::envoy::extensions::load_balancing_policies::common::v3::{
        locality_lb_config, LocalityLbConfig,
    };
    use envoy_types::pb::envoy::extensions::load_balancing_policies::least_request::v3::LeastRequest;
    use envoy_types::pb::envoy::extensions::load_balancing_policies::maglev::v3::Maglev;
    use envoy_types::pb::envoy::extensions::load_balancing_policies::round_robin::v3::RoundRobin;
    let policy = |name: &str, any: Any| cluster::load_balancing_policy::Policy {
        typed_extension_config: Some(TypedExtensionConfig {
            name: name.into(),
            typed_config: Some(any),
        }),
    };
    let with = |policies| {
        let (_, _, _, mut c) = sample_wire();
        c.lb_policy = cluster::cluster::LbPolicy::RoundRobin as i32;
        c.load_balancing_policy = Some(cluster::LoadBalancingPolicy { policies });
        cluster_from_wire(&c)
    };
    // Envoy Gateway's clusters: least request with locality weights, over lb_policy.
    let least = LeastRequest {
        locality_lb_config: Some(LocalityLbConfig {
            locality_config_specifier: Some(
                locality_lb_config::LocalityConfigSpecifier::LocalityWeightedLbConfig(
                    Default::default(),
                ),
            ),
        }),
        ..Default::default()
    };
    let r = with(vec![policy("lr", any_of(&least))]).unwrap();
    assert_eq!(r.config.lb_policy, LbPolicy::LeastRequest);
    assert!(r.config.locality_lb.locality_weighted);
    // A type nobody knows is passed over; the next one is used.
    let unknown = Any {
        type_url: "type.googleapis.com/example.Custom".into(),
        value: Vec::new(),
    };
    let r = with(vec![
        policy("custom", unknown.clone()),
        policy("rr", any_of(&RoundRobin::default())),
    ])
    .unwrap();
    assert_eq!(r.config.lb_policy, LbPolicy::RoundRobin);
    assert!(!r.config.locality_lb.locality_weighted);
    // Envoy would balance with Maglev, the first it knows: refused, named.
    let e = err(with(vec![
        policy("maglev", any_of(&Maglev::default())),
        policy("rr", any_of(&RoundRobin::default())),
    ]));
    assert!(
        e.contains("load_balancing_policy.policies[0].typed_extension_config.typed_config")
            && e.contains("Maglev is not supported by gofe"),
        "{e}"
    );
    // Settings gofe does not honour are refused by name.
    let three = LeastRequest {
        choice_count: u32w(3),
        ..Default::default()
    };
    let e = err(with(vec![policy("lr", any_of(&three))]));
    assert!(e.contains("choice_count"), "{e}");
    // Nothing usable at all.
    let e = err(with(vec![policy("custom", unknown)]));
    assert!(e.contains("load_balancing_policy.policies"), "{e}");
}
