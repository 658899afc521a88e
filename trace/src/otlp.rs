//! The few OTLP messages an export needs (`opentelemetry/proto/collector/trace/v1`,
//! `trace/v1`, `resource/v1`, `common/v1`), as prost messages written from the OTLP
//! specification's field numbers, and the encoding of a batch of [`Span`]s.
//!
//! Hand-written rather than the `opentelemetry-proto` crate: these nine messages are all gofe
//! sends, and prost's derive is already built for the rest of the workspace, so this costs no
//! new crate and no build script.

use prost::Message;

use crate::span::{Kind, Span, Value};

/// `ExportTraceServiceRequest`: what an OTLP/HTTP POST to `/v1/traces` carries.
#[derive(Clone, PartialEq, Message)]
pub struct ExportTraceServiceRequest {
    /// The spans, by resource.
    #[prost(message, repeated, tag = "1")]
    pub resource_spans: Vec<ResourceSpans>,
}

/// `ResourceSpans`: spans of one resource (one service).
#[derive(Clone, PartialEq, Message)]
pub struct ResourceSpans {
    /// The resource (`service.name`, …).
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    /// The spans, by instrumentation scope.
    #[prost(message, repeated, tag = "2")]
    pub scope_spans: Vec<ScopeSpans>,
    /// The resource's schema URL.
    #[prost(string, tag = "3")]
    pub schema_url: String,
}

/// `Resource`.
#[derive(Clone, PartialEq, Message)]
pub struct Resource {
    /// Its attributes.
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
    /// Attributes left out.
    #[prost(uint32, tag = "2")]
    pub dropped_attributes_count: u32,
}

/// `ScopeSpans`: spans of one instrumentation scope.
#[derive(Clone, PartialEq, Message)]
pub struct ScopeSpans {
    /// The scope.
    #[prost(message, optional, tag = "1")]
    pub scope: Option<InstrumentationScope>,
    /// The spans.
    #[prost(message, repeated, tag = "2")]
    pub spans: Vec<OtlpSpan>,
    /// The scope's schema URL.
    #[prost(string, tag = "3")]
    pub schema_url: String,
}

/// `InstrumentationScope`.
#[derive(Clone, PartialEq, Message)]
pub struct InstrumentationScope {
    /// Its name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Its version.
    #[prost(string, tag = "2")]
    pub version: String,
}

/// `Span`.
#[derive(Clone, PartialEq, Message)]
pub struct OtlpSpan {
    /// 16 bytes.
    #[prost(bytes = "vec", tag = "1")]
    pub trace_id: Vec<u8>,
    /// 8 bytes.
    #[prost(bytes = "vec", tag = "2")]
    pub span_id: Vec<u8>,
    /// The W3C `tracestate`.
    #[prost(string, tag = "3")]
    pub trace_state: String,
    /// 8 bytes, or empty for a root span.
    #[prost(bytes = "vec", tag = "4")]
    pub parent_span_id: Vec<u8>,
    /// The operation.
    #[prost(string, tag = "5")]
    pub name: String,
    /// `SpanKind`: 2 server, 3 client.
    #[prost(int32, tag = "6")]
    pub kind: i32,
    /// Start, nanoseconds since the Unix epoch.
    #[prost(fixed64, tag = "7")]
    pub start_time_unix_nano: u64,
    /// End, nanoseconds since the Unix epoch.
    #[prost(fixed64, tag = "8")]
    pub end_time_unix_nano: u64,
    /// Attributes.
    #[prost(message, repeated, tag = "9")]
    pub attributes: Vec<KeyValue>,
    /// The outcome.
    #[prost(message, optional, tag = "15")]
    pub status: Option<Status>,
    /// W3C trace flags (bit 0: sampled) in the low byte.
    #[prost(fixed32, tag = "16")]
    pub flags: u32,
}

/// `Status`.
#[derive(Clone, PartialEq, Message)]
pub struct Status {
    /// A description, for errors.
    #[prost(string, tag = "2")]
    pub message: String,
    /// `StatusCode`: 0 unset, 1 ok, 2 error.
    #[prost(int32, tag = "3")]
    pub code: i32,
}

/// `KeyValue`.
#[derive(Clone, PartialEq, Message)]
pub struct KeyValue {
    /// The attribute's name.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Its value.
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

/// `AnyValue` (the string and integer cases gofe writes).
#[derive(Clone, PartialEq, Message)]
pub struct AnyValue {
    /// The value.
    #[prost(oneof = "any_value::Value", tags = "1, 3")]
    pub value: Option<any_value::Value>,
}

/// `AnyValue`'s cases.
pub mod any_value {
    /// A value of an attribute.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        /// `string_value`.
        #[prost(string, tag = "1")]
        StringValue(String),
        /// `int_value`.
        #[prost(int64, tag = "3")]
        IntValue(i64),
    }
}

