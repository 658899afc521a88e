//! Balancing: which pods are endpoints this step, their weights, and how the step's requests
//! are split over them by the configured balancer — every pick made by gofe-core's balancing
//! code, as the proxy makes it.

use gofe_core::balance::{least_request, Candidate, WeightedSequence};
use gofe_core::outlier::BreakerState;

use super::pods::{Flights, Pod};
use crate::scenario::Balancer;

/// The balancer's state across steps, and this step's endpoints and assignment.
pub(super) struct Balancing {
    balancer: Balancer,
    /// The clients' timeout, seconds: no request stays in flight longer.
    timeout: f64,
    /// Candidate draws of the power-of-two-choices balancers.
    rng: fastrand::Rng,
    /// The smooth weighted round-robin order over `seq_members` (pod indices) at `seq_weights`.
    seq: WeightedSequence,
    seq_members: Vec<usize>,
    seq_weights: Vec<u32>,
    /// This step's weights, one per endpoint.
    weights: Vec<u32>,
    /// The round robin's position.
    ticket: u64,
    /// This step's endpoints, as positions in the pod list.
    pub(super) endpoints: Vec<usize>,
    /// This step's requests per pod, by position in the pod list.
    pub(super) assigned: Vec<f64>,
    /// The power-of-two-choices balancers' view of each pod's requests in flight this step,
    /// by position in the pod list.
    flights: Flights,
}

impl Balancing {
    pub(super) fn new(balancer: Balancer, seed: u64, timeout: f64) -> Self {
        Balancing {
            balancer,
            timeout,
            rng: fastrand::Rng::with_seed(seed),
            seq: WeightedSequence::default(),
            seq_members: Vec::new(),
            seq_weights: Vec::new(),
            weights: Vec::new(),
            ticket: 0,
            endpoints: Vec::new(),
            assigned: Vec::new(),
            flights: Flights::default(),
        }
    }

    /// The endpoints at `now`: ready pods whose breaker is not open. A dead pod stays an
    /// endpoint until it is noticed.
    pub(super) fn select_endpoints(&mut self, pods: &[Pod], now: f64) {
        self.endpoints.clear();
        self.endpoints.extend(
            pods.iter()
                .enumerate()
                .filter(|(_, p)| {
                    now >= p.ready_at && !matches!(p.breaker.state(), BreakerState::Open { .. })
                })
                .map(|(i, _)| i),
        );
    }

    /// The endpoints' weights: 1, or for the `gofe` balancer the controller's (the base weight
    /// for endpoints it has not decided on; all 1 if it gave all 0). The round-robin order is
    /// rebuilt only when the members or their weights change.
    pub(super) fn refresh_weights(&mut self, pods: &[Pod]) {
        self.weights.clear();
        self.weights.resize(self.endpoints.len(), 1);
        if self.balancer == Balancer::Gofe {
            for (w, &i) in self.weights.iter_mut().zip(&self.endpoints) {
                *w = pods[i]
                    .gofe_weight
                    .unwrap_or(gofe_core::policy::WEIGHT_SCALE as u32);
            }
            if self.weights.iter().all(|&w| w == 0) {
                self.weights.fill(1);
            }
        }
        let same_members = self.endpoints.len() == self.seq_members.len()
            && self
                .endpoints
                .iter()
                .zip(&self.seq_members)
                .all(|(&i, &m)| pods[i].index == m);
        if !same_members || self.weights != self.seq_weights {
            self.seq = WeightedSequence::new(&self.weights);
            self.seq_members.clear();
            self.seq_members
                .extend(self.endpoints.iter().map(|&i| pods[i].index));
            self.seq_weights.clone_from(&self.weights);
        }
    }

    /// Splits `offered` requests over the endpoints in at most `max(256, 4 × endpoints)` equal
    /// picks; returns the requests that found no endpoint (all of them without endpoints).
    /// `inv_dt` turns a step's requests into a rate.
    pub(super) fn assign(&mut self, pods: &[Pod], offered: f64, inv_dt: f64) -> f64 {
        self.assigned.clear();
        self.assigned.resize(pods.len(), 0.0);
        let mut failed = 0.0;
        if self.endpoints.is_empty() || offered <= 0.0 {
            failed += offered;
            return failed;
        }
        let picks = (offered.ceil() as usize).clamp(1, (4 * self.endpoints.len()).max(256));
        let chunk = offered / picks as f64;
        match self.balancer {
            Balancer::RoundRobin | Balancer::Gofe => self.round_robin(picks, chunk),
            Balancer::LeastRequest => {
                self.view_flights(pods, picks, inv_dt);
                self.least_request(picks, chunk);
            }
            Balancer::PeakEwma => {
                self.view_flights(pods, picks, inv_dt);
                self.peak_ewma(pods, picks, chunk);
            }
        }
        failed
    }

