//! Local rate limiting: Envoy's `envoy.filters.http.local_ratelimit` (a `LocalRateLimit`),
//! present in the connection manager's `http_filters` without a token bucket and configured
//! per route or virtual host in `typed_per_filter_config` (most specific wins); and a cluster's
//! own, as the first of its upstream HTTP filters (`HttpProtocolOptions.http_filters`, before
//! the upstream codec).
//!
//! Read: `token_bucket` (`max_tokens`, `tokens_per_fill`, `fill_interval`), `status`,
//! `filter_enabled.default_value`, `filter_enforced.default_value`,
//! `enable_x_ratelimit_headers`. Ignored: `stat_prefix` (gofe's own counters),
//! `filter_enabled.runtime_key`/`filter_enforced.runtime_key` (gofe has no runtime, so the
//! default value applies, as in an Envoy whose runtime lacks the key),
//! `always_consume_default_token_bucket` (matters only with descriptors). Refused:
//! `descriptors`, `rate_limits`, `max_dynamic_descriptors`, `vh_rate_limits`, `stage`,
//! `local_rate_limit_per_downstream_connection`, `local_cluster_rate_limit`,
//! `response_headers_to_add`, `request_headers_to_add_when_not_enforced`,
//! `rate_limited_as_resource_exhausted`, `enable_retry_after_header`.

use envoy_types::pb::envoy::extensions::common::ratelimit::v3::XRateLimitHeadersRfcVersion;
use envoy_types::pb::envoy::extensions::filters::http::local_ratelimit::v3::LocalRateLimit;
use envoy_types::pb::envoy::extensions::filters::http::upstream_codec::v3::UpstreamCodec;
use envoy_types::pb::envoy::r#type::v3 as types;
use gofe_model::local_ratelimit::{
    TokenBucketConfig, XRateLimitHeaders, DEFAULT_STATUS, MIN_FILL_INTERVAL,
};
use gofe_model::LocalRateLimitConfig;

use super::faults::{percent_from_wire, percent_to_wire};
use super::*;

/// Name of the local rate limit HTTP filter.
pub const LOCAL_RATELIMIT_FILTER_NAME: &str = "envoy.filters.http.local_ratelimit";

/// The `stat_prefix` gofe writes (Envoy requires one).
const STAT_PREFIX: &str = "http_local_rate_limiter";

// === to wire ===

fn fraction(p: &gofe_model::FractionalPercent, key: &str) -> core::RuntimeFractionalPercent {
    core::RuntimeFractionalPercent {
        default_value: Some(percent_to_wire(p)),
        runtime_key: key.into(),
    }
}

/// A route's rate limit as a `LocalRateLimit`.
pub(super) fn per_route_to_wire(r: &LocalRateLimitConfig) -> Any {
    to_any(&LocalRateLimit {
        stat_prefix: STAT_PREFIX.into(),
        status: (r.status != DEFAULT_STATUS).then_some(types::HttpStatus {
            code: i32::from(r.status),
        }),
        token_bucket: Some(types::TokenBucket {
            max_tokens: r.token_bucket.max_tokens,
            tokens_per_fill: u32v(r.token_bucket.tokens_per_fill),
            fill_interval: Some(pb_duration(r.token_bucket.fill_interval)),
        }),
        filter_enabled: Some(fraction(&r.filter_enabled, "local_rate_limit_enabled")),
        filter_enforced: Some(fraction(&r.filter_enforced, "local_rate_limit_enforced")),
        enable_x_ratelimit_headers: match r.enable_x_ratelimit_headers {
            XRateLimitHeaders::Off => XRateLimitHeadersRfcVersion::Off,
            XRateLimitHeaders::DraftVersion03 => XRateLimitHeadersRfcVersion::DraftVersion03,
        } as i32,
        ..Default::default()
    })
}

/// The connection manager's local rate limit filter entry, without a bucket (routes bring
/// theirs).
pub(super) fn filter_to_wire() -> hcm::HttpFilter {
    hcm::HttpFilter {
        name: LOCAL_RATELIMIT_FILTER_NAME.into(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(to_any(
            &LocalRateLimit {
                stat_prefix: STAT_PREFIX.into(),
                ..Default::default()
            },
        ))),
        ..Default::default()
    }
}

/// A route's values a `LocalRateLimit` cannot carry.
pub(super) fn check_publishable(r: &LocalRateLimitConfig, base: &str) -> Result<(), ConvertError> {
    check_pb_duration(
        r.token_bucket.fill_interval,
        format!("{base}.token_bucket.fill_interval"),
    )
}

