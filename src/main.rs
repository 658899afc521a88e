//! The `gofe` command: one binary, thin subcommands over the library crates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use gofe_proxy::demo::DemoBackend;
use gofe_proxy::run::{ConfigSource, RunOptions};

/// gofe: metrics-driven adaptive load balancing and autoscaling for service meshes.
#[derive(Parser, Debug)]
#[command(name = "gofe", version, about, long_about = None)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the proxy (data plane) on a YAML configuration file, or steered by an xDS control
    /// plane (--bootstrap).
    Proxy {
        /// The configuration file (see examples/).
        #[arg(long, short, required_unless_present = "bootstrap")]
        config: Option<PathBuf>,
        /// An xDS bootstrap file (node, control-plane address, TLS, static resources; see
        /// `gofe_xds::bootstrap`). Replaces --config.
        #[arg(long, conflicts_with = "config")]
        bootstrap: Option<PathBuf>,
        /// Overrides the bootstrap's `node.id` (Envoy's flag; e.g. the Pod name from
        /// `$POD_NAME`, so each proxy replica is its own xDS node).
        #[arg(long, requires = "bootstrap")]
        service_node: Option<String>,
        /// Overrides the bootstrap's `node.cluster` (Envoy's flag).
        #[arg(long, requires = "bootstrap")]
        service_cluster: Option<String>,
        /// Also reload when the file changes (checked every second), not only on SIGHUP.
        #[arg(long)]
        watch: bool,
        /// How long SIGTERM waits for in-flight requests, e.g. "15s".
        #[arg(long, default_value = "15s", value_parser = parse_duration)]
        drain_timeout: Duration,
    },
    /// Run the whole demo with embedded defaults: three demo backends and the proxy in front of
    /// them (examples/up.yaml), on 127.0.0.1. No external services needed.
    Up {
        /// How long Ctrl-C waits for in-flight requests.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        drain_timeout: Duration,
    },
    /// Run one demo backend (answers "hello from NAME"; see `gofe_proxy::demo`).
    Backend {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:9101")]
        listen: SocketAddr,
        /// Name it reports in its answers and the x-backend header.
        #[arg(long, default_value = "backend")]
        name: String,
        /// Delay every answer, e.g. "50ms".
        #[arg(long, value_parser = parse_duration)]
        delay: Option<Duration>,
        /// Fail this fraction of requests (0.0-1.0), evenly spread.
        #[arg(long, default_value_t = 0.0)]
        fail_ratio: f64,
        /// The status of failed requests.
        #[arg(long, default_value_t = 500)]
        fail_status: u16,
    },
    /// The controller: signals in, endpoint weights and ejections out.
    Controller {
        #[command(subcommand)]
        command: ControllerCommand,
    },
    /// Simulate offline: replay traffic through the HPA and gofe's decision code.
    Sim(gofe_sim::cli::SimArgs),
    /// Run the Kubernetes external metrics adapter (external.metrics.k8s.io for the HPA).
    Adapter(Box<gofe_metrics_adapter::server::AdapterArgs>),
    /// Check a proxy configuration file and print every problem with its line and field.
    Check {
        /// The configuration file.
        config: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
enum ControllerCommand {
    /// Run the controller on a configuration file (see examples/controller.yaml).
    Run {
        /// The controller configuration.
        #[arg(long, short)]
        config: PathBuf,
        /// Also run the proxy it steers, in this process, and publish to it directly.
        #[arg(long)]
        with_proxy: bool,
        /// How long shutdown waits for the proxy's in-flight requests.
        #[arg(long, default_value = "15s", value_parser = parse_duration)]
        drain_timeout: Duration,
    },
    /// Show, per endpoint of a cluster, the inputs, the weight, the state and why.
    Explain {
        /// The cluster.
        cluster: String,
        /// The running controller's admin address.
        #[arg(long, default_value = "127.0.0.1:9902")]
        admin: SocketAddr,
    },
    /// Print the TrafficPolicy CustomResourceDefinition (YAML) for `kubectl apply -f -`.
    Crd,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    gofe_proxy::config::parse_duration(s).map_err(|e| e.to_string())
}

const UP_CONFIG: &str = include_str!("../examples/up.yaml");
const UP_CONTROLLER: &str = include_str!("../examples/controller.yaml");
const UP_BACKENDS: [(&str, &str); 3] = [
    ("web-1", "127.0.0.1:9101"),
    ("web-2", "127.0.0.1:9102"),
    ("web-3", "127.0.0.1:9103"),
];

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    // On one CPU (as under `taskset -c 0`, or a one-CPU container) a multi-thread runtime has a
    // single worker anyway, and its cross-thread machinery (a separate `block_on` thread,
    // atomics on every task hand-off, work-stealing bookkeeping) buys nothing: run everything
    // on one thread instead (measured in BENCHMARKS.md).
    let one_cpu = std::thread::available_parallelism().is_ok_and(|n| n.get() == 1);
    let mut builder = if one_cpu {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = builder
        .enable_all()
        .build()
        .context("starting the Tokio runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Proxy {
                bootstrap: Some(bootstrap),
                service_node,
                service_cluster,
                drain_timeout,
                ..
            } => {
                let mut b = gofe_xds::bootstrap::Bootstrap::load(&bootstrap)?;
                if let Some(node) = service_node.filter(|n| !n.is_empty()) {
                    b.node.id = node;
                }
                if let Some(cluster) = service_cluster {
                    b.node.cluster = cluster;
                }
                gofe_xds::bootstrap::run_loaded(b, drain_timeout, shutdown_signal())
                    .await
                    .context("gofe proxy (xDS)")
            }
            Command::Proxy {
                config: Some(config),
                watch,
                drain_timeout,
                ..
            } => gofe_proxy::run::run(RunOptions {
                source: ConfigSource::File(config),
                watch: watch.then_some(Duration::from_secs(1)),
                drain: drain_timeout,
            })
            .await
            .context("gofe proxy"),
            Command::Proxy { .. } => anyhow::bail!("gofe proxy needs --config or --bootstrap"),
            Command::Up { drain_timeout } => up(drain_timeout).await,
            Command::Backend {
                listen,
                name,
                delay,
                fail_ratio,
                fail_status,
            } => {
                let backend = DemoBackend::start(listen, &name)
                    .await
                    .with_context(|| format!("binding {listen}"))?;
                if let Some(d) = delay {
                    backend.set_delay(d);
                }
                backend.set_failure(fail_ratio, fail_status);
                tracing::info!(addr = %backend.addr(), %name, "demo backend serving");
                tokio::signal::ctrl_c().await.ok();
                backend.stop().await;
                Ok(())
            }
            Command::Controller { command } => controller(command).await,
            Command::Sim(args) => gofe_sim::cli::main(args),
            Command::Adapter(args) => gofe_metrics_adapter::run((*args).into_options()?)
                .await
                .context("gofe adapter"),
            Command::Check { config } => {
                gofe_proxy::config::load(&config)?;
                println!("{}: ok", config.display());
                Ok(())
            }
        }
    })
}

