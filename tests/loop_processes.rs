//! The feedback loop as a user runs it: every part its own process of the shipped binary —
//! three `gofe backend`s, `gofe controller run` serving xDS, `gofe proxy --bootstrap` steered
//! by it — on 127.0.0.1, with a client counting every failed request.
//!
//! Checked here: a failing backend is ejected at the proxy, a controller killed (SIGKILL) and
//! restarted with its state file keeps the ejection (no request fails because of the restart),
//! SIGHUP reloads the controller instead of killing it, and the backend's faults change at run
//! time through its control endpoint (a bad value refused).

#![allow(unreachable_pub)]

mod support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::process::{free_port, tempdir, Proc};

/// One HTTP/1.1 request on a fresh connection: the status and body, or `None` when the
/// exchange failed.
fn http(addr: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: web\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((status, body.to_owned()))
}

fn until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The controller's view of one endpoint: (state, healthy).
fn endpoint_state(admin: SocketAddr, endpoint: &str) -> Option<(String, bool)> {
    let (status, body) = http(admin, "GET", "/decisions/web")?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let e = v["endpoints"]
        .as_array()?
        .iter()
        .find(|e| e["endpoint"] == endpoint)?;
    Some((e["state"].as_str()?.to_owned(), e["healthy"].as_bool()?))
}

/// Steady traffic through the proxy, counting failed requests (anything but a 200).
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(proxy: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (s, n, f) = (stop.clone(), sent.clone(), failed.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: stops with the test, and after 3 minutes at most.
            let deadline = Instant::now() + Duration::from_secs(180);
            while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                n.fetch_add(1, Ordering::Relaxed);
                if !matches!(http(proxy, "GET", "/"), Some((200, _))) {
                    f.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(4));
            }
        });
        Load {
            stop,
            sent,
            failed,
            thread: Some(thread),
        }
    }

    /// (sent, failed) so far.
    fn counts(&self) -> (u64, u64) {
        (
            self.sent.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn the_loop_across_processes_survives_a_controller_restart() {
    let dir = tempdir();
    let addr = |port: u16| -> SocketAddr { format!("127.0.0.1:{port}").parse().unwrap() };
    let backends: Vec<(u16, u16)> = (0..3).map(|_| (free_port(), free_port())).collect();
    let mut backend_procs: Vec<Proc> = backends
        .iter()
        .enumerate()
        .map(|(i, (port, control))| {
            Proc::start(
                &[
                    "backend",
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--name",
                    &format!("b{i}"),
                    "--control",
                    &format!("127.0.0.1:{control}"),
                ],
                &dir,
            )
        })
        .collect();
    let (listen, proxy_admin, xds, controller_admin) =
        (free_port(), free_port(), free_port(), free_port());
    let endpoints: Vec<String> = backends
        .iter()
        .map(|(p, _)| format!("      - {{ address: \"127.0.0.1:{p}\" }}\n"))
        .collect();
    write(
        &dir.join("proxy.yaml"),
        &format!(
            "listeners:\n  - address: \"127.0.0.1:{listen}\"\n    filters:\n      - type: router\n        config:\n          virtual_hosts:\n            - name: all\n              domains: [\"*\"]\n              routes: [{{ match: {{ prefix: \"/\" }}, route: {{ cluster: web }} }}]\nclusters:\n  - name: web\n    endpoints:\n{}",
            endpoints.concat()
        ),
    );
    // A long ejection: no half-open trial falls inside what the test watches, so every
    // request that fails after the restart would be the restart's fault.
    write(
        &dir.join("controller.yaml"),
        &format!(
            "proxy_config: proxy.yaml\nstate_file: state.json\ninterval: 1s\nsignals:\n  source: embedded\n  window: 3s\n  embedded: {{ targets: [\"127.0.0.1:{proxy_admin}\"] }}\npolicy:\n  failure_percentage_threshold: 30\n  failure_percentage_request_volume: 10\n  max_ejection_percent: 50\n  base_ejection_time: 120s\n  max_ejection_time: 300s\nadmin: {{ address: \"127.0.0.1:{controller_admin}\" }}\nxds: {{ address: \"127.0.0.1:{xds}\" }}\n"
        ),
    );
    write(
        &dir.join("bootstrap.yaml"),
        &format!(
            "node: {{ id: proxy-1, cluster: web }}\nxds_server: {{ address: \"127.0.0.1:{xds}\" }}\nstatic_resources:\n  admin: {{ address: \"127.0.0.1:{proxy_admin}\" }}\n"
        ),
    );
    let controller_config = dir.join("controller.yaml").display().to_string();
    let start_controller =
        || Proc::start(&["controller", "run", "--config", &controller_config], &dir);
    let mut controller = start_controller();
    let bootstrap = dir.join("bootstrap.yaml").display().to_string();
    let _proxy = Proc::start(&["proxy", "--bootstrap", &bootstrap], &dir);

    // The proxy's listener arrives over xDS and serves.
    until(
        "the proxy to serve over xDS",
        Duration::from_secs(30),
        || matches!(http(addr(listen), "GET", "/"), Some((200, _))).then_some(()),
    );
    let load = Load::start(addr(listen));

    // b2 starts failing every request, switched at run time through its control endpoint.
    let bad = format!("127.0.0.1:{}", backends[2].0);
    let (status, body) = http(
        addr(backends[2].1),
        "POST",
        "/fault?fail_ratio=1&fail_status=503",
    )
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, _) = http(addr(backends[2].1), "POST", "/fault?fail_ratio=2").unwrap();
    assert_eq!(status, 400, "a ratio above 1 is refused");
    until(
        "b2 ejected by the controller",
        Duration::from_secs(30),
        || {
            let (state, healthy) = endpoint_state(addr(controller_admin), &bad)?;
            (state == "ejected" && !healthy).then_some(())
        },
    );
    // Let the ejection reach the proxy, then nothing fails any more.
    std::thread::sleep(Duration::from_secs(2));
    let before_restart = load.counts();
    std::thread::sleep(Duration::from_secs(2));
    let steady = load.counts();
    assert_eq!(steady.1, before_restart.1, "no failures once b2 is ejected");

    // SIGHUP reloads: the controller lives on.
    controller.signal("HUP");
    std::thread::sleep(Duration::from_millis(500));
    assert!(controller.running(), "SIGHUP must not kill the controller");
    assert!(
        controller
            .logs()
            .contains("reloading the controller's configuration"),
        "{}",
        controller.logs()
    );

    // The controller dies without warning and comes back.
    controller.kill();
    let at_kill = load.counts();
    let mut controller = start_controller();
    until("the restarted controller", Duration::from_secs(20), || {
        endpoint_state(addr(controller_admin), &bad)
    });
    // Eight decisions of the restarted controller, under load.
    std::thread::sleep(Duration::from_secs(8));
    let after = load.counts();
    assert!(
        after.0 > at_kill.0 + 100,
        "traffic kept flowing: {at_kill:?} → {after:?}"
    );
    assert_eq!(
        after.1 - at_kill.1,
        0,
        "requests failed after the restart: {at_kill:?} → {after:?}\n{}",
        controller.logs()
    );
    let (state, healthy) = endpoint_state(addr(controller_admin), &bad).unwrap();
    assert_eq!(
        (state.as_str(), healthy),
        ("ejected", false),
        "the ejection survived"
    );
    assert!(controller
        .logs()
        .contains("resumed the saved decision state"));

    drop(load);
    controller.signal("TERM");
    assert_eq!(controller.wait_exit(Duration::from_secs(20)), Some(0));
    for b in &mut backend_procs {
        b.kill();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
