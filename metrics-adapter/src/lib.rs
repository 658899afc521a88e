//! gofe's Kubernetes metrics adapter: the mesh's request rate, latency and error ratio, as the
//! gofe proxy measures them, served as `external.metrics.k8s.io/v1beta1` so a
//! HorizontalPodAutoscaler can scale on them; and, as a drop-in replacement for
//! prometheus-adapter, its `rules` as `custom.metrics.k8s.io/v1beta2` (and `v1beta1`) and its
//! `resourceRules` as `metrics.k8s.io/v1beta1` (`kubectl top`).
//!
//! ```text
//!  kube-aggregator ──TLS, front-proxy cert──▶ server ──▶ api (axum) ──▶ provider ──▶ gofe-prom ──▶ Prometheus
//!   (HPA controller)                          │ auth                     │ cache, single flight
//!                                             │                          │ missing-data policy
//!                                             │                          │ forecast (Holt, Holt-Winters, spike)
//!                                  rules file ─▶ config ─▶ rules ─────────┘ PromQL per selector
//! ```
//!
//! - [`config`] loads the rules file (prometheus-adapter's `rules`, `resourceRules` and
//!   `externalRules` plus gofe options), reporting every problem with file, line and field;
//!   [`promql`] parses every template, rendered with placeholders, at load.
//! - [`custom`] ties custom rules' series to Kubernetes resources and renders their queries
//!   for objects; [`custom_api`] serves them and the resource metrics; [`objects`] lists the
//!   objects a label selector selects through the Kubernetes API; [`resources`] maps rules'
//!   and URLs' resource names through the cluster's discovery (client-go's RESTMapper, for
//!   prometheus-adapter), with a built-in table while it is unavailable.
//! - [`rules`] holds the built-in rules over the proxy's metrics and turns a rule, namespace and
//!   [`selector`] into PromQL; [`selector`] parses `labelSelector` and escapes it into label
//!   matchers.
//! - [`provider`] answers (metric, namespace, selector) through a bounded cache with single
//!   flight, applies the missing-data policy, the forecast ([`gofe_core::forecast`]: Holt,
//!   Holt-Winters, the spike path; the same configuration type and code the simulator runs)
//!   and ejection awareness; the built-in request rates' `queueing` option is PromQL
//!   ([`gofe_core::queueing`]'s formula) rendered by [`rules`].
//! - [`scrape`] answers the built-in rules from gofe proxies' `/metrics` scraped directly,
//!   for a mesh with no Prometheus (`gofe up`; `--scrape` instead of `--prometheus-url`).
//! - Prometheus is read through [`gofe_prom`], the workspace's one Prometheus HTTP API client
//!   (the controller's too); [`quantity`] formats values as Kubernetes quantities; [`api`] is
//!   the HTTP surface and its `Status` errors; [`server`] is TLS, client certificate
//!   authentication and the process entry point [`server::run`].
//! - [`requestheader`] reads the front-proxy settings (CA, allowed names, user headers) at run
//!   time from `kube-system/extension-apiserver-authentication`, as aggregated API servers do,
//!   and follows them when the cluster rotates its CA; a CA file overrides it.
//!
//! What it does not do: it makes no authorization decisions of its own (no SubjectAccessReview): the aggregator authenticates and
//! authorizes the end user, and the adapter only accepts requests the aggregator's front-proxy
//! certificate vouches for. The controller, not the adapter, decides and exports ejections
//! (`gofe_endpoint_ejected`); the adapter only reads them.

pub mod api;
pub mod config;
pub mod custom;
pub mod custom_api;
pub mod metrics;
pub mod objects;
pub mod promql;
pub mod provider;
pub mod quantity;
pub mod requestheader;
pub mod resources;
pub mod rules;
pub mod scrape;
pub mod selector;
pub mod server;

pub use server::{run, Adapter, AdapterOptions, RequestHeaderSource, TlsFiles};
