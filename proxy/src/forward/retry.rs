//! Retries: whether a failed attempt is tried again, how long to wait first, and the cluster's
//! retry limit (`max_retries`, or a retry budget) that bounds them.
//!
//! Only a request without a body is retried: bodies stream through and are not kept.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::cluster::Cluster;
use crate::config::{CircuitBreakersConfig, RetryOn};
use crate::ctx::Admission;
use crate::health::Outcome;
use crate::route::RetryPolicy;

use super::deadline::remaining;

/// A request's retries so far.
pub(crate) struct Retries {
    policy: Option<RetryPolicy>,
    done: u32,
    /// The retry in flight holds a place in the cluster's retry limit.
    admission: Option<Admission>,
    /// Why the last failure wanting a retry did not get one.
    refused: Option<Refused>,
}

/// Why a failure the policy would retry was not retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// `num_retries` were done already (Envoy's `URX`).
    LimitExceeded,
    /// The cluster's retry limit or budget was spent (Envoy's `UO`).
    Overflow,
    /// The cluster's local rate limit had no token for the retry (Envoy's `RL`).
    RateLimited,
}

impl Retries {
    /// The retries a request may get under its route's `policy` (none for a request with a
    /// body, `bodiless` false).
    pub(crate) fn new(policy: Option<RetryPolicy>, bodiless: bool) -> Self {
        Retries {
            policy: policy.filter(|p| p.num_retries > 0 && bodiless),
            done: 0,
            admission: None,
            refused: None,
        }
    }

    /// Whether the request may be retried at all (so its head must be kept for another try).
    pub(crate) fn possible(&self) -> bool {
        self.policy.is_some()
    }

    /// Retries done so far.
    pub(crate) fn done(&self) -> u32 {
        self.done
    }

    /// When an attempt started at `started` times out by the per-try timeout.
    pub(crate) fn per_try_deadline(&self, started: Instant) -> Option<Instant> {
        self.policy
            .and_then(|p| p.per_try_timeout)
            .map(|t| started + t)
    }

    /// Whether to try again after an attempt that ended in `outcome` (`None`: not the
    /// endpoint's doing, never retried), with `deadline` the route's. A retry takes a place in
    /// the cluster's retry limit (counted as an overflow when there is none).
    pub(crate) fn again(
        &mut self,
        cluster: &Cluster,
        outcome: Option<Outcome>,
        deadline: Option<Instant>,
    ) -> bool {
        let (Some(policy), Some(outcome)) = (self.policy, outcome) else {
            return false;
        };
        let time_left = remaining(deadline).is_none_or(|d| !d.is_zero());
        if !wanted(policy.on, outcome) || !time_left {
            return false;
        }
        if self.done >= policy.num_retries {
            self.refused = Some(Refused::LimitExceeded);
            return false;
        }
        let limits = &cluster.limits;
        let allowed = allowed(&cluster.breakers, limits.active.load(Ordering::Relaxed));
        // This request's previous retry (if any) is over: it no longer counts.
        self.admission = None;
        match Admission::try_new(&limits.retries, allowed) {
            Some(a) => {
                if cluster
                    .ratelimit
                    .as_ref()
                    .is_some_and(|l| !l.allows_retry())
                {
                    self.refused = Some(Refused::RateLimited);
                    return false;
                }
                self.admission = Some(a);
                self.done += 1;
                cluster.stats.retries.inc();
                true
            }
            None => {
                cluster.stats.overflow[3].inc();
                self.refused = Some(Refused::Overflow);
                false
            }
        }
    }

    /// Why the last failure that wanted a retry did not get one, if so.
    pub(crate) fn refused(&self) -> Option<Refused> {
        self.refused
    }

    /// How long to wait before the retry just granted, within `deadline`.
    pub(crate) fn backoff(&self, deadline: Option<Instant>) -> Duration {
        let backoff = backoff(self.done);
        remaining(deadline).map_or(backoff, |d| backoff.min(d))
    }
}

/// Whether `on` asks for a retry after `outcome`.
fn wanted(on: RetryOn, outcome: Outcome) -> bool {
    match outcome {
        Outcome::Success => false,
        Outcome::Status(s) => on.any_5xx || (on.gateway_error && matches!(s, 502..=504)),
        Outcome::ConnectFailure => on.any_5xx || on.gateway_error || on.connect_failure,
        Outcome::Reset => on.any_5xx || on.gateway_error || on.reset,
        Outcome::Timeout => on.any_5xx || on.gateway_error,
    }
}

/// Retries a cluster allows in flight now, with `active` requests in flight: its retry
/// budget's share of them (at least `min_retry_concurrency`), else `max_retries`.
fn allowed(breakers: &CircuitBreakersConfig, active: u32) -> u32 {
    match &breakers.retry_budget {
        Some(b) => {
            ((f64::from(active) * b.budget_percent / 100.0) as u32).max(b.min_retry_concurrency)
        }
        None => breakers.max_retries,
    }
}

