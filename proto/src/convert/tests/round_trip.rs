//! Every field of the proxy's configuration survives the trip through Envoy's messages, and what
//! cannot make the trip is refused by name.

use proptest::collection::vec;
use proptest::prelude::*;

use gofe_model::{CircuitBreakersConfig, OutlierDetectionConfig, RetryBudgetConfig, TlsConfig};

use super::*;

fn duration() -> impl Strategy<Value = Duration> {
    (0..=MAX_PB_SECONDS, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n))
}

fn positive_duration() -> impl Strategy<Value = Duration> {
    duration().prop_filter("longer than 0s", |d| !d.is_zero())
}

fn health() -> impl Strategy<Value = HealthStatus> {
    prop::sample::select(vec![
        HealthStatus::Healthy,
        HealthStatus::Unhealthy,
        HealthStatus::Draining,
    ])
}

/// Endpoint `i` of a cluster: an IPv4, IPv6 or DNS address (unique by `i`), any weight
/// (0 included) and health, no locality or one of two, a priority (renumbered without gaps)
/// and, per priority and locality, a locality weight or none.
fn endpoints() -> impl Strategy<Value = Vec<EndpointConfig>> {
    vec(
        (
            (0u8..3, 1u16..=65535, any::<u32>(), health()),
            (0u8..3, 0u32..3, prop::option::of(1u32..1000)),
        ),
        0..5,
    )
    .prop_map(|eps| {
        let mut out: Vec<EndpointConfig> = eps
            .into_iter()
            .enumerate()
            .map(
                |(i, ((kind, port, weight, health_status), (locality, priority, lw)))| {
                    let locality = (locality > 0).then(|| gofe_model::LocalityConfig {
                        region: "eu".into(),
                        zone: format!("eu-{locality}"),
                        sub_zone: if locality == 2 {
                            "rack-1".into()
                        } else {
                            String::new()
                        },
                    });
                    EndpointConfig {
                        address: match kind {
                            0 => format!("10.0.{}.{}:{port}", i / 256, i % 256),
                            1 => format!("[fd00::{:x}]:{port}", i + 1),
                            _ => format!("host-{i}.svc:{port}"),
                        },
                        weight,
                        health_status,
                        locality_weight: lw.filter(|_| locality.is_some()),
                        locality,
                        priority,
                    }
                },
            )
            .collect();
        // Priorities without gaps.
        let mut used: Vec<u32> = out.iter().map(|e| e.priority).collect();
        used.sort_unstable();
        used.dedup();
        for e in &mut out {
            e.priority = used.iter().position(|&p| p == e.priority).unwrap() as u32;
        }
        // One locality weight per priority and locality: the first endpoint's.
        for i in 0..out.len() {
            let first = out
                .iter()
                .position(|e| e.priority == out[i].priority && e.locality == out[i].locality)
                .unwrap();
            out[i].locality_weight = out[first].locality_weight;
        }
        out
    })
}

fn locality_lb() -> impl Strategy<Value = gofe_model::LocalityLbConfig> {
    (
        prop::sample::select(vec![140u32, 1, 100, 200, 1000]),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(overprovisioning_factor, locality_weighted, failover_by_proximity)| {
                gofe_model::LocalityLbConfig {
                    overprovisioning_factor,
                    locality_weighted,
                    failover_by_proximity,
                }
            },
        )
}

fn outlier_detection() -> impl Strategy<Value = OutlierDetectionConfig> {
    (
        (any::<u32>(), any::<u32>(), positive_duration()),
        (positive_duration(), positive_duration(), 0u32..=100),
        (any::<u32>(), any::<u32>(), any::<u32>()),
    )
        .prop_map(
            |((c5, cg, interval), (base, max, pct), (fpt, fpv, trials))| OutlierDetectionConfig {
                consecutive_5xx: c5,
                consecutive_gateway_failure: cg,
                interval,
                base_ejection_time: base,
                max_ejection_time: max,
                max_ejection_percent: pct,
                failure_percentage_threshold: fpt,
                failure_percentage_request_volume: fpv,
                half_open_trial_requests: trials,
            },
        )
}

fn circuit_breakers() -> impl Strategy<Value = CircuitBreakersConfig> {
    (
        (any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>()),
        prop::option::of((0.0f64..=100.0, any::<u32>())),
    )
        .prop_map(|((c, p, r, rt), budget)| CircuitBreakersConfig {
            max_connections: c,
            max_pending_requests: p,
            max_requests: r,
            max_retries: rt,
            retry_budget: budget.map(
                |(budget_percent, min_retry_concurrency)| RetryBudgetConfig {
                    budget_percent,
                    min_retry_concurrency,
                },
            ),
        })
}

fn pem_source() -> impl Strategy<Value = gofe_model::upstream_tls::PemSource> {
    use gofe_model::upstream_tls::PemSource;
    prop_oneof![
        "/etc/[a-z]{1,8}\\.pem".prop_map(PemSource::File),
        "-----BEGIN CERTIFICATE-----\n[A-Za-z0-9+/]{4,40}\n".prop_map(PemSource::Inline),
    ]
}

