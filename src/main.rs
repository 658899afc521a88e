//! The `gofe` command: one binary, thin subcommands over the library crates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use gofe_proxy::demo::DemoBackend;
use gofe_proxy::run::{ConfigSource, RunOptions};

mod explain;
mod reference;

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
        /// `gofe_proxy::xds::bootstrap`). Replaces --config.
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
    /// The whole feedback loop, live, on 127.0.0.1: backends with a fault schedule, the proxy
    /// steered by the controller over xDS, the metrics adapter, an autoscaler running the HPA's
    /// algorithm on the adapter's API, and a load that rises and falls. Nothing to install.
    Up(Box<gofe_up::UpArgs>),
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
        #[arg(long, default_value_t = 0.0, value_parser = parse_fail_ratio)]
        fail_ratio: f64,
        /// The status of failed requests.
        #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u16).range(100..=599))]
        fail_status: u16,
        /// Serve at most this many requests per second, queueing the rest (latency rises with
        /// load; a request that would wait over 1 s gets 503). 0: unlimited.
        #[arg(long, default_value_t = 0.0, value_parser = parse_capacity)]
        capacity: f64,
        /// Serve a control endpoint here to change the faults while running:
        /// `curl -X POST 'http://ADDR/fault?fail_ratio=0.5&fail_status=503&delay=50ms'`.
        #[arg(long)]
        control: Option<SocketAddr>,
        /// Break every new connection at the protocol level: reset (RST after reading the
        /// request), garbage (bytes that are not HTTP), half-close (FIN without an answer),
        /// silent (never answer), no (behave). The control endpoint's `broken=` changes it.
        #[arg(long, default_value = "no")]
        broken: gofe_proxy::demo::Broken,
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
    /// Add the gofe proxy sidecar to every pod template of Kubernetes manifests (stdin or
    /// files; YAML, JSON, List) and print them; `gofe inject init` runs inside injected pods.
    Inject(Box<gofe_inject::cli::InjectArgs>),
    /// Check any gofe file (proxy config, xDS bootstrap, controller config, adapter rules,
    /// simulator scenario) and print every problem with its file, line, column and field. The
    /// kind is told from the file's top-level keys unless --kind says it.
    Check {
        /// The file.
        file: PathBuf,
        /// What kind of file it is. Default: detected.
        #[arg(long, value_enum)]
        kind: Option<FileKind>,
    },
    /// Print the configuration reference (Markdown) of the proxy file, the xDS bootstrap and
    /// the controller file: every field with its type, default and meaning, written from the
    /// configuration types (docs/configuration.md is this output).
    Reference,
}

/// The kinds of file `gofe check` knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum FileKind {
    /// `gofe proxy --config` (listeners, clusters, admin).
    Proxy,
    /// `gofe proxy --bootstrap` (node, xds_server, static_resources).
    Bootstrap,
    /// `gofe controller run --config` (proxy_config, signals, policy, ...); also checks the
    /// proxy configuration it names.
    Controller,
    /// `gofe adapter --config` (prometheus-adapter's rules, gofe's builtinRules).
    Adapter,
    /// `gofe sim` scenarios (traffic, service, policies).
    Scenario,
}

impl FileKind {
    /// Tells a file's kind by its top-level keys.
    fn detect(keys: &[String]) -> Option<FileKind> {
        let has = |names: &[&str]| keys.iter().any(|k| names.contains(&k.as_str()));
        if has(&["proxy_config"]) {
            Some(FileKind::Controller)
        } else if has(&["node", "xds_server", "static_resources"]) {
            Some(FileKind::Bootstrap)
        } else if has(&["externalRules", "rules", "resourceRules", "builtinRules"]) {
            Some(FileKind::Adapter)
        } else if has(&["traffic", "service", "policies"]) {
            Some(FileKind::Scenario)
        } else if has(&["listeners", "clusters", "admin"]) {
            Some(FileKind::Proxy)
        } else {
            None
        }
    }
}

