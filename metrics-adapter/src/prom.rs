//! A small client for the three Prometheus HTTP API calls the adapter makes: instant queries
//! (`/api/v1/query`), range queries (`/api/v1/query_range`, for forecasts) and series listing
//! (`/api/v1/series`, for rule discovery).
//!
//! It is built on the workspace's hyper client (pooled HTTP/1.1 connections) rather than a
//! general client crate: prometheus-http-query pulls in reqwest, whose TLS features bring
//! aws-lc-rs, and the adapter needs only these three form-encoded POSTs and their JSON.
//! Queries are POSTed as forms so long PromQL never hits URL length limits. `https://` URLs
//! use rustls (ring) and trust exactly the CA file given.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Labels of a series.
pub type Labels = BTreeMap<String, String>;

/// One value of an instant query.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The series' labels (without `__name__`).
    pub labels: Labels,
    /// Evaluation time, Unix seconds.
    pub timestamp: f64,
    /// The value (may be NaN or ±Inf).
    pub value: f64,
}

/// One series of a range query.
#[derive(Clone, Debug, PartialEq)]
pub struct RangeSeries {
    /// The series' labels (without `__name__`).
    pub labels: Labels,
    /// `(Unix seconds, value)`, oldest first.
    pub points: Vec<(f64, f64)>,
}

/// Why a Prometheus call failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum PromError {
    /// Prometheus could not be reached, timed out, or answered 5xx/503.
    #[error("prometheus unavailable: {0}")]
    Unavailable(String),
    /// Prometheus rejected the query (bad PromQL, execution error): a rule problem.
    #[error("prometheus rejected the query ({kind}): {message}")]
    Rejected {
        /// Prometheus' `errorType`.
        kind: String,
        /// Prometheus' `error`.
        message: String,
    },
    /// The answer was not the JSON the API documents.
    #[error("unexpected answer from prometheus: {0}")]
    Protocol(String),
}

/// Why a Prometheus URL was rejected.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// Not a URL.
    #[error("invalid prometheus url {0:?}")]
    Invalid(String),
    /// A scheme other than `http` or `https`.
    #[error("prometheus url {0:?}: the scheme must be http or https")]
    Scheme(String),
    /// An `https` URL without a CA file.
    #[error("prometheus url {0:?}: https needs --prometheus-ca-file (the CA that signed Prometheus' certificate)")]
    NoCa(String),
    /// The CA file could not be read or used.
    #[error("{path}: {message}")]
    Ca {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
}

// === connector ===

/// A TCP connection, with TLS for `https`.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Connection for Stream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Connects over TCP, then TLS when the URI is `https`.
#[derive(Clone)]
struct Connector {
    http: HttpConnector,
    tls: Option<tokio_rustls::TlsConnector>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl tower_service::Service<http::Uri> for Connector {
    type Response = TokioIo<Stream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let mut http = self.http.clone();
        let tls = self.tls.clone();
        Box::pin(async move {
            let https = uri.scheme_str() == Some("https");
            let host = uri
                .host()
                .unwrap_or_default()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let tcp = http.call(uri).await?.into_inner();
            if !https {
                return Ok(TokioIo::new(Stream::Plain(tcp)));
            }
            let tls = tls.ok_or("https without a TLS configuration")?;
            let name = rustls::pki_types::ServerName::try_from(host)?;
            let stream = tls.connect(name, tcp).await?;
            Ok(TokioIo::new(Stream::Tls(Box::new(stream))))
        })
    }
}