/// Upstream TLS valid for a cluster speaking HTTP/2 when `http2`.
fn upstream_tls(http2: bool) -> impl Strategy<Value = gofe_model::UpstreamTlsConfig> {
    use gofe_model::upstream_tls::{ClientCertificateConfig, SanMatcherConfig, SanType};
    let matcher = (
        prop::sample::select(vec![SanType::Dns, SanType::Uri]),
        0u8..4,
        "[a-z.:/]{1,12}",
    )
        .prop_map(|(san_type, kind, value)| {
            let mut matcher = StringMatchConfig::default();
            match kind {
                0 => matcher.exact = Some(value),
                1 => matcher.prefix = Some(value),
                2 => matcher.suffix = Some(value),
                _ => matcher.contains = Some(value),
            }
            SanMatcherConfig { san_type, matcher }
        });
    (
        prop::option::of("[a-z]{1,8}(\\.[a-z]{1,8}){0,2}"),
        prop::option::of((pem_source(), vec(matcher, 0..3))),
        prop::option::of((pem_source(), pem_source())),
        0u8..3,
    )
        .prop_map(move |(sni, ca, client, alpn)| {
            let (trusted_ca, match_subject_alt_names) = match ca {
                Some((ca, sans)) => (Some(ca), sans),
                None => (None, Vec::new()),
            };
            let own = gofe_model::UpstreamTlsConfig::offered_alpn(http2).to_owned();
            gofe_model::UpstreamTlsConfig {
                sni,
                trusted_ca,
                match_subject_alt_names,
                client_certificate: client.map(|(certificate_chain, private_key)| {
                    ClientCertificateConfig {
                        certificate_chain,
                        private_key,
                    }
                }),
                alpn_protocols: match alpn {
                    0 => Vec::new(),
                    1 => vec![own],
                    _ => vec!["h2".into(), "http/1.1".into()],
                },
            }
        })
}

fn cluster(i: usize) -> impl Strategy<Value = ClusterConfig> {
    (
        (
            prop::sample::select(vec![LbPolicy::RoundRobin, LbPolicy::LeastRequest]),
            positive_duration(),
            any::<bool>(),
            endpoints(),
        ),
        (
            circuit_breakers(),
            prop::option::of(outlier_detection()),
            0u32..=100,
            positive_duration(),
            prop::option::of(local_ratelimit()),
            locality_lb(),
        ),
    )
        .prop_flat_map(|(first, rest)| {
            let http2 = first.2;
            (Just((first, rest)), prop::option::of(upstream_tls(http2)))
        })
        .prop_map(
            move |(
                (
                    (lb_policy, connect_timeout, http2, endpoints),
                    (cb, od, panic, idle, limit, locality_lb),
                ),
                tls,
            )| {
                ClusterConfig {
                    name: format!("c{i}"),
                    discovery: gofe_model::DiscoveryType::Static,
                    lb_policy,
                    connect_timeout,
                    http2_protocol_options: http2.then(Http2ProtocolOptions::default),
                    endpoints,
                    circuit_breakers: cb,
                    outlier_detection: od,
                    healthy_panic_threshold: panic,
                    idle_timeout: idle,
                    local_ratelimit: limit,
                    locality_lb,
                    tls,
                }
            },
        )
}

/// Domains of virtual host `hi`, unique across a router by their index, in every Envoy form.
fn domains(hi: usize) -> impl Strategy<Value = Vec<String>> {
    (vec(0u8..6, 1..4), any::<bool>()).prop_map(move |(kinds, catch_all)| {
        let mut out: Vec<String> = kinds
            .into_iter()
            .enumerate()
            .map(|(di, k)| match k {
                0 => format!("h{hi}-{di}.example.com"),
                1 => format!("svc{hi}{di}:9080"),
                2 => format!("*.s{hi}{di}.example"),
                3 => format!("p{hi}{di}.*"),
                4 => format!("db.{hi}{di}.*:8080"),
                _ => format!("*.m{hi}{di}:15001"),
            })
            .collect();
        if hi == 0 && catch_all {
            out.push("*".into());
        }
        out
    })
}

/// A string matcher of every kind, with or without `ignore_case` (never on a regex).
fn string_match() -> impl Strategy<Value = StringMatchConfig> {
    (0u8..5, "[a-z0-9]{0,5}", any::<bool>()).prop_map(|(kind, v, ignore_case)| {
        let mut sm = StringMatchConfig {
            ignore_case,
            ..Default::default()
        };
        match kind {
            0 => sm.exact = Some(v),
            1 => sm.prefix = Some(v),
            2 => sm.suffix = Some(v),
            3 => sm.contains = Some(v),
            _ => {
                sm.safe_regex = Some(format!("[a-z]*{v}(x|y)?"));
                sm.ignore_case = false;
            }
        }
        sm
    })
}

fn header() -> impl Strategy<Value = HeaderMatcherConfig> {
    (
        prop::sample::select(vec!["x-a", "x-canary", "user-agent"]),
        0u8..4,
        string_match(),
        (any::<i64>(), any::<i64>()),
        any::<bool>(),
    )
        .prop_map(|(name, kind, sm, (a, b), invert)| {
            let (start, end) = if a < b {
                (a, b)
            } else if a > b {
                (b, a)
            } else {
                (a.saturating_sub(1), a)
            };
            let (start, end) = if start == end { (0, 1) } else { (start, end) };
            HeaderMatcherConfig {
                name: name.into(),
                string_match: (kind == 0).then_some(sm),
                present_match: match kind {
                    1 => Some(true),
                    2 => Some(false),
                    _ => None,
                },
                range_match: (kind == 3).then_some(gofe_model::Int64RangeConfig { start, end }),
                invert_match: invert,
            }
        })
}

/// A string matcher without `ignore_case` or a regex (what SAN and RBAC matchers read).
fn plain_string_match() -> impl Strategy<Value = StringMatchConfig> {
    (0u8..4, "[a-z0-9/:.]{0,8}").prop_map(|(kind, v)| {
        let mut sm = StringMatchConfig::default();
        match kind {
            0 => sm.exact = Some(v),
            1 => sm.prefix = Some(v),
            2 => sm.suffix = Some(v),
            _ => sm.contains = Some(v),
        }
        sm
    })
}

