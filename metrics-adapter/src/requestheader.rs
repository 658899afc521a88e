//! Front-proxy ("request-header") authentication settings: which CA signs the aggregator's
//! client certificate, which common names it may carry, and which headers name the end user.
//!
//! An aggregated API server reads them at run time from the ConfigMap kube-apiserver publishes,
//! `kube-system/extension-apiserver-authentication` ([`CONFIG_MAP_NAMESPACE`],
//! [`CONFIG_MAP_NAME`]), and follows it when the cluster rotates its front-proxy CA. This module
//! parses that ConfigMap ([`RequestHeaderConfig::from_config_map_data`]), watches it
//! ([`watch_config_map`], a kube-rs watcher on that one object, so the RBAC it needs is
//! `list` and `watch` with `resourceNames: [extension-apiserver-authentication]`), and holds the
//! settings in force ([`FrontProxyState`]), swapped whole, each with a rustls client-certificate
//! verifier built from its CA and a generation number. The TLS server builds its handshake
//! configuration from the current settings; the API re-verifies a connection's certificate when
//! the settings changed since its handshake, so a CA taken out of the bundle stops being trusted
//! on kept-alive connections too.
//!
//! A CA given as a file (`--requestheader-client-ca-file`, the chart's
//! `adapter.requestheader.clientCA`) overrides the ConfigMap; it is re-read periodically by the
//! server.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::watcher;
use kube::runtime::WatchStreamExt;
use kube::Api;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;

/// Namespace of the ConfigMap kube-apiserver publishes its request-header settings in.
pub const CONFIG_MAP_NAMESPACE: &str = "kube-system";
/// Name of that ConfigMap.
pub const CONFIG_MAP_NAME: &str = "extension-apiserver-authentication";
/// Key of the front-proxy CA bundle (PEM) in that ConfigMap.
pub const KEY_CLIENT_CA: &str = "requestheader-client-ca-file";
/// Key of the allowed common names (a JSON list) in that ConfigMap.
pub const KEY_ALLOWED_NAMES: &str = "requestheader-allowed-names";
/// Key of the user-name headers (a JSON list).
pub const KEY_USERNAME_HEADERS: &str = "requestheader-username-headers";
/// Key of the group headers (a JSON list).
pub const KEY_GROUP_HEADERS: &str = "requestheader-group-headers";
/// Key of the extra-header prefixes (a JSON list).
pub const KEY_EXTRA_HEADERS_PREFIX: &str = "requestheader-extra-headers-prefix";

/// Request-header authentication settings, as kube-apiserver's `--requestheader-*` flags set
/// them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestHeaderConfig {
    /// The PEM bundle of CAs that may sign the front proxy's client certificate.
    pub client_ca_pem: String,
    /// Common names the certificate may carry; empty allows any the CA signed.
    pub allowed_names: Vec<String>,
    /// Headers naming the end user, the first present one wins.
    pub username_headers: Vec<String>,
    /// Headers naming the end user's groups, every value of every one.
    pub group_headers: Vec<String>,
    /// Prefixes of headers carrying extra user attributes (not used by the adapter; kept so a
    /// change to them is seen as a change).
    pub extra_headers_prefix: Vec<String>,
}

/// Why request-header settings could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RequestHeaderError {
    /// The ConfigMap has no CA: the API server runs without `--requestheader-client-ca-file`,
    /// so no aggregator could authenticate to any aggregated API server.
    #[error("{source_name}: no {KEY_CLIENT_CA}: the cluster's kube-apiserver runs without --requestheader-client-ca-file (the aggregation layer is not configured); give the adapter the CA itself (--requestheader-client-ca-file, chart value adapter.requestheader.clientCA)")]
    NoClientCa {
        /// Where the settings came from.
        source_name: String,
    },
    /// A list-valued key is not a JSON list of strings.
    #[error("{source_name}: {key} is not a JSON list of strings: {message}")]
    BadList {
        /// Where the settings came from.
        source_name: String,
        /// The key.
        key: String,
        /// The parser's message.
        message: String,
    },
    /// The CA bundle holds no usable certificate.
    #[error("{source_name}: the front-proxy CA bundle is unusable: {message}")]
    BadCa {
        /// Where the settings came from.
        source_name: String,
        /// What is wrong with it.
        message: String,
    },
    /// The ConfigMap could not be read or watched.
    #[error("{source_name}: {message}")]
    Api {
        /// The ConfigMap.
        source_name: String,
        /// What the API server (or the connection to it) said.
        message: String,
    },
}

impl RequestHeaderConfig {
    /// Settings from a CA bundle and names, with kube-apiserver's conventional header names
    /// (`X-Remote-User`, `X-Remote-Group`, `X-Remote-Extra-`).
    pub fn new(client_ca_pem: String, allowed_names: Vec<String>) -> Self {
        RequestHeaderConfig {
            client_ca_pem,
            allowed_names,
            username_headers: vec!["X-Remote-User".into()],
            group_headers: vec!["X-Remote-Group".into()],
            extra_headers_prefix: vec!["X-Remote-Extra-".into()],
        }
    }

