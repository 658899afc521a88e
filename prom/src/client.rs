//! The client: URL checks, the pooled connection client, form-POSTed calls, and the mapping
//! of transport failures to [`Error`] variants.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE, USER_AGENT};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::ServerName;

use crate::answer::{self, Labels, RangeSeries, Sample};
use crate::connector::{self, Connector, Tls};
use crate::error::{BuildError, Cause, Error, InvalidUrl, UrlProblem};

/// How to reach one Prometheus.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Base URL of the Prometheus HTTP API, `http://` or `https://`, optionally with a path
    /// prefix (`http://thanos:9090/prom`): calls go to `<url>/api/v1/...`. No default.
    pub url: String,
    /// Each call's limit, from connecting to the last byte of the answer. Default 5 s.
    pub timeout: Duration,
    /// PEM CA certificate(s) that Prometheus' serving certificate must chain to; required for
    /// `https://` and then the only roots trusted. Default none.
    pub ca_file: Option<PathBuf>,
    /// Largest answer body read, in bytes; a larger one is [`Error::Malformed`]. Default
    /// 64 MiB.
    pub max_answer_bytes: usize,
}

impl ClientConfig {
    /// The defaults for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        ClientConfig {
            url: url.into(),
            timeout: Duration::from_secs(5),
            ca_file: None,
            max_answer_bytes: 64 << 20,
        }
    }
}

/// A checked base URL.
struct BaseUrl {
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    /// The path without a trailing `/` (empty for none).
    prefix: String,
    /// The host, without IPv6 brackets.
    host: String,
}

fn parse_url(url: &str) -> Result<BaseUrl, InvalidUrl> {
    let invalid = |problem, source| InvalidUrl {
        url: url.to_owned(),
        problem,
        source,
    };
    if !url.contains("://") {
        return Err(invalid(UrlProblem::NoScheme, None));
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|e| invalid(UrlProblem::Unparsable, Some(e)))?;
    let scheme = match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => http::uri::Scheme::HTTP,
        Some(s) if s.eq_ignore_ascii_case("https") => http::uri::Scheme::HTTPS,
        Some(s) => return Err(invalid(UrlProblem::UnsupportedScheme(s.to_owned()), None)),
        None => return Err(invalid(UrlProblem::NoScheme, None)),
    };
    let Some(authority) = uri.authority().cloned() else {
        return Err(invalid(UrlProblem::NoHost, None));
    };
    if authority.as_str().contains('@') {
        return Err(invalid(UrlProblem::Credentials, None));
    }
    if authority.host().is_empty() {
        return Err(invalid(UrlProblem::NoHost, None));
    }
    if uri.query().is_some() {
        return Err(invalid(UrlProblem::Query, None));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    if scheme == http::uri::Scheme::HTTPS && ServerName::try_from(host.as_str()).is_err() {
        return Err(invalid(UrlProblem::BadHost, None));
    }
    Ok(BaseUrl {
        scheme,
        authority,
        prefix: uri.path().trim_end_matches('/').to_owned(),
        host,
    })
}

/// Checks a Prometheus base URL the way [`Client::new`] does (scheme, host, no credentials or
/// query), without building a client: for configuration validation.
pub fn validate_url(url: &str) -> Result<(), InvalidUrl> {
    parse_url(url).map(|_| ())
}

/// The three endpoints of one Prometheus.
#[derive(Clone, Debug)]
struct Endpoints {
    query: http::Uri,
    query_range: http::Uri,
    series: http::Uri,
}

/// A Prometheus HTTP API client. It holds one pool of keep-alive connections; clones share
/// it (a clone is a reference count), so clone a client rather than building another for
/// the same Prometheus.
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: hyper_util::client::legacy::Client<Connector, Full<Bytes>>,
    endpoints: Endpoints,
    url: String,
    timeout: Duration,
    max_answer_bytes: usize,
}

