//! The listener: TLS with client-certificate verification in cluster mode, plain HTTP in local
//! mode, and the background tasks: relisting external rules, following the request-header
//! settings (the cluster's ConfigMap, or a CA file), and re-reading the serving certificate.
//!
//! The TLS configuration is rebuilt whenever the request-header CA changes and each handshake
//! takes the one in force, so a rotated front-proxy CA is honoured without a restart; the
//! serving certificate is re-read from its files (a renewed cert-manager or mounted Secret)
//! on the same period as a CA file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tower_service::Service;

use crate::api::{router, AppState, AuthPolicy, ClientCert};
use crate::provider::{CacheConfig, Provider};
use crate::requestheader::{FrontProxyState, RequestHeaderConfig, RequestHeaderError};

/// TLS for cluster mode: the serving certificate (PEM files) and where the front-proxy
/// settings come from.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// Serving certificate chain, leaf first.
    pub cert: PathBuf,
    /// Serving private key.
    pub key: PathBuf,
    /// The aggregator's request-header settings.
    pub requestheader: RequestHeaderSource,
    /// How often the serving certificate (and a CA file) are read again. Default 1 min.
    pub reload_interval: Duration,
}

/// Where the request-header (front-proxy) settings come from.
#[derive(Clone, Debug)]
pub enum RequestHeaderSource {
    /// A PEM CA file (`--requestheader-client-ca-file`), read at start and again every
    /// [`TlsFiles::reload_interval`]; the user headers are Kubernetes' conventional ones.
    File {
        /// The CA bundle.
        client_ca: PathBuf,
        /// Allowed front-proxy common names; empty allows any certificate the CA signed.
        allowed_names: Vec<String>,
    },
    /// The ConfigMap kube-apiserver publishes (`kube-system/extension-apiserver-authentication`),
    /// watched: CA, allowed names and user headers as the cluster sets them.
    ConfigMap {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// When not empty, these names instead of the ConfigMap's
        /// `requestheader-allowed-names`.
        allowed_names: Vec<String>,
    },
}

/// Everything `gofe adapter` needs.
#[derive(Clone, Debug)]
pub struct AdapterOptions {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Prometheus base URL (`http://…` or `https://…`); empty with `scrape`.
    pub prometheus_url: String,
    /// Instead of Prometheus: proxies' admin addresses (`host:port`) to scrape directly (the
    /// built-in rules only; see [`crate::scrape`]).
    pub scrape: Vec<String>,
    /// How often `scrape` targets are scraped. Default 5 s.
    pub scrape_interval: Duration,
    /// CA file for an `https` Prometheus.
    pub prometheus_ca_file: Option<PathBuf>,
    /// Per-query timeout. Default 5 s.
    pub query_timeout: Duration,
    /// Rules file; `None` serves the built-in rules only.
    pub rules_file: Option<PathBuf>,
    /// Cache settings.
    pub cache: CacheConfig,
    /// How often external rules are rediscovered. Default 1 min.
    pub relist_interval: Duration,
    /// How far back discovery looks for series. Default 1 h.
    pub discovery_lookback: Duration,
    /// When the cluster's resources (API discovery) are read again: every 10 min, and on a
    /// request naming an unknown resource at most every 30 s, by default.
    pub resource_discovery: crate::resources::DiscoveryConfig,
    /// TLS and client authentication; `None` is the plain local mode.
    pub tls: Option<TlsFiles>,
}

