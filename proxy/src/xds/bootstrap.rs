//! `gofe proxy --bootstrap FILE`: who the proxy is, where its control plane is, and its static
//! configuration.
//!
//! ```yaml
//! node: { id: "proxy-1", cluster: "web" }
//! xds_server:
//!   address: "127.0.0.1:18000"          # host:port of the ADS server
//!   initial_fetch_timeout: "15s"        # optional; /ready waits this long per stage; "0s": forever
//!   load_stats: true                    # optional; stream load reports to it (LRS); default false
//!   tls:                                # optional; plaintext when absent
//!     ca: "ca.pem"
//!     server_name: "control-plane"      # default: the address's host
//!     certificate_chain: "proxy.pem"    # optional pair: mutual TLS
//!     private_key: "proxy-key.pem"
//! identity:                             # optional: the client certificate from the mesh CA
//!   token_file: "token"                 # bootstrap token, or a projected ServiceAccount token
//!   trust_bundle: "ca.pem"              # optional; default xds_server.tls.ca
//!   lifetime: "24h"                     # optional; default the CA's
//! static_resources:                     # optional; the proxy config file's shape
//!   admin: { address: "127.0.0.1:9901" }
//! ```

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gofe_yaml::{ConfigError, Validate, Validator};
use serde::Deserialize;

use crate::{Proxy, ProxyConfig};

use super::client::{ClientOptions, ClientTls, XdsClient};

/// The bootstrap file.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Bootstrap {
    /// The node this proxy is.
    pub node: NodeConfig,
    /// The control plane.
    pub xds_server: XdsServerConfig,
    /// Listeners, clusters and admin that do not come from xDS. Default: none.
    #[serde(default)]
    pub static_resources: ProxyConfig,
    /// Get the xDS client certificate from the control plane's mesh CA instead of files: the
    /// proxy makes its key, sends a CSR with the token, uses the certificate for mutual TLS
    /// to the control plane and rotates it at half its lifetime (`crate::xds::mesh_ca`).
    /// Needs `xds_server.tls` without `certificate_chain`/`private_key`. Default: off.
    #[serde(default)]
    pub identity: Option<IdentityBootstrap>,
}

/// `identity` of the bootstrap: how to ask the mesh CA (paths relative to the bootstrap file).
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct IdentityBootstrap {
    /// The token sent as `authorization: Bearer TOKEN` (a bootstrap token of the controller's
    /// `identity.tokens_file`, or a projected ServiceAccount token in Kubernetes). Read again
    /// at every request.
    pub token_file: PathBuf,
    /// PEM roots that verify the control plane when asking, and the proxy's trust bundle.
    /// Default: `xds_server.tls.ca`.
    #[serde(default)]
    pub trust_bundle: Option<PathBuf>,
    /// The certificate lifetime asked for; the CA may give less or more within its limits.
    /// Default: the CA's.
    #[serde(default, with = "gofe_yaml::duration::optional_text")]
    #[schemars(with = "Option<gofe_model::schema::DurationText>")]
    pub lifetime: Option<Duration>,
}

/// `node` of the bootstrap.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// `node.id`: with mutual TLS, must be a name in the client certificate (a URI SAN such as
    /// a SPIFFE id, a DNS SAN, or the CN of a certificate without SANs; `gofe_xds::identity`).
    pub id: String,
    /// `node.cluster`. Default empty.
    #[serde(default)]
    pub cluster: String,
    /// `node.locality`: where this proxy runs. Sent to the control plane, and the proxy's
    /// own `locality` (clusters with `locality_lb.failover_by_proximity` prefer endpoints
    /// near it) unless `static_resources.locality` says otherwise. Default: none.
    #[serde(default)]
    pub locality: Option<crate::config::LocalityConfig>,
}