impl Client {
    /// A client for `config.url`. Fails on an unusable URL, an `https://` URL without a CA
    /// file, or a CA file that cannot be used; connects only when first called.
    pub fn new(config: &ClientConfig) -> Result<Self, BuildError> {
        let base = parse_url(&config.url)?;
        let https = base.scheme == http::uri::Scheme::HTTPS;
        let tls = match (&config.ca_file, https) {
            (Some(ca), true) => {
                let server_name =
                    ServerName::try_from(base.host.clone()).map_err(|_| InvalidUrl {
                        url: config.url.clone(),
                        problem: UrlProblem::BadHost,
                        source: None,
                    })?;
                Some(Tls {
                    connector: connector::tls_connector(ca)?,
                    server_name,
                })
            }
            (None, true) => {
                return Err(BuildError::MissingCa {
                    url: config.url.clone(),
                })
            }
            // A CA file for plain http is unused (but still checked, so a typo shows now).
            (Some(ca), false) => {
                connector::tls_connector(ca)?;
                None
            }
            (None, false) => None,
        };
        let endpoint = |api: &str| {
            http::Uri::builder()
                .scheme(base.scheme.clone())
                .authority(base.authority.clone())
                .path_and_query(format!("{}/api/v1/{api}", base.prefix))
                .build()
                .map_err(|_| InvalidUrl {
                    url: config.url.clone(),
                    problem: UrlProblem::Unparsable,
                    source: None,
                })
        };
        let endpoints = Endpoints {
            query: endpoint("query")?,
            query_range: endpoint("query_range")?,
            series: endpoint("series")?,
        };
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(config.timeout));
        // The scheme is checked above; the connector adds TLS for https itself.
        http.enforce_http(false);
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            // Idle connections are closed after a minute (the timer reaps them).
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_timer(TokioTimer::new())
            .build(Connector { http, tls });
        Ok(Client {
            inner: Arc::new(Inner {
                http: client,
                endpoints,
                url: config.url.clone(),
                timeout: config.timeout,
                max_answer_bytes: config.max_answer_bytes,
            }),
        })
    }

    /// The base URL, as configured.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// Evaluates `promql` at `time` (Unix seconds; Prometheus' now when `None`). A vector
    /// gives one sample per series; a scalar gives one sample without labels; any other
    /// result type is [`Error::UnexpectedResult`].
    pub async fn query(&self, promql: &str, time: Option<f64>) -> Result<Vec<Sample>, Error> {
        let time = time.map(|t| format!("{t:.3}"));
        let mut form = vec![("query", promql)];
        if let Some(t) = &time {
            form.push(("time", t));
        }
        let data = self.inner.call(&self.inner.endpoints.query, &form).await?;
        answer::instant(data)
    }

    /// Evaluates `promql` from `start` to `end` (Unix seconds) every `step`: one series per
    /// label set, points oldest first.
    pub async fn query_range(
        &self,
        promql: &str,
        start: f64,
        end: f64,
        step: Duration,
    ) -> Result<Vec<RangeSeries>, Error> {
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
        let data = self
            .inner
            .call(&self.inner.endpoints.query_range, &form)
            .await?;
        answer::range(data)
    }

    /// The label sets (with `__name__`) of the series matching `selector` that have samples
    /// since `start` (Unix seconds).
    pub async fn series(&self, selector: &str, start: f64) -> Result<Vec<Labels>, Error> {
        let start = format!("{start:.3}");
        let form = [("match[]", selector), ("start", &start)];
        let data = self.inner.call(&self.inner.endpoints.series, &form).await?;
        answer::series(data)
    }
}

