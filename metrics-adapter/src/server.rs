//! The listener: TLS with client-certificate verification in cluster mode, plain HTTP in local
//! mode, and the background relisting of external rules.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tower_service::Service;

use crate::api::{router, AppState, AuthPolicy, ClientCert};
use crate::provider::{CacheConfig, Provider};

/// TLS files for cluster mode (all PEM).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// Serving certificate chain, leaf first.
    pub cert: PathBuf,
    /// Serving private key.
    pub key: PathBuf,
    /// The aggregator's request-header client CA (`requestheader-client-ca-file`).
    pub client_ca: PathBuf,
    /// Allowed front-proxy common names; empty allows any certificate the CA signed.
    pub allowed_names: Vec<String>,
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
    /// requestheader-client-ca-file). Required unless --insecure-local.
    #[arg(long, required_unless_present = "insecure_local")]
    pub requestheader_client_ca_file: Option<PathBuf>,
    /// Common names allowed for the front-proxy certificate, comma-separated. Default: any
    /// certificate the CA signed.
    #[arg(long, value_delimiter = ',')]
    pub requestheader_allowed_names: Vec<String>,
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
            match (self.tls_cert_file, self.tls_private_key_file, self.requestheader_client_ca_file) {
                (Some(cert), Some(key), Some(client_ca)) => Some(TlsFiles {
                    cert,
                    key,
                    client_ca,
                    allowed_names: self.requestheader_allowed_names,
                }),
                _ => return Err(ArgsError("cluster mode needs --tls-cert-file, --tls-private-key-file and --requestheader-client-ca-file (or --insecure-local)".into())),
            }
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

/// The rustls server configuration: the serving certificate, and client certificates verified
/// against the request-header CA but not required (health probes come without one; the API
/// answers 401 to them).
pub fn server_tls_config(files: &TlsFiles) -> Result<rustls::ServerConfig, StartError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for ca in read_certs(&files.client_ca)? {
        roots.add(ca).map_err(|e| tls_error(&files.client_ca, e))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| tls_error(&files.client_ca, e))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(&files.cert, e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(read_certs(&files.cert)?, read_key(&files.key)?)
        .map_err(|e| tls_error(&files.key, e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A running adapter.
pub struct Adapter {
    addr: SocketAddr,
    provider: Arc<Provider>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Adapter {
    /// Loads the rules, binds the listener and starts serving and relisting.
    pub async fn start(options: AdapterOptions) -> Result<Self, StartError> {
        let book = match &options.rules_file {
            Some(path) => crate::config::load(path)?,
            None => crate::config::parse("(no rules file)", "")?,
        };
        let mut tasks = Vec::new();
        let provider = if options.scrape.is_empty() {
            let prom = gofe_prom::Client::new(&gofe_prom::ClientConfig {
                timeout: options.query_timeout,
                ca_file: options.prometheus_ca_file.clone(),
                ..gofe_prom::ClientConfig::new(&options.prometheus_url)
            })?;
            Arc::new(Provider::new(prom, book, options.cache))
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
            Some(files) => (
                AuthPolicy::FrontProxy {
                    allowed_names: files.allowed_names.clone(),
                },
                Some(tokio_rustls::TlsAcceptor::from(Arc::new(
                    server_tls_config(files)?,
                ))),
            ),
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
        });
        let relist = {
            let provider = provider.clone();
            let (interval, lookback) = (options.relist_interval, options.discovery_lookback);
            tokio::spawn(async move {
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

async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: axum::Router,
) {
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
        let tls = tls.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(TokioIo::new(tcp), app, None).await,
                Some(acceptor) => {
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
                        .and_then(|c| c.first())
                        .map(|leaf| ClientCert {
                            common_name: common_name(leaf.as_ref()),
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
