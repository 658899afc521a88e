//! Fault injection: Envoy's HTTP fault filter (`envoy.filters.http.fault`, an `HTTPFault`),
//! present in the connection manager's `http_filters` with an empty configuration and
//! configured per route or virtual host in `typed_per_filter_config` (most specific wins).
//!
//! Read: `delay` (`fixed_delay`, `header_delay`, `percentage`), `abort` (`http_status`,
//! `grpc_status`, `header_abort`, `percentage`), `max_active_faults`; runtime keys only when
//! empty or Envoy's defaults (gofe has no runtime, so the configured values apply, as in an
//! Envoy whose runtime does not override them). Refused: `response_rate_limit`, `headers`,
//! `upstream_cluster`, `downstream_nodes`, `abort.response_body`, any other runtime key.
//! Ignored: `disable_downstream_cluster_stats` and `filter_metadata` (statistics and
//! metadata gofe does not emit).

use envoy_types::pb::envoy::extensions::filters::common::fault::v3 as common_fault;
use envoy_types::pb::envoy::extensions::filters::http::fault::v3 as fault;
use envoy_types::pb::envoy::r#type::v3 as types;
use gofe_model::fault::{
    Denominator, FaultAbortConfig, FaultDelayConfig, FractionalPercent, HeaderControlled,
};
use gofe_model::FaultConfig;

use super::*;

/// Name of the fault injection HTTP filter.
pub const FAULT_FILTER_NAME: &str = "envoy.filters.http.fault";

/// Envoy's default runtime keys of `HTTPFault`, which gofe accepts (and ignores: it has no
/// runtime).
const DEFAULT_RUNTIME_KEYS: [(&str, &str); 7] = [
    (
        "delay_percent_runtime",
        "fault.http.delay.fixed_delay_percent",
    ),
    ("abort_percent_runtime", "fault.http.abort.abort_percent"),
    (
        "delay_duration_runtime",
        "fault.http.delay.fixed_duration_ms",
    ),
    ("abort_http_status_runtime", "fault.http.abort.http_status"),
    ("max_active_faults_runtime", "fault.http.max_active_faults"),
    (
        "response_rate_limit_percent_runtime",
        "fault.http.rate_limit.response_percent",
    ),
    ("abort_grpc_status_runtime", "fault.http.abort.grpc_status"),
];

// === to wire ===

pub(super) fn percent_to_wire(p: &FractionalPercent) -> types::FractionalPercent {
    use types::fractional_percent::DenominatorType as D;
    types::FractionalPercent {
        numerator: p.numerator,
        denominator: match p.denominator {
            Denominator::Hundred => D::Hundred,
            Denominator::TenThousand => D::TenThousand,
            Denominator::Million => D::Million,
        } as i32,
    }
}

/// A route's fault configuration as an `HTTPFault`.
pub(super) fn fault_to_wire(f: &FaultConfig) -> fault::HttpFault {
    use common_fault::fault_delay::FaultDelaySecifier as Delay;
    use fault::fault_abort::ErrorType;
    fault::HttpFault {
        delay: f.delay.as_ref().map(|d| common_fault::FaultDelay {
            percentage: Some(percent_to_wire(&d.percentage)),
            fault_delay_secifier: match (d.fixed_delay, d.header_delay) {
                (Some(t), _) => Some(Delay::FixedDelay(pb_duration(t))),
                (None, Some(_)) => Some(Delay::HeaderDelay(Default::default())),
                (None, None) => None,
            },
        }),
        abort: f.abort.as_ref().map(|a| fault::FaultAbort {
            percentage: Some(percent_to_wire(&a.percentage)),
            response_body: String::new(),
            error_type: match (a.http_status, a.grpc_status, a.header_abort) {
                (Some(s), _, _) => Some(ErrorType::HttpStatus(s)),
                (None, Some(s), _) => Some(ErrorType::GrpcStatus(s)),
                (None, None, Some(_)) => Some(ErrorType::HeaderAbort(Default::default())),
                (None, None, None) => None,
            },
        }),
        max_active_faults: f.max_active_faults.and_then(u32v),
        ..Default::default()
    }
}