/// The `gofe adapter` command line.
#[derive(Clone, Debug, clap::Args)]
pub struct AdapterArgs {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:6443")]
    pub listen: SocketAddr,
    /// Prometheus base URL, e.g. http://prometheus.monitoring:9090 (or https://…).
    #[arg(long, required_unless_present = "scrape", conflicts_with = "scrape")]
    pub prometheus_url: Option<String>,
    /// No Prometheus: scrape these gofe proxies' admin listeners (`host:port`, comma-separated)
    /// and serve the built-in rules from what they report (external rules and forecasts are
    /// refused).
    #[arg(long, value_delimiter = ',')]
    pub scrape: Vec<String>,
    /// How often --scrape targets are scraped.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub scrape_interval: Duration,
    /// For an https Prometheus: the PEM CA(s) its certificate must chain to (only these are
    /// trusted).
    #[arg(long)]
    pub prometheus_ca_file: Option<PathBuf>,
    /// Rules file (prometheus-adapter externalRules + gofe options). Default: built-in rules only.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Per-query timeout.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub query_timeout: Duration,
    /// How long a value is reused for the same metric, namespace and selector ("0s": only
    /// concurrent identical requests share a query).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub cache_freshness: Duration,
    /// Most cached (metric, namespace, selector) entries.
    #[arg(long, default_value_t = 10_000)]
    pub cache_capacity: usize,
    /// How often external rules' series are relisted.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    pub relist_interval: Duration,
    /// How far back relisting looks for series.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub discovery_lookback: Duration,
    /// How often the cluster's resources (API discovery: CRDs, plurals, kinds) are read again
    /// (also on a request naming a resource not known yet, at most every 30s).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub resource_discovery_interval: Duration,
    /// Plain HTTP with no authentication, for development without Kubernetes.
    #[arg(long)]
    pub insecure_local: bool,
    /// Serving certificate chain (PEM). Required unless --insecure-local.
    #[arg(long, required_unless_present = "insecure_local")]
    pub tls_cert_file: Option<PathBuf>,
    /// Serving private key (PEM). Required unless --insecure-local.
    #[arg(long, required_unless_present = "insecure_local")]
    pub tls_private_key_file: Option<PathBuf>,
    /// CA that signs the aggregator's front-proxy client certificate (the cluster's
    /// requestheader-client-ca-file), re-read every --tls-reload-interval. Default: read at
    /// run time from --requestheader-configmap, and followed when the cluster rotates it.
    #[arg(long)]
    pub requestheader_client_ca_file: Option<PathBuf>,
    /// Without --requestheader-client-ca-file: the ConfigMap (NAMESPACE/NAME) holding the
    /// cluster's request-header settings, watched through the Kubernetes API (in-cluster
    /// service account, or KUBECONFIG).
    #[arg(long, default_value = "kube-system/extension-apiserver-authentication")]
    pub requestheader_configmap: String,
    /// Common names allowed for the front-proxy certificate, comma-separated. Default: the
    /// ConfigMap's requestheader-allowed-names, or (with a CA file) any certificate the CA
    /// signed.
    #[arg(long, value_delimiter = ',')]
    pub requestheader_allowed_names: Vec<String>,
    /// How often the serving certificate and key (and a --requestheader-client-ca-file) are
    /// read again, so renewed files are served without a restart.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    pub tls_reload_interval: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    gofe_yaml::duration::parse(s).map_err(|e| e.to_string())
}

/// Inconsistent command-line flags.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ArgsError(String);

impl AdapterArgs {
    /// The options these flags describe.
    pub fn into_options(self) -> Result<AdapterOptions, ArgsError> {
        let tls = if self.insecure_local {
            if self.tls_cert_file.is_some() || self.requestheader_client_ca_file.is_some() {
                return Err(ArgsError(
                    "--insecure-local serves plain HTTP; drop the TLS flags or --insecure-local"
                        .into(),
                ));
            }
            None
        } else {
            let (Some(cert), Some(key)) = (self.tls_cert_file, self.tls_private_key_file) else {
                return Err(ArgsError(
                    "cluster mode needs --tls-cert-file and --tls-private-key-file (or --insecure-local)"
                        .into(),
                ));
            };
            let requestheader = match self.requestheader_client_ca_file {
                Some(client_ca) => RequestHeaderSource::File {
                    client_ca,
                    allowed_names: self.requestheader_allowed_names,
                },
                None => match self.requestheader_configmap.split_once('/') {
                    Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() => {
                        RequestHeaderSource::ConfigMap {
                            namespace: namespace.to_owned(),
                            name: name.to_owned(),
                            allowed_names: self.requestheader_allowed_names,
                        }
                    }
                    _ => {
                        return Err(ArgsError(format!(
                            "--requestheader-configmap {:?}: expected NAMESPACE/NAME",
                            self.requestheader_configmap
                        )))
                    }
                },
            };
            Some(TlsFiles {
                cert,
                key,
                requestheader,
                reload_interval: self.tls_reload_interval.max(Duration::from_secs(1)),
            })
        };
        Ok(AdapterOptions {
            listen: self.listen,
            prometheus_url: self.prometheus_url.unwrap_or_default(),
            scrape: self.scrape,
            scrape_interval: self.scrape_interval.max(Duration::from_millis(100)),
            prometheus_ca_file: self.prometheus_ca_file,
            query_timeout: self.query_timeout,
            rules_file: self.config,
            cache: CacheConfig {
                freshness: self.cache_freshness,
                capacity: self.cache_capacity.max(1),
            },
            relist_interval: self.relist_interval.max(Duration::from_secs(1)),
            discovery_lookback: self.discovery_lookback,
            resource_discovery: crate::resources::DiscoveryConfig {
                interval: self.resource_discovery_interval.max(Duration::from_secs(1)),
                ..Default::default()
            },
            tls,
        })
    }
}

