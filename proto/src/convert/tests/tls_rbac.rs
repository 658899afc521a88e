//! Client certificates (`DownstreamTlsContext` with a `validation_context`) and the RBAC
//! filter over xDS: each field gofe reads, and each it refuses by name.

use envoy_types::pb::envoy::config::rbac::v3 as rbac;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3 as rbac_filter;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;

use super::*;

/// The sample's listener with TLS (a CA file, a URI SAN matcher, client certificates
/// required) and an RBAC filter, in gofe's wire form.
fn mtls_rbac_wire() -> listener::Listener {
    let mut c = sample();
    let yaml = r#"
certificate_chain: /etc/gofe/cert.pem
private_key: /etc/gofe/key.pem
require_client_certificate: true
validation_context:
  trusted_ca: { filename: /etc/gofe/ca.pem }
  match_typed_subject_alt_names:
    - { san_type: URI, matcher: { prefix: "spiffe://mesh/ns/shop/" } }
"#;
    c.listeners[0].tls = Some(gofe_yaml::from_str(yaml).unwrap());
    let yaml = r#"
rules:
  action: DENY
  policies:
    no-admin:
      permissions: [{ url_path: { path: { prefix: /admin } } }]
      principals: [{ not_id: { authenticated: { principal_name: { exact: "spiffe://mesh/ns/shop/sa/ops" } } } }]
"#;
    c.listeners[0].rbac = Some(gofe_yaml::from_str(yaml).unwrap());
    let r = from_proxy_config(&c).unwrap();
    listener_to_wire(&r.listeners["public"]).unwrap()
}

fn settings(l: &listener::Listener) -> Result<SocketSettings, ConvertError> {
    match listener_from_wire(l)?.kind {
        ListenerKind::Socket { settings, .. } => Ok(settings),
        ListenerKind::Api => panic!("a socket listener"),
    }
}

fn tls_context(l: &listener::Listener) -> tls::DownstreamTlsContext {
    let ts = l.filter_chains[0].transport_socket.as_ref().unwrap();
    let Some(core::transport_socket::ConfigType::TypedConfig(any)) = &ts.config_type else {
        panic!()
    };
    typed(any)
}

fn set_tls(l: &mut listener::Listener, f: impl FnOnce(&mut tls::DownstreamTlsContext)) {
    let mut t = tls_context(l);
    f(&mut t);
    l.filter_chains[0]
        .transport_socket
        .as_mut()
        .unwrap()
        .config_type = Some(core::transport_socket::ConfigType::TypedConfig(to_any(&t)));
}

fn validation(t: &mut tls::DownstreamTlsContext) -> &mut tls::CertificateValidationContext {
    use tls::common_tls_context::ValidationContextType as V;
    match t
        .common_tls_context
        .as_mut()
        .unwrap()
        .validation_context_type
        .as_mut()
    {
        Some(V::ValidationContext(v)) => v,
        _ => panic!("a validation_context"),
    }
}

fn rbac_of(l: &listener::Listener) -> rbac_filter::Rbac {
    let m = hcm_of(l);
    assert_eq!(m.http_filters[0].name, RBAC_FILTER_NAME, "RBAC comes first");
    let Some(hcm::http_filter::ConfigType::TypedConfig(any)) = &m.http_filters[0].config_type
    else {
        panic!()
    };
    typed(any)
}

fn set_rbac(l: &mut listener::Listener, f: impl FnOnce(&mut rbac_filter::Rbac)) {
    let mut r = rbac_of(l);
    f(&mut r);
    set_hcm(l, |m| {
        m.http_filters[0].config_type = Some(hcm::http_filter::ConfigType::TypedConfig(to_any(&r)))
    });
}

fn policy(r: &mut rbac_filter::Rbac) -> &mut rbac::Policy {
    r.rules
        .as_mut()
        .unwrap()
        .policies
        .get_mut("no-admin")
        .unwrap()
}

#[test]
fn client_certificates_travel_in_envoys_fields() {
    let l = mtls_rbac_wire();
    let mut t = tls_context(&l);
    assert_eq!(
        t.require_client_certificate,
        Some(BoolValue { value: true })
    );
    let v = validation(&mut t);
    assert_eq!(
        v.trusted_ca.as_ref().unwrap().specifier,
        Some(core::data_source::Specifier::Filename(
            "/etc/gofe/ca.pem".into()
        ))
    );
    assert_eq!(v.match_typed_subject_alt_names.len(), 1);
    assert_eq!(
        v.match_typed_subject_alt_names[0].san_type,
        tls::subject_alt_name_matcher::SanType::Uri as i32
    );
    let s = settings(&l).unwrap();
    let back = s.tls.unwrap();
    assert!(back.require_client_certificate);
    let vc = back.validation_context.unwrap();
    assert_eq!(vc.trusted_ca.filename.as_deref(), Some("/etc/gofe/ca.pem"));
    assert_eq!(
        vc.match_typed_subject_alt_names[0]
            .matcher
            .prefix
            .as_deref(),
        Some("spiffe://mesh/ns/shop/")
    );
}

