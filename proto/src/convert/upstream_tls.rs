//! A cluster's upstream TLS: `transport_socket` `envoy.transport_sockets.tls` with an
//! `UpstreamTlsContext`, to and from [`UpstreamTlsConfig`].

use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3 as tls;
use gofe_model::upstream_tls::{ClientCertificateConfig, PemSource, SanMatcherConfig, SanType};
use gofe_model::UpstreamTlsConfig;

use super::*;

// === to wire ===

fn source_to_wire(s: &PemSource) -> core::DataSource {
    use self::core::data_source::Specifier;
    core::DataSource {
        specifier: Some(match s {
            PemSource::File(path) => Specifier::Filename(path.clone()),
            PemSource::Inline(text) => Specifier::InlineString(text.clone()),
        }),
        ..Default::default()
    }
}

/// The cluster's `transport_socket` for `t`.
pub(super) fn upstream_tls_to_wire(t: &UpstreamTlsConfig) -> core::TransportSocket {
    use matcher::string_matcher::MatchPattern;
    let sans = t
        .match_subject_alt_names
        .iter()
        .map(|m| {
            let s = &m.matcher;
            let pattern = match (&s.exact, &s.prefix, &s.suffix, &s.contains) {
                (Some(v), ..) => MatchPattern::Exact(v.clone()),
                (_, Some(v), ..) => MatchPattern::Prefix(v.clone()),
                (_, _, Some(v), _) => MatchPattern::Suffix(v.clone()),
                (.., Some(v)) => MatchPattern::Contains(v.clone()),
                // The model's validation refuses a matcher without a pattern before this.
                (None, None, None, None) => MatchPattern::Exact(String::new()),
            };
            tls::SubjectAltNameMatcher {
                san_type: match m.san_type {
                    SanType::Dns => tls::subject_alt_name_matcher::SanType::Dns,
                    SanType::Uri => tls::subject_alt_name_matcher::SanType::Uri,
                } as i32,
                matcher: Some(matcher::StringMatcher {
                    match_pattern: Some(pattern),
                    ignore_case: false,
                }),
                oid: String::new(),
            }
        })
        .collect();
    let validation = (t.trusted_ca.is_some() || !t.match_subject_alt_names.is_empty()).then(|| {
        tls::common_tls_context::ValidationContextType::ValidationContext(
            tls::CertificateValidationContext {
                trusted_ca: t.trusted_ca.as_ref().map(source_to_wire),
                match_typed_subject_alt_names: sans,
                ..Default::default()
            },
        )
    });
    let context = tls::UpstreamTlsContext {
        common_tls_context: Some(tls::CommonTlsContext {
            tls_certificates: t
                .client_certificate
                .iter()
                .map(|c| tls::TlsCertificate {
                    certificate_chain: Some(source_to_wire(&c.certificate_chain)),
                    private_key: Some(source_to_wire(&c.private_key)),
                    ..Default::default()
                })
                .collect(),
            alpn_protocols: t.alpn_protocols.clone(),
            validation_context_type: validation,
            ..Default::default()
        }),
        sni: t.sni.clone().unwrap_or_default(),
        ..Default::default()
    };
    core::TransportSocket {
        name: TLS_TRANSPORT_SOCKET_NAME.into(),
        config_type: Some(core::transport_socket::ConfigType::TypedConfig(to_any(
            &context,
        ))),
    }
}

// === from wire ===

fn source_from_wire(
    d: &Option<core::DataSource>,
    res: &str,
    field: &str,
) -> Result<PemSource, ConvertError> {
    use self::core::data_source::Specifier;
    let refused = |why: &str| Err(invalid(res, field, why.to_owned()));
    let Some(core::DataSource {
        watched_directory,
        specifier,
    }) = d
    else {
        return refused("needs a data source");
    };
    if watched_directory.is_some() {
        return refused("watched_directory is not supported by gofe");
    }
    match specifier {
        Some(Specifier::Filename(path)) if !path.is_empty() => Ok(PemSource::File(path.clone())),
        Some(Specifier::InlineString(text)) if !text.is_empty() => {
            Ok(PemSource::Inline(text.clone()))
        }
        Some(Specifier::InlineBytes(bytes)) if !bytes.is_empty() => {
            match String::from_utf8(bytes.clone()) {
                Ok(text) => Ok(PemSource::Inline(text)),
                Err(_) => refused("inline_bytes must be PEM text"),
            }
        }
        Some(Specifier::EnvironmentVariable(_)) => {
            refused("environment_variable data sources are not supported by gofe")
        }
        _ => refused("needs a filename, inline_string or inline_bytes"),
    }
}

