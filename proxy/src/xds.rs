//! The proxy's xDS client: `gofe proxy --bootstrap FILE` takes listeners, routes, clusters and
//! endpoints from a control plane over Envoy's v3 ADS (gofe's controller or any other), decodes
//! and validates them with `gofe-proto`, and applies each accepted snapshot atomically.
//!
//! ```text
//!   control plane ══ ADS ══▶ XdsClient ──decode+validate (gofe-proto)──assemble──▶ Proxy::apply
//!                  ◀═ ACK / NACK(error_detail) ═╛
//! ```
//!
//! [`bootstrap`] reads the bootstrap file (node, control plane, static resources, admin);
//! [`client`] runs the stream; `status` exports its state (`/metrics`, `/config_dump`) and
//! decides readiness (Envoy's `initial_fetch_timeout`); [`load`] streams per-endpoint load
//! reports to the control plane over Envoy's Load Reporting Service when the bootstrap asks
//! (`xds_server.load_stats: true`); [`mesh_ca`] gets the proxy's workload certificate from the
//! control plane's mesh CA and rotates it when the bootstrap has `identity`. The server side is `gofe-xds`.

pub mod bootstrap;
pub mod client;
pub mod load;
pub mod mesh_ca;
pub(crate) mod status;

pub use client::{ClientOptions, ClientStatus, ClientTls, InitialFetch, XdsClient};
