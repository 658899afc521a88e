//! gofe's one Prometheus HTTP API client, shared by the metrics adapter and the controller's
//! Prometheus signal source, ([`exposition`]) the reading of gofe proxies' own `/metrics`
//! text that both use when they scrape proxies directly, with no Prometheus, and ([`process`])
//! the `process_*` and `gofe_build_info` series every long-running gofe command exposes.
//!
//! ```text
//!  Client::query        ──POST /api/v1/query        (form)──▶
//!  Client::query_range  ──POST /api/v1/query_range  (form)──▶  Prometheus (or Thanos, ... at a path prefix)
//!  Client::series       ──POST /api/v1/series       (form)──▶
//!        │ one pool of keep-alive connections per Client (clones share it)
//!        └ http://, or https:// with rustls (ring) trusting exactly the given CA file
//! ```
//!
//! It makes the three calls gofe needs: instant queries (a vector, or a scalar), range
//! queries (a matrix) and series listing. Forms are POSTed so long PromQL never meets URL
//! length limits. Each call has one timeout, from connecting to the answer's last byte.
//! Values keep Prometheus' `NaN` and `±Inf`.
//!
//! Errors say what happened, by variant, with the cause kept as
//! [`source`](std::error::Error::source): a URL without a scheme or otherwise unusable is
//! refused when the client is built ([`BuildError::InvalidUrl`]); a call fails with
//! [`Error::Refused`], [`Error::Connect`] (DNS, unreachable), [`Error::Tls`],
//! [`Error::Timeout`], [`Error::Transport`], [`Error::Unavailable`] (HTTP 5xx),
//! [`Error::Rejected`] (bad PromQL: Prometheus' `errorType` and `error`),
//! [`Error::UnexpectedResult`] or [`Error::Malformed`] (not the documented JSON). Each has a
//! short stable [`Error::metric_label`]. Nothing a server sends makes it panic.
//!
//! What it does not do: no other API calls (labels, metadata, targets, rules, alerts), no
//! authentication (no basic auth, bearer tokens or client certificates), no system trust
//! roots, no retries (callers decide: the adapter holds or fails, the controller holds its
//! decisions), no caching (the adapter caches), no native histogram samples (refused as
//! [`Error::Malformed`]), no HTTP/2. It is built on hyper-util's pooled client rather than
//! a general HTTP client crate, so it brings no reqwest into the build.

mod answer;
mod client;
mod connector;
mod error;
pub mod exposition;
pub mod process;

pub use answer::{Labels, RangeSeries, Sample};
pub use client::{validate_url, Client, ClientConfig};
pub use error::{BuildError, Cause, Error, InvalidUrl, UrlProblem};
