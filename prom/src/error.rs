//! Why a client could not be built ([`BuildError`], [`InvalidUrl`]) and why a call failed
//! ([`Error`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// A lower-level error kept as the [`source`](std::error::Error::source) of an [`Error`].
/// Shared, so that [`Error`] is `Clone` (callers cache failures as well as answers).
pub type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// What is wrong with a Prometheus base URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UrlProblem {
    /// No `scheme://` at all (e.g. `prometheus:9090`).
    NoScheme,
    /// A scheme other than `http` or `https`.
    UnsupportedScheme(String),
    /// Not a URL that can be parsed.
    Unparsable,
    /// No host (e.g. `http://:9090`).
    NoHost,
    /// The host is neither a DNS name nor an IP address (TLS needs one to verify against).
    BadHost,
    /// `user:password@` in the URL: credentials are not supported.
    Credentials,
    /// A `?query` in the base URL: it would be silently dropped, so it is refused.
    Query,
}

impl std::fmt::Display for UrlProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UrlProblem::NoScheme => f.write_str("no scheme: write http:// or https://"),
            UrlProblem::UnsupportedScheme(s) => {
                write!(f, "the scheme must be http or https, not {s:?}")
            }
            UrlProblem::Unparsable => f.write_str("not a URL"),
            UrlProblem::NoHost => f.write_str("no host"),
            UrlProblem::BadHost => f.write_str("the host is not a DNS name or an IP address"),
            UrlProblem::Credentials => f.write_str("credentials in the URL are not supported"),
            UrlProblem::Query => f.write_str("a query string is not allowed in the base URL"),
        }
    }
}

/// A Prometheus base URL that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid prometheus url {url:?}: {problem}")]
pub struct InvalidUrl {
    /// The URL as given.
    pub url: String,
    /// What is wrong with it.
    pub problem: UrlProblem,
    /// The parser's error, when parsing failed.
    #[source]
    pub source: Option<http::uri::InvalidUri>,
}

/// Why a [`Client`](crate::Client) could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The base URL is unusable (no scheme, unparsable, ...).
    #[error(transparent)]
    InvalidUrl(#[from] InvalidUrl),
    /// An `https://` URL without a CA file: gofe trusts no default roots.
    #[error("prometheus url {url:?}: https needs a CA file (the CA that signed prometheus' certificate)")]
    MissingCa {
        /// The URL.
        url: String,
    },
    /// The CA file could not be read.
    #[error("prometheus ca file {path}: cannot read: {source}")]
    ReadCa {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The CA file holds no usable PEM certificate.
    #[error("prometheus ca file {path}: {problem}")]
    BadCa {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
        /// The PEM or certificate error, when there is one.
        #[source]
        source: Option<Cause>,
    },
}

impl BuildError {
    /// A short stable label for metrics: `invalid_url`, `missing_ca` or `bad_ca`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            BuildError::InvalidUrl(_) => "invalid_url",
            BuildError::MissingCa { .. } => "missing_ca",
            BuildError::ReadCa { .. } | BuildError::BadCa { .. } => "bad_ca",
        }
    }
}

/// Why a Prometheus call failed.
///
/// The first six variants mean Prometheus is not answering ([`Error::is_unavailable`]); the
/// last three mean it answered, but not with a usable result (usually a query problem).
#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// The TCP connection was refused: nothing listens at the address.
    #[error("connection refused by {url}")]
    Refused {
        /// The base URL.
        url: String,
        /// The connect error.
        #[source]
        source: Cause,
    },
    /// The connection could not be made: name resolution failed, the host is unreachable, ...
    #[error("cannot connect to {url}: {detail}")]
    Connect {
        /// The base URL.
        url: String,
        /// The innermost causes, `: `-joined.
        detail: String,
        /// The connect error.
        #[source]
        source: Cause,
    },
    /// The TLS handshake failed (e.g. a certificate the CA file did not sign).
    #[error("tls handshake with {url} failed: {detail}")]
    Tls {
        /// The base URL.
        url: String,
        /// The innermost causes, `: `-joined.
        detail: String,
        /// The connect error.
        #[source]
        source: Cause,
    },
    /// No complete answer within the client's timeout (connecting included).
    #[error("no answer from {url} within {timeout:?}")]
    Timeout {
        /// The base URL.
        url: String,
        /// The client's timeout.
        timeout: Duration,
    },
    /// The connection broke during the exchange (closed before the answer was complete, ...).
    #[error("connection to {url} failed: {detail}")]
    Transport {
        /// The base URL.
        url: String,
        /// The innermost causes, `: `-joined.
        detail: String,
        /// The HTTP error.
        #[source]
        source: Cause,
    },
    /// Prometheus (or a proxy in front of it) answered 5xx: overloaded, shutting down, query
    /// timed out or aborted on the server.
    #[error(
        "prometheus unavailable: HTTP {status}{}",
        fmt_detail(error_type, message)
    )]
    Unavailable {
        /// The HTTP status (500–599).
        status: u16,
        /// Prometheus' `errorType`, when the body was a Prometheus error.
        error_type: Option<String>,
        /// Prometheus' `error`, or the start of the body.
        message: String,
    },
    /// Prometheus rejected the query: bad PromQL (`bad_data`), an execution error, ...
    #[error("prometheus rejected the query ({error_type}): {message}")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// Prometheus' `errorType` (e.g. `bad_data`, `execution`).
        error_type: String,
        /// Prometheus' `error`.
        message: String,
    },
    /// The query worked, but its result is not of the type the call needs (e.g. a range
    /// vector from an instant query).
    #[error("the query returned a {got}, expected {expected}")]
    UnexpectedResult {
        /// What the call needs.
        expected: &'static str,
        /// What Prometheus returned (`matrix`, `string`, ...).
        got: String,
    },
    /// The answer is not the JSON the Prometheus API documents (or not JSON at all).
    #[error("unexpected answer from prometheus (HTTP {status}): {problem}")]
    Malformed {
        /// The HTTP status.
        status: u16,
        /// What is wrong.
        problem: String,
        /// The JSON error, when decoding failed.
        #[source]
        source: Option<Arc<serde_json::Error>>,
    },
}

fn fmt_detail(error_type: &Option<String>, message: &str) -> String {
    match (error_type, message.is_empty()) {
        (Some(t), false) => format!(" ({t}): {message}"),
        (Some(t), true) => format!(" ({t})"),
        (None, false) => format!(": {message}"),
        (None, true) => String::new(),
    }
}

impl Error {
    /// A short stable label for metrics: `refused`, `connect`, `tls`, `timeout`, `transport`,
    /// `unavailable`, `rejected`, `unexpected_result` or `malformed`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Refused { .. } => "refused",
            Error::Connect { .. } => "connect",
            Error::Tls { .. } => "tls",
            Error::Timeout { .. } => "timeout",
            Error::Transport { .. } => "transport",
            Error::Unavailable { .. } => "unavailable",
            Error::Rejected { .. } => "rejected",
            Error::UnexpectedResult { .. } => "unexpected_result",
            Error::Malformed { .. } => "malformed",
        }
    }

    /// The same as [`Error::metric_label`].
    pub fn kind(&self) -> &'static str {
        self.metric_label()
    }

    /// Whether Prometheus could not be reached or did not answer (connect, TLS, timeout,
    /// transport, 5xx): worth retrying, and not the query's fault. The other variants mean
    /// Prometheus answered, and asking again the same way will not help.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Error::Refused { .. }
                | Error::Connect { .. }
                | Error::Tls { .. }
                | Error::Timeout { .. }
                | Error::Transport { .. }
                | Error::Unavailable { .. }
        )
    }
}