/// Jittered exponential backoff: uniformly up to 25 ms × 2^(n−1), at most 250 ms.
fn backoff(n: u32) -> Duration {
    let ceiling = (25u64 << (n.saturating_sub(1)).min(4)).min(250);
    Duration::from_millis(fastrand::u64(1..=ceiling))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(text: &str) -> RetryOn {
        RetryOn::parse(text).unwrap()
    }

    #[test]
    fn retry_conditions() {
        let gateway = on("gateway-error");
        assert!(wanted(gateway, Outcome::Status(503)));
        assert!(!wanted(gateway, Outcome::Status(500)));
        assert!(wanted(gateway, Outcome::Reset));
        assert!(wanted(gateway, Outcome::Timeout));
        assert!(wanted(on("5xx"), Outcome::Status(500)));
        let reset = on("reset");
        assert!(wanted(reset, Outcome::Reset));
        assert!(!wanted(reset, Outcome::ConnectFailure));
        assert!(!wanted(reset, Outcome::Timeout));
        assert!(wanted(on("connect-failure"), Outcome::ConnectFailure));
        for text in ["5xx", "gateway-error", "connect-failure", "reset"] {
            assert!(!wanted(on(text), Outcome::Success), "{text}");
        }
    }

    #[test]
    fn backoff_grows_to_a_ceiling() {
        for n in 1..10 {
            let ceiling = Duration::from_millis((25u64 << (n - 1).min(4)).min(250));
            for _ in 0..50 {
                let b = backoff(n);
                assert!(b >= Duration::from_millis(1) && b <= ceiling, "{n}: {b:?}");
            }
        }
    }

    fn cluster(breakers: &str, on: &str) -> (Cluster, RetryPolicy) {
        let yaml = format!(
            r#"
listeners:
  - address: "127.0.0.1:0"
    filters:
      - type: router
        config:
          virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
                - match: {{ prefix: "/" }}
                  route: {{ cluster: web, retry_policy: {{ retry_on: "{on}", num_retries: 2 }} }}
clusters:
  - name: web
    circuit_breakers: {breakers}
    endpoints: [{{ address: "127.0.0.1:1" }}]
"#
        );
        let cfg = crate::config::parse("t.yaml", &yaml).unwrap();
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
        let cluster = Cluster::standalone(&cfg.clusters[0], &metrics).unwrap();
        let policy = RetryPolicy {
            on: RetryOn::parse(on).unwrap(),
            num_retries: 2,
            per_try_timeout: Some(Duration::from_millis(150)),
        };
        (cluster, policy)
    }

    #[test]
    fn retries_stop_at_num_retries_and_never_follow_a_fault_not_the_endpoints() {
        let (c, policy) = cluster("{}", "5xx");
        assert!(!Retries::new(Some(policy), false).possible(), "a body");
        let mut r = Retries::new(Some(policy), true);
        assert!(r.possible());
        assert!(!r.again(&c, None, None), "not the endpoint's fault");
        assert!(!r.again(&c, Some(Outcome::Success), None));
        assert!(r.again(&c, Some(Outcome::Status(500)), None));
        assert!(r.again(&c, Some(Outcome::Reset), None));
        assert_eq!(r.done(), 2);
        assert_eq!(r.refused(), None);
        assert!(!r.again(&c, Some(Outcome::Reset), None), "num_retries");
        assert_eq!(r.refused(), Some(Refused::LimitExceeded));
        assert_eq!(c.stats.retries.get(), 2);
        let past = Instant::now();
        let mut r = Retries::new(Some(policy), true);
        assert!(
            !r.again(&c, Some(Outcome::Reset), Some(past)),
            "no time left"
        );
        let started = Instant::now();
        assert_eq!(
            r.per_try_deadline(started),
            Some(started + Duration::from_millis(150))
        );
    }

    #[test]
    fn the_retry_limit_holds_across_requests() {
        let (c, policy) = cluster("{ max_retries: 1 }", "5xx");
        let mut a = Retries::new(Some(policy), true);
        let mut b = Retries::new(Some(policy), true);
        assert!(a.again(&c, Some(Outcome::Status(503)), None));
        assert!(
            !b.again(&c, Some(Outcome::Status(503)), None),
            "one retry in flight at a time"
        );
        assert_eq!(c.stats.overflow[3].get(), 1);
        assert_eq!(b.refused(), Some(Refused::Overflow));
        drop(a);
        assert!(b.again(&c, Some(Outcome::Status(503)), None));
    }

    #[test]
    fn a_retry_budget_scales_with_requests_in_flight() {
        let (c, _) = cluster(
            "{ retry_budget: { budget_percent: 20, min_retry_concurrency: 3 } }",
            "5xx",
        );
        assert_eq!(allowed(&c.breakers, 0), 3);
        assert_eq!(allowed(&c.breakers, 100), 20);
        let (c, _) = cluster("{ max_retries: 7 }", "5xx");
        assert_eq!(allowed(&c.breakers, 100), 7);
    }
}