/// Why the adapter could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The rules file is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The rules file asks for what the scrape source cannot serve.
    #[error(transparent)]
    Scrape(#[from] crate::provider::ScrapeRefusal),
    /// The Prometheus client could not be built: a bad `--prometheus-url`, or an unusable
    /// (or missing, for https) `--prometheus-ca-file`.
    #[error("{0} (see --prometheus-url and --prometheus-ca-file)")]
    Prometheus(#[from] gofe_prom::BuildError),
    /// A TLS file could not be read or used.
    #[error("{path}: {message}")]
    Tls {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The request-header CA file is unusable.
    #[error(transparent)]
    RequestHeader(#[from] RequestHeaderError),
    /// No Kubernetes client could be configured, to read the request-header settings.
    #[error("configuring the Kubernetes client (to read the front-proxy CA from the cluster; or give --requestheader-client-ca-file)")]
    Kube(#[from] kube::Error),
    /// The listener could not bind.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

fn tls_error(path: &Path, message: impl std::fmt::Display) -> StartError {
    StartError::Tls {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, StartError> {
    gofe_tls::certs(path).map_err(|e| tls_error(path, e))
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, StartError> {
    gofe_tls::key(path).map_err(|e| tls_error(path, e))
}

/// The serving certificate and key of `files`, checked to match.
fn certified_key(files: &TlsFiles) -> Result<CertifiedKey, StartError> {
    CertifiedKey::from_der(
        read_certs(&files.cert)?,
        read_key(&files.key)?,
        &gofe_tls::provider(),
    )
    .map_err(|e| tls_error(&files.key, e))
}

/// Hands every handshake the serving certificate in force.
#[derive(Debug)]
struct LiveCert(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for LiveCert {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// A TLS configuration and the request-header generation it verifies client certificates
/// under (0: none loaded, no client certificate asked for).
struct TlsCurrent {
    generation: u64,
    config: Arc<rustls::ServerConfig>,
}

/// The TLS server's changing parts: the serving certificate, the request-header settings, and
/// the configuration built from them that each new handshake takes.
pub struct LiveTls {
    cert: Arc<LiveCert>,
    front_proxy: Arc<FrontProxyState>,
    current: ArcSwap<TlsCurrent>,
    rebuild: std::sync::Mutex<()>,
}

impl LiveTls {
    /// Serving `cert`, with no request-header settings yet.
    fn new(cert: CertifiedKey) -> Result<Self, rustls::Error> {
        let cert = Arc::new(LiveCert(ArcSwap::from_pointee(cert)));
        let config = build_config(&cert, None)?;
        Ok(LiveTls {
            cert,
            front_proxy: Arc::new(FrontProxyState::new()),
            current: ArcSwap::from_pointee(TlsCurrent {
                generation: 0,
                config,
            }),
            rebuild: std::sync::Mutex::new(()),
        })
    }

    /// The request-header settings in force (shared with the API's authentication).
    pub fn front_proxy(&self) -> &Arc<FrontProxyState> {
        &self.front_proxy
    }

    /// Installs request-header settings (from `source_name`) and, when they changed, the TLS
    /// configuration verifying against their CA. Returns whether anything changed.
    pub fn set_request_header(
        &self,
        source_name: &str,
        config: RequestHeaderConfig,
    ) -> Result<bool, RequestHeaderError> {
        let _serial = self.rebuild.lock().unwrap_or_else(|e| e.into_inner());
        // The settings first, then the handshake configuration: a connection verified under
        // the old CA meanwhile is re-verified by the API against the new one.
        let Some(fp) = self.front_proxy.set(source_name, config)? else {
            return Ok(false);
        };
        match build_config(&self.cert, Some(&fp)) {
            Ok(config) => {
                self.current.store(Arc::new(TlsCurrent {
                    generation: fp.generation,
                    config,
                }));
                tracing::info!(source = source_name, generation = fp.generation, allowed_names = ?fp.config.allowed_names, "request-header CA loaded");
                Ok(true)
            }
            Err(e) => Err(RequestHeaderError::BadCa {
                source_name: source_name.to_owned(),
                message: e.to_string(),
            }),
        }
    }

    /// Serves `cert` from the next handshake on.
    fn set_cert(&self, cert: CertifiedKey) {
        self.cert.0.store(Arc::new(cert));
    }

    fn acceptor(&self) -> (u64, tokio_rustls::TlsAcceptor) {
        let current = self.current.load();
        (
            current.generation,
            tokio_rustls::TlsAcceptor::from(current.config.clone()),
        )
    }
}

/// The rustls server configuration: the live serving certificate, and client certificates
/// verified against the request-header CA but not required (health probes come without one;
/// the API answers 401 to them). Without settings no client certificate is asked for.
fn build_config(
    cert: &Arc<LiveCert>,
    front_proxy: Option<&crate::requestheader::FrontProxy>,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let builder = rustls::ServerConfig::builder_with_provider(gofe_tls::provider())
        .with_safe_default_protocol_versions()?;
    let builder = match front_proxy {
        Some(fp) => builder.with_client_cert_verifier(fp.verifier()),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(cert.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Reads a CA file as request-header settings with `allowed_names`.
fn file_settings(
    path: &Path,
    allowed_names: &[String],
) -> Result<RequestHeaderConfig, RequestHeaderError> {
    let pem = std::fs::read_to_string(path).map_err(|e| RequestHeaderError::BadCa {
        source_name: path.display().to_string(),
        message: e.to_string(),
    })?;
    Ok(RequestHeaderConfig::new(pem, allowed_names.to_vec()))
}

/// Every `interval`: the serving certificate and key read again and, when they changed and
/// make a valid pair, served; a CA file likewise.
async fn reload_files(live: Arc<LiveTls>, files: TlsFiles) {
    let read_pair = |files: &TlsFiles| -> Option<(Vec<u8>, Vec<u8>)> {
        Some((
            std::fs::read(&files.cert).ok()?,
            std::fs::read(&files.key).ok()?,
        ))
    };
    let mut last = read_pair(&files);
    loop {
        tokio::time::sleep(files.reload_interval).await;
        let now = read_pair(&files);
        if now.is_some() && now != last {
            match certified_key(&files) {
                Ok(cert) => {
                    live.set_cert(cert);
                    last = now;
                    tracing::info!(cert = %files.cert.display(), "serving certificate reloaded");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "serving certificate changed but is unusable; serving the previous one")
                }
            }
        }
        if let RequestHeaderSource::File {
            client_ca,
            allowed_names,
        } = &files.requestheader
        {
            let source = client_ca.display().to_string();
            if let Err(e) = file_settings(client_ca, allowed_names)
                .and_then(|c| live.set_request_header(&source, c))
            {
                tracing::warn!(error = %e, "request-header CA file unusable; keeping the previous CA");
            }
        }
    }
}

/// A running adapter.
pub struct Adapter {
    addr: SocketAddr,
    provider: Arc<Provider>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Adapter {
    /// Loads the rules, binds the listener and starts serving and relisting. Reading the
    /// request-header settings from a ConfigMap, the Kubernetes client is the in-cluster (or
    /// KUBECONFIG) one.
    pub async fn start(options: AdapterOptions) -> Result<Self, StartError> {
        let client = match options.tls.as_ref().map(|t| &t.requestheader) {
            Some(RequestHeaderSource::ConfigMap { .. }) => Some(kube::Client::try_default().await?),
            _ => None,
        };
        Self::start_with_clients(options, client, None).await
    }

    /// [`Adapter::start`] with the Kubernetes client given (tests give one backed by an
    /// in-memory API server). `client` is used for a [`RequestHeaderSource::ConfigMap`],
    /// which needs one, and to list the objects custom and resource metrics are about.
    pub async fn start_with_client(
        options: AdapterOptions,
        client: Option<kube::Client>,
    ) -> Result<Self, StartError> {
        Self::start_with_clients(options, client, None).await
    }

    /// [`Adapter::start_with_client`], with a separate client for listing objects (without
    /// one: `client`, else the in-cluster or KUBECONFIG one, else none and label-selected
    /// custom and resource metrics answer 503).
    pub async fn start_with_clients(
        options: AdapterOptions,
        client: Option<kube::Client>,
        objects_client: Option<kube::Client>,
    ) -> Result<Self, StartError> {
        let book = match &options.rules_file {
            Some(path) => crate::config::load(path)?,
            None => crate::config::parse("(no rules file)", "")?,
        };
        let mut tasks = Vec::new();
        let metrics: Arc<crate::metrics::Metrics> = Default::default();
        // Custom and resource metrics asked for by label selector need the objects' names.
        let objects_client = if book.custom.is_empty() && book.resource.is_none() {
            None
        } else {
            match (&client, objects_client) {
                (_, Some(c)) => Some(c),
                (Some(c), None) => Some(c.clone()),
                (None, None) => match kube::Client::try_default().await {
                    Ok(c) => Some(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "no Kubernetes client: custom and resource metrics by label selector will answer 503");
                        None
                    }
                },
            }
        };
        let provider = if options.scrape.is_empty() {
            let prom = gofe_prom::Client::new(&gofe_prom::ClientConfig {
                timeout: options.query_timeout,
                ca_file: options.prometheus_ca_file.clone(),
                ..gofe_prom::ClientConfig::new(&options.prometheus_url)
            })?;
            // The cluster's resources, through the client that lists objects.
            let mapper = crate::resources::ResourceMapper::new(
                objects_client.clone(),
                options.resource_discovery,
            )
            .with_metrics(metrics.clone());
            Arc::new(
                Provider::new(prom, book, options.cache)
                    .with_metrics(metrics.clone())
                    .with_resources(Arc::new(mapper)),
            )
        } else {
            let source = Arc::new(crate::scrape::ScrapeSource::new(
                options.scrape.clone(),
                book.builtin.rate_window,
            ));
            let provider = Provider::scraping(source.clone(), book, options.cache)?;
            tasks.push(tokio::spawn(source.run(options.scrape_interval)));
            Arc::new(provider)
        };
        let (auth, tls) = match &options.tls {
            None => (AuthPolicy::None, None),
            Some(files) => {
                let live = Arc::new(
                    LiveTls::new(certified_key(files)?).map_err(|e| tls_error(&files.cert, e))?,
                );
                match &files.requestheader {
                    RequestHeaderSource::File {
                        client_ca,
                        allowed_names,
                    } => {
                        live.set_request_header(
                            &client_ca.display().to_string(),
                            file_settings(client_ca, allowed_names)?,
                        )?;
                    }
                    RequestHeaderSource::ConfigMap {
                        namespace,
                        name,
                        allowed_names,
                    } => {
                        let Some(client) = client else {
                            return Err(StartError::Tls {
                                path: PathBuf::from(format!("{namespace}/{name}")),
                                message: "reading the request-header settings from a ConfigMap needs a Kubernetes client".into(),
                            });
                        };
                        let api = kube::Api::namespaced(client, namespace);
                        let live = live.clone();
                        let overridden = allowed_names.clone();
                        let source = format!("ConfigMap {namespace}/{name}");
                        tasks.push(tokio::spawn(crate::requestheader::watch_config_map(
                            api,
                            name.clone(),
                            move |settings| {
                                let result = settings.and_then(|mut settings| {
                                    if !overridden.is_empty() {
                                        settings.allowed_names = overridden.clone();
                                    }
                                    live.set_request_header(&source, settings)
                                });
                                if let Err(e) = result {
                                    let loaded = live.front_proxy().current().is_some();
                                    tracing::warn!(error = %e, keeping_previous = loaded, "request-header settings not updated");
                                }
                            },
                        )));
                    }
                }
                tasks.push(tokio::spawn(reload_files(live.clone(), files.clone())));
                (
                    AuthPolicy::FrontProxy(live.front_proxy().clone()),
                    Some(live),
                )
            }
        };
        let listener =
            TcpListener::bind(options.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: options.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: options.listen,
            source,
        })?;
        let app = router(AppState {
            provider: provider.clone(),
            auth,
            metrics,
            objects: Arc::new(crate::objects::ObjectLister::new(
                objects_client,
                options.cache.freshness,
            )),
        });
        let relist = {
            let provider = provider.clone();
            let (interval, lookback) = (options.relist_interval, options.discovery_lookback);
            let serves_custom = provider.serves_custom();
            tokio::spawn(async move {
                // The cluster's resources first, so the first custom metrics have their names.
                if serves_custom {
                    provider.refresh_resources().await;
                }
                loop {
                    match provider.discover(lookback).await {
                        Ok(n) => tracing::debug!(metrics = n, "rules discovered"),
                        Err(e) => {
                            tracing::warn!(error = %e, "rule discovery failed; keeping the previous metric names")
                        }
                    }
                    let wait = if provider.ready() {
                        interval
                    } else {
                        interval.min(Duration::from_secs(1))
                    };
                    tokio::time::sleep(wait).await;
                }
            })
        };
        if provider.serves_custom() {
            let provider = provider.clone();
            let every = options.resource_discovery.interval;
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    provider.refresh_resources().await;
                }
            }));
        }
        let serve = tokio::spawn(accept_loop(listener, tls, app));
        tracing::info!(%addr, tls = options.tls.is_some(), prometheus = %options.prometheus_url, scrape = %options.scrape.join(","), "metrics adapter serving");
        tasks.extend([relist, serve]);
        Ok(Adapter {
            addr,
            provider,
            tasks,
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The provider (for inspection).
    pub fn provider(&self) -> &Arc<Provider> {
        &self.provider
    }

    /// Stops serving (open connections are dropped).
    pub fn stop(self) {
        for t in self.tasks {
            t.abort();
        }
    }
}

/// Runs the adapter until Ctrl-C / SIGTERM.
pub async fn run(options: AdapterOptions) -> Result<(), StartError> {
    let adapter = Adapter::start(options).await?;
    shutdown_signal().await;
    tracing::info!("metrics adapter stopping");
    adapter.stop();
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn accept_loop(listener: TcpListener, tls: Option<Arc<LiveTls>>, app: axum::Router) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let tls = tls.as_ref().map(|live| live.acceptor());
        tokio::spawn(async move {
            match tls {
                None => serve_connection(TokioIo::new(tcp), app, None).await,
                Some((generation, acceptor)) => {
                    let stream =
                        match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                    let cert = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .filter(|chain| !chain.is_empty())
                        .map(|chain| ClientCert {
                            common_name: common_name(chain[0].as_ref()),
                            chain: chain.iter().map(|c| c.clone().into_owned()).collect(),
                            generation,
                        });
                    serve_connection(TokioIo::new(stream), app, cert).await;
                }
            }
        });
    }
}

async fn serve_connection<I>(io: I, app: axum::Router, cert: Option<ClientCert>)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        if let Some(cert) = &cert {
            request.extensions_mut().insert(cert.clone());
        }
        let mut app = app.clone();
        async move { app.call(request.map(Body::new)).await }
    });
    if let Err(e) = auto::Builder::new(TokioExecutor::new())
        .serve_connection(io, service)
        .await
    {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

// === certificate subject ===

/// Reads one DER TLV at the start of `input`: (tag, contents, rest).
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The subject common name (OID 2.5.4.3) of a DER X.509 certificate. The certificate has
/// already been verified by rustls; this only reads it.
pub fn common_name(der: &[u8]) -> Option<String> {
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const CN_OID: &[u8] = &[0x55, 0x04, 0x03];
    let (tag, cert, _) = der_tlv(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, mut tbs, _) = der_tlv(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    // [0] version (optional), serial, signature, issuer, validity, subject
    let (tag, _, rest) = der_tlv(tbs)?;
    if tag == 0xa0 {
        tbs = rest;
        let (_, _, rest) = der_tlv(tbs)?; // serial
        tbs = rest;
    } else {
        tbs = rest; // that was the serial
    }
    for _ in 0..3 {
        let (_, _, rest) = der_tlv(tbs)?; // signature, issuer, validity
        tbs = rest;
    }
    let (tag, mut subject, _) = der_tlv(tbs)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut found = None;
    while !subject.is_empty() {
        let (tag, mut set, rest) = der_tlv(subject)?;
        subject = rest;
        if tag != SET {
            return None;
        }
        while !set.is_empty() {
            let (_, atv, rest) = der_tlv(set)?;
            set = rest;
            let (tag, oid, value) = der_tlv(atv)?;
            if tag == 0x06 && oid == CN_OID {
                let (_, text, _) = der_tlv(value)?;
                found = Some(String::from_utf8_lossy(text).into_owned());
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_common_name() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "gofe");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "front-proxy-client");
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            common_name(cert.der()).as_deref(),
            Some("front-proxy-client")
        );
        let mut params = rcgen::CertificateParams::new(vec!["x".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(common_name(cert.der()), None);
        assert_eq!(common_name(&[0x30, 0x05, 1, 2]), None);
        assert_eq!(common_name(&[]), None);
    }
}
