//! The latency rule's arithmetic: how far an endpoint's latency is from the cluster's, whether
//! that is more than noise, and how its weight multiplier moves. The decision step
//! ([`super::Slots::weigh_by_latency`]) applies it per endpoint; the reasoning behind the
//! numbers is in the [module documentation](super#latency-weighting-as-a-control-loop).
//!
//! Everything works on the logarithm of the multiplier (`u = ln m`), so a step down and the same
//! step up cancel and the floor and the cap are symmetric in effect.

use super::Policy;

/// Gain of the latency rule, per signal window: an endpoint whose latency is `e` (in log terms)
/// beyond the dead band moves its multiplier by `−0.25 × e` in log terms over one window's worth
/// of decisions (spread over the decisions in the window).
pub const LATENCY_GAIN: f64 = 0.25;

/// Dead band in standard errors: a latency difference counts only beyond this many standard
/// errors of the two latencies compared (3: about one false move per 700 comparisons of equal
/// endpoints with normal noise).
pub const LATENCY_CONFIDENCE: f64 = 3.0;

/// The spread of one request's latency relative to the latency, assumed for the standard
/// error `LATENCY_CV / √requests` of a window's latency (2: a mean of exponential latencies has
/// 1; an upper quantile's estimate, as the controller passes, about twice that).
pub const LATENCY_CV: f64 = 2.0;

/// Latency resolution, seconds: latencies are compared as `ln((a + r) / (b + r))`, so
/// differences well below a millisecond never move weights however large their ratio.
pub const LATENCY_RESOLUTION: f64 = 0.001;

/// Return towards the base weight per signal window while an endpoint's latency is
/// indistinguishable from the cluster's (or cannot be judged): `u` shrinks by this fraction of
/// itself plus [`LATENCY_DECAY_MIN`], so it reaches exactly the base weight in finite time.
pub const LATENCY_DECAY: f64 = 0.5;

/// The least return towards the base weight per signal window, in log terms (see
/// [`LATENCY_DECAY`]).
pub const LATENCY_DECAY_MIN: f64 = 0.05;

/// The latency loop's constants for one decision step: the policy's floor, cap, relative dead
/// band and step limit (all in log terms), with the module's gain, confidence and decay.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct LatencyLoop {
    /// `ln` of the lowest multiplier.
    pub(super) floor: f64,
    /// `ln` of the highest multiplier.
    pub(super) cap: f64,
    /// Smallest dead band, `ln(1 + hysteresis)`.
    pub(super) band: f64,
    /// Largest change of `u` in one decision, `ln(1 + max_step)`.
    pub(super) step: f64,
    pub(super) gain: f64,
    pub(super) confidence: f64,
    pub(super) cv: f64,
    pub(super) resolution: f64,
    pub(super) decay: f64,
    pub(super) decay_min: f64,
}

/// One endpoint's latency against the cluster's: the difference and the dead band, in log
/// terms.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Comparison {
    /// `ln((latency + r) / (reference + r))`.
    pub(super) error: f64,
    /// The dead band for this comparison.
    pub(super) band: f64,
}

impl Comparison {
    /// The error beyond the dead band, with its sign; 0 inside it.
    pub(super) fn excess(&self) -> f64 {
        if self.error.abs() > self.band {
            self.error - self.band.copysign(self.error)
        } else {
            0.0
        }
    }
}

impl LatencyLoop {
    pub(super) fn new(policy: &Policy) -> Self {
        let floor = f64::from(policy.min_weight_percent.max(1)) / 100.0;
        let cap = f64::from(
            policy
                .max_weight_percent
                .max(policy.min_weight_percent)
                .max(1),
        ) / 100.0;
        LatencyLoop {
            floor: floor.ln(),
            cap: cap.ln(),
            band: (1.0 + f64::from(policy.hysteresis_percent) / 100.0).ln(),
            step: (1.0 + f64::from(policy.max_step_percent) / 100.0).ln(),
            gain: LATENCY_GAIN,
            confidence: LATENCY_CONFIDENCE,
            cv: LATENCY_CV,
            resolution: LATENCY_RESOLUTION,
            decay: LATENCY_DECAY,
            decay_min: LATENCY_DECAY_MIN,
        }
    }

    /// `latency` (over `requests`) against the cluster's `reference` (a median of endpoints
    /// with `reference_requests` between them): the log difference, and a dead band of the
    /// relative band or `confidence` standard errors of the difference, whichever is wider.
    pub(super) fn compare(
        &self,
        reference: f64,
        latency: f64,
        requests: f64,
        reference_requests: f64,
    ) -> Comparison {
        let r = self.resolution;
        let error = ((latency.max(0.0) + r) / (reference.max(0.0) + r)).ln();
        let se = self.cv * (1.0 / requests.max(1.0) + 1.0 / reference_requests.max(1.0)).sqrt();
        Comparison {
            error,
            band: self.band.max(self.confidence * se),
        }
    }

