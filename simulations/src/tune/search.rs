//! The search: a seeded Latin-hypercube sample of the space, coordinate refinement around the
//! best point, then a simplification, within a budget of evaluations.
//!
//! Half the budget (at least one point per dimension and two, at most the whole budget) goes
//! to the sample, the baseline's own setting among it; then rounds of refinement: each round
//! tries every active dimension a step down and a step up from the incumbent (every option of
//! a switch or choice), as one batch evaluated in parallel; the step (a quarter of each range
//! at first) halves after a round that finds nothing better, and refinement stops when the
//! step is below 1/64 of the ranges or only the simplification's share of the budget
//! (dimensions + 1, at most a quarter) is left. The simplification puts each setting of the
//! best point back to the scenario's, one at a time, then all those that cost at most
//! [`SIMPLER_WITHIN`] more together: a recommendation that changes fewer settings is easier
//! to trust and less likely to fit the train part by accident. Points already evaluated (by
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
    /// A setting of the best point put back to the scenario's.
    Simplify,
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

/// Scores a batch of points, in order: each an [`Eval`] or why it could not run.
pub type Evaluator<'a> = &'a mut dyn FnMut(&[Point]) -> Vec<Result<Eval, String>>;

/// Runs the search: `evaluate` scores a batch of points (in parallel, in order), `objective`
/// ranks them. Returns every candidate evaluated, in evaluation order.
pub fn run(
    space: &Space,
    baseline: &Point,
    plan: Plan,
    objective: &Objective<'_>,
    evaluate: Evaluator<'_>,
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
        let u: Vec<f64> = strata
            .iter()
            .map(|s| (s[i] as f64 + rng.f64()) / n_sample as f64)
            .collect();
        points.push((space.at(&u), Origin::Sample));
    }
    run_batch(points, &mut all, &mut seen, n_sample);

    // Refinement around the incumbent, keeping some evaluations for the simplification.
    let reserve = (dims + 1).min(plan.budget / 4);
    let mut step = 0.25;
    let mut round = 0;
    while all.len() + reserve < plan.budget && step >= 1.0 / 64.0 {
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
        let left = plan.budget - reserve - all.len();
        let added = run_batch(points, &mut all, &mut seen, left);
        let improved = best(&all, objective).is_some_and(|b| all[b].key != incumbent.key);
        if added == 0 || !improved {
            step /= 2.0;
        }
    }

    // Simplification: each setting of the best point that differs from the scenario's, put
    // back one at a time; then all those that cost at most SIMPLER_WITHIN more, together.
    let base = project(space, baseline);
    if let Some(b) = best(&all, objective).filter(|&b| meets_train(&all[b], objective)) {
        let incumbent = all[b].clone();
        let cost = train_cost(&incumbent);
        let differs: Vec<usize> = (0..dims)
            .filter(|&i| space.active(&incumbent.point, i) && incumbent.point[i] != base[i])
            .collect();
        let first = all.len();
        let points = differs
            .iter()
            .map(|&i| {
                let mut p = incumbent.point.clone();
                p[i] = base[i];
                (p, Origin::Simplify)
            })
            .collect();
        let left = plan.budget.saturating_sub(all.len());
        run_batch(points, &mut all, &mut seen, left);
        let kept: Vec<usize> = differs
            .iter()
            .copied()
            .filter(|&i| {
                all[first..].iter().any(|c| {
                    c.point[i] == base[i]
                        && meets_train(c, objective)
                        && train_cost(c) <= cost * (1.0 + SIMPLER_WITHIN)
                })
            })
            .collect();
        if kept.len() > 1 {
            let mut p = incumbent.point.clone();
            for &i in &kept {
                p[i] = base[i];
            }
            let left = plan.budget.saturating_sub(all.len());
            run_batch(vec![(p, Origin::Simplify)], &mut all, &mut seen, left);
        }
    }
    all
}

/// A simpler setting may cost this much more (fraction of the cheapest's pod-seconds on
/// train): within it, the setting with the fewest changes from the scenario's is recommended.
pub const SIMPLER_WITHIN: f64 = 0.01;

fn meets_train(c: &Candidate, objective: &Objective<'_>) -> bool {
    c.eval.as_ref().is_ok_and(|e| objective.meets(&e.train))
}

