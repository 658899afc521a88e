//! The simulation loop: one policy over one scenario, step by step.
//!
//! Load is a fluid: each step of `dt` seconds brings `rps × dt` requests, which the balancer
//! splits over the endpoints in at most `max(256, 4 × endpoints)` picks (each pick carries an
//! equal share), every pick made by gofe-core's balancing code. Each pod is a queue:
//!
//! * service time `S = latency × slow / speed`, capacity `μ = capacity × speed / slow`;
//! * with utilization `ρ = λ / μ < 1`, the wait is Sakasegawa's M/M/c approximation
//!   `S × ρ^(√(2(c+1)) − 1) / (c (1 − ρ))` (`c` = concurrency, `ρ` capped at 0.95: beyond, the backlog term takes over);
//! * requests in flight at a pod, as the balancers see them, are carried from step to step: a
//!   request stays `S` while the pod is below capacity, at most `μ` a second leave at capacity,
//!   none stays past `timeout` (exact for a constant rate over a step); within a step each pick
//!   sees those from before, less the ones gone since, plus the step's own so far, so the
//!   power-of-two-choices balancers split a step of 1 s as ten of 100 ms;
//! * above capacity a backlog builds at `λ − μ` and adds `backlog / μ`;
//! * a step's requests to a pod all see that pod's latency; above `timeout` they fail (and the
//!   backlog is capped at what the pod serves within the timeout); a `fail` fault fails that
//!   fraction, an `http_fault` abort its `percentage` and an `http_fault` delay adds its
//!   `fixed_delay` to its `percentage` of them; a dead pod fails everything in 1 ms until it is
//!   noticed and replaced.
//!
//! Every `scrape` the pods' request, CPU and Σ latency counters are sampled; the adapter
//! recomputes `rate()` over `window` every `cache`; the HPA ([`gofe_core::hpa::reconcile`])
//! syncs every `sync` on the cached values. With `external_rps.queueing` the External value is
//! the queueing pressure ([`gofe_core::queueing::pressure`]) instead of the rate. With
//! `external_rps.forecast` the total (rate or pressure) is also sampled every forecast `step`,
//! and at each cache refresh the adapter's value is its forecast `lead` ahead (Holt or
//! Holt-Winters, with or without the spike path: [`gofe_core::forecast::ForecastPolicy::serve`],
//! the adapter's own code). Pods start `Pending` for
//! `startup`, run unready for `readiness`, then join the endpoints. Scale-down removes
//! pending, then unready, then the newest pods first, as a ReplicaSet does.
//!
//! One [`Sim::step`] runs the parts in turn:
//!
//! ```text
//!  traffic ─► pods (faults, deaths) ─► balancing (breakers, endpoints, weights, picks)
//!    ─► pods serve (queueing, latency, failures) ─► breakers (passive outlier detection)
//!    ─► controller (gofe: signal window → decide → weights) ─► tally (row, summary)
//!    ─► pipeline (scrape → rate window → adapter cache / forecast)
//!    ─► autoscaling (HPA sync → ReplicaSet starts and stops pods)
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use crate::scenario::{Balancer, Policy, Scenario};
use crate::stats::Histogram;
use crate::traffic::{TraceError, TrafficSource};

mod autoscaling;
mod balancing;
mod breakers;
mod controller;
#[cfg(test)]
mod fixtures;
mod pipeline;
mod pods;
mod tally;

pub use self::autoscaling::hpa_spec;
pub use self::pods::speed_of;

use self::autoscaling::{Autoscaler, ReplicaSet};
use self::balancing::Balancing;
use self::breakers::OutlierDetection;
use self::controller::Controller;
use self::pipeline::Pipeline;
use self::pods::ServiceModel;

/// Why a run could not complete.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The trace is malformed.
    #[error(transparent)]
    Trace(#[from] TraceError),
    /// The policy cannot run.
    #[error("policy {policy}: {message}")]
    Policy {
        /// The policy's name.
        policy: String,
        /// Why.
        message: String,
    },
}

/// One row of the per-step output.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepRow {
    /// Seconds since the start.
    pub t: f64,
    /// Offered load, req/s.
    pub rps: f64,
    /// Replicas the HPA wants (spec replicas).
    pub desired: i32,
    /// Pods that exist (pending, starting, ready, dead-not-yet-noticed).
    pub pods: usize,
    /// Pods in the endpoints (ready, not ejected).
    pub endpoints: usize,
    /// Requests this step.
    pub requests: f64,
    /// Failed requests this step.
    pub failed: f64,
    /// Median latency this step, ms.
    pub p50_ms: f64,
    /// p99 latency this step, ms.
    pub p99_ms: f64,
    /// Breakers open now.
    pub ejected: usize,
    /// Share of this step's requests per pod, by creation index (first `SHARE_PODS` pods).
    pub shares: Vec<f64>,
}