fn tls_connector(ca_file: &Path) -> Result<tokio_rustls::TlsConnector, UrlError> {
    let err = |message: String| UrlError::Ca {
        path: ca_file.display().to_string(),
        message,
    };
    let pem = std::fs::read(ca_file).map_err(|e| err(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots
            .add(cert.map_err(|e| err(e.to_string()))?)
            .map_err(|e| err(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(err("no PEM certificates".into()));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| err(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// A Prometheus HTTP API client. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PrometheusClient {
    client: Client<Connector, Full<Bytes>>,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    path_prefix: String,
    timeout: Duration,
}

#[derive(Deserialize)]
struct Envelope {
    status: String,
    #[serde(default)]
    data: Option<serde_json::Value>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(tag = "resultType", content = "result", rename_all = "lowercase")]
enum QueryData {
    Vector(Vec<VectorItem>),
    Matrix(Vec<MatrixItem>),
    Scalar((f64, String)),
    String(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
struct VectorItem {
    metric: Labels,
    value: (f64, String),
}

#[derive(Deserialize)]
struct MatrixItem {
    metric: Labels,
    values: Vec<(f64, String)>,
}

fn parse_value(v: &str) -> Result<f64, PromError> {
    match v {
        "NaN" => Ok(f64::NAN),
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        v => v
            .parse()
            .map_err(|_| PromError::Protocol(format!("bad sample value {v:?}"))),
    }
}

fn without_name(mut labels: Labels) -> Labels {
    labels.remove("__name__");
    labels
}

impl PrometheusClient {
    /// A client for the Prometheus at `url` (e.g. `http://prometheus:9090` or
    /// `http://thanos/prefix`); each call gives up after `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, UrlError> {
        Self::with_ca(url, timeout, None)
    }

    /// Like [`PrometheusClient::new`]; an `https://` URL needs `ca_file`, the PEM CA(s) that
    /// Prometheus' serving certificate must chain to (and nothing else is trusted).
    pub fn with_ca(url: &str, timeout: Duration, ca_file: Option<&Path>) -> Result<Self, UrlError> {
        let uri: http::Uri = url.parse().map_err(|_| UrlError::Invalid(url.to_owned()))?;
        let scheme = match uri.scheme_str() {
            Some("http") => http::uri::Scheme::HTTP,
            Some("https") => http::uri::Scheme::HTTPS,
            _ => return Err(UrlError::Scheme(url.to_owned())),
        };
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| UrlError::Invalid(url.to_owned()))?;
        let tls = match (ca_file, scheme == http::uri::Scheme::HTTPS) {
            (Some(ca), _) => Some(tls_connector(ca)?),
            (None, true) => return Err(UrlError::NoCa(url.to_owned())),
            (None, false) => None,
        };
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout));
        http.enforce_http(false);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(Connector { http, tls });
        Ok(PrometheusClient {
            client,
            scheme,
            authority,
            path_prefix: uri.path().trim_end_matches('/').to_owned(),
            timeout,
        })
    }

    async fn call(&self, api: &str, form: &[(&str, &str)]) -> Result<serde_json::Value, PromError> {
        let body = serde_urlencoded::to_string(form)
            .map_err(|e| PromError::Protocol(format!("encoding form: {e}")))?;
        let uri = http::Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(format!("{}/api/v1/{api}", self.path_prefix))
            .build()
            .map_err(|e| PromError::Protocol(e.to_string()))?;
        let request = http::Request::post(uri)
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| PromError::Protocol(e.to_string()))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| PromError::Unavailable(format!("{e:?}")))?;
            let status = response.status();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| PromError::Unavailable(e.to_string()))?
                .to_bytes();
            Ok::<_, PromError>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| {
                PromError::Unavailable(format!("no answer within {:?}", self.timeout))
            })??;
        let envelope: Envelope = match serde_json::from_slice(&body) {
            Ok(e) => e,
            Err(_) if status.is_server_error() => {
                return Err(PromError::Unavailable(format!("HTTP {status}")))
            }
            Err(e) => return Err(PromError::Protocol(format!("HTTP {status}: {e}"))),
        };
        if envelope.status == "success" {
            return envelope
                .data
                .ok_or_else(|| PromError::Protocol("success without data".into()));
        }
        let kind = envelope.error_type.unwrap_or_default();
        let message = envelope.error.unwrap_or_default();
        if status.is_server_error() && kind != "execution" {
            Err(PromError::Unavailable(format!(
                "HTTP {status} {kind}: {message}"
            )))
        } else {
            Err(PromError::Rejected { kind, message })
        }
    }

    /// Evaluates `promql` at `time` (Unix seconds; Prometheus' now when `None`).
    pub async fn query(&self, promql: &str, time: Option<f64>) -> Result<Vec<Sample>, PromError> {
        let time = time.map(|t| format!("{t:.3}"));
        let mut form = vec![("query", promql)];
        if let Some(t) = &time {
            form.push(("time", t));
        }
        let data = self.call("query", &form).await?;
        let data: QueryData =
            serde_json::from_value(data).map_err(|e| PromError::Protocol(e.to_string()))?;
        match data {
            QueryData::Vector(items) => items
                .into_iter()
                .map(|i| {
                    Ok(Sample {
                        labels: without_name(i.metric),
                        timestamp: i.value.0,
                        value: parse_value(&i.value.1)?,
                    })
                })
                .collect(),
            QueryData::Scalar((t, v)) => Ok(vec![Sample {
                labels: Labels::new(),
                timestamp: t,
                value: parse_value(&v)?,
            }]),
            QueryData::Matrix(_) | QueryData::String(_) => Err(PromError::Rejected {
                kind: "bad_data".into(),
                message: "the query must return an instant vector or a scalar".into(),
            }),
        }
    }

    /// Evaluates `promql` from `start` to `end` (Unix seconds) every `step`.
    pub async fn query_range(
        &self,
        promql: &str,
        start: f64,
        end: f64,
        step: Duration,
    ) -> Result<Vec<RangeSeries>, PromError> {
        let (start, end, step) = (
            format!("{start:.3}"),
            format!("{end:.3}"),
            format!("{:.3}", step.as_secs_f64()),
        );
        let form = [
            ("query", promql),
            ("start", &start),
            ("end", &end),
            ("step", &step),
        ];
        let data = self.call("query_range", &form).await?;
        let data: QueryData =
            serde_json::from_value(data).map_err(|e| PromError::Protocol(e.to_string()))?;
        match data {
            QueryData::Matrix(items) => items
                .into_iter()
                .map(|i| {
                    Ok(RangeSeries {
                        labels: without_name(i.metric),
                        points: i
                            .values
                            .iter()
                            .map(|(t, v)| Ok((*t, parse_value(v)?)))
                            .collect::<Result<_, PromError>>()?,
                    })
                })
                .collect(),
            _ => Err(PromError::Protocol(
                "range query did not return a matrix".into(),
            )),
        }
    }

    /// Label sets of the series matching `selector` seen since `start` (Unix seconds).
    pub async fn series(&self, selector: &str, start: f64) -> Result<Vec<Labels>, PromError> {
        let start = format!("{start:.3}");
        let data = self
            .call("series", &[("match[]", selector), ("start", &start)])
            .await?;
        serde_json::from_value(data).map_err(|e| PromError::Protocol(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(PrometheusClient::new("http://127.0.0.1:9090", Duration::from_secs(1)).is_ok());
        assert!(matches!(
            PrometheusClient::new("https://p:9090", Duration::from_secs(1)),
            Err(UrlError::NoCa(_))
        ));
        assert!(matches!(
            PrometheusClient::new("ftp://p:9090", Duration::from_secs(1)),
            Err(UrlError::Scheme(_))
        ));
        assert!(PrometheusClient::new("not a url", Duration::from_secs(1)).is_err());
    }

    #[test]
    fn special_values_parse() {
        assert!(parse_value("NaN").unwrap().is_nan());
        assert_eq!(parse_value("+Inf").unwrap(), f64::INFINITY);
        assert_eq!(parse_value("1e3").unwrap(), 1000.0);
        assert!(parse_value("x").is_err());
    }
}
