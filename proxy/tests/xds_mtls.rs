//! Mutual TLS: the control plane trusts a node id only when the client certificate names it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use gofe_proto::{ClusterResource, ResourceType, Resources};
use gofe_proxy::xds::{ClientOptions, ClientStatus, ClientTls, XdsClient};
use gofe_proxy::{Proxy, ProxyConfig};
use gofe_xds::{AdsServer, NodeKey, ServerOptions, Snapshot};
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};

const DEADLINE: Duration = Duration::from_secs(20);

struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// A CA, a server certificate for `localhost` and a client certificate for `proxy-1`.
    fn new(test: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("gofe-xds-{test}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        for (name, san, usage) in [
            ("server", "localhost", ExtendedKeyUsagePurpose::ServerAuth),
            ("client", "proxy-1", ExtendedKeyUsagePurpose::ClientAuth),
        ] {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(vec![san.to_owned()]).unwrap();
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
            std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.join(format!("{name}-key.pem")), key.serialize_pem()).unwrap();
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn control_plane(pki: &Pki) -> SocketAddr {
    let server = AdsServer::new(ServerOptions {
        require_identity: true,
        ..Default::default()
    });
    let mut r = Resources::default();
    r.clusters.insert(
        "web".into(),
        ClusterResource {
            config: gofe_proto::convert::empty_cluster("web"),
            eds_service_name: Some("web".into()),
            circuit_breakers: None,
            outlier_detection: None,
        },
    );
    server
        .cache()
        .set_snapshot(NodeKey::Default, Snapshot::from_resources(&r).unwrap());
    let tls = gofe_xds::server_tls(
        &pki.path("server.pem"),
        &pki.path("server-key.pem"),
        Some(&pki.path("ca.pem")),
    )
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(gofe_xds::serve(
        listener,
        server,
        Some(tls),
        std::future::pending(),
    ));
    addr
}

fn client(pki: &Pki, addr: SocketAddr, node_id: &str, with_cert: bool) -> XdsClient {
    let options = ClientOptions {
        node_id: node_id.into(),
        node_cluster: String::new(),
        server: addr.to_string(),
        tls: Some(ClientTls {
            ca: pki.path("ca.pem"),
            server_name: Some("localhost".into()),
            identity: with_cert.then(|| (pki.path("client.pem"), pki.path("client-key.pem"))),
            workload: None,
        }),
        base: ProxyConfig::default(),
        drain: Duration::ZERO,
        backoff_initial: Duration::from_millis(50),
        backoff_max: Duration::from_millis(200),
        load_reporting: false,
    };
    XdsClient::start(Proxy::new(), options).unwrap()
}

async fn wait_for(c: &XdsClient, what: &str, f: impl Fn(&ClientStatus) -> bool) -> ClientStatus {
    let mut rx = c.status();
    let start = Instant::now();
    loop {
        {
            let s = rx.borrow_and_update();
            if f(&s) {
                return s.clone();
            }
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out waiting for {what}: {:?}",
            *rx.borrow()
        );
        let _ = tokio::time::timeout(Duration::from_millis(100), rx.changed()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_ties_the_node_id_to_the_client_certificate() {
    let pki = Pki::new("mtls");
    let addr = control_plane(&pki).await;

    let good = client(&pki, addr, "proxy-1", true);
    wait_for(&good, "resources over mTLS", |s| {
        s.versions.contains_key(&ResourceType::Cluster)
    })
    .await;
    good.stop();

    let impostor = client(&pki, addr, "proxy-2", true);
    let s = wait_for(&impostor, "the identity refusal", |s| {
        s.last_error.is_some()
    })
    .await;
    let e = s.last_error.unwrap();
    assert!(e.contains("not a name in the client certificate"), "{e}");
    assert!(s.versions.is_empty());
    impostor.stop();

    let anonymous = client(&pki, addr, "proxy-1", false);
    let s = wait_for(&anonymous, "the handshake refusal", |s| {
        s.last_error.is_some()
    })
    .await;
    assert!(s.versions.is_empty(), "{s:?}");
    anonymous.stop();
}