/// Traffic shares are reported for the pods created first, up to this many.
pub const SHARE_PODS: usize = 12;

/// What one run adds up to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// Policy name.
    pub policy: String,
    /// Balancer.
    pub balancer: String,
    /// Simulated seconds.
    pub seconds: f64,
    /// Requests offered.
    pub requests: f64,
    /// Requests failed (timeouts, faults, no endpoint).
    pub failed: f64,
    /// Seconds in steps whose p99 or failure ratio broke the SLO.
    pub slo_violation_seconds: f64,
    /// Median latency over all requests, ms.
    pub p50_ms: f64,
    /// p99 latency over all requests, ms.
    pub p99_ms: f64,
    /// Σ pods × seconds (every pod that exists, ready or not).
    pub pod_seconds: f64,
    /// Times the HPA changed the replica count.
    pub scale_events: u32,
    /// Breaker trips.
    pub ejections: u32,
    /// Most pods at once.
    pub max_pods: usize,
    /// Per fault in the scenario: seconds until the faulty pod got under 10 % of its fair share
    /// of traffic (or was ejected or removed); `None` if it never did.
    pub drain_seconds: Vec<Option<f64>>,
}

/// Runs `policy` over `scenario`, calling `on_step` for every step (and `progress` with the
/// fraction done now and then). Trace paths are relative to `base`.
pub fn run(
    scenario: &Scenario,
    policy: &Policy,
    base: &Path,
    on_step: &mut dyn FnMut(&StepRow),
    progress: &mut dyn FnMut(f64),
) -> Result<Summary, RunError> {
    run_recorded(scenario, policy, base, on_step, progress, None)
}

/// What the `gofe` balancer fed to `gofe_core::policy::decide` and got back, per decision.
pub type DecisionRecorder<'a> = &'a mut dyn FnMut(
    &[(String, u32)],
    &BTreeMap<String, gofe_core::policy::Signals>,
    u64,
    &gofe_core::policy::Decision,
);

/// [`run`], also handing every controller decision of the `gofe` balancer to `recorder`.
pub fn run_recorded(
    scenario: &Scenario,
    policy: &Policy,
    base: &Path,
    on_step: &mut dyn FnMut(&StepRow),
    progress: &mut dyn FnMut(f64),
    recorder: Option<DecisionRecorder<'_>>,
) -> Result<Summary, RunError> {
    // The recorder, for as long as the run borrows the scenario.
    let recorder = recorder.map(|r| -> DecisionRecorder<'_> { r });
    let mut sim = Sim::new(scenario, policy, base, recorder)?;
    let steps = sim.steps();
    let report_every = (steps / 100).max(1);
    for step in 0..steps {
        on_step(sim.step()?);
        if step % report_every == 0 {
            progress(step as f64 / steps as f64);
        }
    }
    progress(1.0);
    Ok(sim.finish())
}

// === impl Sim ===

/// One run in progress: `policy` over `scenario`, one [`step`](Sim::step) of `scenario.step` at
/// a time. [`run`] and [`run_recorded`] step it through the scenario's duration.
pub struct Sim<'a> {
    scenario: &'a Scenario,
    dt: f64,
    steps: u64,
    /// Steps done.
    done: u64,
    traffic: TrafficSource,
    model: ServiceModel,
    /// The peak EWMA's decay per step.
    ewma_keep: f64,
    replicas: ReplicaSet<'a>,
    /// Spec replicas: what the HPA wants.
    desired: i32,
    balancing: Balancing,
    detection: Option<OutlierDetection<'a>>,
    controller: Option<Controller>,
    pipeline: Pipeline,
    autoscaler: Option<Autoscaler>,
    summary: Summary,
    hist: Histogram,
    /// This step's `(latency, requests)` per serving pod.
    step_lat: Vec<(f64, f64)>,
    row: StepRow,
    recorder: Option<DecisionRecorder<'a>>,
}

