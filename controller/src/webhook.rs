//! The sidecar-injection admission webhook: `POST /inject` takes an `admission.k8s.io/v1`
//! AdmissionReview and answers one (with a base64 JSONPatch adding the gofe proxy when the
//! Pod is injected), on its own HTTPS listener (`webhook:` in the controller's file). The
//! decision is `gofe_inject::admission::review`, the same transformation `gofe inject` runs.
//!
//! ```text
//!   kube-apiserver ──HTTPS POST /inject──▶ webhook (rustls; certificate re-read on change)
//!                                              │ gofe_inject::admission::review (pure)
//!                 ◀── AdmissionReview ─────────┘ allowed + JSONPatch | allowed + warning | denied
//! ```
//!
//! A body that is not an AdmissionReview gets 400 with the reason; a Pod that cannot be
//! injected is admitted unchanged or denied as `failure_policy` says, with a warning either
//! way. `GET /healthz` answers 200 for probes. The listener makes no Kubernetes API calls.
//! Each review is counted and timed ([`WebhookMetrics`], on the controller's `/metrics`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use gofe_inject::admission::{self, FailurePolicy, Verdict};
use gofe_inject::InjectConfig;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;
use tower_service::Service;

use crate::config::WebhookConfig;

/// Why the webhook could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The serving certificate or key cannot be used.
    #[error("webhook TLS: {0}")]
    Tls(String),
    /// The address could not be bound.
    #[error("cannot bind the webhook address {address}: {source}")]
    Bind {
        /// The address.
        address: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// What the handler needs.
#[derive(Debug)]
pub struct WebhookState {
    /// How to inject.
    pub sidecar: InjectConfig,
    /// What to do with a Pod that cannot be injected.
    pub failure_policy: FailurePolicy,
    /// Where reviews are counted.
    pub metrics: WebhookMetrics,
}

/// The webhook's series: `gofe_injection_reviews_total{result}` (`injected`, `skipped`,
/// `failed_admitted`, `failed_denied`, `malformed`) and
/// `gofe_injection_review_duration_seconds`, the time to decide and encode an answer.
#[derive(Clone, Debug)]
pub struct WebhookMetrics {
    reviews: prometheus::IntCounterVec,
    duration: prometheus::Histogram,
}

impl WebhookMetrics {
    /// The series, registered in `registry`.
    pub fn new(registry: &prometheus::Registry) -> Self {
        let reviews = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "gofe_injection_reviews_total",
                "AdmissionReviews answered by the sidecar-injection webhook, by result.",
            ),
            &["result"],
        )
        .expect("valid metric");
        let duration = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "gofe_injection_review_duration_seconds",
                "Time the webhook took to decide and encode an AdmissionReview's answer.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1,
            ]),
        )
        .expect("valid metric");
        for result in [
            "injected",
            "skipped",
            "failed_admitted",
            "failed_denied",
            "malformed",
        ] {
            reviews.with_label_values(&[result]);
        }
        let _ = registry.register(Box::new(reviews.clone()));
        let _ = registry.register(Box::new(duration.clone()));
        WebhookMetrics { reviews, duration }
    }
}

/// The webhook's routes.
pub fn router(state: Arc<WebhookState>) -> Router {
    Router::new()
        .route("/inject", post(inject))
        .route("/healthz", get(|| async { "ok\n" }))
        // An AdmissionReview carries the whole Pod; etcd's object limit is 1.5 MiB.
        .layer(DefaultBodyLimit::max(8 << 20))
        .with_state(state)
}

