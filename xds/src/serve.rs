//! Serving the ADS service (and `/metrics`) on a socket, in plaintext, TLS or mutual TLS.

use std::convert::Infallible;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;

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
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid(e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca)?),
                provider(),
            )
            .build()
            .map_err(|e| TlsError::Invalid(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(certs(cert_chain)?, key(private_key)?)
        .map_err(|e| TlsError::Invalid(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
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
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let http = Arc::new(auto::Builder::new(TokioExecutor::new()));
    tokio::pin!(shutdown);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
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
        let acceptor = acceptor.clone();
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