impl<'a> Sim<'a> {
    /// Sets up a run of `policy` over `scenario` (trace paths relative to `base`): the
    /// scenario's first pods ready, the HPA of the policy (or the scenario), outlier detection
    /// when the policy uses it, gofe's controller for the `gofe` balancer. Every controller
    /// decision goes to `recorder`, if any.
    pub fn new(
        scenario: &'a Scenario,
        policy: &'a Policy,
        base: &Path,
        recorder: Option<DecisionRecorder<'a>>,
    ) -> Result<Self, RunError> {
        let sv = &scenario.service;
        let dt = scenario.step.secs();
        let duration = run_length(scenario, base)?;
        let steps = (duration / dt).round() as u64;
        let traffic = TrafficSource::new(&scenario.traffic, base, scenario.seed)?;
        let balancing = Balancing::new(policy.balancer, scenario.seed, sv.timeout.secs());
        let autoscaling = if policy.fixed_replicas {
            None
        } else {
            policy
                .autoscaling
                .as_ref()
                .or(scenario.autoscaling.as_ref())
        };
        let hpa = autoscaling
            .map(hpa_spec)
            .transpose()
            .map_err(|(f, m)| RunError::Policy {
                policy: policy.name.clone(),
                message: format!("autoscaling.{f}: {m}"),
            })?;
        let autoscaler = hpa.map(|spec| {
            let tolerance = autoscaling.map_or(gofe_core::hpa::DEFAULT_TOLERANCE, |a| a.tolerance);
            Autoscaler::new(spec, tolerance, scenario.pipeline.sync.secs())
        });
        let detection = scenario
            .outlier
            .as_ref()
            .filter(|_| policy.outlier && policy.balancer != Balancer::Gofe)
            .map(OutlierDetection::new);
        Ok(Sim {
            scenario,
            dt,
            steps,
            done: 0,
            traffic,
            model: ServiceModel::new(sv, dt).counting_in_flight(matches!(
                policy.balancer,
                Balancer::LeastRequest | Balancer::PeakEwma
            )),
            ewma_keep: (-dt / policy.decay.secs().max(1e-9)).exp(),
            replicas: ReplicaSet::new(scenario),
            desired: sv.pods as i32,
            balancing,
            detection,
            controller: (policy.balancer == Balancer::Gofe).then(|| Controller::new(policy)),
            pipeline: Pipeline::new(&scenario.pipeline, autoscaling),
            autoscaler,
            summary: Summary {
                policy: policy.name.clone(),
                balancer: policy.balancer.as_str().into(),
                seconds: steps as f64 * dt,
                drain_seconds: vec![None; sv.faults.len()],
                ..Summary::default()
            },
            hist: Histogram::new(),
            step_lat: Vec::new(),
            row: StepRow::default(),
            recorder,
        })
    }

    /// Steps in the scenario's duration.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Simulates the next step and returns its row. A step past the scenario's duration goes on
    /// simulating (and fails only where the traffic does).
    pub fn step(&mut self) -> Result<&StepRow, RunError> {
        let now = self.done as f64 * self.dt;
        let now_ms = (now * 1000.0).round() as u64;
        self.done += 1;

        // Traffic: the step's offered load.
        let rps = self.traffic.at(now)?;
        let offered = rps * self.dt;

        // Pods: deaths happen once (fail and slow act as pods serve); the ReplicaSet replaces
        // the dead pods it has noticed.
        let sv = &self.scenario.service;
        pods::kill(&sv.faults, &mut self.replicas.pods, now, now_ms, self.dt);
        self.replicas
            .replace_noticed_dead(now, now_ms, self.desired);

        // Balancing: breakers, endpoints, weights, picks.
        let mut open = breakers::poll(&mut self.replicas.pods, now_ms);
        let b = &mut self.balancing;
        b.select_endpoints(&self.replicas.pods, now);
        b.refresh_weights(&self.replicas.pods);
        let mut failed = b.assign(&self.replicas.pods, offered, 1.0 / self.dt);

        // Pods serve; the proxies' outlier detection watches.
        self.serve(now, now_ms, &mut open, &mut failed);
        let endpoints = self.balancing.endpoints.len();
        if let Some(d) = self
            .detection
            .as_mut()
            .filter(|d| d.sweep_due(now, self.dt))
        {
            self.summary.ejections +=
                d.sweep(&mut self.replicas.pods, now_ms, endpoints, &mut open);
        }

        // gofe's controller: decide every interval on the last window of signals.
        if let Some(c) = self.controller.as_mut().filter(|c| c.due(now, self.dt)) {
            let (ejections, zero) =
                c.decide(&mut self.replicas.pods, now, now_ms, self.recorder.as_mut());
            self.summary.ejections += ejections;
            open = zero;
        }

        // Tally: step statistics.
        let (p50, p99) = tally::step_quantiles(&mut self.step_lat);
        self.tally(now, offered, failed, p99);

        // Pipeline, then autoscaling: scrape, adapter cache, HPA sync; the ReplicaSet converges.
        self.pipeline.step(&mut self.replicas.pods, now);
        self.autoscale(now, now_ms);

        let row = &mut self.row;
        row.t = now;
        row.rps = rps;
        row.desired = self.desired;
        row.pods = self.replicas.pods.len();
        row.endpoints = endpoints;
        row.requests = offered;
        row.failed = failed;
        row.p50_ms = p50 * 1000.0;
        row.p99_ms = p99 * 1000.0;
        row.ejected = open;
        Ok(&self.row)
    }