#[test]
fn an_inline_ca_and_dns_sans_are_read_and_a_missing_require_is_envoys_false() {
    let mut l = mtls_rbac_wire();
    set_tls(&mut l, |t| {
        t.require_client_certificate = None;
        let v = validation(t);
        v.trusted_ca = Some(core::DataSource {
            specifier: Some(core::data_source::Specifier::InlineBytes(b"PEM".to_vec())),
            ..Default::default()
        });
        v.match_typed_subject_alt_names[0].san_type =
            tls::subject_alt_name_matcher::SanType::Dns as i32;
    });
    let t = settings(&l).unwrap().tls.unwrap();
    assert!(!t.require_client_certificate);
    let vc = t.validation_context.unwrap();
    assert_eq!(vc.trusted_ca.inline_string.as_deref(), Some("PEM"));
    assert_eq!(
        vc.match_typed_subject_alt_names[0].san_type,
        gofe_model::SanType::Dns
    );
}

#[test]
fn client_certificate_fields_gofe_does_not_honour_are_refused_by_name() {
    use tls::common_tls_context::ValidationContextType as V;
    let refused = |f: &dyn Fn(&mut tls::DownstreamTlsContext), field: &str| {
        let mut l = mtls_rbac_wire();
        set_tls(&mut l, f);
        let e = err(settings(&l));
        assert!(e.contains(field), "{field}: {e}");
    };
    refused(
        &|t| validation(t).verify_certificate_hash = vec!["ab".into()],
        "validation_context.verify_certificate_hash",
    );
    refused(
        &|t| validation(t).allow_expired_certificate = true,
        "validation_context.allow_expired_certificate",
    );
    refused(
        &|t| validation(t).trust_chain_verification = 1,
        "validation_context.trust_chain_verification",
    );
    refused(
        &|t| validation(t).match_typed_subject_alt_names[0].san_type = 1,
        "match_typed_subject_alt_names[0].san_type",
    );
    refused(
        &|t| {
            validation(t).match_typed_subject_alt_names[0]
                .matcher
                .as_mut()
                .unwrap()
                .ignore_case = true
        },
        "match_typed_subject_alt_names[0].matcher.ignore_case",
    );
    refused(
        &|t| validation(t).trusted_ca = None,
        "validation_context.trusted_ca",
    );
    refused(
        &|t| {
            t.common_tls_context
                .as_mut()
                .unwrap()
                .validation_context_type =
                Some(V::ValidationContextSdsSecretConfig(Default::default()))
        },
        "common_tls_context.validation_context_sds_secret_config",
    );
    refused(
        &|t| {
            t.common_tls_context
                .as_mut()
                .unwrap()
                .validation_context_type = None;
        },
        "require_client_certificate",
    );
    refused(
        &|t| {
            t.common_tls_context
                .as_mut()
                .unwrap()
                .tls_certificate_sds_secret_configs = vec![Default::default()]
        },
        "common_tls_context.tls_certificate_sds_secret_configs",
    );
}

#[test]
fn the_rbac_filter_travels_first_in_the_connection_manager() {
    let l = mtls_rbac_wire();
    let r = rbac_of(&l);
    let rules = r.rules.as_ref().unwrap();
    assert_eq!(rules.action, rbac::rbac::Action::Deny as i32);
    assert!(rules.policies.contains_key("no-admin"));
    let s = settings(&l).unwrap();
    let back = s.rbac.unwrap();
    assert_eq!(back.rules.action, gofe_model::rbac::RbacAction::Deny);
    assert_eq!(
        back.rules.policies["no-admin"].permissions,
        vec![gofe_model::rbac::PermissionConfig::UrlPath(
            gofe_model::rbac::PathMatcherConfig {
                path: StringMatchConfig {
                    prefix: Some("/admin".into()),
                    ..Default::default()
                }
            }
        )]
    );
}

