//! gofe-sim: `gofe sim`, the offline simulator.
//!
//! Replays a traffic curve (a trace file or composed generators) through a model of a service
//! (pods with capacity, queueing latency, start-up delay, heterogeneity and scheduled faults),
//! the production metrics pipeline (scrape interval, rate window, adapter cache, HPA sync
//! period), the Kubernetes HPA, and a load-balancing policy, and reports what happened.
//!
//! ```text
//!  traffic ──► balancer ──► pods (queueing model, faults) ──► per-step CSV, summary, plots
//!                ▲  ▲              │
//!   breakers ────┘  │              ▼
//!   (gofe-core)     │      scrape → rate window → adapter cache
//!                   │              │
//!                   └── replicas ◄─ HPA (gofe-core::hpa), every sync period
//! ```
//!
//! The decisions are gofe-core's own code, not copies: [`gofe_core::hpa`] for autoscaling,
//! [`gofe_core::balance`] for round robin and least-request, [`gofe_core::outlier`] for the
//! per-endpoint breakers, [`gofe_core::policy::decide`] for gofe's controller policy. This
//! crate holds only what a simulation needs around them: traffic, the service model, pipeline
//! delays, scenarios, outputs and the CLI.
//!
//! What it does not do: talk to a cluster or a network, or model individual TCP connections.
//! Load is a fluid per time step (see [`engine`]); every run is seeded and deterministic, byte
//! for byte.
//!
//! Modules: [`scenario`] (YAML files, validated), [`traffic`] (generators, streamed traces),
//! [`engine`] (the loop and the service model), [`report`] (CSV, summaries, SVG plots),
//! [`hpa_script`] (`gofe sim hpa`), [`fetch`] (`gofe sim fetch`), [`output`] (files renamed
//! into place at the end), [`runs`] (`gofe sim run`), [`tune`] (`gofe sim tune`: searching
//! the HPA's settings, chosen on train time and reported on held-out time), [`cli`] (the
//! `gofe sim` subcommands).

pub mod cli;
pub mod engine;
pub mod fetch;
pub mod hpa_script;
pub mod output;
pub mod report;
pub mod runs;
pub mod scenario;
pub mod stats;
pub mod traffic;
pub mod tune;
