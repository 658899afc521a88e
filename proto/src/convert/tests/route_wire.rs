//! Route features as other control planes write them (Istio, Envoy Gateway): regex and query
//! matchers, rewrites, redirects, direct responses and header mutations, read with Envoy's
//! meaning, and what gofe cannot honour among them refused by name.

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction as PbAppend;
use envoy_types::pb::envoy::config::route::v3::redirect_action::{
    PathRewriteSpecifier, RedirectResponseCode, SchemeRewriteSpecifier,
};
use gofe_model::HeaderAppendAction;

use super::*;

fn regex(r: &str) -> matcher::RegexMatcher {
    matcher::RegexMatcher {
        regex: r.into(),
        engine_type: None,
    }
}

#[allow(deprecated)]
fn header_option(
    key: &str,
    value: &str,
    append: Option<bool>,
    action: PbAppend,
) -> core::HeaderValueOption {
    core::HeaderValueOption {
        header: Some(core::HeaderValue {
            key: key.into(),
            value: value.into(),
            raw_value: Vec::new(),
        }),
        append: append.map(|value| BoolValue { value }),
        append_action: action as i32,
        keep_empty_value: false,
    }
}

fn route_with(m: route::RouteMatch, action: route::route::Action) -> route::Route {
    route::Route {
        r#match: Some(m),
        action: Some(action),
        ..Default::default()
    }
}

fn to_cluster(c: &str) -> route::RouteAction {
    route::RouteAction {
        cluster_specifier: Some(route::route_action::ClusterSpecifier::Cluster(c.into())),
        ..Default::default()
    }
}

fn config(routes: Vec<route::Route>) -> route::RouteConfiguration {
    route::RouteConfiguration {
        name: "r".into(),
        virtual_hosts: vec![route::VirtualHost {
            name: "vh".into(),
            domains: vec!["*".into()],
            routes,
            ..Default::default()
        }],
        ..Default::default()
    }
}