impl Inner {
    /// POSTs `form` to `uri` and returns the answer's `data`.
    async fn call(
        &self,
        uri: &http::Uri,
        form: &[(&str, &str)],
    ) -> Result<serde_json::Value, Error> {
        let mut request = http::Request::new(Full::new(Bytes::from(encode_form(form))));
        *request.method_mut() = http::Method::POST;
        *request.uri_mut() = uri.clone();
        let headers = request.headers_mut();
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        headers.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("gofe-prom/", env!("CARGO_PKG_VERSION"))),
        );
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| self.request_error(e))?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), self.max_answer_bytes)
                .collect()
                .await
                .map_err(|e| self.body_error(status, e))?
                .to_bytes();
            Ok::<_, Error>((status, body))
        };
        let (status, body) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| Error::Timeout {
                url: self.url.clone(),
                timeout: self.timeout,
            })??;
        tracing::trace!(uri = %uri, status, bytes = body.len(), "prometheus answered");
        answer::envelope(status, &body)
    }

    fn request_error(&self, e: hyper_util::client::legacy::Error) -> Error {
        let connect = e.is_connect();
        // The top says only "client error (Connect)"; the sources say what happened.
        let mut chain = Chain::of(std::error::Error::source(&e));
        if chain.detail.is_empty() {
            chain.detail = e.to_string();
        }
        let url = self.url.clone();
        let source: Cause = Arc::new(e);
        if chain.timed_out {
            return Error::Timeout {
                url,
                timeout: self.timeout,
            };
        }
        match (connect, chain.refused, chain.tls) {
            (true, true, _) => Error::Refused { url, source },
            (true, false, true) => Error::Tls {
                url,
                detail: chain.detail,
                source,
            },
            (true, false, false) => Error::Connect {
                url,
                detail: chain.detail,
                source,
            },
            (false, _, _) => Error::Transport {
                url,
                detail: chain.detail,
                source,
            },
        }
    }

    fn body_error(&self, status: u16, e: Box<dyn std::error::Error + Send + Sync>) -> Error {
        if e.is::<LengthLimitError>() {
            return Error::Malformed {
                status,
                problem: format!("an answer larger than {} bytes", self.max_answer_bytes),
                source: None,
            };
        }
        let chain = Chain::of(Some(e.as_ref()));
        if chain.timed_out {
            return Error::Timeout {
                url: self.url.clone(),
                timeout: self.timeout,
            };
        }
        Error::Transport {
            url: self.url.clone(),
            detail: chain.detail,
            source: Arc::from(e),
        }
    }
}

/// What an error's source chain says.
struct Chain {
    refused: bool,
    timed_out: bool,
    tls: bool,
    /// The sources' messages, `: `-joined, repeats dropped.
    detail: String,
}

impl Chain {
    fn of(first: Option<&(dyn std::error::Error + 'static)>) -> Chain {
        let mut chain = Chain {
            refused: false,
            timed_out: false,
            tls: false,
            detail: String::new(),
        };
        let mut parts: Vec<String> = Vec::new();
        let mut next = first;
        while let Some(e) = next {
            if let Some(io) = e.downcast_ref::<io::Error>() {
                match io.kind() {
                    io::ErrorKind::ConnectionRefused => chain.refused = true,
                    io::ErrorKind::TimedOut => chain.timed_out = true,
                    _ => {}
                }
                if io
                    .get_ref()
                    .is_some_and(|inner| inner.is::<rustls::Error>())
                {
                    chain.tls = true;
                }
            }
            if e.is::<rustls::Error>() {
                chain.tls = true;
            }
            let text = e.to_string();
            if parts.last() != Some(&text) {
                parts.push(text);
            }
            next = e.source();
        }
        chain.detail = parts.join(": ");
        chain
    }
}

/// `application/x-www-form-urlencoded`: every byte but `A-Z a-z 0-9 * - . _` percent-encoded,
/// space as `+`.
fn encode_form(pairs: &[(&str, &str)]) -> String {
    fn push(out: &mut String, text: &str) {
        for b in text.bytes() {
            match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                    out.push(char::from(b))
                }
                b' ' => out.push('+'),
                b => {
                    const HEX: &[u8; 16] = b"0123456789ABCDEF";
                    out.push('%');
                    out.push(char::from(HEX[usize::from(b >> 4)]));
                    out.push(char::from(HEX[usize::from(b & 0xf)]));
                }
            }
        }
    }
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        push(&mut out, k);
        out.push('=');
        push(&mut out, v);
    }
    out
}

#[cfg(test)]
mod tests;
