//! gofe-core: the pure decision logic that every other gofe part runs.
//!
//! Nothing in this crate performs I/O, reads a clock, or spawns a task: callers pass in
//! everything a decision depends on (weights, counters, random numbers, the current time) and get
//! a plain value back. That is what lets the proxy's hot path, the controller and the offline
//! simulator run *the same* code, and what keeps every decision reproducible in a unit test.
//!
//! Today it holds the balancing primitives the proxy uses per request:
//!
//! * [`balance::WeightedSequence`] — a smooth weighted round-robin order computed once per
//!   endpoint set (at configuration time), so a pick on the hot path is one index lookup;
//! * [`balance::least_request`] — the power-of-two-choices comparison for weighted
//!   least-request balancing.
//!
//! * [`outlier`] — the per-endpoint breaker (closed → open → half-open) and the tripping and
//!   safety rules of passive outlier detection;
//! * [`policy`] — the controller's decision step: per-endpoint signals in, weights, ejections
//!   and reasons out (shared with the simulator).
//!
//! * [`forecast`] — Holt's linear trend, Holt-Winters (a daily season) and the spike-aware fast
//!   path: the metrics adapter's forecast of a metric, configured and served by the same
//!   [`forecast::ForecastConfig`] and [`forecast::ForecastPolicy::serve`] in the simulator;
//! * [`queueing`] — queueing pressure (`max(rate, in flight / latency target)`, Little's law), a
//!   rate that leads the request rate when requests start to queue;
//! * [`hpa`] — the Kubernetes HorizontalPodAutoscaler (autoscaling/v2) replica computation,
//!   step for step as the HPA controller does it, for the simulator, adapter and controller;
//! * [`quantity`] — Kubernetes quantities (`1500m`, `1.5Gi`, `1e3`) read exactly as milli-units.
//!
//! The proxy supplies the atomics (tickets, active-request counts), the clock and the
//! randomness; this crate only decides.

pub mod balance;
mod fmt;
pub mod forecast;
pub mod hpa;
pub mod outlier;
pub mod policy;
pub mod quantity;
pub mod queueing;