/// `xds_server` of the bootstrap.
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct XdsServerConfig {
    /// `host:port` of the ADS server.
    pub address: String,
    /// TLS. Default: plaintext.
    #[serde(default)]
    pub tls: Option<XdsTlsConfig>,
    /// How long the proxy waits for the control plane's first snapshot before it reports
    /// ready with what it has (Envoy's `initial_fetch_timeout`): CDS and LDS may take this
    /// long, then the EDS and RDS resources they name as long again. `"0s"` waits without
    /// limit. Default 15 s, as Envoy.
    #[serde(
        default = "default_initial_fetch_timeout",
        with = "gofe_yaml::duration::text"
    )]
    #[schemars(with = "gofe_model::schema::DurationText")]
    pub initial_fetch_timeout: Duration,
    /// Report per-endpoint load to this control plane over Envoy's Load Reporting Service
    /// (`StreamLoadStats`): what Envoy's `cluster_manager.load_stats_config` pointing at the
    /// xDS cluster does. The control plane says how often. Default `false`.
    #[serde(default)]
    pub load_stats: bool,
}

fn default_initial_fetch_timeout() -> Duration {
    super::client::DEFAULT_INITIAL_FETCH_TIMEOUT
}

/// TLS files for the control-plane connection (paths relative to the bootstrap file).
#[derive(Clone, Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct XdsTlsConfig {
    /// CA bundle that signs the control plane's certificate.
    pub ca: PathBuf,
    /// Name to verify in the server certificate. Default: the address's host.
    #[serde(default)]
    pub server_name: Option<String>,
    /// Client certificate chain (mutual TLS). Default: none.
    #[serde(default)]
    pub certificate_chain: Option<PathBuf>,
    /// Client private key (mutual TLS). Default: none.
    #[serde(default)]
    pub private_key: Option<PathBuf>,
}

