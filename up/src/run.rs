//! The run: start the parts, play the scenario once a second, stop everything.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gofe_core::hpa::{
    ControllerConfig, History, Observation, PodInfo, PodPhase, Reading, ReadyCondition,
};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

use crate::load::{self, Counters};
use crate::plan::{FaultKind, Plan};
use crate::procs::{self, Child, HttpClient};
use crate::view::{EndpointRow, Mode, Status, View};
use crate::{UpArgs, UpError};

/// The metric the autoscaler reads, as the HPA of `../shared/hpa-sample.yaml` does.
pub const METRIC: &str = "http_requests_per_second";

/// The service (cluster) the run balances and scales.
pub const SERVICE: &str = "web";

#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    /// Created; its process starts at `at` (the scenario's startup time).
    Pending { at: f64 },
    /// Running; joins the endpoints `readiness` after it answers.
    Starting { answered: Option<f64> },
    /// In the endpoints.
    Ready,
    /// Out of the endpoints; stopped at `at` (after the proxy drained it).
    Leaving { at: f64 },
    /// Killed by a fault; noticed (out of the endpoints, replaced) at `noticed`.
    Dead { noticed: f64 },
}

struct Backend {
    index: usize,
    slot: u16,
    name: String,
    addr: SocketAddr,
    control: SocketAddr,
    phase: Phase,
    child: Option<Child>,
}

/// The outcome of a run, for the summary.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Requests sent.
    pub requests: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Requests the generator could not start (too many in flight).
    pub shed: u64,
    /// Most backends in the endpoints at once.
    pub max_ready: usize,
    /// Seconds from the command's start to traffic flowing through the proxy.
    pub startup_seconds: f64,
}

struct Run {
    plan: Plan,
    args: UpArgs,
    exe: PathBuf,
    dir: PathBuf,
    http: HttpClient,
    backends: Vec<Backend>,
    next_index: usize,
    controller: Option<Child>,
    view: View,
    /// Endpoint addresses last written to the endpoints file.
    published: Vec<SocketAddr>,
    desired: i32,
    hpa: History,
    next_sync: f64,
    faults_started: Vec<bool>,
    faults_ended: Vec<bool>,
    /// Last seen controller state per endpoint, and published/acked versions.
    states: BTreeMap<String, String>,
    last_version: u64,
    acked: BTreeMap<String, String>,
    prometheus_url: Option<String>,
}

/// Runs `gofe up` until the scenario ends or `stop` resolves (Ctrl-C).
pub async fn run(
    args: UpArgs,
    stop: impl std::future::Future<Output = ()>,
) -> Result<Summary, UpError> {
    let began = Instant::now();
    let plan = match &args.scenario {
        Some(path) => Plan::load(path, args.duration)?,
        None => Plan::default_plan(args.duration)?,
    };
    let exe = match &args.gofe_binary {
        Some(p) => p.clone(),
        None => std::env::current_exe().map_err(|source| UpError::Io {
            what: "finding the gofe binary".into(),
            source,
        })?,
    };
    let mut ports: Vec<(SocketAddr, &str)> = vec![
        (args.listen, "the proxy's listener, --listen"),
        (args.proxy_admin, "the proxy's admin, --proxy-admin"),
        (
            args.controller_admin,
            "the controller's admin, --controller-admin",
        ),
        (args.xds, "the controller's xDS server, --xds"),
        (args.adapter, "the metrics adapter, --adapter"),
    ];
    if args.start_prometheus {
        ports.push((args.prometheus_listen, "prometheus, --prometheus-listen"));
    }
    let first = backend_addr(args.backend_ports, 0, 0)?;
    ports.push((first, "the first backend, --backend-ports"));
    ports.push((
        backend_addr(args.backend_ports, 100, 0)?,
        "the first backend's fault control, --backend-ports",
    ));
    procs::check_free(&ports)?;
    let (dir, temporary) = match &args.workdir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("gofe-up-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir).map_err(|source| UpError::Io {
        what: format!("creating {}", dir.display()),
        source,
    })?;
    let mode = if args.json {
        Mode::Json
    } else if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        Mode::Terminal
    } else {
        Mode::Plain
    };
    let title = plan.name.clone();
    let mut run = Run {
        desired: plan.initial_backends as i32,
        faults_started: vec![false; plan.faults.len()],
        faults_ended: vec![false; plan.faults.len()],
        plan,
        args,
        exe,
        dir,
        http: procs::http_client(),
        backends: Vec::new(),
        next_index: 0,
        controller: None,
        view: View::new(mode, &title),
        published: Vec::new(),
        hpa: History::default(),
        next_sync: 0.0,
        states: BTreeMap::new(),
        last_version: 0,
        acked: BTreeMap::new(),
        prometheus_url: None,
    };
    run.next_sync = run.plan.sync.as_secs_f64();
    let mut others: Vec<Child> = Vec::new();
    let result = run.play(&mut others, began, stop).await;
    // Stop everything, whatever happened: the proxy first (no new requests reach backends
    // that are going away), then the rest.
    let grace = Duration::from_secs(5);
    for child in others.drain(..) {
        child.stop(grace).await;
    }
    if let Some(c) = run.controller.take() {
        c.stop(grace).await;
    }
    for b in &mut run.backends {
        if let Some(c) = b.child.take() {
            c.stop(grace).await;
        }
    }
    match &result {
        Ok(_) if temporary => {
            let _ = std::fs::remove_dir_all(&run.dir);
        }
        _ => eprintln!(
            "gofe up: configurations and logs are in {}",
            run.dir.display()
        ),
    }
    result
}