/// Validates a cluster's `transport_socket` (at `base`) into its upstream TLS.
#[allow(deprecated)]
pub(super) fn upstream_tls_from_wire(
    t: &core::TransportSocket,
    res: &str,
    base: &str,
) -> Result<UpstreamTlsConfig, ConvertError> {
    let any = match &t.config_type {
        Some(core::transport_socket::ConfigType::TypedConfig(a))
            if a.type_url == tls::UpstreamTlsContext::type_url() =>
        {
            a
        }
        _ => {
            return Err(invalid(
                res,
                base,
                format!(
                    "transport socket {:?} not supported by gofe (only an UpstreamTlsContext)",
                    t.name
                ),
            ))
        }
    };
    let base = join(base, "typed_config");
    let tls::UpstreamTlsContext {
        common_tls_context,
        sni,
        auto_host_sni,
        auto_sni_san_validation,
        allow_renegotiation,
        max_session_keys,
        enforce_rsa_key_usage,
    } = from_any(any)?;
    Unsupported::new(res, &base)
        .when("auto_host_sni", auto_host_sni)
        .when("auto_sni_san_validation", auto_sni_san_validation)
        .when("allow_renegotiation", allow_renegotiation)
        // Envoy's default is 1; rustls keeps its own session cache.
        .when(
            "max_session_keys",
            max_session_keys.as_ref().is_some_and(|v| v.value != 1),
        )
        .truthy("enforce_rsa_key_usage", &enforce_rsa_key_usage)
        .finish()?;
    let cbase = join(&base, "common_tls_context");
    #[allow(deprecated)]
    let tls::CommonTlsContext {
        tls_params,
        tls_certificates,
        tls_certificate_sds_secret_configs,
        tls_certificate_provider_instance,
        custom_tls_certificate_selector,
        tls_certificate_certificate_provider,
        tls_certificate_certificate_provider_instance,
        alpn_protocols,
        custom_handshaker,
        key_log,
        validation_context_type,
    } = common_tls_context.unwrap_or_default();
    Unsupported::new(res, &cbase)
        .set("tls_params", &tls_params)
        .set(
            "tls_certificate_sds_secret_configs",
            &tls_certificate_sds_secret_configs,
        )
        .set(
            "tls_certificate_provider_instance",
            &tls_certificate_provider_instance,
        )
        .set(
            "custom_tls_certificate_selector",
            &custom_tls_certificate_selector,
        )
        .set(
            "tls_certificate_certificate_provider",
            &tls_certificate_certificate_provider,
        )
        .set(
            "tls_certificate_certificate_provider_instance",
            &tls_certificate_certificate_provider_instance,
        )
        .set("custom_handshaker", &custom_handshaker)
        .set("key_log", &key_log)
        .finish()?;
    let client_certificate = match tls_certificates.as_slice() {
        [] => None,
        [cert] => {
            let kbase = join(&cbase, "tls_certificates[0]");
            let tls::TlsCertificate {
                certificate_chain,
                private_key,
                pkcs12,
                watched_directory,
                private_key_provider,
                password,
                ocsp_staple,
                signed_certificate_timestamp,
                tls_params,
            } = cert;
            Unsupported::new(res, &kbase)
                .set("pkcs12", pkcs12)
                .set("watched_directory", watched_directory)
                .set("private_key_provider", private_key_provider)
                .set("password", password)
                .set("ocsp_staple", ocsp_staple)
                .set("signed_certificate_timestamp", signed_certificate_timestamp)
                .set("tls_params", tls_params)
                .finish()?;
            Some(ClientCertificateConfig {
                certificate_chain: source_from_wire(
                    certificate_chain,
                    res,
                    &join(&kbase, "certificate_chain"),
                )?,
                private_key: source_from_wire(private_key, res, &join(&kbase, "private_key"))?,
            })
        }
        _ => {
            return Err(invalid(
                res,
                &join(&cbase, "tls_certificates"),
                "at most one client certificate is supported",
            ))
        }
    };
    let mut out = UpstreamTlsConfig {
        sni: (!sni.is_empty()).then_some(sni),
        alpn_protocols,
        client_certificate,
        ..Default::default()
    };
    use tls::common_tls_context::ValidationContextType as V;
    match validation_context_type {
        None => {}
        Some(V::ValidationContext(v)) => {
            validation_from_wire(v, &mut out, res, &join(&cbase, "validation_context"))?
        }
        Some(V::ValidationContextSdsSecretConfig(_)) => {
            return Err(unsupported(
                res,
                &join(&cbase, "validation_context_sds_secret_config"),
            ))
        }
        Some(V::CombinedValidationContext(_)) => {
            return Err(unsupported(
                res,
                &join(&cbase, "combined_validation_context"),
            ))
        }
        Some(V::ValidationContextCertificateProvider(_)) => {
            return Err(unsupported(
                res,
                &join(&cbase, "validation_context_certificate_provider"),
            ))
        }
        Some(V::ValidationContextCertificateProviderInstance(_)) => {
            return Err(unsupported(
                res,
                &join(&cbase, "validation_context_certificate_provider_instance"),
            ))
        }
    }
    Ok(out)
}