async fn inject(State(state): State<Arc<WebhookState>>, body: Bytes) -> Response {
    let started = std::time::Instant::now();
    let (result, response) = match admission::review(&body, &state.sidecar, state.failure_policy) {
        Ok((answer, verdict)) => {
            let result = match &verdict {
                Verdict::Injected => {
                    tracing::debug!("webhook: pod injected");
                    "injected"
                }
                Verdict::Skipped(why) => {
                    tracing::debug!(why, "webhook: pod not injected");
                    "skipped"
                }
                Verdict::Failed { reason, allowed } => {
                    tracing::warn!(%reason, allowed, "webhook: pod could not be injected");
                    if *allowed {
                        "failed_admitted"
                    } else {
                        "failed_denied"
                    }
                }
            };
            let response = (
                [(header::CONTENT_TYPE, "application/json")],
                serde_json::to_vec(&answer).unwrap_or_default(),
            )
                .into_response();
            (result, response)
        }
        Err(e) => {
            tracing::warn!(error = %e, "webhook: malformed request");
            let response = (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response();
            ("malformed", response)
        }
    };
    state.metrics.reviews.with_label_values(&[result]).inc();
    state
        .metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    response
}

// === TLS ===

/// Hands every handshake the serving certificate in force.
#[derive(Debug)]
struct LiveCert(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for LiveCert {
    fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, WebhookError> {
    let chain = gofe_tls::certs(cert).map_err(|e| WebhookError::Tls(e.to_string()))?;
    let key_der = gofe_tls::key(key).map_err(|e| WebhookError::Tls(e.to_string()))?;
    CertifiedKey::from_der(chain, key_der, &gofe_tls::provider())
        .map_err(|e| WebhookError::Tls(format!("{}: {e}", key.display())))
}

/// Every `interval`, the certificate files read again and, when they changed and make a valid
/// pair, served from the next handshake (a renewed cert-manager Secret needs no restart).
async fn reload(live: Arc<LiveCert>, cert: PathBuf, key: PathBuf, interval: Duration) {
    let read = || Some((std::fs::read(&cert).ok()?, std::fs::read(&key).ok()?));
    let mut last = read();
    loop {
        tokio::time::sleep(interval).await;
        let now = read();
        if now.is_none() || now == last {
            continue;
        }
        match certified_key(&cert, &key) {
            Ok(k) => {
                live.0.store(Arc::new(k));
                last = now;
                tracing::info!(cert = %cert.display(), "webhook serving certificate reloaded");
            }
            Err(e) => {
                tracing::warn!(error = %e, "webhook certificate changed but is unusable; serving the previous one")
            }
        }
    }
}

/// A running webhook listener.
pub struct Webhook {
    addr: SocketAddr,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Webhook {
    /// Binds `config.address`, loads the certificate and serves until [`Webhook::stop`] (or
    /// until dropped), counting reviews in a registry of its own.
    pub async fn start(config: &WebhookConfig) -> Result<Webhook, WebhookError> {
        Self::start_with(config, WebhookMetrics::new(&prometheus::Registry::new())).await
    }

    /// [`Webhook::start`], counting reviews in `metrics` (the controller's registry).
    pub async fn start_with(
        config: &WebhookConfig,
        metrics: WebhookMetrics,
    ) -> Result<Webhook, WebhookError> {
        let (cert, key) = (
            PathBuf::from(&config.cert_file),
            PathBuf::from(&config.key_file),
        );
        let live = Arc::new(LiveCert(ArcSwap::from_pointee(certified_key(&cert, &key)?)));
        let mut tls = rustls::ServerConfig::builder_with_provider(gofe_tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| WebhookError::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(live.clone());
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind(&config.address)
            .await
            .map_err(|source| WebhookError::Bind {
                address: config.address.clone(),
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| WebhookError::Bind {
            address: config.address.clone(),
            source,
        })?;
        let app = router(Arc::new(WebhookState {
            sidecar: config.sidecar.clone(),
            failure_policy: config.failure_policy,
            metrics,
        }));
        tracing::info!(webhook = %addr, failure_policy = config.failure_policy.as_str(), image = %config.sidecar.image, "serving the sidecar-injection webhook");
        let serve = tokio::spawn(accept_loop(listener, acceptor, app));
        let reloads = tokio::spawn(reload(live, cert, key, config.reload_interval));
        Ok(Webhook {
            addr,
            tasks: vec![serve, reloads],
        })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting (connections in progress are dropped).
    pub fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "webhook accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (app, acceptor) = (app.clone(), acceptor.clone());
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "webhook TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "webhook TLS handshake timed out");
                        return;
                    }
                };
            let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                let mut app = app.clone();
                async move { app.call(request.map(Body::new)).await }
            });
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "webhook connection ended with an error");
            }
        });
    }
}
