//! TLS from the proxy to a cluster's endpoints: Envoy's `UpstreamTlsContext` (the cluster's
//! `transport_socket` named `envoy.transport_sockets.tls`) as plain data.
//!
//! As in Envoy, the endpoint's certificate is verified only when there is something to verify
//! it against (`trusted_ca`); its name is checked only against `match_subject_alt_names`
//! (never against `sni` or the endpoint's address). Without `trusted_ca` the connection is
//! encrypted but the endpoint is not authenticated, and the proxy says so in its log when it
//! builds the cluster.

use serde::{Deserialize, Serialize};

use gofe_yaml::Validator;

use crate::StringMatchConfig;

/// TLS to a cluster's endpoints (Envoy's `UpstreamTlsContext`).
#[derive(
    Clone, Debug, Default, PartialEq, Eq, Hash, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// The server name sent in the TLS SNI extension (a DNS name). Default: none, no SNI is
    /// sent (as in Envoy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// PEM certificates the endpoint's chain must lead to (Envoy's
    /// `validation_context.trusted_ca`). Default: none — the endpoint's certificate is not
    /// verified (Envoy's behaviour; the proxy logs a warning when it builds the cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_ca: Option<PemSource>,
    /// The endpoint's certificate must carry a subject alternative name matching one of these
    /// (Envoy's `validation_context.match_typed_subject_alt_names`). Needs `trusted_ca`.
    /// Default: none, any name is accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_subject_alt_names: Vec<SanMatcherConfig>,
    /// The certificate the proxy presents to the endpoint, for mutual TLS (Envoy's
    /// `common_tls_context.tls_certificates`). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<ClientCertificateConfig>,
    /// Protocols offered by ALPN: `h2` and/or `http/1.1`. The one the cluster speaks (HTTP/2
    /// with `http2_protocol_options`, else HTTP/1.1) must be listed; only that one is offered,
    /// so what the endpoint negotiates is always what the cluster's connection speaks.
    /// Default: empty, the cluster's protocol is offered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alpn_protocols: Vec<String>,
}

/// PEM data, from a file or inline (Envoy's `DataSource` `filename` / `inline_string`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PemSource {
    /// The path of a PEM file, read when the cluster's connection pool is built.
    File(String),
    /// The PEM text itself.
    Inline(String),
}

/// A client certificate and its key (PEM).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientCertificateConfig {
    /// The certificate chain, leaf first.
    pub certificate_chain: PemSource,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub private_key: PemSource,
}

/// Which subject alternative names a matcher looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SanType {
    /// `dNSName` entries; `exact` follows the certificate's wildcard (`*.example.com`).
    Dns,
    /// `uniformResourceIdentifier` entries (SPIFFE identities).
    Uri,
}

/// One subject-alternative-name matcher (Envoy's `SubjectAltNameMatcher`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SanMatcherConfig {
    /// The kind of name.
    #[serde(rename = "type")]
    pub san_type: SanType,
    /// How the name is compared: exactly one of `exact`, `prefix`, `suffix`, `contains`.
    pub matcher: StringMatchConfig,
}

/// The ALPN name of HTTP/2.
pub const ALPN_H2: &str = "h2";
/// The ALPN name of HTTP/1.1.
pub const ALPN_HTTP11: &str = "http/1.1";

impl UpstreamTlsConfig {
    /// The ALPN protocol a cluster speaking HTTP/2 (`http2`) or HTTP/1.1 offers.
    pub fn offered_alpn(http2: bool) -> &'static str {
        if http2 {
            ALPN_H2
        } else {
            ALPN_HTTP11
        }
    }

    /// Records every problem of this configuration under `base` (`clusters[N].tls`).
    pub(crate) fn check(&self, v: &mut Validator, base: &str, http2: bool) {
        if let Some(sni) = &self.sni {
            if !valid_dns_name(sni) {
                v.error(format!("{base}.sni"), format!("{sni:?} is not a DNS name"));
            }
        }
        if !self.match_subject_alt_names.is_empty() && self.trusted_ca.is_none() {
            v.error(
                format!("{base}.match_subject_alt_names"),
                "needs trusted_ca (matching names of a certificate nobody verified proves nothing)",
            );
        }
        for (i, m) in self.match_subject_alt_names.iter().enumerate() {
            let s = &m.matcher;
            let set = [&s.exact, &s.prefix, &s.suffix, &s.contains]
                .iter()
                .filter(|f| f.is_some())
                .count();
            if set != 1 {
                v.error(
                    format!("{base}.match_subject_alt_names[{i}].matcher"),
                    "needs exactly one of exact, prefix, suffix, contains",
                );
            }
        }
        for (i, p) in self.alpn_protocols.iter().enumerate() {
            if p != ALPN_H2 && p != ALPN_HTTP11 {
                v.error(
                    format!("{base}.alpn_protocols[{i}]"),
                    format!("{p:?} is not spoken by gofe (h2, http/1.1)"),
                );
            }
        }
        let needed = Self::offered_alpn(http2);
        if !self.alpn_protocols.is_empty() && !self.alpn_protocols.iter().any(|p| p == needed) {
            v.error(
                format!("{base}.alpn_protocols"),
                format!(
                    "the cluster speaks {needed} (see http2_protocol_options), which is not listed"
                ),
            );
        }
        let sources = [
            ("trusted_ca", self.trusted_ca.as_ref()),
            (
                "client_certificate.certificate_chain",
                self.client_certificate
                    .as_ref()
                    .map(|c| &c.certificate_chain),
            ),
            (
                "client_certificate.private_key",
                self.client_certificate.as_ref().map(|c| &c.private_key),
            ),
        ];
        for (field, source) in sources {
            let empty = match source {
                Some(PemSource::File(s) | PemSource::Inline(s)) => s.trim().is_empty(),
                None => false,
            };
            if empty {
                v.error(format!("{base}.{field}"), "must not be empty");
            }
        }
    }
}

/// Whether `name` is a DNS name fit for SNI: labels of letters, digits, `-` and `_`, not an
/// IP address.
fn valid_dns_name(name: &str) -> bool {
    name.parse::<std::net::IpAddr>().is_err()
        && !name.is_empty()
        && name.len() <= 253
        && name.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}