/// `gofe check`: loads `file` as `kind` (or the detected kind) with every problem reported.
fn check(file: &std::path::Path, kind: Option<FileKind>) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("{}: cannot read", file.display()))?;
    let kind = match kind {
        Some(k) => k,
        None => gofe_yaml::top_level_keys(&text)
            .as_deref()
            .and_then(FileKind::detect)
            .unwrap_or(FileKind::Proxy),
    };
    match kind {
        FileKind::Proxy => drop(gofe_proxy::config::load(file)?),
        FileKind::Bootstrap => drop(gofe_proxy::xds::bootstrap::Bootstrap::load(file)?),
        FileKind::Controller => drop(gofe_controller::config::load(file)?),
        FileKind::Adapter => drop(gofe_metrics_adapter::config::load(file)?),
        FileKind::Scenario => drop(gofe_sim::scenario::load(file)?),
    }
    let name = format!("{kind:?}").to_lowercase();
    println!("{}: ok ({name})", file.display());
    Ok(())
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
        /// The cluster. Default: list the clusters and the xDS nodes.
        cluster: Option<String>,
        /// The running controller's admin address.
        #[arg(long, default_value = "127.0.0.1:9902")]
        admin: SocketAddr,
    },
    /// Print the TrafficPolicy CustomResourceDefinition (YAML) for `kubectl apply -f -`.
    Crd,
}

fn parse_fail_ratio(s: &str) -> Result<f64, String> {
    gofe_proxy::demo::check_fail_ratio(s)
}