fn backend_addr(base: u16, offset: u16, slot: u16) -> Result<SocketAddr, UpError> {
    let port = u32::from(base) + u32::from(offset) + u32::from(slot);
    u16::try_from(port)
        .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
        .map_err(|_| {
            UpError::PortsTaken(format!(
                "--backend-ports {base}: port {port} is out of range"
            ))
        })
}

impl Run {
    fn t(&self, start: Instant) -> f64 {
        start.elapsed().as_secs_f64()
    }

    fn write(&self, name: &str, text: &str) -> Result<PathBuf, UpError> {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|source| UpError::Io {
                what: format!("writing {}", path.display()),
                source,
            })?;
        Ok(path)
    }

    /// The proxy configuration the controller serves: one listener, the `web` cluster with
    /// the backends in the endpoints.
    fn proxy_yaml(&self, endpoints: &[SocketAddr]) -> String {
        let p = &self.plan;
        let eps: String = if endpoints.is_empty() {
            "[]".into()
        } else {
            endpoints
                .iter()
                .map(|a| format!("\n      - {{ address: \"{a}\" }}"))
                .collect()
        };
        let outlier = p.outlier.map_or(String::new(), |(n, interval, base, pct)| {
            format!(
                "\n    outlier_detection: {{ consecutive_5xx: {n}, interval: \"{}ms\", base_ejection_time: \"{}ms\", max_ejection_percent: {pct} }}",
                interval.as_millis(),
                base.as_millis()
            )
        });
        format!(
            "# Written by gofe up: the proxy configuration the controller serves over xDS.\n\
             listeners:\n  - name: \"public\"\n    address: \"{listen}\"\n    protocol: \"http\"\n    filters:\n      - type: \"router\"\n        config:\n          virtual_hosts:\n            - name: \"{SERVICE}\"\n              domains: [\"*\"]\n              routes:\n                - match: {{ prefix: \"/\" }}\n                  route: {{ cluster: \"{SERVICE}\", timeout: \"{timeout}ms\", retry_policy: {{ retry_on: \"gateway-error\", num_retries: 1 }} }}\n\
             clusters:\n  - name: \"{SERVICE}\"\n    lb_policy: \"{lb}\"\n    connect_timeout: \"1s\"\n    circuit_breakers: {{ max_connections: 8192, max_pending_requests: 8192, max_requests: 8192 }}{outlier}\n    endpoints: {eps}\n\
             admin: {{ address: \"{admin}\" }}\n",
            listen = self.args.listen,
            timeout = p.timeout.as_millis(),
            lb = p.lb_policy,
            admin = self.args.proxy_admin,
        )
    }

    fn controller_yaml(&self) -> String {
        let p = &self.plan;
        let signals = match &self.prometheus_url {
            None => format!(
                "signals:\n  source: embedded\n  window: \"{}ms\"\n  latency_quantile: 0.9\n  embedded: {{ targets: [\"{}\"] }}\n",
                p.controller_window.as_millis(),
                self.args.proxy_admin
            ),
            // Prometheus lags by its scrape interval: the proxy's load reports (LRS) are the
            // fast path, over the plan's window.
            Some(url) => format!(
                "signals:\n  source: prometheus\n  window: \"{}ms\"\n  latency_quantile: 0.9\n  prometheus: {{ url: \"{url}\", scrape_interval: 1s }}\n  lrs: {{ enabled: true, interval: \"{}ms\", window: \"{}ms\" }}\n",
                p.controller_window.as_millis().max(2000),
                p.controller_window.as_millis().clamp(1, 1000),
                p.controller_window.as_millis().max(1),
            ),
        };
        format!(
            "# Written by gofe up.\nproxy_config: \"proxy.yaml\"\ninterval: \"{}ms\"\n{signals}\
             policy: {{ max_ejection_percent: 50, base_ejection_time: \"10s\", slow_start_window: \"10s\" }}\n\
             admin: {{ address: \"{}\" }}\nxds: {{ address: \"{}\" }}\nstate_file: \"controller-state.json\"\n",
            p.controller_interval.as_millis(),
            self.args.controller_admin,
            self.args.xds
        )
    }

    async fn play(
        &mut self,
        others: &mut Vec<Child>,
        began: Instant,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<Summary, UpError> {
        tokio::pin!(stop);
        // Prometheus, when asked for.
        if self.args.start_prometheus {
            let url = self.start_prometheus(others).await?;
            self.prometheus_url = Some(url);
        } else {
            self.prometheus_url.clone_from(&self.args.prometheus);
        }
        // The first backends, ready at once (as the simulator's first pods are).
        for _ in 0..self.plan.initial_backends {
            let mut b = self.new_backend(0.0)?;
            self.spawn_backend(&mut b)?;
            b.phase = Phase::Ready;
            self.backends.push(b);
        }
        for b in &mut self.backends {
            let control = b.control;
            if let Some(child) = b.child.as_mut() {
                procs::wait_ready(
                    &self.http,
                    child,
                    control,
                    "/fault",
                    Duration::from_secs(10),
                )
                .await?;
            }
        }
        let endpoints = self.endpoint_addrs();
        self.write("proxy.yaml", &self.proxy_yaml(&endpoints))?;
        self.published = endpoints;
        let controller_file = self.write("controller.yaml", &self.controller_yaml())?;
        let mut controller = Child::spawn(
            &self.exe,
            "controller",
            "controller",
            &[
                "--log-format".into(),
                "json".into(),
                "controller".into(),
                "run".into(),
                "--config".into(),
                path_arg(&controller_file),
            ],
            &self.dir,
        )?;
        procs::wait_ready(
            &self.http,
            &mut controller,
            self.args.controller_admin,
            "/metrics",
            Duration::from_secs(10),
        )
        .await?;
        self.controller = Some(controller);
        let bootstrap = self.write(
            "bootstrap.yaml",
            &format!(
                "# Written by gofe up.\nnode: {{ id: \"gofe-up\", cluster: \"gofe\" }}\nxds_server: {{ address: \"{}\", load_stats: {} }}\nstatic_resources: {{ admin: {{ address: \"{}\" }} }}\n",
                self.args.xds, self.prometheus_url.is_some(), self.args.proxy_admin
            ),
        )?;
        let mut proxy = Child::spawn(
            &self.exe,
            "proxy",
            "proxy",
            &[
                "--log-format".into(),
                "json".into(),
                "proxy".into(),
                "--bootstrap".into(),
                path_arg(&bootstrap),
            ],
            &self.dir,
        )?;
        procs::wait_ready(
            &self.http,
            &mut proxy,
            self.args.proxy_admin,
            "/ready",
            Duration::from_secs(20),
        )
        .await?;
        others.push(proxy);
        let rules = self.write(
            "adapter.yaml",
            &format!(
                "# Written by gofe up: the built-in rules over a short window.\nbuiltinRules:\n  rateWindow: \"{}s\"\n",
                self.plan.rate_window.as_secs().max(1)
            ),
        )?;
        let mut adapter_args: Vec<String> = vec![
            "--log-format".into(),
            "json".into(),
            "adapter".into(),
            "--insecure-local".into(),
            "--listen".into(),
            self.args.adapter.to_string(),
            "--config".into(),
            path_arg(&rules),
            "--cache-freshness".into(),
            "1s".into(),
        ];
        match &self.prometheus_url {
            None => adapter_args.extend([
                "--scrape".into(),
                self.args.proxy_admin.to_string(),
                "--scrape-interval".into(),
                "1s".into(),
            ]),
            Some(url) => adapter_args.extend(["--prometheus-url".into(), url.clone()]),
        }
        let mut adapter = Child::spawn(&self.exe, "adapter", "adapter", &adapter_args, &self.dir)?;
        procs::wait_ready(
            &self.http,
            &mut adapter,
            self.args.adapter,
            "/healthz",
            Duration::from_secs(10),
        )
        .await?;
        others.push(adapter);

        let start = Instant::now();
        let startup = began.elapsed().as_secs_f64();
        self.view.event(
            0.0,
            "started",
            json!({
                "startup_seconds": (startup * 10.0).round() / 10.0,
                "proxy": self.args.listen.to_string(),
                "proxy_admin": self.args.proxy_admin.to_string(),
                "controller_admin": self.args.controller_admin.to_string(),
                "xds": self.args.xds.to_string(),
                "adapter": self.args.adapter.to_string(),
                "prometheus": self.prometheus_url,
                "backends": self.backends.iter().map(|b| json!({"name": b.name, "address": b.addr.to_string()})).collect::<Vec<_>>(),
                "dir": self.dir.display().to_string(),
                "duration_seconds": self.plan.duration.as_secs_f64(),
            }),
            format!(
                "in {startup:.1}s: proxy http://{} (admin {}), controller http://{}/decisions, xDS {}, adapter http://{}/apis/external.metrics.k8s.io/v1beta1, {} backends",
                self.args.listen,
                self.args.proxy_admin,
                self.args.controller_admin,
                self.args.xds,
                self.args.adapter,
                self.backends.len()
            ),
        );

        // The load.
        let counters = Arc::new(Counters::default());
        let (stop_load, load_stopped) = tokio::sync::watch::channel(false);
        let base = self
            .args
            .scenario
            .as_deref()
            .and_then(Path::parent)
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let source = || {
            gofe_sim::traffic::TrafficSource::new(
                &self.plan.scenario.traffic,
                &base,
                self.plan.scenario.seed,
            )
            .map_err(|e| UpError::Scenario(e.to_string()))
        };
        let mut traffic = source()?;
        let rate = Arc::new(load::Rate::default());
        rate.set(traffic.at(0.5).unwrap_or(0.0));
        let load_task = tokio::spawn(load::run(
            self.args.listen,
            self.plan.timeout,
            counters.clone(),
            rate.clone(),
            load_stopped,
        ));

        let mut summary = Summary {
            startup_seconds: startup,
            ..Summary::default()
        };
        let mut series = gofe_sim::report::Series::default();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let end = self.plan.duration.as_secs_f64();
        let mut interrupted = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = &mut stop => { interrupted = true; }
            }
            let t = self.t(start);
            if interrupted || t >= end {
                break;
            }
            if let Err(e) = self.step(t).await {
                let _ = stop_load.send(true);
                load_task.abort();
                return Err(e);
            }
            // What the last second offered; then the curve for the coming one, at its middle.
            let offered = rate.get();
            rate.set(traffic.at(t + 0.5).unwrap_or(0.0));
            let tally = counters.take();
            summary.requests += tally.sent;
            summary.failed += tally.failed;
            summary.shed += tally.shed;
            let finished = (tally.ok + tally.failed).max(1) as f64;
            let mut status = Status {
                t,
                offered_rps: offered,
                served_rps: tally.ok as f64,
                p50_ms: tally.quantile_ms(0.5),
                p99_ms: tally.quantile_ms(0.99),
                error_ratio: tally.failed as f64 / finished,
                desired: self.desired,
                ready: self.published.len(),
                endpoints: Vec::new(),
                proxy_caught_up: false,
            };
            (status.endpoints, status.proxy_caught_up) = self.observe(t, &tally.per_backend).await;
            summary.max_ready = summary.max_ready.max(status.ready);
            let answered: f64 = tally.per_backend.values().sum::<u64>().max(1) as f64;
            let shares = self
                .backends
                .iter()
                .take(gofe_sim::engine::SHARE_PODS)
                .map(|b| tally.per_backend.get(&b.name).copied().unwrap_or(0) as f64 / answered)
                .collect();
            series.push(&gofe_sim::engine::StepRow {
                t,
                rps: offered,
                desired: self.desired,
                pods: self.backends.len(),
                endpoints: self.published.len(),
                requests: tally.sent as f64,
                failed: tally.failed as f64,
                p50_ms: status.p50_ms,
                p99_ms: status.p99_ms,
                ejected: status
                    .endpoints
                    .iter()
                    .filter(|e| e.state == "ejected")
                    .count(),
                shares,
            });
            self.view.status(&status);
        }
        let _ = stop_load.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(3), load_task).await;
        let t = self.t(start);
        let fail_pct = 100.0 * summary.failed as f64 / summary.requests.max(1) as f64;
        self.view.event(
            t,
            "summary",
            json!({"requests": summary.requests, "failed": summary.failed, "shed": summary.shed,
                   "max_ready": summary.max_ready, "interrupted": interrupted,
                   "startup_seconds": (summary.startup_seconds * 10.0).round() / 10.0}),
            format!(
                "{} requests, {} failed ({fail_pct:.2}%), at most {} backends ready{}",
                summary.requests,
                summary.failed,
                summary.max_ready,
                if interrupted { " (stopped early)" } else { "" }
            ),
        );
        if let Some(dir) = &self.args.report {
            self.report(dir, &series, &summary)?;
        }
        self.view.finish();
        Ok(summary)
    }

    async fn start_prometheus(&mut self, others: &mut Vec<Child>) -> Result<String, UpError> {
        let config = self.write(
            "prometheus.yml",
            &format!(
                "# Written by gofe up.\nglobal: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nscrape_configs:\n  - job_name: gofe-proxy\n    static_configs: [{{ targets: [\"{}\"] }}]\n  - job_name: gofe-controller\n    static_configs: [{{ targets: [\"{}\"] }}]\n",
                self.args.proxy_admin, self.args.controller_admin
            ),
        )?;
        let exe = PathBuf::from("prometheus");
        let mut child = Child::spawn(
            &exe,
            "prometheus",
            "prometheus",
            &[
                format!("--config.file={}", config.display()),
                format!(
                    "--storage.tsdb.path={}",
                    self.dir.join("prometheus-data").display()
                ),
                format!("--web.listen-address={}", self.args.prometheus_listen),
            ],
            &self.dir,
        )
        .map_err(|e| {
            UpError::ChildFailed(format!(
                "--start-prometheus: {e} (is Prometheus installed? Debian: apt install prometheus)"
            ))
        })?;
        procs::wait_ready(
            &self.http,
            &mut child,
            self.args.prometheus_listen,
            "/-/ready",
            Duration::from_secs(30),
        )
        .await?;
        others.push(child);
        Ok(format!("http://{}", self.args.prometheus_listen))
    }

    fn new_backend(&mut self, now: f64) -> Result<Backend, UpError> {
        let index = self.next_index;
        self.next_index += 1;
        let used: Vec<u16> = self.backends.iter().map(|b| b.slot).collect();
        let slot = (0..100u16)
            .find(|s| !used.contains(s))
            .ok_or_else(|| UpError::ChildFailed("more than 100 backends at once".into()))?;
        Ok(Backend {
            index,
            slot,
            name: format!("web-{}", index + 1),
            addr: backend_addr(self.args.backend_ports, 0, slot)?,
            control: backend_addr(self.args.backend_ports, 100, slot)?,
            phase: Phase::Pending {
                at: now + self.plan.model.startup.as_secs_f64(),
            },
            child: None,
        })
    }

    fn spawn_backend(&self, b: &mut Backend) -> Result<(), UpError> {
        let (capacity, latency) = self.plan.backend_speed(b.index, 1.0);
        let child = Child::spawn(
            &self.exe,
            &format!("backend {}", b.name),
            &b.name,
            &[
                "--log-format".into(),
                "json".into(),
                "backend".into(),
                "--listen".into(),
                b.addr.to_string(),
                "--name".into(),
                b.name.clone(),
                "--control".into(),
                b.control.to_string(),
                "--capacity".into(),
                format!("{capacity}"),
                "--delay".into(),
                format!("{}us", latency.as_micros()),
            ],
            &self.dir,
        )?;
        b.child = Some(child);
        Ok(())
    }

    fn endpoint_addrs(&self) -> Vec<SocketAddr> {
        self.backends
            .iter()
            .filter(|b| matches!(b.phase, Phase::Ready | Phase::Dead { .. }))
            .filter(|b| !matches!(b.phase, Phase::Dead { noticed } if noticed <= 0.0))
            .map(|b| b.addr)
            .collect()
    }

    /// Rewrites the endpoints file and tells the controller (file discovery) when the
    /// endpoints changed.
    fn publish_endpoints(&mut self, t: f64) -> Result<(), UpError> {
        let endpoints = self.endpoint_addrs();
        if endpoints == self.published {
            return Ok(());
        }
        self.write("proxy.yaml", &self.proxy_yaml(&endpoints))?;
        if let Some(c) = &self.controller {
            c.signal(Signal::SIGHUP);
        }
        self.view.event(
            t,
            "endpoints",
            json!({"endpoints": endpoints.iter().map(ToString::to_string).collect::<Vec<_>>()}),
            format!(
                "{} endpoints written to proxy.yaml; controller reloading (SIGHUP)",
                endpoints.len()
            ),
        );
        self.published = endpoints;
        Ok(())
    }

    /// One second of the scenario: faults, the backends' lifecycle, the HPA.
    async fn step(&mut self, t: f64) -> Result<(), UpError> {
        self.faults(t).await;
        // Lifecycle.
        let readiness = self.plan.model.readiness.as_secs_f64();
        for i in 0..self.backends.len() {
            match self.backends[i].phase {
                Phase::Pending { at } if t >= at => {
                    let mut b = std::mem::replace(&mut self.backends[i], placeholder());
                    let spawned = self.spawn_backend(&mut b);
                    b.phase = Phase::Starting { answered: None };
                    let (name, addr) = (b.name.clone(), b.addr);
                    self.backends[i] = b;
                    spawned?;
                    self.view.event(
                        t,
                        "backend_started",
                        json!({"name": name, "address": addr.to_string()}),
                        format!("{name} started on {addr}"),
                    );
                }
                Phase::Starting { answered: None } => {
                    let control = self.backends[i].control;
                    if let Ok((200, _)) = procs::get(&self.http, control, "/fault").await {
                        self.backends[i].phase = Phase::Starting { answered: Some(t) };
                    } else if let Some(c) = self.backends[i].child.as_mut() {
                        if c.exited().is_some() {
                            return Err(UpError::ChildFailed(format!(
                                "a backend exited at start: {}",
                                c.log_tail()
                            )));
                        }
                    }
                }
                Phase::Starting { answered: Some(at) } if t >= at + readiness => {
                    self.backends[i].phase = Phase::Ready;
                    let (name, addr) = (self.backends[i].name.clone(), self.backends[i].addr);
                    self.view.event(
                        t,
                        "backend_ready",
                        json!({"name": name, "address": addr.to_string()}),
                        format!("{name} is ready: joining the endpoints"),
                    );
                }
                Phase::Dead { noticed } if noticed > 0.0 && t >= noticed => {
                    let name = self.backends[i].name.clone();
                    self.backends[i].phase = Phase::Dead { noticed: 0.0 };
                    self.view.event(
                        t,
                        "backend_gone",
                        json!({"name": name}),
                        format!("{name}'s death noticed: out of the endpoints, replaced"),
                    );
                }
                _ => {}
            }
        }
        // Backends that left the endpoints a while ago stop; dead ones that were noticed go.
        let mut stopping = Vec::new();
        let mut kept = Vec::new();
        for b in self.backends.drain(..) {
            match b.phase {
                Phase::Leaving { at } if t >= at => stopping.push(b),
                Phase::Dead { noticed } if noticed <= 0.0 => stopping.push(b),
                _ => kept.push(b),
            }
        }
        self.backends = kept;
        for mut b in stopping {
            if let Some(c) = b.child.take() {
                c.stop(Duration::from_secs(3)).await;
            }
            if matches!(b.phase, Phase::Leaving { .. }) {
                self.view.event(
                    t,
                    "backend_stopped",
                    json!({"name": b.name}),
                    format!("{} stopped", b.name),
                );
            }
        }
        // The HPA.
        if self.plan.hpa.is_some() && t >= self.next_sync {
            self.next_sync += self.plan.sync.as_secs_f64();
            self.sync_hpa(t).await;
        }
        self.converge(t)?;
        self.publish_endpoints(t)?;
        Ok(())
    }

    async fn faults(&mut self, t: f64) {
        for i in 0..self.plan.faults.len() {
            let f = self.plan.faults[i];
            let starts = !self.faults_started[i] && t >= f.at.as_secs_f64();
            let ends = self.faults_started[i]
                && !self.faults_ended[i]
                && f.until.is_some_and(|u| t >= u.as_secs_f64());
            if !starts && !ends {
                continue;
            }
            if starts {
                self.faults_started[i] = true;
            } else {
                self.faults_ended[i] = true;
            }
            let Some(pos) = self.backends.iter().position(|b| b.index == f.pod) else {
                if starts {
                    self.faults_ended[i] = true;
                    self.view.event(
                        t,
                        "fault_skipped",
                        json!({"pod": f.pod}),
                        format!("fault on backend #{}: it does not exist now", f.pod + 1),
                    );
                }
                continue;
            };
            let (name, control, index) = {
                let b = &self.backends[pos];
                (b.name.clone(), b.control, b.index)
            };
            match (f.kind, starts) {
                (FaultKind::Die, _) => {
                    if let Some(c) = self.backends[pos].child.take() {
                        c.kill().await;
                    }
                    self.backends[pos].phase = Phase::Dead {
                        noticed: t + self.plan.model.dead_detection.as_secs_f64(),
                    };
                    self.view.event(
                        t,
                        "fault",
                        json!({"name": name, "kind": "die"}),
                        format!("{name} killed (SIGKILL)"),
                    );
                }
                (kind, _) => {
                    let (query, what) = match (kind, starts) {
                        (FaultKind::Fail(r), true) => (
                            format!("fail_ratio={r}&fail_status=503"),
                            format!("fails {:.0}% of requests (503)", r * 100.0),
                        ),
                        (FaultKind::Slow(k), true) => {
                            let (cap, lat) = self.plan.backend_speed(index, k);
                            (
                                format!("delay={}us&capacity={cap}", lat.as_micros()),
                                format!(
                                    "{k}x slower ({:.0} ms, {cap:.0} req/s)",
                                    lat.as_secs_f64() * 1000.0
                                ),
                            )
                        }
                        (FaultKind::Http { abort, delay }, true) => {
                            let (share, status) = abort.unwrap_or((0.0, 503));
                            let (extra, delayed) = delay.unwrap_or((Duration::ZERO, 0.0));
                            let mut what = Vec::new();
                            if abort.is_some() {
                                what.push(format!("aborts {:.1}% ({status})", share * 100.0));
                            }
                            if delay.is_some() {
                                what.push(format!(
                                    "delays {:.1}% by {} ms",
                                    delayed * 100.0,
                                    extra.as_millis()
                                ));
                            }
                            (
                                format!(
                                    "fail_ratio={share}&fail_status={status}&extra_delay={}us&extra_delay_ratio={delayed}",
                                    extra.as_micros()
                                ),
                                what.join(", "),
                            )
                        }
                        _ => {
                            let (cap, lat) = self.plan.backend_speed(index, 1.0);
                            (
                                format!(
                                    "fail_ratio=0&extra_delay_ratio=0&delay={}us&capacity={cap}",
                                    lat.as_micros()
                                ),
                                "recovered".to_owned(),
                            )
                        }
                    };
                    let result = procs::post(&self.http, control, &format!("/fault?{query}")).await;
                    let kind_name = match kind {
                        FaultKind::Fail(_) => "fail",
                        FaultKind::Slow(_) => "slow",
                        FaultKind::Die => "die",
                        FaultKind::Http { .. } => "http_fault",
                    };
                    let event = if starts { "fault" } else { "fault_cleared" };
                    match result {
                        Ok(200) => self.view.event(
                            t,
                            event,
                            json!({"name": name, "kind": kind_name}),
                            format!("{name} {what}"),
                        ),
                        other => {
                            let error = match other {
                                Ok(status) => format!("answered {status}"),
                                Err(e) => e,
                            };
                            self.view.event(
                                t,
                                "fault_failed",
                                json!({"name": name, "kind": kind_name, "error": error}),
                                format!("{name}: the fault control endpoint refused: {error}"),
                            )
                        }
                    }
                }
            }
        }
    }

    /// One HPA sync: the metric from the adapter's external metrics API, the HPA's algorithm.
    async fn sync_hpa(&mut self, t: f64) {
        let Some((spec, tolerance)) = self.plan.hpa.clone() else {
            return;
        };
        let path = format!(
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/{METRIC}?labelSelector=service%3D{SERVICE}"
        );
        let (reading, value) = match procs::get(&self.http, self.args.adapter, &path).await {
            Ok((200, body)) => match external_values(&body) {
                Some(values) if !values.is_empty() => {
                    let total: i64 = values.iter().sum();
                    (Reading::Values(values), Some(total as f64 / 1000.0))
                }
                _ => (Reading::Unavailable, None),
            },
            _ => (Reading::Unavailable, None),
        };
        let pods: Vec<PodInfo> = self
            .backends
            .iter()
            .filter(|b| !matches!(b.phase, Phase::Leaving { .. }))
            .map(|b| pod_info(b, t))
            .collect();
        let obs = Observation {
            spec_replicas: self.desired,
            status_replicas: pods.len() as i32,
            pods: &pods,
            readings: std::slice::from_ref(&reading),
        };
        let config = ControllerConfig {
            tolerance,
            ..ControllerConfig::default()
        };
        let out =
            gofe_core::hpa::reconcile(&spec, &config, &obs, &mut self.hpa, (t * 1000.0) as i64);
        if out.desired != self.desired {
            let target = spec
                .metrics
                .first()
                .map(|m| m.target.to_string())
                .unwrap_or_default();
            self.view.event(
                t,
                "scaled",
                json!({"from": self.desired, "to": out.desired, "metric": METRIC,
                       "value": value, "recommended": out.recommended,
                       "limit": out.limit.as_str()}),
                format!(
                    "{} → {} replicas: {METRIC}{{service={SERVICE}}} = {} (target {target})",
                    self.desired,
                    out.desired,
                    value.map_or("unavailable".into(), |v| format!("{v:.1}"))
                ),
            );
            self.desired = out.desired;
        }
    }

    /// Starts or stops backends to match the desired replicas (newest first on the way down,
    /// pending and starting ones before ready ones).
    fn converge(&mut self, t: f64) -> Result<(), UpError> {
        // A dead backend counts until its death is noticed (then it is gone from the list).
        let alive = |b: &Backend| !matches!(b.phase, Phase::Leaving { .. });
        let count = self.backends.iter().filter(|b| alive(b)).count() as i32;
        for _ in count..self.desired {
            let b = self.new_backend(t)?;
            self.view.event(
                t,
                "backend_created",
                json!({"name": b.name, "address": b.addr.to_string()}),
                format!(
                    "{} created (starts in {})",
                    b.name,
                    gofe_yaml::duration::format(self.plan.model.startup)
                ),
            );
            self.backends.push(b);
        }
        let mut excess = count - self.desired;
        let drain = self.plan.controller_interval.as_secs_f64() * 2.0 + 1.0;
        for pass in 0..2 {
            for b in self.backends.iter_mut().rev() {
                if excess <= 0 {
                    break;
                }
                let early = matches!(b.phase, Phase::Pending { .. } | Phase::Starting { .. });
                let ready = matches!(b.phase, Phase::Ready);
                if (pass == 0 && early) || (pass == 1 && ready) {
                    b.phase = Phase::Leaving { at: t + drain };
                    excess -= 1;
                    self.view
                        .log
                        .push((t, "backend_leaving".into(), b.name.clone()));
                }
            }
        }
        Ok(())
    }

    /// Reads the controller's decisions: endpoint rows for the view, and events for what
    /// changed (ejections, recoveries, xDS versions published and ACKed by the proxy).
    async fn observe(
        &mut self,
        t: f64,
        answers: &BTreeMap<String, u64>,
    ) -> (Vec<EndpointRow>, bool) {
        let names: BTreeMap<String, String> = self
            .backends
            .iter()
            .map(|b| (b.addr.to_string(), b.name.clone()))
            .collect();
        let total: u64 = answers.values().sum::<u64>().max(1);
        let Ok((200, body)) =
            procs::get(&self.http, self.args.controller_admin, "/decisions").await
        else {
            return (Vec::new(), false);
        };
        let Ok(view) = serde_json::from_slice::<Value>(&body) else {
            return (Vec::new(), false);
        };
        let mut rows = Vec::new();
        if let Some(eps) = view["clusters"][SERVICE]["endpoints"].as_array() {
            for e in eps {
                let address = e["endpoint"].as_str().unwrap_or_default().to_owned();
                let name = names.get(&address).cloned().unwrap_or_else(|| "?".into());
                let state = e["state"].as_str().unwrap_or_default().to_owned();
                let reason = e["reason"].as_str().unwrap_or_default().to_owned();
                let before = self.states.insert(address.clone(), state.clone());
                let kind = match (before.as_deref(), state.as_str()) {
                    (Some(b), s) if b == s => None,
                    (_, "ejected") => Some("ejected"),
                    (_, "half_open") => Some("half_open"),
                    (Some("ejected" | "half_open"), _) => Some("recovered"),
                    (None, _) => None,
                    (Some(_), _) => Some("state"),
                };
                if let Some(kind) = kind {
                    self.view.event(
                        t,
                        kind,
                        json!({"endpoint": address, "name": name, "state": state, "reason": reason}),
                        format!("{name} ({address}) {state}: {reason}"),
                    );
                }
                rows.push(EndpointRow {
                    share: answers.get(&name).copied().unwrap_or(0) as f64 / total as f64,
                    weight: u32::try_from(e["weight"].as_u64().unwrap_or(0)).unwrap_or(u32::MAX),
                    address,
                    name,
                    state,
                    reason,
                });
            }
        }
        let version = view["version"].as_u64().unwrap_or(0);
        if version != self.last_version && version > 0 {
            self.last_version = version;
            self.view.event(
                t,
                "xds_published",
                json!({"version": version}),
                format!("controller published version {version}"),
            );
        }
        let mut caught_up = false;
        if let Some(proxies) = view["proxies"].as_array() {
            for p in proxies {
                caught_up |= p["caught_up"].as_bool().unwrap_or(false);
                let node = p["node"].as_str().unwrap_or_default();
                if let Some(acked) = p["acked"].as_object() {
                    for (kind, v) in acked {
                        let v = v.as_str().unwrap_or_default().to_owned();
                        let key = format!("{node}/{kind}");
                        if self.acked.get(&key) != Some(&v) {
                            self.view.event(
                                t,
                                "xds_acked",
                                json!({"node": node, "type": kind, "version": v}),
                                format!("proxy {node} ACKed {kind} version {v}"),
                            );
                            self.acked.insert(key, v);
                        }
                    }
                }
            }
        }
        (rows, caught_up)
    }

    fn report(
        &self,
        dir: &Path,
        series: &gofe_sim::report::Series,
        summary: &Summary,
    ) -> Result<(), UpError> {
        let io = |what: String| move |source| UpError::Io { what, source };
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let svg = gofe_sim::report::plot_run(&format!("gofe up: {}", self.plan.name), series);
        let plot = dir.join("run.svg");
        std::fs::write(&plot, svg).map_err(io(format!("writing {}", plot.display())))?;
        let mut text = format!(
            "gofe up: {}\nrequests {}  failed {} ({:.2}%)  shed by the load generator {}  most backends ready {}\nstarted in {:.1} s\n\nwhat happened:\n",
            self.plan.name,
            summary.requests,
            summary.failed,
            100.0 * summary.failed as f64 / summary.requests.max(1) as f64,
            summary.shed,
            summary.max_ready,
            summary.startup_seconds
        );
        for (t, kind, line) in &self.view.log {
            text.push_str(&format!("{t:6.1}s  {kind:<14} {line}\n"));
        }
        let path = dir.join("summary.txt");
        std::fs::write(&path, text).map_err(io(format!("writing {}", path.display())))?;
        Ok(())
    }
}

