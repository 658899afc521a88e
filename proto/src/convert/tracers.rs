//! Tracing: the connection manager's `tracing`, with the OpenTelemetry tracer
//! (`envoy.tracers.opentelemetry`, `OpenTelemetryConfig`) exporting to an `http_service`.
//! What gofe would not honour is refused by its field: another tracer, a gRPC or custom
//! exporter, an OpenTelemetry sampler or resource detector, custom tags, operation names,
//! verbose span logs, `spawn_upstream_span: false` (gofe always makes a span per attempt),
//! extra collector headers.
//!
//! gofe's own settings (B3 propagation, batch sizes) have no Envoy field: a listener that sets
//! them cannot be published, and one read from xDS has their defaults (W3C, OpenTelemetry's
//! batch defaults).

use envoy_types::pb::envoy::config::trace::v3 as trace;
use envoy_types::pb::envoy::r#type::v3::Percent as PbPercent;
use gofe_model::tracing::{
    parse_collector_uri, BatchConfig, HttpServiceConfig, HttpUriConfig, OpenTelemetryConfig,
    Percent, TracingProvider, DEFAULT_EXPORT_TIMEOUT, DEFAULT_MAX_CACHE_SIZE, DEFAULT_SERVICE_NAME,
};
use gofe_model::TracingConfig;

use super::*;

/// Name of the OpenTelemetry tracer.
pub const OPENTELEMETRY_TRACER_NAME: &str = "envoy.tracers.opentelemetry";

type Tracing = hcm::http_connection_manager::Tracing;

/// gofe's settings of `t` that Envoy's messages cannot carry.
pub(super) fn check_publishable(t: &TracingConfig, base: &str) -> Result<(), ConvertError> {
    if t.propagation != [gofe_model::tracing::Propagation::Tracecontext] {
        return Err(not_publishable(
            format!("{base}.propagation"),
            "only W3C trace context (the default) has an Envoy form (the OpenTelemetry tracer's)",
        ));
    }
    if !t.batch.is_default() {
        return Err(not_publishable(
            format!("{base}.batch"),
            "batch settings have no Envoy form; only the defaults can be published",
        ));
    }
    Ok(())
}

// === to wire ===

/// The connection manager's `tracing` for a listener's.
pub(super) fn tracing_to_wire(t: &TracingConfig) -> Tracing {
    let otel = &t.provider.opentelemetry;
    let uri = &otel.http_service.http_uri;
    let config = trace::OpenTelemetryConfig {
        http_service: Some(core::HttpService {
            http_uri: Some(core::HttpUri {
                uri: uri.uri.clone(),
                timeout: Some(pb_duration(uri.timeout)),
                http_upstream_type: uri
                    .cluster
                    .clone()
                    .map(core::http_uri::HttpUpstreamType::Cluster),
            }),
            ..Default::default()
        }),
        service_name: otel.service_name.clone(),
        max_cache_size: u32v(otel.max_cache_size),
        ..Default::default()
    };
    Tracing {
        client_sampling: Some(percent_to_wire(t.client_sampling)),
        random_sampling: Some(percent_to_wire(t.random_sampling)),
        overall_sampling: Some(percent_to_wire(t.overall_sampling)),
        provider: Some(trace::tracing::Http {
            name: OPENTELEMETRY_TRACER_NAME.into(),
            config_type: Some(trace::tracing::http::ConfigType::TypedConfig(to_any(
                &config,
            ))),
        }),
        spawn_upstream_span: Some(BoolValue { value: true }),
        ..Default::default()
    }
}

fn percent_to_wire(p: Percent) -> PbPercent {
    PbPercent { value: p.value }
}

// === from wire ===

/// A connection manager's `tracing` (at `base`) as the listener's; `None` when it names no
/// provider (Envoy then traces nothing).
pub(super) fn tracing_from_wire(
    t: &Tracing,
    res: &str,
    base: &str,
) -> Result<Option<TracingConfig>, ConvertError> {
    let Tracing {
        client_sampling,
        random_sampling,
        overall_sampling,
        verbose,
        max_path_tag_length,
        custom_tags,
        provider,
        spawn_upstream_span,
        operation,
        upstream_operation,
        no_context_propagation,
    } = t;
    Unsupported::new(res, base)
        .set("verbose", verbose)
        .set(
            "max_path_tag_length (gofe writes the whole path)",
            max_path_tag_length,
        )
        .set("custom_tags", custom_tags)
        .when(
            "spawn_upstream_span: false (gofe makes a span per upstream attempt)",
            spawn_upstream_span.as_ref().is_some_and(|b| !b.value),
        )
        .set("operation", operation)
        .set("upstream_operation", upstream_operation)
        .set("no_context_propagation", no_context_propagation)
        .finish()?;
    let Some(provider) = provider else {
        return Ok(None);
    };
    let pbase = join(base, "provider");
    let Some(trace::tracing::http::ConfigType::TypedConfig(any)) = &provider.config_type else {
        return Err(invalid(res, &join(&pbase, "typed_config"), "missing"));
    };
    if any.type_url != trace::OpenTelemetryConfig::type_url() {
        return Err(invalid(
            res,
            &join(&pbase, "typed_config"),
            format!(
                "tracer {:?} ({}) not supported by gofe (only {OPENTELEMETRY_TRACER_NAME})",
                provider.name, any.type_url
            ),
        ));
    }
    let config: trace::OpenTelemetryConfig = from_any(any)?;
    let opentelemetry = opentelemetry_from_wire(&config, res, &join(&pbase, "typed_config"))?;
    Ok(Some(TracingConfig {
        client_sampling: percent_from_wire(client_sampling, res, &join(base, "client_sampling"))?,
        random_sampling: percent_from_wire(random_sampling, res, &join(base, "random_sampling"))?,
        overall_sampling: percent_from_wire(
            overall_sampling,
            res,
            &join(base, "overall_sampling"),
        )?,
        provider: TracingProvider { opentelemetry },
        propagation: vec![gofe_model::tracing::Propagation::Tracecontext],
        batch: BatchConfig::default(),
    }))
}