/// A listener's TLS: certificate files and, maybe, client certificates (a CA file or inline
/// PEM text, SAN matchers, required or not).
fn tls() -> impl Strategy<Value = Option<TlsConfig>> {
    use gofe_model::{DataSourceConfig, SanMatcherConfig, SanType, TlsValidationConfig};
    prop::option::of((
        ("[a-z/]{1,12}", "[a-z/]{1,12}"),
        prop::option::of((
            any::<bool>(),
            "[a-zA-Z0-9/ -]{1,20}",
            vec((any::<bool>(), plain_string_match()), 0..3),
            any::<bool>(),
        )),
        prop::sample::select(vec![
            vec![],
            vec!["h2"],
            vec!["http/1.1"],
            vec!["h2", "http/1.1"],
            vec!["http/1.1", "h2"],
        ]),
    ))
    .prop_map(|t| {
        t.map(|((certificate_chain, private_key), validation, alpn)| {
            let (validation_context, require_client_certificate) = match validation {
                None => (None, false),
                Some((file, ca, sans, require)) => (
                    Some(Box::new(TlsValidationConfig {
                        trusted_ca: DataSourceConfig {
                            filename: file.then(|| ca.clone()),
                            inline_string: (!file).then_some(ca),
                        },
                        match_typed_subject_alt_names: sans
                            .into_iter()
                            .map(|(uri, matcher)| SanMatcherConfig {
                                san_type: if uri { SanType::Uri } else { SanType::Dns },
                                matcher,
                            })
                            .collect(),
                    })),
                    require,
                ),
            };
            TlsConfig {
                certificate_chain,
                private_key,
                alpn_protocols: alpn.into_iter().map(String::from).collect(),
                validation_context,
                require_client_certificate,
            }
        })
    })
}

/// A header matcher as RBAC reads one: a plain string match or presence, never inverted.
fn rbac_header() -> impl Strategy<Value = HeaderMatcherConfig> {
    (
        prop::sample::select(vec!["x-a", "x-canary", "user-agent"]),
        prop::option::of(plain_string_match()),
    )
        .prop_map(|(name, sm)| HeaderMatcherConfig {
            name: name.into(),
            present_match: sm.is_none().then_some(true),
            string_match: sm,
            range_match: None,
            invert_match: false,
        })
}

fn permission() -> impl Strategy<Value = gofe_model::rbac::PermissionConfig> {
    use gofe_model::rbac::{PathMatcherConfig, PermissionConfig as P, PermissionSetConfig};
    let leaf = prop_oneof![
        Just(P::Any(true)),
        rbac_header().prop_map(P::Header),
        plain_string_match().prop_map(|path| P::UrlPath(PathMatcherConfig { path })),
        any::<u16>().prop_map(P::DestinationPort),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            vec(inner.clone(), 1..3).prop_map(|rules| P::AndRules(PermissionSetConfig { rules })),
            vec(inner.clone(), 1..3).prop_map(|rules| P::OrRules(PermissionSetConfig { rules })),
            inner.prop_map(|r| P::NotRule(Box::new(r))),
        ]
    })
}

fn principal() -> impl Strategy<Value = gofe_model::rbac::PrincipalConfig> {
    use gofe_model::rbac::{
        AuthenticatedConfig, CidrConfig, PrincipalConfig as P, PrincipalSetConfig,
    };
    let cidr = (any::<[u8; 4]>(), 0u32..=32).prop_map(|(ip, len)| CidrConfig {
        address_prefix: std::net::Ipv4Addr::from(ip).to_string(),
        prefix_len: len,
    });
    let leaf = prop_oneof![
        Just(P::Any(true)),
        prop::option::of(plain_string_match())
            .prop_map(|principal_name| P::Authenticated(AuthenticatedConfig { principal_name })),
        cidr.clone().prop_map(P::DirectRemoteIp),
        cidr.prop_map(P::RemoteIp),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            vec(inner.clone(), 1..3).prop_map(|ids| P::AndIds(PrincipalSetConfig { ids })),
            vec(inner.clone(), 1..3).prop_map(|ids| P::OrIds(PrincipalSetConfig { ids })),
            inner.prop_map(|id| P::NotId(Box::new(id))),
        ]
    })
}

fn rbac() -> impl Strategy<Value = Option<gofe_model::RbacConfig>> {
    use gofe_model::rbac::{RbacAction, RbacPolicyConfig, RbacRulesConfig};
    prop::option::of((
        any::<bool>(),
        prop::collection::btree_map(
            "[a-z-]{1,8}",
            (vec(permission(), 1..3), vec(principal(), 1..3)).prop_map(
                |(permissions, principals)| RbacPolicyConfig {
                    permissions,
                    principals,
                },
            ),
            0..3,
        ),
    ))
    .prop_map(|r| {
        r.map(|(allow, policies)| gofe_model::RbacConfig {
            rules: RbacRulesConfig {
                action: if allow {
                    RbacAction::Allow
                } else {
                    RbacAction::Deny
                },
                policies,
            },
        })
    })
}

fn query_parameter() -> impl Strategy<Value = gofe_model::QueryParameterMatcherConfig> {
    ("[a-z]{1,4}", prop::option::of(string_match())).prop_map(|(name, sm)| {
        gofe_model::QueryParameterMatcherConfig {
            name,
            present_match: sm.is_none().then_some(true),
            string_match: sm,
        }
    })
}

