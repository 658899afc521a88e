//! Weighted balancing primitives: a precomputed smooth round-robin order, the
//! power-of-two-choices comparison, and Envoy's priority load and locality weights (how much
//! traffic each priority level and locality gets as health changes).
//!
//! Weighted round robin is earliest-deadline-first scheduling, as in Envoy's balancer: host `i`
//! with weight `w_i` is due at the midpoints of its slots, virtual times `0.5/w_i, 1.5/w_i, …`,
//! and the host with the earliest deadline goes next (ties to the lower index). Over one cycle of
//! `Σw` picks every host gets exactly its weight, and its picks are spread over the cycle instead
//! of bunched together: at every point of the cycle each host is within 1.5 picks of its exact
//! share (midpoint deadlines are the Sainte-Laguë divisors; deadlines at slot ends would allow
//! bursts, e.g. weights 5,1,1 would start with four picks of the first host). The cycle is computed once when the endpoint set changes; a
//! pick is then `sequence[ticket % len]`, lock-free and allocation-free.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

/// The longest cycle a [`WeightedSequence`] keeps. Weight sets whose (gcd-reduced) sum is larger
/// are scaled down proportionally, keeping every non-zero weight at least 1; the relative error
/// per host stays below `hosts / MAX_CYCLE`.
pub const MAX_CYCLE: u64 = 1 << 16;

/// A smooth weighted round-robin cycle over endpoint indices.
///
/// Built once per endpoint set; [`pick`](Self::pick) maps a monotonically increasing ticket to an
/// index. Endpoints with weight 0 never appear (that is how a host is drained).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WeightedSequence {
    cycle: Box<[u32]>,
}

impl WeightedSequence {
    /// Computes the cycle for `weights` (index `i` is endpoint `i`). Returns an empty sequence
    /// when every weight is 0.
    pub fn new(weights: &[u32]) -> Self {
        let weights = normalize(weights);
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        if total == 0 {
            return Self::default();
        }
        let mut heap: BinaryHeap<Slot> = weights
            .iter()
            .enumerate()
            .filter(|(_, &w)| w > 0)
            .map(|(index, &weight)| Slot {
                index: index as u32,
                weight: u64::from(weight),
                served: 0,
            })
            .collect();
        let mut cycle = Vec::with_capacity(total as usize);
        while cycle.len() < total as usize {
            let Some(mut slot) = heap.pop() else { break };
            cycle.push(slot.index);
            slot.served += 1;
            if slot.served < slot.weight {
                heap.push(slot);
            }
        }
        Self {
            cycle: cycle.into_boxed_slice(),
        }
    }

    /// The endpoint index for `ticket`, or `None` when no endpoint has weight.
    #[inline]
    pub fn pick(&self, ticket: u64) -> Option<usize> {
        if self.cycle.is_empty() {
            return None;
        }
        Some(self.cycle[(ticket % self.cycle.len() as u64) as usize] as usize)
    }

    /// Length of one full cycle (the sum of the normalized weights).
    pub fn len(&self) -> usize {
        self.cycle.len()
    }

    /// True when no endpoint has a non-zero weight.
    pub fn is_empty(&self) -> bool {
        self.cycle.is_empty()
    }
}

/// A host in the earliest-deadline-first heap. Its next deadline is `(served + ½) / weight`.
#[derive(Debug, PartialEq, Eq)]
struct Slot {
    index: u32,
    weight: u64,
    served: u64,
}

impl Ord for Slot {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap is a max-heap: the earliest deadline must compare greatest. Deadlines are
        // compared exactly by cross-multiplying; ties go to the lower index, so the cycle is
        // deterministic.
        let mine = u128::from(2 * self.served + 1) * u128::from(other.weight);
        let theirs = u128::from(2 * other.served + 1) * u128::from(self.weight);
        theirs.cmp(&mine).then_with(|| other.index.cmp(&self.index))
    }
}

