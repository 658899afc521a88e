//! The search: a seeded Latin-hypercube sample of the space, then coordinate refinement around
//! the best point, within a budget of evaluations.
//!
//! Half the budget (at least one point per dimension and two, at most the whole budget) goes
//! to the sample, the baseline's own setting among it; the rest to rounds of refinement: each
//! round tries every active dimension a step down and a step up from the incumbent (every
//! other option of a choice), as one batch evaluated in parallel; the step (a quarter of each
//! range at first) halves after a round that finds nothing better, and the search stops when
//! the budget is spent or the step is below 1/64 of the ranges. Points already evaluated (by
//! [`Space::key`]) are not evaluated again. Everything is a function of the seed and the
//! evaluations, never of their timing, so the result does not depend on the number of threads.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use super::space::{Domain, Point, Space, Unit};
use super::split::Part;

/// What a candidate scored, on train and held-out.
#[derive(Clone, Debug, PartialEq)]
pub struct Eval {
    /// The train part.
    pub train: Part,
    /// The held-out part.
    pub held_out: Part,
}

/// Where a candidate came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The scenario's own setting, projected into the space.
    Baseline,
    /// The Latin-hypercube sample.
    Sample,
    /// Refinement round `n` (from 1).
    Refine(u32),
}

/// One evaluated candidate.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// The setting.
    pub point: Point,
    /// Its [`Space::key`].
    pub key: String,
    /// Where it came from.
    pub origin: Origin,
    /// Its scores, or why it could not run.
    pub eval: Result<Eval, String>,
}

/// How candidates are ranked on one part.
#[derive(Clone, Copy, Debug)]
pub struct Objective<'a> {
    /// The default HPA's score on the same part.
    pub reference: &'a Part,
    /// Fraction of the part's seconds allowed to violate the SLO.
    pub slo_budget: f64,
}

impl Objective<'_> {
    /// Whether `p` meets the SLO: violating seconds within the budget and no more than the
    /// default HPA's.
    pub fn meets(&self, p: &Part) -> bool {
        let eps = 1e-9;
        p.slo_violation_seconds <= self.slo_budget * p.seconds + eps
            && p.slo_violation_seconds <= self.reference.slo_violation_seconds + eps
    }

    /// Orders candidates best first by their train part: those that run, then those meeting
    /// the SLO by pod-seconds (then violating seconds), then the others by violating seconds
    /// (then pod-seconds); ties by key.
    pub fn compare(&self, a: &Candidate, b: &Candidate) -> Ordering {
        let rank = |c: &Candidate| match &c.eval {
            Err(_) => (2u8, f64::INFINITY, f64::INFINITY),
            Ok(e) if self.meets(&e.train) => {
                (0, e.train.pod_seconds, e.train.slo_violation_seconds)
            }
            Ok(e) => (1, e.train.slo_violation_seconds, e.train.pod_seconds),
        };
        let (ra, rb) = (rank(a), rank(b));
        ra.0.cmp(&rb.0)
            .then(ra.1.total_cmp(&rb.1))
            .then(ra.2.total_cmp(&rb.2))
            .then_with(|| a.key.cmp(&b.key))
    }
}

/// The search's parameters.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Evaluations at most (not counting the reference runs).
    pub budget: usize,
    /// Seed of the sample.
    pub seed: u64,
}

/// Runs the search: `evaluate` scores a batch of points (in parallel, in order), `objective`
/// ranks them. Returns every candidate evaluated, in evaluation order.
pub fn run(
    space: &Space,
    baseline: &Point,
    plan: Plan,
    objective: &Objective<'_>,
    evaluate: &mut dyn FnMut(&[Point]) -> Vec<Result<Eval, String>>,
) -> Vec<Candidate> {
    let dims = space.dims.len();
    let mut seen = BTreeSet::new();
    let mut all: Vec<Candidate> = Vec::new();
    let mut run_batch = |points: Vec<(Point, Origin)>,
                         all: &mut Vec<Candidate>,
                         seen: &mut BTreeSet<String>,
                         left: usize| {
        let mut batch = Vec::new();
        for (p, o) in points {
            if batch.len() >= left {
                break;
            }
            let key = space.key(&p);
            if seen.insert(key.clone()) {
                batch.push((p, key, o));
            }
        }
        let points: Vec<Point> = batch.iter().map(|b| b.0.clone()).collect();
        let evals = if points.is_empty() {
            Vec::new()
        } else {
            evaluate(&points)
        };
        let n = batch.len();
        for ((point, key, origin), eval) in batch.into_iter().zip(evals) {
            all.push(Candidate {
                point,
                key,
                origin,
                eval,
            });
        }
        n
    };

    // The sample: the baseline's setting (projected into the ranges), then a Latin hypercube.
    let n_sample = (plan.budget / 2).max(dims + 2).min(plan.budget);
    let mut rng = fastrand::Rng::with_seed(plan.seed);
    let mut points = vec![(project(space, baseline), Origin::Baseline)];
    let strata: Vec<Vec<usize>> = (0..dims)
        .map(|_| {
            let mut s: Vec<usize> = (0..n_sample).collect();
            rng.shuffle(&mut s);
            s
        })
        .collect();
    for i in 0..n_sample {
        let u: Vec<f64> = (0..dims)
            .map(|d| (strata[d][i] as f64 + rng.f64()) / n_sample as f64)
            .collect();
        points.push((space.at(&u), Origin::Sample));
    }
    run_batch(points, &mut all, &mut seen, n_sample);

    // Refinement around the incumbent.
    let mut step = 0.25;
    let mut round = 0;
    while all.len() < plan.budget && step >= 1.0 / 64.0 {
        let Some(b) = best(&all, objective) else {
            break;
        };
        let incumbent = all[b].clone();
        round += 1;
        let centre = space.position(&incumbent.point);
        let mut points = Vec::new();
        for (i, d) in space.dims.iter().enumerate() {
            if !space.active(&incumbent.point, i) {
                continue;
            }
            match (&d.domain, d.domain.distinct()) {
                (Domain::Choice(_), Some(n))
                | (
                    Domain::Range {
                        unit: Unit::Switch, ..
                    },
                    Some(n),
                ) => {
                    for k in 0..n {
                        let mut p = incumbent.point.clone();
                        p[i] = d.domain.at((k as f64 + 0.5) / n as f64);
                        points.push((p, Origin::Refine(round)));
                    }
                }
                _ => {
                    for sign in [-1.0, 1.0] {
                        let mut u = centre.clone();
                        u[i] = (u[i] + sign * step).clamp(0.0, 1.0);
                        let mut p = incumbent.point.clone();
                        p[i] = d.domain.at(u[i]);
                        points.push((p, Origin::Refine(round)));
                    }
                }
            }
        }
        let left = plan.budget - all.len();
        let added = run_batch(points, &mut all, &mut seen, left);
        let improved = best(&all, objective).is_some_and(|b| all[b].key != incumbent.key);
        if added == 0 || !improved {
            step /= 2.0;
        }
    }
    all
}

/// The index of the best candidate.
pub fn best(all: &[Candidate], objective: &Objective<'_>) -> Option<usize> {
    (0..all.len()).min_by(|&a, &b| objective.compare(&all[a], &all[b]))
}

/// `p` moved into the space's ranges (a value outside one becomes its nearest bound; an
/// unknown one, the middle).
fn project(space: &Space, p: &Point) -> Point {
    space
        .dims
        .iter()
        .zip(p)
        .map(|(d, &v)| {
            if v.is_finite() {
                d.domain.at(d.domain.position(v))
            } else {
                d.domain.at(0.5)
            }
        })
        .collect()
}