    /// The run's summary, with the latency quantiles over all its requests.
    pub fn finish(mut self) -> Summary {
        self.summary.p50_ms = self.hist.quantile(0.5) * 1000.0;
        self.summary.p99_ms = self.hist.quantile(0.99) * 1000.0;
        self.summary
    }

    /// Every pod serves its assigned requests under its faults; running pods count them (and
    /// their failures into `failed`), and outlier detection observes them (trips counted in
    /// `open`).
    fn serve(&mut self, now: f64, now_ms: u64, open: &mut usize, failed: &mut f64) {
        self.step_lat.clear();
        let faults = &self.scenario.service.faults;
        let timeout = self.scenario.service.timeout.secs();
        let endpoints = self.balancing.endpoints.len();
        for (i, p) in self.replicas.pods.iter_mut().enumerate() {
            let n = self.balancing.assigned[i];
            let effects = pods::fault_effects(faults, p.index, now);
            let (latency, mut failures) = self.model.serve(p, n, now, effects);
            if !p.running(now) {
                continue;
            }
            // An `http_fault` delay: its share of the pod's requests take `extra` longer (past
            // the timeout they fail at the timeout, like any request that slow).
            let delayed = match pods::fault_delay(faults, p.index, now) {
                Some((extra, share)) if failures < n => {
                    let late = (latency + extra).min(timeout);
                    if latency + extra > timeout {
                        failures += (n - failures) * share;
                    }
                    Some((late, n * share))
                }
                _ => None,
            };
            let mean = delayed.map_or(latency, |(late, k)| (latency * (n - k) + late * k) / n);
            p.record(n, failures, mean, self.ewma_keep);
            if n > 0.0 {
                match delayed {
                    Some((late, k)) => {
                        self.step_lat.push((latency, n - k));
                        self.step_lat.push((late, k));
                        self.hist.add(latency, n - k);
                        self.hist.add(late, k);
                    }
                    None => {
                        self.step_lat.push((latency, n));
                        self.hist.add(latency, n);
                    }
                }
                *failed += failures;
            }
            if let Some(d) = &self.detection {
                self.summary.ejections += d.observe(p, n, failures, now_ms, endpoints, open);
            }
        }
    }

    /// The step's part of the summary and the row's traffic shares.
    fn tally(&mut self, now: f64, offered: f64, failed: f64, p99: f64) {
        let sv = &self.scenario.service;
        let pods = &self.replicas.pods;
        let b = &self.balancing;
        self.summary.add_step(
            offered,
            failed,
            p99,
            pods.len(),
            self.dt,
            &self.scenario.slo,
        );
        self.summary
            .note_drains(&sv.faults, pods, &b.endpoints, &b.assigned, offered, now);
        self.row
            .shares
            .resize(SHARE_PODS.min(sv.pods as usize), 0.0);
        tally::fill_shares(&mut self.row.shares, pods, &b.assigned);
    }

    /// The HPA syncs when due (a change of replicas is a scale event); the ReplicaSet
    /// converges on the replicas it wants.
    fn autoscale(&mut self, now: f64, now_ms: u64) {
        if let Some(hpa) = &mut self.autoscaler {
            let wanted = hpa.sync(
                &self.replicas.pods,
                &self.pipeline,
                self.desired,
                now,
                now_ms,
            );
            if let Some(d) = wanted.filter(|&d| d != self.desired) {
                self.summary.scale_events += 1;
                tracing::debug!(t = now, from = self.desired, to = d, "scale");
                self.desired = d;
            }
        }
        self.replicas.converge(now, self.desired);
    }
}

/// The scenario's duration; without one, the longest trace's (seconds).
pub fn run_length(scenario: &Scenario, base: &Path) -> Result<f64, RunError> {
    Ok(match scenario.duration {
        Some(d) => d.secs(),
        None => {
            let mut longest: f64 = 0.0;
            for t in &scenario.traffic {
                if let Some((file, options)) = crate::traffic::TraceOptions::of(t) {
                    longest =
                        longest.max(crate::traffic::trace_length(&base.join(file), &options)?);
                }
            }
            longest
        }
    })
}

#[cfg(test)]
mod tests;
