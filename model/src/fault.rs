//! Fault injection of a route (Envoy's HTTP fault filter, `envoy.filters.http.fault`, as a
//! route's or virtual host's `typed_per_filter_config`): delays and aborts for a fraction of
//! requests, optionally chosen by the request's own headers, at most so many at once.
//!
//! The proxy compiles a [`FaultConfig`] once per configuration; per request it costs one
//! random draw per configured fault. An aborted request never reaches an upstream.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A fraction of requests (Envoy's `FractionalPercent`): `numerator / denominator`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct FractionalPercent {
    /// How many out of the denominator. Default 0. At most the denominator (Envoy would cap
    /// a larger one at 100 %; gofe refuses it, as it is most likely a mistake).
    #[serde(default)]
    pub numerator: u32,
    /// Out of how many. Default `HUNDRED`.
    #[serde(default)]
    pub denominator: Denominator,
}

impl FractionalPercent {
    /// `numerator` out of a hundred.
    pub fn percent(numerator: u32) -> Self {
        FractionalPercent {
            numerator,
            denominator: Denominator::Hundred,
        }
    }
}

/// The denominators Envoy's `FractionalPercent` has.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Denominator {
    /// 100.
    #[default]
    Hundred,
    /// 10,000.
    TenThousand,
    /// 1,000,000.
    Million,
}

impl Denominator {
    /// The number it stands for.
    pub fn value(self) -> u32 {
        match self {
            Denominator::Hundred => 100,
            Denominator::TenThousand => 10_000,
            Denominator::Million => 1_000_000,
        }
    }
}

/// A route's fault injection (Envoy's `HTTPFault`).
///
/// A request first meets the delay (when drawn), then the abort (when drawn): a request may be
/// both delayed and aborted, as in Envoy. With `max_active_faults`, a fault that would make
/// more than that many requests faulted at once (on the listener) is not injected, and counted
/// as an overflow.
#[derive(Clone, Debug, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultConfig {
    /// Delay requests. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelayConfig>,
    /// Abort requests: answer them without an upstream. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbortConfig>,
    /// Most requests faulted at once on the listener (delayed, or aborted, until their
    /// response ends). Default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_active_faults: Option<u32>,
}

/// A delay (Envoy's `FaultDelay`): exactly one of `fixed_delay` or `header_delay`.
#[derive(Clone, Debug, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultDelayConfig {
    /// This long, before the request goes on to the upstream (the route's timeout starts
    /// after it).
    #[serde(
        default,
        with = "gofe_yaml::duration::optional_text",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(with = "Option<crate::schema::DurationText>")]
    pub fixed_delay: Option<Duration>,
    /// As long as the request's `x-envoy-fault-delay-request` header says, in milliseconds; a
    /// request without it (or with a value that is not a number) is not delayed. Write `{}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_delay: Option<HeaderControlled>,
    /// The fraction of requests delayed. With `header_delay`, the request's
    /// `x-envoy-fault-delay-request-percentage` header may lower the numerator (never raise
    /// it). Default 0 (Envoy's).
    #[serde(default)]
    pub percentage: FractionalPercent,
}

/// An abort (Envoy's `FaultAbort`): exactly one of `http_status`, `grpc_status` or
/// `header_abort`.
#[derive(Clone, Debug, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FaultAbortConfig {
    /// Answer with this HTTP status, 200..=599 (a gRPC request gets the gRPC status Envoy maps
    /// it to).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u32>,
    /// Answer with this gRPC status (HTTP 200, `grpc-status` set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<u32>,
    /// With the status the request's `x-envoy-fault-abort-request` header says (200..=599), or
    /// else the gRPC status of its `x-envoy-fault-abort-grpc-request`; a request with neither
    /// (or only invalid values) is not aborted. Write `{}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_abort: Option<HeaderControlled>,
    /// The fraction of requests aborted. With `header_abort`, the request's
    /// `x-envoy-fault-abort-request-percentage` header may lower the numerator (never raise
    /// it). Default 0 (Envoy's).
    #[serde(default)]
    pub percentage: FractionalPercent,
}

/// A fault whose value comes from the request's headers (Envoy's `HeaderDelay` and
/// `HeaderAbort`, which have no fields).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct HeaderControlled {}

/// Checks a fault configuration: `(field under the fault, message)` for each problem.
pub fn check(f: &FaultConfig) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(d) = &f.delay {
        match (d.fixed_delay, d.header_delay) {
            (Some(_), None) | (None, Some(_)) => {}
            _ => out.push((
                "delay".to_owned(),
                "set exactly one of fixed_delay or header_delay".to_owned(),
            )),
        }
        check_percent(&d.percentage, "delay.percentage", &mut out);
    }
    if let Some(a) = &f.abort {
        let n = usize::from(a.http_status.is_some())
            + usize::from(a.grpc_status.is_some())
            + usize::from(a.header_abort.is_some());
        if n != 1 {
            out.push((
                "abort".to_owned(),
                "set exactly one of http_status, grpc_status or header_abort".to_owned(),
            ));
        }
        if let Some(s) = a.http_status {
            if !(200..600).contains(&s) {
                out.push((
                    "abort.http_status".to_owned(),
                    format!("{s} is not an HTTP status Envoy aborts with (200..=599)"),
                ));
            }
        }
        check_percent(&a.percentage, "abort.percentage", &mut out);
    }
    out
}

/// A percentage's numerator must not exceed its denominator.
pub fn check_percent(p: &FractionalPercent, field: &str, out: &mut Vec<(String, String)>) {
    if p.numerator > p.denominator.value() {
        out.push((
            format!("{field}.numerator"),
            format!(
                "{} is more than the denominator ({}): a fraction is at most 100 %",
                p.numerator,
                p.denominator.value()
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_kind_and_sane_numbers() {
        let mut f = FaultConfig {
            delay: Some(FaultDelayConfig {
                fixed_delay: Some(Duration::from_millis(5)),
                header_delay: Some(HeaderControlled {}),
                percentage: FractionalPercent::percent(101),
            }),
            abort: Some(FaultAbortConfig {
                http_status: Some(700),
                percentage: FractionalPercent {
                    numerator: 10_001,
                    denominator: Denominator::TenThousand,
                },
                ..Default::default()
            }),
            max_active_faults: None,
        };
        let fields: Vec<String> = check(&f).into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            [
                "delay",
                "delay.percentage.numerator",
                "abort.http_status",
                "abort.percentage.numerator"
            ]
        );
        f.delay.as_mut().unwrap().header_delay = None;
        f.delay.as_mut().unwrap().percentage = FractionalPercent::percent(100);
        let a = f.abort.as_mut().unwrap();
        a.http_status = Some(503);
        a.percentage.numerator = 10_000;
        assert!(check(&f).is_empty(), "{:?}", check(&f));
        f.abort.as_mut().unwrap().grpc_status = Some(14);
        assert_eq!(check(&f)[0].0, "abort");
    }
}
