//! Queueing pressure: a request rate that rises with queueing, for scaling on the leading
//! signal of latency.
//!
//! ```text
//! in_flight = Σ rate(request_duration_seconds_sum)          Little's law: L = λ·W
//! pressure  = max(rate, in_flight / target)                 = rate · max(1, W / target)
//! ```
//!
//! `rate` is the requests per second, `W` their mean latency over the same window and `target`
//! the latency the service should keep. While the mean latency is within its target the
//! pressure *is* the request rate, so an HPA on it behaves exactly as one on the rate (the
//! same `averageValue` target per pod). When requests start to queue, the mean latency and so
//! the number of requests in flight grow faster than the rate does: in an M/M/c queue the wait
//! goes as `1/(1-ρ)`, so the last few per cent of utilisation multiply it, and once a pod is
//! saturated its *completed* requests per second stop growing at all (they are capped at its
//! capacity) while the queue, and `L`, keep growing with the unserved demand. The pressure
//! therefore leads the rate twice: it rises while the rate still looks acceptable, and it keeps
//! rising where the measured rate has flattened at capacity.
//!
//! Why the mean and not p99: `L = λ·W` holds for the mean exactly, both parts are counters'
//! rates (one PromQL expression, no histogram interpolation), and the mean of a window is as
//! stable as the rate itself. A p99 reacts earlier still but a single slow request can move it.
//!
//! Why a floor at the rate: a fast service (latency far below target) would otherwise ask for
//! fewer pods than its request rate needs.

use std::time::Duration;

/// The `queueing` option of the adapter's built-in request rate and of the simulator's
/// External rate, as written (`D` is how the file writes a duration).
#[derive(Clone, Copy, Debug, PartialEq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize, serde::Deserialize),
    serde(deny_unknown_fields)
)]
pub struct QueueingConfig<D> {
    /// The mean latency the service should keep (required), e.g. `200ms`; above 0.
    pub target: D,
}

impl<D: Copy + Into<Duration>> QueueingConfig<D> {
    /// The target in seconds, or the problem (field under `queueing`, message).
    pub fn resolve(&self) -> Result<f64, (&'static str, &'static str)> {
        let t: Duration = self.target.into();
        if t.is_zero() {
            return Err(("target", "must be above 0"));
        }
        Ok(t.as_secs_f64())
    }
}

/// The queueing pressure of `rate` requests per second with `in_flight` of them in flight on
/// average (`rate × mean latency`), against a latency `target` in seconds; `None` when an input
/// is not finite, negative, or the target not above 0.
pub fn pressure(rate: f64, in_flight: f64, target: f64) -> Option<f64> {
    if !(rate.is_finite() && in_flight.is_finite() && target.is_finite())
        || rate < 0.0
        || in_flight < 0.0
        || target <= 0.0
    {
        return None;
    }
    Some(rate.max(in_flight / target))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn below_the_target_it_is_the_rate() {
        // 100 req/s at 50 ms: 5 in flight; target 200 ms.
        assert_eq!(pressure(100.0, 5.0, 0.2), Some(100.0));
    }

    #[test]
    fn above_the_target_it_grows_with_the_latency() {
        // 100 req/s at 600 ms (three times the target): 60 in flight.
        let p = pressure(100.0, 60.0, 0.2).unwrap();
        assert!((p - 300.0).abs() < 1e-9, "{p}");
    }

    #[test]
    fn a_saturated_service_shows_its_queue() {
        // Completed requests capped at 100/s; the backlog doubles the latency each time.
        let mut last = 0.0;
        for latency in [0.4, 0.8, 1.6] {
            let p = pressure(100.0, 100.0 * latency, 0.2).unwrap();
            assert!(p > last, "{p} after {last}");
            last = p;
        }
    }

    #[test]
    fn a_zero_target_is_refused() {
        let c = QueueingConfig {
            target: Duration::ZERO,
        };
        assert_eq!(c.resolve(), Err(("target", "must be above 0")));
        let c = QueueingConfig {
            target: Duration::from_millis(250),
        };
        assert_eq!(c.resolve(), Ok(0.25));
    }

    #[test]
    fn nonsense_is_refused() {
        assert_eq!(pressure(f64::NAN, 1.0, 0.2), None);
        assert_eq!(pressure(1.0, -1.0, 0.2), None);
        assert_eq!(pressure(1.0, 1.0, 0.0), None);
    }

    proptest! {
        #[test]
        fn never_below_the_rate_and_monotone_in_latency(
            rate in 0.0..1e6f64,
            latency in 0.0..100.0f64,
            more in 0.0..100.0f64,
            target in 1e-3..10.0f64,
        ) {
            let p = pressure(rate, rate * latency, target).unwrap();
            prop_assert!(p >= rate);
            let q = pressure(rate, rate * (latency + more), target).unwrap();
            prop_assert!(q >= p);
        }
    }
}