#[test]
#[allow(deprecated)]
fn an_rbac_filter_without_rules_lets_everything_through_and_pseudo_headers_are_read() {
    let mut l = mtls_rbac_wire();
    set_rbac(&mut l, |r| r.rules = None);
    assert_eq!(settings(&l).unwrap().rbac, None);
    let mut l = mtls_rbac_wire();
    set_rbac(&mut l, |r| {
        policy(r).permissions = vec![rbac::Permission {
            rule: Some(rbac::permission::Rule::Header(route::HeaderMatcher {
                name: ":method".into(),
                header_match_specifier: Some(
                    route::header_matcher::HeaderMatchSpecifier::StringMatch(
                        matcher::StringMatcher {
                            match_pattern: Some(matcher::string_matcher::MatchPattern::Exact(
                                "POST".into(),
                            )),
                            ignore_case: false,
                        },
                    ),
                ),
                ..Default::default()
            })),
        }];
        // The deprecated source_ip is the peer's address.
        policy(r).principals = vec![rbac::Principal {
            identifier: Some(rbac::principal::Identifier::SourceIp(core::CidrRange {
                address_prefix: "10.0.0.0".into(),
                prefix_len: u32w(8),
            })),
        }];
    });
    let back = settings(&l).unwrap().rbac.unwrap();
    let p = &back.rules.policies["no-admin"];
    assert!(matches!(
        &p.permissions[0],
        gofe_model::rbac::PermissionConfig::Header(h) if h.name == ":method"
    ));
    assert!(matches!(
        &p.principals[0],
        gofe_model::rbac::PrincipalConfig::DirectRemoteIp(c) if c.prefix_len == 8
    ));
}

#[test]
fn rbac_fields_gofe_does_not_honour_are_refused_by_name() {
    let refused = |f: &dyn Fn(&mut rbac_filter::Rbac), field: &str| {
        let mut l = mtls_rbac_wire();
        set_rbac(&mut l, f);
        let e = err(settings(&l));
        assert!(e.contains(field), "{field}: {e}");
    };
    refused(
        &|r| r.shadow_rules = Some(Default::default()),
        "http_filters[0].typed_config.shadow_rules",
    );
    refused(
        &|r| r.matcher = Some(Default::default()),
        "http_filters[0].typed_config.matcher",
    );
    refused(
        &|r| r.rules.as_mut().unwrap().action = rbac::rbac::Action::Log as i32,
        "rules.action",
    );
    refused(
        &|r| policy(r).condition = Some(Default::default()),
        "policies[\"no-admin\"].condition",
    );
    refused(
        &|r| {
            policy(r).permissions[0].rule =
                Some(rbac::permission::Rule::DestinationIp(Default::default()))
        },
        "permissions[0].destination_ip",
    );
    refused(
        &|r| {
            policy(r).permissions[0].rule = Some(rbac::permission::Rule::RequestedServerName(
                Default::default(),
            ))
        },
        "permissions[0].requested_server_name",
    );
    refused(
        &|r| {
            policy(r).principals[0].identifier =
                Some(rbac::principal::Identifier::Header(Default::default()))
        },
        "principals[0].header",
    );
    refused(
        &|r| {
            policy(r).principals[0].identifier =
                Some(rbac::principal::Identifier::RemoteIp(core::CidrRange {
                    address_prefix: "10.0.0.0".into(),
                    prefix_len: u32w(33),
                }))
        },
        "principals[0].remote_ip",
    );
    refused(
        &|r| {
            let Some(rbac::principal::Identifier::NotId(id)) =
                &mut policy(r).principals[0].identifier
            else {
                panic!()
            };
            let Some(rbac::principal::Identifier::Authenticated(a)) = &mut id.identifier else {
                panic!()
            };
            a.principal_name = Some(matcher::StringMatcher {
                match_pattern: Some(matcher::string_matcher::MatchPattern::SafeRegex(
                    Default::default(),
                )),
                ignore_case: false,
            });
        },
        "principals[0].not_id.authenticated.principal_name.safe_regex",
    );
}

#[test]
fn a_per_route_rbac_override_is_refused_by_name() {
    let (_, _, mut rc, _) = sample_wire();
    rc.virtual_hosts[0].routes[0]
        .typed_per_filter_config
        .insert(
            RBAC_FILTER_NAME.into(),
            to_any(&rbac_filter::RbacPerRoute { rbac: None }),
        );
    let e = err(route_from_wire(&rc));
    assert!(
        e.contains("typed_per_filter_config[\"envoy.filters.http.rbac\"]"),
        "{e}"
    );
}