    /// Settings from the data of `kube-system/extension-apiserver-authentication` (`source_name`
    /// names it in errors). Absent list keys are empty lists, as kube-apiserver writes `[]` or
    /// nothing for an unset flag.
    pub fn from_config_map_data(
        source_name: &str,
        data: &BTreeMap<String, String>,
    ) -> Result<Self, RequestHeaderError> {
        let client_ca_pem = data
            .get(KEY_CLIENT_CA)
            .filter(|pem| !pem.trim().is_empty())
            .ok_or_else(|| RequestHeaderError::NoClientCa {
                source_name: source_name.to_owned(),
            })?
            .clone();
        let list = |key: &str| -> Result<Vec<String>, RequestHeaderError> {
            match data.get(key).map(|s| s.trim()) {
                None | Some("") => Ok(Vec::new()),
                Some(text) => serde_json::from_str(text).map_err(|e| RequestHeaderError::BadList {
                    source_name: source_name.to_owned(),
                    key: key.to_owned(),
                    message: e.to_string(),
                }),
            }
        };
        Ok(RequestHeaderConfig {
            client_ca_pem,
            allowed_names: list(KEY_ALLOWED_NAMES)?,
            username_headers: list(KEY_USERNAME_HEADERS)?,
            group_headers: list(KEY_GROUP_HEADERS)?,
            extra_headers_prefix: list(KEY_EXTRA_HEADERS_PREFIX)?,
        })
    }
}

/// Settings in force: the configuration, the client-certificate verifier built from its CA,
/// and a generation number (1 for the first settings, one more for each change).
pub struct FrontProxy {
    /// The settings.
    pub config: RequestHeaderConfig,
    /// Which settings these are; a connection remembers the generation it was verified under.
    pub generation: u64,
    verifier: Arc<dyn ClientCertVerifier>,
}

impl std::fmt::Debug for FrontProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontProxy")
            .field("generation", &self.generation)
            .field("allowed_names", &self.config.allowed_names)
            .finish_non_exhaustive()
    }
}

impl FrontProxy {
    /// The verifier for TLS handshakes: certificates are checked against the CA, but not
    /// required (health probes come without one; the API answers 401 to them).
    pub fn verifier(&self) -> Arc<dyn ClientCertVerifier> {
        self.verifier.clone()
    }

    /// Whether `chain` (leaf first) is a client certificate this CA signed, valid now.
    pub fn verifies(&self, chain: &[CertificateDer<'static>]) -> bool {
        let Some((leaf, intermediates)) = chain.split_first() else {
            return false;
        };
        self.verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .is_ok()
    }
}

/// Builds the rustls verifier for a PEM CA bundle.
fn verifier_for(
    source_name: &str,
    pem: &str,
) -> Result<Arc<dyn ClientCertVerifier>, RequestHeaderError> {
    let bad = |message: String| RequestHeaderError::BadCa {
        source_name: source_name.to_owned(),
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| bad(e.to_string()))?;
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        gofe_tls::provider(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| bad(e.to_string()))
}

/// The front-proxy settings in force, swapped whole; none until the first are loaded.
#[derive(Default)]
pub struct FrontProxyState {
    current: ArcSwapOption<FrontProxy>,
    generations: AtomicU64,
    /// Serialises [`FrontProxyState::set`], so generations are installed in order.
    update: Mutex<()>,
}

impl std::fmt::Debug for FrontProxyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrontProxyState")
            .field("current", &self.current())
            .finish()
    }
}

impl FrontProxyState {
    /// No settings yet: every API request is refused until [`FrontProxyState::set`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The settings in force, if any were loaded.
    pub fn current(&self) -> Option<Arc<FrontProxy>> {
        self.current.load_full()
    }

    /// Installs `config` (from `source_name`). Returns the new settings, or `None` when they
    /// equal the ones in force (nothing changes, not even the generation). A bad CA is an
    /// error and the settings in force stay.
    pub fn set(
        &self,
        source_name: &str,
        config: RequestHeaderConfig,
    ) -> Result<Option<Arc<FrontProxy>>, RequestHeaderError> {
        let _serial = self.update.lock().unwrap_or_else(|e| e.into_inner());
        if self.current().is_some_and(|c| c.config == config) {
            return Ok(None);
        }
        let verifier = verifier_for(source_name, &config.client_ca_pem)?;
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let fp = Arc::new(FrontProxy {
            config,
            generation,
            verifier,
        });
        self.current.store(Some(fp.clone()));
        Ok(Some(fp))
    }
}

