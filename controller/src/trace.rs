//! The controller's own traces: one trace per decision step, its root span `controller.step`
//! and a child per phase — `controller.signals` (what was fetched, or why not),
//! `controller.decide` with a `controller.decide.cluster` child per cluster (its mode and every
//! endpoint's inputs, weight, state and reason, as `/decisions` shows them), and
//! `controller.publish` (the version, and whether anything changed) — exported by the same
//! OTLP/HTTP exporter as the proxy's spans (`gofe_trace`).
//!
//! Every step is traced (there is one per `interval`, so there is nothing to sample). The
//! exporter starts with the first step, on the controller's runtime.

use std::borrow::Cow;
use std::time::{Duration, SystemTime};

use gofe_trace::{Counters, Exporter, ExporterConfig, Kind, Span, SpanId, TraceId, Value};

use crate::config::ControllerTracingConfig;

/// The controller's tracer: its settings, and its exporter once started.
pub(crate) struct StepTracer {
    config: ControllerTracingConfig,
    counters: Counters,
    exporter: Option<Exporter>,
}

impl StepTracer {
    pub(crate) fn new(config: ControllerTracingConfig, counters: Counters) -> Self {
        StepTracer {
            config,
            counters,
            exporter: None,
        }
    }

    /// A new step's trace (starting the exporter on the first).
    pub(crate) fn start(&mut self) -> StepTrace {
        if self.exporter.is_none() {
            let otel = &self.config.provider.opentelemetry;
            let uri = &otel.http_service.http_uri;
            // Validated when the file was loaded.
            let target = gofe_model::tracing::parse_collector_uri(&uri.uri)
                .ok()
                .and_then(|c| {
                    format!("http://{}{}", c.authority, c.path_and_query)
                        .parse()
                        .ok()
                })
                .unwrap_or_else(|| http::Uri::from_static("http://127.0.0.1/v1/traces"));
            self.exporter = Some(Exporter::start(
                ExporterConfig {
                    uri: target,
                    timeout: uri.timeout,
                    service_name: otel.service_name.clone(),
                    queue: otel.max_cache_size as usize,
                    max_batch: self.config.batch.max_export_batch_size as usize,
                    schedule_delay: self.config.batch.schedule_delay,
                },
                self.counters.clone(),
            ));
        }
        StepTrace {
            trace_id: TraceId::random(),
            root: SpanId::random(),
            start: unix_nanos(),
            spans: Vec::new(),
        }
    }

    /// Sends a finished step's spans.
    pub(crate) fn send(&self, step: StepTrace, attributes: Vec<(&'static str, Value)>) {
        let Some(exporter) = &self.exporter else {
            return;
        };
        for span in step.spans {
            exporter.send(span);
        }
        exporter.send(Span {
            trace_id: step.trace_id,
            span_id: step.root,
            parent: None,
            trace_state: None,
            name: Cow::Borrowed("controller.step"),
            kind: Kind::Internal,
            start_unix_nanos: step.start,
            end_unix_nanos: unix_nanos(),
            attributes,
            error: None,
        });
    }

    /// Waits (at most `timeout`) until the spans of the steps so far are exported.
    pub(crate) async fn flush(&self, timeout: Duration) -> bool {
        match &self.exporter {
            Some(e) => e.flush(timeout).await,
            None => true,
        }
    }
}

/// One step's trace, in the making.
pub(crate) struct StepTrace {
    trace_id: TraceId,
    root: SpanId,
    start: u64,
    spans: Vec<Span>,
}

impl StepTrace {
    /// Adds a phase span of `start..end` under `parent` (the step's root when `None`);
    /// returns its id.
    pub(crate) fn phase(
        &mut self,
        name: &'static str,
        parent: Option<SpanId>,
        (start, end): (u64, u64),
        attributes: Vec<(&'static str, Value)>,
        error: Option<String>,
    ) -> SpanId {
        let span_id = SpanId::random();
        self.spans.push(Span {
            trace_id: self.trace_id,
            span_id,
            parent: Some(parent.unwrap_or(self.root)),
            trace_state: None,
            name: Cow::Borrowed(name),
            kind: Kind::Internal,
            start_unix_nanos: start,
            end_unix_nanos: end,
            attributes,
            error: error.map(Cow::Owned),
        });
        span_id
    }
}

/// Now, in nanoseconds since the Unix epoch.
pub(crate) fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