fn parse_capacity(s: &str) -> Result<f64, String> {
    gofe_proxy::demo::check_capacity(s)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    gofe_proxy::config::parse_duration(s).map_err(|e| e.to_string())
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`); the filter can be changed at run
/// time through the proxy admin's `/logging` (Envoy's), which gets a [`LogControl`] for it.
///
/// [`LogControl`]: gofe_proxy::LogControl
fn init_logs(format: LogFormat) {
    let wanted = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    let (filter, directives) = match tracing_subscriber::EnvFilter::try_new(&wanted) {
        Ok(filter) => (filter, wanted),
        Err(_) => (
            tracing_subscriber::EnvFilter::new("info"),
            "info".to_owned(),
        ),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    /// The control over a reload handle of any formatter (text and JSON differ in type).
    fn control<L, S>(
        handle: tracing_subscriber::reload::Handle<L, S>,
        directives: String,
    ) -> gofe_proxy::LogControl
    where
        L: From<tracing_subscriber::EnvFilter> + Send + Sync + 'static,
        S: Send + Sync + 'static,
    {
        let current = std::sync::Mutex::new(directives);
        Box::new(move |wanted| {
            let mut current = current.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(wanted) = wanted {
                let filter = tracing_subscriber::EnvFilter::try_new(wanted)
                    .map_err(|e| format!("filter {wanted:?}: {e}"))?;
                handle
                    .reload(filter)
                    .map_err(|e| format!("the log filter could not be changed: {e}"))?;
                *current = wanted.to_owned();
            }
            Ok(current.clone())
        })
    }
    match format {
        LogFormat::Text => {
            let builder = builder.with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            gofe_proxy::install_log_control(control(handle, directives));
        }
        LogFormat::Json => {
            let builder = builder.json().with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            gofe_proxy::install_log_control(control(handle, directives));
        }
    }
}

/// A part started by `gofe up` (which sets `GOFE_EXIT_WITH_PARENT` to its pid) exits when
/// that process is gone, however it ended: no backend, proxy or controller is left behind
/// holding its ports even when `gofe up` was killed with SIGKILL.
fn exit_with_parent() {
    let Some(parent) = std::env::var("GOFE_EXIT_WITH_PARENT")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
    else {
        return;
    };
    std::thread::spawn(move || loop {
        if std::os::unix::process::parent_id() != parent {
            tracing::warn!(
                parent,
                "the gofe up process that started this one is gone: exiting"
            );
            std::process::exit(1);
        }
        std::thread::sleep(Duration::from_millis(250));
    });
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    exit_with_parent();
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
                let mut b = gofe_proxy::xds::bootstrap::Bootstrap::load(&bootstrap)?;
                if let Some(node) = service_node.filter(|n| !n.is_empty()) {
                    b.node.id = node;
                }
                if let Some(cluster) = service_cluster {
                    b.node.cluster = cluster;
                }
                let _hup = ignore_sighup("gofe proxy --bootstrap (its configuration comes from xDS)");
                gofe_proxy::xds::bootstrap::run_loaded(b, drain_timeout, shutdown_signal())
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
            Command::Up(args) => {
                let _hup = ignore_sighup("gofe up (its configuration is embedded or --scenario)");
                // Registered now, not when the run first waits on it: a Ctrl-C while the parts
                // are starting still stops them cleanly.
                let stop = shutdown_signal_now()?;
                gofe_up::run(*args, stop).await?;
                Ok(())
            }
            Command::Backend {
                listen,
                name,
                delay,
                fail_ratio,
                fail_status,
                capacity,
                control,
                broken,
            } => {
                let backend = DemoBackend::start(listen, &name)
                    .await
                    .with_context(|| format!("binding {listen}"))?;
                if let Some(d) = delay {
                    backend.set_delay(d);
                }
                backend.set_failure(fail_ratio, fail_status);
                backend.set_capacity(capacity);
                backend.set_broken(broken);
                if let Some(addr) = control {
                    let listener = tokio::net::TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("binding the control endpoint {addr}"))?;
                    tracing::info!(control = %listener.local_addr()?, "fault control endpoint serving /fault");
                    backend.serve_control(listener);
                }
                tracing::info!(addr = %backend.addr(), %name, "demo backend serving");
                let _hup = ignore_sighup("gofe backend (change faults through --control)");
                shutdown_signal().await;
                backend.stop().await;
                Ok(())
            }
            Command::Controller { command } => controller(command).await,
            Command::Sim(args) => gofe_sim::cli::main(args),
            Command::Adapter(args) => {
                let _hup = ignore_sighup("gofe adapter (restart it to read its rules again)");
                gofe_metrics_adapter::run((*args).into_options()?)
                .await
                .context("gofe adapter")
            }
            Command::Check { file, kind } => check(&file, kind),
            Command::Reference => {
                print!("{}", reference::markdown());
                Ok(())
            }
            Command::Inject(args) => gofe_inject::cli::main(*args),
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
            gofe_controller::config::check_files(&config, &loaded)?;
            if !with_proxy {
                if loaded.controller.xds.is_none() {
                    tracing::warn!(
                        "no publisher: decisions are made and explained but not pushed (set xds.address, or use --with-proxy)"
                    );
                }
                gofe_controller::serve_with_reloads(
                    loaded,
                    gofe_controller::Publisher::DryRun,
                    gofe_controller::shutdown_signal(),
                    reload_on_sighup(config.clone()),
                )
                .await?;
                return Ok(());
            }
            let mesh = LocalMesh::start(&loaded, drain_timeout).await?;
            let result = gofe_controller::serve_with_reloads(
                loaded,
                gofe_controller::Publisher::Xds(mesh.ads.clone()),
                gofe_controller::shutdown_signal(),
                reload_on_sighup(config.clone()),
            )
            .await;
            mesh.stop(drain_timeout).await;
            result.context("gofe controller")
        }
        ControllerCommand::Explain { cluster, admin } => explain(cluster.as_deref(), admin).await,
        ControllerCommand::Crd => {
            print!("{}", gofe_controller::kubernetes::crd::crd_yaml());
            Ok(())
        }
    }
}

async fn explain(cluster: Option<&str>, admin: SocketAddr) -> anyhow::Result<()> {
    use http_body_util::BodyExt;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let uri: http::Uri = format!("http://{admin}/decisions").parse()?;
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
    print!(
        "{}",
        explain::render(&view, cluster).map_err(anyhow::Error::msg)?
    );
    Ok(())
}

/// On each SIGHUP, reads the controller's files again: a valid configuration goes to the
/// controller, an invalid one is logged with every problem and the running one stays.
fn reload_on_sighup(path: PathBuf) -> tokio::sync::mpsc::Receiver<gofe_controller::config::Loaded> {
    use tokio::signal::unix::{signal, SignalKind};
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    match signal(SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::info!(config = %path.display(), "SIGHUP: reloading the controller's configuration");
                    match gofe_controller::config::load(&path) {
                        Ok(loaded) => {
                            if tx.send(loaded).await.is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "reload refused: the running configuration stays")
                        }
                    }
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "cannot handle SIGHUP: reload needs a restart"),
    }
    rx
}

/// Keeps SIGHUP from killing a command that has nothing to reload: each one is logged as
/// ignored, with what the command does instead. The handler lives as long as the guard.
fn ignore_sighup(what: &'static str) -> Option<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).ok()?;
    Some(tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::warn!(
                command = what,
                "SIGHUP ignored: this command has no files to reload"
            );
        }
    }))
}

/// SIGTERM or SIGINT, with both handlers installed before this returns.
fn shutdown_signal_now() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
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

/// A proxy in this process steered by the controller over real xDS: the controller's ADS server
/// on a loopback socket (its `xds.address`, or a free port) and the proxy's xDS client connected
/// to it, exactly as separate processes would be.
struct LocalMesh {
    ads: gofe_xds::AdsServer,
    proxy: gofe_proxy::Proxy,
    client: gofe_proxy::xds::XdsClient,
    stop_ads: tokio::sync::oneshot::Sender<()>,
    ads_task: tokio::task::JoinHandle<()>,
}

impl LocalMesh {
    async fn start(
        loaded: &gofe_controller::config::Loaded,
        drain: Duration,
    ) -> anyhow::Result<LocalMesh> {
        let address = loaded
            .controller
            .xds
            .as_ref()
            .map_or("127.0.0.1:0", |x| x.address.as_str());
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("binding the xDS server on {address}"))?;
        let xds_addr = listener.local_addr()?;
        let ads = gofe_xds::AdsServer::new(gofe_controller::server_options(
            &loaded.controller.signals,
            loaded.controller.interval,
        ));
        let (stop_ads, stopped) = tokio::sync::oneshot::channel::<()>();
        let ads_task = tokio::spawn(gofe_xds::serve(listener, ads.clone(), None, async {
            let _ = stopped.await;
        }));
        tracing::info!(xds = %xds_addr, "serving ADS");
        // The admin listener is the proxy's own (a bootstrap setting, as in Envoy); everything
        // else arrives over xDS.
        let base = gofe_proxy::ProxyConfig {
            admin: loaded.proxy.admin.clone(),
            ..Default::default()
        };
        let proxy = gofe_proxy::Proxy::new();
        let client = gofe_proxy::xds::XdsClient::start(
            proxy.clone(),
            gofe_proxy::xds::ClientOptions {
                node_id: "gofe-local".into(),
                node_cluster: "gofe".into(),
                server: xds_addr.to_string(),
                tls: None,
                base,
                drain,
                backoff_initial: Duration::from_millis(50),
                backoff_max: Duration::from_secs(1),
                load_reporting: loaded.controller.signals.lrs.enabled,
            },
        )?;
        Ok(LocalMesh {
            ads,
            proxy,
            client,
            stop_ads,
            ads_task,
        })
    }

    async fn stop(self, drain: Duration) {
        tracing::info!(?drain, "shutting down: draining in-flight requests");
        self.client.stop();
        self.proxy.shutdown(drain).await;
        let _ = self.stop_ads.send(());
        let _ = self.ads_task.await;
    }
}