    /// The endpoints' requests in flight as the step's picks see them: each pick is at its
    /// moment in the step (the `j`-th of `picks` at `(j + ½) / picks` of it), and sees the
    /// requests in flight at the step's start and the step's own so far, less those answered or
    /// given up on since ([`super::pods::Drain`]). Counting them as they come, request by
    /// request, keeps a step's picks from piling onto the pod that looked emptiest at its
    /// start, and makes the split the same whatever the step's length.
    fn view_flights(&mut self, pods: &[Pod], picks: usize, inv_dt: f64) {
        let pick = 1.0 / inv_dt / picks as f64;
        self.flights.build(pods, picks, pick, self.timeout);
    }

    /// Smooth weighted round robin over the (controller's) weights.
    fn round_robin(&mut self, picks: usize, chunk: f64) {
        for _ in 0..picks {
            let e = self.seq.pick(self.ticket).unwrap_or(0);
            self.ticket = self.ticket.wrapping_add(1);
            self.assigned[self.endpoints[e]] += chunk;
        }
    }

    /// Two random candidates; the one with fewer requests in flight (as of the pick's moment
    /// in the step: [`Balancing::view_flights`]) wins.
    fn least_request(&mut self, picks: usize, chunk: f64) {
        for j in 0..picks {
            let (a, b) = self.candidates();
            let m = self.flights.moment(j);
            let active = |i: usize| (self.flights.at(i, &m, self.assigned[i]) * 1000.0) as u64;
            let pick = if least_request(
                Candidate {
                    active: active(a),
                    weight: 1,
                },
                Candidate {
                    active: active(b),
                    weight: 1,
                },
            ) {
                a
            } else {
                b
            };
            self.assigned[pick] += chunk;
        }
    }

    /// Two random candidates; the lower peak-EWMA latency × (requests in flight + 1) wins.
    fn peak_ewma(&mut self, pods: &[Pod], picks: usize, chunk: f64) {
        for j in 0..picks {
            let (a, b) = self.candidates();
            let m = self.flights.moment(j);
            let cost = |i: usize| pods[i].ewma * (self.flights.at(i, &m, self.assigned[i]) + 1.0);
            let pick = if cost(a) <= cost(b) { a } else { b };
            self.assigned[pick] += chunk;
        }
    }