impl PartialOrd for Slot {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Divides weights by their gcd and scales them down when their sum exceeds [`MAX_CYCLE`].
fn normalize(weights: &[u32]) -> Vec<u32> {
    let divisor = weights.iter().fold(0u32, |acc, &w| gcd(acc, w)).max(1);
    let mut reduced: Vec<u32> = weights.iter().map(|&w| w / divisor).collect();
    let total: u64 = reduced.iter().map(|&w| u64::from(w)).sum();
    if total > MAX_CYCLE {
        for w in &mut reduced {
            if *w > 0 {
                let scaled = (u64::from(*w) * MAX_CYCLE + total / 2) / total;
                *w = scaled.max(1) as u32;
            }
        }
    }
    reduced
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// One candidate of a power-of-two-choices pick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// Requests in flight to this endpoint right now.
    pub active: u64,
    /// The endpoint's load-balancing weight (must be non-zero to be a candidate).
    pub weight: u32,
}

/// Weighted least-request: of two candidates, returns `true` when `a` should be chosen over `b`.
///
/// The candidates are meant to be drawn at random *in proportion to their weights* (see
/// [`WeightedSequence::pick`] with a random ticket); the one with fewer requests in flight per
/// unit of weight wins, ties to `a`. So an idle cluster is balanced exactly by weight (every
/// comparison ties and the weighted draw decides), and a loaded one by least active requests
/// per unit of weight, which is what steers traffic away from a slow endpoint.
#[inline]
pub fn least_request(a: Candidate, b: Candidate) -> bool {
    u128::from(a.active) * u128::from(b.weight) <= u128::from(b.active) * u128::from(a.weight)
}

// === priority load ===

/// One priority level's (or one locality's) hosts as the priority load sees them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LevelHealth {
    /// Hosts counted at this level (Envoy's `hosts().size()`: draining and weight-0 hosts are
    /// not counted).
    pub hosts: u32,
    /// Of those, the ones that may take traffic (not unhealthy, not ejected).
    pub healthy: u32,
}

/// A level's health score in percent: its healthy share times `overprovisioning_factor`
/// (percent, Envoy's 140 = 1.4), capped at 100, in integers as Envoy computes it.
pub fn level_health(level: LevelHealth, overprovisioning_factor: u32) -> u32 {
    if level.hosts == 0 {
        return 0;
    }
    let score = u64::from(overprovisioning_factor) * u64::from(level.healthy.min(level.hosts))
        / u64::from(level.hosts);
    score.min(100) as u32
}

/// Envoy's priority load: the percent of requests each priority level gets, and whether each
/// level is in panic mode (balance over all its hosts, healthy or not), from the levels'
/// health. `load` and `panic` must be as long as `levels`; they are written, nothing is
/// allocated, so a balancer can recompute in place when health changes.
///
/// As `LoadBalancerBase` in Envoy: each level's health score is
/// [`level_health`]; the scores' sum capped at 100 is the normalized total availability; each
/// level in order takes `score × 100 / total` of what is left, the rounding remainder going to
/// the first level with a non-zero score. A level is in panic when less than
/// `panic_threshold_percent` of its hosts are healthy, unless the total availability is 100.
/// When every level is in panic, the load follows the host counts instead (Envoy's "total
/// panic"); with panic disabled and nothing healthy, level 0 gets 100 (and, healthy hosts
/// being none, requests fail).
pub fn priority_load(
    levels: &[LevelHealth],
    overprovisioning_factor: u32,
    panic_threshold_percent: u32,
    load: &mut [u32],
    panic: &mut [bool],
) {
    debug_assert!(load.len() == levels.len() && panic.len() == levels.len());
    load.iter_mut().for_each(|l| *l = 0);
    panic.iter_mut().for_each(|p| *p = false);
    if levels.is_empty() {
        return;
    }
    let total: u32 = levels
        .iter()
        .map(|&l| level_health(l, overprovisioning_factor))
        .sum::<u32>()
        .min(100);
    if total > 0 {
        let mut left = 100u32;
        let mut first = None;
        for (i, &l) in levels.iter().enumerate() {
            let score = level_health(l, overprovisioning_factor);
            if first.is_none() && score > 0 {
                first = Some(i);
            }
            load[i] = left.min((score * 100).checked_div(total).unwrap_or(0));
            left -= load[i];
        }
        if let Some(first) = first {
            load[first] += left;
        }
    }
    if total == 0 {
        // Nothing scores (no healthy host, or a factor so small that every score rounds to
        // 0): as Envoy, level 0 takes everything unless the levels are in total panic below.
        load[0] = 100;
    }
    if panic_threshold_percent == 0 {
        return;
    }
    if total < 100 {
        for (i, &l) in levels.iter().enumerate() {
            // Envoy counts a level without hosts as in panic (0 % healthy).
            panic[i] = u64::from(l.healthy.min(l.hosts)) * 100
                < u64::from(l.hosts) * u64::from(panic_threshold_percent.min(100))
                || l.hosts == 0;
        }
    }
    if panic.iter().all(|&p| p) {
        let hosts: u64 = levels.iter().map(|l| u64::from(l.hosts)).sum();
        if hosts == 0 {
            load.iter_mut().for_each(|l| *l = 0);
            load[0] = 100;
            return;
        }
        let mut left = 100u32;
        for (i, l) in levels.iter().enumerate() {
            load[i] = (100 * u64::from(l.hosts) / hosts) as u32;
            left -= load[i];
        }
        if let Some(first) = levels.iter().position(|l| l.hosts > 0) {
            load[first] += left;
        }
    }
}

