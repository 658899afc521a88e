//! Serving the ADS service (and `/metrics`) on a socket, in plaintext, TLS or mutual TLS, with
//! certificate files that may be replaced while it runs ([`LiveTls`]).

use std::convert::Infallible;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::grpc::ResponseBody;
use crate::server::{AdsServer, PeerCertificate};

pub use gofe_tls::TlsError;
use gofe_tls::{certs, key, provider, roots};

/// A server TLS configuration offering `h2`. With `client_ca`, clients must present a
/// certificate signed by it (mutual TLS), and the node id of each stream must be a name in
/// that certificate.
pub fn server_tls(
    cert_chain: &Path,
    private_key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    build(&ServerTlsFiles {
        cert_chain: cert_chain.to_owned(),
        private_key: private_key.to_owned(),
        client_ca: client_ca.map(Path::to_owned),
        require_client_certificate: true,
    })
}

/// The files a server TLS configuration is read from (PEM).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// The server's certificate chain, leaf first.
    pub cert_chain: PathBuf,
    /// The server's private key.
    pub private_key: PathBuf,
    /// CA bundle that client certificates must chain to. `None`: no client certificates are
    /// asked for (server-only TLS).
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: refuse a handshake without a client certificate. When `false`, a
    /// client may connect without one (a certificate it does present is still verified).
    pub require_client_certificate: bool,
}

fn build(files: &ServerTlsFiles) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let client_ca = files
        .client_ca
        .as_ref()
        .map(|ca| roots(ca).map(|r| (r, ca.display().to_string())))
        .transpose()?;
    build_from(
        certs(&files.cert_chain)?,
        key(&files.private_key)?,
        client_ca,
        files.require_client_certificate,
    )
    .map_err(|e| match e {
        TlsError::Invalid(m) if m.starts_with("key:") => TlsError::Invalid(format!(
            "{} and {}: {}",
            files.cert_chain.display(),
            files.private_key.display(),
            &m[5..]
        )),
        other => other,
    })
}

/// A server TLS configuration offering `h2` from material in memory (PEM): the certificate
/// chain, its key, and the CA that client certificates must chain to. With
/// `require_client_certificate` `false` a client may connect without a certificate (one it
/// presents is still verified): what the mesh CA's port needs, since a proxy asks for its
/// first certificate there.
pub fn server_tls_from_pem(
    cert_chain: &str,
    private_key: &str,
    client_ca: &str,
    require_client_certificate: bool,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let pem_certs = |text: &str,
                     what: &str|
     -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsError> {
        let certs: Result<Vec<_>, _> =
            rustls_pemfile::certs(&mut std::io::BufReader::new(text.as_bytes())).collect();
        let certs = certs.map_err(|e| TlsError::Invalid(format!("{what}: {e}")))?;
        if certs.is_empty() {
            return Err(TlsError::Invalid(format!(
                "{what}: no PEM certificate found"
            )));
        }
        Ok(certs)
    };
    let chain = pem_certs(cert_chain, "certificate chain")?;
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(private_key.as_bytes()))
        .map_err(|e| TlsError::Invalid(format!("private key: {e}")))?
        .ok_or_else(|| TlsError::Invalid("private key: no PEM private key found".into()))?;
    let mut store = rustls::RootCertStore::empty();
    for c in pem_certs(client_ca, "client CA")? {
        store
            .add(c)
            .map_err(|e| TlsError::Invalid(format!("client CA: {e}")))?;
    }
    build_from(
        chain,
        key,
        Some((store, "client CA".into())),
        require_client_certificate,
    )
}