/// Name of the upstream codec filter, the last of a cluster's upstream HTTP filters.
pub(super) const UPSTREAM_CODEC_FILTER_NAME: &str = "envoy.filters.http.upstream_codec";

/// A cluster's rate limit as its upstream HTTP filters: the limit, then the upstream codec
/// (Envoy requires the codec last).
pub(super) fn cluster_filters_to_wire(r: &LocalRateLimitConfig) -> Vec<hcm::HttpFilter> {
    vec![
        hcm::HttpFilter {
            name: LOCAL_RATELIMIT_FILTER_NAME.into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(
                per_route_to_wire(r),
            )),
            ..Default::default()
        },
        hcm::HttpFilter {
            name: UPSTREAM_CODEC_FILTER_NAME.into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(to_any(
                &UpstreamCodec {},
            ))),
            ..Default::default()
        },
    ]
}

// === from wire ===

/// A cluster's upstream HTTP filters (`HttpProtocolOptions.http_filters` at `base`): gofe
/// reads at most one local rate limit with a bucket (the cluster's) before the upstream codec,
/// which must come last as Envoy requires; any other upstream filter is refused.
pub(super) fn cluster_filters_from_wire(
    filters: &[hcm::HttpFilter],
    res: &str,
    base: &str,
) -> Result<Option<LocalRateLimitConfig>, ConvertError> {
    if filters.is_empty() {
        return Ok(None);
    }
    let last = filters.len() - 1;
    let mut limit = None;
    for (i, f) in filters.iter().enumerate() {
        let field = format!("{base}[{i}]");
        let typed = match &f.config_type {
            Some(hcm::http_filter::ConfigType::TypedConfig(any)) => any,
            _ => {
                return Err(invalid(
                    res,
                    &join(&field, "typed_config"),
                    "gofe reads upstream filters with a typed_config only",
                ))
            }
        };
        if f.disabled || f.is_optional {
            return Err(unsupported(res, &join(&field, "disabled, is_optional")));
        }
        if typed.type_url == UpstreamCodec::type_url() {
            if i != last {
                return Err(invalid(
                    res,
                    &field,
                    "the upstream codec must be the last upstream filter",
                ));
            }
            continue;
        }
        if !is_local_ratelimit(typed) {
            return Err(invalid(
                res,
                &field,
                format!(
                    "upstream filter {:?} ({}) is not supported by gofe (only a local rate limit, \
                     then the upstream codec)",
                    f.name, typed.type_url
                ),
            ));
        }
        if i == last {
            return Err(invalid(
                res,
                &field,
                "the last upstream filter must be the upstream codec",
            ));
        }
        if limit.is_some() {
            return Err(invalid(
                res,
                &field,
                "one local rate limit per cluster is supported by gofe",
            ));
        }
        limit = per_route_from_wire(typed, res, &join(&field, "typed_config"))?;
    }
    Ok(limit)
}

/// Whether `any` is a `LocalRateLimit`.
pub(super) fn is_local_ratelimit(any: &Any) -> bool {
    any.type_url == LocalRateLimit::type_url()
}