/// Header values to add: every append action, operators gofe writes (request ones only in
/// request headers).
fn header_adds(request: bool) -> impl Strategy<Value = Vec<gofe_model::HeaderValueOptionConfig>> {
    use gofe_model::HeaderAppendAction as A;
    let mut values = vec![
        "v1",
        "%DOWNSTREAM_REMOTE_ADDRESS%",
        "a%%b %PROTOCOL%",
        "%START_TIME% %HOSTNAME%",
        "",
    ];
    if request {
        values.push("%REQ(x-a?user-agent):8%");
    }
    vec(
        (
            prop::sample::select(vec!["x-added", "x-b", "cache-control"]),
            prop::sample::select(values),
            prop::sample::select(vec![
                A::AppendIfExistsOrAdd,
                A::AddIfAbsent,
                A::OverwriteIfExistsOrAdd,
                A::OverwriteIfExists,
            ]),
            any::<bool>(),
        ),
        0..3,
    )
    .prop_map(|adds| {
        adds.into_iter()
            .map(|(key, value, append_action, keep_empty_value)| {
                gofe_model::HeaderValueOptionConfig {
                    key: key.into(),
                    value: value.into(),
                    append_action,
                    keep_empty_value,
                }
            })
            .collect()
    })
}

fn header_removes() -> impl Strategy<Value = Vec<String>> {
    vec(prop::sample::select(vec!["x-gone", "server", "x-b"]), 0..2)
        .prop_map(|v| v.into_iter().map(String::from).collect())
}

/// One level's four mutation lists.
type MutationLists = (
    Vec<gofe_model::HeaderValueOptionConfig>,
    Vec<String>,
    Vec<gofe_model::HeaderValueOptionConfig>,
    Vec<String>,
);

fn mutations() -> impl Strategy<Value = MutationLists> {
    (
        header_adds(true),
        header_removes(),
        header_adds(false),
        header_removes(),
    )
}

fn regex_rewrite() -> impl Strategy<Value = gofe_model::RegexRewriteConfig> {
    ("[a-z]{1,3}", "[a-z/]{0,4}").prop_map(|(p, sub)| gofe_model::RegexRewriteConfig {
        pattern: format!("^/({p})/(.*)$"),
        substitution: format!("/{sub}\\2/\\1"),
    })
}

/// A redirect; `prefix_ok`: the route matches by prefix or path (a prefix rewrite needs it).
fn redirect(prefix_ok: bool) -> impl Strategy<Value = gofe_model::RedirectConfig> {
    (
        prop::option::of(prop::sample::select(vec!["https", "http", "ws"])),
        prop::option::of("[a-z]{1,6}(\\.[a-z]{2,3})?"),
        prop::option::of(1u16..),
        (0u8..4, "/[a-z0-9/]{0,6}"),
        prop::sample::select(vec![301u16, 302, 303, 307, 308]),
        any::<bool>(),
        regex_rewrite(),
    )
        .prop_map(
            move |(scheme, host, port, (path_kind, path), code, strip_query, rr)| {
                let path_kind = if path_kind == 2 && !prefix_ok {
                    0
                } else {
                    path_kind
                };
                gofe_model::RedirectConfig {
                    scheme_redirect: scheme.map(String::from),
                    host_redirect: host,
                    port_redirect: port,
                    path_redirect: (path_kind == 1).then(|| path.clone()),
                    prefix_rewrite: (path_kind == 2).then_some(path),
                    regex_rewrite: (path_kind == 3).then_some(rr),
                    response_code: code,
                    strip_query,
                }
            },
        )
}

fn retry_policy() -> impl Strategy<Value = RetryPolicyConfig> {
    (
        prop::sample::subsequence(
            vec!["5xx", "gateway-error", "connect-failure", "reset"],
            1..=4,
        ),
        any::<u32>(),
        prop::option::of(duration()),
    )
        .prop_map(|(on, num_retries, per_try_timeout)| RetryPolicyConfig {
            retry_on: on.join(","),
            num_retries,
            per_try_timeout,
        })
}

fn percent() -> impl Strategy<Value = gofe_model::FractionalPercent> {
    use gofe_model::fault::Denominator;
    prop::sample::select(vec![
        Denominator::Hundred,
        Denominator::TenThousand,
        Denominator::Million,
    ])
    .prop_flat_map(|denominator| {
        (0..=denominator.value()).prop_map(move |numerator| gofe_model::FractionalPercent {
            numerator,
            denominator,
        })
    })
}

/// A route's fault injection: any delay and abort kind, percentages of every denominator.
fn fault() -> impl Strategy<Value = gofe_model::FaultConfig> {
    use gofe_model::fault::{FaultAbortConfig, FaultDelayConfig, HeaderControlled};
    (
        prop::option::of((any::<bool>(), duration(), percent())),
        prop::option::of((0u8..3, 200u32..600, any::<u32>(), percent())),
        prop::option::of(any::<u32>()),
    )
        .prop_map(
            |(delay, abort, max_active_faults)| gofe_model::FaultConfig {
                delay: delay.map(|(fixed, d, percentage)| FaultDelayConfig {
                    fixed_delay: fixed.then_some(d),
                    header_delay: (!fixed).then_some(HeaderControlled {}),
                    percentage,
                }),
                abort: abort.map(|(kind, http, grpc, percentage)| FaultAbortConfig {
                    http_status: (kind == 0).then_some(http),
                    grpc_status: (kind == 1).then_some(grpc),
                    header_abort: (kind == 2).then_some(HeaderControlled {}),
                    percentage,
                }),
                max_active_faults,
            },
        )
}

