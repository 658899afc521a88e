//! Locality failover as a user runs it: the shipped binary's `gofe proxy` on a YAML file whose
//! cluster has endpoints in two localities (the proxy's own zone and another), in front of
//! `gofe backend` processes on 127.0.0.1, under steady load from a client counting every
//! answer by the backend that gave it.
//!
//! Checked here, by counts: while the local zone is healthy no request leaves it (priority 0
//! takes 100 %); when the local backends' processes are killed, traffic fails over to the
//! other zone with no failed request beyond those in flight at the kill (connect failures and
//! resets are retried, the dead endpoints ejected, the priority load moves to priority 1); when
//! they return, traffic comes back to them.

#![allow(unreachable_pub)]

mod support;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::process::{free_port, tempdir, Proc};

/// Client threads: at most this many requests are in flight at any moment.
const CLIENTS: u64 = 2;

/// One HTTP/1.1 request on a fresh connection: the status and body, or `None` when the
/// exchange failed.
fn http(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: web\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
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
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Answers so far, by where they came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    local: u64,
    remote: u64,
    failed: u64,
}

/// Steady load through the proxy from [`CLIENTS`] threads, each answer counted by the zone of
/// the backend that gave it (its name says: `local-*` or `remote-*`).
struct Load {
    stop: Arc<AtomicBool>,
    counts: Arc<Mutex<Counts>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(proxy: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Mutex::new(Counts::default()));
        let threads = (0..CLIENTS)
            .map(|_| {
                let (stop, counts) = (stop.clone(), counts.clone());
                std::thread::spawn(move || {
                    // Bounded: stops with the test, and after 3 minutes at most.
                    let deadline = Instant::now() + Duration::from_secs(180);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let answer = http(proxy, "/");
                        let mut c = counts.lock().unwrap();
                        match answer {
                            Some((200, body)) if body.contains("local-") => c.local += 1,
                            Some((200, body)) if body.contains("remote-") => c.remote += 1,
                            _ => c.failed += 1,
                        }
                        drop(c);
                        std::thread::sleep(Duration::from_millis(3));
                    }
                })
            })
            .collect();
        Load {
            stop,
            counts,
            threads,
        }
    }

    fn counts(&self) -> Counts {
        *self.counts.lock().unwrap()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn backend(port: u16, name: &str, dir: &std::path::Path) -> Proc {
    Proc::start(
        &[
            "backend",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--name",
            name,
        ],
        dir,
    )
}

#[test]
fn traffic_fails_over_to_the_next_locality_and_comes_back() {
    let dir = tempdir();
    let addr = |port: u16| -> SocketAddr { format!("127.0.0.1:{port}").parse().unwrap() };
    let local_ports = [free_port(), free_port()];
    let remote_ports = [free_port(), free_port()];
    let start_local = |i: usize| backend(local_ports[i], &format!("local-{i}"), &dir);
    let mut locals: Vec<Proc> = (0..2).map(start_local).collect();
    let remotes: Vec<Proc> = (0..2)
        .map(|i| backend(remote_ports[i], &format!("remote-{i}"), &dir))
        .collect();
    for &p in local_ports.iter().chain(&remote_ports) {
        until("a backend", Duration::from_secs(20), || {
            http(addr(p), "/").map(|_| ())
        });
    }

    // The proxy runs in eu-west/eu-west-1a; priorities come from proximity (its zone: 0, the
    // region's other zone: 1), as a controller's discovered localities would give them.
    let proxy_port = free_port();
    let endpoints: String = local_ports
        .iter()
        .map(|p| (p, "eu-west-1a"))
        .chain(remote_ports.iter().map(|p| (p, "eu-west-1b")))
        .map(|(p, zone)| {
            format!(
                "      - {{ address: \"127.0.0.1:{p}\", locality: {{ region: eu-west, zone: {zone} }} }}\n"
            )
        })
        .collect();
    let config = format!(
        r#"locality: {{ region: eu-west, zone: eu-west-1a }}
listeners:
  - address: "127.0.0.1:{proxy_port}"
    filters:
      - type: router
        config:
          virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
                - match: {{ prefix: "/" }}
                  route:
                    cluster: web
                    retry_policy: {{ retry_on: "connect-failure,reset", num_retries: 3 }}
clusters:
  - name: web
    connect_timeout: "1s"
    locality_lb: {{ failover_by_proximity: true }}
    outlier_detection:
      consecutive_5xx: 1
      max_ejection_percent: 50
      base_ejection_time: "1s"
      max_ejection_time: "2s"
      interval: "1s"
    endpoints:
{endpoints}"#
    );
    let path = dir.join("proxy.yaml");
    std::fs::write(&path, config).unwrap();
    let _proxy = Proc::start(&["proxy", "--config", path.to_str().unwrap()], &dir);
    until("the proxy", Duration::from_secs(20), || {
        matches!(http(addr(proxy_port), "/"), Some((200, _))).then_some(())
    });

    let load = Load::start(addr(proxy_port));
    // Steady state: the local zone takes everything.
    until("steady local traffic", Duration::from_secs(30), || {
        (load.counts().local >= 300).then_some(())
    });
    let before = load.counts();
    assert_eq!(
        before.remote, 0,
        "no request leaves a healthy zone: {before:?}"
    );
    assert_eq!(before.failed, 0, "{before:?}");

    // The local zone dies (processes killed: their connections reset, their ports refuse).
    for l in &mut locals {
        l.kill();
    }
    let at_kill = load.counts();
    until("traffic in the other zone", Duration::from_secs(30), || {
        (load.counts().remote >= at_kill.remote + 300).then_some(())
    });
    let failed_over = load.counts();
    assert!(
        failed_over.failed - at_kill.failed <= CLIENTS,
        "at most the {CLIENTS} requests in flight at the kill may fail: {at_kill:?} → {failed_over:?}"
    );

    // The local zone returns on the same ports: once its ejections end and a trial succeeds,
    // it takes its traffic back.
    let mut locals: Vec<Proc> = (0..2).map(start_local).collect();
    let back = until(
        "traffic back in the local zone",
        Duration::from_secs(60),
        || {
            let c = load.counts();
            (c.local >= failed_over.local + 300).then_some(c)
        },
    );
    // And once back, the other zone gets nothing new: a window in which every answer is local.
    let settled = until(
        "the local zone taking everything",
        Duration::from_secs(60),
        || {
            let a = load.counts();
            std::thread::sleep(Duration::from_millis(300));
            let b = load.counts();
            (b.local > a.local && b.remote == a.remote).then_some(b)
        },
    );
    let end = load.counts();
    drop(load);
    assert!(
        end.failed - at_kill.failed <= CLIENTS,
        "no failure after the kill's in-flight requests, through failover and return: {at_kill:?} → {end:?} (back {back:?}, settled {settled:?})"
    );
    assert!(end.local > failed_over.local && end.remote >= failed_over.remote);
    for l in &mut locals {
        l.kill();
    }
    drop(remotes);
}