fn opentelemetry_from_wire(
    c: &trace::OpenTelemetryConfig,
    res: &str,
    base: &str,
) -> Result<OpenTelemetryConfig, ConvertError> {
    let trace::OpenTelemetryConfig {
        grpc_service,
        http_service,
        exporter,
        service_name,
        resource_detectors,
        sampler,
        max_cache_size,
        set_telemetry_sdk_resource_attributes,
        set_service_name_resource_attribute,
        set_instrumentation_scope,
    } = c;
    let off = |b: &Option<BoolValue>| b.as_ref().is_some_and(|b| !b.value);
    Unsupported::new(res, base)
        .set(
            "grpc_service (gofe exports over OTLP/HTTP: use http_service)",
            grpc_service,
        )
        .set("exporter", exporter)
        .set("resource_detectors", resource_detectors)
        .set(
            "sampler (gofe samples by the connection manager's percentages)",
            sampler,
        )
        .when(
            "set_telemetry_sdk_resource_attributes: false",
            off(set_telemetry_sdk_resource_attributes),
        )
        .when(
            "set_service_name_resource_attribute: false",
            off(set_service_name_resource_attribute),
        )
        .when(
            "set_instrumentation_scope: false",
            off(set_instrumentation_scope),
        )
        .finish()?;
    let sbase = join(base, "http_service");
    let Some(http_service) = http_service else {
        return Err(invalid(
            res,
            &sbase,
            "missing (gofe exports to an OTLP/HTTP collector only)",
        ));
    };
    let core::HttpService {
        http_uri,
        request_headers_to_add,
        formatters,
    } = http_service;
    Unsupported::new(res, &sbase)
        .set("request_headers_to_add", request_headers_to_add)
        .set("formatters", formatters)
        .finish()?;
    let ubase = join(&sbase, "http_uri");
    let Some(core::HttpUri {
        uri,
        timeout,
        http_upstream_type,
    }) = http_uri
    else {
        return Err(invalid(res, &ubase, "missing"));
    };
    parse_collector_uri(uri).map_err(|m| invalid(res, &join(&ubase, "uri"), m))?;
    let timeout = duration_or(
        timeout,
        DEFAULT_EXPORT_TIMEOUT,
        res,
        &join(&ubase, "timeout"),
    )?;
    if timeout.is_zero() {
        return Err(invalid(
            res,
            &join(&ubase, "timeout"),
            "must be longer than 0s",
        ));
    }
    let max_cache_size = max_cache_size.map_or(DEFAULT_MAX_CACHE_SIZE, |v| v.value);
    if max_cache_size == 0 {
        return Err(invalid(
            res,
            &join(base, "max_cache_size"),
            "must be at least 1",
        ));
    }
    Ok(OpenTelemetryConfig {
        service_name: if service_name.is_empty() {
            DEFAULT_SERVICE_NAME.to_owned()
        } else {
            service_name.clone()
        },
        http_service: HttpServiceConfig {
            http_uri: HttpUriConfig {
                uri: uri.clone(),
                cluster: http_upstream_type
                    .as_ref()
                    .map(|core::http_uri::HttpUpstreamType::Cluster(c)| c.clone()),
                timeout,
            },
        },
        max_cache_size,
    })
}

fn percent_from_wire(
    p: &Option<PbPercent>,
    res: &str,
    field: &str,
) -> Result<Percent, ConvertError> {
    match p {
        None => Ok(Percent::all()),
        Some(p) if (0.0..=100.0).contains(&p.value) => Ok(Percent { value: p.value }),
        Some(p) => Err(invalid(
            res,
            &join(field, "value"),
            format!("must be between 0 and 100 (percent), not {}", p.value),
        )),
    }
}