    /// The multiplier after one decision from `current`. With an `excess` beyond the dead
    /// band, `u` moves by `−gain × excess` over a window (`fraction` of a window has passed since
    /// the last decision), at most `step` — unless the endpoint's latency already moves the right
    /// way by more than the relative band since the last decision (`trend`, in log terms): then
    /// the moves made are still arriving, and `u` holds (anti-windup). Without an excess, `u`
    /// returns towards 0 (the base weight) by `decay × |u| + decay_min` per window, reaching it
    /// exactly (the base weight is 1, or the nearer bound when the floor and the cap exclude 1);
    /// an excess that points home moves `u` at least that fast, so the pull home is no weaker
    /// just outside the band than inside it. Always within the floor and the cap.
    pub(super) fn next(&self, current: f64, excess: f64, trend: f64, fraction: f64) -> f64 {
        let u = if current > 0.0 && current.is_finite() {
            current.ln()
        } else {
            0.0
        };
        let fraction = fraction.clamp(0.0, 1.0);
        // The base weight, unless the operator's bounds exclude it.
        let home = 0.0f64.clamp(self.floor, self.cap);
        let off = u - home;
        let back = ((self.decay * off.abs() + self.decay_min) * fraction).min(self.step);
        // The return to base: by `back`, not past it.
        let returned = if off.abs() <= back {
            home
        } else {
            u - back.copysign(off)
        };
        let moved = if excess != 0.0 {
            let recovering =
                (excess > 0.0 && trend < -self.band) || (excess < 0.0 && trend > self.band);
            let integral = (-self.gain * excess * fraction).clamp(-self.step, self.step);
            if recovering {
                u
            } else if integral * off < 0.0 && integral.abs() < back {
                // Towards the base weight, at least as fast as inside the band: the pull home
                // does not weaken just outside it.
                returned
            } else {
                u + integral
            }
        } else {
            returned
        };
        let moved = moved.clamp(self.floor, self.cap);
        if moved == 0.0 {
            1.0
        } else {
            moved.exp()
        }
    }

    /// How an endpoint's smoothed latency moved since the last decision, in log terms (with the
    /// resolution, as in [`LatencyLoop::compare`]); 0 the first time.
    pub(super) fn trend(&self, previous: Option<f64>, latency: f64) -> f64 {
        let r = self.resolution;
        previous.map_or(0.0, |p| ((latency.max(0.0) + r) / (p.max(0.0) + r)).ln())
    }
}