/// Why the bootstrap could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The file could not be read, or is not a valid bootstrap (every problem, with its line).
    #[error(transparent)]
    Load(#[from] ConfigError),
    /// The client could not start.
    #[error(transparent)]
    Client(#[from] super::client::ClientError),
    /// The mesh CA client could not start (its trust bundle).
    #[error("identity: {0}")]
    MeshCa(#[from] super::mesh_ca::MeshCaError),
}

impl Validate for Bootstrap {
    fn validate(&self, v: &mut Validator) {
        if self.node.id.is_empty() {
            v.error("node.id", "must not be empty");
        }
        if !self.xds_server.address.contains(':') {
            v.error(
                "xds_server.address",
                format!("expected host:port, got {:?}", self.xds_server.address),
            );
        }
        if self.identity.is_some() {
            match &self.xds_server.tls {
                None => v.error(
                    "identity",
                    "needs xds_server.tls: the certificate is asked for, and used, over TLS",
                ),
                Some(t) if t.certificate_chain.is_some() || t.private_key.is_some() => v.error(
                    "xds_server.tls.certificate_chain",
                    "leave certificate_chain and private_key out with identity: the mesh CA issues them",
                ),
                Some(_) => {}
            }
        }
        if let Some(t) = &self.xds_server.tls {
            if t.certificate_chain.is_some() != t.private_key.is_some() {
                v.error(
                    "xds_server.tls",
                    "set both certificate_chain and private_key, or neither",
                );
            }
        }
        // Static listeners may route to clusters that arrive over CDS.
        v.within("static_resources", |v| {
            self.static_resources.validate_partial(v)
        });
    }
}

impl Bootstrap {
    /// Reads and checks a bootstrap file: every problem, with file, line, column and field.
    /// TLS paths are taken relative to the file.
    pub fn load(path: &Path) -> Result<Bootstrap, BootstrapError> {
        let mut b: Bootstrap = gofe_yaml::load(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        if let Some(id) = &mut b.identity {
            for p in [Some(&mut id.token_file), id.trust_bundle.as_mut()]
                .into_iter()
                .flatten()
            {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        if let Some(t) = &mut b.xds_server.tls {
            for p in [
                Some(&mut t.ca),
                t.certificate_chain.as_mut(),
                t.private_key.as_mut(),
            ]
            .into_iter()
            .flatten()
            {
                if p.is_relative() {
                    *p = base.join(&*p);
                }
            }
        }
        Ok(b)
    }

    /// How to ask the mesh CA (`identity`), if the bootstrap says to.
    pub fn mesh_ca_options(&self) -> Option<super::mesh_ca::MeshCaOptions> {
        let id = self.identity.as_ref()?;
        let tls = self.xds_server.tls.as_ref()?;
        Some(super::mesh_ca::MeshCaOptions {
            address: self.xds_server.address.clone(),
            server_name: tls
                .server_name
                .clone()
                .unwrap_or_else(|| host_of(&self.xds_server.address)),
            trust_bundle: id.trust_bundle.clone().unwrap_or_else(|| tls.ca.clone()),
            token_file: id.token_file.clone(),
            node_id: self.node.id.clone(),
            lifetime: id.lifetime,
        })
    }

    /// Client options for this bootstrap.
    pub fn client_options(&self, drain: Duration) -> ClientOptions {
        ClientOptions {
            node_id: self.node.id.clone(),
            node_cluster: self.node.cluster.clone(),
            server: self.xds_server.address.clone(),
            tls: self.xds_server.tls.as_ref().map(|t| ClientTls {
                ca: t.ca.clone(),
                server_name: t.server_name.clone(),
                identity: t.certificate_chain.clone().zip(t.private_key.clone()),
                workload: None,
            }),
            base: {
                let mut base = self.static_resources.clone();
                if base.locality.is_none() {
                    base.locality = self.node.locality.clone();
                }
                base
            },
            drain,
            backoff_initial: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            load_reporting: self.xds_server.load_stats,
        }
    }
}

/// The host of `host:port` (brackets of an IPv6 address removed).
fn host_of(address: &str) -> String {
    address
        .rsplit_once(':')
        .map_or(address, |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned()
}

/// Runs a proxy steered by xDS until `shutdown` completes, then drains for up to `drain`.
pub async fn run(
    bootstrap: &Path,
    drain: Duration,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BootstrapError> {
    run_loaded(Bootstrap::load(bootstrap)?, drain, shutdown).await
}

/// [`run`] on an already loaded bootstrap (e.g. with the node overridden from the command
/// line, as Envoy's `--service-node` does).
pub async fn run_loaded(
    b: Bootstrap,
    drain: Duration,
    shutdown: impl Future<Output = ()>,
) -> Result<(), BootstrapError> {
    let proxy = Proxy::new();
    let mut options = b.client_options(drain);
    tokio::pin!(shutdown);
    let mut rotation = None;
    if let Some(mesh) = b.mesh_ca_options() {
        let store = crate::identity::SecretStore::new();
        let ca = super::mesh_ca::MeshCaClient::new(mesh, proxy.shared.metrics.registry())?;
        tracing::info!(node = %b.node.id, server = %b.xds_server.address, "asking the mesh CA for a workload certificate");
        tokio::select! {
            () = ca.first(&store) => {}
            () = &mut shutdown => return Ok(()),
        }
        rotation = Some(tokio::spawn(ca.rotate(std::sync::Arc::clone(&store))));
        if let Some(t) = &mut options.tls {
            t.workload = Some(store);
        }
    }
    let client = XdsClient::start_with_initial_fetch_timeout(
        proxy.clone(),
        options,
        b.xds_server.initial_fetch_timeout,
    )?;
    tracing::info!(node = %b.node.id, server = %b.xds_server.address, "gofe proxy starting with xDS");
    shutdown.await;
    client.stop();
    if let Some(r) = rotation {
        r.abort();
    }
    tracing::info!(?drain, "shutting down: draining in-flight requests");
    proxy.shutdown(drain).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_node_server_tls_and_static_resources() {
        let dir = std::env::temp_dir().join(format!("gofe-bootstrap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bootstrap.yaml");
        std::fs::write(
            &path,
            r#"
node: { id: "proxy-1", cluster: "web" }
xds_server:
  address: "127.0.0.1:18000"
  tls: { ca: "ca.pem", certificate_chain: "proxy.pem", private_key: "/abs/key.pem" }
static_resources:
  admin: { address: "127.0.0.1:9901" }
"#,
        )
        .unwrap();
        let b = Bootstrap::load(&path).unwrap();
        let o = b.client_options(Duration::from_secs(1));
        assert_eq!(
            (o.node_id.as_str(), o.node_cluster.as_str()),
            ("proxy-1", "web")
        );
        let tls = o.tls.unwrap();
        assert_eq!(tls.ca, dir.join("ca.pem"));
        assert_eq!(
            tls.identity,
            Some((dir.join("proxy.pem"), PathBuf::from("/abs/key.pem")))
        );
        assert!(o.base.admin.is_some());
        assert_eq!(
            b.xds_server.initial_fetch_timeout,
            super::super::client::DEFAULT_INITIAL_FETCH_TIMEOUT
        );
        std::fs::write(
            &path,
            "node: { id: \"a\" }\nxds_server: { address: \"x:1\", initial_fetch_timeout: \"2s\", load_stats: true }\n",
        )
        .unwrap();
        let b = Bootstrap::load(&path).unwrap();
        assert_eq!(b.xds_server.initial_fetch_timeout, Duration::from_secs(2));
        assert!(b.client_options(Duration::ZERO).load_reporting);
        assert!(!o.load_reporting, "off unless asked for");

        std::fs::write(
            &path,
            "node: { id: \"\" }\nxds_server: { address: \"x:1\" }\n",
        )
        .unwrap();
        assert!(Bootstrap::load(&path)
            .unwrap_err()
            .to_string()
            .contains("node.id"));
        std::fs::write(
            &path,
            "node: { id: \"a\" }\nxds_server: { adress: \"x:1\" }\n",
        )
        .unwrap();
        assert!(Bootstrap::load(&path).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn identity_asks_the_mesh_ca_over_tls_and_is_checked_with_its_lines() {
        let dir = std::env::temp_dir().join(format!("gofe-bootstrap-id-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bootstrap.yaml");
        std::fs::write(
            &path,
            "node: { id: \"proxy-1\" }\nxds_server:\n  address: \"cp.example:18000\"\n  tls: { ca: ca.pem }\nidentity: { token_file: token, lifetime: 1h }\n",
        )
        .unwrap();
        let b = Bootstrap::load(&path).unwrap();
        let o = b.mesh_ca_options().expect("identity is set");
        assert_eq!(o.token_file, dir.join("token"));
        assert_eq!(
            o.trust_bundle,
            dir.join("ca.pem"),
            "default: xds_server.tls.ca"
        );
        assert_eq!(o.server_name, "cp.example");
        assert_eq!(o.lifetime, Some(Duration::from_secs(3600)));
        assert_eq!(o.address, "cp.example:18000");
        let _ = std::fs::remove_dir_all(&dir);

        let text =
            "node: { id: a }\nxds_server: { address: \"x:1\" }\nidentity: { token_file: t }\n";
        let e = gofe_yaml::parse::<Bootstrap>("b.yaml", text).unwrap_err();
        let lines: Vec<String> = e.problems().iter().map(|p| p.in_file("b.yaml")).collect();
        assert!(
            lines[0].starts_with("b.yaml:3:11: identity: needs xds_server.tls"),
            "{lines:?}"
        );
        let text = "node: { id: a }\nxds_server:\n  address: \"x:1\"\n  tls: { ca: c, certificate_chain: p, private_key: k }\nidentity: { token_file: t }\n";
        let e = gofe_yaml::parse::<Bootstrap>("b.yaml", text).unwrap_err();
        assert!(
            e.to_string()
                .contains("xds_server.tls.certificate_chain: leave"),
            "{e}"
        );
    }

    #[test]
    fn every_problem_is_named_with_its_line_including_the_static_resources() {
        let text = "node: { id: \"\" }\nxds_server:\n  address: \"no-port\"\nstatic_resources:\n  admin: { address: \"nowhere\" }\n";
        let e = gofe_yaml::parse::<Bootstrap>("b.yaml", text).unwrap_err();
        let lines: Vec<String> = e.problems().iter().map(|p| p.in_file("b.yaml")).collect();
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(
            lines[0].starts_with("b.yaml:1:13: node.id: must not be empty"),
            "{lines:?}"
        );
        assert!(
            lines[1].starts_with("b.yaml:3:12: xds_server.address:"),
            "{lines:?}"
        );
        assert!(
            lines[2]
                .starts_with("b.yaml:5:21: static_resources.admin.address: invalid socket address"),
            "{lines:?}"
        );
    }
}
