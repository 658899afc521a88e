//! gofe-xds: the xDS transport between gofe's control plane and its proxies, speaking Envoy's
//! v3 Aggregated Discovery Service (ADS) so that Envoy, proxyless gRPC clients and gofe's own
//! proxy can all take their configuration from gofe, and gofe's proxy from any control plane.
//!
//! ```text
//!   controller ──Snapshot──▶ SnapshotCache ──(≤1/10 ms, watch per node: newest wins)──┐
//!                                                                                    ▼
//!   Envoy / gRPC / gofe proxy ◀══ ADS stream (SotW or delta, one task each) ══ AdsServer
//!        ACK / NACK(error_detail)                                    /metrics ◀──┘
//! ```
//!
//! - [`AdsServer`] (with [`SnapshotCache`] and [`serve()`]) is the library the controller embeds:
//!   it sets a [`Snapshot`] per node id, node cluster, or for everyone, and the server pushes
//!   each stream only what changed for it. TLS and mutual TLS use rustls; a node id is only trusted
//!   if the client certificate names it ([`identity`]: a URI SAN such as a SPIFFE id, a DNS
//!   SAN, or the CN of a certificate without SANs), [`ServerOptions::require_identity`]
//!   refuses clients without one, and [`LiveTls`] re-reads the certificate files when they
//!   change ([`serve_reloading`]) so rotation needs no restart.
//!
//! - [`LoadStore`] keeps the load reports clients stream over Envoy's Load Reporting Service
//!   (`StreamLoadStats`, on the same port, when [`ServerOptions::load_reporting`] is set): per
//!   stream and endpoint, a bounded ring over the signal window, forgotten when the stream ends.
//!   The controller reads it as its fast signal source.
//!
//! - [`ca`] serves the mesh CA's `CreateCertificate` (Istio's shape) on the same port when
//!   [`ServerOptions::authority`] is set: the controller decides and signs, this crate decodes,
//!   counts (`gofe_ca_certificate_requests_total{result}`) and answers.
//!
//! What this crate does not do: decide what the configuration should be (the controller), know
//! the resource formats beyond passing them to `gofe-proto`, which owns every conversion, or
//! take configuration from a control plane: that is the proxy's own xDS client
//! (`gofe_proxy::xds`, `gofe proxy --bootstrap FILE`), which needs only `gofe-proto`.

pub mod ca;
pub mod cache;
mod grpc;
pub mod identity;
pub mod lrs;
mod metrics;
pub mod serve;
pub mod server;

pub use ca::{CertificateAuthority, CertificateRequest, SharedAuthority};
pub use cache::{NodeKey, Snapshot, SnapshotCache};
pub use lrs::{LoadReportingOptions, LoadStore, WindowLoad};
pub use metrics::NodeAck;
pub use serve::{
    serve, serve_reloading, server_tls, server_tls_from_pem, LiveTls, Reload, ServerTlsFiles,
    TlsError,
};
pub use server::{AdsServer, PeerCertificate, ServerOptions};
