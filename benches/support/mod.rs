//! What the controller's benchmarks share: a mesh of demo backends behind a gofe proxy that a
//! controller steers over real xDS (in this process, on loopback sockets), and the small
//! helpers around a run.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use gofe_controller::config::{self, Loaded};
use gofe_controller::{Controller, Shared};
use gofe_proxy::demo::DemoBackend;
use gofe_proxy::Proxy;

#[path = "../../tests/support/mod.rs"]
mod xds_proxy;
use xds_proxy::XdsProxy;

/// Backends, the proxy in front of them, and its addresses.
pub struct Mesh {
    pub backends: Vec<DemoBackend>,
    pub addrs: Vec<String>,
    pub proxy: Proxy,
    pub xds: XdsProxy,
    pub config: gofe_proxy::ProxyConfig,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
}

impl Mesh {
    /// `n` backends on 127.0.0.1 and a proxy on the configuration `yaml` makes of their
    /// addresses (a listener and an admin on `127.0.0.1:0`).
    pub async fn start(n: usize, yaml: impl Fn(&[String]) -> String) -> Mesh {
        let mut backends = Vec::new();
        for i in 0..n {
            backends.push(
                DemoBackend::start("127.0.0.1:0".parse().unwrap(), &format!("b{i}"))
                    .await
                    .unwrap(),
            );
        }
        let addrs: Vec<String> = backends.iter().map(|b| b.addr().to_string()).collect();
        let config = gofe_proxy::config::parse("bench.yaml", &yaml(&addrs)).unwrap();
        let xds = XdsProxy::start(&config, "bench").await;
        let listen = xds.listener("127.0.0.1:0").await;
        let admin = xds.admin;
        Mesh {
            backends,
            addrs,
            proxy: xds.proxy.clone(),
            xds,
            config,
            listen,
            admin,
        }
    }

    /// Stops the proxy and the backends.
    pub async fn stop(self) {
        self.xds.stop().await;
        for b in self.backends {
            b.stop().await;
        }
    }
}

/// A controller deciding every second on `controller_yaml`, publishing into the mesh's proxy.
pub struct Running {
    pub shared: std::sync::Arc<Shared>,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub fn start(mesh: &Mesh, controller_yaml: &str) -> Running {
        let loaded = Loaded {
            controller: config::parse("controller.yaml", controller_yaml).unwrap(),
            proxy: mesh.config.clone(),
        };
        let c = Controller::new(loaded, mesh.xds.publisher()).unwrap();
        let shared = c.shared();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(c.run_until(Duration::from_secs(1), async {
            let _ = rx.await;
        }));
        Running { shared, stop, task }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// `--seconds N` from the command line.
pub fn seconds(args: &[String], default: u64) -> u64 {
    args.iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(default)
}

/// The `p` quantile of sorted values (0 when empty).
pub fn quantile(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * p) as usize)
        .copied()
        .unwrap_or(0.0)
}

/// The benches' HTTP client.
pub type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<bytes::Bytes>,
>;

/// One GET that must complete, body included, within `timeout`: the status if it did.
pub async fn get_within(
    client: &HttpClient,
    uri: http::Uri,
    timeout: Duration,
) -> Option<http::StatusCode> {
    use http_body_util::BodyExt;
    tokio::time::timeout(timeout, async {
        let r = client.get(uri).await.ok()?;
        let status = r.status();
        r.into_body().collect().await.ok()?;
        Some(status)
    })
    .await
    .ok()
    .flatten()
}

/// Open-loop load: `rps` times a second until `seconds` after `start` (late ticks are sent in
/// a burst, never dropped), `next(elapsed)` makes each request's future, which runs as a task
/// of its own; returns when every request has finished.
pub async fn open_loop<F, Fut>(rps: u64, start: std::time::Instant, seconds: u64, mut next: F)
where
    F: FnMut(Duration) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rps));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut inflight = Vec::new();
    while start.elapsed() < Duration::from_secs(seconds) {
        tick.tick().await;
        inflight.push(tokio::spawn(next(start.elapsed())));
        if inflight.len() > 4096 {
            inflight.retain(|h| !h.is_finished());
        }
    }
    for h in inflight {
        let _ = h.await;
    }
}