fn build_from(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
    client_ca: Option<(rustls::RootCertStore, String)>,
    require_client_certificate: bool,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid(e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some((store, ca)) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(store),
                provider(),
            );
            let verifier = if require_client_certificate {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier
                .build()
                .map_err(|e| TlsError::Invalid(format!("{ca}: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Invalid(format!("key: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

// === impl LiveTls ===

/// A server TLS configuration that follows its files: [`LiveTls::reload`] reads them again and,
/// when they changed and make a valid configuration, every later handshake uses the new
/// material (connections already open keep theirs). A changed file that does not load (a
/// half-written certificate, a key that does not match) leaves the previous material in force.
pub struct LiveTls {
    files: Option<ServerTlsFiles>,
    current: ArcSwap<rustls::ServerConfig>,
    /// The file contents last applied and last refused (a bad file is reported once, not at
    /// every poll).
    seen: Mutex<(Option<Contents>, Option<Contents>)>,
}

impl std::fmt::Debug for LiveTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// What one [`LiveTls::reload`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reload {
    /// The files are as last read: nothing to do.
    Unchanged,
    /// New material is in force from the next handshake.
    Applied,
    /// The files changed but do not load; the previous material stays (already reported).
    StillBad,
}

impl LiveTls {
    /// Reads `files` into a configuration.
    pub fn load(files: ServerTlsFiles) -> Result<LiveTls, TlsError> {
        let contents = read_all(&files);
        let config = build(&files)?;
        Ok(LiveTls {
            current: ArcSwap::new(config),
            seen: Mutex::new((contents, None)),
            files: Some(files),
        })
    }

    /// A configuration that never changes (nothing to reload).
    pub fn fixed(config: Arc<rustls::ServerConfig>) -> LiveTls {
        LiveTls {
            files: None,
            current: ArcSwap::new(config),
            seen: Mutex::new((None, None)),
        }
    }

    /// Puts `config` in force from the next handshake (connections already open keep
    /// theirs): how the mesh CA renews the xDS port's own certificate.
    pub fn replace(&self, config: Arc<rustls::ServerConfig>) {
        self.current.store(config);
    }

    /// The configuration new handshakes use.
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        self.current.load_full()
    }

    /// Reads the files again; applies them when they changed and load. `Err`: they changed
    /// and do not load (the previous material stays; the same bad contents are reported once,
    /// then [`Reload::StillBad`]).
    pub fn reload(&self) -> Result<Reload, TlsError> {
        let Some(files) = &self.files else {
            return Ok(Reload::Unchanged);
        };
        let contents = read_all(files);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if contents.is_some() && contents == seen.0 {
            seen.1 = None;
            return Ok(Reload::Unchanged);
        }
        if contents.is_some() && contents == seen.1 {
            return Ok(Reload::StillBad);
        }
        match build(files) {
            Ok(config) => {
                self.current.store(config);
                *seen = (contents, None);
                Ok(Reload::Applied)
            }
            Err(e) => {
                seen.1 = contents;
                Err(e)
            }
        }
    }
}

/// The bytes of each TLS file, in order.
type Contents = Vec<Vec<u8>>;

/// The bytes of every file (`None` if one cannot be read).
fn read_all(files: &ServerTlsFiles) -> Option<Contents> {
    std::iter::once(&files.cert_chain)
        .chain(std::iter::once(&files.private_key))
        .chain(files.client_ca.as_ref())
        .map(|p| std::fs::read(p).ok())
        .collect()
}

/// Serves ADS (gRPC over HTTP/2) and `GET /metrics` on `listener` until `shutdown` completes.
/// With `tls`, connections are TLS; a verified client certificate is passed to the ADS service
/// for the node-identity check.
pub async fn serve(
    listener: TcpListener,
    server: AdsServer,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
) {
    serve_inner(
        listener,
        server,
        tls.map(|t| (Arc::new(LiveTls::fixed(t)), None)),
        shutdown,
    )
    .await
}

/// [`serve()`] over TLS that follows its files: every `reload_every` the certificate, key and
/// client CA files are read again ([`LiveTls::reload`]); new material is logged and counted
/// (`gofe_xds_tls_reloads_total{result="applied"}`), a changed file that does not load is
/// logged and counted (`result="failed"`) and the previous material stays.
pub async fn serve_reloading(
    listener: TcpListener,
    server: AdsServer,
    tls: Arc<LiveTls>,
    reload_every: Duration,
    shutdown: impl Future<Output = ()>,
) {
    serve_inner(listener, server, Some((tls, Some(reload_every))), shutdown).await
}

async fn serve_inner(
    listener: TcpListener,
    server: AdsServer,
    tls: Option<(Arc<LiveTls>, Option<Duration>)>,
    shutdown: impl Future<Output = ()>,
) {
    let http = Arc::new(auto::Builder::new(TokioExecutor::new()));
    tokio::pin!(shutdown);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let reload_every = tls.as_ref().and_then(|(_, every)| *every);
    let mut reload_tick = tokio::time::interval(reload_every.unwrap_or(Duration::from_secs(3600)));
    reload_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    reload_tick.reset();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            _ = reload_tick.tick(), if reload_every.is_some() => {
                if let Some((live, _)) = &tls {
                    reload(live, &server);
                }
                continue;
            }
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let server = server.clone();
        let http = Arc::clone(&http);
        let acceptor = tls
            .as_ref()
            .map(|(live, _)| tokio_rustls::TlsAcceptor::from(live.config()));
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            match acceptor {
                None => {
                    let svc = service(server, None);
                    let conn = http.serve_connection(TokioIo::new(tcp), svc);
                    tokio::select! { _ = conn => {}, _ = stop.changed() => {} }
                }
                Some(acceptor) => {
                    let tls = match acceptor.accept(tcp).await {
                        Ok(t) => t,
                        Err(e) => {
                            server.inner.metrics.handshake_failures.inc();
                            tracing::info!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                    };
                    let cert = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| PeerCertificate(c.clone().into_owned()));
                    let svc = service(server, cert);
                    let conn = http.serve_connection(TokioIo::new(tls), svc);
                    tokio::select! { _ = conn => {}, _ = stop.changed() => {} }
                }
            }
        });
    }
    let _ = stop_tx.send(true);
}

/// One reload poll, logged and counted.
fn reload(live: &LiveTls, server: &AdsServer) {
    let files = live.files.as_ref();
    let cert = files.map_or(String::new(), |f| f.cert_chain.display().to_string());
    match live.reload() {
        Ok(Reload::Unchanged | Reload::StillBad) => {}
        Ok(Reload::Applied) => {
            server
                .inner
                .metrics
                .tls_reloads
                .with_label_values(&["applied"])
                .inc();
            tracing::info!(cert = %cert, "xDS TLS material reloaded: new handshakes use it");
        }
        Err(e) => {
            server
                .inner
                .metrics
                .tls_reloads
                .with_label_values(&["failed"])
                .inc();
            tracing::error!(cert = %cert, error = %e, "xDS TLS files changed but do not load: the previous material stays");
        }
    }
}

fn service(
    server: AdsServer,
    cert: Option<PeerCertificate>,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = http::Response<ResponseBody>,
    Error = Infallible,
    Future = impl Future<Output = Result<http::Response<ResponseBody>, Infallible>> + Send,
> + Clone
       + Send {
    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let server = server.clone();
        let cert = cert.clone();
        async move {
            if req.uri().path() == "/metrics" {
                let text = server.metrics_text();
                let mut resp = http::Response::new(ResponseBody::Full(Some(Bytes::from(text))));
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                return Ok(resp);
            }
            Ok(server.handle(req, cert).await)
        }
    })
}
