//! Local rate limiting of a route (Envoy's `local_ratelimit` filter), compiled.
//!
//! Each route with a limit has one [`TokenBucket`], shared by every connection: one `AtomicU64`
//! holding the tokens and the number of the last fill interval they were counted at. A check
//! reads the clock, adds the fills that elapsed since (capped at the bucket's size) and takes a
//! token, in one compare-and-swap loop: no lock, no timer task, no allocation. Fills happen at
//! whole intervals from the bucket's creation, as Envoy's timer-filled bucket does.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use prometheus::IntCounter;
use tokio::time::Instant;

use crate::body::ProxyBody;
use crate::config::local_ratelimit::{TokenBucketConfig, XRateLimitHeaders};
use crate::config::LocalRateLimitConfig;
use crate::fault::{local_reply, Percent};

static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Envoy's body (and gRPC message) of a rate-limited request.
const LIMITED_BODY: &str = "local_rate_limited";

// === impl TokenBucket ===

/// A token bucket filled with `per_fill` tokens at the end of every interval, at most `max`.
pub(crate) struct TokenBucket {
    /// `(fill interval number << 32) | tokens`.
    state: AtomicU64,
    start: Instant,
    interval: Duration,
    max: u32,
    per_fill: u32,
}

impl TokenBucket {
    /// A full bucket, its intervals counted from `now`.
    pub(crate) fn new(max: u32, per_fill: u32, interval: Duration, now: Instant) -> Self {
        TokenBucket {
            state: AtomicU64::new(u64::from(max)),
            start: now,
            // Validation guarantees ≥ 50 ms; never divide by zero whatever came in.
            interval: interval.max(Duration::from_millis(1)),
            max,
            per_fill,
        }
    }

    /// A full bucket as configured, its intervals counted from now.
    pub(crate) fn from_config(c: &TokenBucketConfig) -> Self {
        TokenBucket::new(
            c.max_tokens,
            c.tokens_per_fill,
            c.fill_interval,
            Instant::now(),
        )
    }

    /// The number of the fill interval `now` is in (wrapping after 2³² intervals, which the
    /// difference below tolerates).
    fn interval_at(&self, now: Instant) -> u32 {
        let elapsed = now.saturating_duration_since(self.start).as_nanos();
        (elapsed / self.interval.as_nanos()) as u32
    }

    /// Takes a token at `now`: the tokens left after it, or `Err` with none to take (0).
    pub(crate) fn take(&self, now: Instant) -> Result<u32, ()> {
        let at = self.interval_at(now);
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            let (counted_at, tokens) = ((current >> 32) as u32, current as u32);
            let fills = u64::from(at.wrapping_sub(counted_at));
            let tokens = (u64::from(tokens) + fills.saturating_mul(u64::from(self.per_fill)))
                .min(u64::from(self.max)) as u32;
            let (next, taken) = match tokens.checked_sub(1) {
                Some(left) => (left, Ok(left)),
                None => (0, Err(())),
            };
            let new = (u64::from(at) << 32) | u64::from(next);
            if new == current {
                return taken;
            }
            match self.state.compare_exchange_weak(
                current,
                new,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return taken,
                Err(seen) => current = seen,
            }
        }
    }

    /// Time from `now` until the next fill.
    pub(crate) fn until_fill(&self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.start).as_nanos();
        let interval = self.interval.as_nanos();
        let left = interval - elapsed % interval;
        Duration::from_nanos(u64::try_from(left).unwrap_or(u64::MAX))
    }
}

// === impl LocalRateLimit ===

/// The `x-ratelimit-*` values for a response (draft 03).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RateLimitHeaders {
    limit: u32,
    remaining: u32,
    reset_secs: u64,
}

impl RateLimitHeaders {
    /// Writes them into a response's headers.
    pub(crate) fn write(self, headers: &mut HeaderMap) {
        headers.insert(&X_RATELIMIT_LIMIT, HeaderValue::from(self.limit));
        headers.insert(&X_RATELIMIT_REMAINING, HeaderValue::from(self.remaining));
        headers.insert(&X_RATELIMIT_RESET, HeaderValue::from(self.reset_secs));
    }
}

/// The counters a route's rate limit is counted in.
pub(crate) struct RateLimitCounters {
    /// Requests that took a token.
    pub(crate) allowed: IntCounter,
    /// Requests that found none.
    pub(crate) limited: IntCounter,
    /// Limited requests answered with the limit's status.
    pub(crate) enforced: IntCounter,
}

/// What the limit says about a request.
pub(crate) enum Verdict {
    /// It goes on; its response gets these headers, if any.
    Pass(Option<RateLimitHeaders>),
    /// It is answered with [`LocalRateLimit::reply`], with these headers, if any.
    Limited(Option<RateLimitHeaders>),
}

/// A route's compiled local rate limit.
pub(crate) struct LocalRateLimit {
    bucket: Arc<TokenBucket>,
    enabled: Percent,
    enforced: Percent,
    status: StatusCode,
    headers: bool,
    counters: RateLimitCounters,
}

impl LocalRateLimit {
    /// Compiles a validated configuration around its `bucket` (kept across configurations
    /// that leave it unchanged).
    pub(crate) fn build(
        c: &LocalRateLimitConfig,
        bucket: Arc<TokenBucket>,
        counters: RateLimitCounters,
    ) -> Result<Self, String> {
        Ok(LocalRateLimit {
            bucket,
            enabled: Percent::new(&c.filter_enabled),
            enforced: Percent::new(&c.filter_enforced),
            status: StatusCode::from_u16(c.status)
                .ok()
                .filter(|s| s.is_client_error() || s.is_server_error())
                .ok_or_else(|| format!("rate limit status {} is not an error", c.status))?,
            headers: c.enable_x_ratelimit_headers == XRateLimitHeaders::DraftVersion03,
            counters,
        })
    }