/// Validates a `LocalRateLimit`: the bucket gofe reads (none when it has none), every field
/// gofe cannot honour refused.
#[allow(deprecated)]
fn read(
    l: &LocalRateLimit,
    res: &str,
    base: &str,
) -> Result<Option<LocalRateLimitConfig>, ConvertError> {
    let LocalRateLimit {
        stat_prefix: _,
        status,
        token_bucket,
        filter_enabled,
        filter_enforced,
        request_headers_to_add_when_not_enforced,
        response_headers_to_add,
        descriptors,
        stage,
        local_rate_limit_per_downstream_connection,
        local_cluster_rate_limit,
        enable_x_ratelimit_headers,
        vh_rate_limits,
        // Matters only with descriptors, which are refused.
        always_consume_default_token_bucket: _,
        rate_limited_as_resource_exhausted,
        rate_limits,
        max_dynamic_descriptors,
        enable_retry_after_header,
    } = l;
    Unsupported::new(res, base)
        .set(
            "request_headers_to_add_when_not_enforced",
            request_headers_to_add_when_not_enforced,
        )
        .set("response_headers_to_add", response_headers_to_add)
        .set("descriptors", descriptors)
        .set("stage", stage)
        .set(
            "local_rate_limit_per_downstream_connection",
            local_rate_limit_per_downstream_connection,
        )
        .set("local_cluster_rate_limit", local_cluster_rate_limit)
        .set("vh_rate_limits", vh_rate_limits)
        .set(
            "rate_limited_as_resource_exhausted",
            rate_limited_as_resource_exhausted,
        )
        .set("rate_limits", rate_limits)
        .set("max_dynamic_descriptors", max_dynamic_descriptors)
        .set("enable_retry_after_header", enable_retry_after_header)
        .finish()?;
    let headers = match XRateLimitHeadersRfcVersion::try_from(*enable_x_ratelimit_headers) {
        Ok(XRateLimitHeadersRfcVersion::Off) => XRateLimitHeaders::Off,
        Ok(XRateLimitHeadersRfcVersion::DraftVersion03) => XRateLimitHeaders::DraftVersion03,
        Err(_) => {
            return Err(invalid(
                res,
                &join(base, "enable_x_ratelimit_headers"),
                format!("unknown version {enable_x_ratelimit_headers}"),
            ))
        }
    };
    let status = match status {
        None => DEFAULT_STATUS,
        Some(s) => u16::try_from(s.code)
            .ok()
            .filter(|c| (400..600).contains(c))
            .ok_or_else(|| {
                invalid(
                    res,
                    &join(base, "status.code"),
                    format!("{} is not an error status (400..=599)", s.code),
                )
            })?,
    };
    let fraction = |f: &Option<core::RuntimeFractionalPercent>, field: &str| match f {
        // Envoy's default, "for safety": 0 %.
        None => Ok(gofe_model::FractionalPercent::default()),
        Some(f) => percent_from_wire(
            &f.default_value,
            res,
            &join(base, &format!("{field}.default_value")),
        ),
    };
    let filter_enabled = fraction(filter_enabled, "filter_enabled")?;
    let filter_enforced = fraction(filter_enforced, "filter_enforced")?;
    let Some(bucket) = token_bucket else {
        return Ok(None);
    };
    let bbase = join(base, "token_bucket");
    let tokens_per_fill = bucket.tokens_per_fill.map_or(1, |v| v.value);
    if tokens_per_fill == 0 {
        return Err(invalid(
            res,
            &join(&bbase, "tokens_per_fill"),
            "must be at least 1",
        ));
    }
    let fill_interval = match &bucket.fill_interval {
        None => return Err(invalid(res, &join(&bbase, "fill_interval"), "missing")),
        Some(d) => duration_from_pb(d, res, &join(&bbase, "fill_interval"))?,
    };
    if fill_interval < MIN_FILL_INTERVAL {
        return Err(invalid(
            res,
            &join(&bbase, "fill_interval"),
            "must be at least 50ms (Envoy's minimum)",
        ));
    }
    Ok(Some(LocalRateLimitConfig {
        token_bucket: TokenBucketConfig {
            max_tokens: bucket.max_tokens,
            tokens_per_fill,
            fill_interval,
        },
        status,
        filter_enabled,
        filter_enforced,
        enable_x_ratelimit_headers: headers,
    }))
}

/// Decodes a per-route `LocalRateLimit`; one without a bucket limits nothing.
pub(super) fn per_route_from_wire(
    any: &Any,
    res: &str,
    base: &str,
) -> Result<Option<LocalRateLimitConfig>, ConvertError> {
    read(&from_any(any)?, res, base)
}

/// The connection manager's local rate limit filter: gofe's buckets are per route, so the
/// filter-level configuration must have none.
pub(super) fn filter_from_wire(
    f: &hcm::HttpFilter,
    typed: &Any,
    res: &str,
    base: &str,
) -> Result<(), ConvertError> {
    if f.name != LOCAL_RATELIMIT_FILTER_NAME {
        return Err(invalid(
            res,
            &join(base, "name"),
            format!(
                "gofe reads the local rate limit filter under the name \
                 {LOCAL_RATELIMIT_FILTER_NAME:?}"
            ),
        ));
    }
    if f.disabled {
        return Err(invalid(
            res,
            &join(base, "disabled"),
            "a disabled local rate limit filter is not supported by gofe (one without a \
             token_bucket limits nothing until a route configures it)",
        ));
    }
    let tbase = join(base, "typed_config");
    if read(&from_any(typed)?, res, &tbase)?.is_some() {
        return Err(invalid(
            res,
            &join(&tbase, "token_bucket"),
            "a bucket for every route of the connection manager is not supported by gofe: \
             configure it per route or virtual host (typed_per_filter_config)",
        ));
    }
    Ok(())
}
