//! gofe-trace: distributed tracing for gofe's parts — trace context on the wire, the sampling
//! decision, finished spans, and their export over OTLP/HTTP (protobuf).
//!
//! ```text
//!   request headers ──context::parse_*──▶ Parent ──Sampler::sample──▶ traced or not
//!   (traceparent, b3, x-b3-*)                                         │
//!   upstream headers ◀──context::format_*── (trace id, the attempt's span id, sampled)
//!   finished Span ──Exporter::send──▶ bounded queue ──▶ batch ──▶ POST /v1/traces
//! ```
//!
//! This crate does not know HTTP requests or the proxy's routes: the proxy (`gofe-proxy`)
//! reads and writes the headers, decides what a span's attributes are and when it ends, and
//! owns the counters' labels. Nothing here allocates for an unsampled request; formatting
//! writes into fixed arrays. The OTLP messages are a handful of prost messages written from
//! the specification ([`otlp`]), not the OpenTelemetry SDK: gofe needs their encoding only.

pub mod context;
pub mod export;
pub mod otlp;
pub mod sampler;
pub mod span;

pub use context::{Parent, SpanId, TraceId, B3};
pub use export::{Counters, Exporter, ExporterConfig};
pub use sampler::Sampler;
pub use span::{Kind, Span, Value};
