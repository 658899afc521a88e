//! Upstream TLS over xDS: a cluster's `transport_socket` with an `UpstreamTlsContext`, what
//! gofe reads from it and what it refuses by name.

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;

use super::*;

fn file(path: &str) -> Option<core::DataSource> {
    Some(core::DataSource {
        specifier: Some(core::data_source::Specifier::Filename(path.into())),
        ..Default::default()
    })
}

fn socket(context: &tls::UpstreamTlsContext) -> core::TransportSocket {
    core::TransportSocket {
        name: TLS_TRANSPORT_SOCKET_NAME.into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(to_any(
            context,
        ))),
    }
}

/// What Envoy's docs would write: SNI, a CA file, a SPIFFE URI prefix, a client certificate,
/// ALPN for HTTP/1.1.
fn envoy_context() -> tls::UpstreamTlsContext {
    tls::UpstreamTlsContext {
        sni: "payments.shop.test".into(),
        common_tls_context: Some(tls::CommonTlsContext {
            tls_certificates: vec![tls::TlsCertificate {
                certificate_chain: file("/etc/gofe/proxy.pem"),
                private_key: Some(core::DataSource {
                    specifier: Some(core::data_source::Specifier::InlineString(
                        "-----BEGIN PRIVATE KEY-----\n".into(),
                    )),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            alpn_protocols: vec!["http/1.1".into()],
            validation_context_type: Some(
                tls::common_tls_context::ValidationContextType::ValidationContext(
                    tls::CertificateValidationContext {
                        trusted_ca: file("/etc/gofe/ca.pem"),
                        match_typed_subject_alt_names: vec![tls::SubjectAltNameMatcher {
                            san_type: tls::subject_alt_name_matcher::SanType::Uri as i32,
                            matcher: Some(matcher::StringMatcher {
                                match_pattern: Some(matcher::string_matcher::MatchPattern::Prefix(
                                    "spiffe://shop.test/".into(),
                                )),
                                ignore_case: false,
                            }),
                            oid: String::new(),
                        }],
                        ..Default::default()
                    },
                ),
            ),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn an_upstream_tls_context_is_read_and_written_back() {
    let (_, _, _, mut c) = sample_wire();
    c.transport_socket = Some(socket(&envoy_context()));
    let r = cluster_from_wire(&c).unwrap();
    let t = r.config.tls.clone().expect("tls read");
    use gofe_model::upstream_tls::{PemSource, SanType};
    assert_eq!(t.sni.as_deref(), Some("payments.shop.test"));
    assert_eq!(
        t.trusted_ca,
        Some(PemSource::File("/etc/gofe/ca.pem".into()))
    );
    assert_eq!(t.alpn_protocols, ["http/1.1"]);
    let m = &t.match_subject_alt_names[0];
    assert_eq!(m.san_type, SanType::Uri);
    assert_eq!(m.matcher.prefix.as_deref(), Some("spiffe://shop.test/"));
    let cert = t.client_certificate.as_ref().unwrap();
    assert_eq!(
        cert.certificate_chain,
        PemSource::File("/etc/gofe/proxy.pem".into())
    );
    assert!(matches!(cert.private_key, PemSource::Inline(_)));
    let again = cluster_to_wire(&r).unwrap();
    assert_eq!(again.transport_socket, c.transport_socket);
    // Without a transport socket the cluster is plaintext, and stays so.
    let (_, _, _, plain) = sample_wire();
    assert_eq!(cluster_from_wire(&plain).unwrap().config.tls, None);
}

fn validation(t: &mut tls::UpstreamTlsContext) -> &mut tls::CertificateValidationContext {
    match t
        .common_tls_context
        .as_mut()
        .and_then(|c| c.validation_context_type.as_mut())
    {
        Some(tls::common_tls_context::ValidationContextType::ValidationContext(v)) => v,
        _ => panic!("no validation context"),
    }
}

#[test]
fn fields_gofe_cannot_honour_are_refused_by_name() {
    let refused = |edit: &dyn Fn(&mut tls::UpstreamTlsContext), field: &str| {
        let (_, _, _, mut c) = sample_wire();
        let mut context = envoy_context();
        edit(&mut context);
        c.transport_socket = Some(socket(&context));
        let e = err(cluster_from_wire(&c));
        assert!(
            e.contains("Cluster \"v1\"") && e.contains(field),
            "{field}: {e}"
        );
    };
    refused(
        &|t| t.allow_renegotiation = true,
        "transport_socket.typed_config.allow_renegotiation",
    );
    refused(&|t| t.auto_host_sni = true, "typed_config.auto_host_sni");
    refused(
        &|t| t.auto_sni_san_validation = true,
        "typed_config.auto_sni_san_validation",
    );
    refused(
        &|t| t.max_session_keys = Some(UInt32Value { value: 4 }),
        "typed_config.max_session_keys",
    );
    refused(
        &|t| validation(t).verify_certificate_spki = vec!["x".into()],
        "validation_context.verify_certificate_spki",
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
        &|t| {
            validation(t).trusted_ca = Some(core::DataSource {
                specifier: Some(core::data_source::Specifier::EnvironmentVariable(
                    "CA".into(),
                )),
                ..Default::default()
            })
        },
        "validation_context.trusted_ca",
    );
    refused(
        &|t| {
            t.common_tls_context.as_mut().unwrap().tls_params = Some(Default::default());
        },
        "common_tls_context.tls_params",
    );
    // Not a TLS context at all.
    let (_, _, _, mut c) = sample_wire();
    c.transport_socket = Some(core::TransportSocket {
        name: "envoy.transport_sockets.raw_buffer".into(),
        config_type: None,
    });
    let e = err(cluster_from_wire(&c));
    assert!(e.contains("transport_socket"), "{e}");
}

#[test]
fn alpn_the_cluster_does_not_speak_and_sans_without_a_ca_are_nacked() {
    let nacked = |context: tls::UpstreamTlsContext, field: &str| {
        let (_, _, _, mut c) = sample_wire();
        c.transport_socket = Some(socket(&context));
        let e = match decode_resource(ResourceType::Cluster, &to_any(&c)) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{field}: accepted"),
        };
        assert!(e.contains(field), "{field}: {e}");
    };
    let mut h2_only = envoy_context();
    h2_only.common_tls_context.as_mut().unwrap().alpn_protocols = vec!["h2".into()];
    nacked(h2_only, "alpn_protocols");
    let mut no_ca = envoy_context();
    if let Some(tls::common_tls_context::ValidationContextType::ValidationContext(v)) = no_ca
        .common_tls_context
        .as_mut()
        .unwrap()
        .validation_context_type
        .as_mut()
    {
        v.trusted_ca = None;
    }
    nacked(no_ca, "match_subject_alt_names");
}