#[test]
fn istio_and_gateway_route_features_are_read_as_envoy_writes_them() {
    use route::route_match::PathSpecifier;
    let body = std::env::temp_dir().join(format!("gofe-direct-{}.txt", std::process::id()));
    std::fs::write(&body, "from a file\n").unwrap();
    let mut rc = config(vec![
        route_with(
            route::RouteMatch {
                path_specifier: Some(PathSpecifier::SafeRegex(regex("/api/v[0-9]+/.*"))),
                headers: vec![
                    route::HeaderMatcher {
                        name: "x-version".into(),
                        header_match_specifier: Some(
                            route::header_matcher::HeaderMatchSpecifier::StringMatch(
                                matcher::StringMatcher {
                                    match_pattern: Some(
                                        matcher::string_matcher::MatchPattern::SafeRegex(regex(
                                            "v[12]",
                                        )),
                                    ),
                                    ignore_case: false,
                                },
                            ),
                        ),
                        ..Default::default()
                    },
                    route::HeaderMatcher {
                        name: "x-n".into(),
                        header_match_specifier: Some(
                            route::header_matcher::HeaderMatchSpecifier::RangeMatch(
                                envoy_types::pb::envoy::r#type::v3::Int64Range {
                                    start: 1,
                                    end: 10,
                                },
                            ),
                        ),
                        ..Default::default()
                    },
                ],
                query_parameters: vec![route::QueryParameterMatcher {
                    name: "debug".into(),
                    query_parameter_match_specifier: Some(
                        route::query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(
                            matcher::StringMatcher {
                                match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(
                                    "On".into(),
                                )),
                                ignore_case: true,
                            },
                        ),
                    ),
                }],
                ..Default::default()
            },
            route::route::Action::Route(route::RouteAction {
                regex_rewrite: Some(matcher::RegexMatchAndSubstitute {
                    pattern: Some(regex("^/api/(v[0-9]+)/")),
                    substitution: "/\\1/".into(),
                }),
                host_rewrite_specifier: Some(
                    route::route_action::HostRewriteSpecifier::HostRewriteLiteral(
                        "backend.internal".into(),
                    ),
                ),
                ..to_cluster("v1")
            }),
        ),
        route_with(
            route::RouteMatch {
                path_specifier: Some(PathSpecifier::PathSeparatedPrefix("/shop".into())),
                ..Default::default()
            },
            route::route::Action::Route(route::RouteAction {
                prefix_rewrite: "/".into(),
                host_rewrite_specifier: Some(
                    route::route_action::HostRewriteSpecifier::HostRewriteHeader("X-Target".into()),
                ),
                ..to_cluster("v1")
            }),
        ),
        route_with(
            route::RouteMatch {
                path_specifier: Some(PathSpecifier::Prefix("/old".into())),
                ..Default::default()
            },
            route::route::Action::Redirect(route::RedirectAction {
                response_code: RedirectResponseCode::PermanentRedirect as i32,
                scheme_rewrite_specifier: Some(SchemeRewriteSpecifier::HttpsRedirect(true)),
                path_rewrite_specifier: Some(PathRewriteSpecifier::PrefixRewrite("/new".into())),
                port_redirect: 8443,
                strip_query: true,
                ..Default::default()
            }),
        ),
        route_with(
            route::RouteMatch {
                path_specifier: Some(PathSpecifier::Path("/healthz".into())),
                ..Default::default()
            },
            route::route::Action::DirectResponse(route::DirectResponseAction {
                status: 200,
                body: Some(core::DataSource {
                    specifier: Some(core::data_source::Specifier::Filename(
                        body.display().to_string(),
                    )),
                    watched_directory: None,
                }),
                body_format: None,
            }),
        ),
    ]);
    rc.request_headers_to_add = vec![header_option(
        "x-global",
        "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
        Some(false),
        PbAppend::AppendIfExistsOrAdd,
    )];
    rc.most_specific_header_mutations_wins = true;
    rc.virtual_hosts[0].response_headers_to_add = vec![header_option(
        "X-Served-By",
        "gofe",
        None,
        PbAppend::AddIfAbsent,
    )];
    rc.virtual_hosts[0].response_headers_to_remove = vec!["Server".into()];
    rc.virtual_hosts[0].routes[0].request_headers_to_remove = vec!["x-internal".into()];
    let r = route_from_wire(&rc).unwrap().router;
    std::fs::remove_file(&body).ok();

    assert!(r.most_specific_header_mutations_wins);
    assert_eq!(r.request_headers_to_add[0].key, "x-global");
    // The deprecated `append: false` is an overwrite.
    assert_eq!(
        r.request_headers_to_add[0].append_action,
        HeaderAppendAction::OverwriteIfExistsOrAdd
    );
    let vh = &r.virtual_hosts[0];
    assert_eq!(
        vh.response_headers_to_add[0].key, "x-served-by",
        "names are lowercased"
    );
    assert_eq!(
        vh.response_headers_to_add[0].append_action,
        HeaderAppendAction::AddIfAbsent
    );
    assert_eq!(vh.response_headers_to_remove, ["server"]);

    let api = &vh.routes[0];
    assert_eq!(api.matcher.safe_regex.as_deref(), Some("/api/v[0-9]+/.*"));
    assert_eq!(
        api.matcher.headers[0]
            .string_match
            .as_ref()
            .unwrap()
            .safe_regex
            .as_deref(),
        Some("v[12]")
    );
    assert_eq!(
        api.matcher.headers[1].range_match,
        Some(gofe_model::Int64RangeConfig { start: 1, end: 10 })
    );
    let q = &api.matcher.query_parameters[0];
    assert_eq!(
        (
            q.name.as_str(),
            q.string_match.as_ref().unwrap().ignore_case
        ),
        ("debug", true)
    );
    let rr = api.route.regex_rewrite.as_ref().unwrap();
    assert_eq!(
        (rr.pattern.as_str(), rr.substitution.as_str()),
        ("^/api/(v[0-9]+)/", "/\\1/")
    );
    assert_eq!(
        api.route.host_rewrite_literal.as_deref(),
        Some("backend.internal")
    );
    assert_eq!(api.request_headers_to_remove, ["x-internal"]);

    let shop = &vh.routes[1];
    assert_eq!(shop.matcher.path_separated_prefix.as_deref(), Some("/shop"));
    assert_eq!(shop.route.prefix_rewrite.as_deref(), Some("/"));
    assert_eq!(shop.route.host_rewrite_header.as_deref(), Some("x-target"));

    let old = &vh.routes[2];
    let redirect = old.redirect.as_ref().unwrap();
    assert_eq!(redirect.scheme_redirect.as_deref(), Some("https"));
    assert_eq!(redirect.response_code, 308);
    assert_eq!(redirect.port_redirect, Some(8443));
    assert_eq!(redirect.prefix_rewrite.as_deref(), Some("/new"));
    assert!(redirect.strip_query);
    assert!(old.route.is_none());

    let health = vh.routes[3].direct_response.as_ref().unwrap();
    assert_eq!(
        (health.status, health.body.as_deref()),
        (200, Some("from a file\n"))
    );
}