/// The share of a signal window a decision moves an endpoint's multiplier by: the new evidence
/// since the multiplier was last decided (the time since then, but no more than the span its
/// signals cover, `requests / rps`) over the configured `window` (or over that span, when the
/// window is 0 or shorter), at most 1. The first time, the whole span counts as new.
///
/// So a window that holds only a moment of data — the first decisions after a start or a
/// restart, when the rate window has not filled — moves the multiplier by that moment's share
/// of a window, however long ago the last decision was: a restarted controller does not turn
/// half a second of evidence into a window's move.
pub(super) fn window_fraction(
    since_ms: Option<u64>,
    requests: f64,
    rps: f64,
    window: std::time::Duration,
) -> f64 {
    let span_s = requests / rps;
    if !(span_s.is_finite() && span_s > 0.0) {
        return 1.0;
    }
    let nominal = window.as_secs_f64().max(span_s);
    let new = since_ms.map_or(span_s, |since| (since as f64 / 1000.0).min(span_s));
    (new / nominal).min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn control() -> LatencyLoop {
        LatencyLoop::new(&Policy::default())
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn the_defaults_in_log_terms() {
        let c = control();
        assert!(close(c.floor, 0.1f64.ln()) && close(c.cap, 2.0f64.ln()));
        assert!(close(c.band, 1.1f64.ln()) && close(c.step, 1.5f64.ln()));
        assert_eq!((c.gain, c.confidence, c.cv), (0.25, 3.0, 2.0));
    }

    #[test]
    fn the_dead_band_is_the_relative_band_or_three_standard_errors() {
        let c = control();
        // Many requests: the 10 % band.
        let many = c.compare(0.100, 0.105, 1e6, 1e6);
        assert!(close(many.band, 1.1f64.ln()));
        assert_eq!(many.excess(), 0.0, "5 % slower is inside");
        // 400 and 1,200 requests: 3 × 2 × √(1/400 + 1/1200) = 0.346.
        let few = c.compare(0.100, 0.200, 400.0, 1_200.0);
        assert!(close(
            few.band,
            6.0 * (1.0f64 / 400.0 + 1.0 / 1_200.0).sqrt()
        ));
        let e = (0.201f64 / 0.101).ln();
        assert!(close(few.error, e) && close(few.excess(), e - few.band));
        let faster = c.compare(0.200, 0.100, 400.0, 1_200.0);
        assert!(faster.excess() < 0.0 && close(faster.excess(), -(e - few.band)));
    }

    #[test]
    fn the_resolution_hides_sub_millisecond_differences() {
        let c = control();
        // 0.2 ms against 0.1 ms is twice as slow, but a tenth of a millisecond.
        let tiny = c.compare(0.0001, 0.0002, 1e6, 1e6);
        assert!(tiny.error < 0.1 && tiny.excess() == 0.0, "{tiny:?}");
        assert!(
            c.compare(0.0, 0.0, 1e6, 1e6).error == 0.0,
            "zero latencies compare"
        );
        assert!(c.compare(0.002, 0.020, 1e6, 1e6).excess() > 1.0);
    }

    #[test]
    fn an_excess_moves_the_log_multiplier_by_the_gain_per_window() {
        let c = control();
        // A sixth of a window: −0.25 × 0.6 / 6.
        assert!(close(c.next(1.0, 0.6, 0.0, 1.0 / 6.0).ln(), -0.025));
        assert!(close(c.next(1.2, -0.6, 0.0, 0.5).ln(), 1.2f64.ln() + 0.075));
        // Towards the base weight, at least as fast as the return inside the band.
        let back = (0.5 * 2.0f64.ln() + 0.05) * 0.5;
        assert!(close(c.next(0.5, -0.6, 0.0, 0.5).ln(), 0.5f64.ln() + back));
        assert!(
            close(c.next(0.5, -8.0, 0.0, 0.5), 0.75),
            "or the integral, to the step"
        );
        // A whole window of a large excess is limited to the step.
        assert!(close(c.next(1.0, 4.0, 0.0, 1.0), 1.0 / 1.5));
        assert!(close(c.next(1.0, -4.0, 0.0, 1.0), 1.5));
        // And the floor and the cap.
        assert!(close(c.next(0.11, 4.0, 0.0, 1.0), 0.1));
        assert!(close(c.next(1.9, -4.0, 0.0, 1.0), 2.0));
    }

    #[test]
    fn a_latency_already_recovering_holds_the_multiplier() {
        let c = control();
        // Slower, but 20 % faster than at the last decision: the earlier moves are arriving.
        assert_eq!(c.next(0.5, 1.0, -0.2, 0.5), 0.5);
        assert_eq!(c.next(0.5, -1.0, 0.2, 0.5), 0.5);
        // Within the band the trend is noise: the move goes on.
        assert!(c.next(0.5, 1.0, -0.05, 0.5) < 0.5);
        assert!(c.next(0.5, 1.0, 0.2, 0.5) < 0.5, "getting worse: on");
        assert!(close(c.trend(Some(0.099), 0.199), 2.0f64.ln()));
        assert_eq!(c.trend(None, 0.2), 0.0);
    }

    #[test]
    fn without_an_excess_the_multiplier_returns_exactly_to_base() {
        let c = control();
        // Half a window from ln 0.5: (0.5 × 0.693 + 0.05) × 0.5 back.
        let back = 0.5f64.ln() + (0.5 * 2.0f64.ln() + 0.05) * 0.5;
        assert!(close(c.next(0.5, 0.0, 0.0, 0.5).ln(), back));
        assert!(close(
            c.next(1.5, 0.0, 0.0, 0.5).ln(),
            1.5f64.ln() * 0.75 - 0.025
        ));
        assert_eq!(
            c.next(0.95, 0.0, 0.0, 1.0),
            1.0,
            "0.05 of a window or less: home"
        );
        assert_eq!(c.next(1.005, 0.0, 0.0, 1.0 / 6.0), 1.0);
        assert_eq!(c.next(1.0, 0.0, 0.0, 1.0), 1.0);
        // Bounds that exclude 1: the nearer one is home.
        let high = LatencyLoop::new(&Policy {
            min_weight_percent: 150,
            max_weight_percent: 200,
            ..Policy::default()
        });
        assert!(close(high.next(1.6, 0.0, 0.0, 1.0), 1.5));
        assert!(
            close(high.next(1.0, 0.0, 0.0, 0.0), 1.5),
            "clamped into the bounds"
        );
    }

    #[test]
    fn the_window_fraction_is_new_evidence_over_the_signal_window() {
        let (w30, w0) = (Duration::from_secs(30), Duration::ZERO);
        // A full window of signals (3,000 requests at 100/s: 30 s).
        assert_eq!(
            window_fraction(Some(5_000), 3_000.0, 100.0, w30),
            5.0 / 30.0
        );
        assert_eq!(window_fraction(Some(60_000), 3_000.0, 100.0, w30), 1.0);
        assert_eq!(
            window_fraction(None, 3_000.0, 100.0, w30),
            1.0,
            "first time"
        );
        assert_eq!(window_fraction(Some(5_000), 3_000.0, 100.0, w0), 5.0 / 30.0);
        assert_eq!(
            window_fraction(Some(5_000), 0.0, 0.0, w30),
            1.0,
            "unknown span"
        );
        // Half a second of signals after a restart, the last decision long before: half a
        // second's share of the window, not a whole window.
        assert_eq!(window_fraction(Some(600_000), 6.0, 12.0, w30), 0.5 / 30.0);
        assert_eq!(
            window_fraction(None, 6.0, 12.0, w30),
            0.5 / 30.0,
            "first time"
        );
        // Without a configured window the span is the window, as before.
        assert_eq!(window_fraction(Some(600_000), 6.0, 12.0, w0), 1.0);
    }
}