/// A route's local rate limit: any bucket Envoy accepts, status, fractions and headers.
fn local_ratelimit() -> impl Strategy<Value = gofe_model::LocalRateLimitConfig> {
    use gofe_model::local_ratelimit::{TokenBucketConfig, XRateLimitHeaders};
    (
        (any::<u32>(), 1..=u32::MAX, duration()),
        (400u16..600, percent(), percent(), any::<bool>()),
    )
        .prop_map(
            |((max_tokens, tokens_per_fill, interval), (status, enabled, enforced, headers))| {
                gofe_model::LocalRateLimitConfig {
                    token_bucket: TokenBucketConfig {
                        max_tokens,
                        tokens_per_fill,
                        fill_interval: interval.max(Duration::from_millis(50)),
                    },
                    status,
                    filter_enabled: enabled,
                    filter_enforced: enforced,
                    enable_x_ratelimit_headers: if headers {
                        XRateLimitHeaders::DraftVersion03
                    } else {
                        XRateLimitHeaders::Off
                    },
                }
            },
        )
}

/// A route's mirror policies: to any of the clusters, any fraction (Envoy's default included),
/// with or without the host suffix.
fn mirror_policies(
    clusters: usize,
) -> impl Strategy<Value = Vec<gofe_model::RequestMirrorPolicyConfig>> {
    vec(
        (0..clusters, prop::option::of(percent()), any::<bool>()),
        0..3,
    )
    .prop_map(|policies| {
        policies
            .into_iter()
            .map(
                |(cluster, fraction, no_suffix)| gofe_model::RequestMirrorPolicyConfig {
                    cluster: format!("c{cluster}"),
                    runtime_fraction: fraction.unwrap_or_else(gofe_model::mirror::all),
                    disable_shadow_host_suffix_append: no_suffix,
                },
            )
            .collect()
    })
}

fn route(clusters: usize) -> impl Strategy<Value = RouteConfig> {
    (
        (
            0u8..4,
            "/[a-z0-9/]{0,8}",
            vec(header(), 0..3),
            prop::option::of("[a-z0-9-]{1,8}"),
            prop::option::of(fault()),
            prop::option::of(local_ratelimit()),
        ),
        (
            prop::option::of(vec((0..clusters, any::<u32>()), 1..4)),
            0..clusters,
            duration(),
            prop::option::of(retry_policy()),
            prop::option::of(1..=u64::from(u32::MAX)),
            mirror_policies(clusters),
        ),
        (
            (
                vec(query_parameter(), 0..2),
                vec(("[a-z]{1,4}", string_match(), any::<bool>()), 0..2),
            ),
            0u8..5,
            (
                prop::option::of("/[a-z0-9/]{0,5}"),
                regex_rewrite(),
                any::<bool>(),
            ),
            (0u8..3, "[a-z0-9.-]{1,8}(:[0-9]{1,4})?"),
            (redirect(true), redirect(false)),
            (200u16..600, prop::option::of("[ -~]{1,20}")),
            mutations(),
        ),
    )
        .prop_map(
            |(
                (path_kind, path, headers, name, fault, local_ratelimit),
                (weighted, cluster, timeout, retry, limit, mirrors),
                (
                    (query_parameters, cookies),
                    action_kind,
                    (prefix_rewrite, rr, use_regex_rewrite),
                    (host_kind, host),
                    (redirect_prefix, redirect_regex),
                    (status, body),
                    (request_add, request_remove, response_add, response_remove),
                ),
            )| {
                let separated = path.trim_end_matches('/');
                let matcher = RouteMatchConfig {
                    prefix: (path_kind == 0).then(|| path.clone()),
                    path: (path_kind == 1).then(|| path.clone()),
                    safe_regex: (path_kind == 2).then(|| format!("{path}[0-9]*")),
                    path_separated_prefix: (path_kind == 3).then(|| {
                        if separated.is_empty() {
                            "/x".to_owned()
                        } else {
                            separated.to_owned()
                        }
                    }),
                    headers,
                    query_parameters,
                    cookies: cookies
                        .into_iter()
                        .map(
                            |(name, string_match, invert_match)| gofe_model::CookieMatcherConfig {
                                name,
                                string_match,
                                invert_match,
                            },
                        )
                        .collect(),
                };
                let prefix_ok = path_kind != 2;
                let weighted_clusters = weighted.map(|ws| {
                    let mut seen = HashSet::new();
                    let mut clusters: Vec<ClusterWeightConfig> = ws
                        .into_iter()
                        .filter(|(i, _)| seen.insert(*i))
                        .map(|(i, weight)| ClusterWeightConfig {
                            name: format!("c{i}"),
                            weight,
                        })
                        .collect();
                    if clusters.iter().all(|c| c.weight == 0) {
                        clusters[0].weight = 1;
                    }
                    WeightedClustersConfig { clusters }
                });
                let (prefix_rewrite, regex_rewrite) = match (use_regex_rewrite, prefix_ok) {
                    (true, _) => (None, Some(rr)),
                    (false, true) => (prefix_rewrite, None),
                    (false, false) => (None, None),
                };
                let mut out = RouteConfig {
                    name,
                    matcher,
                    route: RouteActionConfig {
                        cluster: weighted_clusters.is_none().then(|| format!("c{cluster}")),
                        weighted_clusters,
                        timeout,
                        retry_policy: retry,
                        max_request_bytes: limit,
                        request_mirror_policies: mirrors,
                        prefix_rewrite,
                        regex_rewrite,
                        host_rewrite_literal: (host_kind == 1).then(|| host.clone()),
                        host_rewrite_header: (host_kind == 2).then(|| "x-host".to_owned()),
                    },
                    fault,
                    local_ratelimit,
                    request_headers_to_add: request_add,
                    request_headers_to_remove: request_remove,
                    response_headers_to_add: response_add,
                    response_headers_to_remove: response_remove,
                    ..Default::default()
                };
                match action_kind {
                    3 => {
                        out.route = RouteActionConfig::none();
                        out.redirect = Some(if prefix_ok {
                            redirect_prefix
                        } else {
                            redirect_regex
                        });
                    }
                    4 => {
                        out.route = RouteActionConfig::none();
                        out.direct_response =
                            Some(gofe_model::DirectResponseConfig { status, body });
                    }
                    _ => {}
                }
                out
            },
        )
}

