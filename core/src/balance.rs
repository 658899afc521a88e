//! Weighted balancing primitives: a precomputed smooth round-robin order and the
//! power-of-two-choices comparison.
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    proptest! {
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
