//! `gofe up`: the whole feedback loop on one machine, live, as separate processes on
//! 127.0.0.1 — what a newcomer runs first.
//!
//! ```text
//!  load generator ──HTTP──▶ gofe proxy ──▶ gofe backend × N (processes; capacity, faults)
//!   (traffic curve)            ▲  │ /metrics
//!                         xDS  │  ├──────────▶ gofe controller ── weights, ejections ──┐
//!                     (gRPC)   │  │             (file discovery: SIGHUP)              │
//!                              └──┼───────────────────────────────────────────────────┘
//!                                 └──────────▶ gofe adapter ──external.metrics.k8s.io──▶ autoscaler
//!                                               (scrapes, or Prometheus)                 (gofe_core::hpa)
//!                                                                         starts / stops backends
//! ```
//!
//! What it runs comes from a simulator scenario ([`plan`]; the built-in one by default): the
//! backends' capacity and latency, a fault schedule, the traffic curve, the HPA. Every part is
//! the shipped binary in its own process — the proxy steered over a real ADS connection, the
//! controller deciding from the proxy's metrics, the adapter serving the external metrics API
//! over HTTP — and the autoscaler reads that API exactly as the HPA would and runs the HPA's
//! algorithm, the code the simulator runs. New backends reach the controller by file
//! discovery: the endpoints file is rewritten and the controller reloads it (SIGHUP).
//!
//! What the user sees ([`view`]): a live terminal view, plain lines when stdout is not a
//! terminal, or one JSON event per line (`--json`); a summary at the end and, with
//! `--report DIR`, the simulator's plots drawn from the live run.
//!
//! What it does not do: it is a demo and a test bed, not a way to run production. Kubernetes is
//! not involved (the autoscaler starts processes, not Pods), and a run killed with SIGKILL
//! cannot stop its children (Ctrl-C and SIGTERM stop everything).

pub mod load;
pub mod plan;
pub mod procs;
pub mod run;
pub mod view;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use run::run;

/// Why a run could not start or went wrong.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// The scenario file could not be read or is invalid.
    #[error("{0}")]
    Scenario(String),
    /// The scenario asks for what a live run cannot do (every problem, one per line).
    #[error("this scenario cannot run live:\n{0}")]
    Unsupported(String),
    /// Ports the run needs are in use.
    #[error("ports taken (choose others with the flags named): {0}")]
    PortsTaken(String),
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A part of the mesh exited or never became ready.
    #[error("{0}")]
    ChildFailed(String),
}

impl UpError {
    fn plan(problems: Vec<plan::Unsupported>) -> UpError {
        UpError::Unsupported(
            problems
                .iter()
                .map(|p| format!("  {p}"))
                .collect::<Vec<_>>()
                .join("\n"),
        )
    }
}

/// `gofe up`'s command line.
#[derive(Clone, Debug, clap::Args)]
pub struct UpArgs {
    /// A simulator scenario to play live (`gofe sim`'s format). Default: the built-in one
    /// (two backends, a failing one, a load rise and fall; about 100 s).
    #[arg(long)]
    pub scenario: Option<PathBuf>,
    /// How long to run, e.g. "60s". Default: the scenario's duration.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// One JSON event per line on stdout (for scripts and tests) instead of the live view.
    #[arg(long)]
    pub json: bool,
    /// Write the simulator's plots and a summary of the live run into this directory.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Use this Prometheus (it must scrape the proxy's admin address) for the controller's
    /// signals and the adapter, instead of scraping the proxy directly.
    #[arg(long, conflicts_with = "start_prometheus")]
    pub prometheus: Option<String>,
    /// Start Debian's/your `prometheus` (from the PATH) for the run, scraping the proxy, and
    /// use it as --prometheus does.
    #[arg(long)]
    pub start_prometheus: bool,
    /// The proxy's listener (where the load goes).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// The proxy's admin listener (/metrics, /ready, /config_dump).
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub proxy_admin: SocketAddr,
    /// The controller's admin listener (/decisions; `gofe controller explain web`).
    #[arg(long, default_value = "127.0.0.1:9902")]
    pub controller_admin: SocketAddr,
    /// The controller's xDS (ADS) server.
    #[arg(long, default_value = "127.0.0.1:18000")]
    pub xds: SocketAddr,
    /// The metrics adapter (external.metrics.k8s.io over plain HTTP).
    #[arg(long, default_value = "127.0.0.1:6443")]
    pub adapter: SocketAddr,
    /// Prometheus' port with --start-prometheus.
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub prometheus_listen: SocketAddr,
    /// The first backend port: backend slot k listens on this + k, its fault control on
    /// this + 100 + k.
    #[arg(long, default_value_t = 9101)]
    pub backend_ports: u16,
    /// Keep the run's files (configurations, one log per process) in this directory.
    /// Default: a temporary directory, removed after a clean run.
    #[arg(long)]
    pub workdir: Option<PathBuf>,
    /// The gofe binary to run the parts with. Default: this one.
    #[arg(long, hide = true)]
    pub gofe_binary: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    gofe_yaml::duration::parse(s).map_err(|e| e.to_string())
}