/// A route's values the fault filter cannot carry.
pub(super) fn check_publishable(f: &FaultConfig, base: &str) -> Result<(), ConvertError> {
    if let Some(t) = f.delay.as_ref().and_then(|d| d.fixed_delay) {
        check_pb_duration(t, format!("{base}.delay.fixed_delay"))?;
    }
    Ok(())
}

// === from wire ===

pub(super) fn percent_from_wire(
    p: &Option<types::FractionalPercent>,
    res: &str,
    base: &str,
) -> Result<FractionalPercent, ConvertError> {
    use types::fractional_percent::DenominatorType as D;
    let Some(p) = p else {
        // Envoy's default: 0 of a hundred.
        return Ok(FractionalPercent::default());
    };
    let denominator = match D::try_from(p.denominator) {
        Ok(D::Hundred) => Denominator::Hundred,
        Ok(D::TenThousand) => Denominator::TenThousand,
        Ok(D::Million) => Denominator::Million,
        Err(_) => {
            return Err(invalid(
                res,
                &join(base, "denominator"),
                format!("unknown denominator {}", p.denominator),
            ))
        }
    };
    let out = FractionalPercent {
        numerator: p.numerator,
        denominator,
    };
    if out.numerator > denominator.value() {
        return Err(invalid(
            res,
            &join(base, "numerator"),
            format!(
                "{} is more than the denominator ({}); gofe refuses a fraction over 100 %",
                out.numerator,
                denominator.value()
            ),
        ));
    }
    Ok(out)
}

/// Validates an `HTTPFault` into a route's fault configuration.
pub(super) fn fault_from_wire(
    f: &fault::HttpFault,
    res: &str,
    base: &str,
) -> Result<FaultConfig, ConvertError> {
    let fault::HttpFault {
        delay,
        abort,
        upstream_cluster,
        headers,
        downstream_nodes,
        max_active_faults,
        response_rate_limit,
        delay_percent_runtime,
        abort_percent_runtime,
        delay_duration_runtime,
        abort_http_status_runtime,
        max_active_faults_runtime,
        response_rate_limit_percent_runtime,
        abort_grpc_status_runtime,
        // Statistics gofe does not keep.
        disable_downstream_cluster_stats: _,
        // Dynamic metadata gofe does not emit.
        filter_metadata: _,
    } = f;
    let mut unsupported = Unsupported::new(res, base);
    unsupported
        .set("upstream_cluster", upstream_cluster)
        .set("headers", headers)
        .set("downstream_nodes", downstream_nodes)
        .set("response_rate_limit", response_rate_limit);
    let runtime = [
        delay_percent_runtime,
        abort_percent_runtime,
        delay_duration_runtime,
        abort_http_status_runtime,
        max_active_faults_runtime,
        response_rate_limit_percent_runtime,
        abort_grpc_status_runtime,
    ];
    for ((field, default), key) in DEFAULT_RUNTIME_KEYS.iter().zip(runtime) {
        unsupported.when(
            &format!("{field} (gofe has no runtime: only Envoy's default key)"),
            !key.is_empty() && key != default,
        );
    }
    unsupported.finish()?;
    let delay = delay
        .as_ref()
        .map(|d| delay_from_wire(d, res, &join(base, "delay")))
        .transpose()?;
    let abort = abort
        .as_ref()
        .map(|a| abort_from_wire(a, res, &join(base, "abort")))
        .transpose()?;
    Ok(FaultConfig {
        delay,
        abort,
        max_active_faults: max_active_faults.map(|v| v.value),
    })
}