fn placeholder() -> Backend {
    Backend {
        index: usize::MAX,
        slot: u16::MAX,
        name: String::new(),
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        control: SocketAddr::from(([0, 0, 0, 0], 0)),
        phase: Phase::Ready,
        child: None,
    }
}

fn path_arg(p: &Path) -> String {
    p.display().to_string()
}

fn pod_info(b: &Backend, t: f64) -> PodInfo {
    let (phase, ready) = match b.phase {
        Phase::Pending { .. } => (PodPhase::Pending, None),
        Phase::Starting { .. } => (
            PodPhase::Running,
            Some(ReadyCondition {
                ready: false,
                transition_age_ms: 0,
            }),
        ),
        Phase::Ready | Phase::Leaving { .. } => (
            PodPhase::Running,
            Some(ReadyCondition {
                ready: true,
                transition_age_ms: 60_000,
            }),
        ),
        Phase::Dead { .. } => (PodPhase::Failed, None),
    };
    let _ = t;
    PodInfo {
        name: b.name.clone(),
        phase,
        deleted: false,
        ready,
        start_age_ms: Some(60_000),
    }
}

/// The values of an `ExternalMetricValueList`, in milli-units.
pub fn external_values(body: &[u8]) -> Option<Vec<i64>> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v["items"]
        .as_array()?
        .iter()
        .map(|i| gofe_sim::hpa_script::parse_quantity(i["value"].as_str()?).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_metric_lists_are_read_as_milli_units() {
        let body = br#"{"kind":"ExternalMetricValueList","items":[{"metricName":"x","value":"12500m"},{"metricName":"x","value":"3"}]}"#;
        assert_eq!(external_values(body), Some(vec![12_500, 3_000]));
        assert_eq!(external_values(br#"{"items":[{"value":"lots"}]}"#), None);
        assert_eq!(external_values(b"not json"), None);
    }
}
