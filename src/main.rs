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
    },
    /// Check a proxy configuration file and print every problem with its line and field.
    Check {
        /// The configuration file.
        config: PathBuf,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    gofe_proxy::config::parse_duration(s).map_err(|e| e.to_string())
}

const UP_CONFIG: &str = include_str!("../examples/up.yaml");
const UP_BACKENDS: [(&str, &str); 3] = [
    ("web-1", "127.0.0.1:9101"),
    ("web-2", "127.0.0.1:9102"),
    ("web-3", "127.0.0.1:9103"),
];

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the Tokio runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Proxy {
                bootstrap: Some(bootstrap),
                drain_timeout,
                ..
            } => gofe_xds::bootstrap::run(&bootstrap, drain_timeout, shutdown_signal())
                .await
                .context("gofe proxy (xDS)"),
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
            Command::Backend { listen, name } => {
                let backend = DemoBackend::start(listen, &name)
                    .await
                    .with_context(|| format!("binding {listen}"))?;
                tracing::info!(addr = %backend.addr(), %name, "demo backend serving");
                tokio::signal::ctrl_c().await.ok();
                backend.stop().await;
                Ok(())
            }
            Command::Check { config } => {
                gofe_proxy::config::load(&config)?;
                println!("{}: ok", config.display());
                Ok(())
            }
        }
    })
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
    println!(
        "gofe is up:\n  proxy    http://127.0.0.1:8080/  (try /, /canary, /lr)\n  admin    http://127.0.0.1:9901/metrics  /ready  /config_dump\n  backends {}\nCtrl-C to stop.",
        UP_BACKENDS.map(|(n, a)| format!("{n}={a}")).join(" ")
    );
    let result = gofe_proxy::run::run(RunOptions {
        source: ConfigSource::Embedded {
            name: "examples/up.yaml (embedded)".into(),
            text: UP_CONFIG.into(),
        },
        watch: None,
        drain,
    })
    .await
    .context("gofe proxy");
    for b in backends {
        b.stop().await;
    }
    result
}