fn router(clusters: usize) -> impl Strategy<Value = RouterConfig> {
    let host = (
        vec(route(clusters), 0..3),
        prop::option::of(fault()),
        prop::option::of(local_ratelimit()),
        mutations(),
    );
    (vec(host, 1..4), mutations(), any::<bool>()).prop_flat_map(|(hosts, top, wins)| {
        let n = hosts.len();
        (
            Just((hosts, top, wins)),
            (0..n).map(domains).collect::<Vec<_>>(),
        )
            .prop_map(|((hosts, top, wins), domains)| RouterConfig {
                virtual_hosts: hosts
                    .into_iter()
                    .zip(domains)
                    .enumerate()
                    .map(
                        |(hi, ((routes, fault, local_ratelimit, m), domains))| VirtualHostConfig {
                            name: format!("vh{hi}"),
                            domains,
                            routes,
                            fault,
                            local_ratelimit,
                            request_headers_to_add: m.0,
                            request_headers_to_remove: m.1,
                            response_headers_to_add: m.2,
                            response_headers_to_remove: m.3,
                        },
                    )
                    .collect(),
                request_headers_to_add: top.0,
                request_headers_to_remove: top.1,
                response_headers_to_add: top.2,
                response_headers_to_remove: top.3,
                most_specific_header_mutations_wins: wins,
            })
    })
}

/// A format string gofe writes (an operator with an argument, a truncation, plain text, `%%`).
fn format() -> impl Strategy<Value = String> {
    prop::sample::select(vec![
        "%REQ(:PATH)% %RESPONSE_CODE%\n",
        "[%START_TIME%] %RESPONSE_FLAGS% %REQ(X-REQUEST-ID?USER-AGENT):12%",
        "%UPSTREAM_HOST% 100%% %DURATION%",
        "plain text",
    ])
    .prop_map(String::from)
}

/// A listener's access logs: stdout or a file, each with the default, a text or a JSON format.
fn access_logs() -> impl Strategy<Value = Vec<gofe_model::AccessLogConfig>> {
    vec(
        (
            prop::option::of("/[a-z]{1,8}\\.log"),
            0u8..3,
            format(),
            prop::collection::btree_map("[a-z_]{1,6}", format(), 1..3),
        ),
        0..3,
    )
    .prop_map(|logs| {
        logs.into_iter()
            .map(|(path, kind, text, json)| gofe_model::AccessLogConfig {
                path,
                format: (kind == 1).then_some(text),
                json_format: (kind == 2).then_some(json),
            })
            .collect()
    })
}

/// A listener's tracing: any of Envoy's percentages, a collector with or without a cluster,
/// a service name, a cache size (gofe's own settings keep their defaults: xDS cannot say
/// them).
fn tracing() -> impl Strategy<Value = Option<gofe_model::TracingConfig>> {
    prop::option::of(
        (
            (0.0..=100.0f64, 0.0..=100.0f64, 0.0..=100.0f64),
            (
                "[a-z]{1,8}",
                1u16..,
                prop::option::of("[a-z]{1,8}"),
                positive_duration(),
            ),
            ("[a-z:_]{1,12}", 1u32..),
        )
            .prop_map(
                |((client, random, overall), (host, port, cluster, timeout), (service, cache))| {
                    let mut t = gofe_model::TracingConfig::to_collector(&format!(
                        "http://{host}:{port}/v1/traces"
                    ));
                    t.client_sampling.value = client;
                    t.random_sampling.value = random;
                    t.overall_sampling.value = overall;
                    let otel = &mut t.provider.opentelemetry;
                    otel.service_name = service;
                    otel.max_cache_size = cache;
                    otel.http_service.http_uri.cluster = cluster;
                    otel.http_service.http_uri.timeout = timeout;
                    t
                },
            ),
    )
}

/// The passthrough cluster every generated configuration has (an `original_dst` cluster).
const PASSTHROUGH: &str = "pt";

fn passthrough_cluster() -> impl Strategy<Value = ClusterConfig> {
    (positive_duration(), circuit_breakers()).prop_map(|(connect_timeout, cb)| {
        let mut c = empty_cluster(PASSTHROUGH);
        c.discovery = gofe_model::DiscoveryType::OriginalDst;
        c.connect_timeout = connect_timeout;
        c.circuit_breakers = cb;
        c
    })
}

/// A tcp_proxy to one cluster, the passthrough, or a weighted split of the `clusters`.
fn tcp_proxy(li: usize, clusters: usize) -> impl Strategy<Value = gofe_model::TcpProxyConfig> {
    (
        0usize..3,
        0..clusters,
        vec((0..clusters, 1u32..100), 1..4),
        any::<bool>(),
        duration(),
    )
        .prop_map(move |(kind, one, split, prefixed, idle_timeout)| {
            let mut split: Vec<gofe_model::ClusterWeightConfig> = split
                .into_iter()
                .map(|(i, weight)| gofe_model::ClusterWeightConfig {
                    name: format!("c{i}"),
                    weight,
                })
                .collect();
            split.sort_by(|a, b| a.name.cmp(&b.name));
            split.dedup_by(|a, b| a.name == b.name);
            let (cluster, weighted_clusters) = match kind {
                0 => (Some(format!("c{one}")), None),
                1 => (Some(PASSTHROUGH.to_owned()), None),
                _ => (
                    None,
                    Some(gofe_model::WeightedClustersConfig { clusters: split }),
                ),
            };
            gofe_model::TcpProxyConfig {
                stat_prefix: prefixed.then(|| format!("tcp-{li}")),
                cluster,
                weighted_clusters,
                idle_timeout,
            }
        })
}