    /// Checks one request.
    pub(crate) fn check(&self) -> Verdict {
        if !self.enabled.draw() {
            return Verdict::Pass(None);
        }
        let now = Instant::now();
        let taken = self.bucket.take(now);
        let headers = self.headers.then(|| RateLimitHeaders {
            limit: self.bucket.max,
            remaining: *taken.as_ref().unwrap_or(&0),
            reset_secs: self.bucket.until_fill(now).as_secs_f64().ceil() as u64,
        });
        if taken.is_ok() {
            self.counters.allowed.inc();
            return Verdict::Pass(headers);
        }
        self.counters.limited.inc();
        if !self.enforced.draw() {
            return Verdict::Pass(headers);
        }
        self.counters.enforced.inc();
        Verdict::Limited(headers)
    }

    /// The answer of a limited request (its headers say whether it is gRPC).
    /// Whether a retry may be sent (it takes a token like any attempt; one the limit would
    /// answer is not sent).
    pub(crate) fn allows_retry(&self) -> bool {
        matches!(self.check(), Verdict::Pass(_))
    }

    /// The answer to a limited request, with `headers` when the limit sends them.
    pub(crate) fn reply(
        &self,
        request: &HeaderMap,
        headers: Option<RateLimitHeaders>,
    ) -> Response<ProxyBody> {
        let mut reply = local_reply(request, self.status, None, LIMITED_BODY);
        if let Some(h) = headers {
            h.write(reply.headers_mut());
        }
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::FractionalPercent;

    fn counters() -> RateLimitCounters {
        let c = |n: &str| IntCounter::new(n, "test").unwrap();
        RateLimitCounters {
            allowed: c("a"),
            limited: c("l"),
            enforced: c("e"),
        }
    }

    fn limit(max: u32, per_fill: u32, interval: Duration, enforced: u32) -> LocalRateLimit {
        let token_bucket = TokenBucketConfig {
            max_tokens: max,
            tokens_per_fill: per_fill,
            fill_interval: interval,
        };
        let bucket = Arc::new(TokenBucket::from_config(&token_bucket));
        LocalRateLimit::build(
            &LocalRateLimitConfig {
                token_bucket,
                status: 429,
                filter_enabled: FractionalPercent::percent(100),
                filter_enforced: FractionalPercent::percent(enforced),
                enable_x_ratelimit_headers: XRateLimitHeaders::DraftVersion03,
            },
            bucket,
            counters(),
        )
        .unwrap()
    }

    fn remaining(v: &Verdict) -> Option<u32> {
        match v {
            Verdict::Pass(h) => h.map(|h| h.remaining),
            Verdict::Limited(_) => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_refills_at_whole_intervals_up_to_its_size() {
        let l = limit(3, 2, Duration::from_secs(1), 100);
        let got: Vec<Option<u32>> = (0..4).map(|_| remaining(&l.check())).collect();
        assert_eq!(
            got,
            [Some(2), Some(1), Some(0), None],
            "a burst of max_tokens"
        );
        // Not yet a whole interval: still empty.
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(matches!(l.check(), Verdict::Limited(_)));
        // One fill: two tokens.
        tokio::time::advance(Duration::from_millis(1)).await;
        let got: Vec<Option<u32>> = (0..3).map(|_| remaining(&l.check())).collect();
        assert_eq!(got, [Some(1), Some(0), None]);
        // A long pause fills it only to its size.
        tokio::time::advance(Duration::from_secs(3600)).await;
        let got: Vec<Option<u32>> = (0..4).map(|_| remaining(&l.check())).collect();
        assert_eq!(got, [Some(2), Some(1), Some(0), None]);
        assert_eq!(l.counters.allowed.get(), 8);
        assert_eq!(l.counters.limited.get(), 4);
        assert_eq!(l.counters.enforced.get(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_limited_reply_says_when_to_come_back() {
        let l = limit(1, 1, Duration::from_secs(10), 100);
        let h = HeaderMap::new();
        assert!(matches!(l.check(), Verdict::Pass(Some(_))));
        tokio::time::advance(Duration::from_millis(2500)).await;
        let Verdict::Limited(headers) = l.check() else {
            panic!("the bucket is empty")
        };
        let r = l.reply(&h, headers);
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["x-ratelimit-limit"], "1");
        assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
        assert_eq!(r.headers()["x-ratelimit-reset"], "8", "7.5 s, rounded up");
        // A gRPC request: 200 with UNAVAILABLE, as Envoy maps 429.
        let mut g = HeaderMap::new();
        g.insert("content-type", HeaderValue::from_static("application/grpc"));
        let Verdict::Limited(headers) = l.check() else {
            panic!("still empty")
        };
        let r = l.reply(&g, headers);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["grpc-status"], "14");
    }

    #[tokio::test(start_paused = true)]
    async fn unenforced_limits_count_and_let_requests_on() {
        let l = limit(0, 1, Duration::from_secs(1), 0);
        for _ in 0..5 {
            assert_eq!(remaining(&l.check()), Some(0));
        }
        assert_eq!(l.counters.limited.get(), 5);
        assert_eq!(l.counters.enforced.get(), 0);
    }

    #[test]
    fn concurrent_takers_never_take_more_than_the_bucket_holds() {
        let bucket = Arc::new(TokenBucket::new(
            1000,
            1,
            Duration::from_secs(3600),
            Instant::now(),
        ));
        let now = Instant::now();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let b = Arc::clone(&bucket);
                std::thread::spawn(move || (0..1000).filter(|_| b.take(now).is_ok()).count())
            })
            .collect();
        let taken: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(taken, 1000);
    }
}