#[allow(deprecated)]
fn validation_from_wire(
    v: tls::CertificateValidationContext,
    out: &mut UpstreamTlsConfig,
    res: &str,
    vbase: &str,
) -> Result<(), ConvertError> {
    use matcher::string_matcher::MatchPattern;
    let tls::CertificateValidationContext {
        trusted_ca,
        ca_certificate_provider_instance,
        system_root_certs,
        watched_directory,
        verify_certificate_spki,
        verify_certificate_hash,
        match_typed_subject_alt_names,
        match_subject_alt_names,
        require_signed_certificate_timestamp,
        crl,
        allow_expired_certificate,
        trust_chain_verification,
        custom_validator_config,
        only_verify_leaf_cert_crl,
        max_verify_depth,
        // Only a server sends a CA list to its clients.
        suppress_client_ca_list: _,
    } = v;
    Unsupported::new(res, vbase)
        .set(
            "ca_certificate_provider_instance",
            &ca_certificate_provider_instance,
        )
        .set("system_root_certs", &system_root_certs)
        .set("watched_directory", &watched_directory)
        .set("verify_certificate_spki", &verify_certificate_spki)
        .set("verify_certificate_hash", &verify_certificate_hash)
        .set(
            "match_subject_alt_names (untyped; use match_typed_subject_alt_names)",
            &match_subject_alt_names,
        )
        .truthy(
            "require_signed_certificate_timestamp",
            &require_signed_certificate_timestamp,
        )
        .set("crl", &crl)
        .when("allow_expired_certificate", allow_expired_certificate)
        .set("trust_chain_verification", &trust_chain_verification)
        .set("custom_validator_config", &custom_validator_config)
        .when("only_verify_leaf_cert_crl", only_verify_leaf_cert_crl)
        .set("max_verify_depth", &max_verify_depth)
        .finish()?;
    if trusted_ca.is_some() {
        out.trusted_ca = Some(source_from_wire(
            &trusted_ca,
            res,
            &join(vbase, "trusted_ca"),
        )?);
    }
    for (i, m) in match_typed_subject_alt_names.iter().enumerate() {
        let mbase = format!("{vbase}.match_typed_subject_alt_names[{i}]");
        use tls::subject_alt_name_matcher::SanType as W;
        let san_type = match W::try_from(m.san_type) {
            Ok(W::Dns) => SanType::Dns,
            Ok(W::Uri) => SanType::Uri,
            _ => {
                return Err(invalid(
                    res,
                    &join(&mbase, "san_type"),
                    format!("{} is not supported by gofe (DNS, URI)", m.san_type),
                ))
            }
        };
        let Some(sm) = &m.matcher else {
            return Err(invalid(res, &join(&mbase, "matcher"), "needs a matcher"));
        };
        if sm.ignore_case {
            return Err(unsupported(res, &join(&mbase, "matcher.ignore_case")));
        }
        let mut matcher = StringMatchConfig::default();
        match &sm.match_pattern {
            Some(MatchPattern::Exact(v)) => matcher.exact = Some(v.clone()),
            Some(MatchPattern::Prefix(v)) => matcher.prefix = Some(v.clone()),
            Some(MatchPattern::Suffix(v)) => matcher.suffix = Some(v.clone()),
            Some(MatchPattern::Contains(v)) => matcher.contains = Some(v.clone()),
            _ => {
                return Err(invalid(
                    res,
                    &join(&mbase, "matcher"),
                    "only exact, prefix, suffix and contains are supported by gofe",
                ))
            }
        }
        out.match_subject_alt_names
            .push(SanMatcherConfig { san_type, matcher });
    }
    Ok(())
}