    /// Two candidates drawn in proportion to weight; every weight is 1 here, so a uniform draw
    /// is the same draw as `seq.pick(random)` on the all-ones cycle, without its 64-bit
    /// division.
    fn candidates(&mut self) -> (usize, usize) {
        let a = self.endpoints[self.rng.usize(..self.endpoints.len())];
        let b = self.endpoints[self.rng.usize(..self.endpoints.len())];
        (a, b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::fixtures::{approx, scenario};
    use gofe_core::outlier::{EjectReason, EjectionTimes};
    use std::time::Duration;

    fn pods(n: usize) -> Vec<Pod> {
        let sc =
            scenario("service:\n  pods: 1\n  capacity: 100\n  startup: 10s\n  readiness: 5s\n");
        (0..n).map(|i| Pod::new(i, 0.0, true, &sc)).collect()
    }

    fn balanced(balancer: Balancer, pods: &[Pod], offered: f64) -> (Balancing, f64) {
        let mut b = Balancing::new(balancer, 1, 1.0);
        b.select_endpoints(pods, 0.0);
        b.refresh_weights(pods);
        let failed = b.assign(pods, offered, 1.0);
        (b, failed)
    }

    #[test]
    fn endpoints_are_ready_pods_with_a_breaker_not_open_dead_ones_included() {
        let mut ps = pods(4);
        let sc =
            scenario("service:\n  pods: 1\n  capacity: 100\n  startup: 10s\n  readiness: 5s\n");
        ps[1] = Pod::new(1, 0.0, false, &sc); // ready at 15 s
        ps[2].breaker.trip(
            0,
            EjectionTimes {
                base: Duration::from_secs(30),
                max: Duration::from_secs(30),
            },
            EjectReason::Consecutive5xx,
        );
        ps[3].life = super::super::pods::Life::Dead { at_ms: 0 };
        let mut b = Balancing::new(Balancer::RoundRobin, 1, 1.0);
        b.select_endpoints(&ps, 1.0);
        assert_eq!(b.endpoints, [0, 3]);
        b.select_endpoints(&ps, 15.0);
        assert_eq!(b.endpoints, [0, 1, 3]);
    }

    #[test]
    fn round_robin_splits_evenly_and_counts_nothing_as_failed() {
        let ps = pods(4);
        let (b, failed) = balanced(Balancer::RoundRobin, &ps, 400.0);
        assert_eq!(failed, 0.0);
        assert_eq!(b.assigned, [100.0; 4]);
    }

    #[test]
    fn without_endpoints_every_request_fails() {
        let mut ps = pods(2);
        for p in &mut ps {
            p.ready_at = 100.0;
        }
        let (b, failed) = balanced(Balancer::LeastRequest, &ps, 50.0);
        assert_eq!(failed, 50.0);
        assert_eq!(b.assigned, [0.0, 0.0], "one entry per pod still");
    }

    #[test]
    fn gofe_weights_are_the_controllers_with_the_base_weight_for_undecided_pods() {
        let mut ps = pods(3);
        ps[0].gofe_weight = Some(0);
        ps[1].gofe_weight = Some(300);
        let (b, _) = balanced(Balancer::Gofe, &ps, 400.0);
        assert_eq!(b.weights, [0, 300, 100]);
        assert_eq!(b.assigned, [0.0, 300.0, 100.0]);
        for p in &mut ps {
            p.gofe_weight = Some(0);
        }
        let (b, _) = balanced(Balancer::Gofe, &ps, 300.0);
        assert_eq!(b.weights, [1, 1, 1], "all zero: balance over all");
    }

    #[test]
    fn the_round_robin_order_is_kept_while_members_and_weights_stay() {
        let ps = pods(3);
        let mut b = Balancing::new(Balancer::RoundRobin, 1, 1.0);
        b.select_endpoints(&ps, 0.0);
        b.refresh_weights(&ps);
        b.assign(&ps, 1.0, 1.0);
        b.refresh_weights(&ps);
        b.assign(&ps, 1.0, 1.0);
        assert_eq!(
            b.assigned,
            [0.0, 1.0, 0.0],
            "the second pick continues the cycle"
        );
        assert_eq!(b.seq_members, [0, 1, 2]);
    }

    #[test]
    fn least_request_avoids_a_pod_with_many_requests_in_flight() {
        let mut ps = pods(3);
        ps[0].backlog = 1_000.0;
        ps[0].in_flight = 1_000.0;
        let (b, failed) = balanced(Balancer::LeastRequest, &ps, 256.0);
        assert_eq!(failed, 0.0);
        approx(b.assigned.iter().sum(), 256.0);
        // It wins only when drawn twice (1 in 9).
        assert!(b.assigned[0] < 0.2 * 256.0, "{:?}", b.assigned);
    }

    #[test]
    fn a_coarse_step_does_not_pile_onto_the_pod_that_looked_emptiest_at_its_start() {
        // Three pods with 50 requests queued (at capacity: 100 a second leave), one with none;
        // a second's 400 requests. Seen as they come, the empty pod takes requests only while
        // it has fewer in flight than the others: they end level, the empty one with 50 more
        // of the 400, 137.5 (34 %). (A view fixed at the step's start gave it every pick it was
        // a candidate for: 7 in 16, 44 %.)
        let mut ps = pods(4);
        for p in &mut ps[1..] {
            p.in_flight = 50.0;
        }
        for p in &mut ps {
            p.service = 0.05;
        }
        for balancer in [Balancer::LeastRequest, Balancer::PeakEwma] {
            let (b, _) = balanced(balancer, &ps, 400.0);
            let share = b.assigned[0] / 400.0;
            assert!(
                (0.31..0.38).contains(&share),
                "{balancer:?}: {:?}",
                b.assigned
            );
        }
    }

    #[test]
    fn peak_ewma_avoids_a_slow_pod() {
        let mut ps = pods(3);
        ps[1].ewma = 1.0;
        let (b, _) = balanced(Balancer::PeakEwma, &ps, 256.0);
        approx(b.assigned.iter().sum(), 256.0);
        assert!(b.assigned[1] < 0.2 * 256.0, "{:?}", b.assigned);
    }

    #[test]
    fn picks_are_equal_shares_of_the_offered_load() {
        let ps = pods(2);
        // 2.5 requests: 3 picks of 5/6 each, alternating.
        let (b, _) = balanced(Balancer::RoundRobin, &ps, 2.5);
        approx(b.assigned[0] + b.assigned[1], 2.5);
        approx(b.assigned[0].max(b.assigned[1]), 2.5 * 2.0 / 3.0);
    }
}
