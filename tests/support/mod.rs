//! A gofe proxy steered over real xDS, in the test's process: the controller's ADS server on a
//! loopback socket and the proxy's own xDS client connected to it — what `gofe up` and
//! `gofe controller run --with-proxy` run, and what separate processes do.

#![allow(dead_code, unreachable_pub)]

pub mod pki;
pub mod process;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gofe_controller::Publisher;
use gofe_proxy::xds::{ClientOptions, XdsClient};
use gofe_proxy::{Proxy, ProxyConfig};

/// A proxy whose admin listener is its own (a bootstrap setting) and whose listeners, routes,
/// clusters and endpoints come from `ads`.
pub struct XdsProxy {
    /// The proxy.
    pub proxy: Proxy,
    /// The ADS server it follows; publish to it with [`XdsProxy::publisher`].
    pub ads: gofe_xds::AdsServer,
    /// The proxy's admin address.
    pub admin: SocketAddr,
    client: XdsClient,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl XdsProxy {
    /// Starts the ADS server and the proxy, publishes `initial` (less its admin, which the
    /// proxy keeps as its bootstrap's) as the controller would, and waits until the proxy
    /// serves it.
    pub async fn start(initial: &ProxyConfig, node_id: &str) -> XdsProxy {
        let ads = gofe_xds::AdsServer::new(gofe_xds::ServerOptions::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let xds_addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(gofe_xds::serve(listener, ads.clone(), None, async {
            let _ = stopped.await;
        }));
        let base = ProxyConfig {
            admin: Some(gofe_proxy::config::AdminConfig {
                address: "127.0.0.1:0".into(),
            }),
            ..Default::default()
        };
        let proxy = Proxy::new();
        proxy
            .apply(base.clone(), "bootstrap", Duration::from_secs(1))
            .await
            .unwrap();
        let admin = proxy.admin_addr().await.unwrap();
        let client = XdsClient::start(
            proxy.clone(),
            ClientOptions {
                node_id: node_id.into(),
                node_cluster: "test".into(),
                server: xds_addr.to_string(),
                tls: None,
                base,
                drain: Duration::from_millis(100),
                backoff_initial: Duration::from_millis(50),
                backoff_max: Duration::from_millis(500),
                load_reporting: false,
            },
        )
        .unwrap();
        let mesh = XdsProxy {
            proxy,
            ads,
            admin,
            client,
            stop,
            task,
        };
        mesh.publish(initial);
        let (listeners, clusters) = (initial.listeners.len(), initial.clusters.len());
        mesh.wait_for("the first snapshot over xDS", |p| {
            let active = p.active();
            active.config.listeners.len() == listeners && active.config.clusters.len() == clusters
        })
        .await;
        mesh
    }

    /// Publishes `config` to every node, as the controller does.
    pub fn publish(&self, config: &ProxyConfig) {
        let resources = gofe_proto::convert::from_proxy_config(config).unwrap();
        let snapshot = gofe_xds::Snapshot::from_resources(&resources).unwrap();
        self.ads
            .cache()
            .set_snapshot(gofe_xds::NodeKey::Default, snapshot);
    }

    /// Where a controller publishes for this proxy.
    pub fn publisher(&self) -> Publisher {
        Publisher::Xds(self.ads.clone())
    }

    /// The address the proxy's listener configured as `configured` is bound to.
    pub async fn listener(&self, configured: &str) -> SocketAddr {
        let key: SocketAddr = configured.parse().unwrap();
        self.proxy.listener_addrs().await[&key]
    }

    /// Waits (20 s at most) until `done` holds for the proxy; panics naming `what` otherwise.
    pub async fn wait_for(&self, what: &str, done: impl Fn(&Proxy) -> bool) {
        wait_for(&self.proxy, what, done).await;
    }

    /// Stops the client, the proxy and the ADS server.
    pub async fn stop(self) {
        self.client.stop();
        self.proxy.shutdown(Duration::from_millis(100)).await;
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Waits (20 s at most) until `done` holds for `proxy`; panics naming `what` otherwise. An xDS
/// publication reaches the proxy a moment after the controller's step.
pub async fn wait_for(proxy: &Proxy, what: &str, done: impl Fn(&Proxy) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done(proxy) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
