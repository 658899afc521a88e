//! What a step adds up to: its latency quantiles, its share of traffic per pod, and its part of
//! the run's [`Summary`] (requests, failures, SLO violations, pod-seconds, fault drains).

use super::pods::Pod;
use super::Summary;
use crate::scenario::{Fault, Slo};

/// The median and p99 of a step's served requests, given as `(latency, requests)` (sorted here,
/// by latency); `(0, 0)` when nothing was served.
pub(super) fn step_quantiles(step_lat: &mut [(f64, f64)]) -> (f64, f64) {
    step_lat.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    let served: f64 = step_lat.iter().map(|x| x.1).sum();
    let quantile = |q: f64| {
        let mut acc = 0.0;
        for &(l, n) in step_lat.iter() {
            acc += n;
            if acc >= q * served {
                return l;
            }
        }
        0.0
    };
    if served > 0.0 {
        (quantile(0.5), quantile(0.99))
    } else {
        (0.0, 0.0)
    }
}

/// Each pod's share of the step's `assigned` requests, by creation index, for the first
/// `shares.len()` pods (0 for pods that no longer exist).
pub(super) fn fill_shares(shares: &mut [f64], pods: &[Pod], assigned: &[f64]) {
    shares.fill(0.0);
    let total_assigned: f64 = assigned.iter().sum();
    if total_assigned > 0.0 {
        for (i, p) in pods.iter().enumerate().take(assigned.len()) {
            if p.index < shares.len() {
                shares[p.index] = assigned[i] / total_assigned;
            }
        }
    }
}

impl Summary {
    /// Adds a step of `dt` seconds: `offered` requests, `failed` of them, at step p99 `p99`
    /// (seconds), with `pods` pods existing; the step violates the SLO when its p99 or its
    /// failure ratio is above the bound.
    pub(super) fn add_step(
        &mut self,
        offered: f64,
        failed: f64,
        p99: f64,
        pods: usize,
        dt: f64,
        slo: &Slo,
    ) {
        self.requests += offered;
        self.failed += failed;
        if p99 > slo.p99.secs() || (offered > 0.0 && failed / offered > slo.errors) {
            self.slo_violation_seconds += dt;
        }
        self.pod_seconds += pods as f64 * dt;
        self.max_pods = self.max_pods.max(pods);
    }

    /// Notes, for each fault that has started and not drained yet, whether its pod is drained
    /// at `now`: gone, not an endpoint, or given under 10 % of its fair share of `offered`.
    pub(super) fn note_drains(
        &mut self,
        faults: &[Fault],
        pods: &[Pod],
        endpoints: &[usize],
        assigned: &[f64],
        offered: f64,
        now: f64,
    ) {
        for (fi, f) in faults.iter().enumerate() {
            if self.drain_seconds[fi].is_some() || now < f.at.secs() {
                continue;
            }
            let pos = pods.iter().position(|p| p.index == f.pod);
            let drained = match pos {
                None => true,
                Some(i) => {
                    let fair = if endpoints.is_empty() {
                        0.0
                    } else {
                        offered / endpoints.len() as f64
                    };
                    !endpoints.contains(&i) || assigned[i] < 0.1 * fair
                }
            };
            if drained {
                self.drain_seconds[fi] = Some(now - f.at.secs());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fixtures::scenario;

    #[test]
    fn quantiles_are_taken_over_requests_not_entries() {
        let mut lat = vec![(0.5, 1.0), (0.01, 98.0), (0.1, 1.0)];
        assert_eq!(step_quantiles(&mut lat), (0.01, 0.1));
        assert_eq!(lat[0], (0.01, 98.0), "sorted by latency");
        assert_eq!(step_quantiles(&mut []), (0.0, 0.0));
        assert_eq!(step_quantiles(&mut [(0.3, 0.0)]), (0.0, 0.0));
    }

    #[test]
    fn steps_add_to_the_summary_and_violate_the_slo_by_latency_or_errors() {
        let sc =
            scenario("service:\n  pods: 1\n  capacity: 100\nslo: { p99: 100ms, errors: 0.01 }\n");
        let mut s = Summary::default();
        s.add_step(100.0, 1.0, 0.1, 3, 0.5, &sc.slo);
        assert_eq!(s.slo_violation_seconds, 0.0, "at the bounds");
        s.add_step(100.0, 2.0, 0.01, 5, 0.5, &sc.slo);
        s.add_step(100.0, 0.0, 0.2, 2, 0.5, &sc.slo);
        s.add_step(0.0, 0.0, 0.0, 2, 0.5, &sc.slo);
        assert_eq!(s.slo_violation_seconds, 1.0);
        assert_eq!((s.requests, s.failed), (300.0, 3.0));
        assert_eq!(s.pod_seconds, 6.0);
        assert_eq!(s.max_pods, 5);
    }

    #[test]
    fn a_fault_drains_when_its_pod_gets_under_a_tenth_of_its_fair_share() {
        let sc = scenario(
            "service:\n  pods: 3\n  capacity: 100\n  faults:\n    - { at: 10s, pod: 1, slow: 10 }\n    - { at: 10s, pod: 2, die: true }\n",
        );
        let pods: Vec<Pod> = (0..2).map(|i| Pod::new(i, 0.0, true, &sc)).collect();
        let mut s = Summary {
            drain_seconds: vec![None; 2],
            ..Summary::default()
        };
        let f = &sc.service.faults;
        s.note_drains(f, &pods, &[0, 1], &[50.0, 50.0], 100.0, 5.0);
        assert_eq!(s.drain_seconds, [None, None], "not started");
        s.note_drains(f, &pods, &[0, 1], &[50.0, 50.0], 100.0, 10.0);
        assert_eq!(s.drain_seconds, [None, Some(0.0)], "pod-2 is gone");
        s.note_drains(f, &pods, &[0, 1], &[96.0, 4.0], 100.0, 12.0);
        assert_eq!(s.drain_seconds, [Some(2.0), Some(0.0)]);
        s.note_drains(f, &pods, &[0], &[100.0, 0.0], 100.0, 20.0);
        assert_eq!(s.drain_seconds, [Some(2.0), Some(0.0)], "noted once");
        let mut s = Summary {
            drain_seconds: vec![None; 2],
            ..Summary::default()
        };
        s.note_drains(f, &pods, &[0], &[100.0, 0.0], 100.0, 11.0);
        assert_eq!(s.drain_seconds[0], Some(1.0), "not an endpoint");
    }

    #[test]
    fn shares_are_by_creation_index_for_the_first_pods() {
        let sc = scenario("service:\n  pods: 4\n  capacity: 100\n");
        let pods: Vec<Pod> = [0, 2, 5]
            .into_iter()
            .map(|i| Pod::new(i, 0.0, true, &sc))
            .collect();
        let mut shares = vec![9.0; 4];
        fill_shares(&mut shares, &pods, &[25.0, 75.0, 100.0]);
        assert_eq!(shares, [0.125, 0.0, 0.375, 0.0]);
        fill_shares(&mut shares, &pods, &[0.0, 0.0, 0.0]);
        assert_eq!(shares, [0.0; 4]);
    }
}