/// `SpanKind.SPAN_KIND_INTERNAL`.
pub const SPAN_KIND_INTERNAL: i32 = 1;
/// `SpanKind.SPAN_KIND_SERVER`.
pub const SPAN_KIND_SERVER: i32 = 2;
/// `SpanKind.SPAN_KIND_CLIENT`.
pub const SPAN_KIND_CLIENT: i32 = 3;
/// `StatusCode.STATUS_CODE_ERROR`.
pub const STATUS_CODE_ERROR: i32 = 2;

/// The instrumentation scope gofe's spans carry.
pub const SCOPE_NAME: &str = "gofe";

/// Encodes `spans` as one `ExportTraceServiceRequest` of the resource `service_name`.
pub fn encode(service_name: &str, spans: &[Span]) -> Vec<u8> {
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    string_kv("service.name", service_name),
                    string_kv("telemetry.sdk.name", "gofe"),
                    string_kv("telemetry.sdk.language", "rust"),
                    string_kv("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
                ],
                dropped_attributes_count: 0,
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: SCOPE_NAME.into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                }),
                spans: spans.iter().map(to_otlp).collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    };
    request.encode_to_vec()
}

/// The spans of an encoded `ExportTraceServiceRequest` (for tests and tools that receive
/// what [`encode`] sends).
pub fn decode_spans(body: &[u8]) -> Result<Vec<OtlpSpan>, prost::DecodeError> {
    let request = ExportTraceServiceRequest::decode(body)?;
    Ok(request
        .resource_spans
        .into_iter()
        .flat_map(|r| r.scope_spans)
        .flat_map(|s| s.spans)
        .collect())
}

fn string_kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
    }
}

fn to_otlp(s: &Span) -> OtlpSpan {
    OtlpSpan {
        trace_id: s.trace_id.0.to_vec(),
        span_id: s.span_id.0.to_vec(),
        trace_state: s.trace_state.as_deref().unwrap_or_default().to_owned(),
        parent_span_id: s.parent.map(|p| p.0.to_vec()).unwrap_or_default(),
        name: s.name.to_string(),
        kind: match s.kind {
            Kind::Server => SPAN_KIND_SERVER,
            Kind::Client => SPAN_KIND_CLIENT,
            Kind::Internal => SPAN_KIND_INTERNAL,
        },
        start_time_unix_nano: s.start_unix_nanos,
        end_time_unix_nano: s.end_unix_nanos,
        attributes: s
            .attributes
            .iter()
            .map(|(key, value)| KeyValue {
                key: (*key).into(),
                value: Some(AnyValue {
                    value: Some(match value {
                        Value::Static(v) => any_value::Value::StringValue((*v).into()),
                        Value::Shared(v) => any_value::Value::StringValue(v.to_string()),
                        Value::Owned(v) => any_value::Value::StringValue(v.to_string()),
                        Value::Int(v) => any_value::Value::IntValue(*v),
                    }),
                }),
            })
            .collect(),
        status: s.error.as_ref().map(|message| Status {
            message: message.to_string(),
            code: STATUS_CODE_ERROR,
        }),
        // Sampled (gofe exports only sampled spans).
        flags: 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SpanId, TraceId};

    #[test]
    fn a_batch_decodes_back_with_its_ids_and_attributes() {
        let span = Span {
            trace_id: TraceId([7; 16]),
            span_id: SpanId([8; 8]),
            parent: Some(SpanId([9; 8])),
            trace_state: Some("a=b".into()),
            name: "GET".into(),
            kind: Kind::Client,
            start_unix_nanos: 1,
            end_unix_nanos: 2,
            attributes: vec![
                ("http.response.status_code", Value::Int(503)),
                ("gofe.cluster", Value::Shared("backend".into())),
            ],
            error: Some("upstream connect failure".into()),
        };
        let bytes = encode("edge", &[span]);
        let back = ExportTraceServiceRequest::decode(&bytes[..]).unwrap();
        let rs = &back.resource_spans[0];
        assert_eq!(
            rs.resource.as_ref().unwrap().attributes[0],
            string_kv("service.name", "edge")
        );
        let s = &rs.scope_spans[0].spans[0];
        assert_eq!(s.trace_id, vec![7; 16]);
        assert_eq!(s.parent_span_id, vec![9; 8]);
        assert_eq!(s.kind, SPAN_KIND_CLIENT);
        assert_eq!(s.trace_state, "a=b");
        assert_eq!(s.status.as_ref().unwrap().code, STATUS_CODE_ERROR);
        assert_eq!(
            s.attributes[0].value.as_ref().unwrap().value,
            Some(any_value::Value::IntValue(503))
        );
    }
}