fn listener(li: usize, clusters: usize) -> impl Strategy<Value = ListenerConfig> {
    (
        http_listener(li, clusters),
        prop::option::of(tcp_proxy(li, clusters)),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(mut l, tcp, capture, unbound)| {
            if let Some(t) = tcp {
                // A tcp listener: only the settings a tcp_proxy chain carries travel.
                l.protocol = "tcp".into();
                l.filters.clear();
                l.tls = None;
                l.tracing = None;
                l.rbac = None;
                l.max_request_headers_kb = gofe_model::DEFAULT_MAX_REQUEST_HEADERS_KB;
                l.request_headers_timeout = gofe_model::DEFAULT_REQUEST_HEADERS_TIMEOUT;
                l.idle_timeout = gofe_model::DEFAULT_LISTENER_IDLE_TIMEOUT;
                l.tcp_proxy = Some(t);
            }
            let has_port = !l.address.ends_with(":0");
            if unbound && !capture && l.tls.is_none() && has_port {
                l.bind_to_port = false;
            } else {
                l.use_original_dst = capture;
            }
            l
        })
}

fn http_listener(li: usize, clusters: usize) -> impl Strategy<Value = ListenerConfig> {
    (
        (
            any::<u16>(),
            any::<bool>(),
            tls(),
            prop::option::of(1..=u32::MAX),
        ),
        (1..=8192u32, duration(), duration(), router(clusters)),
        (access_logs(), tracing(), rbac()),
    )
        .prop_map(
            move |(
                (port, named, tls, max_connections),
                (kb, headers, idle, router),
                (access_log, tracing, rbac),
            )| {
                ListenerConfig {
                    name: named.then(|| format!("l{li}")),
                    address: format!("127.0.0.{}:{port}", li + 1),
                    protocol: "http".into(),
                    tls,
                    rbac,
                    filters: vec![FilterConfig {
                        kind: "router".into(),
                        config: router,
                    }],
                    max_connections,
                    max_request_headers_kb: kb,
                    request_headers_timeout: headers,
                    idle_timeout: idle,
                    access_log,
                    tracing,
                    tcp_proxy: None,
                    use_original_dst: false,
                    bind_to_port: true,
                    filter_chains: Vec::new(),
                    tls_inspector: false,
                    http_inspector: false,
                }
            },
        )
}

