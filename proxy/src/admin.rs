//! The admin listener: `/metrics` (also `/stats/prometheus`), `/ready`, `/config_dump`,
//! `/clusters`, `/server_info`, and `POST /healthcheck/fail` / `POST /healthcheck/ok`, with
//! Envoy's paths and, where Envoy has them, its formats.
//!
//! Plain HTTP/1.1 on an operator-chosen address (keep it off public networks). It reads the
//! proxy's shared state and never blocks the data plane.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use serde::Serialize;

use crate::body::ProxyBody;
use crate::cluster::EndpointView;
use crate::config::HealthStatus;
use crate::health::OutlierState;
use crate::{ActiveConfig, Shared};

/// A bound, serving admin listener.
pub(crate) struct RunningAdmin {
    pub(crate) local_addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl RunningAdmin {
    pub(crate) fn bind(addr: SocketAddr, shared: Arc<Shared>) -> std::io::Result<Self> {
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(std_listener)?;
        let local_addr = listener.local_addr()?;
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    _ = stopped.changed() => break,
                    accepted = listener.accept() => match accepted {
                        Ok(pair) => pair,
                        Err(e) => {
                            tracing::warn!(error = %e, "admin accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let shared = Arc::clone(&shared);
                        async move { Ok::<_, Infallible>(handle(&shared, req)) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Ok(RunningAdmin {
            local_addr,
            stop,
            task,
        })
    }

    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// What `/ready` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Readiness {
    /// Serving its configuration.
    Live,
    /// An xDS client waits for its first snapshot (or for `initial_fetch_timeout`).
    Initializing,
    /// Nothing applied yet.
    NoConfig,
    /// Shutting down.
    Draining,
}

impl Readiness {
    /// What `/ready` answers.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Readiness::Live => "LIVE",
            Readiness::Initializing => "INITIALIZING",
            Readiness::NoConfig => "NO CONFIG",
            Readiness::Draining => "DRAINING",
        }
    }
}

impl Shared {
    /// What `/ready` says now.
    pub(crate) fn readiness(&self) -> Readiness {
        if self.draining.load(Ordering::Relaxed) || self.health_failed.load(Ordering::Relaxed) {
            Readiness::Draining
        } else if self.warming.load(Ordering::Acquire) {
            Readiness::Initializing
        } else if self.active.load().version == 0 {
            Readiness::NoConfig
        } else {
            Readiness::Live
        }
    }
}

/// `/config_dump`: the active configuration (flattened, as before), every endpoint's health
/// as configured and as the proxy's outlier detection sees it, and the xDS client's state.
#[derive(Serialize)]
struct ConfigDump<'a> {
    #[serde(flatten)]
    active: &'a ActiveConfig,
    /// `LIVE`, `INITIALIZING`, `NO CONFIG`, `DRAINING` (what `/ready` says).
    ready: &'static str,
    endpoints: Vec<EndpointView<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    xds: Option<crate::xds::status::XdsView>,
}

fn config_dump(shared: &Shared) -> serde_json::Value {
    let active = shared.active.load_full();
    let clusters = shared.clusters.load_full();
    let xds = shared.xds.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let dump = ConfigDump {
        active: &active,
        ready: shared.readiness().as_str(),
        endpoints: clusters.iter().flat_map(|c| c.views()).collect(),
        xds,
    };
    serde_json::to_value(&dump).unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
}

fn reply(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// `/clusters` in Envoy's text form: a line `CLUSTER::default_priority::LIMIT::N` per circuit
/// breaker threshold, then `CLUSTER::HOST::STAT::VALUE` lines per endpoint (Envoy's `weight`,
/// `health_flags`, `rq_active`, `rq_total`, `rq_success`, `rq_error`, and gofe's
/// `outlier_state` and `effective_weight`).
fn clusters_text(shared: &Shared) -> String {
    let clusters = shared.clusters.load_full();
    let mut out = String::new();
    for c in clusters.iter() {
        let b = &c.breakers;
        for (limit, value) in [
            ("max_connections", b.max_connections),
            ("max_pending_requests", b.max_pending_requests),
            ("max_requests", b.max_requests),
            ("max_retries", b.max_retries),
        ] {
            let _ = writeln!(out, "{}::default_priority::{limit}::{value}", c.name);
        }
        for (ep, view) in c.endpoints.iter().zip(c.views()) {
            let host = format!("{}::{}", c.name, ep.address);
            let (total, errors) = ep.stats.totals();
            let mut flags = Vec::new();
            if view.outlier.state != OutlierState::Closed {
                flags.push("/failed_outlier_check");
            }
            match view.health_status {
                HealthStatus::Healthy => {}
                HealthStatus::Unhealthy => flags.push("/failed_eds_health"),
                HealthStatus::Draining => flags.push("/eds_status_draining"),
            }
            let health_flags = if flags.is_empty() {
                "healthy".to_owned()
            } else {
                flags.join("|")
            };
            let outlier = match view.outlier.state {
                OutlierState::Closed => "closed",
                OutlierState::Open => "open",
                OutlierState::HalfOpen => "half_open",
            };
            let _ = writeln!(out, "{host}::weight::{}", view.weight);
            let _ = writeln!(out, "{host}::health_flags::{health_flags}");
            let _ = writeln!(out, "{host}::rq_active::{}", ep.stats.active.get());
            let _ = writeln!(out, "{host}::rq_total::{total}");
            let _ = writeln!(out, "{host}::rq_success::{}", total.saturating_sub(errors));
            let _ = writeln!(out, "{host}::rq_error::{errors}");
            let _ = writeln!(out, "{host}::outlier_state::{outlier}");
            let _ = writeln!(out, "{host}::effective_weight::{}", view.effective_weight);
        }
    }
    out
}

/// `/server_info`, with Envoy's `ServerInfo` field names.
#[derive(Serialize)]
struct ServerInfo {
    version: &'static str,
    /// `LIVE`, `DRAINING`, `PRE_INITIALIZING`, `INITIALIZING` (Envoy's `ServerInfo.State`).
    state: &'static str,
    /// Seconds since start, as a protobuf JSON duration (`"12s"`).
    uptime_current_epoch: String,
    uptime_all_epochs: String,
    /// The active configuration's version (gofe's).
    config_version: u64,
}

fn server_info(shared: &Shared) -> ServerInfo {
    let uptime = format!("{}s", shared.started.elapsed().as_secs());
    ServerInfo {
        version: concat!("gofe/", env!("CARGO_PKG_VERSION")),
        state: match shared.readiness() {
            Readiness::Live => "LIVE",
            Readiness::Draining => "DRAINING",
            Readiness::NoConfig => "PRE_INITIALIZING",
            Readiness::Initializing => "INITIALIZING",
        },
        uptime_current_epoch: uptime.clone(),
        uptime_all_epochs: uptime,
        config_version: shared.active.load().version,
    }
}

/// How the admin's `/logging` reads and changes the process's log filter: called with
/// `None` it returns the filter in force; with `Some(directives)` (a level such as `debug`,
/// or `tracing` directives such as `gofe_proxy=debug,info`) it puts them in force and returns
/// them, or says why they are not valid. The binary installs one for its log subscriber.
pub type LogControl = Box<dyn Fn(Option<&str>) -> Result<String, String> + Send + Sync>;

static LOG_CONTROL: std::sync::OnceLock<LogControl> = std::sync::OnceLock::new();

/// Installs the process's [`LogControl`] (once: the log subscriber is the process's). Without
/// one, `/logging` answers 501.
pub fn install_log_control(control: LogControl) {
    let _ = LOG_CONTROL.set(control);
}

fn not_a_level(value: &str) -> String {
    format!("level {value:?} is not one of trace, debug, info, warn, error, off\n")
}

/// `GET /logging`: the filter in force. `POST /logging?level=L` (Envoy's form: every logger at
/// `trace`, `debug`, `info`, `warn`, `error` or `off`) or `POST /logging?filter=DIRECTIVES`.
fn logging(req: &Request<Incoming>) -> Response<ProxyBody> {
    const TEXT: &str = "text/plain; charset=utf-8";
    let Some(control) = LOG_CONTROL.get() else {
        return reply(
            StatusCode::NOT_IMPLEMENTED,
            TEXT,
            "this process's log filter cannot be changed at run time\n",
        );
    };
    if req.method() == Method::GET || req.method() == Method::HEAD {
        return match control(None) {
            Ok(now) => reply(StatusCode::OK, TEXT, format!("{now}\n")),
            Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, TEXT, format!("{e}\n")),
        };
    }
    if req.method() != Method::POST {
        return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "use GET or POST\n");
    }
    let Ok(pairs) =
        serde_urlencoded::from_str::<Vec<(String, String)>>(req.uri().query().unwrap_or(""))
    else {
        return reply(StatusCode::BAD_REQUEST, TEXT, "the query is not a form\n");
    };
    let mut wanted = None;
    for (key, value) in pairs {
        match key.as_str() {
            "level" => {
                match value.as_str() {
                    "trace" | "debug" | "info" | "warn" | "error" | "off" => wanted = Some(value),
                    // Envoy's names for two of them.
                    "warning" => wanted = Some("warn".to_owned()),
                    "critical" => wanted = Some("error".to_owned()),
                    _ => return reply(StatusCode::BAD_REQUEST, TEXT, not_a_level(&value)),
                }
            }
            "filter" => wanted = Some(value),
            _ => {
                return reply(
                    StatusCode::BAD_REQUEST,
                    TEXT,
                    format!("unknown parameter {key:?}: use level=L or filter=DIRECTIVES\n"),
                )
            }
        }
    }
    let Some(wanted) = wanted else {
        return reply(
            StatusCode::BAD_REQUEST,
            TEXT,
            "say what to log: POST /logging?level=debug or ?filter=gofe_proxy=debug,info\n",
        );
    };
    match control(Some(&wanted)) {
        Ok(now) => {
            tracing::info!(filter = %now, "log filter set from the admin endpoint");
            reply(StatusCode::OK, TEXT, format!("{now}\n"))
        }
        Err(e) => reply(StatusCode::BAD_REQUEST, TEXT, format!("{e}\n")),
    }
}

fn handle(shared: &Shared, req: Request<Incoming>) -> Response<ProxyBody> {
    const TEXT: &str = "text/plain; charset=utf-8";
    if req.uri().path() == "/logging" {
        return logging(&req);
    }
    // Envoy's mutating endpoints take POST only.
    let health_check = match req.uri().path() {
        "/healthcheck/fail" => Some(true),
        "/healthcheck/ok" => Some(false),
        _ => None,
    };
    if let Some(fail) = health_check {
        if req.method() != Method::POST {
            return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "use POST\n");
        }
        shared.health_failed.store(fail, Ordering::Relaxed);
        tracing::info!(failed = fail, "health check set from the admin endpoint");
        return reply(StatusCode::OK, TEXT, "OK\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "use GET\n");
    }
    match req.uri().path() {
        "/clusters" => reply(StatusCode::OK, TEXT, clusters_text(shared)),
        "/server_info" => {
            let body = serde_json::to_vec_pretty(&server_info(shared))
                .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}").into_bytes());
            reply(StatusCode::OK, "application/json", body)
        }
        "/metrics" | "/stats/prometheus" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            shared.metrics.render(),
        ),
        "/ready" => {
            let readiness = shared.readiness();
            let status = if readiness == Readiness::Live {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(status, TEXT, format!("{}\n", readiness.as_str()))
        }
        "/config_dump" => {
            let body = serde_json::to_vec_pretty(&config_dump(shared))
                .unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}").into_bytes());
            reply(StatusCode::OK, "application/json", body)
        }
        "/" => reply(
            StatusCode::OK,
            TEXT,
            "gofe proxy admin\n  /metrics                Prometheus metrics (also /stats/prometheus)\n  /ready                  readiness (200 LIVE; 503 INITIALIZING, NO CONFIG or DRAINING)\n  /config_dump            active configuration, endpoint health, xDS state (JSON)\n  /clusters               clusters and endpoints: limits, weights, health, breaker state, requests\n  /server_info            version, state, uptime (JSON)\n  POST /healthcheck/fail  report not ready (503 DRAINING) while serving on, to drain before maintenance\n  POST /healthcheck/ok    ready again\n  /logging                the log filter (POST ?level=debug or ?filter=gofe_proxy=debug,info to change it)\n",
        ),
        _ => reply(StatusCode::NOT_FOUND, TEXT, "not found (see /)\n"),
    }
}