async fn controller(command: ControllerCommand) -> anyhow::Result<()> {
    match command {
        ControllerCommand::Run {
            config,
            with_proxy,
            drain_timeout,
        } => {
            let loaded = gofe_controller::config::load(&config)?;
            if !with_proxy {
                if loaded.controller.xds.is_none() {
                    tracing::warn!(
                        "no publisher: decisions are made and explained but not pushed (set xds.address, or use --with-proxy)"
                    );
                }
                gofe_controller::serve(
                    loaded,
                    gofe_controller::Publisher::DryRun,
                    gofe_controller::shutdown_signal(),
                )
                .await?;
                return Ok(());
            }
            let proxy = gofe_proxy::Proxy::new();
            proxy
                .apply(
                    loaded.proxy.clone(),
                    &config.display().to_string(),
                    drain_timeout,
                )
                .await?;
            gofe_controller::serve(
                loaded,
                gofe_controller::Publisher::Local(proxy.clone()),
                gofe_controller::shutdown_signal(),
            )
            .await?;
            proxy.shutdown(drain_timeout).await;
            Ok(())
        }
        ControllerCommand::Explain { cluster, admin } => explain(&cluster, admin).await,
        ControllerCommand::Crd => {
            print!("{}", gofe_controller::kubernetes::crd::crd_yaml());
            Ok(())
        }
    }
}