/// A locality's effective weight within its priority (Envoy's `effectiveLocalityWeight`):
/// its weight times its healthy share × `overprovisioning_factor`, the product capped at the
/// weight. In thousandths of a weight unit, so shares stay exact enough in integers.
pub fn effective_locality_weight(
    weight: u32,
    level: LevelHealth,
    overprovisioning_factor: u32,
) -> u64 {
    if level.hosts == 0 {
        return 0;
    }
    // weight × min(1, of/100 × healthy/hosts) × 1000
    let num = u64::from(overprovisioning_factor) * u64::from(level.healthy.min(level.hosts)) * 10;
    let share = (num / u64::from(level.hosts)).min(1000);
    u64::from(weight) * share
}

/// Which priority Istio's locality failover gives an endpoint seen from a proxy: 0 in the
/// proxy's own region and zone, 1 in its region, 2 anywhere else (or when either side's region
/// is unknown). `proxy` and `endpoint` are `(region, zone)`.
pub fn proximity_priority(proxy: (&str, &str), endpoint: Option<(&str, &str)>) -> u32 {
    match endpoint {
        Some((region, zone)) if !proxy.0.is_empty() && region == proxy.0 => {
            if !proxy.1.is_empty() && zone == proxy.1 {
                0
            } else {
                1
            }
        }
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn level(hosts: u32, healthy: u32) -> LevelHealth {
        LevelHealth { hosts, healthy }
    }

    /// The priority load of `levels` (hosts, healthy) with Envoy's defaults (1.4, panic 50 %).
    fn loads(levels: &[(u32, u32)], panic_threshold: u32) -> (Vec<u32>, Vec<bool>) {
        let levels: Vec<LevelHealth> = levels.iter().map(|&(h, ok)| level(h, ok)).collect();
        let mut load = vec![0; levels.len()];
        let mut panic = vec![false; levels.len()];
        priority_load(&levels, 140, panic_threshold, &mut load, &mut panic);
        (load, panic)
    }

    #[test]
    fn envoy_s_published_two_level_table() {
        // envoyproxy.io, "Priority levels": P=1 100 % healthy, overprovisioning 1.4.
        for (p0_healthy, expect) in [
            (100, [100, 0]),
            (72, [100, 0]),
            (71, [99, 1]),
            (50, [70, 30]),
            (25, [35, 65]),
            (0, [0, 100]),
        ] {
            let (load, panic) = loads(&[(100, p0_healthy), (100, 100)], 50);
            assert_eq!(load, expect, "P0 at {p0_healthy} % healthy");
            assert_eq!(panic, [false, false], "total availability 100: no panic");
        }
    }

    #[test]
    fn three_levels_spill_in_order() {
        // Envoy's three-level examples: P0 and P1 at 25 % healthy each give 35 % each and
        // the rest to P2; 72 % keeps everything in P0.
        assert_eq!(loads(&[(4, 1), (4, 1), (4, 4)], 50).0, [35, 35, 30]);
        assert_eq!(loads(&[(100, 72), (100, 72), (1, 1)], 50).0, [100, 0, 0]);
        assert_eq!(loads(&[(100, 71), (100, 71), (1, 1)], 50).0, [99, 1, 0]);
    }

    #[test]
    fn total_availability_under_100_is_normalized() {
        // 20 % healthy in both levels: scores 28 and 28 out of 56 → half each; both are in
        // panic (20 < 50), so the load follows the host counts instead (equal here).
        let (load, panic) = loads(&[(10, 2), (10, 2)], 50);
        assert_eq!(load, [50, 50]);
        assert_eq!(panic, [true, true]);
        // Without panic mode the normalized scores stand: 28/(28+14) and 14/42.
        let (load, panic) = loads(&[(10, 2), (10, 1)], 0);
        assert_eq!(load, [67, 33]);
        assert_eq!(panic, [false, false]);
    }

    #[test]
    fn a_level_below_the_panic_threshold_panics_only_if_the_total_is_short() {
        // P0 40 % healthy (56), P1 100 %: total 100 → no panic, P0 keeps 56 %.
        let (load, panic) = loads(&[(10, 4), (10, 10)], 50);
        assert_eq!(load, [56, 44]);
        assert_eq!(panic, [false, false]);
        // P0 40 %, P1 20 % (28): total 84 → P0 (40 < 50) and P1 panic → total panic: host
        // counts 10 and 30 share the load 25/75.
        let (load, panic) = loads(&[(10, 4), (30, 6)], 50);
        assert_eq!(panic, [true, true]);
        assert_eq!(load, [25, 75]);
        // P0 60 % (84), P1 0 %: total 84, only P1 panics → normal load, all to P0.
        let (load, panic) = loads(&[(10, 6), (10, 0)], 50);
        assert_eq!(panic, [false, true]);
        assert_eq!(load, [100, 0]);
    }

    #[test]
    fn nothing_healthy() {
        // Panic on: every level panics, load by host count.
        assert_eq!(loads(&[(1, 0), (3, 0)], 50).0, [25, 75]);
        // Panic off: 100 to P0 (the balancer then finds no healthy host).
        assert_eq!(loads(&[(1, 0), (3, 0)], 0).0, [100, 0]);
        // No hosts at all.
        assert_eq!(loads(&[(0, 0), (0, 0)], 50).0, [100, 0]);
    }

    #[test]
    fn a_single_level_always_takes_everything() {
        for healthy in 0..=10 {
            assert_eq!(loads(&[(10, healthy)], 50).0, [100]);
        }
    }

    #[test]
    fn locality_weight_is_scaled_by_its_overprovisioned_health() {
        // Envoy's locality example: weight 1 at 50 % healthy × 1.4 = 0.7 of a fully healthy one.
        assert_eq!(effective_locality_weight(1, level(2, 1), 140), 700);
        assert_eq!(effective_locality_weight(1, level(4, 4), 140), 1000);
        assert_eq!(effective_locality_weight(3, level(100, 72), 140), 3000);
        assert_eq!(effective_locality_weight(3, level(4, 0), 140), 0);
        assert_eq!(effective_locality_weight(3, level(0, 0), 140), 0);
    }

    #[test]
    fn proximity_is_zone_then_region_then_elsewhere() {
        let me = ("eu-west", "eu-west-1a");
        assert_eq!(proximity_priority(me, Some(("eu-west", "eu-west-1a"))), 0);
        assert_eq!(proximity_priority(me, Some(("eu-west", "eu-west-1b"))), 1);
        assert_eq!(proximity_priority(me, Some(("us-east", "eu-west-1a"))), 2);
        assert_eq!(proximity_priority(me, None), 2);
        assert_eq!(proximity_priority(("", ""), Some(("", ""))), 2);
    }

    fn counts(seq: &WeightedSequence, hosts: usize) -> Vec<u64> {
        let mut counts = vec![0u64; hosts];
        for t in 0..seq.len() as u64 {
            counts[seq.pick(t).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn cycle_gives_each_host_exactly_its_weight() {
        let seq = WeightedSequence::new(&[5, 1, 1]);
        assert_eq!(seq.len(), 7);
        assert_eq!(counts(&seq, 3), vec![5, 1, 1]);
    }

    #[test]
    fn heavy_host_is_interleaved_not_bursty() {
        // nginx's worked example: weights 5,1,1 must not send five in a row to the first host.
        let seq = WeightedSequence::new(&[5, 1, 1]);
        let order: Vec<usize> = (0..7).map(|t| seq.pick(t).unwrap()).collect();
        let longest_run = order
            .chunk_by(|a, b| a == b)
            .map(|run| run.len())
            .max()
            .unwrap();
        assert!(longest_run <= 3, "order {order:?} has a burst");
    }

    #[test]
    fn zero_weight_drains_a_host() {
        let seq = WeightedSequence::new(&[1, 0, 3]);
        assert_eq!(counts(&seq, 3), vec![1, 0, 3]);
        assert!(WeightedSequence::new(&[0, 0]).is_empty());
        assert_eq!(WeightedSequence::new(&[0, 0]).pick(3), None);
        assert!(WeightedSequence::new(&[]).is_empty());
    }

    #[test]
    fn gcd_reduces_the_cycle() {
        assert_eq!(WeightedSequence::new(&[100, 200, 300]).len(), 6);
    }

    #[test]
    fn huge_weights_are_scaled_not_rejected() {
        let seq = WeightedSequence::new(&[u32::MAX, 1, u32::MAX / 2]);
        assert!(seq.len() as u64 <= MAX_CYCLE + 3);
        let c = counts(&seq, 3);
        assert!(c[1] >= 1, "a non-zero weight keeps at least one slot");
        let ratio = c[0] as f64 / c[2] as f64;
        assert!((ratio - 2.0).abs() < 0.01, "ratio {ratio}");
    }

    #[test]
    fn least_request_prefers_fewer_active_per_weight() {
        let c = |active, weight| Candidate { active, weight };
        assert!(least_request(c(0, 1), c(4, 1)));
        assert!(!least_request(c(4, 1), c(0, 1)));
        // Idle candidates tie whatever their weights: the weighted draw decides.
        assert!(least_request(c(0, 1), c(0, 5)));
        assert!(least_request(c(0, 5), c(0, 1)));
        // Four in flight on weight 4 is as loaded as one on weight 1.
        assert!(least_request(c(4, 4), c(1, 1)));
        assert!(least_request(c(1, 1), c(4, 4)));
        assert!(!least_request(c(5, 4), c(1, 1)));
    }

    #[test]
    fn scores_that_round_to_zero_above_the_panic_threshold_send_everything_to_level_0() {
        // 7 of 12 healthy is above a 1 % panic threshold, but a 1 % factor scores it 0: the
        // load must still add up (found by the property below).
        let mut load = [7; 2];
        let mut panic = [true; 2];
        priority_load(&[level(12, 7), level(3, 1)], 1, 1, &mut load, &mut panic);
        assert_eq!(load, [100, 0]);
        assert_eq!(panic, [false, false]);
    }

    proptest! {
        #[test]
        fn priority_load_sums_to_100_and_prefers_earlier_levels(
            levels in prop::collection::vec((0u32..20, 0u32..20), 1..6),
            factor in 1u32..300,
            threshold in 0u32..=100,
        ) {
            let levels: Vec<LevelHealth> =
                levels.iter().map(|&(h, ok)| level(h, ok.min(h))).collect();
            let mut load = vec![0; levels.len()];
            let mut panic = vec![false; levels.len()];
            priority_load(&levels, factor, threshold, &mut load, &mut panic);
            prop_assert_eq!(load.iter().sum::<u32>(), 100);
            if !panic.iter().all(|&p| p) {
                // A fully healthy (score 100) level leaves nothing to the levels after it.
                if let Some(full) = levels.iter().position(|&l| level_health(l, factor) == 100) {
                    prop_assert!(load[full + 1..].iter().all(|&l| l == 0), "{:?}", load);
                }
            }
        }

        #[test]
        fn every_cycle_is_exact_for_small_weights(weights in prop::collection::vec(0u32..50, 0..20)) {
            let seq = WeightedSequence::new(&weights);
            let divisor = weights.iter().fold(0u32, |a, &w| gcd(a, w)).max(1);
            let expect: Vec<u64> = weights.iter().map(|&w| u64::from(w / divisor)).collect();
            prop_assert_eq!(counts(&seq, weights.len()), expect);
        }

        #[test]
        fn picks_are_spread_evenly(weights in prop::collection::vec(1u32..20, 1..10)) {
            // At every prefix of the cycle, each host is within 1.5 picks of its exact share.
            let seq = WeightedSequence::new(&weights);
            let total: u64 = seq.len() as u64;
            let n = weights.len();
            let mut seen = vec![0u64; n];
            let norm: Vec<u64> = {
                let d = weights.iter().fold(0u32, |a, &w| gcd(a, w)).max(1);
                weights.iter().map(|&w| u64::from(w / d)).collect()
            };
            for t in 0..total {
                seen[seq.pick(t).unwrap()] += 1;
                for i in 0..n {
                    let ideal = (t + 1) as f64 * norm[i] as f64 / total as f64;
                    prop_assert!((seen[i] as f64 - ideal).abs() <= 1.5, "host {} at {}", i, t);
                }
            }
        }
    }
}