#[test]
fn route_features_gofe_cannot_honour_are_refused_by_name() {
    use route::route_match::PathSpecifier;
    let prefix = || route::RouteMatch {
        path_specifier: Some(PathSpecifier::Prefix("/".into())),
        ..Default::default()
    };
    type Case = (&'static str, &'static str, route::RouteConfiguration);
    let mut cases: Vec<Case> = Vec::new();
    cases.push((
        "virtual_hosts[0].routes[0].match.safe_regex",
        "look-around",
        config(vec![route_with(
            route::RouteMatch {
                path_specifier: Some(PathSpecifier::SafeRegex(regex("/(?=x)"))),
                ..Default::default()
            },
            route::route::Action::Route(to_cluster("v1")),
        )]),
    ));
    cases.push((
        "virtual_hosts[0].routes[0].route.regex_rewrite.pattern",
        "regular expression",
        config(vec![route_with(
            prefix(),
            route::route::Action::Route(route::RouteAction {
                regex_rewrite: Some(matcher::RegexMatchAndSubstitute {
                    pattern: Some(regex("(")),
                    substitution: "/".into(),
                }),
                ..to_cluster("v1")
            }),
        )]),
    ));
    cases.push((
        "virtual_hosts[0].routes[0].route.auto_host_rewrite",
        "not supported by gofe",
        config(vec![route_with(
            prefix(),
            route::route::Action::Route(route::RouteAction {
                host_rewrite_specifier: Some(
                    route::route_action::HostRewriteSpecifier::AutoHostRewrite(BoolValue {
                        value: true,
                    }),
                ),
                ..to_cluster("v1")
            }),
        )]),
    ));
    let mut op = config(vec![route_with(
        prefix(),
        route::route::Action::Route(to_cluster("v1")),
    )]);
    op.virtual_hosts[0].request_headers_to_add = vec![header_option(
        "x-a",
        "%UPSTREAM_LOCAL_ADDRESS%",
        None,
        PbAppend::AppendIfExistsOrAdd,
    )];
    cases.push((
        "virtual_hosts[0].request_headers_to_add[0].value",
        "UPSTREAM_LOCAL_ADDRESS",
        op,
    ));
    let mut both = config(vec![route_with(
        prefix(),
        route::route::Action::Route(to_cluster("v1")),
    )]);
    both.request_headers_to_add = vec![header_option(
        "x-a",
        "1",
        Some(true),
        PbAppend::OverwriteIfExists,
    )];
    cases.push(("request_headers_to_add[0].append", "not both", both));
    let mut host = config(vec![route_with(
        prefix(),
        route::route::Action::Route(to_cluster("v1")),
    )]);
    host.virtual_hosts[0].routes[0].request_headers_to_remove = vec!["host".into()];
    cases.push((
        "virtual_hosts[0].routes[0].request_headers_to_remove[0]",
        "cannot be modified",
        host,
    ));
    cases.push((
        "virtual_hosts[0].routes[0].direct_response.status",
        "outside 200..=599",
        config(vec![route_with(
            prefix(),
            route::route::Action::DirectResponse(route::DirectResponseAction {
                status: 100,
                ..Default::default()
            }),
        )]),
    ));
    cases.push((
        "virtual_hosts[0].routes[0].redirect.prefix_rewrite",
        "needs a route matching by prefix",
        config(vec![route_with(
            route::RouteMatch {
                path_specifier: Some(PathSpecifier::SafeRegex(regex("/a.*"))),
                ..Default::default()
            },
            route::route::Action::Redirect(route::RedirectAction {
                path_rewrite_specifier: Some(PathRewriteSpecifier::PrefixRewrite("/b".into())),
                ..Default::default()
            }),
        )]),
    ));
    let mut wc = config(vec![route_with(
        prefix(),
        route::route::Action::Route(route::RouteAction {
            cluster_specifier: Some(route::route_action::ClusterSpecifier::WeightedClusters(
                route::WeightedCluster {
                    clusters: vec![route::weighted_cluster::ClusterWeight {
                        name: "v1".into(),
                        weight: u32w(1),
                        request_headers_to_add: vec![header_option(
                            "x-a",
                            "1",
                            None,
                            PbAppend::AppendIfExistsOrAdd,
                        )],
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
    )]);
    wc.name = "r".into();
    cases.push((
        "weighted_clusters.clusters[0].request_headers_to_add",
        "not supported by gofe",
        wc,
    ));
    for (field, why, rc) in cases {
        let e = err(route_from_wire(&rc));
        assert!(e.contains("RouteConfiguration \"r\""), "{field}: {e}");
        assert!(e.contains(field), "{field}: {e}");
        assert!(e.contains(why), "{field}: {e}");
    }
}