fn delay_from_wire(
    d: &common_fault::FaultDelay,
    res: &str,
    base: &str,
) -> Result<FaultDelayConfig, ConvertError> {
    use common_fault::fault_delay::FaultDelaySecifier as Delay;
    let common_fault::FaultDelay {
        percentage,
        fault_delay_secifier,
    } = d;
    let mut out = FaultDelayConfig {
        percentage: percent_from_wire(percentage, res, &join(base, "percentage"))?,
        ..Default::default()
    };
    match fault_delay_secifier {
        Some(Delay::FixedDelay(t)) => {
            out.fixed_delay = Some(duration_from_pb(t, res, &join(base, "fixed_delay"))?)
        }
        Some(Delay::HeaderDelay(_)) => out.header_delay = Some(HeaderControlled {}),
        None => return Err(invalid(res, base, "needs fixed_delay or header_delay")),
    }
    Ok(out)
}

fn abort_from_wire(
    a: &fault::FaultAbort,
    res: &str,
    base: &str,
) -> Result<FaultAbortConfig, ConvertError> {
    use fault::fault_abort::ErrorType;
    let fault::FaultAbort {
        percentage,
        response_body,
        error_type,
    } = a;
    Unsupported::new(res, base)
        .set("response_body", response_body)
        .finish()?;
    let mut out = FaultAbortConfig {
        percentage: percent_from_wire(percentage, res, &join(base, "percentage"))?,
        ..Default::default()
    };
    match error_type {
        Some(ErrorType::HttpStatus(s)) => {
            if !(200..600).contains(s) {
                return Err(invalid(
                    res,
                    &join(base, "http_status"),
                    format!("{s} is not in 200..=599"),
                ));
            }
            out.http_status = Some(*s);
        }
        Some(ErrorType::GrpcStatus(s)) => out.grpc_status = Some(*s),
        Some(ErrorType::HeaderAbort(_)) => out.header_abort = Some(HeaderControlled {}),
        None => {
            return Err(invalid(
                res,
                base,
                "needs http_status, grpc_status or header_abort",
            ))
        }
    }
    Ok(out)
}

/// The connection manager's fault filter: gofe reads its configuration per route, so the
/// filter-level one must be empty (a fault for every route is written on each route or
/// virtual host instead).
pub(super) fn filter_from_wire(
    f: &hcm::HttpFilter,
    typed: &Any,
    res: &str,
    base: &str,
) -> Result<(), ConvertError> {
    if f.name != FAULT_FILTER_NAME {
        return Err(invalid(
            res,
            &join(base, "name"),
            format!("gofe reads the fault filter under the name {FAULT_FILTER_NAME:?}"),
        ));
    }
    if f.disabled {
        return Err(invalid(
            res,
            &join(base, "disabled"),
            "a disabled fault filter is not supported by gofe (an empty HTTPFault injects \
             nothing until a route configures it)",
        ));
    }
    let config: fault::HttpFault = from_any(typed)?;
    // Validated as a route's would be, then refused if it says anything.
    let read = fault_from_wire(&config, res, &join(base, "typed_config"))?;
    if read != FaultConfig::default() {
        return Err(invalid(
            res,
            &join(base, "typed_config"),
            "a fault for every route of the connection manager is not supported by gofe: \
             configure it per route or virtual host (typed_per_filter_config)",
        ));
    }
    Ok(())
}

/// The connection manager's fault filter entry, empty (routes configure it).
pub(super) fn filter_to_wire() -> hcm::HttpFilter {
    hcm::HttpFilter {
        name: FAULT_FILTER_NAME.into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(to_any(
            &fault::HttpFault::default(),
        ))),
        ..Default::default()
    }
}

/// Whether `any` is an `HTTPFault`.
pub(super) fn is_fault(any: &Any) -> bool {
    any.type_url == fault::HttpFault::type_url()
}

/// Decodes a per-route `HTTPFault`.
pub(super) fn per_route_from_wire(
    any: &Any,
    res: &str,
    base: &str,
) -> Result<FaultConfig, ConvertError> {
    fault_from_wire(&from_any(any)?, res, base)
}

/// Encodes a per-route `HTTPFault`.
pub(super) fn per_route_to_wire(f: &FaultConfig) -> Any {
    to_any(&fault_to_wire(f))
}