/// Follows the ConfigMap `name` of `api`'s namespace with a kube-rs watcher (list, then watch,
/// both with the field selector `metadata.name=NAME`; relisting with backoff after errors),
/// handing every version of it to `apply` as settings, or the error it makes. Runs until the
/// task is dropped. A deleted ConfigMap, or none, is reported as an error and leaves the
/// settings in force to the caller.
pub async fn watch_config_map(
    api: Api<ConfigMap>,
    name: String,
    mut apply: impl FnMut(Result<RequestHeaderConfig, RequestHeaderError>) + Send,
) {
    let source_name = match api.namespace() {
        Some(ns) => format!("ConfigMap {ns}/{name}"),
        None => format!("ConfigMap {name}"),
    };
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut seen_in_listing = false;
    while let Some(event) = stream.next().await {
        let object = match event {
            Ok(watcher::Event::Init) => {
                seen_in_listing = false;
                continue;
            }
            Ok(watcher::Event::InitDone) => {
                if !seen_in_listing {
                    apply(Err(RequestHeaderError::Api {
                        source_name: source_name.clone(),
                        message: "not found (kube-apiserver publishes it when it runs with --requestheader-client-ca-file)".into(),
                    }));
                }
                continue;
            }
            Ok(watcher::Event::Delete(_)) => {
                apply(Err(RequestHeaderError::Api {
                    source_name: source_name.clone(),
                    message: "deleted; keeping the settings last read".into(),
                }));
                continue;
            }
            Ok(watcher::Event::Apply(cm)) => cm,
            Ok(watcher::Event::InitApply(cm)) => {
                seen_in_listing = true;
                cm
            }
            Err(e) => {
                apply(Err(RequestHeaderError::Api {
                    source_name: source_name.clone(),
                    message: format!("{e} (the adapter needs list and watch on this ConfigMap: the chart's Role in kube-system grants them)"),
                }));
                continue;
            }
        };
        // The field selector already names it; a server that ignores selectors must not make
        // another ConfigMap the CA.
        if object.metadata.name.as_deref() != Some(name.as_str()) {
            continue;
        }
        let data = object.data.unwrap_or_default();
        apply(RequestHeaderConfig::from_config_map_data(
            &source_name,
            &data,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem(name: &str) -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn reads_the_configmap_kube_apiserver_publishes() {
        let ca = ca_pem("front-proxy-ca");
        let config = RequestHeaderConfig::from_config_map_data(
            "cm",
            &data(&[
                ("client-ca-file", "not ours"),
                (KEY_CLIENT_CA, &ca),
                (KEY_ALLOWED_NAMES, r#"["front-proxy-client","aggregator"]"#),
                (KEY_USERNAME_HEADERS, r#"["X-Remote-User"]"#),
                (KEY_GROUP_HEADERS, r#"["X-Remote-Group"]"#),
                (KEY_EXTRA_HEADERS_PREFIX, r#"["X-Remote-Extra-"]"#),
            ]),
        )
        .unwrap();
        assert_eq!(config.client_ca_pem, ca);
        assert_eq!(config.allowed_names, ["front-proxy-client", "aggregator"]);
        assert_eq!(config.username_headers, ["X-Remote-User"]);
        assert_eq!(config.group_headers, ["X-Remote-Group"]);
        assert_eq!(config.extra_headers_prefix, ["X-Remote-Extra-"]);

        // Unset flags: kube-apiserver writes "[]" or leaves the key out.
        let config = RequestHeaderConfig::from_config_map_data(
            "cm",
            &data(&[(KEY_CLIENT_CA, &ca), (KEY_ALLOWED_NAMES, "[]")]),
        )
        .unwrap();
        assert!(config.allowed_names.is_empty() && config.username_headers.is_empty());
    }

    #[test]
    fn a_configmap_without_a_ca_or_with_bad_lists_is_refused_with_the_reason() {
        let e = RequestHeaderConfig::from_config_map_data("cm", &data(&[("client-ca-file", "x")]))
            .unwrap_err();
        assert!(matches!(e, RequestHeaderError::NoClientCa { .. }), "{e}");
        assert!(
            e.to_string().contains("adapter.requestheader.clientCA"),
            "{e}"
        );
        let e = RequestHeaderConfig::from_config_map_data(
            "cm",
            &data(&[
                (KEY_CLIENT_CA, "x"),
                (KEY_ALLOWED_NAMES, "front-proxy-client"),
            ]),
        )
        .unwrap_err();
        assert!(e.to_string().contains(KEY_ALLOWED_NAMES), "{e}");
    }

    #[test]
    fn settings_are_swapped_whole_and_an_unchanged_set_keeps_the_generation() {
        let state = FrontProxyState::new();
        assert!(state.current().is_none());
        let a = RequestHeaderConfig::new(ca_pem("a"), vec!["front-proxy-client".into()]);
        let first = state.set("t", a.clone()).unwrap().expect("new settings");
        assert_eq!(first.generation, 1);
        assert!(state.set("t", a.clone()).unwrap().is_none(), "unchanged");
        assert_eq!(state.current().unwrap().generation, 1);

        // A bad CA is refused and the settings in force stay.
        let bad = RequestHeaderConfig::new(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".into(),
            vec![],
        );
        assert!(state.set("t", bad).is_err());
        let empty = RequestHeaderConfig::new("no pem here".into(), vec![]);
        assert!(matches!(
            state.set("t", empty),
            Err(RequestHeaderError::BadCa { .. })
        ));
        assert_eq!(state.current().unwrap().config, a);

        let b = RequestHeaderConfig::new(ca_pem("b"), vec![]);
        assert_eq!(state.set("t", b.clone()).unwrap().unwrap().generation, 2);
        assert_eq!(state.current().unwrap().config, b);
    }
}