fn train_cost(c: &Candidate) -> f64 {
    c.eval
        .as_ref()
        .map_or(f64::INFINITY, |e| e.train.pod_seconds)
}

/// The recommendation: the best candidate, or, when it meets the SLO, the one meeting it
/// with the fewest settings changed from the scenario's (`baseline`) among those within
/// [`SIMPLER_WITHIN`] of its cost (then the cheapest, then by key).
pub fn recommend(
    all: &[Candidate],
    objective: &Objective<'_>,
    space: &Space,
    baseline: &Point,
) -> Option<usize> {
    let b = best(all, objective)?;
    if !meets_train(&all[b], objective) {
        return Some(b);
    }
    let limit = train_cost(&all[b]) * (1.0 + SIMPLER_WITHIN);
    let base = space.describe(&project(space, baseline));
    let changes = |c: &Candidate| {
        space
            .describe(&c.point)
            .iter()
            .zip(&base)
            .filter(|(a, b)| a != b)
            .count()
    };
    (0..all.len())
        .filter(|&i| meets_train(&all[i], objective) && train_cost(&all[i]) <= limit)
        .min_by(|&x, &y| {
            let (a, b) = (&all[x], &all[y]);
            changes(a)
                .cmp(&changes(b))
                .then(train_cost(a).total_cmp(&train_cost(b)))
                .then_with(|| a.key.cmp(&b.key))
        })
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::tune::space::{DimSpec, Scalar};

    fn range(min: Scalar, max: Scalar) -> DimSpec {
        DimSpec {
            min: Some(min),
            max: Some(max),
            values: None,
        }
    }

    /// A synthetic world: the SLO breaks above a target of 70, cost falls as the target rises,
    /// and the other settings change nothing.
    #[test]
    fn the_search_finds_the_edge_of_the_slo_and_leaves_the_other_settings_alone() {
        let a: crate::scenario::Autoscaling = gofe_yaml::from_str(
            "maxReplicas: 20\nmetrics: [ { external_rps: { average_value: \"50\" } } ]\n",
        )
        .unwrap();
        let mut dims = BTreeMap::new();
        use Scalar::{Number, Text};
        dims.insert("target".into(), range(Number(20.0), Number(120.0)));
        dims.insert("tolerance".into(), range(Number(0.02), Number(0.2)));
        dims.insert(
            "scale_down_window".into(),
            range(Text("0s".into()), Text("10m".into())),
        );
        let space = Space::new(Some(&dims), &a, "tune.dimensions").unwrap();
        let baseline = space.baseline(&a);
        let reference = Part {
            seconds: 1000.0,
            ..Part::default()
        };
        let objective = Objective {
            reference: &reference,
            slo_budget: 0.001,
        };
        let calls = std::cell::Cell::new(0);
        let mut evaluate = |points: &[Point]| {
            calls.set(calls.get() + 1);
            points
                .iter()
                .map(|p| {
                    let part = Part {
                        seconds: 1000.0,
                        slo_violation_seconds: if p[0] > 70.0 { 50.0 } else { 0.0 },
                        pod_seconds: 1e6 / p[0],
                        ..Part::default()
                    };
                    Ok(Eval {
                        train: part.clone(),
                        held_out: part,
                    })
                })
                .collect()
        };
        let plan = Plan {
            budget: 40,
            seed: 3,
        };
        let all = run(&space, &baseline, plan, &objective, &mut evaluate);
        let batches = calls.get();
        assert!(
            all.len() <= 40 && batches > 2,
            "{} in {batches} batches",
            all.len()
        );
        let r = recommend(&all, &objective, &space, &baseline).unwrap();
        let p = &all[r].point;
        assert!(p[0] > 65.0 && p[0] <= 70.0, "target {}", p[0]);
        // The others are the scenario's again (0.1 and Kubernetes' 300 s).
        assert_eq!(p[1], 0.1, "{:?}", all[r].key);
        assert_eq!(p[2], 300.0, "{:?}", all[r].key);
        // The same seed, the same search.
        let again = run(&space, &baseline, plan, &objective, &mut evaluate);
        let keys = |c: &[Candidate]| c.iter().map(|c| c.key.clone()).collect::<Vec<_>>();
        assert_eq!(keys(&all), keys(&again));
    }
}