pub(super) fn proxy_config() -> impl Strategy<Value = ProxyConfig> {
    (1usize..4, 0usize..3).prop_flat_map(|(nc, nl)| {
        (
            (0..nc).map(cluster).collect::<Vec<_>>(),
            (0..nl).map(|li| listener(li, nc)).collect::<Vec<_>>(),
            passthrough_cluster(),
        )
            .prop_map(|(mut clusters, listeners, passthrough)| {
                clusters.push(passthrough);
                ProxyConfig {
                    listeners,
                    clusters,
                    admin: None,
                    locality: None,
                }
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// What the proxy applies from xDS is exactly what the controller published.
    #[test]
    fn every_valid_config_round_trips_through_xds(config in proxy_config()) {
        let problems = gofe_model::validate(&config);
        prop_assert!(problems.is_empty(), "the generator made an invalid config: {problems:?}");
        let back = from_xds(&to_xds(&config));
        prop_assert_eq!(canonical(back), canonical(config));
    }
}

/// A config and API listeners for some of its clusters (`api-N`, or a cluster's own name).
fn config_with_api_listeners() -> impl Strategy<Value = (ProxyConfig, Vec<ApiListener>)> {
    proxy_config().prop_flat_map(|config| {
        let clusters: Vec<String> = config.clusters.iter().map(|c| c.name.clone()).collect();
        let n = clusters.len();
        (
            Just(config),
            vec((0..n, any::<bool>()), 0..4).prop_map(move |picks| {
                let mut out: Vec<ApiListener> = picks
                    .into_iter()
                    .enumerate()
                    .map(|(i, (c, own_name))| ApiListener {
                        name: if own_name {
                            clusters[c].clone()
                        } else {
                            format!("api-{i}")
                        },
                        cluster: clusters[c].clone(),
                    })
                    .collect();
                out.sort();
                out.dedup_by(|a, b| a.name == b.name);
                out
            }),
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// API listeners travel as Envoy's api_listener (an HTTP connection manager on RDS, router
    /// last) with their route configuration, come back as they were published, and never
    /// change what the proxy itself applies.
    #[test]
    fn api_listeners_round_trip_beside_the_proxy_config((config, api) in config_with_api_listeners()) {
        let proxies = from_proxy_config(&config).unwrap();
        let mut resources = proxies.clone();
        let skipped = add_api_listeners(&mut resources, &api);
        for a in &api {
            let taken = proxies.listeners.contains_key(&a.name) || proxies.routes.contains_key(&a.name);
            prop_assert_eq!(
                skipped.contains(&ApiListenerSkipped::NameTaken(a.name.clone())),
                taken,
                "a name the proxies' resources hold is left to them"
            );
            if taken {
                prop_assert_eq!(format!("{:?}", resources.listeners[&a.name]), format!("{:?}", proxies.listeners[&a.name]));
                continue;
            }
            let (listener, routes) = api_listener_resources(a);
            let wire = listener_to_wire(&resources.listeners[&a.name]).unwrap();
            prop_assert!(wire.address.is_none() && wire.filter_chains.is_empty());
            let any = wire.api_listener.as_ref().and_then(|l| l.api_listener.as_ref()).unwrap();
            let manager: hcm::HttpConnectionManager = typed(any);
            prop_assert_eq!(manager.http_filters.last().map(|f| f.name.as_str()), Some(ROUTER_FILTER_NAME));
            prop_assert!(matches!(
                &manager.route_specifier,
                Some(hcm::http_connection_manager::RouteSpecifier::Rds(r)) if r.route_config_name == a.name
            ));
            prop_assert_eq!(format!("{:?}", listener_from_wire(&wire).unwrap()), format!("{listener:?}"));
            let back = route_from_wire(&route_to_wire(&resources.routes[&a.name]).unwrap()).unwrap();
            prop_assert_eq!((&back.name, &back.router), (&routes.name, &routes.router));
        }
        let encoded: Vec<(ResourceType, Vec<Any>)> = ResourceType::ALL
            .into_iter()
            .map(|t| (t, resources.encode(t).unwrap().into_values().collect()))
            .collect();
        prop_assert_eq!(canonical(from_xds(&encoded)), canonical(config));
    }
}

#[test]
fn weight_zero_is_drained_for_envoy_and_exact_for_gofe() {
    for health in [
        HealthStatus::Healthy,
        HealthStatus::Draining,
        HealthStatus::Unhealthy,
    ] {
        let e = EndpointsResource {
            cluster_name: "c".into(),
            endpoints: vec![EndpointConfig {
                health_status: health,
                ..EndpointConfig::new("10.0.0.1:80", 0)
            }],
            overprovisioning_factor: gofe_model::DEFAULT_OVERPROVISIONING_FACTOR,
        };
        let wire = endpoints_to_wire(&e);
        let lb = &wire.endpoints[0].lb_endpoints[0];
        // What an Envoy client sees: the smallest weight it accepts, and no new traffic.
        assert_eq!(lb.load_balancing_weight, u32w(1));
        let envoy_health = if health == HealthStatus::Unhealthy {
            core::HealthStatus::Unhealthy
        } else {
            core::HealthStatus::Draining
        };
        assert_eq!(lb.health_status, envoy_health as i32, "{health:?}");
        assert_eq!(
            wire.endpoints[0].load_balancing_weight, None,
            "gRPC: no share"
        );
        // What gofe reads back: exactly what was sent.
        let back = endpoints_from_wire(&wire).unwrap();
        assert_eq!(back.endpoints, e.endpoints);
    }
}

#[test]
fn values_without_an_envoy_form_are_refused_by_path() {
    type Mutation = Box<dyn Fn(&mut ProxyConfig)>;
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "listeners[0].max_connections",
            Box::new(|c| c.listeners[0].max_connections = Some(0)),
        ),
        (
            "listeners[0].max_request_headers_kb",
            Box::new(|c| c.listeners[0].max_request_headers_kb = 0),
        ),
        (
            "listeners[0].max_request_headers_kb",
            Box::new(|c| c.listeners[0].max_request_headers_kb = 8193),
        ),
        (
            "listeners[0].filters[0].config.virtual_hosts[0].routes[1].route.max_request_bytes",
            Box::new(|c| {
                c.listeners[0].filters[0].config.virtual_hosts[0].routes[1]
                    .route
                    .max_request_bytes = Some(0)
            }),
        ),
        (
            "listeners[0].filters[0].config.virtual_hosts[0].routes[1].route.max_request_bytes",
            Box::new(|c| {
                c.listeners[0].filters[0].config.virtual_hosts[0].routes[1]
                    .route
                    .max_request_bytes = Some(1 << 32)
            }),
        ),
        (
            "listeners[0].filters[0].config.virtual_hosts[0].routes[0].route.timeout",
            Box::new(|c| {
                c.listeners[0].filters[0].config.virtual_hosts[0].routes[0]
                    .route
                    .timeout = Duration::from_secs(u64::MAX)
            }),
        ),
        (
            "clusters[1].idle_timeout",
            Box::new(|c| c.clusters[1].idle_timeout = Duration::ZERO),
        ),
        (
            "clusters[0].connect_timeout",
            Box::new(|c| c.clusters[0].connect_timeout = Duration::ZERO),
        ),
        (
            "clusters[0].outlier_detection.base_ejection_time",
            Box::new(|c| {
                c.clusters[0].outlier_detection = Some(OutlierDetectionConfig {
                    base_ejection_time: Duration::ZERO,
                    ..Default::default()
                })
            }),
        ),
        (
            "listeners[1].name",
            Box::new(|c| {
                // Unnamed, listener 0's resource name is its address: taken by listener 1.
                c.listeners[0].name = None;
                let mut l = c.listeners[0].clone();
                l.name = Some("127.0.0.1:8080".into());
                l.address = "127.0.0.1:8081".into();
                c.listeners.push(l);
            }),
        ),
    ];
    for (field, mutate) in cases {
        let mut c = sample();
        mutate(&mut c);
        assert!(
            gofe_model::validate(&c).is_empty(),
            "{field}: valid for the proxy"
        );
        match from_proxy_config(&c) {
            Err(ConvertError::Unpublishable { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{field}: {other:?}"),
        }
    }
}

#[test]
fn the_admin_listener_is_a_reported_omission() {
    let mut c = sample();
    c.admin = Some(gofe_model::AdminConfig {
        address: "127.0.0.1:9901".into(),
    });
    let published = from_proxy_config(&c).expect("admin does not stop publication");
    assert!(unpublishable(&sample()).is_empty());
    let notes = unpublishable(&c);
    assert_eq!(notes.len(), 1);
    assert_eq!(notes[0].field, "admin");
    assert!(notes[0].message.contains("bootstrap"), "{}", notes[0]);
    // Nothing of it is in the resources.
    c.admin = None;
    assert_eq!(
        canonical(from_xds(&to_xds(&c))),
        canonical(assemble(&ProxyConfig::default(), &published))
    );
}
