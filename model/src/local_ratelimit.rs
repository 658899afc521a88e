//! Local rate limiting of a route (Envoy's `envoy.filters.http.local_ratelimit`, a
//! `LocalRateLimit` as a route's or virtual host's `typed_per_filter_config`): a token bucket
//! per route, shared by every connection of the proxy; a request finding it empty is answered
//! 429 (or the configured status) and never reaches an upstream.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::fault::{check_percent, FractionalPercent};

/// Shortest `fill_interval` (Envoy's minimum).
pub const MIN_FILL_INTERVAL: Duration = Duration::from_millis(50);

/// A route's local rate limit (Envoy's `LocalRateLimit`).
///
/// Per request: with probability `filter_enabled` the request takes a token from the bucket;
/// one that finds none is rate limited and, with probability `filter_enforced`, answered with
/// `status` (the others go on). Both fractions default to 0, as in Envoy ("for safety"): write
/// `filter_enabled` and `filter_enforced` to limit anything.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LocalRateLimitConfig {
    /// The bucket.
    pub token_bucket: TokenBucketConfig,
    /// The status of a limited request's answer, 400..=599. Default 429.
    #[serde(default = "default_status")]
    pub status: u16,
    /// The fraction of requests the limit looks at (Envoy's `filter_enabled.default_value`).
    /// Default 0.
    #[serde(default)]
    pub filter_enabled: FractionalPercent,
    /// The fraction of limited requests answered with `status` (Envoy's
    /// `filter_enforced.default_value`). Default 0.
    #[serde(default)]
    pub filter_enforced: FractionalPercent,
    /// `DRAFT_VERSION_03`: every response of a request the limit looked at says
    /// `x-ratelimit-limit` (the bucket's size), `x-ratelimit-remaining` (tokens left) and
    /// `x-ratelimit-reset` (seconds until the next fill). Default `OFF`.
    #[serde(default, skip_serializing_if = "XRateLimitHeaders::is_off")]
    pub enable_x_ratelimit_headers: XRateLimitHeaders,
}

/// Default `status` of a rate-limited request.
pub const DEFAULT_STATUS: u16 = 429;

fn default_status() -> u16 {
    DEFAULT_STATUS
}

/// A token bucket (Envoy's `TokenBucket`): full at the start, `tokens_per_fill` more at the end
/// of every `fill_interval`, never more than `max_tokens`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketConfig {
    /// Most tokens the bucket holds (and holds at the start). 0 limits every request.
    pub max_tokens: u32,
    /// Tokens added per fill, at least 1. Default 1.
    #[serde(default = "default_tokens_per_fill")]
    pub tokens_per_fill: u32,
    /// How often it is filled; at least 50 ms.
    #[serde(with = "gofe_yaml::duration::text")]
    #[schemars(with = "crate::schema::DurationText")]
    pub fill_interval: Duration,
}

fn default_tokens_per_fill() -> u32 {
    1
}

/// Which `x-ratelimit-*` headers a response gets (Envoy's `XRateLimitHeadersRFCVersion`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum XRateLimitHeaders {
    /// None.
    #[default]
    Off,
    /// `x-ratelimit-limit`, `x-ratelimit-remaining`, `x-ratelimit-reset` (draft 03).
    #[serde(rename = "DRAFT_VERSION_03")]
    DraftVersion03,
}

impl XRateLimitHeaders {
    fn is_off(&self) -> bool {
        *self == XRateLimitHeaders::Off
    }
}

/// Checks a rate-limit configuration: `(field under it, message)` for each problem.
pub fn check(r: &LocalRateLimitConfig) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if r.token_bucket.tokens_per_fill == 0 {
        out.push((
            "token_bucket.tokens_per_fill".to_owned(),
            "must be at least 1".to_owned(),
        ));
    }
    if r.token_bucket.fill_interval < MIN_FILL_INTERVAL {
        out.push((
            "token_bucket.fill_interval".to_owned(),
            "must be at least 50ms (Envoy's minimum)".to_owned(),
        ));
    }
    if !(400..600).contains(&r.status) {
        out.push((
            "status".to_owned(),
            format!("{} is not an error status (400..=599)", r.status),
        ));
    }
    check_percent(&r.filter_enabled, "filter_enabled", &mut out);
    check_percent(&r.filter_enforced, "filter_enforced", &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_statuses_and_fractions_are_checked() {
        let mut r = LocalRateLimitConfig {
            token_bucket: TokenBucketConfig {
                max_tokens: 10,
                tokens_per_fill: 0,
                fill_interval: Duration::from_millis(10),
            },
            status: 200,
            filter_enabled: FractionalPercent::percent(101),
            filter_enforced: FractionalPercent::percent(100),
            enable_x_ratelimit_headers: XRateLimitHeaders::Off,
        };
        let fields: Vec<String> = check(&r).into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            [
                "token_bucket.tokens_per_fill",
                "token_bucket.fill_interval",
                "status",
                "filter_enabled.numerator"
            ]
        );
        r.token_bucket.tokens_per_fill = 1;
        r.token_bucket.fill_interval = MIN_FILL_INTERVAL;
        r.status = 429;
        r.filter_enabled.numerator = 100;
        assert!(check(&r).is_empty());
    }
}
