//! gofe-proto: the Envoy v3 xDS wire types gofe speaks, and validated conversions between them
//! and the proxy's own configuration (`gofe_model`).
//!
//! ```text
//!   envoy Listener / RouteConfiguration / Cluster / ClusterLoadAssignment   (bytes, Any)
//!        │  decode + validate (from_wire)             ▲ to_wire
//!        ▼                                             │
//!   ListenerResource / RouteResource / ClusterResource / EndpointsResource  (gofe types)
//!        │  Resources::accept_response, then assemble (with the static part of the bootstrap)
//!        ▼
//!   gofe_model::ProxyConfig  ──Proxy::apply──▶ running proxy
//! ```
//!
//! The messages themselves come from the `envoy-types` crate, which carries prost/tonic code
//! generated from Envoy's own `.proto` files (same packages, names, field numbers and type URLs
//! as Envoy's, so bytes interoperate), with no `protoc` needed to build. [`wire`] re-exports the
//! handful of them the xDS protocol layer (`gofe-xds`) needs; resource *contents* never leave
//! this crate raw: every resource is validated into a small gofe type ([`resource`]) and a
//! resource gofe cannot honour faithfully is an error ([`ConvertError`]) — which the xDS client
//! turns into a NACK — rather than being half-applied.
//!
//! Both directions are complete: every field of the proxy's configuration travels in an Envoy
//! field (a value Envoy has no form for rides in `metadata.filter_metadata["gofe"]`, or is
//! refused with its path by [`from_proxy_config`]), and every field of the Envoy messages is
//! read, refused by name, or ignored for a stated reason. [`Resources::accept_response`] takes a
//! response resource by resource, as Envoy does, so one bad resource does not sink the others.
//! The field-by-field table, with the reasons and the tests, is the crate's `README.md`.
//!
//! Load reports (Envoy's Load Reporting Service, `envoy.service.load_stats.v3`) have their own
//! small types in [`load`], read within bounds so a hostile client cannot make a server keep more
//! than it chose to.
//!
//! The mesh CA's certificate-signing service (Istio's `CreateCertificate`, by which a proxy gets
//! its workload certificate from the controller) has its messages in [`ca`].
//!
//! What this crate does not do: talk to the network (that is `gofe-xds`), or decide what the
//! configuration should be (that is the controller). The admin listener is not an xDS
//! resource: it belongs to each proxy's bootstrap ([`unpublishable`] says so).

pub mod ca;
pub mod convert;
pub mod load;
pub mod resource;

pub use convert::{
    assemble, decode_resource, from_proxy_config, unpublishable, ConvertError, Resources,
    ResponseUpdate,
};
pub use resource::{
    CircuitBreakerThresholds, ClusterResource, DecodedResource, EndpointsResource, ListenerKind,
    ListenerResource, OutlierDetectionSettings, ResourceType, RouteResource, RouteSource,
    SocketSettings,
};

/// The protocol-level messages and the ADS and LRS services, for the xDS transport (`gofe-xds`)
/// and the proxy's client. Load reports' contents are read and written through [`load`].
pub mod wire {
    pub use envoy_types::pb::envoy::config::core::v3::{Locality, Node};
    pub use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    pub use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
        AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
    };
    pub use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
        Resource,
    };
    pub use envoy_types::pb::envoy::service::load_stats::v3::load_reporting_service_client::LoadReportingServiceClient;
    pub use envoy_types::pb::envoy::service::load_stats::v3::{
        LoadStatsRequest, LoadStatsResponse,
    };
    pub use envoy_types::pb::google::protobuf::Any;
    pub use envoy_types::pb::google::rpc::Status;
}