async fn explain(cluster: &str, admin: SocketAddr) -> anyhow::Result<()> {
    use http_body_util::BodyExt;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let uri: http::Uri = format!("http://{admin}/decisions/{cluster}").parse()?;
    let resp = client
        .get(uri)
        .await
        .with_context(|| format!("is a controller running with its admin on {admin}?"))?;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        anyhow::bail!("{status}: {}", String::from_utf8_lossy(&body).trim());
    }
    let view: serde_json::Value = serde_json::from_slice(&body)?;
    println!(
        "cluster {cluster}: mode {}",
        view["mode"].as_str().unwrap_or("?")
    );
    println!(
        "{:<24} {:>6} {:>7} {:<10} {:>8} {:>8} {:>9}  reason",
        "endpoint", "weight", "healthy", "state", "rps", "success", "latency"
    );
    for e in view["endpoints"].as_array().into_iter().flatten() {
        let i = &e["inputs"];
        let num = |v: &serde_json::Value, p: usize| {
            v.as_f64().map_or("-".to_owned(), |x| format!("{x:.p$}"))
        };
        println!(
            "{:<24} {:>6} {:>7} {:<10} {:>8} {:>8} {:>9}  {}",
            e["endpoint"].as_str().unwrap_or("?"),
            e["weight"],
            e["healthy"],
            e["state"].as_str().unwrap_or("?"),
            num(&i["rps"], 1),
            num(&i["success_rate"], 3),
            num(&i["latency_seconds"], 4),
            e["reason"].as_str().unwrap_or(""),
        );
    }
    Ok(())
}

/// SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn up(drain: Duration) -> anyhow::Result<()> {
    let mut backends = Vec::new();
    for (name, addr) in UP_BACKENDS {
        let addr: SocketAddr = addr.parse()?;
        backends.push(
            DemoBackend::start(addr, name)
                .await
                .with_context(|| format!("starting demo backend {name} on {addr}"))?,
        );
    }
    let proxy_config = gofe_proxy::config::parse("examples/up.yaml (embedded)", UP_CONFIG)?;
    let controller_config =
        gofe_controller::config::parse("examples/controller.yaml (embedded)", UP_CONTROLLER)?;
    let proxy = gofe_proxy::Proxy::new();
    proxy
        .apply(proxy_config.clone(), "examples/up.yaml (embedded)", drain)
        .await
        .context("starting the proxy")?;
    println!(
        "gofe is up:\n  proxy       http://127.0.0.1:8080/  (try /, /canary, /lr)\n  proxy admin http://127.0.0.1:9901/metrics  /ready  /config_dump\n  controller  http://127.0.0.1:9902/decisions  (or: gofe controller explain web)\n  backends    {}\nCtrl-C to stop.",
        UP_BACKENDS.map(|(n, a)| format!("{n}={a}")).join(" ")
    );
    let result = gofe_controller::serve(
        gofe_controller::config::Loaded {
            controller: controller_config,
            proxy: proxy_config,
        },
        gofe_controller::Publisher::Local(proxy.clone()),
        gofe_controller::shutdown_signal(),
    )
    .await
    .context("gofe controller");
    tracing::info!(?drain, "shutting down: draining in-flight requests");
    proxy.shutdown(drain).await;
    for b in backends {
        b.stop().await;
    }
    result
}
